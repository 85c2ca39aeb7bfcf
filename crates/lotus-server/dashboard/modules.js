// Modules: the list refreshed every 2 s and on system.module_* events, actions and logs.
import { $, h, api, enc, toast, badge, stateClass, confirmDialog, every, fmtNum, fmtMs, fmtDate, fmtClock, compact } from './lib.js';

const rows = new Map();   // name -> Row
const open = new Set();   // names whose details are unfolded
let stop = null;
let unsub = null;
let system = null;
let logsFor = '';
let soon = 0;

const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];

function act(label, testid, onClick, cls = '') {
  return h('button', { type: 'button', class: 'btn small ' + cls, text: label, testid, on: { click: onClick } });
}

class Row {
  constructor(name) {
    this.name = name;
    this.m = null;
    const toggle = () => {
      if (open.has(name)) open.delete(name); else open.add(name);
      this.renderDetail();
    };
    this.chev = h('span', { class: 'chev', 'aria-hidden': 'true', text: '▸' });
    this.title = h('button', { type: 'button', class: 'linkish mod-name', on: { click: toggle } }, this.chev, h('strong', { text: name }));
    this.sub = h('div', { class: 'muted small mono' });
    this.state = h('span', { class: 'badge', testid: 'module-state-' + name });
    this.restarts = h('td', { class: 'num', 'data-label': 'Restarts' });
    this.crashes = h('td', { class: 'num', 'data-label': 'Crashes' });
    this.handled = h('td', { class: 'num', 'data-label': 'Handled' });
    this.queueText = h('span', { class: 'mono small' });
    this.queueBar = h('i');
    this.err = h('button', { type: 'button', class: 'linkish error-snip', on: { click: () => this.err.classList.toggle('full') } });
    this.reload = act('Reload', 'module-reload-' + name, () => this.doReload());
    this.toggle = act('Disable', 'module-toggle-' + name, () => this.doToggle());
    this.rollback = act('Rollback', 'module-rollback-' + name, () => this.doRollback());
    this.logs = act('Logs', 'module-logs-' + name, () => openLogs(name), 'ghost');
    this.tr = h('tr', { testid: 'module-row-' + name },
      h('td', { class: 'mod-cell' }, this.title, this.sub),
      h('td', { class: 'state-cell' }, this.state),
      this.restarts, this.crashes, this.handled,
      h('td', { 'data-label': 'Queue' }, h('div', { class: 'queue' }, h('div', { class: 'bar' }, this.queueBar), this.queueText)),
      h('td', { class: 'err-cell full', 'data-label': 'Last error' }, this.err),
      h('td', { class: 'right full' }, h('div', { class: 'row-actions' }, this.reload, this.toggle, this.rollback, this.logs)));
    this.detail = h('tr', { class: 'detail-row', hidden: true });
  }

  update(m) {
    this.m = m;
    this.sub.textContent = [m.version && 'v' + m.version, m.runtime, m.node].filter(Boolean).join(' · ');
    const st = String(m.state ?? 'unknown');
    this.state.textContent = st;
    this.state.className = 'badge ' + stateClass(st);
    this.restarts.textContent = fmtNum(m.restarts);
    this.crashes.textContent = fmtNum(m.crashes);
    this.crashes.classList.toggle('warn-text', m.crashes > 0);
    this.handled.textContent = fmtNum(m.events_handled);
    this.handled.title = m.events_dropped ? `${fmtNum(m.events_dropped)} dropped` : '';
    const cap = m.queue_capacity || 0;
    const depth = m.queue_depth || 0;
    this.queueText.textContent = `${fmtNum(depth)}/${fmtNum(cap)}`;
    const pct = cap ? Math.min(100, (depth / cap) * 100) : 0;
    this.queueBar.style.width = pct + '%';
    this.queueBar.className = pct > 80 ? 'red' : pct > 50 ? 'amber' : '';
    const e = m.last_error || '';
    this.err.textContent = e || '—';
    this.err.title = e;
    this.err.disabled = !e;
    if (!this.busy) {
      this.reload.disabled = st === 'disabled' || st === 'stopped';
      this.toggle.textContent = st === 'disabled' ? 'Enable' : 'Disable';
      this.toggle.className = 'btn small' + (st === 'disabled' ? ' primary' : '');
    }
    this.rollback.hidden = !m.origin || m.origin === 'builtin';
    if (open.has(this.name)) this.renderDetail();
  }

  renderDetail() {
    const isOpen = open.has(this.name);
    this.detail.hidden = !isOpen;
    this.chev.classList.toggle('open', isOpen);
    if (!isOpen || !this.m) return;
    const m = this.m;
    const list = (xs) => (Array.isArray(xs) && xs.length ? xs.map((x) => h('code', { class: 'chip', text: typeof x === 'string' ? x : compact(x, 80) })) : h('span', { class: 'muted', text: 'none' }));
    const jobs = Array.isArray(m.jobs) && m.jobs.length
      ? m.jobs.map((j) => h('div', { class: 'mono small' }, `${j.name} · every ${fmtMs(j.every_ms)} · ${fmtNum(j.runs)} runs · ${fmtNum(j.missed)} missed`))
      : h('span', { class: 'muted', text: 'none' });
    this.detail.replaceChildren(h('td', { colspan: 8 },
      h('dl', { class: 'kv detail' },
        h('dt', { text: 'origin' }), h('dd', { class: 'mono', text: m.origin ?? '—' }),
        h('dt', { text: 'since' }), h('dd', { text: m.since ? fmtDate(m.since) : '—' }),
        h('dt', { text: 'errors · dropped' }), h('dd', { text: `${fmtNum(m.errors ?? 0)} · ${fmtNum(m.events_dropped ?? 0)}` }),
        h('dt', { text: 'subscriptions' }), h('dd', null, list(m.subscriptions)),
        h('dt', { text: 'tools' }), h('dd', null, list(m.tools)),
        h('dt', { text: 'jobs' }), h('dd', null, jobs),
        h('dt', { text: 'dependencies' }), h('dd', null, list(m.dependencies)),
        m.last_error ? [h('dt', { text: 'last error' }), h('dd', { class: 'mono error-text', text: m.last_error })] : null)));
  }

  async run(btn, label, fn) {
    this.busy = true;
    const old = btn.textContent;
    btn.disabled = true;
    btn.textContent = label;
    try { await fn(); } catch (e) { toast(`${this.name}: ${e.message}`, 'error'); }
    finally {
      this.busy = false;
      btn.disabled = false;
      btn.textContent = old;
      refresh().catch(() => {});
    }
  }

  doReload() {
    return this.run(this.reload, 'Reloading…', async () => {
      this.state.textContent = 'reloading';
      this.state.className = 'badge amber';
      const r = await api(`/api/v1/modules/${enc(this.name)}/reload`, { method: 'POST' });
      toast(`reloaded ${r.module ?? this.name} v${r.from_version} → v${r.to_version} in ${fmtMs(r.total_ms)}`);
    });
  }

  async doToggle() {
    const enable = this.m?.state === 'disabled';
    if (!enable && !(await confirmDialog({ title: `Disable ${this.name}?`, message: 'It stops now and stays stopped, also after a restart of LOTUS, until it is enabled again.', ok: 'Disable' }))) return;
    return this.run(this.toggle, enable ? 'Enabling…' : 'Disabling…', async () => {
      const m = await api(`/api/v1/modules/${enc(this.name)}/${enable ? 'enable' : 'disable'}`, { method: 'POST' });
      if (m && m.name) this.update(m);
      toast(`${enable ? 'enabled' : 'disabled'} ${this.name}`);
    });
  }

  async doRollback() {
    if (!(await confirmDialog({ title: `Roll ${this.name} back?`, message: 'The previous installed version replaces the current one and, if the module runs, it is reloaded.', ok: 'Roll back' }))) return;
    return this.run(this.rollback, 'Rolling back…', async () => {
      const r = await api(`/api/v1/modules/${enc(this.name)}/rollback`, { method: 'POST', body: {} });
      toast(`rolled ${this.name} back to v${r.version}${r.reload ? ` (reloaded in ${fmtMs(r.reload.total_ms)})` : ''}`);
    });
  }
}

async function refresh() {
  let list;
  try {
    list = await api('/api/v1/modules');
  } catch (e) {
    $('#modules-summary').textContent = 'Could not load the modules: ' + e.message;
    throw e;
  }
  if (!Array.isArray(list)) return;
  const body = $('#modules-body');
  const seen = new Set();
  let prev = null;
  for (const m of list) {
    const name = String(m.name);
    seen.add(name);
    let row = rows.get(name);
    if (!row) { row = new Row(name); rows.set(name, row); }
    row.update(m);
    // Keep the DOM order of the API's list without moving rows that are in place.
    const want = prev ? prev.detail.nextSibling : body.firstChild;
    if (want !== row.tr) body.insertBefore(row.tr, want);
    if (row.tr.nextSibling !== row.detail) body.insertBefore(row.detail, row.tr.nextSibling);
    prev = row;
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) { row.tr.remove(); row.detail.remove(); rows.delete(name); }
  }
  body.querySelector('.empty-row')?.remove();
  if (!list.length) body.append(h('tr', { class: 'empty-row' }, h('td', { colspan: 8, class: 'empty', text: 'No modules.' })));
  const by = (st) => list.filter((m) => m.state === st).length;
  const failed = by('failed');
  $('#modules-summary').textContent = `${list.length} modules · ${by('running')} running` + (failed ? ` · ${failed} failed` : '') +
    (by('disabled') ? ` · ${by('disabled')} disabled` : '');
}

// ---------- logs ----------

async function loadLogs() {
  const name = logsFor;
  const box = $('#logs-list');
  if (!name) return;
  try {
    const logs = await api(`/api/v1/modules/${enc(name)}/logs?limit=200`);
    if (name !== logsFor) return;
    const min = LEVELS.indexOf($('#logs-level').value);
    const shown = (Array.isArray(logs) ? logs : []).filter((l) => LEVELS.indexOf(String(l.level).toUpperCase()) >= min);
    box.replaceChildren(...shown.map((l) => {
      const lvl = String(l.level || 'INFO').toUpperCase();
      const fields = l.fields && typeof l.fields === 'object' && Object.keys(l.fields).length ? l.fields : null;
      return h('div', { class: 'log-line lvl-' + lvl.toLowerCase(), testid: 'log-line' },
        h('span', { class: 'mono muted', text: fmtClock(l.time), title: String(l.time ?? '') }),
        h('span', { class: 'lvl', text: lvl }),
        h('span', { class: 'log-msg' }, String(l.message ?? ''),
          fields ? h('span', { class: 'mono muted small fields', text: ' ' + Object.entries(fields).map(([k, v]) => `${k}=${compact(v, 200)}`).join(' ') }) : null));
    }));
    if (!shown.length) box.append(h('p', { class: 'empty small', text: Array.isArray(logs) && logs.length ? 'No lines at this level.' : 'No log lines yet.' }));
    box.scrollTop = box.scrollHeight;
  } catch (e) {
    box.replaceChildren(h('p', { class: 'error-text', text: e.message }));
  }
}

function openLogs(name) {
  logsFor = name;
  $('#logs-title').textContent = name;
  $('#logs-list').replaceChildren(h('p', { class: 'muted small', text: 'Loading…' }));
  $('#logs-panel').hidden = false;
  for (const [n, row] of rows) row.tr.classList.toggle('selected', n === name);
  loadLogs();
}

function closeLogs() {
  logsFor = '';
  $('#logs-panel').hidden = true;
  for (const row of rows.values()) row.tr.classList.remove('selected');
}

export default {
  init(ctx) {
    system = ctx.system;
    $('#modules-refresh').addEventListener('click', () => refresh().catch((e) => toast(e.message, 'error')));
    $('#logs-refresh').addEventListener('click', loadLogs);
    $('#logs-level').addEventListener('change', loadLogs);
    $('#logs-close').addEventListener('click', closeLogs);
    document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && logsFor && !$('#confirm').open) closeLogs(); });
  },
  show() {
    if (!stop) stop = every(2000, refresh);
    if (!unsub) {
      unsub = system.subscribe((ev) => {
        if (!String(ev.topic).startsWith('system.module_')) return;
        clearTimeout(soon);
        soon = setTimeout(() => refresh().catch(() => {}), 150);
        if (logsFor && ev.payload && ev.payload.module === logsFor) setTimeout(loadLogs, 300);
      });
    }
  },
  hide() {
    stop?.(); stop = null;
    unsub?.(); unsub = null;
    clearTimeout(soon);
  },
};
