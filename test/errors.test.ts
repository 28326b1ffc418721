import assert from 'node:assert/strict';
import test from 'node:test';
import { attention, blockSparseAttention, mergeAttentions, naAV, naQK, na1d, na2d, na3d } from '../src/api.js';
import { TilewiseError } from '../src/errors.js';
import { type Tensor, randn } from '../src/tensor.js';

const t = (shape: number[], seed = 1): Tensor => randn(shape, seed);

/** The call must throw a TilewiseError naming `arg`, and leave the destinations byte-identical. */
async function rejects(arg: string, call: (dest: { out: Float32Array; lse: Float32Array }) => Promise<unknown> | unknown, outLen = 8 * 4 * 4, lseLen = 8 * 4): Promise<void> {
  const dest = { out: new Float32Array(outLen).fill(7), lse: new Float32Array(lseLen).fill(9) };
  await assert.rejects(
    async () => call(dest),
    (e: unknown) => {
      assert.ok(e instanceof TilewiseError, `expected TilewiseError, got ${String(e)}`);
      assert.equal(e.arg, arg, `wrong arg in: ${e.message}`);
      assert.ok(e.rule.length > 0);
      return true;
    },
  );
  assert.ok(dest.out.every((x) => x === 7) && dest.lse.every((x) => x === 9), 'destinations were written');
}

const q = t([1, 8, 4, 4]);
const k = t([1, 8, 2, 4], 2);
const v = t([1, 8, 2, 4], 3);

test('shape rules of q, k, v', async () => {
  await rejects('q', (d) => attention(t([8, 4, 4]), k, v, d));
  await rejects('k', (d) => attention(q, t([1, 8, 4]), v, d));
  await rejects('k', (d) => attention(q, t([2, 8, 2, 4]), v, d));
  await rejects('k', (d) => attention(q, t([1, 8, 2, 5]), t([1, 8, 2, 5]), d));
  await rejects('k', (d) => attention(q, t([1, 8, 3, 4]), t([1, 8, 3, 4]), d));
  await rejects('v', (d) => attention(q, k, t([1, 8, 1, 4]), d));
  await rejects('v', (d) => attention(q, k, t([1, 9, 2, 4]), d));
  await rejects('q', (d) => attention({ data: new Float32Array(3), shape: [1, 8, 4, 4] }, k, v, d));
  await rejects('q', (d) => attention({ data: new Float32Array(0), shape: [1, 0, 4, 4] }, k, v, d));
  await rejects('q', (d) => attention({ data: new Float32Array(128), shape: [1, 8.5, 4, 4] as number[] }, k, v, d));
  await rejects('q', (d) => attention({ data: [1, 2] as unknown as Float32Array, shape: [2] }, k, v, d));
});

test('option rules', async () => {
  await rejects('backend', (d) => attention(q, k, v, { ...d, backend: 'cuda' as 'cpu' }));
  await rejects('scale', (d) => attention(q, k, v, { ...d, scale: -1 }));
  await rejects('softcap', (d) => attention(q, k, v, { ...d, softcap: Number.NaN }));
  await rejects('causal', (d) => attention(q, k, v, { ...d, causal: 'middle' as 'top-left' }));
  await rejects('window[0]', (d) => attention(q, k, v, { ...d, window: [1.5, 2] }));
  await rejects('window[1]', (d) => attention(q, k, v, { ...d, window: [1, -2] }));
  await rejects('bias', (d) => attention(q, k, v, { ...d, bias: t([3, 8, 8]) }));
  await rejects('bias', (d) => attention(q, k, v, { ...d, bias: t([8, 7]) }));
  await rejects('out', (d) => attention(q, k, v, { out: new Float32Array(3), lse: d.lse }));
  await rejects('lse', (d) => attention(q, k, v, { out: d.out, lse: new Float32Array(3) }));
  await rejects('tile.q', (d) => attention(q, k, v, { ...d, tile: { q: 0 } }));
});

test('non-finite inputs are rejected when asked', async () => {
  const bad = t([1, 8, 4, 4]);
  bad.data[5] = Number.NaN;
  await rejects('q', (d) => attention(bad, k, v, { ...d, checkFinite: true }));
  const inf = t([1, 8, 2, 4]);
  inf.data[2] = Infinity;
  await rejects('v', (d) => attention(q, k, inf, { ...d, checkFinite: true }));
});

test('varlen rules', async () => {
  const cu = new Int32Array([0, 3, 8]);
  await rejects('cuSeqlensQ', (d) => attention(q, k, v, { ...d, cuSeqlensQ: new Int32Array([0, 3, 7]), cuSeqlensK: cu }));
  await rejects('cuSeqlensQ', (d) => attention(q, k, v, { ...d, cuSeqlensQ: new Int32Array([0, 5, 3, 8]), cuSeqlensK: new Int32Array([0, 1, 2, 8]) }));
  await rejects('cuSeqlensK', (d) => attention(q, k, v, { ...d, cuSeqlensQ: cu, cuSeqlensK: new Int32Array([0, 8]) }));
  await rejects('cuSeqlensQ', (d) => attention(q, k, v, { ...d, cuSeqlensQ: [0, 8] as unknown as Int32Array, cuSeqlensK: cu }));
  await rejects('q', (d) => attention(t([2, 8, 4, 4]), t([2, 8, 2, 4]), t([2, 8, 2, 4]), { cuSeqlensQ: cu, cuSeqlensK: cu, out: new Float32Array(2 * 8 * 4 * 4), lse: d.lse }));
});

test('neighborhood rules', async () => {
  const x = t([1, 6, 5, 2, 4]);
  const o = 6 * 5 * 2 * 4;
  const l = 6 * 5 * 2;
  await rejects('kernelSize', (d) => na2d(x, x, x, { ...d, kernelSize: 6 }), o, l);
  await rejects('kernelSize', (d) => na2d(x, x, x, { ...d, kernelSize: 0 }), o, l);
  await rejects('kernelSize', (d) => na2d(x, x, x, { ...d, kernelSize: 2.5 }), o, l);
  await rejects('kernelSize', (d) => na2d(x, x, x, { ...d, kernelSize: [3, 3, 3] }), o, l);
  await rejects('dilation', (d) => na2d(x, x, x, { ...d, kernelSize: 3, dilation: [2, 2] }), o, l);
  await rejects('dilation', (d) => na2d(x, x, x, { ...d, kernelSize: 3, dilation: 0 }), o, l);
  await rejects('stride', (d) => na2d(x, x, x, { ...d, kernelSize: 3, stride: 4 }), o, l);
  await rejects('isCausal', (d) => na2d(x, x, x, { ...d, kernelSize: 3, isCausal: [true] }), o, l);
  await rejects('rpb', (d) => na2d(x, x, x, { ...d, kernelSize: 3, rpb: t([2, 5, 4]) }), o, l);
  await rejects('rpb', (d) => na2d(x, x, x, { ...d, kernelSize: 3, isCausal: true, rpb: t([2, 5, 5]) }), o, l);
  await rejects('k', (d) => na2d(x, t([1, 5, 6, 2, 4]), t([1, 5, 6, 2, 4]), { ...d, kernelSize: 3 }), o, l);
  await rejects('q', (d) => na1d(x, x, x, { ...d, kernelSize: 3 }), o, l);
  await rejects('q', (d) => na3d(x, x, x, { ...d, kernelSize: 3 }), o, l);
  await rejects('impl', (d) => na2d(x, x, x, { ...d, kernelSize: 3, impl: 'magic' as 'fused' }), o, l);
  await rejects('additionalKeys', (d) => na2d(x, x, x, { ...d, kernelSize: 3, additionalKeys: t([1, 3, 3, 4]), additionalValues: t([1, 3, 2, 4]) }), o, l);
  await rejects('additionalValues', (d) => na2d(x, x, x, { ...d, kernelSize: 3, additionalKeys: t([1, 3, 2, 4]), additionalValues: t([1, 4, 2, 4]) }), o, l);
  await rejects('kernelSize', (d) => naQK(x, x, { ...d, kernelSize: 9 }), o, l);
  await rejects('attn', (d) => naAV(t([1, 6, 5, 2, 8]), x, { ...d, kernelSize: 3 }), o, l);
});

test('block-sparse and chunk rules', async () => {
  const m = (data: number[], shape: number[]) => ({ data, shape });
  await rejects('blockMask', (d) => blockSparseAttention(q, k, v, { ...d, blockMask: m([1, 0, 1], [2, 2]), blockSize: 4 }));
  await rejects('blockMask', (d) => blockSparseAttention(q, k, v, { ...d, blockMask: m([1, 0, 1, 2], [2, 2]), blockSize: 4 }));
  await rejects('blockMask', (d) => blockSparseAttention(q, k, v, { ...d, blockMask: m([1, 0, 1, 1], [2, 2]), blockSize: 2 }));
  await rejects('blockMask', (d) => blockSparseAttention(q, k, v, { ...d, blockMask: m(new Array(12).fill(1), [3, 2, 2]), blockSize: 4 }));
  await rejects('blockSize', (d) => blockSparseAttention(q, k, v, { ...d, blockMask: m([1, 0, 1, 1], [2, 2]), blockSize: 0 }));
  const chunks = (ids: number[], offsets: number[]) => ({ kind: 'chunks' as const, chunkSize: 4, queryTile: 4, heads: 1, numQTiles: 2, offsets: Int32Array.from(offsets), ids: Int32Array.from(ids) });
  await rejects('chunks.ids', (d) => attention(q, k, v, { ...d, pattern: chunks([0, 2], [0, 1, 2]) }));
  await rejects('chunks.ids', (d) => attention(q, k, v, { ...d, pattern: chunks([1, 0], [0, 2, 2]) }));
  await rejects('chunks.offsets', (d) => attention(q, k, v, { ...d, pattern: chunks([0], [0, 1]) }));
  await rejects('pattern', (d) => attention(q, k, v, { ...d, pattern: { kind: 'and', parts: [] } }));
});

test('merge rules', async () => {
  const a = { out: t([1, 8, 4, 4]), lse: t([1, 8, 4]) };
  await rejects('parts', () => mergeAttentions([]));
  await rejects('parts[1].out', () => mergeAttentions([a, { out: t([1, 8, 4, 5]), lse: t([1, 8, 4]) }]));
  await rejects('parts[0].lse', () => mergeAttentions([{ out: a.out, lse: t([1, 8, 5]) }]));
});

test('unknown pattern kinds and a device that is not a GPUDevice are TilewiseErrors', async () => {
  await rejects('pattern', (d) => attention(q, k, v, { ...d, pattern: { kind: 'groups' } as never }));
  await rejects('pattern', (d) => attention(q, k, v, { ...d, pattern: { kind: 'and', parts: [{ kind: 'dense' }, { kind: 'nope' } as never] } }));
  const { webgpu } = await import('../src/index.js');
  for (const bad of ['foo', 42, {}, null])
    assert.throws(() => webgpu.setDevice(bad as never), (e: unknown) => e instanceof TilewiseError && e.arg === 'device');
});

test('a problem whose tensors cannot fit the CPU engine is a TilewiseError before any work', async () => {
  // 1 GiB per tensor, never touched: q, k, v, out and lse need more than the engine's 4 GiB
  const big: Tensor = { data: new Float32Array(2 ** 28), shape: [1, 2 ** 22, 1, 64] };
  const t0 = performance.now();
  await assert.rejects(attention(big, big, big, { window: [4, 0] }), (e: unknown) => e instanceof TilewiseError && e.arg === 'problem' && /too large/.test(e.message));
  assert.ok(performance.now() - t0 < 5000, 'refused up front, not after computing');
});

test('naQK and naAV refuse additional keys and values instead of ignoring them', async () => {
  const x = t([1, 6, 6, 2, 4]);
  const extra = t([1, 3, 2, 4]);
  await assert.rejects(naQK(x, x, { kernelSize: 3, additionalKeys: extra, additionalValues: extra }), (e: unknown) => e instanceof TilewiseError && e.arg === 'additionalKeys');
  const { out: w } = await naQK(x, x, { kernelSize: 3 });
  await assert.rejects(naAV(w, x, { kernelSize: 3, additionalKeys: extra, additionalValues: extra }), (e: unknown) => e instanceof TilewiseError && e.arg === 'additionalKeys');
});
