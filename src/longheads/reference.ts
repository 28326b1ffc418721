/**
 * float64 reference of LongHeads prefill (tests only): chunk representations, selection, position
 * remapping and attention written out loop by loop, sharing no code with the kernels.
 */
import type { SeqQKV } from './select.js';

/** One sequence (the kernels' input type: a type, no code, is shared) plus the options, spelled out. */
export interface LongHeadsRefInput extends SeqQKV {
  readonly chunkSize: number;
  readonly budget: number;
  readonly selectTile: number;
  readonly ropeBase: number;
  readonly ropeDims: number;
  readonly scale: number;
}

export interface LongHeadsRef {
  readonly out: Float64Array;
  readonly lse: Float64Array;
  /** Per head and select tile: the chosen chunks, ascending. */
  readonly lists: number[][][];
  /** Per head and select tile: score of every candidate chunk (index = chunk), for tie checks. */
  readonly scores: Float64Array[][];
}

function rotate(x: Float64Array, p: number, base: number, dims: number): Float64Array {
  const y = Float64Array.from(x);
  const half = dims / 2;
  for (let i = 0; i < half; i++) {
    const th = p * base ** ((-2 * i) / dims);
    y[i] = x[i]! * Math.cos(th) - x[i + half]! * Math.sin(th);
    y[i + half] = x[i + half]! * Math.cos(th) + x[i]! * Math.sin(th);
  }
  return y;
}

const row = (a: Float32Array, r: number, heads: number, h: number, d: number): Float64Array => Float64Array.from(a.subarray((r * heads + h) * d, (r * heads + h + 1) * d));
const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, x, i) => s + x * b[i]!, 0);

/** softmax(scale * scores) weighted sum of rows; returns [out, lse]. */
function attend(qv: Float64Array, keys: Float64Array[], vals: Float64Array[], scale: number): [Float64Array, number] {
  const s = keys.map((kk) => scale * dot(qv, kk));
  const mx = Math.max(...s);
  const e = s.map((x) => Math.exp(x - mx));
  const sum = e.reduce((a, b) => a + b, 0);
  const out = new Float64Array(vals[0]!.length);
  vals.forEach((vv, j) => vv.forEach((x, c) => (out[c]! += (e[j]! / sum) * x)));
  return [out, mx + Math.log(sum)];
}

export function longHeadsReference(inp: LongHeadsRefInput, forced?: number[][][]): LongHeadsRef {
  const { n, heads: H, kvHeads: Hk, dim: D, chunkSize: C, budget, selectTile: T, ropeBase: base, ropeDims: dims, scale } = inp;
  const slots = budget / C;
  const full = Math.floor(n / C);
  const group = H / Hk;
  const out = new Float64Array(n * H * D);
  const lse = new Float64Array(n * H);
  const lists: number[][][] = [];
  const scores: Float64Array[][] = [];
  for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / group);
    // chunk representations
    const reps: Float64Array[] = [];
    for (let c = 0; c < full; c++) {
      const ks: Float64Array[] = [];
      const vs: Float64Array[] = [];
      for (let t = 0; t < C; t++) {
        ks.push(rotate(row(inp.k, c * C + t, Hk, kh, D), t, base, dims));
        vs.push(row(inp.v, c * C + t, Hk, kh, D));
      }
      const summary = new Float64Array(D);
      for (let t = 0; t < C; t++) {
        const [o] = attend(rotate(row(inp.q, c * C + t, H, h, D), t, base, dims), ks, vs, scale);
        o.forEach((x, i) => (summary[i]! += x / C));
      }
      reps.push(attend(summary, ks, ks, 1 / Math.sqrt(D))[0]);
    }
    // selection per query tile
    const hl: number[][] = [];
    const hs: Float64Array[] = [];
    for (let t = 0; t * T < n; t++) {
      const own = Math.floor((t * T) / C);
      const sc = new Float64Array(Math.max(own, 0));
      let list: number[];
      if (own < slots) list = Array.from({ length: own + 1 }, (_, c) => c);
      else {
        const mq = new Float64Array(D);
        const end = Math.min(n, (t + 1) * T);
        for (let r = t * T; r < end; r++) row(inp.q, r, H, h, D).forEach((x, i) => (mq[i]! += x / (end - t * T)));
        for (let c = 1; c <= own - 2; c++) sc[c] = dot(mq, reps[c]!);
        const fixed = [own, 0, own - 1].slice(0, slots);
        const cand = Array.from({ length: Math.max(0, own - 2) }, (_, i) => i + 1).sort((a, b) => sc[b]! - sc[a]! || a - b);
        list = [...new Set([...fixed, ...cand.slice(0, Math.max(0, slots - fixed.length))])].sort((a, b) => a - b);
      }
      hl.push(list);
      hs.push(sc);
    }
    lists.push(hl);
    scores.push(hs);
    // attention over the selected chunks at renumbered positions
    for (let i = 0; i < n; i++) {
      const list = (forced ?? lists)[h]![Math.floor(i / T)]!;
      const own = Math.floor(i / C);
      const ks: Float64Array[] = [];
      const vs: Float64Array[] = [];
      list.forEach((c, slot) => {
        for (let t = 0; t < C && c * C + t <= i; t++) {
          ks.push(rotate(row(inp.k, c * C + t, Hk, kh, D), slot * C + t, base, dims));
          vs.push(row(inp.v, c * C + t, Hk, kh, D));
        }
      });
      const qPos = list.indexOf(own) * C + (i - own * C);
      const [o, l] = attend(rotate(row(inp.q, i, H, h, D), qPos, base, dims), ks, vs, scale);
      out.set(o, (i * H + h) * D);
      lse[i * H + h] = l;
    }
  }
  return { out, lse, lists, scores };
}
