import { parseArgs } from 'node:util';
import { type BackendName, attention } from '../api.js';
import { TilewiseError } from '../errors.js';
import { LongHeadsCache } from '../longheads/cache.js';
import { longHeadsConfig } from '../longheads/options.js';
import { rng } from '../tensor.js';

/**
 * Attention-level passkey retrieval. Random un-rotated q, k, v ([N, H, D], unit-variance entries)
 * with a planted needle: `needleTokens` consecutive keys at a random depth, all carrying one random
 * needle value. Each needle key is the final query restricted to its "long-range" dims (the RoPE
 * pairs that turn by at most one radian over `budget` tokens: theta_i * budget <= 1), scaled so its
 * logit against the final query is `needleLogit` at distance 0. Within the trained length (the
 * budget) those dims stay aligned, so the needle is retrievable there by content; far beyond it
 * they rotate too, as positions out of distribution do in a real model. The final query is
 * answered by each method; it retrieves the needle when its output has cosine similarity above 0.9
 * with the needle value in every head. RoPE (base `ropeBase`) is applied inside the kernels.
 */

export type EvalMethod = 'full' | 'window' | 'longheads';

export interface EvalArgs {
  backend: BackendName;
  lengths: number[];
  trials: number;
  budget: number;
  chunk: number;
  heads: number;
  dim: number;
  ropeBase: number;
  needleTokens: number;
  needleLogit: number;
  methods: EvalMethod[];
  seed: number;
  json: boolean;
}

export interface EvalRow {
  method: EvalMethod;
  length: number;
  accuracy: number;
  /** Mean time per trial: the final query's answer from the inputs, LongHeads' cache build included. */
  ms: number;
  /** LongHeads only: building the cache (chunk representations) and the decode step, mean ms. */
  buildMs?: number;
  stepMs?: number;
  /** Mean over trials of the worst head's cosine similarity. */
  meanCos: number;
}

const positiveInts = (s: string, name: string): number[] => {
  const v = s.split(',').map((x) => Number(x.trim()));
  if (v.length === 0 || v.some((x) => !Number.isInteger(x) || x <= 0)) throw new TilewiseError(`--${name}`, 'must be positive integers separated by commas', s);
  return v;
};

export function parseEvalArgs(argv: string[]): EvalArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      backend: { type: 'string', default: 'cpu' },
      lengths: { type: 'string', default: '4096,8192,16384,32768,65536,131072' },
      trials: { type: 'string', default: '20' },
      budget: { type: 'string', default: '4096' },
      chunk: { type: 'string', default: '256' },
      heads: { type: 'string', default: '2' },
      dim: { type: 'string', default: '64' },
      'rope-base': { type: 'string', default: '500000' },
      'needle-tokens': { type: 'string', default: '16' },
      'needle-logit': { type: 'string', default: '20' },
      methods: { type: 'string', default: 'full,window,longheads' },
      seed: { type: 'string', default: '1' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const backend = values.backend as string;
  if (!['cpu', 'webgpu', 'auto'].includes(backend)) throw new TilewiseError('--backend', "must be 'cpu', 'webgpu' or 'auto'", backend);
  const one = (s: string | undefined, name: string) => positiveInts(s!, name)[0]!;
  const methods = values.methods!.split(',').map((m) => m.trim());
  for (const m of methods) if (!['full', 'window', 'longheads'].includes(m)) throw new TilewiseError('--methods', 'must list full, window and/or longheads', m);
  const logit = Number(values['needle-logit']);
  if (!(logit > 0 && Number.isFinite(logit))) throw new TilewiseError('--needle-logit', 'must be a positive number', values['needle-logit']);
  const ropeBase = Number(values['rope-base']);
  if (!(ropeBase > 1 && Number.isFinite(ropeBase))) throw new TilewiseError('--rope-base', 'must be a number above 1', values['rope-base']);
  const args: EvalArgs = {
    backend: backend as BackendName,
    lengths: positiveInts(values.lengths!, 'lengths'),
    trials: one(values.trials, 'trials'),
    budget: one(values.budget, 'budget'),
    chunk: one(values.chunk, 'chunk'),
    heads: one(values.heads, 'heads'),
    dim: one(values.dim, 'dim'),
    ropeBase,
    needleTokens: one(values['needle-tokens'], 'needle-tokens'),
    needleLogit: logit,
    methods: methods as EvalMethod[],
    seed: one(values.seed, 'seed'),
    json: values.json!,
  };
  longHeadsConfig({ chunkSize: args.chunk, budget: args.budget }); // same rules as the library
  if (args.dim % 2 !== 0) throw new TilewiseError('--dim', 'must be even (RoPE pairs dims)', String(args.dim));
  for (const n of args.lengths) if (n <= args.needleTokens) throw new TilewiseError('--lengths', 'every length must exceed --needle-tokens', String(n));
  return args;
}

/** Fills `a` with standard normals (Box-Muller on a seeded generator). */
function normals(a: Float32Array, r: () => number): void {
  for (let i = 0; i < a.length; i += 2) {
    const u = Math.max(r(), 1e-12);
    const rad = Math.sqrt(-2 * Math.log(u));
    const th = 2 * Math.PI * r();
    a[i] = rad * Math.cos(th);
    if (i + 1 < a.length) a[i + 1] = rad * Math.sin(th);
  }
}

interface Trial {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  needle: Float32Array;
}

/** Dims of a rotate-half RoPE head whose pair turns by at most one radian over `span` tokens. */
export function longRangeDims(D: number, base: number, span: number): boolean[] {
  const half = D / 2;
  const keep = new Array<boolean>(D).fill(false);
  for (let i = 0; i < half; i++) if (span * base ** ((-2 * i) / D) <= 1) keep[i] = keep[i + half] = true;
  if (!keep.some((x) => x)) keep[half - 1] = keep[D - 1] = true; // the slowest pair at least
  return keep;
}

/** One haystack of n tokens with the needle planted at a random depth. */
function makeTrial(n: number, a: EvalArgs, r: () => number): Trial {
  const { heads: H, dim: D } = a;
  const q = new Float32Array(n * H * D);
  const k = new Float32Array(n * H * D);
  const v = new Float32Array(n * H * D);
  normals(q, r);
  normals(k, r);
  normals(v, r);
  const needle = new Float32Array(H * D);
  normals(needle, r);
  const at = Math.floor(r() * (n - a.needleTokens)); // the needle never overlaps the final token
  const longRange = longRangeDims(D, a.ropeBase, a.budget);
  for (let h = 0; h < H; h++) {
    const qf = q.subarray(((n - 1) * H + h) * D, ((n - 1) * H + h + 1) * D);
    let qq = 0;
    for (let x = 0; x < D; x++) if (longRange[x]) qq += qf[x]! * qf[x]!;
    // k = c * qf on the long-range dims, with c * |qf|^2 / sqrt(D) = logit
    const c = (a.needleLogit * Math.sqrt(D)) / qq;
    for (let t = at; t < at + a.needleTokens; t++) {
      for (let x = 0; x < D; x++) {
        k[(t * H + h) * D + x] = longRange[x] ? c * qf[x]! : 0;
        v[(t * H + h) * D + x] = needle[h * D + x]!;
      }
    }
  }
  return { q, k, v, needle };
}

/** Worst head's cosine similarity between out [H, D] and the needle [H, D]. */
function worstCos(out: Float32Array, needle: Float32Array, H: number, D: number): number {
  let worst = Infinity;
  for (let h = 0; h < H; h++) {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let x = 0; x < D; x++) {
      const o = out[h * D + x]!;
      const t = needle[h * D + x]!;
      ab += o * t;
      aa += o * o;
      bb += t * t;
    }
    worst = Math.min(worst, ab / Math.sqrt(aa * bb || 1));
  }
  return worst;
}

async function answer(method: EvalMethod, t: Trial, n: number, a: EvalArgs): Promise<{ out: Float32Array; buildMs?: number; stepMs?: number }> {
  const { heads: H, dim: D, budget } = a;
  const rope = { base: a.ropeBase };
  const last = { data: t.q.subarray((n - 1) * H * D), shape: [1, 1, H, D] };
  if (method === 'longheads') {
    const cache = new LongHeadsCache(H, H, D, { chunkSize: a.chunk, budget, rope, backend: a.backend });
    const t0 = performance.now();
    await cache.append({ data: t.q.subarray(0, (n - 1) * H * D), shape: [n - 1, H, D] }, { data: t.k.subarray(0, (n - 1) * H * D), shape: [n - 1, H, D] }, { data: t.v.subarray(0, (n - 1) * H * D), shape: [n - 1, H, D] });
    // GPU work is queued, not awaited, by append: let it finish so the build time is the build's
    if (cache.backend === 'webgpu') await (await import('../webgpu/index.js')).getDevice().then((d) => d.queue.onSubmittedWorkDone());
    const t1 = performance.now();
    try {
      const r = await cache.decode({ data: last.data, shape: [1, H, D] }, { data: t.k.subarray((n - 1) * H * D), shape: [1, H, D] }, { data: t.v.subarray((n - 1) * H * D), shape: [1, H, D] });
      return { out: r.out.data, buildMs: t1 - t0, stepMs: performance.now() - t1 };
    } finally {
      cache.dispose();
    }
  }
  // full and window answer the final query directly: O(n) and O(budget) work
  const from = method === 'window' ? Math.max(0, n - budget) : 0;
  const keys = { data: t.k.subarray(from * H * D), shape: [1, n - from, H, D] };
  const vals = { data: t.v.subarray(from * H * D), shape: [1, n - from, H, D] };
  const r = await attention(last, keys, vals, { causal: 'bottom-right', rope, backend: a.backend });
  return { out: r.out.data };
}

export async function runEval(a: EvalArgs, onRow?: (r: EvalRow) => void): Promise<EvalRow[]> {
  const rows: EvalRow[] = [];
  for (const n of a.lengths) {
    const acc = new Map<EvalMethod, { hits: number; ms: number; build: number; step: number; cos: number }>();
    for (const m of a.methods) acc.set(m, { hits: 0, ms: 0, build: 0, step: 0, cos: 0 });
    const r = rng(a.seed * 1000003 + n);
    for (let trial = 0; trial < a.trials; trial++) {
      const t = makeTrial(n, a, r);
      for (const m of a.methods) {
        const t0 = performance.now();
        const res = await answer(m, t, n, a);
        const ms = performance.now() - t0;
        const cos = worstCos(res.out, t.needle, a.heads, a.dim);
        const s = acc.get(m)!;
        s.ms += ms;
        s.cos += cos;
        s.build += res.buildMs ?? 0;
        s.step += res.stepMs ?? 0;
        if (cos > 0.9) s.hits++;
      }
    }
    for (const m of a.methods) {
      const s = acc.get(m)!;
      const row: EvalRow = {
        method: m,
        length: n,
        accuracy: s.hits / a.trials,
        ms: s.ms / a.trials,
        ...(m === 'longheads' ? { buildMs: s.build / a.trials, stepMs: s.step / a.trials } : {}),
        meanCos: s.cos / a.trials,
      };
      rows.push(row);
      onRow?.(row);
    }
  }
  return rows;
}

export function formatEvalRow(r: EvalRow): string {
  const extra = r.buildMs !== undefined ? `  (cache build ${r.buildMs.toFixed(1)} ms, decode step ${r.stepMs!.toFixed(2)} ms)` : '';
  return `${String(r.length).padStart(7)}  ${r.method.padEnd(9)}  ${(100 * r.accuracy).toFixed(0).padStart(3)}%  cos ${r.meanCos.toFixed(3)}  ${r.ms.toFixed(1).padStart(9)} ms${extra}`;
}
