// The HTTP API (docs/api.md), with the token the user entered.
//
// Every call sends "Authorization: Bearer TOKEN". The token lives in
// sessionStorage: it is this tab's, and gone when the tab closes. A
// browser's EventSource cannot send that header, so signing in also asks
// the server for its session cookie (POST /login: HttpOnly,
// SameSite=Strict), which the event streams then carry. Calls that change
// anything also send X-Drover-Request, which the server demands of a
// cookie-authenticated change.

export const API = '/api/v1';
const TOKEN_KEY = 'drover.token';

export class ApiError extends Error {
  constructor(status, code, message, position) {
    super(message);
    this.status = status;
    this.code = code;
    this.position = position || '';
  }
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lasts as long as the page.
  }
}

let unauthorized = () => {};

// onUnauthorized sets what a 401 does (ask for a token again).
export function onUnauthorized(f) {
  unauthorized = f;
}

// call sends one request and returns its decoded JSON body (null for
// 204), or throws an ApiError with the server's message.
export async function call(method, path, body, opts = {}) {
  const headers = {Accept: 'application/json'};
  const t = opts.token !== undefined ? opts.token : token();
  if (t) headers.Authorization = 'Bearer ' + t;
  if (method !== 'GET') headers['X-Drover-Request'] = '1';
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(API + path, {method, headers, body: payload, signal: opts.signal, credentials: 'same-origin', cache: 'no-store'});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Cannot reach the server (' + e.message + ')');
  }
  const text = res.status === 204 ? '' : await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const msg = (data && data.error) || `${res.status} ${res.statusText}`;
    const err = new ApiError(res.status, (data && data.code) || 'http_' + res.status, msg, data && data.position);
    if (res.status === 401 && !opts.quiet401) unauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body, opts);

const enc = encodeURIComponent;

export const whoami = (opts) => get('/whoami', opts);

// signIn checks a token, keeps it for this tab and sets the session
// cookie for event streams.
export async function signIn(t) {
  const who = await get('/whoami', {token: t, quiet401: true});
  setToken(t);
  await refreshCookie();
  return who;
}

// refreshCookie makes the session cookie this tab's token again (another
// tab may have signed in with another one) before a stream opens.
export async function refreshCookie() {
  const t = token();
  if (!t) return;
  try {
    await post('/login', {token: t}, {quiet401: true});
  } catch {
    // The stream's own error will tell.
  }
}

export async function signOut() {
  setToken('');
  try {
    await post('/logout');
  } catch {
    // Signed out here either way.
  }
}

// listJobs reads every page of a listing.
export async function listJobs(params, {max = 20000, signal} = {}) {
  const jobs = [];
  let after = '';
  for (;;) {
    const q = new URLSearchParams({...params, limit: '5000'});
    if (after) q.set('after', after);
    const page = await get('/jobs?' + q, {signal});
    jobs.push(...(page.jobs || []));
    if (!page.next || jobs.length >= max) return {jobs, truncated: !!page.next};
    after = page.next;
  }
}

export const getJob = (id, opts) => get('/jobs/' + enc(id), opts);
export const suspendJob = (id) => post('/jobs/' + enc(id) + '/suspend', {});
export const resumeJob = (id) => post('/jobs/' + enc(id) + '/resume', {});
export const stopJob = (id) => post('/jobs/' + enc(id) + '/stop', {});
export const signalJob = (id, name, payload) => post('/jobs/' + enc(id) + '/signals', payload === undefined ? {name} : {name, payload});
export const listWorkflows = () => get('/workflows');
export const getWorkflow = (name) => get('/workflows/' + enc(name));
export const createJob = (req) => post('/jobs', req);

// Follow is a job's event stream: output and log records, progress,
// live steps and state, until the job stops being followable (the "end"
// event). The browser reconnects a dropped stream by itself, sending the
// last record's id as Last-Event-ID; when it gives up, Follow opens a new
// stream after the last record it saw. Records are never shown twice.
export class Follow {
  constructor(jobId, handlers) {
    this.jobId = jobId;
    this.h = handlers; // {record, progress, step, state, end, status}
    this.last = 0;
    this.es = null;
    this.retry = null;
    this.closed = true;
    this.openedAt = 0;
  }

  // catchingUp says whether the stream is still sending what happened
  // before it opened (the server sends that backlog at once): such
  // events did not happen now.
  catchingUp() {
    return this.openedAt > 0 && performance.now() - this.openedAt < 400;
  }

  async open(after) {
    this.close();
    this.closed = false;
    if (after !== undefined) this.last = Math.max(this.last, after);
    await refreshCookie();
    if (this.closed) return;
    const es = new EventSource(`${API}/jobs/${enc(this.jobId)}/events?after=${this.last}`);
    this.es = es;
    this.h.status('connecting');
    const json = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch {
        return null;
      }
    };
    const onRecord = (ev) => {
      const r = json(ev);
      if (!r || r.seq <= this.last) return;
      this.last = r.seq;
      this.h.record(r);
    };
    es.addEventListener('output', onRecord);
    es.addEventListener('log', onRecord);
    es.addEventListener('progress', (ev) => { const v = json(ev); if (v) this.h.progress(v); });
    es.addEventListener('step', (ev) => { const v = json(ev); if (v) this.h.step(v); });
    es.addEventListener('state', (ev) => { const v = json(ev); if (v) this.h.state(v); });
    es.addEventListener('end', (ev) => {
      const v = json(ev) || {};
      this.close();
      this.h.status('ended');
      this.h.end(v);
    });
    es.onopen = () => {
      this.openedAt = performance.now();
      this.h.status('live');
    };
    es.onerror = () => {
      if (this.es !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // Refused (401, 404, a server shutting down): try again later,
        // from the last record seen.
        this.es = null;
        es.close();
        this.h.status('retrying');
        clearTimeout(this.retry);
        this.retry = setTimeout(() => { if (!this.closed) this.open(); }, 3000);
        if (this.h.refused) this.h.refused();
      } else {
        this.h.status('reconnecting');
      }
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }
}
