import { type Result, attention } from '../api.js';
import { check } from '../errors.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { Tensor } from '../tensor.js';
import { checkQKV } from '../validate.js';
import { type LongHeadsConfig, type LongHeadsOptions, longHeadsConfig } from './options.js';
import { type SeqQKV, chunkReps, fusedTile, selectPrefill } from './select.js';

/**
 * LongHeads prefill: causal attention where every head attends to at most `budget` tokens, chosen
 * as whole chunks per query tile (attention sink, local chunks, best-scoring chunks), with RoPE
 * applied in the kernel at positions renumbered over the selected chunks. q [B, N, H, D], k and v
 * [B, N, Hk, D], un-rotated. Up to `budget` tokens this is plain causal RoPE attention.
 */
export async function longHeadsAttention(q: Tensor, k: Tensor, v: Tensor, opts?: LongHeadsOptions): Promise<Result> {
  const cfg = longHeadsConfig(opts);
  const s = checkQKV(q, k, v, 1);
  check(s.qGrid[0] === s.kGrid[0], 'k', 'LongHeads prefill is self-attention: key length must equal query length', `${s.kGrid[0]} vs ${s.qGrid[0]}`);
  check(s.dimV === s.dim, 'v', 'LongHeads needs value dim = key dim (chunk summaries, outputs, are used as queries)', `${s.dimV} vs ${s.dim}`);
  const n = s.qGrid[0]!;
  const common = { rope: cfg.rope, backend: cfg.backend, ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}) };
  if (n <= cfg.budget) return attention(q, k, v, { ...common, causal: true });
  const { heads: H, kvHeads: Hk, dim: D } = s;
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
    const r = await selectedAttention(seq, await chunkReps(seq, cfg), cfg, selectPrefill);
    out.set(r.out.data, b * n * H * D);
    lse.set(r.lse.data, b * n * H);
  }
  return { out: { data: out, shape: [s.batch, n, H, D] }, lse: { data: lse, shape: [s.batch, n, H] } };
}

/** Attention of one sequence over its selected chunks: the chunk lists are the fused kernel's schedule. */
export async function selectedAttention(
  seq: SeqQKV,
  reps: Float32Array,
  cfg: LongHeadsConfig,
  select: (s: SeqQKV, reps: Float32Array, cfg: LongHeadsConfig) => PatternSpec,
): Promise<Result> {
  const { n, heads: H, kvHeads: Hk, dim: D } = seq;
  return attention(
    { data: seq.q, shape: [1, n, H, D] },
    { data: seq.k, shape: [1, n, Hk, D] },
    { data: seq.v, shape: [1, n, Hk, D] },
    {
      pattern: { kind: 'and', parts: [select(seq, reps, cfg), { kind: 'causal', align: 'top-left' }] },
      rope: cfg.rope,
      ropePositions: 'selected',
      tile: { q: fusedTile(cfg.selectTile) },
      backend: cfg.backend,
      ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}),
    },
  );
}
