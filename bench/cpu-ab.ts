/**
 * Two builds of tilewise on the same CPU calls in one process, alternated call by call (the order
 * flipped every pair), so a slow spell of this noisy VM falls on both: each build keeps its own
 * pool (the idle one's workers sleep). For kernel changes, with the old build in another folder:
 *
 *   git worktree add /tmp/old <rev> && (cd /tmp/old && npm ci && npm run build)
 *   npm run build && node dist/bench/cpu-ab.js --a /tmp/old/dist --b dist [--case 3d] [--calls 60] [--threads 2] [--backward] [--processes R]
 *
 * --backward times the backward (on the forward's out and lse from build A) instead of the forward.
 * Cases: 3d (16^3 k5 H4 D32), 2d (64x64 k7 H4 D32), 1d (8192 k17 H8 D64), 3dk1 (16^3 k1: the fixed costs),
 * dense (N 2048 H8 D64), decode (one query row against 4096 keys, H8 D64), or any call with
 * --spec '{"q":[1,1,8,64],"kv":[1,4096,8,64],"opts":{"causal":true}}' (kv defaults to q's shape; opts
 * with kernelSize make it a neighborhood call, others go to attention).
 * --toggle inline|lanes|caller compares two settings of ONE build (--a only) instead of two builds:
 * the calling thread against the worker pool for every job, head lanes on against off, or the
 * calling thread working beside the workers (setCpuCallerFlops) on every pooled job against never.
 * --processes R: A and B each in its own process instead, R rounds of one process per side (the
 * order flipped every round), each timing --calls back-to-back calls after its warm-up; reports the
 * median of the per-round ratios of medians. For small calls (a few ms) this is the measure: in one
 * process each side's pool sleeps while the other side runs, and on this VM a pool woken after 20 ms
 * or more computes about 1.8x slower (BENCHMARKS stop 18), which call-by-call pairs then time.
 * --longheads decode|prefill [--tokens N] times LongHeads instead: a decode step on a
 * LongHeadsCache of N tokens built per side (H2 D64, budget 4096, chunk 256), or the prefill
 * longHeadsAttention on N tokens (H4 D64, budget 1024, chunk 128).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const { values: args } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    case: { type: 'string', default: '3d' },
    spec: { type: 'string' },
    toggle: { type: 'string' },
    calls: { type: 'string', default: '60' },
    threads: { type: 'string', default: '2' },
    backward: { type: 'boolean', default: false },
    longheads: { type: 'string' },
    tokens: { type: 'string' },
    processes: { type: 'string' },
    // internal: the child of --processes that times one side
    only: { type: 'string' },
  },
});
const cases: Record<string, { grid: number[]; kernel: number; heads: number; dim: number; qTokens?: number }> = {
  '3d': { grid: [16, 16, 16], kernel: 5, heads: 4, dim: 32 },
  '2d': { grid: [64, 64], kernel: 7, heads: 4, dim: 32 },
  '1d': { grid: [8192], kernel: 17, heads: 8, dim: 64 },
  '3dk1': { grid: [16, 16, 16], kernel: 1, heads: 4, dim: 32 },
  dense: { grid: [2048], kernel: 0, heads: 8, dim: 64 },
  decode: { grid: [4096], kernel: 0, heads: 8, dim: 64, qTokens: 1 },
};
type Opts = import('../src/index.js').NeighborhoodOptions & import('../src/index.js').AttentionOptions;
interface Spec {
  q: number[];
  kv?: number[];
  opts?: Partial<Opts>;
}
let spec: Spec;
if (args.spec) spec = JSON.parse(args.spec) as Spec;
else {
  const c = cases[args.case!];
  if (!c) throw new Error(`unknown case '${args.case}': ${Object.keys(cases).join('|')}, or --spec`);
  const kv = [1, ...c.grid, c.heads, c.dim];
  spec = { q: c.qTokens ? [1, c.qTokens, c.heads, c.dim] : kv, kv, opts: c.kernel ? { kernelSize: c.kernel } : {} };
}
const toggles = ['inline', 'lanes', 'caller'];
if (!args.a || (!args.b && !args.toggle) || (args.toggle && !toggles.includes(args.toggle))) {
  throw new Error('usage: --a DIST (--b DIST | --toggle inline|lanes|caller) [--case NAME | --spec JSON] [--calls N] [--threads T] [--backward]');
}

const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const f = (x: number) => x.toFixed(2);
const name = args.longheads ? `longheads ${args.longheads} ${args.tokens ?? 'default'} tokens` : args.spec ? `spec ${args.spec}` : args.case;
const what = `${args.backward ? ' backward' : ''}${args.toggle ? ` (${args.toggle}: A off, B on)` : ''}, ${args.threads} threads`;

// --processes R: this process only spawns the timing processes, one side each, and loads no build
if (args.processes && args.only === undefined) {
  const { spawnSync } = await import('node:child_process');
  const argv = process.argv.slice(2).filter((x, i, all) => x !== '--processes' && all[i - 1] !== '--processes' && !x.startsWith('--processes='));
  const runs: [number[], number[]] = [[], []];
  const ratios: number[] = [];
  for (let r = 0; r < Math.max(1, Number(args.processes) | 0); r++) {
    const m = [0, 0];
    for (const j of r % 2 ? [1, 0] : [0, 1]) {
      const child = spawnSync(process.execPath, [process.argv[1]!, ...argv, '--only', j ? 'b' : 'a'], { encoding: 'utf8' });
      if (child.status !== 0) throw new Error(`side ${j ? 'B' : 'A'} failed: ${child.stderr}`);
      m[j] = (JSON.parse(child.stdout.trim().split('\n').at(-1)!) as { median: number }).median;
      runs[j as 0 | 1].push(m[j]!);
    }
    ratios.push(m[1]! / m[0]!);
  }
  console.log(`${name}${what}, ${ratios.length} process rounds of ${args.calls} calls: A medians ${runs[0].map(f).join(' ')} ms | B medians ${runs[1].map(f).join(' ')} ms | B / A (median of round ratios) ${median(ratios).toFixed(3)}`);
  process.exit(0);
}

type Lib = typeof import('../src/index.js');
type Side = { lib: Lib; before: () => void; step?: (i: number) => Promise<unknown> };
const load = async (dir: string): Promise<{ lib: Lib; root: string }> => {
  const root = pathToFileURL(path.resolve(dir) + '/').href;
  const lib = (await import(root + 'src/index.js')) as Lib;
  ((await import(root + 'src/cli/relaxed.js')) as { enableRelaxedSimd: () => void }).enableRelaxedSimd();
  lib.setCpuThreads(Math.max(1, Number(args.threads) | 0));
  return { lib, root };
};
const sides: Side[] = [];
if (args.toggle) {
  // A: the setting off (inline: the pool for every job; lanes: head lanes off; caller: never beside), B: on
  const { lib, root } = await load(args.a);
  const pool = (await import(root + 'src/cpu/pool.js')) as { setInlineFlops: (f: number) => void };
  const lanes = (await import(root + 'src/cpu/na-lanes.js')) as { setHeadLanes: (on: boolean) => void };
  const set: Record<string, (b: boolean) => void> = {
    inline: (b) => pool.setInlineFlops(b ? Infinity : 0),
    lanes: (b) => lanes.setHeadLanes(b),
    caller: (b) => lib.setCpuCallerFlops(b ? Infinity : 0),
  };
  const on = (b: boolean) => () => set[args.toggle!]!(b);
  sides.push({ lib, before: on(false) }, { lib, before: on(true) });
} else for (const dir of [args.a, args.b!]) sides.push({ lib: (await load(dir)).lib, before: () => undefined });

if (args.longheads) {
  const n = Number(args.tokens ?? (args.longheads === 'decode' ? 4352 : 8192));
  for (const side of sides) {
    const { lib } = side;
    if (args.longheads === 'decode') {
      const [H, D] = [2, 64];
      const cache = new lib.LongHeadsCache(H, H, D, { chunkSize: 256, budget: 4096, backend: 'cpu' });
      await cache.append(lib.randn([n, H, D], 1), lib.randn([n, H, D], 2), lib.randn([n, H, D], 3));
      side.step = (i) => cache.decode(lib.randn([1, H, D], 10 + i), lib.randn([1, H, D], 50 + i), lib.randn([1, H, D], 90 + i));
    } else {
      const [q, k, v] = [1, 2, 3].map((x) => lib.randn([1, n, 4, 64], x));
      side.step = () => lib.longHeadsAttention(q!, k!, v!, { budget: 1024, chunkSize: 128 });
    }
  }
}
const lib0 = sides[0]!.lib;
const q = lib0.randn(spec.q, 1);
const [k, v] = [2, 3].map((s) => lib0.randn(spec.kv ?? spec.q, s));
const opts = (spec.opts ?? {}) as Opts; // kernelSize present: a neighborhood call
const na = opts.kernelSize !== undefined;
sides[0]!.before();
const fw = na ? await lib0.neighborhoodAttention(q, k!, v!, opts) : await lib0.attention(q, k!, v!, opts);
const dOut = lib0.randn(spec.q.slice(0, -1).concat(fw.out.shape.at(-1)!), 4);
let calls = 0;
const call = async ({ lib, before, step }: Side) => {
  if (step) return void (await step(calls++));
  before();
  if (args.backward) void (na ? await lib.neighborhoodAttentionBackward(q, k!, v!, fw.out, fw.lse, dOut, opts) : await lib.attentionBackward(q, k!, v!, fw.out, fw.lse, dOut, opts));
  else void (na ? await lib.neighborhoodAttention(q, k!, v!, opts) : await lib.attention(q, k!, v!, opts));
};
// a child of --processes: one side's warm-up, then its calls back to back
if (args.only !== undefined) {
  const side = sides[args.only === 'b' ? 1 : 0]!;
  const t0 = performance.now();
  for (let i = 0; i < 15 || performance.now() - t0 < 400; i++) await call(side);
  const ts: number[] = [];
  for (let i = 0; i < Math.max(3, Number(args.calls) | 0); i++) {
    const s = performance.now();
    await call(side);
    ts.push(performance.now() - s);
  }
  console.log(JSON.stringify({ median: median(ts), best: Math.min(...ts) }));
  process.exit(0);
}
for (const side of sides) {
  const t0 = performance.now();
  for (let i = 0; i < 15 || performance.now() - t0 < 400; i++) await call(side);
}
const times: [number[], number[]] = [[], []];
const ratios: number[] = [];
for (let i = 0; i < Math.max(2, Number(args.calls) | 0); i++) {
  const t = [0, 0];
  for (const j of i % 2 ? [1, 0] : [0, 1]) {
    const s = performance.now();
    await call(sides[j]!);
    t[j] = performance.now() - s;
    times[j as 0 | 1].push(t[j]!);
  }
  ratios.push(t[1]! / t[0]!);
}
console.log(`${name}${what}, ${ratios.length} pairs: A median ${f(median(times[0]))} best ${f(Math.min(...times[0]))} ms | B median ${f(median(times[1]))} best ${f(Math.min(...times[1]))} ms | B / A (median of pair ratios) ${median(ratios).toFixed(3)}`);
