// The job list: every top-level job (or every job, children too), newest
// first, with its state, progress and timings, filtered by state and by
// text. It reads the list again every few seconds.
import {h, replace, badge, time, when, ago, dur, span, progressBar, STATES, ENDED, stamp} from './dom.js';
import {listJobs, ApiError} from './api.js';
import {toast, errorText, bug} from './ui.js';
import {openRun} from './run.js';

const FAST = 2000;
const SLOW = 15000;

export function listView(root, query, ctx) {
  const filter = {
    state: STATES.includes(query.get('state')) ? query.get('state') : '',
    q: query.get('q') || '',
    all: query.get('all') === '1',
  };
  let jobs = [];
  let truncated = false;
  let timer = null;
  let aborter = null;
  let gone = false;
  let loadedOnce = false;
  const rows = new Map(); // job id -> {tr, sig}

  const title = h('h1', 'Jobs');
  const summary = h('p.muted.summary', {id: 'list-summary'});
  const runBtn = h('button.btn.btn-primary', {type: 'button', id: 'run-open', disabled: !ctx.canRun, title: ctx.canRun ? null : 'Viewers cannot run workflows'}, 'Run workflow…');
  runBtn.addEventListener('click', async () => {
    const created = await openRun();
    if (created) location.hash = '#/jobs/' + encodeURIComponent(created.job.id);
  });

  const chips = h('div.chips', {role: 'radiogroup', 'aria-label': 'Filter by state'});
  const search = h('input.search', {type: 'search', id: 'job-filter', placeholder: 'Filter by id, name, workflow, host, user…  ( / )', 'aria-label': 'Filter jobs by text', value: filter.q, autocomplete: 'off', spellcheck: 'false'});
  const allBox = h('input', {type: 'checkbox', id: 'show-children', checked: filter.all});
  const refreshed = h('span.refreshed.muted', {'aria-live': 'off'});
  const tbody = h('tbody');
  const empty = h('div.empty', {hidden: true});
  const table = h('table.jobs', {'aria-describedby': 'list-summary'},
    h('thead', h('tr',
      h('th', {scope: 'col', class: 'c-state'}, 'State'),
      h('th', {scope: 'col', class: 'c-job'}, 'Job'),
      h('th', {scope: 'col', class: 'c-wf'}, 'Workflow'),
      h('th', {scope: 'col', class: 'c-prog'}, 'Progress'),
      h('th', {scope: 'col', class: 'c-num', title: 'Steps committed to the journal'}, 'Steps'),
      h('th', {scope: 'col', class: 'c-user'}, 'Created by'),
      h('th', {scope: 'col', class: 'c-time'}, 'Created'),
      h('th', {scope: 'col', class: 'c-dur'}, 'Duration'))),
    tbody);

  replace(root,
    h('div.page-head', h('div', title, summary), h('div.page-actions', search,
      h('label.check', {for: 'show-children'}, allBox, ' Child jobs'), runBtn)),
    h('div.toolbar', chips, refreshed),
    h('div.table-wrap', table, empty));

  const syncURL = () => {
    const q = new URLSearchParams();
    if (filter.state) q.set('state', filter.state);
    if (filter.q) q.set('q', filter.q);
    if (filter.all) q.set('all', '1');
    const s = q.toString();
    history.replaceState(null, '', '#/' + (s ? 'jobs?' + s : ''));
  };

  search.addEventListener('input', () => {
    filter.q = search.value.trim();
    syncURL();
    render();
  });
  search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && search.value) {
      ev.stopPropagation();
      search.value = '';
      filter.q = '';
      syncURL();
      render();
    }
  });
  allBox.addEventListener('change', () => {
    filter.all = allBox.checked;
    syncURL();
    rows.clear();
    tbody.replaceChildren();
    load();
  });
  const onKey = (ev) => {
    if (ev.key === '/' && !ev.ctrlKey && !ev.metaKey && !ev.altKey && !isTyping(ev.target) && !document.querySelector('dialog[open]')) {
      ev.preventDefault();
      search.focus();
      search.select();
    }
  };
  document.addEventListener('keydown', onKey);

  function renderChips() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const j of jobs) counts[j.state] = (counts[j.state] || 0) + 1;
    const chip = (value, label, n) => {
      const on = filter.state === value;
      const b = h('button.chip', {type: 'button', role: 'radio', 'aria-checked': on ? 'true' : 'false', class: (value ? 'st-' + value : 'chip-all') + (n ? '' : ' zero'), dataset: {state: value}},
        value ? h('span.dot', {'aria-hidden': 'true'}) : null, label, h('span.count', String(n)));
      b.addEventListener('click', () => {
        filter.state = value;
        syncURL();
        renderChips();
        render();
        chips.querySelector(`[data-state="${value}"]`).focus();
      });
      b.tabIndex = on ? 0 : -1;
      return b;
    };
    const list = [chip('', 'All', jobs.length)];
    for (const s of STATES) list.push(chip(s, s, counts[s]));
    replace(chips, list);
  }
  // Arrow keys move between the state chips (a radio group).
  chips.addEventListener('keydown', (ev) => {
    const all = [...chips.querySelectorAll('.chip')];
    const i = all.indexOf(document.activeElement);
    if (i < 0) return;
    let k = null;
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowDown') k = (i + 1) % all.length;
    if (ev.key === 'ArrowLeft' || ev.key === 'ArrowUp') k = (i - 1 + all.length) % all.length;
    if (k === null) return;
    ev.preventDefault();
    all[k].click();
  });

  function matches(j) {
    if (filter.state && j.state !== filter.state) return false;
    if (!filter.q) return true;
    const q = filter.q.toLowerCase();
    return [j.id, j.name, j.workflow, j.path, j.target, j.created_by, j.state, j.error, j.progress && j.progress.message]
      .some((v) => v && String(v).toLowerCase().includes(q));
  }

  function render() {
    const shown = jobs.filter(matches);
    const keep = new Set(shown.map((j) => j.id));
    for (const [id, r] of rows) {
      if (!keep.has(id)) {
        r.tr.remove();
        rows.delete(id);
      }
    }
    let prev = null;
    for (const j of shown) {
      let r = rows.get(j.id);
      if (!r) {
        r = {tr: h('tr', {dataset: {id: j.id}}), sig: ''};
        rows.set(j.id, r);
      }
      const sig = JSON.stringify([j.state, j.updated, j.progress, j.steps, j.name, j.request]);
      if (sig !== r.sig) {
        r.sig = sig;
        fillRow(r.tr, j);
      } else if (!ENDED.has(j.state)) {
        // Only the running time changes: the row's link keeps its focus.
        r.tr.querySelector('td.c-dur').textContent = durText(j);
      }
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== r.tr) tbody.insertBefore(r.tr, want);
      prev = r.tr;
    }
    const n = shown.length;
    const total = jobs.length;
    summary.textContent = (filter.all ? 'All jobs, children too' : 'Top-level jobs') +
      ` · ${n === total ? total : `${n} of ${total}`} shown` + (truncated ? ' · only the oldest ones were read: narrow the list' : '');
    empty.hidden = n > 0 || !loadedOnce;
    table.hidden = n === 0 && loadedOnce;
    if (n === 0) {
      replace(empty, total === 0
        ? [h('strong', 'No jobs yet.'), h('p', 'Run one with ', h('code', 'drover run FILE --detach'), ' against this server, or with Run workflow.')]
        : [h('strong', 'No job matches the filter.'), h('p', 'Change the state or the text above.')]);
    }
  }

  function fillRow(tr, j) {
    const created = time(j.created);
    const href = '#/jobs/' + encodeURIComponent(j.id);
    const wf = j.workflow || (j.path ? j.path.split('/').pop() : '');
    const fan = j.spec ? h('span.tag', {title: 'Fanned out to hosts: child jobs'}, 'fan-out') : null;
    const target = j.target ? h('span.tag.tag-host', {title: 'Child job on host ' + j.target}, j.target) : null;
    replace(tr,
      h('td.c-state', badge(j.state, j.request ? h('span.req', {title: j.request + ' requested'}, ' · ' + j.request + '…') : null)),
      h('td.c-job', h('a.job-link', {href}, j.name || j.id), fan, target,
        j.name ? h('div.sub.mono', j.id) : null,
        j.error ? h('div.sub.err', {title: j.error}, errorLine(j)) : null),
      h('td.c-wf', wf ? h('span', {title: j.path || j.workflow}, wf) : h('span.muted', '—')),
      h('td.c-prog', progressBar(j.progress, j.state)),
      h('td.c-num', String(j.steps || 0)),
      h('td.c-user', j.created_by || h('span.muted', '—')),
      h('td.c-time', {title: stamp(created)}, h('span', when(created)), h('div.sub', ago(created))),
      h('td.c-dur', durText(j)));
    tr.className = 'row st-row-' + j.state;
    tr.onclick = (ev) => {
      if (ev.target.closest('a, button') || getSelection().toString()) return;
      location.hash = href;
    };
  }

  async function load() {
    clearTimeout(timer);
    if (aborter) aborter.abort();
    aborter = new AbortController();
    const t0 = performance.now();
    try {
      const res = await listJobs(filter.all ? {all: 'true'} : {}, {signal: aborter.signal});
      if (gone) return;
      jobs = res.jobs.reverse(); // newest first
      truncated = res.truncated;
      loadedOnce = true;
      renderChips();
      render();
      refreshed.textContent = 'Updated ' + new Date().toLocaleTimeString();
      refreshed.classList.remove('stale');
    } catch (e) {
      bug(e);
      if (e.name === 'AbortError' || gone) return;
      refreshed.textContent = 'Not updated: ' + errorText(e);
      refreshed.classList.add('stale');
      if (!(e instanceof ApiError) || e.status !== 401) {
        if (!loadedOnce) toast(errorText(e), 'error');
      }
    }
    // A big list is read less often.
    const took = performance.now() - t0;
    timer = setTimeout(load, Math.min(SLOW, Math.max(FAST, took * 10)));
  }

  renderChips();
  load();
  return {
    destroy() {
      gone = true;
      clearTimeout(timer);
      if (aborter) aborter.abort();
      document.removeEventListener('keydown', onKey);
    },
  };
}

// errorLine is the first line of a job's error, without the job id the
// row shows already.
function errorLine(j) {
  const l = j.error.split('\n')[0];
  const prefix = `job ${j.id}: `;
  return l.startsWith(prefix) ? l.slice(prefix.length) : l;
}

function durText(j) {
  const started = time(j.started);
  if (!started) return '—';
  const end = time(j.ended) || (ENDED.has(j.state) || j.state === 'suspended' ? time(j.updated) : null);
  return dur(span(started, end));
}

function isTyping(el) {
  return el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable);
}
