/// <reference types="@webgpu/types" />
import { TilewiseError, check } from '../errors.js';
import type { FusedTuning } from './fused.js';
import { cachedTuningFor, storedTuningFor } from './tuning.js';

/**
 * One GPU device for the whole library, acquired lazily. In Node the adapter comes from the npm
 * package `webgpu` (Dawn); in browsers from `navigator.gpu`; a caller may hand in its own device.
 *
 * Loss: when the device is lost (driver reset, `device.destroy()`), the next call into the backend
 * throws a TilewiseError naming the reason, once; the call after that acquires a fresh device.
 */

/** WebGPU flag values (fixed by the spec), so nothing depends on globals a Node host may lack. */
export const BufferUsage = { MAP_READ: 1, MAP_WRITE: 2, COPY_SRC: 4, COPY_DST: 8, UNIFORM: 64, STORAGE: 128, QUERY_RESOLVE: 512 } as const;
export const MapMode = { READ: 1, WRITE: 2 } as const;
export const ShaderStage = { COMPUTE: 4 } as const;

/** The limits kernels size themselves from (a plain snapshot of `device.limits`). */
export interface GpuLimits {
  readonly maxComputeWorkgroupStorageSize: number;
  readonly maxComputeInvocationsPerWorkgroup: number;
  readonly maxComputeWorkgroupSizeX: number;
  readonly maxComputeWorkgroupsPerDimension: number;
  readonly maxStorageBufferBindingSize: number;
  readonly maxBufferSize: number;
  readonly maxStorageBuffersPerShaderStage: number;
}

const LIMIT_NAMES: readonly (keyof GpuLimits)[] = [
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
];

export interface GpuContext {
  readonly device: GPUDevice;
  readonly limits: GpuLimits;
  /** Features the device was created with: OPTIONAL_FEATURES the adapter has, plus any Dawn enables itself. */
  readonly features: ReadonlySet<string>;
  /** Adapter description (vendor, architecture, device), for reports. */
  readonly description: string;
  /** 'cpu' for software adapters (llvmpipe/lavapipe, SwiftShader, WARP): kernels pick other tile configs. */
  readonly adapterClass: 'cpu' | 'gpu';
  readonly userProvided: boolean;
  /** Smallest subgroup size of the adapter when the device has `subgroups`, else 0. */
  readonly subgroupMinSize: number;
  /** The fused-kernel tuning stored for this adapter (`tilewise profile --tune`), if any. */
  readonly tuning?: FusedTuning;
}

/**
 * Features requested whenever the adapter has them: GPU timestamps for the profiler, and the
 * subgroup and f16 paths kernels may specialise on (design.md 4).
 */
export const OPTIONAL_FEATURES = ['timestamp-query', 'subgroups', 'shader-f16'] as const;

interface Held {
  ctx: GpuContext;
  /** Set when the device's `lost` promise resolves; reported by the next call. */
  lost?: string;
}

// The object `create()` returns owns Dawn's instance while adapters and devices only point into
// it: if it were garbage-collected with work pending the process would crash. Keep it forever.
let gpuSingleton: GPU | undefined;
let held: Held | undefined;
let acquiring: Promise<Held> | undefined;

function snapshotLimits(l: GPUSupportedLimits): GpuLimits {
  const out: Record<string, number> = {};
  for (const n of LIMIT_NAMES) out[n] = Number((l as unknown as Record<string, number>)[n]);
  return out as unknown as GpuLimits;
}

async function gpuEntry(): Promise<GPU> {
  if (gpuSingleton) return gpuSingleton;
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return (gpuSingleton = nav.gpu);
  if (typeof process === 'undefined' || !process.versions?.node)
    throw new TilewiseError('webgpu', 'is not available in this environment (no navigator.gpu)');
  const name = 'webgpu'; // a variable, so bundlers and tsc do not require the optional package
  let mod: { create(opts: string[]): GPU; globals: Record<string, unknown> };
  try {
    mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ name)) as typeof mod;
  } catch (e) {
    throw new TilewiseError('webgpu', "needs the npm package 'webgpu' (Dawn for Node)", (e as Error).message);
  }
  for (const [k, v] of Object.entries(mod.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  // Dawn rounds timestamps to 2^16 ns by default (a browser fingerprinting guard); the profiler
  // needs them exact, and a Node process has no page to protect.
  gpuSingleton = mod.create(['disable-dawn-features=timestamp_quantization']);
  return gpuSingleton;
}

function watch(h: Held): Held {
  void h.ctx.device.lost.then((info) => {
    h.lost = `${info.reason ?? 'unknown'}${info.message ? `: ${info.message}` : ''}`;
  });
  return h;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software|warp/i;
const classOf = (description: string, fallback?: boolean): 'cpu' | 'gpu' => (fallback || SOFTWARE.test(description) ? 'cpu' : 'gpu');

function describe(info: GPUAdapterInfo | undefined): string {
  if (!info) return 'unknown adapter';
  const parts = [info.vendor, info.architecture, info.device, info.description].filter((x) => x);
  return parts.length ? parts.join(' / ') : 'unknown adapter';
}

function subgroupMin(device: GPUDevice, info: GPUAdapterInfo | undefined): number {
  const n = Number((info as { subgroupMinSize?: number } | undefined)?.subgroupMinSize);
  return device.features.has('subgroups') && Number.isInteger(n) && n > 0 ? n : 0;
}

async function acquire(): Promise<Held> {
  const gpu = await gpuEntry();
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new TilewiseError('webgpu', 'found no GPU adapter');
  // ask for everything the adapter offers on the limits kernels size themselves from
  const requiredLimits: Record<string, number> = {};
  for (const n of LIMIT_NAMES) {
    const x = Number((adapter.limits as unknown as Record<string, number>)[n]);
    if (Number.isFinite(x)) requiredLimits[n] = x;
  }
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const description = describe(adapter.info);
  const fallback = (adapter.info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter;
  const tuning = await storedTuningFor(description);
  return watch({
    ctx: {
      device,
      limits: snapshotLimits(device.limits),
      features: new Set([...device.features].map(String)),
      description,
      adapterClass: classOf(description, fallback),
      userProvided: false,
      subgroupMinSize: subgroupMin(device, adapter.info),
      ...(tuning ? { tuning } : {}),
    },
  });
}

/** Throws (once) if the held device was lost; afterwards the next call acquires a new one. */
function reportLoss(): void {
  if (held?.lost !== undefined) {
    const reason = held.lost;
    held = undefined;
    throw new TilewiseError('webgpu', 'the GPU device was lost; the next call acquires a new one', reason);
  }
}

/** The shared device and what kernels need to know about it, acquired on first use. */
export async function getContext(): Promise<GpuContext> {
  reportLoss();
  if (held) return held.ctx;
  if (!acquiring) {
    acquiring = acquire().finally(() => {
      acquiring = undefined;
    });
    const h = await acquiring;
    held = h;
    return h.ctx;
  }
  return (await acquiring).ctx;
}

export async function getDevice(): Promise<GPUDevice> {
  return (await getContext()).device;
}

/** Uses the caller's device from now on (undefined: back to the library's own, acquired lazily). */
export function setDevice(device: GPUDevice | undefined): void {
  if (device === undefined) {
    held = undefined;
    return;
  }
  const d = device as unknown as Partial<GPUDevice> | null;
  check(typeof d === 'object' && d !== null && typeof d.createBuffer === 'function' && typeof d.queue === 'object' && d.features !== undefined, 'device', 'must be a GPUDevice (or undefined to drop it)', typeof device);
  const features = new Set<string>([...device.features].map(String));
  const description = describe(device.adapterInfo);
  // synchronous: a tuning file already loaded by an earlier acquisition applies, none is read here
  const tuning = cachedTuningFor(description);
  held = watch({
    ctx: { device, limits: snapshotLimits(device.limits), features, description, adapterClass: classOf(description), userProvided: true, subgroupMinSize: subgroupMin(device, device.adapterInfo), ...(tuning ? { tuning } : {}) },
  });
}

/**
 * After a failed GPU call: if the device is (or is about to be) lost, turn the failure into the
 * loss report. Dawn resolves `lost` asynchronously, so give it a moment.
 */
export async function lossOr(ctx: GpuContext, err: unknown): Promise<never> {
  const lost = await Promise.race([ctx.device.lost.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20))]);
  if (lost && held?.ctx === ctx) {
    await Promise.resolve();
    reportLoss();
  }
  if (lost) throw new TilewiseError('webgpu', 'the GPU device was lost; the next call acquires a new one', String((err as Error)?.message ?? err));
  throw err;
}

/** true when a device can be had, else the reason (never throws). */
export async function webgpuAvailable(): Promise<true | string> {
  if (held?.lost !== undefined) return true; // a new device comes after the loss is reported
  try {
    await getContext();
    return true;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}
