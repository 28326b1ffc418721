/**
 * LongHeads decode cost vs context length: builds a LongHeadsCache of each length (prefill), then
 * times consecutive decode steps. The first step also waits for the queued prefill work and any
 * buffer growth; the later ones are the steady-state cost, which should not depend on length.
 * Usage: node dist/bench/longheads-decode.js [--lengths 4352,32768,131072] [--steps 8] [--backend webgpu]
 */
import { parseArgs } from 'node:util';
import type { BackendName } from '../src/api.js';
import { LongHeadsCache } from '../src/longheads/cache.js';
import { randn } from '../src/tensor.js';

const { values } = parseArgs({
  options: {
    lengths: { type: 'string', default: '4352,32768,131072' },
    steps: { type: 'string', default: '8' },
    backend: { type: 'string', default: 'cpu' },
    heads: { type: 'string', default: '2' },
    dim: { type: 'string', default: '64' },
  },
});
const [H, D, S] = [values.heads, values.dim, values.steps].map(Number) as [number, number, number];
const backend = values.backend as BackendName;
console.log(`backend ${backend}, H=${H} D=${D}, budget 4096, chunk 256; decode step ms (first step, then the rest)`);
console.log('| length | first step ms | later steps ms (median) | later steps ms (all) |');
console.log('|---:|---:|---:|---|');
for (const n of values.lengths!.split(',').map(Number)) {
  const cache = new LongHeadsCache(H, H, D, { chunkSize: 256, budget: 4096, backend });
  await cache.append(randn([n, H, D], 1), randn([n, H, D], 2), randn([n, H, D], 3));
  const steps: number[] = [];
  for (let i = 0; i < S; i++) {
    const t = performance.now();
    await cache.decode(randn([1, H, D], 10 + i), randn([1, H, D], 50 + i), randn([1, H, D], 90 + i));
    steps.push(performance.now() - t);
  }
  cache.dispose();
  const later = steps.slice(1);
  const med = [...later].sort((a, b) => a - b)[Math.floor(later.length / 2)]!;
  console.log(`| ${n} | ${steps[0]!.toFixed(0)} | ${med.toFixed(1)} | ${later.map((x) => x.toFixed(0)).join(' ')} |`);
}
process.exit(0);
