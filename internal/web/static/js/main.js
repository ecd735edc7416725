// The page's entry: sign in, then route #/ (the job list) and
// #/jobs/ID (a job).
import {h, replace, $, dur} from './dom.js';
import * as api from './api.js';
import {login, wireDialogs, toast} from './ui.js';
import {listView} from './list.js';
import {jobView} from './job.js';

const ctx = {who: null, canRun: false};
let view = null;
let asking = null;

async function ensureSignedIn() {
  try {
    // A token this tab kept, the session cookie, or a server without auth.
    ctx.who = await api.whoami({quiet401: true});
    if (api.token()) await api.refreshCookie();
  } catch (e) {
    if (e.status !== 401) throw e;
    api.setToken('');
    ctx.who = await askToken();
  }
  signedIn();
}

function askToken() {
  if (!asking) {
    asking = login((t) => api.signIn(t)).finally(() => {
      asking = null;
    });
  }
  return asking;
}

function signedIn() {
  const w = ctx.who;
  ctx.canRun = w.role === 'admin' || w.role === 'operator';
  const who = $('#whoami');
  replace(who, h('span.user', w.name), h('span.role', {class: 'role-' + w.role}, w.role));
  who.hidden = false;
  $('#signout').hidden = w.name === 'anonymous';
}

function route() {
  if (!ctx.who) return;
  if (view) view.destroy();
  view = null;
  const main = $('#main');
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?');
  const query = new URLSearchParams(qs || '');
  const m = path.match(/^\/jobs\/(.+)$/);
  main.className = '';
  if (m) {
    main.classList.add('view-job');
    view = jobView(main, decodeURIComponent(m[1]), ctx);
  } else {
    main.classList.add('view-list');
    document.title = 'Jobs · drover';
    view = listView(main, query, ctx);
  }
  $('#nav-jobs').setAttribute('aria-current', m ? 'false' : 'page');
}

// A 401 in the middle of the work (a revoked token): ask again, then
// redraw the view.
api.onUnauthorized(async () => {
  if (asking) return;
  api.setToken('');
  ctx.who = await askToken();
  signedIn();
  route();
});

$('#signout').addEventListener('click', async () => {
  await api.signOut();
  if (view) view.destroy();
  view = null;
  ctx.who = null;
  $('#whoami').hidden = true;
  $('#signout').hidden = true;
  replace($('#main'));
  await ensureSignedIn();
  route();
});

// Running times tick every second.
setInterval(() => {
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-since]')) {
    el.textContent = dur(now - Number(el.dataset.since));
  }
}, 1000);

window.addEventListener('hashchange', () => {
  route();
  $('#main').focus({preventScroll: true});
});

const conn = $('#conn');
window.addEventListener('offline', () => { conn.textContent = 'Offline'; conn.className = 'conn conn-bad'; });
window.addEventListener('online', () => { conn.textContent = ''; conn.className = 'conn'; });

wireDialogs();
ensureSignedIn().then(route, (e) => {
  replace($('#main'), h('div.notice.n-failed', {role: 'alert'}, h('strong', 'The server does not answer: '), e.message || String(e)));
  toast(e.message || String(e), 'error');
});
