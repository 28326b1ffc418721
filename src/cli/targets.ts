import type { Result } from '../options.js';
import type { AttnProblem } from '../problem.js';
import type { Tensor } from '../tensor.js';
import type { BackendChoice } from './args.js';

type Gpu = typeof import('../webgpu/index.js');
type GpuContext = import('../webgpu/index.js').GpuContext;
type GpuTensor = import('../webgpu/index.js').GpuTensor;
type KernelOptions = import('../webgpu/index.js').KernelOptions;

/**
 * Where the profiler runs a case, and how each implementation is run and timed there. The CPU runs
 * the public API; WebGPU runs the kernels on GPU tensors uploaded once per case (so uploads and
 * readbacks are not timed), timed by GPU timestamps when the device has them.
 */

/** How a row was timed. */
export type Timing = 'wall' | 'gpu-ts' | 'wall-gpu' | 'wall+io';

export interface CpuTarget {
  readonly name: 'cpu';
  readonly threads: number;
}

export interface GpuTarget {
  readonly name: 'webgpu';
  readonly gpu: Gpu;
  readonly ctx: GpuContext;
}

export type Target = CpuTarget | GpuTarget;

/** Describes a target for tables and JSON. */
export function targetInfo(t: Target): Record<string, unknown> {
  if (t.name === 'cpu') return { threads: t.threads };
  const { ctx } = t;
  return { adapter: ctx.description, adapterClass: ctx.adapterClass, features: [...ctx.features].sort(), storedTuning: ctx.tuning ?? null };
}

/**
 * The targets a `--backend` list asks for, deduplicated, and notes on what 'auto' chose.
 * 'auto' follows the API: WebGPU on a hardware adapter, else the CPU.
 */
export async function resolveTargets(choices: readonly BackendChoice[], threads: () => number): Promise<{ targets: Target[]; notes: string[] }> {
  const notes: string[] = [];
  const names: ('cpu' | 'webgpu')[] = [];
  for (const c of choices) {
    let name: 'cpu' | 'webgpu' = c === 'auto' ? 'cpu' : c;
    if (c === 'auto') {
      const gpu = await import('../webgpu/index.js');
      const avail = await gpu.webgpuAvailable();
      if (avail !== true) notes.push(`auto -> cpu: ${avail}`);
      else {
        const ctx = await gpu.getContext();
        name = ctx.adapterClass === 'gpu' ? 'webgpu' : 'cpu';
        notes.push(name === 'webgpu' ? `auto -> webgpu (${ctx.description})` : `auto -> cpu: the WebGPU adapter is a software one (${ctx.description}); --backend webgpu profiles it anyway`);
      }
    }
    if (!names.includes(name)) names.push(name);
  }
  const targets: Target[] = [];
  for (const n of names) {
    if (n === 'cpu') targets.push({ name: 'cpu', threads: threads() });
    else {
      const gpu = await import('../webgpu/index.js');
      targets.push({ name: 'webgpu', gpu, ctx: await gpu.getContext() }); // throws the reason when there is no device
    }
  }
  return { targets, notes };
}

/** One implementation on one target: a checked run (also the warm-up), then timed runs. */
export interface Runner {
  timing: Timing;
  /** Runs once and returns the output rows [qRows, H, Dv]. */
  check(): Promise<Float32Array>;
  /** Runs once and returns its time in ms. */
  time(): Promise<number>;
  /** Extra bytes of the checked run where the target measures them (WebGPU: buffers created beyond inputs and outputs). */
  measuredBytes?: number;
  dispose?(): void;
}

/** Wall-clock runner over a public API call; `ioBytes` (WebGPU) subtracts the call's own inputs and outputs from its measured peak. */
export function apiRunner(call: () => Promise<Result>, timing: 'wall' | 'wall+io', gpu?: { mod: Gpu; ioBytes: number }): Runner {
  const r: Runner = {
    timing,
    async check() {
      const before = gpu ? (gpu.mod.resetPeakBytes(), gpu.mod.bufferStats().liveBytes) : 0;
      const res = await call();
      if (gpu) r.measuredBytes = Math.max(0, gpu.mod.bufferStats().peakBytes - before - gpu.ioBytes);
      return res.out.data;
    },
    async time() {
      const s = performance.now();
      await call();
      return performance.now() - s;
    },
  };
  return r;
}

/** GPU-resident q, k, v and out/lse destinations of one case, shared by every WebGPU runner. */
export interface GpuIO {
  readonly q: GpuTensor;
  readonly k: GpuTensor;
  readonly v: GpuTensor;
  readonly out: GpuTensor;
  readonly lse: GpuTensor;
  /** Bytes of the five. */
  readonly bytes: number;
  release(): void;
}

export async function uploadCase(t: GpuTarget, p: AttnProblem, inputs: { q: Tensor; k: Tensor; v: Tensor }): Promise<GpuIO> {
  const { gpu, ctx } = t;
  const up = (x: Float32Array, shape: number[]) => gpu.toGpu(x, shape, ctx);
  const q = await up(inputs.q.data, [p.qRows, p.heads, p.dim]);
  const k = await up(inputs.k.data, [p.kRows, p.kvHeads, p.dim]);
  const v = await up(inputs.v.data, [p.kRows, p.kvHeads, p.dimV]);
  const out = await up(new Float32Array(p.qRows * p.heads * p.dimV), [p.qRows, p.heads, p.dimV]);
  const lse = await up(new Float32Array(p.qRows * p.heads), [p.qRows, p.heads]);
  const all = [q, k, v, out, lse];
  return { q, k, v, out, lse, bytes: all.reduce((n, x) => n + x.buffer.size, 0), release: () => all.forEach(gpu.releaseTensor) };
}

type TensorCall = (p: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, o: KernelOptions) => Promise<{ out: GpuTensor; lse: GpuTensor }>;

/**
 * A kernel on the case's GPU tensors, writing into the shared destinations. Timed by timestamps
 * when the device has them and the kernel recorded a pass in the checked run, else (or when `wall`)
 * by wall-clock until the queue is idle.
 */
export function tensorRunner(t: GpuTarget, io: GpuIO, problem: AttnProblem, call: TensorCall, wall = false): Runner {
  const { gpu, ctx } = t;
  const timer = !wall && gpu.GpuTimer.supported(ctx) ? new gpu.GpuTimer(ctx) : undefined;
  const dest = { out: io.out, lse: io.lse };
  const r: Runner = {
    timing: timer ? 'gpu-ts' : 'wall-gpu',
    async check() {
      gpu.resetPeakBytes();
      const before = gpu.bufferStats().liveBytes;
      await call(problem, io.q, io.k, io.v, { ...dest, poison: true, ...(timer ? { timer } : {}) });
      r.measuredBytes = gpu.bufferStats().peakBytes - before;
      if (timer) {
        const passes = timer.passes;
        await timer.read();
        if (passes === 0) r.timing = 'wall-gpu'; // nothing dispatched (an empty problem): nothing to time on the GPU
      }
      return gpu.fromGpu(io.out, ctx);
    },
    async time() {
      if (r.timing === 'gpu-ts') {
        await call(problem, io.q, io.k, io.v, { ...dest, timer: timer! });
        return timer!.read();
      }
      const s = performance.now();
      await call(problem, io.q, io.k, io.v, dest);
      await ctx.device.queue.onSubmittedWorkDone();
      return performance.now() - s;
    },
    dispose: () => timer?.destroy(),
  };
  return r;
}
