/**
 * Schedule invariants (design.md sections 1 and 7), for random patterns and tile shapes:
 * - the query (key) tiles of the forward (transposed) schedule partition the tokens;
 * - every allowed (query, key) pair is visited exactly once, forward and transposed;
 * - no visit is empty (it holds at least one allowed pair);
 * - a visit marked full has every pair allowed;
 * - visited boxes lie inside their group and never exceed the tile shape (kernel scratch size).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildSchedule, buildTransposedSchedule, compilePattern, patterns, type CompiledPattern, type PatternSpec, type Schedule } from '../src/index.js';
import { boxTokens, boxVolume, type Box } from '../src/patterns/geometry.js';
import { Failures, Rng, describe, prod, randomNA, randomPattern, type NACase } from './helpers.js';

const SCALE = Number(process.env.TILEWISE_PROP_SCALE ?? 1);
const count = (n: number) => Math.max(1, Math.round(n * SCALE));

/**
 * Checks one schedule. `forward`: tiles are query boxes and visits key boxes; otherwise the roles
 * swap. `seen` counts allowed pairs as [q * nk + k].
 */
function checkSchedule(
  p: CompiledPattern,
  s: Schedule,
  b: number,
  h: number,
  forward: boolean,
  tileShape: readonly number[],
  visitShape: readonly number[],
): void {
  const geo = p.geometry;
  const rank = geo.qShape.length;
  const nq = prod(geo.qShape);
  const nk = prod(geo.kShape);
  const tileSide = forward ? geo.qShape : geo.kShape;
  const visitSide = forward ? geo.kShape : geo.qShape;
  const nTile = forward ? nq : nk;
  const seen = new Uint8Array(nq * nk);
  const tileCover = new Uint8Array(nTile);
  const tbuf = new Int32Array(Math.max(1, prod(tileShape)));
  const vbuf = new Int32Array(Math.max(1, prod(visitShape)));
  const inside = (box: Box, lens: readonly number[], limit: readonly number[], what: string) => {
    for (let a = 0; a < rank; a++) {
      const lo = box.lo[a]!;
      const hi = box.hi[a]!;
      if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && hi <= lens[a]! && hi > lo))
        assert.fail(`${what} box ${JSON.stringify(box)} leaves its group (axis ${a}, length ${lens[a]})`);
      if (hi - lo > limit[a]!) assert.fail(`${what} box ${JSON.stringify(box)} exceeds the tile ${JSON.stringify(limit)} on axis ${a}`);
    }
  };
  for (const t of s.tiles) {
    const grp = p.groups[t.group]!;
    const tLens = forward ? grp.qLen : grp.kLen;
    const vLens = forward ? grp.kLen : grp.qLen;
    inside(t.box, tLens, tileShape, 'tile');
    const nt = boxTokens(tileSide, geo.dilation, grp, t.box, tbuf);
    assert.equal(nt, boxVolume(t.box));
    for (let i = 0; i < nt; i++) tileCover[tbuf[i]!]!++;
    for (const v of t.visits) {
      inside(v.box, vLens, visitShape, 'visit');
      const nv = boxTokens(visitSide, geo.dilation, grp, v.box, vbuf);
      let allowed = 0;
      for (let i = 0; i < nt; i++)
        for (let j = 0; j < nv; j++) {
          const q = forward ? tbuf[i]! : vbuf[j]!;
          const k = forward ? vbuf[j]! : tbuf[i]!;
          if (p.allows(b, h, q, k)) {
            allowed++;
            seen[q * nk + k]!++;
          }
        }
      const where = `group ${t.group} tile ${JSON.stringify(t.box)} visit ${JSON.stringify(v.box)}`;
      if (allowed === 0) assert.fail(`empty visit: ${where}`);
      if (v.full && allowed !== nt * nv) assert.fail(`visit marked full has ${nt * nv - allowed} disallowed pairs: ${where}`);
    }
  }
  for (let i = 0; i < nTile; i++) if (tileCover[i] !== 1) assert.fail(`${forward ? 'query' : 'key'} token ${i} lies in ${tileCover[i]} tiles`);
  for (let q = 0; q < nq; q++)
    for (let k = 0; k < nk; k++) {
      const want = p.allows(b, h, q, k) ? 1 : 0;
      if (seen[q * nk + k] !== want) assert.fail(`allowed pair (q ${q}, k ${k}) visited ${seen[q * nk + k]} times`);
    }
}

function checkPattern(spec: PatternSpec, qGrid: number[], kGrid: number[], heads: number, qTile: number[], kvTile: number[], rng: Rng): void {
  const p = compilePattern(spec, { qGrid, kGrid, heads });
  const bs = p.perBatch ? [0, 1] : [0];
  const hs = p.perHead ? Array.from({ length: heads }, (_, h) => h) : [rng.int(0, heads - 1)];
  for (const b of bs)
    for (const h of hs) {
      checkSchedule(p, buildSchedule(p, b, h, qTile, kvTile), b, h, true, qTile, kvTile);
      checkSchedule(p, buildTransposedSchedule(p, b, h, kvTile, qTile), b, h, false, kvTile, qTile);
    }
}

const randTile = (rng: Rng, lens: readonly number[]) => lens.map((l) => rng.int(1, Math.max(1, l + 2)));

test('schedules of 1-D patterns (dense, causal, window, block-sparse, chunks, masks, NA, and/or)', () => {
  const f = new Failures();
  const rng = new Rng(21);
  for (let i = 0; i < count(2500); i++) {
    const nq = rng.bool(0.03) ? 0 : rng.int(1, 40);
    const nk = rng.bool(0.03) ? 0 : rng.bool(0.5) ? nq : rng.int(1, 40);
    const heads = rng.int(1, 3);
    const spec = randomPattern(rng, Math.max(nq, 1), Math.max(nk, 1), heads);
    // a zero-length sequence still needs specs sized for it: only dense/causal/window/mask there
    const usable = nq > 0 && nk > 0 ? spec : rng.pick([patterns.dense(), patterns.causal('bottom-right'), patterns.slidingWindow(2, 1), patterns.maskFn(() => true)]);
    const qTile = randTile(rng, [nq]);
    const kvTile = randTile(rng, [nk]);
    f.runSync(`#${i} ${describe({ nq, nk, heads, qTile, kvTile, spec: usable })}`, () => checkPattern(usable, [nq], [nk], heads, qTile, kvTile, rng));
  }
  f.done('1-D schedules');
});

function naSpec(c: NACase, dilation = c.dilation): PatternSpec {
  return { kind: 'neighborhood', kernelSize: c.kernel, dilation, stride: c.stride, isCausal: c.causal };
}

test('schedules of 1/2/3-D neighborhood patterns (dilation, stride, causal, even kernels) and NA compositions', () => {
  const f = new Failures();
  const rng = new Rng(22);
  for (let i = 0; i < count(2500); i++) {
    const rank = rng.int(1, 3);
    const c = randomNA(rng, rank);
    let spec = naSpec(c);
    if (rng.bool(0.3)) {
      // compose with a second NA spec sharing the grid and dilation
      const c2 = randomNA(rng, rank);
      for (let a = 0; a < rank; a++) {
        c2.kernel[a] = Math.max(1, Math.min(c2.kernel[a]!, Math.floor(c.grid[a]! / c.dilation[a]!)));
        c2.stride[a] = Math.min(c2.stride[a]!, c2.kernel[a]!);
      }
      spec = rng.bool(0.5) ? patterns.and(spec, naSpec(c2, c.dilation)) : patterns.or(spec, naSpec(c2, c.dilation));
    } else if (rank === 1 && c.dilation[0] === 1 && rng.bool(0.3)) {
      // 1-D undilated NA composes with any other pattern
      const other = randomPattern(rng, c.grid[0]!, c.grid[0]!, 2);
      spec = rng.bool(0.5) ? patterns.and(spec, other) : patterns.or(spec, other);
    }
    const groupLens = c.grid.map((l, a) => Math.ceil(l / c.dilation[a]!));
    const qTile = randTile(rng, groupLens);
    const kvTile = randTile(rng, groupLens);
    f.runSync(`#${i} ${describe({ grid: c.grid, qTile, kvTile, spec })}`, () => checkPattern(spec, c.grid, c.grid, 2, qTile, kvTile, rng));
  }
  f.done('NA schedules');
});

test('schedules of hand-picked edge cases', () => {
  const f = new Failures();
  const rng = new Rng(23);
  const cases: [string, PatternSpec, number[], number[], number[], number[]][] = [
    ['diagonal window', patterns.slidingWindow(0, 0), [17], [17], [4], [3]],
    ['causal bottom-right, Nq > Nk (empty rows)', patterns.causal('bottom-right'), [30], [7], [8], [2]],
    ['causal top-left, Nq < Nk', patterns.causal(), [5], [33], [2], [7]],
    ['window bottom-right, Nq > Nk', patterns.slidingWindow(3, 0, 'bottom-right'), [25], [6], [4], [4]],
    ['window top-left, keys never reached', patterns.slidingWindow(0, 0), [20], [5], [3], [2]],
    ['kernel 1 NA', { kind: 'neighborhood', kernelSize: [1, 1], dilation: [1, 1], stride: [1, 1], isCausal: [false, false] }, [5, 6], [5, 6], [2, 3], [2, 2]],
    ['kernel = axis NA', { kind: 'neighborhood', kernelSize: [7], dilation: [1], stride: [7], isCausal: [false] }, [7], [7], [3], [2]],
    ['dilation = axis / kernel', { kind: 'neighborhood', kernelSize: [2, 3], dilation: [4, 3], stride: [2, 1], isCausal: [true, false] }, [9, 9], [9, 9], [1, 1], [1, 2]],
    ['causal stride = kernel', { kind: 'neighborhood', kernelSize: [4, 4, 2], dilation: [1, 1, 2], stride: [4, 4, 2], isCausal: [true, true, true] }, [6, 5, 4], [6, 5, 4], [2, 3, 1], [3, 2, 2]],
    ['tile 1x1', { kind: 'neighborhood', kernelSize: [3, 2], dilation: [2, 1], stride: [1, 2], isCausal: [false, true] }, [8, 7], [8, 7], [1, 1], [1, 1]],
    ['all-zero block mask', { kind: 'blockSparse', blockQ: 4, blockK: 4, mask: new Uint8Array(12), maskHeads: 1, numQBlocks: 3, numKBlocks: 4 }, [10], [16], [5], [3]],
    ['empty chunk lists', { kind: 'chunks', chunkSize: 4, queryTile: 4, heads: 1, numQTiles: 3, offsets: new Int32Array(4), ids: new Int32Array(0) }, [12], [12], [5], [5]],
    ['or of disjoint windows', patterns.or(patterns.slidingWindow(0, 0), patterns.slidingWindow(-1, -1, 'bottom-right')), [9], [9], [4], [4]],
    ['and of two partial parts', patterns.and(patterns.causal(), patterns.maskFn((_b, _h, q, k) => (q + k) % 3 === 0)), [19], [19], [5], [6]],
  ];
  for (const [name, spec, qGrid, kGrid, qTile, kvTile] of cases)
    f.runSync(`${name} ${describe({ qGrid, kGrid, qTile, kvTile, spec })}`, () => checkPattern(spec, qGrid, kGrid, 2, qTile, kvTile, rng));
  f.done('edge cases');
});

test('box-pattern schedules are analytic: full tiles inside the window intersection are marked full', () => {
  // a 1-D window with a large key tile must still mark interior key tiles full (the schedule
  // splits at the intersection of the query tile's windows): with q tile 8 and window (64, 64)
  // on 512 tokens, most visits are full.
  const p = compilePattern(patterns.slidingWindow(64, 64), { qGrid: [512], kGrid: [512], heads: 1 });
  const s = buildSchedule(p, 0, 0, [8], [16]);
  let full = 0;
  let partial = 0;
  for (const t of s.tiles) for (const v of t.visits) v.full ? full++ : partial++;
  assert.ok(full > 3 * partial, `expected mostly full visits, got ${full} full / ${partial} partial`);
  checkSchedule(p, s, 0, 0, true, [8], [16]);
});

test('allowsRow agrees with allows pair by pair (random 1-D patterns and compositions, 1/2/3-D neighborhoods with dilation), keys in any order, nothing written past the row', () => {
  const f = new Failures();
  const rng = new Rng(29);
  const check = (p: CompiledPattern, nq: number, nk: number, heads: number): void => {
    const m = rng.int(1, 2 * nk + 2);
    const kTok = Int32Array.from({ length: m }, () => (rng.bool(0.3) ? rng.int(0, nk - 1) : Math.min(nk - 1, Math.floor((rng.next() * m * nk) / m))));
    if (rng.bool(0.5)) kTok.sort();
    const from = rng.int(0, m - 1);
    const n = rng.int(0, m - from);
    const out = new Uint8Array(n + 3);
    for (let b = 0; b < 2; b++)
      for (let h = 0; h < heads; h++)
        for (let q = 0; q < nq; q++) {
          out.fill(7);
          p.allowsRow(b, h, q, kTok, from, n, out);
          for (let j = 0; j < n; j++) assert.equal(out[j], p.allows(b, h, q, kTok[from + j]!) ? 1 : 0, `b ${b} h ${h} q ${q} key ${kTok[from + j]}`);
          assert.deepEqual([...out.subarray(n)], [7, 7, 7], 'written past the row');
        }
  };
  for (let i = 0; i < count(400); i++) {
    const nq = rng.int(1, 40);
    const nk = rng.int(1, 40);
    const heads = rng.int(1, 2);
    const spec = randomPattern(rng, nq, nk, heads);
    f.runSync(`1-D #${i} ${describe({ nq, nk, spec })}`, () => check(compilePattern(spec, { qGrid: [nq], kGrid: [nk], heads }), nq, nk, heads));
  }
  for (let i = 0; i < count(200); i++) {
    const c = randomNA(rng, rng.int(1, 3));
    const spec = rng.bool(0.3) ? patterns.and(naSpec(c), naSpec({ ...c, kernel: c.kernel.map(() => 1), stride: c.kernel.map(() => 1) })) : naSpec(c);
    const n = prod(c.grid);
    f.runSync(`NA #${i} ${describe({ grid: c.grid, spec })}`, () => check(compilePattern(spec, { qGrid: c.grid, kGrid: c.grid, heads: 1 }), n, n, 1));
  }
  f.done('allowsRow');
});
