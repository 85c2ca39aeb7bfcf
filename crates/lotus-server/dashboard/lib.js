// Shared helpers of the LOTUS dashboard: DOM building, the API client, toasts, dialogs,
// formatting and the event WebSocket. Server text only ever reaches the page via textContent.

const TOKEN_KEY = 'lotus.token';

// ---------- DOM ----------

export const $ = (sel, root = document) => root.querySelector(sel);

const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'open', 'selected']);

/** h('div', {class, testid, text, title, on: {click}}, ...children) */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** The same for SVG elements. */
export function s(tag, props, ...children) {
  return build(document.createElementNS('http://www.w3.org/2000/svg', tag), props, children);
}

function build(el, props, children) {
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'testid') el.dataset.testid = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (PROPS.has(k)) el[k] = v;
      else if (k !== 'style') el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// ---------- token ----------

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
export function setToken(t) {
  try { t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
}

// ---------- API ----------

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const listeners = { unauthorized: [], reachable: [] };
export function on(name, fn) { listeners[name].push(fn); }
function emit(name, ...args) { for (const fn of listeners[name]) fn(...args); }

/**
 * Calls the API and answers the parsed JSON (or the Response itself with raw: true).
 * Throws ApiError with the API's message; a 401 also signs the dashboard out.
 */
export async function api(path, { method = 'GET', body, auth = true, raw = false, signal, token } = {}) {
  const headers = { Accept: raw ? 'text/event-stream' : 'application/json' };
  if (auth) headers.Authorization = 'Bearer ' + (token ?? getToken());
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    emit('reachable', false);
    throw new ApiError(0, 'network', 'Cannot reach the LOTUS API (' + (e.message || 'network error') + ')');
  }
  emit('reachable', true);
  if (!res.ok) {
    let code = 'http_' + res.status;
    let message = 'HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '');
    try {
      const j = await res.json();
      if (j && j.error) {
        code = j.error.code || code;
        message = j.error.message || message;
      }
    } catch { /* not JSON */ }
    if (res.status === 401 && auth && token === undefined) emit('unauthorized', message);
    throw new ApiError(res.status, code, message);
  }
  if (raw) return res;
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { throw new ApiError(res.status, 'bad_json', 'The API answered something that is not JSON.'); }
}

export const enc = encodeURIComponent;

// ---------- toasts and dialogs ----------

export function toast(message, kind = 'ok') {
  const box = $('#toasts');
  const el = h('div', { class: 'toast ' + kind, testid: 'toast', role: kind === 'error' ? 'alert' : 'status' },
    h('i', { class: 'toast-dot' }), h('span', { text: message }));
  const close = () => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 200);
  };
  el.addEventListener('click', close);
  box.append(el);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(close, kind === 'error' ? 9000 : 5000);
  return el;
}

/** A modal confirmation; resolves true when confirmed. */
export function confirmDialog({ title, message, ok = 'OK', danger = true }) {
  const dlg = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-message').textContent = message || '';
  const okBtn = $('#confirm-ok');
  okBtn.textContent = ok;
  okBtn.className = 'btn ' + (danger ? 'danger' : 'primary');
  dlg.returnValue = 'cancel';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
    okBtn.focus();
  });
}

// ---------- formatting ----------

const pad = (n, w = 2) => String(n).padStart(w, '0');

export function fmtClock(t) {
  const d = t instanceof Date ? t : new Date(t);
  if (isNaN(d)) return String(t ?? '');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDate(t) {
  const d = t instanceof Date ? t : new Date(t);
  if (isNaN(d)) return '';
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

export function fmtNum(n) {
  if (typeof n !== 'number') return n == null ? '—' : String(n);
  return Number.isInteger(n) ? n.toLocaleString('en-US') : n.toLocaleString('en-US', { maximumFractionDigits: 3 });
}

export function fmtUsd(v) {
  if (v == null || typeof v !== 'number') return '—';
  if (v === 0) return '$0';
  // Small sums keep two significant digits: a cheap call costs millionths of a dollar.
  if (Math.abs(v) < 0.01) return '$' + Number(v.toPrecision(2)).toFixed(Math.min(10, 1 - Math.floor(Math.log10(Math.abs(v)))));
  if (Math.abs(v) < 100) return '$' + v.toFixed(2);
  return '$' + Math.round(v).toLocaleString('en-US');
}

export function fmtMs(ms) {
  if (typeof ms !== 'number') return '—';
  if (ms < 1) return '<1 ms';
  if (ms < 10) return ms.toFixed(1) + ' ms';
  if (ms < 10000) return Math.round(ms) + ' ms';
  return (ms / 1000).toFixed(1) + ' s';
}

export function fmtUptime(ms) {
  if (typeof ms !== 'number') return '—';
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s %= 86400;
  const hr = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

export function compact(v, max = 240) {
  let t;
  try { t = typeof v === 'string' ? v : JSON.stringify(v); } catch { t = String(v); }
  if (t === undefined) t = String(v);
  return t.length > max ? t.slice(0, max - 1) + '…' : t;
}

/** Pretty JSON as DOM nodes with light syntax colours. */
export function jsonView(value) {
  let text;
  try { text = JSON.stringify(value, null, 2); } catch { text = String(value); }
  if (text === undefined) text = String(value);
  const pre = h('pre', { class: 'json' });
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (let m; (m = re.exec(text));) {
    if (m.index > last) pre.append(text.slice(last, m.index));
    if (m[1]) {
      pre.append(h('span', { class: m[2] ? 'j-key' : 'j-str', text: m[1] }));
      if (m[2]) pre.append(m[2]);
    } else if (m[3]) pre.append(h('span', { class: 'j-lit', text: m[3] }));
    else pre.append(h('span', { class: 'j-num', text: m[4] }));
    last = re.lastIndex;
  }
  pre.append(text.slice(last));
  return pre;
}

const STATE_CLASS = {
  running: 'green', ok: 'green', true: 'green',
  failed: 'red', error: 'red', crashed: 'red', false: 'red',
  restarting: 'amber', starting: 'amber', stopping: 'amber', degraded: 'amber', reloading: 'amber',
  disabled: 'grey', stopped: 'grey',
  elsewhere: 'blue',
};

export function badge(text, cls) {
  return h('span', { class: 'badge ' + (cls || STATE_CLASS[String(text)] || 'grey'), text });
}
export function stateClass(state) { return STATE_CLASS[state] || 'grey'; }

/** A definition list from a flat-ish object (nested values as compact JSON). */
export function fillKv(dl, obj) {
  dl.replaceChildren();
  const entries = obj && typeof obj === 'object' ? Object.entries(obj) : [['value', obj]];
  if (!entries.length) dl.append(h('dd', { class: 'muted', text: 'nothing' }));
  for (const [k, v] of entries) {
    dl.append(h('dt', { text: k.replace(/_/g, ' ') }),
      h('dd', { class: typeof v === 'number' ? 'num' : 'mono', text: typeof v === 'number' ? fmtNum(v) : compact(v, 400) }));
  }
}

/** A table from an array of objects, columns = the union of their keys, `first` ones leading. */
export function genericTable(rows, first = []) {
  if (!Array.isArray(rows) || !rows.length) return h('p', { class: 'empty small', text: 'None.' });
  const cols = [];
  for (const r of rows) for (const k of Object.keys(r || {})) if (!cols.includes(k)) cols.push(k);
  cols.sort((a, b) => {
    const [i, j] = [first.indexOf(a), first.indexOf(b)];
    return (i < 0 ? first.length : i) - (j < 0 ? first.length : j);
  });
  const num = (k) => rows.every((r) => r[k] == null || typeof r[k] === 'number');
  return h('table', { class: 'table' },
    h('thead', null, h('tr', null, cols.map((c) => h('th', { class: num(c) ? 'num' : '', text: c.replace(/_/g, ' ') })))),
    h('tbody', null, rows.map((r) => h('tr', null, cols.map((c) => {
      const v = r[c];
      if (typeof v === 'number') return h('td', { class: 'num', text: fmtNum(v) });
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return h('td', { class: 'mono', text: v.join(', ') });
      return h('td', { class: 'mono', text: v == null ? '—' : compact(v, 160) });
    })))));
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((n) => n.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// ---------- the event WebSocket ----------

/**
 * One WebSocket on /api/v1/events/ws, reconnecting with backoff while started.
 * handlers: onMessage(msg), onState(state: 'connecting'|'open'|'closed').
 */
export class EventSocket {
  constructor(pattern, handlers) {
    this.pattern = pattern || '>';
    this.handlers = handlers;
    this.ws = null;
    this.state = 'closed';
    this.running = false;
    this.backoff = 1000;
    this.timer = 0;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000); }
    this.setState('closed');
  }

  /** Asks for another filter; answers false when not connected (used at the next connect). */
  setPattern(p) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ pattern: p }));
      return true;
    }
    this.pattern = p;
    return false;
  }

  setState(st) {
    if (this.state === st) return;
    this.state = st;
    this.handlers.onState?.(st);
  }

  connect() {
    clearTimeout(this.timer);
    const token = getToken();
    if (!this.running || !token) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/api/v1/events/ws?pattern=${enc(this.pattern)}`;
    let ws;
    try {
      ws = new WebSocket(url, ['lotus.v1', 'bearer.' + token]);
    } catch (e) {
      this.handlers.onMessage?.({ type: 'error', error: { code: 'websocket', message: e.message } });
      this.retry();
      return;
    }
    this.ws = ws;
    this.setState('connecting');
    ws.onopen = () => { this.backoff = 1000; this.setState('open'); };
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch { return; }
      if (msg && msg.type === 'subscribed' && Array.isArray(msg.patterns)) this.pattern = msg.patterns.join(',');
      this.handlers.onMessage?.(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.setState('closed');
      this.retry();
    };
  }

  retry() {
    if (!this.running) return;
    const wait = this.backoff * (0.8 + Math.random() * 0.4);
    this.backoff = Math.min(this.backoff * 2, 15000);
    this.timer = setTimeout(() => this.connect(), wait);
  }
}

/** Calls fn every ms while the page is shown and the tab visible; returns a stop function. */
export function every(ms, fn) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) { try { await fn(); } catch { /* shown by fn */ } }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
