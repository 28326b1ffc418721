/**
 * The live page (`npm run demo`): pick a pattern, click a query to see the keys it attends to, see
 * the fused kernel's tile schedule, and run the same call on WebGPU (navigator.gpu) and on the CPU
 * backend with the time of each and the error between them.
 */
import { type AttentionOptions, type NeighborhoodOptions, type PatternSpec, type Result, attention, blockSparseAttention, compilePattern, cpuInfo, neighborhoodAttention, randn, relError, webgpu } from '../src/index.js';
import { planAttention, planNA } from '../src/api.js';
import type { AttnProblem } from '../src/problem.js';
import { type SchedulePicture, schedulePicture } from '../src/cli/schedule-picture.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const nums = (id: string): number[] => $<HTMLInputElement>(id).value.split(/[,x ]+/).filter((s) => s).map(Number);
const H = 2;
const D = 16;

interface Setup {
  grid: number[];
  problem: AttnProblem;
  run: (backend: 'cpu' | 'webgpu') => Promise<Result>;
}

function setup(): Setup {
  const kind = $<HTMLSelectElement>('pattern').value;
  const rank = kind === 'na3d' ? 3 : kind === 'na2d' ? 2 : 1;
  const size = nums('size');
  const grid = Array.from({ length: rank }, (_, a) => size[a] ?? size[0] ?? 16);
  const shape = [1, ...grid, H, D];
  const q = randn(shape, 1);
  const k = randn(shape, 2);
  const v = randn(shape, 3);
  const axis = (id: string) => {
    const x = nums(id);
    return grid.map((_, a) => x[a] ?? x[0] ?? 1);
  };
  if (kind.startsWith('na')) {
    const opts: NeighborhoodOptions = { kernelSize: axis('kernel'), dilation: axis('dilation'), stride: axis('stride'), isCausal: axis('causal').map((c) => c !== 0) };
    return { grid, problem: planNA(q, k, v, opts).problem, run: (backend) => neighborhoodAttention(q, k, v, { ...opts, backend }) };
  }
  const n = grid[0]!;
  if (kind === 'blocksparse') {
    const bs = 8;
    const nb = Math.ceil(n / bs);
    const density = nums('density')[0] ?? 0.3;
    const data = Array.from({ length: nb * nb }, (_, i) => (i % (nb + 1) === 0 || ((i * 2654435761) >>> 0) / 2 ** 32 < density ? 1 : 0));
    const opts = { blockMask: { data, shape: [nb, nb] }, blockSize: bs };
    const pattern: PatternSpec = { kind: 'blockSparse', blockQ: bs, blockK: bs, mask: Uint8Array.from(data), maskHeads: 1, numQBlocks: nb, numKBlocks: nb };
    return { grid, problem: planAttention(q, k, v, { pattern, tile: { q: bs, kv: bs } }).problem, run: (backend) => blockSparseAttention(q, k, v, { ...opts, backend }) };
  }
  const w = nums('window');
  const opts: AttentionOptions = kind === 'causal' ? { causal: true } : { window: [w[0] ?? 8, w[1] ?? 0] };
  return { grid, problem: planAttention(q, k, v, opts).problem, run: (backend) => attention(q, k, v, { ...opts, backend }) };
}

let current: Setup | undefined;

/** Token grids: 1-D rows of 32, 2-D one grid, 3-D one grid per slice of the first axis. */
function drawTokens(s: Setup): void {
  const host = $('tokens');
  host.textContent = '';
  const inner = s.grid.length === 1 ? [Math.min(32, s.grid[0]!)] : s.grid.slice(-1);
  const per = s.grid.length === 3 ? s.grid[1]! * s.grid[2]! : s.grid.reduce((a, b) => a * b, 1);
  const slices = s.grid.length === 3 ? s.grid[0]! : 1;
  const wrap = document.createElement('div');
  wrap.className = 'slices';
  for (let z = 0; z < slices; z++) {
    const g = document.createElement('div');
    g.className = 'grid';
    g.style.gridTemplateColumns = `repeat(${inner[0]}, 14px)`;
    for (let i = 0; i < per; i++) {
      const c = document.createElement('div');
      c.className = 'cell';
      c.dataset.token = String(z * per + i);
      c.addEventListener('click', () => pick(z * per + i));
      g.appendChild(c);
    }
    wrap.appendChild(g);
  }
  host.appendChild(wrap);
}

/** Marks query `t` and every key its pattern allows (first batch, first head). */
function pick(t: number): void {
  if (!current) return;
  const span = current.problem.seqs[0]!;
  const p = compilePattern(current.problem.pattern, { qGrid: span.qGrid, kGrid: span.kGrid, heads: H });
  let n = 0;
  document.querySelectorAll<HTMLElement>('#tokens .cell').forEach((c) => {
    const k = Number(c.dataset.token);
    const on = p.allows(0, 0, t, k);
    if (on) n++;
    c.classList.toggle('k', on);
    c.classList.toggle('q', k === t);
  });
  $('keys-count').textContent = String(n);
}

/** The schedule on a canvas, one cell per (query tile, key tile); key tiles cut like query tiles so the structure shows. */
function drawSchedule(pic: SchedulePicture): void {
  const cell = Math.max(1, Math.min(14, Math.floor(360 / Math.max(pic.rows, pic.cols))));
  const canvas = document.createElement('canvas');
  canvas.id = 'schedule-canvas';
  canvas.width = pic.cols * cell;
  canvas.height = pic.rows * cell;
  const g = canvas.getContext('2d')!;
  const fill = ['#ffffff', '#93c5fd', '#1e3a8a'];
  pic.cells.forEach((v, i) => {
    g.fillStyle = fill[v]!;
    g.fillRect((i % pic.cols) * cell, Math.floor(i / pic.cols) * cell, cell, cell);
  });
  $('schedule').replaceChildren(canvas);
  $('sched-counts').textContent = `full ${pic.counts.full}, partial ${pic.counts.partial}, skipped ${pic.counts.skipped}`;
}

const SIZES: Record<string, string> = { na1d: '64', na2d: '16', na3d: '6', causal: '128', window: '128', blocksparse: '128' };

function refresh(): void {
  try {
    current = setup();
    drawTokens(current);
    drawSchedule(schedulePicture({ ...current.problem, kvTile: current.problem.qTile }, 256));
    $('status').textContent = '';
    const mid = Math.floor(current.grid.reduce((a, b) => a * b, 1) / 2 + current.grid[current.grid.length - 1]! / 2);
    pick(mid);
  } catch (e) {
    $('status').textContent = (e as Error).message;
  }
}

async function run(): Promise<void> {
  if (!current) return;
  const s = current;
  $('status').textContent = 'running...';
  const timed = async (backend: 'cpu' | 'webgpu') => {
    await s.run(backend); // warm-up: engine start, shader compiles
    const t = performance.now();
    const r = await s.run(backend);
    return { r, ms: performance.now() - t };
  };
  const cpu = await timed('cpu');
  $('cpu-ms').textContent = `${cpu.ms.toFixed(2)} ms`;
  const i = cpuInfo();
  $('cpu-info').textContent = `(${i.threads} thread${i.threads > 1 ? 's' : ''}, ${i.mode}, ${i.kernels})`;
  const avail = await webgpu.webgpuAvailable();
  if (avail !== true) {
    $('gpu-ms').textContent = 'no WebGPU';
    $('gpu-info').textContent = `(${avail})`;
    $('err').textContent = '-';
  } else {
    const gpu = await timed('webgpu');
    $('gpu-ms').textContent = `${gpu.ms.toFixed(2)} ms`;
    $('gpu-info').textContent = `(${(await webgpu.getContext()).description})`;
    $('err').textContent = relError(gpu.r.out.data, cpu.r.out.data).toExponential(2);
  }
  $('status').textContent = 'done';
}

$('pattern').addEventListener('change', () => {
  $<HTMLInputElement>('size').value = SIZES[$<HTMLSelectElement>('pattern').value] ?? '64';
  refresh();
});
for (const id of ['size', 'kernel', 'dilation', 'stride', 'causal', 'window', 'density']) $(id).addEventListener('change', refresh);
$('run').addEventListener('click', () => void run().catch((e) => ($('status').textContent = `error: ${(e as Error).message}`)));
refresh();
(globalThis as { demoReady?: boolean }).demoReady = true;
