/**
 * Prefill cost vs length: LongHeads (chunk selection, linear) against full causal RoPE attention
 * (quadratic), same inputs, same backend, one run. Usage:
 *   node dist/bench/longheads-prefill.js [--lengths 2048,4096,8192,16384] [--budget 1024] [--chunk 128]
 *     [--heads 1] [--dim 32] [--backend cpu|webgpu] [--no-full]
 */
import { parseArgs } from 'node:util';
import { type BackendName, attention } from '../src/api.js';
import { longHeadsAttention } from '../src/longheads/attention.js';
import { randn } from '../src/tensor.js';

const { values } = parseArgs({
  options: {
    lengths: { type: 'string', default: '2048,4096,8192,16384' },
    budget: { type: 'string', default: '1024' },
    chunk: { type: 'string', default: '128' },
    heads: { type: 'string', default: '1' },
    dim: { type: 'string', default: '32' },
    backend: { type: 'string', default: 'cpu' },
    'no-full': { type: 'boolean', default: false },
  },
});
const lengths = values.lengths!.split(',').map(Number);
const [budget, chunk, H, D] = [values.budget, values.chunk, values.heads, values.dim].map(Number) as [number, number, number, number];
const backend = values.backend as BackendName;
const rows: { n: number; lh: number; full?: number }[] = [];
{
  // warm-up: worker threads, JIT, RoPE tables
  const w = randn([1, 2 * budget, H, D], 9);
  await longHeadsAttention(w, w, w, { chunkSize: chunk, budget, backend });
  await attention(w, w, w, { causal: true, rope: {}, backend });
}
for (const n of lengths) {
  const q = randn([1, n, H, D], 1);
  const k = randn([1, n, H, D], 2);
  const v = randn([1, n, H, D], 3);
  let t = performance.now();
  await longHeadsAttention(q, k, v, { chunkSize: chunk, budget, backend });
  const lh = performance.now() - t;
  let full: number | undefined;
  if (!values['no-full']) {
    t = performance.now();
    await attention(q, k, v, { causal: true, rope: {}, backend });
    full = performance.now() - t;
  }
  rows.push({ n, lh, ...(full !== undefined ? { full } : {}) });
  console.error(`n=${n} longheads ${lh.toFixed(0)} ms${full !== undefined ? `, full ${full.toFixed(0)} ms` : ''}`);
}
const first = rows[0]!;
console.log(`| N | LongHeads ms | x first | full causal ms | x first | full / LongHeads |`);
console.log(`|---|---|---|---|---|---|`);
for (const r of rows)
  console.log(
    `| ${r.n} | ${r.lh.toFixed(0)} | ${(r.lh / first.lh).toFixed(1)}x | ${r.full?.toFixed(0) ?? '-'} | ${r.full ? `${(r.full / first.full!).toFixed(1)}x` : '-'} | ${r.full ? (r.full / r.lh).toFixed(2) : '-'} |`,
  );
