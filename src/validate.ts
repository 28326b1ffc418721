import { TilewiseError, check, checkPositiveInt } from './errors.js';
import { type GpuDType, type Tensor, bindingBytes, dtypeOf, isGpuTensor, numel } from './tensor.js';
import type { GpuTensor } from './webgpu/tensor.js';

/** Shape and value checks shared by every entry point; each names the argument and the rule. */

export function checkTensor(t: unknown, arg: string): asserts t is Tensor {
  check(t !== null && typeof t === 'object', arg, 'must be a tensor { data: Float32Array, shape: number[] }');
  const x = t as Partial<Tensor>;
  check(x.data instanceof Float32Array, arg, 'data must be a Float32Array');
  check(Array.isArray(x.shape), arg, 'shape must be an array of integers');
  for (const s of x.shape!) check(Number.isInteger(s) && s > 0, arg, 'every dimension must be a positive integer', `shape ${x.shape!.join('x')}`);
  check(numel(x.shape!) === x.data!.length, arg, 'data length must equal the product of the shape', `${x.data!.length} vs ${x.shape!.join('x')}`);
}

/** A GPU tensor's shape, placement and element type (its contents stay on the device unchecked). */
export function checkGpuTensor(t: unknown, arg: string): asserts t is GpuTensor {
  check(isGpuTensor(t), arg, 'must be a GPU tensor { buffer, shape, offset, dtype? }');
  const x = t as GpuTensor;
  check(Array.isArray(x.shape), arg, 'shape must be an array of integers');
  for (const s of x.shape) check(Number.isInteger(s) && s > 0, arg, 'every dimension must be a positive integer', `shape ${x.shape.join('x')}`);
  check(Number.isInteger(x.offset) && x.offset >= 0, arg, 'offset must be a non-negative integer of bytes', String(x.offset));
  check(x.dtype === undefined || x.dtype === 'f32' || x.dtype === 'f16', arg, "dtype must be 'f32' or 'f16'", String(x.dtype));
  const bytes = bindingBytes(numel(x.shape), dtypeOf(x));
  const size = (x.buffer as { size?: unknown } | null)?.size;
  check(typeof size === 'number' && size >= x.offset + bytes, arg, 'buffer is smaller than offset + the shape needs', `${String(size)} < ${x.offset + bytes}`);
}

/** CommonOptions.signal: absent or an AbortSignal. */
export function checkSignal(signal: unknown): void {
  if (signal === undefined) return;
  const s = signal as Partial<AbortSignal> | null;
  check(s !== null && typeof s === 'object' && typeof s.aborted === 'boolean' && typeof s.addEventListener === 'function', 'signal', 'must be an AbortSignal');
}

export function checkFinite(t: Tensor, arg: string): void {
  const d = t.data;
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i]!)) throw new TilewiseError(arg, 'must not contain NaN or Inf', `element ${i} is ${d[i]}`);
}

/** Scalar-or-tuple option -> one integer per axis, each checked. */
export function perAxisInt(v: unknown, rank: number, arg: string, dflt: number): number[] {
  const arr = v === undefined ? new Array<number>(rank).fill(dflt) : typeof v === 'number' ? new Array<number>(rank).fill(v) : v;
  check(Array.isArray(arr), arg, 'must be an integer or an array of integers');
  check(arr.length === rank, arg, `must have ${rank} entries, one per token axis`, `got ${arr.length}`);
  arr.forEach((x) => checkPositiveInt(x, arg));
  return arr as number[];
}

export function perAxisBool(v: unknown, rank: number, arg: string): boolean[] {
  const arr = v === undefined ? new Array<boolean>(rank).fill(false) : typeof v === 'boolean' ? new Array<boolean>(rank).fill(v) : v;
  check(Array.isArray(arr) && arr.length === rank && arr.every((x) => typeof x === 'boolean'), arg, `must be a boolean or ${rank} booleans`);
  return arr as boolean[];
}

export interface QKVShapes {
  batch: number;
  qGrid: number[];
  kGrid: number[];
  heads: number;
  kvHeads: number;
  dim: number;
  dimV: number;
}

/** q [B, ...tokens, H, D], k [B, ...tokensK, Hk, D], v [B, ...tokensK, Hk, Dv]. */
export function checkQKV(q: unknown, k: unknown, v: unknown, tokenRank?: number): QKVShapes {
  // all three on the host, or all three GPU tensors of one element type
  if (isGpuTensor(q)) {
    checkGpuTensor(q, 'q');
    for (const [t, n] of [[k, 'k'], [v, 'v']] as const) {
      check(isGpuTensor(t), n, 'must be a GPU tensor like q');
      checkGpuTensor(t, n);
      check(dtypeOf(t) === dtypeOf(q), n, 'must have the same dtype as q', `${dtypeOf(t)} vs ${dtypeOf(q)}`);
    }
  } else {
    checkTensor(q, 'q');
    checkTensor(k, 'k');
    checkTensor(v, 'v');
  }
  const qs = q as { shape: readonly number[] };
  const ks = k as { shape: readonly number[] };
  const vs = v as { shape: readonly number[] };
  return shapesOf(qs, ks, vs, tokenRank);
}

function shapesOf(q: { shape: readonly number[] }, k: { shape: readonly number[] }, v: { shape: readonly number[] }, tokenRank?: number): QKVShapes {
  if (tokenRank !== undefined) check(q.shape.length === tokenRank + 3, 'q', `must have rank ${tokenRank + 3}: [batch, ${tokenRank}-D tokens, heads, headDim]`, `got ${q.shape.length}`);
  check(q.shape.length >= 4, 'q', 'must have rank >= 4: [batch, ...tokens, heads, headDim]', `got ${q.shape.length}`);
  check(k.shape.length === q.shape.length, 'k', 'must have the same rank as q', `${k.shape.length} vs ${q.shape.length}`);
  check(v.shape.length === q.shape.length, 'v', 'must have the same rank as q', `${v.shape.length} vs ${q.shape.length}`);
  const r = q.shape.length;
  check(k.shape[0] === q.shape[0], 'k', 'batch must match q', `${k.shape[0]} vs ${q.shape[0]}`);
  check(v.shape[0] === q.shape[0], 'v', 'batch must match q', `${v.shape[0]} vs ${q.shape[0]}`);
  for (let a = 1; a < r - 2; a++) check(v.shape[a] === k.shape[a], 'v', 'token axes must match k', `${v.shape.join('x')} vs ${k.shape.join('x')}`);
  check(k.shape[r - 1] === q.shape[r - 1], 'k', 'head dim must match q', `${k.shape[r - 1]} vs ${q.shape[r - 1]}`);
  check(v.shape[r - 2] === k.shape[r - 2], 'v', 'heads must match k', `${v.shape[r - 2]} vs ${k.shape[r - 2]}`);
  const heads = q.shape[r - 2]!;
  const kvHeads = k.shape[r - 2]!;
  check(heads % kvHeads === 0, 'k', 'query heads must be a multiple of key/value heads (GQA/MQA)', `${heads} vs ${kvHeads}`);
  return {
    batch: q.shape[0]!,
    qGrid: q.shape.slice(1, r - 2),
    kGrid: k.shape.slice(1, r - 2),
    heads,
    kvHeads,
    dim: q.shape[r - 1]!,
    dimV: v.shape[r - 1]!,
  };
}

export function checkScalar(x: unknown, arg: string, rule: 'positive' | 'nonnegative'): number {
  check(typeof x === 'number' && Number.isFinite(x), arg, 'must be a finite number', String(x));
  check(rule === 'positive' ? x > 0 : x >= 0, arg, `must be ${rule}`, String(x));
  return x;
}

export function checkDest(d: unknown, n: number, arg: string): Float32Array | undefined {
  if (d === undefined) return undefined;
  check(d instanceof Float32Array, arg, 'must be a Float32Array');
  check(d.length === n, arg, `must have ${n} elements`, `got ${d.length}`);
  return d;
}

/** A GPU destination (out or lse) of `n` elements of `dtype` (out: its inputs' dtype; lse: f32), or undefined when none was given. */
export function checkGpuDest(d: unknown, n: number, arg: string, dtype: GpuDType): GpuTensor | undefined {
  if (d === undefined) return undefined;
  checkGpuTensor(d, arg);
  check(numel(d.shape) === n, arg, `must have ${n} elements`, `got ${numel(d.shape)}`);
  check(dtypeOf(d) === dtype, arg, `must have dtype ${dtype}`, dtypeOf(d));
  return d;
}

export function checkCuSeqlens(cu: unknown, arg: string, total: number, count?: number): Int32Array {
  check(cu instanceof Int32Array, arg, 'must be an Int32Array of cumulative sequence lengths');
  check(cu.length >= 2, arg, 'needs at least two entries (0 and the total)');
  if (count !== undefined) check(cu.length === count, arg, 'must have as many entries as the other cuSeqlens', `${cu.length} vs ${count}`);
  check(cu[0] === 0, arg, 'must start at 0');
  for (let i = 1; i < cu.length; i++) check(cu[i]! >= cu[i - 1]!, arg, 'must be non-decreasing', `index ${i}`);
  check(cu[cu.length - 1] === total, arg, 'must end at the packed token count', `${cu[cu.length - 1]} vs ${total}`);
  return cu;
}
