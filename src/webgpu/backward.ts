/// <reference types="@webgpu/types" />
import { TilewiseError, check } from '../errors.js';
import { prod } from '../patterns/geometry.js';
import { type AttnProblem, ItemSpace, tileFor } from '../problem.js';
import { BufferUsage, type GpuContext, type GpuLimits } from './device.js';
import { BACKWARD_UNIFORMS, type BackwardSpec, REDUCE_UNIFORMS, STATS_THREADS, STATS_UNIFORMS, backwardProgram, backwardThreads, backwardWorkgroupBytes, reduceProgram, statsProgram } from './backward-wgsl.js';
import { fitTile } from './fused.js';
import { type AnalyticPlan, analyticPlan, maskBitsFit, zeroAnalytic } from './analytic.js';
import { problemFields } from './tile-wgsl.js';
import { type Launch, type OutputSpec, type PassTimer, bindingOf, bindingsFit, gridFor, launch, onHostArrays, rpbLayout, storesF16, threadGrid, uniformBuffer, withDevice } from './run.js';
import { type GpuSchedule, buildGpuSchedule } from './schedule.js';
import { type GpuDType, type GpuTensor, createBuffer, dtypeOf, writeData } from './tensor.js';
import { getPipeline } from './wgsl.js';

/**
 * The backward on WebGPU (backward-wgsl.ts): the stats pre-pass, the dQ pass over the forward's
 * schedule, the dK/dV pass over the transposed one, then fixed-order reductions where one output
 * element gathers several writers' values (GQA groups, drpb rows, broadcast bias axes). Schedules
 * are uploaded (schedule.ts), so every pattern the forward takes runs here.
 */

/**
 * Blocking knobs of the two passes, as the forward's (fused.ts FusedTuning): rows per thread, threads
 * sharing a row, and caps on the own rows of a work item and the rows staged per visit (both cut
 * further until the tiles fit the device's workgroup memory). Data per adapter class.
 */
export interface BackwardTuning {
  readonly rm: number;
  readonly tx: number;
  readonly maxRows: number;
  readonly maxKeys: number;
  readonly unroll: boolean;
  /** Compute the walks of analytic patterns in the kernels (analytic.ts); false uploads every schedule. Default true. */
  readonly analytic?: boolean;
  /** Odd row strides for the workgroup tiles (TileSpec.pad). Default false. */
  readonly pad?: boolean;
}

export const BACKWARD_TUNING: Readonly<Record<'cpu' | 'gpu', BackwardTuning>> = {
  // H100 sweep of 7 blockings on dense B4 N4096 H32 D64 (BENCHMARKS.md): 313 ms, against 383-825 for the rest;
  // odd row strides then took 1.64-1.93x off every case (stop 16)
  gpu: { rm: 4, tx: 8, maxRows: 64, maxKeys: 32, unroll: true, pad: true },
  // lavapipe, dense N2048 H8 D64: 8x2 3.1x the forward, 4x2 3.9x, 4x4 4.6x, 16x4 3.3x
  cpu: { rm: 8, tx: 2, maxRows: 32, maxKeys: 16, unroll: false },
};
let override: Partial<BackwardTuning> | undefined;

/** Backward calls so far whose two passes walked in the kernel, or read uploaded schedules (tests assert the path). */
export const backwardWalks = { analytic: 0, listed: 0 };

/** Overrides the blocking (tests, benchmarks); undefined restores the table. */
export function setBackwardTuning(t: Partial<BackwardTuning> | undefined): void {
  override = t;
}

export const backwardTuningFor = (ctx: Pick<GpuContext, 'adapterClass'>): BackwardTuning => ({ ...BACKWARD_TUNING[ctx.adapterClass], ...(override ?? {}) });

export interface GpuGrads {
  dq: GpuTensor;
  dk: GpuTensor;
  dv: GpuTensor;
  drpb?: GpuTensor;
  dbias?: GpuTensor;
}

export interface BackwardGpuOptions {
  /** Also compute dbias (the problem must have a bias). */
  readonly dbias?: boolean;
  /** Fill the gradients with NaN first, so an element no kernel writes cannot pass a test. */
  readonly poison?: boolean;
  /** GPU timestamps around the one compute pass (the profiler's timer). */
  readonly timer?: PassTimer;
}

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

/** One pass of a backward plan: its kernel spec, its tiled problem, and its in-kernel walk when analytic. */
export interface BackwardPass {
  readonly spec: BackwardSpec;
  readonly problem: AttnProblem;
  readonly analytic?: AnalyticPlan;
}

/** The two passes' tile shapes and kernel specs for a problem on a device. */
export function planBackward(problem: AttnProblem, limits: GpuLimits, tune: BackwardTuning = { ...BACKWARD_TUNING.gpu, ...(override ?? {}) }, hookGrad: BackwardSpec['hookGrad'] = 'none', f16 = false): { q: BackwardPass; k: BackwardPass } {
  const rank = problem.seqs.length > 0 ? new ItemSpace({ ...problem, seqs: problem.seqs.slice(0, 1) }).pattern(0).geometry.qShape.length : 1;
  const maxThreads = Math.min(limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX);
  const side = (which: 'q' | 'k') => {
    const ownTile = tileFor(which === 'q' ? problem.qTile : problem.kvTile, rank);
    const otherTile = tileFor(which === 'q' ? problem.kvTile : problem.qTile, rank);
    for (let rowCap = tune.maxRows; rowCap >= 1; rowCap = Math.floor(rowCap / 2)) {
      const own = fitTile(ownTile, rowCap);
      const rm = Math.min(tune.rm, prod(own));
      const rows = roundUp(prod(own), rm);
      for (let cap = tune.maxKeys; cap >= 1; cap = Math.floor(cap / 2)) {
        const other = fitTile(otherTile, cap);
        const tx = Math.min(tune.tx, prod(other));
        const tiled = which === 'q' ? { ...problem, qTile: own, kvTile: other } : { ...problem, qTile: other, kvTile: own };
        const analytic = tune.analytic === false ? undefined : analyticPlan(tiled);
        const spec: BackwardSpec = {
          side: which,
          ...problemFields(problem),
          rows,
          keys: roundUp(prod(other), tx),
          rm,
          tx,
          hookGrad: which === 'q' ? hookGrad : 'none',
          perQueryHead: which === 'k' && problem.heads !== problem.kvHeads,
          unroll: tune.unroll,
          f16,
          ...(tune.pad ? { pad: true } : {}),
          schedule: analytic ? 'analytic' : 'list',
          rank,
          // the bits run over the key tile: the staged one on side 'q', the own one on side 'k'
          ...(analytic && maskBitsFit(which === 'q' ? other : own) ? { maskBits: true } : {}),
        };
        if (backwardWorkgroupBytes(spec) <= limits.maxComputeWorkgroupStorageSize && backwardThreads(spec) <= maxThreads) return { spec, problem: tiled, ...(analytic ? { analytic } : {}) };
      }
    }
    throw new TilewiseError('dim', 'head dims are too large for this device’s workgroup memory (backward)', `${problem.dim}+${problem.dimV} with ${limits.maxComputeWorkgroupStorageSize} bytes`);
  };
  return { q: side('q'), k: side('k') };
}

/** A bias expanded to [batch, heads, Nq, Nk] (dbias is written per (batch, head), then summed over the broadcast axes). */
function expandBias(problem: AttnProblem): AttnProblem {
  const b = problem.bias!;
  const B = problem.seqs.length;
  const H = problem.heads;
  if (b.batch === B && b.heads === H) return problem;
  const s0 = problem.seqs[0]!;
  const n = prod(s0.qGrid) * prod(s0.kGrid);
  const data = new Float32Array(B * H * n);
  // the (batch, head) block of the bias that (bi, h) reads
  const from = (bi: number, h: number) => ((b.batch === 1 ? 0 : bi) * b.heads + (b.heads === 1 ? 0 : h)) * n;
  for (let bi = 0; bi < B; bi++) for (let h = 0; h < H; h++) data.set(b.data.subarray(from(bi, h), from(bi, h) + n), (bi * H + h) * n);
  return { ...problem, bias: { data, batch: B, heads: H } };
}

const align = (words: number, to: number): number => Math.ceil(words / to) * to;

/**
 * The two schedules of recent problems. A training loop runs the backward on one shape again and
 * again, and for neighborhoods the host-built schedules (their partial-visit masks) cost more than
 * the kernels: measured on the H100, 283 ms of host work per call for 2-D NA 128x128 k=13 and 1.6 s
 * for 3-D 32^3 k=7, against 21 and 50 ms of kernels. Keyed by everything buildGpuSchedule reads; patterns holding functions
 * (mask functions) are not cached. Bounded in entries and words; least recently used goes first.
 */
const scheduleCache = new Map<string, { q: GpuSchedule; k: GpuSchedule }>();
const CACHE_ENTRIES = 8;
const CACHE_WORDS = 1 << 25;

function scheduleKey(plan: ReturnType<typeof planBackward>, lin: readonly number[] | undefined): string | undefined {
  const p = plan.q.problem;
  const what = {
    pattern: p.pattern,
    seqs: p.seqs,
    heads: p.heads,
    kvHeads: p.kvHeads,
    tiles: [plan.q.problem.qTile, plan.q.problem.kvTile, plan.k.problem.qTile, plan.k.problem.kvTile],
    bias: p.bias ? [p.bias.batch, p.bias.heads] : null,
    rope: p.rope?.positions ?? null,
    lin: lin ?? null,
  };
  try {
    return JSON.stringify(what, (_k, v: unknown) => {
      if (typeof v === 'function') throw new Error('not cacheable');
      return ArrayBuffer.isView(v) ? Array.from(v as unknown as ArrayLike<number>) : v;
    });
  } catch {
    return undefined;
  }
}

/** The schedules of both passes, from the cache when this problem's were built recently. */
function schedulesFor(plan: ReturnType<typeof planBackward>, lin: readonly number[] | undefined, maxWords: number): { q: GpuSchedule; k: GpuSchedule } {
  const key = scheduleKey(plan, lin);
  const hit = key === undefined ? undefined : scheduleCache.get(key);
  if (hit && key !== undefined) {
    scheduleCache.delete(key);
    scheduleCache.set(key, hit);
    return hit;
  }
  const l = lin ? { lin } : {};
  const built = {
    q: buildGpuSchedule(plan.q.problem, new ItemSpace(plan.q.problem), { ...l, maxWords }),
    k: buildGpuSchedule(plan.k.problem, new ItemSpace(plan.k.problem, 'k'), { ...l, maxWords, transposed: true }),
  };
  if (key !== undefined && built.q.data.length + built.k.data.length <= CACHE_WORDS) {
    scheduleCache.set(key, built);
    let words = 0;
    for (const e of scheduleCache.values()) words += e.q.data.length + e.k.data.length;
    for (const [k, e] of scheduleCache) {
      if (scheduleCache.size <= CACHE_ENTRIES && words <= CACHE_WORDS) break;
      scheduleCache.delete(k);
      words -= e.q.data.length + e.k.data.length;
    }
  }
  return built;
}

/** Entries and words of the schedule cache (tests). */
export const backwardCacheStats = (): { entries: number; words: number } => {
  let words = 0;
  for (const e of scheduleCache.values()) words += e.q.data.length + e.k.data.length;
  return { entries: scheduleCache.size, words };
};

/**
 * Gradients on GPU tensors (f32): q, k, v, the forward's out and lse, and dOut in; dq [qRows, H, D],
 * dk [kRows, Hk, D], dv [kRows, Hk, Dv], drpb [H, vol] with rpb, dbias (the bias's shape) when asked.
 * Nothing is read back.
 */
export function runWebGPUBackwardTensors(problem: AttnProblem, t: { q: GpuTensor; k: GpuTensor; v: GpuTensor; out: GpuTensor; lse: GpuTensor; dout: GpuTensor }, opts: BackwardGpuOptions = {}): Promise<GpuGrads> {
  return withDevice((ctx) => backwardKernel(ctx, problem, t, opts));
}

/** The same on host arrays: uploads, runs, reads the gradients back. */
export async function runWebGPUBackward(
  problem: AttnProblem,
  t: { q: Float32Array; k: Float32Array; v: Float32Array; out: Float32Array; lse: Float32Array; dout: Float32Array },
  opts: BackwardGpuOptions = {},
): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array; drpb?: Float32Array; dbias?: Float32Array }> {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  let names: string[] = [];
  const res = await onHostArrays(
    [
      { name: 'q', data: t.q, shape: [qRows, H, D] },
      { name: 'k', data: t.k, shape: [kRows, Hk, D] },
      { name: 'v', data: t.v, shape: [kRows, Hk, DV] },
      { name: 'out', data: t.out, shape: [qRows, H, DV] },
      { name: 'lse', data: t.lse, shape: [qRows, H] },
      { name: 'dOut', data: t.dout, shape: [qRows, H, DV] },
    ],
    async (ctx, [q, k, v, out, lse, dout]) => {
      const g = await backwardKernel(ctx, problem, { q: q!, k: k!, v: v!, out: out!, lse: lse!, dout: dout! }, opts);
      names = Object.keys(g);
      return Object.values(g);
    },
  );
  return Object.fromEntries(names.map((n, i) => [n, res[i]!])) as { dq: Float32Array; dk: Float32Array; dv: Float32Array };
}

async function backwardKernel(ctx: GpuContext, problem0: AttnProblem, t: { q: GpuTensor; k: GpuTensor; v: GpuTensor; out: GpuTensor; lse: GpuTensor; dout: GpuTensor }, opts: BackwardGpuOptions): Promise<GpuGrads> {
  const { device, limits } = ctx;
  // q, k, v, out and dO all f32, or all f16 (shader-f16; the gradients come back f16 too); lse is f32
  const f16 = storesF16(ctx, t.q, 'q');
  const io: GpuDType = f16 ? 'f16' : 'f32';
  for (const [n, x] of Object.entries(t)) {
    const want = n === 'lse' ? 'f32' : io;
    check(dtypeOf(x) === want, n === 'dout' ? 'dOut' : n, `must hold ${want} elements (${n === 'lse' ? 'lse is always f32' : "like q: the backward's inputs share one element type"})`, dtypeOf(x));
  }
  check(problem0.rope?.positions !== 'selected', 'ropePositions', "'selected' (LongHeads) has no backward");
  const dbias = opts.dbias === true && problem0.bias !== undefined;
  const problem = dbias ? expandBias(problem0) : problem0;
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const rpb = problem.rpb ? rpbLayout(problem.rpb.kernel) : undefined;
  const hookGrad: BackwardSpec['hookGrad'] = rpb ? 'rpb' : dbias ? 'bias' : 'none';
  const biasLen = problem.bias?.data.length ?? 0;
  const auxLen = biasLen + (problem.rpb?.data.length ?? 0) + (problem.rope?.table.length ?? 0);
  const temps: [string, number][] = [
    ['stats', qRows * H * 8],
    ...(Hk !== H ? ([['dK per query head', kRows * H * D * 4]] as [string, number][]) : []),
    ...(rpb ? ([['drpb row partials', qRows * H * rpb.volume * 4]] as [string, number][]) : []),
    ...(dbias ? ([['dbias per (batch, head)', biasLen * 4]] as [string, number][]) : []),
  ];
  const fit = bindingsFit(temps, limits);
  if (fit !== true) throw new TilewiseError('webgpu', 'cannot run this backward on this device', fit);
  const plan = planBackward(problem, limits, backwardTuningFor(ctx), hookGrad, f16);
  const maxWords = Math.floor(Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) / 4);
  // schedules uploaded only where the kernels cannot walk the pattern themselves
  const listed = plan.q.analytic && plan.k.analytic ? undefined : schedulesFor(plan, rpb?.strides, maxWords);
  backwardWalks[listed ? 'listed' : 'analytic']++;
  const none: GpuSchedule = { data: new Uint32Array(0), items: 0, visits: 0, partialVisits: 0 };
  const qSched = plan.q.analytic ? none : listed!.q;
  const kSched = plan.k.analytic ? none : listed!.k;
  // one u32 buffer: q schedule | k schedule (at a 256-byte boundary) | aux (bias | rpb | RoPE cos, sin)
  const kAt = align(qSched.data.length, 64);
  const auxAt = align(kAt + kSched.data.length, 64);
  const meta = new Uint32Array(Math.max(1, auxAt + auxLen));
  meta.set(qSched.data);
  meta.set(kSched.data, kAt);
  const auxF = new Float32Array(meta.buffer, auxAt * 4, auxLen);
  if (problem.bias) auxF.set(problem.bias.data);
  if (problem.rpb) auxF.set(problem.rpb.data, biasLen);
  if (problem.rope) auxF.set(problem.rope.table, biasLen + (problem.rpb?.data.length ?? 0));
  const metaFit = bindingsFit([['the backward schedules and aux table', meta.byteLength]], limits);
  if (metaFit !== true) throw new TilewiseError('webgpu', 'cannot run this backward on this device', metaFit);

  const [qPipe, kPipe, statsPipe, reducePipe, reduceIoPipe] = await Promise.all([
    getPipeline(device, backwardProgram, plan.q.spec),
    getPipeline(device, backwardProgram, plan.k.spec),
    getPipeline(device, statsProgram, { dimV: DV, wv: plan.q.spec.wv, f16 }),
    getPipeline(device, reduceProgram, { f16: false }),
    // GQA's dK, dV summed into the gradients' own element type
    getPipeline(device, reduceProgram, { f16 }),
  ]);
  const outputs: OutputSpec[] = [
    { name: 'dq', shape: [qRows, H, D], empty: 0, dtype: io },
    { name: 'dk', shape: [kRows, Hk, D], empty: 0, dtype: io },
    { name: 'dv', shape: [kRows, Hk, DV], empty: 0, dtype: io },
    ...(rpb ? [{ name: 'drpb', shape: [H * rpb.volume], empty: 0 }] : []),
    ...(dbias ? [{ name: 'dbias', shape: [problem0.bias!.data.length], empty: 0 }] : []),
  ];
  const inputs = {
    q: bindingOf(t.q, qRows * H * D, 'q', [io]),
    k: bindingOf(t.k, kRows * Hk * D, 'k', [io]),
    v: bindingOf(t.v, kRows * Hk * DV, 'v', [io]),
    out: bindingOf(t.out, qRows * H * DV, 'out', [io]),
    lse: bindingOf(t.lse, qRows * H, 'lse'),
    dout: bindingOf(t.dout, qRows * H * DV, 'dOut', [io]),
  };
  const s0 = problem.seqs[0];
  const nqSeq = s0 ? prod(s0.qGrid) : 0;
  const nkSeq = s0 ? prod(s0.kGrid) : 0;
  const nSeq = nqSeq * nkSeq;
  const res = await launch(ctx, 'backward', outputs, opts.poison ?? false, (outs, own) => {
    const [dq, dk, dv] = outs as [GPUBufferBinding, GPUBufferBinding, GPUBufferBinding];
    const temp = (words: number, name: string): GPUBufferBinding => {
      const size = Math.max(4, words * 4);
      return { buffer: own(createBuffer(device, size, BufferUsage.STORAGE, `tilewise ${name}`)), offset: 0, size };
    };
    const metaBuf = own(createBuffer(device, meta.byteLength, BufferUsage.STORAGE | BufferUsage.COPY_DST, 'tilewise backward schedules'));
    writeData(device, metaBuf, 0, meta);
    const stats = temp(qRows * H * 2, 'backward stats');
    const launches: Launch[] = [];
    const sg = threadGrid(qRows * H, STATS_THREADS, limits, 'lse');
    launches.push({ pipeline: statsPipe, entries: [own(uniformBuffer(device, STATS_UNIFORMS.pack({ count: qRows * H, groupsX: sg[0] }))), inputs.out, inputs.dout, inputs.lse, stats], groups: sg });
    const common = {
      heads: H,
      kvHeads: Hk,
      group: H / Hk,
      scale: problem.scale,
      softcap: problem.softcap,
      rpbOff: biasLen,
      rpbVol: rpb?.volume ?? 0,
      rpbConst: rpb?.base ?? 0,
      ropeOff: biasLen + (problem.rpb?.data.length ?? 0),
      ropeHalf: problem.rope ? problem.rope.dims / 2 : 0,
      ropeSin: problem.rope ? problem.rope.maxPos * (problem.rope.dims / 2) : 0,
      ropeMax: problem.rope?.maxPos ?? 0,
      ropeQShift: problem.rope ? Math.max(0, nkSeq - nqSeq) : 0,
      ropeKShift: problem.rope ? Math.max(0, nqSeq - nkSeq) : 0,
    };
    const pass = (pipe: typeof qPipe, side: BackwardPass, sched: GpuSchedule, at: number, outsOf: (GPUBufferBinding | GPUBuffer)[]) => {
      const { spec, analytic: an } = side;
      const items = an ? (spec.side === 'q' ? an.total : an.keyTotal) : sched.items;
      const groups = gridFor(items, limits, 'q');
      const bounds = { nDQ: spec.dim / spec.wq, nDV: spec.dimV / spec.wv, nRM: spec.rm, nRN: spec.keys / spec.tx };
      const params = BACKWARD_UNIFORMS.pack({ ...common, ...(an ? an.values : zeroAnalytic()), ...bounds, total: items, itemsX: groups[0], auxOff: auxAt - at });
      const metaAt = { buffer: metaBuf, offset: at * 4, size: (meta.length - at) * 4 };
      launches.push({ pipeline: pipe, entries: [own(uniformBuffer(device, params)), inputs.q, inputs.k, inputs.v, inputs.dout, stats, metaAt, ...outsOf], groups });
    };
    const reduce = (src: GPUBufferBinding, dst: GPUBufferBinding, u: { count: number; M: number; N: number; J: number; sA: number; sM: number; sJ: number }, pipeline = reducePipe) => {
      const g = threadGrid(u.count, STATS_THREADS, limits, 'dst');
      launches.push({ pipeline, entries: [own(uniformBuffer(device, REDUCE_UNIFORMS.pack({ ...u, groupsX: g[0] }))), src, dst], groups: g });
    };
    // dQ (and the hook gradient's partials)
    const hg = rpb ? temp(qRows * H * rpb.volume, 'drpb partials') : dbias ? temp(biasLen, 'dbias per head') : undefined;
    pass(qPipe, plan.q, qSched, 0, [dq, ...(hg ? [hg] : [])]);
    // dK, dV: straight into the outputs, or per query head and summed over each group
    const G = H / Hk;
    if (G === 1) pass(kPipe, plan.k, kSched, kAt, [dk, dv]);
    else {
      const dkh = temp(kRows * H * D, 'dK per query head');
      const dvh = temp(kRows * H * DV, 'dV per query head');
      pass(kPipe, plan.k, kSched, kAt, [dkh, dvh]);
      reduce(dkh, dk, { count: kRows * Hk * D, M: Hk, N: D, J: G, sA: H * D, sM: G * D, sJ: D }, reduceIoPipe);
      reduce(dvh, dv, { count: kRows * Hk * DV, M: Hk, N: DV, J: G, sA: H * DV, sM: G * DV, sJ: DV }, reduceIoPipe);
    }
    if (rpb && hg) reduce(hg, outs[3]!, { count: H * rpb.volume, M: H, N: rpb.volume, J: qRows, sA: 0, sM: rpb.volume, sJ: H * rpb.volume });
    if (dbias && hg) {
      // dbias per (batch, head) [B, H, n] summed over the bias's broadcast axes
      const b = problem0.bias!;
      const B = problem.seqs.length;
      const dst = outs[outs.length - 1]!;
      const u =
        b.batch === 1 && b.heads === 1
          ? { M: 1, N: nSeq, J: B * H, sA: 0, sM: 0, sJ: nSeq }
          : b.heads === 1
            ? { M: 1, N: nSeq, J: H, sA: H * nSeq, sM: 0, sJ: nSeq }
            : b.batch === 1
              ? { M: H, N: nSeq, J: B, sA: 0, sM: nSeq, sJ: H * nSeq }
              : { M: 1, N: nSeq, J: 1, sA: nSeq, sM: 0, sJ: 0 };
      reduce(hg, dst, { count: b.data.length, ...u });
    }
    return launches;
  }, opts.timer);
  const [dq, dk, dv] = res as [GpuTensor, GpuTensor, GpuTensor];
  return { dq, dk, dv, ...(rpb ? { drpb: res[3]! } : {}), ...(dbias ? { dbias: res[res.length - 1]! } : {}) };
}
