import { TilewiseError } from '../errors.js';
import type { CompiledPattern } from '../patterns/compile.js';
import { type Box, boxCoords, boxTokens, boxVolume, prod } from '../patterns/geometry.js';
import { type AttnProblem, type ItemSpace, tileFor } from '../problem.js';
import { type Visit, kvSchedule, qSchedule, tileBox } from '../schedule.js';
import { SelectedPositions, chunksOf } from '../rope.js';

/**
 * The tile schedule of a problem, flattened on the CPU into one u32 array the fused kernel reads,
 * so the kernel carries no per-pattern code. Records are declared as field lists; the WGSL field
 * offsets come from the same lists.
 *
 * - item records (one per work item, at item * ITEM.size): head, row offsets of its sequence,
 *   its query tokens, its visits, and where its bias rows start;
 * - visit records (contiguous per item): key tokens (offset, count) and a mask offset, NO_MASK
 *   for full visits (no per-element test);
 * - token lists: flat token indices local to the sequence, followed (when `lin` is set) by one
 *   i32 per token, sum_a coord_a * lin_a in group-local coordinates (the kernel's rpb index is
 *   h * rpbVolume + rpbConst + lin(key) - lin(query));
 * - masks: for a partial visit, bit (i * nk + j) says query i may see key j.
 *
 * RoPE positions are token + shift: `qPosShift` per item, `kPosShift` per visit (both i32, 0
 * without RoPE). 'absolute' shifts are constants of the sequence's shape (see ropePositions).
 * 'selected' positions are slot * chunkSize + offset in the chunk, so a key's shift is
 * (slot - chunk) * chunkSize: constant over a run of consecutively listed chunks, and every visit
 * lies inside one such run (kvSchedule walks the pattern's keyRuns, the listed chunks merged where
 * consecutive), so one shift per visit is exact; this is checked here. A query tile likewise: its rows
 * are contiguous tokens inside one chunk-list tile, every row's own chunk is listed (api.ts
 * checkOwnChunks), so the chunks it spans are consecutive in the sorted list; this is checked here.
 *
 * Everything that does not depend on the head (or the batch) is shared: key token lists are
 * deduplicated by box, and whole item schedules by (pattern, group, tile) unless the pattern
 * varies per head or per batch. Work is linear in the number of visits plus partial-visit pairs.
 */
export interface RecordLayout<F extends string> {
  readonly fields: readonly F[];
  readonly at: Readonly<Record<F, number>>;
  readonly size: number;
  /** `const <prefix><field>: u32 = <offset>u;` lines. */
  wgsl(prefix: string): string;
}

function record<F extends string>(fields: readonly F[]): RecordLayout<F> {
  const at = Object.fromEntries(fields.map((f, i) => [f, i])) as Record<F, number>;
  return {
    fields,
    at,
    size: fields.length,
    wgsl: (prefix) => fields.map((f, i) => `const ${prefix}${f}: u32 = ${i}u;`).join('\n'),
  };
}

export const ITEM = record(['h', 'qOff', 'kOff', 'qTok', 'nq', 'visit', 'nVisit', 'biasBase', 'biasStride', 'qPosShift'] as const);
export const VISIT = record(['kTok', 'nk', 'mask', 'kPosShift'] as const);
export const NO_MASK = 0xffffffff;

class Heap {
  data: Uint32Array;
  n = 0;
  constructor(
    start: number,
    private readonly maxWords: number,
  ) {
    this.data = new Uint32Array(Math.max(1024, start * 2));
    this.n = start;
    this.check(start);
  }
  private check(n: number): void {
    if (n > this.maxWords)
      throw new TilewiseError('webgpu', 'the tile schedule exceeds the largest storage buffer the device allows', `${n * 4} > ${this.maxWords * 4} bytes`);
  }
  alloc(words: number): number {
    const off = this.n;
    const need = off + words;
    this.check(need);
    if (need > this.data.length) {
      const grown = new Uint32Array(Math.max(need, this.data.length * 2));
      grown.set(this.data.subarray(0, this.n));
      this.data = grown;
    }
    this.n = need;
    return off;
  }
}

export interface GpuSchedule {
  readonly data: Uint32Array;
  readonly items: number;
  readonly visits: number;
  readonly partialVisits: number;
}

interface Entry {
  qTok: number;
  nq: number;
  visit: number;
  nVisit: number;
  qPosShift: number;
}

/** A visit with the RoPE shift of its keys. */
interface ShiftedVisit extends Visit {
  readonly kPosShift: number;
}

/** Written out, not `{ ...v, kPosShift }`: V8's spread copies made the whole build 1.9x slower here. */
const shifted = (v: Visit, kPosShift: number): ShiftedVisit => ({ box: v.box, full: v.full, kPosShift });

/**
 * The RoPE shifts of one query tile (`qTok`, `nq` rows; `nqSeq`/`nkSeq` the sequence's lengths):
 * its query shift and each visit's key shift ('selected' positions: from the visit's first and
 * last keys, which must agree).
 */
function ropeShifts(
  problem: AttnProblem,
  h: number,
  nqSeq: number,
  nkSeq: number,
  qTok: Int32Array,
  nq: number,
  vs: readonly Visit[],
  keyTokens: (box: Box) => Int32Array,
): { qPosShift: number; visits: ShiftedVisit[] } {
  const rope = problem.rope;
  if (!rope) return { qPosShift: 0, visits: vs.map((v) => shifted(v, 0)) };
  if (rope.positions === 'absolute') {
    const kPosShift = Math.max(0, nqSeq - nkSeq);
    return { qPosShift: Math.max(0, nkSeq - nqSeq), visits: vs.map((v) => shifted(v, kPosShift)) };
  }
  const spec = chunksOf(problem.pattern)!;
  const C = spec.chunkSize;
  const t = Math.floor(qTok[0]! / spec.queryTile);
  const sel = new SelectedPositions(spec).at(h, t);
  const qPosShift = sel.position(qTok[0]! + nkSeq - nqSeq) - qTok[0]!;
  for (let i = 0; i < nq; i++)
    if (Math.floor(qTok[i]! / spec.queryTile) !== t || sel.position(qTok[i]! + nkSeq - nqSeq) !== qTok[i]! + qPosShift)
      throw new TilewiseError('webgpu', 'a query tile does not share one RoPE position shift (internal)', `head ${h}, query ${qTok[i]}`);
  const visits: ShiftedVisit[] = [];
  for (const v of vs) {
    // rank 1, one group ('selected' RoPE needs a chunks pattern): box index j is token kTok[j]
    const n = v.box.hi[0]! - v.box.lo[0]!;
    const kTok = keyTokens(v.box);
    const shiftOf = (t: number): number => {
      const c = Math.floor(t / C);
      const slot = sel.slotOf(c);
      if (slot < 0) throw new TilewiseError('webgpu', 'a visit holds keys of an unlisted chunk (internal)', `head ${h}, key ${t}`);
      return (slot - c) * C;
    };
    // listed chunks have increasing slots, so equal shifts at both ends mean every chunk between is listed
    const kPosShift = shiftOf(kTok[0]!);
    if (shiftOf(kTok[n - 1]!) !== kPosShift) throw new TilewiseError('webgpu', 'a visit spans two runs of listed chunks (internal)', `head ${h}, keys ${kTok[0]}..${kTok[n - 1]}`);
    visits.push(shifted(v, kPosShift));
  }
  return { qPosShift, visits };
}

export interface ScheduleOptions {
  /** Per-axis weights of the linear coordinate stored after each token list (rpb); none = no coordinates. */
  readonly lin?: readonly number[];
  /** Largest schedule the device can bind, in u32 words. */
  readonly maxWords: number;
  /**
   * The transposed schedule (the backward's dK/dV pass): items are key tiles (`space` built with
   * side 'k'), their records list key tokens where a forward item lists query tokens, visits are
   * query boxes (qSchedule), and mask bit (i * nq + j) says key i is seen by query j. RoPE shifts
   * trade places the same way: the item's is the keys', each visit's the queries'.
   */
  readonly transposed?: boolean;
}

/** Builds the flattened schedule of every work item of `space` (whose problem carries the tile shapes). */
export function buildGpuSchedule(problem: AttnProblem, space: ItemSpace, opts: ScheduleOptions): GpuSchedule {
  const heap = new Heap(space.total * ITEM.size, opts.maxWords);
  const lin = opts.lin;
  const tr = opts.transposed === true;
  if (tr && problem.rope?.positions === 'selected') throw new TilewiseError('ropePositions', "'selected' (LongHeads) has no transposed schedule");
  const patIds = new Map<CompiledPattern, number>();
  const entries = new Map<string, Entry>();
  // token lists already written, per `pattern id|group`, by box: lo * keySpan + hi in 1-D (no string per visit)
  const keyLists = new Map<string, Map<number | string, number>>();
  let visits = 0;
  let partialVisits = 0;

  // scratch, sized for the largest tiles
  const rank0 = space.total > 0 ? space.pattern(0).geometry.qShape.length : 1;
  const maxQ = prod(tileFor(problem.qTile, rank0));
  const maxK = prod(tileFor(problem.kvTile, rank0));
  const qTok = new Int32Array(maxQ);
  const kTok = new Int32Array(maxK);
  const qCrd = new Int32Array(maxQ * rank0);
  const kCrd = new Int32Array(maxK * rank0);
  const lo = new Int32Array(maxQ * rank0);
  const hi = new Int32Array(maxQ * rank0);
  const row = new Uint8Array(Math.max(maxQ, maxK));
  const keySpan = 1 + Math.max(1, ...problem.seqs.map((s) => Math.max(prod(s.kGrid), prod(s.qGrid))));

  /** Writes a token list (and its linear coordinates) to the heap; returns its offset. */
  const putTokens = (tok: Int32Array, n: number, box: Box, crd: Int32Array): number => {
    const off = heap.alloc(lin ? 2 * n : n);
    const d = heap.data;
    for (let i = 0; i < n; i++) d[off + i] = tok[i]!;
    if (lin) {
      const rank = box.lo.length;
      boxCoords(box, crd);
      for (let i = 0; i < n; i++) {
        let x = 0;
        for (let a = 0; a < rank; a++) x += crd[i * rank + a]! * lin[a]!;
        d[off + n + i] = x >>> 0;
      }
    }
    return off;
  };

  for (let item = 0; item < space.total; item++) {
    const { seq, h, g, tile } = space.decode(item);
    const p = space.pattern(seq);
    const span = problem.seqs[seq]!;
    let pid = patIds.get(p);
    if (pid === undefined) patIds.set(p, (pid = patIds.size));
    const nqSeq = prod(span.qGrid);
    const nkSeq = prod(span.kGrid);
    const key = `${pid}|${p.perBatch ? span.b : ''}|${p.perHead ? h : ''}|${g}|${tile}`;
    let e = entries.get(key);
    if (!e) {
      const geo = p.geometry;
      const rank = geo.qShape.length;
      const grp = p.groups[g]!;
      const rules = p.boxRules?.(g);
      const qTileR = tileFor(problem.qTile, rank);
      const kTileR = tileFor(problem.kvTile, rank);
      // each query's key interval per axis (box patterns), for the n queries of qBox
      const ruleBounds = (qBox: Box, n: number) => {
        if (!rules) return;
        boxCoords(qBox, qCrd);
        for (let i = 0; i < n; i++)
          for (let a = 0; a < rank; a++) {
            lo[i * rank + a] = rules[a]!.start(qCrd[i * rank + a]!);
            hi[i * rank + a] = rules[a]!.end(qCrd[i * rank + a]!);
          }
      };
      // query i of qTok may see key j of kTok (box rules: kCrd holds the keys' coordinates)
      const allowed = (i: number, j: number): boolean => {
        for (let a = 0; a < rank; a++) {
          const x = kCrd[j * rank + a]!;
          if (x < lo[i * rank + a]! || x > hi[i * rank + a]!) return false;
        }
        return true;
      };
      // this item's own tokens: a query tile, or (transposed) a key tile
      const ownBox = tileBox(tr ? grp.kLen : grp.qLen, tr ? kTileR : qTileR, tile);
      const ownTok = tr ? kTok : qTok;
      const nOwn = boxTokens(tr ? geo.kShape : geo.qShape, geo.dilation, grp, ownBox, ownTok);
      const ownOff = putTokens(ownTok, nOwn, ownBox, tr ? kCrd : qCrd);
      if (!tr) ruleBounds(ownBox, nOwn);
      else if (rules) boxCoords(ownBox, kCrd);
      const otherTokens = (box: Box) => (boxTokens(geo.kShape, geo.dilation, grp, box, kTok), kTok);
      let vs: ShiftedVisit[];
      let ownShift: number;
      if (tr) {
        const rope = problem.rope !== undefined;
        ownShift = rope ? Math.max(0, nqSeq - nkSeq) : 0;
        const visitShift = rope ? Math.max(0, nkSeq - nqSeq) : 0;
        vs = qSchedule(p, span.b, h, g, ownBox, qTileR).map((v) => shifted(v, visitShift));
      } else {
        const shifted = ropeShifts(problem, h, nqSeq, nkSeq, qTok, nOwn, kvSchedule(p, span.b, h, g, ownBox, kTileR), otherTokens);
        vs = shifted.visits;
        ownShift = shifted.qPosShift;
      }
      const vOff = heap.alloc(vs.length * VISIT.size);
      const listKey = `${pid}|${g}`;
      let lists = keyLists.get(listKey);
      if (!lists) keyLists.set(listKey, (lists = new Map()));
      vs.forEach((vis, vi) => {
        const nOther = boxVolume(vis.box);
        const boxKey = vis.box.lo.length === 1 ? vis.box.lo[0]! * keySpan + vis.box.hi[0]! : `${vis.box.lo.join(',')}|${vis.box.hi.join(',')}`;
        let otherOff = lists.get(boxKey);
        const otherTok = tr ? qTok : kTok;
        const otherCrd = tr ? qCrd : kCrd;
        if (otherOff === undefined || !vis.full) boxTokens(tr ? geo.qShape : geo.kShape, geo.dilation, grp, vis.box, otherTok);
        if (otherOff === undefined) lists.set(boxKey, (otherOff = putTokens(otherTok, nOther, vis.box, otherCrd)));
        let mask = NO_MASK;
        if (!vis.full) {
          partialVisits++;
          mask = heap.alloc(Math.ceil((nOwn * nOther) / 32));
          const d = heap.data;
          const set = (bit: number) => (d[mask + (bit >>> 5)]! |= 1 << (bit & 31));
          if (rules) {
            if (tr) ruleBounds(vis.box, nOther);
            else boxCoords(vis.box, kCrd);
            for (let i = 0; i < nOwn; i++) for (let j = 0; j < nOther; j++) if (tr ? allowed(j, i) : allowed(i, j)) set(i * nOther + j);
          } else if (!tr) {
            // a row of keys per query: the pattern works out each query's bounds once
            for (let i = 0; i < nOwn; i++) {
              p.allowsRow(span.b, h, qTok[i]!, kTok, 0, nOther, row);
              for (let j = 0, bit = i * nOther; j < nOther; j++, bit++) d[mask + (bit >>> 5)]! |= row[j]! << (bit & 31);
            }
          } else {
            // transposed: own rows are keys (kTok), visited ones queries (qTok)
            for (let j = 0; j < nOther; j++) {
              p.allowsRow(span.b, h, qTok[j]!, kTok, 0, nOwn, row);
              for (let i = 0; i < nOwn; i++) if (row[i]) set(i * nOther + j);
            }
          }
        }
        const r = vOff + vi * VISIT.size;
        heap.data[r + VISIT.at.kTok] = otherOff;
        heap.data[r + VISIT.at.nk] = nOther;
        heap.data[r + VISIT.at.mask] = mask;
        heap.data[r + VISIT.at.kPosShift] = vis.kPosShift >>> 0;
      });
      visits += vs.length;
      e = { qTok: ownOff, nq: nOwn, visit: vOff, nVisit: vs.length, qPosShift: ownShift };
      entries.set(key, e);
    }
    const b = problem.bias;
    const r = item * ITEM.size;
    const d = heap.data;
    d[r + ITEM.at.h] = h;
    d[r + ITEM.at.qOff] = span.qOff;
    d[r + ITEM.at.kOff] = span.kOff;
    d[r + ITEM.at.qTok] = e.qTok;
    d[r + ITEM.at.nq] = e.nq;
    d[r + ITEM.at.visit] = e.visit;
    d[r + ITEM.at.nVisit] = e.nVisit;
    d[r + ITEM.at.biasBase] = b ? ((b.batch === 1 ? 0 : span.b) * b.heads + (b.heads === 1 ? 0 : h)) * nqSeq * nkSeq : 0;
    d[r + ITEM.at.biasStride] = nkSeq;
    d[r + ITEM.at.qPosShift] = e.qPosShift >>> 0;
  }
  return { data: heap.data.subarray(0, heap.n), items: space.total, visits, partialVisits };
}
