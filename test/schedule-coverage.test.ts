import assert from 'node:assert/strict';
import test from 'node:test';
import { compilePattern } from '../src/patterns/compile.js';
import { boxTokens, boxVolume } from '../src/patterns/geometry.js';
import type { PatternSpec } from '../src/patterns/spec.js';
import { buildSchedule, buildTransposedSchedule, type Schedule } from '../src/schedule.js';
import { rng } from '../src/tensor.js';

/** Every allowed pair covered exactly once, no visited box empty, every full box entirely allowed. */
function checkCoverage(spec: PatternSpec, qGrid: number[], kGrid: number[], heads: number, qTile: number[], kvTile: number[], label: string): void {
  const p = compilePattern(spec, { qGrid, kGrid, heads });
  const nq = qGrid.reduce((a, b) => a * b, 1);
  const nk = kGrid.reduce((a, b) => a * b, 1);
  const { qShape, kShape, dilation } = p.geometry;
  for (let h = 0; h < heads; h++) {
    for (const [name, sched, transposed] of [
      ['forward', buildSchedule(p, 0, h, qTile, kvTile), false],
      ['transposed', buildTransposedSchedule(p, 0, h, kvTile, qTile), true],
    ] as [string, Schedule, boolean][]) {
      const seen = new Uint8Array(nq * nk);
      for (const t of sched.tiles) {
        const grp = p.groups[t.group]!;
        const a = new Int32Array(boxVolume(t.box));
        boxTokens(transposed ? kShape : qShape, dilation, grp, t.box, a);
        for (const v of t.visits) {
          const b = new Int32Array(boxVolume(v.box));
          boxTokens(transposed ? qShape : kShape, dilation, grp, v.box, b);
          let allowed = 0;
          for (const x of a)
            for (const y of b) {
              const [qi, ki] = transposed ? [y, x] : [x, y];
              const ok = p.allows(0, h, qi, ki);
              if (ok) {
                allowed++;
                seen[qi * nk + ki]!++;
              }
            }
          assert.ok(allowed > 0, `${label} ${name} h=${h}: empty visit ${JSON.stringify(v.box)} for ${JSON.stringify(t.box)}`);
          if (v.full) assert.equal(allowed, a.length * b.length, `${label} ${name}: box marked full has masked pairs`);
        }
      }
      for (let qi = 0; qi < nq; qi++)
        for (let ki = 0; ki < nk; ki++) {
          const want = p.allows(0, h, qi, ki) ? 1 : 0;
          assert.equal(seen[qi * nk + ki], want, `${label} ${name} h=${h}: pair (${qi},${ki}) covered ${seen[qi * nk + ki]} times, want ${want}`);
        }
    }
  }
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: () => number, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));

test('1-D patterns: dense, causal, window, block-sparse, chunks, masks, compositions', () => {
  const r = rng(101);
  for (let it = 0; it < 300; it++) {
    const nq = int(r, 1, 40);
    const nk = int(r, 1, 40);
    const heads = int(r, 1, 2);
    const align = pick(r, ['top-left', 'bottom-right'] as const);
    const bq = int(r, 1, 9);
    const bk = int(r, 1, 9);
    const nQB = Math.ceil(nq / bq);
    const nKB = Math.ceil(nk / bk);
    const mh = pick(r, [1, heads]);
    const block: PatternSpec = { kind: 'blockSparse', blockQ: bq, blockK: bk, mask: new Uint8Array(mh * nQB * nKB).map(() => (r() < 0.4 ? 1 : 0)), maskHeads: mh, numQBlocks: nQB, numKBlocks: nKB };
    const cs = int(r, 1, 8);
    const qt = int(r, 1, 8);
    const nQT = Math.ceil(nq / qt);
    const nC = Math.ceil(nk / cs);
    const offsets = [0];
    const ids: number[] = [];
    for (let i = 0; i < heads * nQT; i++) {
      for (let c = 0; c < nC; c++) if (r() < 0.3) ids.push(c);
      offsets.push(ids.length);
    }
    const chunks: PatternSpec = { kind: 'chunks', chunkSize: cs, queryTile: qt, heads, numQTiles: nQT, offsets: Int32Array.from(offsets), ids: Int32Array.from(ids) };
    const win: PatternSpec = { kind: 'window', left: int(r, -1, 6), right: int(r, -1, 6), align };
    const mod = int(r, 2, 5);
    const mask: PatternSpec = { kind: 'mask', fn: (_b, h, q, k) => (q * 7 + k * 3 + h) % mod !== 0 };
    const base: PatternSpec[] = [{ kind: 'dense' }, { kind: 'causal', align }, win, block, chunks, mask];
    const spec: PatternSpec =
      it % 3 === 0 ? pick(r, base) : { kind: pick(r, ['and', 'or'] as const), parts: [pick(r, base), pick(r, base)] };
    checkCoverage(spec, [nq], [nk], heads, [int(r, 1, 12)], [int(r, 1, 12)], `it=${it} ${JSON.stringify(spec, (_k, v) => (typeof v === 'function' ? 'fn' : v instanceof Int32Array || v instanceof Uint8Array ? [...v] : v))} nq=${nq} nk=${nk}`);
  }
});

test('neighborhood 1/2/3-D: kernel, dilation, stride, causal per axis', () => {
  const r = rng(202);
  for (let it = 0; it < 250; it++) {
    const rank = int(r, 1, 3);
    const grid: number[] = [];
    const kernelSize: number[] = [];
    const dilation: number[] = [];
    const stride: number[] = [];
    const isCausal: boolean[] = [];
    for (let a = 0; a < rank; a++) {
      const L = int(r, 2, rank === 1 ? 30 : rank === 2 ? 11 : 6);
      const d = int(r, 1, Math.max(1, Math.floor(L / 2)));
      const k = int(r, 1, Math.floor(L / d));
      grid.push(L);
      dilation.push(d);
      kernelSize.push(k);
      stride.push(int(r, 1, k));
      isCausal.push(r() < 0.3);
    }
    const spec: PatternSpec = { kind: 'neighborhood', kernelSize, dilation, stride, isCausal };
    const qTile = grid.map(() => int(r, 1, 5));
    const kvTile = grid.map(() => int(r, 1, 6));
    checkCoverage(spec, grid, grid, 1, qTile, kvTile, `it=${it} grid=${grid} k=${kernelSize} d=${dilation} s=${stride} c=${isCausal} qt=${qTile} kt=${kvTile}`);
  }
});
