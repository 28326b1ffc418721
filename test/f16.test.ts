import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type NeighborhoodOptions, planNA } from '../src/api.js';
import { TilewiseError } from '../src/errors.js';
import { f16Bits, f16Value, fromF16, roundF16, toF16 } from '../src/f16.js';
import { referenceAttention } from '../src/reference.js';
import { type Tensor, randn, relError, rng } from '../src/tensor.js';
import { type GpuContext, getContext, setDevice, webgpuAvailable } from '../src/webgpu/device.js';
import { bufferStats, fromGpu, releaseTensor, toGpu, wrapBuffer } from '../src/webgpu/tensor.js';

test('f16 conversion: known values, ties to even, subnormals, overflow, NaN', () => {
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00], // halfway to 65536: ties to even, which overflows
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie between 0 and 2^-24: even is 0
    [3 * 2 ** -26, 0x0001],
    [1 + 2 ** -11, 0x3c00], // tie: even mantissa stays
    [1 + 3 * 2 ** -11, 0x3c02], // tie: rounds up to even
    [0.1, 0x2e66],
  ];
  for (const [x, h] of cases) assert.equal(f16Bits(x), h, `${x} -> 0x${f16Bits(x).toString(16)}, want 0x${h.toString(16)}`);
  assert.ok(Number.isNaN(f16Value(f16Bits(NaN))));
});

test('f16 conversion: every half value round-trips; random floats go to the nearest half', () => {
  for (let h = 0; h < 0x10000; h++) {
    const x = f16Value(h);
    if (Number.isNaN(x)) continue;
    assert.equal(f16Bits(x), h, `0x${h.toString(16)}`);
  }
  const r = rng(5);
  for (let i = 0; i < 20000; i++) {
    const x = Math.fround((r() - 0.5) * 2 ** Math.floor(r() * 40 - 26));
    const y = roundF16(x);
    // the neighbours of y in f16: no other half is closer to x
    const h = f16Bits(y);
    for (const n of [h - 1, h + 1]) {
      if ((n & 0x7fff) > 0x7bff || n < 0) continue;
      assert.ok(Math.abs(f16Value(n) - x) >= Math.abs(y - x), `${x}: ${y} but ${f16Value(n)} is closer`);
    }
  }
  const xs = Float32Array.from({ length: 100 }, () => (r() - 0.5) * 100);
  assert.deepEqual(fromF16(toF16(xs)), Float32Array.from(xs, roundF16));
});

// ---------------------------------------------------------------------------------------------
// NATTEN's naive and unfused WebGPU kernels on f16 storage (q, k, v, out f16; arithmetic, scores
// and lse f32), against the float64 reference on the same (f16-rounded) inputs.

const available = await webgpuAvailable();
const ctx = available === true ? await getContext() : undefined;
const skip: string | false = !ctx ? `no WebGPU device: ${String(available)}` : !ctx.features.has('shader-f16') ? `no shader-f16 on ${ctx.description}` : false;
const gpuTest = (name: string, fn: (c: GpuContext) => Promise<void>) => test(name, { skip }, () => fn(ctx!));

const NAN_F16 = 0x7e00;
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const rounded = (t: Tensor): Tensor => ({ data: Float32Array.from(t.data, roundF16), shape: t.shape });

/** A storage buffer holding `bits`, owned by the test (not counted by bufferStats). */
function ownBuffer(c: GpuContext, bits: Float32Array | Uint16Array): GPUBuffer {
  const b = c.device.createBuffer({ size: Math.ceil(bits.byteLength / 4) * 4, usage: 0x80 | 0x4 | 0x8 }); // STORAGE | COPY_SRC | COPY_DST
  c.device.queue.writeBuffer(b, 0, bits.buffer, bits.byteOffset, bits.byteLength);
  return b;
}

/**
 * A random neighborhood problem: rank 1 to 3, kernel, dilation, stride, causal per axis, GQA,
 * head dims with and without vec4 rows, rpb and softcap sometimes.
 */
function naCase(r: () => number, i: number): { q: Tensor; k: Tensor; v: Tensor; opts: NeighborhoodOptions } {
  const rank = 1 + (i % 3);
  const grid = Array.from({ length: rank }, () => int(r, 3, rank === 1 ? 40 : rank === 2 ? 10 : 5));
  const heads = pick(r, [1, 2, 4]);
  const kvHeads = pick(r, [1, heads]);
  const dim = pick(r, [8, 16, 12, 5]);
  const dimV = pick(r, [dim, 4, 6, 12]);
  const batch = rank === 3 ? 1 : int(r, 1, 2);
  const kernelSize = grid.map((L) => int(r, 1, Math.min(L, 7)));
  const dilation = grid.map((L, a) => int(r, 1, Math.max(1, Math.min(3, Math.floor(L / kernelSize[a]!)))));
  // rpb or causal axes (NATTEN takes no rpb with causal masking)
  const rpb = r() < 0.5;
  const opts: NeighborhoodOptions = {
    kernelSize,
    dilation,
    stride: kernelSize.map((K) => int(r, 1, Math.min(K, 3))),
    isCausal: grid.map(() => !rpb && r() < 0.4),
    ...(rpb ? { rpb: randn([heads, ...kernelSize.map((K) => 2 * K - 1)], 700 + i) } : {}),
    ...(r() < 0.3 ? { softcap: 3 } : {}),
  };
  return {
    q: randn([batch, ...grid, heads, dim], 710 + 3 * i),
    k: randn([batch, ...grid, kvHeads, dim], 711 + 3 * i),
    v: randn([batch, ...grid, kvHeads, dimV], 712 + 3 * i),
    opts,
  };
}

const describe = (x: Tensor, opts: NeighborhoodOptions) => `${x.shape.join('x')} ${JSON.stringify(opts, (key, y) => (key === 'rpb' ? (y === undefined ? y : 'yes') : y))}`;

/**
 * f16 out against the float64 reference: the kernel computes in f32 on f16-exact inputs, so every
 * element is the reference rounded to half (one ulp, 2^-10 relative at most, whatever the rounding
 * mode) plus f32 noise; and the relative norm error is under design.md's 5e-3 for f16 paths.
 */
function checkF16Out(got: Float32Array, ref: Float64Array, what: string): void {
  for (let i = 0; i < ref.length; i++)
    assert.ok(Math.abs(got[i]! - ref[i]!) <= 1.5 * 2 ** -10 * Math.abs(ref[i]!) + 1e-5, `${what}: out[${i}] = ${got[i]}, reference ${ref[i]}`);
  const e = relError(got, ref);
  assert.ok(e < 2e-3, `${what}: out relErr ${e}`);
}

/** f32 values computed from f16-exact inputs: -inf entries exactly, the rest to f32 accuracy. */
function checkF32(got: Float32Array, ref: ArrayLike<number>, what: string): void {
  const g: number[] = [];
  const w: number[] = [];
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === -Infinity) assert.equal(got[i], -Infinity, `${what}[${i}] should be -inf, got ${got[i]}`);
    else (g.push(got[i]!), w.push(ref[i]!));
  }
  const e = relError(g, w);
  assert.ok(e < 1e-4, `${what}: relErr ${e}`);
}

gpuTest('NA naive and unfused kernels on f16 GPU tensors (1-3 D; kernel, dilation, stride, causal or rpb, softcap, GQA) match the float64 reference', async (c) => {
  const { neighborhoodAttention } = await import('../src/api.js');
  const r = rng(7100);
  const start = bufferStats().live;
  for (let i = 0; i < 6; i++) {
    const { q, k, v, opts } = naCase(r, i);
    const [q16, k16, v16] = [q, k, v].map(rounded) as [Tensor, Tensor, Tensor];
    const ref = referenceAttention(planNA(q16, k16, v16, opts).problem, { q: q16.data, k: k16.data, v: v16.data });
    const [gq, gk, gv] = await Promise.all([q, k, v].map((x) => toGpu(x.data, x.shape, c, 'f16')));
    for (const impl of ['naive', 'unfused'] as const) {
      const what = `${impl} ${describe(q, opts)} v ${v.shape.join('x')}`;
      // poisoned destinations: an element the kernel does not write stays NaN and fails
      const outBuf = ownBuffer(c, new Uint16Array(Math.ceil(ref.out.length / 2) * 2).fill(NAN_F16));
      const lseBuf = ownBuffer(c, new Float32Array(ref.lse.length).fill(NaN));
      try {
        const out = wrapBuffer(outBuf, [ref.out.length], 0, 'f16');
        const lse = wrapBuffer(lseBuf, [ref.lse.length]);
        const res = await neighborhoodAttention(gq!, gk!, gv!, { ...opts, impl, out, lse });
        assert.equal(res.out.buffer, outBuf);
        assert.equal(res.out.dtype, 'f16');
        assert.equal(res.lse.dtype ?? 'f32', 'f32');
        checkF16Out(await fromGpu(res.out, c), ref.out, what);
        checkF32(await fromGpu(res.lse, c), ref.lse, `${what}: lse`);
        // fresh outputs (poisoned by the kernel entry), f16 out of the right size
        const own = await neighborhoodAttention(gq!, gk!, gv!, { ...opts, impl });
        assert.equal(own.out.buffer.size, Math.ceil(ref.out.length / 2) * 4);
        checkF16Out(await fromGpu(own.out, c), ref.out, `${what} (fresh out)`);
        releaseTensor(own.out);
        releaseTensor(own.lse);
      } finally {
        outBuf.destroy();
        lseBuf.destroy();
      }
    }
    for (const t of [gq, gk, gv]) releaseTensor(t!);
  }
  assert.equal(bufferStats().live, start, 'no GPU buffer left behind');
});

gpuTest('NA naQK and naAV ops on f16 GPU tensors: f32 scores and lse, f16 out', async (c) => {
  const { naAV, naQK } = await import('../src/api.js');
  const { runWebGPUNaAVTensors, runWebGPUNaQKTensors } = await import('../src/webgpu/na.js');
  const r = rng(7200);
  const start = bufferStats().live;
  for (let i = 0; i < 3; i++) {
    const { q, k, v, opts } = naCase(r, 10 + i);
    const [q16, k16, v16] = [q, k, v].map(rounded) as [Tensor, Tensor, Tensor];
    const { problem } = planNA(q16, k16, v16, opts);
    const what = describe(q, opts);
    const [gq, gk, gv] = await Promise.all([q, k, v].map((x) => toGpu(x.data, x.shape, c, 'f16')));
    // scores from f16-exact q, k in f32: the CPU op's scores to f32 accuracy
    const cpuQK = await naQK(q16, k16, { ...opts, backend: 'cpu' });
    const qk = await runWebGPUNaQKTensors(problem, gq!, gk!, { poison: true });
    assert.equal(qk.attn.dtype ?? 'f32', 'f32');
    checkF32(await fromGpu(qk.attn, c), cpuQK.out.data, `naQK ${what}: scores`);
    checkF32(await fromGpu(qk.lse, c), cpuQK.lse.data, `naQK ${what}: lse`);
    // weights (f32) times f16 v; slots without a key hold NaN and must never be read
    const w = Float32Array.from(cpuQK.out.data, (x) => (x === -Infinity ? NaN : r()));
    const gw = await toGpu(w, cpuQK.out.shape, c);
    const av = await runWebGPUNaAVTensors(problem, gw, gv!, { poison: true });
    assert.equal(av.out.dtype, 'f16');
    const cpuAV = await naAV({ data: w, shape: cpuQK.out.shape }, v16, { ...opts, backend: 'cpu' });
    checkF16Out(await fromGpu(av.out, c), Float64Array.from(cpuAV.out.data), `naAV ${what}`);
    for (const t of [gq, gk, gv, gw, qk.attn, qk.lse, av.out]) releaseTensor(t!);
  }
  assert.equal(bufferStats().live, start, 'no GPU buffer left behind');
});

gpuTest('NA naive and unfused on f16: mixed dtypes and f32 destinations refused; no shader-f16 on the device refused naming q', async (c) => {
  const { neighborhoodAttention } = await import('../src/api.js');
  const { runWebGPUNaiveTensors, runWebGPUUnfusedTensors } = await import('../src/webgpu/na.js');
  const [q, k, v] = [randn([1, 9, 2, 8], 1), randn([1, 9, 2, 8], 2), randn([1, 9, 2, 8], 3)];
  const opts: NeighborhoodOptions = { kernelSize: 3 };
  const { problem } = planNA(q, k, v, opts);
  const start = bufferStats().live;
  const [h, f] = await Promise.all([toGpu(q.data, q.shape, c, 'f16'), toGpu(q.data, q.shape, c)]);
  const f32Out = await toGpu(new Float32Array(9 * 2 * 8), [1, 9, 2, 8], c);
  const is = (arg: string, re: RegExp) => (e: unknown) => e instanceof TilewiseError && e.arg === arg && re.test(e.message);
  try {
    for (const impl of ['naive', 'unfused'] as const) {
      await assert.rejects(neighborhoodAttention(h, f, h, { ...opts, impl }), is('k', /dtype/));
      await assert.rejects(neighborhoodAttention(h, h, h, { ...opts, impl, out: f32Out }), is('out', /dtype/));
    }
    // the kernels themselves (below the API's checks): k must hold q's element type
    await assert.rejects(runWebGPUNaiveTensors(problem, h, f, h), is('k', /f16/));
    await assert.rejects(runWebGPUUnfusedTensors(problem, h, h, f), is('v', /f16/));
    // the same device, seen without shader-f16: f16 tensors are refused before any GPU work
    const device = c.device;
    const features = new Set([...device.features].filter((x) => x !== 'shader-f16'));
    const plain = new Proxy(device, {
      get: (t, p) => {
        if (p === 'features') return features;
        const x = Reflect.get(t, p) as unknown;
        return typeof x === 'function' ? x.bind(t) : x;
      },
    });
    setDevice(plain);
    try {
      for (const impl of ['naive', 'unfused', 'fused'] as const) await assert.rejects(neighborhoodAttention(h, h, h, { ...opts, impl }), is('q', /shader-f16/), impl);
    } finally {
      setDevice(device);
    }
  } finally {
    for (const t of [h, f, f32Out]) releaseTensor(t);
  }
  assert.equal(bufferStats().live, start, 'no GPU buffer left behind');
});

gpuTest('the backward on f16 GPU tensors (dense, causal, GQA; NA with rpb, softcap, dilation, stride): f16 gradients within 5e-3 of the float64 reference; mixed element types refused', async (c) => {
  const { attention, attentionBackward, neighborhoodAttention, neighborhoodAttentionBackward, planAttention } = await import('../src/api.js').then(async (api) => ({ ...api, ...(await import('../src/backward.js')) }));
  const { referenceBackward } = await import('../src/reference-backward.js');
  const { gradMismatch } = await import('./helpers.js');
  const r = rng(91);
  const up = (t: Tensor) => toGpu(t.data, t.shape, c, 'f16');
  for (let i = 0; i < 8; i++) {
    const na = i % 2 === 1;
    let q: Tensor, k: Tensor, v: Tensor, opts: NeighborhoodOptions & { causal?: boolean };
    if (na) ({ q, k, v, opts } = naCase(r, i));
    else {
      const [n, h, hk, d] = [int(r, 20, 90), 4, pick(r, [1, 2, 4]), pick(r, [8, 16, 5])];
      [q, k, v] = [randn([1, n, h, d], 800 + i), randn([1, n, hk, d], 810 + i), randn([1, n, hk, pick(r, [d, 12])], 820 + i)];
      opts = { causal: r() < 0.5 } as never;
    }
    [q, k, v] = [rounded(q), rounded(k), rounded(v)];
    const what = `#${i} ${describe(q, opts)}`;
    const [gq, gk, gv] = await Promise.all([up(q), up(k), up(v)]);
    const fw = na ? await neighborhoodAttention(gq, gk, gv, opts) : await attention(gq, gk, gv, opts as never);
    const dOut = rounded(randn([...fw.out.shape], 900 + i));
    const gd = await up(dOut);
    const g = na ? await neighborhoodAttentionBackward(gq, gk, gv, fw.out, fw.lse, gd, { ...opts, backend: 'webgpu' }) : await attentionBackward(gq, gk, gv, fw.out, fw.lse, gd, { ...(opts as object), backend: 'webgpu' });
    for (const n of ['dq', 'dk', 'dv'] as const) assert.equal(g[n].dtype, 'f16', `${what}: ${n} is f16`);
    const host = { dq: await fromGpu(g.dq), dk: await fromGpu(g.dk), dv: await fromGpu(g.dv), ...(g.drpb ? { drpb: await fromGpu(g.drpb) } : {}) };
    const problem = na ? planNA(q, k, v, opts).problem : planAttention(q, k, v, opts as never).problem;
    const ref = referenceBackward(problem, { q: q.data, k: k.data, v: v.data }, dOut.data);
    const msg = gradMismatch(host, ref, false, 5e-3);
    assert.equal(msg, null, `${what}: ${msg}`);
    for (const t of [gq, gk, gv, gd, fw.out, fw.lse, ...Object.values(g)]) releaseTensor(t);
  }
  // every input but lse shares q's element type
  const x = rounded(randn([1, 16, 4, 8], 1));
  const [a, b] = await Promise.all([up(x), up(x)]);
  const fw = await attention(a, a, a);
  const f32dOut = await toGpu(x.data, x.shape, c);
  await assert.rejects(attentionBackward(a, a, a, fw.out, fw.lse, f32dOut, { backend: 'webgpu' }), (e: unknown) => e instanceof TilewiseError && e.arg === 'dOut');
  for (const t of [a, b, fw.out, fw.lse, f32dOut]) releaseTensor(t);
});
