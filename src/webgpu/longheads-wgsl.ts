import { uniformLayout } from './uniforms.js';
import { FLAT_INVOCATION, type Program, prologue } from './wgsl.js';

/**
 * LongHeads' small kernels around the fused one (webgpu/longheads.ts runs them): the mean-pool of
 * each chunk's in-chunk attention outputs into its summary, the in-chunk RoPE rotation of keys
 * (the summary attends over them with them as values), and chunk selection. Rows are scalar f32,
 * heads-last, as everywhere: x [rows, heads, dim].
 */

/** One layout for the family (each kernel reads what it needs). */
export const LH_UNIFORMS = uniformLayout({
  heads: 'u32',
  kvHeads: 'u32',
  dim: 'u32',
  chunkSize: 'u32',
  /** Threads (pool, rope) or work items (select) to run, and the grid's x extent in workgroups. */
  total: 'u32',
  groupsX: 'u32',
  /** rope: first key row rotated; the rotation table's half width and where its sin half starts. */
  kOff: 'u32',
  ropeHalf: 'u32',
  ropeSin: 'u32',
  /** select: query rows, the key index of row 0, queries per tile, tiles per head, list slots. */
  rows: 'u32',
  qPos0: 'u32',
  tile: 'u32',
  tiles: 'u32',
  slots: 'u32',
} as const);

/** Elementwise kernels: one thread per output element. */
export interface ElementwiseSpec {
  readonly threads: number;
}

const elementwise = (name: string, bindings: Program<ElementwiseSpec, typeof LH_UNIFORMS.decl>['bindings'], body: string): Program<ElementwiseSpec, typeof LH_UNIFORMS.decl> => {
  const program: Program<ElementwiseSpec, typeof LH_UNIFORMS.decl> = {
    name,
    uniforms: LH_UNIFORMS,
    bindings,
    workgroupSize: (s) => s.threads,
    generate: (s) => `${prologue(program, s, { THREADS: s.threads })}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_INVOCATION};
  if (e >= P.total) { return; }
  ${body}
}
`,
  };
  return program;
};

/** summary[c, h, :] = mean over the chunk's rows t of x[c * C + t, h, :] (summed in row order, as on the CPU). */
export const lhPoolProgram = elementwise(
  'longheads-pool',
  () => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'x', kind: 'read', type: 'array<f32>' },
    { name: 'summary', kind: 'readwrite', type: 'array<f32>' },
  ],
  `let w = P.heads * P.dim;
  let c = e / w;
  let r = e - c * w;
  var s: f32 = 0.0;
  for (var t: u32 = 0u; t < P.chunkSize; t++) { s += x[(c * P.chunkSize + t) * w + r]; }
  summary[e] = s / f32(P.chunkSize);`,
);

/**
 * kIn[r, kh, :] = k[kOff + r, kh, :] rotated to in-chunk position r mod C ("rotate half", dims past
 * 2 * ropeHalf unchanged), from the host's float64-built table (cos [maxPos, half], then sin).
 */
export const lhRopeProgram = elementwise(
  'longheads-rope',
  () => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'k', kind: 'read', type: 'array<f32>' },
    { name: 'kIn', kind: 'readwrite', type: 'array<f32>' },
    { name: 'table', kind: 'read', type: 'array<f32>' },
  ],
  `let j = e % P.dim;
  let row = e / P.dim;
  let p = (row / P.kvHeads) % P.chunkSize;
  let src = (P.kOff * P.kvHeads + row) * P.dim;
  var x: f32 = k[src + j];
  if (j < 2u * P.ropeHalf) {
    let lo = j < P.ropeHalf;
    let f = select(j - P.ropeHalf, j, lo);
    let y = k[src + select(j - P.ropeHalf, j + P.ropeHalf, lo)];
    let t = p * P.ropeHalf + f;
    x = x * table[t] + select(y, -y, lo) * table[t + P.ropeSin];
  }
  kIn[e] = x;`,
);

/** Selection: head dim, threads per workgroup, and the slots filled by score (slots - 3, at least 0). */
export interface SelectSpec {
  readonly dim: number;
  readonly threads: number;
  readonly rest: number;
}

/** Workgroup memory of a selection spec, in bytes. */
export const selectWorkgroupBytes = (s: SelectSpec): number => 4 * (s.dim + 2 * s.threads * Math.max(1, s.rest) + 2 * s.threads + Math.max(1, s.rest));

/**
 * Chunk selection, one workgroup per (head, query tile), with select.ts' rules: lists [items,
 * slots + 1] hold a count, then the chunks ascending. Past the budget: the tile's mean query
 * (rows summed in order, divided by their count), each thread keeps its best REST candidates among
 * chunks 1 + lid, 1 + lid + THREADS, .. <= own - 2 (sorted by `better`: score, then lower index),
 * and thread 0 merges the threads' lists, REST rounds of one best head each.
 */
export const lhSelectProgram: Program<SelectSpec, typeof LH_UNIFORMS.decl> = {
  name: 'longheads-select',
  uniforms: LH_UNIFORMS,
  bindings: () => [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'q', kind: 'read', type: 'array<f32>' },
    { name: 'reps', kind: 'read', type: 'array<f32>' },
    { name: 'lists', kind: 'readwrite', type: 'array<u32>' },
  ],
  workgroupSize: (s) => s.threads,
  generate: generateSelect,
};

function generateSelect(s: SelectSpec): string {
  const R = Math.max(1, s.rest);
  return `${prologue(lhSelectProgram, s, { D: s.dim, THREADS: s.threads, NREST: s.rest, R })}

var<workgroup> mq: array<f32, D>;
var<workgroup> bestS: array<f32, ${s.threads * R}>;
var<workgroup> bestC: array<u32, ${s.threads * R}>;
var<workgroup> kept: array<u32, THREADS>;
var<workgroup> taken: array<u32, THREADS>;
var<workgroup> picked: array<u32, R>;

/** Candidate a (score sa) ranks before b: higher score, ties to the lower chunk (select.ts better). */
fn better(sa: f32, a: u32, sb: f32, b: u32) -> bool { return sa > sb || (sa == sb && a < b); }

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * P.groupsX;
  if (item >= P.total) { return; }
  let h = item / P.tiles;
  let first = (item - h * P.tiles) * P.tile;
  let own = (P.qPos0 + first) / P.chunkSize;
  let base = item * (P.slots + 1u);
  if (own < P.slots) {
    ${'' /* every chunk so far fits the budget */}
    if (lid == 0u) {
      lists[base] = own + 1u;
      for (var c: u32 = 0u; c <= own; c++) { lists[base + 1u + c] = c; }
    }
    return;
  }
  let end = min(P.rows, first + P.tile);
  for (var d: u32 = lid; d < D; d += THREADS) {
    var acc: f32 = 0.0;
    for (var r: u32 = first; r < end; r++) { acc += q[(r * P.heads + h) * D + d]; }
    mq[d] = acc / f32(end - first);
  }
  workgroupBarrier();

  ${'' /* this thread's best NREST candidates, best first, at bestS/bestC[lid * R ..] */}
  let mine = lid * R;
  var n: u32 = 0u;
  for (var c: u32 = 1u + lid; NREST > 0u && c + 2u <= own; c += THREADS) {
    let rb = (c * P.heads + h) * D;
    var sc: f32 = 0.0;
    for (var d: u32 = 0u; d < D; d++) { sc += mq[d] * reps[rb + d]; }
    if (n == NREST && !better(sc, c, bestS[mine + n - 1u], bestC[mine + n - 1u])) { continue; }
    var i: u32 = select(n, n - 1u, n == NREST);
    n = min(n + 1u, NREST);
    while (i > 0u && better(sc, c, bestS[mine + i - 1u], bestC[mine + i - 1u])) {
      bestS[mine + i] = bestS[mine + i - 1u];
      bestC[mine + i] = bestC[mine + i - 1u];
      i--;
    }
    bestS[mine + i] = sc;
    bestC[mine + i] = c;
  }
  kept[lid] = n;
  taken[lid] = 0u;
  workgroupBarrier();
  if (lid != 0u) { return; }

  ${'' /* merge: each round takes the best head among the threads' lists */}
  for (var k: u32 = 0u; k < NREST; k++) {
    var bt: u32 = THREADS;
    var bs: f32 = 0.0;
    var bc: u32 = 0u;
    for (var t: u32 = 0u; t < THREADS; t++) {
      if (taken[t] >= kept[t]) { continue; }
      let x = t * R + taken[t];
      if (bt == THREADS || better(bestS[x], bestC[x], bs, bc)) {
        bt = t;
        bs = bestS[x];
        bc = bestC[x];
      }
    }
    taken[bt] += 1u;
    ${'' /* insertion into the ascending picks */}
    var i: u32 = k;
    while (i > 0u && picked[i - 1u] > bc) {
      picked[i] = picked[i - 1u];
      i--;
    }
    picked[i] = bc;
  }
  ${'' /* [0 (sink), picks (all in 1 .. own - 2), own - 1, own]: the first slots of [own, 0, own - 1], then the rest */}
  var m: u32 = 0u;
  if (P.slots >= 2u) {
    lists[base + 1u] = 0u;
    m = 1u;
  }
  for (var k: u32 = 0u; k < NREST; k++) {
    lists[base + 1u + m] = picked[k];
    m++;
  }
  if (P.slots >= 3u) {
    lists[base + 1u + m] = own - 1u;
    m++;
  }
  lists[base + 1u + m] = own;
  lists[base] = m + 1u;
}
`;
}
