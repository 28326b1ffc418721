import { ITEM, NO_MASK, VISIT } from './schedule.js';
import { ropeFns } from './fused-wgsl.js';
import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, prologue, vecType as vec } from './wgsl.js';

/**
 * The WebGPU backward (FlashAttention-2, recomputed from the forward's LSE, design.md 3) as three
 * kernel families:
 *
 * - `backward-stats`: the pre-pass, (lse, delta = rowsum(dO * O)) per query row and head;
 * - `backward` (one template, two sides): side 'q' walks the forward's schedule over query tiles
 *   and accumulates dQ (and the per-row partials of drpb, or dbias); side 'k' walks the transposed
 *   schedule (schedule.ts `transposed`) over key tiles and accumulates dK and dV. Each thread owns
 *   one row of its side in registers, and each visit stages the other side's rows in workgroup
 *   memory. WGSL has no float atomics, so every output element has exactly one writer: the two
 *   passes recompute P rather than share it, and the result is deterministic;
 * - `backward-reduce`: fixed-order sums over an axis (GQA's query heads of a group, drpb's rows,
 *   dbias's broadcast axes).
 *
 * The schedule and the aux table (bias | rpb | RoPE cos, sin) share one u32 binding (`sched`, aux
 * read through bitcast at P.auxOff), so each pass stays within the 8 storage buffers a shader stage
 * may always bind.
 */

/** Compile-time constants of one backward pipeline. */
export interface BackwardSpec {
  /** 'q': one thread per query row, dQ; 'k': one thread per key row, dK and dV. */
  readonly side: 'q' | 'k';
  readonly dim: number;
  readonly dimV: number;
  readonly wq: 1 | 4;
  readonly wv: 1 | 4;
  /** Own rows per work item (= threads). */
  readonly rows: number;
  /** Rows of the other side staged per visit. */
  readonly keys: number;
  readonly softcap: boolean;
  readonly bias: boolean;
  readonly rpb: boolean;
  readonly rope: boolean;
  /** Side 'q': also write dS to the hook-gradient buffer: per-row drpb partials, or dbias of the (expanded) bias. */
  readonly hookGrad: 'none' | 'rpb' | 'bias';
  /** Side 'k': write dK, dV per query head ([kRows, H, ...]), summed over each group afterwards. */
  readonly perQueryHead: boolean;
}

export const BACKWARD_UNIFORMS = uniformLayout({
  heads: 'u32',
  kvHeads: 'u32',
  group: 'u32',
  total: 'u32',
  itemsX: 'u32',
  scale: 'f32',
  softcap: 'f32',
  auxOff: 'u32',
  rpbOff: 'u32',
  rpbVol: 'u32',
  rpbConst: 'i32',
  ropeOff: 'u32',
  ropeHalf: 'u32',
  ropeSin: 'u32',
  ropeMax: 'i32',
});

/** Workgroup memory of a spec, in bytes. */
export function backwardWorkgroupBytes(s: Pick<BackwardSpec, 'dim' | 'dimV' | 'keys' | 'side'>): number {
  return 4 * s.keys * (s.dim + s.dimV + 2 + (s.side === 'k' ? 2 : 0));
}

export const backwardProgram: Program<BackwardSpec, typeof BACKWARD_UNIFORMS.decl> = {
  name: 'backward',
  uniforms: BACKWARD_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'q', kind: 'read', type: `array<${vec(s.wq)}>` },
    { name: 'k', kind: 'read', type: `array<${vec(s.wq)}>` },
    { name: 'v', kind: 'read', type: `array<${vec(s.wv)}>` },
    { name: 'dout', kind: 'read', type: `array<${vec(s.wv)}>` },
    { name: 'stats', kind: 'read', type: 'array<vec2<f32>>' },
    { name: 'sched', kind: 'read', type: 'array<u32>' },
    ...(s.side === 'q'
      ? [{ name: 'dq', kind: 'readwrite' as const, type: `array<${vec(s.wq)}>` }, ...(s.hookGrad !== 'none' ? [{ name: 'hg', kind: 'readwrite' as const, type: 'array<f32>' }] : [])]
      : [
          { name: 'dk', kind: 'readwrite' as const, type: `array<${vec(s.wq)}>` },
          { name: 'dv', kind: 'readwrite' as const, type: `array<${vec(s.wv)}>` },
        ]),
  ],
  workgroupSize: (s) => s.rows,
  generate: generateBackward,
};

const dot = (w: 1 | 4, a: string, b: string): string => (w === 4 ? `dot(${a}, ${b})` : `${a} * ${b}`);

/** Element j of a private row array of vectors of width w. */
const elem = (w: 1 | 4, arr: string, j: string): string => (w === 4 ? `${arr}[${j} / 4u][${j} % 4u]` : `${arr}[${j}]`);

function generateBackward(s: BackwardSpec): string {
  const QT = vec(s.wq);
  const VT = vec(s.wv);
  const DQ = s.dim / s.wq;
  const DV = s.dimV / s.wv;
  const qSide = s.side === 'q';
  // score hooks after x = q.k * scale; sg is the softcap's derivative; (qTok, kTok), (qLin, kLin) of the pair
  const [qTok, kTok] = qSide ? ['tok', 'otok[j]'] : ['otok[j]', 'tok'];
  const [qLin, kLin] = qSide ? ['lin', 'olin[j]'] : ['olin[j]', 'lin'];
  const hooks = [
    s.softcap ? 'let t = tanh(clamp(x / P.softcap, -15.0, 15.0)); x = P.softcap * t; sg = 1.0 - t * t;' : '',
    s.bias ? `x += auxf(biasBase + ${qTok} * biasStride + ${kTok});` : '',
    s.rpb ? `x += auxf(P.rpbOff + h * P.rpbVol + u32(P.rpbConst + ${kLin} - ${qLin}));` : '',
  ].filter((x) => x);
  // the gradient wrt the un-rotated row: the rotation's transpose (sin negated), in place on g
  const unrope = (g: string, pos: string) =>
    s.rope
      ? `for (var f: u32 = 0u; f < P.ropeHalf; f++) {
      let t = P.ropeOff + ${pos} * P.ropeHalf + f;
      let cs = auxf(t);
      let sn = auxf(t + P.ropeSin);
      let x = ${elem(s.wq, g, 'f')};
      let y = ${elem(s.wq, g, '(f + P.ropeHalf)')};
      ${elem(s.wq, g, 'f')} = x * cs + y * sn;
      ${elem(s.wq, g, '(f + P.ropeHalf)')} = y * cs - x * sn;
    }`
      : '';
  // own row and staged rows: q-side owns q and dO and stages k and v; k-side owns k and v and stages q, dO and stats
  const own = qSide
    ? `let row = qOff + tok;
  let at = (row * P.heads + h) * DQ;
  var a: array<${QT}, DQ> = array<${QT}, DQ>();
  for (var c: u32 = 0u; c < DQ; c++) { a[c] = ${s.rope ? 'rope_q(at, c, ropePos(tok, ownShift))' : 'q[at + c]'}; }
  var b: array<${VT}, DV> = array<${VT}, DV>();
  for (var c: u32 = 0u; c < DV; c++) { b[c] = dout[(row * P.heads + h) * DV + c]; }
  let st = stats[row * P.heads + h];
  var g: array<${QT}, DQ> = array<${QT}, DQ>();`
    : `let row = kOff + tok;
  let at = (row * P.kvHeads + kh) * DQ;
  var a: array<${QT}, DQ> = array<${QT}, DQ>();
  for (var c: u32 = 0u; c < DQ; c++) { a[c] = ${s.rope ? 'rope_k(at, c, ropePos(tok, ownShift))' : 'k[at + c]'}; }
  var b: array<${VT}, DV> = array<${VT}, DV>();
  for (var c: u32 = 0u; c < DV; c++) { b[c] = v[(row * P.kvHeads + kh) * DV + c]; }
  var g: array<${QT}, DQ> = array<${QT}, DQ>();
  var gv: array<${VT}, DV> = array<${VT}, DV>();`;
  const stage = qSide
    ? `for (var e: u32 = lid; e < nk * DQ; e += THREADS) {
      let j = e / DQ;
      let t = sched[oTok + j];
      let at = ((kOff + t) * P.kvHeads + kh) * DQ;
      os[e] = ${s.rope ? 'rope_k(at, e - j * DQ, ropePos(t, oShift))' : 'k[at + e - j * DQ]'};
    }
    for (var e: u32 = lid; e < nk * DV; e += THREADS) {
      let j = e / DV;
      ov[e] = v[((kOff + sched[oTok + j]) * P.kvHeads + kh) * DV + e - j * DV];
    }`
    : `for (var e: u32 = lid; e < nk * DQ; e += THREADS) {
      let j = e / DQ;
      let t = sched[oTok + j];
      let at = ((qOff + t) * P.heads + h) * DQ;
      os[e] = ${s.rope ? 'rope_q(at, e - j * DQ, ropePos(t, oShift))' : 'q[at + e - j * DQ]'};
    }
    for (var e: u32 = lid; e < nk * DV; e += THREADS) {
      let j = e / DV;
      ov[e] = dout[((qOff + sched[oTok + j]) * P.heads + h) * DV + e - j * DV];
    }
    for (var j: u32 = lid; j < nk; j += THREADS) { ost[j] = stats[(qOff + sched[oTok + j]) * P.heads + h]; }`;
  // per allowed pair: x, p, dS; the q side adds dS K to dQ, the k side P dO to dV and dS Q to dK
  const pair = qSide
    ? `let p = exp(x - st.x);
          var dp: f32 = 0.0;
          for (var c: u32 = 0u; c < DV; c++) { dp += ${dot(s.wv, 'b[c]', 'ov[j * DV + c]')}; }
          var ds = p * (dp - st.y);
          ${s.hookGrad === 'rpb' ? 'hg[(row * P.heads + h) * P.rpbVol + u32(P.rpbConst + olin[j] - lin)] += ds;' : s.hookGrad === 'bias' ? 'hg[biasBase + tok * biasStride + otok[j]] = ds;' : ''}
          ds *= sg;
          for (var c: u32 = 0u; c < DQ; c++) { g[c] += ds * os[j * DQ + c]; }`
    : `let st = ost[j];
          let p = exp(x - st.x);
          var dp: f32 = 0.0;
          for (var c: u32 = 0u; c < DV; c++) {
            let d = ov[j * DV + c];
            gv[c] += p * d;
            dp += ${dot(s.wv, 'd', 'b[c]')};
          }
          let ds = p * (dp - st.y) * sg;
          for (var c: u32 = 0u; c < DQ; c++) { g[c] += ds * os[j * DQ + c]; }`;
  const write = qSide
    ? `for (var c: u32 = 0u; c < DQ; c++) { g[c] *= P.scale; }
    ${unrope('g', 'ropePos(tok, ownShift)')}
    for (var c: u32 = 0u; c < DQ; c++) { dq[(row * P.heads + h) * DQ + c] = g[c]; }`
    : `for (var c: u32 = 0u; c < DQ; c++) { g[c] *= P.scale; }
    ${unrope('g', 'ropePos(tok, ownShift)')}
    let dh = ${s.perQueryHead ? '(row * P.heads + h)' : '(row * P.kvHeads + kh)'};
    for (var c: u32 = 0u; c < DQ; c++) { dk[dh * DQ + c] = g[c]; }
    for (var c: u32 = 0u; c < DV; c++) { dv[dh * DV + c] = gv[c]; }`;
  return `${prologue(backwardProgram, s, { DQ, DV, BK: s.keys, THREADS: s.rows })}
const NO_MASK: u32 = ${NO_MASK}u;
${ITEM.wgsl('I_')}
${VISIT.wgsl('V_')}
const ITEM_SIZE: u32 = ${ITEM.size}u;
const VISIT_SIZE: u32 = ${VISIT.size}u;
fn auxf(i: u32) -> f32 { return bitcast<f32>(sched[P.auxOff + i]); }
fn ld_q(i: u32) -> ${QT} { return q[i]; }
fn ld_k(i: u32) -> ${QT} { return k[i]; }
${s.rope ? ropeFns(s, (i) => `auxf(${i})`) : ''}

var<workgroup> os: array<${QT}, ${s.keys * DQ}>;
var<workgroup> ov: array<${VT}, ${s.keys * DV}>;
var<workgroup> otok: array<u32, BK>;
var<workgroup> olin: array<i32, BK>;
${qSide ? '' : 'var<workgroup> ost: array<vec2<f32>, BK>;'}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * P.itemsX;
  if (item >= P.total) { return; }
  let ib = item * ITEM_SIZE;
  let h = sched[ib + I_h];
  let kh = h / P.group;
  let qOff = sched[ib + I_qOff];
  let kOff = sched[ib + I_kOff];
  let ownList = sched[ib + I_qTok];
  let nOwn = sched[ib + I_nq];
  let visit = sched[ib + I_visit];
  let nVisit = sched[ib + I_nVisit];
  let biasBase = sched[ib + I_biasBase];
  let biasStride = sched[ib + I_biasStride];
  let ownShift = bitcast<i32>(sched[ib + I_qPosShift]);
  let live = lid < nOwn;
  let r = min(lid, nOwn - 1u);
  let tok = sched[ownList + r];
  ${s.rpb ? 'let lin = bitcast<i32>(sched[ownList + nOwn + r]);' : ''}
  ${own}

  for (var vi: u32 = 0u; vi < nVisit; vi++) {
    let vb = visit + vi * VISIT_SIZE;
    let oTok = sched[vb + V_kTok];
    let nk = sched[vb + V_nk];
    let mask = sched[vb + V_mask];
    let oShift = bitcast<i32>(sched[vb + V_kPosShift]);
    workgroupBarrier(); // the previous visit's rows are consumed
    ${stage}
    for (var j: u32 = lid; j < nk; j += THREADS) {
      otok[j] = sched[oTok + j];
      ${s.rpb ? 'olin[j] = bitcast<i32>(sched[oTok + nk + j]);' : ''}
    }
    workgroupBarrier();
    if (live) {
      for (var j: u32 = 0u; j < nk; j++) {
        var ok: bool = true;
        if (mask != NO_MASK) {
          let bit = r * nk + j;
          ok = ((sched[mask + (bit >> 5u)] >> (bit & 31u)) & 1u) != 0u;
        }
        if (ok) {
          var s: f32 = 0.0;
          for (var c: u32 = 0u; c < DQ; c++) { s += ${dot(s.wq, 'a[c]', 'os[j * DQ + c]')}; }
          var x: f32 = s * P.scale;
          var sg: f32 = 1.0;
          ${hooks.join('\n          ')}
          ${pair}
        }
      }
    }
  }
  if (live) {
    ${write}
  }
}
`;
}

// ---------------------------------------------------------------------------------------------
// The pre-pass and the reductions.

export const STATS_UNIFORMS = uniformLayout({ count: 'u32', groupsX: 'u32' });

export interface StatsSpec {
  readonly dimV: number;
  readonly wv: 1 | 4;
}

export const STATS_THREADS = 64;

/** stats[i] = (lse[i], sum_c dO[i, c] * O[i, c]) for every (row, head) i. */
export const statsProgram: Program<StatsSpec, typeof STATS_UNIFORMS.decl> = {
  name: 'backward-stats',
  uniforms: STATS_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'out', kind: 'read', type: `array<${vec(s.wv)}>` },
    { name: 'dout', kind: 'read', type: `array<${vec(s.wv)}>` },
    { name: 'lse', kind: 'read', type: 'array<f32>' },
    { name: 'stats', kind: 'readwrite', type: 'array<vec2<f32>>' },
  ],
  workgroupSize: () => STATS_THREADS,
  generate: (s) => `${prologue(statsProgram, s, { DV: s.dimV / s.wv, THREADS: STATS_THREADS })}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = ${FLAT_INVOCATION};
  if (i >= P.count) { return; }
  var d: f32 = 0.0;
  for (var c: u32 = 0u; c < DV; c++) { d += ${dot(s.wv, 'out[i * DV + c]', 'dout[i * DV + c]')}; }
  stats[i] = vec2<f32>(lse[i], d);
}
`,
};

export const REDUCE_UNIFORMS = uniformLayout({ count: 'u32', M: 'u32', N: 'u32', J: 'u32', sA: 'u32', sM: 'u32', sJ: 'u32', groupsX: 'u32' });

/** dst[(a * M + m) * N + i] = sum over j < J, in order, of src[a * sA + m * sM + j * sJ + i]. */
export const reduceProgram: Program<Record<string, never>, typeof REDUCE_UNIFORMS.decl> = {
  name: 'backward-reduce',
  uniforms: REDUCE_UNIFORMS,
  bindings: () => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'src', kind: 'read', type: 'array<f32>' },
    { name: 'dst', kind: 'readwrite', type: 'array<f32>' },
  ],
  workgroupSize: () => STATS_THREADS,
  generate: (s) => `${prologue(reduceProgram, s, { THREADS: STATS_THREADS })}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let x = ${FLAT_INVOCATION};
  if (x >= P.count) { return; }
  let i = x % P.N;
  let m = (x / P.N) % P.M;
  let a = x / (P.N * P.M);
  let base = a * P.sA + m * P.sM + i;
  var sum: f32 = 0.0;
  for (var j: u32 = 0u; j < P.J; j++) { sum += src[base + j * P.sJ]; }
  dst[x] = sum;
}
`,
};
