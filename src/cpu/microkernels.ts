/**
 * Inner tile products of the fused CPU engine, kept apart from the schedule walk so they can move
 * to WebAssembly SIMD without touching it. Register-blocked 4x4: 16 accumulators per 8 loads.
 */

/** S[i * tk + j] = sum_d A[i * d + x] * B[j * d + x] for i < ta, j < tk (A tile times B tile transposed). */
export function gemmABt(A: Float32Array, ta: number, B: Float32Array, tk: number, d: number, S: Float32Array): void {
  const ta4 = ta & ~3;
  const tk4 = tk & ~3;
  for (let i = 0; i < ta4; i += 4) {
    const a0 = i * d;
    const a1 = a0 + d;
    const a2 = a1 + d;
    const a3 = a2 + d;
    for (let j = 0; j < tk4; j += 4) {
      const b0 = j * d;
      const b1 = b0 + d;
      const b2 = b1 + d;
      const b3 = b2 + d;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let x = 0; x < d; x++) {
        const q0 = A[a0 + x]!, q1 = A[a1 + x]!, q2 = A[a2 + x]!, q3 = A[a3 + x]!;
        const k0 = B[b0 + x]!, k1 = B[b1 + x]!, k2 = B[b2 + x]!, k3 = B[b3 + x]!;
        s00 += q0 * k0; s01 += q0 * k1; s02 += q0 * k2; s03 += q0 * k3;
        s10 += q1 * k0; s11 += q1 * k1; s12 += q1 * k2; s13 += q1 * k3;
        s20 += q2 * k0; s21 += q2 * k1; s22 += q2 * k2; s23 += q2 * k3;
        s30 += q3 * k0; s31 += q3 * k1; s32 += q3 * k2; s33 += q3 * k3;
      }
      let o = i * tk + j;
      S[o] = s00; S[o + 1] = s01; S[o + 2] = s02; S[o + 3] = s03; o += tk;
      S[o] = s10; S[o + 1] = s11; S[o + 2] = s12; S[o + 3] = s13; o += tk;
      S[o] = s20; S[o + 1] = s21; S[o + 2] = s22; S[o + 3] = s23; o += tk;
      S[o] = s30; S[o + 1] = s31; S[o + 2] = s32; S[o + 3] = s33;
    }
    for (let j = tk4; j < tk; j++) for (let r = 0; r < 4; r++) S[(i + r) * tk + j] = dot(A, (i + r) * d, B, j * d, d);
  }
  for (let i = ta4; i < ta; i++) for (let j = 0; j < tk; j++) S[i * tk + j] = dot(A, i * d, B, j * d, d);
}

export function dot(A: Float32Array, a: number, B: Float32Array, b: number, d: number): number {
  let s = 0;
  for (let x = 0; x < d; x++) s += A[a + x]! * B[b + x]!;
  return s;
}

/** O[i * dv + c] += sum_j P[i * tk + j] * V[j * dv + c] for i < tq (probabilities times a V tile). */
export function gemmAccPV(P: Float32Array, tq: number, tk: number, V: Float32Array, dv: number, O: Float32Array): void {
  const tq4 = tq & ~3;
  const dv4 = dv & ~3;
  for (let i = 0; i < tq4; i += 4) {
    const p0 = i * tk;
    const p1 = p0 + tk;
    const p2 = p1 + tk;
    const p3 = p2 + tk;
    for (let c = 0; c < dv4; c += 4) {
      const o0 = i * dv + c;
      const o1 = o0 + dv;
      const o2 = o1 + dv;
      const o3 = o2 + dv;
      let s00 = O[o0]!, s01 = O[o0 + 1]!, s02 = O[o0 + 2]!, s03 = O[o0 + 3]!;
      let s10 = O[o1]!, s11 = O[o1 + 1]!, s12 = O[o1 + 2]!, s13 = O[o1 + 3]!;
      let s20 = O[o2]!, s21 = O[o2 + 1]!, s22 = O[o2 + 2]!, s23 = O[o2 + 3]!;
      let s30 = O[o3]!, s31 = O[o3 + 1]!, s32 = O[o3 + 2]!, s33 = O[o3 + 3]!;
      for (let j = 0; j < tk; j++) {
        const v = j * dv + c;
        const v0 = V[v]!, v1 = V[v + 1]!, v2 = V[v + 2]!, v3 = V[v + 3]!;
        const a0 = P[p0 + j]!, a1 = P[p1 + j]!, a2 = P[p2 + j]!, a3 = P[p3 + j]!;
        s00 += a0 * v0; s01 += a0 * v1; s02 += a0 * v2; s03 += a0 * v3;
        s10 += a1 * v0; s11 += a1 * v1; s12 += a1 * v2; s13 += a1 * v3;
        s20 += a2 * v0; s21 += a2 * v1; s22 += a2 * v2; s23 += a2 * v3;
        s30 += a3 * v0; s31 += a3 * v1; s32 += a3 * v2; s33 += a3 * v3;
      }
      O[o0] = s00; O[o0 + 1] = s01; O[o0 + 2] = s02; O[o0 + 3] = s03;
      O[o1] = s10; O[o1 + 1] = s11; O[o1 + 2] = s12; O[o1 + 3] = s13;
      O[o2] = s20; O[o2 + 1] = s21; O[o2 + 2] = s22; O[o2 + 3] = s23;
      O[o3] = s30; O[o3 + 1] = s31; O[o3 + 2] = s32; O[o3 + 3] = s33;
    }
    for (let c = dv4; c < dv; c++) for (let r = 0; r < 4; r++) O[(i + r) * dv + c]! += colDot(P, (i + r) * tk, V, c, dv, tk);
  }
  for (let i = tq4; i < tq; i++) for (let c = 0; c < dv; c++) O[i * dv + c]! += colDot(P, i * tk, V, c, dv, tk);
}

function colDot(P: Float32Array, p: number, V: Float32Array, c: number, dv: number, tk: number): number {
  let s = 0;
  for (let j = 0; j < tk; j++) s += P[p + j]! * V[j * dv + c]!;
  return s;
}
