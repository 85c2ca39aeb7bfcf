// Events: the bus, live, through the WebSocket; filter, pause, clear and publish.
import { $, h, api, toast, EventSocket, fmtClock, fmtNum, compact, jsonView } from './lib.js';

const MAX = 500;
const PATTERN_KEY = 'lotus.events.pattern';
let sock = null;
let paused = false;
let held = [];       // rows that arrived while paused, oldest first
let received = 0;

const TOPIC_CLASS = { system: 't-system', memory: 't-memory', cognition: 't-cognition', action: 't-action', test: 't-test' };

function eventRow(ev) {
  const topic = String(ev.topic ?? '');
  const row = h('details', { class: 'event-row', testid: 'event-row' },
    h('summary', null,
      h('span', { class: 'mono muted', text: fmtClock(ev.time), title: String(ev.time ?? '') }),
      h('span', { class: 'mono topic ' + (TOPIC_CLASS[topic.split('.')[0]] || ''), text: topic }),
      h('span', { class: 'src', text: String(ev.source ?? '') }),
      h('span', { class: 'mono payload', text: compact(ev.payload, 400) })));
  row.addEventListener('toggle', () => {
    if (row.open && !row.dataset.filled) {
      row.dataset.filled = '1';
      row.append(jsonView(ev));
    }
  });
  return row;
}

function add(el) {
  if (paused) {
    held.push(el);
    if (held.length > MAX) held.shift();
  } else {
    const list = $('#events-list');
    list.prepend(el);
    while (list.children.length > MAX) list.lastElementChild.remove();
  }
  counter();
}

function counter() {
  const n = $('#events-list').children.length;
  $('#events-empty').hidden = n > 0;
  $('#events-count').textContent = `${fmtNum(received)} received · ${fmtNum(n)} shown` + (paused ? ` · ${held.length} held` : '');
}

function setStatus(state, text) {
  const el = $('#events-status');
  el.dataset.state = state;
  el.textContent = text;
  el.className = 'status-' + state;
}

function onMessage(msg) {
  switch (msg.type) {
    case 'event':
      if (!msg.event) return;
      received++;
      add(eventRow(msg.event));
      break;
    case 'lagged':
      add(h('div', { class: 'event-notice', testid: 'event-lagged', text: `lagged: ${fmtNum(msg.dropped)} dropped (this page was too slow)` }));
      break;
    case 'subscribed': {
      const p = (msg.patterns || []).join(',');
      setStatus('subscribed', `· live on ${p}`);
      $('#events-error').hidden = true;
      try { localStorage.setItem(PATTERN_KEY, p); } catch { /* ignore */ }
      if (document.activeElement !== $('#events-filter')) $('#events-filter').value = p;
      break;
    }
    case 'error': {
      const m = msg.error?.message || 'error';
      const err = $('#events-error');
      err.hidden = false;
      err.textContent = `Filter not applied: ${m} (the previous filter stays).`;
      if (sock.state === 'open') setStatus('subscribed', `· live on ${sock.pattern}`);
      toast(m, 'error');
      break;
    }
    default:
  }
}

function onState(st) {
  if (st === 'open') setStatus('open', '· connected');
  else if (st === 'connecting') setStatus('connecting', '· connecting…');
  else setStatus('closed', '· disconnected, reconnecting…');
}

function setPaused(p) {
  paused = p;
  $('#events-pause').textContent = p ? 'Resume' : 'Pause';
  $('#events-pause').classList.toggle('primary', p);
  if (!p && held.length) {
    const list = $('#events-list');
    const frag = document.createDocumentFragment();
    for (let i = held.length - 1; i >= 0; i--) frag.append(held[i]);
    held = [];
    list.prepend(frag);
    while (list.children.length > MAX) list.lastElementChild.remove();
  }
  counter();
}

export default {
  init() {
    let pattern = '>';
    try { pattern = localStorage.getItem(PATTERN_KEY) || '>'; } catch { /* ignore */ }
    $('#events-filter').value = pattern;
    sock = new EventSocket(pattern, { onMessage, onState });
    $('#events-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = $('#events-filter').value.replace(/\s+/g, '') || '>';
      $('#events-filter').value = p;
      if (sock.setPattern(p)) setStatus('pending', `· applying ${p}…`);
      $('#events-filter').blur();
    });
    $('#events-pause').addEventListener('click', () => setPaused(!paused));
    $('#events-clear').addEventListener('click', () => {
      $('#events-list').replaceChildren();
      held = [];
      received = 0;
      counter();
    });
    $('#publish-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const topic = $('#publish-topic').value.trim();
      if (!topic) { toast('A topic is needed, e.g. test.hello', 'error'); return; }
      let payload;
      const raw = $('#publish-payload').value.trim();
      try { payload = raw ? JSON.parse(raw) : {}; } catch (e) { toast('The payload is not JSON: ' + e.message, 'error'); return; }
      const btn = $('#publish-submit');
      btn.disabled = true;
      try {
        const r = await api('/api/v1/events', { method: 'POST', body: { topic, payload } });
        toast(`published ${topic} · ${fmtNum(r?.matched ?? 0)} matched` + (r?.timed_out ? ` · timed out${typeof r.timed_out === 'number' ? ': ' + fmtNum(r.timed_out) : ''}` : ''));
      } catch (e) {
        toast(e.message, 'error');
      } finally {
        btn.disabled = false;
      }
    });
    counter();
  },
  show() {
    if (!sock.running) sock.start();
    else if (!sock.ws) sock.connect();
  },
};
