import { TilewiseError, check, checkPositiveInt } from './errors.js';
import type { PatternSpec } from './patterns/spec.js';

/**
 * Rotary position embedding applied inside the attention kernels, so callers pass un-rotated q
 * and k and positions can be remapped per query tile (LongHeads) without rotated copies of K.
 * Layout is LLaMA/NeoX "rotate half": dimension i pairs with i + dims/2, for i < dims/2; dims past
 * `dims` are left as they are (partial rotary).
 */
export interface RopeOptions {
  /** Frequency base (default 10000). */
  readonly base?: number;
  /** Rotated dims from the start of each head (even, at most headDim; default headDim). */
  readonly dims?: number;
}

type ChunksSpec = Extract<PatternSpec, { kind: 'chunks' }>;

/**
 * RoPE as a problem carries it. 'absolute': token index (keys) and token index plus Nk - Nq
 * (queries, bottom-right like causal decoding). 'selected': a key's position is its rank in the
 * query tile's concatenated chunk list (slot * chunkSize + offset in chunk), the query's is its own
 * token's rank in that list: LongHeads' remapping, so every head sees contiguous positions.
 */
export interface RopeSpec {
  readonly dims: number;
  readonly base: number;
  readonly positions: 'absolute' | 'selected';
  /** cos then sin, [maxPos, dims / 2] each, float32: positions are always below maxPos. */
  readonly table: Float32Array;
  readonly maxPos: number;
}

export function ropeSpec(opts: RopeOptions | undefined, headDim: number, maxPos: number, positions: RopeSpec['positions']): RopeSpec {
  check(opts === undefined || (typeof opts === 'object' && opts !== null), 'rope', 'must be an object');
  const base = opts?.base ?? 10000;
  check(typeof base === 'number' && Number.isFinite(base) && base > 1, 'rope.base', 'must be a finite number above 1', String(base));
  const dims = opts?.dims ?? headDim - (headDim % 2);
  checkPositiveInt(dims, 'rope.dims');
  check(dims % 2 === 0 && dims <= headDim, 'rope.dims', `must be even and at most the head dim ${headDim}`, String(dims));
  // tables are shared across calls and sized to powers of two, so a decode loop reuses a few
  const size = 2 ** Math.ceil(Math.log2(Math.max(1, maxPos)));
  const key = `${base}|${dims}|${size}`;
  let table = tables.get(key);
  if (!table) {
    if (tables.size >= 8) tables.delete(tables.keys().next().value!);
    table = ropeTable(base, dims, size);
    tables.set(key, table);
  }
  return { dims, base, positions, table, maxPos: size };
}

const tables = new Map<string, Float32Array>();

/** Inverse frequencies base^(-2i/dims), computed in float64 (the reference uses them too). */
export function invFreq(base: number, dims: number): Float64Array {
  const f = new Float64Array(dims / 2);
  for (let i = 0; i < dims / 2; i++) f[i] = base ** ((-2 * i) / dims);
  return f;
}

function ropeTable(base: number, dims: number, maxPos: number): Float32Array {
  const half = dims / 2;
  const f = invFreq(base, dims);
  const t = new Float32Array(2 * maxPos * half);
  for (let p = 0; p < maxPos; p++)
    for (let i = 0; i < half; i++) {
      t[p * half + i] = Math.cos(p * f[i]!);
      t[(maxPos + p) * half + i] = Math.sin(p * f[i]!);
    }
  return t;
}

/** Rotates `n` rows of a dense [n, d] tile in place, row i at position pos[i]. */
export function rotateRows(rope: RopeSpec, tile: Float32Array, n: number, d: number, pos: Int32Array): void {
  turnRows(rope, tile, n, d, pos, 1);
}

/**
 * The transpose (inverse) of rotateRows: takes a gradient with respect to rotated rows back to
 * the un-rotated inputs (the backward's dQ and dK).
 */
export function unrotateRows(rope: RopeSpec, tile: Float32Array, n: number, d: number, pos: Int32Array): void {
  turnRows(rope, tile, n, d, pos, -1);
}

function turnRows(rope: RopeSpec, tile: Float32Array, n: number, d: number, pos: Int32Array, sign: 1 | -1): void {
  const half = rope.dims / 2;
  const { table, maxPos } = rope;
  for (let i = 0; i < n; i++) {
    const p = pos[i]!;
    if (p < 0 || p >= maxPos) throw new TilewiseError('rope', 'position outside the table (internal)', `${p} of ${maxPos}`);
    const c0 = p * half;
    const s0 = (maxPos + p) * half;
    const r = i * d;
    for (let j = 0; j < half; j++) {
      const x = tile[r + j]!;
      const y = tile[r + j + half]!;
      const c = table[c0 + j]!;
      const s = sign * table[s0 + j]!;
      tile[r + j] = x * c - y * s;
      tile[r + j + half] = y * c + x * s;
    }
  }
}

/** The chunk list of a 'selected' RoPE problem: the pattern itself or a part of an 'and'. */
export function chunksOf(p: PatternSpec): ChunksSpec | undefined {
  if (p.kind === 'chunks') return p;
  if (p.kind === 'and') for (const part of p.parts) if (part.kind === 'chunks') return part;
  return undefined;
}

/**
 * Position lookups for one (head, query tile of the chunk list). `slotOf` maps a chunk to its index
 * in the sorted list (-1 if not selected).
 */
export class SelectedPositions {
  private lo = 0;
  private hi = 0;
  constructor(private readonly spec: ChunksSpec) {}

  /** Points at the list of head `h` and chunk-list query tile `t`. */
  at(h: number, t: number): this {
    const i = (this.spec.heads === 1 ? 0 : h) * this.spec.numQTiles + t;
    this.lo = this.spec.offsets[i]!;
    this.hi = this.spec.offsets[i + 1]!;
    return this;
  }

  slotOf(chunk: number): number {
    const { ids } = this.spec;
    let lo = this.lo;
    let hi = this.hi;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ids[mid]! < chunk) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.hi && ids[lo] === chunk ? lo - this.lo : -1;
  }

  /**
   * Rank of key token `k` in the list. Keys of unlisted chunks (masked parts of a partial tile) get
   * position 0: their scores are discarded. Queries are checked at plan time (own chunk listed).
   */
  position(k: number): number {
    const c = Math.floor(k / this.spec.chunkSize);
    const s = this.slotOf(c);
    return s < 0 ? 0 : s * this.spec.chunkSize + (k - c * this.spec.chunkSize);
  }
}

/**
 * Positions of query rows (sequence-local indices `qTok`, `n` of them) and key rows, for one head.
 * Queries sit at key index q + nk - nq. Every query row of a tile must share one chunk list, which
 * `checkRopeTiles` guarantees.
 */
export function ropePositions(
  rope: RopeSpec,
  pattern: PatternSpec,
  h: number,
  nq: number,
  nk: number,
  tok: Int32Array,
  n: number,
  isQuery: boolean,
  firstQuery: number,
  out: Int32Array,
): void {
  if (rope.positions === 'absolute') {
    // queries sit at i + nk - nq; both sides move up by the same amount when that is negative,
    // which leaves every score unchanged (RoPE depends on differences) and the table non-negative
    const shift = isQuery ? Math.max(0, nk - nq) : Math.max(0, nq - nk);
    for (let i = 0; i < n; i++) out[i] = tok[i]! + shift;
    return;
  }
  const shift = isQuery ? nk - nq : 0;
  const spec = chunksOf(pattern)!;
  const sel = new SelectedPositions(spec).at(h, Math.floor(firstQuery / spec.queryTile));
  for (let i = 0; i < n; i++) out[i] = sel.position(tok[i]! + shift);
}

/** RoPE problems need 1-D tokens, and 'selected' ones query tiles inside one chunk-list tile. */
export function checkRopeTiles(rope: RopeSpec, pattern: PatternSpec, qTile: readonly number[], rank: number): void {
  check(rank === 1, 'rope', 'needs a 1-D token axis');
  if (rope.positions !== 'selected') return;
  const spec = chunksOf(pattern);
  check(spec !== undefined, 'rope', "'selected' positions need a chunks pattern (alone or in an 'and')");
  const t = qTile.reduce((a, b) => a * b, 1);
  check(spec!.queryTile % t === 0, 'tile.q', `must divide the chunk list's query tile ${spec!.queryTile} when RoPE positions are 'selected'`, String(t));
}
