/**
 * The CPU engine: its scheduler (concurrent callers, settling only after every write, steady
 * memory, thread-count changes between jobs) and its tile kernels in every variant (relaxed SIMD,
 * plain SIMD, scalar), on the calling thread and on the pool, against the float64 reference.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TilewiseError,
  attention,
  attentionBackward,
  cpuInfo,
  cpuThreads,
  na1d,
  na2d,
  na3d,
  neighborhoodAttention,
  neighborhoodAttentionBackward,
  patterns,
  randn,
  referenceAttention,
  setCpuCallerFlops,
  setCpuKernels,
  setCpuThreads,
  setCpuWorkerUrl,
  type AttentionOptions,
  type KernelVariant,
  type NeighborhoodOptions,
  type Result,
  type Tensor,
} from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import * as pool from '../src/cpu/pool.js';
import { setInlineFlops } from '../src/cpu/pool.js';
import { kernelsOn, moduleOf } from '../src/cpu/tile-kernels.js';
import * as lanes from '../src/cpu/na-lanes.js';
import { referenceBackward } from '../src/reference-backward.js';
import { Failures, Rng, TEST_INLINE_FLOPS, compareResult, describe, gradMismatch, poisoned, randTensor, randomAttention, randomNA, snapshot, sameBytes } from './helpers.js';

// Node 20 validates relaxed SIMD only behind this V8 flag (newer engines by default); set before
// the first module is compiled, so both wasm variants can be tested here.
v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const bufs = (q: Tensor, k: Tensor, v: Tensor) => ({ q: q.data, k: k.data, v: v.data });

test('the default CPU path is WebAssembly SIMD (the property suites run through it)', async () => {
  const q = randn([1, 64, 2, 16], 1);
  await attention(q, q, q);
  assert.notEqual(cpuInfo().kernels, 'scalar');
  assert.ok(moduleOf('simd'), 'plain SIMD validates on Node 20');
});

test("the kernels' exp on 4 lanes: within 3e-7 + 9e-8 |x| of exp (relative) up to 88, 0 at or below -87, NaN kept, on both SIMD variants", () => {
  for (const variant of ['simd', 'relaxed-simd'] as KernelVariant[]) {
    const memory = new WebAssembly.Memory({ initial: 3, maximum: 3 });
    const K = kernelsOn(variant, memory) as unknown as { expTest: (src: number, dst: number, n: number) => void };
    const n = 8192;
    const f = new Float32Array(memory.buffer, 65536, 2 * n); // past the module's statics (the pool's BASE)
    const rng = new Rng(5);
    // the softmax range (x <= 0), the exact cut at -87, and vexp's positive side (softcap) to 88
    const xs = Float32Array.from({ length: n }, (_, i) => (i < n - 8 ? (i % 4 === 3 ? 88 * rng.next() : -87 * rng.next()) : [0, -87, -87.5, -1e30, -Infinity, NaN, 1e-8, -1e-8][i - (n - 8)]!));
    f.set(xs, 0);
    K.expTest(65536, 65536 + 4 * n, n);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const x = xs[i]!;
      const got = f[n + i]!;
      if (Number.isNaN(x)) assert.ok(Number.isNaN(got), `${variant}: exp(NaN) must stay NaN`);
      else if (x <= -87) assert.equal(got, 0, `${variant}: exp(${x})`);
      // x log2 e rounds to f32 first: a relative error of up to about |x| 8e-8 besides the polynomial's
      else worst = Math.max(worst, Math.abs(got / Math.exp(x) - 1) / (3e-7 + 9e-8 * Math.abs(x)));
    }
    assert.ok(worst < 1, `${variant}: worst error ${worst} of the bound 3e-7 + 9e-8 |x|`);
  }
});

test('concurrent calls equal sequential ones bit for bit and never change after resolving', async () => {
  const rng = new Rng(31);
  const calls: (() => Promise<Result>)[] = [];
  for (let i = 0; i < 20; i++) {
    const N = rng.int(200, 700);
    const H = rng.pick([2, 4]);
    const D = rng.pick([16, 32, 48]);
    const q = randTensor(rng, [1, N, H, D]);
    const k = randTensor(rng, [1, N, H, D]);
    const v = randTensor(rng, [1, N, H, D]);
    const g = rng.int(8, 24);
    const kind = i % 4;
    if (kind === 0) calls.push(() => attention(q, k, v));
    else if (kind === 1) calls.push(() => attention(q, k, v, { causal: true }));
    else if (kind === 2) calls.push(() => attention(q, k, v, { window: [64, 0], softcap: 20 }));
    else {
      const x = randTensor(rng, [1, g, g, H, D]);
      const impl = rng.pick(['fused', 'unfused', 'naive'] as const);
      calls.push(() => na2d(x, x, x, { kernelSize: 5, impl }));
    }
  }
  const sequential: Result[] = [];
  for (const c of calls) sequential.push(await c());
  const concurrent = await Promise.all(calls.map((c) => c()));
  const snaps = concurrent.map((r) => [snapshot(r.out.data), snapshot(r.lse.data)] as const);
  for (let i = 0; i < calls.length; i++) {
    assert.ok(sameBytes(concurrent[i]!.out.data, snapshot(sequential[i]!.out.data)), `call ${i}: out differs from the sequential run`);
    assert.ok(sameBytes(concurrent[i]!.lse.data, snapshot(sequential[i]!.lse.data)), `call ${i}: lse differs from the sequential run`);
  }
  // nothing may still be writing into resolved results
  await calls[0]!();
  await new Promise((r) => setTimeout(r, 50));
  for (let i = 0; i < calls.length; i++) {
    assert.ok(sameBytes(concurrent[i]!.out.data, snaps[i]![0]), `call ${i}: out changed after resolving`);
    assert.ok(sameBytes(concurrent[i]!.lse.data, snaps[i]![1]), `call ${i}: lse changed after resolving`);
  }
});

test('a thread-count change during a call settles that call, correctly; counts are checked and capped', async () => {
  const before = cpuThreads();
  try {
    const q = randn([1, 2048, 4, 32], 1);
    const k = randn([1, 2048, 4, 32], 2);
    const v = randn([1, 2048, 4, 32], 3);
    setCpuThreads(2);
    const running = attention(q, k, v, { causal: true });
    await new Promise((r) => setTimeout(r, 20)); // the call is on the pool's two workers now
    setCpuThreads(1);
    const next = attention(q, k, v, { causal: true }); // runs on the calling thread, after `running`
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error('call never settled')), 60000)));
    const [a, b] = await Promise.race([Promise.all([running, next]), timeout]).finally(() => clearTimeout(timer));
    const rows = [0, 1, 777, 2047];
    const ref = referenceAttention(planAttention(q, k, v, { causal: true }).problem, bufs(q, k, v), new Set(rows));
    const flat = rows.flatMap((r) => [0, 1, 2, 3].map((h) => r * 4 + h));
    for (const r of [a, b]) assert.equal(compareResult(r.out.data, r.lse.data, ref, 32, { rows: flat }), null);
    assert.ok(sameBytes(a.out.data, snapshot(b.out.data)), 'same result on 2 threads and on 1');
    setCpuThreads(64);
    assert.ok(cpuThreads() <= Math.max(1, (await import('node:os')).availableParallelism()), 'capped at the core count');
    assert.throws(() => setCpuThreads(0), TilewiseError);
    assert.throws(() => setCpuThreads(1.5), TilewiseError);
  } finally {
    setCpuThreads(before);
  }
});

test('memory holds steady over repeated calls (RSS within 25% from call 25 to call 150)', async () => {
  const q = randn([1, 8192, 4, 64], 1);
  const k = randn([1, 8192, 4, 64], 2);
  const v = randn([1, 8192, 4, 64], 3);
  let at25 = 0;
  for (let i = 1; i <= 150; i++) {
    await attention(q, k, v, { window: [32, 0] });
    gc();
    if (i === 25) at25 = process.memoryUsage.rss();
  }
  const at150 = process.memoryUsage.rss();
  assert.ok(at150 < at25 * 1.25, `RSS ${(at25 / 2 ** 20).toFixed(0)} MiB at call 25, ${(at150 / 2 ** 20).toFixed(0)} MiB at call 150`);
});

// ---------------------------------------------------------------------------------------------
// Every kernel variant, inline and on the pool, on random configurations.

type Case = { name: string; run: () => Promise<void> };

async function intoPoison(problemLen: { out: number; lse: number }, call: (d: { out: Float32Array; lse: Float32Array }) => Promise<Result>) {
  const out = poisoned(problemLen.out);
  const lse = poisoned(problemLen.lse);
  await call({ out, lse });
  return { out, lse };
}

function attentionCase(rng: Rng, i: number): Case {
  const { q, k, v, opts, name } = randomAttention(rng, 150);
  return {
    name: `attention #${i} ${name}`,
    run: async () => {
      const { problem } = planAttention(q, k, v, opts);
      const ref = referenceAttention(problem, bufs(q, k, v));
      const got = await intoPoison({ out: ref.out.length, lse: ref.lse.length }, (d) => attention(q, k, v, { ...opts, ...d }));
      const msg = compareResult(got.out, got.lse, ref, problem.dimV);
      if (msg) throw new Error(msg);
    },
  };
}

function naCase(rng: Rng, i: number): Case {
  const rank = rng.int(1, 3);
  const c = randomNA(rng, rank);
  const H = rng.pick([1, 2, 4]);
  const D = rng.int(1, 24);
  const shape = [rng.int(1, 2), ...c.grid, H, D];
  const q = randTensor(rng, shape);
  const k = randTensor(rng, shape);
  const v = randTensor(rng, shape);
  const impl = rng.pick(['fused', 'naive', 'unfused'] as const);
  const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal, impl };
  if (rng.bool(0.3) && impl !== 'naive') opts.softcap = 10;
  if (rng.bool(0.3) && c.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...c.kernel.map((x) => 2 * x - 1)]);
  return {
    name: `NA #${i} ${describe({ shape, ...opts, rpb: opts.rpb?.shape })}`,
    run: async () => {
      const { problem } = planNA(q, k, v, opts);
      const ref = referenceAttention(problem, bufs(q, k, v));
      const got = await intoPoison({ out: ref.out.length, lse: ref.lse.length }, (d) => neighborhoodAttention(q, k, v, { ...opts, ...d }));
      const msg = compareResult(got.out, got.lse, ref, D);
      if (msg) throw new Error(msg);
    },
  };
}

for (const variant of ['relaxed-simd', 'simd', 'scalar'] as KernelVariant[]) {
  for (const where of ['calling thread', 'pool'] as const) {
    test(`tile kernels '${variant}' on the ${where}: random configurations against float64`, async () => {
      assert.ok(variant === 'scalar' || moduleOf(variant), `${variant} must validate here`);
      setCpuKernels(variant);
      const threads = cpuThreads();
      if (where === 'pool') setInlineFlops(0);
      else setCpuThreads(1);
      try {
        const f = new Failures();
        const rng = new Rng(variant.length * 100 + (where === 'pool' ? 7 : 3));
        for (let i = 0; i < 24; i++) {
          const c = i % 2 === 0 ? attentionCase(rng, i) : naCase(rng, i);
          await f.run(c.name, c.run);
        }
        f.done(`${variant} on the ${where}`);
        assert.equal(cpuInfo().kernels, variant, 'the variant asked for is the one that ran');
      } finally {
        setCpuKernels(undefined);
        setInlineFlops(TEST_INLINE_FLOPS);
        setCpuThreads(threads);
      }
    });
  }
}

/** The fused forward on poisoned outputs against float64, asserting that the head-lane path ran; returns the planned problem. */
async function headLaneForward(q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions, dv: number): Promise<ReturnType<typeof planNA>['problem']> {
  const { problem } = planNA(q, k, v, opts);
  const ref = referenceAttention(problem, bufs(q, k, v));
  const before = lanes.headLaneJobs;
  const got = await intoPoison({ out: ref.out.length, lse: ref.lse.length }, (d) => neighborhoodAttention(q, k, v, { ...opts, ...d }));
  if (lanes.headLaneJobs !== before + 1) throw new Error('the head-lane path did not run');
  const msg = compareResult(got.out, got.lse, ref, dv);
  if (msg) throw new Error(msg);
  return problem;
}

for (const variant of ['relaxed-simd', 'simd', 'scalar'] as KernelVariant[]) {
  test(`head-lane neighborhoods '${variant}' (heads in fours): random 1-3-D windows against float64, on the pool and inline`, async () => {
    setCpuKernels(variant);
    const threads = cpuThreads();
    try {
      const f = new Failures();
      const rng = new Rng(41 + variant.length);
      for (let i = 0; i < 16; i++) {
        const pool = i % 2 === 0;
        setInlineFlops(pool ? 0 : TEST_INLINE_FLOPS);
        setCpuThreads(pool ? threads : 1);
        const c = randomNA(rng, rng.int(1, 3));
        const H = rng.pick([4, 8, 12]);
        const D = 4 * rng.int(1, 10);
        const DV = rng.bool(0.3) ? 4 * rng.int(1, 6) : D;
        const lead = [rng.int(1, 2), ...c.grid];
        const q = randTensor(rng, [...lead, H, D]);
        const k = randTensor(rng, [...lead, H, D]);
        const v = randTensor(rng, [...lead, H, DV]);
        const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal, ...(rng.bool(0.3) ? { softcap: 8 } : {}) };
        if (rng.bool(0.4) && c.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...c.kernel.map((x) => 2 * x - 1)]);
        await f.run(`#${i} ${describe({ shape: q.shape, dv: DV, ...opts, rpb: opts.rpb?.shape })}`, async () => void (await headLaneForward(q, k, v, opts, DV)));
      }
      f.done(`head lanes on ${variant}`);
      assert.equal(cpuInfo().kernels, variant);
    } finally {
      setCpuKernels(undefined);
      setInlineFlops(TEST_INLINE_FLOPS);
      setCpuThreads(threads);
    }
  });
}

test('head-lane query runs, forward and backward: long last axes, so key columns are held by 1, 2, 3 and 4 queries of a run, with runs cut at tile and grid edges', async () => {
  // the random suites' small grids mostly give every query of a run the same window; these axes are
  // several kernels long, with stride, dilation, causal and even kernels on the last axis, and tiles
  // whose last extent is not a multiple of 4
  const cases: { grid: number[]; opts: NeighborhoodOptions }[] = [
    { grid: [41], opts: { kernelSize: 5 } },
    { grid: [37], opts: { kernelSize: 6, stride: 2, tile: { q: 7 } } },
    { grid: [9, 30], opts: { kernelSize: [3, 7], dilation: [1, 2] } },
    { grid: [6, 29], opts: { kernelSize: [3, 5], isCausal: [false, true], tile: { q: [2, 6] } } },
    { grid: [4, 5, 23], opts: { kernelSize: [3, 3, 5], stride: [1, 1, 3] } },
    { grid: [3, 4, 26], opts: { kernelSize: [1, 3, 4], dilation: [1, 1, 3], softcap: 6 } },
  ];
  const rng = new Rng(77);
  const threads = cpuThreads();
  const f = new Failures();
  try {
    for (const [i, c] of cases.entries()) {
      for (const pool of [true, false]) {
        setInlineFlops(pool ? 0 : TEST_INLINE_FLOPS);
        setCpuThreads(pool ? threads : 1);
        const [H, D, DV] = [4, 8, i % 2 ? 12 : 8];
        const q = randTensor(rng, [1, ...c.grid, H, D]);
        const k = randTensor(rng, [1, ...c.grid, H, D]);
        const v = randTensor(rng, [1, ...c.grid, H, DV]);
        const opts: NeighborhoodOptions = { ...c.opts, ...(i === 2 ? { rpb: randTensor(rng, [H, 5, 13]) } : {}) };
        await f.run(`${describe({ grid: c.grid, dv: DV, pool, ...opts, rpb: opts.rpb?.shape })}`, async () => {
          const problem = await headLaneForward(q, k, v, opts, DV);
          const before = lanes.headLaneJobs;
          // the backward runs the same runs
          const fw = await neighborhoodAttention(q, k, v, opts);
          const dOut = randTensor(rng, fw.out.shape);
          const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
          if (lanes.headLaneJobs !== before + 2) throw new Error('the head-lane backward did not run');
          const gm = gradMismatch({ dq: g.dq.data, dk: g.dk.data, dv: g.dv.data, drpb: g.drpb?.data }, referenceBackward(problem, bufs(q, k, v), dOut.data), false, 1e-4);
          if (gm) throw new Error(`backward: ${gm}`);
        });
      }
    }
    f.done('head-lane query runs');
  } finally {
    setInlineFlops(TEST_INLINE_FLOPS);
    setCpuThreads(threads);
  }
});

test('head lanes: GQA, head counts or head dims not in fours keep the query-lane tile step; rpb takes head lanes', async () => {
  const x = randn([1, 8, 8, 4, 8], 1);
  const g = randn([1, 8, 8, 2, 8], 2);
  const y = randn([1, 8, 8, 6, 8], 3);
  const z = randn([1, 8, 8, 4, 6], 4);
  const before = lanes.headLaneJobs;
  await na2d(x, g, g, { kernelSize: 3 });
  await na2d(y, y, y, { kernelSize: 3 });
  await na2d(z, z, z, { kernelSize: 3 });
  assert.equal(lanes.headLaneJobs, before);
  await na2d(x, x, x, { kernelSize: 3 });
  await na2d(x, x, x, { kernelSize: 3, rpb: randn([4, 5, 5], 4) });
  assert.equal(lanes.headLaneJobs, before + 2);
});

test('larger problems on every variant: dense, causal and N-D neighborhoods on the pool', async () => {
  const rng = new Rng(5);
  for (const variant of ['relaxed-simd', 'simd', 'scalar'] as KernelVariant[]) {
    setCpuKernels(variant);
    try {
      const x = randTensor(rng, [1, 20, 24, 2, 32]);
      const y = randTensor(rng, [1, 6, 7, 8, 2, 24]);
      const s = randTensor(rng, [1, 700, 2, 64]);
      const cases: [string, () => Promise<Result>, () => ReturnType<typeof planNA>['problem']][] = [
        ['dense', () => attention(s, s, s), () => planAttention(s, s, s, {}).problem],
        ['causal', () => attention(s, s, s, { causal: true }), () => planAttention(s, s, s, { causal: true }).problem],
        ['na1d', () => na1d(s, s, s, { kernelSize: 33, dilation: 3 }), () => planNA(s, s, s, { kernelSize: 33, dilation: 3 }).problem],
        ['na2d', () => na2d(x, x, x, { kernelSize: [7, 5] }), () => planNA(x, x, x, { kernelSize: [7, 5] }).problem],
        ['na3d', () => na3d(y, y, y, { kernelSize: 3, isCausal: [true, false, false] }), () => planNA(y, y, y, { kernelSize: 3, isCausal: [true, false, false] }).problem],
      ];
      for (const [name, run, plan] of cases) {
        const problem = plan();
        const t = name.startsWith('na2d') ? x : name === 'na3d' ? y : s;
        const ref = referenceAttention(problem, bufs(t, t, t));
        const r = await run();
        assert.equal(compareResult(r.out.data, r.lse.data, ref, problem.dimV), null, `${variant} ${name}`);
      }
    } finally {
      setCpuKernels(undefined);
    }
  }
});

test('packed K and V copies and equally spaced rows: GQA, several heads per thread, varlen, dilated groups, RoPE, forward and backward, pool and inline, every variant', async () => {
  // each sequence has at least 4 query tiles, so the fused kernels copy key rows per thread
  // (layout.ts packedRows); a thread's copies hold one KV head at a time, per token
  const rng = new Rng(314);
  const H = 4;
  const Hk = 2;
  const D = 12;
  const N = 300;
  const q = randTensor(rng, [1, N, H, D]);
  const k = randTensor(rng, [1, N, Hk, D]);
  const v = randTensor(rng, [1, N, Hk, 10]);
  const na = (kernel: number) => ({ kind: 'neighborhood' as const, kernelSize: [kernel], dilation: [3], stride: [1], isCausal: [false] });
  const cases: [string, AttentionOptions][] = [
    ['dense', {}],
    ['causal, small tiles', { causal: true, tile: { q: 16, kv: 16 } }],
    ['varlen', { cuSeqlensQ: new Int32Array([0, 130, 300]), cuSeqlensK: new Int32Array([0, 130, 300]), tile: { q: 16, kv: 32 } }],
    // an and of two neighborhoods is no interval rule: full visits in each dilation group, keys 3 tokens apart
    ['dilated groups', { pattern: patterns.and(na(61), na(45)), tile: { q: 8, kv: 8 } }],
    ['RoPE', { rope: { base: 1000 }, window: [40, 40], tile: { q: 32, kv: 32 } }],
  ];
  const threads = cpuThreads();
  const f = new Failures();
  try {
    for (const variant of ['relaxed-simd', 'simd', 'scalar'] as KernelVariant[]) {
      setCpuKernels(variant);
      for (const pool of variant === 'relaxed-simd' ? [true, false] : [true]) {
        setInlineFlops(pool ? 0 : 1e12);
        setCpuThreads(pool ? threads : 1);
        for (const [name, opts] of cases) {
          await f.run(`${variant} ${pool ? 'pool' : 'inline'} ${name}`, async () => {
            const problem = planAttention(q, k, v, opts).problem;
            const r = await attention(q, k, v, opts);
            const bad = compareResult(r.out.data, r.lse.data, referenceAttention(problem, bufs(q, k, v)), problem.dimV);
            if (bad) throw new Error(`forward: ${bad}`);
            if (variant !== 'relaxed-simd') return;
            const dOut = randTensor(rng, r.out.shape);
            const g = await attentionBackward(q, k, v, r.out, r.lse, dOut, opts);
            const gm = gradMismatch({ dq: g.dq.data, dk: g.dk.data, dv: g.dv.data }, referenceBackward(problem, bufs(q, k, v), dOut.data), false, 1e-4);
            if (gm) throw new Error(`backward: ${gm}`);
          });
        }
      }
    }
    f.done('packed copies');
  } finally {
    setCpuKernels(undefined);
    setInlineFlops(TEST_INLINE_FLOPS);
    setCpuThreads(threads);
  }
});

test('a call refused after the pool started leaves nothing that keeps the process alive', async () => {
  // run in a child: a worker whose port stayed referenced would hang it (it did once)
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'tilewise-exit-'));
  const file = join(dir, 'exit.mjs');
  writeFileSync(
    file,
    `import { attention, randn } from ${JSON.stringify(new URL('../src/index.js', import.meta.url).href)};
     const big = { data: new Float32Array(2 ** 28), shape: [1, 2 ** 22, 1, 64] };
     // the call starts the pool, then is refused before any phase runs; nothing else may follow,
     // since any later call would resize or use the pool and so unreference it again
     await attention(big, big, big, { window: [4, 0] }).catch((e) => console.log('refused', e.arg));
     console.log('done', typeof randn);`,
  );
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 30000, env });
  rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, `child did not exit by itself (signal ${r.signal}) ${r.stderr.slice(0, 300)}`);
  assert.match(r.stdout, /refused problem[\s\S]*done/);
});

test('a job posted to the workers before its inputs are copied (gated, in stages): a failed copy releases them, workers alone or beside the calling thread, the call rejects, the next call is right', async (t) => {
  if (cpuThreads() < 2) return t.skip('one thread: no pool');
  const { runJob, poolStats } = await import('../src/cpu/pool.js');
  const { cpuFusedTiles } = await import('../src/cpu/layout.js');
  const [q, k, v] = [1, 2, 3].map((s) => randn([1, 32, 32, 4, 8], s));
  const opts = { kernelSize: 5 };
  const { problem } = planNA(q!, k!, v!, opts);
  await neighborhoodAttention(q!, k!, v!, opts); // the pool started
  const before = poolStats();
  const inputs = {
    q: q!.data,
    k: k!.data,
    get v(): Float32Array {
      throw new Error('copy failed');
    },
  };
  setInlineFlops(0);
  try {
    // workers alone, and the calling thread beside them (then one of the threads at the barriers);
    // v fails after the gate's first stages let the 'lanes' phase start on q and k
    for (const beside of [0, Infinity]) {
      setCpuCallerFlops(beside);
      const job = runJob({ problem: cpuFusedTiles(problem), phases: ['lanes', 'naLanes'], inputs, outputs: ['out', 'lse'], flops: 1e8, screen: true, screenInPhase: true });
      const timer = new Promise((_, reject) => setTimeout(() => reject(new Error(`the gated job hung (beside ${beside})`)), 10000).unref());
      await assert.rejects(Promise.race([job, timer]), /copy failed/);
    }
  } finally {
    setInlineFlops(TEST_INLINE_FLOPS);
    setCpuCallerFlops();
  }
  const ref = referenceAttention(problem, bufs(q!, k!, v!));
  const got = await neighborhoodAttention(q!, k!, v!, opts);
  assert.equal(compareResult(got.out.data, got.lse.data, ref, 8), null);
  assert.equal(poolStats().spawned, before.spawned, 'the workers answered: none was replaced');
});

test('the calling thread beside the workers (blocking, or awaiting the barriers as a page does): the same bits as the workers alone, forward and backward, and it ran', async (t) => {
  if (cpuThreads() < 2) return t.skip('one thread: no pool');
  const rng = new Rng(77);
  const x = randTensor(rng, [1, 24, 20, 4, 16]); // 2-D, heads in fours: head lanes
  const y = randTensor(rng, [1, 32, 24, 3, 16]); // 2-D, 3 heads: the query-lane tile step
  const s = randTensor(rng, [1, 300, 2, 32]);
  const d2 = randTensor(rng, [1, 24, 20, 4, 16]);
  const ds = randTensor(rng, [1, 300, 2, 32]);
  const runAll = async () => {
    const out: Float32Array[] = [];
    const a = await na2d(x, x, x, { kernelSize: 5, dilation: 2 });
    const b = await na2d(y, y, y, { kernelSize: [5, 7], isCausal: [true, false] });
    const c = await attention(s, s, s, { causal: true });
    const e = await attention(s, s, s, { window: [40, 8], softcap: 15 });
    out.push(a.out.data, a.lse.data, b.out.data, b.lse.data, c.out.data, c.lse.data, e.out.data, e.lse.data);
    const ga = await neighborhoodAttentionBackward(x, x, x, a.out, a.lse, d2, { kernelSize: 5, dilation: 2 });
    const gc = await attentionBackward(s, s, s, c.out, c.lse, ds, { causal: true });
    out.push(ga.dq.data, ga.dk.data, ga.dv.data, gc.dq.data, gc.dk.data, gc.dv.data);
    return out;
  };
  try {
    setCpuCallerFlops(0);
    const before = pool.callerJobs;
    const alone = await runAll();
    assert.equal(pool.callerJobs, before, 'off: the calling thread only copies and waits');
    assert.equal(cpuInfo().caller, false);
    setCpuCallerFlops(Infinity);
    assert.equal(cpuInfo().caller, true, 'Node: the calling thread may wait');
    const beside = await runAll();
    assert.equal(pool.callerJobs, before + 6, 'on: every call ran the calling thread beside the workers');
    alone.forEach((a, i) => assert.ok(sameBytes(beside[i]!, snapshot(a)), `result ${i} differs`));
    // as a page's main thread: its share in one go, the barriers and the last writes awaited; and
    // with no time to claim (a slow device): the workers take every item it leaves
    try {
      for (const budget of [Infinity, 0]) {
        pool.setCallerAwaits(true, budget);
        const awaited = await runAll();
        alone.forEach((a, i) => assert.ok(sameBytes(awaited[i]!, snapshot(a)), `result ${i} differs (awaiting the barriers, budget ${budget} ms)`));
      }
      assert.equal(pool.callerJobs, before + 18);
    } finally {
      pool.setCallerAwaits(false);
    }
    assert.throws(() => setCpuCallerFlops(-1), TilewiseError);
  } finally {
    setCpuCallerFlops();
  }
});

test("a staged job: the 'lanes' phase starts on q while k and v are copied, and waits for each chunk of each (a slow copy of q, k or v, or of every chunk), workers alone and beside", async (t) => {
  if (cpuThreads() < 2) return t.skip('one thread: no pool');
  const { runJob } = await import('../src/cpu/pool.js');
  const { cpuFusedTiles } = await import('../src/cpu/layout.js');
  const rng = new Rng(19);
  const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, 40, 36, 4, 8]));
  const opts = { kernelSize: 5 };
  const { problem } = planNA(q!, k!, v!, opts);
  await neighborhoodAttention(q!, k!, v!, opts); // the pool started
  // reading one input takes 30 ms: the workers, already past the gate's first stages, wait for it
  const slow = (x: Float32Array, ms: number): Float32Array => {
    const until = performance.now() + ms;
    while (performance.now() < until);
    return x;
  };
  const ref = referenceAttention(problem, bufs(q!, k!, v!));
  for (const [which, beside] of [['q', 0], ['k', 0], ['v', 0], ['v', Infinity]] as const) {
    setInlineFlops(0);
    setCpuCallerFlops(beside);
    const ms = (s: string) => (s === which ? 30 : 0);
    try {
      const got = await runJob({
        problem: cpuFusedTiles(problem),
        phases: ['lanes', 'naLanes'],
        inputs: { get q() { return slow(q!.data, ms('q')); }, get k() { return slow(k!.data, ms('k')); }, get v() { return slow(v!.data, ms('v')); } },
        outputs: ['out', 'lse'],
        flops: 1e8,
        screen: true,
        screenInPhase: true,
        phasesFill: ['out', 'lse'],
      });
      assert.equal(compareResult(got.out!, got.lse!, ref, 8), null, `slow ${which}, beside ${beside}`);
    } finally {
      setInlineFlops(TEST_INLINE_FLOPS);
      setCpuCallerFlops();
    }
  }
  // each tensor is copied in chunks (control.ts STAGE_CHUNKS), the gate raised after each: every
  // chunk's read is slow here, so the workers regroup a chunk only once it is in (a stage raised
  // early would let them read the previous job's bytes, left in the memory by a call on other data)
  class SlowChunks extends Float32Array {
    override subarray(begin?: number, end?: number): Float32Array<ArrayBuffer> {
      const until = performance.now() + 4;
      while (performance.now() < until);
      return new Float32Array(this.buffer, this.byteOffset + 4 * (begin ?? 0), (end ?? this.length) - (begin ?? 0));
    }
  }
  const slowOf = (x: Tensor) => {
    const a = new SlowChunks(x.data.length);
    a.set(x.data);
    return a;
  };
  for (const beside of [0, Infinity]) {
    await neighborhoodAttention(randTensor(rng, [1, 40, 36, 4, 8]), randTensor(rng, [1, 40, 36, 4, 8]), randTensor(rng, [1, 40, 36, 4, 8]), opts);
    setInlineFlops(0);
    setCpuCallerFlops(beside);
    try {
      const got = await runJob({
        problem: cpuFusedTiles(problem),
        phases: ['lanes', 'naLanes'],
        inputs: { q: slowOf(q!), k: slowOf(k!), v: slowOf(v!) },
        outputs: ['out', 'lse'],
        flops: 1e8,
        screen: true,
        screenInPhase: true,
        phasesFill: ['out', 'lse'],
      });
      assert.equal(compareResult(got.out!, got.lse!, ref, 8), null, `slow chunks, beside ${beside}`);
    } finally {
      setInlineFlops(TEST_INLINE_FLOPS);
      setCpuCallerFlops();
    }
  }
});

test('a small call on the calling thread leaves the worker pool running (no restart between large calls)', async () => {
  const { poolStats } = await import('../src/cpu/pool.js');
  const big = randn([1, 600, 2, 32], 1);
  const small = randn([1, 8, 1, 4], 2);
  await attention(big, big, big);
  const before = poolStats();
  assert.ok(before.workers >= (cpuThreads() > 1 ? 2 : 0));
  for (let i = 0; i < 3; i++) {
    await attention(small, small, small); // inline
    await attention(big, big, big); // pooled
  }
  assert.equal(poolStats().spawned, before.spawned, 'no worker was started again');
});

test('chained phases: a barrier between them on every thread, and a failing thread stops the others at the next barrier (no hang)', async () => {
  const { Worker } = await import('node:worker_threads');
  const url = new URL('../src/cpu/kernels.js', import.meta.url).href;
  // each thread runs 3 chained phases with no items; thread 1 is slow in phase 0 (50 ms), and
  // failAt makes one thread throw in one phase. Word 20 counts finished phase-0 runs; every phase-1
  // start records what it saw there (must be 2: both threads past phase 0).
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.url).then(({ runChain }) => {
      const { memory, thread, failAt } = workerData;
      const w = new Int32Array(memory.buffer);
      const ran = [];
      const msg = { id: 1, kind: 'fused', chain: ['fused', 'fused'], problem: null, layout: { counter: 0, threads: 2 } };
      try {
        runChain(memory, msg, () => {
          const p = ran.length;
          ran.push(p === 1 ? Atomics.load(w, 20) : -1);
          if (p === 0 && thread === 1) Atomics.wait(w, 30, 0, 50);
          if (failAt && failAt[0] === thread && failAt[1] === p) throw new Error('boom');
          if (p === 0) Atomics.add(w, 20, 1);
          return { ctx: null, space: { total: 0 } };
        });
        parentPort.postMessage({ ran, error: null });
      } catch (e) {
        parentPort.postMessage({ ran, error: e.message });
      }
    });`;
  const run = async (failAt?: [number, number]) => {
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const answers = await Promise.all(
      [0, 1].map(
        (thread) =>
          new Promise<{ ran: number[]; error: string | null }>((resolve, reject) => {
            const w = new Worker(code, { eval: true, workerData: { url, memory, thread, failAt } });
            const timer = setTimeout(() => (void w.terminate(), reject(new Error(`thread ${thread} hung`))), 5000);
            w.once('message', (m) => (clearTimeout(timer), void w.terminate(), resolve(m)));
            w.once('error', (e) => (clearTimeout(timer), reject(e)));
          }),
      ),
    );
    return answers;
  };
  const ok = await run();
  for (const a of ok) {
    assert.equal(a.error, null);
    assert.deepEqual(a.ran, [-1, 2, -1], 'three phases, and phase 1 started after both threads finished phase 0');
  }
  const failed = await run([1, 0]);
  assert.equal(failed[1]!.error, 'boom');
  assert.deepEqual(failed[1]!.ran, [-1], 'the failing thread stops');
  assert.equal(failed[0]!.error, null);
  assert.deepEqual(failed[0]!.ran, [-1], 'the other thread stops at the barrier after the failure');
  // the calling thread's patience: a thread that never arrives fails the message, no hang
  const { runChain } = await import('../src/cpu/kernels.js');
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const msg = { id: 1, kind: 'fused', chain: ['fused'], problem: null, layout: { counter: 0, threads: 2 } } as unknown as Parameters<typeof runChain>[1];
  const started = performance.now();
  assert.throws(() => runChain(memory, msg, () => ({ ctx: null, space: { total: 0 } }) as never, 100), /did not reach barrier 0/);
  assert.ok(performance.now() - started < 2000, 'gave up after about its patience');
  assert.equal(new Int32Array(memory.buffer)[8], 1, 'FAILED set for the others');
});

for (const variant of ['relaxed-simd', 'simd', 'scalar'] as KernelVariant[]) {
  test(`head-lane backward '${variant}' (neighborhoods with heads in fours, rpb too): random 1-3-D windows against the float64 reference, on the pool and inline`, async () => {
    setCpuKernels(variant);
    const threads = cpuThreads();
    try {
      const f = new Failures();
      const rng = new Rng(71 + variant.length);
      for (let i = 0; i < 12; i++) {
        const pool = i % 2 === 0;
        setInlineFlops(pool ? 0 : 1e12);
        setCpuThreads(pool ? threads : 1);
        const c = randomNA(rng, rng.int(1, 3));
        const H = rng.pick([4, 8]);
        const D = 4 * rng.int(1, 6);
        const DV = rng.bool(0.3) ? 4 * rng.int(1, 4) : D;
        const lead = [rng.int(1, 2), ...c.grid];
        const q = randTensor(rng, [...lead, H, D]);
        const k = randTensor(rng, [...lead, H, D]);
        const v = randTensor(rng, [...lead, H, DV]);
        const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal, ...(rng.bool(0.3) ? { softcap: 6 } : {}) };
        if (rng.bool(0.4) && c.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...c.kernel.map((x) => 2 * x - 1)]);
        await f.run(`#${i} ${describe({ shape: q.shape, dv: DV, ...opts, rpb: opts.rpb?.shape })}`, async () => {
          const fw = await neighborhoodAttention(q, k, v, opts);
          const dOut = randTensor(rng, fw.out.shape);
          const before = lanes.headLaneJobs;
          const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
          if (lanes.headLaneJobs !== before + 1) throw new Error('the head-lane backward did not run');
          const ref = referenceBackward(planNA(q, k, v, opts).problem, bufs(q, k, v), dOut.data);
          if (opts.rpb && !g.drpb) throw new Error('drpb missing');
          const msg = gradMismatch({ dq: g.dq.data, dk: g.dk.data, dv: g.dv.data, drpb: g.drpb?.data }, ref, false, 1e-4);
          if (msg) throw new Error(msg);
          // deterministic: the same call again gives the same bits (dK, dV, drpb are sums over threads' partials)
          const again = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
          for (const n of ['dq', 'dk', 'dv', 'drpb'] as const) if (g[n] && !sameBytes(again[n]!.data, snapshot(g[n].data))) throw new Error(`${n} differs on a repeat`);
        });
      }
      f.done(`head-lane backward on ${variant}`);
      assert.equal(cpuInfo().kernels, variant);
    } finally {
      setCpuKernels(undefined);
      setInlineFlops(TEST_INLINE_FLOPS);
      setCpuThreads(threads);
    }
  });
}

test('setCpuWorkerUrl: a URL or a string; anything else is a TilewiseError naming it', () => {
  for (const bad of [5, {}, null]) assert.throws(() => setCpuWorkerUrl(bad as unknown as string), (e: unknown) => e instanceof TilewiseError && e.arg === 'url');
  setCpuWorkerUrl(); // back to the package's own worker.js
  assert.equal(cpuInfo().workersFailed, undefined);
});
