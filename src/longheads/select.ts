import { attention } from '../api.js';
import type { PatternSpec } from '../patterns/spec.js';
import { ropeSpec, rotateRows } from '../rope.js';
import type { LongHeadsConfig } from './options.js';

/**
 * LongHeads' chunk representations and chunk selection. Both run on the fused engine or on O(N)
 * host passes: nothing here is quadratic in the sequence length except, by choice, per-query
 * selection (selectTile 1).
 */

export type ChunksSpec = Extract<PatternSpec, { kind: 'chunks' }>;

/** Largest power of two dividing `t`, capped at 64: fused query tiles must sit inside one chunk-list tile. */
export const fusedTile = (t: number): number => Math.min(64, t & -t);

/** One sequence's tensors, heads-last and flattened: q [n, H, D], k and v [n, Hk, D]. */
export interface SeqQKV {
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly n: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly dim: number;
}

/** Rows [0, m) of x [*, heads, d], each head rotated to position (row mod period): in-chunk RoPE. */
function rotateInChunk(x: Float32Array, m: number, heads: number, d: number, period: number, cfg: LongHeadsConfig): Float32Array {
  const rope = ropeSpec(cfg.rope, d, period, 'absolute');
  const out = x.slice(0, m * heads * d);
  const pos = new Int32Array(m * heads);
  for (let r = 0; r < m; r++) pos.fill(r % period, r * heads, (r + 1) * heads);
  rotateRows(rope, out, m * heads, d, pos); // rows of every head are consecutive [d] blocks
  return out;
}

/** The chunk-diagonal list: query tile t (of `tile` queries) sees chunk t only. */
export function diagonalChunks(chunkSize: number, tile: number, count: number): ChunksSpec {
  return {
    kind: 'chunks',
    chunkSize,
    queryTile: tile,
    heads: 1,
    numQTiles: count,
    offsets: Int32Array.from({ length: count + 1 }, (_, i) => i),
    ids: Int32Array.from({ length: count }, (_, i) => i),
  };
}

/**
 * Representations [full, H, D] of the `full = floor(n / chunkSize)` complete chunks. Per head and
 * chunk: non-causal attention of the chunk's queries over its keys (both rotated with in-chunk
 * positions), mean-pooled into a summary; the summary then attends over the chunk's rotated keys
 * with those keys as values. Two fused calls over chunk-diagonal schedules: O(n * chunkSize * D).
 * The CPU implementation (webgpu/longheads.ts has the device one).
 */
export async function chunkReps(s: SeqQKV, cfg: LongHeadsConfig, full = Math.floor(s.n / cfg.chunkSize)): Promise<Float32Array> {
  const { heads: H, kvHeads: Hk, dim: D } = s;
  const C = cfg.chunkSize;
  if (full === 0) return new Float32Array(0);
  const m = full * C;
  // in-chunk positions are the 'selected' positions of a chunk-diagonal list (slot 0), so the
  // kernel rotates q and k itself; only the keys are rotated on the host, as values of the 2nd call
  const inChunk = await attention(
    { data: s.q.subarray(0, m * H * D), shape: [1, m, H, D] },
    { data: s.k.subarray(0, m * Hk * D), shape: [1, m, Hk, D] },
    { data: s.v.subarray(0, m * Hk * D), shape: [1, m, Hk, D] },
    {
      pattern: diagonalChunks(C, C, full),
      rope: cfg.rope,
      ropePositions: 'selected',
      tile: { q: fusedTile(C) },
      ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}),
      ...(cfg.signal ? { signal: cfg.signal } : {}),
      backend: 'cpu',
    },
  );
  const kIn = rotateInChunk(s.k, m, Hk, D, C, cfg);
  const summary = new Float32Array(full * H * D);
  const o = inChunk.out.data;
  for (let c = 0; c < full; c++)
    for (let r = c * C; r < (c + 1) * C; r++) for (let x = 0; x < H * D; x++) summary[c * H * D + x]! += o[r * H * D + x]!;
  for (let x = 0; x < summary.length; x++) summary[x]! /= C;
  // one summary row per chunk, so query tiles of one row: a wider tile would mix chunk lists
  const rep = await attention(
    { data: summary, shape: [1, full, H, D] },
    { data: kIn, shape: [1, m, Hk, D] },
    { data: kIn, shape: [1, m, Hk, D] },
    { pattern: diagonalChunks(C, 1, full), tile: { q: 1, kv: 64 }, backend: 'cpu', ...(cfg.signal ? { signal: cfg.signal } : {}) },
  );
  return rep.out.data;
}

/**
 * The chunks a query tile whose first query sits in chunk `own` keeps, ascending: every chunk while
 * they fit the budget (plain causal attention); else its own chunk, the first (attention sink), the
 * previous one, then the best-scoring of the rest, ranked by `better` (the WebGPU selection kernel,
 * webgpu/longheads-wgsl.ts, applies the same rules). `score(c)` is only called for chunks
 * 1 .. own - 2.
 */
export function selectChunks(own: number, slots: number, score: (c: number) => number): number[] {
  if (own < slots) return Array.from({ length: own + 1 }, (_, c) => c);
  const keep = [own, 0, own - 1].slice(0, slots);
  const rest = slots - keep.length;
  if (rest > 0) {
    const cand = Array.from({ length: own - 2 }, (_, i) => i + 1);
    const sc = new Float64Array(own);
    for (const c of cand) sc[c] = score(c);
    cand.sort((a, b) => (better(sc[a]!, a, sc[b]!, b) ? -1 : better(sc[b]!, b, sc[a]!, a) ? 1 : 0));
    keep.push(...cand.slice(0, rest));
  }
  return [...new Set(keep)].sort((a, b) => a - b);
}

/** The ranking of candidate chunks: higher score first, ties to the lower chunk index. */
export const better = (sa: number, a: number, sb: number, b: number): boolean => sa > sb || (sa === sb && a < b);

/** Dot product in float64 of `a[ia..ia+d)` and `b[ib..ib+d)`. */
function dot(a: Float32Array | Float64Array, ia: number, b: Float32Array, ib: number, d: number): number {
  let s = 0;
  for (let x = 0; x < d; x++) s += a[ia + x]! * b[ib + x]!;
  return s;
}

/**
 * Where and how a selection runs: `rows` query rows q [rows, H, D], the first at key index `qPos0`
 * (0 in prefill, the token's index in decode), one chunk list per head and tile of `tile` queries.
 */
export interface SelectGeometry {
  readonly rows: number;
  readonly qPos0: number;
  readonly tile: number;
  readonly heads: number;
  readonly dim: number;
}

/**
 * Selection (prefill and decode alike): per head and query tile, the chunk list, scored with the
 * tile's mean (un-rotated) query against the chunk representations reps [chunks, H, D] (a dot
 * product is linear, so this is the tile's mean score). Returns the chunks pattern the fused kernel
 * takes as schedule. The WebGPU kernel takes the same geometry (webgpu/longheads.ts).
 */
export function selectLists(q: Float32Array, reps: Float32Array, g: SelectGeometry, cfg: LongHeadsConfig): ChunksSpec {
  const { rows, qPos0, tile: T, heads: H, dim: D } = g;
  const tiles = Math.ceil(rows / T);
  const lists: number[][] = [];
  const mean = new Float64Array(D);
  for (let h = 0; h < H; h++)
    for (let t = 0; t < tiles; t++) {
      const own = Math.floor((qPos0 + t * T) / cfg.chunkSize);
      if (own >= cfg.slots) {
        mean.fill(0);
        const end = Math.min(rows, (t + 1) * T);
        for (let r = t * T; r < end; r++) for (let x = 0; x < D; x++) mean[x]! += q[(r * H + h) * D + x]!;
        for (let x = 0; x < D; x++) mean[x]! /= end - t * T;
      }
      lists.push(selectChunks(own, cfg.slots, (c) => dot(mean, 0, reps, (c * H + h) * D, D)));
    }
  return chunkLists(cfg.chunkSize, T, H, tiles, lists);
}

/** Prefill selection of a whole sequence: one list per head and tile of `selectTile` queries. */
export const selectPrefill = (s: SeqQKV, reps: Float32Array, cfg: LongHeadsConfig): ChunksSpec =>
  selectLists(s.q, reps, { rows: s.n, qPos0: 0, tile: cfg.selectTile, heads: s.heads, dim: s.dim }, cfg);

/** Chunk lists (per head, then per query tile) as a chunks pattern. */
export function chunkLists(chunkSize: number, queryTile: number, heads: number, numQTiles: number, lists: number[][]): ChunksSpec {
  const offsets = new Int32Array(lists.length + 1);
  lists.forEach((l, i) => (offsets[i + 1] = offsets[i]! + l.length));
  const ids = new Int32Array(offsets[lists.length]!);
  lists.forEach((l, i) => ids.set(l, offsets[i]!));
  return { kind: 'chunks', chunkSize, queryTile, heads, numQTiles, offsets, ids };
}
