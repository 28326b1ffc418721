/**
 * The CPU engine's two fused neighborhood kernels on the same calls: heads in the lanes
 * (cpu/na-lanes.ts) against the query-lane tile step, interleaved call by call so a slow spell of
 * the machine falls on both alike; with and without NATTEN's rpb; forward, then backward.
 *
 *   npm run build && node dist/bench/cpu-lanes.js [--calls 24] [--threads 2]
 */
import { parseArgs } from 'node:util';
import { cpuInfo, neighborhoodAttention, neighborhoodAttentionBackward, randn, setCpuThreads, type NeighborhoodOptions } from '../src/index.js';
import { setHeadLanes } from '../src/cpu/na-lanes.js';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';

enableRelaxedSimd();
const { values: args } = parseArgs({ options: { calls: { type: 'string', default: '24' }, threads: { type: 'string', default: '2' } } });
const calls = Math.max(4, Number(args.calls) | 0);
setCpuThreads(Math.max(1, Number(args.threads) | 0));

const cases: { name: string; grid: number[]; heads: number; dim: number; kernel: number; rpb: boolean }[] = [
  { name: '2-D 64x64 k7 H4 D32', grid: [64, 64], heads: 4, dim: 32, kernel: 7, rpb: false },
  { name: '2-D 64x64 k7 H4 D32 + rpb', grid: [64, 64], heads: 4, dim: 32, kernel: 7, rpb: true },
  { name: '3-D 16^3 k5 H4 D32', grid: [16, 16, 16], heads: 4, dim: 32, kernel: 5, rpb: false },
  { name: '2-D 56x56 k7 H8 D32 + rpb (a NAT-mini stage)', grid: [56, 56], heads: 8, dim: 32, kernel: 7, rpb: true },
];
const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;

console.log(`threads ${cpuInfo().threads}, kernels ${cpuInfo().kernels}, ${calls} calls each (after 10 untimed)\n`);
for (const pass of ['forward', 'backward'] as const) {
  console.log(`\n${pass}:\n`);
  console.log('| case | head lanes ms (median) | best | query lanes ms (median) | best | query / head (medians) |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const c of cases) {
    const [q, k, v, dOut] = [1, 2, 3, 4].map((s) => randn([1, ...c.grid, c.heads, c.dim], s));
    const opts: NeighborhoodOptions = { kernelSize: c.kernel, ...(c.rpb ? { rpb: randn([c.heads, ...c.grid.map(() => 2 * c.kernel - 1)], 5) } : {}) };
    const fw = await neighborhoodAttention(q!, k!, v!, opts);
    const call = () => (pass === 'forward' ? neighborhoodAttention(q!, k!, v!, opts) : neighborhoodAttentionBackward(q!, k!, v!, fw.out, fw.lse, dOut!, opts));
    const t = { head: [] as number[], query: [] as number[] };
    try {
      for (let i = 0; i < calls + 10; i++)
        for (const m of ['head', 'query'] as const) {
          setHeadLanes(m === 'head');
          const s = performance.now();
          await call();
          if (i >= 10) t[m].push(performance.now() - s);
        }
    } finally {
      setHeadLanes(true);
    }
    const [h, qm] = [median(t.head), median(t.query)];
    console.log(`| ${c.name} | ${h.toFixed(2)} | ${Math.min(...t.head).toFixed(2)} | ${qm.toFixed(2)} | ${Math.min(...t.query).toFixed(2)} | ${(qm / h).toFixed(2)}x |`);
  }
}
