// Health: the nucleus (GET /api/v1/health) and its bus (GET /api/v1/bus), every 5 s.
import { $, h, api, stateClass, every, fillKv, genericTable, fmtUptime, fmtNum } from './lib.js';

let stop = null;

async function refresh() {
  const facts = $('#health-facts');
  const status = $('#health-status');
  try {
    const hl = await api('/api/v1/health', { auth: false });
    status.textContent = String(hl.status ?? 'unknown');
    status.className = 'badge big ' + stateClass(hl.status);
    const fact = (k, v) => h('div', null, h('dt', { text: k }), h('dd', null, v));
    facts.replaceChildren(
      fact('version', h('span', { class: 'mono', text: hl.version ?? '—' })),
      fact('uptime', fmtUptime(hl.uptime_ms)),
      hl.node ? fact('node', h('span', { class: 'mono', text: hl.node })) : '',
      fact('pid', h('span', { class: 'mono', text: String(hl.pid ?? '—') })),
      fact('modules', h('a', { href: '#/modules' },
        `${fmtNum(hl.running ?? 0)} running`, hl.failed ? h('span', { class: 'error-text', text: ` · ${fmtNum(hl.failed)} failed` }) : ' · none failed')));
  } catch (e) {
    status.textContent = 'unreachable';
    status.className = 'badge big red';
    facts.replaceChildren(h('dd', { class: 'error-text', text: e.message }));
  }
  try {
    const bus = await api('/api/v1/bus');
    fillKv($('#bus-stats'), bus?.stats ?? {});
    fillKv($('#bus-backend'), bus?.backend ?? {});
    $('#bus-subscribers').replaceChildren(genericTable(bus?.subscribers ?? [], ['name', 'patterns', 'policy', 'depth', 'capacity']));
  } catch (e) {
    $('#bus-subscribers').replaceChildren(h('p', { class: 'error-text pad', text: e.message }));
  }
}

export default {
  show() { if (!stop) stop = every(5000, refresh); },
  hide() { stop?.(); stop = null; },
};
