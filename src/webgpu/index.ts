/** The WebGPU backend: device management, the fused forward kernel, NATTEN's naive and unfused kernels, GPU tensor helpers, GPU timing and stored tunings. */
export { OPTIONAL_FEATURES, getContext, getDevice, setDevice, webgpuAvailable, type GpuContext, type GpuLimits } from './device.js';
export { FUSED_TUNING, fusedCanRun, runWebGPUFused, runWebGPUFusedTensors, setFusedTuning, type FusedGpuOptions, type FusedTuning } from './fused.js';
export {
  UNFUSED_TUNING,
  naiveCanRun,
  runWebGPUNaAV,
  runWebGPUNaAVTensors,
  runWebGPUNaive,
  runWebGPUNaiveTensors,
  runWebGPUNaQK,
  runWebGPUNaQKTensors,
  runWebGPUUnfused,
  runWebGPUUnfusedTensors,
  setUnfusedTuning,
  unfusedCanRun,
  type UnfusedTuning,
} from './na.js';
export { type KernelOptions } from './run.js';
export { bufferStats, fromGpu, releaseTensor, resetPeakBytes, toGpu, wrapBuffer, type GpuDType, type GpuTensor } from './tensor.js';
export { GpuTimer } from './timing.js';
export { mergeAttentionsGpu } from './merge.js';
export { setTuningFile, type TuningEntry } from './tuning.js';
export { BACKWARD_TUNING, runWebGPUBackward, runWebGPUBackwardTensors, setBackwardTuning, type BackwardTuning, type GpuGrads } from './backward.js';
