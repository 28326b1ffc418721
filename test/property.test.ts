/**
 * Property tests: many small random configurations of every pattern and kernel family, each
 * compared with the float64 reference (design.md section 6) through poisoned destinations.
 *
 * Where it is cheap the reference is fed an independent statement of the pattern's semantics (a
 * mask function written here from the documented rules), so the tests check the pattern
 * compiler's meaning as well as the kernels. Every configuration is seeded; a failure names it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  attention,
  blockSparseAttention,
  compilePattern,
  mergeAttentions,
  na1d,
  na2d,
  na3d,
  naAV,
  naQK,
  neighborhoodAttention,
  patterns,
  referenceAttention,
  type AttentionOptions,
  type CommonOptions,
  type MaskFn,
  type NeighborhoodOptions,
  type PatternSpec,
  type Result,
  cpuThreads,
  setCpuThreads,
} from '../src/index.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { planAttention, planNA } from '../src/api.js';
import type { AttnProblem } from '../src/problem.js';
import type { Tensor } from '../src/tensor.js';
import {
  Failures,
  type NACase,
  Rng,
  compareResult,
  describe,
  hashMask,
  poisoned,
  prod,
  randTensor,
  randomBlockSparse,
  randomChunks,
  randomNA,
  randomPattern,
  side,
} from './helpers.js';

/** Multiplies every family's configuration count (TILEWISE_PROP_SCALE=4 for a longer soak). */
const SCALE = Number(process.env.TILEWISE_PROP_SCALE ?? 1);
const count = (n: number) => Math.max(1, Math.round(n * SCALE));

type Impl = 'fused' | 'naive' | 'unfused';

// ---------------------------------------------------------------------------------------------
// Independent semantics, written from the documented rules (not from src/patterns).

/** FlashAttention alignment: bottom-right shifts the diagonal by Nk - Nq. */
const alignOff = (align: string | undefined, nq: number, nk: number) => (align === 'bottom-right' ? nk - nq : 0);

/**
 * NATTEN along one axis of length L (global coordinates xq, xk): dilation d splits the axis into
 * groups g = x mod d of length ceil((L - g) / d); inside a group, stride s makes runs of s queries
 * share the window of a leader; non-causal windows hold K keys starting at
 * clamp(leader - floor(K/2), 0, n - K); causal windows are [max(0, leader - K + 1), query].
 */
function naAxisAllows(L: number, K: number, d: number, s: number, causal: boolean, xq: number, xk: number): boolean {
  if (xq % d !== xk % d) return false;
  const g = xq % d;
  const n = Math.ceil((L - g) / d);
  const i = Math.floor(xq / d);
  const j = Math.floor(xk / d);
  if (causal) {
    const leader = Math.min(Math.floor(i / s) * s + s - 1, n - 1);
    return j >= Math.max(0, leader - K + 1) && j <= i;
  }
  const leader = Math.min(Math.floor(i / s) * s + Math.floor(s / 2), n - 1);
  const start = Math.min(Math.max(leader - Math.floor(K / 2), 0), n - K);
  return j >= start && j < start + K;
}

interface NAGeom {
  grid: number[];
  kernel: number[];
  dilation: number[];
  stride: number[];
  causal: boolean[];
}

function unflatten(t: number, grid: readonly number[]): number[] {
  const c = new Array<number>(grid.length);
  for (let a = grid.length - 1; a >= 0; a--) {
    c[a] = t % grid[a]!;
    t = Math.floor(t / grid[a]!);
  }
  return c;
}

function naAllows(g: NAGeom, q: number, k: number): boolean {
  const cq = unflatten(q, g.grid);
  const ck = unflatten(k, g.grid);
  for (let a = 0; a < g.grid.length; a++)
    if (!naAxisAllows(g.grid[a]!, g.kernel[a]!, g.dilation[a]!, g.stride[a]!, g.causal[a]!, cq[a]!, ck[a]!)) return false;
  return true;
}

/** The predicate of a pattern spec over one sequence of nq queries and nk keys (flattened 1-D, or an NA grid). */
function myPred(spec: PatternSpec, nq: number, nk: number, grid?: number[]): MaskFn {
  switch (spec.kind) {
    case 'dense':
      return () => true;
    case 'causal': {
      const off = alignOff(spec.align, nq, nk);
      return (_b, _h, q, k) => k <= q + off;
    }
    case 'window': {
      const off = alignOff(spec.align, nq, nk);
      return (_b, _h, q, k) => (spec.left < 0 || k >= q + off - spec.left) && (spec.right < 0 || k <= q + off + spec.right);
    }
    case 'neighborhood': {
      const g: NAGeom = {
        grid: grid ?? [nq],
        kernel: [...spec.kernelSize],
        dilation: [...spec.dilation],
        stride: [...spec.stride],
        causal: [...spec.isCausal],
      };
      return (_b, _h, q, k) => naAllows(g, q, k);
    }
    case 'blockSparse':
      return (_b, h, q, k) =>
        spec.mask[((spec.maskHeads === 1 ? 0 : h) * spec.numQBlocks + Math.floor(q / spec.blockQ)) * spec.numKBlocks + Math.floor(k / spec.blockK)] !== 0;
    case 'chunks':
      return (_b, h, q, k) => {
        const i = (spec.heads === 1 ? 0 : h) * spec.numQTiles + Math.floor(q / spec.queryTile);
        const c = Math.floor(k / spec.chunkSize);
        for (let j = spec.offsets[i]!; j < spec.offsets[i + 1]!; j++) if (spec.ids[j] === c) return true;
        return false;
      };
    case 'mask':
      return spec.fn;
    case 'and': {
      const ps = spec.parts.map((p) => myPred(p, nq, nk, grid));
      return (b, h, q, k) => ps.every((p) => p(b, h, q, k));
    }
    case 'or': {
      const ps = spec.parts.map((p) => myPred(p, nq, nk, grid));
      return (b, h, q, k) => ps.some((p) => p(b, h, q, k));
    }
  }
}

/** Semantics of attention()'s options for one sequence: causal AND window AND pattern. */
function optsPred(opts: AttentionOptions, nq: number, nk: number): MaskFn {
  const parts: MaskFn[] = [];
  if (opts.causal !== undefined && opts.causal !== false) {
    const off = alignOff(opts.causal === true ? 'top-left' : opts.causal, nq, nk);
    parts.push((_b, _h, q, k) => k <= q + off);
  }
  if (opts.window) {
    const [l, r] = opts.window;
    const off = alignOff(opts.causal === 'bottom-right' ? 'bottom-right' : 'top-left', nq, nk);
    parts.push((_b, _h, q, k) => (l < 0 || k >= q + off - l) && (r < 0 || k <= q + off + r));
  }
  if (opts.pattern) parts.push(myPred(opts.pattern, nq, nk));
  return (b, h, q, k) => parts.every((p) => p(b, h, q, k));
}

// ---------------------------------------------------------------------------------------------
// Runners.

const bufsOf = (q: Tensor, k: Tensor, v: Tensor) => ({ q: q.data, k: k.data, v: v.data });

/** Runs attention() into poisoned destinations and compares with the reference of `refProblem`. */
async function runAttentionCase(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions, refPattern?: MaskFn): Promise<void> {
  const { problem } = planAttention(q, k, v, opts);
  const refProblem: AttnProblem = refPattern ? { ...problem, pattern: patterns.maskFn(refPattern) } : problem;
  const ref = referenceAttention(refProblem, bufsOf(q, k, v));
  await checkResultAgainst(problem, ref, (dest) => attention(q, k, v, { ...opts, ...dest }), [...q.shape.slice(0, -1)]);
}

/** Drives the destination layout; separate from the configuration generators so they stay stable. */
const destRng = new Rng(99);

async function checkResultAgainst(
  problem: AttnProblem,
  ref: { out: Float64Array; lse: Float64Array },
  call: (dest: { out: Float32Array; lse: Float32Array }) => Promise<Result>,
  lead: number[],
): Promise<void> {
  const H = problem.heads;
  const dv = problem.dimV;
  // destinations are sometimes views inside a larger poisoned buffer: the call must write exactly its range
  const pad = destRng.bool(0.2) ? destRng.int(1, 7) : 0;
  const outBig = poisoned(problem.qRows * H * dv + 2 * pad);
  const lseBig = poisoned(problem.qRows * H + 2 * pad);
  const out = outBig.subarray(pad, outBig.length - pad);
  const lse = lseBig.subarray(pad, lseBig.length - pad);
  const r = await call({ out, lse });
  for (let i = 0; i < pad; i++) {
    for (const big of [outBig, lseBig])
      if (!Number.isNaN(big[i]) || !Number.isNaN(big[big.length - 1 - i])) assert.fail('wrote outside the destination view');
  }
  assert.ok(r.out.data === out, 'result out must be the destination array');
  assert.ok(r.lse.data === lse, 'result lse must be the destination array');
  assert.deepEqual([...r.out.shape], [...lead, dv], 'out shape');
  assert.deepEqual([...r.lse.shape], lead, 'lse shape');
  const msg = compareResult(out, lse, ref, dv);
  if (msg) assert.fail(msg);
}

// ---------------------------------------------------------------------------------------------
// Generators.

interface Dims {
  B: number;
  H: number;
  Hk: number;
  D: number;
  Dv: number;
}

function dims(rng: Rng, maxB = 2): Dims {
  const H = rng.int(1, 4);
  const D = rng.int(1, 16);
  return { B: rng.int(1, maxB), H, Hk: rng.divisor(H), D, Dv: rng.bool(0.5) ? D : rng.int(1, 16) };
}

/**
 * Sometimes returns the tensor as a view at an offset inside a larger buffer, shared or not, so
 * kernels that assume byteOffset 0 or a private ArrayBuffer are caught.
 */
function maybeView(rng: Rng, t: Tensor): Tensor {
  if (!rng.bool(0.2)) return t;
  const pad = rng.int(1, 9);
  const n = t.data.length + pad + rng.int(0, 5);
  const buf = rng.bool(0.5) ? new SharedArrayBuffer(n * 4) : new ArrayBuffer(n * 4);
  const big = new Float32Array(buf);
  big.fill(NaN);
  const view = big.subarray(pad, pad + t.data.length);
  view.set(t.data);
  return { data: view, shape: t.shape };
}

function qkv(rng: Rng, d: Dims, qTok: number[], kTok: number[]) {
  return {
    q: maybeView(rng, randTensor(rng, [d.B, ...qTok, d.H, d.D])),
    k: maybeView(rng, randTensor(rng, [d.B, ...kTok, d.Hk, d.D])),
    v: maybeView(rng, randTensor(rng, [d.B, ...kTok, d.Hk, d.Dv])),
  };
}

function commonOpts(rng: Rng, o: CommonOptions, rank = 1, maxTile = 24): void {
  if (rng.bool(0.2)) o.softcap = rng.pick([0, 0.5 + 5 * rng.next()]);
  if (rng.bool(0.2)) o.scale = 0.1 + 2 * rng.next();
  if (rng.bool(0.5)) {
    const t = () => (rank === 1 && rng.bool(0.5) ? rng.int(1, maxTile) : Array.from({ length: rank }, () => rng.int(1, maxTile)));
    o.tile = {};
    if (rng.bool(0.8)) o.tile.q = t();
    if (rng.bool(0.8)) o.tile.kv = t();
  }
}

function randomCausal(rng: Rng): AttentionOptions['causal'] {
  return rng.pick([undefined, undefined, false, true, 'top-left', 'bottom-right', 'bottom-right'] as const);
}

function randomBias(rng: Rng, d: Dims, nq: number, nk: number): Tensor {
  const shape = rng.pick([[nq, nk], [1, nq, nk], [d.H, nq, nk], [d.B, d.H, nq, nk], [1, d.H, nq, nk], [d.B, 1, nq, nk], [1, 1, nq, nk]]);
  const t = randTensor(rng, shape);
  // a few -Infinity entries act as an additive mask
  if (rng.bool(0.2)) for (let i = 0; i < t.data.length; i++) if (rng.bool(0.2)) t.data[i] = -Infinity;
  return t;
}

// ---------------------------------------------------------------------------------------------
// Attention families.

test('attention: dense / causal (both alignments) / window / bias / softcap / GQA / Dv != D / tiles', async () => {
  const f = new Failures();
  const rng = new Rng(1001);
  for (let i = 0; i < count(2500); i++) {
    const d = dims(rng);
    let qTok: number[];
    let kTok: number[];
    if (rng.bool(0.85)) {
      const nq = rng.int(1, 40);
      qTok = [nq];
      kTok = [rng.bool(0.5) ? nq : rng.int(1, 40)];
    } else {
      qTok = [rng.int(1, 6), rng.int(1, 6)];
      kTok = rng.bool(0.5) ? [...qTok] : [rng.int(1, 6), rng.int(1, 6)];
    }
    const nq = prod(qTok);
    const nk = prod(kTok);
    const opts: AttentionOptions = {};
    const c = randomCausal(rng);
    if (c !== undefined) opts.causal = c;
    if (rng.bool(0.35)) opts.window = [side(rng), side(rng)];
    if (rng.bool(0.25)) opts.bias = randomBias(rng, d, nq, nk);
    commonOpts(rng, opts);
    const { q, k, v } = qkv(rng, d, qTok, kTok);
    const name = `#${i} ${describe({ ...d, qTok, kTok, ...opts, bias: opts.bias?.shape })}`;
    await f.run(name, () => runAttentionCase(q, k, v, opts, optsPred(opts, nq, nk)));
  }
  f.done('attention');
});

test('attention: varlen packs (cuSeqlens, zero-length sequences) with causal / window / masks', async () => {
  const f = new Failures();
  const rng = new Rng(2002);
  for (let i = 0; i < count(800); i++) {
    const d = { ...dims(rng), B: 1 };
    const nSeq = rng.int(1, 5);
    const lq = Array.from({ length: nSeq }, () => (rng.bool(0.2) ? 0 : rng.int(1, 14)));
    const lk = lq.map((x) => (rng.bool(0.5) ? x : rng.bool(0.2) ? 0 : rng.int(1, 14)));
    if (lq.reduce((a, b) => a + b) === 0) lq[nSeq - 1] = 1;
    if (lk.reduce((a, b) => a + b) === 0) lk[nSeq - 1] = 1;
    const cu = (ls: number[]) => {
      const r = new Int32Array(ls.length + 1);
      ls.forEach((x, j) => (r[j + 1] = r[j]! + x));
      return r;
    };
    const cuQ = cu(lq);
    const cuK = cu(lk);
    const opts: AttentionOptions = { cuSeqlensQ: cuQ, cuSeqlensK: cuK };
    const c = randomCausal(rng);
    if (c !== undefined) opts.causal = c;
    if (rng.bool(0.35)) opts.window = [side(rng), side(rng)];
    if (rng.bool(0.25)) opts.pattern = patterns.maskFn(hashMask(rng.int(0, 1e9), 0.2 + 0.8 * rng.next()));
    commonOpts(rng, opts);
    const { q, k, v } = qkv(rng, d, [cuQ[nSeq]!], [cuK[nSeq]!]);
    const preds = lq.map((x, s) => optsPred(opts, x, lk[s]!));
    const name = `#${i} ${describe({ ...d, lq, lk, ...opts })}`;
    await f.run(name, () => runAttentionCase(q, k, v, opts, (b, h, qq, kk) => preds[b]!(b, h, qq, kk)));
  }
  f.done('varlen');
});

test('blockSparseAttention: random masks, block sizes, per-head masks, with causal / window', async () => {
  const f = new Failures();
  const rng = new Rng(3003);
  for (let i = 0; i < count(1000); i++) {
    const d = dims(rng);
    const nq = rng.int(1, 40);
    const nk = rng.bool(0.5) ? nq : rng.int(1, 40);
    const spec = randomBlockSparse(rng, nq, nk, d.H);
    const shape = spec.maskHeads === 1 && rng.bool(0.5) ? [spec.numQBlocks, spec.numKBlocks] : [spec.maskHeads, spec.numQBlocks, spec.numKBlocks];
    const data = rng.bool(0.3) ? Array.from(spec.mask, (x) => x === 1) : Array.from(spec.mask);
    const blockSize: number | [number, number] = spec.blockQ === spec.blockK && rng.bool(0.5) ? spec.blockQ : [spec.blockQ, spec.blockK];
    const opts: AttentionOptions = {};
    if (rng.bool(0.3)) opts.causal = rng.pick([true, 'bottom-right'] as const);
    if (rng.bool(0.2)) opts.window = [side(rng), side(rng)];
    commonOpts(rng, opts);
    const { q, k, v } = qkv(rng, d, [nq], [nk]);
    const base = optsPred(opts, nq, nk);
    const bs = myPred(spec, nq, nk);
    const name = `#${i} ${describe({ ...d, nq, nk, blockSize, shape, ...opts })}`;
    await f.run(name, async () => {
      const { problem } = planAttention(q, k, v, opts);
      const ref = referenceAttention({ ...problem, pattern: patterns.maskFn((b, h, x, y) => base(b, h, x, y) && bs(b, h, x, y)) }, bufsOf(q, k, v));
      await checkResultAgainst(problem, ref, (dest) => blockSparseAttention(q, k, v, { ...opts, ...dest, blockMask: { data, shape }, blockSize }), [d.B, nq, d.H]);
    });
  }
  f.done('blockSparse');
});

test('attention: chunk selection (LongHeads) specs, shared and per-head', async () => {
  const f = new Failures();
  const rng = new Rng(4004);
  for (let i = 0; i < count(700); i++) {
    const d = dims(rng);
    const nq = rng.int(1, 40);
    const nk = rng.bool(0.3) ? nq : rng.int(1, 40);
    const opts: AttentionOptions = { pattern: randomChunks(rng, nq, nk, d.H) };
    if (rng.bool(0.25)) opts.causal = rng.pick([true, 'bottom-right'] as const);
    commonOpts(rng, opts);
    const { q, k, v } = qkv(rng, d, [nq], [nk]);
    const name = `#${i} ${describe({ ...d, nq, nk, ...opts })}`;
    await f.run(name, () => runAttentionCase(q, k, v, opts, optsPred(opts, nq, nk)));
  }
  f.done('chunks');
});

test('attention: mask functions and and/or compositions of every pattern kind', async () => {
  const f = new Failures();
  const rng = new Rng(5005);
  for (let i = 0; i < count(1200); i++) {
    const d = dims(rng);
    const nq = rng.int(1, 36);
    const nk = rng.bool(0.5) ? nq : rng.int(1, 36);
    const pattern = rng.bool(0.25) ? patterns.maskFn(hashMask(rng.int(0, 1e9), rng.next())) : randomPattern(rng, nq, nk, d.H);
    const opts: AttentionOptions = { pattern };
    if (rng.bool(0.2)) opts.causal = randomCausal(rng);
    if (rng.bool(0.15)) opts.bias = randomBias(rng, d, nq, nk);
    commonOpts(rng, opts);
    const { q, k, v } = qkv(rng, d, [nq], [nk]);
    const pred = optsPred(opts, nq, nk);
    const name = `#${i} ${describe({ ...d, nq, nk, ...opts, bias: opts.bias?.shape })}`;
    await f.run(name, async () => {
      // the compiled predicate agrees with the documented semantics on every pair
      const cp = compilePattern(pattern, { qGrid: [nq], kGrid: [nk], heads: d.H });
      const mine = myPred(pattern, nq, nk);
      for (let b = 0; b < d.B; b++)
        for (let h = 0; h < d.H; h++)
          for (let x = 0; x < nq; x++)
            for (let y = 0; y < nk; y++)
              if (cp.allows(b, h, x, y) !== mine(b, h, x, y)) assert.fail(`allows(${b},${h},${x},${y}) = ${cp.allows(b, h, x, y)}, expected ${mine(b, h, x, y)}`);
      await runAttentionCase(q, k, v, opts, pred);
    });
  }
  f.done('compositions');
});

test('attention: larger problems that take the worker-thread path', async () => {
  const f = new Failures();
  const rng = new Rng(6006);
  for (let i = 0; i < count(30); i++) {
    const d = { B: rng.int(1, 2), H: 4, Hk: rng.pick([1, 2, 4]), D: 16, Dv: rng.pick([8, 16]) };
    const nq = rng.int(150, 260);
    const nk = rng.bool(0.5) ? nq : rng.int(150, 260);
    const opts: AttentionOptions = {};
    const c = randomCausal(rng);
    if (c !== undefined) opts.causal = c;
    if (rng.bool(0.5)) opts.window = [rng.int(-1, 40), rng.int(-1, 40)];
    if (rng.bool(0.3)) opts.pattern = randomBlockSparse(rng, nq, nk, d.H);
    else if (rng.bool(0.3)) opts.pattern = randomChunks(rng, nq, nk, d.H);
    commonOpts(rng, opts, 1, 64);
    const { q, k, v } = qkv(rng, d, [nq], [nk]);
    if (rng.bool(0.3)) {
      // large-magnitude scores: online-softmax rescaling across many tiles
      for (let j = 0; j < q.data.length; j++) q.data[j]! *= 12;
    }
    let pred = optsPred(opts, nq, nk);
    if (!opts.pattern && rng.bool(0.3)) {
      // varlen pack of a few long sequences
      const qq = { data: q.data.subarray(0, nq * d.H * d.D), shape: [1, nq, d.H, d.D] };
      const kk = { data: k.data.subarray(0, nk * d.Hk * d.D), shape: [1, nk, d.Hk, d.D] };
      const vv = { data: v.data.subarray(0, nk * d.Hk * d.Dv), shape: [1, nk, d.Hk, d.Dv] };
      const cq = Int32Array.from([0, Math.floor(nq / 3), nq - 40, nq]);
      const ck = Int32Array.from([0, Math.floor(nk / 2), nk - 60, nk]);
      const preds = [0, 1, 2].map((s) => optsPred(opts, cq[s + 1]! - cq[s]!, ck[s + 1]! - ck[s]!));
      const vopts = { ...opts, cuSeqlensQ: cq, cuSeqlensK: ck };
      const name = `#${i} varlen ${describe({ ...d, B: 1, nq, nk, ...vopts })}`;
      await f.run(name, () => runAttentionCase(qq, kk, vv, vopts, (b, h, x, y) => preds[b]!(b, h, x, y)));
      continue;
    }
    if (rng.bool(0.3)) {
      opts.bias = randomBias(rng, d, nq, nk);
      pred = optsPred(opts, nq, nk);
    }
    const name = `#${i} ${describe({ ...d, nq, nk, ...opts, bias: opts.bias?.shape })}`;
    await f.run(name, () => runAttentionCase(q, k, v, opts, pred));
  }
  f.done('worker path');
});

test('mergeAttentions of disjoint key splits equals attention over all keys', async () => {
  const f = new Failures();
  const rng = new Rng(7007);
  const sliceTokens = (t: Tensor, lo: number, hi: number): Tensor => {
    const [B, N, Hk, D] = t.shape as [number, number, number, number];
    const data = new Float32Array(B * (hi - lo) * Hk * D);
    for (let b = 0; b < B; b++) data.set(t.data.subarray((b * N + lo) * Hk * D, (b * N + hi) * Hk * D), b * (hi - lo) * Hk * D);
    return { data, shape: [B, hi - lo, Hk, D] };
  };
  for (let i = 0; i < count(500); i++) {
    const d = dims(rng);
    const nq = rng.int(1, 30);
    const nk = rng.int(2, 30);
    const nParts = rng.bool(0.7) ? 2 : 3;
    const cuts = [0, ...Array.from({ length: nParts - 1 }, () => rng.int(1, nk - 1)).sort((a, b) => a - b), nk];
    const density = rng.bool(0.2) ? 1 : rng.next();
    const full = hashMask(rng.int(0, 1e9), density);
    const extra: AttentionOptions = {};
    if (rng.bool(0.2)) extra.softcap = 1 + 3 * rng.next();
    if (rng.bool(0.2)) extra.scale = 0.2 + rng.next();
    const { q, k, v } = qkv(rng, d, [nq], [nk]);
    const name = `#${i} ${describe({ ...d, nq, nk, cuts, density, ...extra })}`;
    await f.run(name, async () => {
      const parts: Result[] = [];
      for (let p = 0; p + 1 < cuts.length; p++) {
        const lo = cuts[p]!;
        const hi = cuts[p + 1]!;
        if (hi === lo) continue;
        parts.push(await attention(q, sliceTokens(k, lo, hi), sliceTokens(v, lo, hi), { ...extra, pattern: patterns.maskFn((b, h, x, y) => full(b, h, x, y + lo)) }));
      }
      const { problem } = planAttention(q, k, v, { ...extra, pattern: patterns.maskFn(full) });
      const ref = referenceAttention(problem, bufsOf(q, k, v));
      await checkResultAgainst(problem, ref, async (dest) => mergeAttentions(parts, dest), [d.B, nq, d.H]);
    });
  }
  f.done('merge');
});

// ---------------------------------------------------------------------------------------------
// Neighborhood attention.

/** Scalar when every axis agrees (sometimes), else per axis: exercises both option forms. */
function axisOpt<T>(rng: Rng, xs: T[]): T | T[] {
  return xs.every((x) => x === xs[0]) && rng.bool(0.5) ? xs[0]! : xs;
}

function naOptions(rng: Rng, c: NACase, d: Dims, allowRpb = true): NeighborhoodOptions {
  const o: NeighborhoodOptions = { kernelSize: axisOpt(rng, c.kernel) as number | number[] };
  if (c.dilation.some((x) => x > 1) || rng.bool(0.3)) o.dilation = axisOpt(rng, c.dilation) as number | number[];
  if (c.stride.some((x) => x > 1) || rng.bool(0.3)) o.stride = axisOpt(rng, c.stride) as number | number[];
  if (c.causal.some((x) => x) || rng.bool(0.3)) o.isCausal = axisOpt(rng, c.causal) as boolean | boolean[];
  if (allowRpb && !c.causal.some((x) => x) && rng.bool(0.4)) o.rpb = randTensor(rng, [d.H, ...c.kernel.map((k) => 2 * k - 1)]);
  commonOpts(rng, o, c.rank, c.rank === 1 ? 24 : c.rank === 2 ? 8 : 5);
  return o;
}

const naFn = (rank: number, rng: Rng) =>
  rng.bool(0.3)
    ? (q: Tensor, k: Tensor, v: Tensor, o: NeighborhoodOptions) => neighborhoodAttention(q, k, v, o)
    : rank === 1
      ? na1d
      : rank === 2
        ? na2d
        : na3d;

async function naFamily(rank: number, n: number, seed: number): Promise<void> {
  const f = new Failures();
  const rng = new Rng(seed);
  for (let i = 0; i < count(n); i++) {
    const c = randomNA(rng, rank);
    const d = dims(rng);
    const opts = naOptions(rng, c, d);
    const { q, k, v } = qkv(rng, d, c.grid, c.grid);
    const fn = naFn(rank, rng);
    const base = `#${i} ${describe({ ...d, grid: c.grid, ...opts, rpb: opts.rpb?.shape })}`;
    let problem: AttnProblem;
    let ref: { out: Float64Array; lse: Float64Array };
    try {
      problem = planNA(q, k, v, opts).problem;
      // the compiled predicate is NATTEN's, pair by pair
      const cp = compilePattern(problem.pattern, { qGrid: c.grid, kGrid: c.grid, heads: d.H });
      const nt = prod(c.grid);
      const g: NAGeom = { grid: c.grid, kernel: c.kernel, dilation: c.dilation, stride: c.stride, causal: c.causal };
      for (let x = 0; x < nt; x++)
        for (let y = 0; y < nt; y++)
          if (cp.allows(0, 0, x, y) !== naAllows(g, x, y)) throw new Error(`allows(${x}, ${y}) = ${cp.allows(0, 0, x, y)}, NATTEN says ${naAllows(g, x, y)}`);
      ref = referenceAttention(problem, bufsOf(q, k, v));
    } catch (e) {
      f.checked++;
      f.add(base, `setup: ${e instanceof Error ? e.message : String(e)}`);
      continue;
    }
    for (const impl of ['fused', 'naive', 'unfused'] as Impl[]) {
      await f.run(`${base} impl=${impl}`, () => checkResultAgainst(problem, ref, (dest) => fn(q, k, v, { ...opts, impl, ...dest }), [d.B, ...c.grid, d.H]));
    }
  }
  f.done(`na${rank}d`);
}

test('na1d: kernel (odd/even), dilation, stride, causal, rpb, GQA; fused / naive / unfused', () => naFamily(1, 1000, 8001));
test('na2d: per-axis kernel, dilation, stride, causal, rpb, GQA; fused / naive / unfused', () => naFamily(2, 800, 8002));
test('na3d: per-axis kernel, dilation, stride, causal, rpb, GQA; fused / naive / unfused', () => naFamily(3, 400, 8003));

test('neighborhood: larger 2-D problems that take the worker-thread path', async () => {
  const f = new Failures();
  const rng = new Rng(8004);
  for (let i = 0; i < count(8); i++) {
    const grid = [rng.int(14, 24), rng.int(14, 24)];
    const c: NACase = { rank: 2, grid, kernel: [], dilation: [], stride: [], causal: [] };
    for (const L of grid) {
      const dd = rng.int(1, 2);
      const K = rng.int(2, 7);
      c.kernel.push(K);
      c.dilation.push(dd);
      c.stride.push(rng.int(1, K));
      c.causal.push(rng.bool(0.3));
      void L;
    }
    const d = { B: 2, H: 4, Hk: rng.pick([1, 2, 4]), D: 16, Dv: 16 };
    const opts = naOptions(rng, c, d);
    const { q, k, v } = qkv(rng, d, grid, grid);
    const { problem } = planNA(q, k, v, opts);
    const ref = referenceAttention(problem, bufsOf(q, k, v));
    for (const impl of ['fused', 'naive', 'unfused'] as Impl[]) {
      const name = `#${i} ${describe({ ...d, grid, ...opts, rpb: opts.rpb?.shape })} impl=${impl}`;
      await f.run(name, () => checkResultAgainst(problem, ref, (dest) => na2d(q, k, v, { ...opts, impl, ...dest }), [d.B, ...grid, d.H]));
    }
  }
  f.done('na worker path');
});

test('neighborhood: additionalKeys / additionalValues equal attention over concatenated keys', async () => {
  const f = new Failures();
  const rng = new Rng(9009);
  for (let i = 0; i < count(400); i++) {
    const rank = rng.int(1, 3);
    const c = randomNA(rng, rank);
    const d = dims(rng);
    const opts = naOptions(rng, c, d);
    const M = rng.int(1, 6);
    const { q, k, v } = qkv(rng, d, c.grid, c.grid);
    const ak = randTensor(rng, [d.B, M, d.Hk, d.D]);
    const av = randTensor(rng, [d.B, M, d.Hk, d.Dv]);
    const nt = prod(c.grid);
    const nk = nt + M;
    // concatenated keys per batch: the grid's tokens, then the extra ones
    const kc = new Float32Array(d.B * nk * d.Hk * d.D);
    const vc = new Float32Array(d.B * nk * d.Hk * d.Dv);
    for (let b = 0; b < d.B; b++) {
      kc.set(k.data.subarray(b * nt * d.Hk * d.D, (b + 1) * nt * d.Hk * d.D), b * nk * d.Hk * d.D);
      kc.set(ak.data.subarray(b * M * d.Hk * d.D, (b + 1) * M * d.Hk * d.D), (b * nk + nt) * d.Hk * d.D);
      vc.set(v.data.subarray(b * nt * d.Hk * d.Dv, (b + 1) * nt * d.Hk * d.Dv), b * nk * d.Hk * d.Dv);
      vc.set(av.data.subarray(b * M * d.Hk * d.Dv, (b + 1) * M * d.Hk * d.Dv), (b * nk + nt) * d.Hk * d.Dv);
    }
    const g: NAGeom = { grid: c.grid, kernel: c.kernel, dilation: c.dilation, stride: c.stride, causal: c.causal };
    // rpb as an additive bias on the grid keys (offset key - query in group units, + K - 1), 0 on extra keys
    let bias: AttnProblem['bias'];
    if (opts.rpb) {
      const data = new Float32Array(d.H * nt * nk);
      for (let h = 0; h < d.H; h++)
        for (let x = 0; x < nt; x++)
          for (let y = 0; y < nt; y++) {
            if (!naAllows(g, x, y)) continue;
            const cq = unflatten(x, c.grid);
            const ck = unflatten(y, c.grid);
            let idx = h;
            for (let a = 0; a < rank; a++)
              idx = idx * (2 * c.kernel[a]! - 1) + Math.floor(ck[a]! / c.dilation[a]!) - Math.floor(cq[a]! / c.dilation[a]!) + c.kernel[a]! - 1;
            data[(h * nt + x) * nk + y] = opts.rpb.data[idx]!;
          }
      bias = { data, batch: 1, heads: d.H };
    }
    const impl = rng.pick(['fused', 'naive', 'unfused'] as Impl[]);
    const name = `#${i} ${describe({ ...d, grid: c.grid, M, ...opts, rpb: opts.rpb?.shape })} impl=${impl}`;
    await f.run(name, async () => {
      const { problem: naProblem } = planNA(q, k, v, opts);
      const problem: AttnProblem = {
        ...naProblem,
        kRows: d.B * nk,
        seqs: Array.from({ length: d.B }, (_, b) => ({ b, qOff: b * nt, kOff: b * nk, qGrid: [nt], kGrid: [nk] })),
        pattern: patterns.maskFn((_b, _h, x, y) => y >= nt || naAllows(g, x, y)),
        ...(bias ? { bias } : {}),
      };
      delete (problem as { rpb?: unknown }).rpb;
      const ref = referenceAttention(problem, { q: q.data, k: kc, v: vc });
      await checkResultAgainst(problem, ref, (dest) => neighborhoodAttention(q, k, v, { ...opts, impl, additionalKeys: ak, additionalValues: av, ...dest }), [d.B, ...c.grid, d.H]);
    });
  }
  f.done('additional KV');
});

/** naQK, then a float64 softmax per row, then naAV; compared with the reference. */
async function naQKAVCase(q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions, d: Dims, c: NACase): Promise<void> {
  const { problem } = planNA(q, k, v, opts);
  const ref = referenceAttention(problem, bufsOf(q, k, v));
  const wv = prod(c.kernel);
  const rows = problem.qRows * d.H;
  const qk = await naQK(q, k, { ...opts, out: poisoned(rows * wv), lse: poisoned(rows) });
  assert.deepEqual([...qk.out.shape], [d.B, ...c.grid, d.H, wv], 'naQK out shape');
  const attn = new Float32Array(rows * wv);
  for (let r = 0; r < rows; r++) {
    let mx = -Infinity;
    for (let j = 0; j < wv; j++) mx = Math.max(mx, qk.out.data[r * wv + j]!);
    let s = 0;
    for (let j = 0; j < wv; j++) s += Math.exp(qk.out.data[r * wv + j]! - mx);
    for (let j = 0; j < wv; j++) attn[r * wv + j] = Math.exp(qk.out.data[r * wv + j]! - mx) / s;
  }
  // naAV takes weights, not scores: no rpb, softcap or scale
  const { rpb: _r, softcap: _s, scale: _c, ...avOpts } = opts;
  const av = await naAV({ data: attn, shape: [d.B, ...c.grid, d.H, wv] }, v, { ...avOpts, out: poisoned(rows * d.Dv) });
  const msg = compareResult(av.out.data, qk.lse.data, ref, d.Dv);
  if (msg) assert.fail(msg);
}

test('neighborhood: naQK -> softmax -> naAV reproduces the reference', async () => {
  const f = new Failures();
  const rng = new Rng(9100);
  for (let i = 0; i < count(250); i++) {
    const rank = rng.int(1, 3);
    const c = randomNA(rng, rank);
    const d = dims(rng);
    d.Hk = d.H;
    const opts = naOptions(rng, c, d);
    delete opts.tile;
    const { q, k, v } = qkv(rng, d, c.grid, c.grid);
    const name = `#${i} ${describe({ ...d, grid: c.grid, ...opts, rpb: opts.rpb?.shape })}`;
    await f.run(name, () => naQKAVCase(q, k, v, opts, d, c));
  }
  f.done('naQK/naAV');
});

test('neighborhood: naQK / naAV with GQA (fewer key/value heads than query heads)', async () => {
  const f = new Failures();
  const rng = new Rng(9150);
  for (let i = 0; i < count(20); i++) {
    const rank = rng.int(1, 3);
    const c = randomNA(rng, rank);
    const H = rng.pick([2, 4]);
    const d: Dims = { B: rng.int(1, 2), H, Hk: H / 2, D: rng.int(1, 16), Dv: rng.int(1, 16) };
    const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal };
    const { q, k, v } = qkv(rng, d, c.grid, c.grid);
    const name = `#${i} ${describe({ ...d, grid: c.grid, ...opts })}`;
    await f.run(name, () => naQKAVCase(q, k, v, opts, d, c));
  }
  f.done('naQK/naAV GQA');
});

test('neighborhood: multi-axis NA spec passed to attention() as a pattern (and/or of NA specs)', async () => {
  // single-threaded: a wrong tile rank here once left the item count NaN, which returned zeros
  // inline and spun forever in pool workers; the next test guards the worker path in a child process
  const threads = cpuThreads();
  setCpuThreads(1);
  try {
    const f = new Failures();
    const rng = new Rng(9200);
    for (let i = 0; i < count(80); i++) {
      const rank = rng.int(1, 3);
      const c = randomNA(rng, rank);
      const c2 = randomNA(rng, rank);
      // second spec on the same grid and dilation
      const spec = (x: NACase): PatternSpec => ({ kind: 'neighborhood', kernelSize: x.kernel, dilation: c.dilation, stride: x.stride, isCausal: x.causal });
      for (let a = 0; a < rank; a++) {
        c2.kernel[a] = Math.max(1, Math.min(c2.kernel[a]!, Math.floor(c.grid[a]! / c.dilation[a]!)));
        c2.stride[a] = Math.min(c2.stride[a]!, c2.kernel[a]!);
      }
      const pattern = rng.bool(0.4) ? spec(c) : rng.bool(0.5) ? patterns.and(spec(c), spec(c2)) : patterns.or(spec(c), spec(c2));
      const d = dims(rng);
      const { q, k, v } = qkv(rng, d, c.grid, c.grid);
      const name = `#${i} ${describe({ ...d, grid: c.grid, pattern })}`;
      await f.run(name, () => runAttentionCase(q, k, v, { pattern }, myPred(pattern, prod(c.grid), prod(c.grid), c.grid)));
    }
    f.done('NA via attention()');
  } finally {
    setCpuThreads(threads);
  }
});

test('neighborhood: multi-axis NA pattern through attention() on the worker path terminates', async () => {
  // run in a child process: a hang must fail this test, not the whole suite
  const script = `
    import { attention, randn } from ${JSON.stringify(new URL('../src/index.js', import.meta.url).href)};
    const pattern = { kind: 'neighborhood', kernelSize: [2, 8], dilation: [4, 1], stride: [1, 1], isCausal: [true, false] };
    const q = randn([2, 8, 8, 3, 11], 1);
    const r = await attention(q, q, q, { pattern });
    console.log('done', r.lse.data[0]);`;
  const dir = mkdtempSync(join(tmpdir(), 'tilewise-'));
  const file = join(dir, 'hang.mjs');
  writeFileSync(file, script);
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const res = spawnSync(process.execPath, [file], { timeout: 20000, encoding: 'utf8', env });
  rmSync(dir, { recursive: true, force: true });
  assert.ok(res.error === undefined && res.status === 0, `attention() with a 2-D NA pattern on the worker path did not finish in 20 s (status ${res.status}, signal ${res.signal}) ${String(res.stderr).slice(0, 400)}`);
  assert.match(res.stdout, /^done /);
});

// ---------------------------------------------------------------------------------------------
// Independent NATTEN checks.

/** NATTEN's original CPU window start (odd kernels, stride 1), global coordinates. */
function nattenWindowStart(index: number, length: number, K: number, dilation: number): number {
  const NS = Math.floor(K / 2);
  if (dilation <= 1) return Math.max(index - NS, 0) + (index + NS >= length ? length - index - NS - 1 : 0);
  const ni = index - NS * dilation;
  if (ni < 0) return index % dilation;
  if (index + NS * dilation >= length) {
    const imodd = index % dilation;
    const a = Math.floor(length / dilation) * dilation;
    const b = length - a;
    if (imodd < b) return length - b + imodd - 2 * NS * dilation;
    return a + imodd - K * dilation;
  }
  return ni;
}

/** NATTEN's original relative-position-bias start (odd kernels, stride 1). */
function nattenPbStart(index: number, length: number, K: number, dilation: number): number {
  const NS = Math.floor(K / 2);
  if (dilation <= 1) return NS + (index < NS ? NS - index : 0) + (index + NS >= length ? length - index - 1 - NS : 0);
  if (index - NS * dilation < 0) return K - 1 - Math.floor(index / dilation);
  if (index + NS * dilation >= length) return Math.floor((length - index - 1) / dilation);
  return NS;
}

test('NATTEN window semantics: compilePattern().allows matches the window-start and leader formulas', () => {
  const f = new Failures();
  const rng = new Rng(10010);
  for (let i = 0; i < count(3000); i++) {
    const L = rng.int(1, 60);
    const d = rng.bool(0.4) ? rng.int(1, Math.min(6, L)) : 1;
    const K = rng.int(1, Math.floor(L / d));
    const s = rng.bool(0.4) ? 1 : rng.int(1, K);
    const causal = rng.bool(0.3);
    const name = `#${i} ${describe({ L, K, d, s, causal })}`;
    f.checked++;
    const cp = compilePattern({ kind: 'neighborhood', kernelSize: [K], dilation: [d], stride: [s], isCausal: [causal] }, { qGrid: [L], kGrid: [L], heads: 1 });
    let bad: string | null = null;
    for (let x = 0; x < L && !bad; x++) {
      // the formula of the brief, written out per query
      const g = x % d;
      const n = Math.ceil((L - g) / d);
      const xi = Math.floor(x / d);
      let lo: number;
      let hi: number;
      if (causal) {
        const leader = Math.min(Math.floor(xi / s) * s + s - 1, n - 1);
        lo = Math.max(0, leader - K + 1);
        hi = xi;
      } else {
        const leader = Math.min(Math.floor(xi / s) * s + Math.floor(s / 2), n - 1);
        lo = Math.min(Math.max(leader - Math.floor(K / 2), 0), n - K);
        hi = lo + K - 1;
      }
      // and NATTEN's own global-coordinate window for odd kernels without stride/causality
      const natten = !causal && s === 1 && K % 2 === 1 ? nattenWindowStart(x, L, K, d) : null;
      for (let y = 0; y < L && !bad; y++) {
        const want = y % d === g && Math.floor(y / d) >= lo && Math.floor(y / d) <= hi;
        if (cp.allows(0, 0, x, y) !== want) bad = `allows(${x}, ${y}) = ${!want}, formula says ${want}`;
        if (natten !== null) {
          const inNatten = y >= natten && (y - natten) % d === 0 && (y - natten) / d < K;
          if (inNatten !== want) bad = `NATTEN get_window_start(${x}) = ${natten} disagrees with the clamp formula at key ${y}`;
        }
      }
    }
    if (bad) f.add(name, bad);
  }
  f.done('NATTEN formula');
});

test('NATTEN rpb semantics: na1d with rpb equals a direct float64 NATTEN computation (odd K, dilation)', async () => {
  const f = new Failures();
  const rng = new Rng(10020);
  for (let i = 0; i < count(250); i++) {
    const L = rng.int(1, 40);
    const d = rng.bool(0.5) ? rng.int(1, Math.min(5, L)) : 1;
    const maxK = Math.floor(L / d);
    const K = 2 * rng.int(0, Math.floor((maxK - 1) / 2)) + 1;
    const dm = dims(rng);
    const { q, k, v } = qkv(rng, dm, [L], [L]);
    const rpb = randTensor(rng, [dm.H, 2 * K - 1]);
    const scale = 1 / Math.sqrt(dm.D);
    // direct NATTEN (qkrpb -> softmax -> av), float64
    const want = new Float64Array(dm.B * L * dm.H * dm.Dv);
    const wantLse = new Float64Array(dm.B * L * dm.H);
    const grp = dm.H / dm.Hk;
    for (let b = 0; b < dm.B; b++)
      for (let x = 0; x < L; x++)
        for (let h = 0; h < dm.H; h++) {
          const kh = Math.floor(h / grp);
          const ws = nattenWindowStart(x, L, K, d);
          const pb = nattenPbStart(x, L, K, d);
          const sc: number[] = [];
          for (let j = 0; j < K; j++) {
            const y = ws + j * d;
            let s = 0;
            for (let c = 0; c < dm.D; c++) s += q.data[((b * L + x) * dm.H + h) * dm.D + c]! * k.data[((b * L + y) * dm.Hk + kh) * dm.D + c]!;
            sc.push(s * scale + rpb.data[h * (2 * K - 1) + pb + j]!);
          }
          const mx = Math.max(...sc);
          const e = sc.map((s) => Math.exp(s - mx));
          const sum = e.reduce((a, z) => a + z, 0);
          wantLse[(b * L + x) * dm.H + h] = mx + Math.log(sum);
          for (let j = 0; j < K; j++) {
            const y = ws + j * d;
            for (let c = 0; c < dm.Dv; c++) want[((b * L + x) * dm.H + h) * dm.Dv + c]! += (e[j]! / sum) * v.data[((b * L + y) * dm.Hk + kh) * dm.Dv + c]!;
          }
        }
    for (const impl of ['fused', 'naive', 'unfused'] as Impl[]) {
      const name = `#${i} ${describe({ ...dm, L, K, d, impl })}`;
      await f.run(name, async () => {
        const out = poisoned(want.length);
        const lse = poisoned(wantLse.length);
        await na1d(q, k, v, { kernelSize: K, dilation: d, rpb, impl, out, lse });
        const msg = compareResult(out, lse, { out: want, lse: wantLse }, dm.Dv);
        if (msg) assert.fail(msg);
      });
    }
  }
  f.done('NATTEN rpb');
});
