import { compilePattern, type CompiledPattern } from './patterns/compile.js';
import type { AttnProblem } from './problem.js';

/**
 * The non-finite policy, the same on every backend (PyTorch SDPA's): a NaN or an infinity in q, k
 * or v makes NaN every output row, and its lse, that reads it: the row of that query, and every
 * row that attends (is allowed) the key or value. Rows that read none stay exact: the kernels see
 * the inputs with non-finite values zeroed, so nothing leaks to a tile-mate through 0 * NaN. A NaN
 * or +inf in a bias or rpb entry makes its own row NaN through the softmax.
 *
 * Flags are per (token row, head): q over qRows x heads, k and v over kRows x kvHeads.
 */
export interface NonFinite {
  q?: Uint8Array;
  k?: Uint8Array;
  v?: Uint8Array;
  /** Bias entries (flat indices) that were NaN or +inf; -inf is a mask and stays. */
  bias?: Int32Array;
}

/** NaN or +inf bias entries (their flat indices), zeroed in a copy; undefined when there are none. */
export function screenBias(data: Float32Array): { at: Int32Array; data: Float32Array } | undefined {
  const at: number[] = [];
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    if (x !== x || x === Infinity) at.push(i);
  }
  if (!at.length) return undefined;
  const copy = data.slice();
  for (const i of at) copy[i] = 0;
  return { at: Int32Array.from(at), data: copy };
}

/** The problem with its bias screened (its non-finite entries zeroed and recorded in `bad`). */
export function screenProblemBias(problem: AttnProblem, bad: NonFinite): AttnProblem {
  if (!problem.bias) return problem;
  const s = screenBias(problem.bias.data);
  if (!s) return problem;
  bad.bias = s.at;
  return { ...problem, bias: { ...problem.bias, data: s.data } };
}

/** Flags of the rows (of `width` floats) holding a NaN or an infinity; undefined when all are finite. */
export function scanNonFinite(data: Float32Array, width: number): Uint8Array | undefined {
  let flags: Uint8Array | undefined;
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    if (x - x !== 0) (flags ??= new Uint8Array(data.length / width))[Math.floor(i / width)] = 1;
  }
  return flags;
}

/** A copy with every non-finite value zeroed (only made when the scan found some). */
export function zeroNonFinite(data: Float32Array): Float32Array {
  const c = data.slice();
  for (let i = 0; i < c.length; i++) if (c[i]! - c[i]! !== 0) c[i] = 0;
  return c;
}

/** Scans host q, k, v; returns the flags and the inputs the kernels should see. */
export function screenInputs(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array): { bad?: NonFinite; problem: AttnProblem; q: Float32Array; k: Float32Array; v: Float32Array } {
  const fq = scanNonFinite(q, problem.dim);
  const fk = scanNonFinite(k, problem.dim);
  const fv = scanNonFinite(v, problem.dimV);
  const bad: NonFinite = { ...(fq ? { q: fq } : {}), ...(fk ? { k: fk } : {}), ...(fv ? { v: fv } : {}) };
  const screened = screenProblemBias(problem, bad);
  if (!fq && !fk && !fv && !bad.bias) return { problem, q, k, v };
  return {
    bad,
    problem: screened,
    q: fq ? zeroNonFinite(q) : q,
    k: fk ? zeroNonFinite(k) : k,
    v: fv ? zeroNonFinite(v) : v,
  };
}

/** Makes NaN the out rows and lse entries that read a flagged input (see NonFinite). */
export function poisonRows(problem: AttnProblem, bad: NonFinite, out: Float32Array, lse: Float32Array): void {
  const { heads: H, kvHeads: Hk, dimV: DV } = problem;
  const poison = (row: number, h: number) => {
    out.fill(NaN, (row * H + h) * DV, (row * H + h + 1) * DV);
    lse[row * H + h] = NaN;
  };
  if (bad.q) for (let i = 0; i < bad.q.length; i++) if (bad.q[i]) poison(Math.floor(i / H), i % H);
  const compiled = new Map<string, CompiledPattern>();
  const patternOf = (span: AttnProblem['seqs'][number]) => {
    const key = `${span.qGrid.join('x')}|${span.kGrid.join('x')}`;
    let p = compiled.get(key);
    if (!p) compiled.set(key, (p = compilePattern(problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: H })));
    return p;
  };
  if (bad.bias && problem.bias) {
    // bias [Bb, Hb, Nq, Nk], broadcast over batches and heads when Bb or Hb is 1 (dense batches only)
    const { batch: Bb, heads: Hb } = problem.bias;
    for (const idx of bad.bias) {
      const span0 = problem.seqs[0]!;
      const nq = span0.qGrid.reduce((a, b) => a * b, 1);
      const nk = span0.kGrid.reduce((a, b) => a * b, 1);
      const kj = idx % nk;
      const qi = Math.floor(idx / nk) % nq;
      const hb = Math.floor(idx / (nk * nq)) % Hb;
      const bb = Math.floor(idx / (nk * nq * Hb));
      for (const span of problem.seqs) {
        if (Bb !== 1 && span.b !== bb) continue;
        const p = patternOf(span);
        for (let h = 0; h < H; h++) if ((Hb === 1 || h === hb) && p.allows(span.b, h, qi, kj)) poison(span.qOff + qi, h);
      }
    }
  }
  const kv = bad.k ?? bad.v;
  if (!kv) return;
  const group = H / Hk;
  for (let i = 0; i < kv.length; i++) {
    if (!bad.k?.[i] && !bad.v?.[i]) continue;
    const krow = Math.floor(i / Hk);
    const kh = i % Hk;
    const span = problem.seqs.find((s) => krow >= s.kOff && krow < s.kOff + s.kGrid.reduce((a, b) => a * b, 1));
    if (!span) continue;
    const p = patternOf(span);
    const nq = span.qGrid.reduce((a, b) => a * b, 1);
    const kt = krow - span.kOff;
    for (let h = kh * group; h < (kh + 1) * group; h++) for (let qt = 0; qt < nq; qt++) if (p.allows(span.b, h, qt, kt)) poison(span.qOff + qt, h);
  }
}
