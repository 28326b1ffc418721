/**
 * tilewise's CPU backend against ONNX Runtime on the same inputs, in one run: onnxruntime-node
 * (native CPU EP) and onnxruntime-web (its wasm backend in Node), both through the contrib op
 * com.microsoft.MultiHeadAttention, which is what an ONNX Runtime user has for attention.
 *
 *   npm run build && node dist/bench/cpu-peers.js [--quick] [--cases dense2048,causal4096,na2d,na3d] [--repeat N] [--json]
 *                                                 [--kernels relaxed-simd|simd|scalar] [--rounds R] [--pairs N] [--rate-pairs N]
 *
 * --rounds R runs every implementation of a case R times in turn and reports the median (and best)
 * of all its calls, so a slow spell of this noisy VM falls on every row alike. Neighborhoods with
 * heads in fours also get a row for the query-lane fused kernel (the head-lane path turned off).
 * --pairs N then times tilewise fused and onnxruntime-node alternately, call by call (N pairs after
 * both warmed up), and reports the median of the per-pair ratios: on this VM a slow spell of a
 * few hundred milliseconds moves a whole row's median, but falls on both calls of a pair.
 * --rate-pairs N measures each neighborhood case against tilewise's own dense N=2048 H8 D64 the
 * same way (the target 'NA useful rate >= 0.5x dense' from rates timed together instead of rows
 * timed apart): N pairs of one dense call and a burst of NA calls, whose first (which finds the
 * caches as the dense call left them) is dropped and the median of the rest taken as the pair's NA
 * rate; the median of the per-pair ratios is reported.
 *
 * Patterns reach the peers the way a user would give them: causal as MHA's `unidirectional = 1`,
 * neighborhoods as an additive attention_bias (0 / -1e9) built from the exact NATTEN window. Each
 * peer's output is compared with tilewise's fused output (relative L2 error) so the table only
 * compares like with like. Useful FLOPs count only allowed (query, key) pairs: 2 (D + Dv) pairs H B.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { attention, cpuInfo, na2d, na3d, randn, relError, setCpuKernels, setCpuThreads, type KernelVariant, type Result, type Tensor } from '../src/index.js';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';
import { setHeadLanes } from '../src/cpu/na-lanes.js';
import { mhaModel } from './onnx-mha.js';

enableRelaxedSimd(); // Node 20 keeps relaxed SIMD behind a flag; --kernels simd measures without it

const THREADS = 2; // tilewise's default on the 2-core reference machine; peers get the same
// Masked bias entries: ORT adds attention_bias to the scaled scores as is (mask_filter_value only
// applies to key_padding_mask). -inf and -FLT_MAX give the same outputs in 1.30 (checked); a large
// finite value is the safe habit, since a row block with every key masked can't give -inf - -inf = NaN.
const MASKED = -1e9;

const { values: args } = parseArgs({
  options: {
    cases: { type: 'string' },
    repeat: { type: 'string' },
    rounds: { type: 'string' },
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    kernels: { type: 'string' },
    pairs: { type: 'string' },
    'rate-pairs': { type: 'string' },
  },
});
if (args.kernels) setCpuKernels(args.kernels as KernelVariant);

interface Case {
  id: string;
  kind: 'dense' | 'causal' | 'na';
  grid: number[]; // token grid (one axis for dense/causal)
  heads: number;
  dim: number;
  kernel?: number[];
}
const full: Case[] = [
  { id: 'dense2048', kind: 'dense', grid: [2048], heads: 8, dim: 64 },
  { id: 'dense4096', kind: 'dense', grid: [4096], heads: 8, dim: 64 },
  { id: 'causal4096', kind: 'causal', grid: [4096], heads: 8, dim: 64 },
  { id: 'na2d', kind: 'na', grid: [64, 64], heads: 4, dim: 32, kernel: [7, 7] },
  { id: 'na3d', kind: 'na', grid: [16, 16, 16], heads: 4, dim: 32, kernel: [5, 5, 5] },
];
// --quick: same ids and kernels, smaller grids, so a smoke run takes about a minute
const quickGrid: Record<string, number[]> = { dense2048: [512], dense4096: [1024], causal4096: [1024], na2d: [32, 32], na3d: [8, 8, 8] };
let cases = args.quick ? full.map((c) => ({ ...c, grid: quickGrid[c.id]! })) : full;
if (args.cases) {
  const want = args.cases.split(',').map((s) => s.trim());
  const unknown = want.filter((w) => !full.some((c) => c.id === w));
  if (unknown.length) throw new Error(`unknown case(s) ${unknown.join(', ')}; known: ${full.map((c) => c.id).join(', ')}`);
  cases = cases.filter((c) => want.includes(c.id));
}
const fixedRepeat = args.repeat === undefined ? undefined : Math.max(1, Number(args.repeat) | 0);
const rounds = Math.max(0, Number(args.rounds ?? 1) | 0); // 0: only the pair tables
const TARGET_MS = args.quick ? 300 : 2000; // calibrated repeats aim each timed loop at ~2 s (at least 3 runs)

const tokens = (c: Case) => c.grid.reduce((a, b) => a * b, 1);

/** NATTEN window on one axis: a query near a border keeps a full window, shifted inward. */
const windowStart = (i: number, k: number, len: number) => Math.min(Math.max(i - Math.floor(k / 2), 0), len - k);

/** Additive [N, N] bias for the case's pattern: 0 where query i may see key j, MASKED elsewhere. */
function patternBias(c: Case): Float32Array | undefined {
  if (c.kind !== 'na') return undefined;
  const n = tokens(c);
  const bias = new Float32Array(n * n).fill(MASKED);
  const qc = new Array<number>(c.grid.length);
  for (let i = 0; i < n; i++) {
    // row-major coordinates of query i, then every key in its window product
    for (let a = c.grid.length - 1, r = i; a >= 0; a--) (qc[a] = r % c.grid[a]!), (r = Math.floor(r / c.grid[a]!));
    const starts = c.grid.map((len, a) => windowStart(qc[a]!, c.kernel![a]!, len));
    const visit = (a: number, base: number): void => {
      if (a === c.grid.length) return void (bias[i * n + base] = 0);
      for (let t = 0; t < c.kernel![a]!; t++) visit(a + 1, base * c.grid[a]! + starts[a]! + t);
    };
    visit(0, 0);
  }
  return bias;
}

/** Allowed (query, key) pairs, counted exactly from the pattern. */
function allowedPairs(c: Case): number {
  const n = tokens(c);
  if (c.kind === 'dense') return n * n;
  if (c.kind === 'causal') return (n * (n + 1)) / 2;
  return n * c.kernel!.reduce((a, b) => a * b, 1);
}

/**
 * Warms up (worker start, session init, and the JIT: a worker's schedule walk reaches optimised code
 * only after several calls, so one warm-up call left the first round of a 5 ms case up to 2x slow)
 * with at least 3 calls and 250 ms of calls, then runs fn `repeats` times; every time kept.
 */
async function timeIt(fn: () => Promise<Float32Array>): Promise<{ times: number[]; out: Float32Array }> {
  let t = performance.now();
  const out = await fn();
  const first = performance.now() - t;
  for (let n = 1, t0 = performance.now(); n < 20 && (n < 3 || performance.now() - t0 < 250); n++) await fn();
  const runs = fixedRepeat ?? Math.min(50, Math.max(3, Math.ceil(TARGET_MS / first)));
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return { times, out };
}

const medianOf = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

// Both peers re-export onnxruntime-common's API. They are loaded lazily so that a peer that
// cannot load (no native binding for this platform, wasm not found) is one error row, not a crash.
type Ort = typeof import('onnxruntime-node');
interface Peer {
  name: string;
  load: () => Promise<{ ort: Ort; opts: import('onnxruntime-node').InferenceSession.SessionOptions }>;
}
const peers: Peer[] = [
  {
    name: 'ort-node (cpu EP)',
    load: async () => ({
      ort: await import('onnxruntime-node'),
      opts: { executionProviders: ['cpu'], intraOpNumThreads: THREADS, interOpNumThreads: 1, executionMode: 'sequential' },
    }),
  },
  {
    name: 'ort-web (wasm)',
    load: async () => {
      const ort = (await import('onnxruntime-web')) as unknown as Ort;
      ort.env.wasm.numThreads = THREADS; // Node worker_threads back the wasm threads
      ort.env.wasm.simd = true;
      return { ort, opts: { executionProviders: ['wasm'] } };
    },
  },
];

async function runPeer(p: Peer, c: Case, q: Tensor, k: Tensor, v: Tensor) {
  const { ort, opts } = await p.load();
  const n = tokens(c);
  const model = mhaModel({ batch: 1, seq: n, heads: c.heads, headDim: c.dim, unidirectional: c.kind === 'causal', bias: patternBias(c) });
  const session = await ort.InferenceSession.create(model, opts);
  try {
    const shape = [1, n, c.heads * c.dim];
    const feeds = { query: new ort.Tensor('float32', q.data, shape), key: new ort.Tensor('float32', k.data, shape), value: new ort.Tensor('float32', v.data, shape) };
    return await timeIt(async () => {
      const res = await session.run(feeds);
      return res.output!.data as Float32Array;
    });
  } finally {
    await session.release();
  }
}

const PAUSE_MS = Number(process.env.PAUSE_MS ?? 20);
/** tilewise fused and onnxruntime-node alternately, call by call (the order flipped every pair): per-pair ratios. */
async function interleaved(c: Case, q: Tensor, k: Tensor, v: Tensor, pairs: number): Promise<{ tw: number[]; ort: number[]; ratios: number[] }> {
  const { ort, opts } = await peers[0]!.load();
  const n = tokens(c);
  const model = mhaModel({ batch: 1, seq: n, heads: c.heads, headDim: c.dim, unidirectional: c.kind === 'causal', bias: patternBias(c) });
  // no spinning: onnxruntime's pool threads otherwise spin for tens of milliseconds after each
  // run, taking the cores from the tilewise call that follows (measured: 3-D NA 12.6 ms against 8.1)
  const session = await ort.InferenceSession.create(model, { ...opts, extra: { session: { intra_op: { allow_spinning: '0' } } } });
  try {
    const shape = [1, n, c.heads * c.dim];
    const feeds = { query: new ort.Tensor('float32', q.data, shape), key: new ort.Tensor('float32', k.data, shape), value: new ort.Tensor('float32', v.data, shape) };
    const calls = [
      async () => void (c.kind !== 'na' ? await attention(q, k, v, { causal: c.kind === 'causal' }) : await (c.grid.length === 2 ? na2d : na3d)(q, k, v, { kernelSize: c.kernel! })),
      async () => void (await session.run(feeds)),
    ];
    for (const call of calls) {
      const t0 = performance.now();
      for (let i = 0; i < 3 || performance.now() - t0 < 250; i++) await call();
    }
    const tw: number[] = [];
    const ortT: number[] = [];
    const ratios: number[] = [];
    for (let i = 0; i < pairs; i++) {
      const t = [0, 0];
      for (const j of i % 2 ? [1, 0] : [0, 1]) {
        // a pause first: onnxruntime's pool threads spin for a while after each run, and would
        // otherwise take the cores from whichever call comes next
        await new Promise((r) => setTimeout(r, PAUSE_MS));
        const s0 = performance.now();
        await calls[j]!();
        t[j] = performance.now() - s0;
      }
      tw.push(t[0]!);
      ortT.push(t[1]!);
      ratios.push(t[1]! / t[0]!);
    }
    return { tw, ort: ortT, ratios };
  } finally {
    await session.release();
  }
}

async function runTilewise(impl: 'fused' | 'unfused' | 'naive', c: Case, q: Tensor, k: Tensor, v: Tensor, headLanes = true) {
  const call = (): Promise<Result> => {
    if (c.kind !== 'na') return attention(q, k, v, { causal: c.kind === 'causal' });
    const o = { kernelSize: c.kernel!, impl };
    return c.grid.length === 2 ? na2d(q, k, v, o) : na3d(q, k, v, o);
  };
  setHeadLanes(headLanes);
  try {
    return await timeIt(async () => (await call()).out.data);
  } finally {
    setHeadLanes(true);
  }
}

interface Row {
  case: string;
  shape: string;
  impl: string;
  ms?: number;
  best?: number;
  runs?: number;
  gflops?: number;
  /** this row's time / tilewise fused time: how many times faster tilewise fused is */
  fusedSpeedup?: number;
  relErr?: number;
  error?: string;
}

setCpuThreads(THREADS);
const say = (s: string) => (args.json ? process.stderr : process.stdout).write(s + '\n');
say(`# tilewise CPU vs ONNX Runtime (MultiHeadAttention)\n`);
say(`machine: ${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores; node ${process.version}; ${os.platform()} ${os.arch()}; threads ${THREADS}; tilewise kernels ${cpuInfo().kernels}${args.quick ? '; --quick sizes' : ''}\n`);

const rows: Row[] = [];
for (const c of cases) {
  const shape = [1, ...c.grid, c.heads, c.dim];
  const label = `B1 ${c.grid.join('x')} H${c.heads} D${c.dim}${c.kernel ? ` k${c.kernel.join('x')}` : ''}`;
  const [q, k, v] = [randn(shape, 1), randn(shape, 2), randn(shape, 3)];
  const flops = 2 * (c.dim + c.dim) * allowedPairs(c) * c.heads;
  const impls: Array<{ name: string; run: () => ReturnType<typeof timeIt> }> = [];
  for (const impl of c.kind === 'na' ? (['fused', 'unfused', 'naive'] as const) : (['fused'] as const))
    impls.push({ name: `tilewise ${impl}`, run: () => runTilewise(impl, c, q, k, v) });
  // the query-lane tile step on the same call, where heads in fours put the heads in the lanes
  if (c.kind === 'na' && c.heads % 4 === 0) impls.splice(1, 0, { name: 'tilewise fused, query lanes', run: () => runTilewise('fused', c, q, k, v, false) });
  for (const p of peers) impls.push({ name: p.name, run: () => runPeer(p, c, q, k, v) });

  // --rounds R: every implementation R times in turn, so a slow spell of this VM lands on all of them
  const times = new Map<string, number[]>();
  const outs = new Map<string, Float32Array>();
  const errors = new Map<string, string>();
  for (let round = 0; round < rounds; round++)
    for (const im of impls) {
      if (errors.has(im.name)) continue;
      process.stderr.write(`  ${c.id} ${label}: ${im.name}${rounds > 1 ? ` (round ${round + 1}/${rounds})` : ''} ...\n`); // progress: stderr, so stdout is the report
      try {
        const r = await im.run();
        times.set(im.name, [...(times.get(im.name) ?? []), ...r.times]);
        if (!outs.has(im.name)) outs.set(im.name, r.out);
      } catch (e) {
        // ORT errors carry the build machine's source path: keep the message after it
        const msg = (e instanceof Error ? e.message : String(e)).replace(/\S*\/onnxruntime\/core\//g, '').replace(/failed to call OrtRun\(\)\. ERROR_CODE: \d+, ERROR_MESSAGE: /, 'OrtRun: ').replace(/\s+/g, ' ').trim();
        errors.set(im.name, (/out of memory|\boom\b|bad_alloc|allocation failed/i.test(msg) ? 'out of memory: ' : 'error: ') + msg.slice(0, 200));
      }
    }
  const fusedMs = times.has('tilewise fused') ? medianOf(times.get('tilewise fused')!) : undefined;
  const fusedOut = outs.get('tilewise fused');
  for (const im of impls) {
    const row: Row = { case: c.id, shape: label, impl: im.name };
    const ts = times.get(im.name);
    if (ts) {
      const ms = medianOf(ts);
      Object.assign(row, { ms, best: Math.min(...ts), runs: ts.length, gflops: flops / (ms * 1e6) });
      if (fusedMs !== undefined && fusedOut) {
        Object.assign(row, { fusedSpeedup: ms / fusedMs, relErr: relError(outs.get(im.name)!, fusedOut) });
        if (!(row.relErr! < 1e-4)) row.error = `outputs disagree (rel err ${row.relErr!.toExponential(1)})`;
      }
    }
    if (errors.has(im.name)) row.error = errors.get(im.name);
    rows.push(row);
  }
}

// --pairs N: tilewise fused against onnxruntime-node alternated call by call, per case
const pairRows: { case: string; tw: number; ort: number; ratio: number; pairs: number }[] = [];
const nPairs = Math.max(0, Number(args.pairs ?? 0) | 0);
if (nPairs > 0)
  for (const c of cases) {
    process.stderr.write(`  ${c.id}: tilewise fused / ort-node, ${nPairs} interleaved pairs ...\n`);
    const shape = [1, ...c.grid, c.heads, c.dim];
    const r = await interleaved(c, randn(shape, 1), randn(shape, 2), randn(shape, 3), nPairs);
    pairRows.push({ case: c.id, tw: medianOf(r.tw), ort: medianOf(r.ort), ratio: medianOf(r.ratios), pairs: nPairs });
  }

// --rate-pairs N: each neighborhood case's useful rate against dense N=2048's, alternated call by call
const ratePairRows: { case: string; na: number; dense: number; ratio: number; pairs: number }[] = [];
const nRate = Math.max(0, Number(args['rate-pairs'] ?? 0) | 0);
const RATE_BURST = 7; // timed NA calls a pair (after the dropped first)
if (nRate > 0) {
  const dc = full.find((c) => c.id === 'dense2048')!;
  const dShape = [1, ...dc.grid, dc.heads, dc.dim];
  const [dq, dk, dv] = [randn(dShape, 4), randn(dShape, 5), randn(dShape, 6)];
  const dFlops = 2 * (dc.dim + dc.dim) * allowedPairs(dc) * dc.heads;
  for (const c of cases.filter((x) => x.kind === 'na')) {
    process.stderr.write(`  ${c.id}: tilewise useful rate / dense N=2048's, ${nRate} interleaved pairs ...\n`);
    const shape = [1, ...c.grid, c.heads, c.dim];
    const [q, k, v] = [randn(shape, 1), randn(shape, 2), randn(shape, 3)];
    const flops = 2 * (c.dim + c.dim) * allowedPairs(c) * c.heads;
    const calls = [async () => void (await attention(dq, dk, dv)), async () => void (await (c.grid.length === 2 ? na2d : na3d)(q, k, v, { kernelSize: c.kernel! }))];
    for (const call of calls) {
      const t0 = performance.now();
      for (let i = 0; i < 3 || performance.now() - t0 < 250; i++) await call();
    }
    const rates: number[][] = [[], []];
    const ratios: number[] = [];
    const timed = async (call: () => Promise<void>, f: number): Promise<number> => {
      const s0 = performance.now();
      await call();
      return f / ((performance.now() - s0) * 1e6);
    };
    for (let i = 0; i < nRate; i++) {
      const dense = await timed(calls[0]!, dFlops);
      const burst: number[] = [];
      for (let b = 0; b < RATE_BURST + 1; b++) burst.push(await timed(calls[1]!, flops));
      const na = medianOf(burst.slice(1));
      rates[0]!.push(dense);
      rates[1]!.push(na);
      ratios.push(na / dense);
    }
    ratePairRows.push({ case: c.id, na: medianOf(rates[1]!), dense: medianOf(rates[0]!), ratio: medianOf(ratios), pairs: nRate });
  }
}

if (args.json) console.log(JSON.stringify({ machine: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, threads: THREADS, quick: args.quick, rows, pairRows, ratePairRows }, null, 1));
else {
  const f = (x: number | undefined, d: number) => (x === undefined ? '—' : x.toFixed(d));
  if (rounds > 0) {
    console.log('| case | shape | impl | ms (median) | ms (best) | runs | useful GFLOP/s (median) | speedup of tilewise fused (row ms / fused ms) | rel err vs tilewise fused | note |');
    console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---|');
    for (const r of rows)
      console.log(`| ${r.case} | ${r.shape} | ${r.impl} | ${f(r.ms, 1)} | ${f(r.best, 1)} | ${r.runs ?? '—'} | ${f(r.gflops, 2)} | ${f(r.fusedSpeedup, 2)} | ${r.relErr === undefined ? '—' : r.relErr.toExponential(1)} | ${r.error ?? ''} |`);
  }
  if (pairRows.length) {
    console.log('\n| case | pairs | tilewise fused ms (median) | onnxruntime-node ms (median) | median of per-pair ratios (ort-node / tilewise) |');
    console.log('|---|---:|---:|---:|---:|');
    for (const r of pairRows) console.log(`| ${r.case} | ${r.pairs} | ${f(r.tw, 2)} | ${f(r.ort, 2)} | ${f(r.ratio, 2)} |`);
  }
  if (ratePairRows.length) {
    console.log('\n| case | pairs | NA useful GFLOP/s (median) | dense N=2048 GFLOP/s (median) | median of per-pair ratios (NA rate / dense rate) |');
    console.log('|---|---:|---:|---:|---:|');
    for (const r of ratePairRows) console.log(`| ${r.case} | ${r.pairs} | ${f(r.na, 2)} | ${f(r.dense, 2)} | ${f(r.ratio, 3)} |`);
  }
}
