import { check, checkPositiveInt } from '../errors.js';
import { checkSignal } from '../validate.js';
import type { BackendName } from '../options.js';
import type { RopeOptions } from '../rope.js';

/** Options of LongHeads attention (arXiv 2402.10685), prefill and decode. */
export interface LongHeadsOptions {
  /** Tokens per chunk (default 256). */
  chunkSize?: number;
  /** Tokens each head attends to, a multiple of chunkSize (default 4096; at most the trained length). */
  budget?: number;
  /** RoPE applied inside the kernel with LongHeads' remapped positions (inputs un-rotated). */
  rope?: RopeOptions;
  /** Only causal (decoder) attention is defined. */
  causal?: true;
  backend?: BackendName;
  /** Score scale (default 1/sqrt(headDim)). */
  scale?: number;
  /**
   * Queries sharing one chunk selection in prefill (default chunkSize: one selection per query
   * chunk, scored with the chunk's mean query; 1 selects per query as the authors' code does, at
   * O(N^2 / chunkSize) scoring cost). Must divide chunkSize.
   */
  selectTile?: number;
  /** Reject NaN or infinite q, k, v in `append` and `decode` (one scan of each call's tokens). */
  checkFinite?: boolean;
  /**
   * longHeadsAttention only: cancels the call (as CommonOptions.signal), between its steps and
   * inside each attention call. A LongHeadsCache refuses it: an append stopped halfway would leave
   * the cache's keys and chunk summaries out of step.
   */
  signal?: AbortSignal;
}

export interface LongHeadsConfig {
  readonly chunkSize: number;
  readonly budget: number;
  /** budget / chunkSize. */
  readonly slots: number;
  readonly selectTile: number;
  readonly rope: RopeOptions;
  readonly backend: BackendName;
  readonly scale: number | undefined;
  readonly checkFinite: boolean;
  readonly signal: AbortSignal | undefined;
}

export function longHeadsConfig(opts: LongHeadsOptions | undefined): LongHeadsConfig {
  const o = opts ?? {};
  check(typeof o === 'object' && o !== null, 'opts', 'must be an object');
  const chunkSize = o.chunkSize ?? 256;
  checkPositiveInt(chunkSize, 'chunkSize');
  const budget = o.budget ?? 4096;
  checkPositiveInt(budget, 'budget');
  check(budget % chunkSize === 0, 'budget', `must be a multiple of chunkSize ${chunkSize}`, String(budget));
  const selectTile = o.selectTile ?? chunkSize;
  checkPositiveInt(selectTile, 'selectTile');
  check(chunkSize % selectTile === 0, 'selectTile', `must divide chunkSize ${chunkSize}`, String(selectTile));
  check(o.causal === undefined || o.causal === true, 'causal', 'LongHeads is defined for causal attention only (true)', String(o.causal));
  check(o.rope === undefined || (typeof o.rope === 'object' && o.rope !== null), 'rope', 'must be an object { base?, dims? }');
  checkSignal(o.signal);
  return { chunkSize, budget, slots: budget / chunkSize, selectTile, rope: o.rope ?? {}, backend: o.backend ?? 'cpu', scale: o.scale, checkFinite: o.checkFinite === true, signal: o.signal };
}
