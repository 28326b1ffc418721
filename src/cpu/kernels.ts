import { ItemSpace } from '../problem.js';
import type { AttnProblem } from '../problem.js';
import { runBackward } from './backward.js';
import { runFused } from './fused.js';
import { CONTROL, GATE_OPEN, GATE_SPINS, waitAtLeast, waitAtLeastAsync } from './control.js';
import { type JobLayout, type KernelKind, scratchPlan } from './layout.js';
import { runNAAV, runNAQK, runNaive } from './na.js';
import { runLanes, runLanesReduce, runNALanes, runNALanesBwd } from './na-lanes.js';
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
  /**
   * Phases that follow `kind` in the same message, each after a barrier of every thread: one
   * round trip to the workers instead of one per phase (on this VM each costs about 0.3-0.45 ms).
   */
  readonly chain?: readonly KernelKind[];
  /**
   * Posted before the inputs are in the shared memory: the threads set up their phase contexts,
   * then wait until the calling thread opens the gate (openGate). The workers' wake-up (0.2-0.6 ms
   * a message on this VM) and set-up then overlap the calling thread's copies instead of following them.
   */
  readonly gated?: boolean;
}

/** Phases one message may chain (one claim word and one barrier word each, control.ts CONTROL). */
export const MAX_CHAIN = 4;
const { BARRIER, DONE, FAILED } = CONTROL;

export function scratchBytes(kind: KernelKind, problem: AttnProblem, rank: number, threads: number): number {
  return scratchPlan(kind, problem, rank, threads).bytes;
}

export const rankOf = (space: ItemSpace): number => (space.total > 0 ? space.pattern(0).geometry.qShape.length : 1);

/** A thread's context for one phase (its own scratch area `thread` of the layout). */
export function phaseContext(K: TileKernels, memory: WebAssembly.Memory, msg: PhaseMsg, thread: number, space = new ItemSpace(msg.problem)): { ctx: TileCtx; space: ItemSpace } {
  const rank = rankOf(space);
  return { ctx: new TileCtx(K, memory, msg.problem, msg.layout, scratchPlan(msg.kind, msg.problem, rank, msg.layout.threads), thread, rank), space };
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
    case 'naLanesBwd':
      return runNALanesBwd(ctx, space, start, end);
    case 'lanesReduce':
      return runLanesReduce(ctx, space, start, end);
  }
}

/**
 * Claims chunks of the phase's items through the counter in shared memory until none are left;
 * the backwards instead take every threads-th chunk from their own index, so which thread sums which
 * items into its partials, and so the result, does not depend on timing.
 */
export function claimLoop(memory: WebAssembly.Memory, msg: PhaseMsg, ctx: TileCtx, space: ItemSpace, phase = 0, kind = msg.kind, until = Infinity): void {
  // every claim first reads FAILED: a failed thread or a cancelled call (CpuJob.signal) stops the rest
  const counter = new Int32Array(memory.buffer, msg.layout.counter, 16);
  // backwards sum into per-thread partials: a fixed share per thread keeps every sum's order, and so
  // the result, independent of timing
  if (kind === 'backward' || kind === 'naLanesBwd') {
    for (let ch = ctx.thread; ch * CHUNK < space.total && Atomics.load(counter, FAILED) === 0; ch += msg.layout.threads) runRange(kind, ctx, space, ch * CHUNK, Math.min(space.total, (ch + 1) * CHUNK));
    return;
  }
  for (;;) {
    if (Atomics.load(counter, FAILED) !== 0) return;
    // a thread with a time budget (a page's main thread) leaves the rest to the others
    if (until !== Infinity && performance.now() > until) return;
    const start = Atomics.add(counter, phase, CHUNK);
    if (start >= space.total) return;
    runRange(kind, ctx, space, start, Math.min(space.total, start + CHUNK));
  }
}

/** A wait a message's chain asks its driver for: control word `word` at least `value` (spinning `spins` loads first). */
interface ChainWait {
  readonly word: number;
  readonly value: number;
  readonly timeout: number;
  readonly spins: number;
}

/**
 * A message's phases on one pool thread: `kind`, then each of `chain` after every thread has
 * finished the one before (a barrier in the shared control block). A thread that fails still
 * arrives at the barriers, and every thread stops after the first failure; the error is rethrown.
 * `patience` (ms): how long a barrier may take before this thread gives up on the others (the
 * calling thread, which cannot see a worker die while it waits); the job then fails, no hang.
 * A generator that yields its waits (answered with whether the word got there), so one template
 * serves the threads that block (runChain) and a page's main thread, which may not (runChainAsync).
 */
function* chainSteps(memory: WebAssembly.Memory, msg: PhaseMsg, scratchOf: (kind: KernelKind) => { ctx: TileCtx; space: ItemSpace }, patience: number, budget = Infinity): Generator<ChainWait, void, boolean> {
  const kinds = [msg.kind, ...(msg.chain ?? [])];
  const until = performance.now() + budget;
  const control = new Int32Array(memory.buffer, msg.layout.counter, 16);
  const gate = (stage: number): ChainWait => ({ word: CONTROL.GATE, value: stage, timeout: Infinity, spins: GATE_SPINS });
  let error: unknown;
  // the first phase's context before the gate: for a gated message, while the calling thread still copies
  let first: { ctx: TileCtx; space: ItemSpace } | undefined;
  try {
    first = scratchOf(kinds[0]!);
  } catch (e) {
    error = e;
  }
  // a staged job's 'lanes' phase starts once q is in, and waits for each later tensor itself
  if (msg.gated) yield gate(kinds[0] === 'lanes' ? 1 : GATE_OPEN);
  if (error !== undefined) Atomics.store(control, FAILED, 1);
  for (let p = 0; p < kinds.length; p++) {
    if (error === undefined && Atomics.load(control, FAILED) === 0) {
      try {
        const { ctx, space } = p === 0 ? first! : scratchOf(kinds[p]!);
        claimLoop(memory, msg, ctx, space, p, kinds[p], until);
      } catch (e) {
        error = e;
        Atomics.store(control, FAILED, 1);
      }
    }
    // every input is in before a later phase reads it (a staged first phase needed only q, k, v)
    if (p === 0 && msg.gated) yield gate(GATE_OPEN);
    if (p === kinds.length - 1) break;
    // barrier p: the last thread to arrive wakes the others
    const b = BARRIER + p;
    if (Atomics.add(control, b, 1) + 1 === msg.layout.threads) Atomics.notify(control, b);
    else if (!(yield { word: b, value: msg.layout.threads, timeout: patience, spins: 0 })) {
      Atomics.store(control, FAILED, 1);
      error ??= new Error(`a cpu worker did not reach barrier ${p} within ${patience} ms`);
    }
  }
  // after this thread's last write: the calling thread, when it works beside the workers, waits on it
  if (Atomics.add(control, DONE, 1) + 1 === msg.layout.threads) Atomics.notify(control, DONE);
  if (error !== undefined) throw error;
}

/** chainSteps on a thread that may block (workers; the calling thread in Node or a Web Worker). */
export function runChain(memory: WebAssembly.Memory, msg: PhaseMsg, scratchOf: (kind: KernelKind) => { ctx: TileCtx; space: ItemSpace }, patience = Infinity): void {
  const control = new Int32Array(memory.buffer, msg.layout.counter, 16);
  const steps = chainSteps(memory, msg, scratchOf, patience);
  for (let r = steps.next(); !r.done; ) r = steps.next(waitAtLeast(control, r.value.word, r.value.value, r.value.timeout, r.value.spins));
}

/**
 * chainSteps on a page's main thread: its waits on Atomics.waitAsync. Its work items run in one go,
 * so it claims items only for `budget` ms of a message and leaves the rest to the workers (phases
 * with a fixed share per thread, the backward's, still take the whole share).
 */
export async function runChainAsync(memory: WebAssembly.Memory, msg: PhaseMsg, scratchOf: (kind: KernelKind) => { ctx: TileCtx; space: ItemSpace }, patience = Infinity, budget = Infinity): Promise<void> {
  const control = new Int32Array(memory.buffer, msg.layout.counter, 16);
  const steps = chainSteps(memory, msg, scratchOf, patience, budget);
  for (let r = steps.next(); !r.done; ) r = steps.next(await waitAtLeastAsync(control, r.value.word, r.value.value, r.value.timeout));
}
