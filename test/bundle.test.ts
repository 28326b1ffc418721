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
import { availableParallelism } from 'node:os';
import { attention, na2d, randn, relError } from '../src/index.js';
import { CHROMIUM, CHROMIUM_ARGS, serveStatic } from './browser-harness.js';

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
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS] });
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

test('esbuild --platform=node: a bundle without the worker file runs on one thread and says why; with the worker built as an entry and setCpuWorkerUrl, on the pool; both match Node', { skip: await skipReason(), timeout: 120_000 }, async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { spawnSync } = await import('node:child_process');
  const esbuild = await import('esbuild');
  const root = mkdtempSync(join(tmpdir(), 'tilewise-node-bundle-'));
  try {
    const app = (withUrl: boolean) => `
      import { na2d, randn, cpuInfo, setCpuWorkerUrl } from ${JSON.stringify(join(DIST, 'src', 'index.js'))};
      ${withUrl ? "setCpuWorkerUrl(new URL('./worker.mjs', import.meta.url));" : ''}
      const x = randn([1, 48, 48, 4, 16], 41); // large enough for the pool
      const a = await na2d(x, x, x, { kernelSize: 7 });
      console.log(JSON.stringify({ info: cpuInfo(), out: Array.from(a.out.data.subarray(0, 3000)) }));`;
    writeFileSync(join(root, 'plain.mjs'), app(false));
    writeFileSync(join(root, 'withurl.mjs'), app(true));
    const node = { bundle: true, platform: 'node', format: 'esm', logLevel: 'silent', outExtension: { '.js': '.mjs' } } as const;
    await esbuild.build({ ...node, entryPoints: { plain: join(root, 'plain.mjs') }, outdir: join(root, 'a') });
    await esbuild.build({ ...node, entryPoints: { withurl: join(root, 'withurl.mjs'), worker: join(DIST, 'src', 'cpu', 'worker.js') }, outdir: join(root, 'b') });
    const x = randn([1, 48, 48, 4, 16], 41);
    const want = (await na2d(x, x, x, { kernelSize: 7 })).out.data.subarray(0, 3000);
    for (const [file, pool] of [[join(root, 'a', 'plain.mjs'), false], [join(root, 'b', 'withurl.mjs'), true]] as const) {
      const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      const got = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { info: { threads: number; mode: string; workersFailed?: string }; out: number[] };
      if (pool) {
        assert.equal(got.info.workersFailed, undefined);
        if (availableParallelism() > 1) assert.equal(got.info.mode, 'workers', 'the pool ran on the bundled worker');
      } else {
        assert.equal(got.info.threads, 1);
        assert.match(got.info.workersFailed ?? '', /worker/);
        assert.match(r.stderr, /running on one thread[\s\S]*setCpuWorkerUrl/, 'it says why, and what to do');
      }
      assert.ok(relError(Float32Array.from(got.out), want) < 1e-6, `${file}: result vs Node`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/**
 * Loads a built page (`dir` holds index.html and the bundle) in Chromium, plain and cross-origin
 * isolated, runs its `runCases` and checks the mode the CPU engine chose and the na2d output
 * against Node's.
 */
async function checkBuiltPage(dir: string, bundler: string, scalar = false): Promise<void> {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS] });
  const x = randn([1, 12, 12, 2, 16], 21);
  const na = await na2d(x, x, x, { kernelSize: 5 });
  try {
    for (const isolated of [false, true]) {
      const served = await serveStatic(dir, undefined, isolated);
      try {
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));
        await page.goto(`${served.origin}/`);
        await page.waitForFunction(() => typeof (globalThis as { runCases?: unknown }).runCases === 'function');
        const got = await page.evaluate(() => (globalThis as unknown as { runCases: () => Promise<{ na: number[]; scalarNa?: number[]; info: { mode: string } }> }).runCases());
        assert.deepEqual(errors, [], `page errors (isolated ${isolated})`);
        const hw = await page.evaluate(() => navigator.hardwareConcurrency);
        assert.equal(got.info.mode, isolated && hw > 1 ? 'workers' : 'main-thread', `mode (isolated ${isolated})`);
        assert.ok(relError(Float32Array.from(got.na), na.out.data) < 1e-6, `na2d in the ${bundler} bundle vs Node (isolated ${isolated})`);
        if (scalar) assert.ok(got.scalarNa && relError(Float32Array.from(got.scalarNa), na.out.data) < 1e-5, `na2d on the scalar kernels in the ${bundler} bundle (isolated ${isolated})`);
        await page.close();
      } finally {
        await served.close();
      }
    }
  } finally {
    await browser.close();
  }
}

/**
 * The page's entry with a long call added, so the isolated page's pool really runs the emitted
 * worker, and the same neighborhood call on the scalar kernels, which the calling thread imports on
 * demand (a chunk of its own in these bundles: it must load from the built page).
 */
const LONG_ENTRY = ENTRY.replace('import { attention, na2d, randn, cpuInfo }', 'import { attention, na2d, randn, cpuInfo, setCpuKernels }').replace(
  'return { na:',
  "const big = randn([1, 1024, 4, 64], 7); await attention(big, big, big, { backend: 'cpu' }); setCpuKernels('scalar'); const sc = await na2d(x, x, x, { kernelSize: 5, backend: 'cpu' }); setCpuKernels(undefined); return { scalarNa: Array.from(sc.out.data), na:",
);

const PAGE = '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><script type="module" src="/src/main.js"></script></body></html>';

/** A Vite app: the page loading src/main.js and `src` (file name -> text), built with `config` in a temporary folder, then checked in Chromium. */
async function checkViteApp(src: Record<string, string>, config: Record<string, unknown>, label: string, scalar = false): Promise<void> {
  const { mkdtempSync, writeFileSync, mkdirSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const root = mkdtempSync(join(tmpdir(), 'tilewise-vite-'));
  try {
    mkdirSync(join(root, 'src'));
    writeFileSync(join(root, 'index.html'), PAGE);
    for (const [name, text] of Object.entries(src)) writeFileSync(join(root, 'src', name), text);
    const vite = await import('vite');
    await vite.build({ root, logLevel: 'silent', configFile: false, ...config, build: { outDir: join(root, 'dist') } });
    await checkBuiltPage(join(root, 'dist'), label, scalar);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('vite build: the bundle and its emitted worker run in Chromium, on one thread and on Web Workers', { skip: await skipReason(), timeout: 180_000 }, async () => {
  await checkViteApp({ 'main.js': LONG_ENTRY }, {}, 'Vite', true);
});

test("vite build of an app that runs the library in its own Web Worker (worker.format 'es'): the pool starts from that worker, right on one thread and on Web Workers", { skip: await skipReason(), timeout: 180_000 }, async () => {
  const main = `globalThis.runCases = () => new Promise((resolve, reject) => {
    const w = new Worker(new URL('./app-worker.js', import.meta.url), { type: 'module' });
    w.onmessage = (e) => (e.data.error ? reject(new Error('app worker: ' + e.data.error)) : resolve(e.data));
    w.onerror = (e) => reject(new Error('app worker: ' + e.message));
  });`;
  // the worker's first call is mid-sized (beside its pool, which it has just started), then ENTRY's case
  const worker = `import { na2d, randn, cpuInfo } from ${JSON.stringify(join(DIST, 'src', 'index.js'))};
  (async () => {
    const y = randn([1, 48, 48, 4, 16], 41);
    await na2d(y, y, y, { kernelSize: 7, backend: 'cpu' });
    const x = randn([1, 12, 12, 2, 16], 21);
    const a = await na2d(x, x, x, { kernelSize: 5, backend: 'cpu' });
    postMessage({ na: Array.from(a.out.data), info: cpuInfo() });
  })().catch((e) => postMessage({ error: String(e) }));`;
  // the library loads its WebGPU backend and scalar kernels on demand: chunks that Vite's default
  // 'iife' worker format cannot split off
  await checkViteApp({ 'main.js': main, 'app-worker.js': worker }, { worker: { format: 'es' } }, 'Vite (app worker)');
});

test('webpack 5: the bundle and its emitted worker run in Chromium, on one thread and on Web Workers', { skip: await skipReason(), timeout: 180_000 }, async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const root = mkdtempSync(join(tmpdir(), 'tilewise-webpack-'));
  try {
    writeFileSync(join(root, 'entry.mjs'), LONG_ENTRY);
    writeFileSync(join(root, 'index.html'), '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><script src="/bundle.js"></script></body></html>');
    const { default: webpack } = await import('webpack');
    const stats = await new Promise<import('webpack').Stats>((resolve, reject) =>
      webpack({ mode: 'production', context: root, entry: './entry.mjs', output: { path: root, filename: 'bundle.js' }, target: 'web', infrastructureLogging: { level: 'none' } }, (err, st) => (err || !st ? reject(err) : resolve(st))),
    );
    assert.ok(!stats.hasErrors(), stats.toString('errors-only'));
    assert.ok(!stats.hasWarnings(), stats.toString('errors-warnings'));
    await checkBuiltPage(root, 'webpack', true);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
