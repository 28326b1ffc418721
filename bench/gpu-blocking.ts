/**
 * Blocking sweep of the fused forward and of the backward on one GPU, in one device call: every
 * case of bench/gpu.ts's forward+backward table (dense and causal B4 N4096 H32 D64, 2-D NA 128x128
 * k13 H16 D64, 3-D NA 32^3 k7 H8 D64) under each given tuning, GPU timestamps, median of 5 after a
 * 0.4 s warm-up (an idle GPU drops its clocks). Each forward tuning is checked against float64 on
 * sampled rows of every case, each backward tuning on a small causal and a small 2-D NA problem;
 * a tuning that fails a check or a pipeline is reported, not timed.
 *
 *   node dist/bench/gpu-blocking.js [--fwd JSON] [--bwd JSON] [--out DIR] [--smoke]
 *
 * --fwd / --bwd: arrays of partial tunings (webgpu FusedTuning / BackwardTuning) merged over the
 * adapter's built-in row; the built-in row itself is always timed first as the baseline.
 * --smoke: tiny sizes on any adapter (lavapipe here): it checks the script, its numbers mean nothing.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { planAttention, planNA } from '../src/api.js';
import { allowedPairs, median } from '../src/cli/profile.js';
import { compilePattern } from '../src/patterns/compile.js';
import type { AttnProblem } from '../src/problem.js';
import { referenceAttention } from '../src/reference.js';
import { referenceBackward } from '../src/reference-backward.js';
import { randn, relError } from '../src/tensor.js';
import { warmUp as warmGpu } from './gpu-warm.js';
import {
  type BackwardTuning,
  type FusedTuning,
  GpuTimer,
  type GpuTensor,
  fromGpu,
  getContext,
  releaseTensor,
  runWebGPUBackward,
  runWebGPUBackwardTensors,
  runWebGPUFused,
  runWebGPUFusedTensors,
  setBackwardTuning,
  setFusedTuning,
  toGpu,
} from '../src/webgpu/index.js';

const { values: opt } = parseArgs({
  options: { fwd: { type: 'string' }, bwd: { type: 'string' }, out: { type: 'string' }, smoke: { type: 'boolean', default: false } },
});
const smoke = opt.smoke!;
const fwdTunings: Partial<FusedTuning>[] = [{}, ...(opt.fwd ? (JSON.parse(opt.fwd) as Partial<FusedTuning>[]) : [])];
const bwdTunings: Partial<BackwardTuning>[] = [{}, ...(opt.bwd ? (JSON.parse(opt.bwd) as Partial<BackwardTuning>[]) : [])];

const ctx = await getContext();
const timer = GpuTimer.supported(ctx) ? new GpuTimer(ctx) : undefined;
console.log(`adapter: ${ctx.description} (class ${ctx.adapterClass}); timing: ${timer ? 'GPU timestamps' : 'wall clock'}; workgroup memory ${ctx.limits.maxComputeWorkgroupStorageSize} B, ${ctx.limits.maxComputeInvocationsPerWorkgroup} invocations`);

interface Case {
  name: string;
  problem: AttnProblem;
  host: { q: Float32Array; k: Float32Array; v: Float32Array };
  pairs: number;
}
const S = smoke ? { dense: [1, 256, 2, 32], na2: [16, 16, 2, 32, 5], na3: [6, 6, 6, 2, 32, 3] } : { dense: [4, 4096, 32, 64], na2: [128, 128, 16, 64, 13], na3: [32, 32, 32, 8, 64, 7] };
const tensor = (shape: number[], seed: number) => randn(shape, seed);
const cases: Case[] = [];
for (const causal of [false, true]) {
  const [B, N, H, D] = S.dense as [number, number, number, number];
  const [q, k, v] = [1, 2, 3].map((i) => tensor([B, N, H, D], i)) as [ReturnType<typeof randn>, ReturnType<typeof randn>, ReturnType<typeof randn>];
  cases.push({ name: `${causal ? 'causal' : 'dense'} B${B} N${N} H${H} D${D}`, problem: planAttention(q, k, v, { causal }).problem, host: { q: q.data, k: k.data, v: v.data }, pairs: B * H * (causal ? (N * (N + 1)) / 2 : N * N) });
}
for (const spec of [S.na2, S.na3]) {
  const grid = spec.slice(0, -3);
  const [H, D, K] = spec.slice(-3) as [number, number, number];
  const [q, k, v] = [1, 2, 3].map((i) => tensor([1, ...grid, H, D], i)) as [ReturnType<typeof randn>, ReturnType<typeof randn>, ReturnType<typeof randn>];
  const { problem } = planNA(q, k, v, { kernelSize: K });
  const cp = compilePattern(problem.pattern, { qGrid: problem.seqs[0]!.qGrid, kGrid: problem.seqs[0]!.kGrid, heads: problem.heads });
  cases.push({ name: `${grid.length}-D NA ${grid.join('x')} k${K} H${H} D${D}`, problem, host: { q: q.data, k: k.data, v: v.data }, pairs: allowedPairs(cp) * H });
}

const warmUp = (call: () => Promise<unknown>) => warmGpu(ctx, call, smoke ? 50 : 400);

/** Median of `n` timed calls (GPU timestamps when there are, else wall clock until the queue is idle). */
async function timed(call: (t?: GpuTimer) => Promise<unknown>, n: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await call(timer);
    await ctx.device.queue.onSubmittedWorkDone();
    times.push(timer ? await timer.read() : performance.now() - s);
  }
  return median(times);
}

/** The sampled rows (row width w) of a full-size output, back to back. */
const rowsOf = (x: Float32Array | Float64Array, rows: Iterable<number>, w: number): Float64Array => Float64Array.from([...rows].flatMap((r) => [...x.subarray(r * w, r * w + w)]));

interface Row {
  pass: 'forward' | 'backward';
  case: string;
  tuning: Record<string, unknown>;
  ms?: number;
  tflops?: number;
  relErr?: number;
  failed?: string;
}
const rows: Row[] = [];

// ---- forward ----------------------------------------------------------------------------------
for (const c of cases) {
  const p = c.problem;
  const [q, k, v] = await Promise.all([toGpu(c.host.q, [p.qRows, p.heads, p.dim]), toGpu(c.host.k, [p.kRows, p.kvHeads, p.dim]), toGpu(c.host.v, [p.kRows, p.kvHeads, p.dimV])]);
  const sample = new Set([0, 1, Math.floor(p.qRows / 3), Math.floor(p.qRows / 2), p.qRows - 1]);
  const ref = referenceAttention(p, c.host, sample);
  const w = p.heads * p.dimV;
  for (const tuning of fwdTunings) {
    setFusedTuning(Object.keys(tuning).length ? tuning : undefined);
    try {
      const r = await runWebGPUFusedTensors(p, q, k, v, { poison: true });
      const got = await fromGpu(r.out);
      const err = relError(rowsOf(got, sample, w), rowsOf(ref.out, sample, w));
      for (const x of Object.values(r)) releaseTensor(x);
      if (!(err < 1e-4)) throw new Error(`relErr ${err} against float64`);
      const call = async (t?: GpuTimer) => {
        for (const x of Object.values(await runWebGPUFusedTensors(p, q, k, v, t ? { timer: t } : {}))) releaseTensor(x);
      };
      await warmUp(call);
      const ms = await timed(call, 5);
      rows.push({ pass: 'forward', case: c.name, tuning, ms, tflops: (c.pairs * 2 * (p.dim + p.dimV)) / (ms * 1e9), relErr: err });
      console.error(`forward ${c.name} ${JSON.stringify(tuning)}: ${ms.toFixed(2)} ms, relErr ${err.toExponential(1)}`);
    } catch (e) {
      rows.push({ pass: 'forward', case: c.name, tuning, failed: (e as Error).message.split('\n')[0] });
      console.error(`forward ${c.name} ${JSON.stringify(tuning)}: failed (${(e as Error).message.split('\n')[0]})`);
    } finally {
      setFusedTuning(undefined);
    }
  }
  for (const x of [q, k, v]) releaseTensor(x);
}

// ---- backward ---------------------------------------------------------------------------------
const checks: AttnProblem[] = (() => {
  const [q, k, v] = [1, 2, 3].map((i) => tensor([1, 200, 4, 64], 30 + i));
  const [q2, k2, v2] = [1, 2, 3].map((i) => tensor([1, 20, 20, 2, 64], 40 + i));
  return [planAttention(q!, k!, v!, { causal: true }).problem, planNA(q2!, k2!, v2!, { kernelSize: 7 }).problem];
})();
const checkHost = checks.map((p, i) => ({ q: randn([p.qRows * p.heads * p.dim], 50 + i).data, k: randn([p.kRows * p.kvHeads * p.dim], 60 + i).data, v: randn([p.kRows * p.kvHeads * p.dimV], 70 + i).data }));
const badBwd = new Map<string, string>();
for (const tuning of bwdTunings) {
  setBackwardTuning(Object.keys(tuning).length ? tuning : undefined);
  try {
    for (const [i, p] of checks.entries()) {
      const h = checkHost[i]!;
      const f = await runWebGPUFused(p, h.q, h.k, h.v);
      const dout = randn([f.out.length], 80 + i).data;
      const g = await runWebGPUBackward(p, { ...h, out: f.out, lse: f.lse, dout }, { poison: true });
      const r = referenceBackward(p, h, dout);
      const err = Math.max(relError(g.dq, r.dq), relError(g.dk, r.dk), relError(g.dv, r.dv));
      if (!(err < 1e-4)) throw new Error(`backward relErr ${err} against float64 (check ${i})`);
    }
  } catch (e) {
    badBwd.set(JSON.stringify(tuning), (e as Error).message.split('\n')[0]!);
  } finally {
    setBackwardTuning(undefined);
  }
}
for (const c of cases) {
  const p = c.problem;
  const [q, k, v] = await Promise.all([toGpu(c.host.q, [p.qRows, p.heads, p.dim]), toGpu(c.host.k, [p.kRows, p.kvHeads, p.dim]), toGpu(c.host.v, [p.kRows, p.kvHeads, p.dimV])]);
  const fw = await runWebGPUFusedTensors(p, q, k, v);
  const dout: GpuTensor = await toGpu(randn([p.qRows * p.heads * p.dimV], 21).data, [p.qRows, p.heads, p.dimV]);
  const t = { q, k, v, out: fw.out, lse: fw.lse, dout };
  for (const tuning of bwdTunings) {
    const bad = badBwd.get(JSON.stringify(tuning));
    if (bad) {
      rows.push({ pass: 'backward', case: c.name, tuning, failed: bad });
      continue;
    }
    setBackwardTuning(Object.keys(tuning).length ? tuning : undefined);
    try {
      const call = async (tm?: GpuTimer) => {
        for (const x of Object.values(await runWebGPUBackwardTensors(p, t, tm ? { timer: tm } : {}))) releaseTensor(x);
      };
      await call();
      await warmUp(call);
      const ms = await timed(call, 3);
      rows.push({ pass: 'backward', case: c.name, tuning, ms, tflops: (2.5 * c.pairs * 2 * (p.dim + p.dimV)) / (ms * 1e9) });
      console.error(`backward ${c.name} ${JSON.stringify(tuning)}: ${ms.toFixed(2)} ms`);
    } catch (e) {
      rows.push({ pass: 'backward', case: c.name, tuning, failed: (e as Error).message.split('\n')[0] });
      console.error(`backward ${c.name} ${JSON.stringify(tuning)}: failed (${(e as Error).message.split('\n')[0]})`);
    } finally {
      setBackwardTuning(undefined);
    }
  }
  for (const x of [q, k, v, dout, fw.out, fw.lse]) releaseTensor(x);
}
timer?.destroy();

// ---- table: per pass and tuning, each case's ms and its ratio to the built-in row -------------
for (const pass of ['forward', 'backward'] as const) {
  const tunings = pass === 'forward' ? fwdTunings : bwdTunings;
  console.log(`\n${pass} (ms; x: built-in / this, > 1 is faster)`);
  console.log(`| tuning | ${cases.map((c) => c.name).join(' | ')} |`);
  console.log(`|---|${cases.map(() => '---:').join('|')}|`);
  for (const tuning of tunings) {
    const cells = cases.map((c) => {
      const r = rows.find((x) => x.pass === pass && x.case === c.name && x.tuning === tuning);
      const base = rows.find((x) => x.pass === pass && x.case === c.name && x.tuning === tunings[0]);
      if (!r || r.ms === undefined) return `failed: ${r?.failed ?? '?'}`;
      return base?.ms ? `${r.ms.toFixed(2)} (${(base.ms / r.ms).toFixed(2)}x)` : r.ms.toFixed(2);
    });
    console.log(`| ${Object.keys(tuning).length ? JSON.stringify(tuning) : 'built-in'} | ${cells.join(' | ')} |`);
  }
}
if (opt.out) {
  await mkdir(opt.out, { recursive: true });
  await writeFile(join(opt.out, 'gpu-blocking.json'), JSON.stringify({ adapter: ctx.description, timing: timer ? 'gpu-ts' : 'wall', rows }, null, 1));
}
