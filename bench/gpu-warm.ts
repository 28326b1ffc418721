import type { GpuContext } from '../src/webgpu/device.js';

/**
 * Keeps the GPU busy for `ms` before a timed series: an idle GPU drops its clocks, and a few short
 * timed calls after host work (the float64 checks) never raise them again. On the H200 this turned
 * 2-D NA k31 from 45.4 ms into 16.9 ms for the same kernel, and made an earlier "permuted layout is
 * 2.4x faster" reading on the H100 an artifact of call order. Shared by bench/gpu.ts and
 * bench/gpu-blocking.ts.
 */
export async function warmUp(ctx: Pick<GpuContext, 'device'>, call: () => Promise<unknown>, ms = 500): Promise<void> {
  for (const s = performance.now(); performance.now() - s < ms; ) {
    await call();
    await ctx.device.queue.onSubmittedWorkDone();
  }
}
