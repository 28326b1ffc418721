/// <reference types="@webgpu/types" />
import { check } from '../errors.js';
import { numel } from '../tensor.js';
import { checkGpuDest, checkGpuTensor } from '../validate.js';
import { bindingOf, launch, threadGrid, storesF16, uniformBuffer, withDevice } from './run.js';
import { type GpuTensor, dtypeOf } from './tensor.js';
import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, f16Directive, getPipeline, narrow, prologue, vecType, vecWidth, widenLoads } from './wgsl.js';

/**
 * Merging two attention results over disjoint key sets by their LSEs on the device (what NATTEN's
 * `additional_keys` and FlashAttention's split-KV combine do): lse = log(exp(lse_a) + exp(lse_b)),
 * out = (exp(lse_a - lse) out_a + exp(lse_b - lse) out_b). Rows empty in both keep out 0, lse -inf.
 * One thread per output vector; out may be f16 storage (weights and sums in f32).
 */

export interface MergeSpec {
  readonly f16: boolean;
  readonly w: 1 | 4;
}

export const MERGE_UNIFORMS = uniformLayout({ total: 'u32', groupsX: 'u32', width: 'u32', negInf: 'f32' });

const THREADS = 64;

export const mergeProgram: Program<MergeSpec, typeof MERGE_UNIFORMS.decl> = {
  name: 'lse-merge',
  uniforms: MERGE_UNIFORMS,
  bindings: (s) => {
    const o = `array<${vecType(s.w, s.f16 ? 'f16' : 'f32')}>`;
    return [
      { name: 'P', kind: 'uniform', type: 'Params' },
      { name: 'outA', kind: 'read', type: o },
      { name: 'lseA', kind: 'read', type: 'array<f32>' },
      { name: 'outB', kind: 'read', type: o },
      { name: 'lseB', kind: 'read', type: 'array<f32>' },
      { name: 'out', kind: 'readwrite', type: o },
      { name: 'lse', kind: 'readwrite', type: 'array<f32>' },
    ];
  },
  workgroupSize: () => THREADS,
  generate: (s) => `${f16Directive(s.f16)}${prologue(mergeProgram, s, { THREADS })}
${widenLoads(s.f16, [
  ['outA', s.w],
  ['outB', s.w],
])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_INVOCATION};
  if (e >= P.total) { return; }
  let rh = e / P.width;
  let la = lseA[rh];
  let lb = lseB[rh];
  ${'' /* an empty part has lse -inf; compared against a finite bound, not -inf (drivers may fold infinities) */}
  let ea = la > -1.0e30;
  let eb = lb > -1.0e30;
  let mx = select(select(0.0, lb, eb), select(la, max(la, lb), eb), ea);
  let wa = select(0.0, exp(la - mx), ea);
  let wb = select(0.0, exp(lb - mx), eb);
  let sum = wa + wb;
  let inv = select(0.0, 1.0 / sum, sum > 0.0);
  let x = (ld_outA(e) * wa + ld_outB(e) * wb) * inv;
  out[e] = ${narrow(s.f16, s.w, 'x')};
  if (e % P.width == 0u) { lse[rh] = select(P.negInf, mx + log(sum), sum > 0.0); }
}
`,
};

export interface Attn {
  readonly out: GpuTensor;
  readonly lse: GpuTensor;
}

/**
 * Merges two GPU attention results (out [..., H, Dv], lse [..., H], same shapes and dtype) into
 * fresh tensors or the caller's `out`/`lse`, which must not be the parts' buffers.
 */
export async function mergeAttentionsGpu(a: Attn, b: Attn, opts: { out?: GpuTensor; lse?: GpuTensor } = {}): Promise<Attn> {
  for (const [t, n] of [
    [a.out, 'a.out'],
    [a.lse, 'a.lse'],
    [b.out, 'b.out'],
    [b.lse, 'b.lse'],
  ] as const)
    checkGpuTensor(t, n);
  const shape = a.out.shape;
  const dv = shape[shape.length - 1]!;
  check(a.lse.shape.join() === shape.slice(0, -1).join(), 'a.lse', 'shape must be out shape without its last axis', a.lse.shape.join('x'));
  check(b.out.shape.join() === shape.join() && b.lse.shape.join() === a.lse.shape.join(), 'b', 'out and lse shapes must match a', `${b.out.shape.join('x')}, ${b.lse.shape.join('x')}`);
  const io = dtypeOf(a.out);
  check(dtypeOf(b.out) === io, 'b.out', 'must have the dtype of a.out', dtypeOf(b.out));
  for (const [t, n] of [
    [a.lse, 'a.lse'],
    [b.lse, 'b.lse'],
  ] as const)
    check(dtypeOf(t) === 'f32', n, 'must be f32', dtypeOf(t));
  checkGpuDest(opts.out, numel(shape), 'out', io);
  checkGpuDest(opts.lse, numel(a.lse.shape), 'lse', 'f32');
  for (const d of [opts.out, opts.lse]) check(!d || ![a.out, a.lse, b.out, b.lse].some((p) => p.buffer === d.buffer), d === opts.out ? 'out' : 'lse', 'must not share a buffer with the parts it merges');
  return withDevice(async (ctx) => {
    const f16 = storesF16(ctx, a.out, 'a.out');
    const w = vecWidth(dv);
    const pipeline = await getPipeline(ctx.device, mergeProgram, { f16, w });
    const rows = numel(a.lse.shape);
    const total = (rows * dv) / w;
    const [out, lse] = await launch(
      ctx,
      'lse-merge',
      [
        { name: 'out', shape, empty: 0, dtype: io, ...(opts.out ? { given: opts.out } : {}) },
        { name: 'lse', shape: a.lse.shape, empty: -Infinity, ...(opts.lse ? { given: opts.lse } : {}) },
      ],
      false,
      ([o, l], own) => {
        const groups = threadGrid(total, THREADS, ctx.limits, 'out');
        const params = MERGE_UNIFORMS.pack({ total, groupsX: groups[0], width: dv / w, negInf: -Infinity });
        const n = numel(shape);
        return {
          pipeline,
          entries: [own(uniformBuffer(ctx.device, params)), bindingOf(a.out, n, 'a.out', [io]), bindingOf(a.lse, rows, 'a.lse'), bindingOf(b.out, n, 'b.out', [io]), bindingOf(b.lse, rows, 'b.lse'), o!, l!],
          groups,
        };
      },
    );
    return { out: out!, lse: lse! };
  });
}
