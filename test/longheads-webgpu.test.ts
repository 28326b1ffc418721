/**
 * LongHeads on the device: the selection kernel against select.ts, and prefill and decode on
 * backend 'webgpu' (representations, selection and attention GPU-resident) against the float64
 * reference, with poisoned outputs and the live buffer count checked.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { longHeadsAttention } from '../src/longheads/attention.js';
import { LongHeadsCache } from '../src/longheads/cache.js';
import { longHeadsConfig } from '../src/longheads/options.js';
import { type LongHeadsRef, longHeadsReference } from '../src/longheads/reference.js';
import { type ChunksSpec, chunkReps, selectLists } from '../src/longheads/select.js';
import type { Tensor } from '../src/tensor.js';
import { webgpuAvailable } from '../src/webgpu/device.js';
import { gpuOps, planSelect } from '../src/webgpu/longheads.js';
import { lhPoolProgram, lhRopeProgram, lhSelectProgram, selectWorkgroupBytes } from '../src/webgpu/longheads-wgsl.js';
import { bufferStats, fromGpu, releaseTensor, toGpu } from '../src/webgpu/tensor.js';
import { Rng, SMALL_LIMITS, checkVarsInitialised, randTensor, relErr } from './helpers.js';

// Without an adapter every GPU test is reported skipped with the reason, never passed.
const available = await webgpuAvailable();
const skip: string | false = available === true ? false : `no WebGPU device: ${available}`;
const gpuTest = (name: string, fn: () => Promise<void>) => test(name, { skip }, fn);

const TOL = 1e-4;

/** Lists per head and tile from a chunks spec. */
function listsOf(spec: ChunksSpec): number[][][] {
  return Array.from({ length: spec.heads }, (_, h) =>
    Array.from({ length: spec.numQTiles }, (_, t) => [...spec.ids.subarray(spec.offsets[h * spec.numQTiles + t]!, spec.offsets[h * spec.numQTiles + t + 1]!)]),
  );
}

/**
 * Whether `got` may differ from the reference's `want` for one (head, tile): only where the chunks
 * it swapped score within `eps` of the cut in float64 (a float near-tie). Throws otherwise.
 */
function nearTie(got: number[], want: number[], scores: Float64Array, what: string, eps = 1e-4): boolean {
  if (got.join() === want.join()) return false;
  assert.equal(got.length, want.length, `${what}: ${got} vs ${want}`);
  const cut = Math.min(...want.filter((c) => !got.includes(c)).map((c) => scores[c]!));
  for (const c of got.filter((c) => !want.includes(c))) assert.ok(Math.abs(scores[c]! - cut) < eps, `${what}: picked ${got} vs ${want}`);
  return true;
}

/** Small integers: float32 sums and dot products of them are exact, and ties are frequent. */
function intTensor(rng: Rng, n: number, lo = -2, hi = 2): Float32Array {
  return Float32Array.from({ length: n }, () => rng.int(lo, hi));
}

test('LongHeads kernels: generated WGSL initialises its vars; the selection workgroup fits the device', () => {
  const limits = SMALL_LIMITS;
  for (const [dim, slots] of [[8, 1], [64, 3], [64, 16], [128, 40]] as const) {
    const spec = planSelect(dim, slots, limits);
    assert.ok(selectWorkgroupBytes(spec) <= 4096 && spec.threads <= 64, `dim ${dim} slots ${slots}: ${JSON.stringify(spec)}`);
    assert.equal(spec.rest, Math.max(0, slots - 3));
    checkVarsInitialised(lhSelectProgram.generate(spec));
  }
  assert.equal(planSelect(64, 4, limits).threads, 64);
  assert.ok(planSelect(128, 40, limits).threads < 64, 'fewer threads when the per-thread lists are long');
  checkVarsInitialised(lhPoolProgram.generate({ threads: 64 }));
  checkVarsInitialised(lhRopeProgram.generate({ threads: 64 }));
});

gpuTest('selection kernel alone equals selectChunks (selectLists) on random inputs with many exact ties', async () => {
  const rng = new Rng(4104);
  const start = bufferStats().live;
  for (let trial = 0; trial < 40; trial++) {
    const C = rng.pick([1, 2, 4, 8]);
    const slots = rng.int(1, 9);
    const H = rng.pick([1, 2, 3]);
    const D = rng.pick([4, 8, 16]);
    // prefill geometry (qPos0 0, tiles of T queries) or decode geometry (one row at a large index)
    const decode = rng.bool(0.4);
    const T = decode ? 1 : rng.pick([1, 2, 4, 8]);
    const rows = decode ? 1 : T * rng.int(1, 24);
    const qPos0 = decode ? rng.int(0, 600) : 0;
    const chunks = Math.max(1, Math.floor((qPos0 + rows - 1) / C) + rng.int(0, 2));
    const q = intTensor(rng, rows * H * D);
    const reps = intTensor(rng, chunks * H * D, -1, rng.pick([1, 2, 3]));
    const cfg = longHeadsConfig({ chunkSize: C, budget: C * slots, selectTile: 1 });
    const g = { rows, qPos0, tile: T, heads: H, dim: D };
    const ops = await gpuOps(cfg, { poison: true });
    const qg = await toGpu(q, [rows, H, D]);
    const rg = await toGpu(reps, [chunks, H, D]);
    const got = await ops.select(qg, rg, g);
    releaseTensor(qg);
    releaseTensor(rg);
    const want = selectLists(q, reps, g, cfg);
    const what = JSON.stringify({ C, slots, H, D, T, rows, qPos0, chunks });
    assert.deepEqual(listsOf(got), listsOf(want), what);
    assert.deepEqual([got.chunkSize, got.queryTile, got.heads, got.numQTiles], [want.chunkSize, want.queryTile, want.heads, want.numQTiles], what);
  }
  assert.equal(bufferStats().live, start, 'live buffers back to the start');
});

interface Case {
  C: number;
  slots: number;
  n: number;
  H: number;
  Hk: number;
  D: number;
  T: number;
  ropeDims: number;
  base: number;
}

function randomCase(rng: Rng, T?: number): Case {
  const C = rng.pick([8, 16]);
  const slots = rng.int(2, 5);
  const n = Math.min(C * slots + rng.int(1, 3 * C), 110);
  const H = rng.pick([1, 2]);
  const D = rng.pick([8, 16]);
  return { C, slots, n, H, Hk: rng.pick([1, H]), D, T: T ?? rng.divisor(C), ropeDims: rng.pick([D, D / 2]), base: rng.pick([10000, 500]) };
}

const reference = (c: Case, q: Tensor, k: Tensor, v: Tensor, T: number, forced?: number[][][]): LongHeadsRef =>
  longHeadsReference(
    { q: q.data, k: k.data, v: v.data, n: c.n, heads: c.H, kvHeads: c.Hk, dim: c.D, chunkSize: c.C, budget: c.C * c.slots, selectTile: T, ropeBase: c.base, ropeDims: c.ropeDims, scale: 1 / Math.sqrt(c.D) },
    forced,
  );

gpuTest("LongHeads prefill on 'webgpu': device reps equal the CPU's, device lists equal the float64 reference's up to near-ties, outputs match it (poisoned)", async () => {
  const rng = new Rng(2410);
  const start = bufferStats().live;
  let ties = 0;
  for (let trial = 0; trial < 8; trial++) {
    const c = randomCase(rng);
    const B = trial === 3 ? 2 : 1;
    const { C, slots, n, H, Hk, D, T } = c;
    const what = JSON.stringify({ ...c, B });
    const opts = { chunkSize: C, budget: C * slots, selectTile: T, rope: { base: c.base, dims: c.ropeDims }, backend: 'webgpu' as const };
    const cfg = longHeadsConfig(opts);
    const [q, k, v] = [randTensor(rng, [B, n, H, D]), randTensor(rng, [B, n, Hk, D]), randTensor(rng, [B, n, Hk, D])];
    const got = await longHeadsAttention(q, k, v, opts, { poison: true });
    assert.deepEqual(got.out.shape, [B, n, H, D]);
    for (let b = 0; b < B; b++) {
      const seq = (t: Tensor, h: number): Tensor => ({ data: t.data.slice(b * n * h * D, (b + 1) * n * h * D), shape: [1, n, h, D] });
      const [qb, kb, vb] = [seq(q, H), seq(k, Hk), seq(v, Hk)];
      // the kernels one by one, on the same inputs
      const ops = await gpuOps(cfg, { poison: true });
      const [qg, kg, vg] = await Promise.all([qb, kb, vb].map((t) => toGpu(t.data, t.shape.slice(1))));
      const s = { q: qg!, k: kg!, v: vg!, n, kOff: 0, kLen: n, heads: H, kvHeads: Hk, dim: D };
      const reps = await ops.reps(s, Math.floor(n / C));
      const cpuReps = await chunkReps({ q: qb.data, k: kb.data, v: vb.data, n, heads: H, kvHeads: Hk, dim: D }, cfg);
      const repErr = relErr(await fromGpu(reps), cpuReps);
      assert.ok(repErr < TOL, `${what}: reps relErr ${repErr}`);
      const lists = listsOf(await ops.select(qg!, reps, { rows: n, qPos0: 0, tile: T, heads: H, dim: D }));
      for (const x of [qg!, kg!, vg!, reps]) releaseTensor(x);
      const ref = reference(c, qb, kb, vb, T);
      let forced: number[][][] | undefined;
      lists.forEach((hl, h) =>
        hl.forEach((list, t) => {
          if (nearTie(list, ref.lists[h]![t]!, ref.scores[h]![t]!, `${what} b${b} head ${h} tile ${t}`)) forced = lists;
        }),
      );
      if (forced) ties++;
      const r = forced ? reference(c, qb, kb, vb, T, forced) : ref;
      const out = got.out.data.subarray(b * n * H * D, (b + 1) * n * H * D);
      const e = relErr(out, r.out);
      assert.ok(e < TOL, `${what}: out relErr ${e}`); // NaN (an unwritten poisoned element) fails too
      assert.ok(relErr(got.lse.data.subarray(b * n * H, (b + 1) * n * H), r.lse) < TOL, `${what}: lse`);
    }
    assert.equal(bufferStats().live, start, `${what}: live buffers back to the start`);
  }
  assert.ok(ties <= 2, `too many near-ties (${ties}): selection scores disagree`);
});

gpuTest("LongHeadsCache on 'webgpu': K/V/reps resident and growing, decode lists and outputs match the float64 reference, dispose frees every buffer", async () => {
  const rng = new Rng(2411);
  const start = bufferStats().live;
  for (let trial = 0; trial < 4; trial++) {
    const c = randomCase(rng, 1);
    const { C, slots, H, Hk, D } = c;
    const n = Math.max(c.n, C * slots + 6);
    const cs = { ...c, n };
    const what = JSON.stringify(cs);
    const [q, k, v] = [randTensor(rng, [n, H, D]), randTensor(rng, [n, Hk, D]), randTensor(rng, [n, Hk, D])];
    const ref = reference(cs, q, k, v, 1);
    const cache = new LongHeadsCache(H, Hk, D, { chunkSize: C, budget: C * slots, rope: { base: c.base, dims: c.ropeDims }, backend: 'webgpu' }, { poison: true });
    const rows = (t: Tensor, a: number, b: number): Tensor => {
      const w = t.data.length / n;
      return { data: t.data.slice(a * w, b * w), shape: [b - a, w / D, D] };
    };
    // cache prefill in uneven pieces, up to a few tokens before the end
    const pre = n - rng.int(3, 5);
    for (let a = 0; a < pre; ) {
      const b = Math.min(pre, a + rng.int(1, 2 * C));
      await cache.append(rows(q, a, b), rows(k, a, b), rows(v, a, b));
      a = b;
      assert.equal(bufferStats().live, start + (cache.chunks > 0 ? 3 : 2), `${what}: keys, values (and reps, once a chunk is full) live in GPU buffers`);
    }
    assert.equal(cache.backend, 'webgpu');
    assert.equal(cache.chunks, Math.floor(pre / C));
    for (let i = pre; i < n; i++) {
      const r = await cache.decode(rows(q, i, i + 1), rows(k, i, i + 1), rows(v, i, i + 1));
      assert.deepEqual(r.out.shape, [1, 1, H, D]);
      // below the budget there is no selection (lastChunks stays unset)
      const lists = i >= C * slots ? listsOf(cache.lastChunks!) : undefined;
      let tie = false;
      if (lists) for (let h = 0; h < H; h++) tie = nearTie(lists[h]![0]!, ref.lists[h]![i]!, ref.scores[h]![i]!, `${what} step ${i} head ${h}`) || tie;
      const want = tie ? reference(cs, q, k, v, 1, ref.lists.map((hl, h) => hl.map((l, t) => (t === i ? lists![h]![0]! : l)))) : ref;
      const e = relErr(r.out.data, want.out.subarray(i * H * D, (i + 1) * H * D));
      assert.ok(e < TOL, `${what}: decode step ${i} relErr ${e}`);
      assert.ok(relErr(r.lse.data, want.lse.subarray(i * H, (i + 1) * H)) < TOL, `${what}: decode step ${i} lse`);
    }
    assert.equal(cache.length, n);
    cache.dispose();
    assert.equal(bufferStats().live, start, `${what}: dispose frees the cache's buffers`);
    await assert.rejects(cache.append(rows(q, 0, 1), rows(k, 0, 1), rows(v, 0, 1)), /disposed/);
  }
});

gpuTest("LongHeadsCache on 'webgpu' matches the CPU cache step by step, also below the budget", async () => {
  const rng = new Rng(2412);
  const [H, Hk, D, C, slots] = [2, 2, 8, 8, 2];
  const n = 40;
  const [q, k, v] = [randTensor(rng, [n, H, D]), randTensor(rng, [n, Hk, D]), randTensor(rng, [n, Hk, D])];
  const caches = (['webgpu', 'cpu'] as const).map((backend) => new LongHeadsCache(H, Hk, D, { chunkSize: C, budget: C * slots, backend }));
  const row = (t: Tensor, i: number): Tensor => {
    const w = t.data.length / n;
    return { data: t.data.slice(i * w, (i + 1) * w), shape: [1, w / D, D] };
  };
  for (let i = 0; i < n; i++) {
    const [g, c] = [await caches[0]!.decode(row(q, i), row(k, i), row(v, i)), await caches[1]!.decode(row(q, i), row(k, i), row(v, i))];
    assert.ok(relErr(g.out.data, c.out.data) < TOL, `step ${i}: out`);
    assert.ok(relErr(g.lse.data, c.lse.data) < TOL, `step ${i}: lse`);
    if (i >= C * slots) assert.deepEqual(listsOf(caches[0]!.lastChunks!), listsOf(caches[1]!.lastChunks!), `step ${i}: lists`);
  }
  caches.forEach((x) => x.dispose());
});
