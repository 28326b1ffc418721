import { parseArgs } from 'node:util';
import { TilewiseError } from '../errors.js';

export interface ProfileArgs {
  backend: 'cpu' | 'auto';
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
  repeat: number;
  json: boolean;
  threads?: number;
}

const dims = (s: string, name: string): number[] => {
  const v = s.split('x').map(Number);
  if (v.some((x) => !Number.isInteger(x) || x <= 0)) throw new TilewiseError(`--${name}`, 'must be positive integers joined by x', s);
  return v;
};

/** Parses `tilewise profile` flags; `quick` is true when none were given (run the quick suite). */
export function parseProfileArgs(argv: string[]): { args: ProfileArgs; quick: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      backend: { type: 'string', default: 'auto' },
      pattern: { type: 'string', default: 'na' },
      shape: { type: 'string', default: '32x32' },
      batch: { type: 'string', default: '1' },
      heads: { type: 'string', default: '4' },
      dim: { type: 'string', default: '32' },
      kernel: { type: 'string', default: '7' },
      dilation: { type: 'string', default: '1' },
      stride: { type: 'string', default: '1' },
      causal: { type: 'boolean', default: false },
      window: { type: 'string', default: '128,128' },
      density: { type: 'string', default: '0.25' },
      repeat: { type: 'string', default: '3' },
      threads: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const quick = argv.filter((a) => a !== '--json').length === 0;
  const backend = values.backend as string;
  if (backend !== 'cpu' && backend !== 'auto') throw new TilewiseError('--backend', "must be 'cpu' or 'auto'", backend);
  const pattern = values.pattern as string;
  if (!['dense', 'causal', 'window', 'na', 'blocksparse'].includes(pattern))
    throw new TilewiseError('--pattern', 'must be dense|causal|window|na|blocksparse', pattern);
  const shape = dims(values.shape!, 'shape');
  const expand = (s: string, name: string) => {
    const v = dims(s, name);
    return v.length === 1 ? new Array<number>(shape.length).fill(v[0]!) : v;
  };
  const win = values.window!.split(',').map(Number);
  if (win.length !== 2 || win.some((x) => !Number.isInteger(x) || x < -1)) throw new TilewiseError('--window', 'must be two integers l,r (-1 = unbounded)', values.window);
  const density = Number(values.density);
  if (!(density > 0 && density <= 1)) throw new TilewiseError('--density', 'must be in (0, 1]', values.density);
  const int = (s: string | undefined, name: string) => dims(s!, name)[0]!;
  return {
    quick,
    args: {
      backend,
      pattern: pattern as ProfileArgs['pattern'],
      shape,
      batch: int(values.batch, 'batch'),
      heads: int(values.heads, 'heads'),
      dim: int(values.dim, 'dim'),
      kernel: expand(values.kernel!, 'kernel'),
      dilation: expand(values.dilation!, 'dilation'),
      stride: expand(values.stride!, 'stride'),
      causal: values.causal!,
      window: [win[0]!, win[1]!],
      density,
      repeat: int(values.repeat, 'repeat'),
      json: values.json!,
      ...(values.threads ? { threads: int(values.threads, 'threads') } : {}),
    },
  };
}
