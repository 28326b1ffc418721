import { type Box, boxCoords, boxTokens, prod } from '../patterns/geometry.js';
import type { AxisRule } from '../patterns/rules.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnProblem, ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { tileBox } from '../schedule.js';
import { startTile } from './fused.js';
import type { TileCtx } from './tile-step.js';

/**
 * Neighborhood-only kernels on the shared tile step: NATTEN's naive kernel (each query alone
 * against its own window) and the unfused (GEMM-based) qk -> softmax -> av pipeline. Scores are
 * laid out [rows, H, windowVolume]; along each axis a key's slot is its offset from the window base
 * (the clamped window start, or query - K + 1 when causal), so RPB and slots agree. Slots without
 * an allowed key hold -inf.
 */
type NASpec = Extract<PatternSpec, { kind: 'neighborhood' }>;

function naSpec(problem: AttnProblem): NASpec {
  const p = problem.pattern;
  if (p.kind !== 'neighborhood') throw new Error('neighborhood kernels need a plain neighborhood pattern');
  return p;
}

export const windowVolume = (p: AttnProblem): number => prod(naSpec(p).kernelSize);

/** One query's window as a box (per axis [start, end] of its local coordinate). */
function windowBox(rules: readonly AxisRule[], qCrd: Int32Array, i: number, rank: number): Box {
  const lo: number[] = [];
  const hi: number[] = [];
  for (let a = 0; a < rank; a++) {
    const xq = qCrd[i * rank + a]!;
    lo.push(rules[a]!.start(xq));
    hi.push(rules[a]!.end(xq) + 1);
  }
  return { lo, hi };
}

/** Naive: every query is a tile of one row whose single, full visit is its own window. */
export function runNaive(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const qc = new Int32Array(c.rank);
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = P.seqs[seq]!;
    const geo = p.geometry;
    const grp = p.groups[g]!;
    const rules = p.boxRules!(g);
    const qBox = tileBox(grp.qLen, tileFor(P.qTile, c.rank), tile);
    const tokens = new Int32Array(prod(qBox.hi.map((x, a) => x - qBox.lo[a]!)));
    const coords = new Int32Array(tokens.length * c.rank);
    const n = boxTokens(geo.qShape, geo.dilation, grp, qBox, tokens);
    boxCoords(qBox, coords);
    for (let i = 0; i < n; i++) {
      c.qTok[0] = tokens[i]!;
      for (let a = 0; a < c.rank; a++) c.qCrd[a] = qc[a] = coords[i * c.rank + a]!;
      c.beginQueries(span, h, 1);
      const tk = c.keyList(windowBox(rules, qc, 0, c.rank), geo, grp, true);
      c.score(tk, true, p, undefined);
      c.accumulate(tk);
      c.finish();
    }
  }
}

/**
 * Each query's window (lo, hi, base per axis, padded to 3 axes) and attn row, for windowSlots,
 * which moves its scores between the union-box tile and the [row, slot] layout.
 */
function windowTable(c: TileCtx, spec: NASpec, rules: readonly AxisRule[], tq: number, union: Box, toS: boolean): void {
  const { i32, at, rank, qCrd, problem: P } = c;
  const K = spec.kernelSize;
  const pad = 3 - rank;
  const wv = prod(K);
  for (let i = 0; i < tq; i++) {
    const w = (at.win >> 2) + i * 9;
    for (let a = 0; a < 3; a++) {
      if (a < pad) {
        i32.fill(0, w + 3 * a, w + 3 * a + 3);
        continue;
      }
      const ax = a - pad;
      const xq = qCrd[i * rank + ax]!;
      const lo = rules[ax]!.start(xq);
      i32[w + 3 * a] = lo;
      i32[w + 3 * a + 1] = rules[ax]!.end(xq);
      i32[w + 3 * a + 2] = spec.isCausal[ax] ? xq - K[ax]! + 1 : lo;
    }
    i32[(at.rowIdx >> 2) + i] = c.lay.slots.attn + ((c.span.qOff + c.qTok[i]!) * P.heads + c.h) * wv * 4;
  }
  const k = (a: number) => (a < pad ? 1 : K[a - pad]!);
  const ulo = (a: number) => (a < pad ? 0 : union.lo[a - pad]!);
  const ext = (a: number) => (a < pad ? 1 : union.hi[a - pad]! - union.lo[a - pad]!);
  c.K.windowSlots(at.s, c.tqPad, tq, at.win, k(1), k(2), ulo(0), ulo(1), ulo(2), ext(1), ext(2), at.rowIdx, toS ? 1 : 0);
}

/** Starts an unfused item: its query tile and the union box of its windows (keys listed row-major). */
function unfusedItem(c: TileCtx, space: ItemSpace, item: number, loadQ: boolean) {
  const t = startTile(c, space, item, loadQ);
  const union = t.p.bounds(t.span.b, t.h, t.g, t.qBox)!;
  const tk = c.keyList(union, t.geo, t.grp, !loadQ);
  return { p: t.p, rules: t.p.boxRules!(t.g), union, tq: c.tq, tk, h: t.h, span: t.span };
}

/** Unfused step 1 (naQK): S = Q K^T (+ softcap, rpb) over the tile's union box, then each query keeps its window's slots (-inf elsewhere). */
export function runNAQK(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const spec = naSpec(P);
  const wv = prod(spec.kernelSize);
  const attn = c.lay.slots.attn >> 2;
  for (let item = start; item < end; item++) {
    const { p, rules, union, tq, tk, h, span } = unfusedItem(c, space, item, true);
    c.score(tk, true, p, undefined, 0, c.lanes);
    for (let i = 0; i < tq; i++) {
      const ab = attn + ((span.qOff + c.qTok[i]!) * P.heads + h) * wv;
      c.f32.fill(-Infinity, ab, ab + wv);
    }
    windowTable(c, spec, rules, tq, union, false);
  }
}

/** Unfused step 3 (naAV): each query's window weights back over the union box, then O = P V on the tile step. */
export function runNAAV(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const spec = naSpec(P);
  const { s, alpha, l } = c.at;
  for (let item = start; item < end; item++) {
    const { rules, union, tq, tk } = unfusedItem(c, space, item, false);
    c.f32.fill(0, s >> 2, (s >> 2) + tk * c.tqPad);
    windowTable(c, spec, rules, tq, union, true);
    c.f32.fill(1, alpha >> 2, (alpha >> 2) + c.tqPad);
    c.K.pvAcc(c.at.o, P.dimV, s, c.tqPad, c.lanes, tk, c.at.vRows, alpha);
    c.f32.fill(1, l >> 2, (l >> 2) + c.tqPad);
    c.finish(false); // the softmax pass wrote lse
  }
}
