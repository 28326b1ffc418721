/**
 * Fused dense attention vs a plain loop that materialises each score row (the "plain JS" anchor),
 * same inputs, same thread count, in one run. Usage: node dist/bench/dense-vs-loop.js [N] [H] [D] [threads]
 */
import { attention } from '../src/api.js';
import { setCpuThreads } from '../src/cpu/pool.js';
import { randn, relError } from '../src/tensor.js';

function plainLoop(q: Float32Array, k: Float32Array, v: Float32Array, n: number, heads: number, d: number, rows: number): Float32Array {
  const out = new Float32Array(rows * heads * d);
  const scores = new Float32Array(n);
  const scale = 1 / Math.sqrt(d);
  for (let i = 0; i < rows; i++)
    for (let h = 0; h < heads; h++) {
      let mx = -Infinity;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let x = 0; x < d; x++) s += q[(i * heads + h) * d + x]! * k[(j * heads + h) * d + x]!;
        scores[j] = s * scale;
        if (scores[j]! > mx) mx = scores[j]!;
      }
      let sum = 0;
      for (let j = 0; j < n; j++) sum += scores[j] = Math.exp(scores[j]! - mx);
      for (let j = 0; j < n; j++) {
        const w = scores[j]! / sum;
        for (let x = 0; x < d; x++) out[(i * heads + h) * d + x]! += w * v[(j * heads + h) * d + x]!;
      }
    }
  return out;
}

const [N = 4096, H = 8, D = 64, threads = 0] = process.argv.slice(2).map(Number);
if (threads > 0) setCpuThreads(threads);
const q = randn([1, N, H, D], 1);
const k = randn([1, N, H, D], 2);
const v = randn([1, N, H, D], 3);
const flops = 4 * N * N * H * D;
await attention(q, k, v); // warm-up: worker start and JIT
const t0 = performance.now();
const fused = await attention(q, k, v);
const fusedMs = performance.now() - t0;
// the plain loop is single-threaded: time a row subsample and scale to all rows
const rows = Math.min(N, 256);
const t1 = performance.now();
const loop = plainLoop(q.data, k.data, v.data, N, H, D, rows);
const loopMs = ((performance.now() - t1) * N) / rows;
const err = relError(fused.out.data.subarray(0, rows * H * D), loop);
const gf = (ms: number) => (flops / (ms * 1e6)).toFixed(2);
console.log(JSON.stringify({ N, H, D, threads: threads || 'all', fusedMs: +fusedMs.toFixed(0), fusedGflops: +gf(fusedMs), loopMsPerThread: +loopMs.toFixed(0), loopGflopsPerThread: +gf(loopMs), agreement: err }));
console.log(`fused ${gf(fusedMs)} GFLOP/s vs plain loop ${gf(loopMs)} GFLOP/s (1 thread): ${(loopMs / fusedMs).toFixed(1)}x`);
