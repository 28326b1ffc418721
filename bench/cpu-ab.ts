/**
 * Two builds of tilewise on the same CPU calls in one process, alternated call by call (the order
 * flipped every pair), so a slow spell of this noisy VM falls on both: each build keeps its own
 * pool (the idle one's workers sleep). For kernel changes, with the old build in another folder:
 *
 *   git worktree add /tmp/old <rev> && (cd /tmp/old && npm ci && npm run build)
 *   npm run build && node dist/bench/cpu-ab.js --a /tmp/old/dist --b dist [--case 3d] [--calls 60] [--threads 2] [--backward]
 *
 * --backward times the backward (on the forward's out and lse from build A) instead of the forward.
 * Cases: 3d (16^3 k5 H4 D32), 2d (64x64 k7 H4 D32), 1d (8192 k17 H8 D64), 3dk1 (16^3 k1: the fixed costs),
 * dense (N 2048 H8 D64), decode (one query row against 4096 keys, H8 D64).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const { values: args } = parseArgs({
  options: { a: { type: 'string' }, b: { type: 'string' }, case: { type: 'string', default: '3d' }, calls: { type: 'string', default: '60' }, threads: { type: 'string', default: '2' }, backward: { type: 'boolean', default: false } },
});
// qTokens: a query length of its own (decoding: one query row against the whole key grid)
const cases: Record<string, { grid: number[]; kernel: number; heads: number; dim: number; qTokens?: number }> = {
  '3d': { grid: [16, 16, 16], kernel: 5, heads: 4, dim: 32 },
  '2d': { grid: [64, 64], kernel: 7, heads: 4, dim: 32 },
  '1d': { grid: [8192], kernel: 17, heads: 8, dim: 64 },
  '3dk1': { grid: [16, 16, 16], kernel: 1, heads: 4, dim: 32 },
  dense: { grid: [2048], kernel: 0, heads: 8, dim: 64 },
  decode: { grid: [4096], kernel: 0, heads: 8, dim: 64, qTokens: 1 },
};
const c = cases[args.case!];
if (!c || !args.a || !args.b) throw new Error(`usage: --a DIST --b DIST [--case ${Object.keys(cases).join('|')}]`);

type Lib = typeof import('../src/index.js');
const libs: Lib[] = [];
for (const dir of [args.a, args.b]) {
  const root = pathToFileURL(path.resolve(dir) + '/').href;
  const lib = (await import(root + 'src/index.js')) as Lib;
  ((await import(root + 'src/cli/relaxed.js')) as { enableRelaxedSimd: () => void }).enableRelaxedSimd();
  lib.setCpuThreads(Math.max(1, Number(args.threads) | 0));
  libs.push(lib);
}
const shape = [1, ...c.grid, c.heads, c.dim];
const qShape = c.qTokens ? [1, c.qTokens, c.heads, c.dim] : shape;
const q = libs[0]!.randn(qShape, 1);
const [k, v] = [2, 3].map((s) => libs[0]!.randn(shape, s));
const opts = { kernelSize: c.kernel };
const fw = c.kernel ? await libs[0]!.neighborhoodAttention(q!, k!, v!, opts) : await libs[0]!.attention(q!, k!, v!, {});
const dOut = libs[0]!.randn(qShape, 4);
const call = async (lib: Lib) => {
  if (args.backward) void (c.kernel ? await lib.neighborhoodAttentionBackward(q!, k!, v!, fw.out, fw.lse, dOut, opts) : await lib.attentionBackward(q!, k!, v!, fw.out, fw.lse, dOut, {}));
  else void (c.kernel ? await lib.neighborhoodAttention(q!, k!, v!, opts) : await lib.attention(q!, k!, v!, {}));
};
for (const lib of libs) {
  const t0 = performance.now();
  for (let i = 0; i < 15 || performance.now() - t0 < 400; i++) await call(lib);
}
const times: [number[], number[]] = [[], []];
const ratios: number[] = [];
for (let i = 0; i < Math.max(2, Number(args.calls) | 0); i++) {
  const t = [0, 0];
  for (const j of i % 2 ? [1, 0] : [0, 1]) {
    const s = performance.now();
    await call(libs[j]!);
    t[j] = performance.now() - s;
    times[j as 0 | 1].push(t[j]!);
  }
  ratios.push(t[1]! / t[0]!);
}
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const f = (x: number) => x.toFixed(2);
console.log(`${args.case}${args.backward ? ' backward' : ''}, ${args.threads} threads, ${ratios.length} pairs: A median ${f(median(times[0]))} best ${f(Math.min(...times[0]))} ms | B median ${f(median(times[1]))} best ${f(Math.min(...times[1]))} ms | B / A (median of pair ratios) ${median(ratios).toFixed(3)}`);
