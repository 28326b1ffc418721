/**
 * Issue 11's ratio: the fused backward against the forward on the same inputs, forward then
 * backward alternated call by call (this VM's slow spells land on both alike): best of each, and
 * the median of the per-pair ratios. Cases: dense and causal N=2048 H8 D64, 2-D NA 64x64 k7 H4 D32.
 * On the CPU (default) with host tensors; with `--backend webgpu` on GPU tensors uploaded once,
 * each call timed until the queue is idle (no uploads or read-backs in the times).
 *
 *   npm run build && node dist/bench/backward-ratio.js [--pairs 9] [--kernels simd] [--backend webgpu [--uploaded]]
 */
import { parseArgs } from 'node:util';
import { attention, attentionBackward, cpuInfo, neighborhoodAttention, neighborhoodAttentionBackward, randn, setCpuKernels, type KernelVariant, type Tensor } from '../src/index.js';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';
import { getContext } from '../src/webgpu/device.js';
import { setBackwardTuning } from '../src/webgpu/backward.js';
import { type GpuTensor, releaseTensor, toGpu } from '../src/webgpu/tensor.js';

enableRelaxedSimd();
const { values: args } = parseArgs({ options: { pairs: { type: 'string', default: '9' }, kernels: { type: 'string' }, backend: { type: 'string', default: 'cpu' }, uploaded: { type: 'boolean', default: false } } });
// --uploaded: the WebGPU backward reads host-built schedules even where it can walk in the kernel
if (args.uploaded) setBackwardTuning({ analytic: false });
if (args.kernels) setCpuKernels(args.kernels as KernelVariant);
const pairs = Math.max(3, Number(args.pairs) | 0);
const gpu = args.backend === 'webgpu' ? await getContext() : undefined;
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;

console.log(`${gpu ? `webgpu: ${gpu.description}${args.uploaded ? ', uploaded backward schedules' : ''}` : `cpu: threads ${cpuInfo().threads}, kernels ${cpuInfo().kernels}`}; ${pairs} forward/backward pairs after 2 untimed\n`);
console.log('| case | forward ms (best) | backward ms (best) | backward / forward (best) | median of pair ratios |');
console.log('|---|---:|---:|---:|---:|');
for (const name of ['dense N=2048 H8 D64', 'causal N=2048 H8 D64', '2-D NA 64x64 k7 H4 D32']) {
  const na = name.startsWith('2-D');
  const shape = na ? [1, 64, 64, 4, 32] : [1, 2048, 8, 64];
  const host = [1, 2, 3, 4].map((s) => randn(shape, s));
  // GPU tensors travel through the host-typed calls as they are (the entry points tell them apart)
  const ins = (gpu ? await Promise.all(host.map(async (t) => ({ ...(await toGpu(t.data, t.shape, gpu)), shape }))) : host) as unknown as Tensor[];
  const [q, k, v, dOut] = ins as [Tensor, Tensor, Tensor, Tensor];
  const causal = name.startsWith('causal');
  const fwd = () => (na ? neighborhoodAttention(q, k, v, { kernelSize: 7 }) : attention(q, k, v, { causal }));
  const f0 = await fwd();
  const bwd = () => (na ? neighborhoodAttentionBackward(q, k, v, f0.out, f0.lse, dOut, { kernelSize: 7 }) : attentionBackward(q, k, v, f0.out, f0.lse, dOut, { causal }));
  // one call, until its work is done; its GPU results released
  const timed = async (call: () => Promise<object>): Promise<number> => {
    const s = performance.now();
    const r = await call();
    if (gpu) await gpu.device.queue.onSubmittedWorkDone();
    const dt = performance.now() - s;
    if (gpu) for (const t of Object.values(r)) if (t && typeof t === 'object' && 'buffer' in t) releaseTensor(t as GpuTensor);
    return dt;
  };
  const F: number[] = [];
  const B: number[] = [];
  for (let i = 0; i < pairs + 2; i++) {
    const a = await timed(fwd);
    const b = await timed(bwd);
    if (i >= 2) F.push(a), B.push(b);
  }
  if (gpu) [...ins, f0.out, f0.lse].forEach((t) => releaseTensor(t as unknown as GpuTensor));
  const [fb, bb] = [Math.min(...F), Math.min(...B)];
  console.log(`| ${name} | ${fb.toFixed(1)} | ${bb.toFixed(1)} | ${(bb / fb).toFixed(2)} | ${median(B.map((b, i) => b / F[i]!)).toFixed(2)} |`);
}
process.exit(0);
