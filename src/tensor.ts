import { check } from './errors.js';

/** A dense float32 tensor, row-major. Attention inputs are heads-last: [B, ...tokens, H, D]. */
export interface Tensor {
  readonly data: Float32Array;
  readonly shape: readonly number[];
}

/**
 * Whether `x` is a GPU tensor ({ buffer, shape, offset, dtype? }, webgpu/tensor.ts) rather than a
 * host one: the API runs GPU tensors on the WebGPU backend and leaves the results there.
 */
export function isGpuTensor(x: unknown): x is import('./webgpu/tensor.js').GpuTensor {
  return x !== null && typeof x === 'object' && 'buffer' in x && !('data' in x);
}

/** Element types a GPU tensor may hold: f32 everywhere; f16 storage where the device has `shader-f16`. */
export type GpuDType = 'f32' | 'f16';
/** A GPU tensor's element type; absent means f32. */
export const dtypeOf = (t: { readonly dtype?: GpuDType | undefined }): GpuDType => t.dtype ?? 'f32';
export const elementBytes = (d: GpuDType): number => (d === 'f16' ? 2 : 4);
/** Bytes a binding of `count` elements covers: storage bindings are whole 4-byte words. */
export const bindingBytes = (count: number, d: GpuDType): number => Math.ceil((count * elementBytes(d)) / 4) * 4;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function tensor(data: Float32Array, shape: readonly number[]): Tensor {
  check(data instanceof Float32Array, 'data', 'must be a Float32Array');
  check(numel(shape) === data.length, 'shape', 'element count must match data length', `${shape.join('x')} vs ${data.length}`);
  return { data, shape: [...shape] };
}

export function zeros(shape: readonly number[]): Tensor {
  return { data: new Float32Array(numel(shape)), shape: [...shape] };
}

/** Deterministic pseudo-random generator (mulberry32) so tests and benchmarks can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard-normal tensor from a seeded generator. */
export function randn(shape: readonly number[], seed = 1): Tensor {
  const r = rng(seed);
  const t = zeros(shape);
  for (let i = 0; i < t.data.length; i++) {
    const u = Math.max(r(), 1e-12);
    t.data[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return t;
}

/** ||a - b|| / ||b||; NaN anywhere gives NaN so that it never passes a `<` check. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  check(a.length === b.length, 'a', 'must have the same length as b');
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  if (den === 0) return Math.sqrt(num);
  return Math.sqrt(num / den);
}
