/**
 * End to end in a real browser: headless Chromium (driven by playwright-core) imports the BUILT
 * library straight from dist/ (plain ESM over HTTP, no bundler), runs a 2-D neighborhood case and
 * a dense causal case on the WebGPU backend through `navigator.gpu` and on the CPU backend in the
 * page, and hands every number back here, where the assertions are made.
 *
 * Skipped (with the reason), never passed, when Chromium or playwright-core is missing, the
 * browser cannot start, or the page gets no WebGPU adapter (then only the WebGPU part is skipped).
 * Chromium binary: $TILEWISE_CHROMIUM, else Debian's /usr/lib/chromium/chromium.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'playwright-core';
import { attention, na2d, randn, relError, type Result, type Tensor } from '../src/index.js';
import { CHROMIUM, CHROMIUM_ARGS, serveStatic } from './browser-harness.js';

type Lib = typeof import('../src/index.js');

/** This file runs from dist/test/, so dist/ is one up: the page imports dist/src/index.js from there. */
const DIST = normalize(join(dirname(fileURLToPath(import.meta.url)), '..'));
const TOL = 1e-4;

// Both sides build the same inputs from these (randn is seeded), so nothing large crosses over.
interface Case {
  fn: 'na2d' | 'attention';
  q: number[];
  kv: number[];
  seed: number;
  opts: Record<string, unknown>;
}
const CASES: Record<'na2d' | 'dense' | 'lanes' | 'queryLanes', Case> = {
  na2d: { fn: 'na2d', q: [1, 12, 12, 2, 16], kv: [1, 12, 12, 2, 16], seed: 21, opts: { kernelSize: 5, dilation: 2 } },
  dense: { fn: 'attention', q: [1, 64, 2, 16], kv: [1, 64, 2, 16], seed: 31, opts: { causal: true } },
  // large enough for the pool, small enough for the page's main thread to work beside the workers
  // (head lanes with the staged gate, and the query-lane tile step)
  lanes: { fn: 'na2d', q: [1, 48, 48, 4, 16], kv: [1, 48, 48, 4, 16], seed: 41, opts: { kernelSize: 7 } },
  queryLanes: { fn: 'na2d', q: [1, 56, 56, 3, 16], kv: [1, 56, 56, 3, 16], seed: 51, opts: { kernelSize: 7 } },
};

interface Numbers {
  out: number[];
  lse: number[];
}
interface GpuInfo {
  description: string;
  adapterClass: string;
  userProvided: boolean;
  /** the library's device is the browser's own GPUDevice class */
  nativeDevice: boolean;
  /** calls the page saw to GPU.prototype.requestAdapter, and what the last one returned */
  requestAdapterCalls: number;
  adapter: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter: boolean } | null;
}
interface PageResult {
  sharedArrayBuffer: boolean;
  crossOriginIsolated: boolean;
  hardwareConcurrency: number;
  cpuThreads: number;
  cpuInfo: { threads: number; mode: string; kernels: string; caller: boolean };
  /** pooled calls that ran the page's main thread beside the workers */
  callerJobs: number;
  /**
   * a long CPU call: its time, how often a 4 ms page timer fired meanwhile (0 = the page froze), and
   * how many timeouts it set (nested ones are clamped to 4 ms: a yield by timeout sleeps)
   */
  longCall: { ms: number; ticks: number; timeouts: number };
  /** the same call with a signal aborted 20 ms in: how it ended (the error's name) and when */
  abortedCall: { ms: number; error: string };
  cpu: Record<string, Numbers>;
  gpu: { skip: string } | { info: GpuInfo; results: Record<string, Numbers> };
  ms: Record<string, number>;
}

/** Runs in the page (serialised by playwright): must not touch anything from this module's scope. */
async function inPage(arg: { url: string; cases: Record<string, Case>; gpu: boolean }): Promise<PageResult> {
  const t0 = performance.now();
  const ms: Record<string, number> = {};
  // Count adapter requests before the library loads, to prove it goes through navigator.gpu.
  let requestAdapterCalls = 0;
  let adapter: GpuInfo['adapter'] = null;
  if (typeof GPU !== 'undefined') {
    const orig = GPU.prototype.requestAdapter;
    GPU.prototype.requestAdapter = async function (this: GPU, o?: GPURequestAdapterOptions) {
      requestAdapterCalls++;
      const a = await orig.call(this, o);
      const i = a?.info as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined;
      if (i) adapter = { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description, isFallbackAdapter: !!i.isFallbackAdapter };
      return a;
    };
  }
  const lib = (await import(arg.url)) as Lib;
  ms.import = performance.now() - t0;
  const numbers = (r: Result): Numbers => ({ out: Array.from(r.out.data), lse: Array.from(r.lse.data) });
  const run = (c: Case, backend: 'cpu' | 'webgpu'): Promise<Result> => {
    const q = lib.randn(c.q, c.seed);
    const k = lib.randn(c.kv, c.seed + 1);
    const v = lib.randn(c.kv, c.seed + 2);
    const f = lib[c.fn] as (q: Tensor, k: Tensor, v: Tensor, o: object) => Promise<Result>;
    return f(q, k, v, { ...c.opts, backend });
  };

  const cpu: Record<string, Numbers> = {};
  let t = performance.now();
  for (const [name, c] of Object.entries(arg.cases)) cpu[name] = numbers(await run(c, 'cpu'));
  ms.cpu = performance.now() - t;
  const { callerJobs } = (await import(arg.url.replace(/index\.js$/, 'cpu/pool.js'))) as { callerJobs: number };

  // a long CPU call (about 4 GFLOP: a few hundred ms on one thread) must leave the page's event loop
  // running; a frozen page fires its 4 ms timer at most once, however long the call
  let ticks = 0;
  const timer = setInterval(() => ticks++, 4);
  const big = lib.randn([1, 2048, 4, 64], 7);
  let timeouts = 0;
  const realTimeout = globalThis.setTimeout;
  globalThis.setTimeout = ((...a: Parameters<typeof setTimeout>) => (timeouts++, realTimeout(...a))) as typeof setTimeout;
  t = performance.now();
  try {
    await lib.attention(big, big, big, { backend: 'cpu' });
  } finally {
    globalThis.setTimeout = realTimeout;
  }
  const longCall = { ms: performance.now() - t, ticks, timeouts };
  clearInterval(timer);
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(), 20);
  t = performance.now();
  const error = await lib.attention(big, big, big, { backend: 'cpu', signal: ctl.signal }).then(
    () => 'resolved',
    (e: Error) => e.name,
  );
  const abortedCall = { ms: performance.now() - t, error };

  let gpu: PageResult['gpu'];
  const avail = arg.gpu ? await lib.webgpu.webgpuAvailable() : 'not asked for on this page';
  if (avail !== true) gpu = { skip: avail };
  else {
    const ctx = await lib.webgpu.getContext();
    const info: GpuInfo = {
      description: ctx.description,
      adapterClass: ctx.adapterClass,
      userProvided: ctx.userProvided,
      nativeDevice: typeof GPUDevice !== 'undefined' && ctx.device instanceof GPUDevice,
      requestAdapterCalls,
      adapter,
    };
    const results: Record<string, Numbers> = {};
    t = performance.now();
    for (const [name, c] of Object.entries(arg.cases)) results[name] = numbers(await run(c, 'webgpu'));
    ms.gpu = performance.now() - t;
    gpu = { info, results };
  }
  return {
    sharedArrayBuffer: typeof SharedArrayBuffer !== 'undefined',
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    hardwareConcurrency: navigator.hardwareConcurrency,
    cpuThreads: lib.cpuThreads(),
    cpuInfo: lib.cpuInfo(),
    callerJobs,
    longCall,
    abortedCall,
    cpu,
    gpu,
    ms,
  };
}

async function prerequisites(): Promise<string | false> {
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM} (apt-get install chromium, or set TILEWISE_CHROMIUM)`;
  try {
    await import('playwright-core');
  } catch (e) {
    return `playwright-core is not installed: ${(e as Error).message}`;
  }
  return false;
}

const cpuRef = (c: Case): Promise<Result> => {
  const f = c.fn === 'na2d' ? na2d : attention;
  return (f as (q: Tensor, k: Tensor, v: Tensor, o: object) => Promise<Result>)(randn(c.q, c.seed), randn(c.kv, c.seed + 1), randn(c.kv, c.seed + 2), {
    ...c.opts,
    backend: 'cpu',
  });
};

test('browser: the built library in headless Chromium, WebGPU via navigator.gpu against the CPU backend', { skip: await prerequisites(), timeout: 60_000 }, async (t) => {
  const started = Date.now();
  const { chromium } = await import('playwright-core');
  const served = await serveStatic(DIST, '<!doctype html><link rel="icon" href="data:,"><title>tilewise</title>');
  let browser: Browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 20_000,
      args: [...CHROMIUM_ARGS],
    });
  } catch (e) {
    await served.close();
    t.skip(`Chromium did not start: ${(e as Error).message.split('\n')[0]}`);
    return;
  }
  t.after(async () => {
    await browser.close();
    await served.close();
  });

  const page = await browser.newPage();
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (!r.url().startsWith(`${served.origin}/`)) problems.push(`request off the test server: ${r.url()}`);
  });
  page.on('requestfailed', (r) => problems.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(`${served.origin}/`);
  // the browser's own reason (e.g. an unresolvable 'node:' specifier) goes to the console, not the rejection
  const res = await page.evaluate(inPage, { url: '/src/index.js', cases: CASES, gpu: true }).catch((e: Error) => {
    throw new Error(`${e.message}\n${problems.join('\n')}`);
  });
  const ms = Date.now() - started;

  const plainLog = [...served.log];
  await t.test('imports from dist/ without Node modules; the CPU backend runs inline and matches Node', async () => {
    assert.deepEqual(problems, []);
    const paths = plainLog.map((r) => r.path);
    assert.deepEqual(
      served.log.filter((r) => r.status !== 200),
      [],
      'every request is served',
    );
    // only the library's own modules: no 'webgpu' package, no node_modules, no worker thread
    for (const p of paths.filter((x) => x !== '/')) assert.match(p, /^\/src\/[\w/.-]+\.js$/, `unexpected request ${p}`);
    assert.ok(!paths.includes('/src/cpu/worker.js'), 'a page without cross-origin isolation starts no worker');
    for (const m of ['/src/index.js', '/src/cpu/pool.js', '/src/webgpu/device.js']) assert.ok(paths.includes(m), `${m} was loaded`);
    assert.equal(res.crossOriginIsolated, false);
    assert.equal(res.cpuThreads, 1, 'without cross-origin isolation the CPU backend runs on the calling thread');
    assert.equal(res.cpuInfo.mode, 'main-thread');
    assert.equal(res.callerJobs, 0, 'no pool, nothing beside it');
    assert.notEqual(res.cpuInfo.kernels, 'scalar', 'Chromium runs the WebAssembly SIMD kernels');
    t.diagnostic(`plain page: long call ${res.longCall.ms.toFixed(0)} ms on the main thread, ${res.longCall.ticks} timer ticks`);
    assert.ok(res.longCall.ticks >= 4, `the page kept running during a ${res.longCall.ms.toFixed(0)} ms call (timer fired ${res.longCall.ticks} times)`);
    // yielding by setTimeout(0) slept 4 ms a slice once the timeouts nested five deep (a quarter of the call)
    assert.equal(res.longCall.timeouts, 0, 'the one-thread engine yields to the page without timeouts');
    // between its slices the one-thread engine sees the signal: the call stops, not finishes
    assert.equal(res.abortedCall.error, 'AbortError');
    assert.ok(res.abortedCall.ms < res.longCall.ms * 0.6, `aborted after 20 ms, the call ended at ${res.abortedCall.ms.toFixed(0)} ms (whole: ${res.longCall.ms.toFixed(0)} ms)`);
    for (const [name, c] of Object.entries(CASES)) {
      const want = await cpuRef(c);
      const got = res.cpu[name]!;
      assert.equal(got.out.length, want.out.data.length, `${name}: out size`);
      // same code, same inputs: only Math.exp/log of two V8 versions could differ
      const eo = relError(got.out, want.out.data);
      const el = relError(got.lse, want.lse.data);
      assert.ok(eo < 1e-6 && el < 1e-6, `${name}: browser CPU vs Node CPU relErr out ${eo}, lse ${el}`);
    }
  });

  await t.test('WebGPU through navigator.gpu matches the CPU backend in the page', async (st) => {
    if ('skip' in res.gpu) {
      st.skip(`no WebGPU adapter in the page: ${res.gpu.skip}`);
      return;
    }
    const { info, results } = res.gpu;
    st.diagnostic(`adapter: ${info.description} (${info.adapterClass})`);
    assert.ok(info.requestAdapterCalls >= 1, 'the library asked navigator.gpu for an adapter');
    assert.ok(info.nativeDevice, "the library's device is the browser's GPUDevice");
    assert.equal(info.userProvided, false);
    assert.ok(info.adapter, 'the adapter the page handed out');
    for (const f of [info.adapter.vendor, info.adapter.architecture].filter((x) => x)) assert.ok(info.description.includes(f), `description "${info.description}" names ${f}`);
    if (info.adapter.isFallbackAdapter) assert.equal(info.adapterClass, 'cpu', 'a fallback adapter is classed as software');
    for (const name of Object.keys(CASES)) {
      const g = results[name]!;
      const c = res.cpu[name]!;
      assert.equal(g.out.length, c.out.length, `${name}: out size`);
      const eo = relError(g.out, c.out);
      const el = relError(g.lse, c.lse);
      assert.ok(eo < TOL && el < TOL, `${name}: WebGPU vs CPU relErr out ${eo}, lse ${el}`); // NaN fails too
    }
  });
  await t.test('a cross-origin isolated page runs the CPU backend on Web Workers over shared memory', async () => {
    const isoPage = await browser.newPage();
    const before = served.log.length;
    await isoPage.goto(`${served.origin}/isolated/`);
    const iso = await isoPage.evaluate(inPage, { url: '/isolated/src/index.js', cases: CASES, gpu: false });
    const paths = served.log.slice(before).map((r) => r.path);
    assert.equal(iso.crossOriginIsolated, true);
    assert.equal(iso.sharedArrayBuffer, true);
    t.diagnostic(`isolated page: ${JSON.stringify(iso.cpuInfo)}, hardwareConcurrency ${iso.hardwareConcurrency}, long call ${iso.longCall.ms.toFixed(0)} ms, ${iso.longCall.ticks} timer ticks`);
    if (iso.hardwareConcurrency > 1) {
      assert.equal(iso.cpuInfo.mode, 'workers');
      // a page's main thread may not block: it works beside the workers and awaits the barriers
      // with Atomics.waitAsync (Chromium has it); the two mid-sized cases took that path
      assert.equal(iso.cpuInfo.caller, true);
      assert.equal(iso.callerJobs, 2, 'the lanes and queryLanes cases ran the main thread beside the workers');
      assert.equal(iso.cpuThreads, Math.min(16, iso.hardwareConcurrency));
      assert.ok(paths.includes('/isolated/src/cpu/worker.js'), 'the pool loaded its module worker');
    }
    assert.ok(iso.longCall.ticks >= 4, `the page kept running during the long call (timer fired ${iso.longCall.ticks} times)`);
    // the workers see the signal at their next claim
    assert.equal(iso.abortedCall.error, 'AbortError');
    assert.ok(iso.abortedCall.ms < iso.longCall.ms * 0.6, `aborted after 20 ms, the call ended at ${iso.abortedCall.ms.toFixed(0)} ms (whole: ${iso.longCall.ms.toFixed(0)} ms)`);
    for (const [name, c] of Object.entries(CASES)) {
      const want = await cpuRef(c);
      const got = iso.cpu[name]!;
      const eo = relError(got.out, want.out.data);
      const el = relError(got.lse, want.lse.data);
      assert.ok(eo < 1e-6 && el < 1e-6, `${name}: workers in the page vs Node CPU relErr out ${eo}, lse ${el}`);
    }
    await isoPage.close();
  });
  await t.test('an isolated page without Atomics.waitAsync (Firefox before 145) keeps its main thread off the work: the workers alone, right', async () => {
    const page = await browser.newPage();
    await page.goto(`${served.origin}/isolated/`);
    const got = await page.evaluate(
      async ({ c, url, poolUrl }: { c: Case; url: string; poolUrl: string }) => {
        delete (Atomics as { waitAsync?: unknown }).waitAsync;
        const lib = (await import(url)) as Lib;
        const r = await lib.na2d(lib.randn(c.q, c.seed), lib.randn(c.kv, c.seed + 1), lib.randn(c.kv, c.seed + 2), c.opts as { kernelSize: number });
        const { callerJobs } = (await import(poolUrl)) as { callerJobs: number };
        return { out: Array.from(r.out.data), lse: Array.from(r.lse.data), info: lib.cpuInfo(), callerJobs, cores: navigator.hardwareConcurrency };
      },
      { c: CASES.lanes, url: '/isolated/src/index.js', poolUrl: '/isolated/src/cpu/pool.js' },
    );
    await page.close();
    if (got.cores > 1) {
      assert.equal(got.info.mode, 'workers');
      assert.equal(got.info.caller, false);
      assert.equal(got.callerJobs, 0);
    }
    const want = await cpuRef(CASES.lanes);
    assert.ok(relError(got.out, want.out.data) < 1e-6 && relError(got.lse, want.lse.data) < 1e-6, 'the workers alone match Node');
  });
  await t.test('an isolated context with no Worker constructor (a service worker) runs on its one thread instead of failing', async () => {
    const page = await browser.newPage();
    await page.goto(`${served.origin}/isolated/`);
    const got = await page.evaluate(
      async ({ c, url }: { c: Case; url: string }) => {
        (globalThis as { Worker?: unknown }).Worker = undefined;
        const lib = (await import(url)) as Lib;
        const r = await lib.na2d(lib.randn(c.q, c.seed), lib.randn(c.kv, c.seed + 1), lib.randn(c.kv, c.seed + 2), c.opts as { kernelSize: number });
        return { out: Array.from(r.out.data), lse: Array.from(r.lse.data), info: lib.cpuInfo(), coi: globalThis.crossOriginIsolated };
      },
      { c: CASES.lanes, url: '/isolated/src/index.js' },
    );
    await page.close();
    assert.equal(got.coi, true);
    assert.equal(got.info.mode, 'main-thread');
    const want = await cpuRef(CASES.lanes);
    assert.ok(relError(got.out, want.out.data) < 1e-6 && relError(got.lse, want.lse.data) < 1e-6, 'the one-thread result matches Node');
  });
  await t.test("the library inside a Web Worker of an isolated page: its pool's workers start from that worker, whose first call already works beside them", async () => {
    const page = await browser.newPage();
    await page.goto(`${served.origin}/isolated/`);
    // the worker's first call is mid-sized: it blocks at the barriers beside its pool (a Web Worker
    // may wait), which must have started by then (they start through the calling worker's own loop)
    const got = await page.evaluate(async (c: Case) => {
      const src = `
        const lib = await import(${JSON.stringify(location.origin)} + '/isolated/src/index.js');
        const pool = await import(${JSON.stringify(location.origin)} + '/isolated/src/cpu/pool.js');
        const q = lib.randn(${JSON.stringify(c.q)}, ${c.seed});
        const k = lib.randn(${JSON.stringify(c.kv)}, ${c.seed + 1});
        const v = lib.randn(${JSON.stringify(c.kv)}, ${c.seed + 2});
        const r = await lib.na2d(q, k, v, ${JSON.stringify(c.opts)});
        postMessage({ out: Array.from(r.out.data), lse: Array.from(r.lse.data), info: lib.cpuInfo(), callerJobs: pool.callerJobs, coi: self.crossOriginIsolated });
      `;
      const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { type: 'module' });
      return await new Promise<{ out: number[]; lse: number[]; info: { mode: string; caller: boolean }; callerJobs: number; coi: boolean }>((resolve, reject) => {
        w.onmessage = (e) => resolve(e.data);
        w.onerror = (e) => reject(new Error(`worker error: ${e.message}`));
      });
    }, CASES.lanes);
    await page.close();
    assert.equal(got.coi, true);
    if (got.info.mode === 'workers') {
      assert.equal(got.info.caller, true, 'a Web Worker may wait: it works beside its pool');
      assert.equal(got.callerJobs, 1, 'the first call ran beside the pool');
    }
    const want = await cpuRef(CASES.lanes);
    const eo = relError(got.out, want.out.data);
    const el = relError(got.lse, want.lse.data);
    assert.ok(eo < 1e-6 && el < 1e-6, `in a Web Worker vs Node CPU relErr out ${eo}, lse ${el}`);
  });
  t.diagnostic(`browser test: ${ms} ms in all (page: import ${res.ms.import?.toFixed(0)} ms, cpu ${res.ms.cpu?.toFixed(0)} ms, gpu ${res.ms.gpu?.toFixed(0) ?? '-'} ms)`);
});
