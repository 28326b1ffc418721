import { boxTokens } from '../patterns/geometry.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnBuffers, AttnProblem, ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { tileBox } from '../schedule.js';
import { type FusedScratch, boxCoords, gatherRows, prod, rpbIndex } from './fused.js';
import { gemmABt, gemmAccPV } from './microkernels.js';

/**
 * Neighborhood-only kernels: NATTEN's naive kernel and the unfused (GEMM-based) qk -> softmax -> av
 * pipeline. Scores are laid out [rows, H, windowVolume]; along each axis a key's slot is its offset
 * from the window base (the clamped window start, or query - K + 1 when causal), so RPB and slots
 * agree. Slots without an allowed key hold -inf.
 */
export type NAExtra = { attn: Float32Array };

type NASpec = Extract<PatternSpec, { kind: 'neighborhood' }>;

function naSpec(problem: AttnProblem): NASpec {
  const p = problem.pattern;
  if (p.kind !== 'neighborhood') throw new Error('neighborhood kernels need a plain neighborhood pattern');
  return p;
}

export const windowVolume = (p: AttnProblem): number => prod(naSpec(p).kernelSize);

/** Window base per axis for local query coordinate xq. */
function windowBase(spec: NASpec, rules: ReturnType<NonNullable<ReturnType<ItemSpace['pattern']>['boxRules']>>, a: number, xq: number): number {
  return spec.isCausal[a] ? xq - spec.kernelSize[a]! + 1 : rules[a]!.start(xq);
}

/** Naive: each query walks its own window, reading K and V straight from the strided inputs. */
export function runNaive(problem: AttnProblem, bufs: AttnBuffers, space: ItemSpace, start: number, end: number, sc: FusedScratch): void {
  const spec = naSpec(problem);
  const { heads: H, kvHeads, dim: D, dimV: DV, scale, softcap, rpb } = problem;
  const K = spec.kernelSize;
  const wv = prod(K);
  const scores = new Float64Array(wv);
  const keys = new Int32Array(wv);
  const kc = new Int32Array(K.length);
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = problem.seqs[seq]!;
    const geo = p.geometry;
    const rank = geo.qShape.length;
    const grp = p.groups[g]!;
    const rules = p.boxRules!(g);
    const qBox = tileBox(grp.qLen, tileFor(problem.qTile, rank), tile);
    const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, sc.qTok);
    boxCoords(qBox, sc.qCrd);
    const kh = Math.floor(h / (H / kvHeads));
    for (let i = 0; i < tq; i++) {
      const row = span.qOff + sc.qTok[i]!;
      const qb = (row * H + h) * D;
      let n = 0;
      let mx = -Infinity;
      // enumerate the window: per axis [start, end] of the query's local coordinate
      const lo = [];
      const hi = [];
      for (let a = 0; a < rank; a++) {
        const xq = sc.qCrd[i * rank + a]!;
        lo.push(rules[a]!.start(xq));
        hi.push(rules[a]!.end(xq));
      }
      for (let a = 0; a < rank; a++) kc[a] = lo[a]!;
      for (;;) {
        let flat = 0;
        let stride = 1;
        for (let a = rank - 1; a >= 0; a--) {
          flat += (grp.offset[a]! + geo.dilation[a]! * kc[a]!) * stride;
          stride *= geo.kShape[a]!;
        }
        const kb = ((span.kOff + flat) * kvHeads + kh) * D;
        let s = 0;
        for (let x = 0; x < D; x++) s += bufs.q[qb + x]! * bufs.k[kb + x]!;
        s *= scale;
        if (softcap > 0) s = softcap * Math.tanh(s / softcap);
        if (rpb) {
          let idx = h;
          for (let a = 0; a < rank; a++) idx = idx * (2 * K[a]! - 1) + kc[a]! - sc.qCrd[i * rank + a]! + K[a]! - 1;
          s += rpb.data[idx]!;
        }
        scores[n] = s;
        keys[n++] = flat;
        if (s > mx) mx = s;
        let a = rank - 1;
        while (a >= 0 && ++kc[a]! > hi[a]!) kc[a] = lo[a--]!;
        if (a < 0) break;
      }
      let sum = 0;
      for (let j = 0; j < n; j++) sum += scores[j] = Math.exp(scores[j]! - mx);
      const ob = (row * H + h) * DV;
      for (let c = 0; c < DV; c++) bufs.out[ob + c] = 0;
      for (let j = 0; j < n; j++) {
        const w = scores[j]! / sum;
        const vb = ((span.kOff + keys[j]!) * kvHeads + kh) * DV;
        for (let c = 0; c < DV; c++) bufs.out[ob + c]! += w * bufs.v[vb + c]!;
      }
      bufs.lse[row * H + h] = mx + Math.log(sum);
    }
  }
}

/**
 * Walks the slots of every query of a tile against the tile's union key box, calling `fn` with
 * (query index in tile, slot, key index in union box) for slots holding an allowed key.
 */
function forEachSlot(
  spec: NASpec,
  rules: ReturnType<NonNullable<ReturnType<ItemSpace['pattern']>['boxRules']>>,
  rank: number,
  tq: number,
  qCrd: Int32Array,
  uLo: number[],
  uHi: number[],
  fn: (i: number, slot: number, u: number) => void,
): void {
  const K = spec.kernelSize;
  const kc = new Array<number>(rank);
  const base = new Array<number>(rank);
  for (let i = 0; i < tq; i++) {
    const lo: number[] = [];
    const hi: number[] = [];
    for (let a = 0; a < rank; a++) {
      const xq = qCrd[i * rank + a]!;
      lo.push(rules[a]!.start(xq));
      hi.push(rules[a]!.end(xq));
      base[a] = windowBase(spec, rules, a, xq);
      kc[a] = lo[a]!;
    }
    for (;;) {
      let slot = 0;
      let u = 0;
      for (let a = 0; a < rank; a++) {
        slot = slot * K[a]! + kc[a]! - base[a]!;
        u = u * (uHi[a]! - uLo[a]!) + kc[a]! - uLo[a]!;
      }
      fn(i, slot, u);
      let a = rank - 1;
      while (a >= 0 && ++kc[a]! > hi[a]!) kc[a] = lo[a--]!;
      if (a < 0) break;
    }
  }
}

/** Unfused step 1 (naQK): S = Q K^T over the tile's union box as a GEMM, then each query keeps its window. */
export function runNAQK(problem: AttnProblem, bufs: AttnBuffers & NAExtra, space: ItemSpace, start: number, end: number, sc: FusedScratch): void {
  const spec = naSpec(problem);
  const { heads: H, kvHeads, dim: D, scale, softcap, rpb } = problem;
  const wv = prod(spec.kernelSize);
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = problem.seqs[seq]!;
    const geo = p.geometry;
    const rank = geo.qShape.length;
    const grp = p.groups[g]!;
    const rules = p.boxRules!(g);
    const qBox = tileBox(grp.qLen, tileFor(problem.qTile, rank), tile);
    const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, sc.qTok);
    boxCoords(qBox, sc.qCrd);
    const kh = Math.floor(h / (H / kvHeads));
    const union = p.bounds(span.b, h, g, qBox)!;
    const tk = boxTokens(geo.kShape, geo.dilation, grp, union, sc.kTok);
    boxCoords(union, sc.kCrd);
    gatherRows(bufs.q, span.qOff, sc.qTok, tq, H, h, D, sc.qt);
    gatherRows(bufs.k, span.kOff, sc.kTok, tk, kvHeads, kh, D, sc.kt);
    gemmABt(sc.qt, tq, sc.kt, tk, D, sc.s);
    for (let i = 0; i < tq; i++) {
      const ab = ((span.qOff + sc.qTok[i]!) * H + h) * wv;
      bufs.attn.fill(-Infinity, ab, ab + wv);
    }
    forEachSlot(spec, rules, rank, tq, sc.qCrd, union.lo, union.hi, (i, slot, u) => {
      let s = sc.s[i * tk + u]! * scale;
      if (softcap > 0) s = softcap * Math.tanh(s / softcap);
      if (rpb) s += rpb.data[rpbIndex(rpb.kernel, h, sc.qCrd, i, sc.kCrd, u)]!;
      bufs.attn[((span.qOff + sc.qTok[i]!) * H + h) * wv + slot] = s;
    });
  }
}

/** Unfused step 2: softmax over each window in place, returning LSE (rows x heads). */
export function naSoftmax(attn: Float32Array, rowsTimesHeads: number, wv: number, lse: Float32Array): void {
  for (let r = 0; r < rowsTimesHeads; r++) {
    const b = r * wv;
    let mx = -Infinity;
    for (let j = 0; j < wv; j++) if (attn[b + j]! > mx) mx = attn[b + j]!;
    let sum = 0;
    for (let j = 0; j < wv; j++) sum += attn[b + j] = Math.exp(attn[b + j]! - mx);
    for (let j = 0; j < wv; j++) attn[b + j]! /= sum;
    lse[r] = mx + Math.log(sum);
  }
}

/** Unfused step 3 (naAV): scatter each query's window weights over the union box, then O = P V as a GEMM. */
export function runNAAV(problem: AttnProblem, bufs: AttnBuffers & NAExtra, space: ItemSpace, start: number, end: number, sc: FusedScratch): void {
  const spec = naSpec(problem);
  const { heads: H, kvHeads, dimV: DV } = problem;
  const wv = prod(spec.kernelSize);
  for (let item = start; item < end; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = problem.seqs[seq]!;
    const geo = p.geometry;
    const rank = geo.qShape.length;
    const grp = p.groups[g]!;
    const rules = p.boxRules!(g);
    const qBox = tileBox(grp.qLen, tileFor(problem.qTile, rank), tile);
    const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, sc.qTok);
    boxCoords(qBox, sc.qCrd);
    const kh = Math.floor(h / (H / kvHeads));
    const union = p.bounds(span.b, h, g, qBox)!;
    const tk = boxTokens(geo.kShape, geo.dilation, grp, union, sc.kTok);
    gatherRows(bufs.v, span.kOff, sc.kTok, tk, kvHeads, kh, DV, sc.vt);
    sc.s.fill(0, 0, tq * tk);
    forEachSlot(spec, rules, rank, tq, sc.qCrd, union.lo, union.hi, (i, slot, u) => {
      sc.s[i * tk + u] = bufs.attn[((span.qOff + sc.qTok[i]!) * H + h) * wv + slot]!;
    });
    sc.o.fill(0, 0, tq * DV);
    gemmAccPV(sc.s, tq, tk, sc.vt, DV, sc.o);
    for (let i = 0; i < tq; i++) {
      const ob = ((span.qOff + sc.qTok[i]!) * H + h) * DV;
      bufs.out.set(sc.o.subarray(i * DV, (i + 1) * DV), ob);
    }
  }
}
