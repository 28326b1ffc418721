import type { Result } from '../options.js';
import { check, checkPositiveInt } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { checkFinite, checkTensor } from '../validate.js';
import { selectedOptions } from './attention.js';
import { type LongHeadsConfig, type LongHeadsOptions, longHeadsConfig } from './options.js';
import { type LongHeadsOps, type LongHeadsRun, type RowStore, Rows, opsFor } from './ops.js';
import type { ChunksSpec } from './select.js';

/** What the cache keeps on its backend: keys, values and chunk representations. */
interface Stores<T> {
  readonly ops: LongHeadsOps<T>;
  readonly keys: RowStore<T>;
  readonly values: RowStore<T>;
  readonly reps: RowStore<T>;
}

/**
 * LongHeads decoding state for one sequence: keys and values, the representation of every full
 * chunk (computed once, when the chunk fills, from its queries, keys and values), and the queries
 * of the chunk being filled. A decode step selects per head (first chunk, last full chunk, current
 * chunk, top-scoring rest) and attends over at most `budget` keys: O(budget) attention plus an
 * O(chunks) scoring pass, whatever the context length.
 *
 * On backend 'webgpu' keys, values and representations stay in GPU buffers that grow by doubling;
 * an append uploads only the new rows, representations and selection run on the device, and a
 * decode step reads back the chunk lists and its output. Call `dispose()` to free the buffers.
 */
export class LongHeadsCache {
  readonly cfg: LongHeadsConfig;
  private readonly pendingQ: Rows;
  private stores: Stores<unknown> | undefined;
  private opening: Promise<Stores<unknown>> | undefined;
  private disposed = false;
  private selected: ChunksSpec | undefined;

  constructor(
    readonly heads: number,
    readonly kvHeads: number,
    readonly dim: number,
    opts?: LongHeadsOptions,
    private readonly run: LongHeadsRun = {},
  ) {
    checkPositiveInt(heads, 'heads');
    checkPositiveInt(kvHeads, 'kvHeads');
    checkPositiveInt(dim, 'dim');
    check(heads % kvHeads === 0, 'kvHeads', 'must divide heads', `${heads} vs ${kvHeads}`);
    // an append stopped halfway would leave the cache's keys and chunk summaries out of step
    check(opts?.signal === undefined, 'signal', 'is for longHeadsAttention; a LongHeadsCache call always completes');
    this.cfg = longHeadsConfig(opts);
    this.pendingQ = new Rows(heads * dim);
  }

  /** Tokens held. */
  get length(): number {
    return this.stores?.keys.length ?? 0;
  }

  /** Full chunks with a representation. */
  get chunks(): number {
    return this.stores?.reps.length ?? 0;
  }

  /** The chunk lists of the last decode step past the budget (per head, one query). */
  get lastChunks(): ChunksSpec | undefined {
    return this.selected;
  }

  /** The backend the cache runs on ('auto' resolved), once the first tokens are in. */
  get backend(): 'cpu' | 'webgpu' | undefined {
    return this.stores?.ops.backend;
  }

  private open(): Promise<Stores<unknown>> {
    check(!this.disposed, 'cache', 'was disposed');
    this.opening ??= opsFor(this.cfg, this.run).then((ops) => {
      const { heads: H, kvHeads: Hk, dim: D } = this;
      return (this.stores = { ops, keys: ops.store(Hk * D, 'keys'), values: ops.store(Hk * D, 'values'), reps: ops.store(H * D, 'reps') });
    });
    return this.opening;
  }

  /** Frees what the cache holds on its backend (GPU buffers); the cache cannot be used afterwards. */
  dispose(): void {
    this.disposed = true;
    const st = this.stores;
    if (st) for (const s of [st.keys, st.values, st.reps]) s.dispose();
    this.pendingQ.dispose();
  }

  /**
   * Appends tokens (q [T, H, D], k and v [T, Hk, D], un-rotated) without attending: prefill of the
   * cache. Chunks completed by the call get their representations in one batched pass.
   */
  async append(q: Tensor, k: Tensor, v: Tensor): Promise<void> {
    const T = this.checkTokens(q, k, v);
    const st = await this.open();
    const { ops } = st;
    this.pendingQ.push(q.data, T);
    st.keys.push(k.data, T);
    st.values.push(v.data, T);
    const C = this.cfg.chunkSize;
    const ready = Math.floor(this.pendingQ.length / C);
    if (ready === 0) return;
    const { heads: H, kvHeads: Hk, dim: D } = this;
    const qc = await ops.upload(this.pendingQ.rows(0, ready * C), [ready * C, H, D]);
    try {
      const s = { q: qc, k: st.keys.view(), v: st.values.view(), n: ready * C, kOff: st.reps.length * C, kLen: ready * C, heads: H, kvHeads: Hk, dim: D };
      const rep = await ops.reps(s, ready);
      st.reps.push(rep, ready);
      ops.release(rep);
    } finally {
      ops.release(qc);
    }
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
    const st = this.stores!;
    const { ops } = st;
    const L = this.length;
    const { heads: H, kvHeads: Hk, dim: D, cfg } = this;
    const qt = await ops.upload(qRow, [1, H, D]);
    try {
      const s = { q: qt, k: st.keys.view(), v: st.values.view(), n: 1, kOff: 0, kLen: L, heads: H, kvHeads: Hk, dim: D };
      if (L <= cfg.budget) return await ops.attend(s, { rope: cfg.rope, causal: 'bottom-right', ...(cfg.scale !== undefined ? { scale: cfg.scale } : {}) });
      const chunks = await ops.select(qt, st.reps.view(), { rows: 1, qPos0: L - 1, tile: 1, heads: H, dim: D });
      this.selected = chunks;
      return await ops.attend(s, selectedOptions(cfg, chunks, 'bottom-right', 1));
    } finally {
      ops.release(qt);
    }
  }

  private checkTokens(q: Tensor, k: Tensor, v: Tensor): number {
    checkTensor(q, 'q');
    checkTensor(k, 'k');
    checkTensor(v, 'v');
    const T = q.shape[0]!;
    check(q.shape.length === 3 && q.shape[1] === this.heads && q.shape[2] === this.dim, 'q', `must be [tokens, ${this.heads}, ${this.dim}]`, q.shape.join('x'));
    check(k.shape.length === 3 && k.shape[0] === T && k.shape[1] === this.kvHeads && k.shape[2] === this.dim, 'k', `must be [${T}, ${this.kvHeads}, ${this.dim}]`, k.shape.join('x'));
    check(v.shape.length === 3 && v.shape[0] === T && v.shape[1] === this.kvHeads && v.shape[2] === this.dim, 'v', `must be [${T}, ${this.kvHeads}, ${this.dim}]`, v.shape.join('x'));
    if (this.cfg.checkFinite) for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) checkFinite(t, n);
    return T;
  }
}
