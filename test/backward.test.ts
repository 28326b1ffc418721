/**
 * The backward pass on the CPU engine against an independent float64 reference backward
 * (src/reference-backward.ts, itself checked here by finite differences of the float64 forward),
 * on random configurations of every pattern and option, inline and on the pool; determinism,
 * bad input, and memory linear in N.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TilewiseError,
  attention,
  attentionBackward,
  blockSparseAttention,
  blockSparseAttentionBackward,
  neighborhoodAttention,
  neighborhoodAttentionBackward,
  patterns,
  referenceAttention,
  type AttentionOptions,
  type Grads,
  type NeighborhoodOptions,
  type Tensor,
} from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import { setInlineFlops } from '../src/cpu/pool.js';
import type { AttnProblem } from '../src/problem.js';
import { referenceBackward } from '../src/reference-backward.js';
import { Failures, Rng, TEST_INLINE_FLOPS, describe, gradMismatch, randTensor, randomAttention, randomNA, relErr, snapshot, sameBytes } from './helpers.js';

const TOL = 1e-4;

/** The gradients of an API call against the reference (dbias when the call returned one). */
const compareGrads = (g: Grads, ref: ReturnType<typeof referenceBackward>): string | null =>
  gradMismatch({ dq: g.dq.data, dk: g.dk.data, dv: g.dv.data, drpb: g.drpb?.data, dbias: g.dbias?.data }, ref, g.dbias !== undefined, TOL);

/** backend: where the backward runs (the forward always runs on the CPU). */
async function attentionCase(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions, rng: Rng, backend: 'cpu' | 'webgpu' = 'cpu'): Promise<string | null> {
  const f = await attention(q, k, v, opts);
  const dOut = randTensor(rng, f.out.shape);
  const g = await attentionBackward(q, k, v, f.out, f.lse, dOut, { ...opts, backend, ...(opts.bias ? { dbias: true } : {}) });
  if (opts.bias && !g.dbias) return 'dbias missing';
  return compareGrads(g, referenceBackward(planAttention(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data));
}

async function naCase(q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions, rng: Rng, backend: 'cpu' | 'webgpu' = 'cpu'): Promise<string | null> {
  const f = await neighborhoodAttention(q, k, v, opts);
  const dOut = randTensor(rng, f.out.shape);
  const g = await neighborhoodAttentionBackward(q, k, v, f.out, f.lse, dOut, { ...opts, backend });
  return compareGrads(g, referenceBackward(planNA(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data));
}

// ---------------------------------------------------------------------------------------------
// The reference backward against finite differences of the float64 forward.

/** loss = sum(out * G) in float64 through the reference forward. */
function loss(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array, G: Float32Array): number {
  const { out } = referenceAttention(problem, { q, k, v });
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i]! * G[i]!;
  return s;
}

/** Central differences over every element of x (perturbed in place; the actual f32 step is used). */
function numericGrad(x: Float32Array, f: () => number): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const x0 = x[i]!;
    x[i] = x0 + 2 ** -8;
    const up = x[i]!;
    const fu = f();
    x[i] = x0 - 2 ** -8;
    const dn = x[i]!;
    const fd = f();
    x[i] = x0;
    g[i] = (fu - fd) / (up - dn);
  }
  return g;
}

test('reference backward equals finite differences of the float64 forward (softcap, bias, RoPE, GQA, rpb, dilation)', () => {
  const rng = new Rng(404);
  const cases: { name: string; plan: () => AttnProblem; q: Tensor; k: Tensor; v: Tensor }[] = [];
  {
    const q = randTensor(rng, [1, 6, 2, 4]);
    const k = randTensor(rng, [1, 7, 1, 4]);
    const v = randTensor(rng, [1, 7, 1, 3]);
    const opts: AttentionOptions = { causal: 'bottom-right', softcap: 2, bias: randTensor(rng, [2, 6, 7]), rope: { base: 100 } };
    cases.push({ name: 'attention', plan: () => planAttention(q, k, v, opts).problem, q, k, v });
  }
  {
    const q = randTensor(rng, [1, 5, 4, 2, 3]);
    const k = randTensor(rng, [1, 5, 4, 2, 3]);
    const v = randTensor(rng, [1, 5, 4, 2, 3]);
    const opts: NeighborhoodOptions = { kernelSize: [2, 3], dilation: [2, 1], rpb: randTensor(rng, [2, 3, 5]), softcap: 3 };
    cases.push({ name: 'na2d', plan: () => planNA(q, k, v, opts).problem, q, k, v });
  }
  for (const c of cases) {
    const problem = c.plan();
    const G = randTensor(rng, [problem.qRows * problem.heads * problem.dimV]).data;
    const ref = referenceBackward(problem, { q: c.q.data, k: c.k.data, v: c.v.data }, G);
    const f = () => loss(problem, c.q.data, c.k.data, c.v.data, G);
    const checks: [string, Float64Array, Float32Array][] = [
      ['dq', ref.dq, c.q.data],
      ['dk', ref.dk, c.k.data],
      ['dv', ref.dv, c.v.data],
    ];
    if (problem.rpb) checks.push(['drpb', ref.drpb!, problem.rpb.data]);
    if (problem.bias) checks.push(['dbias', ref.dbias!, problem.bias.data]);
    for (const [n, analytic, x] of checks) {
      const e = relErr(analytic, numericGrad(x, f));
      assert.ok(e < 1e-3, `${c.name} ${n}: reference vs finite differences relErr ${e}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// The kernels against the reference.

for (const where of ['calling thread', 'pool'] as const) {
  test(`backward on the ${where}: random attention configurations against the float64 reference`, async () => {
    if (where === 'pool') setInlineFlops(0);
    try {
      const f = new Failures();
      const rng = new Rng(where === 'pool' ? 71 : 17);
      for (let i = 0; i < 30; i++) {
        const c = randomAttention(rng, 120);
        await f.run(`#${i} ${c.name}`, async () => {
          const msg = await attentionCase(c.q, c.k, c.v, c.opts, rng);
          if (msg) throw new Error(msg);
        });
      }
      f.done(`attention backward (${where})`);
    } finally {
      setInlineFlops(TEST_INLINE_FLOPS);
    }
  });

  test(`backward on the ${where}: random 1-3-D neighborhoods (dilation, stride, causal axes, even kernels, rpb, softcap)`, async () => {
    if (where === 'pool') setInlineFlops(0);
    try {
      const f = new Failures();
      const rng = new Rng(where === 'pool' ? 83 : 38);
      for (let i = 0; i < 30; i++) {
        const c = randomNA(rng, rng.int(1, 3));
        const H = rng.pick([1, 2, 4]);
        const Hk = rng.pick([1, H]);
        const D = rng.int(1, 24);
        const B = rng.int(1, 2);
        const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal };
        if (rng.bool(0.3) && c.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...c.kernel.map((x) => 2 * x - 1)]);
        if (rng.bool(0.25)) opts.softcap = 5;
        const q = randTensor(rng, [B, ...c.grid, H, D]);
        const k = randTensor(rng, [B, ...c.grid, Hk, D]);
        const v = randTensor(rng, [B, ...c.grid, Hk, D]);
        await f.run(`#${i} ${describe({ B, grid: c.grid, H, Hk, D, ...opts, rpb: opts.rpb?.shape })}`, async () => {
          const msg = await naCase(q, k, v, opts, rng);
          if (msg) throw new Error(msg);
        });
      }
      f.done(`neighborhood backward (${where})`);
    } finally {
      setInlineFlops(TEST_INLINE_FLOPS);
    }
  });
}

test('backward: varlen packs and block-sparse masks', async () => {
  const rng = new Rng(5);
  const f = new Failures();
  for (let i = 0; i < 8; i++) {
    const lens = Array.from({ length: rng.int(1, 4) }, () => rng.int(0, 60));
    const cu = new Int32Array([0, ...lens.map((_, j) => lens.slice(0, j + 1).reduce((a, b) => a + b, 0))]);
    const n = cu[cu.length - 1]!;
    if (n === 0) continue;
    const q = randTensor(rng, [1, n, 2, 16]);
    const k = randTensor(rng, [1, n, 2, 16]);
    const v = randTensor(rng, [1, n, 2, 16]);
    const opts: AttentionOptions = { cuSeqlensQ: cu, cuSeqlensK: cu, causal: rng.bool(), ...(rng.bool() ? { window: [8, 0] as const } : {}) };
    await f.run(`varlen #${i} ${describe({ cu, ...opts })}`, async () => {
      const msg = await attentionCase(q, k, v, opts, rng);
      if (msg) throw new Error(msg);
    });
  }
  for (let i = 0; i < 6; i++) {
    const n = rng.int(16, 130);
    const bs = rng.pick([8, 16, 32]);
    const nb = Math.ceil(n / bs);
    const heads = rng.pick([1, 2]);
    const mask = Array.from({ length: heads * nb * nb }, () => (rng.bool(0.4) ? 1 : 0));
    const q = randTensor(rng, [1, n, 2, 24]);
    const k = randTensor(rng, [1, n, 2, 24]);
    const v = randTensor(rng, [1, n, 2, 24]);
    const opts = { blockMask: { data: mask, shape: heads === 1 ? [nb, nb] : [heads, nb, nb] }, blockSize: bs };
    await f.run(`block-sparse #${i} n=${n} bs=${bs}`, async () => {
      const fw = await blockSparseAttention(q, k, v, opts);
      const dOut = randTensor(rng, fw.out.shape);
      const g = await blockSparseAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
      const { problem } = planAttention(q, k, v, { pattern: { kind: 'blockSparse', blockQ: bs, blockK: bs, mask: Uint8Array.from(mask), maskHeads: heads, numQBlocks: nb, numKBlocks: nb } });
      const msg = compareGrads(g, referenceBackward(problem, { q: q.data, k: k.data, v: v.data }, dOut.data));
      if (msg) throw new Error(msg);
    });
  }
  f.done('varlen / block-sparse backward');
});

test('backward: rows with no allowed key get zero gradients; results repeat bit for bit on the pool', async () => {
  const rng = new Rng(9);
  const q = randTensor(rng, [1, 300, 2, 32]);
  const k = randTensor(rng, [1, 300, 2, 32]);
  const v = randTensor(rng, [1, 300, 2, 32]);
  // query rows 0-9 see no key at all
  const opts: AttentionOptions = { pattern: patterns.maskFn((_b, _h, qi, kj) => qi >= 10 && (qi + kj) % 3 !== 0) };
  const f = await attention(q, k, v, opts);
  const dOut = randTensor(rng, f.out.shape);
  const g = await attentionBackward(q, k, v, f.out, f.lse, dOut, opts);
  for (let x = 0; x < 10 * 2 * 32; x++) assert.equal(g.dq.data[x], 0, 'dq of an empty row');
  const big: AttentionOptions = { causal: true };
  const q2 = randTensor(rng, [1, 1500, 4, 32]);
  const f2 = await attention(q2, q2, q2, big);
  const d2 = randTensor(rng, f2.out.shape);
  const a = await attentionBackward(q2, q2, q2, f2.out, f2.lse, d2, big);
  const b = await attentionBackward(q2, q2, q2, f2.out, f2.lse, d2, big);
  for (const n of ['dq', 'dk', 'dv'] as const) assert.ok(sameBytes(a[n].data, snapshot(b[n].data)), `${n} differs between two runs`);
});

test('backward: bad input is a TilewiseError naming the argument', async () => {
  const rng = new Rng(3);
  const q = randTensor(rng, [1, 8, 2, 4]);
  const f = await attention(q, q, q);
  const dOut = randTensor(rng, f.out.shape);
  const bad: [string, () => Promise<unknown>][] = [
    ['dOut', () => attentionBackward(q, q, q, f.out, f.lse, randTensor(rng, [1, 8, 2, 5]))],
    ['lse', () => attentionBackward(q, q, q, f.out, { data: f.lse.data, shape: [1, 8] }, dOut)],
    ['out', () => attentionBackward(q, q, q, { data: f.out.data.subarray(1), shape: f.out.shape }, f.lse, dOut)],
    ['backend', () => attentionBackward(q, q, q, f.out, f.lse, dOut, { backend: 'gpu' as 'webgpu' })],
    ['impl', () => neighborhoodAttentionBackward(q, q, q, f.out, f.lse, dOut, { kernelSize: 3, impl: 'unfused' })],
  ];
  for (const [arg, call] of bad) {
    await assert.rejects(call, (e: unknown) => e instanceof TilewiseError && e.arg === arg, `expected a TilewiseError on '${arg}'`);
  }
});

test('backward of a 1-D window of 256 at N = 65536 allocates nothing quadratic', async () => {
  const N = 65536;
  const rng = new Rng(12);
  const q = randTensor(rng, [1, N, 1, 16]);
  const k = randTensor(rng, [1, N, 1, 16]);
  const v = randTensor(rng, [1, N, 1, 16]);
  const opts: AttentionOptions = { window: [256, 0] };
  const f = await attention(q, k, v, opts);
  const dOut = randTensor(rng, f.out.shape);
  const before = process.memoryUsage.rss();
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 2);
  const g = await attentionBackward(q, k, v, f.out, f.lse, dOut, opts);
  clearInterval(timer);
  peak = Math.max(peak, process.memoryUsage.rss());
  // q, k, v, out, lse, dOut, dq, dk, dv and two threads' dK/dV partials: about 60 MiB; N*N*4 would be 16 GiB
  assert.ok(peak - before < 256 * 2 ** 20, `RSS grew ${((peak - before) / 2 ** 20).toFixed(0)} MiB`);
  // spot-check a few rows against the reference on a short prefix (the window makes rows local)
  const M = 1024;
  const cut = (t: Tensor) => ({ data: t.data.subarray(0, M * 16), shape: [1, M, 1, 16] });
  const ref = referenceBackward(planAttention(cut(q), cut(k), cut(v), opts).problem, { q: cut(q).data, k: cut(k).data, v: cut(v).data }, cut(dOut).data);
  // dq of rows below M depends only on keys below M
  assert.ok(relErr(g.dq.data.subarray(0, M * 16), ref.dq) < TOL, 'dq prefix');
});

test('backward with additional keys/values: equal to one attention over the concatenated keys', async () => {
  const rng = new Rng(77);
  const f = new Failures();
  for (let i = 0; i < 6; i++) {
    const N = rng.int(8, 40);
    const M = rng.int(1, 12);
    const H = rng.pick([2, 4]);
    const Hk = rng.pick([1, H]);
    const D = rng.int(4, 20);
    const K = rng.int(2, Math.min(9, N));
    const causal = rng.bool(0.3);
    const q = randTensor(rng, [1, N, H, D]);
    const k = randTensor(rng, [1, N, Hk, D]);
    const v = randTensor(rng, [1, N, Hk, D]);
    const ak = randTensor(rng, [1, M, Hk, D]);
    const av = randTensor(rng, [1, M, Hk, D]);
    const opts: NeighborhoodOptions = { kernelSize: K, isCausal: causal, additionalKeys: ak, additionalValues: av, ...(rng.bool() ? { softcap: 4 } : {}) };
    await f.run(`#${i} N=${N} M=${M} H=${H}/${Hk} D=${D} K=${K} causal=${causal}`, async () => {
      const fw = await neighborhoodAttention(q, k, v, opts);
      const dOut = randTensor(rng, fw.out.shape);
      const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
      // the same call as one attention over [k; ak]: the neighborhood rule on the first N keys, all of the rest
      const cat = (a: Tensor, b: Tensor) => ({ data: Float32Array.from([...a.data, ...b.data]), shape: [1, N + M, Hk, D] });
      const na = planNA(q, k, v, { kernelSize: K, isCausal: causal }).problem;
      const { compilePattern } = await import('../src/index.js');
      const p = compilePattern(na.pattern, { qGrid: [N], kGrid: [N], heads: H });
      const pattern = patterns.maskFn((b, h, qi, kj) => kj >= N || p.allows(b, h, qi, kj));
      const both = planAttention(q, cat(k, ak), cat(v, av), { pattern, ...(opts.softcap ? { softcap: opts.softcap } : {}) }).problem;
      const ref = referenceBackward(both, { q: q.data, k: cat(k, ak).data, v: cat(v, av).data }, dOut.data);
      const split = (x: Float64Array, width: number) => [x.subarray(0, N * Hk * width), x.subarray(N * Hk * width)];
      const [dk, dak] = split(ref.dk, D);
      const [dv, dav] = split(ref.dv, D);
      for (const [n, got, want] of [['dq', g.dq.data, ref.dq], ['dk', g.dk.data, dk], ['dv', g.dv.data, dv], ['dAdditionalKeys', g.dAdditionalKeys!.data, dak], ['dAdditionalValues', g.dAdditionalValues!.data, dav]] as const) {
        const e = relErr(got, want!);
        if (!(e < TOL)) throw new Error(`${n} relErr ${e}`);
      }
    });
  }
  f.done('additional KV backward');
});
