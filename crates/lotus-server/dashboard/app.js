// LOTUS dashboard: sign-in, routing, the sidebar and the shared system-event socket.
import { $, api, getToken, setToken, on, toast, EventSocket, every, fmtUptime } from './lib.js';
import chat from './chat.js';
import modules from './modules.js';
import events from './events.js';
import memory from './memory.js';
import providers from './providers.js';
import health from './health.js';

const pages = { chat, modules, events, memory, providers, health };
const TITLES = { chat: 'Chat', modules: 'Modules', events: 'Events', memory: 'Memory', providers: 'Providers', health: 'Health' };

let current = null;      // the page shown
let signedIn = false;
let stopPing = null;
let apiUp = null;        // last API answer: true, false or null (unknown)

// ---------- the shared socket: system events for every page ----------

const systemListeners = new Set();
export const system = {
  subscribe(fn) { systemListeners.add(fn); return () => systemListeners.delete(fn); },
};
const systemSocket = new EventSocket('system.>', {
  onMessage(msg) {
    if (msg.type === 'event' && msg.event) for (const fn of systemListeners) fn(msg.event);
  },
  onState: renderConn,
});

function renderConn() {
  const el = $('#conn');
  const ws = systemSocket.state;
  let state, label, title;
  if (ws === 'open') { state = 'live'; label = 'live'; title = 'The API answers and the event socket is open.'; }
  else if (apiUp === true) { state = 'ok'; label = 'connected'; title = 'The API answers; the event socket is reconnecting.'; }
  else if (apiUp === false) { state = 'down'; label = 'offline'; title = 'The LOTUS API does not answer.'; }
  else { state = 'connecting'; label = 'connecting'; title = 'Connecting…'; }
  el.dataset.state = state;
  el.title = title;
  $('#conn-label').textContent = label;
}

on('reachable', (up) => {
  if (apiUp !== up) { apiUp = up; renderConn(); }
});

// ---------- token from the address bar ----------

function takeTokenFromHash() {
  const hash = location.hash.slice(1);
  const m = /(^|[?&/#])token=([^&]*)/.exec(hash);
  if (!m) return false;
  let token = m[2];
  try { token = decodeURIComponent(token); } catch { /* keep it raw */ }
  let rest = hash.slice(0, m.index + m[1].length) + hash.slice(m.index + m[0].length);
  rest = rest.replace(/\?&/, '?').replace(/&&/, '&').replace(/[?&/]+$/, '');
  if (!rest.startsWith('/')) rest = '/chat';
  if (token) setToken(token.trim());
  history.replaceState(history.state, '', location.pathname + location.search + '#' + rest);
  return !!token;
}

// ---------- sign-in ----------

function showSignin(message) {
  signedIn = false;
  if (current) { pages[current].hide?.(); current = null; }
  systemSocket.stop();
  stopPing?.(); stopPing = null;
  $('#app').hidden = true;
  $('#signin').hidden = false;
  const err = $('#signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  document.title = 'Sign in · LOTUS';
  const input = $('#signin-token');
  input.value = '';
  input.focus();
  api('/api/v1/health', { auth: false }).then((hl) => {
    $('#signin-version').textContent = `LOTUS ${hl.version || ''} · ${hl.status || ''}${hl.node ? ' · ' + hl.node : ''}`;
  }, () => { $('#signin-version').textContent = 'The API does not answer yet.'; });
}

async function submitSignin(ev) {
  ev.preventDefault();
  const input = $('#signin-token');
  const btn = $('#signin-submit');
  const err = $('#signin-error');
  const token = input.value.trim();
  if (!token) { err.hidden = false; err.textContent = 'Paste the token first.'; return; }
  btn.disabled = true;
  btn.textContent = 'Signing in…';
  try {
    await api('/api/v1/bus', { token });
    setToken(token);
    showApp();
  } catch (e) {
    err.hidden = false;
    err.textContent = e.status === 401 ? 'This token was not accepted. Check it and try again.' : e.message;
    input.select();
  } finally {
    btn.disabled = false;
    btn.textContent = 'Sign in';
  }
}

on('unauthorized', () => {
  if (!signedIn) return;
  setToken('');
  showSignin('The API no longer accepts this token (401). Sign in again.');
});

// ---------- the app ----------

function showApp() {
  signedIn = true;
  $('#signin').hidden = true;
  $('#app').hidden = false;
  systemSocket.start();
  stopPing = every(10000, ping);
  route();
}

async function ping() {
  try {
    const hl = await api('/api/v1/health', { auth: false });
    $('#foot-version').textContent = `v${hl.version || '?'}${hl.node ? ' · ' + hl.node : ''}`;
    const badge = $('#nav-failed');
    badge.hidden = !hl.failed;
    badge.textContent = hl.failed ? String(hl.failed) : '';
    badge.title = hl.failed ? `${hl.failed} failed module(s)` : '';
  } catch { /* shown by the connection dot */ }
}

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { name: path.split('/')[0], params: new URLSearchParams(query) };
}

function route() {
  if (!signedIn) return;
  const { name, params } = parseRoute();
  if (!pages[name]) {
    history.replaceState(history.state, '', location.pathname + location.search + '#/chat');
    return route();
  }
  if (current !== name) {
    if (current) pages[current].hide?.();
    for (const sec of document.querySelectorAll('.page')) sec.hidden = sec.dataset.page !== name;
    for (const a of document.querySelectorAll('.nav a')) {
      a.classList.toggle('active', a.dataset.route === name);
      if (a.dataset.route === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    current = name;
    document.title = `${TITLES[name]} · LOTUS`;
    $('#main').scrollTop = 0;
    document.querySelector('.nav a.active')?.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }
  pages[name].show?.(params);
}

function boot() {
  takeTokenFromHash();
  for (const p of Object.values(pages)) p.init?.({ system });
  $('#signin-form').addEventListener('submit', submitSignin);
  $('#signout').addEventListener('click', () => {
    setToken('');
    try { sessionStorage.clear(); } catch { /* ignore */ }
    location.hash = '#/chat';
    location.reload();
  });
  window.addEventListener('hashchange', () => {
    if (takeTokenFromHash() && !signedIn) showApp();
    else route();
  });
  window.addEventListener('error', (e) => toast('Dashboard error: ' + e.message, 'error'));
  if (getToken()) showApp();
  else showSignin('');
}

boot();
