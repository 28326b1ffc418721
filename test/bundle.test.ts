/**
 * The package bundled for the browser by esbuild (no extra flags: platform 'browser', ESM) runs in
 * headless Chromium: the bundle resolves without Node builtins, the WebAssembly kernels come inside
 * it (the page fetches nothing else), and the CPU backend's results equal Node's. Skipped with the
 * reason where Chromium or playwright-core is missing.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { attention, na2d, randn, relError } from '../src/index.js';

const CHROMIUM = process.env.TILEWISE_CHROMIUM ?? '/usr/lib/chromium/chromium';
const DIST = join(dirname(fileURLToPath(import.meta.url)), '..');

async function skipReason(): Promise<string | false> {
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM}`;
  try {
    await import('playwright-core');
    await import('esbuild');
  } catch (e) {
    return `missing dev dependency: ${(e as Error).message}`;
  }
  return false;
}

// what the page runs: the same seeded inputs as the Node side below
const ENTRY = `
import { attention, na2d, randn, cpuInfo } from ${JSON.stringify(join(DIST, 'src', 'index.js'))};
globalThis.runCases = async () => {
  const x = randn([1, 12, 12, 2, 16], 21);
  const a = await na2d(x, x, x, { kernelSize: 5, backend: 'cpu' });
  const q = randn([1, 300, 2, 32], 31);
  const b = await attention(q, q, q, { causal: true, backend: 'cpu' });
  return { na: Array.from(a.out.data), dense: Array.from(b.out.data), info: cpuInfo() };
};
`;

test('esbuild --bundle --platform=browser: the bundle runs in Chromium and matches Node', { skip: await skipReason(), timeout: 120_000 }, async () => {
  const esbuild = await import('esbuild');
  const built = await esbuild.build({ stdin: { contents: ENTRY, resolveDir: DIST, loader: 'js' }, bundle: true, platform: 'browser', format: 'esm', write: false, logLevel: 'silent' });
  assert.deepEqual(built.errors, []);
  const bundle = built.outputFiles[0]!.text;
  const requests: string[] = [];
  const server = createServer((req, res) => {
    requests.push(req.url ?? '');
    if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><link rel="icon" href="data:,"><script type="module" src="/bundle.js"></script>');
    else if (req.url === '/bundle.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking', '--no-first-run'] });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    await page.waitForFunction(() => typeof (globalThis as { runCases?: unknown }).runCases === 'function');
    const got = await page.evaluate(() => (globalThis as unknown as { runCases: () => Promise<{ na: number[]; dense: number[]; info: { mode: string; kernels: string } }> }).runCases());
    assert.deepEqual(errors, []);
    assert.deepEqual(requests.sort(), ['/', '/bundle.js'], 'the bundle fetches nothing else (the wasm is inside it)');
    assert.equal(got.info.mode, 'main-thread');
    assert.notEqual(got.info.kernels, 'scalar');
    const x = randn([1, 12, 12, 2, 16], 21);
    const q = randn([1, 300, 2, 32], 31);
    const na = await na2d(x, x, x, { kernelSize: 5 });
    const dense = await attention(q, q, q, { causal: true });
    assert.ok(relError(Float32Array.from(got.na), na.out.data) < 1e-6, 'na2d in the bundle vs Node');
    assert.ok(relError(Float32Array.from(got.dense), dense.out.data) < 1e-6, 'causal attention in the bundle vs Node');
  } finally {
    await browser.close();
    await new Promise((r) => server.close(r));
  }
});
