/// <reference types="@webgpu/types" />
import { TilewiseError } from '../errors.js';
import { BufferUsage, type GpuContext } from './device.js';
import type { PassTimer } from './run.js';
import { createBuffer, readBuffers, releaseBuffer } from './tensor.js';

/**
 * GPU time of kernel calls from `timestamp-query`: pass the timer as `KernelOptions.timer`, and
 * every compute pass the call runs writes a begin and an end timestamp; `read()` sums the pass
 * durations. Kernels with several passes (unfused: QK, softmax, AV) are covered by the same
 * timer. Needs a device created with 'timestamp-query' (device.ts requests it when offered).
 */
export class GpuTimer implements PassTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuf: GPUBuffer;
  private used = 0;
  private overflow = false;

  constructor(
    private readonly ctx: GpuContext,
    readonly maxPasses = 16,
  ) {
    if (!GpuTimer.supported(ctx)) throw new TilewiseError('webgpu', "GPU timing needs the 'timestamp-query' feature, which this device lacks", ctx.description);
    this.querySet = ctx.device.createQuerySet({ type: 'timestamp', count: 2 * maxPasses, label: 'tilewise timer' });
    this.resolveBuf = createBuffer(ctx.device, 16 * maxPasses, BufferUsage.QUERY_RESOLVE | BufferUsage.COPY_SRC, 'tilewise timer resolve');
  }

  static supported(ctx: GpuContext): boolean {
    return ctx.features.has('timestamp-query');
  }

  /** Passes recorded since the last `read()`. */
  get passes(): number {
    return this.used;
  }

  passWrites(): GPUComputePassTimestampWrites | undefined {
    if (this.used >= this.maxPasses) {
      this.overflow = true;
      return undefined;
    }
    const i = this.used++;
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Waits for the recorded passes, returns their summed GPU time in ms and empties the timer. */
  async read(): Promise<number> {
    const n = this.used;
    const overflow = this.overflow;
    this.used = 0;
    this.overflow = false;
    if (overflow) throw new TilewiseError('webgpu', `the timer holds ${this.maxPasses} passes; the call ran more`);
    if (n === 0) return 0;
    const enc = this.ctx.device.createCommandEncoder();
    enc.resolveQuerySet(this.querySet, 0, 2 * n, this.resolveBuf, 0);
    const [bytes] = await readBuffers(this.ctx.device, [{ buffer: this.resolveBuf, bytes: 16 * n }], enc);
    const t = new BigUint64Array(bytes!);
    let ns = 0n;
    // a driver may reorder or reset its clock between passes: a negative span counts as nothing
    for (let i = 0; i < n; i++) if (t[2 * i + 1]! > t[2 * i]!) ns += t[2 * i + 1]! - t[2 * i]!;
    return Number(ns) / 1e6;
  }

  destroy(): void {
    this.querySet.destroy();
    releaseBuffer(this.resolveBuf);
  }
}
