import type { Worker } from 'node:worker_threads';
import { serializable } from '../patterns/spec.js';
import { type AttnProblem, ItemSpace } from '../problem.js';
import { type KernelBuffers, type KernelKind, makeScratch, runRange } from './kernels.js';

export const CHUNK = 4;

export interface Job {
  kind: KernelKind;
  problem: AttnProblem;
  bufs: KernelBuffers;
  counter: SharedArrayBuffer;
}

/**
 * The worker pool is Node's (worker_threads); in a browser everything runs on the calling thread.
 * Node builtins are therefore loaded lazily, never by a top-level import, so that this module (and
 * the whole library) imports as plain ESM in a browser.
 */
const inNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

/** Every core (at most 16): sync through process.getBuiltinModule (Node >= 20.16), else on first run. */
let cores: number | undefined = inNode ? (process.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined)?.availableParallelism() : 1;
const coresNow = async (): Promise<number> => (cores ??= (await import('node:os')).availableParallelism());

let workers: Worker[] | undefined;
let threadsSet: number | undefined;

/** Threads the CPU backend uses (default: every core). 1 runs everything on the calling thread. */
export function setCpuThreads(n: number): void {
  threadsSet = Math.max(1, Math.floor(n));
  if (workers) void Promise.all(workers.map((w) => w.terminate()));
  workers = undefined;
}

/** The threads the next call uses; always 1 in a browser, which has no pool. */
export const cpuThreads = (): number => (inNode ? (threadsSet ?? Math.max(1, Math.min(cores ?? 1, 16))) : 1);

async function pool(): Promise<Worker[]> {
  if (!workers) {
    const { Worker } = await import('node:worker_threads');
    workers ??= Array.from({ length: cpuThreads() }, () => {
      const w = new Worker(new URL('./worker.js', import.meta.url));
      w.unref(); // an idle pool never keeps the process alive
      return w;
    });
  }
  return workers;
}

/** A Float32Array that worker threads can see: the caller's own if already shared, else a copy. */
export function shared(a: Float32Array): Float32Array {
  // no pool to share with in a browser (where SharedArrayBuffer may not even exist): no copy
  if (!inNode || a.buffer instanceof SharedArrayBuffer) return a;
  const s = new Float32Array(new SharedArrayBuffer(a.byteLength));
  s.set(a);
  return s;
}

export const sharedZeros = (n: number): Float32Array => (inNode ? new Float32Array(new SharedArrayBuffer(n * 4)) : new Float32Array(n));

/** Problems smaller than this run on the calling thread: a worker round trip costs more. */
const INLINE_FLOPS = 2e6;

/**
 * Runs `kind` over every work item of `problem`, across the pool when it pays and the pattern can
 * cross threads (user mask functions cannot), else inline. Buffers must be SharedArrayBuffer-backed
 * for the pool path (see `shared`).
 */
export async function runKernel(kind: KernelKind, problem: AttnProblem, bufs: KernelBuffers, flops: number): Promise<void> {
  const space = new ItemSpace(problem);
  const rank = space.total > 0 ? space.pattern(0).geometry.qShape.length : 1;
  const all = [bufs.q, bufs.k, bufs.v, bufs.out, bufs.lse, ...(bufs.attn ? [bufs.attn] : [])];
  if (inNode && cores === undefined) await coresNow();
  const canShare = inNode && all.every((a) => a.buffer instanceof SharedArrayBuffer);
  if (!canShare || cpuThreads() === 1 || flops < INLINE_FLOPS || !serializable(problem.pattern) || space.total < 2) {
    runRange(kind, problem, bufs, space, 0, space.total, makeScratch(kind, problem, rank));
    return;
  }
  const counter = new SharedArrayBuffer(4);
  const job: Job = { kind, problem, bufs, counter };
  const ws = await pool();
  await Promise.all(
    ws.map(
      (w) =>
        new Promise<void>((resolve, reject) => {
          w.ref();
          const onMsg = (m: { ok: boolean; error?: string }) => {
            w.off('error', onErr);
            w.unref();
            if (m.ok) resolve();
            else reject(new Error(`cpu worker failed: ${m.error}`));
          };
          const onErr = (e: Error) => {
            w.off('message', onMsg);
            workers = undefined;
            reject(e);
          };
          w.once('message', onMsg);
          w.once('error', onErr);
          w.postMessage(job);
        }),
    ),
  );
}
