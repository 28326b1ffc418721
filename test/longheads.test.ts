import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attention } from '../src/api.js';
import { TilewiseError } from '../src/errors.js';
import { longHeadsAttention } from '../src/longheads/attention.js';
import { longHeadsConfig } from '../src/longheads/options.js';
import { longHeadsReference } from '../src/longheads/reference.js';
import { chunkReps, selectPrefill } from '../src/longheads/select.js';
import { Rng, randTensor, relErr } from './helpers.js';

const TOL = 2e-5;

/** Lists per head and tile from a chunks spec. */
function listsOf(spec: { heads: number; numQTiles: number; offsets: Int32Array; ids: Int32Array }): number[][][] {
  return Array.from({ length: spec.heads }, (_, h) =>
    Array.from({ length: spec.numQTiles }, (_, t) => [...spec.ids.subarray(spec.offsets[h * spec.numQTiles + t]!, spec.offsets[h * spec.numQTiles + t + 1]!)]),
  );
}

test('LongHeads prefill: selection and remapped-position attention match the float64 reference', async () => {
  const rng = new Rng(2402);
  let nearTies = 0;
  for (let trial = 0; trial < 24; trial++) {
    const C = rng.pick([4, 8, 16]);
    const slots = rng.int(1, 5);
    const n = C * slots + rng.int(1, 4 * C);
    const H = rng.pick([1, 2, 4]);
    const Hk = rng.pick([1, H]);
    const D = rng.pick([8, 16]);
    const T = rng.divisor(C);
    const ropeDims = rng.pick([D, D / 2]);
    const base = rng.pick([10000, 500]);
    const [q, k, v] = [randTensor(rng, [1, n, H, D]), randTensor(rng, [1, n, Hk, D]), randTensor(rng, [1, n, Hk, D])];
    const what = JSON.stringify({ C, slots, n, H, Hk, D, T, ropeDims, base });
    const opts = { chunkSize: C, budget: C * slots, selectTile: T, rope: { base, dims: ropeDims } };
    const ref = longHeadsReference({ q: q.data, k: k.data, v: v.data, n, heads: H, kvHeads: Hk, dim: D, chunkSize: C, budget: C * slots, selectTile: T, ropeBase: base, ropeDims, scale: 1 / Math.sqrt(D) });
    // selection: equal up to near-ties of the float64 scores
    const cfg = longHeadsConfig(opts);
    const seq = { q: q.data, k: k.data, v: v.data, n, heads: H, kvHeads: Hk, dim: D };
    const ours = listsOf(selectPrefill(seq, await chunkReps(seq, cfg), cfg));
    let forced: number[][][] | undefined;
    ours.forEach((hl, h) =>
      hl.forEach((list, t) => {
        const want = ref.lists[h]![t]!;
        if (list.join() === want.join()) return;
        const sc = ref.scores[h]![t]!;
        const cut = Math.min(...want.filter((c) => !list.includes(c)).map((c) => sc[c]!));
        for (const c of list.filter((c) => !want.includes(c))) assert.ok(Math.abs(sc[c]! - cut) < 1e-4, `${what}: head ${h} tile ${t} picked ${list} vs ${want}`);
        forced = ours;
        nearTies++;
      }),
    );
    const r = forced ? longHeadsReference({ q: q.data, k: k.data, v: v.data, n, heads: H, kvHeads: Hk, dim: D, chunkSize: C, budget: C * slots, selectTile: T, ropeBase: base, ropeDims, scale: 1 / Math.sqrt(D) }, forced) : ref;
    const got = await longHeadsAttention(q, k, v, opts);
    got.out.data.forEach((x) => assert.ok(Number.isFinite(x), `${what}: non-finite output`));
    const e = relErr(got.out.data, r.out);
    assert.ok(e < TOL, `${what}: out relErr ${e}`);
    assert.ok(relErr(got.lse.data, r.lse) < TOL, `${what}: lse`);
  }
  assert.ok(nearTies <= 2, `too many near-ties (${nearTies}): selection scores disagree`);
});

test('LongHeads equals plain causal RoPE attention while the context fits the budget, and the reference agrees', async () => {
  const rng = new Rng(77);
  for (let trial = 0; trial < 8; trial++) {
    const C = rng.pick([4, 8]);
    const slots = rng.int(2, 4);
    const n = rng.int(1, C * slots);
    const H = rng.pick([1, 2]);
    const D = 8;
    const [q, k, v] = [randTensor(rng, [1, n, H, D]), randTensor(rng, [1, n, H, D]), randTensor(rng, [1, n, H, D])];
    const lh = await longHeadsAttention(q, k, v, { chunkSize: C, budget: C * slots });
    const causal = await attention(q, k, v, { causal: true, rope: {} });
    assert.ok(relErr(lh.out.data, causal.out.data) < 1e-6);
    const ref = longHeadsReference({ q: q.data, k: k.data, v: v.data, n, heads: H, kvHeads: H, dim: D, chunkSize: C, budget: C * slots, selectTile: C, ropeBase: 10000, ropeDims: D, scale: 1 / Math.sqrt(D) });
    assert.ok(relErr(causal.out.data, ref.out) < TOL, 'causal RoPE vs the LongHeads reference');
  }
});

test('LongHeads options are validated with the argument named', async () => {
  const rng = new Rng(1);
  const [q, k, v] = [randTensor(rng, [1, 40, 2, 8]), randTensor(rng, [1, 40, 2, 8]), randTensor(rng, [1, 40, 2, 8])];
  const bad: [object, string][] = [
    [{ chunkSize: 0 }, 'chunkSize'],
    [{ chunkSize: 8, budget: 12 }, 'budget'],
    [{ chunkSize: 8, selectTile: 3 }, 'selectTile'],
    [{ causal: false }, 'causal'],
    [{ rope: { dims: 5 } }, 'rope.dims'],
    [{ rope: { base: 1 } }, 'rope.base'],
  ];
  for (const [o, arg] of bad) await assert.rejects(longHeadsAttention(q, k, v, { budget: 16, chunkSize: 8, ...o } as never), (e: unknown) => e instanceof TilewiseError && e.arg === arg, JSON.stringify(o));
  await assert.rejects(longHeadsAttention(q, randTensor(rng, [1, 41, 2, 8]), randTensor(rng, [1, 41, 2, 8])), (e: unknown) => e instanceof TilewiseError && e.arg === 'k');
  await assert.rejects(longHeadsAttention(q, k, randTensor(rng, [1, 40, 2, 4])), (e: unknown) => e instanceof TilewiseError && e.arg === 'v');
});

test('LongHeadsCache: decode steps match per-query selection of the float64 reference; cache prefill in uneven pieces', async () => {
  const { LongHeadsCache } = await import('../src/longheads/cache.js');
  const rng = new Rng(99);
  for (let trial = 0; trial < 6; trial++) {
    const C = rng.pick([4, 8]);
    const slots = rng.int(1, 4);
    const n = C * slots + rng.int(2, 5 * C);
    const H = rng.pick([1, 2, 4]);
    const Hk = rng.pick([1, H]);
    const D = rng.pick([8, 16]);
    const [q, k, v] = [randTensor(rng, [n, H, D]), randTensor(rng, [n, Hk, D]), randTensor(rng, [n, Hk, D])];
    const ref = longHeadsReference({ q: q.data, k: k.data, v: v.data, n, heads: H, kvHeads: Hk, dim: D, chunkSize: C, budget: C * slots, selectTile: 1, ropeBase: 10000, ropeDims: D, scale: 1 / Math.sqrt(D) });
    const cache = new LongHeadsCache(H, Hk, D, { chunkSize: C, budget: C * slots });
    const slice = (t: { data: Float32Array }, w: number, a: number, b: number) => ({ data: t.data.slice(a * w, b * w), shape: [b - a, w / D, D] });
    const pre = rng.int(1, n - 2);
    for (let a = 0; a < pre; ) {
      const b = Math.min(pre, a + rng.int(1, 2 * C));
      await cache.append(slice(q, H * D, a, b), slice(k, Hk * D, a, b), slice(v, Hk * D, a, b));
      a = b;
    }
    assert.equal(cache.length, pre);
    assert.equal(cache.chunks, Math.floor(pre / C));
    for (let i = pre; i < n; i++) {
      const r = await cache.decode(slice(q, H * D, i, i + 1), slice(k, Hk * D, i, i + 1), slice(v, Hk * D, i, i + 1));
      const want = ref.out.subarray(i * H * D, (i + 1) * H * D);
      // a near-tie in the selection would show as a large error; none are expected at these sizes
      const e = relErr(r.out.data, want);
      assert.ok(e < TOL, `${JSON.stringify({ C, slots, n, H, Hk, D, i })}: decode relErr ${e}`);
    }
  }
});
