import { RELAXED_LOCAL_PATCH, RELAXED_SHARED, SIMD_LOCAL_PATCH, SIMD_SHARED } from './wasm-modules.generated.js';

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
  scoresTStrided(s: number, qt: number, ld: number, ni: number, k0: number, kStep: number, tk: number, d: number): void;
  softcap(s: number, ld: number, ni: number, tk: number, cap: number): void;
  addGathered(s: number, ld: number, n: number, tk: number, table: number, rowIdx: number, colIdx: number): void;
  maskBox(s: number, ld: number, ni: number, tk: number, rank: number, kCrd: number, lo: number, hi: number): void;
  softmaxStep(s: number, ld: number, ni: number, tk: number, m: number, l: number, alpha: number): void;
  pvAcc(o: number, dv: number, p: number, ld: number, ni: number, tk: number, vRows: number, alpha: number): void;
  pvAccStrided(o: number, dv: number, p: number, ld: number, ni: number, tk: number, v0: number, vStep: number, alpha: number): void;
  finishRows(o: number, dv: number, tq: number, l: number, outRows: number): void;
  softmaxRows(a: number, rows: number, w: number, m: number, l: number, normalize: number): void;
  slicedVisit(s: number, qt: number, ld: number, d: number, dv: number, kRows: number, vRows: number, kCrd: number, rank: number, lo: number, hi: number, ranges: number, n: number, cap: number, m: number, l: number, alpha: number, o: number): void;
  probsT(s: number, ld: number, ni: number, tk: number, lse: number): void;
  dsT(p: number, dp: number, ld: number, ni: number, tk: number, delta: number, sc: number, cap: number): void;
  softcapGrad(dp: number, sc: number, ld: number, ni: number, tk: number, cap: number): void;
  keyAcc(dstRows: number, width: number, p: number, ld: number, ni: number, tk: number, src: number, srcStep: number, coef: number): void;
  scatterAdd(s: number, ld: number, n: number, tk: number, table: number, rowIdx: number, colIdx: number): void;
  rowDots(dst: number, aRows: number, bRows: number, n: number, width: number): void;
  addInto(dst: number, src: number, n: number): void;
  copyRows(from: number, to: number, n: number, width: number): void;
  gatherRows(rows: number, n: number, width: number, dst: number): void;
  ropeRows(dst: number, rows: number, n: number, d: number, half: number, table: number, maxPos: number, pos: number): void;
  sanitize(ptr: number, rows: number, width: number, flags: number): number;
  windowSlots(s: number, ld: number, tq: number, win: number, k1: number, k2: number, ulo0: number, ulo1: number, ulo2: number, u1: number, u2: number, attnRows: number, toS: number): void;
  lanesFromRows(ptr: number, blocks: number, d: number, tmp: number): void;
  rowsFromLanes(ptr: number, blocks: number, d: number, tmp: number): void;
  naLanesBwd(qRows: number, doRows: number, oRows: number, lseRows: number, dqRows: number, lo: number, hi: number, ld: number, n: number, rank: number, kBase: number, vBase: number, dkBase: number, dvBase: number, st0: number, st1: number, st2: number, rowK: number, rowV: number, d: number, dv: number, scale: number, cap: number, sBuf: number, keys: number, lanes: number, rpb: number, drpb: number, rpbRows: number, r0: number, r1: number, r2: number, maxW: number): void;
  naLanes(qRows: number, outRows: number, lseRows: number, lo: number, hi: number, ld: number, n: number, rank: number, kBase: number, vBase: number, st0: number, st1: number, st2: number, rowK: number, rowV: number, d: number, dv: number, scale: number, cap: number, sBuf: number, keys: number, rpb: number, rpbRows: number, r0: number, r1: number, r2: number, qBuf: number, maxW: number, oBuf: number): void;
}

export type KernelVariant = 'relaxed-simd' | 'simd' | 'scalar';

const bytesOf = (b64: string): Uint8Array<ArrayBuffer> => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));

const modules = new Map<string, WebAssembly.Module | null>();

/**
 * The compiled module of a variant for a shared (worker pool) or unshared (one thread) memory, or
 * null where this engine does not validate it (scalar: always null).
 */
export function moduleOf(variant: KernelVariant, shared = true): WebAssembly.Module | null {
  if (variant === 'scalar') return null;
  const key = `${variant}|${shared}`;
  let m = modules.get(key);
  if (m === undefined) {
    const relaxed = variant === 'relaxed-simd';
    const bytes = bytesOf(relaxed ? RELAXED_SHARED : SIMD_SHARED);
    if (!shared) {
      // the unshared build: the same bytes but the memory import's flags (scripts/build-wasm.mjs)
      const [at, value] = relaxed ? RELAXED_LOCAL_PATCH : SIMD_LOCAL_PATCH;
      bytes[at] = value;
    }
    m = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    modules.set(key, m);
  }
  return m;
}

/** Best variant this engine validates: relaxed-SIMD FMA, else plain SIMD, else scalar. */
export const bestVariant = (): KernelVariant => (moduleOf('relaxed-simd', false) ? 'relaxed-simd' : moduleOf('simd', false) ? 'simd' : 'scalar');

export const variantAvailable = (v: KernelVariant): boolean => v === 'scalar' || moduleOf(v, false) !== null;

/** Whether a memory is shared (a SharedArrayBuffer underneath), which picks the module build. */
const isShared = (memory: WebAssembly.Memory): boolean => typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;

let scalar: ((memory: WebAssembly.Memory) => TileKernels) | undefined;
/**
 * Registers the scalar twin (tile-scalar.ts), which only engines without SIMD (and tests) run. The
 * workers import it statically (their bundle is their own); the calling thread imports it on
 * demand (pool.ts), so page bundles keep it out of their entry chunk: 6.6 KB smaller. Not here:
 * a dynamic import in the workers' module graph breaks Vite's default (iife) worker builds.
 */
export function setScalarKernels(f: (memory: WebAssembly.Memory) => TileKernels): void {
  scalar = f;
}

/**
 * Kernels of `variant` bound to `memory` (a module compiled elsewhere may be passed, e.g. to a
 * worker); 'scalar' once registered (setScalarKernels).
 */
export function kernelsOn(variant: KernelVariant, memory: WebAssembly.Memory, module?: WebAssembly.Module | null): TileKernels {
  if (variant === 'scalar') {
    if (!scalar) throw new Error('the scalar kernels are not registered (setScalarKernels)');
    return scalar(memory);
  }
  const m = module ?? moduleOf(variant, isShared(memory));
  if (!m) throw new Error(`wasm kernels '${variant}' do not validate on this engine`);
  return new WebAssembly.Instance(m, { env: { memory } }).exports as unknown as TileKernels;
}
