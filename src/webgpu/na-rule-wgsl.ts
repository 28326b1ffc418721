/**
 * NATTEN's window rule in WGSL, the one copy every WebGPU kernel uses: the naive and unfused
 * neighborhood kernels (na-wgsl.ts) and the in-kernel walks of the fused forward and the backward
 * (analytic.ts). The TypeScript rule is patterns/rules.ts `neighborhoodRule`; test/webgpu.test.ts
 * pins the two to each other on a device.
 *
 * `na_window(x, n, kernel, stride, causal)` is the key window [start, end] of local coordinate x on
 * an axis of one dilation group of length n. Stride runs share the window of a leader: the run's
 * centre (or, causal, its last query, clamped to the axis); a causal window ends at x itself.
 */
export const NA_WINDOW_WGSL = `fn na_window(x: i32, n: i32, kernel: i32, stride: i32, causal: bool) -> vec2<i32> {
  if (causal) {
    let leader = min((x / stride) * stride + stride - 1, n - 1);
    return vec2<i32>(max(0, leader - kernel + 1), x);
  }
  let left = kernel / 2;
  let right = kernel - 1 - left;
  let leader = min((x / stride) * stride + stride / 2, n - 1);
  let start = min(max(leader, left), n - 1 - right) - left;
  return vec2<i32>(start, start + kernel - 1);
}`;
