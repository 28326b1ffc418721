/**
 * `tilewise profile --html`: one self-contained file with the plots and the tile schedule, opened
 * in headless Chromium (nothing fetched), checked for its charts and screenshotted. The screenshot
 * is kept at $TILEWISE_ARTIFACTS/profile-report.png when that is set.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CHROMIUM, CHROMIUM_ARGS } from './browser-harness.js';


test('profile --html writes a self-contained report whose plots and schedule render in Chromium', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tilewise-html-'));
  try {
    const file = join(dir, 'report.html');
    const main = new URL('../src/cli/main.js', import.meta.url).pathname;
    const r = spawnSync(process.execPath, [main, 'profile', '--backend', 'cpu', '--pattern', 'na', '--shape', '24x24', '--heads', '2', '--dim', '16', '--kernel', '5', '--html', file], { encoding: 'utf8', timeout: 90000 });
    assert.equal(r.status, 0, r.stderr);
    const html = readFileSync(file, 'utf8');
    assert.ok(!/<script|src=|href="http/.test(html), 'self-contained: no script, nothing to fetch');
    for (const impl of ['naive', 'unfused', 'fused', 'dense-fused']) assert.ok(html.includes(`>${impl}<`), `${impl} in the report`);
    if (!existsSync(CHROMIUM)) {
      t.skip(`no Chromium at ${CHROMIUM}: the rendering part is skipped`);
      return;
    }
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS] });
    try {
      const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
      const requests: string[] = [];
      page.on('request', (q) => requests.push(q.url()));
      await page.goto(`file://${file}`);
      const seen = await page.evaluate(() => ({
        charts: document.querySelectorAll('svg.chart').length,
        bars: Array.from(document.querySelectorAll('svg.chart rect.bar')).map((b) => Number(b.getAttribute('width'))),
        cells: document.querySelectorAll('svg.sched rect').length,
      }));
      assert.deepEqual(requests, [`file://${file}`], 'the page fetches nothing but itself');
      assert.ok(seen.charts >= 2, 'time and TFLOP/s charts');
      assert.ok(seen.bars.length >= 8 && seen.bars.every((w) => w > 0), 'a visible bar per implementation and chart');
      assert.ok(seen.cells > 1, 'the tile schedule has cells');
      const shot = join(process.env.TILEWISE_ARTIFACTS ?? dir, 'profile-report.png');
      await page.screenshot({ path: shot });
      assert.ok(statSync(shot).size > 20_000, 'a screenshot with content');
      t.diagnostic(`screenshot: ${shot}`);
    } finally {
      await browser.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
