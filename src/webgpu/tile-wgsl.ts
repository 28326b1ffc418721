import type { AttnProblem } from '../problem.js';
import { vecWidth } from './wgsl.js';

/**
 * WGSL pieces the forward (fused-wgsl.ts) and backward (backward-wgsl.ts) templates share, each a
 * generator of source text for one named splice point (style.md 5): staging rows into workgroup
 * memory, the register-blocked micro-tile product, and the score hooks. RoPE's rotation lives in
 * fused-wgsl.ts (`ropeFns`) and is shared the same way.
 */

/** The spec fields every attention tile template (forward and backward) has. */
export interface TileSpec {
  readonly dim: number;
  readonly dimV: number;
  /** Vector width of q/k rows and of v/out rows (4 when the head dim allows it). */
  readonly wq: 1 | 4;
  readonly wv: 1 | 4;
  /** Own rows per work item (a multiple of rm), and rows of the other side staged per visit (a multiple of tx). */
  readonly rows: number;
  readonly keys: number;
  /** Register blocking (design.md 8): rows per thread, and threads sharing a row. */
  readonly rm: number;
  readonly tx: number;
  readonly softcap: boolean;
  readonly bias: boolean;
  readonly rpb: boolean;
  /** RoPE on q and k rows as they are staged (table in aux, positions token + shift from the schedule). */
  readonly rope: boolean;
  /**
   * Constant loop bounds (the driver unrolls, the micro-tiles live in registers) or bounds read
   * from the uniforms (CPU drivers such as llvmpipe compile unrolled code many times slower).
   */
  readonly unroll: boolean;
  /**
   * Pad the row stride of the workgroup tiles that the micro-tile products read row-wise (own and
   * staged rows, the P and dS tiles) to an odd number of elements (`paddedStride`). Unpadded, a
   * row of 64 floats is 256 bytes, so the rows the threads of a warp read at once all start in the
   * same bank and their reads are serialised.
   */
  readonly pad?: boolean;
}

/** A workgroup tile's row stride, in elements, for rows `width` elements wide: odd when `pad`, else `width`. */
export const paddedStride = (width: number, pad: boolean | undefined): number => (pad && width % 2 === 0 ? width + 1 : width);

/** The spec fields that follow from the problem alone (head dims, vector widths, score hooks). */
export function problemFields(p: Pick<AttnProblem, 'dim' | 'dimV' | 'softcap' | 'bias' | 'rpb' | 'rope'>): Pick<TileSpec, 'dim' | 'dimV' | 'wq' | 'wv' | 'softcap' | 'bias' | 'rpb' | 'rope'> {
  return {
    dim: p.dim,
    dimV: p.dimV,
    wq: vecWidth(p.dim),
    wv: vecWidth(p.dimV),
    softcap: p.softcap > 0,
    bias: p.bias !== undefined,
    rpb: p.rpb !== undefined,
    rope: p.rope !== undefined,
  };
}

/**
 * Uniform fields both templates read: head counts, the work-item grid, the score scale and hooks,
 * and where rpb and the RoPE table sit in aux (cos at ropeOff, [ropeMax, ropeHalf], the sin table
 * ropeSin words later).
 */
export const TILE_UNIFORMS = {
  heads: 'u32',
  kvHeads: 'u32',
  group: 'u32',
  total: 'u32',
  itemsX: 'u32',
  scale: 'f32',
  softcap: 'f32',
  rpbOff: 'u32',
  rpbVol: 'u32',
  rpbConst: 'i32',
  ropeOff: 'u32',
  ropeHalf: 'u32',
  ropeSin: 'u32',
  ropeMax: 'i32',
} as const;

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
const lines = (xs: readonly string[], indent: string): string => xs.join(`\n${indent}`);

/** `dot(a, b)` for vec4 rows, `a * b` for scalar ones. */
export const dotOf = (w: 1 | 4, a: string, b: string): string => (w === 4 ? `dot(${a}, ${b})` : `${a} * ${b}`);

/**
 * Cooperative staging: the workgroup's threads copy `count` rows of `width` vectors into `dst`
 * (row j at j * width), `load(j, c)` giving vector c of row j (a global read, maybe rotated).
 * `pre(j)` declares what `load` needs per row.
 */
export function stageRows(o: { dst: string; count: string; width: string; stride?: string; pre?: (j: string) => string; load: (j: string, c: string) => string }): string {
  return `for (var e: u32 = lid; e < ${o.count} * ${o.width}; e += THREADS) {
      let j = e / ${o.width};
      let c = e - j * ${o.width};
      ${o.pre ? o.pre('j') : ''}
      ${o.dst}[${o.stride ? `j * ${o.stride} + c` : 'e'}] = ${o.load('j', 'c')};
    }`;
}

/**
 * The register-blocked product of one thread's micro-tile (design.md 8), unrolled here so the
 * RM x RN accumulators sit at constant indices: acc[i * RN + k] += own row (r0 + i) . staged row
 * (tx + TX k), over `bound` vectors of rows `stride` vectors apart (`bound` a constant to unroll, or a uniform).
 */
export function microProduct(o: { acc: string; own: string; other: string; stride: number; bound: string; w: 1 | 4; rm: number; rn: number; tx: number }): string {
  const I = range(o.rm);
  const K = range(o.rn);
  return `for (var d: u32 = 0u; d < ${o.bound}; d++) {
      ${lines(I.map((i) => `let a${i} = ${o.own}[(r0 + ${i}u) * ${o.stride}u + d];`), '      ')}
      ${lines(K.map((k) => `let b${k} = ${o.other}[(tx + ${o.tx * k}u) * ${o.stride}u + d];`), '      ')}
      ${lines(I.flatMap((i) => K.map((k) => `${o.acc}[${i * o.rn + k}] += ${dotOf(o.w, `a${i}`, `b${k}`)};`)), '      ')}
    }`;
}

/**
 * The score hooks after `x = q.k * scale` (softcap, additive bias, NATTEN rpb), as statements on
 * `x`. `aux(i)` reads the aux table; `biasAt` and `rpbAt` are the pair's table indices. With
 * `derivative`, the softcap also sets `sg` to its derivative (the backward's chain rule).
 */
export function scoreHooks(o: { softcap: boolean; bias: boolean; rpb: boolean; aux: (i: string) => string; biasAt: string; rpbAt: string; derivative?: boolean }): string[] {
  const h: string[] = [];
  if (o.softcap)
    h.push(
      o.derivative
        ? 'let th = tanh(clamp(x / P.softcap, -15.0, 15.0)); x = P.softcap * th; sg = 1.0 - th * th;'
        : 'x = P.softcap * tanh(clamp(x / P.softcap, -15.0, 15.0));',
    );
  if (o.bias) h.push(`x += ${o.aux(o.biasAt)};`);
  if (o.rpb) h.push(`x += ${o.aux(o.rpbAt)};`);
  return h;
}
