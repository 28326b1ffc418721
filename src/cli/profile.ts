import cliProgress from 'cli-progress';
import { type Result, attention, blockSparseAttention, neighborhoodAttention, planAttention, planNA } from '../api.js';
import { type SchedulePicture, schedulePicture } from './schedule-picture.js';
import { type Grads, attentionBackward, blockSparseAttentionBackward, neighborhoodAttentionBackward } from '../backward.js';
import { scratchBytes } from '../cpu/kernels.js';
import { headLanesFit } from '../cpu/na-lanes.js';
import { cpuInfo, cpuThreads, setCpuThreads } from '../cpu/pool.js';
import { windowVolume } from '../cpu/na.js';
import { TilewiseError } from '../errors.js';
import { type CompiledPattern, compilePattern } from '../patterns/compile.js';
import type { AttnProblem } from '../problem.js';
import { referenceAttention } from '../reference.js';
import { type Tensor, randn, rng } from '../tensor.js';
import type { ProfileArgs } from './args.js';
import { type GpuIO, type Runner, type Target, type Timing, apiRunner, targetInfo, tensorRunner, uploadCase } from './targets.js';

export type ImplName = 'reference' | 'naive' | 'unfused' | 'fused' | 'dense-fused' | 'fused-backward';
type KernelImpl = Exclude<ImplName, 'reference' | 'fused-backward'>;

export interface ProfileRow {
  impl: ImplName;
  /** null when the backend cannot run the implementation (`unavailable` says why). */
  ms: number | null;
  usefulTflops: number | null;
  relErr: number | null;
  peakBytes: number | null;
  timing: Timing | 'sampled';
  unavailable?: string;
}

export interface ProfileReport {
  backend: 'cpu' | 'webgpu';
  /** Threads (CPU), or the adapter, its class, features and stored tuning (WebGPU). */
  device: Record<string, unknown>;
  label: string;
  problem: Record<string, unknown>;
  results: ProfileRow[];
  /** The pattern's tile schedule (for the HTML report). */
  schedule?: SchedulePicture;
  /** The path the fused kernels take on this target (fusedPath). */
  path?: string;
}

const prod = (t: readonly number[]) => t.reduce((a, b) => a * b, 1);

/** Allowed (query, key) pairs of one (batch, head): separable per axis for box patterns. */
export function allowedPairs(p: CompiledPattern, h = 0): number {
  if (p.boxRules) {
    let total = 0;
    p.groups.forEach((grp, g) => {
      const rules = p.boxRules!(g);
      total += grp.qLen.reduce((acc, n, a) => {
        let s = 0;
        for (let x = 0; x < n; x++) s += Math.max(0, rules[a]!.end(x) - rules[a]!.start(x) + 1);
        return acc * s;
      }, 1);
    });
    return total;
  }
  const nq = prod(p.geometry.qShape);
  const nk = prod(p.geometry.kShape);
  let n = 0;
  for (let q = 0; q < nq; q++) for (let k = 0; k < nk; k++) if (p.allows(0, h, q, k)) n++;
  return n;
}

/** A profiled problem: its inputs, the pattern's problem, the dense problem on the same tokens, and the API call of each implementation. */
export interface Case {
  label: string;
  problem: AttnProblem;
  dense: AttnProblem;
  impls: KernelImpl[];
  api(impl: KernelImpl, backend: 'cpu' | 'webgpu'): Promise<Result>;
  /** The fused backward for a fixed dOut through the API (the forward it needs is run once on the CPU, untimed), and its inputs. */
  backward(): Promise<{ call: () => Promise<Grads>; out: Tensor; lse: Tensor; dOut: Tensor }>;
  useful: number;
  denseUseful: number;
  inputs: { q: Tensor; k: Tensor; v: Tensor };
}

export function buildCase(a: ProfileArgs): Case {
  const { batch: B, heads: H, dim: D } = a;
  const na = a.pattern === 'na';
  const grid = na ? a.shape : [prod(a.shape)];
  const shape = [B, ...grid, H, D];
  const q = randn(shape, 11);
  const k = randn(shape, 12);
  const v = randn(shape, 13);
  const N = prod(a.shape);
  const flatShape = [B, N, H, D];
  const flat = (t: Tensor) => ({ data: t.data, shape: flatShape });
  const dense = planAttention(flat(q), flat(k), flat(v)).problem;
  let problem: AttnProblem;
  let impls: KernelImpl[];
  let run: (impl: KernelImpl, backend: 'cpu' | 'webgpu') => Promise<Result>;
  let grads: (out: Result, dOut: Tensor) => Promise<Grads>;
  if (na) {
    const opts = { kernelSize: a.kernel, dilation: a.dilation, stride: a.stride, isCausal: a.causal } as const;
    problem = planNA(q, k, v, opts).problem;
    impls = ['naive', 'unfused', 'fused'];
    run = (impl, backend) => neighborhoodAttention(q, k, v, { ...opts, impl: impl as 'naive' | 'unfused' | 'fused', backend });
    grads = (f, dOut) => neighborhoodAttentionBackward(q, k, v, f.out, f.lse, dOut, opts);
  } else if (a.pattern === 'blocksparse') {
    const bs = 64;
    const nb = Math.ceil(N / bs);
    const r = rng(7);
    const data = new Uint8Array(nb * nb).map((_, i) => (i % (nb + 1) === 0 || r() < a.density ? 1 : 0));
    const opts = { blockMask: { data, shape: [nb, nb] }, blockSize: bs } as const;
    impls = ['fused'];
    run = (_impl, backend) => blockSparseAttention(q, k, v, { ...opts, backend });
    grads = (f, dOut) => blockSparseAttentionBackward(q, k, v, f.out, f.lse, dOut, opts);
    problem = planAttention(q, k, v, { pattern: { kind: 'blockSparse', blockQ: bs, blockK: bs, mask: data, maskHeads: 1, numQBlocks: nb, numKBlocks: nb }, tile: { q: bs, kv: bs } }).problem;
  } else {
    const opts = a.pattern === 'causal' ? { causal: true } : a.pattern === 'window' ? { window: a.window as [number, number] } : {};
    impls = ['fused'];
    run = (_impl, backend) => attention(q, k, v, { ...opts, backend });
    grads = (f, dOut) => attentionBackward(q, k, v, f.out, f.lse, dOut, opts);
    problem = planAttention(q, k, v, opts).problem;
  }
  const cp = compilePattern(problem.pattern, { qGrid: problem.seqs[0]!.qGrid, kGrid: problem.seqs[0]!.kGrid, heads: H });
  const useful = allowedPairs(cp) * B * H;
  const label = na
    ? `na${grid.length}d ${a.shape.join('x')} k=${a.kernel.join('x')} d=${a.dilation.join('x')} s=${a.stride.join('x')}${a.causal ? ' causal' : ''}`
    : `${a.pattern} N=${N}${a.pattern === 'window' ? ` w=${a.window.join(',')}` : ''}${a.pattern === 'blocksparse' ? ` density=${a.density}` : ''}`;
  return {
    label: `${label} B=${B} H=${H} D=${D}`,
    problem,
    dense,
    impls: [...impls, 'dense-fused'],
    api: (impl, backend) => (impl === 'dense-fused' ? attention(flat(q), flat(k), flat(v), { backend }) : run(impl, backend)),
    backward: async () => {
      const f = await run('fused', 'cpu');
      const dOut = randn(f.out.shape, 14);
      return { call: () => grads(f, dOut), out: f.out, lse: f.lse, dOut };
    },
    useful,
    denseUseful: N * N * B * H,
    inputs: { q, k, v },
  };
}

/** CPU scratch and intermediates beyond inputs and outputs (an estimate from the kernels' own sizing). */
function cpuPeakBytes(impl: KernelImpl, p: AttnProblem): number {
  const rank = p.pattern.kind === 'neighborhood' ? p.pattern.kernelSize.length : 1;
  const threads = cpuThreads();
  switch (impl) {
    case 'fused':
      // head lanes: the larger of its two phases' scratch, and a byte per row of q, k, v for the screen
      if (headLanesFit(p, false)) return Math.max(scratchBytes('lanes', p, rank, threads), scratchBytes('naLanes', p, rank, threads)) * threads + p.qRows * p.heads + 2 * p.kRows * p.kvHeads;
      return scratchBytes('fused', p, rank, threads) * threads;
    case 'dense-fused':
      return scratchBytes('fused', { ...p, pattern: { kind: 'dense' }, qTile: [64], kvTile: [64] }, 1, threads) * threads;
    case 'naive':
      return scratchBytes('naive', p, rank, threads) * threads;
    case 'unfused':
      return p.qRows * p.heads * windowVolume(p) * 4 + scratchBytes('naQK', p, rank, threads) * threads;
  }
}

const refBytes = (p: AttnProblem, sampled: number): number => sampled * p.heads * (p.dimV + 1) * 8 + p.qRows * p.heads * (p.dimV + 1) * 8 + p.kRows * 8;

function runnerFor(t: Target, c: Case, impl: KernelImpl, io: GpuIO | undefined, wall: boolean): Runner {
  if (t.name === 'cpu') {
    const r = apiRunner(() => c.api(impl, 'cpu'), 'wall');
    r.measuredBytes = cpuPeakBytes(impl, c.problem);
    return r;
  }
  const { gpu } = t;
  switch (impl) {
    case 'fused':
      return tensorRunner(t, io!, c.problem, gpu.runWebGPUFusedTensors, wall);
    case 'dense-fused':
      return tensorRunner(t, io!, c.dense, gpu.runWebGPUFusedTensors, wall);
    case 'naive':
      return tensorRunner(t, io!, c.problem, gpu.runWebGPUNaiveTensors, wall);
    case 'unfused':
      // no GPU-tensor entry point for the unfused family: through the API, transfers included
      return apiRunner(() => c.api(impl, 'webgpu'), 'wall+io', { mod: gpu, ioBytes: io!.bytes });
  }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Relative error of the sampled rows of `out` against the float64 reference. */
export function sampledErr(out: Float32Array, ref: Float64Array, rows: number[], width: number): number {
  let num = 0;
  let den = 0;
  for (const r of rows)
    for (let c = 0; c < width; c++) {
      const d = out[r * width + c]! - ref[r * width + c]!;
      num += d * d;
      den += ref[r * width + c]! ** 2;
    }
  return Math.sqrt(num / (den || 1));
}

/** The float64 reference on a row subsample (it is quadratic): rows, output, and its time scaled to all rows. */
export function sampledReference(c: Case): { rows: number[]; out: Float64Array; row: ProfileRow } {
  const p = c.problem;
  const r = rng(3);
  const maxRows = 48;
  const rows = p.qRows <= maxRows ? Array.from({ length: p.qRows }, (_, i) => i) : Array.from({ length: maxRows }, () => Math.floor(r() * p.qRows));
  const rowSet = new Set(rows);
  const t0 = performance.now();
  const ref = referenceAttention(p, { q: c.inputs.q.data, k: c.inputs.k.data, v: c.inputs.v.data }, rowSet);
  const ms = ((performance.now() - t0) * p.qRows) / rowSet.size;
  const row: ProfileRow = { impl: 'reference', ms, usefulTflops: tflops(c.useful, p, ms), relErr: 0, peakBytes: refBytes(p, rowSet.size), timing: 'sampled' };
  return { rows, out: ref.out, row };
}

const tflops = (pairs: number, p: AttnProblem, ms: number): number => (pairs * 2 * (p.dim + p.dimV)) / (ms * 1e9);

/** Timed runs per row when calibrating: enough for about this long, 3 to 200 runs. */
const CALIBRATE_MS = 300;

/** Untimed runs before timing: at least this many, and this long (at most WARM_MAX). */
const WARM_RUNS = 2;
const WARM_MS = 200;
const WARM_MAX = 30;

/**
 * `repeat` timed runs, or (0) as many as fit CALIBRATE_MS judging by the first (small cases need many
 * to rank), after a warm-up: the CPU workers' schedule walk reaches optimised code only after several
 * calls, and without it a 5 ms neighborhood call read 15-19 ms in the quick profile.
 */
export async function timeRuns(time: () => Promise<number>, repeat: number): Promise<number[]> {
  for (let n = 0, t0 = performance.now(); n < WARM_MAX && (n < WARM_RUNS || performance.now() - t0 < WARM_MS); n++) await time();
  const times = [await time()];
  const n = repeat > 0 ? repeat : Math.min(200, Math.max(3, Math.ceil(CALIBRATE_MS / Math.max(times[0]!, 0.01))));
  while (times.length < n) times.push(await time());
  return times;
}

/** Times one runner: the checked run (warm-up), then the timed runs; a TilewiseError makes the row n/a. */
export async function measure(runner: () => Runner, impl: ImplName, pairs: number, p: AttnProblem, repeat: number, ref?: { rows: number[]; out: Float64Array }): Promise<ProfileRow> {
  let r: Runner | undefined;
  try {
    r = runner();
    const out = await r.check();
    const ms = median(await timeRuns(() => r!.time(), repeat));
    return {
      impl,
      ms,
      usefulTflops: tflops(pairs, p, ms),
      relErr: ref ? sampledErr(out, ref.out, ref.rows, p.heads * p.dimV) : null,
      peakBytes: r.measuredBytes ?? null,
      timing: r.timing,
    };
  } catch (e) {
    if (!(e instanceof TilewiseError)) throw e;
    return { impl, ms: null, usefulTflops: null, relErr: null, peakBytes: null, timing: r?.timing ?? 'wall', unavailable: e.message };
  } finally {
    r?.dispose?.();
  }
}

/**
 * The fused backward (FlashAttention-2 counts its work as 2.5 forwards, so useful TFLOP/s uses 2.5x
 * the forward's pairs). CPU: the API call. WebGPU: the kernels on the case's GPU tensors, timed like
 * the forward rows (GPU timestamps where the device has them and `wall` is not asked for); the
 * host builds its two uploaded schedules inside each call, which timestamps do not see.
 */
async function measureBackward(t: Target, c: Case, repeat: number, wall: boolean, io?: GpuIO): Promise<ProfileRow> {
  const row: ProfileRow = { impl: 'fused-backward', ms: null, usefulTflops: null, relErr: null, peakBytes: null, timing: 'wall' };
  const b = await c.backward();
  let time: () => Promise<number>;
  let done = () => {};
  if (t.name === 'cpu') {
    await b.call();
    time = async () => {
      const s = performance.now();
      await b.call();
      return performance.now() - s;
    };
  } else {
    const { gpu, ctx } = t;
    const p = c.problem;
    const up = (x: Tensor, shape: number[]) => gpu.toGpu(x.data, shape, ctx);
    const extra = [await up(b.out, [p.qRows, p.heads, p.dimV]), await up(b.lse, [p.qRows, p.heads]), await up(b.dOut, [p.qRows, p.heads, p.dimV])];
    const ts = { q: io!.q, k: io!.k, v: io!.v, out: extra[0]!, lse: extra[1]!, dout: extra[2]! };
    const timer = !wall && gpu.GpuTimer.supported(ctx) ? new gpu.GpuTimer(ctx) : undefined;
    const once = async (timed: boolean): Promise<number> => {
      const s = performance.now();
      const g = await gpu.runWebGPUBackwardTensors(p, ts, timed && timer ? { timer } : {});
      await ctx.device.queue.onSubmittedWorkDone();
      const ms = timed && timer ? await timer.read() : performance.now() - s;
      for (const x of Object.values(g)) gpu.releaseTensor(x);
      return ms;
    };
    await once(false);
    time = () => once(true);
    row.timing = timer ? 'gpu-ts' : 'wall-gpu';
    done = () => {
      timer?.destroy();
      extra.forEach(gpu.releaseTensor);
    };
  }
  try {
    const ms = median(await timeRuns(time, repeat));
    return { ...row, ms, usefulTflops: tflops(2.5 * c.useful, c.problem, ms) };
  } finally {
    done();
  }
}

/**
 * The path the fused kernels take for `p` on a target, as a profiler user would want to know it:
 * on the CPU, neighborhoods with heads in fours run on head lanes (cpu/na-lanes.ts), the rest on
 * the query-lane tile step; on WebGPU, the forward's (and the backward's) tiles are walked in the
 * kernel (analytic patterns) or read from a host-built, uploaded schedule.
 */
async function fusedPath(t: Target, p: AttnProblem, backward: boolean): Promise<string> {
  if (t.name === 'cpu') return headLanesFit(p, false) ? 'head lanes (4 heads of a query in the SIMD lanes)' : 'query lanes (tile step)';
  const [{ planFused, tuningFor }, { planBackward, backwardTuningFor }] = await Promise.all([import('../webgpu/fused.js'), import('../webgpu/backward.js')]);
  const walk = (analytic: boolean) => (analytic ? 'in-kernel walk' : 'uploaded schedule');
  const fwd = planFused(p, t.ctx.limits, tuningFor(t.ctx), t.ctx.subgroupMinSize).spec.schedule !== 'list';
  const bwd = () => planBackward(p, t.ctx.limits, backwardTuningFor(t.ctx)).q.spec.schedule === 'analytic';
  return `forward ${walk(fwd)}${backward ? `, backward ${walk(bwd())}` : ''}`;
}

/** backward ms / fused forward ms of a report, when it has both. */
export function backwardRatio(r: ProfileReport): number | undefined {
  const f = r.results.find((x) => x.impl === 'fused')?.ms;
  const b = r.results.find((x) => x.impl === 'fused-backward')?.ms;
  return f && b ? b / f : undefined;
}

/** Profiles one case on every target, same inputs, one reference. */
export async function profileCase(a: ProfileArgs, targets: readonly Target[], onStep: (what: string) => void): Promise<ProfileReport[]> {
  if (a.threads) setCpuThreads(a.threads);
  const c = buildCase(a);
  const p = c.problem;
  const want = (i: ImplName) => !a.impls || a.impls.includes(i as never);
  onStep('reference');
  const ref = want('reference') ? sampledReference(c) : undefined;
  const reports: ProfileReport[] = [];
  for (const t of targets) {
    const io = t.name === 'webgpu' ? await uploadCase(t, p, c.inputs) : undefined;
    const results: ProfileRow[] = ref ? [ref.row] : [];
    try {
      for (const impl of c.impls.filter(want)) {
        onStep(`${t.name} ${impl}`);
        const dense = impl === 'dense-fused';
        results.push(await measure(() => runnerFor(t, c, impl, io, a.gpuTiming === 'wall'), impl, dense ? c.denseUseful : c.useful, p, a.repeat, dense ? undefined : ref));
      }
      if (a.backward) {
        onStep(`${t.name} backward`);
        results.push(await measureBackward(t, c, a.repeat, a.gpuTiming === 'wall', io));
      }
    } finally {
      io?.release();
    }
    const { tune: _t, tuneRounds: _r, backends: _b, json: _j, gpuTiming: _g, backward: _w, html: _h, impls: _i, ...problem } = a;
    const path = await fusedPath(t, p, a.backward).catch(() => undefined);
    reports.push({ backend: t.name, device: targetInfo(t), label: c.label, problem: { ...problem, label: c.label }, results, ...(path ? { path } : {}), ...(a.html ? { schedule: schedulePicture(p) } : {}) });
  }
  return reports;
}

/** Progress steps of one case on `targets` (the reference, then each implementation per target). */
export const caseSteps = (a: ProfileArgs, targets: number): number => 1 + targets * ((a.pattern === 'na' ? 4 : 2) + (a.backward ? 1 : 0));

export const QUICK_SUITE: Partial<ProfileArgs>[] = [
  { pattern: 'na', shape: [32, 32], kernel: [7, 7], dilation: [1, 1], stride: [1, 1], heads: 4, dim: 32 },
  { pattern: 'na', shape: [48], kernel: [13], dilation: [2], stride: [1], heads: 4, dim: 32, causal: true },
  { pattern: 'dense', shape: [1024], heads: 4, dim: 64 },
  { pattern: 'causal', shape: [1024], heads: 4, dim: 64 },
  { pattern: 'window', shape: [2048], window: [128, 128], heads: 4, dim: 64 },
  { pattern: 'blocksparse', shape: [1024], density: 0.25, heads: 4, dim: 64 },
];

function grid(head: string[], body: string[][]): string[] {
  // rows shorter than the head (n/a rows) run their last cell on without padding
  const w = head.map((h, i) => Math.max(h.length, ...body.filter((b) => b.length === head.length).map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((x, i) => (i === cells.length - 1 ? x : x.padEnd(w[i]!))).join('  ');
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)];
}

export function formatTable(title: string, rows: ProfileRow[]): string {
  const head = ['impl', 'median ms', 'useful TFLOP/s', 'peak extra bytes', 'relErr', 'timing'];
  const body = rows.map((r) =>
    r.ms === null
      ? [r.impl, `n/a (${r.unavailable})`]
      : [
          r.impl,
          r.ms.toFixed(r.ms < 10 ? 2 : 1) + (r.impl === 'reference' ? '*' : ''),
          r.usefulTflops!.toExponential(2),
          r.peakBytes === null ? '-' : fmtBytes(r.peakBytes),
          r.relErr === null ? '-' : r.relErr.toExponential(1),
          r.timing,
        ],
  );
  return [title, ...grid(head, body)].join('\n');
}

/** Per implementation, the time on each target and the ratio of the first target's time to the others'. */
export function formatComparison(reports: readonly ProfileReport[]): string {
  const [first, ...rest] = reports;
  const names = reports.map((r) => r.backend);
  const head = ['impl', ...names.map((n) => `${n} ms`), ...rest.map((r) => `${first!.backend}/${r.backend}`)];
  const body = first!.results
    .filter((row) => row.impl !== 'reference')
    .map((row) => {
      const ms = reports.map((r) => r.results.find((x) => x.impl === row.impl)?.ms ?? null);
      const fmt = (x: number | null) => (x === null ? 'n/a' : x.toFixed(x < 10 ? 2 : 1));
      return [row.impl, ...ms.map(fmt), ...ms.slice(1).map((x) => (x === null || ms[0] === null ? '-' : `${(ms[0]! / x).toFixed(2)}x`))];
    });
  // a ratio of two timing kinds is worth saying: wall-clock on one side, GPU timestamps on the other
  const kinds = reports.map((r) => [...new Set(r.results.filter((x) => x.impl !== 'reference' && x.ms !== null).map((x) => x.timing))].join('/'));
  const note = new Set(kinds).size > 1 ? [`ratios divide ${names.map((n, i) => `${n} ${kinds[i]}`).join(' by ')} times (see the timing legend)`] : [];
  return [`${first!.label}: ${names.join(' vs ')}, same inputs, this run`, ...grid(head, body), ...note].join('\n');
}

export function fmtBytes(b: number): string {
  return b < 1024 ? `${b} B` : b < 1 << 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / (1 << 20)).toFixed(1)} MiB`;
}

/** Footer lines: what each target was, and what each timing code means (only those used). */
export function footer(targets: readonly Target[], reports: readonly ProfileReport[], notes: readonly string[]): string {
  return [...notes, ...targets.map(describeTarget), ...timingLegend(reports)].join('\n');
}

function describeTarget(t: Target): string {
  if (t.name === 'cpu') {
    const i = cpuInfo();
    const failed = i.workersFailed ? ` The pool's workers did not start (${i.workersFailed.split('\n')[0]}): one thread.` : '';
    return `cpu: ${t.threads} ${i.mode === 'workers' ? 'worker threads' : 'thread (the calling one)'}, ${i.kernels} WebAssembly tile kernels.${failed}`;
  }
  const info = targetInfo(t);
  const tuned = t.ctx.tuning ? `; stored fused tuning ${JSON.stringify(t.ctx.tuning)}` : '';
  return `webgpu: ${info['adapter']} (adapter class ${info['adapterClass']}; features: ${(info['features'] as string[]).join(', ') || 'none'}${tuned}).`;
}

function timingLegend(reports: readonly ProfileReport[]): string[] {
  const notes: Record<ProfileRow['timing'], string> = {
    sampled: 'reference (float64, CPU) timed on a row subsample and scaled to all rows (*); relErr on sampled rows vs float64',
    wall: 'wall-clock per call',
    'gpu-ts': 'GPU timestamps: sum of the compute passes of a call (the CPU-side schedule build is not included)',
    'wall-gpu': 'wall-clock per call on GPU-resident inputs until the queue is idle, schedule build included (--gpu-timing wall, or no timestamp-query)',
    'wall+io': 'wall-clock per call through the public API, uploads and readback included',
  };
  const used = new Set(reports.flatMap((r) => r.results.filter((x) => x.ms !== null).map((x) => x.timing)));
  return (Object.keys(notes) as ProfileRow['timing'][]).filter((k) => used.has(k)).map((k) => `timing ${k}: ${notes[k]}.`);
}

export function progressBar(total: number): { step: (what: string) => void; stop: () => void } {
  const bar = new cliProgress.SingleBar(
    { format: 'profiling [{bar}] {value}/{total} {what}', stream: process.stderr, hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { what: '' });
  let n = 0;
  return {
    step: (what) => bar.update(n++, { what }),
    stop: () => {
      bar.update(total);
      bar.stop();
    },
  };
}
