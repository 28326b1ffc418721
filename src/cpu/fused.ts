import { type Box, type Geometry, type Group, boxCoords, boxTokens } from '../patterns/geometry.js';
import type { AxisRule } from '../patterns/rules.js';
import type { CompiledPattern } from '../patterns/compile.js';
import type { ItemSpace, SeqSpan } from '../problem.js';
import { tileFor } from '../problem.js';
import { kvSchedule, tileBox } from '../schedule.js';
import type { TileCtx } from './tile-step.js';

/** Keys per slice of a partial 1-D visit (N-D visits are sliced one key coordinate at a time). */
const SLICE_1D = 8;

/** One visit of a query tile: keys [k0, k0 + tk) of the key list against lanes [i0, i0 + ni). */
export type VisitStep = (tk: number, full: boolean, i0: number, ni: number, k0: number) => void;

/** A query tile being walked: its pattern, rules, box and where it sits. */
export interface TileWalk {
  readonly p: CompiledPattern;
  readonly rules: readonly AxisRule[] | undefined;
  readonly qBox: Box;
  readonly geo: Geometry;
  readonly grp: Group;
  readonly span: SeqSpan;
  readonly h: number;
  readonly g: number;
}

/**
 * Decodes work item `item` into its query tile, loads it (tokens, coordinates, Q unless `loadQ`
 * is false, intervals) and returns where it sits; every kernel family's walk starts here.
 */
export function startTile(c: TileCtx, space: ItemSpace, item: number, loadQ = true): TileWalk {
  const P = c.problem;
  const { seq, h, g, tile } = space.decode(item, c.item);
  const p = space.pattern(seq);
  const span = P.seqs[seq]!;
  const geo = p.geometry;
  const grp = p.groups[g]!;
  const qBox = tileBox(grp.qLen, tileFor(P.qTile, c.rank), tile, c.qBox);
  const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, c.qTok);
  boxCoords(qBox, c.qCrd);
  c.beginQueries(span, h, tq, loadQ);
  c.groupIndex = g;
  const rules = p.boxRules?.(g);
  if (rules) c.setIntervals(rules, qBox);
  return { p, rules, qBox, geo, grp, span, h, g };
}

/**
 * Walks a query tile's schedule, calling `step` per visit. Full visits skip the mask. Partial
 * visits of interval patterns (neighborhoods, windows, causal) are cut into key slices, each run
 * only on the query rows whose windows reach it: on a neighborhood most of a visit's pairs are
 * outside the windows, and this keeps the arithmetic near the allowed pairs. A neighborhood
 * tile's union box is small (tile + kernel per axis), so it is sliced whole. `fast`, when given,
 * runs a whole sliced box in one call instead of a step per slice (the forward's slicedVisit).
 */
export function walkTile(c: TileCtx, t: TileWalk, step: VisitStep, fast?: () => void): void {
  const { p, rules, qBox, geo, grp, span, h, g } = t;
  const P = c.problem;
  if (P.pattern.kind === 'neighborhood' && rules) {
    const union = p.bounds(span.b, h, g, qBox);
    if (union) sliced(c, rules, qBox, union, geo, grp, step, fast);
    return;
  }
  for (const visit of kvSchedule(p, span.b, h, g, qBox, tileFor(P.kvTile, c.rank))) {
    if (!visit.full && rules) {
      sliced(c, rules, qBox, visit.box, geo, grp, step, fast);
      continue;
    }
    // a plain full visit (no rpb, bias or RoPE) reads neither coordinates nor tokens
    const plain = visit.full && !P.rpb && !P.bias && !P.rope;
    const tk = c.keyList(visit.box, geo, grp, true, 0, !visit.full || P.rpb !== undefined, !plain);
    step(tk, visit.full, 0, c.lanes, 0);
  }
}

/**
 * Fused forward over work items [start, end): for each query tile, walk its schedule with an
 * online softmax and write O and LSE. The walk is TypeScript; every visit's arithmetic is the
 * shared tile step (wasm).
 */
export function runFused(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const fast = !P.bias && !P.rpb && !P.rope ? () => c.slicedVisit() : undefined;
  for (let item = start; item < end; item++) {
    const t = startTile(c, space, item);
    walkTile(
      c,
      t,
      (tk, full, i0, ni, k0) => {
        c.score(tk, full, t.p, t.rules, i0, ni, k0);
        c.accumulate(tk, i0, ni, k0);
      },
      fast,
    );
    c.finish();
  }
}

/**
 * A partial visit of an interval pattern, slice by slice along axis s, the first axis where the
 * query tile is wider than one token: the tile's rows are row-major, so the query rows whose
 * intervals on s reach a slice are one contiguous run of lanes (rounded out to 4; the mask
 * removes the extra pairs exactly). The key list is built once with s outermost, so each slice
 * is a contiguous run of it; the slices' (lanes, keys) go to the ranges scratch.
 */
function sliced(c: TileCtx, rules: readonly AxisRule[], qBox: Box, box: Box, geo: Geometry, grp: Group, step: VisitStep, fast?: () => void): void {
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
  c.slices = n;
  if (fast) return fast();
  for (let x = 0; x < n; x++) {
    const r = ranges + 4 * x;
    step(i32[r + 3]!, false, i32[r]!, i32[r + 1]!, i32[r + 2]!);
  }
}
