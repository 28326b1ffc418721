import { type Box, type Geometry, type Group, boxCoords, boxTokens } from '../patterns/geometry.js';
import type { AxisRule } from '../patterns/rules.js';
import type { CompiledPattern } from '../patterns/compile.js';
import type { ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { kvSchedule, tileBox } from '../schedule.js';
import type { TileCtx } from './tile-step.js';

/** Keys per slice of a partial 1-D visit (N-D visits are sliced one key coordinate at a time). */
const SLICE_1D = 8;

/**
 * Fused forward over work items [start, end): for each query tile, walk its schedule with an
 * online softmax and write O and LSE. Full visits skip the mask. Partial visits of interval
 * patterns (neighborhoods, windows, causal) are cut into key slices, each run only on the query
 * rows whose windows reach it: on a neighborhood most of a visit's (query, key) pairs are outside
 * the windows, and this keeps the arithmetic near the allowed pairs. The walk is TypeScript;
 * every visit's arithmetic is the shared tile step (wasm).
 */
export function runFused(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const neighborhood = P.pattern.kind === 'neighborhood';
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = P.seqs[seq]!;
    const geo = p.geometry;
    const grp = p.groups[g]!;
    const qBox = tileBox(grp.qLen, tileFor(P.qTile, c.rank), tile);
    const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, c.qTok);
    boxCoords(qBox, c.qCrd);
    c.beginQueries(span, h, tq);
    const rules = p.boxRules?.(g);
    if (rules) c.setIntervals(rules, qBox);
    if (neighborhood && rules) {
      // a neighborhood tile's union box is small (tile + kernel per axis): slice it whole
      const union = p.bounds(span.b, h, g, qBox);
      if (union) sliced(c, p, rules, qBox, union, geo, grp);
      c.finish();
      continue;
    }
    for (const visit of kvSchedule(p, span.b, h, g, qBox, tileFor(P.kvTile, c.rank))) {
      if (!visit.full && rules) {
        sliced(c, p, rules, qBox, visit.box, geo, grp);
        continue;
      }
      const tk = c.keyList(visit.box, geo, grp, true);
      c.score(tk, visit.full, p, rules);
      c.accumulate(tk);
    }
    c.finish();
  }
}

/**
 * A partial visit of an interval pattern, slice by slice along axis s, the first axis where the
 * query tile is wider than one token: the tile's rows are row-major, so the query rows whose
 * intervals on s reach a slice are one contiguous run of lanes (rounded out to 4; the mask
 * removes the extra pairs exactly). The key list is built once with s outermost, so each slice
 * is a contiguous run of it.
 */
function sliced(c: TileCtx, p: CompiledPattern, rules: readonly AxisRule[], qBox: Box, box: Box, geo: Geometry, grp: Group): void {
  const rank = c.rank;
  let s = 0;
  while (s < rank - 1 && qBox.hi[s]! - qBox.lo[s]! === 1) s++;
  let inner = 1;
  for (let a = s + 1; a < rank; a++) inner *= qBox.hi[a]! - qBox.lo[a]!;
  const tk = c.keyList(box, geo, grp, true, s);
  if (tk === 0) return;
  const run = tk / (box.hi[s]! - box.lo[s]!); // keys per coordinate on s
  const rule = rules[s]!;
  const width = rank === 1 ? SLICE_1D : 1;
  // (lanes, keys) of every slice, laid out for one slicedVisit call
  const { i32, at } = c;
  const ranges = at.ranges >> 2;
  let n = 0;
  let qa = qBox.lo[s]!;
  for (let k0 = box.lo[s]!; k0 < box.hi[s]!; k0 += width) {
    const k1 = Math.min(k0 + width, box.hi[s]!) - 1;
    // both interval ends are non-decreasing in the query coordinate (design.md 7)
    while (qa < qBox.hi[s]! && rule.end(qa) < k0) qa++;
    let qb = qa - 1;
    while (qb + 1 < qBox.hi[s]! && rule.start(qb + 1) <= k1) qb++;
    if (qb < qa) continue;
    const i0 = ((qa - qBox.lo[s]!) * inner) & ~3;
    const r = ranges + 4 * n++;
    i32[r] = i0;
    i32[r + 1] = Math.min(c.tqPad, ((qb - qBox.lo[s]! + 1) * inner + 3) & ~3) - i0;
    i32[r + 2] = (k0 - box.lo[s]!) * run;
    i32[r + 3] = (k1 - k0 + 1) * run;
  }
  const P = c.problem;
  if (!P.bias && !P.rpb && !P.rope) {
    c.K.slicedVisit(at.s, at.qt, c.tqPad, P.dim, P.dimV, at.kRows, at.vRows, at.kCrd, rank, at.lo, at.hi, at.ranges, n, P.softcap, at.m, at.l, at.alpha, at.o);
    return;
  }
  // hooks that read tokens or coordinates per slice run through the TypeScript step
  for (let x = 0; x < n; x++) {
    const r = ranges + 4 * x;
    c.score(i32[r + 3]!, false, p, rules, i32[r]!, i32[r + 1]!, i32[r + 2]!);
    c.accumulate(i32[r + 3]!, i32[r]!, i32[r + 1]!, i32[r + 2]!);
  }
}
