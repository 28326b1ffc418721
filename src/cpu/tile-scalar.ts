import type { TileKernels } from './tile-kernels.js';

/**
 * Scalar TypeScript twin of wasm/tile.ts, for engines without WebAssembly SIMD: the same functions
 * over the same byte offsets and layouts, Math.exp instead of the vector polynomial.
 */
export function scalarKernels(memory: WebAssembly.Memory): TileKernels {
  let f = new Float32Array(memory.buffer);
  let n = new Int32Array(memory.buffer);
  // views follow the memory when it grows between jobs
  const sync = () => {
    if (f.buffer.byteLength !== memory.buffer.byteLength) {
      f = new Float32Array(memory.buffer);
      n = new Int32Array(memory.buffer);
    }
  };
  // S[j][i] = K_j . QT[.][i] with key row j at byte offset rowAt(j)
  const scores = (s: number, qt: number, tqPad: number, ni: number, rowAt: (j: number) => number, tk: number, d: number) => {
    sync();
    for (let j = 0; j < tk; j++) {
      const k = rowAt(j) >> 2;
      for (let i = 0; i < ni; i++) {
        let acc = 0;
        for (let x = 0; x < d; x++) acc += f[k + x]! * f[(qt >> 2) + x * tqPad + i]!;
        f[(s >> 2) + j * tqPad + i] = acc;
      }
    }
  };
  // O = alpha O + P V with value row j at byte offset rowAt(j)
  const pv = (o: number, dv: number, p: number, tqPad: number, ni: number, tk: number, rowAt: (j: number) => number, alpha: number) => {
    sync();
    for (let i = 0; i < ni; i++) {
      const a = f[(alpha >> 2) + i]!;
      const row = (o >> 2) + i * dv;
      for (let c = 0; c < dv; c++) f[row + c]! *= a;
      for (let j = 0; j < tk; j++) {
        const w = f[(p >> 2) + j * tqPad + i]!;
        const v = rowAt(j) >> 2;
        for (let c = 0; c < dv; c++) f[row + c]! += w * f[v + c]!;
      }
    }
  };
  return {
    loadQT(qt, rows, tq, tqPad, d, scale) {
      sync();
      for (let i = 0; i < tqPad; i++) {
        const src = i < tq ? n[(rows >> 2) + i]! >> 2 : -1;
        for (let x = 0; x < d; x++) f[(qt >> 2) + x * tqPad + i] = src < 0 ? 0 : f[src + x]! * scale;
      }
    },
    scoresT(s, qt, tqPad, ni, kRows, tk, d) {
      scores(s, qt, tqPad, ni, (j) => n[(kRows >> 2) + j]!, tk, d);
    },
    scoresTStrided(s, qt, tqPad, ni, k0, kStep, tk, d) {
      scores(s, qt, tqPad, ni, (j) => k0 + j * kStep, tk, d);
    },

    softcap(s, tqPad, ni, tk, cap) {
      sync();
      for (let j = 0; j < tk; j++)
        for (let i = 0; i < ni; i++) {
          const x = (s >> 2) + j * tqPad + i;
          f[x] = cap * Math.tanh(f[x]! / cap);
        }
    },
    addGathered(s, tqPad, tq, tk, table, rowIdx, colIdx) {
      sync();
      for (let j = 0; j < tk; j++)
        for (let i = 0; i < tq; i++) f[(s >> 2) + j * tqPad + i]! += f[(table >> 2) + n[(rowIdx >> 2) + i]! + n[(colIdx >> 2) + j]!]!;
    },
    maskBox(s, tqPad, ni, tk, rank, kCrd, lo, hi) {
      sync();
      for (let j = 0; j < tk; j++)
        for (let i = 0; i < ni; i++)
          for (let a = 0; a < rank; a++) {
            const kc = n[(kCrd >> 2) + j * rank + a]!;
            if (kc < n[(lo >> 2) + a * tqPad + i]! || kc > n[(hi >> 2) + a * tqPad + i]!) {
              f[(s >> 2) + j * tqPad + i] = -Infinity;
              break;
            }
          }
    },
    softmaxStep(s, tqPad, ni, tk, m, l, alpha) {
      sync();
      for (let i = 0; i < ni; i++) {
        let mx = -Infinity;
        for (let j = 0; j < tk; j++) mx = Math.max(mx, f[(s >> 2) + j * tqPad + i]!);
        const mOld = f[(m >> 2) + i]!;
        const mNew = Math.max(mOld, mx);
        const mSafe = mNew === -Infinity ? 0 : mNew;
        const a = Math.exp(mOld - mSafe);
        let sum = 0;
        for (let j = 0; j < tk; j++) {
          const e = Math.exp(f[(s >> 2) + j * tqPad + i]! - mSafe);
          f[(s >> 2) + j * tqPad + i] = e;
          sum += e;
        }
        f[(m >> 2) + i] = mNew;
        f[(l >> 2) + i] = f[(l >> 2) + i]! * a + sum;
        f[(alpha >> 2) + i] = a;
      }
    },
    pvAcc(o, dv, p, tqPad, ni, tk, vRows, alpha) {
      pv(o, dv, p, tqPad, ni, tk, (j) => n[(vRows >> 2) + j]!, alpha);
    },
    pvAccStrided(o, dv, p, tqPad, ni, tk, v0, vStep, alpha) {
      pv(o, dv, p, tqPad, ni, tk, (j) => v0 + j * vStep, alpha);
    },

    finishRows(o, dv, tq, l, outRows) {
      sync();
      for (let i = 0; i < tq; i++) {
        const li = f[(l >> 2) + i]!;
        const inv = li > 0 ? 1 / li : 0;
        const dst = n[(outRows >> 2) + i]! >> 2;
        for (let c = 0; c < dv; c++) f[dst + c] = f[(o >> 2) + i * dv + c]! * inv;
      }
    },
    softmaxRows(a, rows, w, m, l, normalize) {
      sync();
      for (let r = 0; r < rows; r++) {
        const b = (a >> 2) + r * w;
        let mx = -Infinity;
        for (let j = 0; j < w; j++) mx = Math.max(mx, f[b + j]!);
        const mSafe = mx === -Infinity ? 0 : mx;
        let sum = 0;
        for (let j = 0; j < w; j++) {
          const e = Math.exp(f[b + j]! - mSafe);
          if (normalize) f[b + j] = e;
          sum += e;
        }
        f[(m >> 2) + r] = mx;
        f[(l >> 2) + r] = sum;
        if (normalize && sum > 0) for (let j = 0; j < w; j++) f[b + j]! /= sum;
      }
    },
    slicedVisit(s, qt, ld, d, dv, kRows, vRows, kCrd, rank, lo, hi, ranges, cnt, cap, m, l, alpha, o) {
      for (let x = 0; x < cnt; x++) {
        const r = (ranges >> 2) + 4 * x;
        const [i0, ni, k0, tk] = [n[r]!, n[r + 1]!, n[r + 2]!, n[r + 3]!];
        if (ni <= 0 || tk <= 0) continue;
        const sp = s + 4 * i0;
        this.scoresT(sp, qt + 4 * i0, ld, ni, kRows + 4 * k0, tk, d);
        if (cap > 0) this.softcap(sp, ld, ni, tk, cap);
        this.maskBox(sp, ld, ni, tk, rank, kCrd + 4 * k0 * rank, lo + 4 * i0, hi + 4 * i0);
        this.softmaxStep(sp, ld, ni, tk, m + 4 * i0, l + 4 * i0, alpha + 4 * i0);
        this.pvAcc(o + 4 * i0 * dv, dv, sp, ld, ni, tk, vRows + 4 * k0, alpha + 4 * i0);
      }
    },
    probsT(s, ld, ni, tk, lse) {
      sync();
      for (let i = 0; i < ni; i++) {
        const L = f[(lse >> 2) + i]!;
        for (let j = 0; j < tk; j++) {
          const x = (s >> 2) + j * ld + i;
          f[x] = L === -Infinity ? 0 : Math.exp(f[x]! - L);
        }
      }
    },
    dsT(p, dp, ld, ni, tk, delta, sc, cap) {
      sync();
      for (let i = 0; i < ni; i++)
        for (let j = 0; j < tk; j++) {
          const o = j * ld + i;
          let v = f[(p >> 2) + o]! * (f[(dp >> 2) + o]! - f[(delta >> 2) + i]!);
          if (cap > 0) v *= 1 - (f[(sc >> 2) + o]! / cap) ** 2;
          f[(dp >> 2) + o] = v;
        }
    },
    softcapGrad(dp, sc, ld, ni, tk, cap) {
      sync();
      for (let j = 0; j < tk; j++)
        for (let i = 0; i < ni; i++) {
          const o = j * ld + i;
          f[(dp >> 2) + o]! *= 1 - (f[(sc >> 2) + o]! / cap) ** 2;
        }
    },
    keyAcc(dstRows, width, p, ld, ni, tk, src, srcStep, coef) {
      sync();
      for (let j = 0; j < tk; j++) {
        const d = n[(dstRows >> 2) + j]! >> 2;
        for (let c = 0; c < width; c++) {
          let acc = 0;
          for (let i = 0; i < ni; i++) acc += f[(p >> 2) + j * ld + i]! * f[((src + i * srcStep) >> 2) + c]!;
          f[d + c]! += coef * acc;
        }
      }
    },
    scatterAdd(s, ld, cnt, tk, table, rowIdx, colIdx) {
      sync();
      for (let j = 0; j < tk; j++)
        for (let i = 0; i < cnt; i++) f[(table >> 2) + n[(rowIdx >> 2) + i]! + n[(colIdx >> 2) + j]!]! += f[(s >> 2) + j * ld + i]!;
    },
    rowDots(dst, aRows, bRows, cnt, width) {
      sync();
      for (let i = 0; i < cnt; i++) {
        const a = n[(aRows >> 2) + i]! >> 2;
        const b = n[(bRows >> 2) + i]! >> 2;
        let acc = 0;
        for (let c = 0; c < width; c++) acc += f[a + c]! * f[b + c]!;
        f[(dst >> 2) + i] = acc;
      }
    },
    copyRows(from, to, cnt, width) {
      sync();
      for (let j = 0; j < cnt; j++) f.copyWithin(n[(to >> 2) + j]! >> 2, n[(from >> 2) + j]! >> 2, (n[(from >> 2) + j]! >> 2) + width);
    },
    gatherRows(rows, cnt, width, dst) {
      sync();
      for (let j = 0; j < cnt; j++) {
        const to = dst + j * width * 4;
        f.copyWithin(to >> 2, n[(rows >> 2) + j]! >> 2, (n[(rows >> 2) + j]! >> 2) + width);
        n[(rows >> 2) + j] = to;
      }
    },
    addInto(dst, src, cnt) {
      sync();
      for (let x = 0; x < cnt; x++) f[(dst >> 2) + x]! += f[(src >> 2) + x]!;
    },
    ropeRows(dst, rows, cnt, d, half, table, maxPos, pos) {
      sync();
      for (let i = 0; i < cnt; i++) {
        const src = n[(rows >> 2) + i]! >> 2;
        const out = (dst >> 2) + i * d;
        const p = n[(pos >> 2) + i]!;
        for (let j = 0; j < half; j++) {
          const x = f[src + j]!;
          const y = f[src + j + half]!;
          const c = f[(table >> 2) + p * half + j]!;
          const s = f[(table >> 2) + (maxPos + p) * half + j]!;
          f[out + j] = x * c - y * s;
          f[out + j + half] = y * c + x * s;
        }
        for (let j = 2 * half; j < d; j++) f[out + j] = f[src + j]!;
        n[(rows >> 2) + i] = out * 4;
      }
    },
    sanitize(ptr, rows, width, flags) {
      sync();
      const u8 = new Uint8Array(memory.buffer);
      let bad = 0;
      for (let r = 0; r < rows; r++) {
        const row = (ptr >> 2) + r * width;
        let hit = false;
        for (let c = 0; c < width; c++)
          if (!Number.isFinite(f[row + c]!)) {
            hit = true;
            f[row + c] = 0;
          }
        u8[flags + r] = hit ? 1 : 0;
        if (hit) bad++;
      }
      return bad;
    },
    windowSlots(s, ld, tq, win, k1, k2, ulo0, ulo1, ulo2, u1, u2, attnRows, toS) {
      sync();
      for (let i = 0; i < tq; i++) {
        const w = (win >> 2) + i * 9;
        const row = n[(attnRows >> 2) + i]! >> 2;
        for (let c0 = n[w]!; c0 <= n[w + 1]!; c0++)
          for (let c1 = n[w + 3]!; c1 <= n[w + 4]!; c1++)
            for (let c2 = n[w + 6]!; c2 <= n[w + 7]!; c2++) {
              const a = row + ((c0 - n[w + 2]!) * k1 + (c1 - n[w + 5]!)) * k2 + (c2 - n[w + 8]!);
              const sp = (s >> 2) + (((c0 - ulo0) * u1 + (c1 - ulo1)) * u2 + (c2 - ulo2)) * ld + i;
              if (toS) f[sp] = f[a]!;
              else f[a] = f[sp]!;
            }
      }
    },
    lanesFromRows(ptr, blocks, d, tmp) {
      sync();
      for (let b = 0; b < blocks; b++) {
        const base = (ptr >> 2) + b * 4 * d;
        f.copyWithin(tmp >> 2, base, base + 4 * d);
        for (let x = 0; x < d; x++) for (let h = 0; h < 4; h++) f[base + 4 * x + h] = f[(tmp >> 2) + h * d + x]!;
      }
    },
    rowsFromLanes(ptr, blocks, d, tmp) {
      sync();
      for (let b = 0; b < blocks; b++) {
        const base = (ptr >> 2) + b * 4 * d;
        f.copyWithin(tmp >> 2, base, base + 4 * d);
        for (let x = 0; x < d; x++) for (let h = 0; h < 4; h++) f[base + h * d + x] = f[(tmp >> 2) + 4 * x + h]!;
      }
    },
    naLanesBwd(qRows, doRows, oRows, lseRows, dqRows, lo, hi, ld, cnt, rank, kBase, vBase, dkBase, dvBase, st0, st1, st2, rowK, rowV, d, dv, scale, cap, _s, _k, _l, rpb, drpb, rpbRows, r0, r1, r2) {
      sync();
      const pad = 3 - rank;
      const bound = (ends: number, a: number, i: number) => (a < pad ? 0 : n[(ends >> 2) + (a - pad) * ld + i]!);
      for (let i = 0; i < cnt; i++) {
        const offs: number[] = [];
        const idx: number[] = [];
        const row = rpb ? n[(rpbRows >> 2) + i]! : 0;
        for (let c0 = bound(lo, 0, i); c0 <= bound(hi, 0, i); c0++)
          for (let c1 = bound(lo, 1, i); c1 <= bound(hi, 1, i); c1++)
            for (let c2 = bound(lo, 2, i); c2 <= bound(hi, 2, i); c2++) {
              offs.push(c0 * st0 + c1 * st1 + c2 * st2);
              idx.push(row + c0 * r0 + c1 * r1 + c2 * r2);
            }
        // q, dO, O and dq in rows of the 4 heads; k, v, dK, dV in lanes
        const [q, dO, o, dq] = [qRows, doRows, oRows, dqRows].map((r) => n[(r >> 2) + i]! >> 2) as [number, number, number, number];
        const lse = n[(lseRows >> 2) + i]! >> 2;
        for (let h = 0; h < 4; h++) {
          let delta = 0;
          for (let c = 0; c < dv; c++) delta += f[dO + h * dv + c]! * f[o + h * dv + c]!;
          const L = f[lse + h]! === -Infinity ? Infinity : f[lse + h]!;
          const dqAcc = new Float64Array(d);
          for (let j = 0; j < offs.length; j++) {
            const off = offs[j]!;
            const k = (kBase + off * rowK) >> 2;
            const v = (vBase + off * rowV) >> 2;
            let sc = 0;
            for (let x = 0; x < d; x++) sc += f[q + h * d + x]! * f[k + 4 * x + h]!;
            sc *= scale;
            if (cap > 0) sc = cap * Math.tanh(sc / cap);
            const p = Math.exp(sc + (rpb ? f[(rpb >> 2) + 4 * idx[j]! + h]! : 0) - L);
            let dp = 0;
            for (let c = 0; c < dv; c++) dp += f[dO + h * dv + c]! * f[v + 4 * c + h]!;
            let ds = p * (dp - delta);
            if (rpb) f[(drpb >> 2) + 4 * idx[j]! + h]! += ds;
            if (cap > 0) ds *= 1 - (sc / cap) ** 2;
            const dk = (dkBase + off * rowK) >> 2;
            const dvp = (dvBase + off * rowV) >> 2;
            for (let x = 0; x < d; x++) {
              f[dk + 4 * x + h]! += scale * ds * f[q + h * d + x]!;
              dqAcc[x]! += ds * f[k + 4 * x + h]!;
            }
            for (let c = 0; c < dv; c++) f[dvp + 4 * c + h]! += p * f[dO + h * dv + c]!;
          }
          for (let x = 0; x < d; x++) f[dq + h * d + x] = scale * dqAcc[x]!;
        }
      }
    },
    naLanes(qRows, outRows, lseRows, lo, hi, ld, cnt, rank, kBase, vBase, st0, st1, st2, rowK, rowV, d, dv, scale, cap, sBuf, keys, rpb, rpbRows, r0, r1, r2) {
      sync();
      const pad = 3 - rank;
      const bound = (ends: number, a: number, i: number) => (a < pad ? 0 : n[(ends >> 2) + (a - pad) * ld + i]!);
      const S = sBuf >> 2;
      const rpbIdx: number[] = [];
      for (let i = 0; i < cnt; i++) {
        let nk = 0;
        rpbIdx.length = 0;
        const row = rpb ? n[(rpbRows >> 2) + i]! : 0;
        for (let c0 = bound(lo, 0, i); c0 <= bound(hi, 0, i); c0++)
          for (let c1 = bound(lo, 1, i); c1 <= bound(hi, 1, i); c1++)
            for (let c2 = bound(lo, 2, i); c2 <= bound(hi, 2, i); c2++) {
              n[(keys >> 2) + nk++] = c0 * st0 + c1 * st1 + c2 * st2;
              rpbIdx.push(row + c0 * r0 + c1 * r1 + c2 * r2);
            }
        const q = n[(qRows >> 2) + i]! >> 2;
        const out = n[(outRows >> 2) + i]! >> 2;
        const lse = n[(lseRows >> 2) + i]! >> 2;
        for (let h = 0; h < 4; h++) {
          let m = -Infinity;
          for (let j = 0; j < nk; j++) {
            const k = (kBase + n[(keys >> 2) + j]! * rowK) >> 2;
            let acc = 0;
            for (let x = 0; x < d; x++) acc += f[q + h * d + x]! * f[k + 4 * x + h]!; // q in its rows, k in lanes
            let sc = acc * scale;
            if (cap > 0) sc = cap * Math.tanh(sc / cap);
            if (rpb) sc += f[(rpb >> 2) + 4 * rpbIdx[j]! + h]!;
            f[S + 4 * j + h] = sc;
            m = Math.max(m, sc);
          }
          const mSafe = m === -Infinity ? 0 : m;
          let l = 0;
          for (let j = 0; j < nk; j++) l += f[S + 4 * j + h] = Math.exp(f[S + 4 * j + h]! - mSafe);
          const inv = l > 0 ? 1 / l : 0;
          for (let c = 0; c < dv; c++) {
            let acc = 0;
            for (let j = 0; j < nk; j++) acc += f[S + 4 * j + h]! * f[((vBase + n[(keys >> 2) + j]! * rowV) >> 2) + 4 * c + h]!;
            f[out + h * dv + c] = acc * inv;
          }
          f[lse + h] = l > 0 ? m + Math.log(l) : l === 0 ? -Infinity : NaN;
        }
      }
    },
  };
}
