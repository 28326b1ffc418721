/**
 * Cancellation (CommonOptions.signal): an aborted call rejects with the signal's reason and writes
 * nothing to its outputs; the CPU engine's workers stop at their next work item, so a long call
 * ends soon after the signal; the pool stays healthy for the next call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TilewiseError, attention, attentionBackward, cpuThreads, na2d, referenceAttention, setCpuCallerFlops } from '../src/index.js';
import { planAttention } from '../src/api.js';
import * as pool from '../src/cpu/pool.js';
import { Rng, compareResult, poisoned, randTensor, sameBytes, snapshot } from './helpers.js';

const rng = new Rng(2024);

test('signal: not an AbortSignal is a TilewiseError naming it; an aborted one rejects with its reason before anything is written', async () => {
  const q = randTensor(rng, [1, 40, 2, 16]);
  await assert.rejects(attention(q, q, q, { signal: {} as AbortSignal }), (e: unknown) => e instanceof TilewiseError && e.arg === 'signal');
  await assert.rejects(na2d(randTensor(rng, [1, 6, 6, 2, 8]), randTensor(rng, [1, 6, 6, 2, 8]), randTensor(rng, [1, 6, 6, 2, 8]), { kernelSize: 3, signal: 5 as unknown as AbortSignal }), (e: unknown) => e instanceof TilewiseError && e.arg === 'signal');
  const reason = new Error('the user went away');
  const out = poisoned(40 * 2 * 16);
  const before = snapshot(out);
  await assert.rejects(attention(q, q, q, { signal: AbortSignal.abort(reason), out }), (e: unknown) => e === reason);
  assert.ok(sameBytes(out, before), 'out untouched');
  // no reason given: a DOMException named AbortError, as fetch rejects with
  await assert.rejects(attention(q, q, q, { signal: AbortSignal.abort() }), (e: unknown) => (e as Error).name === 'AbortError');
  const d = randTensor(rng, [1, 40, 2, 16]);
  const f = await attention(q, q, q);
  await assert.rejects(attentionBackward(q, q, q, f.out, f.lse, d, { signal: AbortSignal.abort(reason) }), (e: unknown) => e === reason);
});

test('a long call aborted while it runs stops early, rejects with the reason, leaves out untouched; the pool runs the next call right', async (t) => {
  if (cpuThreads() < 2) return t.skip('one thread: no pool');
  const q = randTensor(rng, [1, 4096, 8, 64]);
  const k = randTensor(rng, [1, 4096, 8, 64]);
  const v = randTensor(rng, [1, 4096, 8, 64]);
  await attention(q, k, v); // the pool started, the kernels warm
  let t0 = performance.now();
  await attention(q, k, v);
  const whole = performance.now() - t0;
  const spawned = pool.poolStats().spawned;
  const out = poisoned(4096 * 8 * 64);
  const before = snapshot(out);
  const ctl = new AbortController();
  const reason = new Error('stop');
  setTimeout(() => ctl.abort(reason), Math.min(20, whole / 10));
  t0 = performance.now();
  await assert.rejects(attention(q, k, v, { signal: ctl.signal, out }), (e: unknown) => e === reason);
  const took = performance.now() - t0;
  // the workers left at their next claim instead of finishing (a generous bound: this checks that
  // the call stopped, not how fast)
  assert.ok(took < whole * 0.6, `the aborted call took ${took.toFixed(0)} ms, the whole call ${whole.toFixed(0)} ms`);
  assert.ok(sameBytes(out, before), 'out untouched');
  assert.equal(pool.poolStats().spawned, spawned, 'no worker was replaced');
  // the same problem's backward, aborted while it runs
  const f = await attention(q, k, v, { causal: true });
  const bctl = new AbortController();
  setTimeout(() => bctl.abort(reason), 10);
  await assert.rejects(attentionBackward(q, k, v, f.out, f.lse, f.out, { causal: true, signal: bctl.signal }), (e: unknown) => e === reason);
  // the next calls are right (the control block of the aborted job does not leak into them)
  const s = randTensor(rng, [1, 300, 2, 32]);
  const { problem } = planAttention(s, s, s, { window: [40, 8] });
  const ref = referenceAttention(problem, { q: s.data, k: s.data, v: s.data });
  for (const beside of [0, Infinity]) {
    setCpuCallerFlops(beside);
    try {
      const got = await attention(s, s, s, { window: [40, 8] });
      assert.equal(compareResult(got.out.data, got.lse.data, ref, 32), null);
    } finally {
      setCpuCallerFlops();
    }
  }
});

test('a call aborted while it waits behind another: it rejects, the one ahead of it is unaffected', async () => {
  const q = randTensor(rng, [1, 1024, 4, 64]);
  const alone = await attention(q, q, q, { causal: true });
  const ctl = new AbortController();
  const ahead = attention(q, q, q, { causal: true });
  const queued = attention(q, q, q, { signal: ctl.signal });
  ctl.abort();
  await assert.rejects(queued, (e: unknown) => (e as Error).name === 'AbortError');
  const r = await ahead;
  assert.ok(sameBytes(r.out.data, snapshot(alone.out.data)) && sameBytes(r.lse.data, snapshot(alone.lse.data)), 'the call ahead gave its usual bits');
});
