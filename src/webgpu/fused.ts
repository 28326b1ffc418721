/// <reference types="@webgpu/types" />
import { prod } from '../cpu/fused.js';
import { TilewiseError, check } from '../errors.js';
import { type AttnProblem, ItemSpace, tileFor } from '../problem.js';
import { BufferUsage, type GpuContext, type GpuLimits, getContext, lossOr } from './device.js';
import { FUSED_UNIFORMS, type FusedSpec, fusedProgram, fusedWorkgroupBytes, threadsOf } from './fused-wgsl.js';
import { buildGpuSchedule } from './schedule.js';
import { type GpuTensor, createBuffer, readBuffers, releaseBuffer, uploadBuffer, writeData } from './tensor.js';
import { getPipeline } from './wgsl.js';

/**
 * Fused attention forward on WebGPU: plans tiles from the device limits, builds the schedule on the
 * CPU (schedule.ts), and runs the one fused template (fused-wgsl.ts) over every work item.
 */

/** Tile shapes and kernel constants for a problem on a device, all from the device limits. */
export interface FusedPlan {
  readonly spec: FusedSpec;
  /** The problem with the GPU's tile shapes (what the schedule is built from). */
  readonly problem: AttnProblem;
  readonly rank: number;
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
 * per query row), and caps on the query rows and staged keys of a work item. Data, not code: the
 * defaults are what measured best here; `setFusedTuning` overrides them (benchmarks, tests).
 */
export interface FusedTuning {
  readonly rm: number;
  readonly tx: number;
  readonly maxRows: number;
  readonly maxKeys: number;
}

const DEFAULT_TUNING: FusedTuning = { rm: 4, tx: 4, maxRows: 64, maxKeys: 32 };
let tuning: FusedTuning = DEFAULT_TUNING;

export function setFusedTuning(t: Partial<FusedTuning> | undefined): void {
  tuning = { ...DEFAULT_TUNING, ...(t ?? {}) };
}

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

export function planFused(problem: AttnProblem, limits: GpuLimits, tune: FusedTuning = tuning): FusedPlan {
  const rank = problem.seqs.length > 0 ? new ItemSpace({ ...problem, seqs: problem.seqs.slice(0, 1) }).pattern(0).geometry.qShape.length : 1;
  const { dim, dimV } = problem;
  const maxThreads = Math.min(limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX);
  const budget = limits.maxComputeWorkgroupStorageSize;
  // Largest query tile (then key tile) under the caps whose workgroup memory fits the device.
  for (let rowCap = tune.maxRows; rowCap >= 1; rowCap = Math.floor(rowCap / 2)) {
    const qTile = fitTile(tileFor(problem.qTile, rank), rowCap);
    const nq = prod(qTile);
    const rm = Math.min(tune.rm, nq);
    const rows = roundUp(nq, rm);
    for (let keyCap = tune.maxKeys; keyCap >= 1; keyCap = Math.floor(keyCap / 2)) {
      const kvTile = fitTile(tileFor(problem.kvTile, rank), keyCap);
      const nk = prod(kvTile);
      const tx = Math.min(tune.tx, nk);
      const keys = roundUp(nk, tx);
      const spec: FusedSpec = {
        dim,
        dimV,
        wq: dim % 4 === 0 ? 4 : 1,
        wv: dimV % 4 === 0 ? 4 : 1,
        rows,
        keys,
        rm,
        tx,
        softcap: problem.softcap > 0,
        bias: problem.bias !== undefined,
        rpb: problem.rpb !== undefined,
      };
      if (fusedWorkgroupBytes(spec) <= budget && threadsOf(spec) <= maxThreads) return { spec, problem: { ...problem, qTile, kvTile }, rank };
    }
  }
  throw new TilewiseError('dim', 'head dims are too large for this device’s workgroup memory', `${dim}+${dimV} with ${budget} bytes`);
}

/** Whether the fused kernel can run `problem` on a device with these limits: true, or the reason. */
export function fusedCanRun(problem: AttnProblem, limits: GpuLimits): true | string {
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const max = limits.maxStorageBufferBindingSize;
  const sizes: [string, number][] = [
    ['q', qRows * H * D * 4],
    ['k', kRows * Hk * D * 4],
    ['v', kRows * Hk * DV * 4],
    ['out', qRows * H * DV * 4],
    ['bias + rpb', 4 * ((problem.bias?.data.length ?? 0) + (problem.rpb?.data.length ?? 0))],
  ];
  for (const [name, bytes] of sizes) if (bytes > max) return `${name} takes ${bytes} bytes, more than the ${max} one binding may hold`;
  if (fusedWorkgroupBytes({ dim: D, dimV: DV, rows: 1, keys: 1, tx: 1 }) > limits.maxComputeWorkgroupStorageSize)
    return `head dims ${D}+${DV} need more than the ${limits.maxComputeWorkgroupStorageSize} bytes of workgroup memory`;
  return true;
}

function rpbUniforms(problem: AttnProblem): { lin: number[] | undefined; vol: number; cst: number } {
  if (!problem.rpb) return { lin: undefined, vol: 0, cst: 0 };
  const spans = problem.rpb.kernel.map((k) => 2 * k - 1);
  const lin = spans.map((_, a) => prod(spans.slice(a + 1)));
  const cst = problem.rpb.kernel.reduce((acc, k, a) => acc + (k - 1) * lin[a]!, 0);
  return { lin, vol: prod(spans), cst };
}

function bindingOf(t: GpuTensor, bytes: number, arg: string): GPUBufferBinding {
  check(t.offset % 256 === 0, arg, 'offset must be a multiple of 256 bytes to bind it', String(t.offset));
  check(t.buffer.size >= t.offset + bytes, arg, 'buffer is too small', `${t.buffer.size} < ${t.offset + bytes}`);
  return { buffer: t.buffer, offset: t.offset, size: bytes };
}

export interface FusedGpuOptions {
  /** Fill the outputs with NaN first, so an unwritten element cannot pass a test. */
  readonly poison?: boolean;
  /** Destinations (else fresh buffers the caller releases with `releaseTensor`). */
  readonly out?: GpuTensor;
  readonly lse?: GpuTensor;
}

/**
 * Fused forward on GPU tensors: q [qRows, H, D], k [kRows, Hk, D], v [kRows, Hk, Dv] in, out
 * [qRows, H, Dv] and lse [qRows, H] (rows with no allowed key: 0 and -inf) out. Nothing is read back.
 */
export async function runWebGPUFusedTensors(
  problem: AttnProblem,
  q: GpuTensor,
  k: GpuTensor,
  v: GpuTensor,
  opts: FusedGpuOptions = {},
): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  const ctx = await getContext();
  try {
    return await runOn(ctx, problem, q, k, v, opts);
  } catch (e) {
    return lossOr(ctx, e);
  }
}

async function runOn(ctx: GpuContext, problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: FusedGpuOptions): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  const { device, limits } = ctx;
  const { heads: H, kvHeads: Hk, dim: D, dimV: DV, qRows, kRows } = problem;
  const why = fusedCanRun(problem, limits);
  if (why !== true) throw new TilewiseError('webgpu', 'cannot run this problem', why);
  const plan = planFused(problem, limits);
  const space = new ItemSpace(plan.problem);
  const rpbU = rpbUniforms(problem);
  const sched = buildGpuSchedule(plan.problem, space, { ...(rpbU.lin ? { lin: rpbU.lin } : {}), maxWords: Math.floor(limits.maxStorageBufferBindingSize / 4) });
  const outBytes = qRows * H * DV * 4;
  const lseBytes = qRows * H * 4;
  const bindings = [
    bindingOf(q, qRows * H * D * 4, 'q'),
    bindingOf(k, kRows * Hk * D * 4, 'k'),
    bindingOf(v, kRows * Hk * DV * 4, 'v'),
  ];

  const cached = await getPipeline(device, fusedProgram, plan.spec);
  // From here to the error-scope pops nothing awaits, so concurrent calls cannot interleave scopes.
  const made: GPUBuffer[] = [];
  const own = (b: GPUBuffer) => (made.push(b), b);
  const outT: GpuTensor = opts.out ?? {
    buffer: own(createBuffer(device, outBytes, BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, 'tilewise out')),
    shape: [qRows, H, DV],
    offset: 0,
  };
  const lseT: GpuTensor = opts.lse ?? {
    buffer: own(createBuffer(device, lseBytes, BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, 'tilewise lse')),
    shape: [qRows, H],
    offset: 0,
  };
  const temps = made.length;
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  let failure: unknown;
  try {
    const outB = bindingOf(outT, outBytes, 'out');
    const lseB = bindingOf(lseT, lseBytes, 'lse');
    if (opts.poison) {
      device.queue.writeBuffer(outT.buffer, outT.offset, new Float32Array(qRows * H * DV).fill(NaN));
      device.queue.writeBuffer(lseT.buffer, lseT.offset, new Float32Array(qRows * H).fill(NaN));
    }
    const total = space.total;
    const itemsX = Math.max(1, Math.min(total, limits.maxComputeWorkgroupsPerDimension));
    const itemsY = Math.ceil(total / itemsX);
    check(itemsY <= limits.maxComputeWorkgroupsPerDimension, 'q', 'has more work items than one dispatch can hold', String(total));
    const params = FUSED_UNIFORMS.pack({
      heads: H,
      kvHeads: Hk,
      group: H / Hk,
      total,
      itemsX,
      scale: problem.scale,
      softcap: problem.softcap,
      negInf: -Infinity,
      rpbOff: problem.bias ? problem.bias.data.length : 0,
      rpbVol: rpbU.vol,
      rpbConst: rpbU.cst,
    });
    const uni = own(uploadBuffer(device, new Uint8Array(params), BufferUsage.UNIFORM, 'tilewise params'));
    const schedB = own(uploadBuffer(device, sched.data, BufferUsage.STORAGE, 'tilewise schedule'));
    const entries: GPUBindGroupEntry[] = [
      { binding: 0, resource: { buffer: uni } },
      ...bindings.map((b, i) => ({ binding: i + 1, resource: b })),
      { binding: 4, resource: outB },
      { binding: 5, resource: lseB },
      { binding: 6, resource: { buffer: schedB } },
    ];
    if (plan.spec.bias || plan.spec.rpb) {
      const nb = problem.bias?.data.length ?? 0;
      const nr = problem.rpb?.data.length ?? 0;
      const aux = own(createBuffer(device, (nb + nr) * 4, BufferUsage.STORAGE | BufferUsage.COPY_DST, 'tilewise bias'));
      if (problem.bias) writeData(device, aux, 0, problem.bias.data);
      if (problem.rpb) writeData(device, aux, nb * 4, problem.rpb.data);
      entries.push({ binding: 7, resource: { buffer: aux } });
    }
    if (total > 0) {
      const bg = device.createBindGroup({ layout: cached.layout, entries });
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(cached.pipeline);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(itemsX, itemsY);
      pass.end();
      device.queue.submit([enc.finish()]);
    } else {
      // no work item (every sequence empty): every row gets out 0, lse -inf
      device.queue.writeBuffer(outT.buffer, outT.offset, new Float32Array(qRows * H * DV));
      device.queue.writeBuffer(lseT.buffer, lseT.offset, new Float32Array(qRows * H).fill(-Infinity));
    }
  } catch (e) {
    failure = e;
  }
  // both pops issued before any await, so another call's scopes cannot come in between
  const [validation, oom] = await Promise.all([device.popErrorScope(), device.popErrorScope()]);
  // buffers released after submit are freed once the GPU is done with them
  made.slice(temps).forEach(releaseBuffer);
  const err =
    failure ??
    (oom
      ? new TilewiseError('webgpu', 'ran out of GPU memory', oom.message)
      : validation
        ? new TilewiseError('webgpu', 'rejected the fused dispatch', validation.message)
        : undefined);
  if (err) {
    made.slice(0, temps).forEach(releaseBuffer);
    throw err;
  }
  return { out: outT, lse: lseT };
}

/**
 * Fused attention forward on the WebGPU device for any pattern the CPU supports: uploads q, k, v,
 * runs the kernel, reads out [qRows, H, Dv] and lse [qRows, H] back.
 */
export async function runWebGPUFused(
  problem: AttnProblem,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  opts: { poison?: boolean } = {},
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
    const up = (a: Float32Array, shape: number[], name: string) => {
      const b = uploadBuffer(device, a, BufferUsage.STORAGE, `tilewise ${name}`);
      ins.push(b);
      return { buffer: b, shape, offset: 0 };
    };
    const qT = up(q, [qRows, H, D], 'q');
    const kT = up(k, [kRows, Hk, D], 'k');
    const vT = up(v, [kRows, Hk, DV], 'v');
    res = await runOn(ctx, problem, qT, kT, vT, opts);
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
