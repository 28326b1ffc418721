import v8 from 'node:v8';

/**
 * Node 20 validates WebAssembly relaxed SIMD (the fused multiply-add of the CPU tile kernels) only
 * behind a V8 flag; newer Node and Chromium have it by default. The CLI and the benches are
 * applications, so they turn it on for their own process before any module is compiled. The
 * library never changes engine flags: it validates and takes what the engine gives.
 */
export function enableRelaxedSimd(): void {
  try {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  } catch {
    // an engine without the flag has the feature on or off for good: nothing to do
  }
}
