// The step tree: a job's steps in script order, nested by their keys. A
// key is a position in the thread that ran the step ("7"); a step of a
// branch of parallel() or foreach_parallel() carries the branch path
// ("4/b2/3": third step of branch 2 of the parallel at position 4), and
// branches nest. A fanned-out parent's child jobs (one per host) come
// after its own steps, each with its own tree.
import {h, badge, time, clock, stamp, dur, pretty, progressText} from './dom.js';

// build nests steps by key: a thread holds steps and parallel groups by
// position; a group holds its branches' threads.
export function build(steps) {
  const root = thread();
  for (const s of steps) {
    const segs = s.key.split('/');
    let th = root;
    let path = '';
    let i = 0;
    for (; i + 2 < segs.length && /^b\d+$/.test(segs[i + 1]); i += 2) {
      path = path ? path + '/' + segs[i] : segs[i];
      const g = th.group(segs[i], path);
      path += '/' + segs[i + 1];
      th = g.branch(segs[i + 1], path);
    }
    th.items.push({kind: 'step', pos: segs.slice(i).join('/'), step: s});
  }
  sortThread(root);
  return root;
}

function thread() {
  const t = {
    items: [],
    groups: new Map(),
    group(pos, key) {
      let g = t.groups.get(pos);
      if (!g) {
        g = {kind: 'group', pos, key, branches: new Map(), branch(b, bkey) {
          let th = g.branches.get(b);
          if (!th) {
            th = thread();
            th.key = bkey;
            th.name = b;
            g.branches.set(b, th);
          }
          return th;
        }};
        t.groups.set(pos, g);
        t.items.push(g);
      }
      return g;
    },
  };
  return t;
}

const num = (p) => parseInt(String(p).replace(/^b/, ''), 10);

function sortThread(t) {
  t.items.sort((a, b) => num(a.pos) - num(b.pos) || (a.kind === 'group') - (b.kind === 'group'));
  for (const it of t.items) {
    if (it.kind === 'group') {
      it.list = [...it.branches.values()].sort((a, b) => num(a.name) - num(b.name));
      it.list.forEach(sortThread);
    }
  }
}

// stepsOf lists a thread's steps, nested ones too.
function stepsOf(t, out = []) {
  for (const it of t.items) {
    if (it.kind === 'step') out.push(it.step);
    else for (const b of it.list) stepsOf(b, out);
  }
  return out;
}

// summary folds steps into one status and time span.
function summary(steps) {
  let start = null;
  let end = null;
  let open = false;
  const by = {done: 0, failed: 0, running: 0, pending: 0, interrupted: 0};
  for (const s of steps) {
    by[s.status] = (by[s.status] || 0) + 1;
    const st = time(s.started);
    const en = time(s.ended);
    if (st && (!start || st < start)) start = st;
    if (!en) open = true;
    else if (!end || en > end) end = en;
  }
  const status = by.failed ? 'failed' : by.running ? 'running' : by.interrupted ? 'interrupted' : by.pending ? 'pending' : 'done';
  return {status, start, end: open ? null : end, by, n: steps.length};
}

// render draws the tree. m: {steps, t0, t1, children, childSteps,
// expanded (Set of keys), toggle(key), jobId}.
export function render(m) {
  const list = h('ul.tree', {role: 'list'});
  const root = build(m.steps);
  renderThread(list, root, 0, m, '');
  if (m.children) {
    const kids = m.children;
    const counts = {};
    for (const c of kids) counts[c.state] = (counts[c.state] || 0) + 1;
    const key = 'hosts';
    const open = !m.collapsed.has(key);
    const li = h('li.node.node-hosts');
    li.append(row(m, 0, {
      key, open, toggle: true,
      name: [h('span.kind', 'hosts'), h('span.label', `${kids.length} child job${kids.length === 1 ? '' : 's'}`),
        h('span.muted.counts', Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(', '))],
      status: null,
      start: minTime(kids.map((c) => time(c.started))),
      end: kids.every((c) => time(c.ended)) ? maxTime(kids.map((c) => time(c.ended))) : null,
    }));
    if (open) {
      const ul = h('ul', {role: 'list'});
      for (const c of kids) ul.append(renderChild(c, m));
      li.append(ul);
    }
    list.append(li);
  }
  if (!m.steps.length && !(m.children && m.children.length)) {
    return h('p.empty-steps.muted', m.emptyText || 'No step recorded yet.');
  }
  return h('div.tree-wrap', header(), list);
}

function header() {
  return h('div.trow.thead', {'aria-hidden': 'true'},
    h('span.tc-name', 'Step'), h('span.tc-host', 'Host'), h('span.tc-status', 'Status'),
    h('span.tc-att', 'Tries'), h('span.tc-start', 'Started'), h('span.tc-dur', 'Duration'), h('span.tc-bar', 'Timeline'));
}

function renderThread(ul, t, depth, m, prefix) {
  for (const it of t.items) {
    if (it.kind === 'step') {
      ul.append(renderStep(it.step, depth, m, prefix));
      continue;
    }
    const key = prefix + 'g:' + it.key;
    const open = !m.collapsed.has(key);
    const sm = summary(stepsOf({items: [it]}));
    const li = h('li.node.node-group');
    li.append(row(m, depth, {
      key, open, toggle: true,
      name: [h('span.kind', 'parallel'), h('span.key.mono', '@' + it.key), h('span.muted', `${it.list.length} branch${it.list.length === 1 ? '' : 'es'} · ${sm.n} step${sm.n === 1 ? '' : 's'}`)],
      status: stepStatus(sm.status), start: sm.start, end: sm.end, live: sm.status === 'running',
    }));
    if (open) {
      const bl = h('ul', {role: 'list'});
      for (const b of it.list) {
        const bkey = prefix + 'b:' + b.key;
        const bopen = !m.collapsed.has(bkey);
        const bs = summary(stepsOf(b));
        const bli = h('li.node.node-branch');
        bli.append(row(m, depth + 1, {
          key: bkey, open: bopen, toggle: true,
          name: [h('span.kind', 'branch ' + num(b.name)), h('span.key.mono', b.key)],
          status: stepStatus(bs.status), start: bs.start, end: bs.end, live: bs.status === 'running',
        }));
        if (bopen) {
          const sub = h('ul', {role: 'list'});
          renderThread(sub, b, depth + 2, m, prefix);
          bli.append(sub);
        }
        bl.append(bli);
      }
      li.append(bl);
    }
    ul.append(li);
  }
}

function renderStep(s, depth, m, prefix) {
  const key = prefix + 's:' + s.key;
  const hasDetail = !!(s.error || (s.result !== undefined && s.result !== null) || s.position);
  const open = hasDetail && m.details.has(key);
  const li = h('li.node.node-step', {dataset: {key: s.key, status: s.status}});
  li.append(row(m, depth, {
    key, open, toggle: hasDetail, detailToggle: true,
    name: [h('span.key.mono', s.key.split('/').pop()), h('span.activity', s.activity || '?'),
      s.replayed ? h('span.tag', {title: 'Replayed from the journal'}, 'replayed') : null,
      s.error && !open ? h('span.err-inline', {title: s.error}, firstLine(s.error)) : null],
    host: s.host, status: stepStatus(s.status), attempts: s.attempts,
    start: time(s.started), end: s.status === 'interrupted' ? time(s.started) : time(s.ended), live: s.status === 'running',
    noDur: s.status === 'interrupted',
    title: s.position ? `${s.key} at ${s.position}` : s.key,
  }));
  if (open) {
    li.append(h('div.step-detail', {id: 'detail-' + cssId(key)},
      h('dl',
        h('dt', 'Key'), h('dd.mono', s.key),
        s.position ? [h('dt', 'Position'), h('dd.mono', s.position)] : null,
        h('dt', 'Started'), h('dd', stamp(time(s.started)) || '—'),
        s.ended ? [h('dt', 'Ended'), h('dd', stamp(time(s.ended)))] : null),
      s.error ? h('pre.error-text', s.error) : null,
      s.result !== undefined && s.result !== null ? h('pre.json', pretty(s.result)) : null));
  }
  return li;
}

function renderChild(c, m) {
  const key = 'c:' + c.id;
  const open = m.expandedChildren.has(c.id);
  const li = h('li.node.node-child', {dataset: {child: c.id, state: c.state}});
  const href = '#/jobs/' + encodeURIComponent(c.id);
  const p = progressText(c.progress);
  li.append(row(m, 1, {
    key, open, toggle: true, child: c.id,
    name: [h('span.kind', 'host'), h('span.label', c.target || c.id), h('a.mono.child-link', {href}, c.id),
      p ? h('span.muted.cprog', p) : c.steps ? h('span.muted.cprog', `${c.steps} step${c.steps === 1 ? '' : 's'}`) : null,
      c.error ? h('span.err-inline', {title: c.error}, firstLine(c.error)) : null],
    status: badge(c.state),
    start: time(c.started), end: time(c.ended), live: c.state === 'running',
  }));
  if (open) {
    const steps = m.childSteps.get(c.id);
    const sub = h('ul', {role: 'list'});
    if (!steps) sub.append(h('li.node.loading', h('div.trow', h('span.tc-name.muted', {style: {'--depth': 2}}, 'Loading…'))));
    else if (!steps.length) sub.append(h('li.node', h('div.trow', h('span.tc-name.muted', {style: {'--depth': 2}}, 'No step recorded yet.'))));
    else renderThread(sub, build(steps), 2, m, c.id + ':');
    li.append(sub);
  }
  return li;
}

function row(m, depth, o) {
  const name = h('span.tc-name', {style: {'--depth': depth}});
  if (o.toggle) {
    const b = h('button.twisty', {type: 'button', 'aria-expanded': o.open ? 'true' : 'false', dataset: {key: o.key},
      'aria-label': (o.open ? 'Collapse ' : 'Expand ') + (o.detailToggle ? 'step details' : 'group')});
    b.addEventListener('click', () => (o.child ? m.toggleChild(o.child) : o.detailToggle ? m.toggleDetail(o.key) : m.toggle(o.key)));
    name.append(b);
  } else {
    name.append(h('span.twisty-space', {'aria-hidden': 'true'}));
  }
  name.append(...o.name.filter(Boolean));
  const d = o.start ? (o.end ? o.end - o.start : Date.now() - o.start) : null;
  return h('div.trow', {title: o.title || null},
    name,
    h('span.tc-host', o.host ? h('span', {title: o.host}, o.host) : ''),
    h('span.tc-status', o.status || ''),
    h('span.tc-att', o.attempts ? String(o.attempts) : ''),
    h('span.tc-start', {title: stamp(o.start)}, o.start ? clock(o.start) : ''),
    h('span.tc-dur', o.start && !o.noDur ? h('span', {dataset: o.end ? {} : {since: String(o.start.getTime())}}, dur(d)) : ''),
    h('span.tc-bar', bar(m, o.start, o.end, o.live)));
}

function bar(m, start, end, live) {
  if (!start || !m.t0) return '';
  const t0 = m.t0.getTime();
  const t1 = Math.max(m.t1().getTime(), t0 + 1);
  const total = t1 - t0;
  const a = Math.max(0, start.getTime() - t0);
  const b = Math.min(total, (end ? end.getTime() : Date.now()) - t0);
  const left = (a / total) * 100;
  const width = Math.max(0.6, ((b - a) / total) * 100);
  return h('span.tl', h('span.tl-bar', {class: live ? 'tl-live' : end ? '' : 'tl-open', style: {left: left.toFixed(2) + '%', width: Math.min(width, 100 - left).toFixed(2) + '%'}}));
}

const STEP_LABEL = {done: 'done', failed: 'failed', running: 'running', pending: 'pending', interrupted: 'interrupted'};

function stepStatus(s) {
  return h('span.sstat', {class: 'ss-' + s}, h('span.dot', {'aria-hidden': 'true'}), STEP_LABEL[s] || s);
}

function firstLine(s) {
  const l = String(s).split('\n')[0];
  return l.length > 120 ? l.slice(0, 117) + '…' : l;
}

function minTime(ts) {
  let r = null;
  for (const t of ts) if (t && (!r || t < r)) r = t;
  return r;
}

function maxTime(ts) {
  let r = null;
  for (const t of ts) if (t && (!r || t > r)) r = t;
  return r;
}

function cssId(s) {
  return s.replace(/[^a-zA-Z0-9_-]/g, '_');
}
