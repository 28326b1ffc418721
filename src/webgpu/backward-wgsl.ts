import { NO_MASK } from './schedule.js';
import { listSource, ropeFns } from './fused-wgsl.js';
import { ANALYTIC_UNIFORMS, analyticKeySource, analyticSource } from './analytic.js';
import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, f16Directive, narrow, prologue, vecType as vec, widenLoads } from './wgsl.js';
import { TILE_UNIFORMS, type TileSpec, dotOf as dot, microProduct, paddedStride, scoreHooks, stageRows } from './tile-wgsl.js';

/**
 * The WebGPU backward (FlashAttention-2, recomputed from the forward's LSE, design.md 3) as three
 * kernel families:
 *
 * - `backward-stats`: the pre-pass, (lse, delta = rowsum(dO * O)) per query row and head;
 * - `backward` (one template, two sides): side 'q' walks the forward's schedule over query tiles
 *   and accumulates dQ (and the per-row partials of drpb, or dbias); side 'k' walks the transposed
 *   schedule over key tiles and accumulates dK and dV. Both walks are computed in the kernel where the
 *   pattern is analytic (analytic.ts: the forward's walk, and its inverse windows for side 'k'), and
 *   read from uploaded schedules otherwise (schedule.ts, `transposed` for side 'k'). Each thread owns
 *   one row of its side in registers, and each visit stages the other side's rows in workgroup
 *   memory. WGSL has no float atomics, so every output element has exactly one writer: the two
 *   passes recompute P rather than share it, and the result is deterministic;
 * - `backward-reduce`: fixed-order sums over an axis (GQA's query heads of a group, drpb's rows,
 *   dbias's broadcast axes).
 *
 * The uploaded schedule (if any) and the aux table (bias | rpb | RoPE cos, sin) share one u32 binding (`sched`, aux
 * read through bitcast at P.auxOff), so each pass stays within the 8 storage buffers a shader stage
 * may always bind.
 */

/** Compile-time constants of one backward pipeline. */
export interface BackwardSpec extends TileSpec {
  /** 'q': work items are query tiles, dQ; 'k': work items are key tiles, dK and dV. */
  readonly side: 'q' | 'k';
  /** Side 'q': also write dS to the hook-gradient buffer: per-row drpb partials, or dbias of the (expanded) bias. */
  readonly hookGrad: 'none' | 'rpb' | 'bias';
  /** Side 'k': write dK, dV per query head ([kRows, H, ...]), summed over each group afterwards. */
  readonly perQueryHead: boolean;
  /** q, k, v, dO and the gradients stored as f16 (`shader-f16`); staged, computed and accumulated in f32. */
  readonly f16: boolean;
  /**
   * 'list' walks the uploaded schedules (schedule.ts, any pattern); 'analytic' decodes items and
   * visits in the kernel (analytic.ts: the forward's walk on side 'q', the inverse windows on side
   * 'k') for dense, causal, window and neighborhood patterns on `rank` axes.
   */
  readonly schedule: 'list' | 'analytic';
  readonly rank: number;
  /** Analytic walks: partial visits test pairs with bit masks (analytic.ts maskBitsFit; over the key tile on both sides). */
  readonly maskBits?: boolean;
}

export const backwardThreads = (s: Pick<BackwardSpec, 'rows' | 'rm' | 'tx'>): number => (s.rows / s.rm) * s.tx;

export const BACKWARD_UNIFORMS = uniformLayout({
  ...TILE_UNIFORMS,
  // where aux starts in the shared schedule binding, in words
  auxOff: 'u32',
  // the blocking constants again, as loop bounds for specs that do not unroll
  nDQ: 'u32',
  nDV: 'u32',
  nRM: 'u32',
  nRN: 'u32',
  // RoPE position shifts of analytic walks ('absolute': constants of the shape)
  ropeQShift: 'i32',
  ropeKShift: 'i32',
  ...ANALYTIC_UNIFORMS,
});

/**
 * Workgroup memory of a spec, in bytes: own rows, staged rows, the P/dS tiles, staged tokens (and
 * stats); analytic walks add their decoded tokens, loop bounds and per staged row coordinates (side
 * 'q') or intervals (side 'k').
 */
export function backwardWorkgroupBytes(s: Pick<BackwardSpec, 'dim' | 'dimV' | 'rows' | 'keys' | 'side'> & Partial<Pick<BackwardSpec, 'schedule' | 'rank' | 'maskBits' | 'pad' | 'wq' | 'wv'>>): number {
  const k = s.side === 'k';
  // side 'k' with bit masks keeps one u32 per staged query instead of its intervals
  const perKey = k ? (s.maskBits ? 1 : 2 * (s.rank ?? 3)) : (s.rank ?? 3) + (s.maskBits ? 1 : 0);
  const walk = s.schedule === 'analytic' ? s.rows + s.keys + 2 + s.keys * perKey : 0;
  // padded strides (TileSpec.pad): the q-like and v-like rows, the P and dS tiles
  const [wq, wv] = [s.wq ?? 1, s.wv ?? 1];
  const width = wq * paddedStride(s.dim / wq, s.pad) + wv * paddedStride(s.dimV / wv, s.pad);
  return 4 * ((s.rows + s.keys) * width + (k ? 2 : 1) * s.rows * paddedStride(s.keys, s.pad) + s.keys * (k ? 4 : 2) + walk);
}

export const backwardProgram: Program<BackwardSpec, typeof BACKWARD_UNIFORMS.decl> = {
  name: 'backward',
  uniforms: BACKWARD_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'q', kind: 'read', type: `array<${vec(s.wq, io(s))}>` },
    { name: 'k', kind: 'read', type: `array<${vec(s.wq, io(s))}>` },
    { name: 'v', kind: 'read', type: `array<${vec(s.wv, io(s))}>` },
    { name: 'dout', kind: 'read', type: `array<${vec(s.wv, io(s))}>` },
    { name: 'stats', kind: 'read', type: 'array<vec2<f32>>' },
    { name: 'sched', kind: 'read', type: 'array<u32>' },
    ...(s.side === 'q'
      ? [{ name: 'dq', kind: 'readwrite' as const, type: `array<${vec(s.wq, gradIo(s))}>` }, ...(s.hookGrad !== 'none' ? [{ name: 'hg', kind: 'readwrite' as const, type: 'array<f32>' }] : [])]
      : [
          { name: 'dk', kind: 'readwrite' as const, type: `array<${vec(s.wq, gradIo(s))}>` },
          { name: 'dv', kind: 'readwrite' as const, type: `array<${vec(s.wv, gradIo(s))}>` },
        ]),
  ],
  workgroupSize: backwardThreads,
  generate: generateBackward,
};

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Element type of the inputs; of the gradients the pass writes (GQA's per-query-head dK, dV stay f32 for the reduce). */
const io = (s: Pick<BackwardSpec, 'f16'>): 'f16' | 'f32' => (s.f16 ? 'f16' : 'f32');
const gradIo = (s: Pick<BackwardSpec, 'f16' | 'perQueryHead'>): 'f16' | 'f32' => (s.f16 && !s.perQueryHead ? 'f16' : 'f32');

/**
 * In the generated WGSL (no comments inside it: they would ship in every bundle): the schedule's
 * "query" side is the item's own side (key rows on side 'k', a transposed walk); each thread keeps
 * its own rows' tokens and linear coordinates (and on side 'q' their lse and delta); each visit's
 * first barrier waits until the previous visit's tiles are consumed (at the first, the own rows
 * staged); loads widen f16 storage to the f32 the kernel computes in.
 *
 * One template, both passes. Per work item the own rows (q and dO, or k and v) are staged once;
 * per visit the other side's rows are staged, thread (ty, tx) computes its RM x RN micro-tiles of
 * S and dP (the forward's blocking), turns them into P and dS in workgroup memory, and adds its
 * RM x (columns tx, tx + TX, ..) share of dS K (side 'q'), or of P^T dO and dS^T Q (side 'k').
 * The epilogue goes through workgroup memory, where RoPE's transpose pairs dims held by different threads.
 */
function generateBackward(s: BackwardSpec): string {
  const QT = vec(s.wq);
  const VT = vec(s.wv);
  const DQ = s.dim / s.wq;
  const DV = s.dimV / s.wv;
  const RM = s.rm;
  const TX = s.tx;
  const RN = s.keys / TX;
  const RQ = Math.ceil(DQ / TX);
  const RV = Math.ceil(DV / TX);
  const T = backwardThreads(s);
  // row strides of the q-like rows (ow, sw), the v-like rows (ou, su) and the P/dS tiles (padded when s.pad)
  const QS = paddedStride(DQ, s.pad);
  const VS = paddedStride(DV, s.pad);
  const PS = paddedStride(s.keys, s.pad);
  const qSide = s.side === 'q';
  const src = s.schedule === 'analytic' ? (qSide ? analyticSource(s.rank, RM, s.rope, false, s.maskBits === true) : analyticKeySource(s.rank, RM, s.rope, s.maskBits === true)) : listSource(s.rope);
  const I = range(RM);
  const lines = (xs: string[], indent: string) => xs.join(`\n${indent}`);
  // loop bounds: constants to unroll, uniforms to keep loops
  const [bDQ, bDV, bRM, bRN] = s.unroll ? [`${DQ}u`, `${DV}u`, 'RM', 'RN'] : ['P.nDQ', 'P.nDV', 'P.nRM', 'P.nRN'];
  // columns of thread tx: tx + TX * c (clamped reads where TX does not divide the width; never written)
  const col = (c: number, width: number, n: number) => (n * TX === width ? `tx + ${TX * c}u` : `min(tx + ${TX * c}u, ${width - 1}u)`);
  // score hooks on x = q.k * scale for own row slot i and staged column c; sg = the softcap's derivative
  const [qTok, kTok] = qSide ? ['otk[i]', 'otok[c]'] : ['otok[c]', 'otk[i]'];
  const [qLin, kLin] = qSide ? ['oln[i]', 'olin[c]'] : ['olin[c]', 'oln[i]'];
  const hooks = scoreHooks({ ...s, aux: (i) => `auxf(${i})`, biasAt: `biasBase + ${qTok} * biasStride + ${kTok}`, rpbAt: `P.rpbOff + h * P.rpbVol + u32(P.rpbConst + ${kLin} - ${qLin})`, derivative: true });
  // own rows: q (rotated) and dO, or k (rotated) and v
  const [ownX, ownHeads, ownHead, ownBuf, rot] = qSide ? ['qOff', 'P.heads', 'h', 'dout', 'rope_q'] : ['kOff', 'P.kvHeads', 'kh', 'v', 'rope_k'];
  const stageOwn = `for (var e: u32 = lid; e < ROWS * DQ; e += THREADS) {
    let r = e / DQ;
    var x: ${QT} = ${QT}();
    if (r < nOwn) {
      let t = ${src.qTok('r')};
      let at = ((${ownX} + t) * ${ownHeads} + ${ownHead}) * DQ;
      x = ${s.rope ? `${rot}(at, e - r * DQ, ropePos(t, ownShift))` : `ld_${qSide ? 'q' : 'k'}(at + e - r * DQ)`};
    }
    ow[r * QS + e - r * DQ] = x;
  }
  for (var e: u32 = lid; e < ROWS * DV; e += THREADS) {
    let r = e / DV;
    var x: ${VT} = ${VT}();
    if (r < nOwn) { x = ld_${ownBuf}(((${ownX} + ${src.qTok('r')}) * ${ownHeads} + ${ownHead}) * DV + e - r * DV); }
    ou[r * VS + e - r * DV] = x;
  }`;
  // staged rows of a visit: k (rotated) and v, or q (rotated), dO and their stats
  const [othX, othHeads, othHead, othBuf, orot] = qSide ? ['kOff', 'P.kvHeads', 'kh', 'v', 'rope_k'] : ['qOff', 'P.heads', 'h', 'dout', 'rope_q'];
  const stageOther = `${stageRows({
    dst: 'sw',
    count: 'nk',
    width: 'DQ',
    stride: 'QS',
    pre: (j) => `let t = ${src.kTok(j)};\n      let at = ((${othX} + t) * ${othHeads} + ${othHead}) * DQ;`,
    load: (_j, c) => (s.rope ? `${orot}(at, ${c}, ropePos(t, oShift))` : `ld_${qSide ? 'k' : 'q'}(at + ${c})`),
  })}
    ${stageRows({ dst: 'su', count: 'nk', width: 'DV', stride: 'VS', load: (j, c) => `ld_${othBuf}(((${othX} + ${src.kTok(j)}) * ${othHeads} + ${othHead}) * DV + ${c})` })}
    for (var j: u32 = lid; j < nk; j += THREADS) {
      otok[j] = ${src.kTok('j')};
      ${s.rpb ? `olin[j] = ${src.kLin('j')};` : ''}
      ${qSide ? '' : 'sst[j] = stats[(qOff + otok[j]) * P.heads + h];'}
    }`;
  // the micro-tile products: S (or S^T) and dP (or dP^T)
  const product = (acc: string, own: string, oth: string, stride: number, bound: string, w: 1 | 4) => microProduct({ acc, own, other: oth, stride, bound, w, rm: RM, rn: RN, tx: TX });
  const hookGrad =
    s.hookGrad === 'rpb'
      ? 'if (ok) { hg[(qOff + otk[i]) * P.heads * P.rpbVol + h * P.rpbVol + u32(P.rpbConst + olin[c] - oln[i])] += ds; }'
      : s.hookGrad === 'bias'
        ? 'if (ok) { hg[biasBase + otk[i] * biasStride + otok[c]] = ds; }'
        : '';
  // P and dS of the micro-tile into workgroup memory (zero where the pair is not allowed)
  const toTiles = `for (var i: u32 = 0u; i < ${bRM}; i++) {
      let r = r0 + i;
      for (var kk: u32 = 0u; kk < ${bRN}; kk++) {
        let c = tx + TX * kk;
        var ok: bool = r < nOwn && c < nk;
        if (ok && mask != NO_MASK) { ok = ${src.allowed('i', 'r', 'c')}; }
        var x: f32 = sc[i * RN + kk] * P.scale;
        var sg: f32 = 1.0;
        ${lines(hooks, '        ')}
        let st = ${qSide ? 'ost[i]' : 'sst[c]'};
        let p = select(0.0, exp(x - st.x), ok);
        let ds = select(0.0, p * (dp[i * RN + kk] - st.y), ok);
        ${hookGrad}
        ${qSide ? 't1[r * PS + c] = ds * sg;' : 't1[r * PS + c] = p;\n        t2[r * PS + c] = ds * sg;'}
      }
    }`;
  // the accumulations: dQ += dS K, or dV += P^T dO and dK += dS^T Q (RM rows x columns tx + TX c)
  const RQs = range(RQ);
  const RVs = range(RV);
  const accumulate = qSide
    ? `for (var j: u32 = 0u; j < nk; j++) {
      ${lines(RQs.map((c) => `let w${c} = sw[j * QS + ${col(c, DQ, RQ)}];`), '      ')}
      ${lines(I.map((i) => `let p${i} = t1[(r0 + ${i}u) * PS + j];`), '      ')}
      ${lines(I.flatMap((i) => RQs.map((c) => `acc[${i * RQ + c}] += p${i} * w${c};`)), '      ')}
    }`
    : `for (var j: u32 = 0u; j < nk; j++) {
      ${lines(RVs.map((c) => `let u${c} = su[j * VS + ${col(c, DV, RV)}];`), '      ')}
      ${lines(RQs.map((c) => `let w${c} = sw[j * QS + ${col(c, DQ, RQ)}];`), '      ')}
      ${lines(I.map((i) => `let p${i} = t1[(r0 + ${i}u) * PS + j];\n      let d${i} = t2[(r0 + ${i}u) * PS + j];`), '      ')}
      ${lines(I.flatMap((i) => RVs.map((c) => `accv[${i * RV + c}] += p${i} * u${c};`)), '      ')}
      ${lines(I.flatMap((i) => RQs.map((c) => `acc[${i * RQ + c}] += d${i} * w${c};`)), '      ')}
    }`;
  // epilogue: the scaled dQ / dK rows in `ow`, then written out (RoPE's transpose reads the partner dims there)
  const dOut = qSide ? '(qOff + t) * P.heads + h' : s.perQueryHead ? '(kOff + t) * P.heads + h' : '(kOff + t) * P.kvHeads + kh';
  const epilogue = `workgroupBarrier();
  for (var i: u32 = 0u; i < ${bRM}; i++) {
    let r = r0 + i;
    ${lines(RQs.map((c) => `${RQ * TX === DQ ? '' : `if (tx + ${TX * c}u < DQ) `}{ ow[r * QS + tx + ${TX * c}u] = acc[i * ${RQ}u + ${c}u] * P.scale; }`), '    ')}
    ${
      qSide
        ? ''
        : `if (r < nOwn) {
      let t = ${src.qTok('r')};
      ${lines(RVs.map((c) => `${RV * TX === DV ? '' : `if (tx + ${TX * c}u < DV) `}{ dv[(${dOut}) * DV + tx + ${TX * c}u] = ${narrow(gradIo(s) === 'f16', s.wv, `accv[i * ${RV}u + ${c}u]`)}; }`), '      ')}
    }`
    }
  }
  workgroupBarrier();
  for (var e: u32 = lid; e < nOwn * DQ; e += THREADS) {
    let r = e / DQ;
    let t = ${src.qTok('r')};
    ${qSide ? 'dq' : 'dk'}[(${dOut}) * DQ + e - r * DQ] = ${narrow(gradIo(s) === 'f16', s.wq, s.rope ? 'unrope_ow(r * QS, e - r * DQ, ropePos(t, ownShift))' : 'ow[r * QS + e - r * DQ]')};
  }`;
  // the transpose of the rotation (sin negated) on row `base` of ow, vector c, position p
  const unropeFn = s.rope
    ? `fn unrope_ow(base: u32, c: u32, p: u32) -> ${QT} {
  var x: ${QT} = ow[base + c];
  ${s.wq === 4 ? 'for (var l: u32 = 0u; l < 4u; l++) {\n    let j = c * 4u + l;' : '{\n    let j = c;'}
    if (j < 2u * P.ropeHalf) {
      let lo = j < P.ropeHalf;
      let f = select(j - P.ropeHalf, j, lo);
      let pj = select(j - P.ropeHalf, j + P.ropeHalf, lo);
      let y = ${s.wq === 4 ? 'ow[base + pj / 4u][pj % 4u]' : 'ow[base + pj]'};
      let t = P.ropeOff + p * P.ropeHalf + f;
      ${s.wq === 4 ? 'x[l]' : 'x'} = ${s.wq === 4 ? 'x[l]' : 'x'} * auxf(t) + select(-y, y, lo) * auxf(t + P.ropeSin);
    }
  }
  return x;
}`
    : '';
  return `${f16Directive(s.f16)}${prologue(backwardProgram, s, { DQ, DV, QS, VS, PS, ROWS: s.rows, BQ: s.rows, BK: s.keys, RM, RN, TX, THREADS: T })}
const NO_MASK: u32 = ${NO_MASK}u;
${src.decls}
fn auxf(i: u32) -> f32 { return bitcast<f32>(sched[P.auxOff + i]); }
${widenLoads(s.f16, [['q', s.wq], ['k', s.wq], ['v', s.wv], ['dout', s.wv]])}
${s.rope ? ropeFns(s, (i) => `auxf(${i})`) : ''}

var<workgroup> ow: array<${QT}, ${s.rows * QS}>;
var<workgroup> ou: array<${VT}, ${s.rows * VS}>;
var<workgroup> sw: array<${QT}, ${s.keys * QS}>;
var<workgroup> su: array<${VT}, ${s.keys * VS}>;
var<workgroup> t1: array<f32, ${s.rows * PS}>;
${qSide ? '' : `var<workgroup> t2: array<f32, ${s.rows * PS}>;\nvar<workgroup> sst: array<vec2<f32>, BK>;`}
var<workgroup> otok: array<u32, BK>;
var<workgroup> olin: array<i32, BK>;
${unropeFn}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * P.itemsX;
  if (item >= P.total) { return; }
  ${src.item}
  let kh = h / P.group;
  let nOwn = nq;
  ${s.rope ? 'let ownShift = qShift;' : ''}
  let tx = lid % TX;
  let r0 = (lid / TX) * RM;
  ${stageOwn}
  var otk: array<u32, RM> = array<u32, RM>();
  var oln: array<i32, RM> = array<i32, RM>();
  ${qSide ? 'var ost: array<vec2<f32>, RM> = array<vec2<f32>, RM>();' : ''}
  for (var i: u32 = 0u; i < ${bRM}; i++) {
    let r = min(r0 + i, nOwn - 1u);
    otk[i] = ${src.qTok('r')};
    ${src.rowSetup('i', 'r')}
    ${s.rpb ? `oln[i] = ${src.qLin('r')};` : ''}
    ${qSide ? 'ost[i] = stats[(qOff + otk[i]) * P.heads + h];' : ''}
  }
  var sc: array<f32, ${RM * RN}> = array<f32, ${RM * RN}>();
  var dp: array<f32, ${RM * RN}> = array<f32, ${RM * RN}>();
  var acc: array<${QT}, ${RM * RQ}> = array<${QT}, ${RM * RQ}>();
  ${qSide ? '' : `var accv: array<${VT}, ${RM * RV}> = array<${VT}, ${RM * RV}>();`}

  for (var vi: u32 = 0u; vi < nVisit; vi++) {
    ${src.visit('vi')}
    ${s.rope ? 'let oShift = kShift;' : ''}
    workgroupBarrier();
    ${stageOther}
    workgroupBarrier();
    for (var x: u32 = 0u; x < ${bRM} * ${bRN}; x++) { sc[x] = 0.0; dp[x] = 0.0; }
    ${product('sc', 'ow', 'sw', QS, bDQ, s.wq)}
    ${product('dp', 'ou', 'su', VS, bDV, s.wv)}
    ${toTiles}
    workgroupBarrier();
    ${accumulate}
  }
  ${epilogue}
}
`;
}

// ---------------------------------------------------------------------------------------------
// The pre-pass and the reductions.

export const STATS_UNIFORMS = uniformLayout({ count: 'u32', groupsX: 'u32' });

export interface StatsSpec {
  readonly dimV: number;
  readonly wv: 1 | 4;
  /** out and dO stored as f16. */
  readonly f16: boolean;
}

export const STATS_THREADS = 64;

/** stats[i] = (lse[i], sum_c dO[i, c] * O[i, c]) for every (row, head) i. */
export const statsProgram: Program<StatsSpec, typeof STATS_UNIFORMS.decl> = {
  name: 'backward-stats',
  uniforms: STATS_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'out', kind: 'read', type: `array<${vec(s.wv, io(s))}>` },
    { name: 'dout', kind: 'read', type: `array<${vec(s.wv, io(s))}>` },
    { name: 'lse', kind: 'read', type: 'array<f32>' },
    { name: 'stats', kind: 'readwrite', type: 'array<vec2<f32>>' },
  ],
  workgroupSize: () => STATS_THREADS,
  generate: (s) => `${f16Directive(s.f16)}${prologue(statsProgram, s, { DV: s.dimV / s.wv, THREADS: STATS_THREADS })}
${widenLoads(s.f16, [['out', s.wv], ['dout', s.wv]])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = ${FLAT_INVOCATION};
  if (i >= P.count) { return; }
  var d: f32 = 0.0;
  for (var c: u32 = 0u; c < DV; c++) { d += ${dot(s.wv, 'ld_out(i * DV + c)', 'ld_dout(i * DV + c)')}; }
  stats[i] = vec2<f32>(lse[i], d);
}
`,
};

export const REDUCE_UNIFORMS = uniformLayout({ count: 'u32', M: 'u32', N: 'u32', J: 'u32', sA: 'u32', sM: 'u32', sJ: 'u32', groupsX: 'u32' });

/** dst[(a * M + m) * N + i] = sum over j < J, in order, of src[a * sA + m * sM + j * sJ + i] (dst f16 when the spec says: GQA's dK, dV of f16 calls). */
export const reduceProgram: Program<{ readonly f16: boolean }, typeof REDUCE_UNIFORMS.decl> = {
  name: 'backward-reduce',
  uniforms: REDUCE_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'src', kind: 'read', type: 'array<f32>' },
    { name: 'dst', kind: 'readwrite', type: `array<${s.f16 ? 'f16' : 'f32'}>` },
  ],
  workgroupSize: () => STATS_THREADS,
  generate: (s) => `${f16Directive(s.f16)}${prologue(reduceProgram, s, { THREADS: STATS_THREADS })}

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
  dst[x] = ${s.f16 ? 'f16(sum)' : 'sum'};
}
`,
};
