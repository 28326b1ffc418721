import { type Box, boxTokens, boxVolume } from '../patterns/geometry.js';
import type { AttnBuffers, AttnProblem, ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { kvSchedule, tileBox } from '../schedule.js';
import { rotateRows, ropePositions } from '../rope.js';
import { gemmABt, gemmAccPV } from './microkernels.js';

/** Per-thread scratch, sized once per job: everything here is O(tile), never O(N). */
export class FusedScratch {
  readonly qt: Float32Array;
  readonly kt: Float32Array;
  readonly vt: Float32Array;
  readonly s: Float32Array;
  readonly o: Float32Array;
  readonly m: Float64Array;
  readonly l: Float64Array;
  readonly qTok: Int32Array;
  readonly kTok: Int32Array;
  readonly qCrd: Int32Array;
  readonly kCrd: Int32Array;
  readonly rowLo: Int32Array;
  readonly rowHi: Int32Array;
  readonly pos: Int32Array;
  constructor(readonly maxQ: number, readonly maxK: number, d: number, dv: number, rank: number) {
    this.qt = new Float32Array(maxQ * d);
    this.kt = new Float32Array(maxK * d);
    this.vt = new Float32Array(maxK * dv);
    this.s = new Float32Array(maxQ * maxK);
    this.o = new Float32Array(maxQ * dv);
    this.m = new Float64Array(maxQ);
    this.l = new Float64Array(maxQ);
    this.qTok = new Int32Array(maxQ);
    this.kTok = new Int32Array(maxK);
    this.qCrd = new Int32Array(maxQ * rank);
    this.kCrd = new Int32Array(maxK * rank);
    this.rowLo = new Int32Array(maxQ * rank);
    this.rowHi = new Int32Array(maxQ * rank);
    this.pos = new Int32Array(Math.max(maxQ, maxK));
  }
  static bytes(maxQ: number, maxK: number, d: number, dv: number, rank: number): number {
    return 4 * (maxQ * d + maxK * d + maxK * dv + maxQ * maxK + maxQ * dv) + 16 * maxQ + 4 * (maxQ + maxK) * (1 + rank) + 8 * maxQ * rank + 4 * Math.max(maxQ, maxK);
  }
}

export const prod = (t: readonly number[]) => t.reduce((a, b) => a * b, 1);

export function scratchFor(problem: AttnProblem, rank: number): FusedScratch {
  return new FusedScratch(prod(tileFor(problem.qTile, rank)), prod(tileFor(problem.kvTile, rank)), problem.dim, problem.dimV, rank);
}

/** Local coordinates of every point of a box, row-major, `rank` entries per point. */
export function boxCoords(box: Box, out: Int32Array): void {
  const rank = box.lo.length;
  const x = [...box.lo];
  let n = 0;
  if (x.some((v, a) => v >= box.hi[a]!)) return;
  for (;;) {
    for (let a = 0; a < rank; a++) out[n++] = x[a]!;
    let a = rank - 1;
    while (a >= 0 && ++x[a]! === box.hi[a]!) x[a] = box.lo[a--]!;
    if (a < 0) return;
  }
}

/** Copies rows `tok` of head `h` from a heads-last tensor into a dense [n, d] tile. */
export function gatherRows(src: Float32Array, rowOff: number, tok: Int32Array, n: number, heads: number, h: number, d: number, dst: Float32Array): void {
  for (let i = 0; i < n; i++) {
    const base = ((rowOff + tok[i]!) * heads + h) * d;
    dst.set(src.subarray(base, base + d), i * d);
  }
}

/**
 * Fused forward over work items [start, end): for each query tile, walk its schedule with an
 * online softmax (running max m and sum l per row) and write O and LSE. Full visits skip the
 * per-element mask; partial ones apply the pattern's predicate.
 */
export function runFused(problem: AttnProblem, bufs: AttnBuffers, space: ItemSpace, start: number, end: number, sc: FusedScratch): void {
  const { heads: H, kvHeads, dim: D, dimV: DV, scale, softcap, bias, rpb, rope } = problem;
  const group = H / kvHeads;
  const { qt, kt, vt, s: S, o: O, m, l, qTok, kTok, qCrd, kCrd, rowLo, rowHi, pos } = sc;
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = problem.seqs[seq]!;
    const geo = p.geometry;
    const rank = geo.qShape.length;
    const grp = p.groups[g]!;
    const qBox = tileBox(grp.qLen, tileFor(problem.qTile, rank), tile);
    const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, qTok);
    boxCoords(qBox, qCrd);
    gatherRows(bufs.q, span.qOff, qTok, tq, H, h, D, qt);
    const nq = prod(span.qGrid);
    const nk = prod(span.kGrid);
    if (rope) {
      ropePositions(rope, problem.pattern, h, nq, nk, qTok, tq, true, qTok[0]!, pos);
      rotateRows(rope, qt, tq, D, pos);
    }
    for (let x = 0; x < tq * D; x++) qt[x]! *= scale;
    const kh = Math.floor(h / group);
    m.fill(-Infinity, 0, tq);
    l.fill(0, 0, tq);
    O.fill(0, 0, tq * DV);
    const rules = p.boxRules?.(g);
    if (rules) {
      // each query row's key interval per axis, once per tile instead of once per pair
      for (let i = 0; i < tq; i++)
        for (let a = 0; a < rank; a++) {
          const xq = qCrd[i * rank + a]!;
          rowLo[i * rank + a] = rules[a]!.start(xq);
          rowHi[i * rank + a] = rules[a]!.end(xq);
        }
    }
    const biasBase = bias ? ((bias.batch === 1 ? 0 : span.b) * bias.heads + (bias.heads === 1 ? 0 : h)) * nq * nk : 0;
    for (const visit of kvSchedule(p, span.b, h, g, qBox, tileFor(problem.kvTile, rank))) {
      const tk = boxTokens(geo.kShape, geo.dilation, grp, visit.box, kTok);
      gatherRows(bufs.k, span.kOff, kTok, tk, kvHeads, kh, D, kt);
      if (rope) {
        ropePositions(rope, problem.pattern, h, nq, nk, kTok, tk, false, qTok[0]!, pos);
        rotateRows(rope, kt, tk, D, pos);
      }
      gatherRows(bufs.v, span.kOff, kTok, tk, kvHeads, kh, DV, vt);
      gemmABt(qt, tq, kt, tk, D, S);
      const n = tq * tk;
      // score modifiers, each a flat pass only when present (q was pre-scaled at gather time)
      if (softcap > 0) for (let x = 0; x < n; x++) S[x] = softcap * Math.tanh(S[x]! / softcap);
      if (bias || rpb) boxCoords(visit.box, kCrd);
      if (bias)
        for (let i = 0; i < tq; i++) {
          const b0 = biasBase + qTok[i]! * nk;
          for (let j = 0; j < tk; j++) S[i * tk + j]! += bias.data[b0 + kTok[j]!]!;
        }
      if (rpb) for (let i = 0; i < tq; i++) for (let j = 0; j < tk; j++) S[i * tk + j]! += rpb.data[rpbIndex(rpb.kernel, h, qCrd, i, kCrd, j)]!;
      if (!visit.full) {
        if (rules) {
          if (!(bias || rpb)) boxCoords(visit.box, kCrd);
          for (let i = 0; i < tq; i++) {
            const row = i * tk;
            for (let j = 0; j < tk; j++) {
              for (let a = 0; a < rank; a++) {
                const xk = kCrd[j * rank + a]!;
                if (xk < rowLo[i * rank + a]! || xk > rowHi[i * rank + a]!) {
                  S[row + j] = -Infinity;
                  break;
                }
              }
            }
          }
        } else {
          for (let i = 0; i < tq; i++) for (let j = 0; j < tk; j++) if (!p.allows(span.b, h, qTok[i]!, kTok[j]!)) S[i * tk + j] = -Infinity;
        }
      }
      // online softmax: rescale what was accumulated under the old max
      for (let i = 0; i < tq; i++) {
        const row = i * tk;
        let mx = -Infinity;
        for (let j = 0; j < tk; j++) if (S[row + j]! > mx) mx = S[row + j]!;
        const mNew = Math.max(m[i]!, mx);
        if (mNew === -Infinity) {
          S.fill(0, row, row + tk);
          continue;
        }
        const alpha = Math.exp(m[i]! - mNew);
        let sum = 0;
        for (let j = 0; j < tk; j++) {
          const x = S[row + j]!;
          const e = x === -Infinity ? 0 : Math.exp(x - mNew);
          S[row + j] = e;
          sum += e;
        }
        l[i] = l[i]! * alpha + sum;
        m[i] = mNew;
        if (alpha !== 1) for (let c = i * DV; c < (i + 1) * DV; c++) O[c]! *= alpha;
      }
      gemmAccPV(S, tq, tk, vt, DV, O);
    }
    for (let i = 0; i < tq; i++) {
      const row = span.qOff + qTok[i]!;
      const dst = (row * H + h) * DV;
      const li = l[i]!;
      const inv = li > 0 ? 1 / li : 0;
      for (let c = 0; c < DV; c++) bufs.out[dst + c] = O[i * DV + c]! * inv;
      bufs.lse[row * H + h] = li > 0 ? m[i]! + Math.log(li) : -Infinity;
    }
  }
}

/** Flat index into rpb [H, 2K0-1, 2K1-1, ...] for the offset key - query (group-local). */
export function rpbIndex(kernel: readonly number[], h: number, qCrd: Int32Array, i: number, kCrd: Int32Array, j: number): number {
  const rank = kernel.length;
  let idx = h;
  for (let a = 0; a < rank; a++) {
    const span = 2 * kernel[a]! - 1;
    idx = idx * span + (kCrd[j * rank + a]! - qCrd[i * rank + a]! + kernel[a]! - 1);
  }
  return idx;
}

export const tileVolume = boxVolume;
