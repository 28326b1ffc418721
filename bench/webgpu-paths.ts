/**
 * The fused WebGPU kernel's alternative paths, each against its baseline in the same run, same
 * inputs (GPU-resident, uploaded once): schedule computed in the kernel vs built on the host and
 * uploaded; subgroup exchange vs workgroup memory; f16 storage vs f32; token-permuted vs
 * token-order q/k/v for N-D and dilated neighborhoods. Wall time per call until the queue is idle
 * (host schedule build and permutation passes included: that is what the pairs weigh), median of
 * `--repeat` after one warm-up. Usage:
 *   node dist/bench/webgpu-paths.js [--repeat 5] [--quick] [--only <text in the path name>]
 */
import { parseArgs } from 'node:util';
import { type AttentionOptions, attention, neighborhoodAttention } from '../src/api.js';
import { randn } from '../src/tensor.js';
import { getContext } from '../src/webgpu/device.js';
import { setFusedTuning } from '../src/webgpu/fused.js';
import { type GpuDType, type GpuTensor, releaseTensor, toGpu } from '../src/webgpu/tensor.js';

const { values } = parseArgs({ options: { repeat: { type: 'string', default: '5' }, quick: { type: 'boolean', default: false }, only: { type: 'string' } } });
const repeat = Number(values.repeat);
const ctx = await getContext();
const quick = values.quick!;

interface Case {
  name: string;
  shape: number[];
  /** A neighborhood on 2-3 axes or dilated: the token permutation applies. */
  na?: boolean;
  run: (q: GpuTensor, k: GpuTensor, v: GpuTensor) => Promise<unknown>;
}
const n1 = quick ? 512 : 2048;
const side = quick ? 24 : 48;
const cube = quick ? 8 : 14;
const cases: Case[] = [
  { name: `causal N=${n1} H4 D64`, shape: [1, n1, 4, 64], run: (q, k, v) => attention(q, k, v, { causal: true }) },
  { name: `window 256 N=${n1} H4 D64`, shape: [1, n1, 4, 64], run: (q, k, v) => attention(q, k, v, { window: [128, 127] } as AttentionOptions) },
  { name: `2-D NA ${side}x${side} k7 H4 D32`, shape: [1, side, side, 4, 32], na: true, run: (q, k, v) => neighborhoodAttention(q, k, v, { kernelSize: 7 }) },
  { name: `2-D NA ${side}x${side} k7 dil 2 H4 D32`, shape: [1, side, side, 4, 32], na: true, run: (q, k, v) => neighborhoodAttention(q, k, v, { kernelSize: 7, dilation: 2 }) },
  { name: `3-D NA ${cube}^3 k5 H4 D32`, shape: [1, cube, cube, cube, 4, 32], na: true, run: (q, k, v) => neighborhoodAttention(q, k, v, { kernelSize: 5 }) },
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
process.exit(0);
