import { TilewiseError, check, checkPositiveInt } from './errors.js';
import type { Align, PatternSpec } from './patterns/spec.js';
import type { AttnProblem, SeqSpan } from './problem.js';
import { type RopeOptions, checkRopeTiles, chunksOf, ropeSpec } from './rope.js';
import { type Tensor, dtypeOf, isGpuTensor, numel } from './tensor.js';
import type { GpuTensor } from './webgpu/tensor.js';
import {
  type QKVShapes,
  checkCuSeqlens,
  checkDest,
  checkFinite,
  checkGpuTensor,
  checkQKV,
  checkScalar,
  checkTensor,
  perAxisBool,
  perAxisInt,
} from './validate.js';
import { type GpuKind, type GpuResult, type Impl, naAVOnly, naQKOnly, runGpuTensors, runProblem, runProblemWebGPU, runUnfused } from './backends.js';

export type BackendName = 'cpu' | 'webgpu' | 'auto';

export interface CommonOptions {
  /**
   * Where to run (default 'cpu'). 'webgpu' uses the shared device (`webgpu.setDevice` to pass your
   * own) and fails with the reason if it cannot; 'auto' takes WebGPU on a hardware adapter when
   * the kernel can run the problem there, else the CPU.
   */
  backend?: BackendName;
  /** Score scale; default 1 / sqrt(headDim). */
  scale?: number;
  /** Logit soft-capping: scores become softcap * tanh(score / softcap). 0 or absent = off. */
  softcap?: number;
  /** Scan inputs for NaN/Inf first and reject them (costs one pass over the data). */
  checkFinite?: boolean;
  /** Tile shape overrides (query tile, largest key tile), one entry per pattern axis or a scalar. */
  tile?: { q?: number | number[]; kv?: number | number[] };
  /** Write the results into these instead of new ones (GPU tensors when the inputs are). */
  out?: Float32Array | GpuTensor;
  lse?: Float32Array | GpuTensor;
}

/**
 * Attention inputs: host tensors, or GPU tensors (`webgpu.toGpu`, `webgpu.wrapBuffer`; f32, or f16
 * storage on devices with `shader-f16`), which run on the WebGPU backend and whose results stay on
 * the device as GPU tensors until read (`webgpu.fromGpu`).
 */
export type Input = Tensor | GpuTensor;
export type { GpuResult };

export interface AttentionOptions extends CommonOptions {
  /** true = top-left alignment (FlashAttention's default when lengths match). */
  causal?: boolean | Align;
  /** Sliding window (left, right); -1 = unbounded. Combined with `causal` when both are given. */
  window?: readonly [number, number];
  /** Any pattern (block-sparse, chunks, mask function, compositions); AND-ed with causal/window. */
  pattern?: PatternSpec;
  /** Additive bias [Nq, Nk], [Hb, Nq, Nk] or [Bb, Hb, Nq, Nk] with Hb in {1, H}, Bb in {1, B}. */
  bias?: Tensor;
  /**
   * Rotary embedding applied to q and k inside the kernel (pass them un-rotated): key j at position
   * j, query i at i + Nk - Nq. 1-D tokens only. `ropePositions: 'selected'` (with a chunks pattern)
   * numbers positions by rank in each query tile's chunk list instead, as LongHeads does.
   */
  rope?: RopeOptions;
  ropePositions?: 'absolute' | 'selected';
  /** Varlen packing (batch 1): cumulative query and key sequence lengths. */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;
}

export interface Result {
  out: Tensor;
  lse: Tensor;
}

const pow2floor = (x: number) => 2 ** Math.floor(Math.log2(Math.max(1, x)));

/**
 * Default CPU tiles. Dense-like patterns want big query tiles (more reuse per key load); a
 * neighborhood's query tile should stay near K/1.5 per axis, since the keys a tile loads grow as
 * (tile + K - 1) per axis while each query needs only K (measured: 2-D K=7 on 64x64, 4x4 tiles
 * beat 8x8 by 1.5x).
 */
function defaultTiles(rank: number, kernel?: readonly number[]): { qTile: number[]; kvTile: number[] } {
  if (!kernel) return rank === 1 ? { qTile: [64], kvTile: [64] } : { qTile: new Array(rank).fill(8), kvTile: new Array(rank).fill(8) };
  if (rank === 1) return { qTile: [Math.min(64, Math.max(16, pow2floor(kernel[0]! * 2)))], kvTile: [64] };
  const cap = rank === 2 ? 8 : 4;
  return { qTile: kernel.map((k) => Math.min(cap, Math.max(2, pow2floor(k / 1.5)))), kvTile: new Array(rank).fill(rank === 2 ? 16 : 8) };
}

function tiles(opts: CommonOptions, rank: number, kernel?: readonly number[]): { qTile: number[]; kvTile: number[] } {
  const t = opts.tile ?? {};
  const d = defaultTiles(rank, kernel);
  return {
    qTile: t.q === undefined ? d.qTile : perAxisInt(t.q, rank, 'tile.q', 1),
    kvTile: t.kv === undefined ? d.kvTile : perAxisInt(t.kv, rank, 'tile.kv', 1),
  };
}

function scaleOf(opts: CommonOptions, dim: number): number {
  return opts.scale === undefined ? 1 / Math.sqrt(dim) : checkScalar(opts.scale, 'scale', 'positive');
}

function checkBackend(b: unknown): void {
  check(b === undefined || b === 'cpu' || b === 'webgpu' || b === 'auto', 'backend', "must be 'cpu', 'webgpu' or 'auto'", String(b));
}

/** Whether the WebGPU kernel of `kind` runs `problem` on the shared device: true or the reason. */
async function gpuCanRun(problem: AttnProblem, kind: GpuKind): Promise<true | string> {
  const gpu = await import('./webgpu/index.js');
  const avail = await gpu.webgpuAvailable();
  if (avail !== true) return avail;
  const ctx = await gpu.getContext();
  return kind === 'fused' ? gpu.fusedCanRun(problem, ctx.limits) : kind === 'naive' ? gpu.naiveCanRun(problem) : gpu.unfusedCanRun(problem, ctx.limits);
}

/** The backend a call runs on: explicit choices are kept (WebGPU's kernels report what they cannot do). */
async function resolveBackend(b: BackendName | undefined, problem: AttnProblem, kind: GpuKind): Promise<'cpu' | 'webgpu'> {
  if (b !== 'auto') return b ?? 'cpu';
  if ((await gpuCanRun(problem, kind)) !== true) return 'cpu';
  const { getContext } = await import('./webgpu/index.js');
  return (await getContext()).adapterClass === 'gpu' ? 'webgpu' : 'cpu';
}

/** Runs a kernel family on the resolved backend (GPU tensors: on WebGPU, results left there). */
async function runOn(opts: CommonOptions, problem: AttnProblem, q: Input, k: Input, v: Input, lead: number[], kind: GpuKind): Promise<Result | GpuResult> {
  if (isGpuTensor(q)) {
    check(opts.backend !== 'cpu', 'backend', "GPU tensors run on 'webgpu' (or 'auto'/unset), not 'cpu'");
    return runGpuTensors(problem, q, k as GpuTensor, v as GpuTensor, lead, opts, kind);
  }
  k = k as Tensor;
  v = v as Tensor;
  const backend = await resolveBackend(opts.backend, problem, kind);
  if (kind === 'unfused') return runUnfused(problem, q, k, v, lead, opts, backend);
  return backend === 'webgpu' ? runProblemWebGPU(problem, q, k, v, lead, opts, kind) : runProblem(problem, q, k, v, lead, opts, kind);
}

function denseSeqs(s: QKVShapes): SeqSpan[] {
  const nq = numel(s.qGrid);
  const nk = numel(s.kGrid);
  return Array.from({ length: s.batch }, (_, b) => ({ b, qOff: b * nq, kOff: b * nk, qGrid: s.qGrid, kGrid: s.kGrid }));
}

/** Checks the index data of block-sparse and chunk patterns against the problem. */
export function checkPattern(p: PatternSpec, heads: number, nq: number, nk: number, grid?: readonly number[]): void {
  switch (p.kind) {
    case 'neighborhood': {
      const g = grid ?? [nq];
      const r = g.length;
      const kernelSize = perAxisInt(p.kernelSize, r, 'kernelSize', 0);
      const dilation = perAxisInt(p.dilation, r, 'dilation', 1);
      const stride = perAxisInt(p.stride, r, 'stride', 1);
      perAxisBool(p.isCausal, r, 'isCausal');
      for (let a = 0; a < r; a++) {
        check(kernelSize[a]! <= g[a]!, 'kernelSize', 'must not exceed the token axis length', `axis ${a}: ${kernelSize[a]} > ${g[a]}`);
        check(kernelSize[a]! * dilation[a]! <= g[a]!, 'dilation', 'kernelSize * dilation must not exceed the token axis length', `axis ${a}`);
        check(stride[a]! <= kernelSize[a]!, 'stride', 'must not exceed kernelSize', `axis ${a}: ${stride[a]} > ${kernelSize[a]}`);
      }
      return;
    }
    case 'blockSparse': {
      checkPositiveInt(p.blockQ, 'blockMask.blockQ');
      checkPositiveInt(p.blockK, 'blockMask.blockK');
      check(p.maskHeads === 1 || p.maskHeads === heads, 'blockMask', 'head axis must be 1 or the number of query heads', String(p.maskHeads));
      check(p.numQBlocks === Math.ceil(nq / p.blockQ), 'blockMask', 'query-block axis must be ceil(Nq / blockQ)', `${p.numQBlocks} vs ${Math.ceil(nq / p.blockQ)}`);
      check(p.numKBlocks === Math.ceil(nk / p.blockK), 'blockMask', 'key-block axis must be ceil(Nk / blockK)', `${p.numKBlocks} vs ${Math.ceil(nk / p.blockK)}`);
      check(p.mask.length === p.maskHeads * p.numQBlocks * p.numKBlocks, 'blockMask', 'data length must match its shape');
      for (const x of p.mask) check(x === 0 || x === 1, 'blockMask', 'entries must be 0 or 1', String(x));
      return;
    }
    case 'chunks': {
      checkPositiveInt(p.chunkSize, 'chunks.chunkSize');
      checkPositiveInt(p.queryTile, 'chunks.queryTile');
      check(p.heads === 1 || p.heads === heads, 'chunks', 'head count must be 1 or the number of query heads', String(p.heads));
      check(p.numQTiles === Math.ceil(nq / p.queryTile), 'chunks', 'must list ceil(Nq / queryTile) query tiles per head', `${p.numQTiles}`);
      check(p.offsets.length === p.heads * p.numQTiles + 1 && p.offsets[0] === 0, 'chunks.offsets', 'must have heads * numQTiles + 1 entries starting at 0');
      check(p.offsets[p.offsets.length - 1] === p.ids.length, 'chunks.offsets', 'must end at ids.length');
      const nChunks = Math.ceil(nk / p.chunkSize);
      for (let i = 0; i + 1 < p.offsets.length; i++) {
        check(p.offsets[i + 1]! >= p.offsets[i]!, 'chunks.offsets', 'must be non-decreasing');
        for (let j = p.offsets[i]!; j < p.offsets[i + 1]!; j++) {
          const c = p.ids[j]!;
          check(Number.isInteger(c) && c >= 0 && c < nChunks, 'chunks.ids', `chunk ids must lie in [0, ${nChunks})`, `got ${c}`);
          check(j === p.offsets[i]! || c > p.ids[j - 1]!, 'chunks.ids', 'each list must be strictly increasing');
        }
      }
      return;
    }
    case 'window':
      for (const [name, x] of [['window[0]', p.left], ['window[1]', p.right]] as const)
        check(Number.isInteger(x) && x >= -1, name, 'must be an integer >= -1 (-1 = unbounded)', String(x));
      return;
    case 'mask':
      check(typeof p.fn === 'function', 'pattern', 'mask patterns need a function (b, h, q, k) => boolean');
      return;
    case 'and':
    case 'or':
      check(p.parts.length > 0, 'pattern', `'${p.kind}' needs at least one part`);
      p.parts.forEach((x) => checkPattern(x, heads, nq, nk, grid));
      return;
    default:
      return;
  }
}

function checkInputsFinite(opts: CommonOptions, ts: [Input, string][]): void {
  // GPU tensors stay on the device: the kernels are not slowed down by a scan there
  if (opts.checkFinite) for (const [t, n] of ts) if (!isGpuTensor(t)) checkFinite(t, n);
}

/**
 * Exact attention `softmax(scale * q k^T + bias) v` restricted to a pattern, fused (never
 * materialising scores): q [B, ...tokens, H, D], k/v [B, ...tokensK, Hk, D|Dv].
 */
export async function attention(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionOptions): Promise<Result>;
export async function attention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts?: AttentionOptions): Promise<GpuResult>;
export async function attention(q: Input, k: Input, v: Input, opts: AttentionOptions = {}): Promise<Result | GpuResult> {
  const { s, problem } = planAttention(q, k, v, opts);
  return runOn(opts, problem, q, k, v, [s.batch, ...s.qGrid], 'fused');
}

/** Validates an attention call and builds its backend-neutral problem (also used by tests and the profiler). */
export function planAttention(q: Input, k: Input, v: Input, opts: AttentionOptions = {}): { s: QKVShapes; problem: AttnProblem } {
  check(opts !== null && typeof opts === 'object', 'opts', 'must be an object');
  checkBackend(opts.backend);
  const s = checkQKV(q, k, v);
  const problem = planShapes(s, opts);
  checkInputsFinite(opts, [[q, 'q'], [k, 'k'], [v, 'v'], ...(opts.bias ? ([[opts.bias, 'bias']] as [Tensor, string][]) : [])]);
  return { s, problem };
}

/**
 * The problem of an attention call from its shapes alone (no data is read but the bias): for
 * kernels on tensors that already live elsewhere, such as GPU buffers.
 */
export function planShapes(s: QKVShapes, opts: AttentionOptions = {}): AttnProblem {
  const parts: PatternSpec[] = [];
  if (opts.causal !== undefined && opts.causal !== false) {
    const align = opts.causal === true ? 'top-left' : opts.causal;
    check(align === 'top-left' || align === 'bottom-right', 'causal', "must be a boolean, 'top-left' or 'bottom-right'", String(opts.causal));
    parts.push({ kind: 'causal', align });
  }
  if (opts.window !== undefined) {
    check(Array.isArray(opts.window) && opts.window.length === 2, 'window', 'must be [left, right]');
    const align = opts.causal === 'bottom-right' ? 'bottom-right' : 'top-left';
    parts.push({ kind: 'window', left: opts.window[0], right: opts.window[1], align });
  }
  if (opts.pattern !== undefined) {
    check(typeof opts.pattern === 'object' && opts.pattern !== null && 'kind' in opts.pattern, 'pattern', 'must be a pattern spec');
    parts.push(opts.pattern);
  }
  const pattern: PatternSpec = parts.length === 0 ? { kind: 'dense' } : parts.length === 1 ? parts[0]! : { kind: 'and', parts };
  let seqs: SeqSpan[];
  if (opts.cuSeqlensQ !== undefined || opts.cuSeqlensK !== undefined) {
    check(s.batch === 1, 'q', 'varlen packs need batch 1', `got ${s.batch}`);
    check(s.qGrid.length === 1, 'q', 'varlen packs need one token axis');
    check(opts.bias === undefined, 'bias', 'is not supported with varlen packs');
    const cuQ = checkCuSeqlens(opts.cuSeqlensQ, 'cuSeqlensQ', s.qGrid[0]!);
    const cuK = checkCuSeqlens(opts.cuSeqlensK, 'cuSeqlensK', s.kGrid[0]!, cuQ.length);
    seqs = [];
    for (let i = 0; i + 1 < cuQ.length; i++)
      seqs.push({ b: i, qOff: cuQ[i]!, kOff: cuK[i]!, qGrid: [cuQ[i + 1]! - cuQ[i]!], kGrid: [cuK[i + 1]! - cuK[i]!] });
  } else seqs = denseSeqs(s);
  const nq = numel(s.qGrid);
  const nk = numel(s.kGrid);
  for (const sq of seqs) checkPattern(pattern, s.heads, numel(sq.qGrid), numel(sq.kGrid), sq.qGrid);
  let bias: AttnProblem['bias'];
  if (opts.bias !== undefined) {
    checkTensor(opts.bias, 'bias');
    const bs = opts.bias.shape;
    check(bs.length >= 2 && bs.length <= 4, 'bias', 'must be [Nq, Nk], [Hb, Nq, Nk] or [Bb, Hb, Nq, Nk]');
    const full = [...new Array(4 - bs.length).fill(1), ...bs] as number[];
    check(full[0] === 1 || full[0] === s.batch, 'bias', 'batch axis must be 1 or B', bs.join('x'));
    check(full[1] === 1 || full[1] === s.heads, 'bias', 'head axis must be 1 or H', bs.join('x'));
    check(full[2] === nq && full[3] === nk, 'bias', 'last two axes must be [Nq, Nk]', `${bs.join('x')} vs ${nq}x${nk}`);
    bias = { data: opts.bias.data, batch: full[0]!, heads: full[1]! };
  }
  // neighborhood parts tile the token grid itself; every other pattern tiles flattened tokens
  const na = findNeighborhood(pattern);
  const rank = na ? s.qGrid.length : 1;
  const problem: AttnProblem = {
    heads: s.heads,
    kvHeads: s.kvHeads,
    dim: s.dim,
    dimV: s.dimV,
    qRows: s.batch * nq,
    kRows: s.batch * nk,
    seqs,
    scale: scaleOf(opts, s.dim),
    softcap: opts.softcap === undefined ? 0 : checkScalar(opts.softcap, 'softcap', 'nonnegative'),
    ...(bias ? { bias } : {}),
    pattern,
    ...tiles(opts, rank, na?.kernelSize),
  };
  if (opts.rope === undefined) {
    check(opts.ropePositions === undefined, 'ropePositions', 'needs rope');
    return problem;
  }
  const mode = opts.ropePositions ?? 'absolute';
  check(mode === 'absolute' || mode === 'selected', 'ropePositions', "must be 'absolute' or 'selected'", String(mode));
  check(s.qGrid.length === 1, 'rope', 'needs one token axis');
  const maxPos = mode === 'absolute' ? Math.max(...seqs.map((sq) => Math.max(numel(sq.qGrid), numel(sq.kGrid)))) : maxSelected(pattern);
  const rope = ropeSpec(opts.rope, s.dim, maxPos, mode);
  checkRopeTiles(rope, pattern, problem.qTile, rank);
  if (mode === 'selected') for (const sq of seqs) checkOwnChunks(chunksOf(pattern)!, numel(sq.qGrid), numel(sq.kGrid));
  return { ...problem, rope };
}

/** 'selected' positions number a query by its own token's rank, so its chunk must be listed. */
function checkOwnChunks(c: Extract<PatternSpec, { kind: 'chunks' }>, nq: number, nk: number): void {
  for (let h = 0; h < c.heads; h++)
    for (let t = 0; t < c.numQTiles; t++) {
      const ids = new Set(c.ids.subarray(c.offsets[h * c.numQTiles + t]!, c.offsets[h * c.numQTiles + t + 1]!));
      for (let q = t * c.queryTile; q < Math.min(nq, (t + 1) * c.queryTile); q++) {
        const own = Math.floor((q + nk - nq) / c.chunkSize);
        check(ids.has(own), 'pattern', "with ropePositions 'selected' every query's own chunk must be in its tile's list", `head ${h}, query ${q}, chunk ${own}`);
      }
    }
}

/** Longest concatenation of selected chunks, in tokens: the largest 'selected' position + 1. */
function maxSelected(p: PatternSpec): number {
  const c = chunksOf(p);
  check(c !== undefined, 'ropePositions', "'selected' needs a chunks pattern (alone or in an 'and')");
  let most = 0;
  for (let i = 0; i + 1 < c!.offsets.length; i++) most = Math.max(most, c!.offsets[i + 1]! - c!.offsets[i]!);
  return most * c!.chunkSize;
}

function findNeighborhood(p: PatternSpec): Extract<PatternSpec, { kind: 'neighborhood' }> | undefined {
  if (p.kind === 'neighborhood') return p;
  if (p.kind === 'and' || p.kind === 'or') for (const x of p.parts) {
    const f = findNeighborhood(x);
    if (f) return f;
  }
  return undefined;
}

export interface BlockSparseOptions extends Omit<AttentionOptions, 'pattern'> {
  /** Block mask [nQB, nKB] or [Hm, nQB, nKB], entries 0/1; block edges from `blockSize`. */
  blockMask: { data: ArrayLike<number | boolean>; shape: readonly number[] };
  blockSize: number | readonly [number, number];
}

/** Block-sparse attention: only blocks set in the mask are computed; the rest are never visited. */
export async function blockSparseAttention(q: Tensor, k: Tensor, v: Tensor, opts: BlockSparseOptions): Promise<Result>;
export async function blockSparseAttention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: BlockSparseOptions): Promise<GpuResult>;
export async function blockSparseAttention(q: Input, k: Input, v: Input, opts: BlockSparseOptions): Promise<Result | GpuResult> {
  return attention(q as Tensor, k as Tensor, v as Tensor, blockSparseAsAttention(opts)); // either kind: the overloads share one body
}

/** A block-sparse call as attention options: the block mask as a pattern, tiles on the blocks. */
export function blockSparseAsAttention(opts: BlockSparseOptions): AttentionOptions {
  check(opts && typeof opts === 'object', 'opts', 'must be an object');
  const m = opts.blockMask;
  check(m && typeof m === 'object' && m.data && Array.isArray(m.shape), 'blockMask', 'must be { data, shape }');
  check(m.shape.length === 2 || m.shape.length === 3, 'blockMask', 'shape must be [nQB, nKB] or [heads, nQB, nKB]');
  check(m.data.length === numel(m.shape), 'blockMask', 'data length must match its shape');
  const [blockQ, blockK] = typeof opts.blockSize === 'number' ? [opts.blockSize, opts.blockSize] : (opts.blockSize ?? []);
  checkPositiveInt(blockQ, 'blockSize');
  checkPositiveInt(blockK, 'blockSize');
  const shape = m.shape.length === 2 ? [1, ...m.shape] : m.shape;
  const mask = new Uint8Array(m.data.length);
  for (let i = 0; i < mask.length; i++) {
    const x = m.data[i];
    check(x === 0 || x === 1 || x === true || x === false, 'blockMask', 'entries must be 0/1 or booleans', String(x));
    mask[i] = x ? 1 : 0;
  }
  const pattern: PatternSpec = { kind: 'blockSparse', blockQ, blockK, mask, maskHeads: shape[0]!, numQBlocks: shape[1]!, numKBlocks: shape[2]! };
  const tile = opts.tile ?? { q: blockQ <= 128 ? blockQ : 64, kv: blockK <= 128 ? blockK : 64 };
  return { ...opts, pattern, tile };
}

export interface NeighborhoodOptions extends CommonOptions {
  kernelSize: number | readonly number[];
  dilation?: number | readonly number[];
  stride?: number | readonly number[];
  isCausal?: boolean | readonly boolean[];
  /** NATTEN relative positional bias [H, 2K0-1, ...]; not with causal axes. */
  rpb?: Tensor;
  /**
   * Extra keys/values [B, M, Hk, D|Dv] every query attends to, merged by LSE (host tensors, or GPU
   * tensors of q's dtype with GPU q/k/v: merged on the device).
   */
  additionalKeys?: Tensor | GpuTensor;
  additionalValues?: Tensor | GpuTensor;
  /** Kernel family: fused (default), naive (per-query gather) or unfused (naQK, softmax, naAV). */
  impl?: Impl;
}

interface NAPlan {
  s: QKVShapes;
  problem: AttnProblem;
  spec: Extract<PatternSpec, { kind: 'neighborhood' }>;
}

export function planNA(q: Input, k: Input, v: Input, opts: NeighborhoodOptions, rank?: number): NAPlan {
  check(opts && typeof opts === 'object', 'opts', 'must be an object with kernelSize');
  checkBackend(opts.backend);
  const s = checkQKV(q, k, v, rank);
  const r = s.qGrid.length;
  check(r >= 1 && r <= 3, 'q', 'neighborhood attention supports 1, 2 or 3 token axes', `got ${r}`);
  check(s.qGrid.join() === s.kGrid.join(), 'k', 'token axes must match q for neighborhood attention', `${s.kGrid.join('x')} vs ${s.qGrid.join('x')}`);
  const kernelSize = perAxisInt(opts.kernelSize, r, 'kernelSize', 0);
  const dilation = perAxisInt(opts.dilation, r, 'dilation', 1);
  const stride = perAxisInt(opts.stride, r, 'stride', 1);
  const isCausal = perAxisBool(opts.isCausal, r, 'isCausal');
  for (let a = 0; a < r; a++) {
    const L = s.qGrid[a]!;
    check(kernelSize[a]! <= L, 'kernelSize', 'must not exceed the token axis length', `axis ${a}: ${kernelSize[a]} > ${L}`);
    check(kernelSize[a]! * dilation[a]! <= L, 'dilation', 'kernelSize * dilation must not exceed the token axis length', `axis ${a}: ${kernelSize[a]}*${dilation[a]} > ${L}`);
    check(stride[a]! <= kernelSize[a]!, 'stride', 'must not exceed kernelSize', `axis ${a}: ${stride[a]} > ${kernelSize[a]}`);
  }
  const spec = { kind: 'neighborhood' as const, kernelSize, dilation, stride, isCausal };
  let rpb: AttnProblem['rpb'];
  if (opts.rpb !== undefined) {
    checkTensor(opts.rpb, 'rpb');
    const want = [s.heads, ...kernelSize.map((x) => 2 * x - 1)];
    check(opts.rpb.shape.join() === want.join(), 'rpb', `shape must be [heads, 2*kernelSize-1 per axis] = ${want.join('x')}`, opts.rpb.shape.join('x'));
    check(!isCausal.some((c) => c), 'rpb', 'is not supported with causal axes');
    rpb = { data: opts.rpb.data, kernel: kernelSize };
  }
  checkInputsFinite(opts, [[q, 'q'], [k, 'k'], [v, 'v'], ...(opts.rpb ? ([[opts.rpb, 'rpb']] as [Tensor, string][]) : [])]);
  const problem: AttnProblem = {
    heads: s.heads,
    kvHeads: s.kvHeads,
    dim: s.dim,
    dimV: s.dimV,
    qRows: s.batch * numel(s.qGrid),
    kRows: s.batch * numel(s.kGrid),
    seqs: denseSeqs(s),
    scale: scaleOf(opts, s.dim),
    softcap: opts.softcap === undefined ? 0 : checkScalar(opts.softcap, 'softcap', 'nonnegative'),
    ...(rpb ? { rpb } : {}),
    pattern: spec,
    ...tiles(opts, r, kernelSize),
  };
  return { s, problem, spec };
}

/** Neighborhood attention over 1-, 2- or 3-D token grids with NATTEN's semantics. */
export async function neighborhoodAttention(q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions, rank?: number): Promise<Result>;
export async function neighborhoodAttention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: NeighborhoodOptions, rank?: number): Promise<GpuResult>;
export async function neighborhoodAttention(q: Input, k: Input, v: Input, opts: NeighborhoodOptions, rank?: number): Promise<Result | GpuResult> {
  const { s, problem } = planNA(q, k, v, opts, rank);
  const impl = opts.impl ?? 'fused';
  check(impl === 'fused' || impl === 'naive' || impl === 'unfused', 'impl', "must be 'fused', 'naive' or 'unfused'", String(impl));
  const extra = opts.additionalKeys !== undefined || opts.additionalValues !== undefined;
  if (extra) {
    // NATTEN's additional_keys: the neighborhood and a dense pass over the extra tokens, merged by LSE
    const gpuIn = isGpuTensor(q);
    const ak = opts.additionalKeys as unknown;
    const av = opts.additionalValues as unknown;
    if (gpuIn) {
      checkGpuTensor(ak, 'additionalKeys');
      checkGpuTensor(av, 'additionalValues');
      check(dtypeOf(ak) === dtypeOf(q) && dtypeOf(av) === dtypeOf(q), 'additionalKeys', 'and additionalValues must have the dtype of q', `${dtypeOf(ak)}, ${dtypeOf(av)}`);
    } else {
      checkTensor(ak, 'additionalKeys');
      checkTensor(av, 'additionalValues');
    }
    const [akS, avS] = [(ak as Input).shape, (av as Input).shape];
    check(akS.length === 4, 'additionalKeys', 'must be [batch, tokens, kvHeads, headDim]');
    check(akS[0] === s.batch && akS[2] === s.kvHeads && akS[3] === s.dim, 'additionalKeys', 'batch, heads and head dim must match k', akS.join('x'));
    check(avS.length === 4 && avS[0] === s.batch && avS[1] === akS[1] && avS[2] === s.kvHeads && avS[3] === s.dimV, 'additionalValues', 'must be [batch, tokens, kvHeads, dimV] matching additionalKeys and v', avS.join('x'));
    const { out: _o, lse: _l, additionalKeys: _k, additionalValues: _v, ...rest } = opts;
    const qFlat = { ...q, shape: [s.batch, numel(s.qGrid), s.heads, s.dim] };
    if (gpuIn) {
      check(opts.backend !== 'cpu', 'backend', "GPU tensors run on 'webgpu' (or 'auto'/unset), not 'cpu'");
      const gpu = await import('./webgpu/index.js');
      const na = await neighborhoodAttention(q, k as GpuTensor, v as GpuTensor, rest as NeighborhoodOptions, rank);
      try {
        const cross = await attention(qFlat as GpuTensor, ak as GpuTensor, av as GpuTensor, { backend: opts.backend, scale: problem.scale, softcap: problem.softcap });
        try {
          const crossShaped = { out: { ...cross.out, shape: na.out.shape }, lse: { ...cross.lse, shape: na.lse.shape } };
          return await gpu.mergeAttentionsGpu(na, crossShaped, { ...(opts.out ? { out: opts.out as GpuTensor } : {}), ...(opts.lse ? { lse: opts.lse as GpuTensor } : {}) });
        } finally {
          [cross.out, cross.lse].forEach(gpu.releaseTensor);
        }
      } finally {
        [na.out, na.lse].forEach(gpu.releaseTensor);
      }
    }
    checkDest(opts.out, problem.qRows * s.heads * s.dimV, 'out');
    checkDest(opts.lse, problem.qRows * s.heads, 'lse');
    checkInputsFinite(opts, [
      [ak as Tensor, 'additionalKeys'],
      [av as Tensor, 'additionalValues'],
    ]);
    const na = await neighborhoodAttention(q as Tensor, k as Tensor, v as Tensor, rest as NeighborhoodOptions, rank);
    const cross = await attention(qFlat as Tensor, ak as Tensor, av as Tensor, { backend: opts.backend, scale: problem.scale, softcap: problem.softcap });
    return mergeAttentions([na, cross].map((r) => ({ out: { data: r.out.data, shape: na.out.shape }, lse: { data: r.lse.data, shape: na.lse.shape } })), opts);
  }
  return runOn(opts, problem, q, k, v, [s.batch, ...s.qGrid], impl);
}

export const na1d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 1);
export const na2d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 2);
export const na3d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 3);

/**
 * NATTEN's `qk` op: scores of each query against its window, [B, ...tokens, H, prod(kernelSize)]
 * (slots without a key hold -inf), plus the LSE of each row.
 */
export async function naQK(q: Tensor, k: Tensor, opts: NeighborhoodOptions): Promise<Result> {
  checkTensor(k, 'k');
  const vShape = [...k.shape];
  const fakeV = { data: new Float32Array(numel(vShape.slice(0, -1))), shape: [...vShape.slice(0, -1), 1] };
  const { s, problem } = planNA(q, k, fakeV, opts);
  return naQKOnly(problem, q, k, [s.batch, ...s.qGrid], opts, await resolveBackend(opts.backend, problem, 'unfused'));
}

/** NATTEN's `av` op: attention weights [B, ...tokens, H, prod(kernelSize)] times v over each window. */
export async function naAV(attn: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<{ out: Tensor }> {
  checkTensor(attn, 'attn');
  checkTensor(v, 'v');
  // q and k only carry shapes here: q's heads come from attn (GQA), k's from v
  check(attn.shape.length === v.shape.length, 'attn', 'must have the same rank as v', `${attn.shape.length} vs ${v.shape.length}`);
  check(attn.shape.slice(0, -2).join() === v.shape.slice(0, -2).join(), 'attn', 'batch and token axes must match v', `${attn.shape.join('x')} vs ${v.shape.join('x')}`);
  const fakeQ = { data: new Float32Array(numel(attn.shape.slice(0, -1))), shape: [...attn.shape.slice(0, -1), 1] };
  const fakeK = { data: new Float32Array(numel(v.shape.slice(0, -1))), shape: [...v.shape.slice(0, -1), 1] };
  const { s, problem } = planNA(fakeQ, fakeK, v, opts);
  const wv = numel(problem.pattern.kind === 'neighborhood' ? problem.pattern.kernelSize : []);
  check(attn.shape.join() === [s.batch, ...s.qGrid, s.heads, wv].join(), 'attn', 'shape must be [B, ...tokens, H, prod(kernelSize)]', attn.shape.join('x'));
  return naAVOnly(problem, attn, v, [s.batch, ...s.qGrid], opts, await resolveBackend(opts.backend, problem, 'unfused'));
}

/**
 * Merges attention results over disjoint key sets by their LSEs:
 * lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) out_i.
 */
export function mergeAttentions(parts: readonly Result[], opts: Pick<CommonOptions, 'out' | 'lse'> = {}): Result {
  check(Array.isArray(parts) && parts.length > 0, 'parts', 'must be a non-empty array of { out, lse }');
  parts.forEach((p, i) => {
    checkTensor(p.out, `parts[${i}].out`);
    checkTensor(p.lse, `parts[${i}].lse`);
  });
  const o0 = parts[0]!.out;
  const l0 = parts[0]!.lse;
  check(o0.shape.slice(0, -1).join() === l0.shape.join(), 'parts[0].lse', 'shape must be out shape without its last axis');
  parts.forEach((p, i) => {
    check(p.out.shape.join() === o0.shape.join(), `parts[${i}].out`, 'all parts must have the same out shape');
    check(p.lse.shape.join() === l0.shape.join(), `parts[${i}].lse`, 'all parts must have the same lse shape');
  });
  const dv = o0.shape[o0.shape.length - 1]!;
  const rows = l0.data.length;
  const out = checkDest(opts.out, rows * dv, 'out') ?? new Float32Array(rows * dv);
  const lse = checkDest(opts.lse, rows, 'lse') ?? new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let mx = -Infinity;
    for (const p of parts) mx = Math.max(mx, p.lse.data[r]!);
    if (mx === -Infinity) {
      out.fill(0, r * dv, (r + 1) * dv);
      lse[r] = -Infinity;
      continue;
    }
    let sum = 0;
    for (const p of parts) sum += Math.exp(p.lse.data[r]! - mx);
    const total = mx + Math.log(sum);
    for (let c = 0; c < dv; c++) {
      let acc = 0;
      for (const p of parts) {
        const w = Math.exp(p.lse.data[r]! - total);
        if (w > 0) acc += w * p.out.data[r * dv + c]!;
      }
      out[r * dv + c] = acc;
    }
    lse[r] = total;
  }
  return { out: { data: out, shape: [...o0.shape] }, lse: { data: lse, shape: [...l0.shape] } };
}

export { TilewiseError };
