// A job's page: its state and settings, the operator's actions, its
// step tree with timings (and a fanned-out parent's child jobs, nested),
// and its output and log, live from the job's event stream.
import {h, replace, badge, time, stamp, dur, span, progressBar, outputText, pretty, ENDED, coalesce} from './dom.js';
import * as api from './api.js';
import {toast, errorText, confirm, formDialog, bug} from './ui.js';
import * as tree from './tree.js';

const MAX_LINES = 5000;

// followable mirrors the server's rule: a stream goes on while the job
// runs, will run, or sleeps on a timer; it ends for a job that waits for
// a signal, is suspended or has ended.
function followable(j) {
  if (['queued', 'running', 'interrupted'].includes(j.state)) return true;
  return j.state === 'waiting' && !(j.wait_for && j.wait_for.length) && !!time(j.wake_at);
}

export function jobView(root, id, ctx) {
  let show = null; // the last GET /jobs/{id}
  let j = null; // the job as last seen
  let children = null;
  const childSteps = new Map(); // child id -> merged steps
  const childJournal = new Map(); // child id -> its journal as last read
  const childRead = new Map(); // child id -> its updated time when read
  const live = new Map(); // job id -> Map(step key -> live step)
  const collapsed = new Set();
  const details = new Set();
  const expandedChildren = new Set();
  let childrenSeeded = false;
  let gone = false;
  let timer = null;
  let loading = false;
  let streamState = 'idle';
  let firstLoad = true;

  // Skeleton.
  const crumbs = h('nav.crumbs', {'aria-label': 'Breadcrumb'});
  const title = h('h1.job-title');
  const idLine = h('div.job-id');
  const actions = h('div.actions', {role: 'toolbar', 'aria-label': 'Job actions'});
  const btn = (action, label, cls, key) => h('button.btn', {type: 'button', class: cls, dataset: {action}, 'aria-keyshortcuts': key || null}, label);
  const bSuspend = btn('suspend', 'Suspend', '');
  const bResume = btn('resume', 'Resume', 'btn-primary');
  const bStop = btn('stop', 'Stop', 'btn-danger-outline');
  const bSignal = btn('signal', 'Signal…', '');
  actions.append(bSuspend, bResume, bStop, bSignal);
  const notice = h('div.notices');
  const facts = h('dl.facts');
  const progress = h('div.job-progress');
  const stepsBox = h('div.steps-box');
  const stepsMeta = h('span.muted.panel-meta');
  const ioBox = h('div.io-box');

  // Console: output and log tabs.
  const tabs = h('div.tabs', {role: 'tablist', 'aria-label': 'Output and log'});
  const mkTab = (name, label) => h('button.tab', {type: 'button', role: 'tab', id: 'tab-' + name, 'aria-controls': 'panel-' + name, dataset: {tab: name}},
    label, h('span.count', {id: 'count-' + name}, '0'));
  const tOut = mkTab('output', 'Output');
  const tLog = mkTab('log', 'Log');
  tabs.append(tOut, tLog);
  const pOut = h('div.console', {role: 'tabpanel', id: 'panel-output', 'aria-labelledby': 'tab-output', tabindex: '0'});
  const pLog = h('div.console', {role: 'tabpanel', id: 'panel-log', 'aria-labelledby': 'tab-log', tabindex: '0'});
  const liveDot = h('span.live', {id: 'stream-status', role: 'status', 'aria-live': 'polite'});
  const followBox = h('input', {type: 'checkbox', id: 'follow-tail', checked: true});
  const consoleHead = h('div.console-head', tabs, h('div.console-tools', liveDot,
    h('label.check', {for: 'follow-tail'}, followBox, ' Follow')));
  const counts = {output: 0, log: 0};
  let tab = 'output';
  const selectTab = (name, focus) => {
    tab = name;
    for (const [t, p, n] of [[tOut, pOut, 'output'], [tLog, pLog, 'log']]) {
      const on = n === name;
      t.setAttribute('aria-selected', on ? 'true' : 'false');
      t.tabIndex = on ? 0 : -1;
      p.hidden = !on;
      if (on && focus) t.focus();
    }
    if (followBox.checked) scrollEnd();
  };
  let userPickedTab = false;
  tOut.addEventListener('click', () => { userPickedTab = true; selectTab('output'); });
  tLog.addEventListener('click', () => { userPickedTab = true; selectTab('log'); });
  tabs.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
      ev.preventDefault();
      userPickedTab = true;
      selectTab(tab === 'output' ? 'log' : 'output', true);
    }
  });
  const panelOf = (name) => (name === 'output' ? pOut : pLog);
  const scrollEnd = () => {
    const p = panelOf(tab);
    p.scrollTop = p.scrollHeight;
  };
  for (const p of [pOut, pLog]) {
    p.addEventListener('scroll', () => {
      if (p.hidden) return;
      const atEnd = p.scrollHeight - p.scrollTop - p.clientHeight < 24;
      if (followBox.checked !== atEnd) followBox.checked = atEnd;
    });
  }
  followBox.addEventListener('change', () => followBox.checked && scrollEnd());
  selectTab('output');

  replace(root,
    crumbs,
    h('div.job-head', h('div.job-head-main', title, idLine), actions),
    notice,
    progress,
    h('section.panel.facts-panel', {'aria-label': 'Job details'}, facts),
    h('div.job-grid',
      h('section.panel.steps-panel', {'aria-labelledby': 'steps-title'},
        h('div.panel-head', h('h2', {id: 'steps-title'}, 'Steps'), stepsMeta), stepsBox),
      h('section.panel.console-panel', {'aria-label': 'Output and log'}, consoleHead, pOut, pLog)),
    ioBox);
  replace(crumbs, h('a', {href: '#/'}, 'Jobs'), h('span.sep', {'aria-hidden': 'true'}, '/'), h('span.mono', {'aria-current': 'page'}, id));
  replace(title, id);
  stepsBox.append(h('p.muted', 'Loading…'));

  // Records.
  let pending = [];
  let flushQueued = false;
  const childTarget = (jid) => {
    if (jid === id) return '';
    const c = children && children.find((x) => x.id === jid);
    return c ? c.target : jid;
  };
  const lineOf = (r) => {
    const t = time(r.time);
    const host = r.host && r.host !== 'local' ? r.host : childTarget(r.job);
    let text;
    if (r.stream === 'output') text = outputText(r.value);
    else text = r.text || '';
    return h('div.line', {dataset: {seq: String(r.seq)}},
      h('time', {datetime: r.time, title: stamp(t)}, t ? clockMS(t) : ''),
      host ? h('span.lhost', host) : null,
      h('span.ltext', text));
  };
  const flush = () => {
    flushQueued = false;
    const batch = pending;
    pending = [];
    const add = {output: [], log: []};
    for (const r of batch) add[r.stream === 'output' ? 'output' : 'log'].push(lineOf(r));
    for (const name of ['output', 'log']) {
      if (!add[name].length) continue;
      const p = panelOf(name);
      const empty = p.querySelector('.console-empty');
      if (empty) empty.remove();
      p.append(...add[name]);
      counts[name] += add[name].length;
      let extra = p.childElementCount - MAX_LINES;
      while (extra-- > 0) p.firstElementChild.remove();
      document.getElementById('count-' + name).textContent = String(counts[name]);
    }
    // A job that printed but emitted nothing opens on its log.
    if (!userPickedTab && tab === 'output' && counts.output === 0 && counts.log > 0) selectTab('log');
    if (followBox.checked) scrollEnd();
  };
  const emptyConsoles = () => {
    for (const [p, what] of [[pOut, 'No output yet: the job\'s emit() values appear here.'], [pLog, 'No log yet: print() lines and command output appear here.']]) {
      if (!p.childElementCount) p.append(h('p.console-empty', what));
    }
  };
  emptyConsoles();

  // Live steps.
  const liveOf = (jid) => {
    let m = live.get(jid);
    if (!m) live.set(jid, (m = new Map()));
    return m;
  };
  // Step events carry no time: a live one happened now. One of the
  // backlog a new stream sends first happened after the record before it,
  // whose time is the best estimate of its start. A step's duration is
  // its own.
  let lastRecTime = null;
  const onStep = (ev) => {
    const m = liveOf(ev.job);
    const now = new Date();
    const at = follow.catchingUp() ? lastRecTime || (ev.job === id && j ? time(j.started) : null) : null;
    const prev = m.get(ev.key);
    if (ev.done) {
      const d = ev.duration_ms || 0;
      const started = prev && !prev.done ? prev.started : at || new Date(now.getTime() - d);
      m.set(ev.key, {...ev, started, ended: new Date(started.getTime() + d)});
    } else {
      m.set(ev.key, {...ev, started: at || now, ended: null});
    }
    if (ev.job !== id && children) {
      const c = children.find((x) => x.id === ev.job);
      if (c && c.state !== 'running' && !ev.done) c.state = 'running';
      if (childJournal.has(ev.job)) childSteps.set(ev.job, merge(childJournal.get(ev.job), liveOf(ev.job), true));
    }
    renderTreeSoon();
  };

  const follow = new api.Follow(id, {
    record(r) {
      const t = time(r.time);
      if (t && (!lastRecTime || t > lastRecTime)) lastRecTime = t;
      pending.push(r);
      if (!flushQueued) {
        flushQueued = true;
        requestAnimationFrame(flush);
      }
    },
    progress(p) {
      if (p.job === id) {
        if (j) {
          j.progress = {done: p.done, total: p.total, message: p.message};
          renderProgress();
        }
      } else if (children) {
        const c = children.find((x) => x.id === p.job);
        if (c) {
          c.progress = {done: p.done, total: p.total, message: p.message};
          renderTreeSoon();
        }
      }
    },
    step: onStep,
    state(v) {
      if (v.id === id) {
        setJob(v);
        refreshSoon();
      }
    },
    end(v) {
      if (v.gone) {
        toast(`Job ${id} was removed`, 'error');
      } else if (v.job) {
        setJob(v.job);
      }
      refreshSoon();
    },
    status(s) {
      streamState = s;
      renderStream();
    },
    refused() {
      // Tell a lost session from a lost server.
      api.whoami().catch(() => {});
    },
  });

  function renderStream() {
    const label = {
      idle: '', connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', retrying: 'Disconnected, retrying…',
      ended: j ? `Stream ended: job ${j.state}` : 'Stream ended',
    }[streamState] || streamState;
    liveDot.className = 'live live-' + streamState;
    liveDot.textContent = label;
  }

  // A job this server runs takes a suspend or stop at its next safe
  // point, and the API may not show the request meanwhile: the page
  // remembers it until the job's state moves.
  let pendingAction = null; // {kind, state}

  function setJob(v) {
    if (pendingAction && (v.state !== pendingAction.state || ENDED.has(v.state))) pendingAction = null;
    j = v;
    renderHead();
    renderProgress();
    if (!firstLoad && followable(j) && follow.closed) follow.open();
  }

  function renderHead() {
    const name = j.name || j.id;
    document.title = `${name} · ${j.state} · drover`;
    replace(title, name, ' ', badge(j.state));
    replace(idLine,
      h('span.mono', j.id),
      j.workflow ? h('span', ' · workflow ', h('strong', j.workflow)) : j.path ? h('span', ' · ', h('span.mono', j.path)) : null,
      j.created_by ? h('span', ' · by ', j.created_by) : null);
    if (j.parent_id) {
      replace(crumbs, h('a', {href: '#/'}, 'Jobs'), h('span.sep', {'aria-hidden': 'true'}, '/'),
        h('a.mono', {href: '#/jobs/' + encodeURIComponent(j.parent_id)}, j.parent_id), h('span.sep', {'aria-hidden': 'true'}, '/'),
        h('span.mono', {'aria-current': 'page'}, j.target || id));
    }
    renderActions();
    renderNotice();
    renderFacts();
  }

  function requested() {
    if (j.request === 'stop' || (pendingAction && pendingAction.kind === 'stop')) return 'stop';
    if (j.request === 'suspend' || (pendingAction && pendingAction.kind === 'suspend')) return 'suspend';
    return '';
  }

  function mayAct() {
    const w = ctx.who;
    return w.role === 'admin' || (w.role === 'operator' && j.created_by === w.name);
  }

  function renderActions() {
    const st = j.state;
    const can = mayAct();
    const waitingSignal = st === 'waiting' && j.wait_for && j.wait_for.length;
    const set = (b, ok, why) => {
      b.disabled = !can || !ok;
      b.title = !can ? (ctx.who.role === 'viewer' ? 'Viewers cannot act on jobs' : 'Only its creator or an admin can act on this job') : ok ? '' : why;
    };
    const req = requested();
    set(bSuspend, ['queued', 'running', 'waiting', 'interrupted'].includes(st) && !req, req ? `${cap(req)} requested already` : `A ${st} job cannot be suspended`);
    const resumable = ['suspended', 'failed', 'stopped', 'interrupted', 'skipped'].includes(st) || (st === 'waiting' && !waitingSignal);
    set(bResume, resumable && !j.parent_id, j.parent_id ? 'Resume the parent job (it reruns this host)' : waitingSignal ? 'Waiting for a signal: send it instead' : `A ${st} job cannot be resumed`);
    set(bStop, !ENDED.has(st) && req !== 'stop', req === 'stop' ? 'Stop requested already' : `A ${st} job cannot be stopped`);
    set(bSignal, waitingSignal, 'The job is not waiting for a signal');
  }

  function renderNotice() {
    const items = [];
    const reason = j.reason ? `: ${j.reason}` : '';
    const req = requested();
    if (req) {
      items.push(h('div.notice.n-info', {role: 'status'}, h('span', h('strong', `${cap(req)} requested`), ` — the job ${req === 'stop' ? 'stops' : 'suspends'} at its next safe point, once its running step ends.`)));
    }
    switch (j.state) {
      case 'waiting':
        if (j.wait_for && j.wait_for.length) {
          const b = h('button.btn.btn-sm', {type: 'button', disabled: !mayAct()}, 'Send signal…');
          b.addEventListener('click', () => openSignal());
          items.push(h('div.notice.n-waiting', h('span', h('strong', 'Waiting for signal '), j.wait_for.map((n, i) => [i ? ', ' : '', h('code', n)]),
            time(j.wake_at) ? ` (times out ${stamp(time(j.wake_at))})` : '', '.'), b));
        } else if (time(j.wake_at)) {
          items.push(h('div.notice.n-waiting', h('span', h('strong', 'Sleeping'), ` until ${stamp(time(j.wake_at))}; the server wakes it then.`)));
        }
        break;
      case 'suspended':
        items.push(h('div.notice.n-suspended', h('span', h('strong', 'Suspended'), sentence(reason), ' Resume continues it from its last persisted point.')));
        break;
      case 'interrupted':
        items.push(h('div.notice.n-interrupted', h('span', h('strong', 'Interrupted'), ': the engine running it is gone. A server resumes it, or press Resume.')));
        break;
      case 'stopped':
        items.push(h('div.notice.n-stopped', h('span', h('strong', 'Stopped'), sentence(reason))));
        break;
    }
    if (j.error) items.push(h('div.notice.n-failed', {role: 'alert'}, h('strong', 'Error'), h('pre.error-text', j.error)));
    replace(notice, items);
  }

  function renderFacts() {
    const created = time(j.created);
    const started = time(j.started);
    const ended = time(j.ended);
    const f = [];
    const fact = (k, ...v) => f.push(h('div.fact', h('dt', k), h('dd', ...v)));
    fact('Created', h('span', {title: stamp(created)}, stamp(created) || '—'));
    fact('Started', stamp(started) || '—');
    fact('Ended', stamp(ended) || '—');
    const d = started ? span(started, ended || (ENDED.has(j.state) || j.state === 'suspended' ? time(j.updated) : null)) : null;
    fact('Duration', d === null ? '—' : h('span', {dataset: !ended && !ENDED.has(j.state) && j.state !== 'suspended' ? {since: String(started.getTime())} : {}}, dur(d)));
    fact('Journaled steps', String(j.steps || 0));
    fact('Runs', String(j.runs || 0));
    fact('Persist', j.persist || '—');
    fact('On error', j.on_error || '—');
    if (j.timeout) fact('Timeout', dur(j.timeout / 1e6));
    if (j.target) fact('Host', j.target);
    if (j.owner && ['running', 'interrupted'].includes(j.state)) fact('Engine', h('span.mono', {title: j.owner}, j.owner.split(':')[0] + ':' + (j.owner.split(':')[1] || '')));
    if (show && show.children) {
      const n = Object.values(show.children).reduce((a, b) => a + b, 0);
      fact('Child jobs', String(n));
    }
    replace(facts, f);

    const io = [];
    if (j.result !== undefined && j.result !== null) {
      io.push(h('details.panel.io', {open: true}, h('summary', h('h2', 'Result')), h('pre.json', pretty(j.result))));
    }
    const input = j.input && Object.keys(j.input).length ? j.input : null;
    io.push(h('details.panel.io', {open: !!input && !ENDED.has(j.state)}, h('summary', h('h2', 'Input')), input ? h('pre.json', pretty(input)) : h('p.muted', 'No parameters.')));
    if (show && show.failed_children && show.failed_children.length) {
      io.unshift(h('section.panel.io', h('h2', 'Failed hosts'), h('ul.failed', show.failed_children.map((c) =>
        h('li', h('a.mono', {href: '#/jobs/' + encodeURIComponent(c.id)}, c.host || c.id), h('pre.error-text', c.error))))));
    }
    replace(ioBox, io);
  }

  function renderProgress() {
    const p = j.progress;
    if (!p || (!p.done && !p.total && !p.message)) {
      replace(progress);
      progress.hidden = true;
      return;
    }
    progress.hidden = false;
    replace(progress, h('span.plabel', 'Progress'), progressBar(p, j.state));
  }

  // The tree.
  const model = {
    collapsed, details, expandedChildren,
    toggle(key) {
      if (collapsed.has(key)) collapsed.delete(key);
      else collapsed.add(key);
      renderTree(key);
    },
    toggleDetail(key) {
      if (details.has(key)) details.delete(key);
      else details.add(key);
      renderTree(key);
    },
    toggleChild(cid) {
      if (expandedChildren.has(cid)) expandedChildren.delete(cid);
      else {
        expandedChildren.add(cid);
        loadChild(cid);
      }
      renderTree('c:' + cid);
    },
  };

  function renderTree(focusKey) {
    if (!show) return;
    const active = document.activeElement;
    const keep = focusKey || (active && stepsBox.contains(active) && active.dataset ? active.dataset.key : null);
    const steps = merge(show.steps || [], liveOf(id), isActive(j));
    const started = time(j.started);
    let t0 = started;
    for (const s of steps) {
      const st = time(s.started);
      if (st && (!t0 || st < t0)) t0 = st;
    }
    if (children) for (const c of children) {
      const st = time(c.started);
      if (st && (!t0 || st < t0)) t0 = st;
    }
    const endT = time(j.ended);
    Object.assign(model, {
      steps, children, childSteps, t0,
      t1: () => endT || (ENDED.has(j.state) ? time(j.updated) || new Date() : new Date()),
      emptyText: j.state === 'queued' ? 'Queued: no step has run yet.' : j.persist === 'never' && !ENDED.has(j.state)
        ? 'No step recorded yet: this job persists only at its end (live steps appear as they run).' : 'No step recorded yet.',
    });
    replace(stepsBox, tree.render(model));
    const n = steps.length;
    const parts = [];
    if (n || !children) parts.push(`${n} step${n === 1 ? '' : 's'}`);
    if (children) parts.push(`${children.length} host${children.length === 1 ? '' : 's'}`);
    stepsMeta.textContent = parts.join(' · ');
    if (keep) {
      const el = stepsBox.querySelector(`[data-key="${CSS.escape(keep)}"]`);
      if (el) el.focus();
    }
  }
  // A big tree is drawn less often while its steps stream in.
  let treeTimer = null;
  const renderTreeSoon = () => {
    if (treeTimer !== null) return;
    const n = (show && show.steps ? show.steps.length : 0) + liveOf(id).size;
    treeTimer = setTimeout(() => {
      treeTimer = null;
      if (!gone) renderTree();
    }, n > 1500 ? 1500 : 250);
  };

  async function loadChild(cid) {
    try {
      const v = await api.getJob(cid);
      if (gone) return;
      childJournal.set(cid, v.steps || []);
      childRead.set(cid, v.job.updated);
      childSteps.set(cid, merge(v.steps || [], liveOf(cid), isActive(v.job)));
      if (children) {
        const i = children.findIndex((c) => c.id === cid);
        if (i >= 0) children[i] = v.job;
      }
    } catch (e) {
      bug(e);
      childSteps.set(cid, []);
    }
    renderTreeSoon();
  }

  let again = false;
  let failing = false;
  async function refresh() {
    if (gone) return;
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    again = false;
    clearTimeout(timer);
    try {
      const v = await api.getJob(id);
      if (gone) return;
      show = v;
      prune(liveOf(id), v.steps || []);
      setJob(v.job);
      if (v.job.spec) {
        const res = await api.listJobs({parent: id});
        if (gone) return;
        children = res.jobs;
        if (!childrenSeeded) {
          childrenSeeded = true;
          if (children.length <= 8) children.forEach((c) => expandedChildren.add(c.id));
        }
        const stale = children.filter((c) => expandedChildren.has(c.id) && childRead.get(c.id) !== c.updated);
        await Promise.all(stale.slice(0, 16).map(async (c) => {
          const cv = await api.getJob(c.id).catch(() => null);
          if (!cv || gone) return;
          const js = cv.steps || [];
          childRead.set(c.id, cv.job.updated);
          prune(liveOf(c.id), js);
          childJournal.set(c.id, js);
          childSteps.set(c.id, merge(js, liveOf(c.id), isActive(cv.job)));
        }));
      }
      renderTree();
      failing = false;
      if (firstLoad) {
        firstLoad = false;
        // The stream replays the whole output and log, then follows.
        follow.open(0);
      }
    } catch (e) {
      bug(e);
      if (gone) return;
      if (e.status === 404) {
        replace(stepsBox, h('p.muted', 'No such job.'));
        replace(title, 'Job not found');
        replace(notice, h('div.notice.n-failed', {role: 'alert'}, errorText(e), ' ', h('a', {href: '#/'}, 'Back to the jobs')));
        actions.hidden = true;
        follow.close();
        return;
      }
      // Once per outage, not at every poll.
      if (e.status !== 401 && !failing) toast('Reading the job: ' + errorText(e), 'error');
      failing = true;
    } finally {
      loading = false;
    }
    if (again && !gone) {
      refreshSoon();
      return;
    }
    if (!gone) {
      const busy = j && (!ENDED.has(j.state) || (children && children.some((c) => !ENDED.has(c.state))));
      timer = setTimeout(refresh, busy ? 2000 : 10000);
    }
  }
  const refreshSoon = coalesce(() => refresh(), 150);

  // Actions.
  async function act(kind) {
    try {
      let v;
      if (kind === 'suspend') {
        v = await api.suspendJob(id);
        if (v.state !== 'suspended') pendingAction = {kind: 'suspend', state: v.state};
        toast(v.state === 'suspended' ? `Job ${id} suspended` : `Suspend requested: job ${id} suspends at its next safe point`);
      } else if (kind === 'stop') {
        const ok = await confirm('Stop this job?', `Job ${j.name || id} stops now: its running steps are cancelled. Resume can continue it later from its last persisted point.`, 'Stop job');
        if (!ok) return;
        v = await api.stopJob(id);
        if (v.state !== 'stopped') pendingAction = {kind: 'stop', state: v.state};
        toast(v.state === 'stopped' ? `Job ${id} stopped` : `Stop requested: job ${id} stops at its next safe point`);
      } else if (kind === 'resume') {
        const r = await api.resumeJob(id);
        v = r.job;
        toast(r.note || `Job ${id} resumed`);
      } else if (kind === 'signal') {
        return openSignal();
      }
      if (v) setJob(v);
      refreshSoon();
    } catch (e) {
      bug(e);
      toast(errorText(e), 'error');
      refreshSoon();
    }
  }
  actions.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (b && !b.disabled) act(b.dataset.action);
  });

  async function openSignal() {
    const d = document.getElementById('signal-dialog');
    const names = (j.wait_for || []);
    replace(document.getElementById('signal-names'), names.map((n) => h('option', {value: n})));
    const nameIn = document.getElementById('signal-name');
    const payIn = document.getElementById('signal-payload');
    nameIn.value = names[0] || '';
    payIn.value = '';
    document.getElementById('signal-hint').textContent = names.length
      ? `Job ${j.name || id} waits for ${names.join(', ')}.` : `Job ${j.name || id}.`;
    const sent = await formDialog(d, document.getElementById('signal-form'), document.getElementById('signal-error'), document.getElementById('signal-send'), async () => {
      const name = nameIn.value.trim();
      if (!name) throw new api.ApiError(0, 'bad_request', 'A signal needs a name.');
      let payload;
      const text = payIn.value.trim();
      if (text) {
        try {
          payload = JSON.parse(text);
        } catch (e) {
          throw new api.ApiError(0, 'bad_request', 'The payload is not valid JSON: ' + e.message);
        }
      }
      const v = await api.signalJob(id, name, payload);
      return {name, job: v};
    });
    if (!sent) return;
    toast(`Signal ${sent.name} sent to job ${id}`);
    setJob(sent.job);
    refreshSoon();
  }
  refresh();
  return {
    destroy() {
      gone = true;
      clearTimeout(timer);
      follow.close();
    },
  };
}

// isActive says whether a job's steps may be running now.
function isActive(j) {
  return !!j && ['running', 'queued', 'interrupted'].includes(j.state);
}

// HALTED is the error of a step event whose step unwound the script at a
// safe point (the engine's errHalt).
const HALTED = 'job halted';

// merge lays the live step events over the journal: the journal is the
// truth for what it holds, the live events add the steps that ran since
// it was last written (checkpoints) and the one running now.
function merge(journal, liveSteps, running) {
  const byKey = new Map();
  for (const s of journal) byKey.set(s.key, s);
  for (const [k, l] of liveSteps) {
    const s = byKey.get(k);
    // A step that ends with the job halting (wait(), a long sleep(),
    // suspend()) did not fail: it waits, and the journal says so.
    const halted = l.done && l.error === HALTED;
    if (s && (s.status !== 'pending' || !l.done || halted)) continue;
    byKey.set(k, {
      key: k, activity: l.activity, host: l.host || (s && s.host), position: s && s.position,
      // A step still running when its job stopped running was cut
      // short: it runs again on resume.
      status: halted ? 'pending' : l.done ? (l.error ? 'failed' : 'done') : running ? 'running' : 'interrupted',
      started: s ? s.started : l.started.toISOString(), ended: l.ended && !halted ? l.ended.toISOString() : null,
      error: halted ? '' : l.error, attempts: s ? s.attempts : undefined, replayed: l.replayed,
    });
  }
  return [...byKey.values()];
}

// prune forgets the live events the journal now holds.
function prune(liveSteps, journal) {
  const have = new Set(journal.filter((s) => s.status !== 'pending').map((s) => s.key));
  for (const k of [...liveSteps.keys()]) if (have.has(k)) liveSteps.delete(k);
}

// sentence ends ": reason" with a full stop.
function sentence(reason) {
  if (!reason) return '.';
  return /[.!?]$/.test(reason) ? reason : reason + '.';
}

function cap(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function clockMS(d) {
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
