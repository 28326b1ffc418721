/**
 * Patterns as plain data. A spec names the allowed (query, key) pairs; `compile.ts` turns it into
 * an exact predicate plus analytic tile classification. Every spec but `mask` is serialisable,
 * so worker threads rebuild the same pattern from it.
 */

/** Causal alignment when query and key lengths differ (FlashAttention's convention). */
export type Align = 'top-left' | 'bottom-right';

/** User predicate over one sequence: batch, head, flat query token, flat key token. */
export type MaskFn = (b: number, h: number, q: number, k: number) => boolean;

export type PatternSpec =
  | { readonly kind: 'dense' }
  | { readonly kind: 'causal'; readonly align: Align }
  /** Key k is allowed for query q when q + off - left <= k <= q + off + right (off = 0 or Nk - Nq). -1 = unbounded. */
  | { readonly kind: 'window'; readonly left: number; readonly right: number; readonly align: Align }
  | {
      readonly kind: 'neighborhood';
      readonly kernelSize: readonly number[];
      readonly dilation: readonly number[];
      readonly stride: readonly number[];
      readonly isCausal: readonly boolean[];
    }
  /** mask[hm, qb, kb] != 0 allows the block; hm ranges over 1 (shared) or all heads. */
  | {
      readonly kind: 'blockSparse';
      readonly blockQ: number;
      readonly blockK: number;
      readonly mask: Uint8Array;
      readonly maskHeads: number;
      readonly numQBlocks: number;
      readonly numKBlocks: number;
    }
  /**
   * Chunk selection (LongHeads): for head h and query tile t (of `queryTile` tokens), the key
   * chunks ids[offsets[h * numQTiles + t] .. offsets[h * numQTiles + t + 1]) of `chunkSize` tokens.
   */
  | {
      readonly kind: 'chunks';
      readonly chunkSize: number;
      readonly queryTile: number;
      readonly heads: number;
      readonly numQTiles: number;
      readonly offsets: Int32Array;
      readonly ids: Int32Array;
    }
  | { readonly kind: 'mask'; readonly fn: MaskFn }
  | { readonly kind: 'and' | 'or'; readonly parts: readonly PatternSpec[] };

export const dense = (): PatternSpec => ({ kind: 'dense' });
export const causal = (align: Align = 'top-left'): PatternSpec => ({ kind: 'causal', align });
export const slidingWindow = (left: number, right: number, align: Align = 'top-left'): PatternSpec => ({
  kind: 'window',
  left,
  right,
  align,
});
export const maskFn = (fn: MaskFn): PatternSpec => ({ kind: 'mask', fn });
export const and = (...parts: PatternSpec[]): PatternSpec => ({ kind: 'and', parts });
export const or = (...parts: PatternSpec[]): PatternSpec => ({ kind: 'or', parts });

export function serializable(p: PatternSpec): boolean {
  if (p.kind === 'mask') return false;
  if (p.kind === 'and' || p.kind === 'or') return p.parts.every(serializable);
  return true;
}
