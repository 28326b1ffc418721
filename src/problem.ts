import { type CompiledPattern, compilePattern } from './patterns/compile.js';
import type { PatternSpec } from './patterns/spec.js';
import type { RopeSpec } from './rope.js';
import { tileCount } from './schedule.js';

/** One sequence of a batch (or of a varlen pack): its row offsets and token grids. */
export interface SeqSpan {
  /** Batch index handed to mask functions (the sequence index for varlen packs). */
  readonly b: number;
  readonly qOff: number;
  readonly kOff: number;
  readonly qGrid: readonly number[];
  readonly kGrid: readonly number[];
}

/**
 * A validated, normalised attention problem, shared by every backend. Tensors are heads-last
 * `[rows, H, D]` once the batch and token axes are flattened; `seqs` says which rows form a sequence.
 */
export interface AttnProblem {
  readonly heads: number;
  readonly kvHeads: number;
  readonly dim: number;
  readonly dimV: number;
  readonly qRows: number;
  readonly kRows: number;
  readonly seqs: readonly SeqSpan[];
  readonly scale: number;
  /** 0 = off; otherwise scores become softcap * tanh(score / softcap). */
  readonly softcap: number;
  /** Additive bias [biasBatch, biasHeads, Nq, Nk] (biasBatch, biasHeads in {1, full}). */
  readonly bias?: { readonly data: Float32Array; readonly batch: number; readonly heads: number };
  /** NATTEN relative positional bias [H, 2K0-1, (2K1-1, ...)], indexed by key - query in a group. */
  readonly rpb?: { readonly data: Float32Array; readonly kernel: readonly number[] };
  /** Rotary embedding applied to q and k inside the kernel (inputs are un-rotated). */
  readonly rope?: RopeSpec;
  readonly pattern: PatternSpec;
  readonly qTile: readonly number[];
  readonly kvTile: readonly number[];
}

export interface AttnBuffers {
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly out: Float32Array;
  readonly lse: Float32Array;
}

/** Where a work item sits (ItemSpace.decode). */
export interface ItemAt {
  seq: number;
  h: number;
  g: number;
  tile: number;
}

/**
 * Work items (sequence, head, group, query tile) numbered densely, so worker threads can claim
 * ranges of them. Compiled patterns are cached per distinct sequence shape. `side` 'k' numbers key
 * tiles instead (the transposed walk of the WebGPU backward's dK/dV pass).
 */
export class ItemSpace {
  readonly total: number;
  private readonly starts: number[] = [];
  private readonly compiled: CompiledPattern[] = [];
  private readonly groupStarts: number[][] = [];

  constructor(
    readonly problem: AttnProblem,
    readonly side: 'q' | 'k' = 'q',
  ) {
    const cache = new Map<string, CompiledPattern>();
    let total = 0;
    for (const s of problem.seqs) {
      const key = `${s.qGrid.join('x')}|${s.kGrid.join('x')}`;
      let p = cache.get(key);
      if (!p) {
        p = compilePattern(problem.pattern, { qGrid: s.qGrid, kGrid: s.kGrid, heads: problem.heads });
        cache.set(key, p);
      }
      this.compiled.push(p);
      const gs: number[] = [];
      let perHead = 0;
      for (const grp of p.groups) {
        gs.push(perHead);
        perHead += side === 'q' ? tileCount(grp.qLen, tileFor(problem.qTile, grp.qLen.length)) : tileCount(grp.kLen, tileFor(problem.kvTile, grp.kLen.length));
      }
      gs.push(perHead);
      this.groupStarts.push(gs);
      this.starts.push(total);
      total += perHead * problem.heads;
    }
    this.starts.push(total);
    this.total = total;
  }

  pattern(seq: number): CompiledPattern {
    return this.compiled[seq]!;
  }

  /** Item `item`'s sequence, head, dilation group and tile, written into `out` when given (the CPU item loops reuse one). */
  decode(item: number, out: ItemAt = { seq: 0, h: 0, g: 0, tile: 0 }): ItemAt {
    let lo = 0;
    let hi = this.problem.seqs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= item) lo = mid;
      else hi = mid - 1;
    }
    const seq = lo;
    const gs = this.groupStarts[seq]!;
    const perHead = gs[gs.length - 1]!;
    let r = item - this.starts[seq]!;
    const h = Math.floor(r / perHead);
    r -= h * perHead;
    let g = 0;
    while (gs[g + 1]! <= r) g++;
    out.seq = seq;
    out.h = h;
    out.g = g;
    out.tile = r - gs[g]!;
    return out;
  }
}

/** A tile shape of the right rank: patterns over flattened tokens use the 1-D entry. */
export function tileFor(tile: readonly number[], rank: number): readonly number[] {
  return tile.length === rank ? tile : [tile.reduce((a, b) => a * b, 1)];
}
