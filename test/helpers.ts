/**
 * Shared test helpers: a seeded generator (independent of the library's own), random tensors,
 * poisoned destinations, and the comparison rule of design.md section 6.
 */
import assert from 'node:assert/strict';
import type { AttentionOptions } from '../src/api.js';
import type { Tensor } from '../src/tensor.js';
import * as patterns from '../src/patterns/spec.js';
import { setInlineFlops } from '../src/cpu/pool.js';
import type { MaskFn, PatternSpec } from '../src/patterns/spec.js';

/**
 * Jobs from 2 MFLOP (rough) up go through the worker pool in the tests, below the library's default
 * (pool.ts DEFAULT_INLINE_FLOPS, a speed choice): the random suites' mid-size problems then run on
 * the workers, as their names say; tests that switch the threshold restore this value.
 */
export const TEST_INLINE_FLOPS = 2e6;
setInlineFlops(TEST_INLINE_FLOPS);

/** splitmix32: small, seedable, deterministic. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed ^ 0x9e3779b9) >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x9e3779b9) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  }
  /** Integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  normal(): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** A random divisor of n. */
  divisor(n: number): number {
    const ds: number[] = [];
    for (let i = 1; i <= n; i++) if (n % i === 0) ds.push(i);
    return this.pick(ds);
  }
}

export const prod = (xs: readonly number[]): number => xs.reduce((a, b) => a * b, 1);

/** Standard-normal tensor (times `scale`) from a generator. */
export function randTensor(rng: Rng, shape: readonly number[], scale = 1): Tensor {
  const data = new Float32Array(prod(shape));
  for (let i = 0; i < data.length; i++) data[i] = rng.normal() * scale;
  return { data, shape: [...shape] };
}

/** Fills an array with NaN so that any element a kernel forgets to write fails the comparison. */
export function poison<T extends Float32Array | Float64Array>(arr: T): T {
  arr.fill(NaN);
  return arr;
}

export const poisoned = (n: number): Float32Array => poison(new Float32Array(n));

/** ||a - b|| / ||b||, NaN when either side holds a NaN (so `< tol` fails). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'relErr: length mismatch');
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (Number.isNaN(x) || Number.isNaN(y)) return NaN;
    const d = x - y;
    num += d * d;
    den += y * y;
  }
  if (den === 0) return Math.sqrt(num);
  return Math.sqrt(num / den);
}

export interface CompareOptions {
  /** Only these flat rows (query row * heads + head) are compared (a subsample). */
  rows?: readonly number[];
  tol?: number;
}

/**
 * Checks an {out, lse} result against the float64 reference. Returns null when it passes, else a
 * message. out: relErr < tol (NaN fails) and every element within 1e-3 * max(1, max|ref|) (so a
 * single wrong row of a large output cannot hide). lse: exact -Infinity agreement, relErr < tol on
 * the finite entries, and every finite entry within 1e-3 * (1 + |ref|).
 */
export function compareResult(
  out: ArrayLike<number>,
  lse: ArrayLike<number>,
  ref: { out: ArrayLike<number>; lse: ArrayLike<number> },
  dv: number,
  opts: CompareOptions = {},
): string | null {
  const tol = opts.tol ?? 1e-4;
  if (out.length !== ref.out.length) return `out length ${out.length} != ${ref.out.length}`;
  if (lse.length !== ref.lse.length) return `lse length ${lse.length} != ${ref.lse.length}`;
  let o: ArrayLike<number> = out;
  let ro: ArrayLike<number> = ref.out;
  let l: ArrayLike<number> = lse;
  let rl: ArrayLike<number> = ref.lse;
  if (opts.rows) {
    const so: number[] = [];
    const sro: number[] = [];
    const sl: number[] = [];
    const srl: number[] = [];
    for (const r of opts.rows) {
      for (let c = 0; c < dv; c++) {
        so.push(out[r * dv + c]!);
        sro.push(ref.out[r * dv + c]!);
      }
      sl.push(lse[r]!);
      srl.push(ref.lse[r]!);
    }
    [o, ro, l, rl] = [so, sro, sl, srl];
  }
  const e = relErr(o, ro);
  if (!(e < tol)) return `out relErr ${e}`;
  let mx = 1;
  for (let i = 0; i < ro.length; i++) mx = Math.max(mx, Math.abs(ro[i]!));
  for (let i = 0; i < o.length; i++) {
    if (!(Math.abs(o[i]! - ro[i]!) <= 1e-3 * mx)) return `out[${i}] = ${o[i]} vs ref ${ro[i]}`;
  }
  const fl: number[] = [];
  const frl: number[] = [];
  for (let i = 0; i < l.length; i++) {
    const x = l[i]!;
    const y = rl[i]!;
    if (y === -Infinity || x === -Infinity) {
      if (x !== y) return `lse[${i}] = ${x} vs ref ${y} (-Infinity must agree exactly)`;
      continue;
    }
    if (!Number.isFinite(x) || !Number.isFinite(y)) return `lse[${i}] = ${x} vs ref ${y}`;
    if (!(Math.abs(x - y) <= 1e-3 * (1 + Math.abs(y)))) return `lse[${i}] = ${x} vs ref ${y}`;
    fl.push(x);
    frl.push(y);
  }
  const le = relErr(fl, frl);
  if (!(le < tol)) return `lse relErr ${le}`;
  return null;
}

/** Assert form of compareResult, naming the case. */
export function assertClose(
  name: string,
  out: ArrayLike<number>,
  lse: ArrayLike<number>,
  ref: { out: ArrayLike<number>; lse: ArrayLike<number> },
  dv: number,
  opts: CompareOptions = {},
): void {
  const msg = compareResult(out, lse, ref, dv, opts);
  if (msg) assert.fail(`${name}: ${msg}`);
}

/** Byte copy of an array, to check later that it was left untouched. */
export const snapshot = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));

export function sameBytes(a: Float32Array, snap: Uint8Array): boolean {
  const b = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (b.length !== snap.length) return false;
  for (let i = 0; i < b.length; i++) if (b[i] !== snap[i]) return false;
  return true;
}

/**
 * Collects failures of a property loop so one bad configuration does not hide the others; `done`
 * fails the test listing the first few, each named by its configuration.
 */
export class Failures {
  readonly list: string[] = [];
  checked = 0;
  add(name: string, msg: string): void {
    this.list.push(`${name}: ${msg}`);
  }
  async run(name: string, fn: () => void | Promise<void>): Promise<void> {
    this.checked++;
    if (process.env.TILEWISE_TRACE) process.stderr.write(`[case] ${name}\n`);
    try {
      await fn();
    } catch (e) {
      this.add(name, e instanceof Error ? `${e.name}: ${e.message}`.split('\n')[0]! : String(e));
    }
  }
  runSync(name: string, fn: () => void): void {
    this.checked++;
    if (process.env.TILEWISE_TRACE) process.stderr.write(`[case] ${name}\n`);
    try {
      fn();
    } catch (e) {
      this.add(name, e instanceof Error ? `${e.name}: ${e.message}`.split('\n')[0]! : String(e));
    }
  }
  done(label: string): void {
    if (this.list.length > 0) {
      const shown = this.list.slice(0, 12).join('\n  ');
      assert.fail(`${label}: ${this.list.length} of ${this.checked} configurations failed:\n  ${shown}${this.list.length > 12 ? '\n  ...' : ''}`);
    }
  }
}

/** Compact JSON for case names (typed arrays shortened). */
export function describe(x: unknown): string {
  return JSON.stringify(x, (_k, v) => {
    if (v instanceof Int32Array || v instanceof Uint8Array) return `[${Array.from(v).join(',')}]`;
    if (v instanceof Float32Array) return `<f32 x${v.length}>`;
    if (typeof v === 'function') return 'fn';
    return v;
  });
}

// ---------------------------------------------------------------------------------------------
// Random pattern generators shared by the property and schedule tests.

/** A deterministic pseudo-random mask (b, h, q, k) -> bool of the given density. */
export function hashMask(seed: number, density: number): MaskFn {
  return (b, h, q, k) => {
    let x = (seed ^ Math.imul(b + 1, 0x27d4eb2d) ^ Math.imul(h + 7, 0x165667b1) ^ Math.imul(q + 13, 0x9e3779b1) ^ Math.imul(k + 101, 0x85ebca77)) >>> 0;
    x = Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) >>> 0;
    x = Math.imul(x ^ (x >>> 12), 0x297a2d39) >>> 0;
    x = (x ^ (x >>> 15)) >>> 0;
    return x / 4294967296 < density;
  };
}


export function side(rng: Rng): number {
  return rng.bool(0.2) ? -1 : rng.int(0, 12);
}

export function randomBlockSparse(rng: Rng, nq: number, nk: number, H: number): Extract<PatternSpec, { kind: 'blockSparse' }> {
  const blockQ = rng.int(1, 12);
  const blockK = rng.int(1, 12);
  const numQBlocks = Math.ceil(nq / blockQ);
  const numKBlocks = Math.ceil(nk / blockK);
  const maskHeads = rng.bool(0.5) ? 1 : H;
  const density = rng.next();
  const mask = new Uint8Array(maskHeads * numQBlocks * numKBlocks);
  for (let i = 0; i < mask.length; i++) mask[i] = rng.bool(density) ? 1 : 0;
  return { kind: 'blockSparse', blockQ, blockK, mask, maskHeads, numQBlocks, numKBlocks };
}

export function randomChunks(rng: Rng, nq: number, nk: number, H: number): Extract<PatternSpec, { kind: 'chunks' }> {
  const chunkSize = rng.int(1, 10);
  const queryTile = rng.int(1, 10);
  const heads = rng.bool(0.5) ? 1 : H;
  const numQTiles = Math.ceil(nq / queryTile);
  const nChunks = Math.ceil(nk / chunkSize);
  const density = rng.next();
  const offsets = new Int32Array(heads * numQTiles + 1);
  const ids: number[] = [];
  for (let i = 0; i < heads * numQTiles; i++) {
    for (let c = 0; c < nChunks; c++) if (rng.bool(density)) ids.push(c);
    offsets[i + 1] = ids.length;
  }
  return { kind: 'chunks', chunkSize, queryTile, heads, numQTiles, offsets, ids: Int32Array.from(ids) };
}

/** A random leaf or small and/or tree over one 1-D sequence (NA leaves only when nq == nk). */
export function randomPattern(rng: Rng, nq: number, nk: number, H: number, depth = 0): PatternSpec {
  const kinds = ['dense', 'causal', 'window', 'blockSparse', 'chunks', 'mask', ...(nq === nk ? ['neighborhood'] : []), ...(depth < 2 ? ['and', 'or', 'and', 'or'] : [])];
  const kind = rng.pick(kinds);
  switch (kind) {
    case 'dense':
      return patterns.dense();
    case 'causal':
      return patterns.causal(rng.pick(['top-left', 'bottom-right'] as const));
    case 'window':
      return patterns.slidingWindow(side(rng), side(rng), rng.pick(['top-left', 'bottom-right'] as const));
    case 'blockSparse':
      return randomBlockSparse(rng, nq, nk, H);
    case 'chunks':
      return randomChunks(rng, nq, nk, H);
    case 'mask':
      return patterns.maskFn(hashMask(rng.int(0, 1e9), rng.next()));
    case 'neighborhood': {
      const K = rng.int(1, nq);
      return { kind: 'neighborhood', kernelSize: [K], dilation: [1], stride: [rng.int(1, K)], isCausal: [rng.bool(0.3)] };
    }
    default: {
      const parts = Array.from({ length: rng.int(1, 3) }, () => randomPattern(rng, nq, nk, H, depth + 1));
      return kind === 'and' ? patterns.and(...parts) : patterns.or(...parts);
    }
  }
}

export interface NACase {
  rank: number;
  grid: number[];
  kernel: number[];
  dilation: number[];
  stride: number[];
  causal: boolean[];
}

export function randomNA(rng: Rng, rank: number): NACase {
  const grid = rank === 1 ? [rng.int(1, 40)] : rank === 2 ? [rng.int(1, 9), rng.int(1, 9)] : [rng.int(1, 6), rng.int(1, 5), rng.int(1, 4)];
  const kernel: number[] = [];
  const dilation: number[] = [];
  const stride: number[] = [];
  const causal: boolean[] = [];
  for (const L of grid) {
    const d = rng.bool(0.35) ? rng.int(1, Math.min(4, L)) : 1;
    const maxK = Math.floor(L / d);
    const K = rng.bool(0.2) ? maxK : rng.int(1, Math.min(maxK, 7));
    kernel.push(K);
    dilation.push(d);
    stride.push(rng.bool(0.5) ? 1 : rng.int(1, K));
    causal.push(rng.bool(0.25));
  }
  return { rank, grid, kernel, dilation, stride, causal };
}


/** Every function-scope WGSL `var` has an initialiser (Tint does not re-zero a bare `var x: T;` declared in a loop). */
export function checkVarsInitialised(wgsl: string): void {
  for (const m of wgsl.matchAll(/\bvar (\w+)\s*:[^;]*;/g)) assert.match(m[0], /=/, `uninitialised WGSL var: ${m[0]}`);
}

/**
 * Bytes of workgroup memory a generated WGSL module declares (`var<workgroup>` scalars, vectors and
 * arrays of them, lengths as literals or the module's u32 constants): what the device checks against
 * maxComputeWorkgroupStorageSize, so the planners' byte functions must bound it.
 */
export function declaredWorkgroupBytes(wgsl: string): number {
  const consts = new Map([...wgsl.matchAll(/\bconst (\w+): u32 = (\d+)u;/g)].map((m) => [m[1]!, Number(m[2])]));
  const sizeOf = (t: string): number => {
    const vecM = /^vec([234])<(\w+)>$/.exec(t);
    if (vecM) return Number(vecM[1]) * sizeOf(vecM[2]!);
    if (/^atomic<\w+>$/.test(t) || ['f32', 'u32', 'i32'].includes(t)) return 4;
    if (t === 'f16') return 2;
    throw new Error(`workgroup type ${t}`);
  };
  const length = (e: string): number =>
    e.split('*').reduce((acc, f) => {
      const x = f.trim().replace(/u$/, '');
      const n = /^\d+$/.test(x) ? Number(x) : consts.get(x);
      if (n === undefined) throw new Error(`workgroup array length ${e}`);
      return acc * n;
    }, 1);
  let bytes = 0;
  for (const m of wgsl.matchAll(/var<workgroup> \w+: ([^;]+);/g)) {
    const arr = /^array<(.+), ([^,<>]+)>$/.exec(m[1]!.trim());
    bytes += arr ? sizeOf(arr[1]!.trim()) * length(arr[2]!) : sizeOf(m[1]!.trim());
  }
  return bytes;
}

/** The limits of a small WebGPU device (4 KiB of workgroup memory, 64 threads), for planning tests without one. */
export const SMALL_LIMITS = {
  maxComputeWorkgroupStorageSize: 4096,
  maxComputeInvocationsPerWorkgroup: 64,
  maxComputeWorkgroupSizeX: 64,
  maxComputeWorkgroupsPerDimension: 65535,
  maxStorageBufferBindingSize: 1 << 27,
  maxBufferSize: 1 << 28,
  maxStorageBuffersPerShaderStage: 8,
} as const;

/**
 * A random attention call: batch, GQA heads, head dims (Dv may differ), lengths, and one of causal
 * (either alignment), a window, a random pattern or a mask function; softcap, bias and RoPE at random.
 */
export function randomAttention(rng: Rng, maxN: number): { q: Tensor; k: Tensor; v: Tensor; opts: AttentionOptions; name: string } {
  const B = rng.int(1, 2);
  const H = rng.pick([1, 2, 4]);
  const Hk = rng.pick([1, H]);
  const D = rng.int(1, 40);
  const Dv = rng.bool(0.3) ? rng.int(1, 40) : D;
  const nq = rng.int(1, maxN);
  const nk = rng.bool(0.5) ? nq : rng.int(1, maxN);
  const q = randTensor(rng, [B, nq, H, D]);
  const k = randTensor(rng, [B, nk, Hk, D]);
  const v = randTensor(rng, [B, nk, Hk, Dv]);
  const opts: AttentionOptions = {};
  const r = rng.int(0, 5);
  if (r === 0) opts.causal = rng.pick([true, 'bottom-right'] as const);
  if (r === 1) opts.window = [rng.int(-1, 30), rng.int(-1, 30)];
  if (r === 2) opts.pattern = randomPattern(rng, nq, nk, H);
  if (r === 3) opts.pattern = patterns.maskFn((b, h, qi, kj) => (qi * 7 + kj * 3 + h + b) % 5 !== 0);
  if (rng.bool(0.3)) opts.softcap = rng.pick([3, 30]);
  if (rng.bool(0.25)) opts.bias = randTensor(rng, [H, nq, nk]);
  if (rng.bool(0.25) && D % 2 === 0 && opts.pattern === undefined) opts.rope = { base: 10000 };
  return { q, k, v, opts, name: describe({ B, H, Hk, D, Dv, nq, nk, ...opts, bias: opts.bias?.shape }) };
}

/** Gradients as flat arrays (host results of any backward), by name. */
export type GradArrays = { dq: Float32Array; dk: Float32Array; dv: Float32Array; drpb?: Float32Array | undefined; dbias?: Float32Array | undefined };

/**
 * Checks gradients against the float64 reference backward: relErr < tol and no NaN for every
 * gradient the reference has (dbias only when `withBias`). A gradient that is exactly zero in
 * float64 (one key per row: dS = P (dP - dP) = 0) is float32 round-off, so it must only be small
 * against the call's other gradients. Returns the first failure, or null.
 */
export function gradMismatch(g: GradArrays, ref: { dq: Float64Array; dk: Float64Array; dv: Float64Array; drpb?: Float64Array; dbias?: Float64Array }, withBias: boolean, tol = 1e-4): string | null {
  let scale = 1;
  for (const r of [ref.dq, ref.dk, ref.dv]) for (const x of r) scale = Math.max(scale, Math.abs(x));
  const want: Record<string, Float64Array | undefined> = { dq: ref.dq, dk: ref.dk, dv: ref.dv, drpb: ref.drpb, dbias: withBias ? ref.dbias : undefined };
  const got = g as unknown as Record<string, Float32Array | undefined>;
  for (const [n, w] of Object.entries(want)) {
    if (!w) continue;
    const x = got[n];
    if (!x) return `${n} missing`;
    if (x.length !== w.length) return `${n} length ${x.length} != ${w.length}`;
    const zero = w.every((v) => v === 0);
    const e = relErr(x, w);
    if (zero ? !x.every((v) => Math.abs(v) <= 1e-5 * scale) : !(e < tol)) return `${n} relErr ${e}`;
  }
  return null;
}
