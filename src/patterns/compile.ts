import { TilewiseError } from '../errors.js';
import { type Box, type Geometry, type Group, boxTokens, groupsOf, stridesOf, boxVolume } from './geometry.js';
import { type AxisRule, andRule, causalRule, denseRule, neighborhoodRule, windowRule } from './rules.js';
import type { PatternSpec } from './spec.js';

/** How a (query box, key box) pair is covered: no allowed pair, some, or all. */
export const EMPTY = 0;
export const PARTIAL = 1;
export const FULL = 2;
export type Cover = typeof EMPTY | typeof PARTIAL | typeof FULL;

/**
 * A pattern bound to one sequence's geometry. Boxes are in group-local coordinates of group `g`;
 * `allows` takes flat global token indices. Everything a schedule needs is here: key bounds of a
 * query box (and the reverse, for the transposed schedule), cut points where coverage may change,
 * and an exact classification of a box pair.
 */
export interface CompiledPattern {
  readonly geometry: Geometry;
  readonly groups: readonly Group[];
  readonly perBatch: boolean;
  readonly perHead: boolean;
  /** Per-axis rules when the pattern is a product of monotone intervals (analytic everywhere). */
  readonly boxRules?: (g: number) => readonly AxisRule[];
  allows(b: number, h: number, q: number, k: number): boolean;
  /**
   * `allows` for query token q against the n key tokens kTok[from..from + n), into out[0..n) (1 or
   * 0): the masks of partial visits ask whole rows, one call per row with the query's bounds worked
   * out once instead of a call per pair (BENCHMARKS stop 16: LongHeads' schedules).
   */
  allowsRow(b: number, h: number, q: number, kTok: Int32Array, from: number, n: number, out: Uint8Array): void;
  bounds(b: number, h: number, g: number, q: Box): Box | null;
  /**
   * 1-D patterns whose keys come in sparse runs (chunk lists, block masks, an `and` with one): the sorted,
   * disjoint [lo, hi) key ranges query box `q` may see, so a schedule walks those instead of
   * classifying every tile of the bounds (LongHeads: a few selected chunks spread over the whole
   * sequence, whose bounds span all of it). Absent: the bounds are the only run.
   */
  keyRuns?(b: number, h: number, g: number, q: Box): [number, number][];
  /** The transposed schedule's counterpart of keyRuns: the runs of queries that may see key box `k`. */
  queryRuns?(b: number, h: number, g: number, k: Box): [number, number][];
  qBounds(b: number, h: number, g: number, k: Box): Box | null;
  /** Pushes key coordinates in (lo, hi) along `axis` where the coverage of query box `q` may change. */
  cuts(b: number, h: number, g: number, q: Box, axis: number, lo: number, hi: number, out: number[]): void;
  qCuts(b: number, h: number, g: number, k: Box, axis: number, lo: number, hi: number, out: number[]): void;
  classify(b: number, h: number, g: number, q: Box, k: Box): Cover;
}

interface Ctx {
  geo: Geometry;
  groups: Group[];
  heads: number;
}

export interface CompileOptions {
  qGrid: readonly number[];
  kGrid: readonly number[];
  heads: number;
}

const hasNA = (p: PatternSpec): boolean =>
  p.kind === 'neighborhood' || ((p.kind === 'and' || p.kind === 'or') && p.parts.some(hasNA));

function findNA(p: PatternSpec): Extract<PatternSpec, { kind: 'neighborhood' }>[] {
  if (p.kind === 'neighborhood') return [p];
  if (p.kind === 'and' || p.kind === 'or') return p.parts.flatMap(findNA);
  return [];
}

export function compilePattern(spec: PatternSpec, opts: CompileOptions): CompiledPattern {
  const flatQ = opts.qGrid.reduce((a, b) => a * b, 1);
  const flatK = opts.kGrid.reduce((a, b) => a * b, 1);
  let geo: Geometry;
  if (hasNA(spec)) {
    const nas = findNA(spec);
    const dil = nas[0]!.dilation;
    for (const na of nas) {
      if (na.kernelSize.length !== opts.qGrid.length)
        throw new TilewiseError('kernelSize', 'must have one entry per token axis', `${na.kernelSize.length} vs ${opts.qGrid.length}`);
      if (na.dilation.join() !== dil.join())
        throw new TilewiseError('pattern', 'composed neighborhood patterns must share one dilation');
    }
    if (opts.qGrid.join() !== opts.kGrid.join())
      throw new TilewiseError('k', 'neighborhood attention needs the same token grid for queries and keys');
    const nonNA = (p: PatternSpec): boolean =>
      p.kind === 'and' || p.kind === 'or' ? p.parts.some(nonNA) : p.kind !== 'neighborhood';
    if (nonNA(spec) && (opts.qGrid.length > 1 || dil.some((d) => d > 1)))
      throw new TilewiseError('pattern', 'a multi-axis or dilated neighborhood pattern composes only with other neighborhood patterns');
    geo = { qShape: [...opts.qGrid], kShape: [...opts.kGrid], dilation: [...dil] };
  } else {
    geo = { qShape: [flatQ], kShape: [flatK], dilation: [1] };
  }
  const ctx: Ctx = { geo, groups: groupsOf(geo), heads: opts.heads };
  return build(spec, ctx);
}

function build(spec: PatternSpec, ctx: Ctx): CompiledPattern {
  const nq = ctx.geo.qShape[0]!;
  const nk = ctx.geo.kShape[0]!;
  switch (spec.kind) {
    case 'dense':
      return boxPattern(ctx, () => denseRule(nk));
    case 'causal':
      return boxPattern(ctx, () => causalRule(nq, nk, spec.align));
    case 'window':
      return boxPattern(ctx, () => windowRule(nq, nk, spec.left, spec.right, spec.align));
    case 'neighborhood':
      return boxPattern(ctx, (axis, g) => {
        const n = ctx.groups[g]!.qLen[axis]!;
        return neighborhoodRule(n, spec.kernelSize[axis]!, spec.stride[axis]!, spec.isCausal[axis]!);
      });
    case 'blockSparse':
      return blockSparsePattern(spec, ctx);
    case 'chunks':
      return chunkPattern(spec, ctx);
    case 'mask':
      return maskPattern(spec.fn, ctx);
    case 'and':
    case 'or': {
      if (spec.parts.length === 0) throw new TilewiseError('pattern', `'${spec.kind}' needs at least one part`);
      const parts = spec.parts.map((p) => build(p, ctx));
      if (spec.kind === 'and' && parts.every((p) => p.boxRules)) {
        return boxPattern(ctx, (axis, g) => parts.map((p) => p.boxRules!(g)[axis]!).reduce(andRule));
      }
      return spec.kind === 'and' ? andPattern(parts, ctx) : orPattern(parts, ctx);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Box patterns: products of monotone per-axis intervals (dense, causal, window, neighborhood).

/** First q in [lo, hi) with pred true, for a predicate that is false then true; hi if none. */
function firstTrue(lo: number, hi: number, pred: (q: number) => boolean): number {
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (pred(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

function boxPattern(ctx: Ctx, axisRule: (axis: number, g: number) => AxisRule): CompiledPattern {
  const rank = ctx.geo.qShape.length;
  const cache = new Map<number, AxisRule[]>();
  const rulesOf = (g: number): AxisRule[] => {
    let r = cache.get(g);
    if (!r) {
      r = Array.from({ length: rank }, (_, a) => axisRule(a, g));
      cache.set(g, r);
    }
    return r;
  };
  const { qShape, kShape, dilation } = ctx.geo;
  const qStr = stridesOf(qShape);
  const kStr = stridesOf(kShape);
  // group index from per-axis group offsets (row-major over dilation)
  const gStr = stridesOf(dilation);
  const meets = (r: AxisRule, q: number, lo: number, hi: number) => Math.max(r.start(q), lo) <= Math.min(r.end(q), hi);
  // query q's per-axis dilation group and allowed key interval (group-local), for allows and allowsRow
  const qGrp = new Int32Array(rank);
  const kLo = new Int32Array(rank);
  const kHi = new Int32Array(rank);
  const bindQuery = (q: number): void => {
    let g = 0;
    for (let a = 0; a < rank; a++) {
      const cq = Math.floor(q / qStr[a]!) % qShape[a]!;
      const d = dilation[a]!;
      qGrp[a] = cq % d;
      g += (cq % d) * gStr[a]!;
    }
    const rules = rulesOf(g);
    for (let a = 0; a < rank; a++) {
      const x = Math.floor((Math.floor(q / qStr[a]!) % qShape[a]!) / dilation[a]!);
      kLo[a] = rules[a]!.start(x);
      kHi[a] = rules[a]!.end(x);
    }
  };
  const keyIn = (k: number): boolean => {
    for (let a = 0; a < rank; a++) {
      const ck = Math.floor(k / kStr[a]!) % kShape[a]!;
      const d = dilation[a]!;
      if (ck % d !== qGrp[a]) return false;
      const x = Math.floor(ck / d);
      if (x < kLo[a]! || x > kHi[a]!) return false;
    }
    return true;
  };

  return {
    geometry: ctx.geo,
    groups: ctx.groups,
    perBatch: false,
    perHead: false,
    boxRules: rulesOf,
    allows(_b, _h, q, k) {
      bindQuery(q);
      return keyIn(k);
    },
    allowsRow(_b, _h, q, kTok, from, n, out) {
      bindQuery(q);
      for (let j = 0; j < n; j++) out[j] = keyIn(kTok[from + j]!) ? 1 : 0;
    },
    bounds(_b, _h, g, q) {
      const rules = rulesOf(g);
      const lo: number[] = [];
      const hi: number[] = [];
      for (let a = 0; a < rank; a++) {
        const r = rules[a]!;
        let qa = q.lo[a]!;
        let qb = q.hi[a]! - 1;
        while (qa <= qb && r.start(qa) > r.end(qa)) qa++;
        while (qb >= qa && r.start(qb) > r.end(qb)) qb--;
        if (qa > qb) return null;
        lo.push(r.start(qa));
        hi.push(r.end(qb) + 1);
      }
      return { lo, hi };
    },
    qBounds(_b, _h, g, k) {
      const rules = rulesOf(g);
      const group = ctx.groups[g]!;
      const lo: number[] = [];
      const hi: number[] = [];
      for (let a = 0; a < rank; a++) {
        const r = rules[a]!;
        const kl = k.lo[a]!;
        const kh = k.hi[a]! - 1;
        const n = group.qLen[a]!;
        let qa = firstTrue(0, n, (q) => r.end(q) >= kl);
        let qb = firstTrue(0, n, (q) => r.start(q) > kh) - 1;
        while (qa <= qb && !meets(r, qa, kl, kh)) qa++;
        while (qb >= qa && !meets(r, qb, kl, kh)) qb--;
        if (qa > qb) return null;
        lo.push(qa);
        hi.push(qb + 1);
      }
      return { lo, hi };
    },
    cuts(_b, _h, g, q, axis, _lo, _hi, out) {
      const r = rulesOf(g)[axis]!;
      out.push(r.start(q.hi[axis]! - 1), r.end(q.lo[axis]!) + 1);
    },
    qCuts(_b, _h, g, k, axis, _lo, _hi, out) {
      const r = rulesOf(g)[axis]!;
      const n = ctx.groups[g]!.qLen[axis]!;
      out.push(firstTrue(0, n, (q) => r.end(q) >= k.hi[axis]! - 1), firstTrue(0, n, (q) => r.start(q) > k.lo[axis]!));
    },
    classify(_b, _h, g, q, k) {
      const rules = rulesOf(g);
      let full = true;
      for (let a = 0; a < rank; a++) {
        const r = rules[a]!;
        const ql = q.lo[a]!;
        const qh = q.hi[a]! - 1;
        const kl = k.lo[a]!;
        const kh = k.hi[a]! - 1;
        if (!(r.start(qh) <= kl && r.end(ql) >= kh)) {
          full = false;
          let any = false;
          for (let x = ql; x <= qh && !any; x++) any = meets(r, x, kl, kh);
          if (!any) return EMPTY;
        }
      }
      return full ? FULL : PARTIAL;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Exact enumeration helpers, used by user masks and by `and` when coverage cannot be derived.

function enumerate(ctx: Ctx, allows: CompiledPattern['allows'], b: number, h: number, g: number, q: Box, k: Box): Cover {
  const group = ctx.groups[g]!;
  const qt = new Int32Array(boxVolume(q));
  const kt = new Int32Array(boxVolume(k));
  const nq = boxTokens(ctx.geo.qShape, ctx.geo.dilation, group, q, qt);
  const nk = boxTokens(ctx.geo.kShape, ctx.geo.dilation, group, k, kt);
  let seen = 0;
  for (let i = 0; i < nq; i++) for (let j = 0; j < nk; j++) if (allows(b, h, qt[i]!, kt[j]!)) seen++;
  return seen === 0 ? EMPTY : seen === nq * nk ? FULL : PARTIAL;
}

const wholeK = (ctx: Ctx, g: number): Box => ({ lo: ctx.groups[g]!.kLen.map(() => 0), hi: [...ctx.groups[g]!.kLen] });
const wholeQ = (ctx: Ctx, g: number): Box => ({ lo: ctx.groups[g]!.qLen.map(() => 0), hi: [...ctx.groups[g]!.qLen] });

function maskPattern(fn: (b: number, h: number, q: number, k: number) => boolean, ctx: Ctx): CompiledPattern {
  const allows = (b: number, h: number, q: number, k: number) => fn(b, h, q, k) === true;
  return {
    geometry: ctx.geo,
    groups: ctx.groups,
    perBatch: true,
    perHead: true,
    allows,
    allowsRow(b, h, q, kTok, from, n, out) {
      for (let j = 0; j < n; j++) out[j] = fn(b, h, q, kTok[from + j]!) === true ? 1 : 0;
    },
    bounds: (_b, _h, g) => wholeK(ctx, g),
    qBounds: (_b, _h, g) => wholeQ(ctx, g),
    cuts() {},
    qCuts() {},
    classify: (b, h, g, q, k) => enumerate(ctx, allows, b, h, g, q, k),
  };
}

// ---------------------------------------------------------------------------------------------
// Block-sparse: a user block mask over flattened 1-D tokens.

function blockSparsePattern(spec: Extract<PatternSpec, { kind: 'blockSparse' }>, ctx: Ctx): CompiledPattern {
  const { blockQ, blockK, mask, maskHeads, numQBlocks, numKBlocks } = spec;
  const at = (h: number, qb: number, kb: number) => mask[((maskHeads === 1 ? 0 : h) * numQBlocks + qb) * numKBlocks + kb]! !== 0;
  const nk = ctx.geo.kShape[0]!;
  const nq = ctx.geo.qShape[0]!;
  return {
    geometry: ctx.geo,
    groups: ctx.groups,
    perBatch: false,
    perHead: maskHeads > 1,
    allows: (_b, h, q, k) => at(h, Math.floor(q / blockQ), Math.floor(k / blockK)),
    allowsRow(_b, h, q, kTok, from, n, out) {
      const qb = Math.floor(q / blockQ);
      for (let j = 0; j < n; j++) out[j] = at(h, qb, Math.floor(kTok[from + j]! / blockK)) ? 1 : 0;
    },
    bounds(_b, h, _g, q) {
      let lo = Infinity;
      let hi = -1;
      for (let qb = Math.floor(q.lo[0]! / blockQ); qb <= Math.floor((q.hi[0]! - 1) / blockQ); qb++)
        for (let kb = 0; kb < numKBlocks; kb++)
          if (at(h, qb, kb)) {
            lo = Math.min(lo, kb);
            hi = Math.max(hi, kb);
          }
      return hi < 0 ? null : { lo: [lo * blockK], hi: [Math.min(nk, (hi + 1) * blockK)] };
    },
    // blocks any block of the box's side pairs with, merged into runs of consecutive blocks
    keyRuns: (_b, h, _g, q) => blockRuns(numKBlocks, blockK, nk, Math.floor(q.lo[0]! / blockQ), Math.floor((q.hi[0]! - 1) / blockQ), (qb, kb) => at(h, qb, kb)),
    queryRuns: (_b, h, _g, k) => blockRuns(numQBlocks, blockQ, nq, Math.floor(k.lo[0]! / blockK), Math.floor((k.hi[0]! - 1) / blockK), (kb, qb) => at(h, qb, kb)),
    qBounds(_b, h, _g, k) {
      let lo = Infinity;
      let hi = -1;
      for (let kb = Math.floor(k.lo[0]! / blockK); kb <= Math.floor((k.hi[0]! - 1) / blockK); kb++)
        for (let qb = 0; qb < numQBlocks; qb++)
          if (at(h, qb, kb)) {
            lo = Math.min(lo, qb);
            hi = Math.max(hi, qb);
          }
      return hi < 0 ? null : { lo: [lo * blockQ], hi: [Math.min(nq, (hi + 1) * blockQ)] };
    },
    classify(_b, h, _g, q, k) {
      let on = 0;
      let total = 0;
      for (let qb = Math.floor(q.lo[0]! / blockQ); qb <= Math.floor((q.hi[0]! - 1) / blockQ); qb++)
        for (let kb = Math.floor(k.lo[0]! / blockK); kb <= Math.floor((k.hi[0]! - 1) / blockK); kb++) {
          total++;
          if (at(h, qb, kb)) on++;
        }
      return on === 0 ? EMPTY : on === total ? FULL : PARTIAL;
    },
    ...gridCuts(blockQ, blockK),
  };
}

/** Appends [lo, hi) to runs sorted by start, merged into the last where they touch or overlap. */
function pushRun(runs: [number, number][], lo: number, hi: number): void {
  if (lo >= hi) return;
  const last = runs[runs.length - 1];
  if (last && lo <= last[1]) last[1] = Math.max(last[1], hi);
  else runs.push([lo, hi]);
}

/**
 * Runs of the `n` tokens in blocks of `edge` (of `count` blocks) that pair with any block in
 * [b0, b1] of the other side (`on(other block, block)`), consecutive blocks merged.
 */
function blockRuns(count: number, edge: number, n: number, b0: number, b1: number, on: (other: number, block: number) => boolean): [number, number][] {
  const runs: [number, number][] = [];
  for (let x = 0; x < count; x++) {
    let hit = false;
    for (let o = b0; o <= b1 && !hit; o++) hit = on(o, x);
    if (hit) pushRun(runs, x * edge, Math.min(n, (x + 1) * edge));
  }
  return runs;
}

/** Cut points at every multiple of a block edge strictly inside (lo, hi). */
function gridCuts(qEdge: number, kEdge: number): Pick<CompiledPattern, 'cuts' | 'qCuts'> {
  const edges = (lo: number, hi: number, e: number, out: number[]) => {
    for (let x = (Math.floor(lo / e) + 1) * e; x < hi; x += e) out.push(x);
  };
  return {
    cuts: (_b, _h, _g, _q, _a, lo, hi, out) => edges(lo, hi, kEdge, out),
    qCuts: (_b, _h, _g, _k, _a, lo, hi, out) => edges(lo, hi, qEdge, out),
  };
}

// ---------------------------------------------------------------------------------------------
// Chunk selection (LongHeads): per head and query tile, a sorted list of selected key chunks.

function chunkPattern(spec: Extract<PatternSpec, { kind: 'chunks' }>, ctx: Ctx): CompiledPattern {
  const { chunkSize, queryTile, numQTiles, offsets, ids } = spec;
  const nk = ctx.geo.kShape[0]!;
  const nq = ctx.geo.qShape[0]!;
  const list = (h: number, t: number) => {
    const i = (spec.heads === 1 ? 0 : h) * numQTiles + t;
    return [offsets[i]!, offsets[i + 1]!] as const;
  };
  const has = (h: number, t: number, c: number) => {
    const i = (spec.heads === 1 ? 0 : h) * numQTiles + t;
    const end = offsets[i + 1]!;
    let lo = offsets[i]!;
    let hi = end;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ids[mid]! < c) lo = mid + 1;
      else hi = mid;
    }
    return lo < end && ids[lo] === c;
  };
  const tiles = (q: Box) => [Math.floor(q.lo[0]! / queryTile), Math.floor((q.hi[0]! - 1) / queryTile)] as const;
  return {
    geometry: ctx.geo,
    groups: ctx.groups,
    perBatch: false,
    perHead: spec.heads > 1,
    allows: (_b, h, q, k) => has(h, Math.floor(q / queryTile), Math.floor(k / chunkSize)),
    allowsRow(_b, h, q, kTok, from, n, out) {
      // one list lookup per chunk the keys pass through, not per key
      const t = Math.floor(q / queryTile);
      let c = -1;
      let on = 0;
      for (let j = 0; j < n; j++) {
        const cj = Math.floor(kTok[from + j]! / chunkSize);
        if (cj !== c) on = has(h, t, (c = cj)) ? 1 : 0;
        out[j] = on;
      }
    },
    bounds(_b, h, _g, q) {
      let lo = Infinity;
      let hi = -1;
      const [t0, t1] = tiles(q);
      for (let t = t0; t <= t1; t++) {
        const [a, b] = list(h, t);
        if (b > a) {
          lo = Math.min(lo, ids[a]!);
          hi = Math.max(hi, ids[b - 1]!);
        }
      }
      return hi < 0 ? null : { lo: [lo * chunkSize], hi: [Math.min(nk, (hi + 1) * chunkSize)] };
    },
    keyRuns(_b, h, _g, q) {
      // the chunks any query tile of the box lists, merged into runs of consecutive chunks
      const [t0, t1] = tiles(q);
      const cs: number[] = [];
      for (let t = t0; t <= t1; t++) {
        const [a, b] = list(h, t);
        for (let i = a; i < b; i++) cs.push(ids[i]!);
      }
      if (t1 > t0) cs.sort((x, y) => x - y);
      const runs: [number, number][] = [];
      for (const c of cs) pushRun(runs, c * chunkSize, Math.min(nk, (c + 1) * chunkSize));
      return runs;
    },
    queryRuns: (_b, h, _g, k) => blockRuns(numQTiles, queryTile, nq, Math.floor(k.lo[0]! / chunkSize), Math.floor((k.hi[0]! - 1) / chunkSize), (c, t) => has(h, t, c)),
    qBounds(_b, h, _g, k) {
      const c0 = Math.floor(k.lo[0]! / chunkSize);
      const c1 = Math.floor((k.hi[0]! - 1) / chunkSize);
      let lo = -1;
      let hi = -1;
      for (let t = 0; t < numQTiles; t++) {
        let hit = false;
        for (let c = c0; c <= c1 && !hit; c++) hit = has(h, t, c);
        if (hit) {
          if (lo < 0) lo = t;
          hi = t;
        }
      }
      return lo < 0 ? null : { lo: [lo * queryTile], hi: [Math.min(nq, (hi + 1) * queryTile)] };
    },
    classify(_b, h, _g, q, k) {
      const [t0, t1] = tiles(q);
      let on = 0;
      let total = 0;
      for (let t = t0; t <= t1; t++)
        for (let c = Math.floor(k.lo[0]! / chunkSize); c <= Math.floor((k.hi[0]! - 1) / chunkSize); c++) {
          total++;
          if (has(h, t, c)) on++;
        }
      return on === 0 ? EMPTY : on === total ? FULL : PARTIAL;
    },
    ...gridCuts(queryTile, chunkSize),
  };
}

// ---------------------------------------------------------------------------------------------
// Composition.

function intersect(a: Box | null, b: Box | null): Box | null {
  if (!a || !b) return null;
  const lo = a.lo.map((x, i) => Math.max(x, b.lo[i]!));
  const hi = a.hi.map((x, i) => Math.min(x, b.hi[i]!));
  return lo.some((x, i) => x >= hi[i]!) ? null : { lo, hi };
}

/** The intersection of two sorted lists of disjoint [lo, hi) runs. */
function intersectRuns(a: [number, number][], b: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0, j = 0; i < a.length && j < b.length; ) {
    const lo = Math.max(a[i]![0], b[j]![0]);
    const hi = Math.min(a[i]![1], b[j]![1]);
    if (lo < hi) out.push([lo, hi]);
    if (a[i]![1] < b[j]![1]) i++;
    else j++;
  }
  return out;
}

function hull(a: Box | null, b: Box | null): Box | null {
  if (!a) return b;
  if (!b) return a;
  return { lo: a.lo.map((x, i) => Math.min(x, b.lo[i]!)), hi: a.hi.map((x, i) => Math.max(x, b.hi[i]!)) };
}

function composite(parts: CompiledPattern[], ctx: Ctx): Omit<CompiledPattern, 'allows' | 'allowsRow' | 'bounds' | 'qBounds' | 'classify'> {
  return {
    geometry: ctx.geo,
    groups: ctx.groups,
    perBatch: parts.some((p) => p.perBatch),
    perHead: parts.some((p) => p.perHead),
    cuts: (b, h, g, q, a, lo, hi, out) => parts.forEach((p) => p.cuts(b, h, g, q, a, lo, hi, out)),
    qCuts: (b, h, g, k, a, lo, hi, out) => parts.forEach((p) => p.qCuts(b, h, g, k, a, lo, hi, out)),
  };
}

/** A row buffer that grows to the longest row asked (the parts' rows of and/or). */
function rowScratch(): (n: number) => Uint8Array {
  let buf = new Uint8Array(64);
  return (n) => (buf.length >= n ? buf : (buf = new Uint8Array(Math.max(n, 2 * buf.length))));
}

function andPattern(parts: CompiledPattern[], ctx: Ctx): CompiledPattern {
  const allows = (b: number, h: number, q: number, k: number) => parts.every((p) => p.allows(b, h, q, k));
  const scratch = rowScratch();
  return {
    ...composite(parts, ctx),
    allows,
    allowsRow(b, h, q, kTok, from, n, out) {
      parts[0]!.allowsRow(b, h, q, kTok, from, n, out);
      const row = scratch(n);
      for (let p = 1; p < parts.length; p++) {
        parts[p]!.allowsRow(b, h, q, kTok, from, n, row);
        for (let j = 0; j < n; j++) out[j]! &= row[j]!;
      }
    },
    bounds: (b, h, g, q) => parts.map((p) => p.bounds(b, h, g, q)).reduce(intersect),
    ...(parts.some((p) => p.keyRuns) ? { keyRuns: (b: number, h: number, g: number, q: Box) => parts.flatMap((p) => (p.keyRuns ? [p.keyRuns(b, h, g, q)] : [])).reduce(intersectRuns) } : {}),
    ...(parts.some((p) => p.queryRuns) ? { queryRuns: (b: number, h: number, g: number, k: Box) => parts.flatMap((p) => (p.queryRuns ? [p.queryRuns(b, h, g, k)] : [])).reduce(intersectRuns) } : {}),
    qBounds: (b, h, g, k) => parts.map((p) => p.qBounds(b, h, g, k)).reduce(intersect),
    classify(b, h, g, q, k) {
      let partial = 0;
      for (const p of parts) {
        const c = p.classify(b, h, g, q, k);
        if (c === EMPTY) return EMPTY;
        if (c === PARTIAL) partial++;
      }
      if (partial === 0) return FULL;
      // one partial part among full ones is exactly partial; two partial parts may not overlap
      return partial === 1 ? PARTIAL : enumerate(ctx, allows, b, h, g, q, k);
    },
  };
}

function orPattern(parts: CompiledPattern[], ctx: Ctx): CompiledPattern {
  const scratch = rowScratch();
  return {
    ...composite(parts, ctx),
    allows: (b, h, q, k) => parts.some((p) => p.allows(b, h, q, k)),
    allowsRow(b, h, q, kTok, from, n, out) {
      parts[0]!.allowsRow(b, h, q, kTok, from, n, out);
      const row = scratch(n);
      for (let p = 1; p < parts.length; p++) {
        parts[p]!.allowsRow(b, h, q, kTok, from, n, row);
        for (let j = 0; j < n; j++) out[j]! |= row[j]!;
      }
    },
    bounds: (b, h, g, q) => parts.map((p) => p.bounds(b, h, g, q)).reduce(hull),
    qBounds: (b, h, g, k) => parts.map((p) => p.qBounds(b, h, g, k)).reduce(hull),
    classify(b, h, g, q, k) {
      let empty = 0;
      for (const p of parts) {
        const c = p.classify(b, h, g, q, k);
        if (c === FULL) return FULL;
        if (c === EMPTY) empty++;
      }
      return empty === parts.length ? EMPTY : PARTIAL;
    },
  };
}
