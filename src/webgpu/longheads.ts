/// <reference types="@webgpu/types" />
import type { AttentionOptions, Result } from '../options.js';
import { planShapes } from '../plan.js';
import { TilewiseError } from '../errors.js';
import type { LongHeadsConfig } from '../longheads/options.js';
import type { LongHeadsOps, LongHeadsRun, RowStore, SeqView } from '../longheads/ops.js';
import { type ChunksSpec, type SelectGeometry, chunkLists, diagonalChunks, fusedTile } from '../longheads/select.js';
import type { AttnProblem } from '../problem.js';
import { ropeSpec } from '../rope.js';
import { numel } from '../tensor.js';
import { BufferUsage, type GpuContext, type GpuLimits, getContext } from './device.js';
import { runWebGPUFusedTensors } from './fused.js';
import { LH_UNIFORMS, type SelectSpec, lhPoolProgram, lhRopeProgram, lhSelectProgram, selectWorkgroupBytes } from './longheads-wgsl.js';
import { bindingOf, gridFor, launch, threadGrid, uniformBuffer, withDevice } from './run.js';
import { type GpuTensor, createBuffer, readBuffers, releaseBuffer, releaseTensor, toGpu, uploadBuffer, writeData } from './tensor.js';
import { getPipeline } from './wgsl.js';

/**
 * LongHeads on the device (the 'webgpu' LongHeadsOps): chunk representations from two fused calls
 * and the pool and rope kernels, selection by the select kernel, attention by the fused kernel on
 * the already uploaded q, k, v. Only the chunk lists (H * tiles * (slots + 1) u32) and the final
 * out and lse are read back.
 */

const THREADS = 64;
const ZERO = { kOff: 0, ropeHalf: 0, ropeSin: 0, rows: 0, qPos0: 0, tile: 0, tiles: 0, slots: 0 };

/** The fused problem of a sequence view: planned from shapes, keys starting at row kOff. */
function problemOf<T>(s: SeqView<T>, opts: AttentionOptions): AttnProblem {
  const p = planShapes({ batch: 1, qGrid: [s.n], kGrid: [s.kLen], heads: s.heads, kvHeads: s.kvHeads, dim: s.dim, dimV: s.dim }, opts);
  return s.kOff === 0 ? p : { ...p, kRows: s.kOff + s.kLen, seqs: [{ ...p.seqs[0]!, kOff: s.kOff }] };
}

/** Rows of a tensor of rows of `width` floats. */
const rowsOf = (t: GpuTensor, width: number): number => numel(t.shape) / width;

/**
 * Representations [full, H, D] on the device (select.ts chunkReps' algorithm): in-chunk attention
 * (fused, chunk-diagonal lists, in-chunk RoPE of q and k in the kernel), the mean-pool of each
 * chunk's outputs and the in-chunk rotation of its keys (one pass, two kernels), then the summary
 * attends over those keys with them as values (fused again).
 */
export async function chunkRepsGpu(ctx: GpuContext, s: SeqView<GpuTensor>, full: number, cfg: LongHeadsConfig, poison = false): Promise<GpuTensor> {
  const { device, limits } = ctx;
  const { heads: H, kvHeads: Hk, dim: D } = s;
  const C = cfg.chunkSize;
  const m = full * C;
  if (full === 0) return { buffer: createBuffer(device, 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC, 'tilewise reps'), shape: [0, H, D], offset: 0 };
  const scale = cfg.scale !== undefined ? { scale: cfg.scale } : {};
  const view = { ...s, n: m, kLen: m };
  const inChunk = await runWebGPUFusedTensors(
    problemOf(view, { pattern: diagonalChunks(C, C, full), rope: cfg.rope, ropePositions: 'selected', tile: { q: fusedTile(C) }, ...scale }),
    s.q,
    s.k,
    s.v,
    { poison },
  );
  releaseTensor(inChunk.lse);
  let summary: GpuTensor;
  let kIn: GpuTensor;
  try {
    const rope = ropeSpec(cfg.rope, D, C, 'absolute');
    const [pool, rot] = await Promise.all([getPipeline(device, lhPoolProgram, { threads: THREADS }), getPipeline(device, lhRopeProgram, { threads: THREADS })]);
    const outs = [
      { name: 'summary', shape: [full, H, D], empty: 0 },
      { name: 'kIn', shape: [m, Hk, D], empty: 0 },
    ];
    const x = bindingOf(inChunk.out, m * H * D, 'out');
    const k = bindingOf(s.k, (s.kOff + m) * Hk * D, 'k');
    [summary, kIn] = (await launch(ctx, 'longheads-reps', outs, poison, ([sm, ki], own) => {
      const common = { heads: H, kvHeads: Hk, dim: D, chunkSize: C, ...ZERO };
      const poolN = full * H * D;
      const rotN = m * Hk * D;
      const pg = threadGrid(poolN, THREADS, limits, 'q');
      const rg = threadGrid(rotN, THREADS, limits, 'k');
      const table = own(uploadBuffer(device, rope.table, BufferUsage.STORAGE, 'tilewise rope table'));
      const ropeU = { ...common, total: rotN, groupsX: rg[0], kOff: s.kOff, ropeHalf: rope.dims / 2, ropeSin: rope.maxPos * (rope.dims / 2) };
      return [
        { pipeline: pool, entries: [own(uniformBuffer(device, LH_UNIFORMS.pack({ ...common, total: poolN, groupsX: pg[0] }))), x, sm!], groups: pg },
        { pipeline: rot, entries: [own(uniformBuffer(device, LH_UNIFORMS.pack(ropeU))), k, ki!, table], groups: rg },
      ];
    })) as [GpuTensor, GpuTensor];
  } finally {
    releaseTensor(inChunk.out);
  }
  try {
    const rep = await runWebGPUFusedTensors(
      problemOf({ q: summary, k: kIn, v: kIn, n: full, kOff: 0, kLen: m, heads: H, kvHeads: Hk, dim: D }, { pattern: diagonalChunks(C, 1, full), tile: { q: 1, kv: 64 } }),
      summary,
      kIn,
      kIn,
      { poison },
    );
    releaseTensor(rep.lse);
    return rep.out;
  } finally {
    releaseTensor(summary);
    releaseTensor(kIn);
  }
}

/** The selection kernel's spec: as many threads (up to 64) as the workgroup memory holds. */
export function planSelect(dim: number, slots: number, limits: GpuLimits): SelectSpec {
  const rest = Math.max(0, slots - 3);
  for (let threads = Math.min(THREADS, limits.maxComputeInvocationsPerWorkgroup, limits.maxComputeWorkgroupSizeX); threads >= 1; threads >>= 1) {
    const spec = { dim, threads, rest };
    if (selectWorkgroupBytes(spec) <= limits.maxComputeWorkgroupStorageSize) return spec;
  }
  throw new TilewiseError('budget', 'too many chunk slots for this device’s workgroup memory', `${slots} slots`);
}

/**
 * Chunk lists on the device, one per head and tile (select.ts selectLists' geometry and rules),
 * read back as the chunks pattern: q [rows, H, D] un-rotated, reps [chunks, H, D].
 */
export async function selectGpu(ctx: GpuContext, q: GpuTensor, reps: GpuTensor, g: SelectGeometry, cfg: LongHeadsConfig, poison = false): Promise<ChunksSpec> {
  const { device, limits } = ctx;
  const { rows, heads: H, dim: D, tile: T } = g;
  const tiles = Math.ceil(rows / T);
  const stride = cfg.slots + 1;
  const total = H * tiles;
  const pipeline = await getPipeline(device, lhSelectProgram, planSelect(D, cfg.slots, limits));
  const qb = bindingOf(q, rows * H * D, 'q');
  const rb = bindingOf(reps, Math.max(1, rowsOf(reps, H * D) * H * D), 'reps');
  const [lists] = (await launch(ctx, 'longheads-select', [{ name: 'lists', shape: [total, stride], empty: 0 }], poison, ([l], own) => {
    const groups = gridFor(total, limits, 'q');
    const u = { heads: H, kvHeads: 1, dim: D, chunkSize: cfg.chunkSize, total, groupsX: groups[0], ...ZERO, rows, qPos0: g.qPos0, tile: T, tiles, slots: cfg.slots };
    return { pipeline, entries: [own(uniformBuffer(device, LH_UNIFORMS.pack(u))), qb, rb, l!], groups };
  })) as [GpuTensor];
  let words: Uint32Array;
  try {
    words = new Uint32Array((await readBuffers(device, [{ buffer: lists.buffer, bytes: total * stride * 4, offset: lists.offset }]))[0]!);
  } finally {
    releaseTensor(lists);
  }
  const out: number[][] = [];
  for (let i = 0; i < total; i++) {
    const n = words[i * stride]!;
    if (n < 1 || n > cfg.slots) throw new TilewiseError('webgpu', 'the selection kernel wrote a bad chunk list (internal)', `list ${i}: count ${n}`);
    out.push([...words.subarray(i * stride + 1, i * stride + 1 + n)]);
  }
  return chunkLists(cfg.chunkSize, T, H, tiles, out);
}

/** Fused attention on the GPU-resident view; reads back out [1, n, H, D] and lse [1, n, H]. */
export async function attendGpu(ctx: GpuContext, s: SeqView<GpuTensor>, opts: AttentionOptions, poison = false): Promise<Result> {
  const { n, heads: H, dim: D } = s;
  const r = await runWebGPUFusedTensors(problemOf(s, opts), s.q, s.k, s.v, { poison });
  try {
    const [out, lse] = await readBuffers(ctx.device, [
      { buffer: r.out.buffer, bytes: n * H * D * 4, offset: r.out.offset },
      { buffer: r.lse.buffer, bytes: n * H * 4, offset: r.lse.offset },
    ]);
    return { out: { data: new Float32Array(out!), shape: [1, n, H, D] }, lse: { data: new Float32Array(lse!), shape: [1, n, H] } };
  } finally {
    releaseTensor(r.out);
    releaseTensor(r.lse);
  }
}

/**
 * Rows in one GPU buffer that grows by doubling (the old rows copied on the device, the old buffer
 * released); a push writes only the new rows, from the host or from another GPU tensor.
 */
export class GpuRows implements RowStore<GpuTensor> {
  length = 0;
  private buffer: GPUBuffer | undefined;
  private capacity = 0;

  constructor(
    private readonly device: GPUDevice,
    readonly width: number,
    private readonly label: string,
  ) {}

  push(x: Float32Array | GpuTensor, rows: number): void {
    if (rows === 0) return;
    this.reserve(this.length + rows);
    const at = this.length * this.width * 4;
    if (x instanceof Float32Array) writeData(this.device, this.buffer!, at, x.subarray(0, rows * this.width));
    else {
      const enc = this.device.createCommandEncoder();
      enc.copyBufferToBuffer(x.buffer, x.offset, this.buffer!, at, rows * this.width * 4);
      this.device.queue.submit([enc.finish()]);
    }
    this.length += rows;
  }

  view(): GpuTensor {
    this.reserve(1);
    return { buffer: this.buffer!, shape: [this.length, this.width], offset: 0 };
  }

  dispose(): void {
    releaseBuffer(this.buffer);
    this.buffer = undefined;
    this.capacity = 0;
    this.length = 0;
  }

  private reserve(rows: number): void {
    if (rows <= this.capacity) return;
    const capacity = Math.max(rows, 2 * this.capacity, 64);
    const grown = createBuffer(this.device, capacity * this.width * 4, BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, `tilewise longheads ${this.label}`);
    if (this.buffer) {
      if (this.length > 0) {
        const enc = this.device.createCommandEncoder();
        enc.copyBufferToBuffer(this.buffer, 0, grown, 0, this.length * this.width * 4);
        this.device.queue.submit([enc.finish()]);
      }
      releaseBuffer(this.buffer);
    }
    this.buffer = grown;
    this.capacity = capacity;
  }
}

/** The WebGPU LongHeads backend on the shared device. */
export async function gpuOps(cfg: LongHeadsConfig, run: LongHeadsRun = {}): Promise<LongHeadsOps<GpuTensor>> {
  const ctx = await getContext();
  const poison = run.poison ?? false;
  return {
    backend: 'webgpu',
    upload: (x, shape) => withDevice((c) => toGpu(x, shape, c)),
    release: releaseTensor,
    store: (width, label) => new GpuRows(ctx.device, width, label),
    reps: (s, full) => withDevice((c) => chunkRepsGpu(c, s, full, cfg, poison)),
    select: (q, reps, g) => withDevice((c) => selectGpu(c, q, reps, g, cfg, poison)),
    attend: (s, opts) => withDevice((c) => attendGpu(c, s, opts, poison)),
  };
}
