/**
 * The GPU measurement, in one device session: our fused fp32 attention (GPU tensors, GPU
 * timestamps) against PyTorch's float32 scaled_dot_product_attention on the same GPU (bench/sdpa.py,
 * a python3 child process), and 2-D neighborhood attention (our fused vs our naive vs our dense
 * fused, plus PyTorch FlexAttention with an NA block mask when it is there).
 *
 *   dense/causal: B*N = 16k tokens, H*D = 2048, N in {1024, 4096, 16384}, D in {64, 128}
 *   2-D NA: 128x128 tokens, 16 heads, D 64, kernel 13 and 31
 *
 * Useful FLOPs only (allowed pairs x 2 x (D + Dv)): causal counts half the pairs, NA its windows.
 * Every kernel of ours is checked against the float64 reference on sampled rows (relErr).
 * Prints TFLOP/s tables and ratios, writes everything to <out>/gpu-bench.json.
 *
 * --backward adds forward+backward (issue 11): our fused forward and the WebGPU backward on GPU
 * tensors against PyTorch SDPA forward+backward (dense, causal) and FlexAttention forward+backward
 * with NA block masks (2-D 128x128 k=13 H=16, 3-D 32^3 k=7 H=8, D 64), after checking the backward
 * against the float64 reference on small problems of each kind on the same device.
 *
 * --bwd-tunings '[{"rm":4,"tx":4,...}, ...]' also times the backward of every case under each of
 * these blockings (webgpu/backward.ts BackwardTuning, merged over the adapter's row); the table
 * keeps the built-in blocking.
 *
 * Usage: node dist/bench/gpu.js [--out DIR] [--repeat N] [--python python3] [--smoke] [--backward [--bwd-tunings JSON]]
 *   --smoke: tiny sizes, any adapter (lavapipe here), python skipped when torch is absent; it checks
 *   that the script works, its numbers mean nothing.
 */
import { spawn } from 'node:child_process';
import { warmUp as warmGpu } from './gpu-warm.js';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { planAttention, planNA } from '../src/api.js';
import { allowedPairs, median } from '../src/cli/profile.js';
import { compilePattern } from '../src/patterns/compile.js';
import type { AttnProblem } from '../src/problem.js';
import { referenceAttention } from '../src/reference.js';
import { referenceBackward } from '../src/reference-backward.js';
import { randn, rng } from '../src/tensor.js';
import { GpuTimer, type GpuTensor, fromGpu, getContext, releaseTensor, runWebGPUBackward, runWebGPUBackwardTensors, runWebGPUFused, runWebGPUFusedTensors, runWebGPUNaiveTensors, setBackwardTuning, setFusedTuning, toGpu, type BackwardTuning } from '../src/webgpu/index.js';

const { values: opt } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-out' },
    repeat: { type: 'string' },
    python: { type: 'string', default: 'python3' },
    smoke: { type: 'boolean', default: false },
    backward: { type: 'boolean', default: false },
    'bwd-tunings': { type: 'string' },
  },
});
const smoke = opt.smoke!;
const repeat = Number(opt.repeat ?? (smoke ? 2 : 5));

const SIZES = smoke
  ? { tokens: 256, hd: 64, Ns: [64, 256], Ds: [16, 32], naGrid: [16, 16], naHeads: 2, naDim: 16, naKernels: [3, 7] }
  : { tokens: 16384, hd: 2048, Ns: [1024, 4096, 16384], Ds: [64, 128], naGrid: [128, 128], naHeads: 16, naDim: 64, naKernels: [13, 31] };

interface Ours {
  ms: number;
  tflops: number;
  relErr: number;
  timing: 'gpu-ts' | 'wall-gpu';
}

const ctx = await getContext();
const timer = GpuTimer.supported(ctx) ? new GpuTimer(ctx) : undefined;
console.log(`adapter: ${ctx.description} (class ${ctx.adapterClass}; features ${[...ctx.features].sort().join(', ')})`);
console.log(`timing: ${timer ? 'GPU timestamps' : 'wall-clock until the queue is idle (no timestamp-query)'}; median of ${repeat} after a checked warm-up run`);
if (!timer && !smoke) console.log('WARNING: no timestamp-query on this device: times include the CPU-side schedule build');

// One pool of inputs for every case: each dense case is the same B*N*H*D floats viewed with its own shape.
const total = SIZES.tokens * SIZES.hd;
const host = { q: randn([total], 1).data, k: randn([total], 2).data, v: randn([total], 3).data };
const gpu = { q: await toGpu(host.q, [total]), k: await toGpu(host.k, [total]), v: await toGpu(host.v, [total]) };
const maxHeads = SIZES.hd / Math.min(...SIZES.Ds);
const out = await toGpu(new Float32Array(total), [total]);
const lse = await toGpu(new Float32Array(SIZES.tokens * maxHeads), [SIZES.tokens * maxHeads]);

type TensorCall = typeof runWebGPUFusedTensors;

const warmUp = (call: () => Promise<unknown>) => warmGpu(ctx, call);

/** Checked warm-up run (relErr on sampled rows vs float64), then `repeat` timed runs. */
async function time(call: TensorCall, p: AttnProblem, pairs: number): Promise<Ours> {
  const view = (t: GpuTensor, shape: number[]): GpuTensor => ({ ...t, shape });
  const io = [view(gpu.q, [p.qRows, p.heads, p.dim]), view(gpu.k, [p.kRows, p.kvHeads, p.dim]), view(gpu.v, [p.kRows, p.kvHeads, p.dimV])] as const;
  const dest = { out: view(out, [p.qRows, p.heads, p.dimV]), lse: view(lse, [p.qRows, p.heads]) };
  await call(p, ...io, { ...dest, poison: true });
  const got = await fromGpu(dest.out);
  const r = rng(5);
  const rows = Array.from({ length: 8 }, () => Math.floor(r() * p.qRows));
  const n = (x: Float32Array, len: number) => x.subarray(0, len);
  const ref = referenceAttention(p, { q: n(host.q, p.qRows * p.heads * p.dim), k: n(host.k, p.kRows * p.kvHeads * p.dim), v: n(host.v, p.kRows * p.kvHeads * p.dimV) }, new Set(rows));
  const w = p.heads * p.dimV;
  let num = 0;
  let den = 0;
  for (const row of rows)
    for (let c = 0; c < w; c++) {
      num += (got[row * w + c]! - ref.out[row * w + c]!) ** 2;
      den += ref.out[row * w + c]! ** 2;
    }
  await warmUp(() => call(p, ...io, dest));
  const times: number[] = [];
  for (let i = 0; i < repeat; i++) {
    if (timer) {
      await call(p, ...io, { ...dest, timer });
      times.push(await timer.read());
    } else {
      const s = performance.now();
      await call(p, ...io, dest);
      await ctx.device.queue.onSubmittedWorkDone();
      times.push(performance.now() - s);
    }
  }
  const ms = median(times);
  return { ms, tflops: (pairs * 2 * (p.dim + p.dimV)) / (ms * 1e9), relErr: Math.sqrt(num / (den || 1)), timing: timer ? 'gpu-ts' : 'wall-gpu' };
}

const hostView = (a: Float32Array, shape: number[]) => ({ data: a.subarray(0, shape.reduce((x, y) => x * y, 1)), shape });

// ---- dense and causal -------------------------------------------------------------------------
interface DenseCase {
  B: number;
  N: number;
  H: number;
  D: number;
  causal: boolean;
}
const denseCases: DenseCase[] = [];
for (const N of SIZES.Ns) for (const D of SIZES.Ds) for (const causal of [false, true]) denseCases.push({ B: SIZES.tokens / N, N, H: SIZES.hd / D, D, causal });

const denseOurs: (DenseCase & Ours & { pairs: number })[] = [];
for (const c of denseCases) {
  const shape = [c.B, c.N, c.H, c.D];
  const { problem } = planAttention(hostView(host.q, shape), hostView(host.k, shape), hostView(host.v, shape), { causal: c.causal });
  // analytic: the generic pair count walks every (q, k) for non-box patterns
  const pairs = c.B * c.H * (c.causal ? (c.N * (c.N + 1)) / 2 : c.N * c.N);
  const r = await time(runWebGPUFusedTensors, problem, pairs);
  denseOurs.push({ ...c, ...r, pairs });
  console.error(`ours fused B=${c.B} N=${c.N} H=${c.H} D=${c.D} causal=${c.causal}: ${r.ms.toFixed(2)} ms, ${r.tflops.toFixed(2)} TFLOP/s, relErr ${r.relErr.toExponential(1)}`);
}

// ---- the in-kernel non-finite screen (what the API's GPU-tensor calls use) on one dense case ----
const screenCase = denseCases.find((c) => c.N === SIZES.Ns[1] && c.D === SIZES.Ds[0] && !c.causal) ?? denseCases[0]!;
const screenCost = await (async () => {
  const shape = [screenCase.B, screenCase.N, screenCase.H, screenCase.D];
  const { problem } = planAttention(hostView(host.q, shape), hostView(host.k, shape), hostView(host.v, shape));
  const pairs = screenCase.B * screenCase.H * screenCase.N * screenCase.N;
  const screened: TensorCall = (p, q, k, v, o) => runWebGPUFusedTensors(p, q, k, v, { ...o, screen: true });
  const on = await time(screened, problem, pairs);
  const off = await time(runWebGPUFusedTensors, problem, pairs);
  console.error(`screen on B=${screenCase.B} N=${screenCase.N}: ${on.ms.toFixed(2)} ms, off ${off.ms.toFixed(2)} ms`);
  return { case: screenCase, onMs: on.ms, offMs: off.ms, relErr: on.relErr };
})();

// ---- 2-D neighborhood attention ---------------------------------------------------------------
const [X, Y] = SIZES.naGrid as [number, number];
const naShape = [1, X, Y, SIZES.naHeads, SIZES.naDim];
const flatShape = [1, X * Y, SIZES.naHeads, SIZES.naDim];
const dense2d = planAttention(hostView(host.q, flatShape), hostView(host.k, flatShape), hostView(host.v, flatShape)).problem;
const densePairs = SIZES.naHeads * (X * Y) ** 2;
const naDense = await time(runWebGPUFusedTensors, dense2d, densePairs);
console.error(`ours dense fused on the NA tokens: ${naDense.ms.toFixed(2)} ms`);
const naOurs: { kernel: number; pairs: number; fused: Ours; permuted: Ours; naive: Ours }[] = [];
for (const K of SIZES.naKernels) {
  const { problem } = planNA(hostView(host.q, naShape), hostView(host.k, naShape), hostView(host.v, naShape), { kernelSize: K });
  const cp = compilePattern(problem.pattern, { qGrid: problem.seqs[0]!.qGrid, kGrid: problem.seqs[0]!.kGrid, heads: problem.heads });
  const pairs = allowedPairs(cp) * SIZES.naHeads;
  const fused = await time(runWebGPUFusedTensors, problem, pairs);
  // the same kernel on token-permuted q/k/v (permute.ts), the permutation passes included
  setFusedTuning({ permute: true });
  const permuted = await time(runWebGPUFusedTensors, problem, pairs).finally(() => setFusedTuning(undefined));
  const naive = await time(runWebGPUNaiveTensors, problem, pairs);
  naOurs.push({ kernel: K, pairs, fused, permuted, naive });
  console.error(`ours NA k=${K}: fused ${fused.ms.toFixed(2)} ms, permuted ${permuted.ms.toFixed(2)} ms, naive ${naive.ms.toFixed(2)} ms`);
}

// ---- forward + backward (--backward) ------------------------------------------------------------
interface BwdCase {
  name: string;
  kind: 'dense' | 'na';
  problem: AttnProblem;
  pairs: number;
  spec: Record<string, unknown>;
}
interface BwdOurs {
  fwdMs: number;
  bwdMs: number;
  bwdWallMs: number;
  timing: 'gpu-ts' | 'wall-gpu';
}
const BWD = smoke
  ? { dense: { B: 1, N: 256, H: 2, D: 32 }, na: [{ grid: [16, 16], heads: 2, dim: 16, kernel: 5 }, { grid: [6, 6, 6], heads: 2, dim: 16, kernel: 3 }] }
  : { dense: { B: 4, N: 4096, H: 32, D: 64 }, na: [{ grid: [128, 128], heads: 16, dim: 64, kernel: 13 }, { grid: [32, 32, 32], heads: 8, dim: 64, kernel: 7 }] };
const bwdCases: BwdCase[] = [];
const bwdChecks: { name: string; relErr: number }[] = [];
const bwdOurs: (BwdOurs & { name: string })[] = [];
const bwdSweep: { case: string; tuning: Partial<BackwardTuning>; ms: number }[] = [];
const sweepTunings = opt['bwd-tunings'] ? (JSON.parse(opt['bwd-tunings']) as Partial<BackwardTuning>[]) : [];
if (opt.backward) {
  const shaped = (shape: number[], seed: number) => randn(shape, seed);
  // 1. the backward against float64 on small problems of each kind, on this device
  const small: [string, () => { problem: AttnProblem; q: Float32Array; k: Float32Array; v: Float32Array }][] = [
    ['causal N=200 H=4 D=64', () => {
      const [q, k, v] = [1, 2, 3].map((i) => shaped([1, 200, 4, 64], i));
      return { problem: planAttention(q!, k!, v!, { causal: true }).problem, q: q!.data, k: k!.data, v: v!.data };
    }],
    ['2-D NA 20x20 k=7 H=2 D=64', () => {
      const [q, k, v] = [1, 2, 3].map((i) => shaped([1, 20, 20, 2, 64], i));
      return { problem: planNA(q!, k!, v!, { kernelSize: 7 }).problem, q: q!.data, k: k!.data, v: v!.data };
    }],
    ['3-D NA 8x8x8 k=3 H=2 D=64', () => {
      const [q, k, v] = [1, 2, 3].map((i) => shaped([1, 8, 8, 8, 2, 64], i));
      return { problem: planNA(q!, k!, v!, { kernelSize: 3 }).problem, q: q!.data, k: k!.data, v: v!.data };
    }],
  ];
  for (const [name, make] of small) {
    const { problem, q, k, v } = make();
    const f = await runWebGPUFused(problem, q, k, v);
    const dout = randn([f.out.length], 9).data;
    const g = await runWebGPUBackward(problem, { q, k, v, out: f.out, lse: f.lse, dout }, { poison: true });
    const ref = referenceBackward(problem, { q, k, v }, dout);
    let num = 0;
    let den = 0;
    for (const [a, b] of [[g.dq, ref.dq], [g.dk, ref.dk], [g.dv, ref.dv]] as const)
      for (let i = 0; i < a.length; i++) {
        num += (a[i]! - b[i]!) ** 2;
        den += b[i]! ** 2;
      }
    bwdChecks.push({ name, relErr: Math.sqrt(num / (den || 1)) });
    console.error(`backward check ${name}: relErr ${Math.sqrt(num / (den || 1)).toExponential(1)}`);
  }
  // 2. the timed cases
  const { B, N, H, D } = BWD.dense;
  for (const causal of [false, true]) {
    const shape = [B, N, H, D];
    const { problem } = planAttention(hostView(host.q, shape), hostView(host.k, shape), hostView(host.v, shape), { causal });
    bwdCases.push({ name: `${causal ? 'causal' : 'dense'} B=${B} N=${N} H=${H} D=${D}`, kind: 'dense', problem, pairs: B * H * (causal ? (N * (N + 1)) / 2 : N * N), spec: { B, N, H, D, causal } });
  }
  for (const c of BWD.na) {
    const shape = [1, ...c.grid, c.heads, c.dim];
    const { problem } = planNA(hostView(host.q, shape), hostView(host.k, shape), hostView(host.v, shape), { kernelSize: c.kernel });
    const cp = compilePattern(problem.pattern, { qGrid: problem.seqs[0]!.qGrid, kGrid: problem.seqs[0]!.kGrid, heads: problem.heads });
    bwdCases.push({ name: `${c.grid.length}-D NA ${c.grid.join('x')} k=${c.kernel} H=${c.heads} D=${c.dim}`, kind: 'na', problem, pairs: allowedPairs(cp) * c.heads, spec: c });
  }
  for (const c of bwdCases) {
    const p = c.problem;
    const view = (t: GpuTensor, shape: number[]): GpuTensor => ({ ...t, shape });
    const io = { q: view(gpu.q, [p.qRows, p.heads, p.dim]), k: view(gpu.k, [p.kRows, p.kvHeads, p.dim]), v: view(gpu.v, [p.kRows, p.kvHeads, p.dimV]) };
    const dest = { out: view(out, [p.qRows, p.heads, p.dimV]), lse: view(lse, [p.qRows, p.heads]) };
    const dout = await toGpu(randn([p.qRows * p.heads * p.dimV], 21).data, [p.qRows, p.heads, p.dimV]);
    const t = { ...io, ...dest, dout };
    await runWebGPUFusedTensors(p, io.q, io.k, io.v, dest);
    for (const tuning of sweepTunings) {
      setBackwardTuning(tuning);
      try {
        await warmUp(async () => {
          for (const x of Object.values(await runWebGPUBackwardTensors(p, t))) releaseTensor(x);
        });
        const times: number[] = [];
        for (let i = 0; i < 3; i++) {
          const s0 = performance.now();
          const g = await runWebGPUBackwardTensors(p, t, timer && i > 0 ? { timer } : {});
          await ctx.device.queue.onSubmittedWorkDone();
          const wall = performance.now() - s0;
          if (i > 0) times.push(timer ? await timer.read() : wall);
          for (const x of Object.values(g)) releaseTensor(x);
        }
        bwdSweep.push({ case: c.name, tuning, ms: median(times) });
        console.error(`${c.name}: backward blocking ${JSON.stringify(tuning)} ${median(times).toFixed(2)} ms`);
      } catch (e) {
        console.error(`${c.name}: backward blocking ${JSON.stringify(tuning)} failed (${(e as Error).message.split('\n')[0]})`);
      } finally {
        setBackwardTuning(undefined);
      }
    }
    const bwd = async (timed: boolean): Promise<[number, number]> => {
      const s = performance.now();
      const g = await runWebGPUBackwardTensors(p, t, timed && timer ? { timer } : {});
      await ctx.device.queue.onSubmittedWorkDone();
      const wall = performance.now() - s;
      const ts = timed && timer ? await timer.read() : wall;
      for (const x of Object.values(g)) releaseTensor(x);
      return [ts, wall];
    };
    await bwd(false);
    await warmUp(() => bwd(false));
    const fw: number[] = [];
    const bw: number[] = [];
    const bwWall: number[] = [];
    for (let i = 0; i < repeat; i++) {
      if (timer) {
        await runWebGPUFusedTensors(p, io.q, io.k, io.v, { ...dest, timer });
        fw.push(await timer.read());
      } else {
        const s = performance.now();
        await runWebGPUFusedTensors(p, io.q, io.k, io.v, dest);
        await ctx.device.queue.onSubmittedWorkDone();
        fw.push(performance.now() - s);
      }
      const [a, b] = await bwd(true);
      bw.push(a);
      bwWall.push(b);
    }
    releaseTensor(dout);
    const r = { name: c.name, fwdMs: median(fw), bwdMs: median(bw), bwdWallMs: median(bwWall), timing: timer ? ('gpu-ts' as const) : ('wall-gpu' as const) };
    bwdOurs.push(r);
    console.error(`ours ${c.name}: forward ${r.fwdMs.toFixed(2)} ms, backward ${r.bwdMs.toFixed(2)} ms (wall with schedule build ${r.bwdWallMs.toFixed(2)} ms)`);
  }
}

for (const t of [gpu.q, gpu.k, gpu.v, out, lse]) releaseTensor(t);
timer?.destroy();

// ---- PyTorch on the same GPU (child process, after our buffers are released) ------------------
interface TorchRow {
  kind: 'sdpa' | 'flex-na' | 'sdpa-fwd-bwd' | 'flex-na-fwd-bwd';
  ms?: number;
  unavailable?: string;
  [k: string]: unknown;
}
interface TorchOut {
  unavailable?: string;
  torch?: string;
  device?: string;
  results?: TorchRow[];
}
async function runTorch(): Promise<TorchOut> {
  const script = fileURLToPath(new URL('../../bench/sdpa.py', import.meta.url));
  const spec = {
    smoke,
    repeat,
    dense: denseCases,
    na: SIZES.naKernels.map((kernel) => ({ grid: SIZES.naGrid, heads: SIZES.naHeads, dim: SIZES.naDim, kernel })),
    denseBwd: bwdCases.filter((c) => c.kind === 'dense').map((c) => c.spec),
    naBwd: bwdCases.filter((c) => c.kind === 'na').map((c) => c.spec),
  };
  return new Promise((resolve) => {
    const child = spawn(opt.python!, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', (e) => resolve({ unavailable: `${opt.python} could not start: ${e.message}` }));
    child.on('close', (code) => {
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as TorchOut);
      } catch {
        resolve({ unavailable: `bench/sdpa.py exited with ${code} without a JSON result` });
      }
    });
    child.stdin.end(JSON.stringify(spec));
  });
}
const torch = await runTorch();
if (torch.unavailable) console.log(`PyTorch: skipped (${torch.unavailable})`);
else console.log(`PyTorch ${torch.torch} on ${torch.device}, float32, TF32 off`);
const torchRows = torch.results ?? [];

// ---- tables -----------------------------------------------------------------------------------
const f = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : x >= 0.1 ? x.toFixed(2) : x.toExponential(1));
const tf = (pairs: number, D: number, ms: number | undefined) => (ms === undefined ? undefined : (pairs * 4 * D) / (ms * 1e9));
function table(head: string[], body: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(w[i]!)).join(' | ')} |`;
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)].join('\n');
}

const denseRows = denseOurs.map((o) => {
  const t = torchRows.find((r) => r.kind === 'sdpa' && r['N'] === o.N && r['D'] === o.D && r['causal'] === o.causal && r['B'] === o.B);
  const tt = tf(o.pairs, o.D, t?.ms);
  return { ...o, torchMs: t?.ms, torchTflops: tt, torchNote: t?.unavailable ?? (t ? undefined : torch.unavailable) };
});
console.log(`\nExact attention, fp32, B*N = ${SIZES.tokens}, H*D = ${SIZES.hd} (useful TFLOP/s; causal counts half the pairs)`);
console.log(
  table(
    ['N', 'B', 'H', 'D', 'causal', 'ours ms', 'ours TFLOP/s', 'relErr', 'SDPA ms', 'SDPA TFLOP/s', 'ours/SDPA'],
    denseRows.map((r) => [
      String(r.N),
      String(r.B),
      String(r.H),
      String(r.D),
      String(r.causal),
      f(r.ms),
      f(r.tflops),
      r.relErr.toExponential(1),
      f(r.torchMs),
      f(r.torchTflops),
      r.torchTflops ? `${(r.tflops / r.torchTflops).toFixed(2)}x` : '-',
    ]),
  ),
);

const naRows = naOurs.map((o) => {
  const t = torchRows.find((r) => r.kind === 'flex-na' && r['kernel'] === o.kernel);
  // the Flex mask must allow exactly our pairs (per head), or its times are not comparable
  const theirs = t?.['allowedPairs'] as number | undefined;
  const mismatch = theirs !== undefined && theirs * SIZES.naHeads !== o.pairs ? `Flex mask allows ${theirs} pairs per head, tilewise ${o.pairs / SIZES.naHeads}` : undefined;
  return { ...o, flexMs: mismatch ? undefined : t?.ms, flexTflops: mismatch ? undefined : tf(o.pairs, SIZES.naDim, t?.ms), flexNote: mismatch ?? t?.unavailable ?? (t ? undefined : torch.unavailable) };
});
console.log(`\n2-D neighborhood attention ${X}x${Y}, ${SIZES.naHeads} heads, D ${SIZES.naDim}, fp32 (useful TFLOP/s: window pairs; dense fused: all pairs, ${f(naDense.ms)} ms, ${f(naDense.tflops)} TFLOP/s)`);
console.log(
  table(
    ['kernel', 'fused ms', 'fused TFLOP/s', 'permuted ms', 'naive ms', 'naive TFLOP/s', 'Flex ms', 'Flex TFLOP/s', 'naive/fused', 'dense/fused', 'Flex/fused', 'relErr f/p/n'],
    naRows.map((r) => [
      String(r.kernel),
      f(r.fused.ms),
      f(r.fused.tflops),
      f(r.permuted.ms),
      f(r.naive.ms),
      f(r.naive.tflops),
      f(r.flexMs),
      f(r.flexTflops),
      `${(r.naive.ms / r.fused.ms).toFixed(2)}x`,
      `${(naDense.ms / r.fused.ms).toFixed(2)}x`,
      r.flexMs ? `${(r.flexMs / r.fused.ms).toFixed(2)}x` : '-',
      `${r.fused.relErr.toExponential(1)}/${r.permuted.relErr.toExponential(1)}/${r.naive.relErr.toExponential(1)}`,
    ]),
  ),
);
console.log('ratios are time ratios (>1: ours fused is faster), except ours/SDPA, a TFLOP/s ratio (>1: ours is faster).');
console.log(`in-kernel non-finite screen (GPU-tensor API calls), dense B=${screenCost.case.B} N=${screenCost.case.N} H=${screenCost.case.H} D=${screenCost.case.D}: ${f(screenCost.onMs)} ms on, ${f(screenCost.offMs)} ms off (${(screenCost.onMs / screenCost.offMs).toFixed(2)}x), relErr ${screenCost.relErr.toExponential(1)}`);
for (const note of new Set([...denseRows.map((x) => x.torchNote), ...naRows.map((x) => x.flexNote)].filter((x) => x))) console.log(`PyTorch rows unavailable: ${note}`);

const bwdRows = bwdOurs.map((o, i) => {
  const c = bwdCases[i]!;
  const kind = c.kind === 'dense' ? 'sdpa-fwd-bwd' : 'flex-na-fwd-bwd';
  // torch answers the cases of each kind in the order they were sent
  const t = torchRows.filter((r) => r.kind === kind)[bwdCases.slice(0, i).filter((x) => x.kind === c.kind).length];
  const theirs = t?.['allowedPairs'] as number | undefined;
  const heads = c.problem.heads;
  const mismatch = theirs !== undefined && theirs * heads !== c.pairs ? `Flex mask allows ${theirs} pairs per head, tilewise ${c.pairs / heads}` : undefined;
  const both = o.fwdMs + o.bwdMs;
  // FlashAttention's count: forward 4 D per pair, backward 2.5x that
  const fl = (ms: number) => (3.5 * c.pairs * 4 * c.problem.dim) / (ms * 1e9);
  return { ...o, pairs: c.pairs, torchMs: mismatch ? undefined : t?.ms, torchFwdMs: mismatch ? undefined : (t?.['fwdMs'] as number | undefined), oursTflops: fl(both), torchTflops: t?.ms && !mismatch ? fl(t.ms) : undefined, torchNote: mismatch ?? t?.unavailable ?? (t ? undefined : torch.unavailable) };
});
if (opt.backward) {
  console.log('\nForward + backward, fp32 (useful TFLOP/s count the backward as 2.5 forwards; ours: GPU timestamps of the kernels, wall: the whole backward call (walks in the kernel here; host-built schedules only for patterns that need them))');
  console.log(
    table(
      ['case', 'ours fwd ms', 'ours bwd ms', 'bwd/fwd', 'ours bwd wall ms', 'ours fwd+bwd ms', 'ours TFLOP/s', 'torch fwd+bwd ms', 'torch fwd ms', 'torch TFLOP/s', 'torch/ours'],
      bwdRows.map((r) => [r.name, f(r.fwdMs), f(r.bwdMs), `${(r.bwdMs / r.fwdMs).toFixed(2)}x`, f(r.bwdWallMs), f(r.fwdMs + r.bwdMs), f(r.oursTflops), f(r.torchMs), f(r.torchFwdMs), f(r.torchTflops), r.torchMs ? `${(r.torchMs / (r.fwdMs + r.bwdMs)).toFixed(2)}x` : '-']),
    ),
  );
  console.log('torch: SDPA for dense and causal, FlexAttention (torch.compile) with an NA block mask for neighborhoods; torch/ours > 1: ours is faster.');
  for (const c of bwdChecks) console.log(`backward check on this device, ${c.name}: relErr ${c.relErr.toExponential(1)} against float64`);
  for (const t of bwdSweep) console.log(`backward blocking ${JSON.stringify(t.tuning)} on ${t.case}: ${t.ms.toFixed(2)} ms`);
  for (const note of new Set(bwdRows.map((x) => x.torchNote).filter((x) => x))) console.log(`PyTorch rows unavailable: ${note}`);
}

await mkdir(opt.out!, { recursive: true });
const file = join(opt.out!, 'gpu-bench.json');
await writeFile(
  file,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      smoke,
      repeat,
      adapter: ctx.description,
      adapterClass: ctx.adapterClass,
      features: [...ctx.features].sort(),
      storedTuning: ctx.tuning ?? null,
      timing: timer ? 'gpu-ts' : 'wall-gpu',
      sizes: SIZES,
      torch: { version: torch.torch ?? null, device: torch.device ?? null, unavailable: torch.unavailable ?? null, results: torchRows },
      dense: denseRows,
      na: { grid: SIZES.naGrid, heads: SIZES.naHeads, dim: SIZES.naDim, denseFused: naDense, rows: naRows },
      screen: screenCost,
      ...(opt.backward ? { backward: { checks: bwdChecks, rows: bwdRows, sweep: bwdSweep } } : {}),
    },
    null,
    1,
  ),
);
console.log(`\nwrote ${file}`);
process.exit(0); // Dawn's instance keeps the event loop alive
