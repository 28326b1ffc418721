import type { FusedTuning } from './fused.js';
import { nodeBuiltin } from '../node-builtin.js';

/**
 * Fused-kernel tunings measured per adapter by `tilewise profile --tune`, kept in one JSON file:
 *
 *   { "version": 1, "adapters": { "<adapter description>": { "fused": { rm, tx, maxRows, maxKeys, unroll,
 *     subgroups?, analytic?, permute?, permuteFrom?, pad? }, ...notes } } }
 *
 * The backend reads the file when it acquires a device (Node only; browsers have no file to read)
 * and uses the entry whose key equals the adapter description in place of FUSED_TUNING. The file is
 * a cache someone else may have edited: anything malformed becomes a warning and the table is used.
 * Parsing, validation and path resolution are pure functions (tested without a GPU); the file IO
 * sits at the bottom.
 */

export const TUNING_VERSION = 1;

/** One adapter's entry: the tuning, plus notes on how it was measured (not read back). */
export interface TuningEntry {
  readonly fused: FusedTuning;
  readonly ms?: number;
  readonly problem?: string;
  readonly measured?: string;
}

export interface ParsedTunings {
  readonly entries: ReadonlyMap<string, FusedTuning>;
  readonly warnings: readonly string[];
  /** false when the file as a whole was rejected (not JSON, wrong version or shape). */
  readonly wellFormed: boolean;
}

/** Accepted ranges: wide enough for any device, narrow enough that a typo cannot plan absurd kernels. */
const RANGES: Readonly<Record<'rm' | 'tx' | 'maxRows' | 'maxKeys', readonly [number, number]>> = {
  rm: [1, 32],
  tx: [1, 32],
  maxRows: [1, 1024],
  maxKeys: [1, 1024],
};

/** Paths a tuning may switch (absent: the kernel's default). */
export const OPTIONAL_SWITCHES = ['subgroups', 'analytic', 'permute', 'pad'] as const;

/** A complete, in-range FusedTuning, or the reason it is not one. */
export function checkTuning(x: unknown): FusedTuning | string {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) return 'must be an object { rm, tx, maxRows, maxKeys, unroll }';
  const o = x as Record<string, unknown>;
  for (const [name, [lo, hi]] of Object.entries(RANGES)) {
    const v = o[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) return `${name} must be an integer in [${lo}, ${hi}] (got ${JSON.stringify(v)})`;
  }
  if (typeof o['unroll'] !== 'boolean') return `unroll must be a boolean (got ${JSON.stringify(o['unroll'])})`;
  const t: { -readonly [K in keyof FusedTuning]: FusedTuning[K] } = { rm: o['rm'] as number, tx: o['tx'] as number, maxRows: o['maxRows'] as number, maxKeys: o['maxKeys'] as number, unroll: o['unroll'] };
  for (const name of OPTIONAL_SWITCHES) {
    const v = o[name];
    if (v === undefined) continue;
    if (typeof v !== 'boolean') return `${name} must be a boolean when given (got ${JSON.stringify(v)})`;
    t[name] = v;
  }
  const pf = o['permuteFrom'];
  if (pf !== undefined) {
    if (typeof pf !== 'number' || !Number.isInteger(pf) || pf < 1 || pf > 1 << 20) return `permuteFrom must be an integer in [1, ${1 << 20}] when given (got ${JSON.stringify(pf)})`;
    t.permuteFrom = pf;
  }
  return t;
}

/** Reads a tuning file's text: valid entries, and one warning per thing ignored (`source` names the file in them). */
export function parseTuningFile(text: string, source: string): ParsedTunings {
  const entries = new Map<string, FusedTuning>();
  const warnings: string[] = [];
  const reject = (why: string): ParsedTunings => ({ entries, warnings: [`${source}: ${why}; using the built-in tuning table`], wellFormed: false });
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return reject(`not JSON (${(e as Error).message.replace(/\s+/g, ' ')})`);
  }
  const d = doc as { version?: unknown; adapters?: unknown } | null;
  if (d === null || typeof d !== 'object' || Array.isArray(d)) return reject('must be a JSON object');
  if (d.version !== TUNING_VERSION) return reject(`version must be ${TUNING_VERSION} (got ${JSON.stringify(d.version)})`);
  if (d.adapters === null || typeof d.adapters !== 'object' || Array.isArray(d.adapters)) return reject('"adapters" must be an object keyed by adapter description');
  for (const [desc, e] of Object.entries(d.adapters as Record<string, unknown>)) {
    const t = e !== null && typeof e === 'object' ? checkTuning((e as { fused?: unknown }).fused) : 'must be an object with a "fused" tuning';
    if (typeof t === 'string') warnings.push(`${source}: entry for "${desc}" ignored: fused ${t}`);
    else entries.set(desc, t);
  }
  return { entries, warnings, wellFormed: true };
}

/** The file's text with `entry` stored under `description` (other entries kept); `existing` must parse as a tuning file. */
export function withEntry(existing: string | undefined, description: string, entry: TuningEntry): string {
  const doc = existing === undefined ? { version: TUNING_VERSION, adapters: {} } : (JSON.parse(existing) as { version: number; adapters: Record<string, unknown> });
  doc.adapters[description] = entry;
  return `${JSON.stringify(doc, null, 2)}\n`;
}

/**
 * Where the file lives: an explicit path (`--tuning-file`, `setTuningFile`), else $TILEWISE_TUNING,
 * else ~/.cache/tilewise/tuning.json.
 */
export function tuningPath(explicit: string | undefined, env: Readonly<Record<string, string | undefined>>, home: string): string {
  if (explicit) return explicit;
  if (env['TILEWISE_TUNING']) return env['TILEWISE_TUNING'];
  return `${home.replace(/\/+$/, '')}/.cache/tilewise/tuning.json`;
}

// ---------------------------------------------------------------------------------------------
// File IO (Node only).

let explicitPath: string | undefined;
/** Descriptions to tunings of the file read at the last acquisition (what `setDevice` consults). */
let lastRead: ReadonlyMap<string, FusedTuning> = new Map();

const isNode = (): boolean => typeof process !== 'undefined' && typeof process.versions?.node === 'string';

/** Uses this tuning file from the next device acquisition on (undefined: $TILEWISE_TUNING or the default). */
export function setTuningFile(path: string | undefined): void {
  explicitPath = path;
}


/** The tuning file's path in this process. */
export async function currentTuningPath(): Promise<string> {
  const os = await nodeBuiltin<typeof import('node:os')>('os');
  return tuningPath(explicitPath, process.env, os.homedir());
}

/** Reads the tuning file (a missing file is no tuning and no warning). */
export async function readTuningFile(path: string): Promise<ParsedTunings> {
  const fs = await nodeBuiltin<typeof import('node:fs/promises')>('fs/promises');
  let text: string;
  try {
    text = await fs.readFile(path, 'utf8');
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') return { entries: new Map(), warnings: [], wellFormed: true };
    return { entries: new Map(), warnings: [`${path}: unreadable (${(e as Error).message}); using the built-in tuning table`], wellFormed: false };
  }
  return parseTuningFile(text, path);
}

/** At device acquisition: the stored tuning for this adapter, warnings emitted as process warnings. Browsers: none. */
export async function storedTuningFor(description: string): Promise<FusedTuning | undefined> {
  if (!isNode()) return undefined;
  const { entries, warnings } = await readTuningFile(await currentTuningPath());
  for (const w of warnings) process.emitWarning(w, 'TilewiseWarning');
  lastRead = entries;
  return entries.get(description);
}

/** The tuning for `description` in the file read at the last acquisition (no IO). */
export function cachedTuningFor(description: string): FusedTuning | undefined {
  return lastRead.get(description);
}

/**
 * Stores `entry` for `description` (other adapters' entries kept) and returns the path written.
 * A malformed existing file is moved aside to `<path>.bad` rather than overwritten.
 */
export async function saveTuning(description: string, entry: TuningEntry, path?: string): Promise<string> {
  const fs = await nodeBuiltin<typeof import('node:fs/promises')>('fs/promises');
  const { dirname } = await nodeBuiltin<typeof import('node:path')>('path');
  const file = path ?? (await currentTuningPath());
  let existing: string | undefined;
  try {
    existing = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as { code?: string }).code !== 'ENOENT') throw e;
  }
  if (existing !== undefined && !parseTuningFile(existing, file).wellFormed) {
    await fs.rename(file, `${file}.bad`);
    process.emitWarning(`${file} was malformed; moved to ${file}.bad`, 'TilewiseWarning');
    existing = undefined;
  }
  await fs.mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, withEntry(existing, description, entry));
  await fs.rename(tmp, file); // whole-file replace: a reader never sees half a file
  lastRead = new Map([...lastRead, [description, entry.fused]]);
  return file;
}
