/// <reference types="@webgpu/types" preserve="true" />
// Consumers get the WebGPU types the public declarations use (GPUDevice, GPUBuffer, ...).
export {
  attention,
  blockSparseAttention,
  neighborhoodAttention,
  na1d,
  na2d,
  na3d,
  naQK,
  naAV,
  mergeAttentions,
  type AttentionOptions,
  type BlockSparseOptions,
  type NeighborhoodOptions,
  type CommonOptions,
  type Result,
  type GpuResult,
  type Input,
  type BackendName,
} from './api.js';
export {
  attentionBackward,
  blockSparseAttentionBackward,
  neighborhoodAttentionBackward,
  na1dBackward,
  na2dBackward,
  na3dBackward,
  type Grads,
  type BackwardOptions,
} from './backward.js';
export { TilewiseError } from './errors.js';
export { type Tensor, tensor, zeros, randn, relError, isGpuTensor } from './tensor.js';
export * as patterns from './patterns/spec.js';
export type { PatternSpec, MaskFn, Align } from './patterns/spec.js';
export { compilePattern, type CompiledPattern, EMPTY, PARTIAL, FULL } from './patterns/compile.js';
export { buildSchedule, buildTransposedSchedule, kvSchedule, qSchedule, type Schedule, type Visit } from './schedule.js';
export { referenceAttention } from './reference.js';
export type { AttnProblem, SeqSpan } from './problem.js';
export { setCpuThreads, cpuThreads, setCpuKernels, setCpuCallerFlops, setCpuWorkerUrl, cpuInfo, type CpuInfo } from './cpu/pool.js';
export type { KernelVariant } from './cpu/tile-kernels.js';
export * as webgpu from './webgpu/index.js';
export { longHeadsAttention } from './longheads/attention.js';
export { LongHeadsCache } from './longheads/cache.js';
export type { LongHeadsOptions } from './longheads/options.js';
export type { RopeOptions } from './rope.js';
