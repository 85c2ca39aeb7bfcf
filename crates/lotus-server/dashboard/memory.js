// Memory: recall, forget, remember and the stats of each tier.
import { $, h, api, enc, toast, confirmDialog, fmtDate, fmtNum, compact } from './lib.js';

let lastQuery = '';

const KIND_CLASS = { fact: 'blue', preference: 'amber', episode: 'violet', profile: 'green' };

function user() { return $('#memory-user').value.trim(); }

function hitCard(hit) {
  const m = hit.memory || {};
  const when = typeof m.created_us === 'number' ? new Date(m.created_us / 1000) : null;
  const forget = h('button', { type: 'button', class: 'btn small danger ghost', text: 'Forget', testid: 'memory-forget' });
  const triple = [m.subject, m.attribute, m.value].some((x) => x != null && x !== '')
    ? h('div', { class: 'mono small muted', text: [m.subject, m.attribute, m.value].map((x) => x ?? '·').join(' → ') })
    : null;
  const history = Array.isArray(hit.history) && hit.history.length
    ? h('details', { class: 'small' }, h('summary', { text: `${hit.history.length} earlier version${hit.history.length > 1 ? 's' : ''}` }),
      h('ul', { class: 'plain' }, hit.history.map((o) => h('li', { class: 'muted' },
        h('s', { text: String(o.text ?? compact(o, 200)) }),
        typeof o.created_us === 'number' ? ` · ${fmtDate(new Date(o.created_us / 1000))}` : ''))))
    : null;
  const card = h('article', { class: 'card hit', testid: 'memory-hit' },
    h('div', { class: 'hit-head' },
      h('span', { class: 'badge ' + (KIND_CLASS[m.kind] || 'grey'), text: String(m.kind ?? 'memory') }),
      h('span', { class: 'mono small', title: 'score', text: typeof hit.score === 'number' ? `score ${hit.score.toFixed(3)}` : '' }),
      typeof hit.similarity === 'number' ? h('span', { class: 'mono small muted', text: `sim ${hit.similarity.toFixed(3)}` }) : null,
      typeof m.importance === 'number' ? h('span', { class: 'mono small muted', text: `imp ${m.importance.toFixed(2)}` }) : null,
      h('span', { class: 'grow' }),
      when ? h('time', { class: 'small muted', datetime: when.toISOString(), text: fmtDate(when) }) : null),
    h('p', { class: 'hit-text', text: String(m.text ?? compact(m)) }),
    triple,
    history,
    h('div', { class: 'hit-foot' },
      h('span', { class: 'mono tiny muted grow', text: [m.id, m.user && `user ${m.user}`].filter(Boolean).join(' · ') }),
      forget));
  forget.addEventListener('click', async () => {
    const ok = await confirmDialog({ title: 'Forget this memory?', message: `“${compact(m.text ?? '', 160)}” will no longer be recalled.`, ok: 'Forget' });
    if (!ok) return;
    forget.disabled = true;
    try {
      const body = { ids: [m.id] };
      if (user() || m.user) body.user = user() || m.user;
      const r = await api('/api/v1/memory/forget', { method: 'POST', body });
      card.remove();
      toast(`forgotten${r && typeof r.forgotten === 'number' ? ` (${r.forgotten})` : ''}`);
      if (!$('#memory-results').querySelector('.hit')) $('#memory-results').replaceChildren(h('div', { class: 'empty', text: 'No hits left.' }));
      loadStats();
    } catch (e) {
      forget.disabled = false;
      toast(e.message, 'error');
    }
  });
  return card;
}

async function recall(query) {
  const box = $('#memory-results');
  lastQuery = query;
  if (!query) { box.replaceChildren(h('div', { class: 'empty', text: 'Type what to recall.' })); return; }
  box.dataset.state = 'loading';
  box.replaceChildren(h('div', { class: 'muted', text: 'Recalling…' }));
  try {
    let url = `/api/v1/memory/recall?query=${enc(query)}&k=10`;
    if (user()) url += `&user=${enc(user())}`;
    const hits = await api(url);
    if (query !== lastQuery) return;
    const list = Array.isArray(hits) ? hits : hits?.hits || [];
    box.replaceChildren(list.length
      ? h('p', { class: 'muted small', text: `${list.length} hit${list.length > 1 ? 's' : ''} for “${query}”` })
      : h('div', { class: 'empty', text: `Nothing recalled for “${query}”.` }), ...list.map(hitCard));
    box.dataset.state = 'done';
  } catch (e) {
    if (query !== lastQuery) return;
    box.replaceChildren(h('p', { class: 'error-text', text: e.message }));
    box.dataset.state = 'error';
  }
}

function statsView(obj, depth = 0) {
  if (obj == null || typeof obj !== 'object' || Array.isArray(obj)) return h('span', { class: 'mono', text: compact(obj, 300) });
  const nums = Object.entries(obj).filter(([, v]) => typeof v === 'number');
  const other = Object.entries(obj).filter(([, v]) => typeof v !== 'number');
  return h('div', { class: 'stats' },
    nums.length ? h('div', { class: 'stat-cards' }, nums.map(([k, v]) =>
      h('div', { class: 'stat' }, h('div', { class: 'stat-num', text: fmtNum(v) }), h('div', { class: 'stat-label', text: k.replace(/_/g, ' ') })))) : null,
    other.length ? h('dl', { class: 'kv' }, other.map(([k, v]) => [
      h('dt', { text: k.replace(/_/g, ' ') }),
      h('dd', null, v && typeof v === 'object' && !Array.isArray(v) && depth < 2 ? statsView(v, depth + 1)
        : h('span', { class: 'mono', text: Array.isArray(v) ? v.map((x) => compact(x, 60)).join(', ') : String(v) })),
    ])) : null);
}

async function loadStats() {
  const box = $('#memory-stats');
  try {
    const st = await api('/api/v1/memory/stats');
    box.replaceChildren(statsView(st));
  } catch (e) {
    box.replaceChildren(h('p', { class: 'error-text', text: e.message }));
  }
}

export default {
  init() {
    $('#memory-form').addEventListener('submit', (e) => {
      e.preventDefault();
      recall($('#memory-query').value.trim());
    });
    $('#remember-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const ta = $('#remember-text');
      const text = ta.value.trim();
      if (!text) return;
      const btn = $('#remember-submit');
      btn.disabled = true;
      try {
        const body = { text };
        if (user()) body.user = user();
        await api('/api/v1/memory/remember', { method: 'POST', body });
        ta.value = '';
        toast('remembered');
        loadStats();
        if (lastQuery) recall(lastQuery);
      } catch (err) {
        toast(err.message, 'error');
      } finally {
        btn.disabled = false;
      }
    });
    $('#memory-stats-refresh').addEventListener('click', loadStats);
  },
  show() {
    loadStats();
  },
};
