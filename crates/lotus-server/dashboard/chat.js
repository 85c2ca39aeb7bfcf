// Chat: POST /api/v1/chat answers a text/event-stream of step, delta, approval, done and error.
import { $, h, api, toast, uuid, compact, jsonView, fmtNum, fmtUsd, fmtMs } from './lib.js';

const SESSION_KEY = 'lotus.chat.session';
let session = '';
let ctrl = null;   // AbortController of the running task

function newSession() {
  session = uuid();
  try { sessionStorage.setItem(SESSION_KEY, session); } catch { /* ignore */ }
  const el = $('#chat-session');
  el.textContent = session.slice(0, 8);
  el.title = session;
}

// ---------- SSE ----------

async function* readSse(res) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const frame = (raw) => {
    let event = 'message';
    const data = [];
    for (const line of raw.split('\n')) {
      const l = line.replace(/\r$/, '');
      if (!l || l.startsWith(':')) continue;
      const i = l.indexOf(':');
      const field = i < 0 ? l : l.slice(0, i);
      let value = i < 0 ? '' : l.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return null;
    let parsed;
    try { parsed = JSON.parse(data.join('\n')); } catch { parsed = data.join('\n'); }
    return { event, data: parsed };
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let m;
      while ((m = /\r?\n\r?\n/.exec(buf))) {
        const f = frame(buf.slice(0, m.index));
        buf = buf.slice(m.index + m[0].length);
        if (f) yield f;
      }
    }
    buf += dec.decode();
    const f = buf.trim() && frame(buf);
    if (f) yield f;
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---------- answer text: plain text, `code` and ``` fences ----------

function renderRich(el, text) {
  el.replaceChildren();
  const fence = /```([^\n`]*)\n?([\s\S]*?)(?:```|$)/g;
  let last = 0;
  const inline = (t) => {
    const parts = t.split(/`([^`\n]+)`/);
    parts.forEach((p, i) => { if (p) el.append(i % 2 ? h('code', { text: p }) : p); });
  };
  for (let m; (m = fence.exec(text));) {
    inline(text.slice(last, m.index).replace(/\n+$/, ''));
    el.append(h('pre', { class: 'code', 'data-lang': m[1].trim() || null }, h('code', { text: m[2].replace(/\n$/, '') })));
    last = fence.lastIndex;
    while (text[last] === '\n') last++;
  }
  inline(text.slice(last));
}

// ---------- steps ----------

const count = (v, one, many = one + 's') => {
  const n = Array.isArray(v) ? v.length : typeof v === 'number' ? v : null;
  return n == null ? null : `${n} ${n === 1 ? one : many}`;
};
const join = (...xs) => xs.filter((x) => x != null && x !== '').join(' · ');
const rest = (d) => {
  const o = { ...d };
  delete o.kind; delete o.step; delete o.session;
  return o;
};

function describe(d) {
  switch (d.kind) {
    case 'context':
      return { label: 'Context', text: join(d.model && `model ${d.model}`, count(d.memories, 'memory', 'memories'),
        count(d.history, 'earlier turn'), count(d.tools, 'tool'), d.native_tools === false ? 'tools as text' : null),
      detail: Array.isArray(d.memories) && d.memories.length ? d.memories : null };
    case 'analysis':
      return { label: 'Analysis', text: join(d.complex ? 'complex' : 'simple', d.tier && `tier ${d.tier}`, d.model, d.reason) };
    case 'plan':
      return { label: 'Plan', text: count(d.subtasks, 'part') || '', detail: d.subtasks };
    case 'subtask':
      return { label: `Part ${d.subtask ?? ''}`.trim(), text: d.text ?? compact(rest(d)) };
    case 'model':
      return { label: 'Model', text: join(d.model, d.input_tokens != null && `${fmtNum(d.input_tokens)} in / ${fmtNum(d.output_tokens ?? 0)} out tokens`) };
    case 'thought':
      return { label: 'Thought', text: d.text ?? '' };
    case 'tool_call':
      return { label: 'Tool call', code: d.tool, text: compact(d.arguments ?? {}, 160), detail: d.arguments };
    case 'observation': {
      const res = d.result;
      const snippet = compact(res, 200);
      return { label: 'Observation', code: d.tool, status: d.ok === false ? 'failed' : 'ok',
        text: join(d.duration_us != null && fmtMs(d.duration_us / 1000), snippet),
        detail: snippet.endsWith('…') ? res : null };
    }
    case 'reflection':
      return { label: 'Reflection', text: d.text ?? compact(rest(d)) };
    case 'approval':
      return { label: 'Approval', code: d.tool, status: d.approved ? 'ok' : 'failed',
        text: join(d.approved ? 'allowed' : 'denied', d.reason) };
    case 'summary':
      return { label: 'Summary', text: compact(rest(d), 300) };
    default:
      return { label: String(d.kind ?? 'step'), text: compact(rest(d), 300) };
  }
}

// ---------- one exchange ----------

class Turn {
  constructor(log) {
    this.t0 = performance.now();
    this.text = '';
    this.gotDelta = false;
    this.finished = false;
    this.timers = [];
    this.answer = h('div', { class: 'answer', testid: 'chat-answer' });
    this.typing = h('div', { class: 'typing', 'aria-label': 'ASH is thinking' }, h('i'), h('i'), h('i'));
    this.extra = h('div', { class: 'extra' });
    this.list = h('ol', { class: 'steps-list' });
    this.count = h('span', { class: 'muted' });
    this.steps = h('details', { class: 'steps', testid: 'chat-steps', open: true, hidden: true },
      h('summary', null, 'Steps ', this.count), this.list);
    this.meta = h('div', { class: 'meta', testid: 'chat-meta', hidden: true });
    this.el = h('div', { class: 'msg ash' },
      h('img', { class: 'avatar', src: '/favicon.svg', alt: 'ASH', width: 28, height: 28 }),
      h('div', { class: 'bubble' }, this.answer, this.typing, this.extra, this.steps, this.meta));
    log.append(this.el);
  }

  handle(event, d) {
    if (this.finished) return;
    if (event === 'step' && d && typeof d === 'object') this.step(d);
    else if (event === 'delta') {
      this.gotDelta = true;
      this.text += d && typeof d === 'object' ? (d.delta ?? '') : String(d ?? '');
      this.render();
    } else if (event === 'approval') this.approval(d || {});
    else if (event === 'done') this.done(d || {});
    else if (event === 'error') this.fail(d && d.message ? d.message : compact(d));
  }

  render() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      stick(() => renderRich(this.answer, this.text));
    });
  }

  step(d) {
    const x = describe(d);
    const li = h('li', { class: 'step kind-' + String(d.kind).replace(/[^a-z_]/gi, ''), testid: 'chat-step' },
      h('div', { class: 'step-line' },
        h('span', { class: 'step-label', text: x.label }),
        typeof d.subtask === 'number' && d.kind !== 'subtask' ? h('span', { class: 'tag', text: 'part ' + d.subtask }) : null,
        d.phase ? h('span', { class: 'tag', text: d.phase }) : null,
        x.code ? h('code', { text: x.code }) : null,
        x.status ? h('span', { class: 'badge ' + (x.status === 'ok' ? 'green' : 'red'), text: x.status }) : null,
        x.text ? h('span', { class: 'step-text', text: x.text }) : null));
    if (x.detail != null) li.append(h('details', { class: 'step-detail' }, h('summary', { text: 'details' }), jsonView(x.detail)));
    stick(() => {
      this.steps.hidden = false;
      this.list.append(li);
      this.count.textContent = `(${this.list.children.length})`;
    });
  }

  approval(d) {
    const allow = h('button', { type: 'button', class: 'btn small primary', text: 'Allow', testid: 'approval-allow' });
    const deny = h('button', { type: 'button', class: 'btn small danger', text: 'Deny', testid: 'approval-deny' });
    const status = h('span', { class: 'muted small' });
    const card = h('div', { class: 'approval', testid: 'chat-approval' },
      h('div', null, h('strong', { text: 'Approval needed · ' }), 'ASH wants to call ', h('code', { text: String(d.tool ?? '?') })),
      jsonView(d.arguments ?? {}),
      h('div', { class: 'row' }, allow, deny, status));
    const deadline = Date.now() + (Number(d.timeout_s) || 120) * 1000;
    const tick = () => {
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      status.textContent = `waiting · ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left`;
      if (!left) settle('timed out: denied');
    };
    const iv = setInterval(tick, 1000);
    this.timers.push(iv);
    const settle = (text) => {
      clearInterval(iv);
      allow.disabled = deny.disabled = true;
      status.textContent = text;
    };
    const answer = async (approve) => {
      allow.disabled = deny.disabled = true;
      const body = approve ? { id: d.id, approve: true } : { id: d.id, approve: false, reason: 'denied in the dashboard' };
      try {
        await api('/api/v1/tools/reasoning.approve/call', { method: 'POST', body });
        settle(approve ? 'allowed' : 'denied');
        card.classList.add(approve ? 'allowed' : 'denied');
      } catch (e) {
        toast('Could not answer the approval: ' + e.message, 'error');
        allow.disabled = deny.disabled = false;
      }
    };
    allow.addEventListener('click', () => answer(true));
    deny.addEventListener('click', () => answer(false));
    tick();
    stick(() => this.extra.append(card));
  }

  done(d) {
    // The response holds the whole answer: it wins over the pieces (some may have been text
    // before a tool call, or lost by a tab that fell behind).
    if (typeof d.text === 'string' && (d.text || !this.gotDelta)) this.text = d.text;
    if (d.stopped === 'error') this.error(d.error || 'The task failed.');
    else if (d.stopped && d.stopped !== 'answer') this.extra.append(h('div', { class: 'note', text: `stopped: ${d.stopped.replace(/_/g, ' ')}` }));
    const usage = d.usage || {};
    const models = Array.isArray(d.models) ? d.models.map((m) => (typeof m === 'string' ? m : m.model || compact(m, 40))) : [];
    this.finish([
      models.length ? [...new Set(models)].join(', ') : null,
      count(d.steps, 'step'),
      count(d.tool_calls, 'tool'),
      usage.input_tokens != null ? `${fmtNum(usage.input_tokens)} in / ${fmtNum(usage.output_tokens ?? 0)} out tokens` : null,
      typeof d.cost_usd === 'number' ? fmtUsd(d.cost_usd) : null,
    ]);
  }

  error(message) {
    this.extra.append(h('div', { class: 'error-box', testid: 'chat-error', text: message }));
  }

  fail(message) {
    if (this.finished) return;
    this.error(message);
    this.finish([]);
  }

  finish(parts) {
    this.finished = true;
    for (const t of this.timers) clearInterval(t);
    cancelAnimationFrame(this.pending);
    this.pending = 0;
    stick(() => {
      this.typing.remove();
      renderRich(this.answer, this.text);
      if (!this.text && !this.extra.querySelector('.error-box')) this.answer.append(h('span', { class: 'muted', text: '(no answer)' }));
      this.steps.open = false;
      const secs = ((performance.now() - this.t0) / 1000).toFixed(1) + ' s';
      this.meta.textContent = join(...parts, secs);
      this.meta.hidden = false;
    });
  }
}

/** Runs a DOM change and keeps the log scrolled to the bottom if it was there. */
function stick(fn) {
  const sc = $('#chat-scroll');
  const near = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 120;
  fn();
  if (near) sc.scrollTop = sc.scrollHeight;
}

function setRunning(on) {
  $('#chat-send').disabled = on;
  $('#chat-stop').hidden = !on;
}

async function send(text) {
  const log = $('#chat-log');
  $('#chat-empty').hidden = true;
  const sc = $('#chat-scroll');
  log.append(h('div', { class: 'msg user' }, h('div', { class: 'bubble', testid: 'chat-user', text })));
  const turn = new Turn(log);
  sc.scrollTop = sc.scrollHeight;
  ctrl = new AbortController();
  const mine = ctrl;
  setRunning(true);
  try {
    const res = await api('/api/v1/chat', { method: 'POST', body: { text, session }, raw: true, signal: ctrl.signal });
    for await (const { event, data } of readSse(res)) {
      turn.handle(event, data);
      if (turn.finished) break;
    }
    if (!turn.finished) turn.fail('The answer stream ended before the task finished.');
  } catch (e) {
    turn.fail(e.name === 'AbortError' ? 'Stopped.' : e.message);
  } finally {
    if (ctrl === mine) { ctrl = null; setRunning(false); }
  }
}

function autoGrow() {
  const ta = $('#chat-input');
  ta.style.height = 'auto';
  ta.style.height = Math.min(ta.scrollHeight + 2, 220) + 'px';
}

export default {
  init() {
    let stored = '';
    try { stored = sessionStorage.getItem(SESSION_KEY) || ''; } catch { /* ignore */ }
    if (stored) {
      session = stored;
      $('#chat-session').textContent = session.slice(0, 8);
      $('#chat-session').title = session;
    } else newSession();

    const input = $('#chat-input');
    $('#chat-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (!text || ctrl) return;
      input.value = '';
      autoGrow();
      send(text);
    });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $('#chat-form').requestSubmit();
      }
    });
    input.addEventListener('input', autoGrow);
    $('#chat-stop').addEventListener('click', () => ctrl?.abort());
    $('#chat-new').addEventListener('click', () => {
      ctrl?.abort();
      newSession();
      const log = $('#chat-log');
      for (const el of [...log.children]) if (el.id !== 'chat-empty') el.remove();
      $('#chat-empty').hidden = false;
      input.focus();
      toast('New chat started', 'info');
    });
  },
  show() {
    if (matchMedia('(pointer: fine)').matches) $('#chat-input').focus();
  },
};
