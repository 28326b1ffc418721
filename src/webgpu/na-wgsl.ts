import { NA_WINDOW_WGSL } from './na-rule-wgsl.js';
import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, attnBindings, f16Directive, narrow, prologue, vecType as vec, widenLoads } from './wgsl.js';

/**
 * The neighborhood template family: NATTEN's naive kernel and the unfused (GEMM-based) pipeline
 * naQK -> softmax -> naAV. All share one uniform layout, the analytic window per axis (design.md 7,
 * patterns/rules.ts `neighborhoodRule`) and the CPU's slot layout (cpu/na.ts): along an axis a
 * key's slot is its offset from the window base, the window start or, when causal, query - K + 1.
 * Coordinates are local to a dilation group; token = group + dilation * local, row-major over axes.
 * With `f16`, q, k, v and out are stored as f16 (`shader-f16`) and widened on load: everything
 * else (staging, scores, softmax, accumulators) is f32, as in the fused kernel.
 */

const AXES = [0, 1, 2] as const;
const perAxis = <N extends string>(name: N) => Object.fromEntries(AXES.map((a) => [`${name}${a}`, 'u32' as const])) as Record<`${N}${0 | 1 | 2}`, 'u32'>;

/** One layout for the family (each kernel reads what it needs); unused axes hold length 1. */
export const NA_UNIFORMS = uniformLayout({
  heads: 'u32',
  kvHeads: 'u32',
  group: 'u32',
  /** Threads (naive, softmax) or work items (tiled kernels) to run. */
  total: 'u32',
  groupsX: 'u32',
  tokens: 'u32',
  /** prod(kernelSize): slots per (query, head) row of the scores. */
  wv: 'u32',
  scale: 'f32',
  softcap: 'f32',
  negInf: 'f32',
  // NaN's bits, for the naive kernel's non-finite policy (a WGSL constant NaN does not compile)
  nanBits: 'u32',
  rpbVol: 'u32',
  rpbConst: 'i32',
  ...perAxis('len'),
  ...perAxis('kernel'),
  ...perAxis('dil'),
  ...perAxis('stride'),
  ...perAxis('causal'),
  ...perAxis('rpbStride'),
  /** Query tile extent per axis and tiles per axis (from the longest group) of the tiled kernels. */
  ...perAxis('tile'),
  ...perAxis('tiles'),
  /** Tiled kernels that do not unroll: vectors per row and micro-tile sizes, as loop bounds. */
  vecs: 'u32',
  rm: 'u32',
  rn: 'u32',
  rv: 'u32',
} as const);

type Axes = readonly number[];
const axesOf = (rank: number): Axes => AXES.slice(0, rank);
const lines = (xs: readonly string[], indent = '  ') => xs.join(`\n${indent}`);

/**
 * WGSL every kernel of the family shares: NATTEN's window [start, end] of local coordinate x on a
 * group of length n, and per axis the group length, window and slot base.
 */
function naCommon(axes: Axes): string {
  return `${NA_WINDOW_WGSL}
${axes
  .map(
    (a) => `fn groupLen${a}(g: u32) -> i32 { return i32((P.len${a} - g + P.dil${a} - 1u) / P.dil${a}); }
fn win${a}(x: i32, n: i32) -> vec2<i32> { return na_window(x, n, i32(P.kernel${a}), i32(P.stride${a}), P.causal${a} != 0u); }
fn slotBase${a}(x: i32, w: vec2<i32>) -> i32 { return select(w.x, x - i32(P.kernel${a}) + 1, P.causal${a} != 0u); }`,
  )
  .join('\n')}`;
}

/** Token (within a batch entry) of local coordinates k(a) in group g(a), as a u32 expression. */
function tokenOf(axes: Axes, g: (a: number) => string, k: (a: number) => string): string {
  const tokStride = (a: number) => axes.slice(a + 1).map((b) => `P.len${b}`).join(' * ') || '1u';
  return axes.map((a) => `(${g(a)} + P.dil${a} * u32(${k(a)})) * (${tokStride(a)})`).join(' + ');
}

/** rpb index of key k(a) for query x(a): rpbBase + sum_a (k - x) * stride_a. */
const rpbIndex = (axes: Axes, k: (a: number) => string, x: (a: number) => string): string =>
  `u32(rpbBase + ${axes.map((a) => `(${k(a)} - ${x(a)}) * i32(P.rpbStride${a})`).join(' + ')})`;

/**
 * Lines splitting flat index `v` into `${out}${a}` (u32) over extents ext(a), the last axis
 * fastest; the first axis takes what remains.
 */
function unflatten(axes: Axes, v: string, out: string, ext: (a: number) => string): string[] {
  const t = `${out}_r`;
  const xs = [`var ${t}: u32 = ${v};`];
  for (const a of [...axes].reverse()) xs.push(...(a === axes[0] ? [`let ${out}${a} = ${t};`] : [`let ${out}${a} = ${t} % ${ext(a)};`, `${t} = ${t} / ${ext(a)};`]));
  return xs;
}

// ---------------------------------------------------------------------------------------------
// Naive: one thread per (query, head) walks its window with an online softmax.

export interface NaiveSpec {
  readonly rank: number;
  readonly dim: number;
  readonly dimV: number;
  readonly wq: 1 | 4;
  readonly wv: 1 | 4;
  readonly softcap: boolean;
  readonly rpb: boolean;
  readonly threads: number;
  /** q, k, v and out stored as f16. */
  readonly f16: boolean;
  /**
   * The non-finite policy in the kernel: a row whose query, or any key or value of its window,
   * holds a NaN or an infinity, or whose score an rpb entry made NaN or +inf, comes out NaN (each
   * thread reads only its own window, so nothing needs zeroing).
   */
  readonly screen?: boolean;
}

export const naiveProgram: Program<NaiveSpec, typeof NA_UNIFORMS.decl> = {
  name: 'na-naive',
  uniforms: NA_UNIFORMS,
  bindings: (s) => [...attnBindings(s.wq, s.wv, s.f16 ? 'f16' : 'f32'), ...(s.rpb ? [{ name: 'rpb', kind: 'read' as const, type: 'array<f32>' }] : [])],
  workgroupSize: (s) => s.threads,
  generate: generateNaive,
};

/** Score hooks after `x = q.k * scale` (softcap, then rpb, as on the CPU). */
function scoreHooks(s: { softcap: boolean; rpb: boolean }, rpb: string): string[] {
  return [...(s.softcap ? ['x = P.softcap * tanh(clamp(x / P.softcap, -15.0, 15.0));'] : []), ...(s.rpb ? [`x += rpb[${rpb}];`] : [])];
}

/** Whether a row vector of width w holds a NaN or an infinity (all exponent bits set: exact, unlike x != x). */
const nonFinite = (w: 1 | 4, x: string): string =>
  w === 4 ? `any((bitcast<vec4<u32>>(${x}) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u))` : `((bitcast<u32>(${x}) & 0x7f800000u) == 0x7f800000u)`;

function generateNaive(s: NaiveSpec): string {
  const QT = vec(s.wq);
  const VT = vec(s.wv);
  const axes = axesOf(s.rank);
  const dot = s.wq === 4 ? 'dot(qr[c], ld_k(kb + c))' : 'qr[c] * ld_k(kb + c)';
  const open = axes.map((a) => `${'  '.repeat(a)}for (var k${a}: i32 = w${a}.x; k${a} <= w${a}.y; k${a}++) {`).join('\n    ');
  const close = axes.map((a) => `${'  '.repeat(s.rank - 1 - a)}}`).join('\n    ');
  return `${f16Directive(s.f16)}${prologue(naiveProgram, s, { DQ: s.dim / s.wq, DV: s.dimV / s.wv, THREADS: s.threads })}
${naCommon(axes)}
${widenLoads(s.f16, [['q', s.wq], ['k', s.wq], ['v', s.wv]])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let gid = ${FLAT_INVOCATION};
  if (gid >= P.total) { return; }
  let row = gid / P.heads;
  let h = gid - row * P.heads;
  let kh = h / P.group;
  let b = row / P.tokens;
  ${lines(unflatten(axes, 'row - b * P.tokens', 'c', (a) => `P.len${a}`))}
  ${lines(axes.map((a) => `let g${a} = c${a} % P.dil${a};\n  let x${a} = i32(c${a} / P.dil${a});\n  let w${a} = win${a}(x${a}, groupLen${a}(g${a}));`))}
  ${s.rpb ? 'let rpbBase = i32(h * P.rpbVol) + P.rpbConst;' : ''}

  var qr: array<${QT}, DQ> = array<${QT}, DQ>();
  ${s.screen ? 'var bad: bool = false;' : ''}
  for (var c: u32 = 0u; c < DQ; c++) {
    qr[c] = ld_q((row * P.heads + h) * DQ + c);
    ${s.screen ? `bad = bad || ${nonFinite(s.wq, 'qr[c]')};` : ''}
  }
  var o: array<${VT}, DV> = array<${VT}, DV>();
  var m: f32 = -3.0e38;
  var l: f32 = 0.0;
  ${open}
      let kr = b * P.tokens + ${tokenOf(axes, (a) => `g${a}`, (a) => `k${a}`)};
      let kb = (kr * P.kvHeads + kh) * DQ;
      var acc: f32 = 0.0;
      for (var c: u32 = 0u; c < DQ; c++) {
        ${s.screen ? `bad = bad || ${nonFinite(s.wq, 'ld_k(kb + c)')};` : ''}
        acc += ${dot};
      }
      var x: f32 = acc * P.scale;
      ${lines(scoreHooks(s, rpbIndex(axes, (a) => `k${a}`, (a) => `x${a}`)), '      ')}
      ${s.screen ? 'bad = bad || ((bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u && bitcast<u32>(x) != 0xff800000u);' : ''}
      let mn = max(m, x);
      let alpha = exp(m - mn);
      let p = exp(x - mn);
      m = mn;
      l = l * alpha + p;
      let vb = (kr * P.kvHeads + kh) * DV;
      for (var c: u32 = 0u; c < DV; c++) {
        ${s.screen ? `bad = bad || ${nonFinite(s.wv, 'ld_v(vb + c)')};` : ''}
        o[c] = o[c] * alpha + p * ld_v(vb + c);
      }
    ${close}
  let ob = (row * P.heads + h) * DV;
  ${s.screen ? 'let nan = bitcast<f32>(P.nanBits);' : ''}
  for (var c: u32 = 0u; c < DV; c++) { out[ob + c] = ${narrow(s.f16, s.wv, s.screen ? `select(o[c] / l, ${VT}(nan), bad)` : 'o[c] / l')}; }
  lse[row * P.heads + h] = ${s.screen ? 'select(m + log(l), nan, bad)' : 'm + log(l)'};
}
`;
}

// ---------------------------------------------------------------------------------------------
// Unfused, GEMM-based: a workgroup takes a box tile of queries of one (batch, head, dilation
// group); the union of their windows is a box of keys (design.md 7), staged through workgroup
// memory in chunks of BK keys. naQK computes S = Q K^T on the chunk by register micro-tiles and
// keeps each query's window slots; naAV gathers the window weights onto the chunk and adds P V.

export interface TiledSpec {
  readonly kind: 'qk' | 'av';
  readonly rank: number;
  /** Head dim of the rows the product reads: q/k for qk, v for av. */
  readonly dim: number;
  readonly w: 1 | 4;
  /** Query rows per workgroup (a multiple of rm) and keys per chunk (a multiple of tx). */
  readonly rows: number;
  readonly keys: number;
  /** Rows per thread, and threads sharing a row. */
  readonly rm: number;
  readonly tx: number;
  /** qk only: score hooks. */
  readonly softcap: boolean;
  readonly rpb: boolean;
  /**
   * Constant loop bounds (the driver unrolls them) or bounds read from the uniforms: CPU drivers
   * such as lavapipe compile unrolled code several times slower (fused.ts measured the same).
   */
  readonly unroll: boolean;
  /** q, k (qk) or v, out (av) stored as f16; staged in workgroup memory as f32. */
  readonly f16: boolean;
  /**
   * The non-finite policy in the kernel: qk writes NaN into the slots of a query, or of a key, that
   * holds a NaN or an infinity (a score an rpb entry made NaN or +inf stays so, and the softmax's
   * screen catches both); av zeroes such values of v as it stages them and makes NaN the rows whose
   * window holds one or whose weights are NaN.
   */
  readonly screen?: boolean;
}

/** Micro-tile sizes of a tiled spec: keys (qk) and value vectors (av) per thread. */
export const tiledBlocking = (s: TiledSpec): { vecs: number; rm: number; rn: number; rv: number } => {
  const vecs = s.dim / s.w;
  return { vecs, rm: s.rm, rn: s.keys / s.tx, rv: Math.ceil(vecs / s.tx) };
};

export const tiledThreads = (s: TiledSpec): number => (s.rows / s.rm) * s.tx;

/** Workgroup memory a tiled spec declares, in bytes. */
export function tiledWorkgroupBytes(s: Pick<TiledSpec, 'kind' | 'rank' | 'dim' | 'rows' | 'keys'>): number {
  const staged = s.kind === 'qk' ? (s.rows + s.keys) * s.dim : s.rows * s.keys + s.keys * s.dim;
  // + the row and key flags of the non-finite screen (counted always: one plan whether it is on or off)
  return 4 * (staged + s.rows * (1 + 4 * s.rank) + s.rows + s.keys);
}

/**
 * The scores (attn) stay f32 whatever q, k, v are stored as: a score x stored as f16 would be off
 * by up to |x| 2^-11, which the softmax's exp turns into the weight's relative error (0.5% at
 * |x| = 10), and the LSE is taken from them.
 */
const tiledBindings = (s: TiledSpec) => {
  const rows = `array<${vec(s.w, s.f16 ? 'f16' : 'f32')}>`;
  return s.kind === 'qk'
    ? [
        { name: 'P', kind: 'uniform' as const, type: 'Params' },
        { name: 'q', kind: 'read' as const, type: rows },
        { name: 'k', kind: 'read' as const, type: rows },
        { name: 'attn', kind: 'readwrite' as const, type: 'array<f32>' },
        ...(s.rpb ? [{ name: 'rpb', kind: 'read' as const, type: 'array<f32>' }] : []),
      ]
    : [
        { name: 'P', kind: 'uniform' as const, type: 'Params' },
        { name: 'attn', kind: 'read' as const, type: 'array<f32>' },
        { name: 'v', kind: 'read' as const, type: rows },
        { name: 'out', kind: 'readwrite' as const, type: rows },
        // the screen also marks a row's lse, which the softmax wrote without seeing v
        ...(s.screen ? [{ name: 'lse', kind: 'readwrite' as const, type: 'array<f32>' }] : []),
      ];
};

export const naQKProgram: Program<TiledSpec, typeof NA_UNIFORMS.decl> = {
  name: 'na-qk',
  uniforms: NA_UNIFORMS,
  bindings: tiledBindings,
  workgroupSize: tiledThreads,
  generate: generateTiled,
};

export const naAVProgram: Program<TiledSpec, typeof NA_UNIFORMS.decl> = { ...naQKProgram, name: 'na-av' };

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Field f (0 local coordinate, 1 window start, 2 window end, 3 slot base) of tile query i on axis a. */
const qwinAt = (rank: number) => (i: string, a: number, f: number) => `qwin[(${i} * ${rank}u + ${a}u) * 4u + ${f}u]`;

/** Lines deciding whether key k{a} lies in the window of tile query i, and its slot: `inside`, `slot`. */
function windowSlot(axes: Axes, rank: number, i: string): string[] {
  const w = qwinAt(rank);
  return [
    'var inside: bool = true;',
    'var slot: i32 = 0;',
    ...axes.flatMap((a) => [`inside = inside && k${a} >= ${w(i, a, 1)} && k${a} <= ${w(i, a, 2)};`, `slot = slot * i32(P.kernel${a}) + k${a} - ${w(i, a, 3)};`]),
  ];
}

function generateTiled(s: TiledSpec): string {
  const program = s.kind === 'qk' ? naQKProgram : naAVProgram;
  const RT = vec(s.w);
  const D = s.dim / s.w;
  const axes = axesOf(s.rank);
  const TX = s.tx;
  const { rm: RM, rn: RN, rv: RV } = tiledBlocking(s);
  const [bD, bRM, bRN, bRV] = s.unroll ? ['D', 'RM', `${RN}u`, `${RV}u`] : ['P.vecs', 'P.rm', 'P.rn', 'P.rv'];
  const I = range(RM);
  const boxKey = (j: string) => [...unflatten(axes, j, 'j', (a) => `u32(e${a})`), ...axes.map((a) => `let k${a} = lo${a} + i32(j${a});`)];
  const keyRow = `b * P.tokens + ${tokenOf(axes, (a) => `g${a}`, (a) => `k${a}`)}`;
  const qw = (a: number, f: number) => qwinAt(s.rank)('i', a, f);
  // the product: staged rows, then the per-chunk micro-tile and its epilogue
  const qk = () => {
    const K = range(RN);
    const dot = (a: string, b: string) => (s.w === 4 ? `dot(${a}, ${b})` : `${a} * ${b}`);
    return {
      decls: `var<workgroup> qs: array<${RT}, ${s.rows * D}>;\nvar<workgroup> ks: array<${RT}, ${s.keys * D}>;${s.screen ? '\nvar<workgroup> qbad: array<atomic<u32>, BQ>;\nvar<workgroup> kbad: array<atomic<u32>, BK>;' : ''}`,
      setup: `${s.rpb ? 'let rpbBase = i32(h * P.rpbVol) + P.rpbConst;' : ''}
  for (var e: u32 = lid; e < BQ * D; e += THREADS) {
    let i = e / D;
    var x: ${RT} = ${RT}(0.0);
    if (qrow[i] != NONE) { x = ld_q((qrow[i] * P.heads + h) * D + (e - i * D)); }
    ${s.screen ? `if (${nonFinite(s.w, 'x')}) { atomicOr(&qbad[i], 1u); }` : ''}
    qs[e] = x;
  }
  ${'' /* slots without a key (causal windows near the start or cut by stride) hold -inf */}
  for (var e: u32 = lid; e < BQ * P.wv; e += THREADS) {
    let i = e / P.wv;
    if (qrow[i] == NONE) { continue; }
    ${lines(unflatten(axes, 'e - i * P.wv', 's', (a) => `P.kernel${a}`), '    ')}
    var empty: bool = false;
    ${lines(axes.map((a) => `empty = empty || ${qw(a, 3)} + i32(s${a}) < ${qw(a, 1)};`), '    ')}
    if (empty) { attn[(qrow[i] * P.heads + h) * P.wv + e - i * P.wv] = P.negInf; }
  }
  var sc: array<f32, ${RM * RN}> = array<f32, ${RM * RN}>();`,
      stage: `for (var e: u32 = lid; e < nk * D; e += THREADS) {
      let jj = e / D;
      ${lines(boxKey('c0 + jj'), '      ')}
      let kx = ld_k(((${keyRow}) * P.kvHeads + kh) * D + (e - jj * D));
      ${s.screen ? `if (${nonFinite(s.w, 'kx')}) { atomicMax(&kbad[jj], c0 / BK + 1u); }` : ''}
      ks[e] = kx;
    }`,
      chunk: `${'' /* S = Q K^T on this thread's RM x RN micro-tile (rows r0.., keys tx, tx + TX, ..) */}
    for (var x: u32 = 0u; x < ${bRM} * ${bRN}; x++) { sc[x] = 0.0; }
    for (var d: u32 = 0u; d < ${bD}; d++) {
      ${lines(I.map((i) => `let a${i} = qs[(r0 + ${i}u) * D + d];`), '      ')}
      ${lines(K.map((k) => `let b${k} = ks[(tx + ${TX * k}u) * D + d];`), '      ')}
      ${lines(I.flatMap((i) => K.map((k) => `sc[${i * RN + k}] += ${dot(`a${i}`, `b${k}`)};`)), '      ')}
    }
    ${'' /* keep the pairs inside each query's window, at their slots */}
    for (var i: u32 = r0; i < r0 + ${bRM}; i++) {
      let row = qrow[i];
      if (row == NONE) { continue; }
      for (var n: u32 = 0u; n < ${bRN}; n++) {
        let jj = tx + TX * n;
        if (jj >= nk) { break; }
        ${lines(boxKey('c0 + jj'), '        ')}
        ${lines(windowSlot(axes, s.rank, 'i'), '        ')}
        if (!inside) { continue; }
        var x: f32 = sc[(i - r0) * ${RN}u + n] * P.scale;
        ${lines(scoreHooks(s, rpbIndex(axes, (a) => `k${a}`, (a) => qw(a, 0))), '        ')}
        ${s.screen ? 'if (atomicLoad(&qbad[i]) != 0u || atomicLoad(&kbad[jj]) == c0 / BK + 1u) { x = bitcast<f32>(P.nanBits); }' : ''}
        attn[(row * P.heads + h) * P.wv + u32(slot)] = x;
      }
    }`,
      finish: '',
    };
  };
  const av = () => {
    const V = range(RV);
    const exact = RV * TX === D;
    const vcol = (c: number) => (exact ? `tx + ${TX * c}u` : `min(tx + ${TX * c}u, D - 1u)`);
    return {
      decls: `var<workgroup> ps: array<f32, ${s.rows * s.keys}>;\nvar<workgroup> vs: array<${RT}, ${s.keys * D}>;${s.screen ? '\nvar<workgroup> rbad: array<atomic<u32>, BQ>;\nvar<workgroup> kbad: array<atomic<u32>, BK>;' : ''}`,
      setup: `var o: array<${RT}, ${RM * RV}> = array<${RT}, ${RM * RV}>();`,
      stage: `for (var e: u32 = lid; e < nk * D; e += THREADS) {
      let jj = e / D;
      ${lines(boxKey('c0 + jj'), '      ')}
      ${
        s.screen
          ? `var vx = ld_v(((${keyRow}) * P.kvHeads + kh) * D + (e - jj * D));
      if (${nonFinite(s.w, 'vx')}) { atomicMax(&kbad[jj], c0 / BK + 1u); vx = ${vec(s.w)}(0.0); }
      vs[e] = vx;`
          : `vs[e] = ld_v(((${keyRow}) * P.kvHeads + kh) * D + (e - jj * D));`
      }
    }
    ${s.screen ? 'workgroupBarrier(); // the chunk\'s key flags, before the weights read them' : ''}
    ${'' /* each query's window weights, scattered onto the chunk's keys (0 outside the window) */}
    for (var e: u32 = lid; e < BQ * BK; e += THREADS) {
      let i = e / BK;
      let jj = e - i * BK;
      var p: f32 = 0.0;
      if (qrow[i] != NONE && jj < nk) {
        ${lines(boxKey('c0 + jj'), '        ')}
        ${lines(windowSlot(axes, s.rank, 'i'), '        ')}
        if (inside) {
          p = attn[(qrow[i] * P.heads + h) * P.wv + u32(slot)];
          ${s.screen ? `if (${nonFinite(1, 'p')} || atomicLoad(&kbad[jj]) == c0 / BK + 1u) { atomicOr(&rbad[i], 1u); p = 0.0; }` : ''}
        }
      }
      ps[e] = p;
    }`,
      chunk: `${'' /* O += P V on this thread's RM x RV micro-tile (value columns tx, tx + TX, ..) */}
    for (var j: u32 = 0u; j < nk; j++) {
      ${lines(V.map((c) => `let w${c} = vs[j * D + ${vcol(c)}];`), '      ')}
      ${lines(I.map((i) => `let p${i} = ps[(r0 + ${i}u) * BK + j];`), '      ')}
      ${lines(I.flatMap((i) => V.map((c) => `o[${i * RV + c}] += p${i} * w${c};`)), '      ')}
    }`,
      finish: `for (var i: u32 = 0u; i < ${bRM}; i++) {
    let row = qrow[r0 + i];
    if (row == NONE) { continue; }
    ${s.screen ? 'if (tx == 0u && atomicLoad(&rbad[r0 + i]) != 0u) { lse[row * P.heads + h] = bitcast<f32>(P.nanBits); }' : ''}
    for (var c: u32 = 0u; c < ${bRV}; c++) {
      let col = tx + TX * c;
      ${exact ? '' : 'if (col >= D) { break; }'}
      out[(row * P.heads + h) * D + col] = ${narrow(s.f16, s.w, s.screen ? `select(o[i * ${RV}u + c], ${RT}(bitcast<f32>(P.nanBits)), atomicLoad(&rbad[r0 + i]) != 0u)` : `o[i * ${RV}u + c]`)};
    }
  }`,
    };
  };
  const p = s.kind === 'qk' ? qk() : av();
  const rev = [...axes].reverse();
  return `${f16Directive(s.f16)}${prologue(program, s, { D, BQ: s.rows, BK: s.keys, RM, TX, THREADS: tiledThreads(s), NONE: 0xffffffff })}
${naCommon(axes)}
${widenLoads(s.f16, s.kind === 'qk' ? [['q', s.w], ['k', s.w]] : [['v', s.w]])}

var<workgroup> qrow: array<u32, BQ>;
/** Per tile query and axis: local coordinate, window start and end, slot base. */
var<workgroup> qwin: array<i32, ${s.rows * 4 * s.rank}>;
${p.decls}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * P.groupsX;
  if (item >= P.total) { return; }
  ${'' /* item = ((b * heads + h) * groups + g) * tiles + t, groups and tiles row-major over axes */}
  var it: u32 = item;
  ${lines(rev.map((a) => `let t${a} = it % P.tiles${a};\n  it = it / P.tiles${a};`))}
  ${lines(rev.map((a) => `let g${a} = it % P.dil${a};\n  it = it / P.dil${a};`))}
  let h = it % P.heads;
  let b = it / P.heads;
  let kh = h / P.group;
  ${'' /* per axis: group length n, tile queries [qa, qb], key box [lo, lo + e) = [start(qa), end(qb)] */}
  ${lines(axes.map((a) => `let n${a} = groupLen${a}(g${a});\n  let qa${a} = i32(t${a} * P.tile${a});`))}
  if (${axes.map((a) => `qa${a} >= n${a}`).join(' || ')}) { return; }
  ${lines(axes.map((a) => `let lo${a} = win${a}(qa${a}, n${a}).x;\n  let e${a} = win${a}(min(qa${a} + i32(P.tile${a}), n${a}) - 1, n${a}).y - lo${a} + 1;`))}
  let nbox = ${axes.map((a) => `u32(e${a})`).join(' * ')};
  let tx = lid % TX;
  let r0 = (lid / TX) * RM;

  for (var i: u32 = lid; i < BQ; i += THREADS) {
    ${lines(unflatten(axes, 'i', 'l', (a) => `P.tile${a}`), '    ')}
    var ok: bool = l${axes[0]} < P.tile${axes[0]};
    ${lines(
      axes.map(
        (a) => `let x${a} = qa${a} + i32(l${a});
    ok = ok && x${a} < n${a};
    let w${a} = win${a}(x${a}, n${a});
    ${qw(a, 0)} = x${a};
    ${qw(a, 1)} = w${a}.x;
    ${qw(a, 2)} = w${a}.y;
    ${qw(a, 3)} = slotBase${a}(x${a}, w${a});`,
      ),
      '    ',
    )}
    qrow[i] = select(NONE, b * P.tokens + ${tokenOf(axes, (a) => `g${a}`, (a) => `x${a}`)}, ok);
  }
  workgroupBarrier();
  ${p.setup}

  for (var c0: u32 = 0u; c0 < nbox; c0 += BK) {
    let nk = min(BK, nbox - c0);
    ${p.stage}
    workgroupBarrier();
    ${p.chunk}
    workgroupBarrier();
  }
  ${p.finish}
}
`;
}

// ---------------------------------------------------------------------------------------------
// Row softmax over the window slots, in place (normalize) or LSE only (the naQK op).

export interface SoftmaxSpec {
  readonly normalize: boolean;
  readonly threads: number;
  /** A row holding a NaN score (naQK's non-finite mark) comes out all NaN, with a NaN lse. */
  readonly screen?: boolean;
}

export const naSoftmaxProgram: Program<SoftmaxSpec, typeof NA_UNIFORMS.decl> = {
  name: 'na-softmax',
  uniforms: NA_UNIFORMS,
  bindings: () => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'attn', kind: 'readwrite', type: 'array<f32>' },
    { name: 'lse', kind: 'readwrite', type: 'array<f32>' },
  ],
  workgroupSize: (s) => s.threads,
  generate: (s) => `${prologue(naSoftmaxProgram, s, { THREADS: s.threads })}
const NEG: f32 = -3.0e38;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r = ${FLAT_INVOCATION};
  if (r >= P.total) { return; }
  let base = r * P.wv;
  ${
    s.screen
      ? `var bad: bool = false;
  ${'' /* NaN or +inf (-inf marks a slot without a key) */}
  for (var j: u32 = 0u; j < P.wv; j++) {
    let u = bitcast<u32>(attn[base + j]);
    bad = bad || ((u & 0x7f800000u) == 0x7f800000u && u != 0xff800000u);
  }
  if (bad) {
    let nan = bitcast<f32>(P.nanBits);
    ${s.normalize ? 'for (var j: u32 = 0u; j < P.wv; j++) { attn[base + j] = nan; }' : ''}
    lse[r] = nan;
    return;
  }`
      : ''
  }
  var mx: f32 = NEG;
  for (var j: u32 = 0u; j < P.wv; j++) { mx = max(mx, attn[base + j]); }
  var sum: f32 = 0.0;
  for (var j: u32 = 0u; j < P.wv; j++) {
    let x = attn[base + j];
    sum += select(0.0, exp(x - mx), x > NEG);
  }
  ${
    s.normalize
      ? `for (var j: u32 = 0u; j < P.wv; j++) {
    let x = attn[base + j];
    attn[base + j] = select(0.0, exp(x - mx) / sum, x > NEG);
  }`
      : ''
  }
  lse[r] = select(P.negInf, mx + log(sum), sum > 0.0);
}
`,
};
