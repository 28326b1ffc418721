/// <reference types="@webgpu/types" />
import { prod } from '../cpu/fused.js';
import { TilewiseError } from '../errors.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnProblem } from '../problem.js';
import { BufferUsage, type GpuContext } from './device.js';
import { type KernelOptions, type TensorKernel, gridFor, launchAttn, onDevice, onHost, rpbLayout, uniformBuffer } from './run.js';
import { type GpuTensor, uploadBuffer } from './tensor.js';
import { uniformLayout } from './uniforms.js';
import { type Program, bindingDecls, getPipeline } from './wgsl.js';

/**
 * NATTEN's naive kernel on WebGPU: one thread per (query, head) computes its window along every
 * axis analytically (design.md 7, the same rules as patterns/rules.ts `neighborhoodRule`), walks it
 * reading K and V straight from the inputs, and keeps an online softmax. No schedule is uploaded.
 * A baseline for the fused kernel, and the simplest correct NA path on a GPU.
 */

export interface NaiveSpec {
  readonly rank: number;
  readonly dim: number;
  readonly dimV: number;
  readonly wq: 1 | 4;
  readonly wv: 1 | 4;
  readonly softcap: boolean;
  readonly rpb: boolean;
  readonly threads: number;
}

const AXES = [0, 1, 2] as const;
const perAxis = (name: string) => Object.fromEntries(AXES.map((a) => [`${name}${a}`, 'u32' as const]));

export const NAIVE_UNIFORMS = uniformLayout({
  heads: 'u32',
  kvHeads: 'u32',
  group: 'u32',
  total: 'u32',
  groupsX: 'u32',
  tokens: 'u32',
  scale: 'f32',
  softcap: 'f32',
  rpbVol: 'u32',
  rpbConst: 'i32',
  ...perAxis('len'),
  ...perAxis('kernel'),
  ...perAxis('dil'),
  ...perAxis('stride'),
  ...perAxis('causal'),
  ...perAxis('rpbStride'),
} as const);

const vec = (w: 1 | 4): string => (w === 4 ? 'vec4<f32>' : 'f32');

export const naiveProgram: Program<NaiveSpec, typeof NAIVE_UNIFORMS.decl> = {
  name: 'na-naive',
  uniforms: NAIVE_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'q', kind: 'read', type: `array<${vec(s.wq)}>` },
    { name: 'k', kind: 'read', type: `array<${vec(s.wq)}>` },
    { name: 'v', kind: 'read', type: `array<${vec(s.wv)}>` },
    { name: 'out', kind: 'readwrite', type: `array<${vec(s.wv)}>` },
    { name: 'lse', kind: 'readwrite', type: 'array<f32>' },
    ...(s.rpb ? [{ name: 'rpb', kind: 'read' as const, type: 'array<f32>' }] : []),
  ],
  workgroupSize: (s) => s.threads,
  generate: generateNaive,
};

function generateNaive(s: NaiveSpec): string {
  const QT = vec(s.wq);
  const VT = vec(s.wv);
  const dq = s.dim / s.wq;
  const dv = s.dimV / s.wv;
  const axes = AXES.slice(0, s.rank);
  const dot = s.wq === 4 ? 'dot(qr[c], k[kb + c])' : 'qr[c] * k[kb + c]';
  // token strides of the grid (row-major), as WGSL expressions
  const tokStride = (a: number) => axes.slice(a + 1).map((b) => `P.len${b}`).join(' * ') || '1u';
  const open = axes.map((a) => `${'  '.repeat(a)}for (var k${a}: i32 = lo${a}; k${a} <= hi${a}; k${a}++) {`).join('\n    ');
  const close = axes.map((a) => `${'  '.repeat(s.rank - 1 - a)}}`).join('\n    ');
  const keyTok = axes.map((a) => `(g${a} + P.dil${a} * u32(k${a})) * (${tokStride(a)})`).join(' + ');
  const rpbIdx = axes.map((a) => `(k${a} - x${a}) * i32(P.rpbStride${a})`).join(' + ');
  return `// tilewise NA naive (generated): ${JSON.stringify(s)}
${NAIVE_UNIFORMS.wgsl('Params')}
${bindingDecls(naiveProgram.bindings(s))}

const DQ: u32 = ${dq}u;
const DV: u32 = ${dv}u;
const THREADS: u32 = ${s.threads}u;

/** NATTEN window [start, end] of local coordinate x on an axis of length n (patterns/rules.ts). */
fn window(x: i32, n: i32, kernel: i32, stride: i32, causal: bool) -> vec2<i32> {
  if (causal) {
    let leader = min((x / stride) * stride + stride - 1, n - 1);
    return vec2<i32>(max(0, leader - kernel + 1), x);
  }
  let left = kernel / 2;
  let right = kernel - 1 - left;
  let leader = min((x / stride) * stride + stride / 2, n - 1);
  let start = min(max(leader, left), n - 1 - right) - left;
  return vec2<i32>(start, start + kernel - 1);
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let gid = (wid.x + wid.y * P.groupsX) * THREADS + lid;
  if (gid >= P.total) { return; }
  let row = gid / P.heads;
  let h = gid - row * P.heads;
  let kh = h / P.group;
  let b = row / P.tokens;
  var t: u32 = row - b * P.tokens;
  ${[...axes].reverse().map((a) => `let c${a} = t % P.len${a};\n  t = t / P.len${a};`).join('\n  ')}
  ${axes
    .map(
      (a) => `let g${a} = c${a} % P.dil${a};
  let x${a} = i32(c${a} / P.dil${a});
  let w${a} = window(x${a}, i32((P.len${a} - g${a} + P.dil${a} - 1u) / P.dil${a}), i32(P.kernel${a}), i32(P.stride${a}), P.causal${a} != 0u);
  let lo${a} = w${a}.x;
  let hi${a} = w${a}.y;`,
    )
    .join('\n  ')}
  ${s.rpb ? 'let rpbBase = i32(h * P.rpbVol) + P.rpbConst;' : ''}

  var qr: array<${QT}, DQ> = array<${QT}, DQ>();
  for (var c: u32 = 0u; c < DQ; c++) { qr[c] = q[(row * P.heads + h) * DQ + c]; }
  var o: array<${VT}, DV> = array<${VT}, DV>();
  var m: f32 = -3.0e38;
  var l: f32 = 0.0;
  ${open}
      let kr = b * P.tokens + ${keyTok};
      let kb = (kr * P.kvHeads + kh) * DQ;
      var acc: f32 = 0.0;
      for (var c: u32 = 0u; c < DQ; c++) { acc += ${dot}; }
      var x: f32 = acc * P.scale;
      ${s.softcap ? 'x = P.softcap * tanh(clamp(x / P.softcap, -15.0, 15.0));' : ''}
      ${s.rpb ? `x += rpb[u32(rpbBase + ${rpbIdx})];` : ''}
      let mn = max(m, x);
      let alpha = exp(m - mn);
      let p = exp(x - mn);
      m = mn;
      l = l * alpha + p;
      let vb = (kr * P.kvHeads + kh) * DV;
      for (var c: u32 = 0u; c < DV; c++) { o[c] = o[c] * alpha + p * v[vb + c]; }
    ${close}
  let ob = (row * P.heads + h) * DV;
  for (var c: u32 = 0u; c < DV; c++) { out[ob + c] = o[c] / l; }
  lse[row * P.heads + h] = m + log(l);
}
`;
}

type NASpec = Extract<PatternSpec, { kind: 'neighborhood' }>;

/** Whether the naive kernel runs `problem` (a plain neighborhood pattern over dense batches). */
export function naiveCanRun(problem: AttnProblem): true | string {
  const p = problem.pattern;
  if (p.kind !== 'neighborhood') return 'the naive kernel needs a plain neighborhood pattern';
  if (problem.bias) return 'the naive kernel takes no additive bias';
  if (p.kernelSize.length > 3) return 'the naive kernel supports 1 to 3 token axes';
  const tokens = prod(problem.seqs[0]?.qGrid ?? [0]);
  if (!problem.seqs.every((s, i) => s.qOff === i * tokens && s.kOff === i * tokens && s.b === i)) return 'the naive kernel needs dense batches';
  return true;
}

const naiveKernel: TensorKernel = async (ctx: GpuContext, problem, q, k, v, opts) => {
  const why = naiveCanRun(problem);
  if (why !== true) throw new TilewiseError('webgpu', 'cannot run this problem', why);
  const na = problem.pattern as NASpec;
  const { device, limits } = ctx;
  const rank = na.kernelSize.length;
  const spec: NaiveSpec = {
    rank,
    dim: problem.dim,
    dimV: problem.dimV,
    wq: problem.dim % 4 === 0 ? 4 : 1,
    wv: problem.dimV % 4 === 0 ? 4 : 1,
    softcap: problem.softcap > 0,
    rpb: problem.rpb !== undefined,
    threads: Math.min(64, limits.maxComputeInvocationsPerWorkgroup),
  };
  const pipeline = await getPipeline(device, naiveProgram, spec);
  const grid = problem.seqs[0]!.qGrid;
  const rpb = rpbLayout(na.kernelSize);
  const axis = (name: string, xs: readonly number[], fill: number) => Object.fromEntries(AXES.map((a) => [`${name}${a}`, xs[a] ?? fill]));
  return launchAttn(ctx, problem, q, k, v, opts, 'naive', (io, own) => {
    const total = problem.qRows * problem.heads;
    const groups = gridFor(Math.ceil(total / spec.threads), limits, 'q');
    const params = NAIVE_UNIFORMS.pack({
      heads: problem.heads,
      kvHeads: problem.kvHeads,
      group: problem.heads / problem.kvHeads,
      total,
      groupsX: groups[0],
      tokens: prod(grid),
      scale: problem.scale,
      softcap: problem.softcap,
      rpbVol: rpb.volume,
      rpbConst: rpb.base,
      ...axis('len', grid, 1),
      ...axis('kernel', na.kernelSize, 1),
      ...axis('dil', na.dilation, 1),
      ...axis('stride', na.stride, 1),
      ...axis('causal', na.isCausal.map(Number), 0),
      ...axis('rpbStride', rpb.strides, 0),
    } as Parameters<typeof NAIVE_UNIFORMS.pack>[0]);
    const entries: (GPUBuffer | GPUBufferBinding)[] = [own(uniformBuffer(device, params)), io.q, io.k, io.v, io.out, io.lse];
    if (problem.rpb) entries.push(own(uploadBuffer(device, problem.rpb.data, BufferUsage.STORAGE, 'tilewise rpb')));
    return { pipeline, entries, groups };
  });
};

/** Neighborhood attention with NATTEN's naive kernel on GPU tensors (nothing read back). */
export function runWebGPUNaiveTensors(problem: AttnProblem, q: GpuTensor, k: GpuTensor, v: GpuTensor, opts: KernelOptions = {}): Promise<{ out: GpuTensor; lse: GpuTensor }> {
  return onDevice(naiveKernel, problem, q, k, v, opts);
}

/** Neighborhood attention with NATTEN's naive kernel: host arrays in, out and lse back. */
export function runWebGPUNaive(problem: AttnProblem, q: Float32Array, k: Float32Array, v: Float32Array, opts: { poison?: boolean } = {}): Promise<{ out: Float32Array; lse: Float32Array }> {
  return onHost(naiveKernel, problem, q, k, v, opts);
}
