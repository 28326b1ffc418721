import { RELAXED_WASM, SIMD_WASM } from './wasm-modules.generated.js';
import { scalarKernels } from './tile-scalar.js';

/**
 * The tile-kernel interface of the CPU engine: the arithmetic of one visit (Q.K^T, score hooks,
 * mask, online softmax, P.V) over byte offsets into one shared memory. Implemented by the
 * WebAssembly build of wasm/tile.ts (relaxed SIMD or plain SIMD) and, for engines without SIMD,
 * by a scalar TypeScript twin (tile-scalar.ts) with the same contract. Layouts: wasm/tile.ts. Score
 * rows hold `ld` lanes (query rows); a call works on `ni` of them (a multiple of 4) from where its
 * pointers start, so a visit can be restricted to the query rows that need its keys.
 */
export interface TileKernels {
  loadQT(qt: number, rows: number, tq: number, tqPad: number, d: number, scale: number): void;
  scoresT(s: number, qt: number, ld: number, ni: number, kRows: number, tk: number, d: number): void;
  softcap(s: number, ld: number, ni: number, tk: number, cap: number): void;
  addGathered(s: number, ld: number, n: number, tk: number, table: number, rowIdx: number, colIdx: number): void;
  maskBox(s: number, ld: number, ni: number, tk: number, rank: number, kCrd: number, lo: number, hi: number): void;
  softmaxStep(s: number, ld: number, ni: number, tk: number, m: number, l: number, alpha: number): void;
  pvAcc(o: number, dv: number, p: number, ld: number, ni: number, tk: number, vRows: number, alpha: number): void;
  finishRows(o: number, dv: number, tq: number, l: number, outRows: number): void;
  softmaxRows(a: number, rows: number, w: number, m: number, l: number, normalize: number): void;
}

export type KernelVariant = 'relaxed-simd' | 'simd' | 'scalar';

const bytesOf = (b64: string): Uint8Array<ArrayBuffer> => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));

const modules = new Map<KernelVariant, WebAssembly.Module | null>();

/** The compiled module of a variant, or null where this engine does not validate it (scalar: always null). */
export function moduleOf(variant: KernelVariant): WebAssembly.Module | null {
  if (variant === 'scalar') return null;
  let m = modules.get(variant);
  if (m === undefined) {
    const bytes = bytesOf(variant === 'relaxed-simd' ? RELAXED_WASM : SIMD_WASM);
    m = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    modules.set(variant, m);
  }
  return m;
}

/** Best variant this engine validates: relaxed-SIMD FMA, else plain SIMD, else scalar. */
export const bestVariant = (): KernelVariant => (moduleOf('relaxed-simd') ? 'relaxed-simd' : moduleOf('simd') ? 'simd' : 'scalar');

export const variantAvailable = (v: KernelVariant): boolean => v === 'scalar' || moduleOf(v) !== null;

/** Kernels of `variant` bound to `memory` (a module compiled elsewhere may be passed, e.g. to a worker). */
export function kernelsOn(variant: KernelVariant, memory: WebAssembly.Memory, module?: WebAssembly.Module | null): TileKernels {
  if (variant === 'scalar') return scalarKernels(memory);
  const m = module ?? moduleOf(variant);
  if (!m) throw new Error(`wasm kernels '${variant}' do not validate on this engine`);
  return new WebAssembly.Instance(m, { env: { memory } }).exports as unknown as TileKernels;
}
