/**
 * Trains a tiny 2-D neighborhood-attention layer with tilewise's gradients and plain SGD.
 *
 *   npm run build && node dist/examples/train-na.js [--steps 300] [--lr 0.5]
 *
 * The toy task: a teacher layer (fixed random projections around a 3x3 neighborhood attention)
 * maps random 8x8 images with 16 channels to targets; a student with its own random projections
 * learns to reproduce them (mean squared error). The projections are plain matrix products
 * written here; the attention's forward is `na2d` and its gradients come from `na2dBackward`.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { na2d, na2dBackward, randn, type Tensor } from '../src/index.js';

const B = 4;
const X = 8;
const C = 16;
const H = 2;
const D = 8;
const ROWS = B * X * X;
const NA = { kernelSize: 3 } as const;

/** out [n, m] = a [n, k] b [k, m]; `ta` reads a as [k, n] (a^T b), `tb` reads b as [m, k] (a b^T). */
function matmul(a: Float32Array, b: Float32Array, n: number, k: number, m: number, ta = false, tb = false): Float32Array {
  const out = new Float32Array(n * m);
  for (let i = 0; i < n; i++)
    for (let x = 0; x < k; x++) {
      const av = ta ? a[x * n + i]! : a[i * k + x]!;
      if (av === 0) continue;
      for (let j = 0; j < m; j++) out[i * m + j]! += av * (tb ? b[j * k + x]! : b[x * m + j]!);
    }
  return out;
}

interface Layer {
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
}

const init = (seed: number, scale: number): Layer => ({
  wq: scaled(randn([C, H * D], seed).data, scale),
  wk: scaled(randn([C, H * D], seed + 1).data, scale),
  wv: scaled(randn([C, H * D], seed + 2).data, scale),
  wo: scaled(randn([H * D, C], seed + 3).data, scale),
});

function scaled(a: Float32Array, s: number): Float32Array {
  for (let i = 0; i < a.length; i++) a[i]! *= s;
  return a;
}

const asHeads = (a: Float32Array): Tensor => ({ data: a, shape: [B, X, X, H, D] });

async function forward(l: Layer, x: Float32Array) {
  const q = asHeads(matmul(x, l.wq, ROWS, C, H * D));
  const k = asHeads(matmul(x, l.wk, ROWS, C, H * D));
  const v = asHeads(matmul(x, l.wv, ROWS, C, H * D));
  const att = await na2d(q, k, v, NA);
  return { q, k, v, att, y: matmul(att.out.data, l.wo, ROWS, H * D, C) };
}

/** Runs `steps` SGD steps; returns the loss before each step. */
export async function train(steps: number, lr = 0.5, log?: (step: number, loss: number) => void): Promise<number[]> {
  const x = randn([ROWS, C], 1).data;
  const teacher = init(100, 0.5);
  const target = (await forward(teacher, x)).y;
  const s = init(200, 0.5);
  const losses: number[] = [];
  for (let step = 0; step < steps; step++) {
    const f = await forward(s, x);
    let loss = 0;
    const dy = new Float32Array(f.y.length);
    for (let i = 0; i < dy.length; i++) {
      const e = f.y[i]! - target[i]!;
      loss += e * e;
      dy[i] = (2 * e) / dy.length;
    }
    loss /= dy.length;
    losses.push(loss);
    log?.(step, loss);
    // back through the output projection, the attention (tilewise), then the input projections
    const dWo = matmul(f.att.out.data, dy, H * D, ROWS, C, true);
    const dAtt = asHeads(matmul(dy, s.wo, ROWS, C, H * D, false, true));
    const g = await na2dBackward(f.q, f.k, f.v, f.att.out, f.att.lse, dAtt, NA);
    const dWq = matmul(x, g.dq.data, C, ROWS, H * D, true);
    const dWk = matmul(x, g.dk.data, C, ROWS, H * D, true);
    const dWv = matmul(x, g.dv.data, C, ROWS, H * D, true);
    for (const [w, dw] of [[s.wq, dWq], [s.wk, dWk], [s.wv, dWv], [s.wo, dWo]] as const) for (let i = 0; i < w.length; i++) w[i]! -= lr * dw[i]!;
  }
  return losses;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { steps: { type: 'string', default: '300' }, lr: { type: 'string', default: '0.5' } } });
  const t0 = performance.now();
  const losses = await train(Number(values.steps), Number(values.lr), (step, loss) => {
    if (step % 25 === 0) console.log(`step ${String(step).padStart(4)}  loss ${loss.toFixed(5)}`);
  });
  console.log(`loss ${losses[0]!.toFixed(5)} -> ${losses[losses.length - 1]!.toFixed(5)} in ${losses.length} steps, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
