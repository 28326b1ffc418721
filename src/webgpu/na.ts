/// <reference types="@webgpu/types" />
import { prod } from '../patterns/geometry.js';
import { TilewiseError } from '../errors.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnProblem } from '../problem.js';
import { tileFor } from '../problem.js';
import { BufferUsage, type GpuContext, type GpuLimits } from './device.js';
import { fitTile } from './fused.js';
import { NA_UNIFORMS, type TiledSpec, naAVProgram, naQKProgram, naSoftmaxProgram, naiveProgram, tiledBlocking, tiledThreads, tiledWorkgroupBytes } from './na-wgsl.js';
import {
  type KernelOptions,
  type Launch,
  type TensorKernel,
  bindingOf,
  type PassTimer,
  bindingsFit,
  gridFor,
  threadGrid,
  ioBindingSizes,
  launch,
  launchAttn,
  onDevice,
  onHost,
  onHostArrays,
  rpbLayout,
  storesF16,
  uniformBuffer,
  withDevice,
} from './run.js';
import { type GpuDType, type GpuTensor, createBuffer, dtypeOf, uploadBuffer } from './tensor.js';
import { getPipeline, vecWidth } from './wgsl.js';
import { problemFields } from './tile-wgsl.js';

/** The named fields of an object. */
const pick = <T extends object, K extends keyof T>(o: T, keys: readonly K[]): Pick<T, K> => Object.fromEntries(keys.map((k) => [k, o[k]])) as Pick<T, K>;

/**
 * Neighborhood attention on WebGPU without a schedule: every kernel computes windows analytically
 * (na-wgsl.ts). NATTEN's naive kernel (one thread per query and head, online softmax) and the
 * unfused pipeline: naQK writes the scores [qRows, H, prod(kernelSize)] (-inf where a slot has no
 * key), a row softmax normalises them in place and gives the LSE, naAV multiplies them with V.
 * q, k, v and out may be f16 GPU tensors (`shader-f16`): loads widen them to f32; the scores and
 * lse stay f32 (na-wgsl.ts).
 */

type NASpec = Extract<PatternSpec, { kind: 'neighborhood' }>;
type Own = (b: GPUBuffer) => GPUBuffer;
type Bind = GPUBufferBinding | GPUBuffer;

/** Whether `family` runs `problem`: a plain neighborhood pattern over dense batches. */
function naProblem(problem: AttnProblem, family: string): true | string {
  const p = problem.pattern;
  if (p.kind !== 'neighborhood') return `the ${family} kernel needs a plain neighborhood pattern`;
  if (problem.bias) return `the ${family} kernel takes no additive bias`;
  if (p.kernelSize.length > 3) return `the ${family} kernel supports 1 to 3 token axes`;
  const tokens = prod(problem.seqs[0]?.qGrid ?? [0]);
  if (!problem.seqs.every((s, i) => s.qOff === i * tokens && s.kOff === i * tokens && s.b === i)) return `the ${family} kernel needs dense batches`;
  return true;
}

/** Whether the naive kernel runs `problem`. */
export const naiveCanRun = (problem: AttnProblem): true | string => naProblem(problem, 'naive');

const windowVolume = (problem: AttnProblem): number => prod((problem.pattern as NASpec).kernelSize);
const attnCount = (problem: AttnProblem): number => problem.qRows * problem.heads * windowVolume(problem);

/** Throws naming `attn` when the scores do not fit one storage binding of the device. */
function checkAttnFits(problem: AttnProblem, limits: GpuLimits): void {
  const fit = bindingsFit([['attn', attnCount(problem) * 4]], limits);
  if (fit !== true)
    throw new TilewiseError('attn', "the scores [rows, heads, prod(kernelSize)] do not fit one GPU storage binding; use impl 'fused' or the CPU", `${fit} (maxStorageBufferBindingSize)`);
}

/**
 * Whether the unfused pipeline runs `problem` on a device with these limits, q, k, v and out
 * holding `dtype` elements: true, or the reason.
 */
export function unfusedCanRun(problem: AttnProblem, limits: GpuLimits, dtype: GpuDType = 'f32'): true | string {
  const why = naProblem(problem, 'unfused');
  if (why !== true) return why;
  const { dim: D, dimV: DV } = problem;
  const fit = bindingsFit([['attn', attnCount(problem) * 4], ...ioBindingSizes(problem, dtype)], limits);
  if (fit !== true) return fit;
  if (tiledWorkgroupBytes({ kind: 'qk', rank: 1, dim: Math.max(D, DV), rows: 1, keys: 1 }) > limits.maxComputeWorkgroupStorageSize)
    return `head dims ${D}, ${DV} need more than the ${limits.maxComputeWorkgroupStorageSize} bytes of workgroup memory`;
  return true;
}

/**
 * Uniform values of the family. `tile` (the tiled kernels' query tile per axis) sets tiles per
 * axis from the longest dilation group; unused axes get length, kernel and tile 1.
 */
function naParams(problem: AttnProblem, total: number, groupsX: number, tiled?: { tile: readonly number[]; spec: TiledSpec }): ArrayBuffer {
  const tile = tiled?.tile ?? [];
  const na = problem.pattern as NASpec;
  const grid = problem.seqs[0]!.qGrid;
  const rpb = rpbLayout(na.kernelSize);
  const axis = (name: string, f: (a: number) => number | undefined, fill: number) => Object.fromEntries([0, 1, 2].map((a) => [`${name}${a}`, f(a) ?? fill]));
  const longest = (a: number) => Math.ceil(grid[a]! / na.dilation[a]!);
  return NA_UNIFORMS.pack({
    heads: problem.heads,
    kvHeads: problem.kvHeads,
    group: problem.heads / problem.kvHeads,
    total,
    groupsX,
    tokens: prod(grid),
    wv: windowVolume(problem),
    scale: problem.scale,
    softcap: problem.softcap,
    negInf: -Infinity,
    nanBits: 0x7fc00000,
    rpbVol: rpb.volume,
    rpbConst: rpb.base,
    ...axis('len', (a) => grid[a], 1),
    ...axis('kernel', (a) => na.kernelSize[a], 1),
    ...axis('dil', (a) => na.dilation[a], 1),
    ...axis('stride', (a) => na.stride[a], 1),
    ...axis('causal', (a) => (a < grid.length ? Number(na.isCausal[a]) : undefined), 0),
    ...axis('rpbStride', (a) => rpb.strides[a], 0),
    ...axis('tile', (a) => tile[a], 1),
    ...axis('tiles', (a) => (tile[a] === undefined ? undefined : Math.ceil(longest(a) / tile[a]!)), 1),
    ...(tiled ? tiledBlocking(tiled.spec) : { vecs: 0, rm: 0, rn: 0, rv: 0 }),
  } as Parameters<typeof NA_UNIFORMS.pack>[0]);
}

// ---------------------------------------------------------------------------------------------
// Naive.

const naiveKernel: TensorKernel = async (ctx: GpuContext, problem, q, k, v, opts) => {
  const why = naiveCanRun(problem);
  if (why !== true) throw new TilewiseError('webgpu', 'cannot run this problem', why);
  const { device, limits } = ctx;
  const spec = {
    f16: storesF16(ctx, q, 'q'),
    rank: (problem.pattern as NASpec).kernelSize.length,
    ...pick(problemFields(problem), ['dim', 'dimV', 'wq', 'wv', 'softcap', 'rpb']),
    threads: Math.min(64, limits.maxComputeInvocationsPerWorkgroup),
    ...(opts.screen ? { screen: true } : {}),
  } as const;
  const pipeline = await getPipeline(device, naiveProgram, spec);
  return launchAttn(ctx, problem, q, k, v, opts, 'naive', (io, own) => {
    const total = problem.qRows * problem.heads;
    const groups = threadGrid(total, spec.threads, limits, 'q');
    const entries: Bind[] = [own(uniformBuffer(device, naParams(problem, total, groups[0]))), io.q, io.k, io.v, io.out, io.lse];
    if (problem.rpb) entries.push(own(uploadBuffer(device, problem.rpb.data, BufferUsage.STORAGE, 'tilewise rpb')));
    return { pipeline, entries, groups };
  });
};

/** Neighborhood attention with NATTEN's naive kernel on GPU tensors (nothing read back). */
export function runWebGPUNaiveTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions = {}): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  return onDevice(naiveKernel, problem, q, k, v, opts);
}

/** Neighborhood attention with NATTEN's naive kernel: host arrays in, out and lse back. */
export function runWebGPUNaive(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array, opts: { poison?: boolean; screen?: boolean } = {}): Promise<{ out: Float32Array; lse: Float32Array }> {
  return onHost(naiveKernel, problem, q, k, v, opts);
}

// ---------------------------------------------------------------------------------------------
// Unfused.

/**
 * Blocking of the tiled naQK / naAV kernels per adapter class (style.md 2): rows per thread,
 * threads per row, the query rows a workgroup aims for (at least `minRows`: the API's default
 * tiles are sized for the CPU, 2x2 for small 2-D kernels, too few for a workgroup) and may take,
 * and the keys staged per chunk. The CPU row is sized like the fused kernel's measured one; the
 * GPU row follows design.md 8, unmeasured.
 */
export interface UnfusedTuning {
  readonly rm: number;
  readonly tx: number;
  readonly minRows: number;
  readonly maxRows: number;
  readonly maxKeys: number;
  readonly unroll: boolean;
}

export const UNFUSED_TUNING: Readonly<Record<'cpu' | 'gpu', UnfusedTuning>> = {
  gpu: { rm: 4, tx: 8, minRows: 32, maxRows: 64, maxKeys: 64, unroll: true },
  cpu: { rm: 4, tx: 2, minRows: 16, maxRows: 32, maxKeys: 32, unroll: false },
};
let override: Partial<UnfusedTuning> | undefined;

/** Overrides the tuning table for every adapter class (undefined: back to the table). */
export function setUnfusedTuning(t: Partial<UnfusedTuning> | undefined): void {
  override = t;
}

const tuningFor = (adapterClass: 'cpu' | 'gpu'): UnfusedTuning => ({ ...UNFUSED_TUNING[adapterClass], ...(override ?? {}) });

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;
const pow2ceil = (x: number): number => 2 ** Math.ceil(Math.log2(Math.max(1, x)));

/**
 * Query tile (per axis) and kernel constants of a tiled kernel, the largest under the tuning caps
 * whose workgroup memory and thread count fit the device. Tiles stay within the longest dilation
 * group, and chunks within the largest key box a tile can need (tile + K + stride - 2 per axis).
 * The tile's queries may fill fewer than `rows` rows; the rest idle.
 */
export function planTiled(problem: AttnProblem, kind: 'qk' | 'av', limits: GpuLimits, tune: UnfusedTuning, f16 = false): { spec: TiledSpec; tile: number[] } {
  const na = problem.pattern as NASpec;
  const grid = problem.seqs[0]!.qGrid;
  const rank = grid.length;
  const longest = grid.map((L, a) => Math.ceil(L / na.dilation[a]!));
  const dim = kind === 'qk' ? problem.dim : problem.dimV;
  const w = vecWidth(dim);
  const maxThreads = Math.min(limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX);
  const want = tileFor(problem.qTile, rank).map((t, a) => Math.min(t, longest[a]!));
  // grow the smallest axis that can until the tile holds minRows queries
  for (;;) {
    const a = want.reduce((best, t, i) => (t < longest[i]! && (best < 0 || t < want[best]!) ? i : best), -1);
    if (a < 0 || prod(want) >= tune.minRows) break;
    want[a] = Math.min(2 * want[a]!, longest[a]!);
  }
  for (let rowCap = tune.maxRows; rowCap >= 1; rowCap = Math.floor(rowCap / 2)) {
    const tile = fitTile(want, rowCap);
    // rows and keys rounded up to powers of two: fewer distinct pipelines over problem shapes
    const nq = Math.min(rowCap, pow2ceil(prod(tile)));
    const rm = Math.min(tune.rm, nq);
    const box = prod(tile.map((t, a) => Math.min(longest[a]!, t + na.kernelSize[a]! + na.stride[a]! - 2)));
    for (let keyCap = tune.maxKeys; keyCap >= 1; keyCap = Math.floor(keyCap / 2)) {
      const nk = Math.min(keyCap, pow2ceil(box));
      const tx = Math.min(tune.tx, nk);
      const spec: TiledSpec = {
        kind,
        rank,
        dim,
        w,
        rows: roundUp(nq, rm),
        keys: roundUp(nk, tx),
        rm,
        tx,
        softcap: kind === 'qk' && problem.softcap > 0,
        rpb: kind === 'qk' && problem.rpb !== undefined,
        unroll: tune.unroll,
        f16,
      };
      if (tiledWorkgroupBytes(spec) <= limits.maxComputeWorkgroupStorageSize && tiledThreads(spec) <= maxThreads) return { spec, tile };
    }
  }
  throw new TilewiseError('dim', 'head dims are too large for this device’s workgroup memory', `${dim} with ${limits.maxComputeWorkgroupStorageSize} bytes`);
}

/** One dispatch of the pipeline, made synchronously from its bindings once the pipeline is compiled. */
type Step<B> = (b: B, own: Own) => Launch;

async function tiledStep(ctx: GpuContext, problem: AttnProblem, kind: 'qk' | 'av', f16: boolean, screen = false): Promise<Step<readonly Bind[]>> {
  const { device, limits } = ctx;
  const planned = planTiled(problem, kind, limits, tuningFor(ctx.adapterClass), f16);
  const tile = planned.tile;
  const spec = screen ? { ...planned.spec, screen: true } : planned.spec;
  const pipeline = await getPipeline(device, kind === 'qk' ? naQKProgram : naAVProgram, spec);
  const na = problem.pattern as NASpec;
  const grid = problem.seqs[0]!.qGrid;
  const items = problem.seqs.length * problem.heads * prod(na.dilation) * prod(grid.map((L, a) => Math.ceil(Math.ceil(L / na.dilation[a]!) / tile[a]!)));
  return (bufs, own) => {
    const groups = gridFor(items, limits, 'q');
    const entries = [own(uniformBuffer(device, naParams(problem, items, groups[0], { tile, spec }))), ...bufs];
    if (spec.rpb) entries.push(own(uploadBuffer(device, problem.rpb!.data, BufferUsage.STORAGE, 'tilewise rpb')));
    return { pipeline, entries, groups };
  };
}

/** naQK: q, k (f16 storage when `f16`) -> scores (attn, f32). */
const qkStep = async (ctx: GpuContext, problem: AttnProblem, f16: boolean, screen = false): Promise<Step<{ q: Bind; k: Bind; attn: Bind }>> => {
  const step = await tiledStep(ctx, problem, 'qk', f16, screen);
  return (b, own) => step([b.q, b.k, b.attn], own);
};

/** naAV: attn (f32), v -> out (v's element type). */
const avStep = async (ctx: GpuContext, problem: AttnProblem, f16: boolean, screen = false): Promise<Step<{ attn: Bind; v: Bind; out: Bind; lse?: Bind }>> => {
  const step = await tiledStep(ctx, problem, 'av', f16, screen);
  return (b, own) => step(screen ? [b.attn, b.v, b.out, b.lse!] : [b.attn, b.v, b.out], own);
};

/** Row softmax: LSE of every row, and the rows normalised in place when `normalize`. */
async function softmaxStep(ctx: GpuContext, problem: AttnProblem, normalize: boolean, screen = false): Promise<Step<{ attn: Bind; lse: Bind }>> {
  const { device, limits } = ctx;
  const spec = { normalize, threads: Math.min(64, limits.maxComputeInvocationsPerWorkgroup), ...(screen ? { screen: true } : {}) };
  const pipeline = await getPipeline(device, naSoftmaxProgram, spec);
  const total = problem.qRows * problem.heads;
  return (b, own) => {
    const groups = threadGrid(total, spec.threads, limits, 'q');
    return { pipeline, entries: [own(uniformBuffer(device, naParams(problem, total, groups[0]))), b.attn, b.lse], groups };
  };
}

function checkUnfused(problem: AttnProblem, limits: GpuLimits, dtype: GpuDType): void {
  const why = naProblem(problem, 'unfused');
  if (why !== true) throw new TilewiseError('webgpu', 'cannot run this problem', why);
  checkAttnFits(problem, limits);
  const fit = unfusedCanRun(problem, limits, dtype);
  if (fit !== true) throw new TilewiseError('webgpu', 'cannot run this problem', fit);
}

const unfusedKernel: TensorKernel = async (ctx, problem, q, k, v, opts) => {
  const f16 = storesF16(ctx, q, 'q');
  checkUnfused(problem, ctx.limits, dtypeOf(q));
  const screen = opts.screen === true;
  const [qk, softmax, av] = await Promise.all([qkStep(ctx, problem, f16, screen), softmaxStep(ctx, problem, true, screen), avStep(ctx, problem, f16, screen)]);
  return launchAttn(ctx, problem, q, k, v, opts, 'unfused', (io, own) => {
    // f32 whatever the storage (na-wgsl.ts tiledBindings)
    const attn = own(createBuffer(ctx.device, attnCount(problem) * 4, BufferUsage.STORAGE, 'tilewise attn'));
    return [qk({ q: io.q, k: io.k, attn }, own), softmax({ attn, lse: io.lse }, own), av({ attn, v: io.v, out: io.out, lse: io.lse }, own)];
  });
};

/** Neighborhood attention with NATTEN's unfused pipeline on GPU tensors (nothing read back). */
export function runWebGPUUnfusedTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions = {}): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  return onDevice(unfusedKernel, problem, q, k, v, opts);
}

/** Neighborhood attention with NATTEN's unfused pipeline: host arrays in, out and lse back. */
export function runWebGPUUnfused(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array, opts: { poison?: boolean; screen?: boolean } = {}): Promise<{ out: Float32Array; lse: Float32Array }> {
  return onHost(unfusedKernel, problem, q, k, v, opts);
}

type QKOptions = { poison?: boolean; attn?: GpuTensor; lse?: GpuTensor; timer?: PassTimer };
type AVOptions = { poison?: boolean; out?: GpuTensor; timer?: PassTimer };

async function naQKKernel(ctx: GpuContext, problem: AttnProblem, q: GpuTensor, k: GpuTensor, opts: QKOptions): Promise<{ attn: GpuTensor; lse: GpuTensor }> {
  const f16 = storesF16(ctx, q, 'q');
  checkUnfused(problem, ctx.limits, dtypeOf(q));
  const { heads: H, kvHeads: Hk, dim: D, qRows, kRows } = problem;
  const qb = bindingOf(q, qRows * H * D, 'q', [dtypeOf(q)]);
  const kb = bindingOf(k, kRows * Hk * D, 'k', [dtypeOf(q)]);
  const [qk, softmax] = await Promise.all([qkStep(ctx, problem, f16), softmaxStep(ctx, problem, false)]);
  const outs = [
    { name: 'attn', shape: [qRows, H, windowVolume(problem)], empty: -Infinity, ...(opts.attn ? { given: opts.attn } : {}) },
    { name: 'lse', shape: [qRows, H], empty: -Infinity, ...(opts.lse ? { given: opts.lse } : {}) },
  ];
  const [attn, lse] = await launch(ctx, 'naQK', outs, opts.poison ?? false, ([a, l], own) => [qk({ q: qb, k: kb, attn: a! }, own), softmax({ attn: a!, lse: l! }, own)], opts.timer);
  return { attn: attn!, lse: lse! };
}

async function naAVKernel(ctx: GpuContext, problem: AttnProblem, attn: GpuTensor, v: GpuTensor, opts: AVOptions): Promise<{ out: GpuTensor }> {
  const f16 = storesF16(ctx, v, 'v');
  checkUnfused(problem, ctx.limits, dtypeOf(v));
  const { heads: H, kvHeads: Hk, dimV: DV, qRows, kRows } = problem;
  const ab = bindingOf(attn, attnCount(problem), 'attn');
  const vb = bindingOf(v, kRows * Hk * DV, 'v', [dtypeOf(v)]);
  const av = await avStep(ctx, problem, f16);
  const outs = [{ name: 'out', shape: [qRows, H, DV], empty: 0, dtype: dtypeOf(v), ...(opts.out ? { given: opts.out } : {}) }];
  const [out] = await launch(ctx, 'naAV', outs, opts.poison ?? false, ([o], own) => av({ attn: ab, v: vb, out: o! }, own), opts.timer);
  return { out: out! };
}

/**
 * NATTEN's qk op on GPU tensors: scores attn [qRows, H, prod(kernelSize)] (-inf where a slot has
 * no key) and the LSE of each row [qRows, H], both f32 whether q and k are f32 or f16. `problem`
 * comes from planNA (its v is not read).
 */
export function runWebGPUNaQKTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, opts: QKOptions = {}): Promise<{ attn: GpuTensor; lse: GpuTensor }> {
  return withDevice((ctx) => naQKKernel(ctx, problem, q, k, opts));
}

/** NATTEN's av op on GPU tensors: weights attn [qRows, H, prod(kernelSize)] (f32) times v, out [qRows, H, Dv] of v's element type. */
export function runWebGPUNaAVTensors(problem: AttnProblem, attn: GpuTensor, v: GpuTensor, opts: AVOptions = {}): Promise<{ out: GpuTensor }> {
  return withDevice((ctx) => naAVKernel(ctx, problem, attn, v, opts));
}

/** NATTEN's qk op: host arrays q, k in; scores and row LSE back. */
export async function runWebGPUNaQK(problem: AttnProblem, q: Float32Array, k: Float32Array, opts: { poison?: boolean } = {}): Promise<{ attn: Float32Array; lse: Float32Array }> {
  const { heads: H, kvHeads: Hk, dim: D, qRows, kRows } = problem;
  const inputs = [
    { name: 'q', data: q, shape: [qRows, H, D] },
    { name: 'k', data: k, shape: [kRows, Hk, D] },
  ];
  const [attn, lse] = await onHostArrays(inputs, async (ctx, [qT, kT]) => {
    const r = await naQKKernel(ctx, problem, qT!, kT!, opts);
    return [r.attn, r.lse];
  });
  return { attn: attn!, lse: lse! };
}

/** NATTEN's av op: host arrays attn, v in; out back. */
export async function runWebGPUNaAV(problem: AttnProblem, attn: Float32Array, v: Float32Array, opts: { poison?: boolean } = {}): Promise<Float32Array> {
  const { heads: H, kvHeads: Hk, dimV: DV, qRows, kRows } = problem;
  const inputs = [
    { name: 'attn', data: attn, shape: [qRows, H, windowVolume(problem)] },
    { name: 'v', data: v, shape: [kRows, Hk, DV] },
  ];
  const [out] = await onHostArrays(inputs, async (ctx, [aT, vT]) => [(await naAVKernel(ctx, problem, aT!, vT!, opts)).out]);
  return out!;
}
