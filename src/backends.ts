import { throwIfAborted } from './abort.js';
import type { CommonOptions, Result } from './options.js';
import { windowVolume } from './cpu/na.js';
import { type MainStep, runJob } from './cpu/pool.js';
import { type KernelKind, type Slot, cpuFusedTiles } from './cpu/layout.js';
import { headLanesFit, lanesRpb, rowsOfLanesRpb } from './cpu/na-lanes.js';
import { unrotateRows } from './rope.js';
import { type NonFinite, poisonRows, screenInputs, screenProblemBias } from './nonfinite.js';
import type { AttnProblem } from './problem.js';
import { type Tensor, dtypeOf } from './tensor.js';
import { checkDest, checkGpuDest } from './validate.js';
import type { GpuTensor } from './webgpu/tensor.js';

/** Kernel families a neighborhood call may ask for. */
export type Impl = 'fused' | 'naive' | 'unfused';

/**
 * A job's size for the pool's inline-or-workers choice (pool.ts DEFAULT_INLINE_FLOPS): keys per
 * query up to 256, or a neighborhood's window (the 256 made a 16x16 k7 call look as large as dense
 * N=128, where it runs 1.44x faster on the calling thread than through the workers).
 */
const roughFlops = (p: AttnProblem): number => {
  const keys = p.pattern.kind === 'neighborhood' ? p.pattern.kernelSize.reduce((a, b) => a * b, 1) : 256;
  return 4 * p.qRows * p.heads * (p.dim + p.dimV) * Math.min(p.kRows, keys);
};

function finish(problem: AttnProblem, out: Float32Array, lse: Float32Array, lead: number[], opts: CommonOptions): Result {
  const dOut = checkDest(opts.out, out.length, 'out');
  const dLse = checkDest(opts.lse, lse.length, 'lse');
  // (a job that copied straight into the destinations hands back the destinations themselves)
  if (dOut && dOut !== out) dOut.set(out);
  if (dLse && dLse !== lse) dLse.set(lse);
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
  // the kernels apply the non-finite policy to GPU-tensor q, k, v and to bias and rpb entries themselves (no read-back)
  const r = await run(problem, q, k, v, { ...(out ? { out } : {}), ...(lse ? { lse } : {}), screen: true });
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
  // the same non-finite policy as the CPU: screened inputs in, rows that read them NaN out
  // q, k, v and bias screened on the host as on the CPU; rpb entries by the kernels' screen
  const s = screenInputs(problem, q.data, k.data, v.data);
  const { out, lse } = await run(s.problem, s.q, s.k, s.v, { screen: problem.rpb !== undefined });
  if (s.bad) applyPolicy(problem, s.bad, out, lse);
  return finish(problem, out, lse, lead, opts);
}

/** Applies the non-finite policy to host results when anything was flagged. */
function applyPolicy(problem: AttnProblem, bad: NonFinite, out: Float32Array, lse: Float32Array): void {
  if (bad.q || bad.k || bad.v || bad.bias) poisonRows(problem, bad, out, lse);
}

/** Runs one kernel family on the CPU backend: a job of the engine's scheduler, outputs fresh. */
export async function runProblem(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions, kind: KernelKind): Promise<Result> {
  const dOut = checkDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out');
  const dLse = checkDest(opts.lse, problem.qRows * problem.heads, 'lse');
  const bad: NonFinite = {};
  const screened = screenProblemBias(problem, bad);
  const tuned = kind === 'fused' && opts.tile === undefined ? cpuFusedTiles(screened) : screened;
  // fused neighborhoods with heads in fours: heads in the lanes (cpu/na-lanes.ts), q, k, v regrouped first
  const lanes = kind === 'fused' && headLanesFit(tuned);
  const phases: KernelKind[] = lanes ? ['lanes', 'naLanes'] : [kind];
  // head lanes read the rpb table regrouped like q, k and v
  const job = lanes && tuned.rpb ? { ...tuned, rpb: { ...tuned.rpb, data: lanesRpb(tuned.rpb.data, tuned.heads) } } : tuned;
  const into = { ...(dOut ? { out: dOut } : {}), ...(dLse ? { lse: dLse } : {}) };
  const r = await runJob({ problem: job, phases, inputs: { q: q.data, k: k.data, v: v.data }, outputs: ['out', 'lse'], into, flops: roughFlops(problem), screen: true, screenInPhase: lanes, signal: opts.signal, ...(lanes ? { phasesFill: ['out', 'lse'] as Slot[] } : {}) });
  applyPolicy(problem, { ...bad, ...r.nonFinite }, r.out!, r.lse!);
  return finish(problem, r.out!, r.lse!, lead, opts);
}

/** The unfused pipeline's middle step, on the calling thread: softmax over each window, lse = m + log l. */
const softmaxStep =
  (rows: number, wv: number, normalize: boolean): MainStep =>
  (K, f32, lay) => {
    // row max and sum go in thread 0's scratch (idle between phases), as many rows at a time as fit
    const m = lay.scratch;
    const chunk = Math.max(1, Math.floor(lay.scratchBytes / 8));
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      K.softmaxRows(lay.slots.attn + r0 * wv * 4, n, wv, m, m + n * 4, normalize ? 1 : 0);
      for (let r = 0; r < n; r++) {
        const l = f32[(m >> 2) + n + r]!;
        f32[(lay.slots.lse >> 2) + r0 + r] = l > 0 ? f32[(m >> 2) + r]! + Math.log(l) : l === 0 ? -Infinity : NaN;
      }
    }
  };

/** NATTEN's unfused pipeline on the CPU: naQK (GEMM over each tile's key box), softmax, naAV (GEMM again). */
export async function runUnfused(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions): Promise<Result> {
  checkDest(opts.out, problem.qRows * problem.heads * problem.dimV, 'out');
  checkDest(opts.lse, problem.qRows * problem.heads, 'lse');
  const wv = windowVolume(problem);
  const rows = problem.qRows * problem.heads;
  const r = await runJob({
    problem,
    phases: ['naQK', softmaxStep(rows, wv, true), 'naAV'],
    inputs: { q: q.data, k: k.data, v: v.data },
    outputs: ['out', 'lse'],
    temps: ['attn'],
    windowVolume: wv,
    flops: roughFlops(problem),
    screen: true,
    signal: opts.signal,
  });
  applyPolicy(problem, r.nonFinite ?? {}, r.out!, r.lse!);
  return finish(problem, r.out!, r.lse!, lead, opts);
}

/** NATTEN's qk op: scores [rows, H, prod(kernelSize)] (-inf where a slot has no key) and each row's LSE. */
export async function naQKOnly(problem: AttnProblem, q: Tensor, k: Tensor, lead: number[], opts: CommonOptions, backend: Backend): Promise<Result> {
  throwIfAborted(opts.signal);
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
    const r = await runJob({ problem, phases: ['naQK', softmaxStep(n, wv, false)], inputs: { q: q.data, k: k.data }, outputs: ['attn', 'lse'], windowVolume: wv, flops: roughFlops(problem), signal: opts.signal });
    attn = r.attn!;
    lse = r.lse!;
  }
  const dOut = checkDest(opts.out, n * wv, 'out');
  const dLse = checkDest(opts.lse, n, 'lse');
  if (dOut) dOut.set(attn);
  if (dLse) dLse.set(lse);
  return { out: { data: dOut ?? attn, shape: [...lead, problem.heads, wv] }, lse: { data: dLse ?? lse, shape: [...lead, problem.heads] } };
}

/** Gradients of one attention call, flat like their tensors. */
export interface HostGrads {
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
  drpb?: Float32Array;
  dbias?: Float32Array;
}

/**
 * The backward on the CPU backend: one pass over query tiles (dQ per tile, dK, dV and drpb into
 * per-thread partials), then the partials summed in thread order and dK rotated back when the
 * problem has RoPE. Inputs: q, k, v, the forward's out and lse, and dOut.
 */
export async function runBackwardCpu(problem: AttnProblem, t: BackwardInputs, opts: CommonOptions, dbias = false): Promise<HostGrads> {
  const tuned = opts.tile === undefined ? cpuFusedTiles(problem) : problem;
  const { kRows, kvHeads: Hk, dim: D, dimV: DV } = problem;
  const rpbLen = problem.rpb?.data.length ?? 0;
  const biasLen = dbias ? (problem.bias?.data.length ?? 0) : 0;
  // neighborhoods with heads in fours: heads in the lanes, k and v (and the dK, dV partials) regrouped
  const lanes = headLanesFit(tuned); // the same conditions as the forward's
  const reduce: MainStep = (K, f32, lay) => {
    const pairs: [Slot, Slot, number][] = [['dkp', 'dk', kRows * Hk * D], ['dvp', 'dv', kRows * Hk * DV], ['drpbp', 'drpb', rpbLen], ['dbiasp', 'dbias', biasLen]];
    for (const [part, dst, n] of pairs) {
      if (lay.slots[dst] < 0 || n === 0) continue;
      f32.fill(0, lay.slots[dst] >> 2, (lay.slots[dst] >> 2) + n);
      for (let th = 0; th < lay.threads; th++) K.addInto(lay.slots[dst], lay.slots[part] + th * lay.partialBytes[part]!, n);
    }

    if (problem.rope) {
      // dK was summed in the rotated frame of each key's position: turn it back
      for (const span of problem.seqs) {
        const nq = span.qGrid.reduce((a, b) => a * b, 1);
        const nk = span.kGrid.reduce((a, b) => a * b, 1);
        const pos = Int32Array.from({ length: nk * Hk }, (_, i) => Math.floor(i / Hk) + Math.max(0, nq - nk));
        const base = (lay.slots.dk >> 2) + span.kOff * Hk * D;
        unrotateRows(problem.rope, f32.subarray(base, base + nk * Hk * D), nk * Hk, D, pos);
      }
    }
  };
  // drpb partials summed in thread order in the lane layout [H/4][vol][4], then put back to [H][vol]
  const lanesDrpb: MainStep = (K, f32, lay) => {
    const at = lay.slots.drpb >> 2;
    f32.fill(0, at, at + rpbLen);
    for (let th = 0; th < lay.threads; th++) K.addInto(lay.slots.drpb, lay.slots.drpbp + th * lay.partialBytes.drpbp!, rpbLen);
    f32.set(rowsOfLanesRpb(f32.slice(at, at + rpbLen), problem.heads), at);
  };
  const r = await runJob({
    // head lanes read the rpb table regrouped like k and v
    problem: lanes && tuned.rpb ? { ...tuned, rpb: { ...tuned.rpb, data: lanesRpb(tuned.rpb.data, tuned.heads) } } : tuned,
    // head lanes: dK and dV summed and put back in rows by the workers ('lanesReduce'), drpb (small) here
    phases: lanes ? ['lanes', 'naLanesBwd', 'lanesReduce', ...(rpbLen ? [lanesDrpb] : [])] : ['backward', reduce],
    inputs: { q: t.q, k: t.k, v: t.v, out: t.out, lse: t.lse, dout: t.dout },
    outputs: ['dq', 'dk', 'dv', ...(rpbLen ? (['drpb'] as const) : []), ...(biasLen ? (['dbias'] as const) : [])],
    temps: ['dkp', 'dvp', ...(rpbLen ? (['drpbp'] as const) : []), ...(biasLen ? (['dbiasp'] as const) : [])],
    ...(lanes ? { phasesFill: ['dk', 'dv', 'dkp', 'dvp'] as Slot[] } : {}),
    flops: 2.5 * roughFlops(problem),
    signal: opts.signal,
  });
  return { dq: r.dq!, dk: r.dk!, dv: r.dv!, ...(r.drpb ? { drpb: r.drpb } : {}), ...(r.dbias ? { dbias: r.dbias } : {}) };
}

/** NATTEN's av op: weights [rows, H, prod(kernelSize)] times V over each window. */
export async function naAVOnly(problem: AttnProblem, attn: Tensor, v: Tensor, lead: number[], opts: CommonOptions, backend: Backend): Promise<{ out: Tensor }> {
  throwIfAborted(opts.signal);
  const n = problem.qRows * problem.heads;
  checkDest(opts.out, n * problem.dimV, 'out');
  let out: Float32Array;
  if (backend === 'webgpu') {
    const gpu = await import('./webgpu/index.js');
    out = await gpu.runWebGPUNaAV(problem, attn.data, v.data);
  } else {
    const wv = windowVolume(problem);
    out = (await runJob({ problem, phases: ['naAV'], inputs: { v: v.data, attn: attn.data }, outputs: ['out'], windowVolume: wv, flops: roughFlops(problem), signal: opts.signal })).out!;
  }
  const dOut = checkDest(opts.out, out.length, 'out');
  if (dOut) dOut.set(out);
  return { out: { data: dOut ?? out, shape: [...lead, problem.heads, problem.dimV] } };
}

// ---------------------------------------------------------------------------------------------
// One backend interface and one chooser (design.md 9; NATTEN's choose_backend).

/** A backend as the API sees it: whether it runs a kernel family on a problem here, and the run. */
export interface AttentionBackend {
  readonly name: Backend;
  /** true, or the reason this backend cannot run `kind` on `problem` here. */
  canRun(problem: AttnProblem, kind: Impl): Promise<true | string>;
  /** Why 'auto' should pass over it even though it can run (WebGPU on a software adapter), or undefined. */
  passOver(): Promise<string | undefined>;
  run(kind: Impl, problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, lead: number[], opts: CommonOptions): Promise<Result>;
  /** The fused backward on host arrays (FlashAttention-2, from the forward's out and lse). */
  backward(problem: AttnProblem, t: BackwardInputs, opts: CommonOptions, dbias: boolean): Promise<HostGrads>;
}

/** The host arrays a backward takes: the forward's inputs and outputs, and dOut. */
export interface BackwardInputs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  out: Float32Array;
  lse: Float32Array;
  dout: Float32Array;
}

export const cpuBackend: AttentionBackend = {
  name: 'cpu',
  canRun: async () => true,
  passOver: async () => undefined,
  run: (kind, problem, q, k, v, lead, opts) => (kind === 'unfused' ? runUnfused(problem, q, k, v, lead, opts) : runProblem(problem, q, k, v, lead, opts, kind)),
  backward: (problem, t, opts, dbias) => runBackwardCpu(problem, t, opts, dbias),
};

export const webgpuBackend: AttentionBackend = {
  name: 'webgpu',
  async canRun(problem, kind) {
    const gpu = await import('./webgpu/index.js');
    const avail = await gpu.webgpuAvailable();
    if (avail !== true) return avail;
    const ctx = await gpu.getContext();
    return kind === 'fused' ? gpu.fusedCanRun(problem, ctx.limits) : kind === 'naive' ? gpu.naiveCanRun(problem) : gpu.unfusedCanRun(problem, ctx.limits);
  },
  async passOver() {
    const { getContext } = await import('./webgpu/index.js');
    const ctx = await getContext();
    return ctx.adapterClass === 'gpu' ? undefined : `the adapter is a software one (${ctx.description})`;
  },
  run: (kind, problem, q, k, v, lead, opts) => runProblemWebGPU(problem, q, k, v, lead, opts, kind),
  async backward(problem, t, _opts, dbias) {
    const gpu = await import('./webgpu/index.js');
    // gradients poisoned first, as on the CPU: an element no pass writes cannot pass as a gradient
    return gpu.runWebGPUBackward(problem, t, { dbias, poison: true });
  },
};

/** 'auto' tries these in order. */
const PRIORITY: readonly AttentionBackend[] = [webgpuBackend, cpuBackend];

/**
 * The backend a call runs on, and why 'auto' skipped the ones before it. An explicit choice is
 * kept (its kernels then report what they cannot do); unset is the CPU.
 */
export async function chooseBackend(pref: Backend | 'auto' | undefined, problem: AttnProblem, kind: Impl): Promise<{ backend: AttentionBackend; skipped: { name: Backend; reason: string }[] }> {
  if (pref !== 'auto') return { backend: pref === 'webgpu' ? webgpuBackend : cpuBackend, skipped: [] };
  const skipped: { name: Backend; reason: string }[] = [];
  for (const b of PRIORITY) {
    const can = await b.canRun(problem, kind);
    const reason = can === true ? await b.passOver() : can;
    if (reason === undefined) return { backend: b, skipped };
    skipped.push({ name: b.name, reason });
  }
  return { backend: cpuBackend, skipped };
}
