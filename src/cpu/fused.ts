import { boxCoords, boxTokens } from '../patterns/geometry.js';
import type { ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { kvSchedule, tileBox } from '../schedule.js';
import type { TileCtx } from './tile-step.js';

/**
 * Fused forward over work items [start, end): for each query tile, walk its schedule with an
 * online softmax and write O and LSE. Full visits skip the mask; partial ones apply it. The walk
 * is TypeScript; every visit's arithmetic is the shared tile step (wasm).
 */
export function runFused(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
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
    if (rules) c.setIntervals(rules);
    for (const visit of kvSchedule(p, span.b, h, g, qBox, tileFor(P.kvTile, c.rank))) {
      const tk = boxTokens(geo.kShape, geo.dilation, grp, visit.box, c.kTok);
      c.keyRows(tk, true);
      c.score(tk, visit.box, visit.full, p, rules);
      c.accumulate(tk);
    }
    c.finish();
  }
}
