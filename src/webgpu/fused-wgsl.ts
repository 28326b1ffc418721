import { ITEM, NO_MASK, VISIT } from './schedule.js';
import { ANALYTIC_UNIFORMS, analyticSource } from './analytic.js';
import { CHUNK_UNIFORMS, chunkSource } from './chunks.js';
import { uniformLayout } from './uniforms.js';
import { type Program, attnBindings, f16Directive, narrow, prologue, vecType as vec, widenLoads } from './wgsl.js';
import { TILE_UNIFORMS, type TileSpec, microProduct, paddedStride, scoreHooks, stageRows } from './tile-wgsl.js';

/**
 * The fused forward template (one for every pattern). One workgroup per work item; its query
 * tile (up to BQ rows) is staged in workgroup memory once, then every visit of its schedule stages
 * up to BK key and value rows. Register blocking (design.md 8): thread (ty, tx) owns an RM x RN
 * micro-tile of S (rows ty*RM.., keys tx, tx+TX, ..) and the RM x RV micro-tile of O with the same
 * rows; the TX threads sharing rows exchange row maxima and, at the end, row sums through
 * workgroup memory. RM = TX = 1 is the classic one-thread-per-row kernel.
 */

/** Compile-time constants of one fused pipeline; the pipeline cache key is this object, stringified. */
export interface FusedSpec extends TileSpec {
  /**
   * Row reductions and the P tile through subgroup shuffles instead of workgroup memory (needs the
   * `subgroups` feature and tx a power of two no larger than the adapter's smallest subgroup; the
   * tx threads of a row are consecutive invocations, so they sit in one subgroup). Saves the
   * P and reduction buffers and two of the four barriers per visit.
   */
  readonly subgroups: boolean;
  /**
   * Where the schedule comes from: 'list' reads the uploaded u32 records (schedule.ts), any
   * pattern; 'analytic' decodes items and visits from the workgroup id and per-axis rules
   * (analytic.ts), for dense, causal, window and neighborhood patterns on `rank` axes; 'chunks'
   * walks uploaded chunk lists (chunks.ts: LongHeads' chunks, alone or AND causal).
   */
  readonly schedule: 'list' | 'analytic' | 'chunks';
  readonly rank: number;
  /** Analytic neighborhoods only: q, k and v come in the permuted layouts of permute.ts. */
  readonly permute: boolean;
  /** Analytic walks: partial visits test pairs with bit masks (analytic.ts maskBitsFit). */
  readonly maskBits?: boolean;
  /** q, k, v and out stored as f16 (`shader-f16`); staged, computed and accumulated in f32. */
  readonly f16: boolean;
  /**
   * The non-finite policy inside the kernel (the host cannot screen GPU tensors without a read-back):
   * q, k and v values that are NaN or infinite are zeroed as they are staged, and a row whose query
   * held one, that is allowed a key whose k or v row held one, or whose score a bias or rpb entry
   * made NaN or +inf, comes out NaN.
   */
  readonly screen?: boolean;
}

export const threadsOf = (s: FusedSpec): number => (s.rows / s.rm) * s.tx;

/** Derived blocking sizes: vectors per q/k row (dq) and v row (dv), keys (rn) and value vectors (rv) per thread. */
export function blockingOf(s: FusedSpec): { dq: number; dv: number; rm: number; rn: number; rv: number; tx: number } {
  const dv = s.dimV / s.wv;
  return { dq: s.dim / s.wq, dv, rm: s.rm, rn: s.keys / s.tx, rv: Math.ceil(dv / s.tx), tx: s.tx };
}

/** Workgroup memory the template declares for a spec, in bytes. */
export function fusedWorkgroupBytes(s: Pick<FusedSpec, 'dim' | 'dimV' | 'rows' | 'keys' | 'tx' | 'subgroups'> & Partial<Pick<FusedSpec, 'schedule' | 'permute' | 'rank' | 'screen' | 'maskBits' | 'pad' | 'wq'>>): number {
  const wq = s.wq ?? 1;
  // padded strides (TileSpec.pad): qs and ks rows, and the P tile's
  const qRow = wq * paddedStride(s.dim / wq, s.pad);
  const exchange = s.subgroups ? 0 : s.rows * paddedStride(s.keys, s.pad) + s.rows * s.tx;
  // analytic schedules keep the decoded row and key tokens (and the uniform loop bounds)
  // (plus their rows in permuted layouts, and each key's coordinates)
  const tokens = s.schedule === 'analytic' ? (s.permute ? 2 : 1) * (s.rows + s.keys) + 2 + s.keys * (s.rank ?? 3) + (s.maskBits ? s.keys : 0) : 0;
  return 4 * (s.rows * qRow + s.keys * (qRow + s.dimV) + exchange + 2 * s.keys + tokens + (s.screen ? s.rows + s.keys : 0));
}

export const FUSED_UNIFORMS = uniformLayout({
  ...TILE_UNIFORMS,
  negInf: 'f32',
  // NaN's bits, for the non-finite policy (a WGSL constant NaN does not compile)
  nanBits: 'u32',
  // the blocking constants again, as loop bounds for specs that do not unroll
  dq: 'u32',
  rm: 'u32',
  rn: 'u32',
  rv: 'u32',
  tx: 'u32',
  // RoPE position shifts of analytic schedules ('absolute': constants of the shape)
  ropeQShift: 'i32',
  ropeKShift: 'i32',
  ...ANALYTIC_UNIFORMS,
  ...CHUNK_UNIFORMS,
});

export const fusedProgram: Program<FusedSpec, typeof FUSED_UNIFORMS.decl> = {
  name: 'fused-forward',
  uniforms: FUSED_UNIFORMS,
  bindings: (s) => [
    ...attnBindings(s.wq, s.wv, s.f16 ? 'f16' : 'f32'),
    ...(s.schedule !== 'analytic' ? [{ name: 'sched', kind: 'read' as const, type: 'array<u32>' }] : []),
    ...(s.bias || s.rpb || s.rope ? [{ name: 'aux', kind: 'read' as const, type: 'array<f32>' }] : []),
  ],
  workgroupSize: threadsOf,
  generate: generateFused,
};

/**
 * RoPE (rotate half: dim j pairs with j + half, j < half; dims past 2 * half unchanged), applied
 * while staging so each thread still writes whole vectors: `rope_<buf>(base, c, p)` is vector c of
 * the row at vector offset `base`, rotated to position p, its partner lanes read from global memory
 * (cached) instead of the staged tile, which would cost a barrier and a race on shared vectors.
 * Positions index the host's float64-built table: f32 sin/cos of large arguments would be poor.
 */
export function ropeFns(s: Pick<FusedSpec, 'wq'>, aux: (i: string) => string = (i) => `aux[${i}]`): string {
  const T = vec(s.wq);
  // lane x at dim j: x cos - y sin below half, x cos + y sin above, y the partner lane
  const body = (x: string, j: string, partner: string) => `let j = ${j};
    if (j < 2u * P.ropeHalf) {
      let lo = j < P.ropeHalf;
      let f = select(j - P.ropeHalf, j, lo);
      let pj = select(j - P.ropeHalf, j + P.ropeHalf, lo);
      let y = ${partner};
      let t = P.ropeOff + p * P.ropeHalf + f;
      ${x} = ${x} * ${aux('t')} + select(y, -y, lo) * ${aux('t + P.ropeSin')};
    }`;
  const rot = (buf: string) => `fn rope_${buf}(base: u32, c: u32, p: u32) -> ${T} {
  var x: ${T} = ld_${buf}(base + c);
  ${
    s.wq === 4
      ? `for (var l: u32 = 0u; l < 4u; l++) {
    ${body('x[l]', 'c * 4u + l', `ld_${buf}(base + pj / 4u)[pj % 4u]`)}
  }`
      : body('x', 'c', `ld_${buf}(base + pj)`)
  }
  return x;
}`;
  // position token + shift, clamped: keys of unlisted chunks ('selected') may fall outside the table
  return `fn ropePos(tok: u32, shift: i32) -> u32 { return u32(clamp(i32(tok) + shift, 0, P.ropeMax - 1)); }
${rot('q')}
${rot('k')}`;
}

/** The schedule hooks of the template (style.md 5): item and visit headers, tokens, linear coordinates, the mask test. */
export interface ScheduleSource {
  /** Module-scope declarations. */
  readonly decls: string;
  /** Defines h, qOff, kOff, nq, nVisit, biasBase, biasStride (and qShift with RoPE); may return for an empty item. */
  readonly item: string;
  /** Defines nk and mask (NO_MASK when the visit is full), and kShift with RoPE, for visit `vi`. */
  visit(vi: string): string;
  qTok(r: string): string;
  kTok(j: string): string;
  /**
   * Offsets, in vectors, of the head's row to load: q row r, and k or v key j (`w` vectors a row):
   * the token's row of [tokens, heads, dim], or the permuted row of [batch, heads, pad, dim].
   */
  qAt(r: string): string;
  kAt(j: string, w: string): string;
  qLin(r: string): string;
  kLin(j: string): string;
  /** Per row slot setup before the visits (row `r` of the tile in slot `i`). */
  rowSetup(i: string, r: string): string;
  /** Whether row slot i (tile row r) may see key slot c of a partial visit. */
  allowed(i: string, r: string, c: string): string;
}

/** Uploaded schedules: the records schedule.ts writes (the backward's passes read them too). */
export function listSource(rope: boolean): ScheduleSource {
  return {
    decls: `${ITEM.wgsl('I_')}
${VISIT.wgsl('V_')}
const ITEM_SIZE: u32 = ${ITEM.size}u;
const VISIT_SIZE: u32 = ${VISIT.size}u;`,
    item: `let ib = item * ITEM_SIZE;
  let h = sched[ib + I_h];
  let qOff = sched[ib + I_qOff];
  let kOff = sched[ib + I_kOff];
  let qTok = sched[ib + I_qTok];
  let nq = sched[ib + I_nq];
  let visit = sched[ib + I_visit];
  let nVisit = sched[ib + I_nVisit];
  let biasBase = sched[ib + I_biasBase];
  let biasStride = sched[ib + I_biasStride];
  ${rope ? 'let qShift = bitcast<i32>(sched[ib + I_qPosShift]);' : ''}`,
    visit: (vi) => `let vb = visit + ${vi} * VISIT_SIZE;
    let kTok = sched[vb + V_kTok];
    let nk = sched[vb + V_nk];
    let mask = sched[vb + V_mask];
    ${rope ? 'let kShift = bitcast<i32>(sched[vb + V_kPosShift]);' : ''}`,
    qTok: (r) => `sched[qTok + ${r}]`,
    kTok: (j) => `sched[kTok + ${j}]`,
    qAt: (r) => `((qOff + sched[qTok + ${r}]) * P.heads + h) * DQ`,
    kAt: (j, w) => `((kOff + sched[kTok + ${j}]) * P.kvHeads + kh) * ${w}`,
    qLin: (r) => `bitcast<i32>(sched[qTok + nq + ${r}])`,
    kLin: (j) => `bitcast<i32>(sched[kTok + nk + ${j}])`,
    rowSetup: () => '',
    allowed: (_i, r, c) => `((sched[mask + ((${r} * nk + ${c}) >> 5u)] >> ((${r} * nk + ${c}) & 31u)) & 1u) != 0u`,
  };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/**
 * The two tile products are unrolled in TypeScript (each thread's micro-tile at constant register
 * indices: S = Q K^T on rows r0.. and keys tx, tx + TX, ..); the per-element epilogues stay WGSL
 * loops, bounded by constants when `unroll` (the driver unrolls them) or by uniforms (llvmpipe then
 * compiles in about a quarter of the time). Comments stay out of the WGSL text: they would ship in
 * every bundle.
 */
function generateFused(s: FusedSpec): string {
  const QT = vec(s.wq);
  const VT = vec(s.wv);
  const { dq, dv, rm: RM, rn: RN, rv: RV, tx: TX } = blockingOf(s);
  const T = threadsOf(s);
  // row strides of qs and ks, and of ps (padded when s.pad)
  const QS = paddedStride(dq, s.pad);
  const PS = paddedStride(s.keys, s.pad);
  const I = range(RM);
  const V = range(RV);
  const lines = (xs: string[], indent: string) => xs.join(`\n${indent}`);
  // value columns of thread tx: tx + TX * k (clamped when TX does not divide DV; those are never written)
  const exact = RV * TX === dv;
  // loop bounds: constants to unroll, uniforms to keep loops
  const [bDQ, bRM, bRN, bRV, bTX] = s.unroll ? ['DQ', 'RM', 'RN', 'RV', 'TX'] : ['P.dq', 'P.rm', 'P.rn', 'P.rv', 'P.tx'];
  const vcol = (k: number) => (exact ? `tx + ${TX * k}u` : `min(tx + ${TX * k}u, DV - 1u)`);
  // scores: scale, hooks, mask; `after(i)` runs per row with the row's partial max in mx
  const scoreRows = (after: string) => `for (var i: u32 = 0u; i < ${bRM}; i++) {
      let r = r0 + i;
      var mx: f32 = NEG;
      for (var kk: u32 = 0u; kk < ${bRN}; kk++) {
        let c = tx + TX * kk;
        var x: f32 = sc[i * RN + kk] * P.scale;
        ${lines(scoreHooks({ ...s, aux: (i) => `aux[${i}]`, biasAt: 'biasBase + qt[i] * biasStride + ktok[c]', rpbAt: 'rpbBase + u32(klin[c] - ql[i])' }), '        ')}
        var ok: bool = r < nq && c < nk;
        if (ok && mask != NO_MASK) {
          ok = ${src.allowed('i', 'r', 'c')};
        }
        ${s.screen ? `if (ok && (atomicLoad(&kbad[c]) == vi + 1u || ${badScore('x')})) { atomicOr(&rbad[r], 1u); }` : ''}
        x = select(NEG, max(x, NEG), ok);
        sc[i * RN + kk] = x;
        mx = max(mx, x);
      }
      ${after}
    }`;
  // online-softmax update of row slot i given its new max mx; p kept in sc, or also written to ps
  const rescale = (toShared: boolean) => `let alpha = exp(m[i] - mx);
      m[i] = mx;
      var sum: f32 = 0.0;
      for (var kk: u32 = 0u; kk < ${bRN}; kk++) {
        let x = sc[i * RN + kk];
        let p = select(0.0, exp(x - mx), x > NEG);
        ${toShared ? 'ps[r * PS + tx + TX * kk] = p;' : 'sc[i * RN + kk] = p;'}
        sum += p;
      }
      l[i] = l[i] * alpha + sum;
      for (var c: u32 = 0u; c < ${bRV}; c++) { o[i * RV + c] *= alpha; }`;
  // butterfly over the TX consecutive lanes of a row (TX a power of two inside one subgroup)
  const butterfly = (x: string, op: (a: string, b: string) => string) =>
    TX === 1 ? '' : `for (var off: u32 = 1u; off < TX; off = off << 1u) { ${x} = ${op(x, `subgroupShuffleXor(${x}, off)`)}; }`;
  // online softmax: row max over the TX threads sharing the row, P to workgroup memory; then
  // O += P V on this thread's RM x RV micro-tile (value columns tx, tx + TX, ..)
  const softmaxPVShared = () => `
    ${scoreRows('red[r * TX + tx] = mx;')}
    workgroupBarrier();
    for (var i: u32 = 0u; i < ${bRM}; i++) {
      let r = r0 + i;
      var mx: f32 = m[i];
      for (var t: u32 = 0u; t < ${bTX}; t++) { mx = max(mx, red[r * TX + t]); }
      ${rescale(true)}
    }
    workgroupBarrier();
    for (var j: u32 = 0u; j < nk; j++) {
      ${lines(V.map((k) => `let w${k} = vs[j * DV + ${vcol(k)}];`), '      ')}
      ${lines(I.map((i) => `let p${i} = ps[(r0 + ${i}u) * PS + j];`), '      ')}
      ${lines(I.flatMap((i) => V.map((k) => `o[${i * RV + k}] += p${i} * w${k};`)), '      ')}
    }
    workgroupBarrier();`;
  // subgroup exchange: the row max by butterfly, P stays in registers and is read by shuffle
  // (O += P V: key j = t + TX * kk lives in lane t of the row's lanes, slot kk)
  const softmaxPVPrivate = () => `
    ${scoreRows(`${butterfly('mx', (a, b) => `max(${a}, ${b})`)}
      mx = max(m[i], mx);
      ${rescale(false)}`)}
    for (var kk: u32 = 0u; kk < ${bRN}; kk++) {
      for (var t: u32 = 0u; t < ${bTX}; t++) {
        let j = t + TX * kk;
        ${lines(I.map((i) => (TX === 1 ? `let p${i} = sc[${i * RN}u + kk];` : `let p${i} = subgroupShuffle(sc[${i * RN}u + kk], lane0 + t);`)), '        ')}
        if (j < nk) {
          ${lines(V.map((k) => `let w${k} = vs[j * DV + ${vcol(k)}];`), '          ')}
          ${lines(I.flatMap((i) => V.map((k) => `o[${i * RV + k}] += p${i} * w${k};`)), '          ')}
        }
      }
    }
    workgroupBarrier();`;
  // row sums over the TX threads sharing a row, then O / l and LSE at the original rows
  const rowSums = () =>
    s.subgroups
      ? `  for (var i: u32 = 0u; i < ${bRM}; i++) {
    let r = r0 + i;
    var lt: f32 = l[i];
    ${butterfly('lt', (a, b) => `${a} + ${b}`)}`
      : `  for (var i: u32 = 0u; i < ${bRM}; i++) { red[(r0 + i) * TX + tx] = l[i]; }
  workgroupBarrier();
  for (var i: u32 = 0u; i < ${bRM}; i++) {
    let r = r0 + i;
    var lt: f32 = 0.0;
    for (var t: u32 = 0u; t < ${bTX}; t++) { lt += red[r * TX + t]; }`;
  // non-finite screening (spec.screen): a value with all exponent bits set is NaN or infinite
  const badMask = (x: string, w: 1 | 4 = s.wq) => (w === 4 ? `(bitcast<vec4<u32>>(${x}) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u)` : `(bitcast<u32>(${x}) & 0x7f800000u) == 0x7f800000u`);
  // a score made NaN or +inf by a bias or rpb entry (-inf is a mask)
  const badScore = (x: string) => `((bitcast<u32>(${x}) & 0x7f800000u) == 0x7f800000u && bitcast<u32>(${x}) != 0xff800000u)`;
  const anyBad = (x: string, w: 1 | 4 = s.wq) => (w === 4 ? `any(${badMask(x, w)})` : badMask(x, w));
  const zeroBad = (x: string, w: 1 | 4 = s.wq) => `select(${x}, ${vec(w)}(0.0), ${badMask(x, w)})`;
  // a staged key value, zeroed where non-finite, its row flagged for this visit
  const screened = (load: string, j: string, w: 1 | 4 = s.wq) => (s.screen ? `screenKey${w}(${load}, ${j}, vi)` : load);
  const screenFns = s.screen
    ? `var<workgroup> rbad: array<atomic<u32>, BQ>;
var<workgroup> kbad: array<atomic<u32>, BK>;
fn screenKey4(x: vec4<f32>, j: u32, vi: u32) -> vec4<f32> {
  let bad = ${badMask('x', 4)};
  if (any(bad)) { atomicMax(&kbad[j], vi + 1u); }
  return select(x, vec4<f32>(0.0), bad);
}
fn screenKey1(x: f32, j: u32, vi: u32) -> f32 {
  let bad = ${badMask('x', 1)};
  if (bad) { atomicMax(&kbad[j], vi + 1u); }
  return select(x, 0.0, bad);
}`
    : '';
  const shuffles = s.subgroups && TX > 1;
  const src = s.schedule === 'analytic' ? analyticSource(s.rank, RM, s.rope, s.permute, s.maskBits === true) : s.schedule === 'chunks' ? chunkSource(s.rope) : listSource(s.rope);
  // loads widen f16 storage to the f32 the kernel computes in
  const loads = widenLoads(s.f16, [['q', s.wq], ['k', s.wq], ['v', s.wv]]);
  return `${f16Directive(s.f16)}${shuffles ? 'enable subgroups;\n' : ''}${prologue(fusedProgram, s, { DQ: dq, DV: dv, QS, PS, BQ: s.rows, BK: s.keys, RM, RN, RV, TX, THREADS: T })}
const NO_MASK: u32 = ${NO_MASK}u;
${src.decls}
const NEG: f32 = -3.0e38;
${loads}
${s.rope ? ropeFns(s) : ''}

var<workgroup> qs: array<${QT}, ${s.rows * QS}>;
var<workgroup> ks: array<${QT}, ${s.keys * QS}>;
var<workgroup> vs: array<${VT}, ${s.keys * dv}>;
${s.subgroups ? '' : `var<workgroup> ps: array<f32, ${s.rows * PS}>;
var<workgroup> red: array<f32, ${s.rows * TX}>;`}
${s.bias ? 'var<workgroup> ktok: array<u32, BK>;' : ''}
${s.rpb ? 'var<workgroup> klin: array<i32, BK>;' : ''}
${screenFns}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${shuffles ? ', @builtin(subgroup_invocation_id) sgid: u32' : ''}) {
  let item = wid.x + wid.y * P.itemsX;
  if (item >= P.total) { return; }
  ${src.item}
  let kh = h / P.group;
  let tx = lid % TX;
  let r0 = (lid / TX) * RM;
  ${shuffles ? 'let lane0 = sgid - tx;' : '' /* the lane of this row group's tx = 0 */}
  ${s.rpb ? 'let rpbBase = u32(i32(P.rpbOff + h * P.rpbVol) + P.rpbConst);' : ''}

  for (var e: u32 = lid; e < BQ * DQ; e += THREADS) {
    let r = e / DQ;
    var x: ${QT} = ${QT}(0.0);
    if (r < nq) {
      let at = ${src.qAt('r')};
      ${s.rope ? `x = rope_q(at, e - r * DQ, ropePos(${src.qTok('r')}, qShift));` : 'x = ld_q(at + (e - r * DQ));'}
      ${s.screen ? `if (${anyBad('x')}) { atomicOr(&rbad[r], 1u); x = ${zeroBad('x')}; }` : ''}
    }
    qs[r * QS + e - r * DQ] = x;
  }
  var m: array<f32, RM> = array<f32, RM>();
  var l: array<f32, RM> = array<f32, RM>();
  ${s.bias ? 'var qt: array<u32, RM> = array<u32, RM>();' : ''}
  ${s.rpb ? 'var ql: array<i32, RM> = array<i32, RM>();' : ''}
  for (var i: u32 = 0u; i < ${bRM}; i++) {
    m[i] = NEG;
    ${src.rowSetup('i', 'min(r0 + i, nq - 1u)')}
    ${s.bias ? `qt[i] = ${src.qTok('min(r0 + i, nq - 1u)')};` : ''}
    ${s.rpb ? `ql[i] = ${src.qLin('min(r0 + i, nq - 1u)')};` : ''}
  }
  var o: array<${VT}, ${RM * RV}> = array<${VT}, ${RM * RV}>();
  var sc: array<f32, ${RM * RN}> = array<f32, ${RM * RN}>();

  for (var vi: u32 = 0u; vi < nVisit; vi++) {
    ${src.visit('vi')}
    ${stageRows({ dst: 'ks', count: 'nk', width: 'DQ', stride: 'QS', pre: (j) => `let at = ${src.kAt(j, 'DQ')};`, load: (j, c) => screened(s.rope ? `rope_k(at, ${c}, ropePos(${src.kTok(j)}, kShift))` : `ld_k(at + ${c})`, j) })}
    ${stageRows({ dst: 'vs', count: 'nk', width: 'DV', load: (j, c) => screened(`ld_v(${src.kAt(j, 'DV')} + ${c})`, j, s.wv) })}
    ${s.bias ? `for (var j: u32 = lid; j < nk; j += THREADS) { ktok[j] = ${src.kTok('j')}; }` : ''}
    ${s.rpb ? `for (var j: u32 = lid; j < nk; j += THREADS) { klin[j] = ${src.kLin('j')}; }` : ''}
    workgroupBarrier();
    for (var x: u32 = 0u; x < ${bRM} * ${bRN}; x++) { sc[x] = 0.0; }
    ${microProduct({ acc: 'sc', own: 'qs', other: 'ks', stride: QS, bound: bDQ, w: s.wq, rm: RM, rn: RN, tx: TX })}
${s.subgroups ? softmaxPVPrivate() : softmaxPVShared()}
  }

${s.screen ? '  workgroupBarrier();' : '' /* every row flag is set */}
${rowSums()}
    if (r < nq) {
      let row = qOff + ${src.qTok('r')};
      let inv = select(0.0, 1.0 / lt, lt > 0.0);
      let ob = (row * P.heads + h) * DV;
      ${s.screen ? 'let nanRow = atomicLoad(&rbad[r]) != 0u;\n      let nan = bitcast<f32>(P.nanBits);' : ''}
      for (var c: u32 = 0u; c < ${bRV}; c++) {
        let col = tx + TX * c;
        ${exact ? '' : 'if (col < DV) {'} out[ob + col] = ${narrow(s.f16, s.wv, s.screen ? `select(o[i * RV + c] * inv, ${vec(s.wv)}(nan), nanRow)` : 'o[i * RV + c] * inv')}; ${exact ? '' : '}'}
      }
      if (tx == 0u) { lse[row * P.heads + h] = ${s.screen ? 'select(select(P.negInf, m[i] + log(lt), lt > 0.0), nan, nanRow)' : 'select(P.negInf, m[i] + log(lt), lt > 0.0)'}; }
    }
  }
}
`;
}
