import { type Box, type Group, boxVolume } from './patterns/geometry.js';
import { type CompiledPattern, EMPTY, FULL } from './patterns/compile.js';

/** One step of a tile schedule: a box of the other side, and whether every pair in it is allowed. */
export interface Visit {
  readonly box: Box;
  readonly full: boolean;
}

/** Query (or key) tiles of one group: boxes of at most `tile` per axis, row-major over tiles. */
export function tileBoxes(lengths: readonly number[], tile: readonly number[]): Box[] {
  const counts = lengths.map((l, a) => Math.ceil(l / tile[a]!));
  const out: Box[] = [];
  if (counts.some((c) => c === 0)) return out;
  const t = counts.map(() => 0);
  for (;;) {
    const lo = t.map((x, a) => x * tile[a]!);
    out.push({ lo, hi: lo.map((x, a) => Math.min(lengths[a]!, x + tile[a]!)) });
    let a = counts.length - 1;
    while (a >= 0 && ++t[a]! === counts[a]!) t[a--] = 0;
    if (a < 0) return out;
  }
}

export function tileCount(lengths: readonly number[], tile: readonly number[]): number {
  return lengths.reduce((n, l, a) => n * Math.ceil(l / tile[a]!), 1);
}

/** The `index`-th tile of `tileBoxes(lengths, tile)`, without building the list; written into `out` when given. */
export function tileBox(lengths: readonly number[], tile: readonly number[], index: number, out?: Box): Box {
  const rank = lengths.length;
  const lo = out?.lo ?? new Array<number>(rank);
  const hi = out?.hi ?? new Array<number>(rank);
  lo.length = hi.length = rank;
  for (let a = rank - 1; a >= 0; a--) {
    const c = Math.ceil(lengths[a]! / tile[a]!);
    lo[a] = (index % c) * tile[a]!;
    hi[a] = Math.min(lengths[a]!, lo[a]! + tile[a]!);
    index = Math.floor(index / c);
  }
  return out ?? { lo, hi };
}

/** Smallest piece a pattern cut may leave, as a fraction of the key tile extent. */
const MIN_PIECE = 0.5;

type CutFn = (axis: number, lo: number, hi: number, out: number[]) => void;

/**
 * Splits `bounds` at the pattern's cut points and at `maxExtent`, classifies every piece and keeps
 * the non-empty ones. Cut points are where coverage can change (the intersection of the query
 * tile's windows for box patterns, block edges for block masks), so interior pieces come out full.
 */
function split(bounds: Box, maxExtent: readonly number[], cuts: CutFn, classify: (b: Box) => number): Visit[] {
  const rank = bounds.lo.length;
  const segs: [number, number][][] = [];
  for (let a = 0; a < rank; a++) {
    const lo = bounds.lo[a]!;
    const hi = bounds.hi[a]!;
    const pts = [lo, hi];
    cuts(a, lo, hi, pts);
    const sorted = [...new Set(pts.filter((x) => x >= lo && x <= hi))].sort((x, y) => x - y);
    // a cut that leaves a sliver costs more in per-visit overhead than masking it saves
    const gap = Math.max(1, Math.floor(maxExtent[a]! * MIN_PIECE));
    const uniq = [lo];
    for (const x of sorted) if (x > lo && x < hi && x - uniq[uniq.length - 1]! >= gap && hi - x >= gap) uniq.push(x);
    uniq.push(hi);
    const s: [number, number][] = [];
    for (let i = 0; i + 1 < uniq.length; i++)
      for (let x = uniq[i]!; x < uniq[i + 1]!; x += maxExtent[a]!) s.push([x, Math.min(uniq[i + 1]!, x + maxExtent[a]!)]);
    segs.push(s);
  }
  const out: Visit[] = [];
  if (segs.some((s) => s.length === 0)) return out;
  const idx = segs.map(() => 0);
  for (;;) {
    const box = { lo: idx.map((i, a) => segs[a]![i]![0]), hi: idx.map((i, a) => segs[a]![i]![1]) };
    const c = classify(box);
    if (c !== EMPTY) out.push({ box, full: c === FULL });
    let a = rank - 1;
    while (a >= 0 && ++idx[a]! === segs[a]!.length) idx[a--] = 0;
    if (a < 0) return out;
  }
}

/** Key boxes a query box visits, in order: O(pieces) work, nothing quadratic. */
export function kvSchedule(p: CompiledPattern, b: number, h: number, g: number, q: Box, maxExtent: readonly number[]): Visit[] {
  const bounds = p.bounds(b, h, g, q);
  if (!bounds) return [];
  const runs = p.keyRuns && bounds.lo.length === 1 ? p.keyRuns(b, h, g, q) : undefined;
  return splitRuns(bounds, runs, maxExtent, (a, lo, hi, out) => p.cuts(b, h, g, q, a, lo, hi, out), (k) => p.classify(b, h, g, q, k));
}

/** The transposed schedule (backward pass): query boxes that see a key box. */
export function qSchedule(p: CompiledPattern, b: number, h: number, g: number, k: Box, maxExtent: readonly number[]): Visit[] {
  const bounds = p.qBounds(b, h, g, k);
  if (!bounds) return [];
  const runs = p.queryRuns && bounds.lo.length === 1 ? p.queryRuns(b, h, g, k) : undefined;
  return splitRuns(bounds, runs, maxExtent, (a, lo, hi, out) => p.qCuts(b, h, g, k, a, lo, hi, out), (q) => p.classify(b, h, g, q, k));
}

/**
 * `split` of the bounds, or (sparse patterns: chunk lists, block masks) of each 1-D run inside
 * them, so the tiles between runs are never cut and classified.
 */
function splitRuns(bounds: Box, runs: [number, number][] | undefined, maxExtent: readonly number[], cuts: CutFn, classify: (b: Box) => number): Visit[] {
  if (!runs) return split(bounds, maxExtent, cuts, classify);
  const [blo, bhi] = [bounds.lo[0]!, bounds.hi[0]!];
  const out: Visit[] = [];
  for (const [lo, hi] of runs) {
    const [l, r] = [Math.max(lo, blo), Math.min(hi, bhi)];
    if (l < r) out.push(...split({ lo: [l], hi: [r] }, maxExtent, cuts, classify));
  }
  return out;
}

/** A materialised schedule for one (batch, head): per group, per query tile, its visits. */
export interface Schedule {
  readonly tiles: { group: number; box: Box; visits: Visit[] }[];
}

export function buildSchedule(p: CompiledPattern, b: number, h: number, qTile: readonly number[], kvTile: readonly number[]): Schedule {
  const tiles: Schedule['tiles'] = [];
  p.groups.forEach((grp: Group, g) => {
    for (const box of tileBoxes(grp.qLen, qTile)) tiles.push({ group: g, box, visits: kvSchedule(p, b, h, g, box, kvTile) });
  });
  return { tiles };
}

export function buildTransposedSchedule(p: CompiledPattern, b: number, h: number, kvTile: readonly number[], qTile: readonly number[]): Schedule {
  const tiles: Schedule['tiles'] = [];
  p.groups.forEach((grp: Group, g) => {
    for (const box of tileBoxes(grp.kLen, kvTile)) tiles.push({ group: g, box, visits: qSchedule(p, b, h, g, box, qTile) });
  });
  return { tiles };
}

/** Pairs visited by a schedule (for stats: useful vs computed work). */
export function visitedPairs(s: Schedule): number {
  let n = 0;
  for (const t of s.tiles) for (const v of t.visits) n += boxVolume(t.box) * boxVolume(v.box);
  return n;
}
