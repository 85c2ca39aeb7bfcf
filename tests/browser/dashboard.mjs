// Drives the LOTUS dashboard in headless Chromium against a running nucleus.
//
//   LOTUS_URL=http://127.0.0.1:7301 LOTUS_TOKEN=… LOTUS_SCREENSHOTS=/tmp/shots \
//   LOTUS_CHAT_PROMPT='Say hello' LOTUS_CHAT_EXPECT='hello' node tests/browser/dashboard.mjs
//
// Optional: CHROMIUM (default /usr/bin/chromium), LOTUS_STEP_TIMEOUT_MS (default 20000).
// Prints one line per passed step; exits 1 with the reason on the first failure, or when the
// page logged any console error or warning.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const BASE = (process.env.LOTUS_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.LOTUS_TOKEN || '';
const SHOTS = process.env.LOTUS_SCREENSHOTS || 'dashboard-screenshots';
const PROMPT = process.env.LOTUS_CHAT_PROMPT || '';
const EXPECT = process.env.LOTUS_CHAT_EXPECT || '';
// Optional: a prompt whose answer needs a dangerous tool (the scripted provider asks for one).
const APPROVAL_PROMPT = process.env.LOTUS_APPROVAL_PROMPT || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const T = Math.min(Number(process.env.LOTUS_STEP_TIMEOUT_MS) || 20000, 20000);

const missing = Object.entries({ LOTUS_URL: BASE, LOTUS_TOKEN: TOKEN, LOTUS_CHAT_PROMPT: PROMPT, LOTUS_CHAT_EXPECT: EXPECT })
  .filter(([, v]) => !v).map(([k]) => k);
if (missing.length) {
  console.error(`FAIL: set ${missing.join(', ')}`);
  process.exit(1);
}
if (!fs.existsSync(CHROMIUM)) {
  console.error(`FAIL: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  process.exit(1);
}
fs.mkdirSync(SHOTS, { recursive: true });

const problems = [];   // console errors/warnings and page errors, from every page
let allow401 = false;  // the wrong-token step expects the browser's own 401 message

function watch(page, label) {
  page.on('console', (msg) => {
    const type = msg.type();
    if (type !== 'error' && type !== 'warning') return;
    const text = msg.text();
    if (allow401 && /status of 401/.test(text)) return;
    const loc = msg.location();
    problems.push(`[${label}] console ${type}: ${text}${loc?.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`);
  });
  page.on('pageerror', (e) => problems.push(`[${label}] uncaught: ${e.message}`));
}

let passed = 0;
async function step(name, fn) {
  try {
    await fn();
  } catch (e) {
    const first = String(e?.message ?? e).replace(/\x1b\[[0-9;]*m/g, '').split('\n').filter((l) => l.trim()).slice(0, 4).join(' | ');
    throw new Error(`${name}: ${first}`);
  }
  passed++;
  console.log(`ok ${passed} - ${name}`);
}

/** Polls get() until ok(value); fails with what and the last value seen. */
async function until(get, ok, what, timeout = T) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await get(); } catch (e) { last = `(${e.message.split('\n')[0]})`; }
    if (ok(last)) return last;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

const visible = (loc, what) => loc.waitFor({ state: 'visible', timeout: T })
  .catch(() => { throw new Error(`${what} did not become visible within ${T} ms`); });

const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: false });

let browser;
let page;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await ctx.newPage();
  page.setDefaultTimeout(T);
  watch(page, 'main');
  const tid = (id) => page.getByTestId(id);

  await step('without a token the sign-in screen shows', async () => {
    await page.goto(BASE + '/', { timeout: T });
    await visible(tid('signin-token'), 'the sign-in token input');
    await shot(page, 'signin.png');
  });

  await step('a wrong token is refused and the sign-in screen stays', async () => {
    allow401 = true;
    try {
      await tid('signin-token').fill('wrong-' + TOKEN);
      await tid('signin-submit').click();
      await visible(tid('signin-error'), 'the sign-in error message');
      await visible(tid('signin-token'), 'the sign-in token input (after the wrong token)');
      if (await tid('nav-chat').isVisible()) throw new Error('the app opened with a wrong token');
      await page.waitForTimeout(300);   // let the browser's own 401 message arrive while allowed
    } finally {
      allow401 = false;
    }
  });

  await step('the right token signs in', async () => {
    await tid('signin-token').fill(TOKEN);
    await tid('signin-submit').click();
    await visible(tid('nav-chat'), 'the sidebar (nav-chat) after signing in');
    const stored = await page.evaluate(() => localStorage.getItem('lotus.token'));
    if (stored !== TOKEN) throw new Error('the token was not kept in localStorage lotus.token');
  });

  await step('a #token= link signs in and the token leaves the address bar', async () => {
    const ctx2 = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const p2 = await ctx2.newPage();
      watch(p2, 'token-link');
      await p2.goto(`${BASE}/#/chat?token=${encodeURIComponent(TOKEN)}`, { timeout: T });
      await visible(p2.getByTestId('nav-chat'), 'the sidebar after opening the #token= link');
      const url = p2.url();
      if (url.includes('token=') || url.includes(TOKEN)) throw new Error(`the token is still in the address bar: ${url}`);
      if (!url.includes('#/chat')) throw new Error(`the route was lost: ${url}`);
    } finally {
      await ctx2.close();
    }
  });

  await step('chat streams an answer with steps and a footer', async () => {
    await tid('nav-chat').click();
    await tid('chat-input').fill(PROMPT);
    await tid('chat-send').click();
    await until(async () => {
      const err = await page.locator('[data-testid="chat-error"]').last().textContent({ timeout: 50 }).catch(() => null);
      const text = await tid('chat-answer').last().textContent();
      return err ? `ERROR: ${err} | answer: ${text}` : text;
    }, (t) => typeof t === 'string' && (t.includes(EXPECT) || t.startsWith('ERROR:')), `the answer to contain ${JSON.stringify(EXPECT)}`)
      .then((t) => { if (t.startsWith('ERROR:')) throw new Error(`the chat showed an error: ${t}`); });
    await visible(tid('chat-meta').last(), 'the answer footer (chat-meta)');
    const steps = await tid('chat-steps').last().locator('li').count();
    if (steps < 1) throw new Error('the steps list (chat-steps) is empty');
    await shot(page, 'chat.png');
  });

  if (APPROVAL_PROMPT) {
    await step('a dangerous call waits for approval and runs once allowed', async () => {
      const answers = await tid('chat-answer').count();
      await tid('chat-input').fill(APPROVAL_PROMPT);
      await tid('chat-send').click();
      await visible(tid('chat-approval').last(), 'the approval card (chat-approval)');
      await shot(page, 'approval.png');
      await tid('approval-allow').last().click();
      await until(async () => {
        if ((await tid('chat-answer').count()) <= answers) return '';
        return tid('chat-answer').last().textContent();
      }, (t) => typeof t === 'string' && t.includes(EXPECT), `the answer after the approval to contain ${JSON.stringify(EXPECT)}`);
      await visible(tid('chat-meta').last(), 'the footer of the answer after the approval');
      const steps = await tid('chat-steps').last().textContent();
      if (!/forget/.test(steps || '')) throw new Error(`the steps do not show the approved call: ${steps}`);
    });
  }

  await step('modules: echo reloads and comes back running, logs open', async () => {
    await tid('nav-modules').click();
    await visible(tid('module-row-echo'), 'the row of the echo module');
    const state = tid('module-state-echo');
    await until(() => state.textContent(), (t) => t?.trim() === 'running', 'echo to be running');
    await tid('module-reload-echo').click();
    await visible(tid('toast').filter({ hasText: 'reloaded' }).first(), 'a toast saying "reloaded"');
    await until(() => state.textContent(), (t) => t?.trim() === 'running', 'echo to be running again after the reload');
    await tid('module-logs-echo').click();
    await visible(tid('logs-panel'), 'the logs panel');
    await until(() => tid('logs-panel').textContent(), (t) => t && !t.includes('Loading…'), 'the logs to load');
    await until(() => tid('log-line').count(), (n) => n > 0, 'a log line of echo (it was just reloaded)');
    // The panel slides in: let it settle before the picture.
    await tid('logs-panel').evaluate((el) => Promise.all(el.getAnimations({ subtree: true }).map((a) => a.finished)));
    await shot(page, 'modules.png');
  });

  await step('events: a published event shows up live', async () => {
    await tid('nav-events').click();
    const filter = tid('events-filter');
    await filter.fill('>');
    await filter.press('Enter');
    await until(() => tid('events-status').getAttribute('data-state'), (s) => s === 'subscribed', 'the event socket to be subscribed');
    const res = await fetch(`${BASE}/api/v1/events`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ topic: 'test.browser', payload: { hello: 'browser' } }),
      signal: AbortSignal.timeout(T),
    });
    if (res.status !== 202) throw new Error(`POST /api/v1/events answered ${res.status}: ${await res.text()}`);
    await visible(tid('event-row').filter({ hasText: 'test.browser' }).first(), 'an event row for test.browser');
    await shot(page, 'events.png');
  });

  await step('memory: remembered, recalled, then forgotten', async () => {
    await tid('nav-memory').click();
    await tid('remember-text').fill('my favourite editor is Helix');
    await tid('remember-submit').click();
    await visible(tid('toast').filter({ hasText: /remembered/i }).last(), 'a toast saying it was remembered');
    await tid('memory-query').fill('which editor do I like');
    await tid('memory-query').press('Enter');
    const st = await until(() => tid('memory-results').getAttribute('data-state'), (s) => s === 'done' || s === 'error', 'the recall to finish');
    if (st === 'error') throw new Error(`recall failed: ${(await tid('memory-results').textContent()).trim()}`);
    const hit = tid('memory-hit').filter({ hasText: 'my favourite editor is Helix' }).first();
    await visible(hit, 'the remembered text among the hits');
    await shot(page, 'memory.png');
    await hit.getByTestId('memory-forget').click();
    await tid('confirm-ok').click();
    await until(() => tid('memory-hit').filter({ hasText: 'my favourite editor is Helix' }).count(), (n) => n === 0, 'the forgotten memory to leave the list');
    // Recalled again, it is gone from the memory itself, not only from the page.
    const again = page.waitForResponse((r) => r.url().includes('/api/v1/memory/recall'), { timeout: T });
    await tid('memory-query').press('Enter');
    await again;
    await until(() => tid('memory-results').getAttribute('data-state'), (s) => s === 'done', 'the second recall');
    const left = await tid('memory-hit').filter({ hasText: 'my favourite editor is Helix' }).count();
    if (left) throw new Error('the forgotten memory is recalled again');
  });

  await step('providers: the table lists providers', async () => {
    await tid('nav-providers').click();
    await visible(page.locator('[data-testid^="provider-row-"]').first(), 'a provider row');
    await until(() => page.locator('#providers-body').textContent(), (t) => t && !t.includes('checking…'), 'the reachability checks', T)
      .catch(() => console.log('   note: reachability checks still running at the screenshot'));
    await visible(tid('cost-chart').locator('svg, .empty, .error-text').first(), 'the cost chart (or its empty note)');
    await shot(page, 'providers.png');
  });

  await step('health: status is ok', async () => {
    await tid('nav-health').click();
    await until(() => tid('health-status').textContent(), (t) => t?.trim() === 'ok', 'health-status to read ok');
    await shot(page, 'health.png');
  });

  await step('narrow viewport: chat as on a phone', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await tid('nav-chat').click();
    await visible(tid('chat-input'), 'the chat input on a narrow screen');
    await page.waitForTimeout(200);
    await shot(page, 'mobile.png');
  });

  if (problems.length) throw new Error(`the page logged ${problems.length} console error(s)/warning(s):\n  ${problems.join('\n  ')}`);
  console.log(`${passed} passed, 0 failed`);
} catch (e) {
  if (page) await shot(page, 'failure.png').catch(() => {});
  console.error(`FAIL: ${e.message}`);
  if (problems.length && !e.message.includes('console error')) console.error(`console problems so far:\n  ${problems.join('\n  ')}`);
  console.log(`${passed} passed, 1 failed`);
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
}
