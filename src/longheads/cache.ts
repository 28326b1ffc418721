import { type Result, attention } from '../api.js';
import { check, checkPositiveInt } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { checkTensor } from '../validate.js';
import { type LongHeadsConfig, type LongHeadsOptions, longHeadsConfig } from './options.js';
import { chunkReps, selectDecode } from './select.js';

/** A growable float32 store backed by shared memory, so CPU worker threads read it without a copy. */
class Rows {
  data = new Float32Array(new SharedArrayBuffer(0));
  length = 0;
  constructor(readonly width: number) {}
  push(src: Float32Array): void {
    const rows = this.length + src.length / this.width;
    if (rows * this.width > this.data.length) {
      // headroom, so a decode loop after a long append does not copy the whole cache on its first step
      const cap = Math.max(Math.ceil(rows * 1.25), (2 * this.data.length) / this.width, 256);
      const grown = new Float32Array(new SharedArrayBuffer(cap * this.width * 4));
      grown.set(this.data.subarray(0, this.length * this.width));
      this.data = grown;
    }
    this.data.set(src, this.length * this.width);
    this.length += src.length / this.width;
  }
  rows(from = 0, to = this.length): Float32Array {
    return this.data.subarray(from * this.width, to * this.width);
  }
}

/**
 * LongHeads decoding state for one sequence: keys and values, the representation of every full
 * chunk (computed once, when the chunk fills, from its queries, keys and values), and the queries
 * of the chunk being filled. A decode step selects per head (first chunk, last full chunk, current
 * chunk, top-scoring rest) and attends over at most `budget` keys: O(budget) attention plus an
 * O(chunks) scoring pass, whatever the context length.
 */
export class LongHeadsCache {
  readonly cfg: LongHeadsConfig;
  private readonly keys: Rows;
  private readonly values: Rows;
  private readonly reps: Rows;
  private readonly pendingQ: Rows;

  constructor(
    readonly heads: number,
    readonly kvHeads: number,
    readonly dim: number,
    opts?: LongHeadsOptions,
  ) {
    checkPositiveInt(heads, 'heads');
    checkPositiveInt(kvHeads, 'kvHeads');
    checkPositiveInt(dim, 'dim');
    check(heads % kvHeads === 0, 'kvHeads', 'must divide heads', `${heads} vs ${kvHeads}`);
    this.cfg = longHeadsConfig(opts);
    this.keys = new Rows(kvHeads * dim);
    this.values = new Rows(kvHeads * dim);
    this.reps = new Rows(heads * dim);
    this.pendingQ = new Rows(heads * dim);
  }

  /** Tokens held. */
  get length(): number {
    return this.keys.length;
  }

  /** Full chunks with a representation. */
  get chunks(): number {
    return this.reps.length;
  }

  /**
   * Appends tokens (q [T, H, D], k and v [T, Hk, D], un-rotated) without attending: prefill of the
   * cache. Chunks completed by the call get their representations in one batched pass.
   */
  async append(q: Tensor, k: Tensor, v: Tensor): Promise<void> {
    this.checkTokens(q, k, v);
    this.pendingQ.push(q.data);
    this.keys.push(k.data);
    this.values.push(v.data);
    const C = this.cfg.chunkSize;
    const ready = Math.floor(this.pendingQ.length / C);
    if (ready === 0) return;
    const start = this.reps.length * C;
    const rep = await chunkReps(
      { q: this.pendingQ.rows(0, ready * C), k: this.keys.rows(start), v: this.values.rows(start), n: ready * C, heads: this.heads, kvHeads: this.kvHeads, dim: this.dim },
      this.cfg,
    );
    this.reps.push(rep);
    // keep the queries of the chunk still filling
    const rest = this.pendingQ.rows(ready * C).slice();
    this.pendingQ.length = 0;
    this.pendingQ.push(rest);
  }

  /** Appends one token and returns its attention output ([1, 1, H, D], lse [1, 1, H]). */
  async decode(q: Tensor, k: Tensor, v: Tensor): Promise<Result> {
    checkTensor(q, 'q');
    check(q.shape[0] === 1, 'q', 'decode takes one token: [1, heads, dim]', q.shape.join('x'));
    const qRow = q.data.slice(0, this.heads * this.dim);
    await this.append(q, k, v);
    const L = this.length;
    const { heads: H, kvHeads: Hk, dim: D, cfg } = this;
    const common = { rope: cfg.rope, backend: cfg.backend, ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}) };
    const qT = { data: qRow, shape: [1, 1, H, D] };
    const kT = { data: this.keys.rows(), shape: [1, L, Hk, D] };
    const vT = { data: this.values.rows(), shape: [1, L, Hk, D] };
    if (L <= cfg.budget) return attention(qT, kT, vT, { ...common, causal: 'bottom-right' });
    const chunks = selectDecode(qRow, L - 1, this.reps.rows(), H, D, cfg);
    return attention(qT, kT, vT, {
      ...common,
      pattern: { kind: 'and', parts: [chunks, { kind: 'causal', align: 'bottom-right' }] },
      ropePositions: 'selected',
      tile: { q: 1 },
    });
  }

  private checkTokens(q: Tensor, k: Tensor, v: Tensor): number {
    checkTensor(q, 'q');
    checkTensor(k, 'k');
    checkTensor(v, 'v');
    const T = q.shape[0]!;
    check(q.shape.length === 3 && q.shape[1] === this.heads && q.shape[2] === this.dim, 'q', `must be [tokens, ${this.heads}, ${this.dim}]`, q.shape.join('x'));
    check(k.shape.length === 3 && k.shape[0] === T && k.shape[1] === this.kvHeads && k.shape[2] === this.dim, 'k', `must be [${T}, ${this.kvHeads}, ${this.dim}]`, k.shape.join('x'));
    check(v.shape.length === 3 && v.shape[0] === T && v.shape[1] === this.kvHeads && v.shape[2] === this.dim, 'v', `must be [${T}, ${this.kvHeads}, ${this.dim}]`, v.shape.join('x'));
    return T;
  }
}
