/**
 * The non-finite policy (PyTorch SDPA's), the same on both backends: a NaN or an infinity in q, k,
 * v (or a NaN / +inf bias entry) makes NaN exactly the output rows, and their lse, that read it;
 * every other row is exact (float64 reference on the inputs with those values zeroed), including
 * tile-mates of a masked key that holds a NaN. Never an empty-looking row.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { attention, compilePattern, neighborhoodAttention, referenceAttention, type AttentionOptions, type NeighborhoodOptions, type Result, type Tensor } from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import type { AttnProblem } from '../src/problem.js';
import { webgpuAvailable } from '../src/webgpu/device.js';
import * as lanes from '../src/cpu/na-lanes.js';
import { setCpuKernels, setInlineFlops } from '../src/cpu/pool.js';
import { variantAvailable } from '../src/cpu/tile-kernels.js';
import { Failures, Rng, TEST_INLINE_FLOPS, compareResult, randTensor } from './helpers.js';

const gpu = (await webgpuAvailable()) === true;
const BACKENDS: ('cpu' | 'webgpu')[] = ['cpu', ...(gpu ? (['webgpu'] as const) : [])];

interface Injected {
  q: [number, number][]; // (token row, head)
  kv: [number, number][]; // (token row, kv head)
}

/** Puts a non-finite value (NaN, +inf or -inf) somewhere in `n` random rows of a tensor [.., heads, width]. */
function inject(rng: Rng, t: Tensor, n: number, heads: number): { t: Tensor; rows: [number, number][] } {
  const width = t.shape[t.shape.length - 1]!;
  const data = t.data.slice();
  const rows: [number, number][] = [];
  for (let i = 0; i < n; i++) {
    const r = rng.int(0, data.length / (heads * width) - 1);
    const h = rng.int(0, heads - 1);
    data[(r * heads + h) * width + rng.int(0, width - 1)] = rng.pick([NaN, Infinity, -Infinity]);
    rows.push([r, h]);
  }
  return { t: { data, shape: t.shape }, rows };
}

/** The rows the policy poisons, from the pattern's own predicate (batch rows are b * n + token). */
function expected(problem: AttnProblem, inj: Injected): Set<number> {
  const H = problem.heads;
  const group = H / problem.kvHeads;
  const bad = new Set<number>(inj.q.map(([r, h]) => r * H + h));
  for (const span of problem.seqs) {
    const p = compilePattern(problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: H });
    const nq = span.qGrid.reduce((a, b) => a * b, 1);
    const nk = span.kGrid.reduce((a, b) => a * b, 1);
    for (const [kr, kh] of inj.kv) {
      const kt = kr - span.kOff;
      if (kt < 0 || kt >= nk) continue;
      for (let h = kh * group; h < (kh + 1) * group; h++) for (let qt = 0; qt < nq; qt++) if (p.allows(span.b, h, qt, kt)) bad.add((span.qOff + qt) * H + h);
    }
  }
  return bad;
}

const zeroed = (t: Tensor): Float32Array => t.data.map((x) => (Number.isFinite(x) ? x : 0));

function check(problem: AttnProblem, r: Result, bad: Set<number>, q: Tensor, k: Tensor, v: Tensor): string | null {
  const H = problem.heads;
  const DV = problem.dimV;
  const ref = referenceAttention(problem, { q: zeroed(q), k: zeroed(k), v: zeroed(v) });
  const rows: number[] = [];
  for (let x = 0; x < problem.qRows * H; x++) {
    const isNaN = Number.isNaN(r.lse.data[x]!);
    const outNaN = r.out.data.subarray(x * DV, (x + 1) * DV).every((y) => Number.isNaN(y));
    if (bad.has(x)) {
      if (!isNaN || !outNaN) return `row ${x} read a non-finite input but is not NaN (lse ${r.lse.data[x]})`;
    } else {
      if (isNaN || r.out.data.subarray(x * DV, (x + 1) * DV).some((y) => Number.isNaN(y))) return `row ${x} read nothing non-finite but has NaN`;
      rows.push(x);
    }
  }
  return rows.length ? compareResult(r.out.data, r.lse.data, ref, DV, { rows }) : null;
}

for (const backend of BACKENDS) {
  test(`non-finite policy on ${backend}: exactly the rows that read a NaN or infinity are NaN, the rest exact`, async () => {
    const f = new Failures();
    const rng = new Rng(backend === 'cpu' ? 1 : 2);
    for (let i = 0; i < 16; i++) {
      const H = rng.pick([2, 4]);
      const Hk = rng.pick([1, H]);
      const n = rng.int(20, 90);
      const na = i % 2 === 1;
      const grid = na ? [rng.int(5, 9), rng.int(5, 9)] : [n];
      let q = randTensor(rng, [1, ...grid, H, 8]);
      let k = randTensor(rng, [1, ...grid, Hk, 8]);
      let v = randTensor(rng, [1, ...grid, Hk, 8]);
      const iq = inject(rng, q, rng.int(0, 2), H);
      const ik = inject(rng, k, rng.int(0, 2), Hk);
      const iv = inject(rng, v, rng.int(0, 2), Hk);
      [q, k, v] = [iq.t, ik.t, iv.t];
      const inj: Injected = { q: iq.rows, kv: [...ik.rows, ...iv.rows] };
      await f.run(`#${i} ${na ? 'na2d' : 'attention'} ${grid.join('x')} H${H}/${Hk}`, async () => {
        if (na) {
          const opts: NeighborhoodOptions = { kernelSize: 3, impl: rng.pick(['fused', 'naive', 'unfused'] as const), backend };
          const { problem } = planNA(q, k, v, opts);
          const msg = check(problem, await neighborhoodAttention(q, k, v, opts), expected(problem, inj), q, k, v);
          if (msg) throw new Error(`${opts.impl}: ${msg}`);
        } else {
          const opts: AttentionOptions = rng.pick([{ causal: true }, { window: [4, 2] }, {}] as AttentionOptions[]);
          const { problem } = planAttention(q, k, v, opts);
          const msg = check(problem, await attention(q, k, v, { ...opts, backend }), expected(problem, inj), q, k, v);
          if (msg) throw new Error(`${JSON.stringify(opts)}: ${msg}`);
        }
      });
    }
    f.done(`non-finite policy (${backend})`);
  });
}

test('non-finite policy on the CPU head-lane neighborhood path, whose first phase screens q, k, v (on the pool and inline, every kernel variant)', async () => {
  const f = new Failures();
  const rng = new Rng(17);
  // the variants this engine validates (Node 20: relaxed SIMD only behind a flag, set by cpu-engine.test)
  const variants = (['relaxed-simd', 'simd', 'scalar'] as const).filter(variantAvailable);
  try {
    for (let i = 0; i < 24; i++) {
      setInlineFlops(i % 2 === 0 ? 0 : 1e12);
      // k and v are screened as they are regrouped (lanesFromRows), in each variant's own code
      setCpuKernels(variants[Math.floor(i / 2) % variants.length]);
      const H = rng.pick([4, 8]);
      const grid = rng.bool(0.5) ? [rng.int(5, 9), rng.int(5, 9)] : [rng.int(4, 6), rng.int(4, 6), rng.int(4, 6)];
      const inj1 = inject(rng, randTensor(rng, [1, ...grid, H, 8]), rng.int(1, 3), H);
      const inj2 = inject(rng, randTensor(rng, [1, ...grid, H, 8]), rng.int(1, 3), H);
      const inj3 = inject(rng, randTensor(rng, [1, ...grid, H, 8]), rng.int(1, 3), H);
      const [q, k, v] = [inj1.t, inj2.t, inj3.t];
      const inj: Injected = { q: inj1.rows, kv: [...inj2.rows, ...inj3.rows] };
      await f.run(`#${i} na${grid.length}d ${grid.join('x')} H${H} ${variants[Math.floor(i / 2) % variants.length]}`, async () => {
        const opts: NeighborhoodOptions = { kernelSize: 3 };
        const { problem } = planNA(q, k, v, opts);
        const before = lanes.headLaneJobs;
        const r = await neighborhoodAttention(q, k, v, opts);
        if (lanes.headLaneJobs !== before + 1) throw new Error('not the head-lane path');
        const msg = check(problem, r, expected(problem, inj), q, k, v);
        if (msg) throw new Error(msg);
      });
    }
  } finally {
    setInlineFlops(TEST_INLINE_FLOPS);
    setCpuKernels(undefined);
  }
  f.done('non-finite policy (CPU head lanes)');
});

test('a NaN or +inf bias entry poisons its own row when the pair is allowed; -inf stays a mask (both backends alike)', async () => {
  const rng = new Rng(7);
  const q = randTensor(rng, [1, 16, 2, 8]);
  const k = randTensor(rng, [1, 16, 2, 8]);
  const v = randTensor(rng, [1, 16, 2, 8]);
  const bias = randTensor(rng, [2, 16, 16]);
  bias.data[(0 * 16 + 3) * 16 + 2] = NaN; // head 0, query 3, key 2: allowed under causal
  bias.data[(1 * 16 + 4) * 16 + 9] = Infinity; // head 1, query 4, key 9: masked under causal, so no effect
  bias.data[(1 * 16 + 6) * 16 + 1] = -Infinity; // a mask
  const results: Float32Array[] = [];
  for (const backend of BACKENDS) {
    const r = await attention(q, k, v, { causal: true, bias, backend });
    const nanRows = Array.from(r.lse.data.keys()).filter((x) => Number.isNaN(r.lse.data[x]!));
    assert.deepEqual(nanRows, [3 * 2 + 0], `${backend}: only query 3 of head 0 is NaN`);
    results.push(r.lse.data);
  }
  if (results.length === 2) for (let x = 0; x < results[0]!.length; x++) if (!Number.isNaN(results[0]![x]!)) assert.ok(Math.abs(results[0]![x]! - results[1]![x]!) < 1e-4);
});

test('checkFinite also covers LongHeadsCache.append/decode and GPU tensors', async () => {
  const { LongHeadsCache, TilewiseError, randn, webgpu } = await import('../src/index.js');
  const bad = (shape: number[]) => {
    const t = randn(shape, 5);
    t.data[3] = NaN;
    return t;
  };
  const cache = new LongHeadsCache(2, 1, 8, { chunkSize: 16, budget: 32, checkFinite: true });
  await assert.rejects(cache.append(bad([20, 2, 8]), randn([20, 1, 8], 1), randn([20, 1, 8], 2)), (e: unknown) => e instanceof TilewiseError && e.arg === 'q');
  await assert.rejects(cache.append(randn([20, 2, 8], 3), randn([20, 1, 8], 1), bad([20, 1, 8])), (e: unknown) => e instanceof TilewiseError && e.arg === 'v');
  await cache.append(randn([20, 2, 8], 3), randn([20, 1, 8], 1), randn([20, 1, 8], 2));
  cache.dispose();
  if (!gpu) return;
  const q = bad([1, 8, 2, 8]);
  const k = randn([1, 8, 2, 8], 6);
  const [gq, gk, gv] = await Promise.all([q, k, k].map((t) => webgpu.toGpu(t.data, t.shape)));
  await assert.rejects(attention(gq!, gk!, gv!, { checkFinite: true }), (e: unknown) => e instanceof TilewiseError && e.arg === 'q');
  for (const t of [gq!, gk!, gv!]) webgpu.releaseTensor(t);
});

test('a NaN or +inf rpb entry makes NaN exactly the rows that read it: CPU, WebGPU (fused, naive, unfused) host and GPU tensors alike (fails on the old WebGPU path)', async () => {
  const rng = new Rng(44);
  const f = new Failures();
  for (let i = 0; i < 6; i++) {
    const H = rng.pick([1, 2]);
    const K = rng.pick([3, 5]);
    const grid = [rng.int(K, 9), rng.int(K, 9)];
    const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, ...grid, H, 8])) as [Tensor, Tensor, Tensor];
    const rpb = randTensor(rng, [H, 2 * K - 1, 2 * K - 1]);
    for (let j = rng.int(1, 2); j > 0; j--) rpb.data[rng.int(0, rpb.data.length - 1)] = rng.pick([NaN, Infinity]);
    const opts: NeighborhoodOptions = { kernelSize: K, rpb, dilation: rng.pick([1, 2]) > 1 && grid.every((g) => g >= 2 * K) ? 2 : 1 };
    const { problem } = planNA(q, k, v, opts);
    // the float64 reference carries the entry through its softmax: its NaN rows are the expected ones
    const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
    const bad = new Set<number>();
    ref.lse.forEach((x, r) => (Number.isNaN(x) ? bad.add(r) : undefined));
    const runs: [string, () => Promise<Result>][] = BACKENDS.map((b) => [b, () => neighborhoodAttention(q, k, v, { ...opts, backend: b })]);
    if (gpu) for (const impl of ['naive', 'unfused'] as const) runs.push([`webgpu ${impl}`, () => neighborhoodAttention(q, k, v, { ...opts, impl, backend: 'webgpu' })]);
    if (gpu)
      runs.push([
        'webgpu, GPU tensors',
        async () => {
          const w = await import('../src/webgpu/index.js');
          const up = async (t: Tensor) => ({ ...(await w.toGpu(t.data, t.shape)), shape: [...t.shape] });
          const ins = [await up(q), await up(k), await up(v)];
          const r = (await neighborhoodAttention(ins[0] as unknown as Tensor, ins[1] as unknown as Tensor, ins[2] as unknown as Tensor, { ...opts, backend: 'webgpu' })) as unknown as { out: import('../src/webgpu/index.js').GpuTensor; lse: import('../src/webgpu/index.js').GpuTensor };
          const out = await w.fromGpu(r.out);
          const lse = await w.fromGpu(r.lse);
          [...ins, r.out, r.lse].forEach(w.releaseTensor);
          return { out: { data: out, shape: [] }, lse: { data: lse, shape: [] } };
        },
      ]);
    for (const [name, run] of runs)
      await f.run(`#${i} ${name} grid ${grid.join('x')} K${K} H${H} (${bad.size} rows expected)`, async () => {
        const r = await run();
        const DV = problem.dimV;
        for (let x = 0; x < problem.qRows * problem.heads; x++) {
          const nan = Number.isNaN(r.lse.data[x]!) && r.out.data.subarray(x * DV, (x + 1) * DV).every((y) => Number.isNaN(y));
          if (nan !== bad.has(x)) throw new Error(`row ${x}: NaN ${nan}, expected ${bad.has(x)}`);
          if (!nan)
            for (let c = 0; c < DV; c++)
              if (Math.abs(r.out.data[x * DV + c]! - ref.out[x * DV + c]!) > 1e-4) throw new Error(`row ${x} differs from the reference`);
        }
      });
  }
  f.done('rpb non-finite policy');
});

test('non-finite policy on GPU tensors: the fused, naive and unfused kernels apply it themselves (fails on the old kernels)', { skip: gpu ? false : 'no WebGPU device' }, async () => {
  const w = await import('../src/webgpu/index.js');
  const f = new Failures();
  const rng = new Rng(3);
  for (let i = 0; i < 10; i++) {
    const H = rng.pick([2, 4]);
    const Hk = rng.pick([1, H]);
    const na = i % 2 === 1;
    const grid = na ? [rng.int(5, 9), rng.int(5, 9)] : [rng.int(20, 90)];
    const iq = inject(rng, randTensor(rng, [1, ...grid, H, 8]), rng.int(0, 2), H);
    const ik = inject(rng, randTensor(rng, [1, ...grid, Hk, 8]), rng.int(0, 2), Hk);
    const iv = inject(rng, randTensor(rng, [1, ...grid, Hk, 8]), rng.int(1, 2), Hk);
    const [q, k, v] = [iq.t, ik.t, iv.t];
    const inj: Injected = { q: iq.rows, kv: [...ik.rows, ...iv.rows] };
    await f.run(`#${i} ${na ? `na2d ${(['fused', 'naive', 'fused', 'unfused'] as const)[i % 4]}` : 'attention'} ${grid.join('x')} H${H}/${Hk}`, async () => {
      const up = async (t: Tensor) => ({ ...(await w.toGpu(t.data, t.shape)), shape: [...t.shape] }) as unknown as Tensor;
      const [gq, gk, gv] = [await up(q), await up(k), await up(v)];
      const impl = (['fused', 'naive', 'fused', 'unfused'] as const)[i % 4]!;
      const opts = na ? ({ kernelSize: 3, impl, backend: 'webgpu' } as NeighborhoodOptions) : ({ ...rng.pick([{ causal: true }, { window: [4, 2] }, {}] as AttentionOptions[]), backend: 'webgpu' } as AttentionOptions);
      const r = (na ? await neighborhoodAttention(gq, gk, gv, opts as NeighborhoodOptions) : await attention(gq, gk, gv, opts as AttentionOptions)) as unknown as { out: import('../src/webgpu/index.js').GpuTensor; lse: import('../src/webgpu/index.js').GpuTensor };
      const host: Result = { out: { data: await w.fromGpu(r.out), shape: [] }, lse: { data: await w.fromGpu(r.lse), shape: [] } };
      [gq, gk, gv].forEach((t) => w.releaseTensor(t as unknown as import('../src/webgpu/index.js').GpuTensor));
      w.releaseTensor(r.out);
      w.releaseTensor(r.lse);
      const { problem } = na ? planNA(q, k, v, opts as NeighborhoodOptions) : planAttention(q, k, v, opts as AttentionOptions);
      const msg = check(problem, host, expected(problem, inj), q, k, v);
      if (msg) throw new Error(msg);
    });
  }
  f.done('non-finite policy on GPU tensors');
});
