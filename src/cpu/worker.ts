import { nodeBuiltin } from '../node-builtin.js';
import { ItemSpace } from '../problem.js';
import { type PhaseMsg, phaseContext, runChain } from './kernels.js';
import type { TileKernels } from './tile-kernels.js';
import { kernelsOn, setScalarKernels } from './tile-kernels.js';
import { scalarKernels } from './tile-scalar.js';
import type { DoneMsg, InitMsg, ReadyMsg } from './worker-port.js';

/**
 * A pool thread (Node worker_threads or a browser module Worker): instantiates the tile kernels
 * over the shared memory once, then for every phase claims work items through the job's counter
 * and answers with the phase id after its last write.
 */
const inNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

// the scalar twin, statically here (see setScalarKernels)
setScalarKernels(scalarKernels);

let memory: WebAssembly.Memory | undefined;
let kernels: TileKernels | undefined;
let thread = 0;

function handle(m: InitMsg | ({ type: 'phase' } & PhaseMsg), reply: (d: DoneMsg | ReadyMsg) => void): void {
  if (m.type === 'init') {
    memory = m.memory;
    thread = m.thread;
    kernels = kernelsOn(m.variant, m.memory, m.module);
    reply({ type: 'ready' });
    return;
  }
  try {
    if (!kernels || !memory) throw new Error('worker used before init');
    const [K, mem] = [kernels, memory];
    // one item space for the message's phases, built inside runChain so a failure still reaches its barriers
    let space: ItemSpace | undefined;
    runChain(mem, m, (kind) => phaseContext(K, mem, { ...m, kind }, thread, (space ??= new ItemSpace(m.problem))));
    reply({ type: 'done', id: m.id });
  } catch (e) {
    reply({ type: 'done', id: m.id, error: e instanceof Error ? `${e.message}\n${e.stack}` : String(e) });
  }
}

// no top-level await: bundlers emit browser workers in formats without it (Vite: iife); messages
// that arrive before the port has its listener wait in the port's queue
if (inNode) {
  void nodeBuiltin<typeof import('node:worker_threads')>('worker_threads').then(({ parentPort }) =>
    parentPort!.on('message', (m: InitMsg | ({ type: 'phase' } & PhaseMsg)) => handle(m, (d) => parentPort!.postMessage(d))),
  );
} else {
  const scope = globalThis as unknown as { onmessage: (ev: MessageEvent) => void; postMessage: (m: unknown) => void };
  scope.onmessage = (ev) => handle(ev.data, (d) => scope.postMessage(d));
}
