/**
 * The WebGPU backward (src/webgpu/backward.ts) against the float64 reference backward on random
 * configurations of every pattern and option, poisoned gradients (an element no kernel writes is
 * NaN and fails), GPU tensors in and out, determinism and bad input. Skipped, with the reason,
 * where no WebGPU adapter exists (CI installs lavapipe, so it runs there).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TilewiseError,
  attention,
  attentionBackward,
  blockSparseAttention,
  blockSparseAttentionBackward,
  neighborhoodAttention,
  neighborhoodAttentionBackward,
  patterns,
  type AttentionOptions,
  type Grads,
  type NeighborhoodOptions,
  type Tensor,
} from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import { referenceBackward } from '../src/reference-backward.js';
import { getContext, webgpuAvailable } from '../src/webgpu/device.js';
import { type GpuTensor, fromGpu, releaseTensor, runWebGPUBackward, setBackwardTuning, toGpu } from '../src/webgpu/index.js';
import { BACKWARD_TUNING, backwardCacheStats, backwardWalks, planBackward } from '../src/webgpu/backward.js';
import { backwardProgram, backwardThreads, backwardWorkgroupBytes } from '../src/webgpu/backward-wgsl.js';
import { Failures, type GradArrays, Rng, SMALL_LIMITS, checkVarsInitialised, declaredWorkgroupBytes, describe, gradMismatch, randTensor, randomAttention, randomNA, relErr, sameBytes, snapshot } from './helpers.js';

const available = await webgpuAvailable();
const skip: string | false = available === true ? false : `no WebGPU device: ${available}`;
const TOL = 1e-4;

const compare = (g: GradArrays, ref: ReturnType<typeof referenceBackward>, withBias: boolean): string | null => gradMismatch(g, ref, withBias, TOL);

const hostGrads = (g: Grads): GradArrays => ({ dq: g.dq.data, dk: g.dk.data, dv: g.dv.data, drpb: g.drpb?.data, dbias: g.dbias?.data });

test('WebGPU backward: random attention configurations against the float64 reference (GQA, Dv != D, causal, windows, masks, softcap, bias, RoPE)', { skip }, async () => {
  const f = new Failures();
  const rng = new Rng(171);
  for (let i = 0; i < 12; i++) {
    const c = randomAttention(rng, 90);
    await f.run(`#${i} ${c.name}`, async () => {
      const fw = await attention(c.q, c.k, c.v, c.opts);
      const dOut = randTensor(rng, fw.out.shape);
      const problem = planAttention(c.q, c.k, c.v, c.opts).problem;
      // the kernel entry with poisoned gradients: an element no pass writes stays NaN
      const g = await runWebGPUBackward(problem, { q: c.q.data, k: c.k.data, v: c.v.data, out: fw.out.data, lse: fw.lse.data, dout: dOut.data }, { poison: true, dbias: c.opts.bias !== undefined });
      const msg = compare(g, referenceBackward(problem, { q: c.q.data, k: c.k.data, v: c.v.data }, dOut.data), c.opts.bias !== undefined);
      if (msg) throw new Error(msg);
    });
  }
  f.done('WebGPU attention backward');
});

test('WebGPU backward: random 1-3-D neighborhoods (dilation, stride, causal axes, even kernels, rpb, softcap, GQA)', { skip }, async () => {
  const f = new Failures();
  const rng = new Rng(238);
  for (let i = 0; i < 12; i++) {
    const c = randomNA(rng, rng.int(1, 3));
    const H = rng.pick([1, 2, 4]);
    const Hk = rng.pick([1, H]);
    const D = rng.int(1, 24);
    const B = rng.int(1, 2);
    const opts: NeighborhoodOptions = { kernelSize: c.kernel, dilation: c.dilation, stride: c.stride, isCausal: c.causal, backend: 'webgpu' };
    if (rng.bool(0.4) && c.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...c.kernel.map((x) => 2 * x - 1)]);
    if (rng.bool(0.25)) opts.softcap = 5;
    const q = randTensor(rng, [B, ...c.grid, H, D]);
    const k = randTensor(rng, [B, ...c.grid, Hk, D]);
    const v = randTensor(rng, [B, ...c.grid, Hk, D]);
    await f.run(`#${i} ${describe({ B, grid: c.grid, H, Hk, D, ...opts, rpb: opts.rpb?.shape })}`, async () => {
      const fw = await neighborhoodAttention(q, k, v, { ...opts, backend: 'cpu' });
      const dOut = randTensor(rng, fw.out.shape);
      const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
      const msg = compare(hostGrads(g), referenceBackward(planNA(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
      if (msg) throw new Error(msg);
    });
  }
  f.done('WebGPU neighborhood backward');
});

test('WebGPU backward: in-kernel walks (the analytic walk for dQ, its inverse windows for dK/dV) on random dense, causal, window and 1-3-D neighborhood problems, asserted, against the reference', { skip }, async () => {
  const f = new Failures();
  const rng = new Rng(613);
  // the device's blocking, and small odd tiles: many visits per item, full and partial ones, padded rows;
  // then odd row strides in workgroup memory (TileSpec.pad)
  const blockings = [undefined, { rm: 2, tx: 3, maxRows: 5, maxKeys: 3, unroll: false }, { rm: 2, tx: 2, maxRows: 8, maxKeys: 6, unroll: true, pad: true }];
  for (let i = 0; i < 16; i++) {
    const H = rng.pick([1, 2, 4]);
    const Hk = rng.pick([1, H]);
    const B = rng.int(1, 2);
    const D = 2 * rng.int(1, 10);
    const Dv = rng.bool(0.3) ? rng.int(1, 20) : D;
    let c: { q: Tensor; k: Tensor; v: Tensor; problem: ReturnType<typeof planNA>['problem']; grads: () => Promise<Grads>; name: string };
    if (i % 2 === 0) {
      // 1-D bands: dense, causal (either alignment), windows (either alignment), causal AND window
      const nq = rng.int(1, 70);
      const nk = rng.bool(0.5) ? nq : rng.int(1, 70);
      const opts: AttentionOptions = {};
      const r = rng.int(0, 3);
      if (r === 1 || r === 3) opts.causal = rng.pick([true, 'bottom-right'] as const);
      if (r >= 2) {
        opts.window = [rng.int(-1, 20), rng.int(-1, 20)];
        if (rng.bool()) opts.windowAlign = 'bottom-right';
      }
      if (rng.bool(0.3)) opts.softcap = 5;
      if (rng.bool(0.25)) opts.bias = randTensor(rng, [rng.pick([1, H]), nq, nk]);
      if (rng.bool(0.3)) opts.rope = { base: 10000 };
      const [q, k, v] = [randTensor(rng, [B, nq, H, D]), randTensor(rng, [B, nk, Hk, D]), randTensor(rng, [B, nk, Hk, Dv])];
      const problem = planAttention(q, k, v, opts).problem;
      c = {
        q, k, v, problem,
        name: describe({ B, H, Hk, D, Dv, nq, nk, ...opts, bias: opts.bias?.shape }),
        grads: async () => {
          const fw = await attention(q, k, v, opts);
          return attentionBackward(q, k, v, fw.out, fw.lse, (dOut = randTensor(rng, fw.out.shape)), { ...opts, backend: 'webgpu', dbias: opts.bias !== undefined });
        },
      };
    } else {
      const n = randomNA(rng, rng.int(1, 3));
      const opts: NeighborhoodOptions = { kernelSize: n.kernel, dilation: n.dilation, stride: n.stride, isCausal: n.causal };
      if (rng.bool(0.4) && n.causal.every((x) => !x)) opts.rpb = randTensor(rng, [H, ...n.kernel.map((x) => 2 * x - 1)]);
      if (rng.bool(0.25)) opts.softcap = 5;
      const [q, k, v] = [randTensor(rng, [B, ...n.grid, H, D]), randTensor(rng, [B, ...n.grid, Hk, D]), randTensor(rng, [B, ...n.grid, Hk, Dv])];
      c = {
        q, k, v,
        problem: planNA(q, k, v, opts).problem,
        name: describe({ B, grid: n.grid, H, Hk, D, Dv, ...opts, rpb: opts.rpb?.shape }),
        grads: async () => {
          const fw = await neighborhoodAttention(q, k, v, opts);
          return neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, (dOut = randTensor(rng, fw.out.shape)), { ...opts, backend: 'webgpu' });
        },
      };
    }
    let dOut: Tensor | undefined;
    const blocking = blockings[i % 3];
    await f.run(`#${i} ${c.name} blocking ${JSON.stringify(blocking ?? 'device')}`, async () => {
      setBackwardTuning(blocking);
      try {
        const before = backwardWalks.analytic;
        const g = await c.grads();
        assert.equal(backwardWalks.analytic, before + 1, 'both passes walked in the kernel');
        const withBias = c.problem.bias !== undefined;
        const msg = compare(hostGrads(g), referenceBackward(c.problem, { q: c.q.data, k: c.k.data, v: c.v.data }, dOut!.data), withBias);
        if (msg) throw new Error(msg);
      } finally {
        setBackwardTuning(undefined);
      }
    });
  }
  // pair tests: bit masks over the key tile where its extents sum to 32 or less, compares otherwise
  // (1-D, or here the dK/dV pass's own 32x2 key tile): both sides of both against the reference
  const bits = { q: new Set<boolean>(), k: new Set<boolean>() };
  const { limits } = await getContext();
  const cases: [{ q: number[]; kv: number[] } | undefined, { maxRows: number } | undefined][] = [
    [undefined, undefined],
    [{ q: [4, 2], kv: [32, 2] }, { maxRows: 64 }],
  ];
  for (const [tile, tune] of cases) {
    const [q, k, v] = [4, 4, 3].map((h) => randTensor(rng, [1, 40, 6, 2, h === 3 ? 12 : 8])) as [Tensor, Tensor, Tensor];
    const opts: NeighborhoodOptions = { kernelSize: [5, 3], dilation: [2, 1], ...(tile ? { tile } : {}) };
    await f.run(`bit masks / compares, tile ${JSON.stringify(tile ?? 'default')}`, async () => {
      setBackwardTuning(tune);
      try {
        const problem = planNA(q, k, v, opts).problem;
        const plan = planBackward(problem, limits, { ...BACKWARD_TUNING.cpu, ...(tune ?? {}) });
        bits.q.add(plan.q.spec.maskBits === true);
        bits.k.add(plan.k.spec.maskBits === true);
        const fw = await neighborhoodAttention(q, k, v, opts);
        const dOut = randTensor(rng, fw.out.shape);
        const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, { ...opts, backend: 'webgpu' });
        const msg = compare(hostGrads(g), referenceBackward(problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
        if (msg) throw new Error(msg);
      } finally {
        setBackwardTuning(undefined);
      }
    });
  }
  assert.deepEqual([...bits.k].sort(), [false, true], 'the dK/dV pass ran both pair tests');
  f.done('WebGPU in-kernel backward walks');
});

test('WebGPU backward: varlen packs, block-sparse masks, rows with no key (zero gradients), small tiles', { skip }, async () => {
  const rng = new Rng(505);
  const f = new Failures();
  for (let i = 0; i < 4; i++) {
    const lens = Array.from({ length: rng.int(1, 4) }, () => rng.int(0, 50));
    const cu = new Int32Array([0, ...lens.map((_, j) => lens.slice(0, j + 1).reduce((a, b) => a + b, 0))]);
    const n = cu[cu.length - 1]!;
    if (n === 0) continue;
    const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, n, 2, 16])) as [Tensor, Tensor, Tensor];
    const opts: AttentionOptions = { cuSeqlensQ: cu, cuSeqlensK: cu, causal: rng.bool(), ...(rng.bool() ? { window: [8, 0] as const } : {}) };
    await f.run(`varlen #${i} ${describe({ cu, ...opts })}`, async () => {
      const fw = await attention(q, k, v, opts);
      const dOut = randTensor(rng, fw.out.shape);
      const g = await attentionBackward(q, k, v, fw.out, fw.lse, dOut, { ...opts, backend: 'webgpu' });
      const msg = compare(hostGrads(g), referenceBackward(planAttention(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
      if (msg) throw new Error(msg);
    });
  }
  for (let i = 0; i < 3; i++) {
    const n = rng.int(16, 100);
    const bs = rng.pick([8, 16]);
    const nb = Math.ceil(n / bs);
    const mask = Array.from({ length: 2 * nb * nb }, () => (rng.bool(0.4) ? 1 : 0));
    const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, n, 2, 12])) as [Tensor, Tensor, Tensor];
    const opts = { blockMask: { data: mask, shape: [2, nb, nb] }, blockSize: bs };
    await f.run(`block-sparse #${i} n=${n} bs=${bs}`, async () => {
      const fw = await blockSparseAttention(q, k, v, opts);
      const dOut = randTensor(rng, fw.out.shape);
      const g = await blockSparseAttentionBackward(q, k, v, fw.out, fw.lse, dOut, { ...opts, backend: 'webgpu' });
      const { problem } = planAttention(q, k, v, { pattern: { kind: 'blockSparse', blockQ: bs, blockK: bs, mask: Uint8Array.from(mask), maskHeads: 2, numQBlocks: nb, numKBlocks: nb } });
      const msg = compare(hostGrads(g), referenceBackward(problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
      if (msg) throw new Error(msg);
    });
  }
  // odd blockings: padded rows (tile 5, rm 2), thread columns that do not divide the head dim, both loop modes
  const blockings = [
    { rm: 2, tx: 3, maxRows: 5, maxKeys: 3, unroll: true, pad: true },
    { rm: 3, tx: 2, maxRows: 7, maxKeys: 4, unroll: false },
  ];
  for (const b of blockings)
    await f.run(`empty rows, blocking ${JSON.stringify(b)}`, async () => {
      const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, 70, 2, 8])) as [Tensor, Tensor, Tensor];
      const opts: AttentionOptions = { pattern: patterns.maskFn((_b, _h, qi, kj) => qi >= 10 && (qi + kj) % 3 !== 0), softcap: 4 };
      const fw = await attention(q, k, v, opts);
      const dOut = randTensor(rng, fw.out.shape);
      setBackwardTuning(b);
      try {
        const g = await attentionBackward(q, k, v, fw.out, fw.lse, dOut, { ...opts, backend: 'webgpu' });
        for (let x = 0; x < 10 * 2 * 8; x++) assert.equal(g.dq.data[x], 0, 'dq of an empty row');
        const msg = compare(hostGrads(g), referenceBackward(planAttention(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
        if (msg) throw new Error(msg);
      } finally {
        setBackwardTuning(undefined);
      }
    });
  f.done('WebGPU varlen / block-sparse / empty-row backward');
});

test('WebGPU backward: GPU tensors in and out (results stay on the device), equal to the CPU backward, bit for bit across runs', { skip }, async () => {
  const rng = new Rng(66);
  const [B, N, H, Hk, D] = [2, 48, 4, 2, 16];
  const q = randTensor(rng, [B, N, H, D]);
  const k = randTensor(rng, [B, N, Hk, D]);
  const v = randTensor(rng, [B, N, Hk, D]);
  const opts: AttentionOptions = { causal: true, softcap: 20 };
  const fw = await attention(q, k, v, opts);
  const dOut = randTensor(rng, fw.out.shape);
  const cpu = await attentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
  const up = async (t: Tensor) => ({ ...(await toGpu(t.data, t.shape)), shape: [...t.shape] });
  const ins = await Promise.all([q, k, v, fw.out, fw.lse, dOut].map(up));
  const [gq, gk, gv, go, gl, gd] = ins as unknown as [GpuTensor, GpuTensor, GpuTensor, GpuTensor, GpuTensor, GpuTensor];
  const runs: Float32Array[][] = [];
  for (let r = 0; r < 2; r++) {
    // the second run leaves the backend unset: GPU tensors run on WebGPU, as in the forward
    const g = await attentionBackward(gq, gk, gv, go, gl, gd, r === 0 ? { ...opts, backend: 'webgpu' } : opts);
    const ts = [g.dq, g.dk, g.dv] as unknown as GpuTensor[];
    for (const [t, want] of ts.map((t, i) => [t, [q, k, v][i]!.shape] as const)) assert.deepEqual(t.shape, want, 'gradient shapes follow q, k, v');
    runs.push(await Promise.all(ts.map((t) => fromGpu(t))));
    ts.forEach(releaseTensor);
  }
  ins.forEach(releaseTensor);
  ['dq', 'dk', 'dv'].forEach((n, i) => {
    const want = [cpu.dq, cpu.dk, cpu.dv][i]!.data;
    assert.ok(relErr(runs[0]![i]!, Float64Array.from(want)) < TOL, `${n} against the CPU backward`);
    assert.ok(sameBytes(runs[0]![i]!, snapshot(runs[1]![i]!)), `${n} differs between two runs`);
  });
});

test('WebGPU backward: bad input is a TilewiseError naming the argument', { skip }, async () => {
  const rng = new Rng(4);
  const q = randTensor(rng, [1, 8, 2, 4]);
  const fw = await attention(q, q, q);
  const dOut = randTensor(rng, fw.out.shape);
  const gq = { ...(await toGpu(q.data, q.shape)), shape: [...q.shape] } as unknown as Tensor;
  const bad: [string, () => Promise<unknown>][] = [
    // GPU q with host out: all six on one side
    ['k', () => attentionBackward(gq, q, q, fw.out, fw.lse, dOut, { backend: 'webgpu' })],
    ['backend', () => attentionBackward(gq, gq, gq, gq, gq, gq, { backend: 'cpu' })],
    ['dOut', () => attentionBackward(q, q, q, fw.out, fw.lse, randTensor(rng, [1, 8, 2, 5]), { backend: 'webgpu' })],
  ];
  for (const [arg, call] of bad) await assert.rejects(call, (e: unknown) => e instanceof TilewiseError && e.arg === arg, `expected a TilewiseError on '${arg}'`);
  releaseTensor(gq as unknown as GpuTensor);
});

test('WebGPU backward: repeated calls reuse the schedules (not the rpb values); a mask function is never cached', { skip }, async () => {
  const rng = new Rng(31);
  const [q, k, v] = [0, 1, 2].map(() => randTensor(rng, [1, 9, 11, 2, 8])) as [Tensor, Tensor, Tensor];
  const base: NeighborhoodOptions = { kernelSize: [5, 3], backend: 'webgpu' };
  const before = backwardCacheStats().entries;
  // the cache holds uploaded schedules: walk this analytic pattern from them
  setBackwardTuning({ analytic: false });
  try {
    for (let i = 0; i < 3; i++) {
      // a fresh rpb each step, as in training: the same schedules, new values
      const opts = { ...base, rpb: randTensor(rng, [2, 9, 5]) };
      const fw = await neighborhoodAttention(q, k, v, { ...opts, backend: 'cpu' });
      const dOut = randTensor(rng, fw.out.shape);
      const g = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
      const msg = compare(hostGrads(g), referenceBackward(planNA(q, k, v, opts).problem, { q: q.data, k: k.data, v: v.data }, dOut.data), false);
      assert.equal(msg, null, `step ${i}: ${msg}`);
      assert.ok(backwardCacheStats().entries <= before + 1, 'one shape, one cache entry');
    }
  } finally {
    setBackwardTuning(undefined);
  }
  const n = backwardCacheStats().entries;
  const opts: AttentionOptions = { pattern: patterns.maskFn((_b, _h, qi, kj) => (qi + kj) % 2 === 0), backend: 'webgpu' };
  const q1 = randTensor(rng, [1, 20, 1, 4]);
  const fw = await attention(q1, q1, q1, { ...opts, backend: 'cpu' });
  await attentionBackward(q1, q1, q1, fw.out, fw.lse, randTensor(rng, fw.out.shape), opts);
  assert.equal(backwardCacheStats().entries, n, 'mask-function schedules are not cached');
});

test('WebGPU backward planning: tiles fit the device, padded rows and uneven thread columns, generated WGSL initialises its vars', () => {
  const rng = new Rng(8);
  const [q, k, v] = [randTensor(rng, [1, 20, 18, 4, 12]), randTensor(rng, [1, 20, 18, 2, 12]), randTensor(rng, [1, 20, 18, 2, 20])];
  const { problem } = planNA(q, k, v, { kernelSize: [7, 4], dilation: [2, 1], rpb: randTensor(rng, [4, 13, 7]) }, 2);
  for (const tune of [BACKWARD_TUNING.gpu, BACKWARD_TUNING.cpu, { rm: 3, tx: 5, maxRows: 7, maxKeys: 6, unroll: true }, { ...BACKWARD_TUNING.gpu, pad: true }]) {
    for (const hook of ['none', 'rpb', 'bias'] as const) {
      const plan = planBackward(problem, SMALL_LIMITS, tune, hook);
      for (const side of [plan.q, plan.k]) {
        const s = side.spec;
        assert.ok(backwardThreads(s) <= SMALL_LIMITS.maxComputeInvocationsPerWorkgroup, JSON.stringify(s));
        assert.ok(backwardWorkgroupBytes(s) <= SMALL_LIMITS.maxComputeWorkgroupStorageSize, JSON.stringify(s));
        assert.equal(s.rows % s.rm, 0);
        assert.equal(s.keys % s.tx, 0);
        assert.equal(s.schedule, 'analytic', 'a neighborhood walks in the kernel');
        for (const spec of [s, { ...s, rope: true }, { ...s, rope: true, wq: 1 as const, wv: 1 as const }, { ...s, unroll: !s.unroll }, { ...s, schedule: 'list' as const }, { ...s, pad: !s.pad }]) {
          const wgsl = backwardProgram.generate(spec);
          checkVarsInitialised(wgsl);
          // the planner fits tiles by backwardWorkgroupBytes: it must bound what the module declares
          assert.ok(declaredWorkgroupBytes(wgsl) <= backwardWorkgroupBytes(spec), `declared ${declaredWorkgroupBytes(wgsl)} > ${backwardWorkgroupBytes(spec)}: ${JSON.stringify(spec)}`);
          assert.equal(/d < P\.nDQ/.test(wgsl), !spec.unroll, 'loop bounds: constants when unrolled, uniforms otherwise');
        }
      }
      assert.equal(plan.k.spec.perQueryHead, true, 'GQA: dK, dV per query head, then summed');
    }
  }
});

test('WebGPU backward: neighborhood with additional keys/values equals the CPU backward', { skip }, async () => {
  const rng = new Rng(90);
  const [N, M, H, Hk, D] = [30, 7, 4, 2, 12];
  const q = randTensor(rng, [1, N, H, D]);
  const k = randTensor(rng, [1, N, Hk, D]);
  const v = randTensor(rng, [1, N, Hk, D]);
  const opts: NeighborhoodOptions = { kernelSize: 5, isCausal: true, softcap: 6, additionalKeys: randTensor(rng, [1, M, Hk, D]), additionalValues: randTensor(rng, [1, M, Hk, D]) };
  const fw = await neighborhoodAttention(q, k, v, opts);
  const dOut = randTensor(rng, fw.out.shape);
  const cpu = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, opts);
  const gpu = await neighborhoodAttentionBackward(q, k, v, fw.out, fw.lse, dOut, { ...opts, backend: 'webgpu' });
  for (const n of ['dq', 'dk', 'dv', 'dAdditionalKeys', 'dAdditionalValues'] as const) {
    const e = relErr(gpu[n]!.data, Float64Array.from(cpu[n]!.data));
    assert.ok(e < TOL, `${n}: relErr ${e} against the CPU backward`);
  }
});
