import type { Align } from './spec.js';

/**
 * One axis of a box pattern: query coordinate q -> inclusive key interval [start(q), end(q)]
 * (empty when start > end). Both ends are non-decreasing in q, which is what makes tile schedules
 * analytic (design.md section 7): a query range [qa, qb] sees keys in [start(qa), end(qb)] and every
 * one of its queries sees [start(qb), end(qa)].
 */
export interface AxisRule {
  start(q: number): number;
  end(q: number): number;
}

export const denseRule = (nk: number): AxisRule => ({ start: () => 0, end: () => nk - 1 });

function alignOffset(nq: number, nk: number, align: Align): number {
  return align === 'bottom-right' ? nk - nq : 0;
}

export function causalRule(nq: number, nk: number, align: Align): AxisRule {
  const off = alignOffset(nq, nk, align);
  return { start: () => 0, end: (q) => Math.min(nk - 1, q + off) };
}

/** left/right < 0 mean unbounded on that side. */
export function windowRule(nq: number, nk: number, left: number, right: number, align: Align): AxisRule {
  const off = alignOffset(nq, nk, align);
  return {
    start: left < 0 ? () => 0 : (q) => Math.max(0, q + off - left),
    end: right < 0 ? () => nk - 1 : (q) => Math.min(nk - 1, q + off + right),
  };
}

/**
 * NATTEN's window along one axis of one dilation group of length n (coordinates inside the group).
 * Stride s groups queries in runs of s that share the window of a leader: the centre query of the
 * run (right of centre for even s), or its last query when causal. Non-causal windows are
 * `left = floor(K/2)` keys before the (clamped) centre and `K - 1 - left` after it, shifted inward
 * at the borders so every query keeps K keys; causal windows end at the query itself and reach
 * K - 1 keys behind the leader.
 */
export function neighborhoodRule(n: number, kernel: number, stride: number, isCausal: boolean): AxisRule {
  if (isCausal) {
    const leader = (q: number) => Math.min(Math.floor(q / stride) * stride + stride - 1, n - 1);
    return { start: (q) => Math.max(0, leader(q) - kernel + 1), end: (q) => q };
  }
  const left = Math.floor(kernel / 2);
  const right = kernel - 1 - left;
  const start = (q: number) => {
    const leader = Math.min(Math.floor(q / stride) * stride + Math.floor(stride / 2), n - 1);
    return Math.min(Math.max(leader, left), n - 1 - right) - left;
  };
  return { start, end: (q) => start(q) + kernel - 1 };
}

export const andRule = (a: AxisRule, b: AxisRule): AxisRule => ({
  start: (q) => Math.max(a.start(q), b.start(q)),
  end: (q) => Math.min(a.end(q), b.end(q)),
});
