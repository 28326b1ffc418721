import type { CommonOptions, Result } from './api.js';
import { naSoftmax, windowVolume } from './cpu/na.js';
import { runKernel, shared, sharedZeros } from './cpu/pool.js';
import type { KernelKind } from './cpu/kernels.js';
import type { AttnProblem } from './problem.js';
import { check } from './errors.js';
import { type Tensor, dtypeOf, numel } from './tensor.js';
import { checkDest, checkGpuDest } from './validate.js';
import type { GpuTensor } from './webgpu/tensor.js';

/** Kernel families a neighborhood call may ask for. */
export type Impl = 'fused' | 'naive' | 'unfused';

const roughFlops = (p: AttnProblem): number => 4 * p.qRows * p.heads * (p.dim + p.dimV) * Math.min(p.kRows, 256);

function finish(problem: AttnProblem, out: Float32Array, lse: Float32Array, lead: number[], opts: CommonOptions): Result {
  const dOut = checkDest(opts.out, out.length, 'out');
  const dLse = checkDest(opts.lse, lse.length, 'lse');
  if (dOut) dOut.set(out);
  if (dLse) dLse.set(lse);
  return {
    out: { data: dOut ?? out, shape: [...lead, problem.heads, problem.dimV] },
    lse: { data: dLse ?? lse, shape: [...lead, problem.heads] },
  };
}

export interface GpuResult {
  out: GpuTensor;
  lse: GpuTensor;
}

/**
 * Runs one kernel family on GPU tensors (the WebGPU backend); the results stay on the device, in
 * the caller's `out`/`lse` GPU tensors when given. Nothing is read back.
 */
export async function runGpuTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, lead: number[], opts: CommonOptions, kind: GpuKind): Promise<GpuResult> {
  const out = checkGpuDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out', dtypeOf(q));
  const lse = checkGpuDest(opts.lse, problem.qRows * problem.heads, 'lse', 'f32');
  const gpu = await import('./webgpu/index.js');
  const run = kind === 'fused' ? gpu.runWebGPUFusedTensors : kind === 'naive' ? gpu.runWebGPUNaiveTensors : gpu.runWebGPUUnfusedTensors;
  const r = await run(problem, q, k, v, { ...(out ? { out } : {}), ...(lse ? { lse } : {}) });
  return { out: { ...r.out, shape: [...lead, problem.heads, problem.dimV] }, lse: { ...r.lse, shape: [...lead, problem.heads] } };
}

/** Kernel families the WebGPU backend has (all of them). */
export type GpuKind = Impl;

export type Backend = 'cpu' | 'webgpu';

/**
 * Runs one kernel family on the WebGPU backend (host arrays in and out). The backend module is
 * imported on first use, so CPU-only users never load it.
 */
export async function runProblemWebGPU(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions, kind: GpuKind): Promise<Result> {
  checkDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out');
  checkDest(opts.lse, problem.qRows * problem.heads, 'lse');
  const gpu = await import('./webgpu/index.js');
  const run = kind === 'fused' ? gpu.runWebGPUFused : kind === 'naive' ? gpu.runWebGPUNaive : gpu.runWebGPUUnfused;
  const { out, lse } = await run(problem, q.data, k.data, v.data);
  return finish(problem, out, lse, lead, opts);
}

/** Runs one kernel family on the CPU backend; inputs are shared with worker threads, outputs fresh. */
export async function runProblem(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions, kind: KernelKind): Promise<Result> {
  checkDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out');
  checkDest(opts.lse, problem.qRows * problem.heads, 'lse');
  const out = sharedZeros(problem.qRows * problem.heads * problem.dimV);
  const lse = sharedZeros(problem.qRows * problem.heads).fill(-Infinity);
  await runKernel(kind, problem, { q: shared(q.data), k: shared(k.data), v: shared(v.data), out, lse }, roughFlops(problem));
  return finish(problem, out, lse, lead, opts);
}

/** NATTEN's unfused pipeline: naQK (GEMM over each tile's key box), softmax, naAV (GEMM again). */
export async function runUnfused(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions, backend: Backend): Promise<Result> {
  if (backend === 'webgpu') return runProblemWebGPU(problem, q, k, v, lead, opts, 'unfused');
  checkDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out');
  checkDest(opts.lse, problem.qRows * problem.heads, 'lse');
  const wv = windowVolume(problem);
  const attn = sharedZeros(problem.qRows * problem.heads * wv);
  const out = sharedZeros(problem.qRows * problem.heads * problem.dimV);
  const lse = sharedZeros(problem.qRows * problem.heads);
  const bufs = { q: shared(q.data), k: shared(k.data), v: shared(v.data), out, lse, attn };
  await runKernel('naQK', problem, bufs, roughFlops(problem));
  naSoftmax(attn, problem.qRows * problem.heads, wv, lse);
  await runKernel('naAV', problem, bufs, roughFlops(problem));
  return finish(problem, out, lse, lead, opts);
}

/** NATTEN's qk op: scores [rows, H, prod(kernelSize)] (-inf where a slot has no key) and each row's LSE. */
export async function naQKOnly(problem: AttnProblem, q: Tensor, k: Tensor, lead: number[], opts: CommonOptions, backend: Backend): Promise<Result> {
  const wv = windowVolume(problem);
  const n = problem.qRows * problem.heads;
  checkDest(opts.out, n * wv, 'out');
  checkDest(opts.lse, n, 'lse');
  let attn: Float32Array;
  let lse: Float32Array;
  if (backend === 'webgpu') {
    const gpu = await import('./webgpu/index.js');
    ({ attn, lse } = await gpu.runWebGPUNaQK(problem, q.data, k.data));
  } else {
    attn = sharedZeros(n * wv);
    const empty = sharedZeros(0);
    await runKernel('naQK', problem, { q: shared(q.data), k: shared(k.data), v: empty, out: empty, lse: empty, attn }, roughFlops(problem));
    lse = new Float32Array(n);
    for (let r = 0; r < n; r++) {
      let mx = -Infinity;
      for (let j = 0; j < wv; j++) mx = Math.max(mx, attn[r * wv + j]!);
      let s = 0;
      for (let j = 0; j < wv; j++) s += Math.exp(attn[r * wv + j]! - mx);
      lse[r] = mx + Math.log(s);
    }
  }
  const dOut = checkDest(opts.out, n * wv, 'out');
  const dLse = checkDest(opts.lse, n, 'lse');
  if (dOut) dOut.set(attn);
  if (dLse) dLse.set(lse);
  return { out: { data: dOut ?? attn, shape: [...lead, problem.heads, wv] }, lse: { data: dLse ?? lse, shape: [...lead, problem.heads] } };
}

/** NATTEN's av op: weights [rows, H, prod(kernelSize)] times V over each window. */
export async function naAVOnly(problem: AttnProblem, attn: Tensor, v: Tensor, lead: number[], opts: CommonOptions, backend: Backend): Promise<{ out: Tensor }> {
  const n = problem.qRows * problem.heads;
  checkDest(opts.out, n * problem.dimV, 'out');
  let out: Float32Array;
  if (backend === 'webgpu') {
    const gpu = await import('./webgpu/index.js');
    out = await gpu.runWebGPUNaAV(problem, attn.data, v.data);
  } else {
    out = sharedZeros(n * problem.dimV);
    const empty = sharedZeros(0);
    await runKernel('naAV', problem, { q: empty, k: empty, v: shared(v.data), out, lse: empty, attn: shared(attn.data) }, roughFlops(problem));
  }
  const dOut = checkDest(opts.out, out.length, 'out');
  if (dOut) dOut.set(out);
  return { out: { data: dOut ?? out, shape: [...lead, problem.heads, problem.dimV] } };
}
