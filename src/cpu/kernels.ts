import { ItemSpace } from '../problem.js';
import type { AttnProblem } from '../problem.js';
import { runBackward } from './backward.js';
import { runFused } from './fused.js';
import { type JobLayout, type KernelKind, scratchPlan } from './layout.js';
import { runNAAV, runNAQK, runNaive } from './na.js';
import { runLanes, runNALanes } from './na-lanes.js';
import type { TileKernels } from './tile-kernels.js';
import { TileCtx } from './tile-step.js';

export type { KernelKind } from './layout.js';

/** Work items of one phase handed out this many at a time through the job's shared counter. */
export const CHUNK = 2;

/** What a thread needs to run its share of one phase: the same message on the main thread and in workers. */
export interface PhaseMsg {
  readonly id: number;
  readonly kind: KernelKind;
  readonly problem: AttnProblem;
  readonly layout: JobLayout;
}

export function scratchBytes(kind: KernelKind, problem: AttnProblem, rank: number): number {
  return scratchPlan(kind, problem, rank).bytes;
}

export const rankOf = (space: ItemSpace): number => (space.total > 0 ? space.pattern(0).geometry.qShape.length : 1);

/** A thread's context for one phase (its own scratch area `thread` of the layout). */
export function phaseContext(K: TileKernels, memory: WebAssembly.Memory, msg: PhaseMsg, thread: number, space = new ItemSpace(msg.problem)): { ctx: TileCtx; space: ItemSpace } {
  const rank = rankOf(space);
  return { ctx: new TileCtx(K, memory, msg.problem, msg.layout, scratchPlan(msg.kind, msg.problem, rank), thread, rank), space };
}

export function runRange(kind: KernelKind, ctx: TileCtx, space: ItemSpace, start: number, end: number): void {
  switch (kind) {
    case 'fused':
      return runFused(ctx, space, start, end);
    case 'naive':
      return runNaive(ctx, space, start, end);
    case 'naQK':
      return runNAQK(ctx, space, start, end);
    case 'naAV':
      return runNAAV(ctx, space, start, end);
    case 'backward':
      return runBackward(ctx, space, start, end);
    case 'lanes':
      return runLanes(ctx, space, start, end);
    case 'naLanes':
      return runNALanes(ctx, space, start, end);
  }
}

/**
 * Claims chunks of the phase's items through the counter in shared memory until none are left;
 * the backward instead takes every threads-th chunk from its own index, so which thread sums which
 * items into its partials, and so the result, does not depend on timing.
 */
export function claimLoop(memory: WebAssembly.Memory, msg: PhaseMsg, ctx: TileCtx, space: ItemSpace): void {
  if (msg.kind === 'backward') {
    for (let ch = ctx.thread; ch * CHUNK < space.total; ch += msg.layout.threads) runRange(msg.kind, ctx, space, ch * CHUNK, Math.min(space.total, (ch + 1) * CHUNK));
    return;
  }
  const counter = new Int32Array(memory.buffer, msg.layout.counter, 1);
  for (;;) {
    const start = Atomics.add(counter, 0, CHUNK);
    if (start >= space.total) return;
    runRange(msg.kind, ctx, space, start, Math.min(space.total, start + CHUNK));
  }
}
