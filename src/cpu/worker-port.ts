import { nodeBuiltin } from '../node-builtin.js';
import type { PhaseMsg } from './kernels.js';
import type { KernelVariant } from './tile-kernels.js';

/** The first message a worker gets: the kernels to instantiate over the shared memory, and its scratch slot. */
export interface InitMsg {
  readonly type: 'init';
  readonly variant: KernelVariant;
  readonly module: WebAssembly.Module | null;
  readonly memory: WebAssembly.Memory;
  readonly thread: number;
}

/** A worker's answer to one phase, tied to the phase by id. */
export interface DoneMsg {
  readonly type: 'done';
  readonly id: number;
  readonly error?: string;
}

/** A worker's answer to its init: its kernels are instantiated over the shared memory. */
export interface ReadyMsg {
  readonly type: 'ready';
}

type Pending = { resolve: () => void; reject: (e: Error) => void };

/**
 * The main side of one pool thread: Node's worker_threads or a browser's module Web Worker.
 * Each phase posted gets its own promise keyed by the phase id, settled by that id's answer only;
 * a worker that dies rejects whatever it still owed and is replaced before the next job.
 */
export class WorkerPort {
  dead = false;
  private readonly pending = new Map<number, Pending>();
  /** Settles when the worker has answered its init (or died first). */
  readonly ready: Promise<void>;
  private readied!: { resolve: () => void; reject: (e: Error) => void };
  constructor(
    private readonly post: (m: unknown) => void,
    private readonly kill: () => void,
    private readonly hold: (on: boolean) => void,
  ) {
    this.ready = new Promise<void>((resolve, reject) => (this.readied = { resolve, reject }));
    this.ready.catch(() => undefined); // a worker that dies after its start: no unhandled rejection
  }

  run(msg: PhaseMsg): Promise<void> {
    if (this.dead) return Promise.reject(new Error('cpu worker is gone'));
    return new Promise<void>((resolve, reject) => {
      if (this.pending.size === 0) this.hold(true); // keep the process alive while a phase is owed
      this.pending.set(msg.id, { resolve, reject });
      this.post({ type: 'phase', ...msg });
    });
  }

  answer(m: DoneMsg | ReadyMsg): void {
    if (m.type === 'ready') return this.readied.resolve();
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.hold(false);
    if (m.error) p.reject(new Error(`cpu worker failed: ${m.error}`));
    else p.resolve();
  }

  fail(e: unknown): void {
    this.dead = true;
    const err = e instanceof Error ? e : new Error(`cpu worker died: ${String(e)}`);
    this.readied.reject(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.hold(false);
  }

  terminate(): void {
    this.fail(new Error('cpu worker terminated'));
    this.kill();
  }
}

const inNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

/**
 * Starts a pool worker and resolves once it has answered its init (rejects if it cannot start: a
 * bundle that left out worker.js, say). `url`: the worker script (setCpuWorkerUrl), else the
 * package's own worker.js next to this module.
 */
export async function spawnWorker(init: InitMsg, url?: string | URL): Promise<WorkerPort> {
  if (inNode) {
    const { Worker } = await nodeBuiltin<typeof import('node:worker_threads')>('worker_threads');
    const w = new Worker(url ?? new URL('./worker.js', import.meta.url));
    const port = new WorkerPort(
      (m) => w.postMessage(m),
      () => void w.terminate(),
      (on) => (on ? w.ref() : w.unref()),
    );
    w.on('message', (m: DoneMsg | ReadyMsg) => port.answer(m));
    w.on('error', (e) => port.fail(e));
    w.on('exit', (code) => port.fail(new Error(`cpu worker exited (${code})`)));
    w.postMessage(init);
    // the worker keeps the process alive until it has started (a call is waiting for it); then an
    // idle pool never does (a 'message' listener refs the worker's port again, so this comes after)
    await port.ready.finally(() => w.unref());
    return port;
  }
  // this exact form is what bundlers (Vite, webpack) recognise and emit the worker for
  const w = url ? new Worker(url, { type: 'module' }) : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const port = new WorkerPort(
    (m) => w.postMessage(m),
    () => w.terminate(),
    () => undefined,
  );
  w.onmessage = (ev: MessageEvent<DoneMsg | ReadyMsg>) => port.answer(ev.data);
  w.onerror = (ev) => port.fail(new Error(`cpu worker error: ${ev.message}`));
  w.postMessage(init);
  // a browser starts a worker made by a Web Worker through that worker's event loop: a calling
  // thread that blocks at a barrier (a Web Worker beside the pool) before its new workers have
  // started would wait for them forever, so a browser pool is used only once every worker answered
  await port.ready;
  return port;
}
