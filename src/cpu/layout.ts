import { prod } from '../patterns/geometry.js';
import type { AttnProblem } from '../problem.js';
import { tileFor } from '../problem.js';

/** Kernels a CPU thread can run over a range of work items; the same table on the main thread and in workers. */
export type KernelKind = 'fused' | 'naive' | 'naQK' | 'naAV' | 'backward' | 'lanes' | 'naLanes' | 'naLanesBwd' | 'lanesReduce';

/**
 * Tensors a job keeps in the shared memory. Backward: dout in; dq out; dkp, dvp, drpbp one
 * partial per thread (summed in thread order into dk, dv, drpb, so results do not depend on timing).
 */
export type Slot = 'q' | 'k' | 'v' | 'out' | 'lse' | 'attn' | 'bias' | 'rpb' | 'rope' | 'dout' | 'dq' | 'dk' | 'dv' | 'drpb' | 'dbias' | 'dkp' | 'dvp' | 'drpbp' | 'dbiasp' | 'flags';

/** Where one job lives in the shared memory: byte offsets (-1 = absent), one scratch area per thread. */
export interface JobLayout {
  /** Threads sharing the job (scratch areas and per-thread partials). */
  readonly threads: number;
  /** The job's control block: 16 i32 words (CONTROL). */
  readonly counter: number;
  readonly scratch: number;
  readonly scratchBytes: number;
  readonly slots: Readonly<Record<Slot, number>>;
  /** Bytes between one thread's partial and the next (per-thread slots). */
  readonly partialBytes: Readonly<Partial<Record<Slot, number>>>;
  readonly end: number;
}


const align = (x: number, a = 64): number => Math.ceil(x / a) * a;

/** The multiple of 8 query rows the kernels run (pad rows are zero and never written out). */
export const padRows = (n: number): number => align(Math.max(1, n), 8);

type ScratchArea =
  | 'qt' | 's' | 'o' | 'm' | 'l' | 'alpha' | 'qRows' | 'kRows' | 'vRows' | 'outRows' | 'kCrd' | 'lo' | 'hi' | 'rowIdx' | 'colIdx'
  | 'ropeQ' | 'ropeK' | 'ropePos' | 'win' | 'ranges'
  // the fused kernels' head-contiguous copies of K and V (packedRows), and the lists that fill them
  | 'kPack' | 'vPack' | 'packFrom' | 'packTo'
  // backward: dO transposed and its rows, the LSE and delta per lane, dP / dS, softcapped scores, the dQ tile, ones, gradient rows of keys
  | 'doT' | 'doRows' | 'lseLanes' | 'delta' | 'dp' | 'sc' | 'dq' | 'ones' | 'dkRows' | 'dvRows'
  // backward: the query tile's q and dO rows copied contiguous (dK += dS^T q and dV += P^T dO walk them per key block)
  | 'qPack' | 'doPack';

/**
 * Per-thread scratch of one kernel kind, as offsets from the thread's base: O(tile), except the
 * fused kernels' packed K and V (packedRows: O(N), linear and capped). Query tiles are padded to 8
 * rows; key lists hold the largest visit of the kind.
 */
export interface ScratchPlan {
  readonly backward: boolean;
  readonly maxQ: number;
  readonly tqPad: number;
  readonly maxK: number;
  /** Rows of the packed K and V copies (packedRows; 0: none). */
  readonly packRows: number;
  readonly off: Readonly<Record<ScratchArea, number>>;
  readonly bytes: number;
}

/**
 * Largest key list one item builds: a kv tile (fused), a window (naive), the tile's whole union
 * box (unfused, and fused neighborhoods, which slice the union directly).
 */
function maxKeys(kind: KernelKind, problem: AttnProblem, rank: number): number {
  const p = problem.pattern;
  const union = () => (p.kind === 'neighborhood' ? prod(tileFor(problem.qTile, rank).map((t, a) => t + p.kernelSize[a]! + p.stride[a]!)) : 0);
  // the fused families (query lanes and head lanes, forward and backward)
  if (kind !== 'naive' && kind !== 'naQK' && kind !== 'naAV') return Math.max(prod(tileFor(problem.kvTile, rank)), union());
  if (p.kind !== 'neighborhood') throw new Error('neighborhood kernels need a neighborhood pattern');
  if (kind === 'naive') return prod(p.kernelSize);
  return union();
}

/**
 * The widest last-axis union the head-lane forward's query runs may span (wasm/tile.ts
 * `runWindows`): four queries along the last axis reach three key columns past one window.
 */
export function runColumns(problem: AttnProblem): number {
  const p = problem.pattern;
  return (p.kind === 'neighborhood' ? p.kernelSize[p.kernelSize.length - 1]! : 1) + 3;
}

/**
 * Bytes the packed K and V copies may take per thread (a 4096-token head of D = 64 takes 2 MiB),
 * and over all threads (so 64 threads keep 4 MiB each).
 */
const PACK_BYTES = 16 * 2 ** 20;
const PACK_BYTES_ALL = 256 * 2 ** 20;

/** Query tiles per sequence (on average) below which a copied key row would be read too few times to pay. */
const PACK_MIN_TILES = 4;

/**
 * Rows of the fused forward's and backward's per-thread K and V copies (0: none). With more than
 * one KV head the rows of one head lie kvHeads * D * 4 bytes apart in the job's [tokens][heads][dim]
 * copy: 2 KiB at 8 heads of 64, so a 64-key V tile falls into 2 of the 64 L1 sets and P.V reloads
 * it from L2 on every pass. A thread copies each key row of the head it works on once, on first
 * visit (TileCtx.keyList), into [tokens][dim] per head, and every later query tile of that head
 * reads the copy. Not for a few query rows against many keys (decoding), where each copied row
 * would be read about once (LongHeads decoding at 4352 tokens took 1.14x the time with copies).
 */
export function packedRows(kind: KernelKind, problem: AttnProblem, threads: number): number {
  if ((kind !== 'fused' && kind !== 'backward') || problem.kvHeads === 1) return 0;
  if (problem.qRows < PACK_MIN_TILES * prod(problem.qTile) * problem.seqs.length) return 0;
  return problem.kRows * (problem.dim + problem.dimV) * 4 <= Math.min(PACK_BYTES, PACK_BYTES_ALL / threads) ? problem.kRows : 0;
}

/** `threads`: the job's threads, one such area each (it caps the packed copies, packedRows). */
export function scratchPlan(kind: KernelKind, problem: AttnProblem, rank: number, threads: number): ScratchPlan {
  const packRows = packedRows(kind, problem, threads);
  const maxQ = kind === 'naive' ? 1 : prod(tileFor(problem.qTile, rank));
  const tqPad = padRows(maxQ);
  const maxK = maxKeys(kind, problem, rank);
  const { dim: D, dimV: DV } = problem;
  const rope = problem.rope !== undefined;
  // head lanes: a run's window union (four queries along the last axis: three more key columns
  // than a window), whose three key lists and scores (4 queries x 4 lanes a key, and one key's
  // worth more; the backward two such areas) must fit whatever the tile
  const p = problem.pattern;
  const lanesKind = kind === 'naLanes' || kind === 'naLanesBwd';
  const runUnion = lanesKind && p.kind === 'neighborhood' ? prod(p.kernelSize.map((k, a) => (a === p.kernelSize.length - 1 ? runColumns(problem) : k))) : 0;
  const sizes = {
    // head lanes, in lanes (forward: q of a run of 4 queries; backward: q, dQ, dO and O of a run)
    qt: Math.max(D * tqPad, kind === 'naLanesBwd' ? 32 * (D + DV) : 0, kind === 'naLanes' ? 16 * D : 0),
    // head lanes: a union of 4-lane scores (the backward: two), or 4 rows being regrouped
    s: Math.max(maxK * tqPad, 4 * Math.max(D, DV), (kind === 'naLanesBwd' ? 32 : 16) * (runUnion + 1)),
    // head lanes (forward): a run's 4 output accumulators in lanes
    o: Math.max(tqPad * DV, kind === 'naLanes' ? 16 * DV : 0),
    m: tqPad,
    l: tqPad,
    alpha: tqPad,
    qRows: tqPad,
    kRows: Math.max(maxK, 3 * runUnion + 16), // head lanes: a run's windows first
    vRows: maxK,
    outRows: tqPad,
    kCrd: maxK * rank,
    lo: rank * tqPad,
    hi: rank * tqPad,
    rowIdx: tqPad,
    colIdx: maxK,
    ropeQ: rope ? tqPad * D : 0,
    ropeK: rope ? maxK * D : 0,
    ropePos: rope ? Math.max(tqPad, maxK) : 0,
    win: kind === 'naQK' || kind === 'naAV' ? 9 * tqPad : 0,
    ranges: kind === 'fused' || kind === 'backward' ? 4 * maxK : 0,
    kPack: packRows * D,
    vPack: packRows * DV,
    packFrom: packRows > 0 ? maxK : 0,
    packTo: packRows > 0 ? maxK : 0,
    ...backwardAreas(kind === 'backward', problem, tqPad, maxK),
  };
  let at = 0;
  const off = {} as Record<keyof typeof sizes, number>;
  for (const name in sizes) {
    off[name as keyof typeof sizes] = at;
    at += align(4 * sizes[name as keyof typeof sizes]);
  }
  return { backward: kind === 'backward', maxQ, tqPad, maxK, packRows, off, bytes: at };
}

function backwardAreas(on: boolean, problem: AttnProblem, tqPad: number, maxK: number): Record<Extract<ScratchArea, 'doT' | 'doRows' | 'lseLanes' | 'delta' | 'dp' | 'sc' | 'dq' | 'ones' | 'dkRows' | 'dvRows' | 'qPack' | 'doPack'>, number> {
  const n = on ? 1 : 0;
  return {
    doT: n * problem.dimV * tqPad,
    doRows: n * tqPad,
    qPack: n * tqPad * problem.dim,
    doPack: n * tqPad * problem.dimV,
    lseLanes: n * tqPad,
    delta: n * tqPad,
    dp: n * maxK * tqPad,
    sc: problem.softcap > 0 ? n * maxK * tqPad : 0,
    dq: n * tqPad * problem.dim,
    ones: n * tqPad,
    dkRows: n * maxK,
    dvRows: n * maxK,
  };
}

/** Element counts of every tensor a job needs (0 = absent); per-thread partials count once. */
export function slotSizes(problem: AttnProblem, needs: ReadonlySet<Slot>, windowVolume: number): Record<Slot, number> {
  const { qRows, kRows, heads: H, kvHeads: Hk, dim: D, dimV: DV } = problem;
  const full: Record<Slot, number> = {
    q: qRows * H * D,
    k: kRows * Hk * D,
    v: kRows * Hk * DV,
    out: qRows * H * DV,
    lse: qRows * H,
    attn: qRows * H * windowVolume,
    bias: problem.bias?.data.length ?? 0,
    rpb: problem.rpb?.data.length ?? 0,
    rope: problem.rope?.table.length ?? 0,
    dout: qRows * H * DV,
    dq: qRows * H * D,
    dk: kRows * Hk * D,
    dv: kRows * Hk * DV,
    drpb: problem.rpb?.data.length ?? 0,
    dbias: problem.bias?.data.length ?? 0,
    dkp: kRows * Hk * D,
    dvp: kRows * Hk * DV,
    drpbp: problem.rpb?.data.length ?? 0,
    dbiasp: problem.bias?.data.length ?? 0,
    // one byte per row of q, then k, then v: which held NaN or infinities (a phase that screens them)
    flags: Math.ceil((qRows * H + 2 * kRows * Hk) / 4),
  };
  for (const s of Object.keys(full) as Slot[]) if (!needs.has(s)) full[s] = 0;
  return full;
}

/** Slots holding one partial per thread. */
export const PER_THREAD: ReadonlySet<Slot> = new Set<Slot>(['dkp', 'dvp', 'drpbp', 'dbiasp']);

/** Lays a job out from `base`: a counter, `threads` scratch areas, then each present tensor (partials once per thread). */
export function layJob(base: number, threads: number, scratchBytes: number, sizes: Record<Slot, number>): JobLayout {
  let at = align(base);
  const counter = at;
  at += 64;
  const scratch = at;
  at += threads * align(scratchBytes);
  const slots = {} as Record<Slot, number>;
  const partialBytes: Partial<Record<Slot, number>> = {};
  for (const s of Object.keys(sizes) as Slot[]) {
    slots[s] = sizes[s] > 0 ? at : -1;
    if (PER_THREAD.has(s)) partialBytes[s] = align(4 * sizes[s]);
    at += (PER_THREAD.has(s) ? threads : 1) * align(4 * sizes[s]);
  }
  return { threads, counter, scratch, scratchBytes: align(scratchBytes), slots, partialBytes, end: at };
}

/**
 * Query tiles of the CPU's fused neighborhood kernel when the caller set none: one token wide on
 * every axis but the last two, 16 x 4 on those. Sliced visits then cost only the last axis's
 * union over its window ((4 + K - 1) / K), where the shared default's cubes paid every axis's
 * (measured on 64x64 k=7 and 16^3 k=5: fastest of the shapes tried, BENCHMARKS.md).
 */
export function cpuFusedTiles(problem: AttnProblem): AttnProblem {
  const p = problem.pattern;
  if (p.kind !== 'neighborhood' || p.kernelSize.length < 2) return problem;
  const rank = p.kernelSize.length;
  const qTile = p.kernelSize.map((_, a) => (a === rank - 1 ? 4 : a === rank - 2 ? 16 : 1));
  return { ...problem, qTile };
}
