/**
 * The fused kernels allocate nothing quadratic (design.md section 1): a 1-D sliding window over
 * N = 16384 tokens and 2-D neighborhood attention over a 128x128 grid must stay far below the
 * N * N * 4 bytes (1 GiB) a materialised score matrix would take, and still match the reference
 * on a subsample of rows.
 *
 * Peak resident memory is sampled from a separate thread (process-wide RSS, so it sees the CPU
 * pool's workers and a main thread busy with an inline kernel alike); ArrayBuffer memory of the
 * main isolate is sampled on the event loop and compared before / after.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { attention, na2d, referenceAttention, setCpuThreads, cpuThreads, type Tensor } from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import { Rng, compareResult, poisoned, randTensor } from './helpers.js';

const MiB = 2 ** 20;
const LIMIT = 64 * MiB;

class PeakRss {
  private readonly peak = new Float64Array(new SharedArrayBuffer(8));
  private readonly ctl = new Int32Array(new SharedArrayBuffer(4));
  private readonly worker: Worker;
  readonly ready: Promise<void>;
  constructor() {
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      const peak = new Float64Array(workerData.peak);
      const ctl = new Int32Array(workerData.ctl);
      parentPort.postMessage('up');
      while (Atomics.load(ctl, 0) === 0) {
        const r = process.memoryUsage.rss();
        if (r > peak[0]) peak[0] = r;
        Atomics.wait(ctl, 0, 0, 1);
      }`;
    this.worker = new Worker(src, { eval: true, workerData: { peak: this.peak.buffer, ctl: this.ctl.buffer } });
    this.ready = new Promise((resolve) => this.worker.once('message', () => resolve()));
  }
  reset(): void {
    this.peak[0] = 0;
  }
  /** Highest RSS seen since the last reset (after one more sampling period). */
  async max(): Promise<number> {
    await new Promise((r) => setTimeout(r, 10));
    return this.peak[0]!;
  }
  async stop(): Promise<void> {
    Atomics.store(this.ctl, 0, 1);
    Atomics.notify(this.ctl, 0);
    await this.worker.terminate();
  }
}

let sampler: PeakRss;
before(async () => {
  sampler = new PeakRss();
  await sampler.ready;
});
after(async () => {
  await sampler.stop();
});

const gc = (globalThis as { gc?: () => void }).gc;

interface Growth {
  rss: number;
  arrayBuffers: number;
  arrayBuffersPeak: number;
}

/** Runs `fn` and reports peak RSS growth and ArrayBuffer growth (after - before, and sampled peak). */
async function measure<T>(fn: () => Promise<T>): Promise<{ value: T; growth: Growth }> {
  gc?.();
  await new Promise((r) => setTimeout(r, 20));
  const b = process.memoryUsage();
  let abPeak = b.arrayBuffers;
  const iv = setInterval(() => (abPeak = Math.max(abPeak, process.memoryUsage().arrayBuffers)), 1);
  sampler.reset();
  let value: T;
  try {
    value = await fn();
  } finally {
    clearInterval(iv);
  }
  const rssPeak = await sampler.max();
  const a = process.memoryUsage();
  abPeak = Math.max(abPeak, a.arrayBuffers);
  return { value, growth: { rss: rssPeak - b.rss, arrayBuffers: a.arrayBuffers - b.arrayBuffers, arrayBuffersPeak: abPeak - b.arrayBuffers } };
}

function assertSmall(name: string, g: Growth, n: number): string {
  const quad = n * n * 4;
  const fmt = (x: number) => `${(x / MiB).toFixed(1)} MiB`;
  const info = `${name}: rss peak +${fmt(g.rss)}, arrayBuffers +${fmt(g.arrayBuffers)} (peak +${fmt(g.arrayBuffersPeak)}), N*N*4 = ${fmt(quad)}`;
  assert.ok(g.rss < LIMIT, `peak RSS growth too large: ${info}`);
  assert.ok(g.arrayBuffers < LIMIT, `ArrayBuffer growth too large: ${info}`);
  assert.ok(g.arrayBuffersPeak < LIMIT, `ArrayBuffer peak growth too large: ${info}`);
  assert.ok(LIMIT * 8 <= quad, 'the limit must be far below the quadratic size');
  return info;
}

/** Flat rows to spot-check: both borders and a random sample. */
function sampleRows(rng: Rng, n: number, count: number): number[] {
  const s = new Set<number>([0, 1, 2, n - 3, n - 2, n - 1]);
  while (s.size < count) s.add(rng.int(0, n - 1));
  return [...s].sort((a, b) => a - b);
}

test('memory: the RSS sampler sees a quadratic-sized allocation (harness self-check)', async () => {
  const n = 6000; // 6000^2 * 4 bytes = 137 MiB
  const { growth } = await measure(async () => {
    const big = new Float32Array(n * n);
    for (let i = 0; i < big.length; i += 1024) big[i] = 1; // touch every page
    await new Promise((r) => setTimeout(r, 20));
    return big[n]!;
  });
  assert.ok(growth.rss > 100 * MiB, `sampler missed a ${((n * n * 4) / MiB).toFixed(0)} MiB allocation (saw +${(growth.rss / MiB).toFixed(1)} MiB)`);
});

const N = 16384;
const W: [number, number] = [128, 128];

for (const threads of ['pool', 1] as const) {
  test(`memory: 1-D window ${JSON.stringify(W)} attention, N=${N}, H=1, D=16, threads=${threads}: no quadratic allocation, matches reference`, async (t) => {
    const saved = cpuThreads();
    if (threads === 1) setCpuThreads(1);
    try {
      const rng = new Rng(4242);
      const q = randTensor(rng, [1, N, 1, 16]);
      const k = randTensor(rng, [1, N, 1, 16]);
      const v = randTensor(rng, [1, N, 1, 16]);
      // warm up (starts the worker pool) on the same path
      const wq = randTensor(rng, [1, 1024, 1, 16]);
      await attention(wq, wq, wq, { window: W });
      const out = poisoned(N * 16);
      const lse = poisoned(N);
      const { growth } = await measure(() => attention(q, k, v, { window: W, out, lse }));
      t.diagnostic(assertSmall(`window attention N=${N} threads=${threads}`, growth, N));
      const rows = sampleRows(rng, N, 64);
      const { problem } = planAttention(q, k, v, { window: W });
      const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data }, new Set(rows));
      const msg = compareResult(out, lse, ref, 16, { rows });
      if (msg) assert.fail(`window attention N=${N}: ${msg}`);
    } finally {
      setCpuThreads(saved);
    }
  });
}

const G = [128, 128];
for (const impl of ['fused', 'naive', 'unfused'] as const) {
  for (const cfg of [
    { kernelSize: 7, dilation: 1 },
    { kernelSize: [5, 8], dilation: [2, 3], stride: [2, 1], isCausal: [false, true] },
  ]) {
    test(`memory: 2-D NA ${G.join('x')} ${JSON.stringify(cfg)} impl=${impl}, H=1, D=16: no quadratic allocation, matches reference`, async (t) => {
      const rng = new Rng(777);
      const n = G[0]! * G[1]!;
      const rt = (): Tensor => randTensor(rng, [1, ...G, 1, 16]);
      const q = rt();
      const k = rt();
      const v = rt();
      const wq = randTensor(rng, [1, 32, 32, 1, 16]);
      await na2d(wq, wq, wq, { kernelSize: 7, impl });
      const out = poisoned(n * 16);
      const lse = poisoned(n);
      const { growth } = await measure(() => na2d(q, k, v, { ...cfg, impl, out, lse }));
      t.diagnostic(assertSmall(`na2d ${impl}`, growth, n));
      const rows = sampleRows(rng, n, 64);
      const { problem } = planNA(q, k, v, cfg);
      const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data }, new Set(rows));
      const msg = compareResult(out, lse, ref, 16, { rows });
      if (msg) assert.fail(`na2d ${impl}: ${msg}`);
    });
  }
}
