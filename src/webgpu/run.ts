/// <reference types="@webgpu/types" />
import { TilewiseError, check } from '../errors.js';
import type { AttnProblem } from '../problem.js';
import { BufferUsage, type GpuContext, type GpuLimits, getContext, lossOr } from './device.js';
import { type GpuTensor, createBuffer, readBuffers, releaseBuffer, uploadBuffer } from './tensor.js';
import type { CachedPipeline } from './wgsl.js';

/**
 * What every attention kernel of the backend shares: output allocation, one dispatch inside error
 * scopes with its temporary buffers released after submit, and the Float32Array entry that
 * uploads q, k, v and reads out and lse back.
 */

export interface KernelOptions {
  /** Fill the outputs with NaN first, so an unwritten element cannot pass a test. */
  readonly poison?: boolean;
  /** Destinations (else fresh buffers the caller releases with `releaseTensor`). */
  readonly out?: GpuTensor;
  readonly lse?: GpuTensor;
  /** Records GPU timestamps around every compute pass the kernel runs (the profiler's timer). */
  readonly timer?: PassTimer;
}

/** Hands out timestamp writes for compute passes (timing.ts GpuTimer); undefined when it has no room. */
export interface PassTimer {
  passWrites(): GPUComputePassTimestampWrites | undefined;
}

/** Bindings of q, k, v, out, lse, ready for a bind group. */
export interface AttnIO {
  readonly q: GPUBufferBinding;
  readonly k: GPUBufferBinding;
  readonly v: GPUBufferBinding;
  readonly out: GPUBufferBinding;
  readonly lse: GPUBufferBinding;
}

export interface Launch {
  readonly pipeline: CachedPipeline;
  /** Bind group entries in binding order (binding i = entries[i]). */
  readonly entries: readonly (GPUBufferBinding | GPUBuffer)[];
  /** Workgroups in x and y; 0 in x means nothing to run (every row gets out 0, lse -inf). */
  readonly groups: readonly [number, number];
}

export function bindingOf(t: GpuTensor, bytes: number, arg: string): GPUBufferBinding {
  check(t.offset % 256 === 0, arg, 'offset must be a multiple of 256 bytes to bind it', String(t.offset));
  check(t.buffer.size >= t.offset + bytes, arg, 'buffer is too small', `${t.buffer.size} < ${t.offset + bytes}`);
  return { buffer: t.buffer, offset: t.offset, size: bytes };
}

/** A 2-D grid holding `count` workgroups, and the x extent kernels decode the linear index with. */
export function gridFor(count: number, limits: GpuLimits, arg: string): [number, number] {
  const x = Math.max(1, Math.min(count, limits.maxComputeWorkgroupsPerDimension));
  const y = Math.ceil(count / x);
  check(y <= limits.maxComputeWorkgroupsPerDimension, arg, 'needs more workgroups than one dispatch can hold', String(count));
  return [count === 0 ? 0 : x, y];
}

/**
 * NATTEN rpb [H, 2K0-1, ...] flattened: index = h * volume + base + sum_a (key_a - query_a) * strides_a
 * (group-local coordinates), as both kernels compute it.
 */
export function rpbLayout(kernel: readonly number[]): { strides: number[]; volume: number; base: number } {
  const spans = kernel.map((k) => 2 * k - 1);
  const strides = spans.map((_, a) => spans.slice(a + 1).reduce((x, y) => x * y, 1));
  return { strides, volume: spans.reduce((x, y) => x * y, 1), base: kernel.reduce((acc, k, a) => acc + (k - 1) * strides[a]!, 0) };
}

/** Uniform bytes as a buffer the caller's `own` releases. */
export const uniformBuffer = (device: GPUDevice, bytes: ArrayBuffer): GPUBuffer => uploadBuffer(device, new Uint8Array(bytes), BufferUsage.UNIFORM, 'tilewise params');

/**
 * Allocates (or takes) out and lse, then calls `prepare` synchronously between error-scope push
 * and pop (so concurrent calls cannot swap scopes) and submits its launch. Buffers passed to `own`
 * are released after the submit; the outputs are released too if anything failed.
 */
export async function launchAttn(
  ctx: GpuContext,
  problem: AttnProblem,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  opts: KernelOptions,
  name: string,
  prepare: (io: AttnIO, own: (b: GPUBuffer) => GPUBuffer) => Launch,
): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  const { device } = ctx;
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const outBytes = qRows * H * DV * 4;
  const lseBytes = qRows * H * 4;
  const inputs = { q: bindingOf(q, qRows * H * D * 4, 'q'), k: bindingOf(k, kRows * Hk * D * 4, 'k'), v: bindingOf(v, kRows * Hk * DV * 4, 'v') };
  const outputs: GPUBuffer[] = [];
  const fresh = (bytes: number, shape: number[], label: string): GpuTensor => {
    const b = createBuffer(device, bytes, BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, label);
    outputs.push(b);
    return { buffer: b, shape, offset: 0 };
  };
  const outT = opts.out ?? fresh(outBytes, [qRows, H, DV], 'tilewise out');
  const lseT = opts.lse ?? fresh(lseBytes, [qRows, H], 'tilewise lse');
  const temps: GPUBuffer[] = [];
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  let failure: unknown;
  try {
    const io: AttnIO = { ...inputs, out: bindingOf(outT, outBytes, 'out'), lse: bindingOf(lseT, lseBytes, 'lse') };
    if (opts.poison) {
      device.queue.writeBuffer(outT.buffer, outT.offset, new Float32Array(qRows * H * DV).fill(NaN));
      device.queue.writeBuffer(lseT.buffer, lseT.offset, new Float32Array(qRows * H).fill(NaN));
    }
    const l = prepare(io, (b) => (temps.push(b), b));
    if (l.groups[0] > 0) {
      const bg = device.createBindGroup({
        layout: l.pipeline.layout,
        entries: l.entries.map((e, i) => ({ binding: i, resource: 'buffer' in e ? e : { buffer: e } })),
      });
      const enc = device.createCommandEncoder();
      const timestampWrites = opts.timer?.passWrites();
      const pass = enc.beginComputePass(timestampWrites ? { timestampWrites } : {});
      pass.setPipeline(l.pipeline.pipeline);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(l.groups[0], l.groups[1]);
      pass.end();
      device.queue.submit([enc.finish()]);
    } else {
      device.queue.writeBuffer(outT.buffer, outT.offset, new Float32Array(qRows * H * DV));
      device.queue.writeBuffer(lseT.buffer, lseT.offset, new Float32Array(qRows * H).fill(-Infinity));
    }
  } catch (e) {
    failure = e;
  }
  // both pops issued before any await, so another call's scopes cannot come in between
  const [validation, oom] = await Promise.all([device.popErrorScope(), device.popErrorScope()]);
  temps.forEach(releaseBuffer); // freed once the GPU is done with them
  const err =
    failure ??
    (oom
      ? new TilewiseError('webgpu', 'ran out of GPU memory', oom.message)
      : validation
        ? new TilewiseError('webgpu', `rejected the ${name} dispatch`, validation.message)
        : undefined);
  if (err) {
    outputs.forEach(releaseBuffer);
    throw err;
  }
  return { out: outT, lse: lseT };
}

export type TensorKernel = (ctx: GpuContext, problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions) => Promise<{ out: GpuTensor; lse: GpuTensor }>;

/** A kernel on GPU tensors, with device loss turned into the backend's report. */
export async function onDevice(kernel: TensorKernel, problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  const ctx = await getContext();
  try {
    return await kernel(ctx, problem, q, k, v, opts);
  } catch (e) {
    return lossOr(ctx, e);
  }
}

/** A kernel on host arrays: uploads q, k, v, runs it, reads out and lse back, frees everything. */
export async function onHost(
  kernel: TensorKernel,
  problem: AttnProblem,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  opts: { poison?: boolean },
): Promise<{ out: Float32Array; lse: Float32Array }> {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  check(q.length === qRows * H * D, 'q', 'length must be qRows * heads * dim', `${q.length}`);
  check(k.length === kRows * Hk * D, 'k', 'length must be kRows * kvHeads * dim', `${k.length}`);
  check(v.length === kRows * Hk * DV, 'v', 'length must be kRows * kvHeads * dimV', `${v.length}`);
  const ctx = await getContext();
  const { device } = ctx;
  const ins: GPUBuffer[] = [];
  let res: { out: GpuTensor; lse: GpuTensor } | undefined;
  try {
    const up = (a: Float32Array, shape: number[], name: string): GpuTensor => {
      const b = uploadBuffer(device, a, BufferUsage.STORAGE, `tilewise ${name}`);
      ins.push(b);
      return { buffer: b, shape, offset: 0 };
    };
    const qT = up(q, [qRows, H, D], 'q');
    const kT = up(k, [kRows, Hk, D], 'k');
    const vT = up(v, [kRows, Hk, DV], 'v');
    res = await kernel(ctx, problem, qT, kT, vT, opts);
    const [o, l] = await readBuffers(device, [
      { buffer: res.out.buffer, bytes: qRows * H * DV * 4 },
      { buffer: res.lse.buffer, bytes: qRows * H * 4 },
    ]);
    return { out: new Float32Array(o!), lse: new Float32Array(l!) };
  } catch (e) {
    return await lossOr(ctx, e);
  } finally {
    ins.forEach(releaseBuffer);
    if (res) {
      releaseBuffer(res.out.buffer);
      releaseBuffer(res.lse.buffer);
    }
  }
}
