/// <reference types="@webgpu/types" />
import { check } from '../errors.js';
import { fromF16, toF16 } from '../f16.js';
import { type GpuDType, bindingBytes, dtypeOf, elementBytes, numel } from '../tensor.js';
import { BufferUsage, type GpuContext, MapMode, getContext } from './device.js';

/**
 * GPU buffers the library creates go through `createBuffer` / `releaseBuffer`, so the number alive
 * can be checked (tests assert it stays flat over many calls). Buffers a caller wraps are never
 * destroyed by the library.
 */
let live = 0;
let created = 0;
let liveBytes = 0;
let peakBytes = 0;

/** Buffers alive and created so far; bytes alive, and the most alive at once since `resetPeakBytes`. */
export const bufferStats = (): { live: number; created: number; liveBytes: number; peakBytes: number } => ({ live, created, liveBytes, peakBytes });

/** Starts a new high-water mark of live buffer bytes (the profiler's peak-bytes column). */
export function resetPeakBytes(): void {
  peakBytes = liveBytes;
}

const owned = new WeakSet<GPUBuffer>();
/** Buffers this module destroyed: reading one back is an error, not a silent array of zeros. */
const released = new WeakSet<GPUBuffer>();

export function createBuffer(device: GPUDevice, size: number, usage: number, label?: string): GPUBuffer {
  const b = device.createBuffer({ size: Math.max(4, Math.ceil(size / 4) * 4), usage, ...(label ? { label } : {}) });
  owned.add(b);
  live++;
  created++;
  liveBytes += b.size;
  peakBytes = Math.max(peakBytes, liveBytes);
  return b;
}

/** Destroys a buffer this module created (idempotent); wrapped user buffers are left alone. */
export function releaseBuffer(b: GPUBuffer | undefined): void {
  if (!b || !owned.has(b)) return;
  owned.delete(b);
  released.add(b);
  live--;
  liveBytes -= b.size;
  b.destroy();
}

/** Queues a write of `data` (any typed array, shared memory included) at byte `offset` of `b`. */
export function writeData(device: GPUDevice, b: GPUBuffer, offset: number, data: ArrayBufferView): void {
  const shared = typeof SharedArrayBuffer !== 'undefined' && data.buffer instanceof SharedArrayBuffer;
  if (data.byteLength % 4 === 0 && !shared) {
    device.queue.writeBuffer(b, offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    return;
  }
  // Dawn takes no shared memory (nor unaligned sizes): go through a bounded private copy
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const CHUNK = 1 << 22;
  const tmp = new Uint8Array(Math.min(CHUNK, Math.ceil(data.byteLength / 4) * 4));
  for (let at = 0; at < data.byteLength; at += CHUNK) {
    const n = Math.min(CHUNK, data.byteLength - at);
    tmp.set(bytes.subarray(at, at + n));
    const padded = Math.ceil(n / 4) * 4;
    tmp.fill(0, n, padded);
    device.queue.writeBuffer(b, offset + at, tmp.buffer, 0, padded);
  }
}

/** A storage buffer holding `data` (any typed array), filled with one queue write. */
export function uploadBuffer(device: GPUDevice, data: ArrayBufferView, usage: number = BufferUsage.STORAGE, label?: string): GPUBuffer {
  const b = createBuffer(device, data.byteLength, usage | BufferUsage.COPY_DST, label);
  writeData(device, b, 0, data);
  return b;
}

/** Copies `[offset, offset + bytes)` of each source into one staging buffer, maps it and returns the bytes. */
export async function readBuffers(device: GPUDevice, parts: { buffer: GPUBuffer; bytes: number; offset?: number }[], encoder?: GPUCommandEncoder): Promise<ArrayBuffer[]> {
  const offs: number[] = [];
  let total = 0;
  for (const p of parts) {
    offs.push(total);
    total += Math.ceil(p.bytes / 4) * 4;
  }
  const staging = createBuffer(device, total, BufferUsage.MAP_READ | BufferUsage.COPY_DST, 'tilewise readback');
  try {
    const enc = encoder ?? device.createCommandEncoder();
    parts.forEach((p, i) => enc.copyBufferToBuffer(p.buffer, p.offset ?? 0, staging, offs[i]!, Math.ceil(p.bytes / 4) * 4));
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(MapMode.READ);
    const all = staging.getMappedRange();
    const out = parts.map((p, i) => all.slice(offs[i]!, offs[i]! + p.bytes));
    staging.unmap();
    return out;
  } finally {
    releaseBuffer(staging);
  }
}


/** A tensor living in a GPU buffer, heads-last like every tilewise tensor. */
export interface GpuTensor {
  readonly buffer: GPUBuffer;
  readonly shape: readonly number[];
  /** Byte offset of element 0 inside `buffer`. */
  readonly offset: number;
  /** Element type; absent means f32. */
  readonly dtype?: GpuDType;
}

export { bindingBytes, dtypeOf, elementBytes, type GpuDType };

function checkDType(d: unknown): asserts d is GpuDType {
  check(d === 'f32' || d === 'f16', 'dtype', "must be 'f32' or 'f16'", String(d));
}

/** Wraps a caller's buffer (usage must include STORAGE) without copying; tilewise never destroys it. */
export function wrapBuffer(buffer: GPUBuffer, shape: readonly number[], offset = 0, dtype: GpuDType = 'f32'): GpuTensor {
  checkDType(dtype);
  check(offset % 4 === 0, 'offset', 'must be a multiple of 4 bytes');
  const need = offset + bindingBytes(numel(shape), dtype);
  check(buffer.size >= need, 'buffer', 'is smaller than the tensor shape needs', `${buffer.size} < ${need}`);
  check((buffer.usage & BufferUsage.STORAGE) !== 0, 'buffer', 'usage must include STORAGE');
  return { buffer, shape: [...shape], offset, ...(dtype === 'f16' ? { dtype } : {}) };
}

/** Uploads a Float32Array into a new GPU buffer, as f32 or rounded to f16 (release it with `releaseTensor`). */
export async function toGpu(data: Float32Array, shape: readonly number[], ctx?: GpuContext, dtype: GpuDType = 'f32'): Promise<GpuTensor> {
  check(numel(shape) === data.length, 'shape', 'element count must match data length', `${shape.join('x')} vs ${data.length}`);
  checkDType(dtype);
  const c = ctx ?? (await getContext());
  const bits = dtype === 'f16' ? toF16(data) : data;
  return { buffer: uploadBuffer(c.device, bits, BufferUsage.STORAGE | BufferUsage.COPY_SRC, 'tilewise tensor'), shape: [...shape], offset: 0, ...(dtype === 'f16' ? { dtype } : {}) };
}

/** Reads a GPU tensor back into a new Float32Array (f16 widened exactly). */
export async function fromGpu(t: GpuTensor, ctx?: GpuContext): Promise<Float32Array> {
  check(!released.has(t.buffer), 'tensor', 'was released (its buffer is destroyed)');
  const c = ctx ?? (await getContext());
  const d = dtypeOf(t);
  const [bytes] = await readBuffers(c.device, [{ buffer: t.buffer, bytes: numel(t.shape) * elementBytes(d), offset: t.offset }]);
  return d === 'f16' ? fromF16(new Uint16Array(bytes!)) : new Float32Array(bytes!);
}

/** Frees a tensor's buffer if tilewise created it (wrapped buffers stay the caller's). */
export function releaseTensor(t: GpuTensor): void {
  releaseBuffer(t.buffer);
}
