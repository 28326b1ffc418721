/**
 * The live page of `npm run demo`, driven in headless Chromium: picking patterns, clicking a query
 * shows the keys its pattern allows, the schedule is drawn, and Run times the call on WebGPU
 * (navigator.gpu, SwiftShader here) and on the CPU (Web Workers: the demo server isolates the page)
 * and reports a small error between them. Screenshot kept at $TILEWISE_ARTIFACTS/demo.png if set.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startDemoServer } from '../demo/server.js';
import { CHROMIUM, CHROMIUM_ARGS } from './browser-harness.js';


test('demo page: patterns, a clicked query and its keys, the schedule, and a run on WebGPU and the CPU', { skip: existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM}`, timeout: 180_000 }, async (t) => {
  const server = await startDemoServer(0);
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS] });
  const dir = mkdtempSync(join(tmpdir(), 'tilewise-demo-'));
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url);
    await page.waitForFunction(() => (globalThis as { demoReady?: boolean }).demoReady === true);
    const keys = async () => Number(await page.textContent('#keys-count'));
    const marked = () => page.locator('#tokens .cell.k').count();
    // 2-D neighborhood 16x16, kernel 5: an interior query sees 5 x 5 keys, a corner one a shifted full window
    await page.click('#tokens .cell[data-token="100"]');
    assert.equal(await keys(), 25);
    assert.equal(await marked(), 25);
    await page.click('#tokens .cell[data-token="0"]');
    assert.equal(await keys(), 25, 'NATTEN keeps a full window at the border');
    // dilation 2: still 25 keys, now spread
    await page.fill('#dilation', '2');
    await page.dispatchEvent('#dilation', 'change');
    await page.click('#tokens .cell[data-token="100"]');
    assert.equal(await keys(), 25);
    // causal over 128 tokens: query 10 sees keys 0..10
    await page.selectOption('#pattern', 'causal');
    await page.click('#tokens .cell[data-token="10"]');
    assert.equal(await keys(), 11);
    for (const p of ['na1d', 'na3d', 'window', 'blocksparse']) {
      await page.selectOption('#pattern', p);
      assert.ok((await page.locator('#schedule-canvas').count()) === 1, `${p}: a schedule`);
    }
    await page.selectOption('#pattern', 'na2d');
    assert.match((await page.textContent('#sched-counts')) ?? '', /full \d+, partial \d+, skipped \d+/);
    await page.click('#run');
    await page.waitForFunction(() => ['done'].includes(document.getElementById('status')!.textContent!) || document.getElementById('status')!.textContent!.startsWith('error'), null, { timeout: 120_000 });
    assert.equal(await page.textContent('#status'), 'done');
    assert.match((await page.textContent('#cpu-ms')) ?? '', /^\d+\.\d+ ms$/);
    assert.match((await page.textContent('#cpu-info')) ?? '', /workers/, 'the isolated page runs the CPU backend on Web Workers');
    const gpu = (await page.textContent('#gpu-ms')) ?? '';
    if (gpu === 'no WebGPU') t.diagnostic(`no WebGPU in the page: ${await page.textContent('#gpu-info')}`);
    else {
      assert.match(gpu, /^\d+\.\d+ ms$/);
      assert.ok(Number(await page.textContent('#err')) < 1e-4, 'WebGPU vs CPU error');
    }
    assert.deepEqual(errors, []);
    const shot = join(process.env.TILEWISE_ARTIFACTS ?? dir, 'demo.png');
    await page.screenshot({ path: shot });
    assert.ok(statSync(shot).size > 20_000);
    t.diagnostic(`screenshot: ${shot}`);
  } finally {
    await browser.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
