import type { AttnBuffers, AttnProblem, ItemSpace } from '../problem.js';
import { tileFor } from '../problem.js';
import { FusedScratch, prod, runFused } from './fused.js';
import { type NAExtra, runNAAV, runNAQK, runNaive } from './na.js';

/** Kernels a CPU thread can run over a range of work items; the same table on the main thread and in workers. */
export type KernelKind = 'fused' | 'naive' | 'naQK' | 'naAV';
export type KernelBuffers = AttnBuffers & Partial<NAExtra>;

/** Largest key box one item loads: the kv tile for the fused walk, the whole union box for unfused. */
function maxKeys(kind: KernelKind, problem: AttnProblem, rank: number): number {
  if (kind === 'fused' || kind === 'naive') return prod(tileFor(problem.kvTile, rank));
  const p = problem.pattern;
  if (p.kind !== 'neighborhood') throw new Error('unfused kernels need a neighborhood pattern');
  const qt = tileFor(problem.qTile, rank);
  return prod(qt.map((t, a) => t + p.kernelSize[a]! + p.stride[a]!));
}

export function scratchBytes(kind: KernelKind, problem: AttnProblem, rank: number): number {
  return FusedScratch.bytes(prod(tileFor(problem.qTile, rank)), maxKeys(kind, problem, rank), problem.dim, problem.dimV, rank);
}

export function makeScratch(kind: KernelKind, problem: AttnProblem, rank: number): FusedScratch {
  return new FusedScratch(prod(tileFor(problem.qTile, rank)), maxKeys(kind, problem, rank), problem.dim, problem.dimV, rank);
}

export function runRange(kind: KernelKind, problem: AttnProblem, bufs: KernelBuffers, space: ItemSpace, start: number, end: number, sc: FusedScratch): void {
  switch (kind) {
    case 'fused':
      return runFused(problem, bufs, space, start, end, sc);
    case 'naive':
      return runNaive(problem, bufs, space, start, end, sc);
    case 'naQK':
      return runNAQK(problem, bufs as AttnBuffers & NAExtra, space, start, end, sc);
    case 'naAV':
      return runNAAV(problem, bufs as AttnBuffers & NAExtra, space, start, end, sc);
  }
}
