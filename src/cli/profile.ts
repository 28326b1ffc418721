import cliProgress from 'cli-progress';
import { type Result, attention, blockSparseAttention, neighborhoodAttention, planAttention, planNA } from '../api.js';
import { scratchBytes } from '../cpu/kernels.js';
import { cpuThreads, setCpuThreads } from '../cpu/pool.js';
import { windowVolume } from '../cpu/na.js';
import { type CompiledPattern, compilePattern } from '../patterns/compile.js';
import type { AttnProblem } from '../problem.js';
import { referenceAttention } from '../reference.js';
import { type Tensor, randn, rng } from '../tensor.js';
import type { ProfileArgs } from './args.js';

export type ImplName = 'reference' | 'naive' | 'unfused' | 'fused' | 'dense-fused';

export interface ProfileRow {
  impl: ImplName;
  ms: number;
  usefulTflops: number;
  relErr: number | null;
  peakBytes: number;
}

export interface ProfileReport {
  backend: string;
  problem: Record<string, unknown>;
  results: ProfileRow[];
}

const prod = (t: readonly number[]) => t.reduce((a, b) => a * b, 1);

/** Allowed (query, key) pairs of one (batch, head): separable per axis for box patterns. */
export function allowedPairs(p: CompiledPattern, h = 0): number {
  if (p.boxRules) {
    let total = 0;
    p.groups.forEach((grp, g) => {
      const rules = p.boxRules!(g);
      total += grp.qLen.reduce((acc, n, a) => {
        let s = 0;
        for (let x = 0; x < n; x++) s += Math.max(0, rules[a]!.end(x) - rules[a]!.start(x) + 1);
        return acc * s;
      }, 1);
    });
    return total;
  }
  const nq = prod(p.geometry.qShape);
  const nk = prod(p.geometry.kShape);
  let n = 0;
  for (let q = 0; q < nq; q++) for (let k = 0; k < nk; k++) if (p.allows(0, h, q, k)) n++;
  return n;
}

interface Case {
  label: string;
  problem: AttnProblem;
  run: Partial<Record<Exclude<ImplName, 'reference'>, () => Promise<Result>>>;
  useful: number;
  denseUseful: number;
  inputs: { q: Tensor; k: Tensor; v: Tensor };
}

function buildCase(a: ProfileArgs): Case {
  const { batch: B, heads: H, dim: D } = a;
  const na = a.pattern === 'na';
  const grid = na ? a.shape : [prod(a.shape)];
  const shape = [B, ...grid, H, D];
  const q = randn(shape, 11);
  const k = randn(shape, 12);
  const v = randn(shape, 13);
  const flatShape = [B, prod(a.shape), H, D];
  const flat = (t: Tensor) => ({ data: t.data, shape: flatShape });
  const N = prod(a.shape);
  const denseRun = () => attention(flat(q), flat(k), flat(v), { backend: a.backend });
  let problem: AttnProblem;
  const run: Case['run'] = { 'dense-fused': denseRun };
  if (na) {
    const opts = { kernelSize: a.kernel, dilation: a.dilation, stride: a.stride, isCausal: a.causal, backend: a.backend } as const;
    problem = planNA(q, k, v, opts).problem;
    run.naive = () => neighborhoodAttention(q, k, v, { ...opts, impl: 'naive' });
    run.unfused = () => neighborhoodAttention(q, k, v, { ...opts, impl: 'unfused' });
    run.fused = () => neighborhoodAttention(q, k, v, { ...opts, impl: 'fused' });
  } else if (a.pattern === 'blocksparse') {
    const bs = 64;
    const nb = Math.ceil(N / bs);
    const r = rng(7);
    const data = new Uint8Array(nb * nb).map((_, i) => (i % (nb + 1) === 0 || r() < a.density ? 1 : 0));
    const opts = { blockMask: { data, shape: [nb, nb] }, blockSize: bs, backend: a.backend } as const;
    run.fused = () => blockSparseAttention(q, k, v, opts);
    problem = planAttention(q, k, v, { pattern: { kind: 'blockSparse', blockQ: bs, blockK: bs, mask: data, maskHeads: 1, numQBlocks: nb, numKBlocks: nb }, tile: { q: bs, kv: bs } }).problem;
  } else {
    const opts = a.pattern === 'causal' ? { causal: true } : a.pattern === 'window' ? { window: a.window as [number, number] } : {};
    run.fused = () => attention(q, k, v, { ...opts, backend: a.backend });
    problem = planAttention(q, k, v, opts).problem;
  }
  const cp = compilePattern(problem.pattern, { qGrid: problem.seqs[0]!.qGrid, kGrid: problem.seqs[0]!.kGrid, heads: H });
  const useful = allowedPairs(cp) * B * H;
  const label = na
    ? `na${grid.length}d ${a.shape.join('x')} k=${a.kernel.join('x')} d=${a.dilation.join('x')} s=${a.stride.join('x')}${a.causal ? ' causal' : ''}`
    : `${a.pattern} N=${N}${a.pattern === 'window' ? ` w=${a.window.join(',')}` : ''}${a.pattern === 'blocksparse' ? ` density=${a.density}` : ''}`;
  return { label: `${label} B=${B} H=${H} D=${D}`, problem, run, useful, denseUseful: N * N * B * H, inputs: { q, k, v } };
}

function peakBytes(impl: ImplName, p: AttnProblem, sampled: number): number {
  const rank = p.pattern.kind === 'neighborhood' ? p.pattern.kernelSize.length : 1;
  const threads = cpuThreads();
  switch (impl) {
    case 'reference':
      return sampled * p.heads * (p.dimV + 1) * 8 + p.qRows * p.heads * (p.dimV + 1) * 8 + p.kRows * 8;
    case 'fused':
      return scratchBytes('fused', p, rank) * threads;
    case 'dense-fused':
      return scratchBytes('fused', { ...p, pattern: { kind: 'dense' }, qTile: [64], kvTile: [64] }, 1) * threads;
    case 'naive':
      return scratchBytes('naive', p, rank) * threads;
    case 'unfused':
      return p.qRows * p.heads * windowVolume(p) * 4 + scratchBytes('naQK', p, rank) * threads;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Relative error of the sampled rows of `out` against the float64 reference. */
function sampledErr(out: Float32Array, ref: Float64Array, rows: number[], width: number): number {
  let num = 0;
  let den = 0;
  for (const r of rows)
    for (let c = 0; c < width; c++) {
      const d = out[r * width + c]! - ref[r * width + c]!;
      num += d * d;
      den += ref[r * width + c]! ** 2;
    }
  return Math.sqrt(num / (den || 1));
}

export async function profileCase(a: ProfileArgs, onStep: (what: string) => void): Promise<ProfileReport & { label: string }> {
  if (a.threads) setCpuThreads(a.threads);
  const c = buildCase(a);
  const p = c.problem;
  const H = p.heads;
  // reference on a subsample of rows for large problems (it is quadratic and float64)
  const r = rng(3);
  const maxRows = 48;
  const rows = p.qRows <= maxRows ? Array.from({ length: p.qRows }, (_, i) => i) : Array.from({ length: maxRows }, () => Math.floor(r() * p.qRows));
  const rowSet = new Set(rows);
  onStep('reference');
  const t0 = performance.now();
  const ref = referenceAttention(p, { q: c.inputs.q.data, k: c.inputs.k.data, v: c.inputs.v.data }, rowSet);
  const refMs = ((performance.now() - t0) * p.qRows) / rowSet.size;
  const width = H * p.dimV;
  const results: ProfileRow[] = [{ impl: 'reference', ms: refMs, usefulTflops: c.useful * 2 * (p.dim + p.dimV) / (refMs * 1e9), relErr: 0, peakBytes: peakBytes('reference', p, rowSet.size) }];
  for (const impl of ['naive', 'unfused', 'fused', 'dense-fused'] as const) {
    const fn = c.run[impl];
    if (!fn) continue;
    onStep(impl);
    const first = await fn(); // warm-up, also the checked result
    const times: number[] = [];
    for (let i = 0; i < a.repeat; i++) {
      const s = performance.now();
      await fn();
      times.push(performance.now() - s);
    }
    const ms = median(times);
    const pairs = impl === 'dense-fused' ? c.denseUseful : c.useful;
    results.push({
      impl,
      ms,
      usefulTflops: (pairs * 2 * (p.dim + p.dimV)) / (ms * 1e9),
      relErr: impl === 'dense-fused' ? null : sampledErr(first.out.data, ref.out, rows, width),
      peakBytes: peakBytes(impl, p, rowSet.size),
    });
  }
  return { backend: 'cpu', label: c.label, problem: { ...a, label: c.label, threads: cpuThreads() }, results };
}

export const QUICK_SUITE: Partial<ProfileArgs>[] = [
  { pattern: 'na', shape: [32, 32], kernel: [7, 7], dilation: [1, 1], stride: [1, 1], heads: 4, dim: 32 },
  { pattern: 'na', shape: [48], kernel: [13], dilation: [2], stride: [1], heads: 4, dim: 32, causal: true },
  { pattern: 'dense', shape: [1024], heads: 4, dim: 64 },
  { pattern: 'causal', shape: [1024], heads: 4, dim: 64 },
  { pattern: 'window', shape: [2048], window: [128, 128], heads: 4, dim: 64 },
  { pattern: 'blocksparse', shape: [1024], density: 0.25, heads: 4, dim: 64 },
];

export function formatTable(label: string, rows: ProfileRow[]): string {
  const head = ['impl', 'median ms', 'useful TFLOP/s', 'peak extra bytes', 'relErr'];
  const body = rows.map((r) => [
    r.impl,
    r.ms.toFixed(r.ms < 10 ? 2 : 1) + (r.impl === 'reference' ? '*' : ''),
    r.usefulTflops.toExponential(2),
    fmtBytes(r.peakBytes),
    r.relErr === null ? '-' : r.relErr.toExponential(1),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((x, i) => x.padEnd(w[i]!)).join('  ');
  return [label, line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)].join('\n');
}

function fmtBytes(b: number): string {
  return b < 1024 ? `${b} B` : b < 1 << 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / (1 << 20)).toFixed(1)} MiB`;
}

export function progressBar(total: number): { step: (what: string) => void; stop: () => void } {
  const bar = new cliProgress.SingleBar(
    { format: 'profiling [{bar}] {value}/{total} {what}', stream: process.stderr, hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { what: '' });
  let n = 0;
  return {
    step: (what) => bar.update(n++, { what }),
    stop: () => {
      bar.update(total);
      bar.stop();
    },
  };
}
