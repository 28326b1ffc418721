/**
 * The public forward entry points: thin wrappers that plan a call (plan.ts) and run it on the
 * chosen backend (backends.ts); types live in options.ts, the backward in backward.ts.
 */
import { throwIfAborted } from './abort.js';
import { TilewiseError, check } from './errors.js';
import type { AttentionOptions, BackendName, BlockSparseOptions, CommonOptions, Input, NeighborhoodOptions, Result } from './options.js';
import { blockSparseAsAttention, checkInputsFinite, planAttention, planNA } from './plan.js';
import type { AttnProblem } from './problem.js';
import { type Tensor, dtypeOf, isGpuTensor, numel } from './tensor.js';
import type { GpuTensor } from './webgpu/tensor.js';
import { checkDest, checkFinite, checkGpuTensor, checkTensor } from './validate.js';
import { type GpuKind, type GpuResult, chooseBackend, naAVOnly, naQKOnly, runGpuTensors } from './backends.js';

export type { AttentionOptions, BackendName, BlockSparseOptions, CommonOptions, GpuResult, Input, NeighborhoodOptions, Result };
export { blockSparseAsAttention, checkPattern, planAttention, planNA, planShapes } from './plan.js';

/** checkFinite on GPU tensors: one read-back each (opt-in: it costs the transfer). */
async function checkGpuFinite(ts: GpuTensor[]): Promise<void> {
  const { fromGpu } = await import('./webgpu/index.js');
  const names = ['q', 'k', 'v'];
  for (let i = 0; i < ts.length; i++) checkFinite({ data: await fromGpu(ts[i]!), shape: ts[i]!.shape }, names[i]!);
}

/** Runs a kernel family on the resolved backend (GPU tensors: on WebGPU, results left there). */
async function runOn(opts: CommonOptions, problem: AttnProblem, q: Input, k: Input, v: Input, lead: number[], kind: GpuKind): Promise<Result | GpuResult> {
  throwIfAborted(opts.signal);
  if (isGpuTensor(q)) {
    check(opts.backend !== 'cpu', 'backend', "GPU tensors run on 'webgpu' (or 'auto'/unset), not 'cpu'");
    if (opts.checkFinite) await checkGpuFinite([q, k as GpuTensor, v as GpuTensor]);
    return runGpuTensors(problem, q, k as GpuTensor, v as GpuTensor, lead, opts, kind);
  }
  const { backend } = await chooseBackend(opts.backend, problem, kind);
  return backend.run(kind, problem, q, k as Tensor, v as Tensor, lead, opts);
}

/**
 * Exact attention `softmax(scale * q k^T + bias) v` restricted to a pattern, fused (never
 * materialising scores): q [B, ...tokens, H, D], k/v [B, ...tokensK, Hk, D|Dv].
 */
export async function attention(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionOptions): Promise<Result>;
export async function attention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts?: AttentionOptions): Promise<GpuResult>;
export async function attention(q: Input, k: Input, v: Input, opts: AttentionOptions = {}): Promise<Result | GpuResult> {
  const { s, problem } = planAttention(q, k, v, opts);
  return runOn(opts, problem, q, k, v, [s.batch, ...s.qGrid], 'fused');
}

/** Block-sparse attention: only blocks set in the mask are computed; the rest are never visited. */
export async function blockSparseAttention(q: Tensor, k: Tensor, v: Tensor, opts: BlockSparseOptions): Promise<Result>;
export async function blockSparseAttention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: BlockSparseOptions): Promise<GpuResult>;
export async function blockSparseAttention(q: Input, k: Input, v: Input, opts: BlockSparseOptions): Promise<Result | GpuResult> {
  return attention(q as Tensor, k as Tensor, v as Tensor, blockSparseAsAttention(opts)); // either kind: the overloads share one body
}

/** Neighborhood attention over 1-, 2- or 3-D token grids with NATTEN's semantics. */
export async function neighborhoodAttention(q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions, rank?: number): Promise<Result>;
export async function neighborhoodAttention(q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: NeighborhoodOptions, rank?: number): Promise<GpuResult>;
export async function neighborhoodAttention(q: Input, k: Input, v: Input, opts: NeighborhoodOptions, rank?: number): Promise<Result | GpuResult> {
  const { s, problem } = planNA(q, k, v, opts, rank);
  const impl = opts.impl ?? 'fused';
  check(impl === 'fused' || impl === 'naive' || impl === 'unfused', 'impl', "must be 'fused', 'naive' or 'unfused'", String(impl));
  const extra = opts.additionalKeys !== undefined || opts.additionalValues !== undefined;
  if (extra) {
    // NATTEN's additional_keys: the neighborhood and a dense pass over the extra tokens, merged by LSE
    const gpuIn = isGpuTensor(q);
    const ak = opts.additionalKeys as unknown;
    const av = opts.additionalValues as unknown;
    if (gpuIn) {
      checkGpuTensor(ak, 'additionalKeys');
      checkGpuTensor(av, 'additionalValues');
      check(dtypeOf(ak) === dtypeOf(q) && dtypeOf(av) === dtypeOf(q), 'additionalKeys', 'and additionalValues must have the dtype of q', `${dtypeOf(ak)}, ${dtypeOf(av)}`);
    } else {
      checkTensor(ak, 'additionalKeys');
      checkTensor(av, 'additionalValues');
    }
    const [akS, avS] = [(ak as Input).shape, (av as Input).shape];
    check(akS.length === 4, 'additionalKeys', 'must be [batch, tokens, kvHeads, headDim]');
    check(akS[0] === s.batch && akS[2] === s.kvHeads && akS[3] === s.dim, 'additionalKeys', 'batch, heads and head dim must match k', akS.join('x'));
    check(avS.length === 4 && avS[0] === s.batch && avS[1] === akS[1] && avS[2] === s.kvHeads && avS[3] === s.dimV, 'additionalValues', 'must be [batch, tokens, kvHeads, dimV] matching additionalKeys and v', avS.join('x'));
    const { out: _o, lse: _l, additionalKeys: _k, additionalValues: _v, ...rest } = opts;
    const qFlat = { ...q, shape: [s.batch, numel(s.qGrid), s.heads, s.dim] };
    if (gpuIn) {
      check(opts.backend !== 'cpu', 'backend', "GPU tensors run on 'webgpu' (or 'auto'/unset), not 'cpu'");
      const gpu = await import('./webgpu/index.js');
      const na = await neighborhoodAttention(q, k as GpuTensor, v as GpuTensor, rest as NeighborhoodOptions, rank);
      try {
        const cross = await attention(qFlat as GpuTensor, ak as GpuTensor, av as GpuTensor, { backend: opts.backend, scale: problem.scale, softcap: problem.softcap });
        try {
          const crossShaped = { out: { ...cross.out, shape: na.out.shape }, lse: { ...cross.lse, shape: na.lse.shape } };
          return await gpu.mergeAttentionsGpu(na, crossShaped, { ...(opts.out ? { out: opts.out as GpuTensor } : {}), ...(opts.lse ? { lse: opts.lse as GpuTensor } : {}) });
        } finally {
          [cross.out, cross.lse].forEach(gpu.releaseTensor);
        }
      } finally {
        [na.out, na.lse].forEach(gpu.releaseTensor);
      }
    }
    checkDest(opts.out, problem.qRows * s.heads * s.dimV, 'out');
    checkDest(opts.lse, problem.qRows * s.heads, 'lse');
    checkInputsFinite(opts, [
      [ak as Tensor, 'additionalKeys'],
      [av as Tensor, 'additionalValues'],
    ]);
    const na = await neighborhoodAttention(q as Tensor, k as Tensor, v as Tensor, rest as NeighborhoodOptions, rank);
    const cross = await attention(qFlat as Tensor, ak as Tensor, av as Tensor, { backend: opts.backend, scale: problem.scale, softcap: problem.softcap });
    return mergeAttentions([na, cross].map((r) => ({ out: { data: r.out.data, shape: na.out.shape }, lse: { data: r.lse.data, shape: na.lse.shape } })), opts);
  }
  return runOn(opts, problem, q, k, v, [s.batch, ...s.qGrid], impl);
}

export const na1d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 1);
export const na2d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 2);
export const na3d = (q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<Result> => neighborhoodAttention(q, k, v, opts, 3);

/**
 * NATTEN's `qk` op: scores of each query against its window, [B, ...tokens, H, prod(kernelSize)]
 * (slots without a key hold -inf), plus the LSE of each row.
 */
/** naQK and naAV are the windows alone: extra tokens are neighborhoodAttention's (merged by LSE). */
function noExtraTokens(opts: NeighborhoodOptions): void {
  check(opts?.additionalKeys === undefined && opts?.additionalValues === undefined, 'additionalKeys', 'is not taken by naQK/naAV (neighborhoodAttention merges extra tokens)');
}

export async function naQK(q: Tensor, k: Tensor, opts: NeighborhoodOptions): Promise<Result> {
  noExtraTokens(opts);
  checkTensor(k, 'k');
  const vShape = [...k.shape];
  const fakeV = { data: new Float32Array(numel(vShape.slice(0, -1))), shape: [...vShape.slice(0, -1), 1] };
  const { s, problem } = planNA(q, k, fakeV, opts);
  return naQKOnly(problem, q, k, [s.batch, ...s.qGrid], opts, (await chooseBackend(opts.backend, problem, 'unfused')).backend.name);
}

/** NATTEN's `av` op: attention weights [B, ...tokens, H, prod(kernelSize)] times v over each window. */
export async function naAV(attn: Tensor, v: Tensor, opts: NeighborhoodOptions): Promise<{ out: Tensor }> {
  noExtraTokens(opts);
  checkTensor(attn, 'attn');
  checkTensor(v, 'v');
  // q and k only carry shapes here: q's heads come from attn (GQA), k's from v
  check(attn.shape.length === v.shape.length, 'attn', 'must have the same rank as v', `${attn.shape.length} vs ${v.shape.length}`);
  check(attn.shape.slice(0, -2).join() === v.shape.slice(0, -2).join(), 'attn', 'batch and token axes must match v', `${attn.shape.join('x')} vs ${v.shape.join('x')}`);
  const fakeQ = { data: new Float32Array(numel(attn.shape.slice(0, -1))), shape: [...attn.shape.slice(0, -1), 1] };
  const fakeK = { data: new Float32Array(numel(v.shape.slice(0, -1))), shape: [...v.shape.slice(0, -1), 1] };
  const { s, problem } = planNA(fakeQ, fakeK, v, opts);
  const wv = numel(problem.pattern.kind === 'neighborhood' ? problem.pattern.kernelSize : []);
  check(attn.shape.join() === [s.batch, ...s.qGrid, s.heads, wv].join(), 'attn', 'shape must be [B, ...tokens, H, prod(kernelSize)]', attn.shape.join('x'));
  return naAVOnly(problem, attn, v, [s.batch, ...s.qGrid], opts, (await chooseBackend(opts.backend, problem, 'unfused')).backend.name);
}

/**
 * Merges attention results over disjoint key sets by their LSEs:
 * lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) out_i.
 */
export function mergeAttentions(parts: readonly Result[], opts: Pick<CommonOptions, 'out' | 'lse'> = {}): Result {
  check(Array.isArray(parts) && parts.length > 0, 'parts', 'must be a non-empty array of { out, lse }');
  parts.forEach((p, i) => {
    checkTensor(p.out, `parts[${i}].out`);
    checkTensor(p.lse, `parts[${i}].lse`);
  });
  const o0 = parts[0]!.out;
  const l0 = parts[0]!.lse;
  check(o0.shape.slice(0, -1).join() === l0.shape.join(), 'parts[0].lse', 'shape must be out shape without its last axis');
  parts.forEach((p, i) => {
    check(p.out.shape.join() === o0.shape.join(), `parts[${i}].out`, 'all parts must have the same out shape');
    check(p.lse.shape.join() === l0.shape.join(), `parts[${i}].lse`, 'all parts must have the same lse shape');
  });
  const dv = o0.shape[o0.shape.length - 1]!;
  const rows = l0.data.length;
  const out = checkDest(opts.out, rows * dv, 'out') ?? new Float32Array(rows * dv);
  const lse = checkDest(opts.lse, rows, 'lse') ?? new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let mx = -Infinity;
    for (const p of parts) mx = Math.max(mx, p.lse.data[r]!);
    if (mx === -Infinity) {
      out.fill(0, r * dv, (r + 1) * dv);
      lse[r] = -Infinity;
      continue;
    }
    let sum = 0;
    for (const p of parts) sum += Math.exp(p.lse.data[r]! - mx);
    const total = mx + Math.log(sum);
    for (let c = 0; c < dv; c++) {
      let acc = 0;
      for (const p of parts) {
        const w = Math.exp(p.lse.data[r]! - total);
        if (w > 0) acc += w * p.out.data[r * dv + c]!;
      }
      out[r * dv + c] = acc;
    }
    lse[r] = total;
  }
  return { out: { data: out, shape: [...o0.shape] }, lse: { data: lse, shape: [...l0.shape] } };
}

export { TilewiseError };
