import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attention, planAttention } from '../src/api.js';
import { TilewiseError } from '../src/errors.js';
import { referenceAttention } from '../src/reference.js';
import { Rng, poisoned, randTensor, relErr } from './helpers.js';

test('RoPE in the fused kernel matches the float64 reference (absolute positions, random shapes and patterns)', async () => {
  const rng = new Rng(31337);
  for (let trial = 0; trial < 40; trial++) {
    const nq = rng.int(1, 90);
    const nk = rng.int(1, 90);
    const H = rng.pick([1, 2, 4]);
    const Hk = rng.pick([1, H]);
    const D = rng.pick([2, 8, 16, 12]);
    const dims = rng.pick([D, Math.max(2, D - (D % 4)), 2]);
    const causal = rng.pick([false, true, 'bottom-right'] as const);
    const window = rng.bool(0.3) ? ([rng.int(0, 20), rng.int(-1, 20)] as const) : undefined;
    const [q, k, v] = [randTensor(rng, [1, nq, H, D]), randTensor(rng, [1, nk, Hk, D]), randTensor(rng, [1, nk, Hk, rng.pick([D, 4])])];
    const opts = { causal, ...(window ? { window } : {}), rope: { dims, base: rng.pick([10000, 100]) }, tile: { q: rng.pick([1, 8, 64]), kv: rng.pick([4, 64]) } };
    const { problem } = planAttention(q, k, v, opts);
    const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
    const out = poisoned(ref.out.length);
    await attention(q, k, v, { ...opts, out });
    const e = relErr(out, ref.out);
    assert.ok(e < 1e-5, `${JSON.stringify({ nq, nk, H, Hk, D, dims, causal, window })}: relErr ${e}`);
  }
});

test("RoPE without positions changes scores: rotated and un-rotated results differ", async () => {
  const rng = new Rng(5);
  const [q, k, v] = [randTensor(rng, [1, 32, 2, 16]), randTensor(rng, [1, 32, 2, 16]), randTensor(rng, [1, 32, 2, 16])];
  const a = await attention(q, k, v, { causal: true });
  const b = await attention(q, k, v, { causal: true, rope: {} });
  assert.ok(relErr(a.out.data, b.out.data) > 1e-3);
});

test('RoPE options are validated', () => {
  const rng = new Rng(6);
  const [q, k, v] = [randTensor(rng, [1, 8, 1, 8]), randTensor(rng, [1, 8, 1, 8]), randTensor(rng, [1, 8, 1, 8])];
  const bad: [object, string][] = [
    [{ rope: { dims: 3 } }, 'rope.dims'],
    [{ rope: { dims: 10 } }, 'rope.dims'],
    [{ rope: { base: 0.5 } }, 'rope.base'],
    [{ ropePositions: 'absolute' }, 'ropePositions'],
    [{ rope: {}, ropePositions: 'selected' }, 'ropePositions'],
    [{ rope: {}, ropePositions: 'nearby' }, 'ropePositions'],
  ];
  for (const [o, arg] of bad) assert.throws(() => planAttention(q, k, v, o as never), (e: unknown) => e instanceof TilewiseError && e.arg === arg, JSON.stringify(o));
  const chunks = { kind: 'chunks', chunkSize: 4, queryTile: 4, heads: 1, numQTiles: 2, offsets: Int32Array.of(0, 1, 2), ids: Int32Array.of(0, 0) } as const;
  assert.throws(() => planAttention(q, k, v, { pattern: chunks, rope: {}, ropePositions: 'selected', tile: { q: 4 } }), (e: unknown) => e instanceof TilewiseError && e.arg === 'pattern');
  assert.throws(() => planAttention(q, k, v, { pattern: { ...chunks, ids: Int32Array.of(0, 1) }, rope: {}, ropePositions: 'selected', tile: { q: 8 } }), (e: unknown) => e instanceof TilewiseError && e.arg === 'tile.q');
});
