// Providers: reachability, a test call per provider, the default chain and the costs chart.
import { $, h, s, api, enc, toast, badge, fmtNum, fmtUsd, fmtMs, compact } from './lib.js';

const tests = new Map();   // provider name -> the result element of its last test
let costs = null;
let metric = '';
let loading = 0;
let resizeTimer = 0;
const PALETTE = 8;

function reachCell(p, checking) {
  if (p.reachable === true) return h('td', null, badge('reachable', 'green'), p.latency_ms != null ? h('span', { class: 'muted small', text: ' ' + fmtMs(p.latency_ms) }) : null);
  if (p.reachable === false) return h('td', null, badge('unreachable', 'red'), p.error ? h('div', { class: 'error-text small reach-error', title: p.error, text: p.error }) : null);
  if (checking && p.configured) return h('td', null, h('span', { class: 'muted small', text: 'checking…' }));
  return h('td', null, h('span', { class: 'muted', text: p.error ? p.error : '—' }));
}

function renderProviders(data, checking) {
  const body = $('#providers-body');
  const list = Array.isArray(data?.providers) ? data.providers : [];
  body.replaceChildren();
  for (const p of list) {
    const name = String(p.name);
    let btn = null;
    if (p.configured) {
      btn = h('button', { type: 'button', class: 'btn small', text: 'Test', testid: 'provider-test-' + name });
      btn.addEventListener('click', () => testProvider(name, btn));
    }
    body.append(h('tr', { testid: 'provider-row-' + name },
      h('td', null, h('strong', { text: name })),
      h('td', null, p.configured ? badge('configured', 'green') : badge('not configured', 'grey')),
      reachCell(p, checking),
      h('td', { class: 'mono small', text: p.model ?? '—' }),
      h('td', { class: 'small muted', text: p.source ?? '—' }),
      h('td', { class: 'mono small clip', title: p.base_url ?? '', text: p.base_url ?? '—' }),
      h('td', { class: 'right' }, btn)));
    if (tests.has(name)) body.append(tests.get(name));
  }
  if (!list.length) body.append(h('tr', null, h('td', { colspan: 7, class: 'empty', text: 'No providers are known.' })));
  const chain = $('#providers-chain');
  const dc = Array.isArray(data?.default_chain) ? data.default_chain : [];
  chain.replaceChildren(...(dc.length
    ? dc.flatMap((m, i) => [i ? h('span', { class: 'muted', text: '→' }) : null, h('code', { class: 'chip', text: String(m) })]).filter(Boolean)
    : [h('span', { class: 'muted', text: 'No default chain: configure a provider (see `lotus providers`).' })]));
}

async function testProvider(name, btn) {
  btn.disabled = true;
  btn.textContent = 'Testing…';
  const cell = h('td', { colspan: 7 });
  const tr = h('tr', { class: 'test-row', testid: 'provider-test-result-' + name }, cell);
  try {
    const r = await api(`/api/v1/providers/${enc(name)}/test`, { method: 'POST' });
    const u = r.usage || {};
    cell.append(badge('ok', 'green'), ' ',
      h('span', { class: 'mono small', text: [r.model, fmtMs(r.latency_ms), u.input_tokens != null ? `${fmtNum(u.input_tokens)} in / ${fmtNum(u.output_tokens ?? 0)} out` : null, r.cost_usd != null ? fmtUsd(r.cost_usd) : null].filter(Boolean).join(' · ') }),
      h('div', { class: 'quote', text: compact(r.text ?? '', 400) }));
  } catch (e) {
    cell.append(badge('failed', 'red'), ' ', h('span', { class: 'error-text', text: e.message }));
    toast(`${name}: ${e.message}`, 'error');
  } finally {
    btn.disabled = false;
    btn.textContent = 'Test';
  }
  tests.get(name)?.remove();
  tests.set(name, tr);
  const row = document.querySelector(`[data-testid="provider-row-${CSS.escape(name)}"]`);
  row?.after(tr);
}

async function load() {
  const mine = ++loading;
  try {
    renderProviders(await api('/api/v1/providers?check=false'), true);
    const checked = await api('/api/v1/providers?check=true');
    if (mine === loading) renderProviders(checked, false);
  } catch (e) {
    if (mine === loading) $('#providers-body').replaceChildren(h('tr', null, h('td', { colspan: 7, class: 'error-text', text: e.message })));
  }
}

// ---------- costs ----------

const METRICS = {
  cost: { label: 'Cost', get: (r) => r.cost_usd || 0, fmt: fmtUsd },
  calls: { label: 'Calls', get: (r) => r.calls || 0, fmt: (v) => fmtNum(Math.round(v)) },
  tokens: { label: 'Tokens', get: (r) => (r.input_tokens || 0) + (r.output_tokens || 0), fmt: shortNum },
};

function shortNum(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + 'k';
  return String(Math.round(v * 100) / 100);
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function dayList(since, rows) {
  const iso = (d) => d.toISOString().slice(0, 10);
  const today = iso(new Date());
  let end = rows.reduce((a, r) => (r.day > a ? r.day : a), today);
  let start = /^\d{4}-\d{2}-\d{2}$/.test(since || '') ? since : null;
  if (!start) { const d = new Date(); d.setUTCDate(d.getUTCDate() - 29); start = iso(d); }
  const out = [];
  const d = new Date(start + 'T00:00:00Z');
  while (out.length < 400) {
    const x = iso(d);
    out.push(x);
    if (x >= end) break;
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}

const seriesKey = (r) => (r.model ? `${r.provider}:${r.model}` : String(r.provider ?? '?'));

function renderCosts() {
  const box = $('#cost-chart');
  const legend = $('#costs-legend');
  const seg = $('#costs-metric');
  const rows = Array.isArray(costs?.rows) ? costs.rows : [];
  const calls = rows.reduce((a, r) => a + (r.calls || 0), 0);
  $('#costs-totals').replaceChildren(
    h('div', { class: 'total' }, h('span', { class: 'muted small', text: 'today' }), h('strong', { text: fmtUsd(costs?.today_usd ?? 0) })),
    h('div', { class: 'total' }, h('span', { class: 'muted small', text: 'this month' }), h('strong', { text: fmtUsd(costs?.month_usd ?? 0) })),
    h('div', { class: 'total' }, h('span', { class: 'muted small', text: 'calls' }), h('strong', { text: fmtNum(calls) })));
  $('#costs-rows').hidden = !rows.length;
  if (!rows.length) {
    box.replaceChildren(h('div', { class: 'empty', text: 'No model calls in the last 30 days, so no costs yet.' }));
    legend.replaceChildren();
    seg.replaceChildren();
    $('#costs-table').replaceChildren();
    return;
  }
  if (!metric) metric = rows.some((r) => r.cost_usd > 0) ? 'cost' : 'calls';
  seg.replaceChildren(...Object.entries(METRICS).map(([k, m]) => h('button', {
    type: 'button', class: 'seg-btn' + (k === metric ? ' active' : ''), text: m.label, 'aria-pressed': String(k === metric),
    on: { click: () => { metric = k; renderCosts(); } },
  })));
  const M = METRICS[metric];
  const days = dayList(costs.since, rows);
  const totals = new Map();
  for (const r of rows) totals.set(seriesKey(r), (totals.get(seriesKey(r)) || 0) + M.get(r) + (r.calls || 0) * 1e-12);
  const series = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
  const color = (k) => 'c' + (series.indexOf(k) % PALETTE);
  const byDay = new Map(days.map((d) => [d, new Map()]));
  for (const r of rows) {
    const m = byDay.get(r.day);
    if (!m) continue;
    const k = seriesKey(r);
    const cur = m.get(k) || { v: 0, calls: 0, failures: 0, cost: 0 };
    cur.v += M.get(r); cur.calls += r.calls || 0; cur.failures += r.failures || 0; cur.cost += r.cost_usd || 0;
    m.set(k, cur);
  }
  const dayTotal = (d) => [...byDay.get(d).values()].reduce((a, x) => a + x.v, 0);
  const top = niceMax(Math.max(0, ...days.map(dayTotal)));

  const W = Math.max(320, box.clientWidth || 760);
  const H = 220;
  const L = 52, R = 8, T = 10, B = 26;
  const pw = W - L - R, ph = H - T - B;
  const slot = pw / days.length;
  const bw = Math.max(2, Math.min(28, slot * 0.72));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'bars', role: 'img', 'aria-label': `${M.label} per day` });
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    const y = T + ph - (v / top) * ph;
    svg.append(s('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'grid' + (i ? '' : ' base') }),
      s('text', { x: L - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' }, M.fmt(v)));
  }
  const step = Math.ceil(days.length / Math.max(2, Math.floor(pw / 70)));
  days.forEach((d, i) => {
    const x = L + i * slot + (slot - bw) / 2;
    if (i % step === 0 || i === days.length - 1) {
      svg.append(s('text', { x: x + bw / 2, y: H - 8, class: 'axis', 'text-anchor': 'middle' }, d.slice(5)));
    }
    let y = T + ph;
    for (const k of series) {
      const cell = byDay.get(d).get(k);
      if (!cell || cell.v <= 0) continue;
      const hgt = Math.max(1, (cell.v / top) * ph);
      y -= hgt;
      svg.append(s('rect', { x, y, width: bw, height: hgt, rx: 1.5, class: 'seg ' + color(k), testid: 'cost-bar' },
        s('title', null, `${d} · ${k}\n${fmtUsd(cell.cost)} · ${fmtNum(cell.calls)} calls${cell.failures ? ` (${cell.failures} failed)` : ''}`)));
    }
  });
  box.replaceChildren(svg);
  legend.replaceChildren(...series.map((k) => h('span', { class: 'legend-item' }, h('i', { class: 'sw ' + color(k) }), h('span', { class: 'mono small', text: k }))));

  const sorted = [...rows].sort((a, b) => (a.day < b.day ? 1 : a.day > b.day ? -1 : (b.cost_usd || 0) - (a.cost_usd || 0)));
  const num = (v) => h('td', { class: 'num', text: fmtNum(v ?? 0) });
  $('#costs-table').replaceChildren(h('table', { class: 'table' },
    h('thead', null, h('tr', null, ['day', 'provider', 'model', 'module', 'calls', 'failures', 'tokens in', 'tokens out', 'cost'].map((c, i) => h('th', { class: i >= 4 ? 'num' : '', text: c })))),
    h('tbody', null, sorted.map((r) => h('tr', null,
      h('td', { class: 'mono small', text: r.day }), h('td', { text: r.provider ?? '' }), h('td', { class: 'mono small', text: r.model ?? '' }),
      h('td', { class: 'small', text: r.module ?? '' }), num(r.calls), num(r.failures), num(r.input_tokens), num(r.output_tokens),
      h('td', { class: 'num', text: fmtUsd(r.cost_usd ?? 0) }))))));
}

async function loadCosts() {
  try {
    costs = await api('/api/v1/providers/costs?days=30');
    renderCosts();
  } catch (e) {
    $('#cost-chart').replaceChildren(h('p', { class: 'error-text', text: e.message }));
  }
}

export default {
  init() {
    $('#providers-refresh').addEventListener('click', () => { load(); loadCosts(); });
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (costs && !$('#cost-chart').closest('.page').hidden) renderCosts(); }, 150);
    });
  },
  show() {
    load();
    loadCosts();
  },
};
