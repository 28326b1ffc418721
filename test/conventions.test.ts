/**
 * One test per row of the README's conventions table: what tilewise computes for each option,
 * stated as an explicit mask (or formula) the way flash-attn, PyTorch SDPA and NATTEN define it,
 * on lengths where the conventions differ (Nq != Nk), against the float64 reference.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { attention, na1d, patterns, referenceAttention, type AttentionOptions, type MaskFn, type Tensor } from '../src/index.js';
import { planAttention } from '../src/api.js';
import { Rng, compareResult, randTensor } from './helpers.js';

const rng = new Rng(2026);

/** attention(q, k, v, opts) must equal the reference under `mask` (0 where a row has no key). */
async function sameAs(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions, mask: MaskFn): Promise<void> {
  const { problem } = planAttention(q, k, v, { ...opts, pattern: patterns.maskFn(mask), causal: false, window: undefined, windowAlign: undefined });
  const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
  const got = await attention(q, k, v, opts);
  assert.equal(compareResult(got.out.data, got.lse.data, ref, v.shape[v.shape.length - 1]!), null);
}

const qkv = (nq: number, nk: number, h = 2, hk = 2, d = 16) => [randTensor(rng, [1, nq, h, d]), randTensor(rng, [1, nk, hk, d]), randTensor(rng, [1, nk, hk, d])] as const;

test('causal: true is PyTorch SDPA is_causal (top-left: key j <= query i), also when Nq != Nk', async () => {
  const [q, k, v] = qkv(20, 50);
  await sameAs(q, k, v, { causal: true }, (_b, _h, i, j) => j <= i);
});

test("causal: 'bottom-right' is flash-attn >= 2.1 causal=True (j <= i + Nk - Nq)", async () => {
  const [q, k, v] = qkv(20, 50);
  await sameAs(q, k, v, { causal: 'bottom-right' }, (_b, _h, i, j) => j <= i + 30);
});

test('window [l, r] is top-left by default: j in [i - l, i + r]', async () => {
  const [q, k, v] = qkv(30, 45);
  await sameAs(q, k, v, { window: [5, 2] }, (_b, _h, i, j) => j >= i - 5 && j <= i + 2);
});

test("windowAlign: 'bottom-right' is flash-attn window_size=(l, r): j in [i + Nk - Nq - l, i + Nk - Nq + r]", async () => {
  const [q, k, v] = qkv(30, 45);
  await sameAs(q, k, v, { window: [5, 2], windowAlign: 'bottom-right' }, (_b, _h, i, j) => j >= i + 15 - 5 && j <= i + 15 + 2);
  // and causal: 'bottom-right' carries the window with it, as flash-attn's causal + window_size do
  await sameAs(q, k, v, { causal: 'bottom-right', window: [5, -1] }, (_b, _h, i, j) => j >= i + 15 - 5 && j <= i + 15);
});

test('decoding with a window (one query, many keys): bottom-right sees the last l + 1 keys', async () => {
  const [q, k, v] = qkv(1, 100);
  await sameAs(q, k, v, { window: [16, 0], windowAlign: 'bottom-right' }, (_b, _h, _i, j) => j >= 83);
  await sameAs(q, k, v, { causal: 'bottom-right', window: [16, 0] }, (_b, _h, _i, j) => j >= 83);
});

test('a window side of -1, or of Nk or more, is unbounded on that side (flash-attn: -1)', async () => {
  const [q, k, v] = qkv(25, 25);
  const a = await attention(q, k, v, { window: [-1, 3] });
  const b = await attention(q, k, v, { window: [25, 3] });
  const c = await attention(q, k, v, { window: [1000, 3] });
  assert.deepEqual(Array.from(a.out.data), Array.from(b.out.data));
  assert.deepEqual(Array.from(a.out.data), Array.from(c.out.data));
});

test('scale defaults to 1/sqrt(D); lse is the natural log-sum-exp (flash-attn softmax_lse, SDPA)', async () => {
  const [q, k, v] = qkv(6, 9, 1, 1, 8);
  const r = await attention(q, k, v);
  for (let i = 0; i < 6; i++) {
    let m = -Infinity;
    const s: number[] = [];
    for (let j = 0; j < 9; j++) {
      let d = 0;
      for (let x = 0; x < 8; x++) d += q.data[i * 8 + x]! * k.data[j * 8 + x]!;
      s.push(d / Math.sqrt(8));
      m = Math.max(m, d / Math.sqrt(8));
    }
    const lse = m + Math.log(s.reduce((acc, x) => acc + Math.exp(x - m), 0));
    assert.ok(Math.abs(r.lse.data[i]! - lse) < 1e-5, `row ${i}: lse ${r.lse.data[i]} vs ${lse}`);
  }
});

test('GQA: query head h reads kv head floor(h / (H / Hk)) (flash-attn, SDPA enable_gqa)', async () => {
  const [q, k, v] = qkv(10, 12, 6, 2);
  const r = await attention(q, k, v);
  // head 4 must equal the same query head against kv head 1 alone
  const pick = (t: Tensor, heads: number, h: number) => ({ data: Float32Array.from({ length: (t.data.length / heads) }, (_, x) => t.data[Math.floor(x / 16) * heads * 16 + h * 16 + (x % 16)]!), shape: [1, t.shape[1]!, 1, 16] });
  const one = await attention(pick(q, 6, 4), pick(k, 2, 1), pick(v, 2, 1));
  for (let i = 0; i < 10; i++) for (let x = 0; x < 16; x++) assert.ok(Math.abs(r.out.data[(i * 6 + 4) * 16 + x]! - one.out.data[i * 16 + x]!) < 1e-6);
});

test('NATTEN: a query near a border keeps a full window shifted inward; is_causal windows end at the query', async () => {
  const [q, k, v] = qkv(20, 20);
  const K = 7;
  const start = (i: number) => Math.min(Math.max(i - 3, 0), 20 - K);
  const a = await na1d(q, k, v, { kernelSize: K });
  const { problem } = planAttention(q, k, v, { pattern: patterns.maskFn((_b, _h, i, j) => j >= start(i) && j < start(i) + K) });
  assert.equal(compareResult(a.out.data, a.lse.data, referenceAttention(problem, { q: q.data, k: k.data, v: v.data }), 16), null);
  const c = await na1d(q, k, v, { kernelSize: K, isCausal: true });
  const pc = planAttention(q, k, v, { pattern: patterns.maskFn((_b, _h, i, j) => j <= i && j >= Math.max(0, i - K + 1)) }).problem;
  assert.equal(compareResult(c.out.data, c.lse.data, referenceAttention(pc, { q: q.data, k: k.data, v: v.data }), 16), null);
});
