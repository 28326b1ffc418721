import { type Box, type Geometry, type Group, prod } from '../patterns/geometry.js';
import type { AxisRule } from '../patterns/rules.js';
import type { CompiledPattern } from '../patterns/compile.js';
import type { AttnProblem, ItemAt, SeqSpan } from '../problem.js';
import { ropePositions } from '../rope.js';
import type { JobLayout, ScratchPlan } from './layout.js';
import type { TileKernels } from './tile-kernels.js';

/**
 * One thread's view of a job: the tile kernels, the shared memory, the job's tensors and this
 * thread's scratch. The steps below are the CPU tile step every kernel family shares (design.md
 * 4): load a query tile, score a key visit (Q.K^T, softcap, bias, rpb, mask), accumulate it
 * (online softmax, P.V) and write the tile out. Only index lists are built in TypeScript.
 */
export class TileCtx {
  readonly f32: Float32Array;
  readonly i32: Int32Array;
  /** Absolute byte offsets of this thread's scratch areas. */
  readonly at: Record<keyof ScratchPlan['off'], number>;
  /** Sequence-local token indices and local coordinates of the current query tile and visit. */
  readonly qTok: Int32Array;
  readonly kTok: Int32Array;
  readonly qCrd: Int32Array;
  /** The current work item and its query box, reused item after item (ItemSpace.decode, tileBox into). */
  readonly item: ItemAt = { seq: 0, h: 0, g: 0, tile: 0 };
  readonly qBox: Box = { lo: [], hi: [] };
  readonly pos: Int32Array;
  readonly tqPad: number;
  private readonly rpbStrides: number[];
  private readonly order: Int32Array;
  private readonly ends: Int32Array;
  private readonly kStride: Int32Array;
  private readonly rpbHead: number;
  /** Per key token: 1 + the KV head whose K and V rows this thread's packed copies hold (0: none). */
  private readonly packed: Int32Array;
  /** The head of the last packed visit and how many rows it newly packed since (a lower bound of those holding it). */
  private packHead = -1;
  private packCount = 0;
  /** Tokens of the rows a visit copies into the packed copies. */
  private readonly missTok: Int32Array;
  tq = 0;
  h = 0;
  /** Dilation group of the current tile. */
  groupIndex = 0;
  /**
   * The last key list's K and V rows when they are equally spaced (row j at first + j * step), else
   * step 0 (K: also under RoPE, whose rotated copies replace the list).
   */
  kRowFirst = 0;
  kRowStep = 0;
  vRowFirst = 0;
  vRowStep = 0;
  /** Slices laid out in the ranges scratch by the last sliced visit. */
  slices = 0;
  /** One query's allowed flags over a visit's keys (CompiledPattern.allowsRow), grown on first use. */
  private rowFlags = new Uint8Array(0);
  span!: SeqSpan;

  constructor(
    readonly K: TileKernels,
    memory: WebAssembly.Memory,
    readonly problem: AttnProblem,
    readonly lay: JobLayout,
    readonly plan: ScratchPlan,
    readonly thread: number,
    readonly rank: number,
  ) {
    this.f32 = new Float32Array(memory.buffer);
    this.i32 = new Int32Array(memory.buffer);
    const base = lay.scratch + thread * lay.scratchBytes;
    this.at = {} as TileCtx['at'];
    for (const k in plan.off) this.at[k as keyof TileCtx['at']] = base + plan.off[k as keyof TileCtx['at']];
    this.tqPad = plan.tqPad;
    this.qTok = new Int32Array(plan.tqPad);
    this.kTok = new Int32Array(plan.maxK);
    this.qCrd = new Int32Array(plan.tqPad * rank);
    this.order = new Int32Array(3);
    this.ends = new Int32Array(2 * plan.tqPad);
    this.kStride = new Int32Array(rank);
    this.pos = new Int32Array(Math.max(plan.tqPad, plan.maxK));
    // rpb [H, 2K0-1, 2K1-1, ...] at key - query + K - 1 per axis: separable into a row part and a key part
    const kern = problem.rpb?.kernel ?? [];
    this.rpbStrides = kern.map((_, a) => prod(kern.slice(a + 1).map((k) => 2 * k - 1)));
    this.rpbHead = prod(kern.map((k) => 2 * k - 1));
    this.packed = new Int32Array(plan.packRows);
    this.missTok = new Int32Array(plan.packRows > 0 ? plan.maxK : 0);
  }

  /**
   * Lanes the kernels run for the current tile: its rows padded to 4 (the kernels' lane group),
   * not the plan's largest tile (a one-row decode tile ran all 64 lanes of a 64-row plan).
   */
  get lanes(): number {
    return Math.min(this.tqPad, (Math.max(1, this.tq) + 3) & ~3);
  }

  private rowOf(slot: number, row: number, heads: number, head: number, width: number): number {
    return slot + ((row * heads + head) * width) * 4;
  }

  /**
   * Starts a query tile of `tq` rows (tokens in qTok, coordinates in qCrd) for head h: row
   * pointers (RoPE-rotated copies when the problem has RoPE), the scaled transposed Q tile, and
   * fresh running max, sum and output. `load` false skips Q (naAV needs only the output side).
   */
  beginQueries(span: SeqSpan, h: number, tq: number, load = true): void {
    const { problem: P, at, f32, i32, tqPad } = this;
    this.span = span;
    this.h = h;
    this.tq = tq;
    f32.fill(-Infinity, at.m >> 2, (at.m >> 2) + tqPad);
    f32.fill(0, at.l >> 2, (at.l >> 2) + tqPad);
    f32.fill(0, at.o >> 2, (at.o >> 2) + tqPad * P.dimV);
    if (!load) return;
    const q = this.lay.slots.q;
    for (let i = 0; i < tq; i++) i32[(at.qRows >> 2) + i] = this.rowOf(q, span.qOff + this.qTok[i]!, P.heads, h, P.dim);
    if (P.rope) this.rotated(at.qRows, at.ropeQ, tq, true);
    this.K.loadQT(at.qt, at.qRows, tq, tqPad, P.dim, P.scale);
  }

  /**
   * Rotates the `n` rows listed at `rows` to their RoPE positions into `dst` (wasm, with the cos/sin
   * table in the shared memory) and points the list there.
   */
  private rotated(rows: number, dst: number, n: number, isQuery: boolean, tok0 = 0): void {
    const { problem: P, i32, span, at } = this;
    const rope = P.rope!;
    const tok = isQuery ? this.qTok : this.kTok.subarray(tok0);
    ropePositions(rope, P.pattern, this.h, prod(span.qGrid), prod(span.kGrid), tok, n, isQuery, this.qTok[0]!, this.pos);
    for (let i = 0; i < n; i++) {
      const p = this.pos[i]!;
      if (p < 0 || p >= rope.maxPos) throw new Error(`rope position ${p} outside the table (${rope.maxPos})`);
    }
    i32.set(this.pos.subarray(0, n), at.ropePos >> 2);
    this.K.ropeRows(dst, rows, n, P.dim, rope.dims / 2, this.lay.slots.rope, rope.maxPos, at.ropePos);
  }

  /** Each query row's key interval per axis ([rank][tqPad]; pad rows get an empty one), one rule call per distinct coordinate. */
  setIntervals(rules: readonly AxisRule[], qBox: Box): void {
    const { i32, at, tqPad, rank, qCrd } = this;
    const ends = this.ends;
    for (let a = 0; a < rank; a++) {
      const lo = (at.lo >> 2) + a * tqPad;
      const hi = (at.hi >> 2) + a * tqPad;
      const x0 = qBox.lo[a]!;
      for (let x = x0; x < qBox.hi[a]!; x++) {
        ends[2 * (x - x0)] = rules[a]!.start(x);
        ends[2 * (x - x0) + 1] = rules[a]!.end(x);
      }
      for (let i = 0; i < this.tq; i++) {
        const e = 2 * (qCrd[i * rank + a]! - x0);
        i32[lo + i] = ends[e]!;
        i32[hi + i] = ends[e + 1]!;
      }
      i32.fill(1, lo + this.tq, lo + tqPad);
      i32.fill(0, hi + this.tq, hi + tqPad);
    }
  }

  /**
   * The keys of `box` (group-local, in the tile's dilation group) as lists the kernels read: token
   * (kTok), coordinates (kCrd), K and V row pointers. Axis `first` runs outermost, the others
   * row-major, so every fixed coordinate on `first` is one contiguous run. `coords` false skips the
   * coordinates (a full visit without rpb reads none); `lists` false also skips the tokens and row
   * pointers where the rows are equally spaced (kRowStep, vRowStep: what a plain full visit reads).
   * Returns the count.
   */
  keyList(box: Box, geo: Geometry, grp: Group, values: boolean, first = 0, coords = true, lists = true): number {
    const { problem: P, i32, at, span, rank } = this;
    const kh = Math.floor(this.h / (P.heads / P.kvHeads));
    const kSlot = this.lay.slots.k;
    const vSlot = this.lay.slots.v;
    // three nested loops (rank padded with unit axes), outermost `first`: the token index and both
    // row pointers advance by constant steps, so the inner loop only adds
    const ax = this.order; // axes outer to inner, -1 = padding
    ax.fill(-1);
    let j = 3 - rank;
    ax[j++] = first;
    for (let a = 0; a < rank; a++) if (a !== first) ax[j++] = a;
    let st = 1;
    let flat0 = 0;
    for (let a = rank - 1; a >= 0; a--) {
      if (box.hi[a]! <= box.lo[a]!) return 0;
      this.kStride[a] = geo.dilation[a]! * st; // token step per coordinate step
      flat0 += (grp.offset[a]! + geo.dilation[a]! * box.lo[a]!) * st;
      st *= geo.kShape[a]!;
    }
    const lo = (o: number) => (ax[o]! < 0 ? 0 : box.lo[ax[o]!]!);
    const len = (o: number) => (ax[o]! < 0 ? 1 : box.hi[ax[o]!]! - box.lo[ax[o]!]!);
    const step = (o: number) => (ax[o]! < 0 ? 0 : this.kStride[ax[o]!]!);
    const [n0, n1, n2] = [len(0), len(1), len(2)];
    const [s0, s1, s2] = [step(0), step(1), step(2)];
    const [a0, a1, a2] = [ax[0]!, ax[1]!, ax[2]!];
    const [l0, l1, l2] = [lo(0), lo(1), lo(2)];
    const kRow = P.kvHeads * P.dim * 4;
    const vRow = P.kvHeads * P.dimV * 4;
    const kBase = kSlot + ((span.kOff * P.kvHeads + kh) * P.dim) * 4;
    const vBase = vSlot + ((span.kOff * P.kvHeads + kh) * P.dimV) * 4;
    const kc = at.kCrd >> 2;
    const kr = at.kRows >> 2;
    const vr = at.vRows >> 2;
    // backward: the same keys' rows in this thread's dK and dV partials
    const grads = this.plan.backward;
    const dkBase = grads ? this.lay.slots.dkp + this.thread * this.lay.partialBytes.dkp! + (kBase - kSlot) : 0;
    const dvBase = grads ? this.lay.slots.dvp + this.thread * this.lay.partialBytes.dvp! + (vBase - vSlot) : 0;
    const dkr = at.dkRows >> 2;
    const dvr = at.dvRows >> 2;
    const tok = this.kTok;
    // the lists point at this thread's packed copies where it keeps them (fillPacked): [tokens][dim]
    // per head, so as affine in the token as the job's rows
    const pack = this.packed.length > 0;
    const [kAt, kStep] = pack && !P.rope ? [at.kPack + span.kOff * P.dim * 4, P.dim * 4] : [kBase, kRow];
    const [vAt, vStep] = pack ? [at.vPack + span.kOff * P.dimV * 4, P.dimV * 4] : [vBase, vRow];
    // one token step between consecutive keys across the box's rows too: the kernels can skip the lists
    let tokStep = 0;
    let inner = 1; // keys per step of the next axis out
    for (const [len, st] of [[n2, s2], [n1, s1], [n0, s0]] as const) {
      if (len === 1) continue;
      if (tokStep === 0) tokStep = st;
      else if (st !== inner * tokStep) tokStep = -1;
      inner *= len;
    }
    if (tokStep === 0) tokStep = 1; // one key
    this.kRowFirst = kAt + flat0 * kStep;
    this.kRowStep = kSlot >= 0 && !P.rope && tokStep > 0 ? tokStep * kStep : 0;
    this.vRowFirst = vAt + flat0 * vStep;
    this.vRowStep = values && tokStep > 0 ? tokStep * vStep : 0;
    if (!lists && !coords && !grads && tokStep > 0 && this.kRowStep > 0) {
      const count = n0 * n1 * n2;
      if (pack) this.fillPacked(count, kh, kBase, kRow, vBase, vRow, flat0, tokStep);
      return count;
    }
    let n = 0;
    for (let x0 = 0; x0 < n0; x0++)
      for (let x1 = 0; x1 < n1; x1++) {
        let f = flat0 + x0 * s0 + x1 * s1;
        for (let x2 = 0; x2 < n2; x2++, n++, f += s2) {
          tok[n] = f;
          if (kSlot >= 0) i32[kr + n] = kAt + f * kStep;
          if (values) i32[vr + n] = vAt + f * vStep;
          if (grads) {
            i32[dkr + n] = dkBase + f * kRow;
            i32[dvr + n] = dvBase + f * vRow;
          }
          if (!coords) continue;
          const c = kc + n * rank;
          if (a0 >= 0) i32[c + a0] = l0 + x0;
          if (a1 >= 0) i32[c + a1] = l1 + x1;
          i32[c + a2] = l2 + x2;
        }
      }
    if (pack) this.fillPacked(n, kh, kBase, kRow, vBase, vRow);
    return n;
  }

  /**
   * Copies the visit's key rows that this thread's head-contiguous K and V copies (layout.ts
   * packedRows) do not hold yet for head kh; keyList already points the lists there. K is not
   * copied under RoPE, which rotates it into a contiguous copy of its own. The tokens are kTok's
   * first n, or flat0 + j * tokStep when tokStep > 0.
   */
  private fillPacked(n: number, kh: number, kBase: number, kRow: number, vBase: number, vRow: number, flat0 = 0, tokStep = 0): void {
    const { problem: P, i32, at, packed, kTok: tok, missTok: miss } = this;
    // every row of the job already holds head kh (dense: after the head's first query tile)
    if (this.packHead !== kh) [this.packHead, this.packCount] = [kh, 0];
    if (this.packCount === P.kRows) return;
    const kOff = this.span.kOff;
    let m = 0;
    for (let j = 0; j < n; j++) {
      // the visit's tokens: listed, or (tokStep > 0, no list) equally spaced from flat0
      const f = tokStep > 0 ? flat0 + j * tokStep : tok[j]!;
      if (packed[kOff + f] === kh + 1) continue;
      packed[kOff + f] = kh + 1;
      miss[m++] = f;
    }
    if (m === 0) return;
    this.packCount += m;
    const [from, to] = [at.packFrom >> 2, at.packTo >> 2];
    const copy = (base: number, row: number, dst: number, width: number) => {
      for (let x = 0; x < m; x++) {
        i32[from + x] = base + miss[x]! * row;
        i32[to + x] = dst + (kOff + miss[x]!) * width * 4;
      }
      this.K.copyRows(at.packFrom, at.packTo, m, width);
    };
    if (!P.rope) copy(kBase, kRow, at.kPack, P.dim);
    copy(vBase, vRow, at.vPack, P.dimV);
  }

  /**
   * Scores of the current tile's lanes [i0, i0 + ni) (ni a multiple of 4) against the visit's `tk`
   * keys into S [tk][tqPad]: Q.K^T, softcap, bias, rpb (needs the visit box's coordinates in kCrd),
   * then the mask of a partial visit: interval rules in wasm when the pattern has them, else the
   * exact predicate here.
   */
  score(tk: number, full: boolean, p: CompiledPattern, rules: readonly AxisRule[] | undefined, i0 = 0, ni = this.tqPad, k0 = 0): void {
    const { problem: P, K, at, tqPad, i32, f32, span, h } = this;
    const s0 = at.s + 4 * i0;
    const real = Math.max(0, Math.min(ni, this.tq - i0)); // lanes holding a query row
    const kRows = at.kRows + 4 * k0;
    const kCrd = at.kCrd + 4 * k0 * this.rank;
    if (P.rope) this.rotated(kRows, at.ropeK, tk, false, k0);
    if (this.kRowStep > 0) K.scoresTStrided(s0, at.qt + 4 * i0, tqPad, ni, this.kRowFirst + k0 * this.kRowStep, this.kRowStep, tk, P.dim);
    else K.scoresT(s0, at.qt + 4 * i0, tqPad, ni, kRows, tk, P.dim);
    if (P.softcap > 0) {
      K.softcap(s0, tqPad, ni, tk, P.softcap);
      // the backward needs the capped scores for the softcap's derivative (bias and rpb come after)
      if (this.plan.backward) f32.copyWithin(at.sc >> 2, at.s >> 2, (at.s >> 2) + tk * tqPad);
    }
    if (P.bias) {
      const nq = prod(span.qGrid);
      const nk = prod(span.kGrid);
      const base = ((P.bias.batch === 1 ? 0 : span.b) * P.bias.heads + (P.bias.heads === 1 ? 0 : h)) * nq * nk;
      for (let i = 0; i < real; i++) i32[(at.rowIdx >> 2) + i] = base + this.qTok[i0 + i]! * nk;
      i32.set(this.kTok.subarray(k0, k0 + tk), at.colIdx >> 2);
      K.addGathered(s0, tqPad, real, tk, this.lay.slots.bias, at.rowIdx, at.colIdx);
    }
    if (P.rpb) {
      const { rank, qCrd, rpbStrides: st } = this;
      const kern = P.rpb.kernel;
      for (let i = 0; i < real; i++) {
        let r = h * this.rpbHead;
        for (let a = 0; a < rank; a++) r += (kern[a]! - 1 - qCrd[(i0 + i) * rank + a]!) * st[a]!;
        i32[(at.rowIdx >> 2) + i] = r;
      }
      for (let j = 0; j < tk; j++) {
        let c = 0;
        for (let a = 0; a < rank; a++) c += i32[(kCrd >> 2) + j * rank + a]! * st[a]!;
        i32[(at.colIdx >> 2) + j] = c;
      }
      K.addGathered(s0, tqPad, real, tk, this.lay.slots.rpb, at.rowIdx, at.colIdx);
    }
    if (full) return;
    if (rules) {
      K.maskBox(s0, tqPad, ni, tk, this.rank, kCrd, at.lo + 4 * i0, at.hi + 4 * i0);
      return;
    }
    // other patterns (chunk lists, block masks, user masks, their compositions): a row of keys per query
    const s = at.s >> 2;
    const row = this.maskRow(tk);
    for (let i = i0; i < i0 + real; i++) {
      p.allowsRow(span.b, h, this.qTok[i]!, this.kTok, k0, tk, row);
      for (let j = 0; j < tk; j++) if (!row[j]) f32[s + j * tqPad + i] = -Infinity;
    }
  }

  private maskRow(n: number): Uint8Array {
    if (this.rowFlags.length < n) this.rowFlags = new Uint8Array(Math.max(n, this.plan.maxK));
    return this.rowFlags;
  }

  /** Every slice in the ranges scratch in one call: scores, softcap, mask, online softmax, P.V. */
  slicedVisit(): void {
    const { K, at, problem: P } = this;
    K.slicedVisit(at.s, at.qt, this.tqPad, P.dim, P.dimV, at.kRows, at.vRows, at.kCrd, this.rank, at.lo, at.hi, at.ranges, this.slices, P.softcap, at.m, at.l, at.alpha, at.o);
  }

  /** Online softmax over the scored lanes [i0, i0 + ni), then O = alpha * O + P V on them (keys from list entry k0). */
  accumulate(tk: number, i0 = 0, ni = this.tqPad, k0 = 0): void {
    const { K, at, tqPad, problem: P } = this;
    const l4 = 4 * i0;
    K.softmaxStep(at.s + l4, tqPad, ni, tk, at.m + l4, at.l + l4, at.alpha + l4);
    const o = at.o + l4 * P.dimV;
    if (this.vRowStep > 0) K.pvAccStrided(o, P.dimV, at.s + l4, tqPad, ni, tk, this.vRowFirst + k0 * this.vRowStep, this.vRowStep, at.alpha + l4);
    else K.pvAcc(o, P.dimV, at.s + l4, tqPad, ni, tk, at.vRows + 4 * k0, at.alpha + l4);
  }

  /** Writes out = O / l and (unless `lse` is false) lse = m + log l for the tile's rows (l = 0: out 0, lse -inf). */
  finish(writeLse = true): void {
    const { problem: P, K, at, i32, f32, span, h, tq } = this;
    const out = this.lay.slots.out;
    const lse = writeLse ? this.lay.slots.lse >> 2 : -1;
    for (let i = 0; i < tq; i++) {
      const row = span.qOff + this.qTok[i]!;
      i32[(at.outRows >> 2) + i] = this.rowOf(out, row, P.heads, h, P.dimV);
      if (lse >= 0) {
        const l = f32[(at.l >> 2) + i]!;
        // l = 0: no allowed key (-inf, an empty row); l NaN: a non-finite score reached the row
        f32[lse + row * P.heads + h] = l > 0 ? f32[(at.m >> 2) + i]! + Math.log(l) : l === 0 ? -Infinity : NaN;
      }
    }
    K.finishRows(at.o, P.dimV, tq, at.l, at.outRows);
  }
}
