import { compilePattern } from './patterns/compile.js';
import type { AttnBuffers, AttnProblem } from './problem.js';
import { type RopeSpec, SelectedPositions, chunksOf, invFreq } from './rope.js';

const prod = (t: readonly number[]) => t.reduce((a, b) => a * b, 1);

/**
 * float64 reference: every (query, key) pair tested with the pattern's exact predicate, scores
 * materialised row by row. For tests and for spot checks in the profiler, never for speed.
 * `rows`, when given, restricts the work to those flat query rows (a subsample).
 */
/** Rotates x (its first rope.dims entries) in place to RoPE position p in float64; sign -1 rotates back. */
export function ropeTurn64(rope: RopeSpec | undefined): (x: Float64Array, p: number, sign: number) => void {
  const freq = rope ? invFreq(rope.base, rope.dims) : undefined;
  const half = rope ? rope.dims / 2 : 0;
  return (x, p, sign) => {
    for (let j = 0; j < half; j++) {
      const c = Math.cos(p * freq![j]!);
      const sn = sign * Math.sin(p * freq![j]!);
      const a = x[j]!;
      const b = x[j + half]!;
      x[j] = a * c - b * sn;
      x[j + half] = b * c + a * sn;
    }
  };
}

/**
 * Index into rpb [H, 2K0-1, ...] of the pair (query qi, key ki) on a token grid: the key's offset
 * from the query per axis, in steps of the axis's dilation.
 */
export function rpbIndex64(kernel: readonly number[], grid: readonly number[], dil: readonly number[], h: number, qi: number, ki: number): number {
  const coords = (t: number) => {
    const c: number[] = [];
    for (let a = grid.length - 1; a >= 0; a--) {
      c.unshift(t % grid[a]!);
      t = Math.floor(t / grid[a]!);
    }
    return c;
  };
  const cq = coords(qi);
  const ck = coords(ki);
  let idx = h;
  for (let a = 0; a < kernel.length; a++) idx = idx * (2 * kernel[a]! - 1) + Math.floor(ck[a]! / dil[a]!) - Math.floor(cq[a]! / dil[a]!) + kernel[a]! - 1;
  return idx;
}

export function referenceAttention(
  problem: AttnProblem,
  bufs: Pick<AttnBuffers, 'q' | 'k' | 'v'>,
  rows?: ReadonlySet<number>,
): { out: Float64Array; lse: Float64Array } {
  const { heads: H, kvHeads, dim: D, dimV: DV, scale, softcap, bias, rpb, rope } = problem;
  const turn = ropeTurn64(rope);
  const qr = new Float64Array(D);
  const kr = new Float64Array(D);
  /** Row `src[base..base+D)` rotated to position p in float64 (copied as is without RoPE). */
  const load = (dst: Float64Array, src: Float32Array, base: number, p: number) => {
    for (let x = 0; x < D; x++) dst[x] = src[base + x]!;
    turn(dst, p, 1);
  };
  const out = new Float64Array(problem.qRows * H * DV);
  const lse = new Float64Array(problem.qRows * H).fill(-Infinity);
  for (const span of problem.seqs) {
    const p = compilePattern(problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: H });
    const nq = prod(span.qGrid);
    const nk = prod(span.kGrid);
    const grid = p.geometry.qShape;
    const dil = p.geometry.dilation;
    const scores = new Float64Array(nk);
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / (H / kvHeads));
      for (let qi = 0; qi < nq; qi++) {
        const row = span.qOff + qi;
        if (rows && !rows.has(row)) continue;
        let mx = -Infinity;
        const chunks = rope?.positions === 'selected' ? chunksOf(problem.pattern) : undefined;
        const sel = chunks ? new SelectedPositions(chunks).at(h, Math.floor(qi / chunks.queryTile)) : undefined;
        const posOf = (k: number) => (sel ? sel.position(k) : k);
        load(qr, bufs.q, (row * H + h) * D, rope ? posOf(qi + nk - nq) : 0);
        for (let ki = 0; ki < nk; ki++) {
          if (!p.allows(span.b, h, qi, ki)) {
            scores[ki] = -Infinity;
            continue;
          }
          let s = 0;
          load(kr, bufs.k, ((span.kOff + ki) * kvHeads + kh) * D, rope ? posOf(ki) : 0);
          for (let x = 0; x < D; x++) s += qr[x]! * kr[x]!;
          s *= scale;
          if (softcap > 0) s = softcap * Math.tanh(s / softcap);
          if (bias) {
            const bb = bias.batch === 1 ? 0 : span.b;
            const bh = bias.heads === 1 ? 0 : h;
            s += bias.data[((bb * bias.heads + bh) * nq + qi) * nk + ki]!;
          }
          if (rpb) s += rpb.data[rpbIndex64(rpb.kernel, grid, dil, h, qi, ki)]!;
          scores[ki] = s;
          if (s > mx) mx = s;
        }
        if (mx === -Infinity) continue; // no allowed key: output 0, lse -inf
        let sum = 0;
        for (let ki = 0; ki < nk; ki++) {
          const e = scores[ki] === -Infinity ? 0 : Math.exp(scores[ki]! - mx);
          scores[ki] = e;
          sum += e;
        }
        const ob = (row * H + h) * DV;
        for (let ki = 0; ki < nk; ki++) {
          const w = scores[ki]! / sum;
          if (w === 0) continue;
          const vb = ((span.kOff + ki) * kvHeads + kh) * DV;
          for (let c = 0; c < DV; c++) out[ob + c]! += w * bufs.v[vb + c]!;
        }
        lse[row * H + h] = mx + Math.log(sum);
      }
    }
  }
  return { out, lse };
}
