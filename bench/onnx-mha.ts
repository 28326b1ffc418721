/**
 * A one-node ONNX model around ONNX Runtime's contrib op com.microsoft.MultiHeadAttention, encoded
 * by hand: the few protobuf fields of onnx.proto it needs, so the peer benchmark has no protobuf
 * dependency and no Python. Field numbers are those of onnx/onnx.proto (IR version 8).
 */

/** Protobuf writer: varints, length-delimited fields and fixed32 floats are all ONNX needs here. */
class Pb {
  private parts: Uint8Array[] = [];
  private size = 0;
  private push(b: Uint8Array): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
  }
  private varint(v: number): this {
    // non-negative integers only (ids, dims, lengths): exact up to 2^53
    const out: number[] = [];
    for (; v >= 0x80; v = Math.floor(v / 128)) out.push((v % 128) | 0x80);
    out.push(v);
    return this.push(Uint8Array.from(out));
  }
  private key(field: number, wire: 0 | 2 | 5): this {
    return this.varint(field * 8 + wire);
  }
  int(field: number, v: number): this {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`pb: int field ${field} = ${v} (only non-negative)`);
    return this.key(field, 0).varint(v);
  }
  float(field: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return this.key(field, 5).push(b);
  }
  bytes(field: number, b: Uint8Array): this {
    return this.key(field, 2).varint(b.length).push(b);
  }
  str(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  msg(field: number, m: Pb): this {
    return this.bytes(field, m.finish());
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) out.set(p, (o += p.length) - p.length);
    return out;
  }
}

const FLOAT = 1; // TensorProto.DataType.FLOAT
const ATTR_FLOAT = 1, ATTR_INT = 2; // AttributeProto.AttributeType

/** ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2: {dim=1: {dim_value=1}}}}} */
function valueInfo(name: string, shape: readonly number[]): Pb {
  const dims = new Pb();
  for (const d of shape) dims.msg(1, new Pb().int(1, d));
  return new Pb().str(1, name).msg(2, new Pb().msg(1, new Pb().int(1, FLOAT).msg(2, dims)));
}

/** TensorProto{dims=1, data_type=2, name=8, raw_data=9}; raw_data is little-endian, as on every host we run on. */
function tensorProto(name: string, shape: readonly number[], data: Float32Array): Pb {
  const t = new Pb();
  for (const d of shape) t.int(1, d);
  return t.int(2, FLOAT).str(8, name).bytes(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

export interface MhaModel {
  batch: number;
  seq: number;
  heads: number;
  headDim: number;
  /** `unidirectional = 1`: ORT's own causal mask (query i sees keys 0..i). */
  unidirectional?: boolean;
  /** Additive bias [1, 1, seq, seq] (0 = attend, large negative = masked), baked in as an initializer. */
  bias?: Float32Array;
}

/**
 * ModelProto for `output = MultiHeadAttention(query, key, value, attention_bias?)` with inputs
 * query/key/value [B, N, H*D] (BSNH flattened, i.e. tilewise's heads-last layout as is).
 * The bias is an initializer because a fixed mask is a constant of the model, as a user would ship it;
 * it then costs no per-run copy. MHA's inputs 3 (projection bias) and 4 (key_padding_mask) are
 * left empty ("" = absent optional input in ONNX).
 */
export function mhaModel(m: MhaModel): Uint8Array {
  const hidden = m.heads * m.headDim;
  const io = [m.batch, m.seq, hidden];
  const node = new Pb().str(1, 'query').str(1, 'key').str(1, 'value');
  if (m.bias) node.str(1, '').str(1, '').str(1, 'attention_bias');
  node.str(2, 'output').str(3, 'mha').str(4, 'MultiHeadAttention').str(7, 'com.microsoft');
  node.msg(5, new Pb().str(1, 'num_heads').int(3, m.heads).int(20, ATTR_INT));
  node.msg(5, new Pb().str(1, 'scale').float(2, 1 / Math.sqrt(m.headDim)).int(20, ATTR_FLOAT));
  if (m.unidirectional) node.msg(5, new Pb().str(1, 'unidirectional').int(3, 1).int(20, ATTR_INT));

  const graph = new Pb().msg(1, node).str(2, 'mha');
  if (m.bias) {
    if (m.bias.length !== m.seq * m.seq) throw new Error(`bias has ${m.bias.length} values, want ${m.seq}^2`);
    graph.msg(5, tensorProto('attention_bias', [1, 1, m.seq, m.seq], m.bias));
  }
  for (const n of ['query', 'key', 'value']) graph.msg(11, valueInfo(n, io));
  graph.msg(12, valueInfo('output', io));

  // ModelProto{ir_version=1, producer_name=2, graph=7, opset_import=8: {domain=1, version=2}}
  return new Pb()
    .int(1, 8)
    .str(2, 'tilewise-bench')
    .msg(7, graph)
    .msg(8, new Pb().str(1, '').int(2, 17))
    .msg(8, new Pb().str(1, 'com.microsoft').int(2, 1))
    .finish();
}
