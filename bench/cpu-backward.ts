/**
 * Issue 11's CPU ratio: the fused backward against the forward on the same inputs, forward then
 * backward alternated call by call (this VM's slow spells land on both alike): best of each, and
 * the median of the per-pair ratios. Cases: dense and causal N=2048 H8 D64, 2-D NA 64x64 k7 H4 D32.
 *
 *   npm run build && node dist/bench/cpu-backward.js [--pairs 9] [--kernels simd]
 */
import { parseArgs } from 'node:util';
import { attention, attentionBackward, cpuInfo, neighborhoodAttention, neighborhoodAttentionBackward, randn, setCpuKernels, type KernelVariant, type Result } from '../src/index.js';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';

enableRelaxedSimd();
const { values: args } = parseArgs({ options: { pairs: { type: 'string', default: '9' }, kernels: { type: 'string' } } });
if (args.kernels) setCpuKernels(args.kernels as KernelVariant);
const pairs = Math.max(3, Number(args.pairs) | 0);
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;

console.log(`threads ${cpuInfo().threads}, kernels ${cpuInfo().kernels}, ${pairs} forward/backward pairs after 2 untimed\n`);
console.log('| case | forward ms (best) | backward ms (best) | backward / forward (best) | median of pair ratios |');
console.log('|---|---:|---:|---:|---:|');
for (const name of ['dense N=2048 H8 D64', 'causal N=2048 H8 D64', '2-D NA 64x64 k7 H4 D32']) {
  const na = name.startsWith('2-D');
  const shape = na ? [1, 64, 64, 4, 32] : [1, 2048, 8, 64];
  const [q, k, v, dOut] = [1, 2, 3, 4].map((s) => randn(shape, s)) as [ReturnType<typeof randn>, ReturnType<typeof randn>, ReturnType<typeof randn>, ReturnType<typeof randn>];
  const causal = name.startsWith('causal');
  const fwd = (): Promise<Result> => (na ? neighborhoodAttention(q, k, v, { kernelSize: 7 }) : attention(q, k, v, { causal }));
  const f0 = await fwd();
  const bwd = () => (na ? neighborhoodAttentionBackward(q, k, v, f0.out, f0.lse, dOut, { kernelSize: 7 }) : attentionBackward(q, k, v, f0.out, f0.lse, dOut, { causal }));
  const F: number[] = [];
  const B: number[] = [];
  for (let i = 0; i < pairs + 2; i++) {
    let s = performance.now();
    await fwd();
    const a = performance.now() - s;
    s = performance.now();
    await bwd();
    const b = performance.now() - s;
    if (i >= 2) F.push(a), B.push(b);
  }
  const [fb, bb] = [Math.min(...F), Math.min(...B)];
  console.log(`| ${name} | ${fb.toFixed(1)} | ${bb.toFixed(1)} | ${(bb / fb).toFixed(2)} | ${median(B.map((b, i) => b / F[i]!)).toFixed(2)} |`);
}
