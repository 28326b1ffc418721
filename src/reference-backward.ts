import { compilePattern } from './patterns/compile.js';
import type { AttnBuffers, AttnProblem } from './problem.js';
import { rpbIndex64, ropeTurn64 } from './reference.js';

const prod = (t: readonly number[]) => t.reduce((a, b) => a * b, 1);

/**
 * float64 reference backward, written from the math (not from the kernels): for each query row,
 * the allowed scores s = softcap(scale q.k) + bias + rpb over the exact predicate, P = softmax(s),
 * dP = dO V^T, dS = P (dP - sum P dP), then dV += P^T dO, and through the softcap's derivative
 * dQ += scale dX K, dK += scale dX^T Q, with q and k rotated by RoPE and the gradients rotated
 * back. drpb sums dS at each pair's offset. For tests (checked by finite differences), never for speed.
 */
export function referenceBackward(
  problem: AttnProblem,
  bufs: Pick<AttnBuffers, 'q' | 'k' | 'v'>,
  dOut: Float32Array,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array; drpb?: Float64Array; dbias?: Float64Array } {
  const { heads: H, kvHeads, dim: D, dimV: DV, scale, softcap, bias, rpb, rope } = problem;
  if (rope?.positions === 'selected') throw new Error("reference backward: 'selected' RoPE has no backward");
  const turn = ropeTurn64(rope);
  const dq = new Float64Array(problem.qRows * H * D);
  const dk = new Float64Array(problem.kRows * kvHeads * D);
  const dv = new Float64Array(problem.kRows * kvHeads * DV);
  const drpb = rpb ? new Float64Array(rpb.data.length) : undefined;
  const dbias = bias ? new Float64Array(bias.data.length) : undefined;
  for (const span of problem.seqs) {
    const p = compilePattern(problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: H });
    const nq = prod(span.qGrid);
    const nk = prod(span.kGrid);
    const grid = p.geometry.qShape;
    const dil = p.geometry.dilation;
    // keys rotated once per kv head; their gradients accumulate in the rotated frame
    const kRot: Float64Array[] = [];
    const dkRot: Float64Array[] = [];
    for (let kh = 0; kh < kvHeads; kh++)
      for (let ki = 0; ki < nk; ki++) {
        const x = Float64Array.from(bufs.k.subarray(((span.kOff + ki) * kvHeads + kh) * D, ((span.kOff + ki) * kvHeads + kh + 1) * D));
        if (rope) turn(x, ki, 1);
        kRot.push(x);
        dkRot.push(new Float64Array(D));
      }
    const x = new Float64Array(nk); // raw scaled scores
    const sc = new Float64Array(nk); // final scores
    const pr = new Float64Array(nk);
    const ridx = new Int32Array(nk);
    const bidx = new Int32Array(nk);
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / (H / kvHeads));
      for (let qi = 0; qi < nq; qi++) {
        const row = span.qOff + qi;
        const qr = Float64Array.from(bufs.q.subarray((row * H + h) * D, (row * H + h + 1) * D));
        const qPos = qi + nk - nq;
        if (rope) turn(qr, qPos, 1);
        let mx = -Infinity;
        for (let ki = 0; ki < nk; ki++) {
          if (!p.allows(span.b, h, qi, ki)) {
            sc[ki] = -Infinity;
            continue;
          }
          const kr = kRot[kh * nk + ki]!;
          let d = 0;
          for (let c = 0; c < D; c++) d += qr[c]! * kr[c]!;
          x[ki] = d * scale;
          let s = softcap > 0 ? softcap * Math.tanh(x[ki]! / softcap) : x[ki]!;
          if (bias) {
            bidx[ki] = (((bias.batch === 1 ? 0 : span.b) * bias.heads + (bias.heads === 1 ? 0 : h)) * nq + qi) * nk + ki;
            s += bias.data[bidx[ki]!]!;
          }
          if (rpb) {
            ridx[ki] = rpbIndex64(rpb.kernel, grid, dil, h, qi, ki);
            s += rpb.data[ridx[ki]!]!;
          }
          sc[ki] = s;
          mx = Math.max(mx, s);
        }
        if (mx === -Infinity) continue; // no allowed key: zero gradients
        let sum = 0;
        for (let ki = 0; ki < nk; ki++) sum += pr[ki] = sc[ki] === -Infinity ? 0 : Math.exp(sc[ki]! - mx);
        const dO = dOut.subarray((row * H + h) * DV, (row * H + h + 1) * DV);
        // dP_k = dO . v_k and delta = sum_k P_k dP_k (= dO . O)
        const dP = new Float64Array(nk);
        let delta = 0;
        for (let ki = 0; ki < nk; ki++) {
          pr[ki]! /= sum;
          if (pr[ki] === 0) continue;
          const vb = ((span.kOff + ki) * kvHeads + kh) * DV;
          let d = 0;
          for (let c = 0; c < DV; c++) d += dO[c]! * bufs.v[vb + c]!;
          dP[ki] = d;
          delta += pr[ki]! * d;
        }
        const dqr = new Float64Array(D);
        for (let ki = 0; ki < nk; ki++) {
          const P = pr[ki]!;
          if (P === 0) continue;
          const vb = ((span.kOff + ki) * kvHeads + kh) * DV;
          for (let c = 0; c < DV; c++) dv[vb + c]! += P * dO[c]!;
          const dS = P * (dP[ki]! - delta);
          if (drpb) drpb[ridx[ki]!]! += dS;
          if (dbias) dbias[bidx[ki]!]! += dS;
          const t = softcap > 0 ? Math.tanh(x[ki]! / softcap) : 0;
          const dX = softcap > 0 ? dS * (1 - t * t) : dS;
          const kr = kRot[kh * nk + ki]!;
          const dkr = dkRot[kh * nk + ki]!;
          for (let c = 0; c < D; c++) {
            dqr[c]! += scale * dX * kr[c]!;
            dkr[c]! += scale * dX * qr[c]!;
          }
        }
        if (rope) turn(dqr, qPos, -1);
        dq.set(dqr, (row * H + h) * D);
      }
    }
    for (let kh = 0; kh < kvHeads; kh++)
      for (let ki = 0; ki < nk; ki++) {
        const g = dkRot[kh * nk + ki]!;
        if (rope) turn(g, ki, -1);
        dk.set(g, ((span.kOff + ki) * kvHeads + kh) * D);
      }
  }
  return { dq, dk, dv, ...(drpb ? { drpb } : {}), ...(dbias ? { dbias } : {}) };
}
