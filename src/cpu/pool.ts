import { throwIfAborted } from '../abort.js';
import { TilewiseError, check } from '../errors.js';
import type { NonFinite } from '../nonfinite.js';
import { nodeBuiltin } from '../node-builtin.js';
import { serializable } from '../patterns/spec.js';
import { type AttnProblem, ItemSpace } from '../problem.js';
import { CONTROL, STAGE_CHUNKS, canWaitAsync, chunkStart, openGate, resetControl, stageReady, waitAtLeast, waitAtLeastAsync } from './control.js';
import { MAX_CHAIN, type PhaseMsg, phaseContext, rankOf, runChain, runChainAsync, runRange } from './kernels.js';
import { type JobLayout, type KernelKind, PER_THREAD, type Slot, layJob, scratchPlan, slotSizes } from './layout.js';
import { type KernelVariant, type TileKernels, bestVariant, kernelsOn, moduleOf, setScalarKernels, variantAvailable } from './tile-kernels.js';
import { type WorkerPort, spawnWorker } from './worker-port.js';

/**
 * The CPU engine's scheduler. Jobs (one attention call each) run one at a time in submission
 * order, any number of callers at once; a job copies its inputs into one shared
 * WebAssembly.Memory, every thread (the pool's workers, or the calling thread for small or
 * unshareable problems) claims work items through a counter in that memory (the backward: a
 * fixed split, so its per-thread partials do not depend on timing), and the job's
 * promise resolves only after every thread has reported that job id done and the outputs are
 * copied out. Thread-count and kernel changes are applied between jobs. The memory grows to the
 * largest job and is reused, so repeated calls hold steady.
 */

const inNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

/** Hardware threads: Node's availableParallelism (sync via getBuiltinModule where present), else navigator. */
function hardwareThreads(): number {
  if (inNode) {
    const os = process.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;
    return os?.availableParallelism() ?? 1;
  }
  return Math.max(1, (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1);
}
let cores: number | undefined;
const coresNow = async (): Promise<number> => (cores ??= inNode ? (await nodeBuiltin<typeof import('node:os')>('os')).availableParallelism() : hardwareThreads());

/**
 * Workers need shared memory: always in Node, in a browser only when the page is cross-origin
 * isolated, and only where a worker can be made (a service worker has no Worker constructor).
 */
const canPool = (): boolean => workersFailed === undefined && (inNode || ((globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true && typeof Worker === 'function'));

/** Why the pool's workers could not start (then every call runs on the calling thread), if they could not. */
let workersFailed: string | undefined;
let workerUrl: string | URL | undefined;

/**
 * Where the pool's worker script is (a URL, or in Node a file path too); no argument: the package's
 * own dist/src/cpu/worker.js, next to the module that starts it. For bundles that do not emit that
 * file (bundling a Node app, for instance): build it as an entry of its own and pass its URL. Also
 * lets a pool that could not start its workers try again, from the next call.
 */
export function setCpuWorkerUrl(url?: string | URL): void {
  check(url === undefined || typeof url === 'string' || url instanceof URL, 'url', 'must be a URL, a string or absent', String(url));
  workerUrl = url;
  workersFailed = undefined;
}

let threadsSet: number | undefined;
let variantSet: KernelVariant | undefined;

/**
 * Threads the CPU backend uses (default: every core, at most 16). 1 runs everything on the
 * calling thread. More threads than cores only add memory and contention, so the count is capped
 * at the core count. Applied from the next call on; calls in flight finish as they started.
 */
export function setCpuThreads(n: number): void {
  check(typeof n === 'number' && Number.isInteger(n) && n >= 1, 'threads', 'must be a positive integer', String(n));
  threadsSet = n;
}

/** The threads the next call uses (1 where no pool can run: a page that is not cross-origin isolated). */
export function cpuThreads(): number {
  const hw = cores ?? hardwareThreads();
  if (!canPool()) return 1;
  return Math.max(1, Math.min(threadsSet ?? 16, hw, 16));
}

/** Forces a kernel variant (tests, benches); undefined returns to the best the engine validates. */
export function setCpuKernels(variant: KernelVariant | undefined): void {
  check(variant === undefined || variant === 'relaxed-simd' || variant === 'simd' || variant === 'scalar', 'kernels', "must be 'relaxed-simd', 'simd' or 'scalar'", String(variant));
  check(variant === undefined || variantAvailable(variant), 'kernels', 'does not validate on this engine', String(variant));
  variantSet = variant;
}

export interface CpuInfo {
  /** Threads the next call uses. */
  threads: number;
  /** 'workers': worker threads (Node) or Web Workers over shared memory; 'main-thread': one thread, yielding to the page. */
  mode: 'workers' | 'main-thread';
  /** The tile kernels of the last call (else of the next). */
  kernels: KernelVariant;
  /**
   * Whether pooled calls under setCpuCallerFlops' bound also compute on the calling thread: where
   * it may block (Node, Web Workers), and on a page's main thread where Atomics.waitAsync lets it
   * await the barriers instead (Chromium, Safari).
   */
  caller: boolean;
  /** Set when the pool's workers could not start (then threads is 1): the reason (setCpuWorkerUrl). */
  workersFailed?: string;
}

/** What the CPU engine runs on here: thread count, where, and which tile kernels. */
export function cpuInfo(): CpuInfo {
  const threads = cpuThreads();
  const mode = canPool() && threads > 1 ? 'workers' : 'main-thread';
  return { threads, mode, kernels: engine?.variant ?? variantSet ?? bestVariant(), caller: mode === 'workers' && callerFlops > 0 && canShare(), ...(workersFailed !== undefined ? { workersFailed } : {}) };
}

/** Everything below BASE stays free for the wasm module's own statics. */
const BASE = 65536;
const PAGE = 65536;
const MAX_PAGES = 65536;

interface Engine {
  readonly variant: KernelVariant;
  readonly memory: WebAssembly.Memory;
  readonly main: TileKernels;
  workers: WorkerPort[];
}
let engine: Engine | undefined;
let nextId = 1;
let spawned = 0;

/** Workers alive and started so far (tests: a small call must not restart the pool). */
export const poolStats = (): { workers: number; spawned: number } => ({ workers: engine?.workers.length ?? 0, spawned });

/**
 * Engine for the next job: created on first use, rebuilt when the kernel variant changed. The
 * pool follows the thread setting (shrunk as soon as it drops) but is only grown for a job that
 * uses it: a small job that runs on the calling thread leaves the workers alone, since starting
 * them again costs tens of milliseconds (LongHeads mixes small and large calls).
 */
async function engineFor(pooled: boolean): Promise<Engine> {
  const variant = variantSet ?? bestVariant();
  if (engine && engine.variant !== variant) {
    engine.workers.forEach((w) => w.terminate());
    engine = undefined;
  }
  if (!engine) {
    // unshared where no pool can run: a page without cross-origin isolation cannot make a shared memory
    const memory = new WebAssembly.Memory({ initial: 2, maximum: MAX_PAGES, shared: canPool() });
    if (variant === 'scalar') setScalarKernels((await import('./tile-scalar.js')).scalarKernels);
    engine = { variant, memory, main: kernelsOn(variant, memory), workers: [] };
  }
  const e = engine;
  const want = canPool() && cpuThreads() > 1 ? cpuThreads() : 0;
  if (e.workers.some((w) => w.dead)) {
    e.workers.forEach((w) => w.terminate());
    e.workers = [];
  }
  while (e.workers.length > want) e.workers.pop()!.terminate();
  while (pooled && e.workers.length < want) {
    spawned++;
    try {
      e.workers.push(await spawnWorker({ type: 'init', variant, module: moduleOf(variant, true), memory: e.memory, thread: e.workers.length }, workerUrl));
    } catch (err) {
      // no pool rather than no answer: every call from now on runs on the calling thread
      e.workers.forEach((w) => w.terminate());
      e.workers = [];
      workersFailed = err instanceof Error ? err.message : String(err);
      console.warn(
        `tilewise: the CPU pool's workers did not start (${workersFailed.split('\n')[0]}); running on one thread. ` +
          "A bundle that leaves out the package's dist/src/cpu/worker.js can build it as an entry of its own and pass its URL to setCpuWorkerUrl.",
      );
      break;
    }
  }
  return e;
}

function grow(memory: WebAssembly.Memory, bytes: number): void {
  const have = memory.buffer.byteLength;
  if (bytes <= have) return;
  const pages = Math.ceil((bytes - have) / PAGE);
  try {
    memory.grow(pages);
  } catch {
    throw new TilewiseError('problem', 'too large for the CPU engine', `needs ${Math.ceil(bytes / 2 ** 20)} MiB of tensors and scratch; the limit is ${(MAX_PAGES * PAGE) / 2 ** 30} GiB`);
  }
}

/** A main-thread step between phases (the unfused softmax), on the job's layout. */
export type MainStep = (K: TileKernels, f32: Float32Array, layout: JobLayout) => void;

export interface CpuJob {
  readonly problem: AttnProblem;
  readonly phases: readonly (KernelKind | MainStep)[];
  /** Host tensors copied in before the first phase. */
  readonly inputs: Partial<Record<Slot, Float32Array>>;
  /** Tensors copied out after the last phase (fresh arrays, or the arrays in `into`). */
  readonly outputs: readonly Slot[];
  /** The caller's destinations for some outputs (exactly their size): copied into directly, no second copy. */
  readonly into?: Partial<Record<Slot, Float32Array>>;
  /** Tensors that live only in the shared memory during the job (the unfused scores). */
  readonly temps?: readonly Slot[];
  /** Window volume for the 'attn' slot (unfused neighborhoods). */
  readonly windowVolume?: number;
  /** Rough FLOPs: small jobs run on the calling thread, where a worker round trip would cost more. */
  readonly flops: number;
  /** Zero non-finite q, k, v values in the shared copies and report their rows (nonfinite.ts). */
  readonly screen?: boolean;
  /**
   * The first phase screens q, k and v itself, each thread its share, flags in the 'flags' slot
   * (the head-lane 'lanes' phase, which reads them all anyway): no serial pass on the calling thread.
   */
  readonly screenInPhase?: boolean;
  /**
   * Outputs and temps the phases initialise themselves, so the calling thread skips its serial
   * fill of them (the head-lane backward: dK, dV written whole by its reduce, the partials zeroed
   * by its first phase).
   */
  readonly phasesFill?: readonly Slot[];
  /**
   * Cancels the job (CommonOptions.signal): it rejects with the signal's reason, before it starts
   * or, once running, as soon as its threads stop (FAILED raised: they leave at their next claim),
   * and copies nothing out.
   */
  readonly signal?: AbortSignal;
}

/** A job's outputs, and the rows of q, k, v that held NaN or infinities when the job screened them. */
export type JobOutputs = Partial<Record<Slot, Float32Array>> & { nonFinite?: NonFinite };

/**
 * Jobs under this many (rough) FLOPs run on the calling thread: a pooled call costs about 0.3-0.5
 * ms more here (posting, two wake-ups, the answer), which the second thread repays only from about
 * this size (measured call by call, BENCHMARKS stop 14: dense N=96 H8 D64 1.16x faster inline, N=128
 * level; 2-D k7 24x24 1.07x faster inline, 32x32 1.26x faster pooled).
 */
export const DEFAULT_INLINE_FLOPS = 48e6;
let inlineFlops = DEFAULT_INLINE_FLOPS;
/** Sets the inline threshold (tests set 0 to send everything through the pool); no argument: the default. */
export function setInlineFlops(flops = DEFAULT_INLINE_FLOPS): void {
  inlineFlops = flops;
}
/**
 * Pooled jobs under this many rough FLOPs (CpuJob.flops: about twice the arithmetic) whose inputs
 * fit CALLER_BYTES run the calling thread as the job's last thread, beside one worker fewer:
 * it copies the inputs, then works and waits at the barriers like a worker instead of waiting for
 * answers. That saves a worker's wake-up and the answer message, 0.3-0.5 ms a call on this VM
 * (BENCHMARKS stop 17: 2-D and 3-D NA 0.93-0.95x the time, their backward 0.95-0.97x, dense N=512
 * 0.95x, dense N=1024, 29 ms, 0.99x), but it blocks the event loop for the call, so it stops at
 * calls of about 10 ms here. Where the calling thread may block (canWait: Node, a Web Worker) it
 * waits at the barriers like a worker; a page's main thread may not, so there it awaits them with
 * Atomics.waitAsync (canShare), claiming items for at most PAGE_SHARE_MS of a message.
 */
export const DEFAULT_CALLER_FLOPS = 6e8;
const CALLER_BYTES = 16 * 2 ** 20;
/** How long the calling thread waits at a barrier before it gives the job up (a worker died), and for the workers' last writes before it awaits their answers instead. */
const CALLER_PATIENCE_MS = 10000;
const CALLER_DONE_WAIT_MS = 20;
let callerFlops = DEFAULT_CALLER_FLOPS;
/**
 * Whether this thread may block in Atomics.wait: Node's main thread and workers may, a page's main
 * thread (and an Electron renderer, which looks like Node) may not; probed once.
 */
let waitable: boolean | undefined;
function canWait(): boolean {
  if (waitable === undefined) {
    try {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
      waitable = true;
    } catch {
      waitable = false;
    }
  }
  return waitable;
}
/** Whether the calling thread can work beside the workers: it may block, or await the barriers. */
const canShare = (): boolean => canWait() || canWaitAsync();
/**
 * How long a page's main thread claims work items in one message (ms): its items run in one go, so
 * on a slow device the page would stall for its whole share; past this the workers take the rest.
 */
const PAGE_SHARE_MS = 8;
let callerAwaits = false;
let shareMs = PAGE_SHARE_MS;
/**
 * Tests: the calling thread awaits the barriers (as a page's main thread does) even where it may
 * block, claiming items for `budget` ms of each message.
 */
export function setCallerAwaits(on: boolean, budget = PAGE_SHARE_MS): void {
  callerAwaits = on;
  shareMs = budget;
}
/** Jobs that ran the calling thread beside the workers so far (tests assert the path ran). */
export let callerJobs = 0;

/**
 * Pooled calls under `flops` rough FLOPs (4 x query rows x heads x (D + Dv) x keys a query; default
 * 6e8, calls of up to about 10 ms here) also compute on the calling thread: where it may block
 * (Node, a Web Worker) it waits at the barriers and blocks its event loop for the call; a page's
 * main thread (with Atomics.waitAsync) claims items for at most 8 ms of a message and awaits the
 * rest. 0 keeps every pooled call off it. No argument: the default.
 */
export function setCpuCallerFlops(flops = DEFAULT_CALLER_FLOPS): void {
  check(typeof flops === 'number' && flops >= 0, 'flops', 'must be a number >= 0', String(flops));
  callerFlops = flops;
}
let tail: Promise<unknown> = Promise.resolve();
/** Jobs queued or running. */
let queued = 0;

/**
 * One turn of the event loop (a macrotask: setImmediate in Node, yieldToPage's hops elsewhere).
 * Jobs on the calling thread (inline, or beside the workers) run without one, so a queue of them
 * would hold the loop for all of them: timers, I/O and abort signals wait.
 */
const turn = (): Promise<void> => (typeof setImmediate === 'function' ? new Promise<void>((resolve) => setImmediate(resolve)) : yieldToPage());

/**
 * Queues a job; resolves with its outputs once every thread has finished writing them. A job that
 * queues behind another first lets the event loop take a turn.
 */
export function runJob(job: CpuJob): Promise<JobOutputs> {
  const behind = queued++ > 0;
  const run = tail
    .then(() => (behind ? turn() : undefined))
    .then(() => {
      throwIfAborted(job.signal); // cancelled while it waited for the jobs ahead of it
      return execute(job);
    })
    .finally(() => queued--);
  tail = run.catch(() => undefined);
  return run;
}

async function execute(job: CpuJob): Promise<JobOutputs> {
  const { problem } = job;
  await coresNow();
  const space = new ItemSpace(problem);
  const rank = rankOf(space);
  const wantPool = canPool() && cpuThreads() > 1 && job.flops >= inlineFlops && serializable(problem.pattern) && space.total > 1;
  const e = await engineFor(wantPool);
  // (no pool after all where its workers could not start)
  const pooled = wantPool && e.workers.length > 0;
  const threads = pooled ? e.workers.length : 1;
  const kinds = job.phases.filter((p): p is KernelKind => typeof p === 'string');
  const scratch = Math.max(0, ...kinds.map((k) => scratchPlan(k, problem, rank, threads).bytes));
  const needs = new Set<Slot>([...(Object.keys(job.inputs) as Slot[]), ...job.outputs, ...(job.temps ?? [])]);
  if (problem.bias) needs.add('bias');
  if (problem.rpb) needs.add('rpb');
  if (problem.rope) needs.add('rope');
  const phaseScreen = job.screen === true && job.screenInPhase === true;
  if (phaseScreen) needs.add('flags');
  const sizes = slotSizes(problem, needs, job.windowVolume ?? 0);
  // (the bytes the copy will move, from the problem: the inputs are read only when copied)
  const inputBytes = (Object.keys(job.inputs) as Slot[]).reduce((n, s) => n + 4 * sizes[s], 0);
  const beside = pooled && job.flops < callerFlops && inputBytes <= CALLER_BYTES && canShare();
  if (beside) callerJobs++;
  const layout = layJob(BASE, threads, scratch, sizes);
  grow(e.memory, layout.end);
  // cancelled while running: the threads of the message in flight stop at their next claim (the
  // control block is reset per message, so each later one is checked before it is posted)
  const { signal } = job;
  const stop = () => Atomics.store(new Int32Array(e.memory.buffer, layout.counter, 16), CONTROL.FAILED, 1);
  signal?.addEventListener('abort', stop);
  try {
    return await runPhases(e, job, space, layout, sizes, threads, pooled, beside, phaseScreen);
  } finally {
    signal?.removeEventListener('abort', stop);
  }
}

/** The job on its threads: the first message posted, inputs copied in, every phase run, outputs copied out. */
async function runPhases(e: Engine, job: CpuJob, space: ItemSpace, layout: JobLayout, sizes: Record<Slot, number>, threads: number, pooled: boolean, beside: boolean, phaseScreen: boolean): Promise<JobOutputs> {
  const { problem, signal } = job;
  throwIfAborted(signal);
  // beside: the calling thread is the job's last thread, in place of the last worker
  const workers = beside ? e.workers.slice(0, -1) : e.workers;
  // workers get the problem without its big arrays: bias and rpb are read from the shared memory
  const wire: AttnProblem = {
    ...problem,
    ...(problem.bias ? { bias: { ...problem.bias, data: new Float32Array(0) } } : {}),
    ...(problem.rpb ? { rpb: { ...problem.rpb, data: new Float32Array(0) } } : {}),
    ...(problem.rope ? { rope: { ...problem.rope, table: new Float32Array(0) } } : {}),
  };
  // consecutive kernel phases from phase i go to the workers as one message, with barriers between them
  const chainAt = (i: number, gated: boolean): [PhaseMsg, number] => {
    let j = i + 1;
    while (j < job.phases.length && typeof job.phases[j] === 'string' && j - i < MAX_CHAIN) j++;
    const kinds = job.phases.slice(i, j) as KernelKind[];
    const msg: PhaseMsg = { id: nextId++, kind: kinds[0]!, problem: wire, layout, ...(kinds.length > 1 ? { chain: kinds.slice(1) } : {}), ...(gated ? { gated } : {}) };
    return [msg, j];
  };
  // the first message goes out before the copies, gated: the workers wake up and set up meanwhile
  let next = 0;
  let first: Promise<void> | undefined;
  const gated = pooled && typeof job.phases[0] === 'string';
  resetControl(e.memory, layout, true, gated); // the whole block, FLAGGED too, once a job
  let firstMsg: PhaseMsg | undefined;
  if (gated) {
    const [msg, j] = chainAt(0, true);
    first = runOnWorkers(workers, msg);
    firstMsg = msg;
    next = j;
  }
  // beside: the calling thread's share of a message, then a short wait on the DONE word for every
  // thread's last write, sooner than the workers' answers (which settle unobserved unless a thread
  // failed or the wait ran out)
  const share = async (msg: PhaseMsg, answers: Promise<void>): Promise<void> => {
    let space: ItemSpace | undefined;
    const mine = (kind: KernelKind) => phaseContext(e.main, e.memory, { ...msg, kind }, threads - 1, (space ??= new ItemSpace(msg.problem)));
    // a page's main thread may not block: it awaits the barriers and the DONE word instead
    const blocking = canWait() && !callerAwaits;
    try {
      if (blocking) runChain(e.memory, msg, mine, CALLER_PATIENCE_MS);
      else await runChainAsync(e.memory, msg, mine, CALLER_PATIENCE_MS, shareMs);
    } catch (err) {
      await answers.catch(() => undefined);
      throw err;
    }
    const control = new Int32Array(e.memory.buffer, layout.counter, 16);
    const done = blocking ? waitAtLeast(control, CONTROL.DONE, threads, CALLER_DONE_WAIT_MS) : await waitAtLeastAsync(control, CONTROL.DONE, threads, CALLER_DONE_WAIT_MS);
    if (!done || Atomics.load(control, CONTROL.FAILED) !== 0) await answers;
    else answers.catch(() => undefined);
  };
  let nonFinite: NonFinite | undefined;
  try {
    // a first 'lanes' phase starts on q while k and v are still being copied: the gate opens in stages
    nonFinite = fillInputs(e, job, layout, sizes, threads, phaseScreen, gated && job.phases[0] === 'lanes');
  } catch (err) {
    // the workers skip their phases and answer; nothing is left running on the memory
    if (first) {
      openGate(e.memory, layout, true);
      // beside, the calling thread is one of the threads at the barriers: it passes them too
      if (beside) await share(firstMsg!, first).catch(() => undefined);
      else await first.catch(() => undefined);
    }
    throw err;
  }
  if (first) {
    openGate(e.memory, layout);
    if (beside) await share(firstMsg!, first);
    else await first;
  }
  for (let i = next; i < job.phases.length; ) {
    throwIfAborted(signal); // before resetControl clears a FAILED raised by the signal
    const phase = job.phases[i]!;
    if (typeof phase === 'function') {
      phase(e.main, new Float32Array(e.memory.buffer), layout);
      i++;
      continue;
    }
    const [msg, j] = chainAt(i, false);
    i = j;
    resetControl(e.memory, layout);
    if (beside) await share(msg, runOnWorkers(workers, msg));
    else if (pooled) await runOnWorkers(e.workers, msg);
    else for (const kind of [msg.kind, ...(msg.chain ?? [])]) await runInline(e, { id: msg.id, kind, problem: wire, layout }, space, signal);
  }
  throwIfAborted(signal); // nothing copied out
  const f32 = new Float32Array(e.memory.buffer);
  if (phaseScreen) nonFinite = screenFlags(e, layout, problem);
  const out: JobOutputs = nonFinite ? { nonFinite } : {};
  // new + set: slice() of a shared memory's view takes V8's slow element path (2x here)
  for (const s of job.outputs) (out[s] = job.into?.[s] ?? new Float32Array(sizes[s])).set(f32.subarray(layout.slots[s] >> 2, (layout.slots[s] >> 2) + sizes[s]));
  return out;
}

/**
 * The calling thread's part before the phases: inputs copied into the job's slots (`staged`: the
 * gate raised after each of q, k and v), outputs and temps filled (except what the phases fill
 * themselves), and the input screen unless a phase does it. Returns the rows that held NaN or
 * infinities.
 */
function fillInputs(e: Engine, job: CpuJob, layout: JobLayout, sizes: Record<Slot, number>, threads: number, phaseScreen: boolean, staged: boolean): NonFinite | undefined {
  const { problem } = job;
  const f32 = new Float32Array(e.memory.buffer);
  const put = (slot: Slot, data: Float32Array | undefined) => {
    if (data && sizes[slot] > 0) f32.set(data.subarray(0, sizes[slot]), layout.slots[slot] >> 2);
  };
  // q, k, v first, in that order (staged: in chunks of 4-row blocks, the gate raised after each)
  const lead: Slot[] = ['q', 'k', 'v'];
  lead.forEach((s, t) => {
    const data = job.inputs[s];
    if (!staged) return put(s, data);
    const block = 4 * (s === 'v' ? problem.dimV : problem.dim);
    const blocks = sizes[s] / block;
    for (let c = 0; c < STAGE_CHUNKS; c++) {
      const [a, b] = [chunkStart(blocks, c) * block, chunkStart(blocks, c + 1) * block];
      if (data && b > a) f32.set(data.subarray(a, b), (layout.slots[s] >> 2) + a);
      stageReady(e.memory, layout, 1 + STAGE_CHUNKS * t + c);
    }
  });
  for (const s of Object.keys(job.inputs) as Slot[]) if (!lead.includes(s)) put(s, job.inputs[s]);
  put('bias', problem.bias?.data);
  put('rpb', problem.rpb?.data);
  put('rope', problem.rope?.table);
  // dq is written row by row by the tiles: poisoned, so a row a kernel missed shows as NaN
  const fillOf = (s: Slot) => (s === 'lse' ? -Infinity : s === 'dq' ? NaN : 0);
  const skip = new Set(job.phasesFill ?? []);
  for (const s of job.outputs) if (!(s in job.inputs) && !skip.has(s)) f32.fill(fillOf(s), layout.slots[s] >> 2, (layout.slots[s] >> 2) + sizes[s]);
  for (const s of job.temps ?? []) {
    if (skip.has(s)) continue;
    const bytes = PER_THREAD.has(s) ? layout.partialBytes[s]! * threads : 4 * sizes[s];
    if (sizes[s] > 0) f32.fill(0, layout.slots[s] >> 2, (layout.slots[s] + bytes) >> 2);
  }
  return job.screen && !phaseScreen ? screen(e, layout, problem) : undefined;
}

/** The wasm input screen over the job's q, k, v copies: flags past the layout's end, copied out only when set. */
function screen(e: Engine, layout: JobLayout, problem: AttnProblem): NonFinite | undefined {
  const parts: ['q' | 'k' | 'v', number, number][] = [
    ['q', problem.qRows * problem.heads, problem.dim],
    ['k', problem.kRows * problem.kvHeads, problem.dim],
    ['v', problem.kRows * problem.kvHeads, problem.dimV],
  ];
  const base = Math.ceil(layout.end / 64) * 64;
  grow(e.memory, base + Math.max(...parts.map(([, rows]) => rows)));
  let found: NonFinite | undefined;
  for (const [slot, rows, width] of parts) {
    if (layout.slots[slot] < 0) continue;
    if (e.main.sanitize(layout.slots[slot], rows, width, base) > 0) (found ??= {})[slot] = new Uint8Array(e.memory.buffer, base, rows).slice();
  }
  return found;
}

/**
 * The rows a screening phase flagged (the 'flags' slot: q rows, then k, then v), copied out only
 * when set; read only when the phase counted any (scanning a shared memory's bytes is V8's slow
 * element path: 0.08 ms for a 4096-token job).
 */
function screenFlags(e: Engine, layout: JobLayout, problem: AttnProblem): NonFinite | undefined {
  if (Atomics.load(new Int32Array(e.memory.buffer, layout.counter, 16), CONTROL.FLAGGED) === 0) return undefined;
  const q = problem.qRows * problem.heads;
  const k = problem.kRows * problem.kvHeads;
  const all = new Uint8Array(e.memory.buffer, layout.slots.flags, q + 2 * k);
  if (all.indexOf(1) < 0) return undefined;
  let found: NonFinite | undefined;
  for (const [slot, at, rows] of [['q', 0, q], ['k', q, k], ['v', q + k, k]] as const) {
    const f = all.slice(at, at + rows);
    if (f.indexOf(1) >= 0) (found ??= {})[slot] = f;
  }
  return found;
}

/**
 * Gives the page's event loop a turn: two MessageChannel hops. A timer that fell due during the
 * slice is queued when the first hop reaches the scheduler, so it runs before the second (with one
 * hop, the page's 4 ms timer fired on about one yield in three). Not setTimeout(0): browsers clamp
 * nested timeouts to 4 ms after five levels, which took about a quarter of a long one-thread call
 * (Chromium, dense N=2048). Not scheduler.yield: its continuation goes ahead of other tasks, and
 * the page's timer did not fire once in a 275 ms call.
 */
async function yieldToPage(): Promise<void> {
  await messageHop();
  await messageHop();
}

/** A task of the event loop: resolves from a MessageChannel message. */
function messageHop(): Promise<void> {
  return new Promise<void>((resolve) => {
    const c = new MessageChannel();
    c.port1.onmessage = () => {
      c.port1.close();
      resolve();
    };
    c.port2.postMessage(null);
  });
}

/**
 * Runs a phase on the calling thread; in a browser in slices, yielding so a long call never freezes
 * the page (and stopping there once `signal` fires).
 */
async function runInline(e: Engine, msg: PhaseMsg, space: ItemSpace, signal?: AbortSignal): Promise<void> {
  const { ctx } = phaseContext(e.main, e.memory, msg, 0, space);
  if (inNode) {
    runRange(msg.kind, ctx, space, 0, space.total);
    return;
  }
  let t = performance.now();
  for (let i = 0; i < space.total; i++) {
    runRange(msg.kind, ctx, space, i, i + 1);
    if (performance.now() - t > 12) {
      await yieldToPage();
      throwIfAborted(signal);
      t = performance.now();
    }
  }
}

/** Posts a phase to every worker and settles when each has answered for this id (or one failed). */
function runOnWorkers(workers: WorkerPort[], msg: PhaseMsg): Promise<void> {
  return Promise.all(workers.map((w) => w.run(msg))).then(() => undefined);
}

