/**
 * The fused WebGPU kernel's alternative paths, each against its baseline in the same run, same
 * inputs (GPU-resident, uploaded once): schedule computed in the kernel vs built on the host and
 * uploaded; subgroup exchange vs workgroup memory; f16 storage vs f32; token-permuted vs
 * token-order q/k/v for N-D and dilated neighborhoods. Wall time per call until the queue is idle
 * (host schedule build and permutation passes included: that is what the pairs weigh), median of
 * `--repeat` after one warm-up. The backward's walks too: in the kernel vs uploaded schedules (after
 * the warm-up the uploaded ones come from the backward's schedule cache, so the pair weighs the
 * kernels; `--host` times building those schedules). Usage:
 *   node dist/bench/webgpu-paths.js [--repeat 5] [--quick] [--only <text in the path name>] [--host]
 */
import { parseArgs } from 'node:util';
import { type AttentionOptions, type NeighborhoodOptions, attention, neighborhoodAttention, planAttention, planNA } from '../src/api.js';
import { attentionBackward, neighborhoodAttentionBackward } from '../src/backward.js';
import { BACKWARD_TUNING, planBackward, setBackwardTuning } from '../src/webgpu/backward.js';
import { buildGpuSchedule } from '../src/webgpu/schedule.js';
import { type AttnProblem, ItemSpace } from '../src/problem.js';
import type { Tensor } from '../src/tensor.js';
import { randn } from '../src/tensor.js';
import { getContext } from '../src/webgpu/device.js';
import { setFusedTuning } from '../src/webgpu/fused.js';
import { type GpuDType, type GpuTensor, releaseTensor, toGpu } from '../src/webgpu/tensor.js';

const { values } = parseArgs({ options: { repeat: { type: 'string', default: '5' }, quick: { type: 'boolean', default: false }, only: { type: 'string' }, host: { type: 'boolean', default: false } } });
const repeat = Number(values.repeat);
const ctx = await getContext();
const quick = values.quick!;

interface Case {
  name: string;
  shape: number[];
  /** A neighborhood on 2-3 axes or dilated: the token permutation applies. */
  na?: boolean;
  run: (q: GpuTensor, k: GpuTensor, v: GpuTensor) => Promise<unknown>;
  /** The backward of the same call (forward outputs and dOut given). */
  back: (q: GpuTensor, k: GpuTensor, v: GpuTensor, out: GpuTensor, lse: GpuTensor, dOut: GpuTensor) => Promise<unknown>;
}
const attn = (o: AttentionOptions): Pick<Case, 'run' | 'back'> => ({
  run: (q, k, v) => attention(q, k, v, o),
  back: (q, k, v, out, lse, dOut) => attentionBackward(q, k, v, out, lse, dOut, { ...o, backend: 'webgpu' }),
});
const na = (o: NeighborhoodOptions): Pick<Case, 'run' | 'back'> => ({
  run: (q, k, v) => neighborhoodAttention(q, k, v, o),
  back: (q, k, v, out, lse, dOut) => neighborhoodAttentionBackward(q, k, v, out, lse, dOut, { ...o, backend: 'webgpu' }),
});
// planning reads shapes only: zero-filled host tensors stand in for the big problems' inputs
const zeros = (shape: number[]): [Tensor, Tensor, Tensor] => {
  const t = { data: new Float32Array(shape.reduce((x, y) => x * y, 1)), shape };
  return [t, t, t];
};
const n1 = quick ? 512 : 2048;
const side = quick ? 24 : 48;
const cube = quick ? 8 : 14;
const cases: Case[] = [
  { name: `causal N=${n1} H4 D64`, shape: [1, n1, 4, 64], ...attn({ causal: true }) },
  { name: `window 256 N=${n1} H4 D64`, shape: [1, n1, 4, 64], ...attn({ window: [128, 127] }) },
  { name: `2-D NA ${side}x${side} k7 H4 D32`, shape: [1, side, side, 4, 32], na: true, ...na({ kernelSize: 7 }) },
  { name: `2-D NA ${side}x${side} k7 dil 2 H4 D32`, shape: [1, side, side, 4, 32], na: true, ...na({ kernelSize: 7, dilation: 2 }) },
  { name: `3-D NA ${cube}^3 k5 H4 D32`, shape: [1, cube, cube, cube, 4, 32], na: true, ...na({ kernelSize: 5 }) },
];

async function time(c: Case, dtype: GpuDType, tuning: Record<string, boolean>): Promise<number> {
  const ts = await Promise.all([1, 2, 3].map((s) => toGpu(randn(c.shape, s).data, c.shape, ctx, dtype)));
  setFusedTuning(tuning);
  try {
    const once = async () => {
      const t = performance.now();
      const r = (await c.run(ts[0]!, ts[1]!, ts[2]!)) as { out: GpuTensor; lse: GpuTensor };
      await ctx.device.queue.onSubmittedWorkDone();
      const dt = performance.now() - t;
      releaseTensor(r.out);
      releaseTensor(r.lse);
      return dt;
    };
    await once(); // compile
    const xs: number[] = [];
    for (let i = 0; i < repeat; i++) xs.push(await once());
    return xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  } finally {
    setFusedTuning(undefined);
    ts.forEach(releaseTensor);
  }
}

/** Median wall ms of the backward on one forward's outputs, its walks in the kernel or uploaded. */
async function timeBackward(c: Case, analytic: boolean): Promise<number> {
  const ts = await Promise.all([1, 2, 3, 4].map((s) => toGpu(randn(c.shape, s).data, c.shape, ctx)));
  const [q, k, v, dOut] = ts as [GpuTensor, GpuTensor, GpuTensor, GpuTensor];
  const fw = (await c.run(q, k, v)) as { out: GpuTensor; lse: GpuTensor };
  setBackwardTuning({ analytic });
  try {
    const once = async () => {
      const t = performance.now();
      const g = (await c.back(q, k, v, fw.out, fw.lse, dOut)) as Record<string, GpuTensor>;
      await ctx.device.queue.onSubmittedWorkDone();
      const dt = performance.now() - t;
      Object.values(g).forEach(releaseTensor);
      return dt;
    };
    await once(); // compile (and, uploaded, build and cache the schedules)
    const xs: number[] = [];
    for (let i = 0; i < repeat; i++) xs.push(await once());
    return xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  } finally {
    setBackwardTuning(undefined);
    [...ts, fw.out, fw.lse].forEach(releaseTensor);
  }
}

type Pair = [string, GpuDType, Record<string, boolean>, GpuDType, Record<string, boolean>, boolean?];
const pairs: Pair[] = [
  ['schedule: in-kernel / uploaded', 'f32', { analytic: true }, 'f32', { analytic: false }],
  ['exchange: subgroups / workgroup memory', 'f32', { subgroups: true }, 'f32', { subgroups: false }],
  ...(ctx.features.has('shader-f16') ? ([['storage: f16 / f32', 'f16', {}, 'f32', {}]] as const) : []),
  // permutation passes included in the permuted time; NA cases only (elsewhere it is not planned)
  ['layout: token-permuted / token order', 'f32', { permute: true }, 'f32', { permute: false }, true],
].map((p) => [...p] as Pair);

console.log(`adapter: ${ctx.description}; subgroups min ${ctx.subgroupMinSize}; repeat ${repeat} (median ms, wall until idle)`);
console.log('| case | path (new / baseline) | new ms | baseline ms | new/baseline |');
console.log('|---|---|---:|---:|---:|');
for (const c of cases)
  for (const [what, d1, t1, d0, t0, naOnly] of pairs) {
    if ((naOnly && !c.na) || (values.only && !what.includes(values.only))) continue;
    const a = await time(c, d1, t1);
    const b = await time(c, d0, t0);
    console.log(`| ${c.name} | ${what} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(a / b).toFixed(2)} |`);
  }
const bwd = 'backward walks: in-kernel / uploaded (cached)';
for (const c of cases) {
  if (values.only && !bwd.includes(values.only)) continue;
  const a = await timeBackward(c, true);
  const b = await timeBackward(c, false);
  console.log(`| ${c.name} | ${bwd} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(a / b).toFixed(2)} |`);
}
if (values.host) {
  // what an uploaded backward costs on the host per new shape: both passes' schedules, the GPU tuning row
  console.log('\n| problem (GPU tuning row) | host build ms, both backward schedules (median of 3) | MB |');
  console.log('|---|---:|---:|');
  const big: [string, AttnProblem][] = [
    ['causal N=16384 H16 D64', planAttention(...zeros([1, 16384, 16, 64]), { causal: true }).problem],
    ['2-D NA 128x128 k13 H16 D64', planNA(...zeros([1, 128, 128, 16, 64]), { kernelSize: 13 }).problem],
    ['3-D NA 32^3 k7 H8 D64', planNA(...zeros([1, 32, 32, 32, 8, 64]), { kernelSize: 7 }).problem],
  ];
  for (const [name, problem] of big) {
    const plan = planBackward(problem, ctx.limits, { ...BACKWARD_TUNING.gpu, analytic: false });
    const xs: number[] = [];
    let words = 0;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      const sq = buildGpuSchedule(plan.q.problem, new ItemSpace(plan.q.problem), { maxWords: 1 << 30 });
      const sk = buildGpuSchedule(plan.k.problem, new ItemSpace(plan.k.problem, 'k'), { maxWords: 1 << 30, transposed: true });
      xs.push(performance.now() - t);
      words = sq.data.length + sk.data.length;
    }
    console.log(`| ${name} | ${xs.sort((a, b) => a - b)[1]!.toFixed(1)} | ${((words * 4) / 1e6).toFixed(2)} |`);
  }
}
process.exit(0);
