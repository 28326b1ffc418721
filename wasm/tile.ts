// The CPU tile step in WebAssembly SIMD (AssemblyScript). One source, two builds: plain SIMD, and
// relaxed SIMD where `f32x4.relaxed_madd` fuses multiply-add (ASC_FEATURE_RELAXED_SIMD folds at
// compile time). Everything works on byte offsets into the imported shared memory; nothing here
// allocates, so workers can share one memory and instantiate freely.
//
// Layouts (the TypeScript side, src/cpu/tile-kernels.ts, holds the same contract):
// - QT [d][tqPad]: the query tile transposed and pre-scaled; tqPad is a multiple of 8, pad rows 0.
// - S  [tk][tqPad]: scores transposed (key-major), so the softmax over keys runs 4 queries a lane.
// - key/value rows are reached through lists of byte offsets (i32), so contiguous inputs, gathered
//   N-D boxes and RoPE-rotated copies all look the same to the kernels.

// @ts-ignore: decorator
@inline function fma(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

// exp(x) for x <= 0 on 4 lanes (every softmax argument is a score minus a max): 2^t with
// t = x log2 e split as n + f (adding 1.5 * 2^23 + 127 puts 127 + round(t) in the low mantissa bits,
// so no f32x4.nearest or trunc_sat, which x86 lacks and V8 expands), 2^f by a degree-5 minimax
// polynomial on [-1/2, 1/2] (a Remez fit, 1.4e-7 in exact arithmetic; the degree-6 Taylor one
// before took an FMA and a register more for the same measured error), then 2^n by shifting those
// bits into the exponent. Relative error within 3e-7 + 9e-8 |x| (x log2 e rounds to f32 first;
// test/cpu-engine.test.ts) for x > -87; lanes at or below -87 (masked -inf included) give exactly
// 0, so no clamp is needed: their bits are masked away; NaN lanes give NaN.
//
// Its nine constants are values from a static table, not v128.const: V8 rebuilds a v128.const at
// each use inside a loop (movq, vmovq, vpunpcklqdq), which took an exp from 11 cycles to 24, while
// a value loaded before a loop stays in a register. Hot loops load them once (expK) and call
// expWith, through expRun where they can; vexpNeg loads them at its use, for the cold sites.
// Entries: -87, log2 e, 1.5 * 2^23 + 127, the polynomial's coefficients from f^5 down to f^0 (a
// Remez fit of 2^f, relative error), then vexp's clamp 88.
const EXPC = memory.data<f32>([
  -87.0, -87.0, -87.0, -87.0,
  1.44269504088896341, 1.44269504088896341, 1.44269504088896341, 1.44269504088896341,
  12583039.0, 12583039.0, 12583039.0, 12583039.0,
  0.0013310272063916818, 0.0013310272063916818, 0.0013310272063916818, 0.0013310272063916818,
  0.00967237650328434, 0.00967237650328434, 0.00967237650328434, 0.00967237650328434,
  0.05550583565508723, 0.05550583565508723, 0.05550583565508723, 0.05550583565508723,
  0.2402218328861072, 0.2402218328861072, 0.2402218328861072, 0.2402218328861072,
  0.6931470659422618, 0.6931470659422618, 0.6931470659422618, 0.6931470659422618,
  1.0000000576165202, 1.0000000576165202, 1.0000000576165202, 1.0000000576165202,
  88.0, 88.0, 88.0, 88.0,
], 16);
// @ts-ignore: decorator
@inline function expK(i: i32): v128 {
  return v128.load(EXPC + (<usize>i << 4));
}

// @ts-ignore: decorator
@inline function expWith(x: v128, c0: v128, c1: v128, c2: v128, c3: v128, c4: v128, c5: v128, c6: v128, c7: v128, c8: v128): v128 {
  const t = f32x4.mul(x, c1);
  const r = f32x4.add(t, c2);
  const f = f32x4.sub(t, f32x4.sub(r, c2));
  let p = fma(c3, f, c4);
  p = fma(p, f, c5);
  p = fma(p, f, c6);
  p = fma(p, f, c7);
  p = fma(p, f, c8);
  // bits(r) = bits(1.5 * 2^23) + 127 + round(t); the first term's low 9 bits are 0, so it shifts out
  const pow2 = i32x4.shl(r, 23);
  // a NaN lane compares false, so it is kept and stays NaN: a non-finite score poisons its row
  return v128.andnot(f32x4.mul(p, pow2), f32x4.le(x, c0));
}

// @ts-ignore: decorator
@inline function vexpNeg(x: v128): v128 {
  return expWith(x, expK(0), expK(1), expK(2), expK(3), expK(4), expK(5), expK(6), expK(7), expK(8));
}

// exp(x) for any x (softcap's tanh takes positive arguments): the same, clamped at 88 first so
// 2^n stays a finite f32.
// @ts-ignore: decorator
@inline function vexp(x: v128): v128 {
  return vexpNeg(f32x4.pmin(x, expK(9)));
}

/**
 * The n v128s at p, p + step, ... of each of `rows` rows rowStep bytes apart: each x becomes
 * exp(x - sub) (stored back when `write`); returns their sum. exp's constants stay in registers
 * over both loops (loaded per row, they cost a head-lane 3-D window, 25 rows of 5, as much again).
 */
function expRun(p: usize, rows: i32, rowStep: usize, n: i32, step: usize, sub: v128, write: bool): v128 {
  const c0 = expK(0), c1 = expK(1), c2 = expK(2), c3 = expK(3), c4 = expK(4), c5 = expK(5), c6 = expK(6), c7 = expK(7), c8 = expK(8);
  let sum = f32x4.splat(0);
  for (let r = 0; r < rows; r++, p += rowStep)
    for (let j = 0, x = p; j < n; j++, x += step) {
      const e = expWith(f32x4.sub(v128.load(x), sub), c0, c1, c2, c3, c4, c5, c6, c7, c8);
      if (write) v128.store(x, e);
      sum = f32x4.add(sum, e);
    }
  return sum;
}

/** exp on 4 lanes, exported for tests of the approximation. */
export function expTest(src: usize, dst: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) v128.store(dst + (<usize>i << 2), vexp(v128.load(src + (<usize>i << 2))));
}

/**
 * QT[x][i] = scale * Q_i[x] for i < tq (rows at byte offsets rows[i]); pad rows i in [tq, tqPad)
 * are 0. Four rows by four dims at a time: four loads, a 4x4 transpose in shuffles, four stores.
 */
export function loadQT(qt: usize, rows: usize, tq: i32, tqPad: i32, d: i32, scale: f32): void {
  const ld = <usize>tqPad << 2;
  const sv = f32x4.splat(scale);
  const d4 = d & ~3;
  let i = 0;
  for (; i + 4 <= tq; i += 4) {
    const p0 = <usize>load<i32>(rows + (<usize>i << 2));
    const p1 = <usize>load<i32>(rows + (<usize>i << 2), 4);
    const p2 = <usize>load<i32>(rows + (<usize>i << 2), 8);
    const p3 = <usize>load<i32>(rows + (<usize>i << 2), 12);
    let dst = qt + (<usize>i << 2);
    let x = 0;
    for (; x < d4; x += 4) {
      const o = <usize>x << 2;
      const r0 = v128.load(p0 + o), r1 = v128.load(p1 + o), r2 = v128.load(p2 + o), r3 = v128.load(p3 + o);
      const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
      const t1 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
      const t2 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
      const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
      v128.store(dst, f32x4.mul(v128.shuffle<f32>(t0, t1, 0, 1, 4, 5), sv));
      v128.store(dst + ld, f32x4.mul(v128.shuffle<f32>(t0, t1, 2, 3, 6, 7), sv));
      v128.store(dst + 2 * ld, f32x4.mul(v128.shuffle<f32>(t2, t3, 0, 1, 4, 5), sv));
      v128.store(dst + 3 * ld, f32x4.mul(v128.shuffle<f32>(t2, t3, 2, 3, 6, 7), sv));
      dst += 4 * ld;
    }
    for (; x < d; x++) {
      const o = <usize>x << 2;
      store<f32>(dst, load<f32>(p0 + o) * scale);
      store<f32>(dst, load<f32>(p1 + o) * scale, 4);
      store<f32>(dst, load<f32>(p2 + o) * scale, 8);
      store<f32>(dst, load<f32>(p3 + o) * scale, 12);
      dst += ld;
    }
  }
  for (; i < tq; i++) {
    const src = <usize>load<i32>(rows + (<usize>i << 2));
    let dst = qt + (<usize>i << 2);
    for (let x = 0; x < d; x++) {
      store<f32>(dst, load<f32>(src + (<usize>x << 2)) * scale);
      dst += ld;
    }
  }
  if (tq < tqPad) for (let x = 0; x < d; x++) memory.fill(qt + <usize>x * ld + (<usize>tq << 2), 0, <usize>(tqPad - tq) << 2);
}

// @ts-ignore: decorator
@inline function scores4(s: usize, qt: usize, ld: usize, i: i32, j: i32, k0: usize, k1: usize, k2: usize, k3: usize, d: i32): void {
  let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
  let a20 = f32x4.splat(0), a21 = f32x4.splat(0), a30 = f32x4.splat(0), a31 = f32x4.splat(0);
  let q = qt + (<usize>i << 2);
  for (let x = 0; x < d; x++) {
    const q0 = v128.load(q);
    const q1 = v128.load(q, 16);
    const o = <usize>x << 2;
    const b0 = v128.load32_splat(k0 + o);
    a00 = fma(b0, q0, a00);
    a01 = fma(b0, q1, a01);
    const b1 = v128.load32_splat(k1 + o);
    a10 = fma(b1, q0, a10);
    a11 = fma(b1, q1, a11);
    const b2 = v128.load32_splat(k2 + o);
    a20 = fma(b2, q0, a20);
    a21 = fma(b2, q1, a21);
    const b3 = v128.load32_splat(k3 + o);
    a30 = fma(b3, q0, a30);
    a31 = fma(b3, q1, a31);
    q += ld;
  }
  const o = s + <usize>j * ld + (<usize>i << 2);
  v128.store(o, a00);
  v128.store(o, a01, 16);
  v128.store(o + ld, a10);
  v128.store(o + ld, a11, 16);
  v128.store(o + 2 * ld, a20);
  v128.store(o + 2 * ld, a21, 16);
  v128.store(o + 3 * ld, a30);
  v128.store(o + 3 * ld, a31, 16);
}

/**
 * S[j][i] = sum_x K_j[x] * QT[x][i] for j < tk and the ni lanes i < ni (a multiple of 4; rows of S
 * and QT are ld bytes apart, so a caller may start both at any lane); key rows at byte offsets
 * kRows[j]. Blocks of 4 keys x 8 lanes keep 8 accumulators in registers over the head dim.
 */
export function scoresT(s: usize, qt: usize, ldLanes: i32, ni: i32, kRows: usize, tk: i32, d: i32): void {
  scoreBlocks(s, qt, ldLanes, ni, kRows, 0, tk, d, false);
}

/** scoresT with key row j at byte offset k0 + j * kStep: no list to load pointers from. */
export function scoresTStrided(s: usize, qt: usize, ldLanes: i32, ni: i32, k0: usize, kStep: i32, tk: i32, d: i32): void {
  scoreBlocks(s, qt, ldLanes, ni, k0, kStep, tk, d, true);
}

// @ts-ignore: decorator
@inline function scoreBlocks(s: usize, qt: usize, ldLanes: i32, ni: i32, kRows: usize, kStep: i32, tk: i32, d: i32, strided: bool): void {
  const ld = <usize>ldLanes << 2;
  const ks = <usize>kStep;
  const ni8 = ni & ~7;
  let j = 0;
  for (; j + 4 <= tk; j += 4) {
    const k0 = strided ? kRows + <usize>j * ks : <usize>load<i32>(kRows + (<usize>j << 2));
    const k1 = strided ? k0 + ks : <usize>load<i32>(kRows + (<usize>j << 2), 4);
    const k2 = strided ? k1 + ks : <usize>load<i32>(kRows + (<usize>j << 2), 8);
    const k3 = strided ? k2 + ks : <usize>load<i32>(kRows + (<usize>j << 2), 12);
    for (let i = 0; i < ni8; i += 8) scores4(s, qt, ld, i, j, k0, k1, k2, k3, d);
    if (ni8 < ni) {
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      let q = qt + (<usize>ni8 << 2);
      for (let x = 0; x < d; x++) {
        const q0 = v128.load(q);
        const o = <usize>x << 2;
        a0 = fma(v128.load32_splat(k0 + o), q0, a0);
        a1 = fma(v128.load32_splat(k1 + o), q0, a1);
        a2 = fma(v128.load32_splat(k2 + o), q0, a2);
        a3 = fma(v128.load32_splat(k3 + o), q0, a3);
        q += ld;
      }
      const o = s + <usize>j * ld + (<usize>ni8 << 2);
      v128.store(o, a0);
      v128.store(o + ld, a1);
      v128.store(o + 2 * ld, a2);
      v128.store(o + 3 * ld, a3);
    }
  }
  // leftover keys two, then one, at a time, still 8 lanes a block where the lanes allow (more
  // independent accumulators than one key by four lanes, whose single chain waits on each FMA)
  for (; j < tk; ) {
    const two = j + 2 <= tk;
    const k0 = strided ? kRows + <usize>j * ks : <usize>load<i32>(kRows + (<usize>j << 2));
    const k1 = two ? (strided ? k0 + ks : <usize>load<i32>(kRows + (<usize>j << 2), 4)) : k0;
    for (let i = 0; i < ni; i += 8) {
      const wide = i + 8 <= ni;
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), b0 = f32x4.splat(0), b1 = f32x4.splat(0);
      let q = qt + (<usize>i << 2);
      for (let x = 0; x < d; x++) {
        const o = <usize>x << 2;
        const q0 = v128.load(q);
        const q1 = wide ? v128.load(q, 16) : q0;
        const c0 = v128.load32_splat(k0 + o);
        const c1 = v128.load32_splat(k1 + o);
        a0 = fma(c0, q0, a0);
        a1 = fma(c0, q1, a1);
        b0 = fma(c1, q0, b0);
        b1 = fma(c1, q1, b1);
        q += ld;
      }
      const o = s + <usize>j * ld + (<usize>i << 2);
      v128.store(o, a0);
      if (wide) v128.store(o, a1, 16);
      if (two) {
        v128.store(o + ld, b0);
        if (wide) v128.store(o + ld, b1, 16);
      }
    }
    j += two ? 2 : 1;
  }
}

/** Score hook: s = cap * tanh(s / cap) over the ni lanes (a multiple of 4) of tk score rows. */
export function softcap(s: usize, ldLanes: i32, ni: i32, tk: i32, cap: f32): void {
  const inv = f32x4.splat(2.0 / cap);
  const c = f32x4.splat(cap);
  const one = f32x4.splat(1.0);
  const two = f32x4.splat(2.0);
  for (let x = 0; x < tk * ni; x += 4) {
    const p = s + (<usize>((x / ni) * ldLanes + (x % ni)) << 2);
    const v = v128.load(p);
    // tanh|t| = 1 - 2 / (exp(2|t|) + 1), sign restored after
    const e = vexp(f32x4.mul(f32x4.abs(v), inv));
    const t = f32x4.sub(one, f32x4.div(two, f32x4.add(e, one)));
    const signed = v128.or(t, v128.and(v, i32x4.splat(0x80000000)));
    v128.store(p, f32x4.mul(c, signed));
  }
}

/** Score hook: S[j][i] += table[rowIdx[i] + colIdx[j]] for i < n real rows (additive bias, NATTEN's rpb); float indices. */
export function addGathered(s: usize, ldLanes: i32, n: i32, tk: i32, table: usize, rowIdx: usize, colIdx: usize): void {
  for (let j = 0; j < tk; j++) {
    const c = load<i32>(colIdx + (<usize>j << 2));
    const row = s + <usize>j * (<usize>ldLanes << 2);
    for (let i = 0; i < n; i++) {
      const p = row + (<usize>i << 2);
      const t = table + (<usize>(load<i32>(rowIdx + (<usize>i << 2)) + c) << 2);
      store<f32>(p, load<f32>(p) + load<f32>(t));
    }
  }
}

/**
 * Mask of a partial visit for box patterns: S[j][i] = -inf unless, on every axis a, the key's
 * coordinate kCrd[j * rank + a] lies in the query's interval [lo[a][i], hi[a][i]] (lo, hi are
 * [rank][ldLanes] i32), for the ni lanes from where s, lo and hi point. Four queries at a time.
 */
export function maskBox(s: usize, ldLanes: i32, ni: i32, tk: i32, rank: i32, kCrd: usize, lo: usize, hi: usize): void {
  const ninf = f32x4.splat(-Infinity);
  const ld = <usize>ldLanes << 2;
  for (let j = 0; j < tk; j++) {
    const row = s + <usize>j * ld;
    for (let i = 0; i < ni; i += 4) {
      let out = i32x4.splat(0);
      for (let a = 0; a < rank; a++) {
        const kc = i32x4.splat(load<i32>(kCrd + (<usize>(j * rank + a) << 2)));
        const o = <usize>a * ld + (<usize>i << 2);
        out = v128.or(out, v128.or(i32x4.lt_s(kc, v128.load(lo + o)), i32x4.gt_s(kc, v128.load(hi + o))));
      }
      const p = row + (<usize>i << 2);
      v128.store(p, v128.bitselect(ninf, v128.load(p), out));
    }
  }
}

/**
 * Online softmax over one visit, four query rows at a time over ni lanes (rows of S ldLanes apart): per row the visit's max, the new running
 * max m, alpha = exp(m_old - m_new) written to `alpha`, S replaced by exp(S - m_new) and
 * l = l * alpha + rowsum. Rows with no allowed key so far keep m = -inf, l = 0, alpha = 0.
 */
export function softmaxStep(s: usize, ldLanes: i32, ni: i32, tk: i32, m: usize, l: usize, alpha: usize): void {
  const ld = <usize>ldLanes << 2;
  const ninf = f32x4.splat(-Infinity);
  for (let i = 0; i < ni; i += 4) {
    const col = s + (<usize>i << 2);
    let mx = ninf;
    let p = col;
    for (let j = 0; j < tk; j++) {
      mx = f32x4.pmax(mx, v128.load(p));
      p += ld;
    }
    const mOld = v128.load(m + (<usize>i << 2));
    const mNew = f32x4.pmax(mOld, mx);
    // an all -inf row subtracts 0 instead of -inf, so its exps are exp(-inf) = 0, never NaN
    const empty = f32x4.eq(mNew, ninf);
    const mSafe = v128.andnot(mNew, empty);
    const a = vexpNeg(f32x4.sub(mOld, mSafe));
    const sum = expRun(col, 1, 0, tk, ld, mSafe, true);
    v128.store(m + (<usize>i << 2), mNew);
    v128.store(l + (<usize>i << 2), fma(v128.load(l + (<usize>i << 2)), a, sum));
    v128.store(alpha + (<usize>i << 2), a);
  }
}

/**
 * O[i][c] = alpha[i] * O[i][c] + sum_j P[j][i] * V_j[c] for the ni lanes i < ni, c < dv (O rows dv apart;
 * value rows at byte offsets vRows[j]). Blocks of 4 rows x 8 columns stay in registers over all keys.
 */
export function pvAcc(o: usize, dv: i32, p: usize, ldLanes: i32, ni: i32, tk: i32, vRows: usize, alpha: usize): void {
  pvBlocks(o, dv, p, ldLanes, ni, tk, vRows, 0, alpha, false);
}

/** pvAcc with value row j at byte offset v0 + j * vStep: no list to load a pointer from per key. */
export function pvAccStrided(o: usize, dv: i32, p: usize, ldLanes: i32, ni: i32, tk: i32, v0: usize, vStep: i32, alpha: usize): void {
  pvBlocks(o, dv, p, ldLanes, ni, tk, v0, vStep, alpha, true);
}

// @ts-ignore: decorator
@inline function pvBlocks(o: usize, dv: i32, p: usize, ldLanes: i32, ni: i32, tk: i32, vRows: usize, vStep: i32, alpha: usize, strided: bool): void {
  const ld = <usize>ldLanes << 2;
  const ldo = <usize>dv << 2;
  const dv8 = dv & ~7;
  for (let i = 0; i < ni; i += 4) {
    const al = alpha + (<usize>i << 2);
    const s0 = f32x4.splat(load<f32>(al)), s1 = f32x4.splat(load<f32>(al, 4));
    const s2 = f32x4.splat(load<f32>(al, 8)), s3 = f32x4.splat(load<f32>(al, 12));
    const r0 = o + <usize>i * ldo;
    const r1 = r0 + ldo, r2 = r1 + ldo, r3 = r2 + ldo;
    let c = 0;
    for (; c < dv8; c += 8) {
      const oc = <usize>c << 2;
      let a00 = f32x4.mul(v128.load(r0 + oc), s0), a01 = f32x4.mul(v128.load(r0 + oc, 16), s0);
      let a10 = f32x4.mul(v128.load(r1 + oc), s1), a11 = f32x4.mul(v128.load(r1 + oc, 16), s1);
      let a20 = f32x4.mul(v128.load(r2 + oc), s2), a21 = f32x4.mul(v128.load(r2 + oc, 16), s2);
      let a30 = f32x4.mul(v128.load(r3 + oc), s3), a31 = f32x4.mul(v128.load(r3 + oc, 16), s3);
      let pp = p + (<usize>i << 2);
      let vp = vRows + oc;
      for (let j = 0; j < tk; j++) {
        const vr = strided ? vp : <usize>load<i32>(vRows + (<usize>j << 2)) + oc;
        const v0 = v128.load(vr);
        const v1 = v128.load(vr, 16);
        let b = v128.load32_splat(pp);
        a00 = fma(b, v0, a00);
        a01 = fma(b, v1, a01);
        b = v128.load32_splat(pp, 4);
        a10 = fma(b, v0, a10);
        a11 = fma(b, v1, a11);
        b = v128.load32_splat(pp, 8);
        a20 = fma(b, v0, a20);
        a21 = fma(b, v1, a21);
        b = v128.load32_splat(pp, 12);
        a30 = fma(b, v0, a30);
        a31 = fma(b, v1, a31);
        pp += ld;
        if (strided) vp += <usize>vStep;
      }
      v128.store(r0 + oc, a00);
      v128.store(r0 + oc, a01, 16);
      v128.store(r1 + oc, a10);
      v128.store(r1 + oc, a11, 16);
      v128.store(r2 + oc, a20);
      v128.store(r2 + oc, a21, 16);
      v128.store(r3 + oc, a30);
      v128.store(r3 + oc, a31, 16);
    }
    // columns past the last multiple of 8: one at a time (head dims that are not multiples of 8)
    for (; c < dv; c++) {
      const oc = <usize>c << 2;
      for (let r = 0; r < 4; r++) {
        const dst = r0 + <usize>r * ldo + oc;
        let acc = load<f32>(dst) * load<f32>(al + (<usize>r << 2));
        let pp = p + (<usize>(i + r) << 2);
        for (let j = 0; j < tk; j++) {
          const vr = strided ? vRows + <usize>j * <usize>vStep : <usize>load<i32>(vRows + (<usize>j << 2));
          acc += load<f32>(pp) * load<f32>(vr + oc);
          pp += ld;
        }
        store<f32>(dst, acc);
      }
    }
  }
}

/** out_i = O[i] / l[i] (0 where l = 0), written to the row at byte offset outRows[i], for i < tq. */
export function finishRows(o: usize, dv: i32, tq: i32, l: usize, outRows: usize): void {
  const ldo = <usize>dv << 2;
  const dv4 = dv & ~3;
  for (let i = 0; i < tq; i++) {
    const li = load<f32>(l + (<usize>i << 2));
    const inv: f32 = li > 0 ? 1.0 / li : 0.0;
    const sv = f32x4.splat(inv);
    const src = o + <usize>i * ldo;
    const dst = <usize>load<i32>(outRows + (<usize>i << 2));
    let c = 0;
    for (; c < dv4; c += 4) v128.store(dst + (<usize>c << 2), f32x4.mul(v128.load(src + (<usize>c << 2)), sv));
    for (; c < dv; c++) store<f32>(dst + (<usize>c << 2), load<f32>(src + (<usize>c << 2)) * inv);
  }
}

/**
 * Softmax in place over `rows` rows of `w` contiguous scores each (-inf slots give 0), the row max
 * and sum written to m and l (the caller forms lse = m + log l). `normalize` 0 leaves the scores.
 */
export function softmaxRows(a: usize, rows: i32, w: i32, m: usize, l: usize, normalize: i32): void {
  const w4 = w & ~3;
  for (let r = 0; r < rows; r++) {
    const row = a + <usize>r * (<usize>w << 2);
    let mx: f32 = -Infinity;
    for (let j = 0; j < w; j++) mx = max(mx, load<f32>(row + (<usize>j << 2)));
    const mSafe: f32 = mx == -Infinity ? 0 : mx;
    const ms = f32x4.splat(mSafe);
    const sv = expRun(row, 1, 0, w4 >> 2, 16, ms, normalize != 0);
    let j = w4;
    let sum: f32 = f32x4.extract_lane(sv, 0) + f32x4.extract_lane(sv, 1) + f32x4.extract_lane(sv, 2) + f32x4.extract_lane(sv, 3);
    for (; j < w; j++) {
      const e = f32x4.extract_lane(vexpNeg(f32x4.splat(load<f32>(row + (<usize>j << 2)) - mSafe)), 0);
      if (normalize) store<f32>(row + (<usize>j << 2), e);
      sum += e;
    }
    store<f32>(m + (<usize>r << 2), mx);
    store<f32>(l + (<usize>r << 2), sum);
    if (normalize && sum > 0) {
      const inv = f32x4.splat(1.0 / sum);
      for (j = 0; j < w4; j += 4) v128.store(row + (<usize>j << 2), f32x4.mul(v128.load(row + (<usize>j << 2)), inv));
      for (; j < w; j++) store<f32>(row + (<usize>j << 2), load<f32>(row + (<usize>j << 2)) / sum);
    }
  }
}

/**
 * Moves scores between the unfused kernels' two layouts: S [u][lane] over a tile's union box and
 * attn [row][slot] over each query's window. Per lane i < tq, win holds 9 i32: (lo, hi, base) of
 * the window per axis, rank padded to 3 with leading unit axes; slot = window offset from base in
 * a k0 x k1 x k2 window, u = offset from the union's lo in a union of extents u0 x u1 x u2.
 * toS 0: S -> attn (naQK); 1: attn -> S (naAV). attnRows: byte offset of each lane's attn row.
 */
export function windowSlots(s: usize, ldLanes: i32, tq: i32, win: usize, k1: i32, k2: i32, ulo0: i32, ulo1: i32, ulo2: i32, u1: i32, u2: i32, attnRows: usize, toS: i32): void {
  const ld = <usize>ldLanes << 2;
  for (let i = 0; i < tq; i++) {
    const w = win + <usize>i * 36;
    const lo0 = load<i32>(w), hi0 = load<i32>(w, 4), b0 = load<i32>(w, 8);
    const lo1 = load<i32>(w, 12), hi1 = load<i32>(w, 16), b1 = load<i32>(w, 20);
    const lo2 = load<i32>(w, 24), hi2 = load<i32>(w, 28), b2 = load<i32>(w, 32);
    const row = <usize>load<i32>(attnRows + (<usize>i << 2));
    const lane = s + (<usize>i << 2);
    for (let c0 = lo0; c0 <= hi0; c0++)
      for (let c1 = lo1; c1 <= hi1; c1++) {
        const slot = ((c0 - b0) * k1 + (c1 - b1)) * k2 - b2;
        const u = ((c0 - ulo0) * u1 + (c1 - ulo1)) * u2 - ulo2;
        for (let c2 = lo2; c2 <= hi2; c2++) {
          const ap = row + (<usize>(slot + c2) << 2);
          const sp = lane + <usize>(u + c2) * ld;
          if (toS) store<f32>(sp, load<f32>(ap));
          else store<f32>(ap, load<f32>(sp));
        }
      }
  }
}

/**
 * A sliced visit in one call: for each slice x < n, ranges[x] = (i0, ni, k0, tk) says which lanes
 * [i0, i0 + ni) and which keys [k0, k0 + tk) of the key lists it pairs; every slice is scored
 * (Q.K^T, softcap when cap > 0), masked by the interval rules, and accumulated (online softmax,
 * P.V). The TypeScript walker only lays out the ranges, so a neighborhood tile costs one call.
 */
export function slicedVisit(
  s: usize, qt: usize, ldLanes: i32, d: i32, dv: i32, kRows: usize, vRows: usize, kCrd: usize, rank: i32,
  lo: usize, hi: usize, ranges: usize, n: i32, cap: f32, m: usize, l: usize, alpha: usize, o: usize,
): void {
  for (let x = 0; x < n; x++) {
    const r = ranges + <usize>x * 16;
    const i0 = load<i32>(r), ni = load<i32>(r, 4), k0 = load<i32>(r, 8), tk = load<i32>(r, 12);
    if (ni <= 0 || tk <= 0) continue;
    const l4 = <usize>i0 << 2;
    const sp = s + l4;
    scoresT(sp, qt + l4, ldLanes, ni, kRows + (<usize>k0 << 2), tk, d);
    if (cap > 0) softcap(sp, ldLanes, ni, tk, cap);
    maskBox(sp, ldLanes, ni, tk, rank, kCrd + (<usize>(k0 * rank) << 2), lo + l4, hi + l4);
    softmaxStep(sp, ldLanes, ni, tk, m + l4, l + l4, alpha + l4);
    pvAcc(o + l4 * <usize>dv, dv, sp, ldLanes, ni, tk, vRows + (<usize>k0 << 2), alpha + l4);
  }
}

// ---------------------------------------------------------------------------------------------
// Head-lane neighborhood kernel. The four heads of a query share its window, so they fill the
// four lanes and every computed pair is an allowed pair: the query-lane tile step above pays 30-40%
// masked pairs on 2-D/3-D windows (a 4-lane group spans 4 queries' windows), a mask and an online
// rescale per slice. q, k and v are first regrouped in place, per token, [H][D] -> [H/4][D][4],
// so one head group's value at dim x is one v128.

// Stores the transpose of the 4x4 block whose rows are r0..r3 as rows at dst, dst + stride, ...
// @ts-ignore: decorator
@inline function store4T(r0: v128, r1: v128, r2: v128, r3: v128, dst: usize, stride: usize): void {
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t2 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, v128.shuffle<f32>(t0, t1, 0, 1, 4, 5));
  v128.store(dst + stride, v128.shuffle<f32>(t0, t1, 2, 3, 6, 7));
  v128.store(dst + 2 * stride, v128.shuffle<f32>(t2, t3, 0, 1, 4, 5));
  v128.store(dst + 3 * stride, v128.shuffle<f32>(t2, t3, 2, 3, 6, 7));
}

// 4 rows of d floats at src (a token's 4 heads) as d v128s at dst, `step` bytes apart (dim x of
// the 4 heads at dst + step x): 16 for a token regrouped in place, RUN for a query of a run.
// `scaled` (a constant at each call): every value times sc on the way (a query's q, pre-scaled in
// the same pass instead of a second one over its lanes).
// @ts-ignore: decorator
@inline function rowsToLanes(src: usize, dst: usize, d: i32, step: usize, scaled: bool = false, sc: v128 = f32x4.splat(1)): void {
  const row = <usize>d << 2;
  for (let x = 0; x < d; x += 4) {
    const o = <usize>x << 2;
    let r0 = v128.load(src + o), r1 = v128.load(src + row + o), r2 = v128.load(src + 2 * row + o), r3 = v128.load(src + 3 * row + o);
    if (scaled) {
      r0 = f32x4.mul(r0, sc);
      r1 = f32x4.mul(r1, sc);
      r2 = f32x4.mul(r2, sc);
      r3 = f32x4.mul(r3, sc);
    }
    store4T(r0, r1, r2, r3, dst + <usize>x * step, step);
  }
}

/** In place: `blocks` blocks of 4 rows x d floats (a token's 4 heads) become d x 4 (d a multiple of 4); tmp holds 4d floats. */
export function lanesFromRows(ptr: usize, blocks: i32, d: i32, tmp: usize): void {
  const row = <usize>d << 2;
  for (let b = 0; b < blocks; b++) {
    const base = ptr + <usize>b * (row << 2);
    memory.copy(tmp, base, row << 2);
    rowsToLanes(tmp, base, d, 16);
  }
}

// not inlined: softcap is rare, and nine inlined copies of exp cost kilobytes of every bundle
function capv(v: v128, cap: f32): v128 {
  // cap * tanh(v / cap), tanh|t| = 1 - 2 / (exp(2|t|) + 1), sign restored after
  const one = f32x4.splat(1.0);
  const e = vexp(f32x4.mul(f32x4.abs(v), f32x4.splat(2.0 / cap)));
  const t = f32x4.sub(one, f32x4.div(f32x4.splat(2.0), f32x4.add(e, one)));
  return f32x4.mul(f32x4.splat(cap), v128.or(t, v128.and(v, i32x4.splat(0x80000000))));
}

// lse = m + log l on 4 lanes (l = 0: -inf; NaN stays NaN). log l for l > 0: l = 2^e * x with x in
// [sqrt 1/2, sqrt 2), log x = 2 atanh s, s = (x - 1) / (x + 1), |s| < 0.172, to s^9 (error < 1e-9):
// no libm log (Mathf.log adds a kilobyte to each of the four builds in every bundle).
function lseOf(m: v128, l: v128): v128 {
  const bits = i32x4.sub(l, i32x4.splat(0x3f3504f3)); // bits of sqrt(1/2)
  const e = i32x4.shr_s(bits, 23);
  const x = i32x4.add(i32x4.sub(bits, i32x4.shl(e, 23)), i32x4.splat(0x3f3504f3));
  const s = f32x4.div(f32x4.sub(x, f32x4.splat(1.0)), f32x4.add(x, f32x4.splat(1.0)));
  const s2 = f32x4.mul(s, s);
  let p = f32x4.splat(1.0 / 9.0);
  p = fma(p, s2, f32x4.splat(1.0 / 7.0));
  p = fma(p, s2, f32x4.splat(1.0 / 5.0));
  p = fma(p, s2, f32x4.splat(1.0 / 3.0));
  p = fma(p, s2, f32x4.splat(1.0));
  const lg = fma(f32x4.convert_i32x4_s(e), f32x4.splat(0.6931471805599453), f32x4.mul(f32x4.mul(s, f32x4.splat(2.0)), p));
  const r = f32x4.add(m, lg);
  // l = 0 (no key): -inf; l NaN: the compare is false for both, so NaN + anything stays NaN
  return v128.bitselect(f32x4.splat(-Infinity), v128.bitselect(r, f32x4.add(l, m), f32x4.gt(l, f32x4.splat(0))), f32x4.eq(l, f32x4.splat(0)));
}

// ---------------------------------------------------------------------------------------------
// The forward runs queries in runs of up to four consecutive ones whose windows are the same box
// but on the last axis, where start and end are non-decreasing (neighbours along a tile row). Each
// key column of the run's union is held by a contiguous range of its queries, so Q K^T and P V run
// column by column on exactly those queries: every computed pair is an allowed one (the pairs
// before computed a pair's union, 1/6 of it masked on a 3-D k5 window), and each k or v row loaded
// feeds up to four queries (a pair fed two; on 3-D windows those rows come from L2). The backward
// (runBwd) runs the same runs and column kernels.

// A run's per-query vectors (q, dO, and the O and dQ accumulators, each head group's 4 heads in
// lanes) are interleaved: vector x of query s at buf + RUN x + 16 s. The column kernels then reach
// every query of a column from one pointer by immediate offsets and step it by a constant, where
// separate per-query rows took an address computation per query and per vector (qkColumn with
// four queries: 1.35 FMAs a cycle, 1.59 interleaved).
const RUN: usize = 64;

// Raw dot products q_s . k for the nq queries s0.. of a column (q interleaved from qs, the run's
// buffer + 16 s0) and nk keys whose k row addresses are at kp (kStep bytes apart); scores go to sp
// (sStep bytes a key, 16 a query). d is even (head lanes take head dims in fours).
function qkColumn(nq: i32, qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  if (nq == 1) qkColumn1(qs, d, kp, kStep, nk, sp, sStep, trash);
  else if (nq == 2) qkColumn2(qs, d, kp, kStep, nk, sp, sStep, trash);
  else if (nq == 3) qkColumn3(qs, d, kp, kStep, nk, sp, sStep, trash);
  else qkColumn4(qs, d, kp, kStep, nk, sp, sStep, trash);
}

// The column kernels specialised by query count, as exported functions (not part of the
// TileKernels interface): inlined side by side, Binaryen merged a template's copies, whose code
// differs only in its constants, into one loop testing the query count on every pass (pvColumn
// with two queries: 0.47 FMAs a cycle, 1.0 apart; qkColumn with four: 0.93, 1.56 apart), and it
// keeps an exported function whole. Q K^T takes blocks of 2 keys for 4 queries, 3 for 3 and 4 for
// 2, so each keeps 8-9 accumulators and all its operands in the 15 registers V8 gives.
export function qkColumn2(qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  qkBlocks(2, 4, qs, d, kp, kStep, nk, sp, sStep, trash);
}
export function qkColumn3(qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  qkBlocks(3, 3, qs, d, kp, kStep, nk, sp, sStep, trash);
}
export function qkColumn4(qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  qkBlocks(4, 2, qs, d, kp, kStep, nk, sp, sStep, trash);
}

// One query: three keys, two accumulators each (even and odd dims), so 6 chains run side by side
// (the template's blocks would give 1 query too few: 4 keys x 2 halves spilled accumulators, 0.57
// FMAs a cycle).
export function qkColumn1(qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  const qEnd = qs + <usize>d * RUN;
  const last = nk - 1;
  for (let j = 0; j < nk; j += 3) {
    const j1 = j + 1 <= last ? j + 1 : last, j2 = j + 2 <= last ? j + 2 : last;
    let k0 = <usize>load<i32>(kp + <usize>j * kStep), k1 = <usize>load<i32>(kp + <usize>j1 * kStep), k2 = <usize>load<i32>(kp + <usize>j2 * kStep);
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0);
    for (let q = qs; q < qEnd; q += 2 * RUN, k0 += 32, k1 += 32, k2 += 32) {
      const q0 = v128.load(q), q1 = v128.load(q, RUN);
      a0 = fma(q0, v128.load(k0), a0);
      b0 = fma(q1, v128.load(k0, 16), b0);
      a1 = fma(q0, v128.load(k1), a1);
      b1 = fma(q1, v128.load(k1, 16), b1);
      a2 = fma(q0, v128.load(k2), a2);
      b2 = fma(q1, v128.load(k2, 16), b2);
    }
    const s0 = sp + <usize>j * sStep;
    v128.store(s0, f32x4.add(a0, b0));
    v128.store(j + 1 <= last ? s0 + sStep : trash, f32x4.add(a1, b1));
    v128.store(j + 2 <= last ? s0 + 2 * sStep : trash, f32x4.add(a2, b2));
  }
}

// Q K^T for nq (2-4) queries in blocks of nkb (2-4) keys, one dim a pass: accumulator x_j is
// query x's (a, b, c, e) score with the block's key j. Each query's q vector is loaded just before
// its FMAs, so the accumulators (nq nkb <= 9), the block's k vectors and one q vector stay in the
// 15 registers V8 gives. A partial block repeats its last key and stores the extra scores to `trash`.
// @ts-ignore: decorator
@inline function qkBlocks(nq: i32, nkb: i32, qs: usize, d: i32, kp: usize, kStep: usize, nk: i32, sp: usize, sStep: usize, trash: usize): void {
  const qEnd = qs + <usize>d * RUN;
  const last = nk - 1;
  const zero = f32x4.splat(0);
  for (let j = 0; j < nk; j += nkb) {
    let k0 = <usize>load<i32>(kp + <usize>j * kStep);
    let k1 = <usize>load<i32>(kp + <usize>(j + 1 <= last ? j + 1 : last) * kStep);
    let k2 = nkb > 2 ? <usize>load<i32>(kp + <usize>(j + 2 <= last ? j + 2 : last) * kStep) : 0;
    let k3 = nkb > 3 ? <usize>load<i32>(kp + <usize>(j + 3 <= last ? j + 3 : last) * kStep) : 0;
    let a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    let c0 = zero, c1 = zero, c2 = zero, e0 = zero, e1 = zero;
    for (let q = qs; q < qEnd; q += RUN, k0 += 16, k1 += 16, k2 += 16, k3 += 16) {
      const kv0 = v128.load(k0), kv1 = v128.load(k1);
      const kv2 = nkb > 2 ? v128.load(k2) : zero, kv3 = nkb > 3 ? v128.load(k3) : zero;
      const q0 = v128.load(q);
      a0 = fma(q0, kv0, a0);
      a1 = fma(q0, kv1, a1);
      if (nkb > 2) a2 = fma(q0, kv2, a2);
      if (nkb > 3) a3 = fma(q0, kv3, a3);
      const q1 = v128.load(q, 16);
      b0 = fma(q1, kv0, b0);
      b1 = fma(q1, kv1, b1);
      if (nkb > 2) b2 = fma(q1, kv2, b2);
      if (nkb > 3) b3 = fma(q1, kv3, b3);
      if (nq > 2) {
        const q2 = v128.load(q, 32);
        c0 = fma(q2, kv0, c0);
        c1 = fma(q2, kv1, c1);
        if (nkb > 2) c2 = fma(q2, kv2, c2);
      }
      if (nq > 3) {
        const q3 = v128.load(q, 48);
        e0 = fma(q3, kv0, e0);
        e1 = fma(q3, kv1, e1);
      }
    }
    const s0 = sp + <usize>j * sStep;
    const s1 = j + 1 <= last ? s0 + sStep : trash;
    const s2 = j + 2 <= last ? s0 + 2 * sStep : trash;
    const s3 = j + 3 <= last ? s0 + 3 * sStep : trash;
    v128.store(s0, a0);
    v128.store(s1, a1);
    v128.store(s0, b0, 16);
    v128.store(s1, b1, 16);
    if (nkb > 2) {
      v128.store(s2, a2);
      v128.store(s2, b2, 16);
    }
    if (nkb > 3) {
      v128.store(s3, a3);
      v128.store(s3, b3, 16);
    }
    if (nq > 2) {
      v128.store(s0, c0, 32);
      v128.store(s1, c1, 32);
      if (nkb > 2) v128.store(s2, c2, 32);
    }
    if (nq > 3) {
      v128.store(s0, e0, 48);
      v128.store(s1, e1, 48);
    }
  }
}

// O_s += sum over the column's nk keys of P[key][s] v_key for the nq queries s0.. (accumulators
// interleaved from os, the run's buffer + 16 s0; weights at pp, pStep bytes a key, 16 a query; v row
// addresses at vp, vStep bytes apart). Keys go in pairs, their weights held in registers while
// both v rows stream past once, front to back (as Q K^T reads k rows): per dim, the accumulators
// are loaded, take two FMAs each and are stored back (they stay in L1).
function pvColumn(nq: i32, os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  if (nq == 1) pvColumn1(os, dv, vp, vStep, nk, pp, pStep);
  else if (nq == 2) pvColumn2(os, dv, vp, vStep, nk, pp, pStep);
  else if (nq == 3) pvColumn3(os, dv, vp, vStep, nk, pp, pStep);
  else pvColumn4(os, dv, vp, vStep, nk, pp, pStep);
}

// pvColumn specialised by query count (exported to stay apart: see qkColumn2). One or two queries
// hold 4 dims of their accumulators in registers over the column's keys (pvDims: 1.4-1.6x the
// rate of pvKeysAll on a 25-key column); three and four keep pvKeysAll, which streams each v row
// once: their pvDims (2 dims a pass) was 1.1x faster on the kernel alone, but with it for every
// count 3-D calls took 1.04-1.06x the time (0.98x with it for one and two only): it goes back to
// every v row of a column once per pass.
export function pvColumn1(os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  pvDims(1, 4, os, dv, vp, vStep, nk, pp, pStep);
}
export function pvColumn2(os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  pvDims(2, 4, os, dv, vp, vStep, nk, pp, pStep);
}
export function pvColumn3(os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  pvKeysAll(3, os, dv, vp, vStep, nk, pp, pStep);
}
export function pvColumn4(os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  pvKeysAll(4, os, dv, vp, vStep, nk, pp, pStep);
}

// pvColumn for nq (1 or 2) queries, nd (1-4) of their accumulator vectors at a time (dv a multiple
// of nd), held in registers while every key of the column passes: per key, one v vector loaded
// per dim feeds both queries, and each query's weight is loaded once. Accumulator asx is query s's
// dim x of the block.
// @ts-ignore: decorator
@inline function pvDims(nq: i32, nd: i32, os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  const end = os + <usize>dv * RUN;
  const vEnd = vp + <usize>nk * vStep;
  const zero = f32x4.splat(0);
  const two = nq > 1;
  for (let o = os, x: usize = 0; o < end; o += <usize>nd * RUN, x += <usize>nd << 4) {
    let a00 = v128.load(o), a01 = nd > 1 ? v128.load(o, 64) : zero, a02 = nd > 2 ? v128.load(o, 128) : zero, a03 = nd > 3 ? v128.load(o, 192) : zero;
    let a10 = two ? v128.load(o, 16) : zero, a11 = two && nd > 1 ? v128.load(o, 80) : zero;
    let a12 = two && nd > 2 ? v128.load(o, 144) : zero, a13 = two && nd > 3 ? v128.load(o, 208) : zero;
    for (let r = vp, w = pp; r < vEnd; r += vStep, w += pStep) {
      const row = <usize>load<i32>(r) + x;
      const w0 = v128.load(w), w1 = two ? v128.load(w, 16) : zero;
      const v0 = v128.load(row);
      a00 = fma(w0, v0, a00);
      if (two) a10 = fma(w1, v0, a10);
      if (nd > 1) {
        const v1 = v128.load(row, 16);
        a01 = fma(w0, v1, a01);
        if (two) a11 = fma(w1, v1, a11);
      }
      if (nd > 2) {
        const v2 = v128.load(row, 32);
        a02 = fma(w0, v2, a02);
        if (two) a12 = fma(w1, v2, a12);
      }
      if (nd > 3) {
        const v3 = v128.load(row, 48);
        a03 = fma(w0, v3, a03);
        if (two) a13 = fma(w1, v3, a13);
      }
    }
    v128.store(o, a00);
    if (nd > 1) v128.store(o, a01, 64);
    if (nd > 2) v128.store(o, a02, 128);
    if (nd > 3) v128.store(o, a03, 192);
    if (two) v128.store(o, a10, 16);
    if (two && nd > 1) v128.store(o, a11, 80);
    if (two && nd > 2) v128.store(o, a12, 144);
    if (two && nd > 3) v128.store(o, a13, 208);
  }
}

// pvColumn for nq queries: the keys in pairs, then an odd key last (the same stream with one key,
// each v vector loaded once for all the queries).
// @ts-ignore: decorator
@inline function pvKeysAll(nq: i32, os: usize, dv: i32, vp: usize, vStep: usize, nk: i32, pp: usize, pStep: usize): void {
  const end = os + <usize>dv * RUN;
  let j = 0;
  for (; j + 2 <= nk; j += 2) {
    const r0 = <usize>load<i32>(vp + <usize>j * vStep), r1 = <usize>load<i32>(vp + <usize>(j + 1) * vStep);
    pvKeys(nq, true, os, end, r0, r1, pp + <usize>j * pStep, pStep);
  }
  if (j < nk) {
    const r0 = <usize>load<i32>(vp + <usize>j * vStep);
    pvKeys(nq, false, os, end, r0, r0, pp + <usize>j * pStep, pStep);
  }
}

// One step of pvColumn, specialised by nq (1-4 queries) and two (a key pair, else one key): the
// weights of every query and key in registers, the v rows streamed past once, each accumulator
// vector read and written once per step. Weights of key 2 at w0 + pStep.
// @ts-ignore: decorator
@inline function pvKeys(nq: i32, two: bool, os: usize, end: usize, r0: usize, r1: usize, w0: usize, pStep: usize): void {
  const w1 = w0 + pStep;
  const zero = f32x4.splat(0);
  const pa0 = v128.load(w0), pa1 = two ? v128.load(w1) : zero;
  const pb0 = nq > 1 ? v128.load(w0, 16) : zero, pb1 = two && nq > 1 ? v128.load(w1, 16) : zero;
  const pc0 = nq > 2 ? v128.load(w0, 32) : zero, pc1 = two && nq > 2 ? v128.load(w1, 32) : zero;
  const pd0 = nq > 3 ? v128.load(w0, 48) : zero, pd1 = two && nq > 3 ? v128.load(w1, 48) : zero;
  for (let o = os; o < end; o += RUN, r0 += 16, r1 += 16) {
    const v0 = v128.load(r0);
    const v1 = two ? v128.load(r1) : zero;
    v128.store(o, two ? fma(pa1, v1, fma(pa0, v0, v128.load(o))) : fma(pa0, v0, v128.load(o)));
    if (nq > 1) v128.store(o, two ? fma(pb1, v1, fma(pb0, v0, v128.load(o, 16))) : fma(pb0, v0, v128.load(o, 16)), 16);
    if (nq > 2) v128.store(o, two ? fma(pc1, v1, fma(pc0, v0, v128.load(o, 32))) : fma(pc0, v0, v128.load(o, 32)), 32);
    if (nq > 3) v128.store(o, two ? fma(pd1, v1, fma(pd0, v0, v128.load(o, 48))) : fma(pd0, v0, v128.load(o, 48)), 48);
  }
}

// The union of a run's windows (see runWindows), column-major (column: a point of the last axis,
// row: a point of the first axes; a column's keys, and the columns one after another, are
// consecutive), as three i32 lists at keys: k row addresses, v row addresses and (with rpb) rpb key
// parts, each as long as the union. Returns its number of rows.
function runUnion(
  nr: i32, win: usize, kBase: usize, vBase: usize, st0: i32, st1: i32, st2: i32, rk: usize, rv: usize, keys: usize, rpb: usize, r0: i32, r1: i32, r2: i32,
): i32 {
  const lo0 = load<i32>(win), hi0 = load<i32>(win, 4), lo1 = load<i32>(win, 8), hi1 = load<i32>(win, 12);
  const L = load<i32>(win, 16);
  const W = load<i32>(win + (<usize>nr << 3), 12) - L + 1;
  const rows = (hi0 - lo0 + 1) * (hi1 - lo1 + 1);
  const nk = rows * W;
  const kp = keys, vp = keys + (<usize>nk << 2), kr = keys + (<usize>nk << 3);
  let j = 0;
  for (let t = 0; t < W; t++)
    for (let c0 = lo0; c0 <= hi0; c0++)
      for (let c1 = lo1; c1 <= hi1; c1++, j++) {
        const tok = <usize>(c0 * st0 + c1 * st1 + (L + t) * st2);
        store<i32>(kp + (<usize>j << 2), <i32>(kBase + tok * rk));
        store<i32>(vp + (<usize>j << 2), <i32>(vBase + tok * rv));
        if (rpb) store<i32>(kr + (<usize>j << 2), c0 * r0 + c1 * r1 + (L + t) * r2);
      }
  return rows;
}

// The queries of a run whose windows hold last-axis column c: from the first whose window ends at
// or after c to the last whose window starts at or before it (both ends are non-decreasing).
// @ts-ignore: decorator
@inline function firstHolder(win: usize, c: i32): i32 {
  let s = 0;
  while (load<i32>(win + (<usize>s << 3), 20) < c) s++;
  return s;
}
// @ts-ignore: decorator
@inline function lastHolder(win: usize, nr: i32, c: i32): i32 {
  let s = nr - 1;
  while (load<i32>(win + (<usize>s << 3), 16) > c) s--;
  return s;
}
// The end of the group of columns from t on held by the same queries s0..s1 (a run's middle
// columns: their keys are consecutive in the union, so one column-kernel call takes them all).
// Not inlined: six call sites, and every bundle carries the bytes.
function holdersEnd(win: usize, nr: i32, L: i32, W: i32, t: i32, s0: i32, s1: i32): i32 {
  let t2 = t + 1;
  while (t2 < W && firstHolder(win, L + t2) == s0 && lastHolder(win, nr, L + t2) == s1) t2++;
  return t2;
}

/**
 * naLanes for a run of nr (1-4) queries whose windows are the box [lo0, hi0] x [lo1, hi1] on the
 * first axes (rank padded to 3 at the front) and [lo2_s, hi2_s] on the last, non-decreasing in s
 * and without gaps (win: the four shared words, then lo2_s, hi2_s per query). Keys of the union
 * are laid out row-major (row: a point of the first axes; column: the last axis) in three lists
 * at keys: k row addresses, v row addresses, rpb key parts. Scores: [key][4 queries] v128s at
 * sBuf, then 4 v128s of trash. q of each query in lanes at qBuf, O accumulators at oBuf.
 */
function runWindows(
  nr: i32, qRows: usize, outRows: usize, lseRows: usize, rpbRows: usize, win: usize,
  kBase: usize, vBase: usize, st0: i32, st1: i32, st2: i32, rk: usize, rv: usize, d: i32, dv: i32, scale: f32, cap: f32,
  sBuf: usize, keys: usize, rpb: usize, r0: i32, r1: i32, r2: i32, qBuf: usize, oBuf: usize,
): void {
  const rows = runUnion(nr, win, kBase, vBase, st0, st1, st2, rk, rv, keys, rpb, r0, r1, r2);
  const L = load<i32>(win, 16);
  const W = load<i32>(win + (<usize>nr << 3), 12) - L + 1;
  const nk = rows * W;
  const kp = keys, vp = keys + (<usize>nk << 2), kr = keys + (<usize>nk << 3);
  // q of each query to lanes, interleaved (RUN; its [H][D] rows are read once), pre-scaled so the
  // scores come out scaled; the O accumulators zeroed
  const sc = f32x4.splat(scale);
  for (let s = 0; s < nr; s++) {
    const qs = qBuf + (<usize>s << 4);
    rowsToLanes(<usize>load<i32>(qRows + (<usize>s << 2)), qs, d, RUN, true, sc);
  }
  memory.fill(oBuf, 0, <usize>dv * RUN);
  const trash = sBuf + (<usize>nk << 6);
  // Q K^T column by column (a group of columns with the same holders at once), on the queries whose
  // windows hold the column. One row (1-D windows): a column is one key, too little work per call,
  // so all the run's queries take every key of the union in one call (at most 3 keys a query more
  // than its window, zeroed after the softmax)
  const flat = rows == 1;
  if (flat) qkColumn(nr, qBuf, d, kp, 4, W, sBuf, 64, trash);
  else
    for (let t = 0; t < W; ) {
      const s0 = firstHolder(win, L + t), s1 = lastHolder(win, nr, L + t);
      const t2 = holdersEnd(win, nr, L, W, t, s0, s1);
      const j = <usize>(t * rows);
      qkColumn(s1 - s0 + 1, qBuf + (<usize>s0 << 4), d, kp + (j << 2), 4, (t2 - t) * rows, sBuf + (j << 6) + (<usize>s0 << 4), 64, trash);
      t = t2;
    }
  // each query's softmax over its own keys (columns a..e, consecutive in the union): softcap and
  // rpb hooks, then max, exp and sum
  const ninf = f32x4.splat(-Infinity);
  for (let s = 0; s < nr; s++) {
    const a = load<i32>(win + (<usize>s << 3), 16) - L, e = load<i32>(win + (<usize>s << 3), 20) - L;
    const first = sBuf + (<usize>s << 4) + (<usize>(a * rows) << 6);
    const n = (e - a + 1) * rows;
    const end = first + (<usize>n << 6);
    const rr = rpb ? rpb + (<usize>load<i32>(rpbRows + (<usize>s << 2)) << 4) : 0;
    let m = ninf;
    if (cap > 0 || rr) {
      let kp2 = kr + (<usize>(a * rows) << 2);
      for (let sp = first; sp < end; sp += 64, kp2 += 4) {
        let x = v128.load(sp);
        if (cap > 0) x = capv(x, cap);
        if (rr) x = f32x4.add(x, v128.load(rr + (<usize>load<i32>(kp2) << 4)));
        v128.store(sp, x);
        m = f32x4.pmax(m, x);
      }
    } else for (let sp = first; sp < end; sp += 64) m = f32x4.pmax(m, v128.load(sp));
    const ms = v128.andnot(m, f32x4.eq(m, ninf));
    const l = expRun(first, 1, 0, n, 64, ms, true);
    v128.store(<usize>load<i32>(lseRows + (<usize>s << 2)), lseOf(m, l));
    // 1 / l (0 where l = 0) kept in the trash's slot for this query until the output is written
    v128.store(trash + (<usize>s << 4), v128.and(f32x4.div(f32x4.splat(1.0), l), f32x4.gt(l, f32x4.splat(0))));
    if (flat) {
      // the union's keys outside this query's window weigh 0 in the one P V call below
      const zero = f32x4.splat(0);
      for (let t = 0; t < a; t++) v128.store(sBuf + (<usize>t << 6) + (<usize>s << 4), zero);
      for (let t = e + 1; t < W; t++) v128.store(sBuf + (<usize>t << 6) + (<usize>s << 4), zero);
    }
  }
  // P V column by column, on the same queries (one row: every key for all of them, as Q K^T)
  if (flat) pvColumn(nr, oBuf, dv, vp, 4, W, sBuf, 64);
  else
    for (let t = 0; t < W; ) {
      const s0 = firstHolder(win, L + t), s1 = lastHolder(win, nr, L + t);
      const t2 = holdersEnd(win, nr, L, W, t, s0, s1);
      const j = <usize>(t * rows);
      pvColumn(s1 - s0 + 1, oBuf + (<usize>s0 << 4), dv, vp + (j << 2), 4, (t2 - t) * rows, sBuf + (j << 6) + (<usize>s0 << 4), 64);
      t = t2;
    }
  // out = O / l, back from lanes to one row per head
  const ldo = <usize>dv << 2;
  for (let s = 0; s < nr; s++) {
    const inv = v128.load(trash + (<usize>s << 4));
    const os = oBuf + (<usize>s << 4);
    const out = <usize>load<i32>(outRows + (<usize>s << 2));
    for (let c = 0; c < dv; c += 4) {
      const o = os + <usize>c * RUN;
      store4T(f32x4.mul(v128.load(o), inv), f32x4.mul(v128.load(o, RUN), inv), f32x4.mul(v128.load(o, 2 * RUN), inv), f32x4.mul(v128.load(o, 3 * RUN), inv), out + (<usize>c << 2), ldo);
    }
  }
}

// Query i's run (see runWindows): the queries from i on, at most four, whose windows share the
// box on the first axes and on the last are non-decreasing in start and end, with no gap between
// one and the next and a union of at most maxW columns. Writes lo0, hi0, lo1, hi1, then lo2, hi2
// per query at win; returns how many queries the run holds.
// @ts-ignore: decorator
@inline function endAt(ends: usize, ld: usize, pad: i32, a: i32, q: i32): i32 {
  return a < pad ? 0 : load<i32>(ends + <usize>(a - pad) * ld + (<usize>q << 2));
}

function windowRun(lo: usize, hi: usize, ld: usize, pad: i32, i: i32, n: i32, maxW: i32, win: usize): i32 {
  const lo0 = endAt(lo, ld, pad, 0, i), hi0 = endAt(hi, ld, pad, 0, i), lo1 = endAt(lo, ld, pad, 1, i), hi1 = endAt(hi, ld, pad, 1, i);
  store<i32>(win, lo0);
  store<i32>(win, hi0, 4);
  store<i32>(win, lo1, 8);
  store<i32>(win, hi1, 12);
  let pl = endAt(lo, ld, pad, 2, i), ph = endAt(hi, ld, pad, 2, i);
  store<i32>(win, pl, 16);
  store<i32>(win, ph, 20);
  const first = pl;
  let r = 1;
  for (; r < 4 && i + r < n; r++) {
    const q = i + r;
    const l2 = endAt(lo, ld, pad, 2, q), h2 = endAt(hi, ld, pad, 2, q);
    if (endAt(lo, ld, pad, 0, q) != lo0 || endAt(hi, ld, pad, 0, q) != hi0 || endAt(lo, ld, pad, 1, q) != lo1 || endAt(hi, ld, pad, 1, q) != hi1) break;
    if (l2 < pl || h2 < ph || l2 > ph + 1 || h2 - first + 1 > maxW) break;
    store<i32>(win + (<usize>r << 3), l2, 16);
    store<i32>(win + (<usize>r << 3), h2, 20);
    pl = l2;
    ph = h2;
  }
  return r;
}

/**
 * Neighborhood attention of n queries for one group of 4 heads (lanes). Query i: its q rows of
 * the 4 heads at byte offset qRows[i] (d floats apart), out rows of its 4 heads from outRows[i]
 * (dv floats apart), lse of its 4 heads at lseRows[i]; its window on each of `rank` axes is
 * [lo, hi] (inclusive, [rank][ldLanes] i32, group-local). Key at window coordinates (c0, c1, c2)
 * (rank padded to 3 at the front) sits at token offset c0 st0 + c1 st1 + c2 st2 from kBase /
 * vBase, rows rowK / rowV bytes apart. Queries go in runs (runWindows) whose unions are at most
 * maxW columns on the last axis: sBuf holds a union's scores (64 bytes a key) and 64 bytes more,
 * keys 16 words and three i32 lists of a union, qBuf 64 d bytes, oBuf 64 dv bytes.
 * rpb (0: none): NATTEN's relative position bias regrouped [vol][4] for this head group; the index
 * of (query i, key c) is rpbRows[i] + c0 r0 + c1 r1 + c2 r2, added after scale and softcap.
 */
export function naLanes(
  qRows: usize, outRows: usize, lseRows: usize, lo: usize, hi: usize, ldLanes: i32, n: i32, rank: i32,
  kBase: usize, vBase: usize, st0: i32, st1: i32, st2: i32, rowK: i32, rowV: i32,
  d: i32, dv: i32, scale: f32, cap: f32, sBuf: usize, keys: usize,
  rpb: usize, rpbRows: usize, r0: i32, r1: i32, r2: i32, qBuf: usize, maxW: i32, oBuf: usize,
): void {
  const ld = <usize>ldLanes << 2;
  const pad = 3 - rank;
  // the first 16 words of keys hold the run's windows (windowRun), the key lists follow
  const win = keys;
  for (let i = 0; i < n; ) {
    const nr = windowRun(lo, hi, ld, pad, i, n, maxW, win);
    const li = <usize>i << 2;
    runWindows(
      nr, qRows + li, outRows + li, lseRows + li, rpbRows + li, win,
      kBase, vBase, st0, st1, st2, <usize>rowK, <usize>rowV, d, dv, scale, cap, sBuf, keys + 64, rpb, r0, r1, r2, qBuf, oBuf,
    );
    i += nr;
  }
}

/** In place: `blocks` blocks of d x 4 (a token's 4 heads in lanes) back to 4 rows x d; tmp holds 4d floats. */
export function rowsFromLanes(ptr: usize, blocks: i32, d: i32, tmp: usize): void {
  const row = <usize>d << 2;
  for (let b = 0; b < blocks; b++) {
    const base = ptr + <usize>b * (row << 2);
    memory.copy(tmp, base, row << 2);
    for (let x = 0; x < d; x += 4) {
      const o = <usize>x << 4;
      store4T(v128.load(tmp + o), v128.load(tmp + o, 16), v128.load(tmp + o, 32), v128.load(tmp + o, 48), base + (<usize>x << 2), row);
    }
  }
}

// dst_j += sum over the column's holders s of w[j][s] x_s, for the nk keys of a column: the
// backward's dV_j += P dO and dK_j += dS q (x_s interleaved from xs, the run's buffer + 16 s0, n
// vectors; weights at wp, wStep bytes a key, 16 a query; key row addresses (of k or v) at ap, aStep
// bytes apart, moved by `shift` bytes to the thread's dK / dV partial). Each key's weights stay in
// registers while its row is read, summed into and written once.
function keyRowsColumn(nq: i32, xs: usize, n: i32, ap: usize, aStep: usize, shift: usize, nk: i32, wp: usize, wStep: usize): void {
  if (nq == 1) keyRowsColumn1(xs, n, ap, aStep, shift, nk, wp, wStep);
  else if (nq == 2) keyRowsColumn2(xs, n, ap, aStep, shift, nk, wp, wStep);
  else if (nq == 3) keyRowsColumn3(xs, n, ap, aStep, shift, nk, wp, wStep);
  else keyRowsColumn4(xs, n, ap, aStep, shift, nk, wp, wStep);
}
// (exported to stay apart: see qkColumn2)
export function keyRowsColumn1(xs: usize, n: i32, ap: usize, aStep: usize, shift: usize, nk: i32, wp: usize, wStep: usize): void {
  for (let j = 0; j < nk; j++) keyRowSum(1, <usize>load<i32>(ap + <usize>j * aStep) + shift, n, xs, wp + <usize>j * wStep);
}
export function keyRowsColumn2(xs: usize, n: i32, ap: usize, aStep: usize, shift: usize, nk: i32, wp: usize, wStep: usize): void {
  for (let j = 0; j < nk; j++) keyRowSum(2, <usize>load<i32>(ap + <usize>j * aStep) + shift, n, xs, wp + <usize>j * wStep);
}
export function keyRowsColumn3(xs: usize, n: i32, ap: usize, aStep: usize, shift: usize, nk: i32, wp: usize, wStep: usize): void {
  for (let j = 0; j < nk; j++) keyRowSum(3, <usize>load<i32>(ap + <usize>j * aStep) + shift, n, xs, wp + <usize>j * wStep);
}
export function keyRowsColumn4(xs: usize, n: i32, ap: usize, aStep: usize, shift: usize, nk: i32, wp: usize, wStep: usize): void {
  for (let j = 0; j < nk; j++) keyRowSum(4, <usize>load<i32>(ap + <usize>j * aStep) + shift, n, xs, wp + <usize>j * wStep);
}

// One key row of keyRowsColumn, specialised by nq: dst += sum over s < nq of w_s x_s.
// @ts-ignore: decorator
@inline function keyRowSum(nq: i32, dst: usize, n: i32, xs: usize, w: usize): void {
  const zero = f32x4.splat(0);
  const w0 = v128.load(w), w1 = nq > 1 ? v128.load(w, 16) : zero, w2 = nq > 2 ? v128.load(w, 32) : zero, w3 = nq > 3 ? v128.load(w, 48) : zero;
  const end = dst + (<usize>n << 4);
  for (let o = dst, x = xs; o < end; o += 16, x += RUN) {
    let acc = fma(w0, v128.load(x), v128.load(o));
    if (nq > 1) acc = fma(w1, v128.load(x, 16), acc);
    if (nq > 2) acc = fma(w2, v128.load(x, 32), acc);
    if (nq > 3) acc = fma(w3, v128.load(x, 48), acc);
    v128.store(o, acc);
  }
}

/**
 * The head-lane backward (FlashAttention-2 from the LSE) of a run of nr queries (windowRun; lists
 * of row addresses at qRows.., one per query of the run): S = q k^T and dP = dO v^T column by
 * column on the queries holding each column (qkColumn), per query P = exp(S - lse) and dS = P (dP -
 * delta) (times the softcap's derivative; dS summed into the drpb partial), dV_j += P dO and dK_j
 * += scale dS q into this thread's partials (keyRowsColumn), dQ = scale dS K (pvColumn). q is
 * scaled once in lanes, which gives both the scaled scores and the scaled dK. Scratch: sBuf two
 * score areas of a union (64 bytes a key each, and 64 more), keys 16 words and three i32 lists,
 * lanes 16 (2 d + 2 dv) floats.
 */
function runBwd(
  nr: i32, qRows: usize, doRows: usize, oRows: usize, lseRows: usize, dqRows: usize, rpbRows: usize, win: usize,
  kBase: usize, vBase: usize, dkBase: usize, dvBase: usize, st0: i32, st1: i32, st2: i32, rk: usize, rv: usize,
  d: i32, dv: i32, scale: f32, cap: f32, sBuf: usize, keys: usize, lanes: usize, rpb: usize, drpb: usize, r0: i32, r1: i32, r2: i32,
): void {
  const rows = runUnion(nr, win, kBase, vBase, st0, st1, st2, rk, rv, keys, rpb, r0, r1, r2);
  const L0 = load<i32>(win, 16);
  const W = load<i32>(win + (<usize>nr << 3), 12) - L0 + 1;
  const nk = rows * W;
  const kp = keys, vp = keys + (<usize>nk << 2), kr = keys + (<usize>nk << 3);
  // q (scaled), dO and the dQ accumulators of each query in lanes; O passes through the dQ area
  // (delta = rowsum(dO O) per head) before it is zeroed
  const qb = lanes, db = qb + <usize>d * RUN, dqb = db + <usize>dv * RUN, ob = dqb + <usize>d * RUN;
  const sc = f32x4.splat(scale);
  const sS = sBuf, sD = sBuf + ((<usize>nk + 1) << 6); // S then P; dP then dS; [key][4 queries]
  const trash = sD - 64, trashD = sD + (<usize>nk << 6);
  for (let s = 0; s < nr; s++) {
    const at = <usize>s << 2;
    const qs = qb + (<usize>s << 4);
    rowsToLanes(<usize>load<i32>(qRows + at), qs, d, RUN, true, sc);
    rowsToLanes(<usize>load<i32>(doRows + at), db + (<usize>s << 4), dv, RUN);
    rowsToLanes(<usize>load<i32>(oRows + at), ob + (<usize>s << 4), dv, RUN);
  }
  memory.fill(dqb, 0, <usize>d * RUN);
  // S and dP column by column, on the queries whose windows hold the column; one row (1-D): every
  // key of the union for all the run's queries, as the forward (the extra entries zeroed below)
  const flat = rows == 1;
  if (flat) {
    qkColumn(nr, qb, d, kp, 4, W, sS, 64, trash);
    qkColumn(nr, db, dv, vp, 4, W, sD, 64, trashD);
  } else
    for (let t = 0; t < W; ) {
      const s0 = firstHolder(win, L0 + t), s1 = lastHolder(win, nr, L0 + t);
      const t2 = holdersEnd(win, nr, L0, W, t, s0, s1);
      const j = <usize>(t * rows), n = (t2 - t) * rows;
      const col = (j << 6) + (<usize>s0 << 4);
      qkColumn(s1 - s0 + 1, qb + (<usize>s0 << 4), d, kp + (j << 2), 4, n, sS + col, 64, trash);
      qkColumn(s1 - s0 + 1, db + (<usize>s0 << 4), dv, vp + (j << 2), 4, n, sD + col, 64, trashD);
      t = t2;
    }
  // per query: P and dS over its own keys (exp's constants in registers: see expWith)
  const ninf = f32x4.splat(-Infinity);
  const c0 = expK(0), c1 = expK(1), c2 = expK(2), c3 = expK(3), c4 = expK(4), c5 = expK(5), c6 = expK(6), c7 = expK(7), c8 = expK(8);
  for (let s = 0; s < nr; s++) {
    const a = load<i32>(win + (<usize>s << 3), 16) - L0, e = load<i32>(win + (<usize>s << 3), 20) - L0;
    let delta = f32x4.splat(0);
    const ds = db + (<usize>s << 4), os = ob + (<usize>s << 4);
    for (let o: usize = 0; o < <usize>dv * RUN; o += RUN) delta = fma(v128.load(ds + o), v128.load(os + o), delta);
    // a row with no key (lse -inf) gets lse +inf, so P = 0
    let L = v128.load(<usize>load<i32>(lseRows + (<usize>s << 2)));
    L = v128.bitselect(f32x4.splat(Infinity), L, f32x4.eq(L, ninf));
    const r = rpb ? rpb + (<usize>load<i32>(rpbRows + (<usize>s << 2)) << 4) : 0;
    const dr = rpb ? drpb + (<usize>load<i32>(rpbRows + (<usize>s << 2)) << 4) : 0;
    // its keys: columns a..e, consecutive in the union
    const first = (<usize>s << 4) + (<usize>(a * rows) << 6);
    const end = first + (<usize>((e - a + 1) * rows) << 6);
    {
      let kq = kr + (<usize>(a * rows) << 2);
      for (let off = first; off < end; off += 64, kq += 4) {
        let x = v128.load(sS + off);
        if (cap > 0) x = capv(x, cap);
        // rpb comes after the softcap; drpb takes dS itself, then dS goes on through the softcap
        const bsc = r ? f32x4.add(x, v128.load(r + (<usize>load<i32>(kq) << 4))) : x;
        const p = expWith(f32x4.sub(bsc, L), c0, c1, c2, c3, c4, c5, c6, c7, c8);
        let dsv = f32x4.mul(p, f32x4.sub(v128.load(sD + off), delta));
        if (r) {
          const at = dr + (<usize>load<i32>(kq) << 4);
          v128.store(at, f32x4.add(v128.load(at), dsv));
        }
        if (cap > 0) {
          const tt = f32x4.mul(x, f32x4.splat(1.0 / cap));
          dsv = f32x4.mul(dsv, f32x4.sub(f32x4.splat(1.0), f32x4.mul(tt, tt)));
        }
        v128.store(sS + off, p);
        v128.store(sD + off, dsv);
      }
    }
    if (flat) {
      // the union's keys outside this query's window: P and dS 0 in the calls below
      const zero = f32x4.splat(0);
      for (let t = 0; t < W; t++) {
        if (t >= a && t <= e) continue;
        const off = (<usize>t << 6) + (<usize>s << 4);
        v128.store(sS + off, zero);
        v128.store(sD + off, zero);
      }
    }
  }
  // dV += P dO, dK += dS q (q scaled: scale dS q), dQ += dS K, column by column (one row: at once)
  if (flat) {
    keyRowsColumn(nr, db, dv, vp, 4, dvBase - vBase, W, sS, 64);
    keyRowsColumn(nr, qb, d, kp, 4, dkBase - kBase, W, sD, 64);
    pvColumn(nr, dqb, d, kp, 4, W, sD, 64);
  } else
    for (let t = 0; t < W; ) {
      const s0 = firstHolder(win, L0 + t), s1 = lastHolder(win, nr, L0 + t);
      const t2 = holdersEnd(win, nr, L0, W, t, s0, s1);
      const nq = s1 - s0 + 1;
      const j = <usize>(t * rows), n = (t2 - t) * rows;
      const col = (j << 6) + (<usize>s0 << 4);
      keyRowsColumn(nq, db + (<usize>s0 << 4), dv, vp + (j << 2), 4, dvBase - vBase, n, sS + col, 64);
      keyRowsColumn(nq, qb + (<usize>s0 << 4), d, kp + (j << 2), 4, dkBase - kBase, n, sD + col, 64);
      pvColumn(nq, dqb + (<usize>s0 << 4), d, kp + (j << 2), 4, n, sD + col, 64);
      t = t2;
    }
  // dQ = scale (dS K), back to one row per head
  const ldq = <usize>d << 2;
  for (let s = 0; s < nr; s++) {
    const qs = dqb + (<usize>s << 4);
    const out = <usize>load<i32>(dqRows + (<usize>s << 2));
    for (let x = 0; x < d; x += 4) {
      const o = qs + <usize>x * RUN;
      store4T(f32x4.mul(v128.load(o), sc), f32x4.mul(v128.load(o, RUN), sc), f32x4.mul(v128.load(o, 2 * RUN), sc), f32x4.mul(v128.load(o, 3 * RUN), sc), out + (<usize>x << 2), ldq);
    }
  }
}

/**
 * The head-lane backward of n queries for one group of 4 heads, in the forward's runs of up to
 * four queries (runBwd). Queries, runs and maxW as in naLanes; doRows / oRows: dO and O rows of each query's 4 heads, lseRows:
 * its 4 lse values, dqRows: its dq rows; dK and dV go to this thread's partials (regrouped like k
 * and v, at dkBase / dvBase with the same offsets). rpb (0: none), rpbRows, r0..r2 as in naLanes;
 * drpb: this thread's drpb partial for the head group, regrouped like rpb.
 */
export function naLanesBwd(
  qRows: usize, doRows: usize, oRows: usize, lseRows: usize, dqRows: usize, lo: usize, hi: usize, ldLanes: i32, n: i32, rank: i32,
  kBase: usize, vBase: usize, dkBase: usize, dvBase: usize, st0: i32, st1: i32, st2: i32, rowK: i32, rowV: i32,
  d: i32, dv: i32, scale: f32, cap: f32, sBuf: usize, keys: usize, lanes: usize,
  rpb: usize, drpb: usize, rpbRows: usize, r0: i32, r1: i32, r2: i32, maxW: i32,
): void {
  const ld = <usize>ldLanes << 2;
  const pad = 3 - rank;
  // the first 16 words of keys hold the run's windows (windowRun), the key lists follow
  const win = keys;
  for (let i = 0; i < n; ) {
    const nr = windowRun(lo, hi, ld, pad, i, n, maxW, win);
    const li = <usize>i << 2;
    runBwd(
      nr, qRows + li, doRows + li, oRows + li, lseRows + li, dqRows + li, rpbRows + li, win,
      kBase, vBase, dkBase, dvBase, st0, st1, st2, <usize>rowK, <usize>rowV, d, dv, scale, cap, sBuf, keys + 64, lanes, rpb, drpb, r0, r1, r2,
    );
    i += nr;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (FlashAttention-2 recomputation from the forward's LSE). Q.K^T and dP = dO V^T are
// scoresT, dQ += dS K is pvAcc (alpha 1); what is new: the probabilities from the LSE, dS, and
// accumulation into key rows (dK += dS^T Q, dV += P^T dO).

/** P[j][i] = exp(S[j][i] - lse[i]) over ni lanes (lanes with lse = -inf, rows with no key, give 0). */
export function probsT(s: usize, ldLanes: i32, ni: i32, tk: i32, lse: usize): void {
  const ld = <usize>ldLanes << 2;
  const ninf = f32x4.splat(-Infinity);
  for (let i = 0; i < ni; i += 4) {
    let L = v128.load(lse + (<usize>i << 2));
    L = v128.bitselect(f32x4.splat(Infinity), L, f32x4.eq(L, ninf));
    expRun(s + (<usize>i << 2), 1, 0, tk, ld, L, true);
  }
}

/**
 * dS = P * (dP - delta[i]) over ni lanes, written over dP; with a softcap, also times the
 * derivative 1 - (c / cap)^2 of the capped score c (kept at `sc` before bias and rpb were added).
 */
export function dsT(p: usize, dp: usize, ldLanes: i32, ni: i32, tk: i32, delta: usize, sc: usize, cap: f32): void {
  const ld = <usize>ldLanes << 2;
  const one = f32x4.splat(1.0);
  const inv = f32x4.splat(cap > 0 ? 1.0 / cap : 0.0);
  for (let i = 0; i < ni; i += 4) {
    const dl = v128.load(delta + (<usize>i << 2));
    for (let j = 0; j < tk; j++) {
      const o = <usize>j * ld + (<usize>i << 2);
      let v = f32x4.mul(v128.load(p + o), f32x4.sub(v128.load(dp + o), dl));
      if (cap > 0) {
        const t = f32x4.mul(v128.load(sc + o), inv);
        v = f32x4.mul(v, f32x4.sub(one, f32x4.mul(t, t)));
      }
      v128.store(dp + o, v);
    }
  }
}

/**
 * dst_j[c] += coef * sum_i P[j][i] * src_i[c] for keys j < tk, c < width, over the ni lanes (key
 * rows at byte offsets dstRows[j], lane row i at src + i * srcStep: the backward copies a tile's
 * q and dO rows together first): dV += P^T dO and dK += dS^T Q. Blocks of 4 keys x 8 columns stay
 * in registers over the lanes.
 */
export function keyAcc(dstRows: usize, width: i32, p: usize, ldLanes: i32, ni: i32, tk: i32, src: usize, srcStep: i32, coef: f32): void {
  const step = <usize>srcStep;
  const ld = <usize>ldLanes << 2;
  const cv = f32x4.splat(coef);
  const w8 = width & ~7;
  let j = 0;
  for (; j + 4 <= tk; j += 4) {
    const d0 = <usize>load<i32>(dstRows + (<usize>j << 2));
    const d1 = <usize>load<i32>(dstRows + (<usize>j << 2), 4);
    const d2 = <usize>load<i32>(dstRows + (<usize>j << 2), 8);
    const d3 = <usize>load<i32>(dstRows + (<usize>j << 2), 12);
    const p0 = p + <usize>j * ld;
    let c = 0;
    for (; c < w8; c += 8) {
      const oc = <usize>c << 2;
      let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
      let a20 = f32x4.splat(0), a21 = f32x4.splat(0), a30 = f32x4.splat(0), a31 = f32x4.splat(0);
      let pp = p0;
      let sr = src + oc;
      for (let i = 0; i < ni; i++) {
        const s0 = v128.load(sr);
        const s1 = v128.load(sr, 16);
        let b = v128.load32_splat(pp);
        a00 = fma(b, s0, a00);
        a01 = fma(b, s1, a01);
        b = v128.load32_splat(pp + ld);
        a10 = fma(b, s0, a10);
        a11 = fma(b, s1, a11);
        b = v128.load32_splat(pp + 2 * ld);
        a20 = fma(b, s0, a20);
        a21 = fma(b, s1, a21);
        b = v128.load32_splat(pp + 3 * ld);
        a30 = fma(b, s0, a30);
        a31 = fma(b, s1, a31);
        pp += 4;
        sr += step;
      }
      v128.store(d0 + oc, fma(a00, cv, v128.load(d0 + oc)));
      v128.store(d0 + oc, fma(a01, cv, v128.load(d0 + oc, 16)), 16);
      v128.store(d1 + oc, fma(a10, cv, v128.load(d1 + oc)));
      v128.store(d1 + oc, fma(a11, cv, v128.load(d1 + oc, 16)), 16);
      v128.store(d2 + oc, fma(a20, cv, v128.load(d2 + oc)));
      v128.store(d2 + oc, fma(a21, cv, v128.load(d2 + oc, 16)), 16);
      v128.store(d3 + oc, fma(a30, cv, v128.load(d3 + oc)));
      v128.store(d3 + oc, fma(a31, cv, v128.load(d3 + oc, 16)), 16);
    }
    for (; c < width; c++) keyAccColumn(dstRows, j, 4, c, p, ld, ni, src, step, coef);
  }
  for (; j < tk; j++) {
    const d0 = <usize>load<i32>(dstRows + (<usize>j << 2));
    const p0 = p + <usize>j * ld;
    let c = 0;
    for (; c < w8; c += 8) {
      const oc = <usize>c << 2;
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
      let sr = src + oc;
      for (let i = 0; i < ni; i++, sr += step) {
        const b = v128.load32_splat(p0 + (<usize>i << 2));
        a0 = fma(b, v128.load(sr), a0);
        a1 = fma(b, v128.load(sr, 16), a1);
      }
      v128.store(d0 + oc, fma(a0, cv, v128.load(d0 + oc)));
      v128.store(d0 + oc, fma(a1, cv, v128.load(d0 + oc, 16)), 16);
    }
    for (; c < width; c++) keyAccColumn(dstRows, j, 1, c, p, ld, ni, src, step, coef);
  }
}

// one column c of keys [j, j + n) (head dims that are not multiples of 8)
function keyAccColumn(dstRows: usize, j: i32, n: i32, c: i32, p: usize, ld: usize, ni: i32, src: usize, step: usize, coef: f32): void {
  for (let r = 0; r < n; r++) {
    const dst = <usize>load<i32>(dstRows + (<usize>(j + r) << 2)) + (<usize>c << 2);
    const pr = p + <usize>(j + r) * ld;
    let acc: f32 = 0;
    for (let i = 0; i < ni; i++) acc += load<f32>(pr + (<usize>i << 2)) * load<f32>(src + <usize>i * step + (<usize>c << 2));
    store<f32>(dst, load<f32>(dst) + coef * acc);
  }
}

/** table[rowIdx[i] + colIdx[j]] += S[j][i] for i < n real lanes (drpb: the gradient of addGathered). */
export function scatterAdd(s: usize, ldLanes: i32, n: i32, tk: i32, table: usize, rowIdx: usize, colIdx: usize): void {
  for (let j = 0; j < tk; j++) {
    const c = load<i32>(colIdx + (<usize>j << 2));
    const row = s + <usize>j * (<usize>ldLanes << 2);
    for (let i = 0; i < n; i++) {
      const t = table + (<usize>(load<i32>(rowIdx + (<usize>i << 2)) + c) << 2);
      store<f32>(t, load<f32>(t) + load<f32>(row + (<usize>i << 2)));
    }
  }
}

/** dst[i] = sum_c a_i[c] * b_i[c] for i < n (rows at byte offsets aRows[i], bRows[i]): delta = rowsum(dO * O). */
export function rowDots(dst: usize, aRows: usize, bRows: usize, n: i32, width: i32): void {
  const w4 = width & ~3;
  for (let i = 0; i < n; i++) {
    const a = <usize>load<i32>(aRows + (<usize>i << 2));
    const b = <usize>load<i32>(bRows + (<usize>i << 2));
    let acc = f32x4.splat(0);
    let c = 0;
    for (; c < w4; c += 4) acc = fma(v128.load(a + (<usize>c << 2)), v128.load(b + (<usize>c << 2)), acc);
    let sum: f32 = f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) + f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3);
    for (; c < width; c++) sum += load<f32>(a + (<usize>c << 2)) * load<f32>(b + (<usize>c << 2));
    store<f32>(dst + (<usize>i << 2), sum);
  }
}

/** dst[x] += src[x] for x < n (summing the threads' partial dK, dV, drpb in a fixed order). */
/** Copies `width` floats from each row listed at `from` to the row listed at the same index of `to` (i32 byte offsets), n rows. */
export function copyRows(from: usize, to: usize, n: i32, width: i32): void {
  const bytes = <usize>width << 2;
  for (let j = 0; j < n; j++) memory.copy(<usize>load<i32>(to + (<usize>j << 2)), <usize>load<i32>(from + (<usize>j << 2)), bytes);
}

/** Copies the n rows listed at `rows` (i32 byte offsets) to dst, one after another, and points the list at the copies. */
export function gatherRows(rows: usize, n: i32, width: i32, dst: usize): void {
  const bytes = <usize>width << 2;
  for (let j = 0; j < n; j++) {
    const at = rows + (<usize>j << 2);
    const to = dst + <usize>j * bytes;
    memory.copy(to, <usize>load<i32>(at), bytes);
    store<i32>(at, <i32>to);
  }
}

export function addInto(dst: usize, src: usize, n: i32): void {
  const n4 = n & ~3;
  let x = 0;
  for (; x < n4; x += 4) v128.store(dst + (<usize>x << 2), f32x4.add(v128.load(dst + (<usize>x << 2)), v128.load(src + (<usize>x << 2))));
  for (; x < n; x++) store<f32>(dst + (<usize>x << 2), load<f32>(dst + (<usize>x << 2)) + load<f32>(src + (<usize>x << 2)));
}

/** dS *= 1 - (c / cap)^2 over ni lanes, c the capped score kept at sc (after drpb took dS itself). */
export function softcapGrad(dp: usize, sc: usize, ldLanes: i32, ni: i32, tk: i32, cap: f32): void {
  const ld = <usize>ldLanes << 2;
  const one = f32x4.splat(1.0);
  const inv = f32x4.splat(1.0 / cap);
  for (let j = 0; j < tk; j++)
    for (let i = 0; i < ni; i += 4) {
      const o = <usize>j * ld + (<usize>i << 2);
      const t = f32x4.mul(v128.load(sc + o), inv);
      v128.store(dp + o, f32x4.mul(v128.load(dp + o), f32x4.sub(one, f32x4.mul(t, t))));
    }
}

/**
 * The non-finite policy's input pass: for each of `rows` rows of `width` floats, flags[r] = 1 (u8)
 * when the row holds a NaN or an infinity, and those values become 0, so the kernels compute the
 * other rows exactly (a masked key's NaN would otherwise reach its tile-mates through 0 * NaN);
 * the caller then makes NaN every output row that read a flagged row. Returns the flagged count.
 */
export function sanitize(ptr: usize, rows: i32, width: i32, flags: usize): i32 {
  let bad = 0;
  const w4 = width & ~3;
  const zero = f32x4.splat(0);
  for (let r = 0; r < rows; r++) {
    const row = ptr + <usize>r * (<usize>width << 2);
    let any = i32x4.splat(0);
    let c = 0;
    for (; c < w4; c += 4) {
      const x = v128.load(row + (<usize>c << 2));
      // x - x is 0 for a finite x and NaN for NaN and both infinities
      any = v128.or(any, f32x4.ne(f32x4.sub(x, x), zero));
    }
    let hit = v128.any_true(any);
    for (; c < width; c++) {
      const x = load<f32>(row + (<usize>c << 2));
      if (x - x != 0) hit = true;
    }
    store<u8>(flags + <usize>r, hit ? 1 : 0);
    if (!hit) continue;
    bad++;
    for (c = 0; c < width; c++) {
      const p = row + (<usize>c << 2);
      const x = load<f32>(p);
      if (x - x != 0) store<f32>(p, 0);
    }
  }
  return bad;
}

/**
 * RoPE (rotate half) of n rows into dst ([n][d]): row i from byte offset rows[i] at position
 * pos[i] (i32), dims j < half paired with j + half, cos and sin from table ([maxPos][half] cos,
 * then the same for sin); dims past 2 * half are copied. rows[i] is pointed at its copy.
 */
export function ropeRows(dst: usize, rows: usize, n: i32, d: i32, half: i32, table: usize, maxPos: i32, pos: usize): void {
  const half4 = half & ~3;
  const hb = <usize>half << 2;
  for (let i = 0; i < n; i++) {
    const src = <usize>load<i32>(rows + (<usize>i << 2));
    const out = dst + <usize>i * (<usize>d << 2);
    const p = load<i32>(pos + (<usize>i << 2));
    const c0 = table + <usize>p * hb;
    const s0 = table + <usize>(maxPos + p) * hb;
    let j = 0;
    for (; j < half4; j += 4) {
      const o = <usize>j << 2;
      const x = v128.load(src + o);
      const y = v128.load(src + o + hb);
      const c = v128.load(c0 + o);
      const s = v128.load(s0 + o);
      v128.store(out + o, f32x4.sub(f32x4.mul(x, c), f32x4.mul(y, s)));
      v128.store(out + o + hb, f32x4.add(f32x4.mul(y, c), f32x4.mul(x, s)));
    }
    for (; j < half; j++) {
      const o = <usize>j << 2;
      const x = load<f32>(src + o);
      const y = load<f32>(src + o + hb);
      const c = load<f32>(c0 + o);
      const s = load<f32>(s0 + o);
      store<f32>(out + o, x * c - y * s);
      store<f32>(out + o + hb, y * c + x * s);
    }
    for (j = 2 * half; j < d; j++) store<f32>(out + (<usize>j << 2), load<f32>(src + (<usize>j << 2)));
    store<i32>(rows + (<usize>i << 2), <i32>out);
  }
}
