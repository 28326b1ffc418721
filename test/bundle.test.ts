/**
 * The package bundled for the browser, with no extra flags, by esbuild (platform 'browser', ESM),
 * by Vite (its default build) and by webpack 5 (production, target web), runs in headless Chromium: the bundles resolve without Node
 * builtins, the WebAssembly kernels come inside them, Vite emits the pool's Web Worker, and the CPU
 * backend's results equal Node's, on one thread in a plain page and on Web Workers in a
 * cross-origin isolated one. Skipped with the reason where Chromium or a dev dependency is missing.
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
    await import('vite');
    await import('webpack');
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

/** Serves a folder's files; `isolated` adds the COOP/COEP headers (cross-origin isolation). */
async function serveDir(dir: string, isolated: boolean): Promise<{ url: string; close: () => Promise<unknown> }> {
  const { readFile } = await import('node:fs/promises');
  const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript' };
  const server = createServer((req, res) => {
    const path = req.url === '/' ? '/index.html' : (req.url ?? '/');
    const coi = isolated ? { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' } : {};
    readFile(join(dir, path)).then(
      (body) => res.writeHead(200, { 'content-type': types[path.slice(path.lastIndexOf('.'))] ?? 'application/octet-stream', ...coi }).end(body),
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, close: () => new Promise((r) => server.close(r)) };
}

test('vite build: the bundle and its emitted worker run in Chromium, on one thread and on Web Workers', { skip: await skipReason(), timeout: 180_000 }, async () => {
  const { mkdtempSync, writeFileSync, mkdirSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const root = mkdtempSync(join(tmpdir(), 'tilewise-vite-'));
  try {
    mkdirSync(join(root, 'src'));
    writeFileSync(join(root, 'index.html'), '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><script type="module" src="/src/main.js"></script></body></html>');
    writeFileSync(
      join(root, 'src', 'main.js'),
      ENTRY.replace(
        "return { na:",
        "const big = randn([1, 1024, 4, 64], 7); await attention(big, big, big, { backend: 'cpu' }); return { na:",
      ),
    );
    const vite = await import('vite');
    await vite.build({ root, logLevel: 'silent', configFile: false, build: { outDir: join(root, 'dist') } });
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking', '--no-first-run'] });
    const x = randn([1, 12, 12, 2, 16], 21);
    const na = await na2d(x, x, x, { kernelSize: 5 });
    try {
      for (const isolated of [false, true]) {
        const served = await serveDir(join(root, 'dist'), isolated);
        try {
          const page = await browser.newPage();
          const errors: string[] = [];
          page.on('pageerror', (e) => errors.push(e.message));
          await page.goto(served.url);
          await page.waitForFunction(() => typeof (globalThis as { runCases?: unknown }).runCases === 'function');
          const got = await page.evaluate(() => (globalThis as unknown as { runCases: () => Promise<{ na: number[]; info: { mode: string; threads: number } }> }).runCases());
          assert.deepEqual(errors, [], `page errors (isolated ${isolated})`);
          const hw = await page.evaluate(() => navigator.hardwareConcurrency);
          assert.equal(got.info.mode, isolated && hw > 1 ? 'workers' : 'main-thread', `mode (isolated ${isolated})`);
          assert.ok(relError(Float32Array.from(got.na), na.out.data) < 1e-6, `na2d in the Vite bundle vs Node (isolated ${isolated})`);
          await page.close();
        } finally {
          await served.close();
        }
      }
    } finally {
      await browser.close();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('webpack 5: the bundle and its emitted worker run in Chromium, on one thread and on Web Workers', { skip: await skipReason(), timeout: 180_000 }, async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const root = mkdtempSync(join(tmpdir(), 'tilewise-webpack-'));
  try {
    writeFileSync(join(root, 'entry.mjs'), ENTRY.replace("return { na:", "const big = randn([1, 1024, 4, 64], 7); await attention(big, big, big, { backend: 'cpu' }); return { na:"));
    writeFileSync(join(root, 'index.html'), '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><script src="/bundle.js"></script></body></html>');
    const { default: webpack } = await import('webpack');
    const stats = await new Promise<import('webpack').Stats>((resolve, reject) =>
      webpack({ mode: 'production', context: root, entry: './entry.mjs', output: { path: root, filename: 'bundle.js' }, target: 'web', infrastructureLogging: { level: 'none' } }, (err, st) => (err || !st ? reject(err) : resolve(st))),
    );
    assert.ok(!stats.hasErrors(), stats.toString('errors-only'));
    assert.ok(!stats.hasWarnings(), stats.toString('errors-warnings'));
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking', '--no-first-run'] });
    const x = randn([1, 12, 12, 2, 16], 21);
    const na = await na2d(x, x, x, { kernelSize: 5 });
    try {
      for (const isolated of [false, true]) {
        const served = await serveDir(root, isolated);
        try {
          const page = await browser.newPage();
          const errors: string[] = [];
          page.on('pageerror', (e) => errors.push(e.message));
          await page.goto(served.url);
          await page.waitForFunction(() => typeof (globalThis as { runCases?: unknown }).runCases === 'function');
          const got = await page.evaluate(() => (globalThis as unknown as { runCases: () => Promise<{ na: number[]; info: { mode: string } }> }).runCases());
          assert.deepEqual(errors, [], `page errors (isolated ${isolated})`);
          const hw = await page.evaluate(() => navigator.hardwareConcurrency);
          assert.equal(got.info.mode, isolated && hw > 1 ? 'workers' : 'main-thread', `mode (isolated ${isolated})`);
          assert.ok(relError(Float32Array.from(got.na), na.out.data) < 1e-6, `na2d in the webpack bundle vs Node (isolated ${isolated})`);
          await page.close();
        } finally {
          await served.close();
        }
      }
    } finally {
      await browser.close();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
