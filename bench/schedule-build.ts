/**
 * Host-side cost of the uploaded WebGPU schedules of sparse patterns, which no GPU needs to measure,
 * planned as on an H100-like device (48 KiB of workgroup memory, the GPU blocking rows):
 * - `--pattern longheads`: the forward schedule of LongHeads' attend call (selected chunk lists AND
 *   causal, 'selected' RoPE), the lists from the CPU selection on random inputs (the WebGPU forward
 *   walks these lists in the kernel now; this is its fallback path);
 * - `--pattern blocksparse`: the backward's two schedules (dQ, and the transposed dK/dV one) of a
 *   random block mask (`--block`, `--density`, the diagonal always on).
 *
 *   node dist/bench/schedule-build.js [--pattern longheads|blocksparse] [--lengths 16384,65536] [--heads 8]
 *     [--budget 4096] [--chunk 256] [--block 128] [--density 0.05] [--repeat 3] [--against OTHER/dist]
 *
 * --against: another build's dist folder (e.g. a worktree of an older commit); both build the same
 * schedule alternately, and the words they produce are compared.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const { values } = parseArgs({
  options: {
    pattern: { type: 'string', default: 'longheads' },
    block: { type: 'string', default: '128' },
    density: { type: 'string', default: '0.05' },
    lengths: { type: 'string', default: '16384,65536' },
    heads: { type: 'string', default: '8' },
    budget: { type: 'string', default: '4096' },
    chunk: { type: 'string', default: '256' },
    repeat: { type: 'string', default: '3' },
    against: { type: 'string' },
  },
});
const [H, budget, chunk, repeat] = [values.heads, values.budget, values.chunk, values.repeat].map(Number) as [number, number, number, number];
const D = 64;
const here = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

type Build = (n: number) => Promise<() => { ms: number; words: Uint32Array; visits: number }>;

/** A build's schedule builder for n tokens (selection done once, outside the timing). */
async function builder(dist: string): Promise<Build> {
  const at = (m: string) => import(pathToFileURL(path.join(dist, m)).href);
  const [{ cpuOps }, { longHeadsConfig }, { selectedOptions }, { fusedTile }, { planShapes }, { ItemSpace }, { planFused, FUSED_TUNING }, { buildGpuSchedule }, { randn, rng }, { planBackward, BACKWARD_TUNING }] = await Promise.all(
    ['src/longheads/ops.js', 'src/longheads/options.js', 'src/longheads/attention.js', 'src/longheads/select.js', 'src/plan.js', 'src/problem.js', 'src/webgpu/fused.js', 'src/webgpu/schedule.js', 'src/tensor.js', 'src/webgpu/backward.js'].map(at),
  );
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024, maxComputeWorkgroupSizeX: 1024, maxComputeWorkgroupsPerDimension: 65535, maxStorageBufferBindingSize: 2 ** 31 - 4, maxBufferSize: 2 ** 32, maxStorageBuffersPerShaderStage: 8 };
  if (values.pattern === 'blocksparse')
    return async (n) => {
      const [block, density] = [Number(values.block), Number(values.density)];
      const nb = Math.ceil(n / block);
      const r = rng(5);
      const mask = new Uint8Array(nb * nb).map((_: number, i: number) => (i % (nb + 1) === 0 || r() < density ? 1 : 0));
      const pattern = { kind: 'blockSparse', blockQ: block, blockK: block, mask, maskHeads: 1, numQBlocks: nb, numKBlocks: nb };
      const problem = planShapes({ batch: 1, qGrid: [n], kGrid: [n], heads: H, kvHeads: H, dim: D, dimV: D }, { pattern });
      const plan = planBackward(problem, limits, BACKWARD_TUNING.gpu);
      const maxWords = limits.maxStorageBufferBindingSize / 4;
      return () => {
        const t = performance.now();
        const q = buildGpuSchedule(plan.q.problem, new ItemSpace(plan.q.problem), { maxWords });
        const k = buildGpuSchedule(plan.k.problem, new ItemSpace(plan.k.problem, 'k'), { maxWords, transposed: true });
        const ms = performance.now() - t;
        const words = new Uint32Array(q.data.length + k.data.length);
        words.set(q.data);
        words.set(k.data, q.data.length);
        return { ms, words, visits: q.visits + k.visits };
      };
    };
  return async (n) => {
    const cfg = longHeadsConfig({ budget, chunkSize: chunk, backend: 'cpu' });
    const ops = cpuOps(cfg);
    const [q, k, v] = [1, 2, 3].map((s) => randn([n * H * D], s).data);
    const reps = await ops.reps({ q, k, v, n, kOff: 0, kLen: n, heads: H, kvHeads: H, dim: D }, Math.floor(n / chunk));
    const chunks = await ops.select(q, reps, { rows: n, qPos0: 0, tile: cfg.selectTile, heads: H, dim: D });
    const opts = selectedOptions(cfg, chunks, 'top-left', fusedTile(cfg.selectTile));
    const problem = planShapes({ batch: 1, qGrid: [n], kGrid: [n], heads: H, kvHeads: H, dim: D, dimV: D }, opts);
    const plan = planFused(problem, limits, FUSED_TUNING.gpu);
    return () => {
      const t = performance.now();
      const s = buildGpuSchedule(plan.problem, new ItemSpace(plan.problem), { maxWords: limits.maxStorageBufferBindingSize / 4 });
      return { ms: performance.now() - t, words: s.data, visits: s.visits };
    };
  };
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const builds: [string, Build][] = [['this build', await builder(here)]];
if (values.against) builds.push([values.against, await builder(path.resolve(values.against))]);
const what = values.pattern === 'blocksparse' ? `block-sparse backward schedules (dQ + dK/dV), block ${values.block}, density ${values.density}` : `LongHeads attend schedule, budget ${budget}, chunk ${chunk}`;
console.log(`${what}, H ${H} D ${D}, median of ${repeat}${builds.length > 1 ? ' (builds alternated)' : ''}\n`);
console.log(`| N | visits | ${builds.map(([b]) => `${b} ms`).join(' | ')}${builds.length > 1 ? ' | this / other | same words |' : ''}`);
console.log(`|---:|---:|${builds.map(() => '---:').join('|')}|${builds.length > 1 ? '---:|---|' : ''}`);
for (const n of values.lengths!.split(',').map(Number)) {
  const runs = await Promise.all(builds.map(([, b]) => b(n)));
  const times: number[][] = builds.map(() => []);
  let last: { words: Uint32Array; visits: number }[] = [];
  for (let r = 0; r < repeat; r++) last = runs.map((run, i) => ((x) => (times[i]!.push(x.ms), x))(run()));
  const ms = times.map(median);
  const same = last.length > 1 ? last[0]!.words.length === last[1]!.words.length && last[0]!.words.every((w, i) => w === last[1]!.words[i]) : undefined;
  console.log(`| ${n} | ${last[0]!.visits} | ${ms.map((x) => x.toFixed(0)).join(' | ')}${same === undefined ? '' : ` | ${(ms[0]! / ms[1]!).toFixed(2)} | ${same ? 'yes' : 'NO'} |`}`);
}
