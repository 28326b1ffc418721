import assert from 'node:assert/strict';
import test from 'node:test';
import { attention, na2d, planAttention, planNA } from '../src/api.js';
import { referenceAttention } from '../src/reference.js';
import { randn } from '../src/tensor.js';

/** Peak growth of ArrayBuffer memory and RSS during `fn`, sampled every few ms. */
async function peakGrowth<T>(fn: () => Promise<T>): Promise<{ result: T; arrayBuffers: number; rss: number }> {
  const base = process.memoryUsage();
  let ab = 0;
  let rss = 0;
  const sample = () => {
    const m = process.memoryUsage();
    ab = Math.max(ab, m.arrayBuffers - base.arrayBuffers);
    rss = Math.max(rss, m.rss - base.rss);
  };
  const timer = setInterval(sample, 2);
  const result = await fn();
  clearInterval(timer);
  sample();
  return { result, arrayBuffers: ab, rss };
}

function sampledRelErr(out: Float32Array, ref: Float64Array, rows: number[], width: number): number {
  let num = 0;
  let den = 0;
  for (const r of rows)
    for (let c = 0; c < width; c++) {
      num += (out[r * width + c]! - ref[r * width + c]!) ** 2;
      den += ref[r * width + c]! ** 2;
    }
  return Math.sqrt(num / den);
}

test('fused 1-D window attention at N = 16384 allocates nothing quadratic', async () => {
  const N = 16384;
  const H = 1;
  const D = 16;
  const q = randn([1, N, H, D], 1);
  const k = randn([1, N, H, D], 2);
  const v = randn([1, N, H, D], 3);
  const opts = { window: [128, 128] as const };
  const { result, arrayBuffers, rss } = await peakGrowth(() => attention(q, k, v, opts));
  const quadratic = N * N * 4; // one float32 score matrix: 1 GiB
  // inputs are copied once into shared memory (3 * N * D * 4 = 3 MiB) plus outputs: linear
  assert.ok(arrayBuffers < 32 * 2 ** 20, `ArrayBuffer growth ${arrayBuffers} B`);
  assert.ok(rss < quadratic / 8, `RSS growth ${rss} B vs quadratic ${quadratic} B`);
  const rows = [0, 1, 127, 128, 5000, 9999, N - 129, N - 1];
  const ref = referenceAttention(planAttention(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, new Set(rows));
  assert.ok(sampledRelErr(result.out.data, ref.out, rows, H * D) < 1e-4);
});

test('fused 2-D neighborhood attention on 128x128 tokens allocates nothing quadratic', async () => {
  const shape = [1, 128, 128, 1, 8];
  const q = randn(shape, 4);
  const k = randn(shape, 5);
  const v = randn(shape, 6);
  const opts = { kernelSize: [7, 7], dilation: [2, 1] };
  const { result, arrayBuffers } = await peakGrowth(() => na2d(q, k, v, opts));
  assert.ok(arrayBuffers < 16 * 2 ** 20, `ArrayBuffer growth ${arrayBuffers} B (quadratic would be ${16384 * 16384 * 4})`);
  const rows = [0, 129, 8000, 16383];
  const ref = referenceAttention(planNA(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, new Set(rows));
  assert.ok(sampledRelErr(result.out.data, ref.out, rows, 8) < 1e-4);
});
