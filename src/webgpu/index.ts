/** The WebGPU backend: device management, the fused forward kernel and GPU tensor helpers. */
export { getContext, getDevice, setDevice, webgpuAvailable, type GpuContext, type GpuLimits } from './device.js';
export { fusedCanRun, runWebGPUFused, runWebGPUFusedTensors, type FusedGpuOptions } from './fused.js';
export { bufferStats, fromGpu, releaseTensor, toGpu, wrapBuffer, type GpuTensor } from './tensor.js';
