import { type AttentionOptions, type BackendName, type Result, attention } from '../api.js';
import type { LongHeadsConfig } from './options.js';
import { type ChunksSpec, type SelectGeometry, chunkReps, selectLists } from './select.js';

/**
 * What a backend supplies to LongHeads (design.md 4: a backend supplies kernels and buffers): where
 * its tensors live (`T`: host arrays on the CPU, GPU buffers on WebGPU), growable row stores for
 * the decoding cache, and three kernels: chunk representations, chunk selection, attention over the
 * selected chunks. The algorithm (prefill in attention.ts, decode in cache.ts) is written once
 * against this interface; only the chunk lists and the final outputs cross to the host.
 */
export interface LongHeadsOps<T> {
  readonly backend: 'cpu' | 'webgpu';
  /** A host array as a backend tensor (the CPU keeps the array itself). */
  upload(x: Float32Array, shape: readonly number[]): Promise<T>;
  /** Frees a tensor this backend made (upload, reps); a no-op on the CPU. */
  release(x: T): void;
  /** An empty row store of `width` floats per row. */
  store(width: number, label: string): RowStore<T>;
  /** Representations [full, H, D] of the `full` chunks made of query rows [0, full * C) and key rows [kOff, kOff + full * C). */
  reps(s: SeqView<T>, full: number): Promise<T>;
  /** Chunk lists (selectLists' rules and geometry) of q [rows, H, D] against reps [*, H, D]. */
  select(q: T, reps: T, g: SelectGeometry): Promise<ChunksSpec>;
  /** Fused attention of q [n, H, D] over key and value rows [kOff, kOff + kLen); out [1, n, H, D] and lse [1, n, H] on the host. */
  attend(s: SeqView<T>, opts: AttentionOptions): Promise<Result>;
}

/** One sequence as a backend holds it: q [n, H, D]; k and v rows [kOff, kOff + kLen) of [*, Hk, D]. */
export interface SeqView<T> {
  readonly q: T;
  readonly k: T;
  readonly v: T;
  readonly n: number;
  readonly kOff: number;
  readonly kLen: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly dim: number;
}

/** Rows of `width` floats that grow at the end, kept where the backend keeps tensors. */
export interface RowStore<T> {
  readonly length: number;
  /** Appends `rows` rows taken from the host or from a tensor of this backend. */
  push(x: Float32Array | T, rows: number): void;
  /** Rows [0, length) as a tensor of this backend (valid until the next push). */
  view(): T;
  dispose(): void;
}

/** Test knobs of a LongHeads run: poison every GPU output before its kernel writes it. */
export interface LongHeadsRun {
  readonly poison?: boolean;
}

/** A growable float32 store backed by shared memory, so CPU worker threads read it without a copy. */
export class Rows implements RowStore<Float32Array> {
  data = new Float32Array(new SharedArrayBuffer(0));
  length = 0;
  constructor(readonly width: number) {}
  push(src: Float32Array, rows = src.length / this.width): void {
    const total = this.length + rows;
    if (total * this.width > this.data.length) {
      // headroom, so a decode loop after a long append does not copy the whole cache on its first step
      const cap = Math.max(Math.ceil(total * 1.25), (2 * this.data.length) / this.width, 256);
      const grown = new Float32Array(new SharedArrayBuffer(cap * this.width * 4));
      grown.set(this.data.subarray(0, this.length * this.width));
      this.data = grown;
    }
    this.data.set(src.subarray(0, rows * this.width), this.length * this.width);
    this.length = total;
  }
  rows(from = 0, to = this.length): Float32Array {
    return this.data.subarray(from * this.width, to * this.width);
  }
  view(): Float32Array {
    return this.rows();
  }
  dispose(): void {
    this.data = new Float32Array(new SharedArrayBuffer(0));
    this.length = 0;
  }
}

/** The CPU backend: host arrays, the fused CPU engine and host passes (select.ts). */
export function cpuOps(cfg: LongHeadsConfig): LongHeadsOps<Float32Array> {
  const keyRows = (s: SeqView<Float32Array>, x: Float32Array) => x.subarray(s.kOff * s.kvHeads * s.dim, (s.kOff + s.kLen) * s.kvHeads * s.dim);
  return {
    backend: 'cpu',
    upload: async (x) => x,
    release: () => {},
    store: (width) => new Rows(width),
    reps: (s, full) =>
      chunkReps({ q: s.q, k: keyRows(s, s.k), v: keyRows(s, s.v), n: full * cfg.chunkSize, heads: s.heads, kvHeads: s.kvHeads, dim: s.dim }, cfg, full),
    select: async (q, reps, g) => selectLists(q, reps, g, cfg),
    attend: (s, opts) =>
      attention(
        { data: s.q.subarray(0, s.n * s.heads * s.dim), shape: [1, s.n, s.heads, s.dim] },
        { data: keyRows(s, s.k), shape: [1, s.kLen, s.kvHeads, s.dim] },
        { data: keyRows(s, s.v), shape: [1, s.kLen, s.kvHeads, s.dim] },
        { ...opts, backend: 'cpu' },
      ),
  };
}

/** Whether a backend choice runs LongHeads on WebGPU ('auto': on a hardware adapter only). */
async function onGpu(backend: BackendName): Promise<boolean> {
  if (backend === 'cpu') return false;
  if (backend === 'webgpu') return true;
  const gpu = await import('../webgpu/index.js');
  return (await gpu.webgpuAvailable()) === true && (await gpu.getContext()).adapterClass === 'gpu';
}

/** The backend a LongHeads call runs on; the WebGPU module is loaded only when it is chosen. */
export async function opsFor(cfg: LongHeadsConfig, run: LongHeadsRun = {}): Promise<LongHeadsOps<unknown>> {
  if (!(await onGpu(cfg.backend))) return cpuOps(cfg) as LongHeadsOps<unknown>;
  const { gpuOps } = await import('../webgpu/longheads.js');
  return (await gpuOps(cfg, run)) as LongHeadsOps<unknown>;
}
