/// <reference types="@webgpu/types" />
import { TilewiseError, check } from '../errors.js';
import type { AttnProblem } from '../problem.js';
import { numel } from '../tensor.js';
import { BufferUsage, type GpuContext, type GpuLimits, getContext, lossOr } from './device.js';
import { f16Bits } from '../f16.js';
import { type GpuDType, type GpuTensor, bindingBytes, createBuffer, dtypeOf, elementBytes, readBuffers, releaseBuffer, uploadBuffer } from './tensor.js';
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
  /** Apply the non-finite policy in the kernels (`screen`): GPU-tensor inputs, and rpb entries on any path. */
  readonly screen?: boolean;
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

/** Binding of `count` elements of `t`; `dtypes` are the element types the kernel takes there. */
export function bindingOf(t: GpuTensor, count: number, arg: string, dtypes: readonly GpuDType[] = ['f32']): GPUBufferBinding {
  const d = dtypeOf(t);
  check(dtypes.includes(d), arg, `must hold ${dtypes.join(' or ')} elements for this kernel`, d);
  const bytes = bindingBytes(count, d);
  check(t.offset % 256 === 0, arg, 'offset must be a multiple of 256 bytes to bind it', String(t.offset));
  check(t.buffer.size >= t.offset + bytes, arg, 'buffer is too small', `${t.buffer.size} < ${t.offset + bytes}`);
  return { buffer: t.buffer, offset: t.offset, size: bytes };
}

/**
 * Whether the attention kernels store `t` (and with it q, k, v, out) as f16; a typed error naming
 * `arg` where the device lacks `shader-f16`.
 */
export function storesF16(ctx: GpuContext, t: GpuTensor, arg: string): boolean {
  const f16 = dtypeOf(t) === 'f16';
  if (f16 && !ctx.features.has('shader-f16')) throw new TilewiseError(arg, "f16 tensors need a device with the 'shader-f16' feature", ctx.description);
  return f16;
}

/** (name, bytes) of the q, k, v and out bindings of `problem` with elements of type `d`, for `bindingsFit`. */
export function ioBindingSizes(problem: AttnProblem, d: GpuDType = 'f32'): [string, number][] {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  return [
    ['q', bindingBytes(qRows * H * D, d)],
    ['k', bindingBytes(kRows * Hk * D, d)],
    ['v', bindingBytes(kRows * Hk * DV, d)],
    ['out', bindingBytes(qRows * H * DV, d)],
  ];
}

/** A 2-D grid holding `count` workgroups, and the x extent kernels decode the linear index with. */
export function gridFor(count: number, limits: GpuLimits, arg: string): [number, number] {
  const x = Math.max(1, Math.min(count, limits.maxComputeWorkgroupsPerDimension));
  const y = Math.ceil(count / x);
  check(y <= limits.maxComputeWorkgroupsPerDimension, arg, 'needs more workgroups than one dispatch can hold', String(count));
  return [count === 0 ? 0 : x, y];
}

/** The grid for `count` invocations in workgroups of `threads` (kernels indexed by wgsl.ts FLAT_INVOCATION). */
export const threadGrid = (count: number, threads: number, limits: GpuLimits, arg: string): [number, number] => gridFor(Math.ceil(count / threads), limits, arg);

/**
 * NATTEN rpb [H, 2K0-1, ...] flattened: index = h * volume + base + sum_a (key_a - query_a) * strides_a
 * (group-local coordinates), as both kernels compute it.
 */
export function rpbLayout(kernel: readonly number[]): { strides: number[]; volume: number; base: number } {
  const spans = kernel.map((k) => 2 * k - 1);
  const strides = spans.map((_, a) => spans.slice(a + 1).reduce((x, y) => x * y, 1));
  return { strides, volume: spans.reduce((x, y) => x * y, 1), base: kernel.reduce((acc, k, a) => acc + (k - 1) * strides[a]!, 0) };
}

/** The first binding (name, bytes) over what one storage binding may hold, as a reason; else true. */
export function bindingsFit(sizes: readonly (readonly [string, number])[], limits: GpuLimits): true | string {
  const max = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  for (const [name, bytes] of sizes) if (bytes > max) return `${name} takes ${bytes} bytes, more than the ${max} one binding may hold`;
  return true;
}

/** Uniform bytes as a buffer the caller's `own` releases. */
export const uniformBuffer = (device: GPUDevice, bytes: ArrayBuffer): GPUBuffer => uploadBuffer(device, new Uint8Array(bytes), BufferUsage.UNIFORM, 'tilewise params');

/** An output a launch allocates (or takes from the caller), and what it holds when no workgroup runs. */
export interface OutputSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly given?: GpuTensor;
  readonly empty: number;
  /** Element type (default f32). */
  readonly dtype?: GpuDType;
}

/**
 * Allocates (or takes) the outputs, then calls `prepare` synchronously between error-scope push
 * and pop (so concurrent calls cannot swap scopes) and submits its launches, in order, in one
 * compute pass (WebGPU orders the dispatches' storage accesses). Buffers passed to `own` are
 * released after the submit; the fresh outputs are released too if anything failed. When no
 * launch has a workgroup, the outputs get their `empty` fill.
 */
export async function launch(
  ctx: GpuContext,
  name: string,
  outputs: readonly OutputSpec[],
  poison: boolean,
  prepare: (outs: GPUBufferBinding[], own: (b: GPUBuffer) => GPUBuffer) => Launch | readonly Launch[],
  timer?: PassTimer,
): Promise<GpuTensor[]> {
  const { device } = ctx;
  const fresh: GPUBuffer[] = [];
  const ts = outputs.map((o): GpuTensor => {
    if (o.given) return o.given;
    const d = dtypeOf(o);
    const b = createBuffer(device, bindingBytes(numel(o.shape), d), BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, `tilewise ${o.name}`);
    fresh.push(b);
    return { buffer: b, shape: [...o.shape], offset: 0, ...(d === 'f16' ? { dtype: d } : {}) };
  });
  const temps: GPUBuffer[] = [];
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  let failure: unknown;
  try {
    const binds = outputs.map((o, i) => bindingOf(ts[i]!, numel(o.shape), o.name, [dtypeOf(o)]));
    const fill = (x: (o: OutputSpec) => number) =>
      outputs.forEach((o, i) => {
        const n = numel(o.shape);
        const words = o.dtype === 'f16' ? new Uint16Array(Math.ceil(n / 2) * 2).fill(f16Bits(x(o))) : new Float32Array(n).fill(x(o));
        device.queue.writeBuffer(ts[i]!.buffer, ts[i]!.offset, words);
      });
    if (poison) fill(() => NaN);
    const ls = [prepare(binds, (b) => (temps.push(b), b))].flat().filter((l) => l.groups[0] > 0);
    if (ls.length > 0) {
      const enc = device.createCommandEncoder();
      const timestampWrites = timer?.passWrites();
      const pass = enc.beginComputePass(timestampWrites ? { timestampWrites } : {});
      for (const l of ls) {
        const bg = device.createBindGroup({
          layout: l.pipeline.layout,
          entries: l.entries.map((e, i) => ({ binding: i, resource: 'buffer' in e ? e : { buffer: e } })),
        });
        pass.setPipeline(l.pipeline.pipeline);
        pass.setBindGroup(0, bg);
        pass.dispatchWorkgroups(l.groups[0], l.groups[1]);
      }
      pass.end();
      device.queue.submit([enc.finish()]);
    } else fill((o) => o.empty);
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
    fresh.forEach(releaseBuffer);
    throw err;
  }
  return ts;
}

/**
 * `launch` for the attention kernels: q, k, v in, out [qRows, H, Dv] and lse [qRows, H] out. q, k,
 * v and out share one element type, f32 or f16 (the kernel's spec follows `storesF16`); lse is f32.
 */
export async function launchAttn(
  ctx: GpuContext,
  problem: AttnProblem,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  opts: KernelOptions,
  name: string,
  prepare: (io: AttnIO, own: (b: GPUBuffer) => GPUBuffer) => Launch | readonly Launch[],
): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const io = dtypeOf(q);
  const inputs = { q: bindingOf(q, qRows * H * D, 'q', [io]), k: bindingOf(k, kRows * Hk * D, 'k', [io]), v: bindingOf(v, kRows * Hk * DV, 'v', [io]) };
  const outputs: OutputSpec[] = [
    { name: 'out', shape: [qRows, H, DV], empty: 0, dtype: io, ...(opts.out ? { given: opts.out } : {}) },
    { name: 'lse', shape: [qRows, H], empty: -Infinity, ...(opts.lse ? { given: opts.lse } : {}) },
  ];
  const [out, lse] = await launch(ctx, name, outputs, opts.poison ?? false, ([o, l], own) => prepare({ ...inputs, out: o!, lse: l! }, own), opts.timer);
  return { out: out!, lse: lse! };
}

export type TensorKernel = (ctx: GpuContext, problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions) => Promise<{ out: GpuTensor; lse: GpuTensor }>;

/** Work on the shared device, with device loss turned into the backend's report. */
export async function withDevice<T>(fn: (ctx: GpuContext) => Promise<T>): Promise<T> {
  const ctx = await getContext();
  try {
    return await fn(ctx);
  } catch (e) {
    return lossOr(ctx, e);
  }
}

/** An attention kernel on GPU tensors. */
export function onDevice(kernel: TensorKernel, problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  return withDevice((ctx) => kernel(ctx, problem, q, k, v, opts));
}

/**
 * Kernels on host arrays: uploads the inputs, runs `kernel` on them, reads its output tensors back
 * and frees everything (device loss turned into the backend's report).
 */
export async function onHostArrays(
  inputs: readonly { readonly name: string; readonly data: Float32Array; readonly shape: readonly number[] }[],
  kernel: (ctx: GpuContext, ins: GpuTensor[]) => Promise<GpuTensor[]>,
): Promise<Float32Array[]> {
  for (const x of inputs) check(x.data.length === numel(x.shape), x.name, `length must be ${x.shape.join(' * ')}`, `${x.data.length}`);
  const ctx = await getContext();
  const { device } = ctx;
  const ins: GPUBuffer[] = [];
  let res: GpuTensor[] = [];
  try {
    const ts = inputs.map((x): GpuTensor => {
      const b = uploadBuffer(device, x.data, BufferUsage.STORAGE, `tilewise ${x.name}`);
      ins.push(b);
      return { buffer: b, shape: x.shape, offset: 0 };
    });
    res = await kernel(ctx, ts);
    const bytes = await readBuffers(device, res.map((t) => ({ buffer: t.buffer, bytes: numel(t.shape) * elementBytes(dtypeOf(t)), offset: t.offset })));
    return bytes.map((b) => new Float32Array(b));
  } catch (e) {
    return await lossOr(ctx, e);
  } finally {
    ins.forEach(releaseBuffer);
    res.forEach((t) => releaseBuffer(t.buffer));
  }
}

/** An attention kernel on host arrays: q, k, v in, out and lse back. */
export async function onHost(
  kernel: TensorKernel,
  problem: AttnProblem,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  opts: { poison?: boolean; screen?: boolean },
): Promise<{ out: Float32Array; lse: Float32Array }> {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const [out, lse] = await onHostArrays(
    [
      { name: 'q', data: q, shape: [qRows, H, D] },
      { name: 'k', data: k, shape: [kRows, Hk, D] },
      { name: 'v', data: v, shape: [kRows, Hk, DV] },
    ],
    async (ctx, [qT, kT, vT]) => {
      const r = await kernel(ctx, problem, qT!, kT!, vT!, opts);
      return [r.out, r.lse];
    },
  );
  return { out: out!, lse: lse! };
}
