/// <reference types="@webgpu/types" />
import { prod } from '../patterns/geometry.js';
import { TilewiseError } from '../errors.js';
import { type AttnProblem, ItemSpace, tileFor } from '../problem.js';
import { BufferUsage, type GpuContext, type GpuLimits } from './device.js';
import { type AnalyticPlan, analyticPlan, maskBitsFit, zeroAnalytic } from './analytic.js';
import { type ChunkPlan, chunkPlan, zeroChunks } from './chunks.js';
import { problemFields } from './tile-wgsl.js';
import { FUSED_UNIFORMS, type FusedSpec, blockingOf, fusedProgram, fusedWorkgroupBytes, threadsOf } from './fused-wgsl.js';
import { buildGpuSchedule } from './schedule.js';
import { permuteLaunch, permuteProgram } from './permute.js';
import { type KernelOptions, type Launch, type TensorKernel, bindingsFit, gridFor, ioBindingSizes, launchAttn, onDevice, onHost, rpbLayout, storesF16, uniformBuffer } from './run.js';
import { type GpuDType, type GpuTensor, bindingBytes, createBuffer, dtypeOf, uploadBuffer, writeData } from './tensor.js';
import { getPipeline } from './wgsl.js';

/**
 * Fused attention forward on WebGPU: plans tiles from the device limits, then runs the one fused
 * template (fused-wgsl.ts) over every work item, with its schedule computed in the kernel where the
 * pattern is analytic (analytic.ts) or built on the CPU and uploaded (schedule.ts), optionally on
 * token-permuted copies of q, k and v (permute.ts).
 */

/** Tile shapes and kernel constants for a problem on a device, all from the device limits. */
export interface FusedPlan {
  readonly spec: FusedSpec;
  /** The problem with the GPU's tile shapes (what the schedule is built from). */
  readonly problem: AttnProblem;
  readonly rank: number;
  /** Present when the kernel computes the schedule itself (spec.schedule 'analytic'). */
  readonly analytic?: AnalyticPlan;
  /** Present when the kernel walks the chunk lists itself (spec.schedule 'chunks'). */
  readonly chunks?: ChunkPlan;
}

/** Cuts the largest axis until the tile holds at most `cap` points. */
export function fitTile(tile: readonly number[], cap: number): number[] {
  const t = [...tile];
  while (prod(t) > cap) {
    let a = 0;
    for (let i = 1; i < t.length; i++) if (t[i]! > t[a]!) a = i;
    const rest = prod(t) / t[a]!;
    const fit = Math.floor(cap / rest);
    t[a] = fit >= 1 && fit < t[a]! ? fit : Math.max(1, Math.ceil(t[a]! / 2));
  }
  return t;
}

/**
 * Blocking knobs: rows per thread and threads per row (register blocking; 1 and 1 give one thread
 * per query row), caps on the query rows and staged keys of a work item, and whether loops are
 * unrolled. Data per adapter class, not code (style.md 2); `setFusedTuning` overrides them
 * (benchmarks, tests), and a tuning stored per adapter by `tilewise profile --tune` replaces the
 * table row (tuning.ts). CPU adapters, measured on llvmpipe (2 cores, B1 N1024 H4 D64 dense): 8x2
 * micro-tiles 362 ms, 4x4 unrolled 454 ms, one thread per row 916 ms; unrolled loops compile
 * about 3.5x slower there for the same run time. GPU adapters: the winner of `profile --tune` on the
 * H100 (dense B1 N4096 H32 D64, BENCHMARKS.md): 2 rows x 4 threads per row, 128 threads, exchange
 * through workgroup memory: 21.7 ms against 52.5 ms for the earlier, unmeasured 4 x 4 row with
 * subgroup shuffles (the shuffles alone made it 2x slower there).
 */
export interface FusedTuning {
  readonly rm: number;
  readonly tx: number;
  readonly maxRows: number;
  readonly maxKeys: number;
  readonly unroll: boolean;
  /** Use subgroup shuffles where the adapter allows (fused-wgsl.ts); false keeps workgroup memory. Default true. */
  readonly subgroups?: boolean;
  /** Compute analytic schedules in the kernel (analytic.ts); false uploads every schedule. Default true. */
  readonly analytic?: boolean;
  /**
   * Permute q, k and v into tile-contiguous layouts first (permute.ts) for neighborhoods on 2-3
   * axes or with dilation, with in-kernel schedules. Default false: see BENCHMARKS.md.
   */
  readonly permute?: boolean;
  /**
   * With `permute` unset: permute neighborhoods whose window holds at least this many keys. No
   * built-in row sets it: with the GPU's clocks held up (H200, 2-D 128x128 H16 D64) the permuted
   * layout was slower at both kernel 13 (6.30 vs 5.90 ms) and 31 (17.46 vs 16.87); the H100's earlier
   * "17.5 vs 41 ms" at 31 came from timing the plain layout at idle clocks.
   */
  readonly permuteFrom?: number;
  /** Odd row strides for the workgroup tiles (TileSpec.pad). Default false. */
  readonly pad?: boolean;
}

/** Keys in one query's window when the pattern is a neighborhood (else 0). */
const windowKeys = (p: AttnProblem): number => (p.pattern.kind === 'neighborhood' ? prod(p.pattern.kernelSize) : 0);

export const FUSED_TUNING: Readonly<Record<'cpu' | 'gpu', FusedTuning>> = {
  // H100 sweeps (BENCHMARKS.md, stop 16): odd row strides 1.50-1.59x on every case; padded, 4x8 then 2x8 (256
  // threads) were faster again (2x8 1.17-1.22x over 4x8 on dense, causal, 2-D and 3-D NA)
  gpu: { rm: 2, tx: 8, maxRows: 64, maxKeys: 32, unroll: true, subgroups: false, pad: true },
  cpu: { rm: 8, tx: 2, maxRows: 32, maxKeys: 32, unroll: false },
};
let override: Partial<FusedTuning> | undefined;

/** Overrides the tuning (table and stored file alike) for every adapter (undefined: back to them). */
export function setFusedTuning(t: Partial<FusedTuning> | undefined): void {
  override = t;
}

/**
 * The tuning a kernel uses, most specific first: the `setFusedTuning` override, the tuning stored
 * for this adapter (tuning.ts, read at device acquisition), the table row of its class.
 */
export function resolveTuning(adapterClass: 'cpu' | 'gpu', stored?: FusedTuning, over?: Partial<FusedTuning>): FusedTuning {
  return { ...(stored ?? FUSED_TUNING[adapterClass]), ...(over ?? {}) };
}

export const tuningFor = (ctx: Pick<GpuContext, 'adapterClass' | 'tuning'>): FusedTuning => resolveTuning(ctx.adapterClass, ctx.tuning, override);

const largestDivisor = (n: number, cap: number): number => {
  for (let d = Math.min(n, cap); d > 1; d--) if (n % d === 0) return d;
  return 1;
};

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

/** Whether the padded permuted copies of q, k and v (permute.ts) fit one storage binding each. */
function permutedFit(p: AttnProblem, an: AnalyticPlan, limits: GpuLimits, f16: boolean): boolean {
  const B = p.seqs.length;
  const bytes = f16 ? 2 : 4;
  const sizes = [B * an.qPad * p.heads * p.dim, B * an.kPad * p.kvHeads * Math.max(p.dim, p.dimV)].map((n, i) => [String(i), n * bytes] as const);
  return bindingsFit(sizes, limits) === true;
}

export function planFused(problem: AttnProblem, limits: GpuLimits, tune: FusedTuning = tuningFor({ adapterClass: 'gpu' }), subgroupMinSize = 0, f16 = false, screen = false): FusedPlan {
  const rank = problem.seqs.length > 0 ? new ItemSpace({ ...problem, seqs: problem.seqs.slice(0, 1) }).pattern(0).geometry.qShape.length : 1;
  const { dim, dimV } = problem;
  const maxThreads = Math.min(limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX);
  const budget = limits.maxComputeWorkgroupStorageSize;
  // Largest query tile (then key tile) under the caps whose workgroup memory fits the device.
  for (let rowCap = tune.maxRows; rowCap >= 1; rowCap = Math.floor(rowCap / 2)) {
    // 'selected' RoPE: query tiles must stay inside one chunk-list tile, so cut to a divisor (rank 1)
    const qTile = problem.rope?.positions === 'selected' ? [largestDivisor(tileFor(problem.qTile, rank)[0]!, rowCap)] : fitTile(tileFor(problem.qTile, rank), rowCap);
    const nq = prod(qTile);
    const rm = Math.min(tune.rm, nq);
    const rows = roundUp(nq, rm);
    for (let keyCap = tune.maxKeys; keyCap >= 1; keyCap = Math.floor(keyCap / 2)) {
      const kvTile = fitTile(tileFor(problem.kvTile, rank), keyCap);
      const nk = prod(kvTile);
      const tx = Math.min(tune.tx, nk);
      const keys = roundUp(nk, tx);
      const tiled = { ...problem, qTile, kvTile };
      const analytic = tune.analytic === false ? undefined : analyticPlan(tiled);
      const chunks = tune.analytic === false || analytic ? undefined : chunkPlan(tiled, keys);
      const spec: FusedSpec = {
        ...problemFields(problem),
        rows,
        keys,
        rm,
        tx,
        unroll: tune.unroll,
        // one lane per row needs no exchange at all; else the row's lanes must share a subgroup
        subgroups: tune.subgroups !== false && (tx === 1 || ((tx & (tx - 1)) === 0 && tx <= subgroupMinSize)),
        f16,
        ...(screen ? { screen: true } : {}),
        ...(tune.pad ? { pad: true } : {}),
        schedule: analytic ? 'analytic' : chunks ? 'chunks' : 'list',
        rank,
        permute: (tune.permute ?? (tune.permuteFrom !== undefined && windowKeys(problem) >= tune.permuteFrom)) && analytic !== undefined && analytic.permutable && permutedFit(problem, analytic, limits, f16),
        ...(analytic && maskBitsFit(kvTile) ? { maskBits: true } : {}),
      };
      if (fusedWorkgroupBytes(spec) <= budget && threadsOf(spec) <= maxThreads) return { spec, problem: tiled, rank, ...(analytic ? { analytic } : {}), ...(chunks ? { chunks } : {}) };
    }
  }
  throw new TilewiseError('dim', 'head dims are too large for this device’s workgroup memory', `${dim}+${dimV} with ${budget} bytes`);
}

/** Whether the fused kernel can run `problem` on a device with these limits: true, or the reason. */
export function fusedCanRun(problem: AttnProblem, limits: GpuLimits, dtype: GpuDType = 'f32'): true | string {
  const { dim: D, dimV: DV } = problem;
  const fit = bindingsFit(
    [
      ...ioBindingSizes(problem, dtype),
      ['bias + rpb + RoPE table', 4 * ((problem.bias?.data.length ?? 0) + (problem.rpb?.data.length ?? 0) + (problem.rope?.table.length ?? 0))],
    ],
    limits,
  );
  if (fit !== true) return fit;
  if (fusedWorkgroupBytes({ dim: D, dimV: DV, rows: 1, keys: 1, tx: 1, subgroups: true }) > limits.maxComputeWorkgroupStorageSize)
    return `head dims ${D}+${DV} need more than the ${limits.maxComputeWorkgroupStorageSize} bytes of workgroup memory`;
  return true;
}

export type FusedGpuOptions = KernelOptions;

/**
 * Fused forward on GPU tensors: q [qRows, H, D], k [kRows, Hk, D], v [kRows, Hk, Dv] in, out
 * [qRows, H, Dv] and lse [qRows, H] (rows with no allowed key: 0 and -inf) out. Nothing is read back.
 */
export function runWebGPUFusedTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions = {}): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  return onDevice(fusedKernel, problem, q, k, v, opts);
}

/**
 * Fused attention forward on the WebGPU device for any pattern the CPU supports: uploads q, k, v,
 * runs the kernel, reads out [qRows, H, Dv] and lse [qRows, H] back.
 */
export function runWebGPUFused(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array, opts: { poison?: boolean; screen?: boolean } = {}): Promise<{ out: Float32Array; lse: Float32Array }> {
  return onHost(fusedKernel, problem, q, k, v, opts);
}

const fusedKernel: TensorKernel = async (ctx, problem, q, k, v, opts) => {
  const { device, limits } = ctx;
  const f16 = storesF16(ctx, q, 'q');
  const why = fusedCanRun(problem, limits, dtypeOf(q));
  if (why !== true) throw new TilewiseError('webgpu', 'cannot run this problem', why);
  const plan = planFused(problem, limits, tuningFor(ctx), ctx.subgroupMinSize, f16, opts.screen === true);
  const rpb = problem.rpb ? rpbLayout(problem.rpb.kernel) : undefined;
  const rope = problem.rope;
  const an = plan.analytic;
  const ch = plan.chunks;
  // an uploaded schedule only when the kernel cannot compute it
  const sched = an || ch ? undefined : buildGpuSchedule(plan.problem, new ItemSpace(plan.problem), { ...(rpb ? { lin: rpb.strides } : {}), maxWords: Math.floor(limits.maxStorageBufferBindingSize / 4) });
  const total = an ? an.total : ch ? ch.total : sched!.items;
  const pipeline = await getPipeline(device, fusedProgram, plan.spec);
  const permuteFor = async (w: 1 | 4) => getPipeline(device, permuteProgram, { rank: plan.spec.rank, f16, w });
  const permute = plan.spec.permute && an ? { plan: an, qk: await permuteFor(plan.spec.wq), v: await permuteFor(plan.spec.wv) } : undefined;
  const s0 = problem.seqs[0];
  const nqSeq = s0 ? prod(s0.qGrid) : 0;
  const nkSeq = s0 ? prod(s0.kGrid) : 0;
  return launchAttn(ctx, problem, q, k, v, opts, 'fused', (io, own) => {
    const groups = gridFor(total, limits, 'q');
    const params = FUSED_UNIFORMS.pack({
      heads: problem.heads,
      kvHeads: problem.kvHeads,
      group: problem.heads / problem.kvHeads,
      total,
      itemsX: groups[0],
      scale: problem.scale,
      softcap: problem.softcap,
      negInf: -Infinity,
      nanBits: 0x7fc00000,
      rpbOff: problem.bias ? problem.bias.data.length : 0,
      rpbVol: rpb?.volume ?? 0,
      rpbConst: rpb?.base ?? 0,
      ropeOff: (problem.bias?.data.length ?? 0) + (problem.rpb?.data.length ?? 0),
      ropeHalf: rope ? rope.dims / 2 : 0,
      ropeSin: rope ? rope.maxPos * (rope.dims / 2) : 0,
      ropeMax: rope?.maxPos ?? 0,
      ropeQShift: an && rope ? Math.max(0, nkSeq - nqSeq) : 0,
      ropeKShift: an && rope ? Math.max(0, nqSeq - nkSeq) : 0,
      ...(an ? an.values : zeroAnalytic()),
      ...(ch ? ch.values : zeroChunks()),
      ...blockingOf(plan.spec),
    });
    const pre: Launch[] = [];
    let [qb, kb, vb] = [io.q, io.k, io.v];
    if (permute) {
      // q, k, v into their tile-contiguous, head-major layouts, in the same pass ahead of the kernel
      const B = problem.seqs.length;
      const { heads: H, kvHeads: Hk, dim: D, dimV: DV } = problem;
      const to = (keys: boolean, heads: number, dim: number, w: 1 | 4, pipe: Launch['pipeline'], src: GPUBufferBinding, name: string): GPUBufferBinding => {
        const rows = B * (keys ? permute.plan.kPad : permute.plan.qPad);
        const size = bindingBytes(rows * heads * dim, f16 ? 'f16' : 'f32');
        const dst = { buffer: own(createBuffer(device, size, BufferUsage.STORAGE, `tilewise permuted ${name}`)), offset: 0, size };
        pre.push(permuteLaunch(device, limits, pipe, permute.plan, keys, B, heads, dim / w, src, dst, own));
        return dst;
      };
      const { wq, wv } = plan.spec;
      [qb, kb, vb] = [to(false, H, D, wq, permute.qk, io.q, 'q'), to(true, Hk, D, wq, permute.qk, io.k, 'k'), to(true, Hk, DV, wv, permute.v, io.v, 'v')];
    }
    const entries = [own(uniformBuffer(device, params)), qb, kb, vb, io.out, io.lse];
    if (sched) entries.push(own(uploadBuffer(device, sched.data, BufferUsage.STORAGE, 'tilewise schedule')));
    else if (ch) entries.push(own(uploadBuffer(device, ch.words, BufferUsage.STORAGE, 'tilewise chunk lists')));
    if (plan.spec.bias || plan.spec.rpb || plan.spec.rope) {
      // aux = bias | rpb | RoPE table (cos then sin), one binding
      const nb = problem.bias?.data.length ?? 0;
      const nr = problem.rpb?.data.length ?? 0;
      const aux = own(createBuffer(device, (nb + nr + (rope?.table.length ?? 0)) * 4, BufferUsage.STORAGE | BufferUsage.COPY_DST, 'tilewise aux'));
      if (problem.bias) writeData(device, aux, 0, problem.bias.data);
      if (problem.rpb) writeData(device, aux, nb * 4, problem.rpb.data);
      if (rope) writeData(device, aux, (nb + nr) * 4, rope.table);
      entries.push(aux);
    }
    return [...pre, { pipeline, entries, groups }];
  });
};
