// The run viewer in headless Chromium, against a real `orchestrator serve`: a person starts a
// run, watches the plan, the replan and the streamed draft, loses the connection mid-run and gets
// everything back without a gap, approves the checkpoint, and reads the result; then a run left
// below the QA threshold shows its failed quality gate.
// Usage: node tests/browser/viewer.mjs <path/to/orchestrator> [screenshot.png]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';

const [bin, screenshot] = process.argv.slice(2);
if (!bin) { console.error('usage: node viewer.mjs <orchestrator binary> [screenshot.png]'); process.exit(2); }

const port = await new Promise(resolve => {
  const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const base = `http://127.0.0.1:${port}`;
const work = mkdtempSync(join(tmpdir(), 'viewer-'));
const server = spawn(bin, ['serve', '--addr', `127.0.0.1:${port}`], {
  env: { ...process.env, ORCHESTRATOR_DB: join(work, 'runs.db'), ORCHESTRATOR_OFFLINE_CHUNK_MS: '12', MODEL_PROVIDER: '' },
  stdio: ['ignore', 'ignore', 'pipe'],
});
let serverLog = '';
server.stderr.on('data', d => { serverLog += d; });

let browser;
let failed = 0;
let passed = 0;
const step = async (name, fn) => {
  try { await fn(); passed++; console.log(`ok   ${name}`); } catch (e) { failed++; console.log(`FAIL ${name}: ${e.message}`); throw e; }
};

try {
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(base + '/healthz')).ok) break; } catch { /* not up yet */ }
    await new Promise(r => setTimeout(r, 100));
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(base + '/');

  await step('GIVEN the viewer, WHEN a run is started from the form, THEN its first plan appears', async () => {
    await page.fill('#objective', 'Write a launch post for Acme Sync, our file sync app');
    await page.fill('#criteria', 'Include a call to action');
    await page.check('#approval');
    await page.click('#startButton');
    await page.waitForSelector('#history li[data-version="1"]');
    await page.waitForSelector('#plan li[data-step="s1"]');
  });

  await step('the first draft streams in', async () => {
    await page.waitForFunction(() => {
      const b = document.querySelector('.draft[data-step="s2"] .body');
      return b && b.textContent.length > 40;
    });
  });

  await step('WHEN the connection drops mid-run THEN the viewer resumes with Last-Event-ID and misses nothing', async () => {
    const before = await page.evaluate(() => window.viewer.lastId);
    await context.setOffline(true);
    await page.evaluate(() => window.viewer.controller.abort());
    await page.waitForFunction(() => window.viewer.reconnects >= 1);
    await new Promise(r => setTimeout(r, 600));
    await context.setOffline(false);
    await page.waitForFunction(n => window.viewer.lastId > n + 5 && document.querySelector('#conn').textContent === 'live', before);
  });

  await step('QA fails the first draft and the replan (plan v2) shows why', async () => {
    await page.waitForSelector('#history li[data-version="2"]');
    const reason = await page.textContent('#history li[data-version="2"]');
    if (!reason.includes('QA scored')) throw new Error(`replan without its reason: ${reason}`);
    await page.waitForSelector('#log li.qa');
  });

  await step('the run pauses at the checkpoint and the Approve button resumes it', async () => {
    await page.waitForSelector('#checkpoint:not(.hidden)');
    await page.fill('#comment', 'Looks good');
    await page.click('#approve');
    await page.waitForFunction(() => window.viewer.done, null, { timeout: 60_000 });
  });

  await step('THEN the result, its quality and the acceptance report are shown, with no gap in the frames', async () => {
    const status = await page.textContent('#status');
    if (status !== 'completed') throw new Error(`status ${status}`);
    const result = await page.textContent('#result');
    if (!result.includes('Acme Sync')) throw new Error('no result text');
    await page.waitForSelector('#acceptance tbody tr');
    const v = await page.evaluate(() => ({ gaps: window.viewer.gaps, frames: window.viewer.frames, last: window.viewer.lastId, runId: window.viewer.runId }));
    if (v.gaps !== 0) throw new Error(`${v.gaps} gaps`);
    if (v.frames !== v.last) throw new Error(`${v.frames} frames for ids up to ${v.last}`);
    // The server's own log has exactly as many frames as the page rendered.
    const log = await (await fetch(`${base}/api/v1/runs/${v.runId}/events`)).text();
    const ids = [...log.matchAll(/^id: (\d+)$/gm)].map(m => Number(m[1]));
    if (ids.length !== v.frames) throw new Error(`server has ${ids.length} frames, page ${v.frames}`);
    // And the run shows up in the recent runs list.
    await page.waitForSelector(`#runs li[data-run-id="${v.runId}"]`);
    // It passed QA: no quality gate badge.
    if (await page.isVisible('#gateBadge')) throw new Error('a passing run shows the quality gate failed');
  });

  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });

  await step("WHEN a finished run's step shows its model calls THEN the request and the streamed reply are readable", async () => {
    await page.click('#plan li[data-step="s2"] button[data-calls-of="s2"]');
    await page.waitForSelector('.calls[data-calls-for="s2"] details');
    const shown = await page.textContent('.calls[data-calls-for="s2"]');
    if (!shown.includes('offline/offline-deterministic-v1')) throw new Error(`no model named: ${shown.slice(0, 200)}`);
    const draft = await page.textContent('.draft[data-step="s2"] .body');
    if (!shown.includes(draft.slice(0, 40))) throw new Error('the reply is not the streamed draft');
  });

  await step('WHEN "fork from here" is clicked on the QA step THEN a new run opens and plays from the record', async () => {
    const before = await page.evaluate(() => window.viewer.runId);
    await page.click('#plan li[data-step="s3"] button[data-fork-from="s3"]');
    await page.waitForFunction(prev => window.viewer.runId !== prev, before);
    // The request asked for approval: the fork pauses there too, having re-run QA and the rest.
    await page.waitForSelector('#checkpoint:not(.hidden)', { timeout: 60_000 });
    await page.click('#approve');
    await page.waitForFunction(() => window.viewer.done, null, { timeout: 60_000 });
    const status = await page.textContent('#status');
    if (status !== 'completed') throw new Error(`fork status ${status}`);
  });

  await step('WHEN a run completes below the QA threshold with no revision cycle left THEN the viewer says its quality gate failed', async () => {
    const before = await page.evaluate(() => window.viewer.runId);
    await page.fill('#revisions', '0');
    await page.uncheck('#approval');
    await page.click('#startButton');
    await page.waitForFunction(prev => window.viewer.runId !== prev && window.viewer.done, before, { timeout: 60_000 });
    const status = await page.textContent('#status');
    if (status !== 'completed') throw new Error(`status ${status}`);
    await page.waitForSelector('#gateBadge:not(.hidden)');
    await page.waitForSelector('#gate:not(.hidden)');
  });
} catch (e) {
  if (!failed) { failed++; console.log(`FAIL ${e.message}`); }
  console.error(serverLog);
} finally {
  if (browser) await browser.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
}
const total = 9;
console.log(`viewer: ${passed} passed, ${total - passed} failed`);
process.exit(passed === total ? 0 : 1);
