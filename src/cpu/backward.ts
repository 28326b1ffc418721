import type { ItemSpace } from '../problem.js';
import { ropePositions, unrotateRows } from '../rope.js';
import { startTile, walkTile } from './fused.js';
import type { TileCtx } from './tile-step.js';

/**
 * Fused backward over work items [start, end) (FlashAttention-2, recomputed from the forward's
 * LSE, design.md 3): per query tile, the same walk as the forward; per visit P = exp(S - lse),
 * dV += P^T dO, dP = dO V^T, dS = P (dP - delta) (times the softcap's derivative), dQ += dS K,
 * dK += scale dS^T Q, drpb += dS. dQ stays in the tile (each query row belongs to one tile);
 * dK, dV and drpb go to this thread's partials, summed in thread order after the pass.
 */
export function runBackward(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const { i32, f32, at, tqPad, K } = c;
  const { heads: H, dim: D, dimV: DV } = P;
  const slots = c.lay.slots;
  for (let item = start; item < end; item++) {
    const t = startTile(c, space, item);
    const { span, h } = t;
    const tq = c.tq;
    for (let i = 0; i < tqPad; i++) {
      // pad lanes read row 0 (their probabilities are 0): every pointer stays inside a tensor
      const row = span.qOff + c.qTok[i < tq ? i : 0]!;
      const base = (row * H + h) * DV * 4;
      i32[(at.doRows >> 2) + i] = slots.dout + base;
      i32[(at.outRows >> 2) + i] = slots.out + base;
      f32[(at.lseLanes >> 2) + i] = i < tq ? f32[(slots.lse >> 2) + row * H + h]! : -Infinity;
      if (i >= tq) i32[(at.qRows >> 2) + i] = i32[at.qRows >> 2]!;
    }
    // q and dO rows lie heads * dim apart in the job (2 KiB at 8 heads of 64: two L1 sets for the
    // tile), or scattered over an N-D tile: dK += dS^T q and dV += P^T dO walk them once per block of
    // 4 keys, so keyAcc reads them copied together, row i at pack + i * width
    K.gatherRows(at.qRows, tqPad, D, at.qPack);
    K.gatherRows(at.doRows, tqPad, DV, at.doPack);
    K.loadQT(at.doT, at.doRows, tq, tqPad, DV, 1);
    K.rowDots(at.delta, at.doRows, at.outRows, tq, DV); // delta = rowsum(dO * O)
    f32.fill(0, (at.delta >> 2) + tq, (at.delta >> 2) + tqPad);
    f32.fill(0, at.dq >> 2, (at.dq >> 2) + tqPad * D);
    f32.fill(1, at.ones >> 2, (at.ones >> 2) + tqPad);
    walkTile(c, t, (tk, full, i0, ni, k0) => {
      c.score(tk, full, t.p, t.rules, i0, ni, k0);
      step(c, tk, i0, ni, k0);
    });
    // dQ = dS K (scale folded in here), rotated back to the un-rotated input's frame
    const dq = f32.subarray(at.dq >> 2, (at.dq >> 2) + tq * D);
    for (let x = 0; x < tq * D; x++) dq[x]! *= P.scale;
    if (P.rope) {
      // workers get the problem without its RoPE table: it is read from the shared memory
      const rope = { ...P.rope, table: f32.subarray(slots.rope >> 2, (slots.rope >> 2) + P.rope.maxPos * P.rope.dims) };
      ropePositions(rope, P.pattern, h, span.qGrid.reduce((a, b) => a * b, 1), span.kGrid.reduce((a, b) => a * b, 1), c.qTok, tq, true, c.qTok[0]!, c.pos);
      unrotateRows(rope, dq, tq, D, c.pos);
    }
    for (let i = 0; i < tq; i++) f32.set(dq.subarray(i * D, (i + 1) * D), (slots.dq >> 2) + ((span.qOff + c.qTok[i]!) * H + h) * D);
  }
}

/** The gradient step of one scored visit: keys [k0, k0 + tk) against lanes [i0, i0 + ni). */
function step(c: TileCtx, tk: number, i0: number, ni: number, k0: number): void {
  const { K, at, tqPad: ld, problem: P } = c;
  const l4 = 4 * i0;
  const k4 = 4 * k0;
  K.probsT(at.s + l4, ld, ni, tk, at.lseLanes + l4);
  K.keyAcc(at.dvRows + k4, P.dimV, at.s + l4, ld, ni, tk, at.doPack + l4 * P.dimV, 4 * P.dimV, 1);
  K.scoresT(at.dp + l4, at.doT + l4, ld, ni, at.vRows + k4, tk, P.dimV);
  // drpb and dbias take dS itself (rpb and bias are added after the softcap), then dS goes on through the softcap
  const table = P.rpb ? 'drpbp' : P.bias && c.lay.slots.dbiasp >= 0 ? 'dbiasp' : undefined;
  if (table) {
    K.dsT(at.s + l4, at.dp + l4, ld, ni, tk, at.delta + l4, at.sc + l4, 0);
    // score() left the rpb (or bias) row and key indices in rowIdx / colIdx for these lanes and keys
    const real = Math.max(0, Math.min(ni, c.tq - i0));
    K.scatterAdd(at.dp + l4, ld, real, tk, c.lay.slots[table] + c.thread * c.lay.partialBytes[table]!, at.rowIdx, at.colIdx);
    if (P.softcap > 0) K.softcapGrad(at.dp + l4, at.sc + l4, ld, ni, tk, P.softcap);
  } else K.dsT(at.s + l4, at.dp + l4, ld, ni, tk, at.delta + l4, at.sc + l4, P.softcap);
  const dq = at.dq + l4 * P.dim;
  if (c.kRowStep > 0) K.pvAccStrided(dq, P.dim, at.dp + l4, ld, ni, tk, c.kRowFirst + k0 * c.kRowStep, c.kRowStep, at.ones + l4);
  else K.pvAcc(dq, P.dim, at.dp + l4, ld, ni, tk, at.kRows + k4, at.ones + l4);
  K.keyAcc(at.dkRows + k4, P.dim, at.dp + l4, ld, ni, tk, at.qPack + l4 * P.dim, 4 * P.dim, P.scale);
}
