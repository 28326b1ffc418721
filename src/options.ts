/** The public option and result types, shared by the API, the planner and the backends. */
import type { GpuResult, Impl } from './backends.js';
import type { Align, PatternSpec } from './patterns/spec.js';
import type { RopeOptions } from './rope.js';
import type { Tensor } from './tensor.js';
import type { GpuTensor } from './webgpu/tensor.js';
export type BackendName = 'cpu' | 'webgpu' | 'auto';

export interface CommonOptions {
  /**
   * Where to run (default 'cpu'). 'webgpu' uses the shared device (`webgpu.setDevice` to pass your
   * own) and fails with the reason if it cannot; 'auto' takes WebGPU on a hardware adapter when
   * the kernel can run the problem there, else the CPU.
   */
  backend?: BackendName;
  /** Score scale; default 1 / sqrt(headDim). */
  scale?: number;
  /** Logit soft-capping: scores become softcap * tanh(score / softcap). 0 or absent = off. */
  softcap?: number;
  /** Scan inputs for NaN/Inf first and reject them (costs one pass over the data). */
  checkFinite?: boolean;
  /** Tile shape overrides (query tile, largest key tile), one entry per pattern axis or a scalar. */
  tile?: { q?: number | number[]; kv?: number | number[] };
  /** Write the results into these instead of new ones (GPU tensors when the inputs are). */
  out?: Float32Array | GpuTensor;
  lse?: Float32Array | GpuTensor;
  /**
   * Cancels the call: once it fires, the call rejects with the signal's reason and writes nothing
   * to `out`/`lse`. The CPU engine's workers stop at their next work item (a call on the calling
   * thread alone, in Node, finishes its run first and then rejects); WebGPU checks it before it
   * submits work.
   */
  signal?: AbortSignal;
}

/**
 * Attention inputs: host tensors, or GPU tensors (`webgpu.toGpu`, `webgpu.wrapBuffer`; f32, or f16
 * storage on devices with `shader-f16`), which run on the WebGPU backend and whose results stay on
 * the device as GPU tensors until read (`webgpu.fromGpu`).
 */
export type Input = Tensor | GpuTensor;
export type { GpuResult };

export interface AttentionOptions extends CommonOptions {
  /**
   * true = top-left alignment (PyTorch SDPA's is_causal: key j <= query i); 'bottom-right' aligns
   * the diagonal to the end when Nq != Nk (flash-attn >= 2.1: j <= i + Nk - Nq). Equal when Nq = Nk.
   */
  causal?: boolean | Align;
  /**
   * Sliding window (left, right): key j in [i + off - left, i + off + right], -1 (or any side >= Nk)
   * = unbounded on that side. Combined with `causal` when both are given.
   */
  window?: readonly [number, number];
  /**
   * Where the window is centred when Nq != Nk: off = 0 ('top-left') or Nk - Nq ('bottom-right',
   * flash-attn's window_size, e.g. one decoding query against a KV cache). Default: the causal
   * alignment when `causal` names one, else 'top-left'.
   */
  windowAlign?: Align;
  /** Any pattern (block-sparse, chunks, mask function, compositions); AND-ed with causal/window. */
  pattern?: PatternSpec;
  /** Additive bias [Nq, Nk], [Hb, Nq, Nk] or [Bb, Hb, Nq, Nk] with Hb in {1, H}, Bb in {1, B}. */
  bias?: Tensor;
  /**
   * Rotary embedding applied to q and k inside the kernel (pass them un-rotated): key j at position
   * j, query i at i + Nk - Nq. 1-D tokens only. `ropePositions: 'selected'` (with a chunks pattern)
   * numbers positions by rank in each query tile's chunk list instead, as LongHeads does.
   */
  rope?: RopeOptions;
  ropePositions?: 'absolute' | 'selected';
  /** Varlen packing (batch 1): cumulative query and key sequence lengths. */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;
}

export interface Result {
  out: Tensor;
  lse: Tensor;
}

export interface BlockSparseOptions extends Omit<AttentionOptions, 'pattern'> {
  /** Block mask [nQB, nKB] or [Hm, nQB, nKB], entries 0/1; block edges from `blockSize`. */
  blockMask: { data: ArrayLike<number | boolean>; shape: readonly number[] };
  blockSize: number | readonly [number, number];
}

export interface NeighborhoodOptions extends CommonOptions {
  kernelSize: number | readonly number[];
  dilation?: number | readonly number[];
  stride?: number | readonly number[];
  isCausal?: boolean | readonly boolean[];
  /** NATTEN relative positional bias [H, 2K0-1, ...]; not with causal axes. */
  rpb?: Tensor;
  /**
   * Extra keys/values [B, M, Hk, D|Dv] every query attends to, merged by LSE (host tensors, or GPU
   * tensors of q's dtype with GPU q/k/v: merged on the device).
   */
  additionalKeys?: Tensor | GpuTensor;
  additionalValues?: Tensor | GpuTensor;
  /** Kernel family: fused (default), naive (per-query gather) or unfused (naQK, softmax, naAV). */
  impl?: Impl;
}
