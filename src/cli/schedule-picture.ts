import { type CompiledPattern, EMPTY, FULL, compilePattern } from '../patterns/compile.js';
import type { AttnProblem } from '../problem.js';
import { tileBox, tileCount } from '../schedule.js';
import { tileFor } from '../problem.js';

/**
 * A problem's tile schedule as a grid for the HTML report: one row per query tile, one column per
 * key tile (of the first sequence, first head, first dilation group), each cell full (every pair
 * allowed, no per-element test), partial (masked) or skipped (never visited). Large grids are
 * subsampled to at most `max` rows and columns (every n-th tile).
 */
export interface SchedulePicture {
  rows: number;
  cols: number;
  /** Tiles per drawn row and column (1 = every tile). */
  stepQ: number;
  stepK: number;
  /** 0 skipped, 1 partial, 2 full; rows * cols. */
  cells: number[];
  counts: { full: number; partial: number; skipped: number };
}

export function schedulePicture(problem: AttnProblem, max = 96): SchedulePicture {
  const span = problem.seqs[0]!;
  const p: CompiledPattern = compilePattern(problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: problem.heads });
  const grp = p.groups[0]!;
  const rank = grp.qLen.length;
  const qt = tileFor(problem.qTile, rank);
  const kt = tileFor(problem.kvTile, rank);
  const nQ = tileCount(grp.qLen, qt);
  const nK = tileCount(grp.kLen, kt);
  const stepQ = Math.ceil(nQ / max);
  const stepK = Math.ceil(nK / max);
  const rows = Math.ceil(nQ / stepQ);
  const cols = Math.ceil(nK / stepK);
  const cells: number[] = [];
  const counts = { full: 0, partial: 0, skipped: 0 };
  for (let r = 0; r < rows; r++) {
    const q = tileBox(grp.qLen, qt, r * stepQ);
    for (let c = 0; c < cols; c++) {
      const cover = p.classify(span.b, 0, 0, q, tileBox(grp.kLen, kt, c * stepK));
      const v = cover === EMPTY ? 0 : cover === FULL ? 2 : 1;
      cells.push(v);
      if (v === 2) counts.full++;
      else if (v === 1) counts.partial++;
      else counts.skipped++;
    }
  }
  return { rows, cols, stepQ, stepK, cells, counts };
}
