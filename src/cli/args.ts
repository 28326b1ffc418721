import { parseArgs } from 'node:util';
import { TilewiseError } from '../errors.js';

export type BackendChoice = 'cpu' | 'webgpu' | 'auto';
export type ImplChoice = 'reference' | 'naive' | 'unfused' | 'fused' | 'dense-fused';
const IMPLS: readonly ImplChoice[] = ['reference', 'naive', 'unfused', 'fused', 'dense-fused'];

export interface ProfileArgs {
  /** One or more backends (`--backend webgpu,cpu`): every case is profiled on each, same inputs. */
  backends: BackendChoice[];
  pattern: 'dense' | 'causal' | 'window' | 'na' | 'blocksparse';
  shape: number[];
  batch: number;
  heads: number;
  dim: number;
  kernel: number[];
  dilation: number[];
  stride: number[];
  causal: boolean;
  window: [number, number];
  density: number;
  /** Timed runs per row; 0 = calibrated (enough runs for ~0.3 s per row, 3 to 200). */
  repeat: number;
  /** Implementations to run (all that apply when absent); 'reference' off leaves relErr empty. */
  impls?: ImplChoice[];
  json: boolean;
  threads?: number;
  /** Tune the WebGPU fused kernel's blocking on this problem and store the winner. */
  tune: boolean;
  /** Hill-climbing rounds of `--tune` (each tries every one-knob neighbour of the best so far). */
  tuneRounds: number;
  tuningFile?: string;
  /** WebGPU timing: GPU timestamps when the device has them ('auto'), or always wall-clock ('wall', end to end). */
  gpuTiming: 'auto' | 'wall';
  /** Also time the fused backward (CPU) and its ratio to the fused forward. */
  backward: boolean;
  /** Also write a self-contained HTML report (plots and tile schedules) to this path. */
  html?: string;
}

const dims = (s: string, name: string): number[] => {
  const v = s.split('x').map(Number);
  if (v.some((x) => !Number.isInteger(x) || x <= 0)) throw new TilewiseError(`--${name}`, 'must be positive integers joined by x', s);
  return v;
};

function implList(s: string): ImplChoice[] {
  const v = [...new Set(s.split(',').map((x) => x.trim()))];
  for (const x of v) if (!IMPLS.includes(x as ImplChoice)) throw new TilewiseError('--impl', `must be a comma list of ${IMPLS.join(', ')}`, x);
  return v as ImplChoice[];
}

/** Flags that define the problem: without any of them (and without --tune) the quick suite runs. */
const PROBLEM_FLAGS = ['pattern', 'shape', 'batch', 'heads', 'dim', 'kernel', 'dilation', 'stride', 'causal', 'window', 'density'] as const;

/** Parses `tilewise profile` flags; `quick` is true when no problem was given (run the quick suite). */
export function parseProfileArgs(argv: string[]): { args: ProfileArgs; quick: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      backend: { type: 'string', default: 'auto' },
      pattern: { type: 'string' },
      shape: { type: 'string' },
      batch: { type: 'string' },
      heads: { type: 'string' },
      dim: { type: 'string' },
      kernel: { type: 'string' },
      dilation: { type: 'string' },
      stride: { type: 'string' },
      causal: { type: 'boolean' },
      window: { type: 'string' },
      density: { type: 'string' },
      repeat: { type: 'string', default: 'auto' },
      impl: { type: 'string' },
      threads: { type: 'string' },
      json: { type: 'boolean', default: false },
      tune: { type: 'boolean', default: false },
      'tune-rounds': { type: 'string', default: '3' },
      'tuning-file': { type: 'string' },
      'gpu-timing': { type: 'string', default: 'auto' },
      backward: { type: 'boolean', default: false },
      html: { type: 'string' },
    },
    strict: true,
  });
  const quick = !values.tune && PROBLEM_FLAGS.every((f) => values[f] === undefined);
  const backends = [...new Set(values.backend!.split(','))];
  for (const b of backends)
    if (b !== 'cpu' && b !== 'webgpu' && b !== 'auto') throw new TilewiseError('--backend', "must be 'cpu', 'webgpu' or 'auto', or a comma-separated list of them", values.backend);
  const pattern = values.pattern ?? 'na';
  if (!['dense', 'causal', 'window', 'na', 'blocksparse'].includes(pattern))
    throw new TilewiseError('--pattern', 'must be dense|causal|window|na|blocksparse', pattern);
  const shape = dims(values.shape ?? '32x32', 'shape');
  const expand = (s: string, name: string) => {
    const v = dims(s, name);
    return v.length === 1 ? new Array<number>(shape.length).fill(v[0]!) : v;
  };
  const winText = values.window ?? '128,128';
  const win = winText.split(',').map(Number);
  if (win.length !== 2 || win.some((x) => !Number.isInteger(x) || x < -1)) throw new TilewiseError('--window', 'must be two integers l,r (-1 = unbounded)', winText);
  const density = Number(values.density ?? '0.25');
  if (!(density > 0 && density <= 1)) throw new TilewiseError('--density', 'must be in (0, 1]', values.density);
  const int = (s: string | undefined, name: string) => dims(s!, name)[0]!;
  const gpuTiming = values['gpu-timing']!;
  if (gpuTiming !== 'auto' && gpuTiming !== 'wall') throw new TilewiseError('--gpu-timing', "must be 'auto' (timestamps when available) or 'wall'", gpuTiming);
  if (values.tune && backends.includes('cpu')) throw new TilewiseError('--tune', 'tunes the WebGPU kernel: use it with --backend webgpu');
  return {
    quick,
    args: {
      // tuning is for the WebGPU kernel whatever the adapter: 'auto' would pick the CPU on a software one
      backends: values.tune ? ['webgpu'] : (backends as BackendChoice[]),
      pattern: pattern as ProfileArgs['pattern'],
      shape,
      batch: int(values.batch ?? '1', 'batch'),
      heads: int(values.heads ?? '4', 'heads'),
      dim: int(values.dim ?? '32', 'dim'),
      kernel: expand(values.kernel ?? '7', 'kernel'),
      dilation: expand(values.dilation ?? '1', 'dilation'),
      stride: expand(values.stride ?? '1', 'stride'),
      causal: values.causal ?? false,
      window: [win[0]!, win[1]!],
      density,
      repeat: values.repeat === 'auto' ? 0 : int(values.repeat, 'repeat'),
      ...(values.impl ? { impls: implList(values.impl) } : {}),
      json: values.json!,
      tune: values.tune!,
      tuneRounds: int(values['tune-rounds'], 'tune-rounds'),
      gpuTiming,
      backward: values.backward!,
      ...(values.html ? { html: values.html } : {}),
      ...(values.threads ? { threads: int(values.threads, 'threads') } : {}),
      ...(values['tuning-file'] ? { tuningFile: values['tuning-file'] } : {}),
    },
  };
}
