/**
 * Shared test helpers: a seeded generator (independent of the library's own), random tensors,
 * poisoned destinations, and the comparison rule of design.md section 6.
 */
import assert from 'node:assert/strict';
import type { Tensor } from '../src/tensor.js';

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
    try {
      await fn();
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
