/** The control block of a CPU job in the shared memory: its words, and the gate the calling thread opens. */
import type { JobLayout } from './layout.js';

/**
 * Words of a job's control block (JobLayout.counter, 64 bytes, zeroed before each message): phase
 * p of a message claims items through word p, waits for the others at word BARRIER + p; FAILED
 * says a thread failed (the others stop at the next barrier), GATE opens a gated message, DONE
 * counts the threads past their last write of the message, FLAGGED counts input rows a phase's
 * screen found non-finite (so the calling thread reads the flags only when there are any; it is
 * zeroed once a job, the words before it once a message).
 */
export const CONTROL = { BARRIER: 4, FAILED: 8, GATE: 9, DONE: 10, FLAGGED: 11 } as const;
const { FAILED, GATE } = CONTROL;

/**
 * A staged job's q, k and v are each copied in this many chunks (of whole 4-row blocks, chunkStart),
 * and the gate rises after each: stage 1 + STAGE_CHUNKS t + c once chunk c of tensor t (q, k, v) is
 * in. Its 'lanes' phase then screens and regroups every chunk while the next is copied, so only the
 * last chunk's share is left when the copy ends (with one stage per tensor, all of v's was).
 */
export const STAGE_CHUNKS = 4;

/** The first of `blocks` blocks in chunk c (c = STAGE_CHUNKS: the end). */
export const chunkStart = (blocks: number, c: number): number => Math.floor((c * blocks) / STAGE_CHUNKS);

/**
 * The gate's value once every input is in place. A job whose first phase is 'lanes' opens it in
 * stages (stageReady, STAGE_CHUNKS), so that phase starts on q's first chunk while the calling
 * thread still copies the rest.
 */
export const GATE_OPEN = 3 * STAGE_CHUNKS + 1;

/**
 * Zeroes a message's control words (the main thread, before posting); `job`: the whole block, at
 * the start of a job (FLAGGED counts over all of a job's messages). The gate is left open unless
 * `closed` (a gated message: openGate opens it).
 */
export function resetControl(memory: WebAssembly.Memory, layout: JobLayout, job = false, closed = false): void {
  const control = new Int32Array(memory.buffer, layout.counter, 16);
  control.fill(0, 0, job ? 16 : CONTROL.FLAGGED);
  if (!closed) control[GATE] = GATE_OPEN;
}

/** Raises a closed gate to `stage` (the calling thread, as it copies a staged job's inputs). */
export function stageReady(memory: WebAssembly.Memory, layout: JobLayout, stage: number): void {
  const control = new Int32Array(memory.buffer, layout.counter, 16);
  Atomics.store(control, GATE, stage);
  Atomics.notify(control, GATE);
}

/**
 * Lets the threads of a gated message start (the calling thread, once the inputs are in place);
 * `failed`: the inputs never arrived, so the threads skip every phase and just answer.
 */
export function openGate(memory: WebAssembly.Memory, layout: JobLayout, failed = false): void {
  const control = new Int32Array(memory.buffer, layout.counter, 16);
  if (failed) Atomics.store(control, FAILED, 1);
  Atomics.store(control, GATE, GATE_OPEN);
  Atomics.notify(control, GATE);
}

/**
 * Waits until control word `word` is at least `value`: `spins` loads first, then sleeps on the word
 * (woken by Atomics.notify), for at most `timeout` ms. Returns whether it got there. The one wait
 * of the gate, the barriers and the calling thread's DONE.
 */
export function waitAtLeast(control: Int32Array, word: number, value: number, timeout = Infinity, spins = 0): boolean {
  const until = performance.now() + timeout;
  for (let n = 0, seen = Atomics.load(control, word); seen < value; seen = Atomics.load(control, word)) {
    if (n++ < spins) continue;
    const left = until - performance.now();
    if (left <= 0) return false;
    Atomics.wait(control, word, seen, Math.min(left, 1000));
  }
  return true;
}

type WaitAsync = (a: Int32Array, index: number, value: number, timeout?: number) => { async: false; value: string } | { async: true; value: Promise<string> };
/** Atomics.waitAsync where the engine has it (Chromium, Safari, Node >= 16): a wait that blocks nothing. */
const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;
export const canWaitAsync = (): boolean => typeof waitAsync === 'function';

/**
 * waitAtLeast without blocking the thread (a page's main thread may not block): the same loop on
 * Atomics.waitAsync, woken by the same Atomics.notify.
 */
export async function waitAtLeastAsync(control: Int32Array, word: number, value: number, timeout = Infinity): Promise<boolean> {
  const until = performance.now() + timeout;
  for (let seen = Atomics.load(control, word); seen < value; seen = Atomics.load(control, word)) {
    const left = until - performance.now();
    if (left <= 0) return false;
    const w = waitAsync!.call(Atomics, control, word, seen, Math.min(left, 1000));
    if (w.async) await w.value;
  }
  return true;
}

/**
 * Loads a gate wait spins before it sleeps: a stage is one chunk's copy, a fraction of a
 * millisecond, and a sleeping thread takes 0.1-0.5 ms to wake here.
 */
export const GATE_SPINS = 4000;

/** Waits until the gate reaches `stage`: GATE_SPINS loads first, then sleeps. */
export function awaitGate(control: Int32Array, stage: number): void {
  waitAtLeast(control, GATE, stage, Infinity, GATE_SPINS);
}
