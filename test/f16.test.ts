import assert from 'node:assert/strict';
import { test } from 'node:test';
import { f16Bits, f16Value, fromF16, roundF16, toF16 } from '../src/f16.js';
import { rng } from '../src/tensor.js';

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
