/// <reference types="@webgpu/types" />
import { AXES, type AnalyticPlan } from './analytic.js';
import type { GpuLimits } from './device.js';
import { type Launch, threadGrid, uniformBuffer } from './run.js';
import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, f16Directive, prologue, vecType } from './wgsl.js';

/**
 * Token permutation for N-D neighborhoods (NATTEN's "token permute"): q (or k, v) is copied into a
 * head-major layout [batch, heads, pad, dim] whose rows run over each dilation group, then each
 * tile box of it, then each box's tokens (last axis fastest). The fused kernel's analytic schedule
 * reads it (analytic.ts, `permute`): a query tile is then one contiguous block per head, a key
 * visit a few runs, where the token order [tokens, heads, dim] scatters them one row per token.
 * Per batch and head the layout holds groups * tilesPerGroup * box rows; rows of boxes cut by the
 * grid's edge are padding, never read. One thread copies one vector (a gather: consecutive
 * threads write consecutive memory).
 */

export interface PermuteSpec {
  readonly rank: number;
  readonly f16: boolean;
  /** Elements per copied vector (4 when the row length allows). */
  readonly w: 1 | 4;
}

const axisFields = (names: readonly string[]) => Object.fromEntries(Array.from({ length: AXES }, (_, a) => names.map((n) => [`${n}${a}`, 'u32' as const])).flat());

export const PERMUTE_UNIFORMS = uniformLayout({
  /** Destination vectors (batch * pad * width) and the x extent of the grid. */
  total: 'u32',
  groupsX: 'u32',
  /** Tokens per batch in the source, rows per batch and head in the destination, heads, vectors per head row. */
  nSeq: 'u32',
  pad: 'u32',
  heads: 'u32',
  width: 'u32',
  tilesPerGroup: 'u32',
  box: 'u32',
  // per axis: grid length, dilation, tile extent, tiles per group, token stride
  ...(axisFields(['len', 'dil', 'T', 'tiles', 'stride']) as Record<`${'len' | 'dil' | 'T' | 'tiles' | 'stride'}${0 | 1 | 2}`, 'u32'>),
});

const THREADS = 64;

export const permuteProgram: Program<PermuteSpec, typeof PERMUTE_UNIFORMS.decl> = {
  name: 'token-permute',
  uniforms: PERMUTE_UNIFORMS,
  bindings: (s) => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'src', kind: 'read', type: `array<${vecType(s.w, s.f16 ? 'f16' : 'f32')}>` },
    { name: 'dst', kind: 'readwrite', type: `array<${vecType(s.w, s.f16 ? 'f16' : 'f32')}>` },
  ],
  workgroupSize: () => THREADS,
  generate: (s) => {
    // axes decoded last-first, as analytic.ts lays out groups, tiles and boxes
    const down = Array.from({ length: s.rank }, (_, a) => s.rank - 1 - a);
    return `${f16Directive(s.f16)}${prologue(permuteProgram, s, { THREADS })}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_INVOCATION};
  if (e >= P.total) { return; }
  ${'' /* destination [batch, heads, pad, width], source [batch * nSeq, heads, width] */}
  let col = e % P.width;
  let item = e / P.width;
  let p = item % P.pad;
  let bh = item / P.pad;
  var inBox: u32 = p % P.box;
  var tile: u32 = (p / P.box) % P.tilesPerGroup;
  var g: u32 = (p / P.box) / P.tilesPerGroup;
  var tok: u32 = 0u;
  var inside: bool = true;
  ${down
    .map(
      (a) => `{
    let i = inBox % P.T${a};
    inBox = inBox / P.T${a};
    let t = tile % P.tiles${a};
    tile = tile / P.tiles${a};
    let grp = g % P.dil${a};
    g = g / P.dil${a};
    let x = grp + P.dil${a} * (t * P.T${a} + i);
    inside = inside && x < P.len${a};
    tok += x * P.stride${a};
  }`,
    )
    .join('\n  ')}
  if (inside) { dst[e] = src[(((bh / P.heads) * P.nSeq + tok) * P.heads + bh % P.heads) * P.width + col]; }
}
`;
  },
};

/**
 * The launch permuting `src` (batch * nSeq rows of `width` vectors) into `dst` (batch * pad rows)
 * with the query tiles (`keys` false) or key tiles of an analytic plan.
 */
export function permuteLaunch(
  device: GPUDevice,
  limits: GpuLimits,
  pipeline: Launch['pipeline'],
  plan: AnalyticPlan,
  keys: boolean,
  batch: number,
  heads: number,
  width: number,
  src: GPUBufferBinding,
  dst: GPUBufferBinding,
  own: (b: GPUBuffer) => GPUBuffer,
): Launch {
  const v = plan.values;
  const pad = keys ? plan.kPad : plan.qPad;
  const total = batch * heads * pad * width;
  const groups = threadGrid(total, THREADS, limits, keys ? 'k' : 'q');
  const axes: Record<string, number> = {};
  for (let a = 0; a < AXES; a++) {
    axes[`len${a}`] = v[keys ? `kLen${a}` : `qLen${a}`]!;
    axes[`dil${a}`] = v[`dil${a}`]!;
    axes[`T${a}`] = v[keys ? `kT${a}` : `qT${a}`]!;
    axes[`tiles${a}`] = v[keys ? `kTiles${a}` : `tiles${a}`]!;
    axes[`stride${a}`] = v[keys ? `sK${a}` : `sQ${a}`]!;
  }
  const params = PERMUTE_UNIFORMS.pack({
    total,
    groupsX: groups[0],
    nSeq: v[keys ? 'nkSeq' : 'nqSeq']!,
    pad,
    heads,
    width,
    tilesPerGroup: v[keys ? 'kTilesPerGroup' : 'tilesPerGroup']!,
    box: v[keys ? 'kBox' : 'qBox']!,
    ...(axes as Record<`${'len' | 'dil' | 'T' | 'tiles' | 'stride'}${0 | 1 | 2}`, number>),
  });
  return { pipeline, entries: [own(uniformBuffer(device, params)), src, dst], groups };
}
