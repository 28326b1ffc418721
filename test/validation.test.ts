/**
 * Every validation rule throws a TilewiseError naming the offending argument (`.arg`) and the rule
 * (`.rule`), and a call that throws leaves caller-provided `out` / `lse` destinations untouched.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TilewiseError,
  attention,
  blockSparseAttention,
  mergeAttentions,
  na1d,
  na2d,
  na3d,
  naAV,
  naQK,
  neighborhoodAttention,
  patterns,
  type AttentionOptions,
  type BlockSparseOptions,
  type NeighborhoodOptions,
  type PatternSpec,
  type Result,
  type Tensor,
} from '../src/index.js';
import { Rng, prod, randTensor, sameBytes, snapshot } from './helpers.js';

const rng = new Rng(31337);
const T = (shape: number[]): Tensor => randTensor(rng, shape);
const withData = (t: Tensor, f: (d: Float32Array) => void): Tensor => {
  const data = t.data.slice();
  f(data);
  return { data, shape: t.shape };
};

// Base problems (valid): attention with GQA and Dv != D, and a 2-D neighborhood problem.
const B = 2;
const NQ = 6;
const NK = 5;
const H = 4;
const HK = 2;
const D = 8;
const DV = 3;
const q = T([B, NQ, H, D]);
const k = T([B, NK, HK, D]);
const v = T([B, NK, HK, DV]);
const OUT = B * NQ * H * DV;
const LSE = B * NQ * H;

const G = [5, 6];
const q2 = T([1, ...G, 2, 4]);
const k2 = T([1, ...G, 2, 4]);
const v2 = T([1, ...G, 2, 4]);
const OUT2 = prod(G) * 2 * 4;
const LSE2 = prod(G) * 2;

type Dest = { out: Float32Array; lse: Float32Array };
type Call = (d: Dest) => Promise<unknown> | unknown;

interface Case {
  name: string;
  arg: string;
  call: Call;
  /** destination sizes (defaults: the attention base problem) */
  sizes?: [number, number];
  /** known library bug: still run and expected to fail, see the report */
}

function filled(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

async function expectRejects(c: Case): Promise<void> {
  const [no, nl] = c.sizes ?? [OUT, LSE];
  const dest = { out: filled(no), lse: filled(nl) };
  const so = snapshot(dest.out);
  const sl = snapshot(dest.lse);
  let err: unknown;
  try {
    await c.call(dest);
  } catch (e) {
    err = e;
  }
  assert.ok(err !== undefined, `${c.name}: expected a TilewiseError on '${c.arg}', but the call succeeded`);
  assert.ok(err instanceof TilewiseError, `${c.name}: expected a TilewiseError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  assert.equal(err.name, 'TilewiseError');
  assert.equal(err.arg, c.arg, `${c.name}: wrong .arg (rule: ${err.rule}; message: ${err.message})`);
  assert.ok(typeof err.rule === 'string' && err.rule.length > 0, `${c.name}: empty .rule`);
  assert.ok(sameBytes(dest.out, so), `${c.name}: out destination was modified although the call threw`);
  assert.ok(sameBytes(dest.lse, sl), `${c.name}: lse destination was modified although the call threw`);
}

const att = (qq: Tensor, kk: Tensor, vv: Tensor, o: Record<string, unknown> = {}): Call => (d) => attention(qq, kk, vv, { ...d, ...o } as AttentionOptions);
const A = (o: Record<string, unknown>): Call => att(q, k, v, o);
const NA = (o: Record<string, unknown>, qq = q2, kk = k2, vv = v2): Call => (d) => na2d(qq, kk, vv, { kernelSize: 3, ...d, ...o } as NeighborhoodOptions);
const BS = (o: Record<string, unknown>): Call => (d) =>
  blockSparseAttention(q, k, v, { blockMask: { data: [1, 0, 1, 1, 0, 1], shape: [3, 2] }, blockSize: [2, 3], ...d, ...o } as BlockSparseOptions);

// The base calls themselves are valid.
test('validation: the base problems are accepted', async () => {
  await A({})({ out: new Float32Array(OUT), lse: new Float32Array(LSE) });
  await NA({})({ out: new Float32Array(OUT2), lse: new Float32Array(LSE2) });
  await BS({})({ out: new Float32Array(OUT), lse: new Float32Array(LSE) });
});

function blockSparseSpec(over: Partial<Extract<PatternSpec, { kind: 'blockSparse' }>>): PatternSpec {
  return { kind: 'blockSparse', blockQ: 2, blockK: 3, mask: new Uint8Array([1, 0, 1, 1, 0, 1]), maskHeads: 1, numQBlocks: 3, numKBlocks: 2, ...over };
}

// chunkSize 2 over NK = 5 keys: chunks 0..2; queryTile 3 over NQ = 6 queries: 2 tiles
function chunkSpec(over: Partial<Extract<PatternSpec, { kind: 'chunks' }>>): PatternSpec {
  return { kind: 'chunks', chunkSize: 2, queryTile: 3, heads: 1, numQTiles: 2, offsets: new Int32Array([0, 2, 3]), ids: new Int32Array([0, 2, 1]), ...over };
}

const cases: Case[] = [
  // ---- tensors: rank / shape / heads / dims
  { name: 'q is not an object', arg: 'q', call: att(null as unknown as Tensor, k, v) },
  { name: 'q data is a Float64Array', arg: 'q', call: att({ data: new Float64Array(prod(q.shape)) as unknown as Float32Array, shape: q.shape }, k, v) },
  { name: 'q shape is not an array', arg: 'q', call: att({ data: q.data, shape: 'x' as unknown as number[] }, k, v) },
  { name: 'q shape has a non-integer size', arg: 'q', call: att({ data: q.data, shape: [B, NQ, H, 7.5] }, k, v) },
  { name: 'q shape has a zero size', arg: 'q', call: att({ data: new Float32Array(0), shape: [B, 0, H, D] }, k, v) },
  { name: 'q shape has a negative size', arg: 'q', call: att({ data: q.data, shape: [-B, NQ, H, -D] }, k, v) },
  { name: 'q data length does not match its shape', arg: 'q', call: att({ data: q.data.slice(1), shape: q.shape }, k, v) },
  { name: 'k data length does not match its shape', arg: 'k', call: att(q, { data: k.data.slice(1), shape: k.shape }, v) },
  { name: 'v is missing', arg: 'v', call: att(q, k, undefined as unknown as Tensor) },
  { name: 'q rank 3', arg: 'q', call: att({ data: q.data, shape: [B * NQ, H, D] }, { data: k.data, shape: [B * NK, HK, D] }, { data: v.data, shape: [B * NK, HK, DV] }) },
  { name: 'k rank differs from q', arg: 'k', call: att(q, { data: k.data, shape: [B, NK, 1, HK, D] }, v) },
  { name: 'v rank differs from q', arg: 'v', call: att(q, k, { data: v.data, shape: [B, NK, 1, HK, DV] }) },
  { name: 'k batch differs', arg: 'k', call: att(q, { data: k.data, shape: [1, B * NK, HK, D] }, { data: v.data, shape: [1, B * NK, HK, DV] }) },
  { name: 'v batch differs', arg: 'v', call: att(q, k, { data: v.data, shape: [1, B * NK, HK, DV] }) },
  { name: 'v token count differs from k', arg: 'v', call: att(q, k, T([B, NK + 1, HK, DV])) },
  { name: 'k head dim differs from q (D mismatch)', arg: 'k', call: att(q, T([B, NK, HK, D + 1]), v) },
  { name: 'v heads differ from k', arg: 'v', call: att(q, k, T([B, NK, HK * 2, DV])) },
  { name: 'query heads not a multiple of kv heads', arg: 'k', call: att(q, T([B, NK, 3, D]), T([B, NK, 3, DV])) },
  { name: 'more kv heads than query heads', arg: 'k', call: att(q, T([B, NK, 8, D]), T([B, NK, 8, DV])) },
  // ---- options
  { name: 'opts is null', arg: 'opts', call: () => attention(q, k, v, null as unknown as AttentionOptions) },
  { name: 'causal is a bad string', arg: 'causal', call: A({ causal: 'diagonal' }) },
  { name: 'window is not a pair', arg: 'window', call: A({ window: [1, 2, 3] }) },
  { name: 'window is a number', arg: 'window', call: A({ window: 4 }) },
  { name: 'window left < -1', arg: 'window[0]', call: A({ window: [-2, 0] }) },
  { name: 'window right non-integer', arg: 'window[1]', call: A({ window: [0, 1.5] }) },
  { name: 'window NaN', arg: 'window[0]', call: A({ window: [NaN, 1] }) },
  { name: 'pattern without kind', arg: 'pattern', call: A({ pattern: {} }) },
  { name: 'pattern is null', arg: 'pattern', call: A({ pattern: null }) },
  { name: 'mask pattern without a function', arg: 'pattern', call: A({ pattern: { kind: 'mask', fn: 3 } }) },
  { name: "'and' with no parts", arg: 'pattern', call: A({ pattern: { kind: 'and', parts: [] } }) },
  { name: "'or' with no parts", arg: 'pattern', call: A({ pattern: { kind: 'or', parts: [] } }) },
  { name: 'scale zero', arg: 'scale', call: A({ scale: 0 }) },
  { name: 'scale negative', arg: 'scale', call: A({ scale: -1 }) },
  { name: 'scale NaN', arg: 'scale', call: A({ scale: NaN }) },
  { name: 'scale Infinity', arg: 'scale', call: A({ scale: Infinity }) },
  { name: 'scale a string', arg: 'scale', call: A({ scale: '1' }) },
  { name: 'softcap negative', arg: 'softcap', call: A({ softcap: -0.5 }) },
  { name: 'softcap Infinity', arg: 'softcap', call: A({ softcap: Infinity }) },
  { name: 'tile.q zero', arg: 'tile.q', call: A({ tile: { q: 0 } }) },
  { name: 'tile.q non-integer', arg: 'tile.q', call: A({ tile: { q: 2.5 } }) },
  { name: 'tile.q wrong entry count', arg: 'tile.q', call: A({ tile: { q: [4, 4] } }) },
  { name: 'tile.kv negative', arg: 'tile.kv', call: A({ tile: { kv: -8 } }) },
  { name: 'NA tile.kv wrong entry count', arg: 'tile.kv', call: NA({ tile: { kv: [4, 4, 4] } }), sizes: [OUT2, LSE2] },
  { name: 'bad backend name (attention)', arg: 'backend', call: A({ backend: 'gpu' }) },
  { name: 'bad backend name (na2d)', arg: 'backend', call: NA({ backend: 'webgl' }), sizes: [OUT2, LSE2] },
  { name: 'bad backend name (blockSparse)', arg: 'backend', call: BS({ backend: 'cuda' }) },
  // ---- checkFinite
  { name: 'NaN in q with checkFinite', arg: 'q', call: att(withData(q, (d) => (d[17] = NaN)), k, v, { checkFinite: true }) },
  { name: 'Inf in k with checkFinite', arg: 'k', call: att(q, withData(k, (d) => (d[3] = Infinity)), v, { checkFinite: true }) },
  { name: '-Inf in v with checkFinite', arg: 'v', call: att(q, k, withData(v, (d) => (d[d.length - 1] = -Infinity)), { checkFinite: true }) },
  { name: 'NaN in bias with checkFinite', arg: 'bias', call: A({ checkFinite: true, bias: withData(T([NQ, NK]), (d) => (d[2] = NaN)) }) },
  { name: 'NaN in NA q with checkFinite', arg: 'q', call: NA({ checkFinite: true }, withData(q2, (d) => (d[0] = NaN))), sizes: [OUT2, LSE2] },
  { name: 'NaN in rpb with checkFinite', arg: 'rpb', call: NA({ checkFinite: true, rpb: withData(T([2, 5, 5]), (d) => (d[4] = NaN)) }), sizes: [OUT2, LSE2] },
  { name: 'NaN in blockSparse v with checkFinite', arg: 'v', call: (d) => blockSparseAttention(q, k, withData(v, (x) => (x[1] = NaN)), { blockMask: { data: [1, 1, 1, 1, 1, 1], shape: [3, 2] }, blockSize: [2, 3], checkFinite: true, ...d }) },
  {
    name: 'NaN in additionalKeys with checkFinite',
    arg: 'additionalKeys',
    call: NA({ checkFinite: true, additionalKeys: withData(T([1, 3, 2, 4]), (d) => (d[5] = NaN)), additionalValues: T([1, 3, 2, 4]) }),
    sizes: [OUT2, LSE2],
  },
  {
    name: 'Inf in additionalValues with checkFinite',
    arg: 'additionalValues',
    call: NA({ checkFinite: true, additionalKeys: T([1, 3, 2, 4]), additionalValues: withData(T([1, 3, 2, 4]), (d) => (d[0] = Infinity)) }),
    sizes: [OUT2, LSE2],
  },
  // ---- bias
  { name: 'bias rank 1', arg: 'bias', call: A({ bias: T([NQ * NK]) }) },
  { name: 'bias rank 5', arg: 'bias', call: A({ bias: T([1, 1, 1, NQ, NK]) }) },
  { name: 'bias wrong query axis', arg: 'bias', call: A({ bias: T([NQ + 1, NK]) }) },
  { name: 'bias wrong key axis', arg: 'bias', call: A({ bias: T([H, NQ, NK - 1]) }) },
  { name: 'bias head axis neither 1 nor H', arg: 'bias', call: A({ bias: T([HK, NQ, NK]) }) },
  { name: 'bias batch axis neither 1 nor B', arg: 'bias', call: A({ bias: T([3, H, NQ, NK]) }) },
  { name: 'bias is not a tensor', arg: 'bias', call: A({ bias: { data: [1, 2], shape: [1, 2] } }) },
  { name: 'bias with varlen packs', arg: 'bias', call: att(T([1, 6, 2, 4]), T([1, 5, 2, 4]), T([1, 5, 2, 4]), { bias: T([6, 5]), cuSeqlensQ: Int32Array.from([0, 3, 6]), cuSeqlensK: Int32Array.from([0, 2, 5]) }), sizes: [6 * 2 * 4, 12] },
  // ---- varlen
  ...((): Case[] => {
    const vq = T([1, 6, 2, 4]);
    const vk = T([1, 5, 2, 4]);
    const sizes: [number, number] = [6 * 2 * 4, 12];
    const V = (o: Record<string, unknown>): Call => att(vq, vk, vk, o);
    const cq = Int32Array.from([0, 3, 6]);
    const ck = Int32Array.from([0, 2, 5]);
    return [
      { name: 'varlen with batch 2', arg: 'q', call: A({ cuSeqlensQ: Int32Array.from([0, 6]), cuSeqlensK: Int32Array.from([0, 5]) }) },
      { name: 'varlen with 2-D tokens', arg: 'q', call: att(T([1, 2, 3, 2, 4]), T([1, 5, 1, 2, 4]), T([1, 5, 1, 2, 4]), { cuSeqlensQ: Int32Array.from([0, 6]), cuSeqlensK: Int32Array.from([0, 5]) }), sizes },
      { name: 'cuSeqlensQ a plain array', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: [0, 3, 6], cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensQ a Uint32Array', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Uint32Array.from([0, 3, 6]), cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensQ one entry', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Int32Array.from([6]), cuSeqlensK: Int32Array.from([5]) }), sizes },
      { name: 'cuSeqlensQ not starting at 0', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Int32Array.from([1, 3, 6]), cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensQ decreasing', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Int32Array.from([0, 4, 3, 6]), cuSeqlensK: Int32Array.from([0, 1, 2, 5]) }), sizes },
      { name: 'cuSeqlensQ not ending at the token count', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Int32Array.from([0, 3, 5]), cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensQ ending past the token count', arg: 'cuSeqlensQ', call: V({ cuSeqlensQ: Int32Array.from([0, 3, 7]), cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensK missing', arg: 'cuSeqlensK', call: V({ cuSeqlensQ: cq }), sizes },
      { name: 'cuSeqlensQ missing', arg: 'cuSeqlensQ', call: V({ cuSeqlensK: ck }), sizes },
      { name: 'cuSeqlensK different entry count', arg: 'cuSeqlensK', call: V({ cuSeqlensQ: cq, cuSeqlensK: Int32Array.from([0, 5]) }), sizes },
      { name: 'cuSeqlensK not ending at the token count', arg: 'cuSeqlensK', call: V({ cuSeqlensQ: cq, cuSeqlensK: Int32Array.from([0, 2, 4]) }), sizes },
      { name: 'cuSeqlensK decreasing', arg: 'cuSeqlensK', call: V({ cuSeqlensQ: cq, cuSeqlensK: Int32Array.from([0, 3, 2]) }), sizes },
      { name: 'varlen block mask sized for the pack, not the sequences', arg: 'blockMask', call: V({ cuSeqlensQ: cq, cuSeqlensK: ck, pattern: blockSparseSpec({ blockQ: 2, blockK: 2, numQBlocks: 3, numKBlocks: 3, mask: new Uint8Array(9).fill(1) }) }), sizes },
    ];
  })(),
  // ---- destinations
  { name: 'out too short', arg: 'out', call: (d) => attention(q, k, v, { out: new Float32Array(OUT - 1), lse: d.lse }) },
  { name: 'out too long', arg: 'out', call: (d) => attention(q, k, v, { out: new Float32Array(OUT + 1), lse: d.lse }) },
  { name: 'out sized for D instead of Dv', arg: 'out', call: (d) => attention(q, k, v, { out: new Float32Array(B * NQ * H * D), lse: d.lse }) },
  { name: 'out a Float64Array', arg: 'out', call: (d) => attention(q, k, v, { out: new Float64Array(OUT) as unknown as Float32Array, lse: d.lse }) },
  { name: 'lse too short', arg: 'lse', call: (d) => attention(q, k, v, { out: d.out, lse: new Float32Array(LSE - 1) }) },
  { name: 'lse a plain array', arg: 'lse', call: (d) => attention(q, k, v, { out: d.out, lse: new Array(LSE).fill(0) as unknown as Float32Array }) },
  { name: 'blockSparse out wrong size', arg: 'out', call: (d) => blockSparseAttention(q, k, v, { blockMask: { data: [1, 1, 1, 1, 1, 1], shape: [3, 2] }, blockSize: [2, 3], out: new Float32Array(3), lse: d.lse }) },
  ...(['fused', 'naive', 'unfused'] as const).flatMap((impl): Case[] => [
    { name: `NA ${impl} out wrong size`, arg: 'out', call: (d) => na2d(q2, k2, v2, { kernelSize: 3, impl, out: new Float32Array(OUT2 + 4), lse: d.lse }), sizes: [OUT2, LSE2] },
    { name: `NA ${impl} lse wrong size`, arg: 'lse', call: (d) => na2d(q2, k2, v2, { kernelSize: 3, impl, out: d.out, lse: new Float32Array(LSE2 * 2) }), sizes: [OUT2, LSE2] },
    {
      name: `NA ${impl} + additional KV, out wrong size`,
      arg: 'out',
      call: (d) => na2d(q2, k2, v2, { kernelSize: 3, impl, additionalKeys: T([1, 2, 2, 4]), additionalValues: T([1, 2, 2, 4]), out: new Float32Array(1), lse: d.lse }),
      sizes: [OUT2, LSE2],
    },
    {
      name: `NA ${impl} + additional KV, lse wrong size`,
      arg: 'lse',
      call: (d) => na2d(q2, k2, v2, { kernelSize: 3, impl, additionalKeys: T([1, 2, 2, 4]), additionalValues: T([1, 2, 2, 4]), out: d.out, lse: new Float32Array(1) }),
      sizes: [OUT2, LSE2],
    },
  ]),
  // ---- raw block-sparse specs (through attention's pattern)
  { name: 'blockSparse blockQ zero', arg: 'blockMask.blockQ', call: A({ pattern: blockSparseSpec({ blockQ: 0 }) }) },
  { name: 'blockSparse blockK non-integer', arg: 'blockMask.blockK', call: A({ pattern: blockSparseSpec({ blockK: 2.5 }) }) },
  { name: 'blockSparse mask heads neither 1 nor H', arg: 'blockMask', call: A({ pattern: blockSparseSpec({ maskHeads: 2, mask: new Uint8Array(12) }) }) },
  { name: 'blockSparse wrong query-block count', arg: 'blockMask', call: A({ pattern: blockSparseSpec({ numQBlocks: 2, mask: new Uint8Array(4) }) }) },
  { name: 'blockSparse wrong key-block count', arg: 'blockMask', call: A({ pattern: blockSparseSpec({ numKBlocks: 3, mask: new Uint8Array(9) }) }) },
  { name: 'blockSparse mask length', arg: 'blockMask', call: A({ pattern: blockSparseSpec({ mask: new Uint8Array(5) }) }) },
  { name: 'blockSparse mask value 2', arg: 'blockMask', call: A({ pattern: blockSparseSpec({ mask: new Uint8Array([1, 0, 2, 1, 0, 1]) }) }) },
  { name: 'blockSparse nested in and()', arg: 'blockMask', call: A({ pattern: patterns.and(patterns.causal(), blockSparseSpec({ numQBlocks: 9 })) }) },
  // ---- blockSparseAttention's own checks
  { name: 'blockMask missing', arg: 'blockMask', call: BS({ blockMask: undefined }) },
  { name: 'blockMask shape rank 1', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 1, 1, 1, 1], shape: [6] } }) },
  { name: 'blockMask shape rank 4', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 1, 1, 1, 1], shape: [1, 1, 3, 2] } }) },
  { name: 'blockMask data length', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 1, 1, 1], shape: [3, 2] } }) },
  { name: 'blockMask value 2', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 2, 1, 1, 1], shape: [3, 2] } }) },
  { name: 'blockMask value NaN', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, NaN, 1, 1, 1], shape: [3, 2] } }) },
  { name: 'blockMask value a string', arg: 'blockMask', call: BS({ blockMask: { data: [1, '1', 1, 1, 1, 1], shape: [3, 2] } }) },
  { name: 'blockMask wrong query-block count', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 1, 1], shape: [2, 2] } }) },
  { name: 'blockMask wrong key-block count', arg: 'blockMask', call: BS({ blockMask: { data: [1, 1, 1], shape: [3, 1] } }) },
  { name: 'blockMask head axis neither 1 nor H', arg: 'blockMask', call: BS({ blockMask: { data: new Array(12).fill(1), shape: [2, 3, 2] } }) },
  { name: 'blockSize zero', arg: 'blockSize', call: BS({ blockSize: 0 }) },
  { name: 'blockSize non-integer', arg: 'blockSize', call: BS({ blockSize: [2, 1.5] }) },
  { name: 'blockSize a one-entry tuple', arg: 'blockSize', call: BS({ blockSize: [2] }) },
  { name: 'blockSize missing', arg: 'blockSize', call: BS({ blockSize: undefined }) },
  // ---- chunk selection specs
  { name: 'chunks chunkSize zero', arg: 'chunks.chunkSize', call: A({ pattern: chunkSpec({ chunkSize: 0 }) }) },
  { name: 'chunks queryTile non-integer', arg: 'chunks.queryTile', call: A({ pattern: chunkSpec({ queryTile: 1.5 }) }) },
  { name: 'chunks heads neither 1 nor H', arg: 'chunks', call: A({ pattern: chunkSpec({ heads: 3, offsets: new Int32Array(7) }) }) },
  { name: 'chunks wrong query-tile count', arg: 'chunks', call: A({ pattern: chunkSpec({ numQTiles: 3, offsets: new Int32Array([0, 1, 2, 3]) }) }) },
  { name: 'chunks offsets wrong length', arg: 'chunks.offsets', call: A({ pattern: chunkSpec({ offsets: new Int32Array([0, 3]) }) }) },
  { name: 'chunks offsets not starting at 0', arg: 'chunks.offsets', call: A({ pattern: chunkSpec({ offsets: new Int32Array([1, 2, 3]) }) }) },
  { name: 'chunks offsets not ending at ids.length', arg: 'chunks.offsets', call: A({ pattern: chunkSpec({ offsets: new Int32Array([0, 2, 2]) }) }) },
  { name: 'chunks offsets decreasing', arg: 'chunks.offsets', call: A({ pattern: chunkSpec({ heads: H, offsets: new Int32Array([0, 2, 1, 1, 2, 2, 3, 3, 3]), ids: new Int32Array([0, 2, 1]) }) }) },
  { name: 'chunks id out of range (= number of chunks)', arg: 'chunks.ids', call: A({ pattern: chunkSpec({ ids: new Int32Array([0, 3, 1]) }) }) },
  { name: 'chunks id negative', arg: 'chunks.ids', call: A({ pattern: chunkSpec({ ids: new Int32Array([-1, 2, 1]) }) }) },
  { name: 'chunks ids unsorted', arg: 'chunks.ids', call: A({ pattern: chunkSpec({ ids: new Int32Array([2, 0, 1]) }) }) },
  { name: 'chunks ids duplicated', arg: 'chunks.ids', call: A({ pattern: chunkSpec({ ids: new Int32Array([1, 1, 1]) }) }) },
  // ---- neighborhood attention
  { name: 'NA opts missing', arg: 'opts', call: () => na2d(q2, k2, v2, undefined as unknown as NeighborhoodOptions), sizes: [OUT2, LSE2] },
  { name: 'NA kernelSize missing', arg: 'kernelSize', call: NA({ kernelSize: undefined }), sizes: [OUT2, LSE2] },
  { name: 'NA kernelSize zero', arg: 'kernelSize', call: NA({ kernelSize: 0 }), sizes: [OUT2, LSE2] },
  { name: 'NA kernelSize non-integer', arg: 'kernelSize', call: NA({ kernelSize: [3, 2.5] }), sizes: [OUT2, LSE2] },
  { name: 'NA kernelSize wrong entry count', arg: 'kernelSize', call: NA({ kernelSize: [3, 3, 3] }), sizes: [OUT2, LSE2] },
  { name: 'NA kernelSize a string', arg: 'kernelSize', call: NA({ kernelSize: '3' }), sizes: [OUT2, LSE2] },
  { name: 'NA kernel > axis', arg: 'kernelSize', call: NA({ kernelSize: [6, 3] }), sizes: [OUT2, LSE2] },
  { name: 'NA dilation zero', arg: 'dilation', call: NA({ dilation: 0 }), sizes: [OUT2, LSE2] },
  { name: 'NA dilation wrong entry count', arg: 'dilation', call: NA({ dilation: [1] }), sizes: [OUT2, LSE2] },
  { name: 'NA kernel * dilation > axis', arg: 'dilation', call: NA({ kernelSize: [3, 3], dilation: [2, 1] }), sizes: [OUT2, LSE2] },
  { name: 'NA stride > kernel', arg: 'stride', call: NA({ kernelSize: 3, stride: [1, 4] }), sizes: [OUT2, LSE2] },
  { name: 'NA stride zero', arg: 'stride', call: NA({ stride: 0 }), sizes: [OUT2, LSE2] },
  { name: 'NA isCausal wrong entry count', arg: 'isCausal', call: NA({ isCausal: [true] }), sizes: [OUT2, LSE2] },
  { name: 'NA isCausal not boolean', arg: 'isCausal', call: NA({ isCausal: [1, 0] }), sizes: [OUT2, LSE2] },
  { name: 'na2d given a 1-D problem', arg: 'q', call: (d) => na2d(q, k, v, { kernelSize: 3, ...d }) },
  { name: 'na1d given a 2-D problem', arg: 'q', call: (d) => na1d(q2, k2, v2, { kernelSize: 3, ...d }), sizes: [OUT2, LSE2] },
  { name: 'na3d given a 2-D problem', arg: 'q', call: (d) => na3d(q2, k2, v2, { kernelSize: 3, ...d }), sizes: [OUT2, LSE2] },
  { name: 'NA with 4 token axes', arg: 'q', call: (d) => neighborhoodAttention(T([1, 2, 2, 2, 2, 1, 2]), T([1, 2, 2, 2, 2, 1, 2]), T([1, 2, 2, 2, 2, 1, 2]), { kernelSize: 1, ...d }), sizes: [16 * 2, 16] },
  { name: 'NA key grid differs from the query grid', arg: 'k', call: NA({}, q2, T([1, 5, 5, 2, 4]), T([1, 5, 5, 2, 4])), sizes: [OUT2, LSE2] },
  { name: 'NA D mismatch', arg: 'k', call: NA({}, q2, T([1, ...G, 2, 5]), v2), sizes: [OUT2, LSE2] },
  { name: 'NA heads not a multiple of kv heads', arg: 'k', call: NA({}, T([1, ...G, 3, 4]), k2, v2), sizes: [prod(G) * 3 * 4, prod(G) * 3] },
  { name: 'NA rpb wrong shape', arg: 'rpb', call: NA({ rpb: T([2, 5, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA rpb missing the head axis', arg: 'rpb', call: NA({ rpb: T([5, 5]) }), sizes: [OUT2, LSE2] },
  { name: 'NA rpb with a causal axis', arg: 'rpb', call: NA({ rpb: T([2, 5, 5]), isCausal: [false, true] }), sizes: [OUT2, LSE2] },
  { name: 'NA rpb not a tensor', arg: 'rpb', call: NA({ rpb: { data: new Float64Array(50), shape: [2, 5, 5] } }), sizes: [OUT2, LSE2] },
  { name: 'NA bad impl', arg: 'impl', call: NA({ impl: 'fast' }), sizes: [OUT2, LSE2] },
  { name: 'NA scale negative', arg: 'scale', call: NA({ scale: -2 }), sizes: [OUT2, LSE2] },
  { name: 'NA softcap NaN', arg: 'softcap', call: NA({ softcap: NaN }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalKeys without values', arg: 'additionalValues', call: NA({ additionalKeys: T([1, 3, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalValues without keys', arg: 'additionalKeys', call: NA({ additionalValues: T([1, 3, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalKeys rank 5', arg: 'additionalKeys', call: NA({ additionalKeys: T([1, 3, 1, 2, 4]), additionalValues: T([1, 3, 1, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalKeys wrong heads', arg: 'additionalKeys', call: NA({ additionalKeys: T([1, 3, 1, 4]), additionalValues: T([1, 3, 1, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalKeys wrong head dim', arg: 'additionalKeys', call: NA({ additionalKeys: T([1, 3, 2, 5]), additionalValues: T([1, 3, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalKeys wrong batch', arg: 'additionalKeys', call: NA({ additionalKeys: T([2, 3, 2, 4]), additionalValues: T([2, 3, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalValues token count differs', arg: 'additionalValues', call: NA({ additionalKeys: T([1, 3, 2, 4]), additionalValues: T([1, 4, 2, 4]) }), sizes: [OUT2, LSE2] },
  { name: 'NA additionalValues wrong Dv', arg: 'additionalValues', call: NA({ additionalKeys: T([1, 3, 2, 4]), additionalValues: T([1, 3, 2, 2]) }), sizes: [OUT2, LSE2] },
  // ---- raw neighborhood specs through attention()
  { name: 'raw NA spec: kernel > axis', arg: 'kernelSize', call: att(T([1, 4, 1, 4]), T([1, 4, 1, 4]), T([1, 4, 1, 4]), { pattern: { kind: 'neighborhood', kernelSize: [8], dilation: [1], stride: [1], isCausal: [false] } }), sizes: [16, 4] },
  { name: 'raw NA spec: kernel * dilation > axis', arg: 'dilation', call: att(T([1, 6, 1, 4]), T([1, 6, 1, 4]), T([1, 6, 1, 4]), { pattern: { kind: 'neighborhood', kernelSize: [3], dilation: [3], stride: [1], isCausal: [false] } }), sizes: [24, 6] },
  { name: 'raw NA spec: stride > kernel', arg: 'stride', call: att(T([1, 6, 1, 4]), T([1, 6, 1, 4]), T([1, 6, 1, 4]), { pattern: { kind: 'neighborhood', kernelSize: [2], dilation: [1], stride: [3], isCausal: [false] } }), sizes: [24, 6] },
  { name: 'raw NA spec: kernelSize entry count', arg: 'kernelSize', call: att(T([1, 6, 1, 4]), T([1, 6, 1, 4]), T([1, 6, 1, 4]), { pattern: { kind: 'neighborhood', kernelSize: [3, 3], dilation: [1, 1], stride: [1, 1], isCausal: [false, false] } }), sizes: [24, 6] },
  { name: 'raw NA spec: query and key grids differ', arg: 'k', call: att(T([1, 6, 1, 4]), T([1, 7, 1, 4]), T([1, 7, 1, 4]), { pattern: { kind: 'neighborhood', kernelSize: [3], dilation: [1], stride: [1], isCausal: [false] } }), sizes: [24, 6] },
  {
    name: 'raw NA specs with different dilations composed',
    arg: 'pattern',
    call: att(T([1, 8, 1, 4]), T([1, 8, 1, 4]), T([1, 8, 1, 4]), {
      pattern: patterns.and(
        { kind: 'neighborhood', kernelSize: [3], dilation: [1], stride: [1], isCausal: [false] },
        { kind: 'neighborhood', kernelSize: [3], dilation: [2], stride: [1], isCausal: [false] },
      ),
    }),
    sizes: [32, 8],
  },
  {
    name: 'dilated NA spec composed with a non-NA pattern',
    arg: 'pattern',
    call: att(T([1, 8, 1, 4]), T([1, 8, 1, 4]), T([1, 8, 1, 4]), {
      pattern: patterns.and({ kind: 'neighborhood', kernelSize: [3], dilation: [2], stride: [1], isCausal: [false] }, patterns.causal()),
    }),
    sizes: [32, 8],
  },
  // ---- naQK / naAV
  { name: 'naQK out wrong size', arg: 'out', call: (d) => naQK(q2, k2, { kernelSize: 3, out: new Float32Array(5), lse: d.lse }), sizes: [prod(G) * 2 * 9, LSE2] },
  { name: 'naQK kernel > axis', arg: 'kernelSize', call: (d) => naQK(q2, k2, { kernelSize: 7, ...d }), sizes: [prod(G) * 2 * 49, LSE2] },
  { name: 'naAV attn wrong window volume', arg: 'attn', call: (d) => naAV(T([1, ...G, 2, 8]), v2, { kernelSize: 3, out: d.out }), sizes: [OUT2, LSE2] },
  { name: 'naAV attn wrong grid', arg: 'attn', call: (d) => naAV(T([1, 5, 5, 2, 9]), v2, { kernelSize: 3, out: d.out }), sizes: [OUT2, LSE2] },
  { name: 'naAV out wrong size', arg: 'out', call: () => naAV(T([1, ...G, 2, 9]), v2, { kernelSize: 3, out: new Float32Array(OUT2 - 1) }), sizes: [OUT2, LSE2] },
  // ---- mergeAttentions
  ...((): Case[] => {
    const part = (dv = 3): Result => ({ out: T([1, 4, 2, dv]), lse: T([1, 4, 2]) });
    const sizes: [number, number] = [4 * 2 * 3, 8];
    return [
      { name: 'merge of no parts', arg: 'parts', call: (d) => mergeAttentions([], d), sizes },
      { name: 'merge of a non-array', arg: 'parts', call: (d) => mergeAttentions(undefined as unknown as Result[], d), sizes },
      { name: 'merge parts with different out shapes', arg: 'parts[1].out', call: (d) => mergeAttentions([part(), { out: T([1, 4, 2, 2]), lse: T([1, 4, 2]) }], d), sizes },
      { name: 'merge parts with different lse shapes', arg: 'parts[1].lse', call: (d) => mergeAttentions([part(), { out: T([1, 4, 2, 3]), lse: T([1, 2, 4]) }], d), sizes },
      { name: 'merge lse shape not out shape minus last axis', arg: 'parts[0].lse', call: (d) => mergeAttentions([{ out: T([1, 4, 2, 3]), lse: T([1, 8]) }], d), sizes },
      { name: 'merge part out not a tensor', arg: 'parts[1].out', call: (d) => mergeAttentions([part(), { out: { data: [1], shape: [1] }, lse: T([1, 4, 2]) } as unknown as Result], d), sizes },
      { name: 'merge out wrong size', arg: 'out', call: (d) => mergeAttentions([part(), part()], { out: new Float32Array(5), lse: d.lse }), sizes },
      { name: 'merge lse wrong size', arg: 'lse', call: (d) => mergeAttentions([part(), part()], { out: d.out, lse: new Float32Array(9) }), sizes },
    ];
  })(),
];

for (const c of cases) {
  test(`validation: ${c.name} -> TilewiseError on '${c.arg}', destinations untouched`, () => expectRejects(c));
}

test('validation: a rejected call leaves a shared-memory destination untouched too', async () => {
  const out = new Float32Array(new SharedArrayBuffer(OUT * 4)).fill(7);
  const lse = new Float32Array(new SharedArrayBuffer(LSE * 4)).fill(-3);
  const so = snapshot(out);
  const sl = snapshot(lse);
  await assert.rejects(attention(q, k, v, { out, lse, causal: 'nope' as unknown as boolean }), TilewiseError);
  assert.ok(sameBytes(out, so) && sameBytes(lse, sl));
});

test('validation: NaN inputs without checkFinite are not rejected (the check is opt-in)', async () => {
  const r = await attention(withData(q, (d) => (d[0] = NaN)), k, v);
  assert.equal(r.out.data.length, OUT);
});

test('validation: TilewiseError message names the argument and the rule', () => {
  const e = new TilewiseError('window[0]', 'must be an integer >= -1', 'got -2');
  assert.ok(e instanceof Error);
  assert.equal(e.arg, 'window[0]');
  assert.equal(e.rule, 'must be an integer >= -1');
  assert.match(e.message, /window\[0\].*must be an integer >= -1.*got -2/);
});
