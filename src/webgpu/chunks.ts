import { prod } from '../patterns/geometry.js';
import type { PatternSpec } from '../patterns/spec.js';
import type { AttnProblem } from '../problem.js';

type ChunksSpec = Extract<PatternSpec, { kind: 'chunks' }>;
import type { ScheduleSource } from './fused-wgsl.js';

/**
 * The fused forward's walk over chunk lists (LongHeads), in the kernel: a work item is one head's
 * query tile, its visits the pieces of at most BK keys of each chunk its list tile selected, AND
 * causal tested per pair on the visits that cross the diagonal. Only the lists themselves (offsets,
 * then ids, as ChunksSpec holds them) are uploaded: no host-built schedule, whose visits (one per
 * 32 keys of every selected chunk of every tile and head) took seconds to build at 128k tokens.
 * 'selected' RoPE positions follow from a chunk's index in its list: (index - chunk) * C for its
 * keys, and the same for the query's own chunk plus nk - nq.
 */

export const CHUNK_UNIFORMS = {
  cTiles: 'u32', // query tiles per head
  cQTile: 'u32', // rows per query tile (a divisor of the list's query tile)
  cListTile: 'u32',
  cNumQTiles: 'u32',
  cListHeads1: 'u32', // 1: one list set shared by every head
  cIdsOff: 'u32', // where the ids start in the uploaded words
  cChunk: 'u32',
  cPieces: 'u32', // visits per listed chunk: ceil(chunk / BK)
  cNq: 'u32',
  cNk: 'u32',
  cQOff: 'u32',
  cKOff: 'u32',
  cCausal: 'u32',
  cShift: 'i32', // causal: key k is allowed for query q when k <= q + cShift
} as const;

export const zeroChunks = (): Record<keyof typeof CHUNK_UNIFORMS, number> =>
  Object.fromEntries(Object.keys(CHUNK_UNIFORMS).map((k) => [k, 0])) as Record<keyof typeof CHUNK_UNIFORMS, number>;

export interface ChunkPlan {
  readonly total: number;
  readonly values: Record<keyof typeof CHUNK_UNIFORMS, number>;
  /** offsets (lists + 1 words), then ids. */
  readonly words: Uint32Array;
}

/** The chunk lists and causal alignment of a pattern this walk takes: chunks, or chunks AND causal. */
function chunkParts(p: PatternSpec): { chunks: ChunksSpec; causal?: 'top-left' | 'bottom-right' } | undefined {
  if (p.kind === 'chunks') return { chunks: p };
  if (p.kind !== 'and' || p.parts.length !== 2) return undefined;
  const c = p.parts.find((x) => x.kind === 'chunks');
  const k = p.parts.find((x) => x.kind === 'causal');
  return c && k && c.kind === 'chunks' && k.kind === 'causal' ? { chunks: c, causal: k.align } : undefined;
}

/**
 * The walk's plan for a problem whose tiles are set (`keys`: the kernel's key tile BK), or
 * undefined where it does not apply: one sequence, chunks or chunks AND causal, no bias or rpb,
 * query tiles inside one list tile.
 */
export function chunkPlan(problem: AttnProblem, keys: number): ChunkPlan | undefined {
  const parts = chunkParts(problem.pattern);
  if (!parts || problem.seqs.length !== 1 || problem.bias || problem.rpb) return undefined;
  const s = problem.seqs[0]!;
  const qTile = problem.qTile.length === 1 ? problem.qTile[0]! : 0;
  const { chunks, causal } = parts;
  if (s.qGrid.length !== 1 || qTile < 1 || chunks.queryTile % qTile !== 0) return undefined;
  const nq = prod(s.qGrid);
  const nk = prod(s.kGrid);
  const lists = chunks.offsets.length - 1;
  const words = new Uint32Array(lists + 1 + chunks.ids.length);
  words.set(chunks.offsets);
  words.set(chunks.ids, lists + 1);
  const tiles = Math.ceil(nq / qTile);
  return {
    total: problem.heads * tiles,
    words,
    values: {
      cTiles: tiles,
      cQTile: qTile,
      cListTile: chunks.queryTile,
      cNumQTiles: chunks.numQTiles,
      cListHeads1: chunks.heads === 1 ? 1 : 0,
      cIdsOff: lists + 1,
      cChunk: chunks.chunkSize,
      cPieces: Math.ceil(chunks.chunkSize / keys),
      cNq: nq,
      cNk: nk,
      cQOff: s.qOff,
      cKOff: s.kOff,
      cCausal: causal ? 1 : 0,
      cShift: causal === 'bottom-right' ? nk - nq : 0,
    },
  };
}

/**
 * The walk as the fused template's schedule hooks (the uploaded words are its `sched` binding).
 * Item = h * cTiles + tile; a list tile holds whole query tiles, so one list serves every row. With
 * RoPE the query's own chunk is listed (api.ts checkOwnChunks), and its index there gives the
 * shift. A visit caps its keys at the last row's causal bound, and is full when its last key is
 * within the first row's. (No comments inside the WGSL: they would ship in every bundle.)
 */
export function chunkSource(rope: boolean): ScheduleSource {
  return {
    decls: '',
    item: `let h = item / P.cTiles;
  let q0 = (item - h * P.cTiles) * P.cQTile;
  let nq = min(P.cQTile, P.cNq - q0);
  let list = select(h, 0u, P.cListHeads1 != 0u) * P.cNumQTiles + q0 / P.cListTile;
  let cLo = sched[list];
  let nVisit = (sched[list + 1u] - cLo) * P.cPieces;
  let qOff = P.cQOff;
  let kOff = P.cKOff;
  let biasBase = 0u;
  let biasStride = 0u;
  ${
    rope
      ? `let cq = (q0 + P.cNk - P.cNq) / P.cChunk;
  var slot: u32 = 0u;
  for (var i: u32 = cLo; i < sched[list + 1u]; i++) { if (sched[P.cIdsOff + i] == cq) { slot = i - cLo; } }
  let qShift = (i32(slot) - i32(cq)) * i32(P.cChunk) + i32(P.cNk) - i32(P.cNq);`
      : ''
  }`,
    visit: (vi) => `let vl = ${vi} / P.cPieces;
    let ch = sched[P.cIdsOff + cLo + vl];
    let vk0 = ch * P.cChunk + (${vi} - vl * P.cPieces) * BK;
    let kEnd = min(min(vk0 + BK, (ch + 1u) * P.cChunk), P.cNk);
    let kCap = select(kEnd, u32(clamp(i32(q0 + nq) + P.cShift, 0, i32(kEnd))), P.cCausal != 0u);
    let nk = select(0u, kCap - vk0, kCap > vk0);
    let mask = select(NO_MASK, 0u, P.cCausal != 0u && i32(vk0 + nk) - 1 > i32(q0) + P.cShift);
    ${rope ? 'let kShift = (i32(vl) - i32(ch)) * i32(P.cChunk);' : ''}`,
    qTok: (r) => `(q0 + ${r})`,
    kTok: (j) => `(vk0 + ${j})`,
    qAt: (r) => `((qOff + q0 + ${r}) * P.heads + h) * DQ`,
    kAt: (j, w) => `((kOff + vk0 + ${j}) * P.kvHeads + kh) * ${w}`,
    qLin: () => '0',
    kLin: () => '0',
    rowSetup: () => '',
    allowed: (_i, r, c) => `i32(vk0 + ${c}) <= i32(q0 + ${r}) + P.cShift`,
  };
}
