/**
 * Planning: options and tensors validated into a backend-neutral AttnProblem (shapes, pattern,
 * tiles, scale, RoPE), shared by the forward and backward entry points. Reads no tensor data but
 * the bias and rpb, so backends never import the API.
 */
import { TilewiseError, check, checkPositiveInt } from './errors.js';
import type { AttentionOptions, BlockSparseOptions, CommonOptions, Input, NeighborhoodOptions } from './options.js';
import type { PatternSpec } from './patterns/spec.js';
import type { AttnProblem, SeqSpan } from './problem.js';
import { checkRopeTiles, chunksOf, ropeSpec } from './rope.js';
import { type Tensor, isGpuTensor, numel } from './tensor.js';
import {
  type QKVShapes,
  checkCuSeqlens,
  checkFinite,
  checkQKV,
  checkScalar,
  checkSignal,
  checkTensor,
  perAxisBool,
  perAxisInt,
} from './validate.js';

const pow2floor = (x: number) => 2 ** Math.floor(Math.log2(Math.max(1, x)));

/**
 * Default tiles (the CPU's fused neighborhoods take cpu/layout.ts's instead; WebGPU fits its own
 * to the device). Dense-like patterns want big query tiles (more reuse per key load); a
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
    case 'dense':
    case 'causal':
      return;
    default:
      throw new TilewiseError('pattern', "kind must be one of dense, causal, window, neighborhood, blockSparse, chunks, mask, and, or", String((p as { kind?: unknown }).kind));
  }
}

export function checkInputsFinite(opts: CommonOptions, ts: [Input, string][]): void {
  // GPU tensors are checked by the entry point (a read-back, which is asynchronous)
  if (opts.checkFinite) for (const [t, n] of ts) if (!isGpuTensor(t)) checkFinite(t, n);
}

/** Validates an attention call and builds its backend-neutral problem (also used by tests and the profiler). */
export function planAttention(q: Input, k: Input, v: Input, opts: AttentionOptions = {}): { s: QKVShapes; problem: AttnProblem } {
  check(opts !== null && typeof opts === 'object', 'opts', 'must be an object');
  checkBackend(opts.backend);
  checkSignal(opts.signal);
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
    const align = opts.windowAlign ?? (opts.causal === 'bottom-right' ? 'bottom-right' : 'top-left');
    check(align === 'top-left' || align === 'bottom-right', 'windowAlign', "must be 'top-left' or 'bottom-right'", String(opts.windowAlign));
    parts.push({ kind: 'window', left: opts.window[0], right: opts.window[1], align });
  } else check(opts.windowAlign === undefined, 'windowAlign', 'needs a window');
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

export interface NAPlan {
  s: QKVShapes;
  problem: AttnProblem;
  spec: Extract<PatternSpec, { kind: 'neighborhood' }>;
}

export function planNA(q: Input, k: Input, v: Input, opts: NeighborhoodOptions, rank?: number): NAPlan {
  check(opts && typeof opts === 'object', 'opts', 'must be an object with kernelSize');
  checkBackend(opts.backend);
  checkSignal(opts.signal);
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
