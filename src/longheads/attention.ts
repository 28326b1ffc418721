import { type AttentionOptions, type Result, attention } from '../api.js';
import type { Align } from '../patterns/spec.js';
import type { Tensor } from '../tensor.js';
import { throwIfAborted } from '../abort.js';
import { check } from '../errors.js';
import { checkQKV } from '../validate.js';
import { type LongHeadsConfig, type LongHeadsOptions, longHeadsConfig } from './options.js';
import { type LongHeadsOps, type LongHeadsRun, type SeqView, opsFor } from './ops.js';
import { type ChunksSpec, type SeqQKV, fusedTile } from './select.js';

/**
 * LongHeads prefill: causal attention where every head attends to at most `budget` tokens, chosen
 * as whole chunks per query tile (attention sink, local chunks, best-scoring chunks), with RoPE
 * applied in the kernel at positions renumbered over the selected chunks. q [B, N, H, D], k and v
 * [B, N, Hk, D], un-rotated. Up to `budget` tokens this is plain causal RoPE attention.
 * `run` holds test knobs (poisoned GPU outputs).
 */
export async function longHeadsAttention(q: Tensor, k: Tensor, v: Tensor, opts?: LongHeadsOptions, run: LongHeadsRun = {}): Promise<Result> {
  const cfg = longHeadsConfig(opts);
  const s = checkQKV(q, k, v, 1);
  check(s.qGrid[0] === s.kGrid[0], 'k', 'LongHeads prefill is self-attention: key length must equal query length', `${s.kGrid[0]} vs ${s.qGrid[0]}`);
  check(s.dimV === s.dim, 'v', 'LongHeads needs value dim = key dim (chunk summaries, outputs, are used as queries)', `${s.dimV} vs ${s.dim}`);
  const n = s.qGrid[0]!;
  const common = { rope: cfg.rope, backend: cfg.backend, ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}), ...(cfg.signal ? { signal: cfg.signal } : {}) };
  if (n <= cfg.budget) return attention(q, k, v, { ...common, causal: true });
  const { heads: H, kvHeads: Hk, dim: D } = s;
  const ops = await opsFor(cfg, run);
  const out = new Float32Array(s.batch * n * H * D);
  const lse = new Float32Array(s.batch * n * H);
  for (let b = 0; b < s.batch; b++) {
    const seq: SeqQKV = {
      q: q.data.subarray(b * n * H * D, (b + 1) * n * H * D),
      k: k.data.subarray(b * n * Hk * D, (b + 1) * n * Hk * D),
      v: v.data.subarray(b * n * Hk * D, (b + 1) * n * Hk * D),
      n,
      heads: H,
      kvHeads: Hk,
      dim: D,
    };
    const r = await prefillSeq(ops, seq, cfg);
    out.set(r.out.data, b * n * H * D);
    lse.set(r.lse.data, b * n * H);
  }
  return { out: { data: out, shape: [s.batch, n, H, D] }, lse: { data: lse, shape: [s.batch, n, H] } };
}

/**
 * One sequence past the budget, on any backend: q, k, v uploaded once, chunk representations,
 * selection per head and tile of `selectTile` queries, then attention over the selected chunks (the
 * chunk lists are the fused kernel's schedule). Only the lists and the outputs reach the host.
 */
export async function prefillSeq<T>(ops: LongHeadsOps<T>, seq: SeqQKV, cfg: LongHeadsConfig): Promise<Result> {
  const { n, heads: H, kvHeads: Hk, dim: D } = seq;
  const held: T[] = [];
  try {
    for (const [x, h] of [[seq.q, H], [seq.k, Hk], [seq.v, Hk]] as const) held.push(await ops.upload(x, [n, h, D]));
    const [q, k, v] = held as [T, T, T];
    const s: SeqView<T> = { q, k, v, n, kOff: 0, kLen: n, heads: H, kvHeads: Hk, dim: D };
    throwIfAborted(cfg.signal);
    const reps = await ops.reps(s, Math.floor(n / cfg.chunkSize));
    let chunks: ChunksSpec;
    try {
      throwIfAborted(cfg.signal);
      chunks = await ops.select(q, reps, { rows: n, qPos0: 0, tile: cfg.selectTile, heads: H, dim: D });
    } finally {
      ops.release(reps);
    }
    throwIfAborted(cfg.signal);
    return await ops.attend(s, selectedOptions(cfg, chunks, 'top-left', fusedTile(cfg.selectTile)));
  } finally {
    held.forEach((x) => ops.release(x));
  }
}

/** Attention options over selected chunks: the lists AND causal, RoPE at the lists' positions. */
export function selectedOptions(cfg: LongHeadsConfig, chunks: ChunksSpec, align: Align, qTile: number): AttentionOptions {
  return {
    pattern: { kind: 'and', parts: [chunks, { kind: 'causal', align }] },
    rope: cfg.rope,
    ropePositions: 'selected',
    tile: { q: qTile },
    ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}),
    ...(cfg.signal ? { signal: cfg.signal } : {}),
  };
}
