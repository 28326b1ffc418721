/**
 * The dense tile kernels alone, one thread, on one hot 64-query x 64-key x 64-dim visit in a loop:
 * GFLOP/s of Q.K^T (`scoresT`), P.V (`pvAcc` through a row list, `pvAccStrided` by a step) and the
 * online softmax (`softmaxStep`, counted as if it did a matmul's FLOPs, to compare its time); then
 * exp alone (ns per 4 lanes) and the head-lane column kernels per query count. Key and value rows
 * lie `--heads` rows of 64 floats apart, as one head's rows do in a [tokens][heads][dim] tensor (8:
 * 2 KiB apart, which maps a 64-row tile onto 2 of the L1's 64 sets; 1: contiguous).
 *
 *   npm run build && node dist/bench/cpu-kernels.js [--heads 8] [--kernels relaxed-simd|simd]
 */
import { parseArgs } from 'node:util';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';
import { type KernelVariant, kernelsOn, setScalarKernels } from '../src/cpu/tile-kernels.js';
import { scalarKernels } from '../src/cpu/tile-scalar.js';

enableRelaxedSimd();
const { values: args } = parseArgs({ options: { heads: { type: 'string', default: '8' }, kernels: { type: 'string', default: 'relaxed-simd' } } });
const HS = Math.max(1, Number(args.heads) | 0);
const mem = new WebAssembly.Memory({ initial: 256, maximum: 1024, shared: true });
setScalarKernels(scalarKernels);
const K = kernelsOn(args.kernels as KernelVariant, mem);
const f = new Float32Array(mem.buffer);
const i32 = new Int32Array(mem.buffer);
const [tq, tk, d] = [64, 64, 64];
// byte offsets: QT, S, K rows, V rows, row lists, O, alpha, m, l
const QT = 1 << 16, S = 1 << 18, KD = 1 << 19, VD = 1 << 21, KR = 3 << 21, VR = KR + 4096, O = 1 << 23, A = O + 65536, M = A + 1024, L = M + 1024;
for (let i = 0; i < (O + 70000) / 4; i++) f[i] = Math.random() - 0.5;
const rowBytes = d * 4 * HS;
for (let j = 0; j < tk; j++) {
  i32[KR / 4 + j] = KD + j * rowBytes;
  i32[VR / 4 + j] = VD + j * rowBytes;
}
for (let i = 0; i < tq; i++) f[A / 4 + i] = 1;
const reps = 4000;
/** Best of 5 timings of `reps` calls (after 200 warm-up calls), in ms. */
function bestOf(fn: () => void): number {
  for (let r = 0; r < 200; r++) fn();
  let best = Infinity;
  for (let k = 0; k < 5; k++) {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}
function time(name: string, fn: () => void): void {
  console.log(`${name.padEnd(14)} ${((2 * tq * tk * d * reps) / bestOf(fn) / 1e6).toFixed(1)} GFLOP/s`);
}
console.log(`${args.kernels}, rows ${rowBytes} bytes apart, best of 5 x ${reps} visits`);
time('scoresT', () => K.scoresT(S, QT, tq, tq, KR, tk, d));
time('pvAcc', () => K.pvAcc(O, d, S, tq, tq, tk, VR, A));
time('pvAccStrided', () => K.pvAccStrided(O, d, S, tq, tq, tk, VD, rowBytes, A));
time('softmaxStep', () => K.softmaxStep(S, tq, tq, tk, M, L, A));
// exp alone (the wasm's `expTest` export, outside the TileKernels interface): ns per 4 lanes over
// 4096 scores in [-20, 0], as the softmax sees them
const E = K as unknown as { expTest?: (src: number, dst: number, n: number) => void };
if (E.expTest) {
  const n = 4096;
  for (let i = 0; i < n; i++) f[S / 4 + i] = -20 * Math.random();
  const best = bestOf(() => E.expTest!(S, O, n));
  console.log(`${'exp'.padEnd(14)} ${((best * 1e6) / reps / (n / 4)).toFixed(2)} ns per 4 lanes`);
}
// the head-lane column kernels (wasm/tile.ts; exported per query count, outside the TileKernels
// interface): one column of 7 keys (2-D k7) or 25 (3-D k5), d 32, run-interleaved q / accumulators
type Column = (...args: number[]) => void;
const C = K as unknown as Record<string, Column | undefined>;
if (C.qkColumn1) {
  const cd = 32;
  const QS = QT, SP = S, KL = KR; // the run buffer, scores, key row list (rows at KD, 16 d bytes apart)
  for (let j = 0; j < 32; j++) i32[KL / 4 + j] = KD + j * 16 * cd;
  console.log(`column kernels, d ${cd}, GFLOP/s (2 per multiply-add):`);
  for (const nk of [7, 25])
    for (let nq = 1; nq <= 4; nq++) {
      const runs: [string, () => void][] = [
        ['qkColumn', () => C[`qkColumn${nq}`]!(QS, cd, KL, 4, nk, SP, 64, SP + 65536)],
        ['pvColumn', () => C[`pvColumn${nq}`]!(O, cd, KL, 4, nk, SP, 64)],
        ['keyRowsColumn', () => C[`keyRowsColumn${nq}`]!(QS, cd, KL, 4, VD - KD, nk, SP, 64)],
      ];
      const rates = runs.map(([name, fn]) => `${name} ${((8 * nq * nk * cd * reps) / bestOf(fn) / 1e6).toFixed(1)}`);
      console.log(`  ${nk} keys, ${nq} queries: ${rates.join(', ')}`);
    }
}
process.exit(0);
