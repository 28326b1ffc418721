import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planAttention, planNA, type AttentionOptions, type NeighborhoodOptions } from '../src/api.js';
import { TilewiseError } from '../src/errors.js';
import type { PatternSpec } from '../src/patterns/spec.js';
import { LongHeadsCache } from '../src/longheads/cache.js';
import { longHeadsAttention } from '../src/longheads/attention.js';
import { type AttnProblem, ItemSpace } from '../src/problem.js';
import { SelectedPositions, chunksOf, ropePositions } from '../src/rope.js';
import { referenceAttention } from '../src/reference.js';
import { type Tensor, randn, relError, rng } from '../src/tensor.js';
import { BufferUsage, MapMode, getContext, getDevice, setDevice, webgpuAvailable } from '../src/webgpu/device.js';
import { FUSED_TUNING, fitTile, fusedCanRun, planFused, runWebGPUFused, runWebGPUFusedTensors, setFusedTuning } from '../src/webgpu/fused.js';
import { fusedProgram, fusedWorkgroupBytes, threadsOf } from '../src/webgpu/fused-wgsl.js';
import { UNFUSED_TUNING, naiveCanRun, planTiled, runWebGPUNaAV, runWebGPUNaQK, runWebGPUNaive, runWebGPUUnfused, setUnfusedTuning, unfusedCanRun } from '../src/webgpu/na.js';
import { naAVProgram, naQKProgram, naSoftmaxProgram, naiveProgram, tiledThreads, tiledWorkgroupBytes } from '../src/webgpu/na-wgsl.js';
import { ITEM, VISIT, buildGpuSchedule } from '../src/webgpu/schedule.js';
import { permuteProgram } from '../src/webgpu/permute.js';
import { mergeAttentionsGpu } from '../src/webgpu/merge.js';
import { bufferStats, fromGpu, releaseTensor, toGpu, wrapBuffer } from '../src/webgpu/tensor.js';
import { roundF16 } from '../src/f16.js';
import { uniformLayout } from '../src/webgpu/uniforms.js';
import { stableStringify } from '../src/webgpu/wgsl.js';
import { SMALL_LIMITS, checkVarsInitialised, declaredWorkgroupBytes } from './helpers.js';
import { NA_WINDOW_WGSL } from '../src/webgpu/na-rule-wgsl.js';
import { neighborhoodRule } from '../src/patterns/rules.js';

// Without an adapter every GPU test is reported skipped with the reason, never passed.
const available = await webgpuAvailable();
const skip: string | false = available === true ? false : `no WebGPU device: ${available}`;
const gpuTest = (name: string, fn: (t: import('node:test').TestContext) => Promise<void>) => test(name, { skip }, fn);

const TOL = 1e-4;

/** Finite entries by relative error; -inf (rows with no allowed key) must match exactly. */
function compareLse(got: Float32Array, ref: Float64Array, what: string): void {
  const g: number[] = [];
  const r: number[] = [];
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === -Infinity) {
      assert.equal(got[i], -Infinity, `${what}: lse[${i}] should be -inf (no allowed key), got ${got[i]}`);
      continue;
    }
    g.push(got[i]!);
    r.push(ref[i]!);
  }
  const e = relError(g, r);
  assert.ok(e < TOL, `${what}: lse relErr ${e}`);
}

async function check(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, what: string): Promise<void> {
  const got = await runWebGPUFused(problem, q.data, k.data, v.data, { poison: true });
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  const e = relError(got.out, ref.out);
  assert.ok(e < TOL, `${what}: out relErr ${e}`); // NaN fails this too
  compareLse(got.lse, ref.lse, what);
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

interface Cfg {
  batch: number;
  nq: number;
  nk: number;
  heads: number;
  kvHeads: number;
  dim: number;
  dimV: number;
}

function randomCfg(r: () => number, over: Partial<Cfg> = {}): Cfg {
  const heads = pick(r, [1, 2, 4]);
  const dim = pick(r, [8, 16]);
  return {
    batch: int(r, 1, 2),
    nq: int(r, 1, 70),
    nk: int(r, 1, 70),
    heads,
    kvHeads: pick(r, [1, heads]),
    dim,
    dimV: pick(r, [dim, dim, 4, 12]),
    ...over,
  };
}

function tensors(c: Cfg, seed: number, qGrid = [c.nq], kGrid = [c.nk]): [Tensor, Tensor, Tensor] {
  return [
    randn([c.batch, ...qGrid, c.heads, c.dim], seed),
    randn([c.batch, ...kGrid, c.kvHeads, c.dim], seed + 1),
    randn([c.batch, ...kGrid, c.kvHeads, c.dimV], seed + 2),
  ];
}

async function attnCase(c: Cfg, opts: AttentionOptions, seed: number, what: string): Promise<void> {
  const [q, k, v] = tensors(c, seed);
  const { problem } = planAttention(q, k, v, opts);
  await check(problem, q, k, v, `${what} ${JSON.stringify(c)}`);
}

const smallTiles = [undefined, { q: 16, kv: 8 }, { q: 8, kv: 16 }] as const;

// ---------------------------------------------------------------------------------------------
// Helpers that need no device.

/** Tint zeroes a `var x: T;` declared in a loop only once: every function var must carry an initialiser. */
test('uniform layouts pack what they declare', () => {
  const u = uniformLayout({ a: 'u32', b: 'f32', c: 'i32' } as const);
  assert.equal(u.size, 16);
  assert.match(u.wgsl('P'), /a: u32,\n {2}b: f32,\n {2}c: i32,/);
  const dv = new DataView(u.pack({ a: 7, b: -Infinity, c: -3 }));
  assert.equal(dv.getUint32(0, true), 7);
  assert.equal(dv.getFloat32(4, true), -Infinity);
  assert.equal(dv.getInt32(8, true), -3);
  assert.throws(() => u.pack({ a: -1, b: 0, c: 0 }), TilewiseError);
  assert.throws(() => u.pack({ a: 1.5, b: 0, c: 0 }), TilewiseError);
});

test('pipeline keys are derived from the spec, whatever the key order', () => {
  assert.equal(stableStringify({ b: 1, a: [1, { d: 2, c: 3 }] }), stableStringify({ a: [1, { c: 3, d: 2 }], b: 1 }));
  assert.notEqual(stableStringify({ a: 1 }), stableStringify({ a: 2 }));
});

test('tiles are cut to fit the device limits', () => {
  assert.deepEqual(fitTile([64], 56), [56]);
  assert.deepEqual(fitTile([4, 4, 4], 32), [2, 4, 4]);
  assert.deepEqual(fitTile([8, 8], 64), [8, 8]);
  const limits = {
    maxComputeWorkgroupStorageSize: 16384,
    maxComputeInvocationsPerWorkgroup: 128,
    maxComputeWorkgroupSizeX: 128,
    maxComputeWorkgroupsPerDimension: 65535,
    maxStorageBufferBindingSize: 1 << 27,
    maxBufferSize: 1 << 28,
    maxStorageBuffersPerShaderStage: 8,
  };
  const c = randomCfg(rng(1), { dim: 128, dimV: 128 });
  const [q, k, v] = tensors(c, 1);
  for (const cls of ['gpu', 'cpu'] as const) {
    const plan = planFused(planAttention(q, k, v, { tile: { q: 256, kv: 128 } }).problem, limits, FUSED_TUNING[cls]);
    assert.ok(threadsOf(plan.spec) <= 128);
    assert.ok(fusedWorkgroupBytes(plan.spec) <= 16384);
    assert.equal(plan.spec.rows % plan.spec.rm, 0);
    assert.equal(plan.spec.keys % plan.spec.tx, 0);
    assert.equal(fusedCanRun(plan.problem, limits), true);
    assert.match(String(fusedCanRun(plan.problem, { ...limits, maxStorageBufferBindingSize: 64 })), /q takes/);
    assert.match(String(fusedCanRun(plan.problem, { ...limits, maxComputeWorkgroupStorageSize: 512 })), /workgroup memory/);
    const wgsl = fusedProgram.generate(plan.spec);
    assert.match(wgsl, /@workgroup_size\(THREADS\)/);
    for (const spec of [plan.spec, { ...plan.spec, rope: true }, { ...plan.spec, rope: true, wq: 1 as const }, { ...plan.spec, subgroups: !plan.spec.subgroups }])
      checkVarsInitialised(fusedProgram.generate(spec));
    // unrolled specs have constant loop bounds, the others read them from the uniforms
    assert.equal(/d < P\.dq/.test(wgsl), !plan.spec.unroll);
  }
});

test('fused workgroup memory: what the generated WGSL declares stays within fusedWorkgroupBytes (the planner fits tiles by it), padded strides add to it', () => {
  const r = rng(31);
  const limits = { ...SMALL_LIMITS, maxComputeWorkgroupStorageSize: 1 << 16, maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256 };
  const problems: AttnProblem[] = [];
  for (const dim of [8, 12, 64]) {
    const c = randomCfg(r, { dim, dimV: pick(r, [dim, 6]), nq: 70, nk: 70 });
    const [q, k, v] = tensors(c, 40 + dim);
    problems.push(planAttention(q, k, v, { causal: true, bias: randn([c.nq, c.nk], 41) }).problem);
    const g = [8, 9];
    const [q2, k2, v2] = tensors(c, 50 + dim, g, g);
    problems.push(planNA(q2, k2, v2, { kernelSize: [3, 5], rpb: randn([c.heads, 5, 9], 51) }, 2).problem);
  }
  for (const problem of problems)
    for (const tune of [FUSED_TUNING.gpu, FUSED_TUNING.cpu, { rm: 3, tx: 2, maxRows: 20, maxKeys: 12, unroll: true }])
      for (const pad of [false, true])
        for (const screen of [false, true]) {
          const spec = planFused(problem, limits, { ...tune, pad }, 32, false, screen).spec;
          assert.equal(spec.pad === true, pad);
          for (const s of [spec, { ...spec, subgroups: !spec.subgroups }, { ...spec, schedule: 'list' as const }]) {
            const declared = declaredWorkgroupBytes(fusedProgram.generate(s));
            assert.ok(declared <= fusedWorkgroupBytes(s), `declared ${declared} > planned ${fusedWorkgroupBytes(s)}: ${JSON.stringify(s)}`);
            if (pad && (s.dim / s.wq) % 2 === 0) assert.ok(declared > declaredWorkgroupBytes(fusedProgram.generate({ ...s, pad: false })), 'padded rows take more');
          }
        }
});

test('unfused NA: tiles fit the device, generated WGSL initialises its vars, oversized attn is refused', () => {
  const limits = SMALL_LIMITS;
  const grid = [20, 18];
  const [q, k, v] = tensors({ batch: 1, nq: 0, nk: 0, heads: 2, kvHeads: 1, dim: 32, dimV: 12 }, 3, grid, grid);
  const { problem } = planNA(q, k, v, { kernelSize: [7, 4], dilation: [2, 1], stride: [1, 2], softcap: 1, tile: { q: 16 } }, 2);
  for (const cls of ['cpu', 'gpu'] as const)
    for (const kind of ['qk', 'av'] as const) {
      const { spec, tile } = planTiled(problem, kind, limits, UNFUSED_TUNING[cls]);
      assert.ok(tiledWorkgroupBytes(spec) <= 4096, `${cls} ${kind}: workgroup bytes`);
      assert.ok(tiledThreads(spec) <= 64, `${cls} ${kind}: threads`);
      assert.ok(tile[0]! * tile[1]! <= spec.rows && tile[0]! <= 10, `${cls} ${kind}: tile ${tile} (longest group 10)`);
      assert.equal(spec.rows % spec.rm, 0);
      assert.equal(spec.keys % spec.tx, 0);
      const wgsl = (kind === 'qk' ? naQKProgram : naAVProgram).generate(spec);
      assert.match(wgsl, kind === 'qk' ? /softcap \* tanh/ : /o\[0\] \+= p0 \* w0/);
      checkVarsInitialised(wgsl);
      // f16 storage: q, k (qk) or v, out (av) declared f16, the scores f32
      const half = (kind === 'qk' ? naQKProgram : naAVProgram).generate({ ...spec, f16: true });
      assert.match(half, /^enable f16;/);
      assert.match(half, kind === 'qk' ? /var<storage, read> k: array<(vec4<)?f16>?>/ : /var<storage, read_write> out: array<(vec4<)?f16>?>/);
      assert.match(half, /attn: array<f32>/);
      checkVarsInitialised(half);
    }
  checkVarsInitialised(naSoftmaxProgram.generate({ normalize: true, threads: 64 }));
  for (const f16 of [false, true]) {
    const wgsl = naiveProgram.generate({ rank: 3, dim: 8, dimV: 4, wq: 4, wv: 4, softcap: true, rpb: true, threads: 64, f16 });
    assert.equal(/enable f16;/.test(wgsl), f16);
    assert.equal(/out: array<vec4<f16>>/.test(wgsl), f16);
    checkVarsInitialised(wgsl);
  }
  assert.equal(unfusedCanRun(problem, limits), true);
  assert.match(String(unfusedCanRun(problem, { ...limits, maxStorageBufferBindingSize: 80000 })), /^attn takes 80640 bytes/);
  // q is 92160 bytes as f32, half that as f16; attn (80640 bytes) is f32 either way
  assert.match(String(unfusedCanRun(problem, { ...limits, maxStorageBufferBindingSize: 85000 })), /^q takes 92160 bytes/);
  assert.equal(unfusedCanRun(problem, { ...limits, maxStorageBufferBindingSize: 85000 }, 'f16'), true);
  assert.match(String(unfusedCanRun(problem, { ...limits, maxStorageBufferBindingSize: 80000 }, 'f16')), /^attn takes 80640 bytes/);
  assert.match(String(unfusedCanRun(planAttention(q, k, v, { causal: true }).problem, limits)), /neighborhood/);
});

// ---------------------------------------------------------------------------------------------
// Device.

gpuTest('device: acquired once, features and limits read, caller device accepted', async () => {
  const ctx = await getContext();
  assert.ok(ctx.limits.maxComputeWorkgroupStorageSize >= 16384);
  assert.ok(ctx.features instanceof Set);
  assert.ok(ctx.adapterClass === 'cpu' || ctx.adapterClass === 'gpu');
  const d = await getDevice();
  assert.equal(await getDevice(), d);
  setDevice(d);
  assert.equal((await getContext()).userProvided, true);
  assert.equal(await getDevice(), d);
});

// ---------------------------------------------------------------------------------------------
// Property tests against the float64 reference.

gpuTest('dense, GQA, Dv != D, odd head dims, batches', async () => {
  const r = rng(11);
  for (let i = 0; i < 6; i++) await attnCase(randomCfg(r), { tile: pick(r, smallTiles) }, 100 + i, 'dense');
  await attnCase(randomCfg(r, { dim: 5, dimV: 3, heads: 2, kvHeads: 1 }), {}, 7, 'dense odd dims');
});

gpuTest('causal, top-left and bottom-right, Nq != Nk', async () => {
  const r = rng(12);
  for (let i = 0; i < 6; i++) {
    const align = i % 2 === 0 ? 'top-left' : 'bottom-right';
    await attnCase(randomCfg(r), { causal: align, tile: pick(r, smallTiles) }, 200 + i, `causal ${align}`);
  }
  // more queries than keys, bottom-right: the first rows see no key (out 0, lse -inf)
  await attnCase(randomCfg(r, { nq: 40, nk: 9 }), { causal: 'bottom-right', tile: { q: 8, kv: 8 } }, 210, 'causal empty rows');
});

gpuTest('sliding windows', async () => {
  const r = rng(13);
  for (let i = 0; i < 6; i++) {
    const window: [number, number] = [pick(r, [-1, 0, 3, 17]), pick(r, [-1, 0, 5])];
    await attnCase(randomCfg(r), { window, causal: pick(r, [false, 'bottom-right'] as const), tile: pick(r, smallTiles) }, 300 + i, `window ${window}`);
  }
});

gpuTest('softcap and additive bias (all broadcast forms, -inf entries)', async () => {
  const r = rng(14);
  for (let i = 0; i < 6; i++) {
    const c = randomCfg(r, { nq: int(r, 1, 40), nk: int(r, 1, 40) });
    const bb = pick(r, [1, c.batch]);
    const bh = pick(r, [1, c.heads]);
    const shape = pick(r, [[bb, bh, c.nq, c.nk], [bh, c.nq, c.nk], [c.nq, c.nk]]);
    const bias = randn(shape, 400 + i);
    if (i % 2 === 1) for (let j = 0; j < bias.data.length; j += 3) bias.data[j] = -Infinity;
    await attnCase(c, { bias, softcap: pick(r, [0, 0.7, 5]), causal: pick(r, [false, true]), tile: pick(r, smallTiles) }, 410 + i, 'bias/softcap');
  }
});

gpuTest('varlen packs (empty sequences included), causal and windowed', async () => {
  const r = rng(15);
  for (let i = 0; i < 4; i++) {
    const nSeq = int(r, 1, 4);
    const lq = Array.from({ length: nSeq }, () => int(r, 0, 30));
    const lk = lq.map((x) => (i % 2 === 0 ? x : int(r, 0, 30)));
    const cu = (ls: number[]) => Int32Array.from([0, ...ls.map((_, j) => ls.slice(0, j + 1).reduce((a, b) => a + b, 0))]);
    const nq = Math.max(1, lq.reduce((a, b) => a + b, 0));
    const nk = Math.max(1, lk.reduce((a, b) => a + b, 0));
    if (lq.reduce((a, b) => a + b, 0) === 0) lq[0] = 1;
    if (lk.reduce((a, b) => a + b, 0) === 0) lk[0] = 1;
    const c = randomCfg(r, { batch: 1, nq, nk });
    const opts: AttentionOptions = { cuSeqlensQ: cu(lq), cuSeqlensK: cu(lk), causal: pick(r, [false, 'top-left', 'bottom-right'] as const), tile: pick(r, smallTiles) };
    if (i === 3) opts.window = [4, 2];
    await attnCase(c, opts, 500 + i, `varlen ${lq}/${lk}`);
  }
});

function blockSparse(r: () => number, heads: number, blockQ: number, blockK: number, nq: number, nk: number): PatternSpec {
  const [numQBlocks, numKBlocks] = [Math.ceil(nq / blockQ), Math.ceil(nk / blockK)];
  const mask = new Uint8Array(heads * numQBlocks * numKBlocks).map(() => (r() < 0.4 ? 1 : 0));
  return { kind: 'blockSparse', blockQ, blockK, mask, maskHeads: heads, numQBlocks, numKBlocks };
}

gpuTest('block-sparse masks (shared and per head), any block size', async () => {
  const r = rng(16);
  for (let i = 0; i < 5; i++) {
    const c = randomCfg(r, { nq: int(r, 8, 70), nk: int(r, 8, 70) });
    const [bq, bk] = [pick(r, [4, 8, 16, 7]), pick(r, [4, 8, 16, 5])];
    const hm = pick(r, [1, c.heads]);
    const pattern = blockSparse(r, hm, bq, bk, c.nq, c.nk);
    await attnCase(c, { pattern, causal: i === 4, tile: pick(r, smallTiles) }, 600 + i, `block-sparse ${bq}x${bk}`);
  }
});

gpuTest('LongHeads chunk selection', async () => {
  const r = rng(17);
  for (let i = 0; i < 4; i++) {
    const c = randomCfg(r, { nq: int(r, 8, 64), nk: int(r, 8, 64) });
    const chunkSize = pick(r, [4, 8, 16]);
    const queryTile = pick(r, [8, 16]);
    const heads = pick(r, [1, c.heads]);
    const numQTiles = Math.ceil(c.nq / queryTile);
    const nChunks = Math.ceil(c.nk / chunkSize);
    const offsets = [0];
    const ids: number[] = [];
    for (let t = 0; t < heads * numQTiles; t++) {
      for (let ch = 0; ch < nChunks; ch++) if (r() < 0.4) ids.push(ch);
      offsets.push(ids.length);
    }
    const pattern: PatternSpec = { kind: 'chunks', chunkSize, queryTile, heads, numQTiles, offsets: Int32Array.from(offsets), ids: Int32Array.from(ids) };
    await attnCase(c, { pattern, tile: pick(r, smallTiles) }, 700 + i, 'chunks');
  }
});

gpuTest('mask functions and and/or compositions', async () => {
  const r = rng(18);
  const fns: PatternSpec[] = [
    { kind: 'mask', fn: (b, h, q, k) => (q * 7 + k * 3 + h + b) % 5 !== 0 },
    { kind: 'mask', fn: (_b, h, q, k) => q % 3 !== 0 && Math.abs(q - k) <= 4 + h },
    { kind: 'or', parts: [{ kind: 'causal', align: 'top-left' }, { kind: 'mask', fn: (_b, _h, q, k) => (q + k) % 4 === 0 }] },
    { kind: 'and', parts: [{ kind: 'window', left: 6, right: 6, align: 'top-left' }, { kind: 'mask', fn: (_b, _h, q, k) => q !== k }] },
  ];
  for (let i = 0; i < fns.length; i++)
    await attnCase(randomCfg(r, { nq: int(r, 1, 50), nk: int(r, 1, 50) }), { pattern: fns[i]!, tile: pick(r, smallTiles) }, 800 + i, `mask ${i}`);
});

async function naCase(grid: number[], c: Cfg, opts: NeighborhoodOptions, seed: number, what: string): Promise<void> {
  const [q, k, v] = tensors(c, seed, grid, grid);
  const { problem } = planNA(q, k, v, opts, grid.length);
  await check(problem, q, k, v, `${what} ${grid} ${JSON.stringify(opts, (key, x) => (key === 'rpb' ? undefined : x))}`);
}

function randomNA(r: () => number, grid: number[], allowCausal: boolean): NeighborhoodOptions {
  const kernelSize = grid.map((L) => int(r, 1, Math.min(L, 7)));
  const dilation = grid.map((L, a) => int(r, 1, Math.max(1, Math.min(3, Math.floor(L / kernelSize[a]!)))));
  const stride = kernelSize.map((K) => int(r, 1, Math.min(K, 3)));
  const isCausal = grid.map(() => allowCausal && r() < 0.4);
  return { kernelSize, dilation, stride, isCausal };
}

gpuTest('neighborhood attention 1-D (dilation, stride, causal, even kernels, rpb)', async () => {
  const r = rng(19);
  for (let i = 0; i < 6; i++) {
    const grid = [int(r, 4, 60)];
    const c = randomCfg(r, { nq: 0, nk: 0 });
    const opts = randomNA(r, grid, i < 3);
    if (i >= 3) opts.rpb = randn([c.heads, 2 * (opts.kernelSize as number[])[0]! - 1], 900 + i);
    await naCase(grid, c, { ...opts, tile: pick(r, [undefined, { q: 8, kv: 8 }]) }, 910 + i, 'na1d');
  }
});

gpuTest('neighborhood attention 2-D and 3-D (dilation, stride, causal, rpb)', async () => {
  const r = rng(20);
  for (let i = 0; i < 6; i++) {
    const rank = i < 4 ? 2 : 3;
    const grid = Array.from({ length: rank }, () => int(r, 3, rank === 2 ? 14 : 7));
    const c = randomCfg(r, { batch: 1, nq: 0, nk: 0, heads: pick(r, [1, 2]), dim: 8, dimV: 8 });
    c.kvHeads = pick(r, [1, c.heads]);
    const opts = randomNA(r, grid, i % 2 === 0);
    if (i % 2 === 1) opts.rpb = randn([c.heads, ...(opts.kernelSize as number[]).map((x) => 2 * x - 1)], 1000 + i);
    await naCase(grid, c, opts, 1010 + i, `na${rank}d`);
  }
});

gpuTest('other blockings: the GPU table (unrolled), one thread per row, threads not dividing the tile, odd row strides', async () => {
  const r = rng(22);
  const tunings = [FUSED_TUNING.gpu, { rm: 1, tx: 1, maxRows: 16, maxKeys: 16 }, { rm: 3, tx: 3, maxRows: 20, maxKeys: 10 }, { ...FUSED_TUNING.gpu, pad: true }, { rm: 2, tx: 2, maxRows: 12, maxKeys: 10, pad: true }];
  try {
    for (const [i, t] of tunings.entries()) {
      setFusedTuning(t);
      const c = randomCfg(r, { dim: 8, dimV: pick(r, [8, 4, 6]), nq: int(r, 20, 60), nk: int(r, 20, 60) });
      const bias = randn([c.nq, c.nk], 1100 + i);
      await attnCase(c, { causal: 'bottom-right', bias, softcap: 3 }, 1110 + i, `tuning ${JSON.stringify(t)}`);
    }
  } finally {
    setFusedTuning(undefined);
  }
});

gpuTest('subgroup exchange (row max, row sum, P by shuffle) against workgroup-memory exchange, random blockings and patterns', async (t) => {
  const ctx = await getContext();
  if (ctx.subgroupMinSize < 2) return t.skip(`adapter has no subgroups of 2 or more lanes (${ctx.subgroupMinSize})`);
  const r = rng(24);
  try {
    for (let i = 0; i < 8; i++) {
      const tx = pick(r, [1, 2, 4, 8].filter((x) => x <= ctx.subgroupMinSize));
      const tuning = { rm: int(r, 1, 4), tx, maxRows: pick(r, [8, 16, 32]), maxKeys: pick(r, [8, 16, 32]), unroll: r() < 0.5, subgroups: i % 4 !== 3, pad: i % 2 === 0 };
      setFusedTuning(tuning);
      const c = randomCfg(r, { dim: pick(r, [8, 12, 16]), nq: int(r, 10, 60), nk: int(r, 10, 60) });
      c.dimV = pick(r, [c.dim, 4, 6]);
      const opts: AttentionOptions = pick(r, [{ causal: 'bottom-right', softcap: 2 }, { window: [int(r, 0, 9), int(r, 0, 9)] }, { bias: randn([c.nq, c.nk], 1150 + i) }, {}]);
      const [q, k, v] = tensors(c, 1160 + i);
      const { problem } = planAttention(q, k, v, opts);
      // the shuffle path is really the one taken (the spec is the pipeline's compile-time key)
      const spec = planFused(problem, ctx.limits, { ...FUSED_TUNING.cpu, ...tuning }, ctx.subgroupMinSize).spec;
      const pow2 = (spec.tx & (spec.tx - 1)) === 0;
      assert.equal(spec.subgroups, tuning.subgroups && pow2, JSON.stringify(spec));
      if (spec.subgroups && spec.tx > 1) assert.match(fusedProgram.generate(spec), /subgroupShuffleXor/);
      await check(problem, q, k, v, `tuning ${JSON.stringify(tuning)} ${JSON.stringify(opts)} ${JSON.stringify(c)}`);
    }
  } finally {
    setFusedTuning(undefined);
  }
});

gpuTest('in-kernel (analytic) schedules against uploaded ones: dense, causal, window, N-D neighborhoods with dilation/stride/causal/rpb; bias, RoPE, GQA', async () => {
  const ctx = await getContext();
  const r = rng(25);
  const bitTests = new Set<boolean>();
  try {
    for (let i = 0; i < 12; i++) {
      const na = i % 2 === 1;
      const rank = na ? 1 + (i % 3) : 1;
      const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 70 : rank === 2 ? 12 : 6));
      const n = grid.reduce((a, b) => a * b, 1);
      const c = randomCfg(r, { nq: n, nk: n, dim: pick(r, [8, 12]) });
      if (!na && r() < 0.5) c.nk = int(r, 1, 70); // cross lengths: bottom-right alignment matters
      const [q, k, v] = na ? tensors(c, 1200 + i, grid, grid) : tensors(c, 1200 + i);
      let problem: AttnProblem;
      let what: string;
      if (na) {
        const opts = randomNA(r, grid, true);
        if (!(opts.isCausal as boolean[]).some((x) => x) && r() < 0.5) opts.rpb = randn([c.heads, ...(opts.kernelSize as number[]).map((x) => 2 * x - 1)], 1230 + i);
        problem = planNA(q, k, v, { ...opts, tile: pick(r, [undefined, { q: grid.map(() => int(r, 1, 5)), kv: grid.map(() => int(r, 2, 6)) }]) }).problem;
        what = `NA ${grid} ${JSON.stringify(opts, (key, x) => (key === 'rpb' ? undefined : x))}`;
      } else {
        const opts: AttentionOptions = pick(r, [
          {},
          { causal: true },
          { causal: 'bottom-right' as const, rope: {} },
          { window: [int(r, -1, 12), int(r, -1, 12)] as const },
          { causal: 'bottom-right' as const, window: [int(r, 0, 12), int(r, 0, 12)] as const, softcap: 2 },
          { causal: true, bias: randn([c.nq, c.nk], 1240 + i) },
        ]);
        problem = planAttention(q, k, v, { ...opts, tile: pick(r, [undefined, { q: int(r, 1, 20), kv: int(r, 1, 20) }]) }).problem;
        what = `1-D ${JSON.stringify(opts, (key, x) => (key === 'bias' ? undefined : x))}`;
      }
      for (const analytic of [true, false]) {
        setFusedTuning({ analytic });
        const spec = planFused(problem, ctx.limits, { ...FUSED_TUNING.cpu, analytic }).spec;
        assert.equal(spec.schedule, analytic ? 'analytic' : 'list', what);
        if (analytic) bitTests.add(spec.maskBits === true);
        await check(problem, q, k, v, `${what} analytic=${analytic} ${JSON.stringify(c)}`);
      }
    }
    // partial visits tested by bit masks (key tiles on 2-3 axes whose extents sum to 32 or less) and
    // by compares (1-D, and a 32x1 key tile): both against the uploaded schedule
    const grid = [37, 5];
    const [q, k, v] = tensors({ batch: 1, nq: 185, nk: 185, heads: 2, kvHeads: 1, dim: 8, dimV: 8 }, 1280, grid, grid);
    const wide = planNA(q, k, v, { kernelSize: [7, 3], dilation: [2, 1], tile: { q: [4, 2], kv: [32, 1] } }).problem;
    for (const analytic of [true, false]) {
      setFusedTuning({ analytic });
      const spec = planFused(wide, ctx.limits, { ...FUSED_TUNING.cpu, analytic }).spec;
      if (analytic) assert.equal(spec.maskBits, undefined, 'a 32x1 key tile: 33 bits, so compares');
      await check(wide, q, k, v, `NA 37x5 k 7x3 dil 2x1, key tile 32x1, analytic=${analytic}`);
    }
    assert.deepEqual([...bitTests].sort(), [false, true], 'both pair tests ran');
  } finally {
    setFusedTuning(undefined);
  }
  // what stays uploaded: varlen packs, block-sparse, 'selected' RoPE
  const [q, k, v] = tensors({ batch: 1, nq: 20, nk: 20, heads: 1, kvHeads: 1, dim: 8, dimV: 8 }, 1290);
  const varlen = planAttention(q, k, v, { causal: true, cuSeqlensQ: Int32Array.from([0, 7, 20]), cuSeqlensK: Int32Array.from([0, 9, 20]) }).problem;
  const sparse = planAttention(q, k, v, { pattern: { kind: 'blockSparse', blockQ: 4, blockK: 4, mask: new Uint8Array(25).fill(1), maskHeads: 1, numQBlocks: 5, numKBlocks: 5 } }).problem;
  assert.equal(planFused(varlen, ctx.limits).spec.schedule, 'list');
  assert.equal(planFused(sparse, ctx.limits).spec.schedule, 'list');
});

gpuTest('token-permuted layouts (N-D neighborhoods, dilation groups): fused NA against the float64 reference, f32 and f16', async () => {
  const ctx = await getContext();
  const r = rng(26);
  const before = bufferStats().live;
  try {
    for (let i = 0; i < 10; i++) {
      const rank = 1 + (i % 3);
      const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 60 : rank === 2 ? 13 : 6));
      const n = grid.reduce((a, b) => a * b, 1);
      const c = randomCfg(r, { nq: n, nk: n, dim: pick(r, [8, 12]), dimV: pick(r, [8, 4, 6]) });
      const opts = randomNA(r, grid, true);
      // one axis only: permuting a plain 1-D neighborhood is the identity, so it needs dilation
      if (rank === 1) (opts.dilation as number[])[0] = int(r, 2, 3);
      (opts.kernelSize as number[]).forEach((K, a) => ((opts.kernelSize as number[])[a] = Math.min(K, Math.floor(grid[a]! / (opts.dilation as number[])[a]!))));
      if (!(opts.isCausal as boolean[]).some((x) => x) && r() < 0.5) opts.rpb = randn([c.heads, ...(opts.kernelSize as number[]).map((x) => 2 * x - 1)], 1330 + i);
      if (r() < 0.3) opts.softcap = 2;
      const [q, k, v] = tensors(c, 1300 + i, grid, grid);
      const tile = pick(r, [undefined, { q: grid.map(() => int(r, 1, 5)), kv: grid.map(() => int(r, 2, 6)) }]);
      const { problem } = planNA(q, k, v, { ...opts, ...(tile ? { tile } : {}) });
      const tuning = { ...FUSED_TUNING.cpu, maxRows: pick(r, [8, 16, 32]), maxKeys: pick(r, [8, 16, 32]), permute: true };
      const spec = planFused(problem, ctx.limits, tuning, ctx.subgroupMinSize).spec;
      assert.equal(spec.permute, true, `permuted layout planned for ${grid}`);
      assert.match(fusedProgram.generate(spec), /a_qrow\[r\] = q_row\(r\)/);
      checkVarsInitialised(fusedProgram.generate(spec));
      setFusedTuning(tuning);
      const what = `permuted NA ${grid} ${JSON.stringify({ ...opts, rpb: undefined, tile })} ${JSON.stringify(c)}`;
      await check(problem, q, k, v, what);
      if (ctx.features.has('shader-f16') && i % 3 === 0) {
        // f16 storage through the permutation: inputs rounded to f16, output rounded once more
        const [q16, k16, v16] = [q, k, v].map((t) => ({ ...t, data: Float32Array.from(t.data, roundF16) }));
        const ref = referenceAttention(problem, { q: q16!.data, k: k16!.data, v: v16!.data });
        const up = await Promise.all([q16!, k16!, v16!].map((t) => toGpu(t.data, t.shape, ctx, 'f16')));
        const got = await runWebGPUFusedTensors(problem, up[0]!, up[1]!, up[2]!, { poison: true });
        const out = await fromGpu(got.out);
        assert.ok(relError(out, ref.out) < 2e-3, `${what} f16: out relErr ${relError(out, ref.out)}`);
        [...up, got.out, got.lse].forEach(releaseTensor);
      }
    }
  } finally {
    setFusedTuning(undefined);
  }
  assert.equal(bufferStats().live, before, 'permuted copies are released');
  // not permutable: plain 1-D neighborhoods and non-neighborhood patterns keep the token layout
  const [q, k, v] = tensors({ batch: 1, nq: 20, nk: 20, heads: 1, kvHeads: 1, dim: 8, dimV: 8 }, 1390);
  const perm = { ...FUSED_TUNING.cpu, permute: true };
  assert.equal(planFused(planNA(q, k, v, { kernelSize: 5 }).problem, ctx.limits, perm).spec.permute, false);
  assert.equal(planFused(planAttention(q, k, v, { causal: true }).problem, ctx.limits, perm).spec.permute, false);
  checkVarsInitialised(permuteProgram.generate({ rank: 3, f16: false, w: 4 }));
});

gpuTest('NA naive kernel (1-, 2-, 3-D; dilation, stride, causal, rpb, GQA, softcap)', async () => {
  const r = rng(23);
  for (let i = 0; i < 6; i++) {
    const rank = 1 + (i % 3);
    const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 40 : rank === 2 ? 12 : 6));
    const c = randomCfg(r, { nq: 0, nk: 0 });
    const opts = randomNA(r, grid, i < 3);
    if (i >= 3) opts.rpb = randn([c.heads, ...(opts.kernelSize as number[]).map((x) => 2 * x - 1)], 1200 + i);
    if (i === 5) opts.softcap = 2;
    const [q, k, v] = tensors(c, 1210 + i, grid, grid);
    const { problem } = planNA(q, k, v, opts, rank);
    const got = await runWebGPUNaive(problem, q.data, k.data, v.data, { poison: true });
    const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
    assert.ok(relError(got.out, ref.out) < TOL, `naive ${grid}: out relErr ${relError(got.out, ref.out)}`);
    compareLse(got.lse, ref.lse, `naive ${grid}`);
  }
  const [q, k, v] = tensors(randomCfg(r), 1220);
  const { problem } = planAttention(q, k, v, { causal: true });
  assert.match(String(naiveCanRun(problem)), /neighborhood/);
  await assert.rejects(runWebGPUNaive(problem, q.data, k.data, v.data), TilewiseError);
});

/**
 * Neighborhood configurations for the unfused pipeline: fixed corners (even kernels with stride and
 * causal axes, dilation, GQA, softcap, rpb), then random ones. Small grids: lavapipe is slow.
 */
function unfusedCases(): { grid: number[]; c: Cfg; opts: NeighborhoodOptions; seed: number }[] {
  const r = rng(24);
  const fixed: Cfg = { batch: 2, nq: 0, nk: 0, heads: 4, kvHeads: 2, dim: 8, dimV: 12 };
  const cases: { grid: number[]; c: Cfg; opts: NeighborhoodOptions; seed: number }[] = [
    { grid: [9, 10], c: fixed, opts: { kernelSize: [4, 3], dilation: [2, 1], stride: [2, 3], isCausal: [true, false] } },
    { grid: [5, 6, 4], c: { ...fixed, batch: 1, dim: 5, dimV: 4 }, opts: { kernelSize: [2, 3, 4], dilation: [2, 2, 1], stride: [1, 3, 2], isCausal: [false, true, true], softcap: 3 } },
    { grid: [31], c: { ...fixed, heads: 2 }, opts: { kernelSize: [6], dilation: [3], stride: [4], rpb: randn([2, 11], 1300) } },
  ].map((x, i) => ({ ...x, seed: 1310 + 10 * i }));
  for (let i = 0; i < 3; i++) {
    const rank = 1 + (i % 3);
    const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 40 : rank === 2 ? 12 : 6));
    const c = randomCfg(r, { nq: 0, nk: 0, batch: rank === 3 ? 1 : int(r, 1, 2) });
    const opts: NeighborhoodOptions = { ...randomNA(r, grid, i % 2 === 0), softcap: pick(r, [0, 0, 2]) };
    if (i % 2 === 1) opts.rpb = randn([c.heads, ...(opts.kernelSize as number[]).map((x) => 2 * x - 1)], 1400 + i);
    cases.push({ grid, c, opts, seed: 1410 + 10 * i });
  }
  return cases;
}

const describeCase = (grid: number[], opts: NeighborhoodOptions) => `${grid.join('x')} ${JSON.stringify(opts, (key, x) => (key === 'rpb' ? undefined : x))}`;

/** Scores: slots without a key (-inf) must match exactly, the rest by relative error. */
function compareScores(got: Float32Array, want: Float32Array, what: string): void {
  const g: number[] = [];
  const w: number[] = [];
  for (let i = 0; i < want.length; i++) {
    if (want[i] === -Infinity) {
      assert.equal(got[i], -Infinity, `${what}: slot ${i} has no key, got ${got[i]}`);
      continue;
    }
    g.push(got[i]!);
    w.push(want[i]!);
  }
  assert.ok(g.length > 0, `${what}: no finite score`);
  const e = relError(g, w);
  assert.ok(e < TOL, `${what}: scores relErr ${e}`);
}

gpuTest('NA unfused naQK matches the CPU naQK op (1-, 2-, 3-D; even kernels, dilation, stride, causal, GQA, rpb, softcap)', async () => {
  const { naQK } = await import('../src/api.js');
  for (const { grid, c, opts, seed } of unfusedCases()) {
    const [q, k, v] = tensors(c, seed, grid, grid);
    const { problem } = planNA(q, k, v, opts, grid.length);
    const got = await runWebGPUNaQK(problem, q.data, k.data, { poison: true });
    const cpu = await naQK(q, k, { ...opts, backend: 'cpu' });
    const what = `naQK ${describeCase(grid, opts)}`;
    compareScores(got.attn, cpu.out.data, what);
    // the LSE of each row of scores is the attention LSE: check it against the float64 reference
    compareLse(got.lse, referenceAttention(problem, { q: q.data, k: k.data, v: v.data }).lse, what);
  }
});

gpuTest('NA unfused naAV matches the CPU naAV op (slots without a key hold NaN and are never read)', async () => {
  const { naAV, naQK } = await import('../src/api.js');
  const r = rng(25);
  for (const { grid, c, opts, seed } of unfusedCases()) {
    const [q, k, v] = tensors(c, seed, grid, grid);
    const { problem } = planNA(q, k, v, opts, grid.length);
    // any weights will do; the CPU scores only say which slots hold a key
    const { out: scores } = await naQK(q, k, { ...opts, backend: 'cpu' });
    const attn = { data: scores.data.map((x) => (x === -Infinity ? NaN : r())), shape: scores.shape };
    const got = await runWebGPUNaAV(problem, attn.data, v.data, { poison: true });
    const cpu = await naAV(attn, v, { ...opts, backend: 'cpu' });
    const e = relError(got, cpu.out.data);
    assert.ok(e < TOL, `naAV ${describeCase(grid, opts)}: relErr ${e}`);
  }
});

gpuTest('NA unfused pipeline (naQK, softmax, naAV) matches the float64 reference', async () => {
  for (const { grid, c, opts, seed } of unfusedCases()) {
    const [q, k, v] = tensors(c, seed, grid, grid);
    const { problem } = planNA(q, k, v, opts, grid.length);
    const got = await runWebGPUUnfused(problem, q.data, k.data, v.data, { poison: true });
    const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
    const what = `unfused ${describeCase(grid, opts)}`;
    const e = relError(got.out, ref.out);
    assert.ok(e < TOL, `${what}: out relErr ${e}`);
    compareLse(got.lse, ref.lse, what);
  }
});

gpuTest('NA unfused, other blockings: the GPU table (unrolled); rows per thread and threads per row dividing neither rows nor head dim, small chunks', async () => {
  // each blocking compiles two pipelines (slow on lavapipe), so two blockings cover the odd cases together
  const tunings = [UNFUSED_TUNING.gpu, { rm: 3, tx: 3, minRows: 8, maxRows: 8, maxKeys: 4, unroll: false }];
  const grid = [7, 9];
  const c: Cfg = { batch: 1, nq: 0, nk: 0, heads: 2, kvHeads: 1, dim: 8, dimV: 8 };
  const opts: NeighborhoodOptions = { kernelSize: [3, 4], dilation: [1, 2], stride: [2, 1], isCausal: [false, true], softcap: 2 };
  const [q, k, v] = tensors(c, 1500, grid, grid);
  const { problem } = planNA(q, k, v, opts, 2);
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  try {
    for (const t of tunings) {
      setUnfusedTuning(t);
      const got = await runWebGPUUnfused(problem, q.data, k.data, v.data, { poison: true });
      const e = relError(got.out, ref.out);
      assert.ok(e < TOL, `tuning ${JSON.stringify(t)}: out relErr ${e}`);
      compareLse(got.lse, ref.lse, `tuning ${JSON.stringify(t)}`);
    }
  } finally {
    setUnfusedTuning(undefined);
  }
});

gpuTest('NA unfused: scores over the storage binding limit are refused naming attn', async () => {
  const { naQK } = await import('../src/api.js');
  const { limits } = await getContext();
  // 1-D, one head, the window as long as the sequence: attn is N * N floats
  const n = Math.ceil(Math.sqrt(Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) / 4)) + 1;
  const [q, k] = tensors({ batch: 1, nq: n, nk: n, heads: 1, kvHeads: 1, dim: 1, dimV: 1 }, 5);
  await assert.rejects(naQK(q!, k!, { kernelSize: n, backend: 'webgpu' }), (e: unknown) => e instanceof TilewiseError && e.arg === 'attn' && /binding/.test(e.message));
});

// ---------------------------------------------------------------------------------------------
// RoPE inside the fused kernel.

/**
 * A random LongHeads-style chunk list: per head and chunk-list tile, the own chunk of every query
 * of the tile (required for 'selected' positions) plus random others (causal ones only when `causal`).
 */
function randomChunks(r: () => number, nq: number, nk: number, heads: number, causal: boolean): Extract<PatternSpec, { kind: 'chunks' }> {
  const chunkSize = pick(r, [4, 8]);
  const queryTile = pick(r, [8, 16]);
  const numQTiles = Math.ceil(nq / queryTile);
  const nChunks = Math.ceil(nk / chunkSize);
  const offsets = [0];
  const ids: number[] = [];
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < numQTiles; t++) {
      const own = (q: number) => Math.floor((q + nk - nq) / chunkSize);
      const [first, last] = [own(t * queryTile), own(Math.min(nq, (t + 1) * queryTile) - 1)];
      for (let c = 0; c < (causal ? last + 1 : nChunks); c++) if ((c >= first && c <= last) || r() < 0.4) ids.push(c);
      offsets.push(ids.length);
    }
  return { kind: 'chunks', chunkSize, queryTile, heads, numQTiles, offsets: Int32Array.from(offsets), ids: Int32Array.from(ids) };
}

const LIMITS = {
  maxComputeWorkgroupStorageSize: 16384,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
  maxComputeWorkgroupsPerDimension: 65535,
  maxStorageBufferBindingSize: 1 << 27,
  maxBufferSize: 1 << 28,
  maxStorageBuffersPerShaderStage: 8,
};

test("GPU schedule RoPE shifts: token + shift is every query's and every key's position ('selected': each visit inside one run of listed chunks)", () => {
  const r = rng(61);
  for (let i = 0; i < 12; i++) {
    const heads = pick(r, [1, 2]);
    const nk = int(r, 20, 90);
    const nq = i % 3 === 0 ? int(r, 1, nk) : nk;
    const causal = i % 2 === 0;
    const chunks = randomChunks(r, nq, nk, pick(r, [1, heads]), causal);
    const [q, k, v] = tensors({ batch: 1, nq, nk, heads, kvHeads: heads, dim: 8, dimV: 8 }, 1300 + i);
    const pattern: PatternSpec = causal ? { kind: 'and', parts: [chunks, { kind: 'causal', align: 'bottom-right' }] } : chunks;
    const tile = { q: pick(r, [chunks.queryTile, chunks.queryTile / 2, 4]), kv: pick(r, [8, 16, 32]) };
    const { problem } = planAttention(q, k, v, { pattern, rope: {}, ropePositions: 'selected', tile });
    const plan = planFused(problem, LIMITS, { ...FUSED_TUNING.cpu, maxRows: pick(r, [32, 6]) });
    assert.equal(chunks.queryTile % plan.problem.qTile[0]!, 0, 'GPU query tiles stay inside one chunk-list tile');
    const space = new ItemSpace(plan.problem);
    const sched = buildGpuSchedule(plan.problem, space, { maxWords: 1 << 25 }).data;
    const pos = new Int32Array(64);
    const i32 = (x: number) => x | 0;
    for (let item = 0; item < space.total; item++) {
      const ib = item * ITEM.size;
      const h = sched[ib + ITEM.at.h]!;
      const qt = sched.subarray(sched[ib + ITEM.at.qTok]!, sched[ib + ITEM.at.qTok]! + sched[ib + ITEM.at.nq]!);
      const qTok = Int32Array.from(qt);
      ropePositions(problem.rope!, pattern, h, nq, nk, qTok, qTok.length, true, qTok[0]!, pos);
      qTok.forEach((t, j) => assert.equal(t + i32(sched[ib + ITEM.at.qPosShift]!), pos[j], `item ${item}: query ${t}`));
      const sel = new SelectedPositions(chunksOf(pattern)!).at(h, Math.floor(qTok[0]! / chunks.queryTile));
      for (let vi = 0; vi < sched[ib + ITEM.at.nVisit]!; vi++) {
        const vb = sched[ib + ITEM.at.visit]! + vi * VISIT.size;
        const kt = sched.subarray(sched[vb + VISIT.at.kTok]!, sched[vb + VISIT.at.kTok]! + sched[vb + VISIT.at.nk]!);
        for (const t of kt) {
          assert.ok(sel.slotOf(Math.floor(t / chunks.chunkSize)) >= 0, `item ${item} visit ${vi}: key ${t} of an unlisted chunk`);
          assert.equal(t + i32(sched[vb + VISIT.at.kPosShift]!), sel.position(t), `item ${item} visit ${vi}: key ${t}`);
        }
      }
    }
    // the shifts split nothing: the walk already keeps each visit inside one run
    const { rope: _, ...plain } = plan.problem;
    assert.equal(buildGpuSchedule(plan.problem, space, { maxWords: 1 << 25 }).visits, buildGpuSchedule(plain, space, { maxWords: 1 << 25 }).visits);
  }
});

gpuTest('chunk lists walked in the kernel (LongHeads): chunks alone and AND causal (both alignments), selected RoPE or none, GQA, Nq != Nk; against float64 and the uploaded-schedule path', async () => {
  const ctx = await getContext();
  const r = rng(64);
  try {
    for (let i = 0; i < 10; i++) {
      const dim = [8, 12][i % 2]!;
      const c = randomCfg(r, { batch: 1, nk: int(r, 16, 90), dim, dimV: pick(r, [dim, 4]) });
      c.nq = i % 3 === 0 ? int(r, 1, c.nk) : c.nk;
      const causal = i % 4 !== 3;
      const align = pick(r, ['top-left', 'bottom-right'] as const);
      const chunks = randomChunks(r, c.nq, c.nk, pick(r, [1, c.heads]), causal);
      const pattern: PatternSpec = causal ? { kind: 'and', parts: [chunks, { kind: 'causal', align }] } : chunks;
      const opts: AttentionOptions = { pattern, tile: { q: pick(r, [4, 8]), kv: pick(r, [8, 16, 32]) }, ...(i % 2 === 0 ? { rope: {}, ropePositions: 'selected' as const } : {}) };
      const [q, k, v] = tensors(c, 1600 + i);
      const { problem } = planAttention(q, k, v, opts);
      const what = `#${i} C=${chunks.chunkSize} T=${chunks.queryTile} causal=${causal && align} ${JSON.stringify(c)} ${JSON.stringify(opts.tile)} rope=${i % 2 === 0}`;
      // the planner the kernel uses picks the walk
      assert.equal(planFused(problem, ctx.limits, FUSED_TUNING[ctx.adapterClass], ctx.subgroupMinSize).spec.schedule, 'chunks', what);
      await check(problem, q, k, v, what);
      const walked = await runWebGPUFused(problem, q.data, k.data, v.data, { poison: true });
      setFusedTuning({ analytic: false });
      const listed = await runWebGPUFused(problem, q.data, k.data, v.data, { poison: true }).finally(() => setFusedTuning(undefined));
      assert.ok(relError(walked.out, listed.out) < TOL, `${what}: walked against uploaded`);
    }
  } finally {
    setFusedTuning(undefined);
  }
});

// One tile shape for the RoPE tests (LongHeads below uses it too: selectTile 8, 32 keys): lavapipe
// compiles each new pipeline for seconds, and a pipeline depends on head dims and tiles only.
const ropeTile = { q: 8, kv: 32 };

gpuTest('RoPE, absolute positions: causal top-left and bottom-right, windows, Nq != Nk, GQA, partial rotary dims', async () => {
  const r = rng(62);
  for (let i = 0; i < 8; i++) {
    // D 12 with 12 or 8 rotated dims pairs lanes across vec4s; D 6 takes the scalar path
    const dim = [8, 12, 6][i % 3]!;
    const c = randomCfg(r, { dim, dimV: dim });
    const dims = [dim, dim - (dim % 4 === 0 ? 4 : 2), 2][(i >> 1) % 3]!;
    const opts: AttentionOptions = {
      causal: pick(r, [false, 'top-left', 'bottom-right'] as const),
      rope: { dims, base: pick(r, [10000, 100]) },
      tile: ropeTile,
      ...(i % 3 === 2 ? { window: [int(r, 0, 12), int(r, -1, 6)] as [number, number] } : {}),
    };
    await attnCase(c, opts, 1400 + i, `rope ${JSON.stringify(opts)}`);
  }
  // decode-like: a few queries at large positions (bottom-right), and more queries than keys
  await attnCase({ batch: 1, nq: 3, nk: 700, heads: 2, kvHeads: 1, dim: 8, dimV: 8 }, { causal: 'bottom-right', rope: {}, tile: ropeTile }, 1410, 'rope decode');
  await attnCase({ batch: 1, nq: 50, nk: 9, heads: 1, kvHeads: 1, dim: 8, dimV: 8 }, { rope: { dims: 4 }, tile: ropeTile }, 1411, 'rope nq > nk');
});

gpuTest("RoPE, 'selected' positions: random chunk lists, alone and with causal; GQA, partial dims, other blockings", async () => {
  const r = rng(63);
  try {
    for (let i = 0; i < 8; i++) {
      // the last case: GPU query tiles cut to 4 rows (a divisor of the chunk-list tile), 10 keys
      if (i === 7) setFusedTuning({ rm: 3, tx: 3, maxRows: 6, maxKeys: 10 });
      const dim = [8, 12][i % 2]!;
      const c = randomCfg(r, { batch: 1, nk: int(r, 16, 80), dim, dimV: dim });
      c.nq = i % 3 === 0 ? int(r, 1, c.nk) : c.nk;
      const causal = (i >> 1) % 2 === 0;
      const chunks = randomChunks(r, c.nq, c.nk, pick(r, [1, c.heads]), causal);
      const pattern: PatternSpec = causal ? { kind: 'and', parts: [chunks, { kind: 'causal', align: 'bottom-right' }] } : chunks;
      const rope = { dims: pick(r, [dim, dim - 4]), base: pick(r, [10000, 50]) };
      await attnCase(c, { pattern, rope, ropePositions: 'selected', tile: ropeTile }, 1500 + i, `selected C=${chunks.chunkSize} T=${chunks.queryTile} causal=${causal} ${JSON.stringify(rope)}`);
    }
  } finally {
    setFusedTuning(undefined);
  }
});

gpuTest("LongHeads prefill and LongHeadsCache decode: backend 'webgpu' matches 'cpu'", async () => {
  const dim = 8;
  for (const [n, chunkSize, slots, selectTile, heads, kvHeads, ropeDims] of [
    [150, 8, 4, 8, 2, 1, 8],
    [200, 16, 3, 8, 1, 1, 4],
    [100, 8, 3, 1, 2, 2, 8],
  ] as const) {
    const c: Cfg = { batch: 1, nq: n, nk: n, heads, kvHeads, dim, dimV: dim };
    const [q, k, v] = tensors(c, 1600 + n);
    const opts = { chunkSize, budget: chunkSize * slots, selectTile, rope: { dims: ropeDims } };
    const gpu = await longHeadsAttention(q, k, v, { ...opts, backend: 'webgpu' });
    const cpu = await longHeadsAttention(q, k, v, { ...opts, backend: 'cpu' });
    const what = JSON.stringify({ n, ...opts, heads, kvHeads });
    assert.ok(relError(gpu.out.data, cpu.out.data) < TOL, `${what}: out relErr ${relError(gpu.out.data, cpu.out.data)}`);
    assert.ok(relError(gpu.lse.data, cpu.lse.data) < TOL, `${what}: lse`);
  }
  // decode: the same tokens through a cache on each backend; selection happens past the budget
  const [H, Hk, D, C, n, pre] = [2, 1, 8, 8, 60, 40];
  const [q, k, v] = tensors({ batch: 1, nq: n, nk: n, heads: H, kvHeads: Hk, dim: D, dimV: D }, 1700);
  const caches = (['webgpu', 'cpu'] as const).map((backend) => new LongHeadsCache(H, Hk, D, { chunkSize: C, budget: 3 * C, backend }));
  const rows = (t: Tensor, w: number, a: number, b: number): Tensor => ({ data: t.data.slice(a * w, b * w), shape: [b - a, w / D, D] });
  for (const cache of caches) await cache.append(rows(q, H * D, 0, pre), rows(k, Hk * D, 0, pre), rows(v, Hk * D, 0, pre));
  for (let i = pre; i < pre + 7; i++) {
    const res = [];
    for (const cache of caches) res.push(await cache.decode(rows(q, H * D, i, i + 1), rows(k, Hk * D, i, i + 1), rows(v, Hk * D, i, i + 1)));
    const e = relError(res[0]!.out.data, res[1]!.out.data);
    assert.ok(e < TOL, `decode step ${i}: relErr ${e}`);
  }
  caches.forEach((c) => c.dispose());
});

// ---------------------------------------------------------------------------------------------
// Buffers, stability, device loss.

gpuTest('GPU tensors: inputs stay on the device, outputs come back as buffers', async () => {
  const c = randomCfg(rng(21), { batch: 1, nq: 20, nk: 24 });
  const [q, k, v] = tensors(c, 21);
  const { problem } = planAttention(q, k, v, { causal: true });
  const before = bufferStats().live;
  const [qg, kg, vg] = await Promise.all([q, k, v].map((t) => toGpu(t.data, t.shape)));
  const res = await runWebGPUFusedTensors(problem, qg!, kg!, vg!);
  const out = await fromGpu(res.out);
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  assert.ok(relError(out, ref.out) < TOL);
  for (const t of [qg!, kg!, vg!, res.out, res.lse]) releaseTensor(t);
  assert.equal(bufferStats().live, before);
  // a released tensor cannot be read back (it used to come back as zeros)
  await assert.rejects(fromGpu(res.out), (e: unknown) => e instanceof TilewiseError && e.arg === 'tensor');
});

gpuTest('shared-memory inputs and concurrent calls', async () => {
  const sh = (t: Tensor): Tensor => {
    const d = new Float32Array(new SharedArrayBuffer(t.data.byteLength));
    d.set(t.data);
    return { data: d, shape: t.shape };
  };
  const c: Cfg = { batch: 2, nq: 19, nk: 23, heads: 2, kvHeads: 2, dim: 8, dimV: 8 };
  const [q, k, v] = tensors(c, 51).map(sh) as [Tensor, Tensor, Tensor];
  const bias = sh(randn([c.heads, c.nq, c.nk], 52));
  const problems = [{ bias }, { causal: true }, { window: [3, 3] as [number, number] }, {}].map((o) => planAttention(q, k, v, o).problem);
  await Promise.all(problems.map((p, i) => check(p, q, k, v, `concurrent ${i}`)));
});

gpuTest('stability: 1,000 consecutive small calls, live buffer count flat', async () => {
  const c: Cfg = { batch: 1, nq: 12, nk: 12, heads: 2, kvHeads: 1, dim: 8, dimV: 8 };
  const [q, k, v] = tensors(c, 31);
  const { problem } = planAttention(q, k, v, { causal: true });
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  const base = bufferStats().live;
  let last: Float32Array | undefined;
  for (let i = 0; i < 1000; i++) {
    last = (await runWebGPUFused(problem, q.data, k.data, v.data)).out;
    assert.equal(bufferStats().live, base, `live buffers grew at call ${i}`);
  }
  assert.ok(relError(last!, ref.out) < TOL);
});

gpuTest('device loss: the next call throws a TilewiseError, the one after gets a new device', async () => {
  const c: Cfg = { batch: 1, nq: 9, nk: 9, heads: 1, kvHeads: 1, dim: 8, dimV: 8 };
  const [q, k, v] = tensors(c, 41);
  const { problem } = planAttention(q, k, v);
  const old = await getDevice();
  old.destroy();
  await assert.rejects(runWebGPUFused(problem, q.data, k.data, v.data), (e: unknown) => e instanceof TilewiseError && /lost/.test(e.message));
  const got = await runWebGPUFused(problem, q.data, k.data, v.data);
  assert.notEqual(await getDevice(), old);
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  assert.ok(relError(got.out, ref.out) < TOL);
});

gpuTest('LSE merge kernel: random parts (empty rows in one or both), f32 and f16, against the float64 merge', async () => {
  const ctx = await getContext();
  const r = rng(4400);
  const start = bufferStats().live;
  for (let i = 0; i < 6; i++) {
    const f16 = i % 2 === 1 && ctx.features.has('shader-f16');
    const dtype = f16 ? 'f16' : 'f32';
    const [R, H, DV] = [int(r, 1, 40), int(r, 1, 4), pick(r, [4, 6, 8, 3])];
    const round = (x: Float32Array) => (f16 ? Float32Array.from(x, roundF16) : x);
    const outs = [1, 2].map((s) => round(randn([R * H * DV], 4410 + 2 * i + s).data));
    // lse: finite spread over +-30, or -inf (an empty part) in either or both
    const lses = [0, 1].map(() => Float32Array.from({ length: R * H }, () => (r() < 0.2 ? -Infinity : (r() - 0.5) * 60)));
    const want = new Float64Array(R * H * DV);
    const wantLse = new Float64Array(R * H);
    for (let x = 0; x < R * H; x++) {
      const [la, lb] = [lses[0]![x]!, lses[1]![x]!];
      const mx = Math.max(la, lb);
      if (mx === -Infinity) {
        wantLse[x] = -Infinity;
        continue;
      }
      const [wa, wb] = [Math.exp(la - mx), Math.exp(lb - mx)];
      wantLse[x] = mx + Math.log(wa + wb);
      for (let c = 0; c < DV; c++) want[x * DV + c] = (wa * outs[0]![x * DV + c]! + wb * outs[1]![x * DV + c]!) / (wa + wb);
    }
    const parts = await Promise.all(
      [0, 1].map(async (p) => ({ out: await toGpu(outs[p]!, [R, H, DV], ctx, dtype), lse: await toGpu(lses[p]!, [R, H], ctx) })),
    );
    // a poisoned destination for out: an element the kernel skips stays NaN
    const outBuf = uploadTensorBits(ctx, f16 ? new Uint16Array(Math.ceil((R * H * DV) / 2) * 2).fill(0x7e00) : new Float32Array(R * H * DV).fill(NaN));
    const res = await mergeAttentionsGpu(parts[0]!, parts[1]!, { out: wrapBuffer(outBuf, [R, H, DV], 0, dtype) });
    const got = await fromGpu(res.out, ctx);
    const e = relError(got, want);
    assert.ok(e < (f16 ? 2e-3 : TOL), `merge ${dtype} R${R} H${H} DV${DV}: relErr ${e}`);
    compareLse(await fromGpu(res.lse, ctx), wantLse, `merge ${dtype}`);
    parts.forEach((p) => [p.out, p.lse].forEach(releaseTensor));
    releaseTensor(res.lse);
    outBuf.destroy();
  }
  assert.equal(bufferStats().live, start, 'no GPU buffer left behind');
  const a = { out: await toGpu(new Float32Array(8), [2, 1, 4], ctx), lse: await toGpu(new Float32Array(2), [2, 1], ctx) };
  try {
    await assert.rejects(mergeAttentionsGpu(a, { ...a, lse: { ...a.lse, shape: [1, 2] } }), (e: unknown) => e instanceof TilewiseError && e.arg === 'b');
    await assert.rejects(mergeAttentionsGpu(a, a, { out: a.out }), (e: unknown) => e instanceof TilewiseError && e.arg === 'out');
  } finally {
    [a.out, a.lse].forEach(releaseTensor);
  }
});

gpuTest('neighborhood additionalKeys on GPU tensors: merged on the device, equal to the checked host path', async () => {
  const { neighborhoodAttention } = await import('../src/api.js');
  const ctx = await getContext();
  const r = rng(4450);
  const start = bufferStats().live;
  for (let i = 0; i < 4; i++) {
    const rank = 1 + (i % 3);
    const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 30 : rank === 2 ? 9 : 5));
    const nTok = grid.reduce((a, b) => a * b, 1);
    const c = randomCfg(r, { nq: nTok, nk: nTok, dim: pick(r, [8, 12]) });
    c.dimV = pick(r, [c.dim, 4, 6]);
    const [q, k, v] = tensors(c, 4460 + i, grid, grid);
    const M = int(r, 1, 6);
    const ak = randn([c.batch, M, c.kvHeads, c.dim], 4470 + i);
    const av = randn([c.batch, M, c.kvHeads, c.dimV], 4480 + i);
    const opts: NeighborhoodOptions = { ...randomNA(r, grid, true), impl: pick(r, ['fused', 'naive', 'unfused'] as const) };
    // the host path is checked against float64 over concatenated keys in property.test.ts
    const want = await neighborhoodAttention(q, k, v, { ...opts, additionalKeys: ak, additionalValues: av, backend: 'cpu' });
    const up = await Promise.all([q, k, v, ak, av].map((x) => toGpu(x.data, x.shape, ctx)));
    const nOut = want.out.data.length;
    const outBuf = uploadTensorBits(ctx, new Float32Array(nOut).fill(NaN));
    const lseBuf = uploadTensorBits(ctx, new Float32Array(want.lse.data.length).fill(NaN));
    const res = await neighborhoodAttention(up[0]!, up[1]!, up[2]!, { ...opts, additionalKeys: up[3]!, additionalValues: up[4]!, out: wrapBuffer(outBuf, [nOut]), lse: wrapBuffer(lseBuf, [want.lse.data.length]) });
    assert.equal(res.out.buffer, outBuf, 'merged into the given buffer');
    const what = `${grid} M${M} ${JSON.stringify(opts)} ${JSON.stringify(c)}`;
    const e = relError(await fromGpu(res.out, ctx), Float64Array.from(want.out.data));
    assert.ok(e < TOL, `${what}: out relErr ${e}`);
    compareLse(await fromGpu(res.lse, ctx), Float64Array.from(want.lse.data), what);
    up.forEach(releaseTensor);
    outBuf.destroy();
    lseBuf.destroy();
  }
  assert.equal(bufferStats().live, start, 'intermediate results released');
  const gq = await toGpu(randn([9 * 4], 4490).data, [1, 3, 3, 1, 4], ctx);
  try {
    await assert.rejects(neighborhoodAttention(gq, gq, gq, { kernelSize: 3, additionalKeys: randn([1, 2, 1, 4], 1), additionalValues: randn([1, 2, 1, 4], 2) }), (e: unknown) => e instanceof TilewiseError && e.arg === 'additionalKeys');
  } finally {
    releaseTensor(gq);
  }
});

gpuTest('public API on GPU tensors: f32 and f16 storage against the reference, results left on the device; bad inputs rejected', async (t) => {
  const { attention, neighborhoodAttention } = await import('../src/api.js');
  const ctx = await getContext();
  const dtypes = ctx.features.has('shader-f16') ? (['f32', 'f16'] as const) : (['f32'] as const);
  if (dtypes.length === 1) t.diagnostic(`no shader-f16 on ${ctx.description}: f16 cases not run`);
  const r = rng(4300);
  const start = bufferStats().live;
  const NAN_F16 = 0x7e00;
  for (let i = 0; i < 8; i++) {
    const dtype = dtypes[i % dtypes.length]!;
    const f16 = dtype === 'f16';
    const round = (x: Float32Array) => (f16 ? Float32Array.from(x, roundF16) : x);
    const na = i % 4 === 3;
    const grid = na ? [int(r, 5, 9), int(r, 5, 9)] : [int(r, 4, 60)];
    const nTok = grid.reduce((a, b) => a * b, 1);
    const c = randomCfg(r, { nq: nTok, nk: nTok, dim: pick(r, [8, 16, 12]) });
    c.dimV = pick(r, [c.dim, 4, 6]);
    const [q, k, v] = tensors(c, 4310 + i, grid, grid);
    const naOpts: NeighborhoodOptions = { kernelSize: [3, 5], dilation: [1, pick(r, [1, 2])], isCausal: [r() < 0.5, false] };
    const opts: AttentionOptions = pick(r, [{ causal: true, rope: {} }, { window: [int(r, 0, 9), int(r, 0, 9)] as const, softcap: 3 }, { causal: 'bottom-right' as const }, {}]);
    const plan = na ? planNA(q, k, v, naOpts) : planAttention(q, k, v, opts);
    const ref = referenceAttention(plan.problem, { q: round(q.data), k: round(k.data), v: round(v.data) });
    const up = (x: Tensor) => toGpu(x.data, x.shape, ctx, dtype);
    const [gq, gk, gv] = await Promise.all([up(q), up(k), up(v)]);
    // poisoned destinations: NaN everywhere, so an unwritten element fails
    const nOut = ref.out.length;
    const outBuf = uploadTensorBits(ctx, f16 ? new Uint16Array(Math.ceil(nOut / 2) * 2).fill(NAN_F16) : new Float32Array(nOut).fill(NaN));
    const lseBuf = uploadTensorBits(ctx, new Float32Array(ref.lse.length).fill(NaN));
    const out = wrapBuffer(outBuf, [nOut], 0, dtype);
    const lse = wrapBuffer(lseBuf, [ref.lse.length]);
    const res = na ? await neighborhoodAttention(gq, gk, gv, { ...naOpts, out, lse }) : await attention(gq, gk, gv, { ...opts, out, lse });
    assert.equal(res.out.buffer, outBuf, 'results stay in the given GPU buffers');
    assert.deepEqual(res.out.shape, [c.batch, ...grid, c.heads, c.dimV]);
    assert.equal(res.out.dtype ?? 'f32', dtype);
    const got = await fromGpu(res.out, ctx);
    const e = relError(got, ref.out);
    // f16: the output is rounded to half precision (relative 2^-11) on top of f32 arithmetic
    assert.ok(e < (f16 ? 2e-3 : TOL), `${dtype} ${JSON.stringify(na ? naOpts : opts)} ${JSON.stringify(c)}: out relErr ${e}`);
    compareLse(await fromGpu(res.lse, ctx), ref.lse, `${dtype} lse`);
    for (const b of [gq, gk, gv]) releaseTensor(b);
    outBuf.destroy();
    lseBuf.destroy();
  }
  assert.equal(bufferStats().live, start, 'no GPU buffer left behind');
  // bad inputs: typed errors naming the argument
  const [q, k, v] = tensors({ batch: 1, nq: 8, nk: 8, heads: 1, kvHeads: 1, dim: 8, dimV: 8 }, 4390);
  const [gq, gk] = await Promise.all([toGpu(q.data, q.shape, ctx), toGpu(k.data, k.shape, ctx)]);
  try {
    await assert.rejects(attention(gq, gk, v as never), (e: unknown) => e instanceof TilewiseError && e.arg === 'v');
    await assert.rejects(attention(gq, gk, gk, { backend: 'cpu' }), (e: unknown) => e instanceof TilewiseError && e.arg === 'backend');
    await assert.rejects(attention(gq, gk, gk, { out: new Float32Array(8) }), (e: unknown) => e instanceof TilewiseError && e.arg === 'out');
    await assert.rejects(attention(gq, { ...gk, shape: [1, 8, 1, 9] }, gk), (e: unknown) => e instanceof TilewiseError && e.arg === 'k');
    if (dtypes.length === 2) {
      const h = await toGpu(k.data, k.shape, ctx, 'f16');
      try {
        await assert.rejects(attention(gq, h, h), (e: unknown) => e instanceof TilewiseError && e.arg === 'k' && /dtype/.test(e.message));
        // every NA kernel takes f16 storage (test/f16.test.ts), but one element type for q, k, v
        await assert.rejects(neighborhoodAttention(gq, h, h, { kernelSize: 3, impl: 'naive' }), (e: unknown) => e instanceof TilewiseError && e.arg === 'k' && /dtype/.test(e.message));
      } finally {
        releaseTensor(h);
      }
    }
  } finally {
    releaseTensor(gq);
    releaseTensor(gk);
  }
});

/** A storage buffer holding `bits` (a destination the caller owns, not counted by bufferStats). */
function uploadTensorBits(ctx: Awaited<ReturnType<typeof getContext>>, bits: Float32Array | Uint16Array): GPUBuffer {
  const b = ctx.device.createBuffer({ size: Math.ceil(bits.byteLength / 4) * 4, usage: 0x80 | 0x4 | 0x8 }); // STORAGE | COPY_SRC | COPY_DST
  ctx.device.queue.writeBuffer(b, 0, bits.buffer, bits.byteOffset, bits.byteLength);
  return b;
}

gpuTest("public API: backend 'webgpu' matches the CPU backend; 'auto' picks one; naQK/naAV ops", async () => {
  const { attention, neighborhoodAttention, naAV, naQK } = await import('../src/api.js');
  const r = rng(4242);
  for (let t = 0; t < 6; t++) {
    const c = randomCfg(r);
    const [q, k, v] = tensors(c, 100 + t);
    const causal = pick(r, [false, true, 'bottom-right'] as const);
    const gpu = await attention(q, k, v, { backend: 'webgpu', causal });
    const cpu = await attention(q, k, v, { backend: 'cpu', causal });
    assert.ok(relError(gpu.out.data, cpu.out.data) < TOL, `attention ${JSON.stringify(c)} causal=${causal}`);
    assert.deepEqual(gpu.out.shape, cpu.out.shape);
    const auto = await attention(q, k, v, { backend: 'auto', causal });
    assert.ok(relError(auto.out.data, cpu.out.data) < TOL);
  }
  const n = int(r, 6, 14);
  const [q, k, v] = tensors({ batch: 1, nq: n * n, nk: n * n, heads: 2, kvHeads: 2, dim: 16, dimV: 16 }, 7, [n, n], [n, n]);
  const opts: NeighborhoodOptions = { kernelSize: [5, 3], dilation: [1, 2] };
  const cpu = await neighborhoodAttention(q, k, v, { ...opts, backend: 'cpu' });
  for (const impl of ['fused', 'naive', 'unfused'] as const) {
    const out = new Float32Array(cpu.out.data.length).fill(NaN);
    const lse = new Float32Array(cpu.lse.data.length).fill(NaN);
    await neighborhoodAttention(q, k, v, { ...opts, backend: 'webgpu', impl, out, lse });
    assert.ok(relError(out, cpu.out.data) < TOL, `NA ${impl}: out`);
    assert.ok(relError(lse, cpu.lse.data) < TOL, `NA ${impl}: lse`);
  }
  const qkOpts: NeighborhoodOptions = { ...opts, isCausal: [true, false], softcap: 4 };
  const scores = await naQK(q, k, { ...qkOpts, backend: 'webgpu', out: new Float32Array(n * n * 2 * 15).fill(NaN) });
  const scoresCpu = await naQK(q, k, { ...qkOpts, backend: 'cpu' });
  assert.deepEqual(scores.out.shape, [1, n, n, 2, 15]);
  compareScores(scores.out.data, scoresCpu.out.data, 'naQK op');
  assert.ok(relError(scores.lse.data, scoresCpu.lse.data) < TOL, 'naQK op: lse');
  const weights = { data: scoresCpu.out.data.map((x) => (x === -Infinity ? 0 : Math.exp(x - 4))), shape: scoresCpu.out.shape };
  const av = await naAV(weights, v, { ...qkOpts, backend: 'webgpu' });
  const avCpu = await naAV(weights, v, { ...qkOpts, backend: 'cpu' });
  assert.deepEqual(av.out.shape, avCpu.out.shape);
  assert.ok(relError(av.out.data, avCpu.out.data) < TOL, 'naAV op');
});

gpuTest('NATTEN window rule: the one WGSL copy (na-rule-wgsl.ts) equals patterns/rules.ts on every axis length, kernel, stride and causality up to 24', async () => {
  const { device } = await getContext();
  const cases: number[] = [];
  for (let n = 1; n <= 24; n++)
    for (let K = 1; K <= n; K++)
      for (let s = 1; s <= K; s++) for (const c of [0, 1]) for (let x = 0; x < n; x++) cases.push(x, n, K, s + (c << 16));
  const count = cases.length / 4;
  const code = `${NA_WINDOW_WGSL}
@group(0) @binding(0) var<storage, read> cases: array<vec4<i32>>;
@group(0) @binding(1) var<storage, read_write> res: array<vec2<i32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x + id.y * 65535u * 64u;
  if (i >= ${count}u) { return; }
  let c = cases[i];
  res[i] = na_window(c.x, c.y, c.z, c.w & 0xffff, (c.w >> 16u) != 0);
}`;
  const pipeline = await device.createComputePipelineAsync({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const input = device.createBuffer({ size: cases.length * 4, usage: BufferUsage.STORAGE | BufferUsage.COPY_DST });
  device.queue.writeBuffer(input, 0, Int32Array.from(cases));
  const output = device.createBuffer({ size: count * 8, usage: BufferUsage.STORAGE | BufferUsage.COPY_SRC });
  const readback = device.createBuffer({ size: count * 8, usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: input } }, { binding: 1, resource: { buffer: output } }] }));
  const groups = Math.ceil(count / 64);
  pass.dispatchWorkgroups(Math.min(groups, 65535), Math.ceil(groups / 65535));
  pass.end();
  enc.copyBufferToBuffer(output, 0, readback, 0, count * 8);
  device.queue.submit([enc.finish()]);
  await readback.mapAsync(MapMode.READ);
  const got = new Int32Array(readback.getMappedRange().slice(0));
  readback.unmap();
  [input, output, readback].forEach((b) => b.destroy());
  let bad = 0;
  let first = '';
  for (let i = 0; i < count; i++) {
    const [x, n, K, w] = cases.slice(4 * i, 4 * i + 4) as [number, number, number, number];
    const rule = neighborhoodRule(n, K, w & 0xffff, w >> 16 !== 0);
    if (got[2 * i] !== rule.start(x) || got[2 * i + 1] !== rule.end(x)) {
      if (!bad++) first = `x ${x} n ${n} K ${K} stride ${w & 0xffff} causal ${w >> 16}: WGSL [${got[2 * i]}, ${got[2 * i + 1]}], rules.ts [${rule.start(x)}, ${rule.end(x)}]`;
    }
  }
  assert.equal(bad, 0, `${bad} of ${count} windows differ; first: ${first}`);
});
