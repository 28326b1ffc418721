/**
 * Cancellation (CommonOptions.signal): an aborted call rejects with the signal's reason and writes
 * nothing to its outputs; the CPU engine's workers stop at their next work item, so a long call
 * ends soon after the signal; the pool stays healthy for the next call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LongHeadsCache, TilewiseError, attention, attentionBackward, cpuThreads, longHeadsAttention, na2d, referenceAttention, setCpuCallerFlops, type Result } from '../src/index.js';
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

test('concurrent calls, some aborted at random moments: the others equal their sequential results bit for bit, the aborted ones reject with their reason and leave out untouched', async () => {
  const r = new Rng(606);
  const calls: ((signal?: AbortSignal, out?: Float32Array) => Promise<Result>)[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < 16; i++) {
    const N = r.int(300, 900);
    const H = r.pick([2, 4]);
    const q = randTensor(r, [1, N, H, 32]);
    const x = randTensor(r, [1, r.int(16, 40), r.int(16, 40), 4, 16]);
    sizes.push(i % 3 === 2 ? x.data.length : N * H * 32);
    if (i % 3 === 0) calls.push((signal, out) => attention(q, q, q, { causal: true, signal, out }));
    else if (i % 3 === 1) calls.push((signal, out) => attention(q, q, q, { window: [48, 16], signal, out }));
    else calls.push((signal, out) => na2d(x, x, x, { kernelSize: 7, signal, out }));
  }
  const sequential: Result[] = [];
  for (const c of calls) sequential.push(await c());
  for (let round = 0; round < 3; round++) {
    const aborted = calls.map(() => r.next() < 0.4);
    const ctls = calls.map(() => new AbortController());
    const outs = sizes.map((n) => poisoned(n));
    const befores = outs.map((o) => snapshot(o));
    const reason = new Error(`round ${round}`);
    const settled = Promise.allSettled(calls.map((c, i) => c(aborted[i] ? ctls[i]!.signal : undefined, outs[i])));
    // abort at spread-out moments: before any ran, while queued, while running
    aborted.forEach((a, i) => {
      if (a) setTimeout(() => ctls[i]!.abort(reason), r.int(0, 12));
    });
    const results = await settled;
    const rejected = results.filter((x) => x.status === 'rejected').length;
    assert.ok(rejected > 0 && rejected < calls.length, `round ${round}: ${rejected} of ${calls.length} calls rejected`);
    results.forEach((res, i) => {
      if (res.status === 'fulfilled') {
        // a signal that fired after the call resolved leaves it resolved
        assert.ok(sameBytes(res.value.out.data, snapshot(sequential[i]!.out.data)), `round ${round} call ${i}: out differs from the sequential run`);
        assert.ok(sameBytes(res.value.lse.data, snapshot(sequential[i]!.lse.data)), `round ${round} call ${i}: lse differs`);
      } else {
        assert.ok(aborted[i], `round ${round} call ${i} rejected without a signal: ${String(res.reason)}`);
        assert.equal(res.reason, reason);
        assert.ok(sameBytes(outs[i]!, befores[i]!), `round ${round} call ${i}: an aborted call wrote to out`);
      }
    });
  }
});

test('calls queued behind each other let the event loop take a turn between them (timers fire, signals land)', async () => {
  const q = randTensor(rng, [1, 256, 2, 32]); // small: each runs on the calling thread without a message
  const done: number[] = [];
  const calls = Array.from({ length: 12 }, (_, i) => attention(q, q, q, { causal: true }).then(() => done.push(i)));
  let firedAfter = -1;
  setTimeout(() => (firedAfter = done.length), 0);
  await Promise.all(calls);
  assert.ok(firedAfter >= 0 && firedAfter < calls.length, `the timer fired after ${firedAfter} of ${calls.length} calls`);
});

test("aborted while the calling thread awaits the barriers (a page's main thread): rejects, out untouched, the next call right", async (t) => {
  if (cpuThreads() < 2) return t.skip('one thread: no pool');
  const x = randTensor(rng, [1, 64, 64, 4, 32]); // mid-sized: beside the workers
  const want = await na2d(x, x, x, { kernelSize: 7 });
  // no time to claim: the calling thread awaits while the workers run every item, so the timer fires meanwhile
  pool.setCallerAwaits(true, 0);
  try {
    const before = pool.callerJobs;
    const out = poisoned(x.data.length);
    const snap = snapshot(out);
    const ctl = new AbortController();
    const reason = new Error('page navigated away');
    setTimeout(() => ctl.abort(reason), 1);
    await assert.rejects(na2d(x, x, x, { kernelSize: 7, signal: ctl.signal, out }), (e: unknown) => e === reason);
    assert.equal(pool.callerJobs, before + 1, 'the call ran beside the workers');
    assert.ok(sameBytes(out, snap), 'out untouched');
    const again = await na2d(x, x, x, { kernelSize: 7 });
    assert.ok(sameBytes(again.out.data, snapshot(want.out.data)), 'the next call gives the usual bits');
  } finally {
    pool.setCallerAwaits(false);
  }
});

test('LongHeads prefill takes a signal (before it starts, and between and inside its steps); a LongHeadsCache refuses one', async () => {
  const n = 8192;
  const [q, k, v] = [1, 2, 3].map(() => randTensor(rng, [1, n, 2, 64]));
  const opts = { budget: 1024, chunkSize: 128 };
  await longHeadsAttention(q!, k!, v!, opts);
  let t0 = performance.now();
  const whole = await longHeadsAttention(q!, k!, v!, opts);
  const ms = performance.now() - t0;
  const reason = new Error('stop the prefill');
  await assert.rejects(longHeadsAttention(q!, k!, v!, { ...opts, signal: AbortSignal.abort(reason) }), (e: unknown) => e === reason);
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(reason), Math.min(15, ms / 10));
  t0 = performance.now();
  await assert.rejects(longHeadsAttention(q!, k!, v!, { ...opts, signal: ctl.signal }), (e: unknown) => e === reason);
  const took = performance.now() - t0;
  assert.ok(took < ms * 0.6, `the aborted prefill took ${took.toFixed(0)} ms, the whole one ${ms.toFixed(0)} ms`);
  // a signal that never fires changes nothing
  const same = await longHeadsAttention(q!, k!, v!, { ...opts, signal: new AbortController().signal });
  assert.ok(sameBytes(same.out.data, snapshot(whole.out.data)));
  assert.throws(() => new LongHeadsCache(2, 2, 64, { signal: new AbortController().signal }), (e: unknown) => e instanceof TilewiseError && e.arg === 'signal');
});
