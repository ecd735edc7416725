// DOM and formatting helpers. Every piece of data reaches the page as
// text (textContent, attributes), never as markup.

// h makes an element: h('a.link', {href: '#/'}, 'text', child, ...).
// Attributes starting with "on" add listeners; null and false skip.
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = [el.className, v].filter(Boolean).join(' ');
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'style') {
      for (const [p, val] of Object.entries(v)) el.style.setProperty(p, val);
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// replace swaps an element's children.
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

// The states of a job, in the order the list shows them.
export const STATES = ['queued', 'running', 'suspended', 'waiting', 'completed', 'failed', 'stopped', 'skipped', 'interrupted'];

export const ENDED = new Set(['completed', 'failed', 'stopped', 'skipped']);

// badge is a job state as a coloured label: the colour is never the
// only cue, the word is always there.
export function badge(state, extra) {
  return h('span.badge', {class: 'st-' + state, dataset: {state}}, h('span.dot', {'aria-hidden': 'true'}), state, extra || null);
}

export function time(v) {
  if (!v) return null;
  const d = new Date(v);
  return isNaN(d) || d.getFullYear() < 1971 ? null : d;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

export function clock(d, ms = false) {
  if (!d) return '';
  const s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return ms ? s + '.' + pad(d.getMilliseconds(), 3) : s;
}

export function stamp(d) {
  if (!d) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
}

// when is a short date for tables: the time today, else the date.
export function when(d) {
  if (!d) return '—';
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return clock(d);
  return `${d.getFullYear() === now.getFullYear() ? '' : d.getFullYear() + '-'}${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function ago(d) {
  if (!d) return '';
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return s + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ago';
  if (s < 86400) return Math.floor(s / 3600) + 'h ago';
  return Math.floor(s / 86400) + 'd ago';
}

// dur formats milliseconds as Go-like durations: 450ms, 3.2s, 4m05s, 2h01m.
export function dur(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '';
  ms = Math.max(0, ms);
  if (ms < 1000) return Math.round(ms) + 'ms';
  const s = ms / 1000;
  if (s < 10) return s.toFixed(1) + 's';
  if (s < 60) return Math.floor(s) + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${pad(Math.floor(s % 60))}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h${pad(m % 60)}m`;
  return `${Math.floor(hr / 24)}d${pad(hr % 24)}h`;
}

// span is how long something ran: to its end, or to now while it runs.
export function span(start, end) {
  if (!start) return null;
  return (end ? end.getTime() : Date.now()) - start.getTime();
}

// progressText reads a job's progress() value.
export function progressText(p) {
  if (!p || (!p.done && !p.total && !p.message)) return '';
  const num = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  let s = p.total ? `${num(p.done || 0)} / ${num(p.total)}` : p.done ? num(p.done) : '';
  if (p.message) s = s ? `${s} · ${p.message}` : p.message;
  return s;
}

export function progressBar(p, state) {
  const frac = p && p.total ? Math.min(1, Math.max(0, (p.done || 0) / p.total)) : null;
  const text = progressText(p);
  if (frac === null && !text) return h('span.muted', '—');
  const wrap = h('div.progress', {class: 'st-' + state});
  if (frac !== null) {
    wrap.append(h('div.bar', {role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': String(p.total), 'aria-valuenow': String(p.done || 0), 'aria-label': 'progress'},
      h('div.fill', {style: {width: (frac * 100).toFixed(1) + '%'}})));
  }
  if (text) wrap.append(h('span.ptext', {title: text}, text));
  return wrap;
}

// outputText renders an emitted value as the command line prints it: a
// string as itself, anything else as JSON.
export function outputText(v) {
  if (typeof v === 'string') return v;
  if (v === undefined) return '';
  return JSON.stringify(v);
}

export function pretty(v) {
  if (v === undefined) return '';
  return JSON.stringify(v, null, 2);
}

// coalesce runs f once, wait after the first of a burst of calls: a
// steady stream of calls still runs it every wait.
export function coalesce(f, wait) {
  let t = null;
  return () => {
    if (t !== null) return;
    t = setTimeout(() => {
      t = null;
      f();
    }, wait);
  };
}
