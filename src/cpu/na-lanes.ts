import { boxCoords, boxTokens, prod } from '../patterns/geometry.js';
import type { AttnProblem, ItemSpace, SeqSpan } from '../problem.js';
import { tileFor } from '../problem.js';
import { tileBox } from '../schedule.js';
import { CONTROL, STAGE_CHUNKS, awaitGate, chunkStart } from './control.js';
import { runColumns } from './layout.js';
import type { TileCtx } from './tile-step.js';

/**
 * The fused neighborhood forward with heads in the lanes (wasm/tile.ts `naLanes`). The query-lane
 * tile step puts 4 queries of a tile in the 4 lanes, so on a 2-D/3-D window each lane group spans
 * the union of 4 windows and 30-40% of its pairs are masked (measured: 2-D k7 computes 1.4x, 3-D k5
 * 1.6x the allowed pairs), besides a mask, a slice walk and an online rescale per slice. The 4 heads
 * of one query share its window exactly, so with heads in the lanes every computed pair is an
 * allowed one and each window is one plain softmax. It needs the heads in fours, a key head per
 * query head, head dims in fours and no bias or RoPE (NATTEN's rpb is fine: its table is regrouped
 * the same way, [H/4][vol][4], by lanesRpb): then the job runs two phases, 'lanes' (k and v
 * regrouped in place per token, [H][D] -> [H/4][D][4]) and 'naLanes' (which puts each query's q in
 * lanes as it reads it, once).
 */
let enabled = true;
/** Jobs planned on head lanes so far (tests assert the path ran). */
export let headLaneJobs = 0;

/** Turns the head-lane path off (benches and tests compare it with the query-lane tile step). */
export function setHeadLanes(on: boolean): void {
  enabled = on;
}

/** Whether a fused CPU job for `p` runs on head lanes (counted in headLaneJobs when it does and `count`). */
export function headLanesFit(p: AttnProblem, count = true): boolean {
  const fit =
    enabled &&
    p.pattern.kind === 'neighborhood' &&
    p.heads % 4 === 0 &&
    p.kvHeads === p.heads &&
    p.dim % 4 === 0 &&
    p.dimV % 4 === 0 &&
    !p.bias &&
    !p.rope;
  if (fit && count) headLaneJobs++;
  return fit;
}

/** An rpb table [H][vol] regrouped as [H/4][vol][4], so one head group's entries of an offset are one v128. */
export function lanesRpb(data: Float32Array, heads: number): Float32Array {
  const vol = data.length / heads;
  const out = new Float32Array(data.length);
  for (let g = 0; g < heads / 4; g++)
    for (let j = 0; j < vol; j++) for (let l = 0; l < 4; l++) out[(g * vol + j) * 4 + l] = data[(4 * g + l) * vol + j]!;
  return out;
}

/**
 * Phase 'lanes': this range's share of the token blocks of q, k and v, taken in that order (so a
 * staged job's threads start on q while the calling thread still copies the rest: each chunk of
 * a tensor's blocks waits for its gate stage, control.ts STAGE_CHUNKS). With a 'flags' slot, each block screened first (the job's
 * non-finite screen, done here in parallel and in the same pass instead of on the calling thread);
 * k and v then regrouped in place. In a backward, its share of every thread's dK and dV partials
 * zeroed too.
 */
export function runLanes(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const { slots } = c.lay;
  const qRows = P.qRows * P.heads;
  const kRows = P.kRows * P.kvHeads;
  const parts: [number, number, number, number][] = [
    [slots.q, qRows / 4, P.dim, 0],
    [slots.k, kRows / 4, P.dim, qRows],
    [slots.v, kRows / 4, P.dimV, qRows + kRows],
  ];
  const control = c.i32.subarray(c.lay.counter >> 2, (c.lay.counter >> 2) + 16);
  // a backward's dK and dV partials (every thread's) zeroed here, in parallel, before they sum
  const { dkp, dvp } = c.lay.partialBytes;
  if (slots.dkp >= 0 && dkp && dvp)
    for (const [slot, bytes] of [[slots.dkp, dkp], [slots.dvp, dvp]] as const) {
      const per = bytes >> 2;
      const w0 = Math.floor((start * per) / space.total);
      const w1 = Math.floor((end * per) / space.total);
      for (let th = 0; th < c.lay.threads; th++) c.f32.fill(0, (slot >> 2) + th * per + w0, (slot >> 2) + th * per + w1);
    }
  // the items cover the blocks of q, then k, then v, in order
  const units = parts.reduce((n, [, blocks]) => n + blocks, 0);
  const u0 = Math.floor((start * units) / space.total);
  const u1 = Math.floor((end * units) / space.total);
  let base = 0;
  for (let t = 0; t < parts.length; t++) {
    const [slot, blocks, d, flagRow] = parts[t]!;
    const b0 = Math.max(0, u0 - base);
    const b1 = Math.min(blocks, u1 - base);
    base += blocks;
    // chunk by chunk of the staged copy, each once it is in
    for (let ch = 0; ch < STAGE_CHUNKS; ch++) {
      const a = Math.max(b0, chunkStart(blocks, ch));
      const b = Math.min(b1, chunkStart(blocks, ch + 1));
      if (b <= a) continue;
      awaitGate(control, 1 + STAGE_CHUNKS * t + ch);
      if (Atomics.load(control, CONTROL.FAILED) !== 0) return;
      if (slots.flags >= 0 && c.K.sanitize(slot + a * 16 * d, 4 * (b - a), d, slots.flags + flagRow + 4 * a) > 0) Atomics.add(control, CONTROL.FLAGGED, 1);
      // q keeps its rows: each query is read once, and naLanes puts its head group in lanes itself
      if (slot !== slots.q) c.K.lanesFromRows(slot + a * 16 * d, b - a, d, c.at.s);
    }
  }
}

/**
 * NATTEN's rpb index of (query, key): per axis (key - query + K - 1) x stride, split into a query
 * part (`rows` writes the tile's, from qCrd, to an i32 list) and a key part the kernels add from the
 * strides r (rank padded to 3 at the front); vol: entries per head.
 */
function rpbParts(c: TileCtx): { r: readonly number[]; vol: number; rows: (tq: number, dst: number) => void } {
  const { rank } = c;
  const kern = c.problem.rpb?.kernel ?? [];
  const strides = kern.map((_, a) => prod(kern.slice(a + 1).map((k) => 2 * k - 1)));
  const r = [0, 0, 0];
  strides.forEach((x, a) => (r[3 - rank + a] = x));
  const rows = (tq: number, dst: number): void => {
    for (let i = 0; i < tq; i++) {
      let part = 0;
      for (let a = 0; a < rank; a++) part += (kern[a]! - 1 - c.qCrd[i * rank + a]!) * strides[a]!;
      c.i32[(dst >> 2) + i] = part;
    }
  };
  return { r, vol: prod(kern.map((k) => 2 * k - 1)), rows };
}

/** Where a head-lane work item's keys sit: its head, sequence, tile size and key offsets (one per thread, reused). */
interface LaneTile {
  h: number;
  span: SeqSpan;
  tq: number;
  /** Token step per window coordinate on each axis, rank padded to 3 at the front. */
  readonly steps: [number, number, number];
  /** Row of the item's first head in [rows][kv heads] of its dilation group's first key. */
  kvRow: number;
}

/**
 * A thread's per-phase state of the head-lane walk, made once per phase context: claimLoop runs
 * the phase two items at a time, and the item loops allocate nothing (garbage there made the pool
 * threads' collectors run beside the compute threads every few calls).
 */
interface LaneState {
  readonly tile: LaneTile;
  readonly qTile: readonly number[];
  readonly rpb: ReturnType<typeof rpbParts>;
  /** rowLists' (list, slot, floats a row) triples of the forward and of the backward. */
  readonly fwdLists: readonly number[];
  readonly bwdLists: readonly number[];
}

const states = new WeakMap<TileCtx, LaneState>();

function laneState(c: TileCtx): LaneState {
  let st = states.get(c);
  if (!st) {
    const P = c.problem;
    const { at } = c;
    const { q, out, lse, dout, dq } = c.lay.slots;
    st = {
      tile: { h: 0, span: P.seqs[0]!, tq: 0, steps: [0, 0, 0], kvRow: 0 },
      qTile: tileFor(P.qTile, c.rank),
      rpb: rpbParts(c),
      fwdLists: [at.qRows, q, P.dim, at.outRows, out, P.dimV, at.rowIdx, lse, 1],
      // in the backward kind's tqPad-sized areas: q, O, lse, then dO (m) and dq (l)
      bwdLists: [at.qRows, q, P.dim, at.outRows, out, P.dimV, at.rowIdx, lse, 1, at.m, dout, P.dimV, at.l, dq, P.dim],
    };
    states.set(c, st);
  }
  return st;
}

/**
 * Starts work item `item` of a head-lane phase: its query tile's tokens (qTok), coordinates (qCrd)
 * and window intervals (lo, hi), and where its keys sit (written into the thread's LaneTile).
 * Undefined for items of heads h != 0 mod 4 (the item of h - h mod 4 runs their head group) and
 * for empty tiles.
 */
function laneTile(c: TileCtx, space: ItemSpace, item: number, st: LaneState): LaneTile | undefined {
  const P = c.problem;
  const { rank } = c;
  const { seq, h, g, tile } = space.decode(item, c.item);
  if (h % 4 !== 0) return undefined;
  const p = space.pattern(seq);
  const span = P.seqs[seq]!;
  const geo = p.geometry;
  const grp = p.groups[g]!;
  const qBox = tileBox(grp.qLen, st.qTile, tile, c.qBox);
  const tq = boxTokens(geo.qShape, geo.dilation, grp, qBox, c.qTok);
  if (tq === 0) return undefined;
  boxCoords(qBox, c.qCrd);
  c.tq = tq;
  c.setIntervals(p.boxRules!(g), qBox);
  const t = st.tile;
  // key token = group base + sum over axes of window coordinate x (dilation x token stride)
  let stride = 1;
  let base = 0;
  t.steps.fill(0);
  for (let a = rank - 1; a >= 0; a--) {
    t.steps[3 - rank + a] = geo.dilation[a]! * stride;
    base += grp.offset[a]! * stride;
    stride *= geo.kShape[a]!;
  }
  t.h = h;
  t.span = span;
  t.tq = tq;
  t.kvRow = (span.kOff + base) * P.kvHeads + h;
  return t;
}

/**
 * Byte-offset lists of the tile's query rows for a head-lane kernel: for each (list, slot, floats
 * a row) triple in `lists` (flat), list[i] = the row of query i's head h in that slot ([rows][heads][floats]).
 */
function rowLists(c: TileCtx, t: LaneTile, lists: readonly number[]): void {
  const { i32, qTok, problem: P } = c;
  for (let i = 0; i < t.tq; i++) {
    const r = (t.span.qOff + qTok[i]!) * P.heads + t.h;
    for (let e = 0; e < lists.length; e += 3) i32[(lists[e]! >> 2) + i] = lists[e + 1]! + r * lists[e + 2]! * 4;
  }
}

/** Phase 'naLanes': work items of heads h = 0 mod 4 run their query tile for heads h..h+3; the others are empty. */
export function runNALanes(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const { at, rank, tqPad } = c;
  const { k: kSlot, v: vSlot } = c.lay.slots;
  const st = laneState(c);
  const { rpb } = st;
  for (let item = start; item < end; item++) {
    const t = laneTile(c, space, item, st);
    if (!t) continue;
    const { h, tq, steps, kvRow } = t;
    if (P.rpb) rpb.rows(tq, at.m);
    rowLists(c, t, st.fwdLists);
    c.K.naLanes(
      at.qRows, at.outRows, at.rowIdx, at.lo, at.hi, tqPad, tq, rank,
      kSlot + kvRow * P.dim * 4, vSlot + kvRow * P.dimV * 4, steps[0]!, steps[1]!, steps[2]!,
      P.kvHeads * P.dim * 4, P.kvHeads * P.dimV * 4, P.dim, P.dimV, P.scale, P.softcap, at.s, at.kRows,
      P.rpb ? c.lay.slots.rpb + (h / 4) * rpb.vol * 16 : 0, at.m, rpb.r[0]!, rpb.r[1]!, rpb.r[2]!, at.qt, runColumns(P), at.o,
    );
  }
}

/** An rpb-shaped table [H/4][vol][4] (a drpb summed in the lane layout) back to [H][vol]. */
export function rowsOfLanesRpb(data: Float32Array, heads: number): Float32Array {
  const vol = data.length / heads;
  const out = new Float32Array(data.length);
  for (let g = 0; g < heads / 4; g++)
    for (let j = 0; j < vol; j++) for (let l = 0; l < 4; l++) out[(4 * g + l) * vol + j] = data[(g * vol + j) * 4 + l]!;
  return out;
}

/**
 * Phase 'naLanesBwd' (after 'lanes' regrouped k and v): work items of heads h = 0 mod 4 run the
 * backward of their query tile for heads h..h+3 (wasm `naLanesBwd`): dq written to its rows, dK
 * and dV into this thread's partials in the lane layout (the job's reduce sums them and puts them
 * back in rows).
 */
export function runNALanesBwd(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const { at, rank, tqPad } = c;
  const { k: kSlot, v: vSlot } = c.lay.slots;
  const dkp = c.lay.slots.dkp + c.thread * c.lay.partialBytes.dkp!;
  const dvp = c.lay.slots.dvp + c.thread * c.lay.partialBytes.dvp!;
  const drpbp = P.rpb ? c.lay.slots.drpbp + c.thread * c.lay.partialBytes.drpbp! : 0;
  const st = laneState(c);
  const { rpb } = st;
  for (let item = start; item < end; item++) {
    const t = laneTile(c, space, item, st);
    if (!t) continue;
    const { h, tq, steps, kvRow } = t;
    if (P.rpb) rpb.rows(tq, at.alpha);
    rowLists(c, t, st.bwdLists);
    c.K.naLanesBwd(
      at.qRows, at.m, at.outRows, at.rowIdx, at.l, at.lo, at.hi, tqPad, tq, rank,
      kSlot + kvRow * P.dim * 4, vSlot + kvRow * P.dimV * 4, dkp + kvRow * P.dim * 4, dvp + kvRow * P.dimV * 4,
      steps[0]!, steps[1]!, steps[2]!, P.kvHeads * P.dim * 4, P.kvHeads * P.dimV * 4, P.dim, P.dimV, P.scale, P.softcap, at.s, at.kRows, at.qt,
      P.rpb ? c.lay.slots.rpb + (h / 4) * rpb.vol * 16 : 0, P.rpb ? drpbp + (h / 4) * rpb.vol * 16 : 0, at.alpha, rpb.r[0]!, rpb.r[1]!, rpb.r[2]!, runColumns(P),
    );
  }
}

/**
 * Phase 'lanesReduce' (after 'naLanesBwd'): this range's share of dK and dV summed over the
 * threads' partials in thread order and put back from lanes to rows, in parallel instead of a
 * serial pass on the calling thread.
 */
export function runLanesReduce(c: TileCtx, space: ItemSpace, start: number, end: number): void {
  const P = c.problem;
  const { slots, partialBytes, threads } = c.lay;
  const rows = P.kRows * P.kvHeads;
  for (const [dst, part, d] of [[slots.dk, slots.dkp, P.dim], [slots.dv, slots.dvp, P.dimV]] as const) {
    const bytes = partialBytes[dst === slots.dk ? 'dkp' : 'dvp']!;
    const b0 = Math.floor((start * rows) / 4 / space.total);
    const b1 = Math.floor((end * rows) / 4 / space.total);
    if (b1 <= b0) continue;
    const at = b0 * 16 * d;
    const n = (b1 - b0) * 4 * d;
    c.f32.copyWithin((dst + at) >> 2, (part + at) >> 2, ((part + at) >> 2) + n);
    for (let th = 1; th < threads; th++) c.K.addInto(dst + at, part + th * bytes + at, n);
    c.K.rowsFromLanes(dst + at, b1 - b0, d, c.at.s);
  }
}
