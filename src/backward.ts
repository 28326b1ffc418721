import { throwIfAborted } from './abort.js';
import type { AttentionOptions, BlockSparseOptions, NeighborhoodOptions } from './options.js';
import { blockSparseAsAttention, planAttention, planNA } from './plan.js';
import { chooseBackend } from './backends.js';
import type { GpuTensor } from './webgpu/tensor.js';
import type { GpuGrads } from './webgpu/backward.js';
import { check } from './errors.js';
import type { AttnProblem } from './problem.js';
import { type Tensor, isGpuTensor, numel } from './tensor.js';

type Input = Tensor | GpuTensor;

/** Gradients of an attention call, shaped like q, k, v (and rpb when the call had one). */
export interface Grads {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
  drpb?: Tensor;
  /** With `dbias: true` and a bias: its gradient, shaped like the bias (summed over broadcast axes). */
  dbias?: Tensor;
  /** With a neighborhood call's additionalKeys / additionalValues: their gradients. */
  dAdditionalKeys?: Tensor;
  dAdditionalValues?: Tensor;
}

/**
 * Checks the backward's extra inputs against the forward's problem: out and dOut [..., H, Dv],
 * lse [..., H]; all six tensors on the host, or all on the GPU (WebGPU backend).
 */
function checkBackward(problem: AttnProblem, t: Record<'q' | 'k' | 'v' | 'out' | 'lse' | 'dOut', Tensor | GpuTensor>, backend: string | undefined): boolean {
  check(backend === undefined || backend === 'cpu' || backend === 'webgpu' || backend === 'auto', 'backend', "must be 'cpu', 'webgpu' or 'auto'", String(backend));
  const onGpu = isGpuTensor(t.q);
  for (const [n, x] of Object.entries(t)) {
    check(x !== null && typeof x === 'object', n, 'must be a tensor');
    if (onGpu) check(isGpuTensor(x), n, 'must be a GPU tensor like q (all six on the GPU, or all on the host)');
    else check(!isGpuTensor(x) && (x as Tensor).data instanceof Float32Array, n, 'must be a host tensor { data: Float32Array, shape } like q (all six on the host, or all on the GPU)');
  }
  // as in the forward: GPU tensors run on WebGPU ('webgpu', 'auto' or unset), never on the CPU
  check(!onGpu || backend !== 'cpu', 'backend', "GPU tensors run on 'webgpu' (or 'auto'/unset), not 'cpu'", String(backend));
  const lead = t.q.shape.slice(0, -1);
  const want = [...lead, problem.dimV];
  const len = (x: Tensor | GpuTensor) => (isGpuTensor(x) ? numel(x.shape) : x.data.length);
  for (const n of ['out', 'dOut'] as const) {
    check(t[n].shape.join() === want.join(), n, `must have the forward output's shape [${want.join(', ')}]`, `got [${t[n].shape.join(', ')}]`);
    check(len(t[n]) === problem.qRows * problem.heads * problem.dimV, n, 'data length must match its shape');
  }
  check(t.lse.shape.join() === lead.join(), 'lse', `must have shape [${lead.join(', ')}]`, `got [${t.lse.shape.join(', ')}]`);
  check(len(t.lse) === problem.qRows * problem.heads, 'lse', 'data length must match its shape');
  check(problem.rope?.positions !== 'selected', 'ropePositions', "'selected' (LongHeads) has no backward");
  return onGpu;
}

/** What the backward takes beyond the forward's options. */
export interface BackwardOptions {
  /** Also return dbias (the bias's gradient; as large as the bias, one partial per thread while it runs). */
  dbias?: boolean;
}

async function backward(problem: AttnProblem, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts: (AttentionOptions | NeighborhoodOptions) & BackwardOptions, rpbShape?: readonly number[]): Promise<Grads> {
  const onGpu = checkBackward(problem, { q, k, v, out, lse, dOut }, opts.backend);
  const biasShape = 'bias' in opts && opts.bias ? opts.bias.shape : undefined;
  check(opts.dbias === undefined || typeof opts.dbias === 'boolean', 'dbias', 'must be a boolean');
  check(!opts.dbias || biasShape !== undefined, 'dbias', 'needs a bias');
  const wantBias = opts.dbias === true;
  throwIfAborted(opts.signal);
  const shaped = <T,>(g: { dq: T; dk: T; dv: T; drpb?: T; dbias?: T }, re: (x: T, shape: number[]) => Tensor): Grads => ({
    dq: re(g.dq, [...q.shape]),
    dk: re(g.dk, [...k.shape]),
    dv: re(g.dv, [...v.shape]),
    ...(g.drpb && rpbShape ? { drpb: re(g.drpb, [...rpbShape]) } : {}),
    ...(g.dbias && biasShape ? { dbias: re(g.dbias, [...biasShape]) } : {}),
  });
  if (onGpu) {
    const gpu = await import('./webgpu/index.js');
    const [qg, kg, vg, og, lg, dg] = [q, k, v, out, lse, dOut] as unknown as GpuTensor[];
    const g = await gpu.runWebGPUBackwardTensors(problem, { q: qg!, k: kg!, v: vg!, out: og!, lse: lg!, dout: dg! }, { dbias: wantBias });
    return shaped(g, (x, shape) => ({ ...x, shape }) as unknown as Tensor);
  }
  const host = { q: q.data, k: k.data, v: v.data, out: out.data, lse: lse.data, dout: dOut.data };
  const { backend } = await chooseBackend(opts.backend, problem, 'fused');
  const g = await backend.backward(problem, host, opts, wantBias);
  return shaped(g, (data, shape) => ({ data, shape }));
}

/**
 * Gradients of `attention(q, k, v, opts)` given its `out`, `lse` and the gradient `dOut` of a loss
 * with respect to out, recomputed from the LSE (FlashAttention-2): every pattern and option of the
 * forward; GQA's dK and dV are summed over each group's query heads; rows with no allowed key get
 * zero gradients; RoPE gradients are with respect to the un-rotated inputs; `dbias: true` adds dbias.
 */
export async function attentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts?: AttentionOptions & BackwardOptions): Promise<Grads>;
/** On GPU tensors (WebGPU, as the forward: `backend` unset, 'auto' or 'webgpu'): the gradients are GPU tensors, left on the device. */
export async function attentionBackward(q: GpuTensor, k: GpuTensor, v: GpuTensor, out: GpuTensor, lse: GpuTensor, dOut: GpuTensor, opts?: AttentionOptions & BackwardOptions): Promise<GpuGrads>;
export async function attentionBackward(q: Input, k: Input, v: Input, out: Input, lse: Input, dOut: Input, opts: AttentionOptions & BackwardOptions = {}): Promise<Grads | GpuGrads> {
  const [Q, K, V, O, L, D] = [q, k, v, out, lse, dOut] as Tensor[];
  const { problem } = planAttention(Q!, K!, V!, opts);
  return backward(problem, Q!, K!, V!, O!, L!, D!, opts);
}

/** Gradients of `blockSparseAttention(q, k, v, opts)`. */
export async function blockSparseAttentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts: BlockSparseOptions & BackwardOptions): Promise<Grads>;
export async function blockSparseAttentionBackward(q: GpuTensor, k: GpuTensor, v: GpuTensor, out: GpuTensor, lse: GpuTensor, dOut: GpuTensor, opts: BlockSparseOptions & BackwardOptions): Promise<GpuGrads>;
export async function blockSparseAttentionBackward(q: Input, k: Input, v: Input, out: Input, lse: Input, dOut: Input, opts: BlockSparseOptions & BackwardOptions): Promise<Grads | GpuGrads> {
  const [Q, K, V, O, L, D] = [q, k, v, out, lse, dOut] as Tensor[];
  return attentionBackward(Q!, K!, V!, O!, L!, D!, { ...blockSparseAsAttention(opts), ...(opts.dbias !== undefined ? { dbias: opts.dbias } : {}) });
}

/** Gradients of `neighborhoodAttention(q, k, v, opts)`, with `drpb` when opts.rpb is given. */
export async function neighborhoodAttentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts: NeighborhoodOptions, rank?: number): Promise<Grads>;
export async function neighborhoodAttentionBackward(q: GpuTensor, k: GpuTensor, v: GpuTensor, out: GpuTensor, lse: GpuTensor, dOut: GpuTensor, opts: NeighborhoodOptions, rank?: number): Promise<GpuGrads>;
export async function neighborhoodAttentionBackward(qIn: Input, kIn: Input, vIn: Input, outIn: Input, lseIn: Input, dOutIn: Input, opts: NeighborhoodOptions, rank?: number): Promise<Grads | GpuGrads> {
  // one body for both: GPU tensors travel as they are (backward() tells them apart)
  const [q, k, v, out, lse, dOut] = [qIn, kIn, vIn, outIn, lseIn, dOutIn] as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
  check(opts?.impl === undefined || opts.impl === 'fused', 'impl', "the backward is fused only (the forward's impl does not change the gradients)");
  const { additionalKeys: ak, additionalValues: av, ...rest } = opts;
  const { s, problem } = planNA(q, k, v, rest, rank);
  if (ak === undefined && av === undefined) return backward(problem, q, k, v, out, lse, dOut, rest, opts.rpb?.shape);
  // additional tokens: the forward merged a neighborhood pass and a dense pass over them by LSE.
  // Each part's gradients follow from the merged out and lse (P = exp(s - lse) over the union of
  // the key sets, delta = rowsum(dO * out)), so both run the ordinary backward on those, and dq sums.
  check(ak !== undefined && av !== undefined && !isGpuTensor(ak) && !isGpuTensor(av), 'additionalKeys', 'and additionalValues must both be host tensors');
  const na = await backward(problem, q, k, v, out, lse, dOut, rest, opts.rpb?.shape);
  const flat = (t: Tensor, width: number) => ({ data: t.data, shape: [s.batch, numel(s.qGrid), ...(width ? [s.heads, width] : [s.heads])] });
  const qFlat = flat(q, s.dim);
  const crossOpts = { backend: opts.backend, scale: problem.scale, softcap: problem.softcap };
  const cross = planAttention(qFlat, ak as Tensor, av as Tensor, crossOpts).problem;
  const c = await backward(cross, qFlat, ak as Tensor, av as Tensor, flat(out, s.dimV), flat(lse, 0), flat(dOut, s.dimV), crossOpts);
  const dq = na.dq.data;
  for (let i = 0; i < dq.length; i++) dq[i]! += c.dq.data[i]!;
  return { ...na, dAdditionalKeys: c.dk, dAdditionalValues: c.dv };
}

/** The backward of `na1d`, `na2d`, `na3d` (host tensors in, host gradients out; or GPU tensors both ways). */
type NaBackward = {
  (q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts: NeighborhoodOptions): Promise<Grads>;
  (q: GpuTensor, k: GpuTensor, v: GpuTensor, out: GpuTensor, lse: GpuTensor, dOut: GpuTensor, opts: NeighborhoodOptions): Promise<GpuGrads>;
};
const naBackward =
  (rank: number): NaBackward =>
  ((q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor, opts: NeighborhoodOptions) => neighborhoodAttentionBackward(q, k, v, out, lse, dOut, opts, rank)) as NaBackward;
export const na1dBackward = naBackward(1);
export const na2dBackward = naBackward(2);
export const na3dBackward = naBackward(3);
