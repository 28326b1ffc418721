import { parentPort } from 'node:worker_threads';
import { ItemSpace } from '../problem.js';
import { type Job, CHUNK } from './pool.js';
import { makeScratch, runRange } from './kernels.js';

/** A pool thread: claims chunks of work items through a shared atomic counter until none are left. */
parentPort!.on('message', (job: Job) => {
  try {
    const space = new ItemSpace(job.problem);
    const rank = space.pattern(0).geometry.qShape.length;
    const sc = makeScratch(job.kind, job.problem, rank);
    const counter = new Int32Array(job.counter);
    for (;;) {
      const start = Atomics.add(counter, 0, CHUNK);
      if (start >= space.total) break;
      runRange(job.kind, job.problem, job.bufs, space, start, Math.min(space.total, start + CHUNK), sc);
    }
    parentPort!.postMessage({ ok: true });
  } catch (e) {
    parentPort!.postMessage({ ok: false, error: e instanceof Error ? `${e.message}\n${e.stack}` : String(e) });
  }
});
