import { prod, stridesOf } from '../patterns/geometry.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnProblem } from '../problem.js';
import { NA_WINDOW_WGSL } from './na-rule-wgsl.js';
import { rpbLayout } from './run.js';

/**
 * Schedules computed in the kernel (design.md 4: "computed in-kernel where they are analytic").
 * Dense, causal, sliding-window and neighborhood patterns (any AND of them with at most one
 * neighborhood, 1-3 axes, dilation, stride, per-axis causality) give every query coordinate a key
 * interval per axis, [start(q), end(q)], with start and end non-decreasing in q:
 *
 *   start(q) = max(0, q + bandLo, naStart(q)),   end(q) = min(nk - 1, q + bandHi, naEnd(q))
 *
 * (patterns/rules.ts holds the same rules for the CPU). So a query tile's keys are the box
 * [start(first), end(last)] per axis, a key tile is full when it lies inside
 * [start(last), end(first)], and a partial tile tests the intervals per element: no schedule is
 * built or uploaded, the work item and its visits are decoded from the workgroup id. Dilation
 * runs as interleaved groups (tokens g + d * x), exactly like the uploaded schedules.
 */

export const AXES = 3;
const BIG = 1 << 30;

/** Per-axis rule parameters and the grid geometry of an analytic problem. */
export interface AnalyticPlan {
  readonly rank: number;
  readonly groups: number;
  readonly tilesPerGroup: number;
  /** Work items: batch * heads * groups * tilesPerGroup (tiles past a short group's end are empty). */
  readonly total: number;
  /** Work items of the transposed walk (analyticKeySource): batch * heads * groups * key tiles per group. */
  readonly keyTotal: number;
  /**
   * Whether token permutation can help: a neighborhood on 2-3 axes or with dilation, whose tiles
   * are boxes (or interleaved groups) scattered over the token order.
   */
  readonly permutable: boolean;
  /** Rows per batch of the permuted q and k/v layouts (permute.ts): groups * tiles * box, padded. */
  readonly qPad: number;
  readonly kPad: number;
  readonly values: Readonly<Record<string, number>>;
}

interface Rules {
  bandLo: number;
  bandHi: number;
  na?: Extract<PatternSpec, { kind: 'neighborhood' }>;
}

/** The conjunction's rules, or undefined when a part is not analytic (block-sparse, chunks, masks, OR). */
function rulesOf(p: PatternSpec, nq: number, nk: number, acc: Rules): Rules | undefined {
  const off = (align: string) => (align === 'bottom-right' ? nk - nq : 0);
  switch (p.kind) {
    case 'dense':
      return acc;
    case 'causal':
      return { ...acc, bandHi: Math.min(acc.bandHi, off(p.align)) };
    case 'window':
      return {
        ...acc,
        bandLo: p.left < 0 ? acc.bandLo : Math.max(acc.bandLo, off(p.align) - p.left),
        bandHi: p.right < 0 ? acc.bandHi : Math.min(acc.bandHi, off(p.align) + p.right),
      };
    case 'neighborhood':
      return acc.na ? undefined : { ...acc, na: p };
    case 'and': {
      let r: Rules | undefined = acc;
      for (const x of p.parts) if (r) r = rulesOf(x, nq, nk, r);
      return r;
    }
    default:
      return undefined;
  }
}

/**
 * The analytic plan of a problem whose tiles are the GPU's (fused.ts planFused), or undefined when
 * the schedule must be uploaded: varlen packs, non-analytic patterns, 'selected' RoPE positions,
 * a band on more than one axis.
 */
export function analyticPlan(problem: AttnProblem): AnalyticPlan | undefined {
  const seqs = problem.seqs;
  if (seqs.length === 0) return undefined;
  const s0 = seqs[0]!;
  const nq = prod(s0.qGrid);
  const nk = prod(s0.kGrid);
  const rank = s0.qGrid.length;
  if (rank > AXES || s0.kGrid.length !== rank) return undefined;
  // batches of one shape, packed densely: b * nq, b * nk
  if (!seqs.every((s, b) => s.qOff === b * nq && s.kOff === b * nk && s.qGrid.join() === s0.qGrid.join() && s.kGrid.join() === s0.kGrid.join())) return undefined;
  if (problem.rope && problem.rope.positions !== 'absolute') return undefined;
  const rules = rulesOf(problem.pattern, nq, nk, { bandLo: -BIG, bandHi: BIG });
  if (!rules) return undefined;
  const banded = rules.bandLo !== -BIG || rules.bandHi !== BIG;
  if (banded && rank !== 1) return undefined;
  const na = rules.na;
  if (na && s0.qGrid.join() !== s0.kGrid.join()) return undefined;
  if (problem.qTile.length !== rank || problem.kvTile.length !== rank) return undefined;
  const dil = Array.from({ length: rank }, (_, a) => (na ? na.dilation[a]! : 1));
  const tiles = Array.from({ length: rank }, (_, a) => Math.ceil(Math.ceil(s0.qGrid[a]! / dil[a]!) / problem.qTile[a]!));
  const kTiles = Array.from({ length: rank }, (_, a) => Math.ceil(Math.ceil(s0.kGrid[a]! / dil[a]!) / problem.kvTile[a]!));
  const groups = prod(dil);
  const tilesPerGroup = prod(tiles);
  const qPad = groups * tilesPerGroup * prod(problem.qTile);
  const kPad = groups * prod(kTiles) * prod(problem.kvTile);
  const sQ = stridesOf(s0.qGrid);
  const sK = stridesOf(s0.kGrid);
  const lin = problem.rpb ? rpbLayout(problem.rpb.kernel).strides : [];
  const v: Record<string, number> = {
    nqSeq: nq,
    nkSeq: nk,
    groups,
    tilesPerGroup,
    biasB1: problem.bias && problem.bias.batch !== 1 ? 0 : 1,
    biasH1: problem.bias && problem.bias.heads !== 1 ? 0 : 1,
    biasHeads: problem.bias?.heads ?? 1,
    kTilesPerGroup: prod(kTiles),
    qBox: prod(problem.qTile),
    kBox: prod(problem.kvTile),
    nqPad: qPad,
    nkPad: kPad,
  };
  for (let a = 0; a < AXES; a++) {
    const on = a < rank;
    v[`qLen${a}`] = on ? s0.qGrid[a]! : 1;
    v[`kLen${a}`] = on ? s0.kGrid[a]! : 1;
    v[`dil${a}`] = on ? dil[a]! : 1;
    v[`qT${a}`] = on ? problem.qTile[a]! : 1;
    v[`kT${a}`] = on ? problem.kvTile[a]! : 1;
    v[`tiles${a}`] = on ? tiles[a]! : 1;
    v[`kTiles${a}`] = on ? kTiles[a]! : 1;
    v[`sQ${a}`] = on ? sQ[a]! : 0;
    v[`sK${a}`] = on ? sK[a]! : 0;
    v[`bandLo${a}`] = on ? rules.bandLo : -BIG;
    v[`bandHi${a}`] = on ? rules.bandHi : BIG;
    v[`naK${a}`] = on && na ? na.kernelSize[a]! : 0;
    v[`naS${a}`] = on && na ? na.stride[a]! : 1;
    v[`naC${a}`] = on && na && na.isCausal[a] ? 1 : 0;
    v[`lin${a}`] = on && lin.length ? lin[a]! : 0;
  }
  const permutable = na !== undefined && (rank > 1 || groups > 1);
  const perGroup = seqs.length * problem.heads * groups;
  return { rank, groups, tilesPerGroup, total: perGroup * tilesPerGroup, keyTotal: perGroup * prod(kTiles), permutable, qPad, kPad, values: v };
}

/**
 * Whether the in-kernel walk tests partial visits with bit masks (analyticSource `bits`): 2-3 axes
 * whose key-tile extents fit one u32 side by side (a 1-D pair test is two compares already).
 */
export const maskBitsFit = (kvTile: readonly number[]): boolean => kvTile.length >= 2 && kvTile.reduce((a, b) => a + b, 0) <= 32;

/** Uniform fields of the analytic schedule (appended to the fused kernel's; zeros in list mode). */
export const ANALYTIC_UNIFORMS = {
  nqSeq: 'u32',
  nkSeq: 'u32',
  groups: 'u32',
  tilesPerGroup: 'u32',
  biasB1: 'u32',
  biasH1: 'u32',
  biasHeads: 'u32',
  kTilesPerGroup: 'u32',
  qBox: 'u32',
  kBox: 'u32',
  nqPad: 'u32',
  nkPad: 'u32',
  ...Object.fromEntries(
    Array.from({ length: AXES }, (_, a) =>
      (
        [
          ['qLen', 'i32'],
          ['kLen', 'i32'],
          ['dil', 'i32'],
          ['qT', 'i32'],
          ['kT', 'i32'],
          ['tiles', 'u32'],
          ['kTiles', 'u32'],
          ['sQ', 'u32'],
          ['sK', 'u32'],
          ['bandLo', 'i32'],
          ['bandHi', 'i32'],
          ['naK', 'i32'],
          ['naS', 'i32'],
          ['naC', 'u32'],
          ['lin', 'i32'],
        ] as const
      ).map(([n, t]) => [`${n}${a}`, t]),
    ).flat(),
  ),
} as Readonly<Record<string, 'u32' | 'i32'>>;

export const zeroAnalytic = (): Record<string, number> => Object.fromEntries(Object.keys(ANALYTIC_UNIFORMS).map((k) => [k, 0]));

/** The WGSL pieces both analytic walks share, for `rank` axes (unrolled here). */
function analyticKit(rank: number) {
  const A = Array.from({ length: rank }, (_, a) => a);
  const down = [...A].reverse(); // the last axis varies fastest in a box, as in boxTokens
  const R = rank;
  const arr = (n: string, len = R) => `var<private> ${n}: array<i32, ${len}> = array<i32, ${len}>();`;
  // NATTEN's window of group coordinate q (na-rule-wgsl.ts), a band of interval [q + lo, q + hi], their intersection
  const rules = `${NA_WINDOW_WGSL}
${A.map(
    (a) => `fn na_win${a}(q: i32) -> vec2<i32> { return na_window(q, a_gk[${a}], P.naK${a}, P.naS${a}, P.naC${a} != 0u); }
fn rs${a}(q: i32) -> i32 {
  var s: i32 = max(0, q + P.bandLo${a});
  if (P.naK${a} > 0) { s = max(s, na_win${a}(q).x); }
  return s;
}
fn re${a}(q: i32) -> i32 {
  var e: i32 = min(a_gk[${a}] - 1, q + P.bandHi${a});
  if (P.naK${a} > 0) { e = min(e, na_win${a}(q).y); }
  return e;
}`,
  ).join('\n')}`;
  // walks a box index `x` (last axis fastest) over extents `ext`, binding coordinate c<a> = lo + offset
  const walk = (x: string, lo: string, ext: string, body: (a: number) => string) => `var rr: u32 = ${x};
  ${down.map((a) => `let c${a} = ${lo}[${a}] + i32(rr % u32(${ext}[${a}]));\n  rr = rr / u32(${ext}[${a}]);\n  ${body(a)}`).join('\n  ')}`;
  const tokFn = (name: string, lo: string, ext: string, stride: string) => `fn ${name}(x: u32) -> u32 {
  var tok: u32 = 0u;
  ${walk('x', lo, ext, (a) => `tok += u32(a_grp[${a}] + P.dil${a} * c${a}) * P.${stride}${a};`)}
  return tok;
}`;
  const linFn = (name: string, lo: string, ext: string) => `fn ${name}(x: u32) -> i32 {
  var l: i32 = 0;
  ${walk('x', lo, ext, (a) => `l += c${a} * P.lin${a};`)}
  return l;
}`;
  /**
   * The two walks differ only in which side is the item's own: `own` names the own box (lo, ext
   * arrays), its tile counts and extents (uniform prefixes) and its group length array; `other` the
   * visited side's box start and end arrays, its extent prefix, and the functions giving, per axis,
   * the first and last coordinate of the other side that a given own coordinate pairs with.
   */
  interface Sides {
    own: { lo: string; ext: string; tiles: string; T: string; perGroup: string; len: string };
    other: { lo: string; ext: string; box: string; hi: string; T: string; first: string; last: string };
  }
  // the visit's box of the other side; returns (its size, 1 if every pair of the visit is allowed)
  const setVisit = ({ other: o }: Sides) => `fn set_visit(vi: u32) -> vec2<u32> {
  var vv: u32 = vi;
  var n: u32 = 1u;
  var full: bool = true;
  ${down
    .map(
      (a) => `let t${a} = i32(vv % u32(a_nt[${a}]));
  vv = vv / u32(a_nt[${a}]);
  ${o.lo}[${a}] = ${o.box}[${a}] + t${a} * P.${o.T}${a};
  ${o.ext}[${a}] = min(P.${o.T}${a}, ${o.hi}[${a}] + 1 - ${o.lo}[${a}]);
  n *= u32(${o.ext}[${a}]);
  full = full && ${o.lo}[${a}] >= a_flo[${a}] && ${o.lo}[${a}] + ${o.ext}[${a}] - 1 <= a_fhi[${a}];`,
    )
    .join('\n  ')}
  return vec2<u32>(n, select(0u, 1u, full));
}`;
  // the item header: (batch, head, group, own tile) from the item index, the own box, the other
  // side's box per axis and where its visits are full, the own rows' tokens (`perRow`, for r < no0),
  // then the loop bounds published and the sequence offsets
  const itemHead = ({ own: w, other: o }: Sides, perRow: string, groupHook = '') => `// item = ((b * heads + h) * groups + g) * ${w.perGroup} + own tile
  let tIdx = item % P.${w.perGroup};
  let gh = item / P.${w.perGroup};
  let bh = gh / P.groups;
  let h = bh % P.heads;
  let b = bh / P.heads;
  var tt: u32 = tIdx;
  var gg: u32 = gh % P.groups;
  ${groupHook}
  var no0: u32 = 1u;
  var nv0: u32 = 1u;
  ${down
    .map(
      (a) => `a_grp[${a}] = i32(gg % u32(P.dil${a}));
  gg = gg / u32(P.dil${a});
  let ti${a} = i32(tt % P.${w.tiles}${a});
  tt = tt / P.${w.tiles}${a};
  a_gn[${a}] = (P.qLen${a} - a_grp[${a}] + P.dil${a} - 1) / P.dil${a};
  a_gk[${a}] = (P.kLen${a} - a_grp[${a}] + P.dil${a} - 1) / P.dil${a};
  ${w.lo}[${a}] = ti${a} * P.${w.T}${a};
  ${w.ext}[${a}] = clamp(${w.len}[${a}] - ${w.lo}[${a}], 0, P.${w.T}${a});
  no0 *= u32(${w.ext}[${a}]);`,
    )
    .join('\n  ')}
  ${A.map(
    (a) => `{
    let first = ${w.lo}[${a}];
    let last = first + ${w.ext}[${a}] - 1;
    ${o.box}[${a}] = ${o.first}${a}(first);
    ${o.hi}[${a}] = ${o.last}${a}(last);
    a_nt[${a}] = select(0, (${o.hi}[${a}] - ${o.box}[${a}] + P.${o.T}${a}) / P.${o.T}${a}, ${o.hi}[${a}] >= ${o.box}[${a}]);
    a_flo[${a}] = ${o.first}${a}(last);
    a_fhi[${a}] = ${o.last}${a}(first);
    nv0 *= u32(a_nt[${a}]);
  }`,
  ).join('\n  ')}
  for (var r: u32 = lid; r < no0; r += THREADS) {
    ${perRow}
  }
  ${'' /* private variables are not uniform to WGSL's analysis: publish the loop bounds through workgroup */}
  ${'' /* memory (the load is also the barrier after the own tokens) */}
  if (lid == 0u) { a_un = vec2<u32>(no0, nv0); }
  let un = workgroupUniformLoad(&a_un);
  let nq = un.x;
  let nVisit = un.y;
  if (nq == 0u) { return; } ${'' /* a tile past the end of a shorter dilation group */}
  let qOff = b * P.nqSeq;
  let kOff = b * P.nkSeq;
  let biasBase = (select(b, 0u, P.biasB1 != 0u) * P.biasHeads + select(h, 0u, P.biasH1 != 0u)) * P.nqSeq * P.nkSeq;
  let biasStride = P.nkSeq;`;
  // the visit header: the box, whether the visit is full, each staged row decoded (`perRow`, for j < nk)
  const visitHead = (perRow: string, after: string) => (vi: string) => `let vinfo = set_visit(${vi});
    let nk = vinfo.x;
    let mask = select(0u, NO_MASK, vinfo.y == 1u);
    for (var j: u32 = lid; j < nk; j += THREADS) {
      ${perRow}
    }
    workgroupBarrier();
    ${after}`;
  return { A, down, R, arr, rules, walk, tokFn, linFn, setVisit, itemHead, visitHead };
}

/**
 * The analytic schedule hooks of the fused template (fused-wgsl.ts ScheduleSource) for `rank`
 * axes and `rm` row slots per thread. Axes are unrolled here; coordinates are group-local. With
 * `permute`, q, k and v are read from the head-major permuted layouts (permute.ts): a query tile
 * is one block of rows per head, a key visit a few runs of rows. Visits still start at the
 * window's first key, not on the key tile grid: aligning them (NATTEN's choice, for TMA boxes)
 * made whole visits contiguous but added partial visits, 1.5-1.7x slower on lavapipe
 * (BENCHMARKS.md). out and lse are written at the original tokens, sparing an inverse pass.
 * With `bits` (maskBitsFit), a partial visit's pair test is a few shifts of two bit masks, per row
 * slot the window's run of bits over the visit's box on each axis, per key its bit on each axis:
 * 8-10% faster than six compares per pair on lavapipe (BENCHMARKS.md).
 */
export function analyticSource(rank: number, rm: number, rope: boolean, permute: boolean, bits: boolean): import('./fused-wgsl.js').ScheduleSource {
  const { A, down, R, arr, rules, walk, tokFn, linFn, setVisit, itemHead, visitHead } = analyticKit(rank);
  const sides = {
    own: { lo: 'a_qlo', ext: 'a_qext', tiles: 'tiles', T: 'qT', perGroup: 'tilesPerGroup', len: 'a_gn' },
    other: { lo: 'a_klo', ext: 'a_kext', box: 'a_kbox', hi: 'a_khi', T: 'kT', first: 'rs', last: 're' },
  };
  // permuted row (permute.ts): (group * tiles + tile) * box + in-box index, last axis fastest in both
  const rowFn = (name: string, lo: string, ext: string, T: string, tiles: string, perGroup: string, box: string) => `fn ${name}(x: u32) -> u32 {
  var tl: u32 = 0u;
  var tm: u32 = 1u;
  var il: u32 = 0u;
  var bm: u32 = 1u;
  ${walk('x', lo, ext, (a) => `tl += u32(c${a} / P.${T}${a}) * tm;
  tm *= P.${tiles}${a};
  il += u32(c${a} % P.${T}${a}) * bm;
  bm *= u32(P.${T}${a});`)}
  return (a_g * P.${perGroup} + tl) * P.${box} + il;
}`;
  const decls = `${['a_qlo', 'a_qext', 'a_grp', 'a_gn', 'a_gk', 'a_klo', 'a_kext', 'a_kbox', 'a_khi', 'a_nt', 'a_flo', 'a_fhi'].map((n) => arr(n)).join('\n')}
var<workgroup> a_un: vec2<u32>;
${'' /* tokens of the tile's rows and of the visit's keys, decoded once (not per staged vector) */}
var<workgroup> a_qtok: array<u32, BQ>;
var<workgroup> a_ktok: array<u32, BK>;
${
  permute
    ? `${'' /* their rows in the permuted layouts */}
var<workgroup> a_qrow: array<u32, BQ>;
var<workgroup> a_krow: array<u32, BK>;
var<private> a_g: u32 = 0u;
${rowFn('q_row', 'a_qlo', 'a_qext', 'qT', 'tiles', 'tilesPerGroup', 'qBox')}
${rowFn('k_row', 'a_klo', 'a_kext', 'kT', 'kTiles', 'kTilesPerGroup', 'kBox')}`
    : ''
}
${arr('a_rlo', rm * R)}
${arr('a_rhi', rm * R)}
${rules}
${tokFn('q_tok', 'a_qlo', 'a_qext', 'sQ')}
${linFn('q_lin', 'a_qlo', 'a_qext')}
${linFn('k_lin', 'a_klo', 'a_kext')}
fn set_row(i: u32, r: u32) {
  ${walk('r', 'a_qlo', 'a_qext', (a) => `a_rlo[i * ${R}u + ${a}u] = rs${a}(c${a});\n  a_rhi[i * ${R}u + ${a}u] = re${a}(c${a});`)}
}
${'' /* key j of the visit: its token and coordinates, decoded once per key in one walk (not per row and */}
${'' /* key: divisions are slow on CPUs) */}
var<workgroup> a_kc: array<i32, BK * ${R}u>;
fn set_key(j: u32) {
  var tok: u32 = 0u;
  ${walk('j', 'a_klo', 'a_kext', (a) => `a_kc[j * ${R}u + ${a}u] = c${a};
  tok += u32(a_grp[${a}] + P.dil${a} * c${a}) * P.sK${a};`)}
  a_ktok[j] = tok;
  ${
    bits
      ? `var p: u32 = 0u;
  var sh: i32 = 0;
  ${A.map((a) => `p |= u32(sh + a_kc[j * ${R}u + ${a}u] - a_klo[${a}]) << ${8 * a}u;\n  sh += a_kext[${a}];`).join('\n  ')}
  a_kp[j] = p;`
      : ''
  }
}
${
  bits
    ? `${'' /* partial visits test bits: per row slot, each axis's window as a run of bits over the visit's */}
${'' /* key box on that axis (axes side by side in one u32); per key, its bit on each axis (8 bits each) */}
var<workgroup> a_kp: array<u32, BK>;
${`var<private> a_rm: array<u32, ${rm}> = array<u32, ${rm}>();`}
fn row_mask(i: u32) -> u32 {
  var m: u32 = 0u;
  var sh: i32 = 0;
  ${A.map(
    (a) => `{
    let lo = max(a_rlo[i * ${R}u + ${a}u] - a_klo[${a}], 0);
    let hi = min(a_rhi[i * ${R}u + ${a}u] - a_klo[${a}], a_kext[${a}] - 1);
    if (hi >= lo) {
      let w = u32(hi - lo + 1);
      m |= select((1u << w) - 1u, 0xffffffffu, w >= 32u) << u32(lo + sh);
    }
    sh += a_kext[${a}];
  }`,
  ).join('\n  ')}
  return m;
}
fn allowed(i: u32, c: u32) -> bool {
  let m = a_rm[i];
  let p = a_kp[c];
  return ((${A.map((a) => `(m >> ((p >> ${8 * a}u) & 31u))`).join(' & ')}) & 1u) != 0u;
}`
    : `fn allowed(i: u32, c: u32) -> bool {
  return ${A.map((a) => `a_kc[c * ${R}u + ${a}u] >= a_rlo[i * ${R}u + ${a}u] && a_kc[c * ${R}u + ${a}u] <= a_rhi[i * ${R}u + ${a}u]`).join(' &&\n    ')};
}`
}
/** Sets the key box of visit vi; returns (keys, 1 if every pair of the visit is allowed). */
${setVisit(sides)}`;
  const item = `${itemHead(sides, `a_qtok[r] = q_tok(r);\n    ${permute ? 'a_qrow[r] = q_row(r);' : ''}`, permute ? 'a_g = gg;' : '')}
  ${permute ? '// head-major permuted layouts [batch, heads, pad, dim]: a tile is one block per head\n  let qLoadOff = (b * P.heads + h) * P.nqPad;\n  let kLoadOff = (b * P.kvHeads + h / P.group) * P.nkPad;' : ''}
  ${rope ? 'let qShift = P.ropeQShift;' : ''}`;
  return {
    decls,
    item,
    visit: visitHead(
      `set_key(j);\n      ${permute ? 'a_krow[j] = k_row(j);' : ''}`,
      `${rope ? 'let kShift = P.ropeKShift;' : ''}${bits ? `\n    if (mask != NO_MASK) { for (var i: u32 = 0u; i < ${rm}u; i++) { a_rm[i] = row_mask(i); } }` : ''}`,
    ),
    qTok: (r) => `a_qtok[${r}]`,
    kTok: (j) => `a_ktok[${j}]`,
    qAt: (r) => (permute ? `(qLoadOff + a_qrow[${r}]) * DQ` : `((qOff + a_qtok[${r}]) * P.heads + h) * DQ`),
    kAt: (j, w) => (permute ? `(kLoadOff + a_krow[${j}]) * ${w}` : `((kOff + a_ktok[${j}]) * P.kvHeads + kh) * ${w}`),
    qLin: (r) => `q_lin(${r})`,
    kLin: (j) => `k_lin(${j})`,
    rowSetup: (i, r) => `set_row(${i}, ${r});`,
    allowed: (i, _r, c) => `allowed(${i}, ${c})`,
  };
}

/**
 * The transposed walk of the backward's dK/dV pass, computed in the kernel: work items are key
 * tiles, and each visit stages a box of the queries that see them. Per axis the queries that see
 * key k form an interval, [first(k), last(k)], because start(q) and end(q) are non-decreasing:
 * first(k) is the first query whose interval ends at or after k, last(k) the last whose interval
 * starts at or before k, found by bisection over the group's queries (a few steps per work item).
 * So a key tile's queries are the box [first(lo), last(hi)] per axis, a query box is full when it
 * lies inside [first(hi), last(lo)], and a partial visit tests each staged query's own intervals.
 * As in the uploaded transposed schedule (schedule.ts), the hooks' "q" is the item's own side: qTok,
 * qLin and the row setup are its key rows, kTok and kLin the staged queries, qShift the keys' RoPE
 * shift and kShift the queries'. No permuted layouts.
 */
export function analyticKeySource(rank: number, rm: number, rope: boolean, bits: boolean): import('./fused-wgsl.js').ScheduleSource {
  const { A, down, R, arr, rules, walk, tokFn, linFn, setVisit, itemHead, visitHead } = analyticKit(rank);
  const sides = {
    own: { lo: 'a_klo', ext: 'a_kext', tiles: 'kTiles', T: 'kT', perGroup: 'kTilesPerGroup', len: 'a_gk' },
    other: { lo: 'a_qlo', ext: 'a_qext', box: 'a_qbox', hi: 'a_qhi', T: 'qT', first: 'q_first', last: 'q_last' },
  };
  const bisect = A.map(
    (a) => `// the first query of the group whose interval ends at or after key k (a_gn[${a}] when none)
fn q_first${a}(k: i32) -> i32 {
  var lo: i32 = 0;
  var hi: i32 = a_gn[${a}];
  while (lo < hi) {
    let mid = (lo + hi) / 2;
    if (re${a}(mid) >= k) { hi = mid; } else { lo = mid + 1; }
  }
  return lo;
}
${'' /* the last query whose interval starts at or before key k (-1 when none) */}
fn q_last${a}(k: i32) -> i32 {
  var lo: i32 = -1;
  var hi: i32 = a_gn[${a}] - 1;
  while (lo < hi) {
    let mid = (lo + hi + 1) / 2;
    if (rs${a}(mid) <= k) { lo = mid; } else { hi = mid - 1; }
  }
  return lo;
}`,
  ).join('\n');
  const decls = `${['a_klo', 'a_kext', 'a_grp', 'a_gn', 'a_gk', 'a_qlo', 'a_qext', 'a_qbox', 'a_qhi', 'a_nt', 'a_flo', 'a_fhi'].map((n) => arr(n)).join('\n')}
var<workgroup> a_un: vec2<u32>;
${'' /* tokens of the tile's key rows and of the visit's queries, decoded once */}
var<workgroup> a_ktok: array<u32, BQ>;
var<workgroup> a_qtok: array<u32, BK>;
${rules}
${bisect}
${tokFn('k_tok', 'a_klo', 'a_kext', 'sK')}
${linFn('k_lin', 'a_klo', 'a_kext')}
${linFn('q_lin', 'a_qlo', 'a_qext')}
${
  bits
    ? `${'' /* partial visits test bits (as analyticSource's): per staged query, its window as a run of bits */}
${'' /* per axis over the item's own key box, axes side by side in one u32; per row slot, its bit per axis */}
${`var<private> a_rkp: array<u32, ${rm}> = array<u32, ${rm}>();`}
fn set_row(i: u32, r: u32) {
  var p: u32 = 0u;
  ${walk('r', 'a_klo', 'a_kext', (a) => `p |= u32(c${a} - a_klo[${a}]${A.slice(0, a).map((x) => ` + a_kext[${x}]`).join('')}) << ${8 * a}u;`)}
  a_rkp[i] = p;
}
var<workgroup> a_qm: array<u32, BK>;
fn set_query(j: u32) {
  var tok: u32 = 0u;
  var m: u32 = 0u;
  ${walk('j', 'a_qlo', 'a_qext', (a) => `tok += u32(a_grp[${a}] + P.dil${a} * c${a}) * P.sQ${a};
  let lo${a} = max(rs${a}(c${a}) - a_klo[${a}], 0);
  let hi${a} = min(re${a}(c${a}) - a_klo[${a}], a_kext[${a}] - 1);
  let w${a} = select(0u, u32(hi${a} - lo${a} + 1), hi${a} >= lo${a});
  m |= select((1u << w${a}) - 1u, 0xffffffffu, w${a} >= 32u) << u32(lo${a}${A.slice(0, a).map((x) => ` + a_kext[${x}]`).join('')});`)}
  a_qm[j] = m;
  a_qtok[j] = tok;
}
fn allowed(i: u32, c: u32) -> bool {
  let m = a_qm[c];
  let p = a_rkp[i];
  return ((${A.map((a) => `(m >> ((p >> ${8 * a}u) & 31u))`).join(' & ')}) & 1u) != 0u;
}`
    : `${'' /* key coordinates of this thread's row slots */}
${arr('a_rkc', rm * R)}
fn set_row(i: u32, r: u32) {
  ${walk('r', 'a_klo', 'a_kext', (a) => `a_rkc[i * ${R}u + ${a}u] = c${a};`)}
}
${'' /* query j of the visit: its token and key intervals (start, end) per axis, decoded once per query in one walk */}
var<workgroup> a_qiv: array<vec2<i32>, BK * ${R}u>;
fn set_query(j: u32) {
  var tok: u32 = 0u;
  ${walk('j', 'a_qlo', 'a_qext', (a) => `a_qiv[j * ${R}u + ${a}u] = vec2<i32>(rs${a}(c${a}), re${a}(c${a}));
  tok += u32(a_grp[${a}] + P.dil${a} * c${a}) * P.sQ${a};`)}
  a_qtok[j] = tok;
}
fn allowed(i: u32, c: u32) -> bool {
  return ${A.map((a) => `a_rkc[i * ${R}u + ${a}u] >= a_qiv[c * ${R}u + ${a}u].x && a_rkc[i * ${R}u + ${a}u] <= a_qiv[c * ${R}u + ${a}u].y`).join(' &&\n    ')};
}`
}
/** Sets the query box of visit vi; returns (queries, 1 if every pair of the visit is allowed). */
${setVisit(sides)}`;
  const item = `${itemHead(sides, 'a_ktok[r] = k_tok(r);')}
  ${rope ? 'let qShift = P.ropeKShift;' : ''}`;
  return {
    decls,
    item,
    visit: visitHead('set_query(j);', rope ? 'let kShift = P.ropeQShift;' : ''),
    qTok: (r) => `a_ktok[${r}]`,
    kTok: (j) => `a_qtok[${j}]`,
    qAt: (r) => `((kOff + a_ktok[${r}]) * P.kvHeads + kh) * DQ`,
    kAt: (j, w) => `((qOff + a_qtok[${j}]) * P.heads + h) * ${w}`,
    qLin: (r) => `k_lin(${r})`,
    kLin: (j) => `q_lin(${j})`,
    rowSetup: (i, r) => `set_row(${i}, ${r});`,
    allowed: (i, _r, c) => `allowed(${i}, ${c})`,
  };
}
