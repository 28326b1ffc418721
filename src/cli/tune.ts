import { type FusedTuning, planFused, resolveTuning, runWebGPUFusedTensors, setFusedTuning } from '../webgpu/fused.js';
import { checkTuning, currentTuningPath, saveTuning } from '../webgpu/tuning.js';
import { stableStringify } from '../webgpu/wgsl.js';
import type { ProfileArgs } from './args.js';
import { type ProfileRow, buildCase, fmtBytes, measure, sampledReference } from './profile.js';
import { type GpuTarget, tensorRunner, uploadCase } from './targets.js';

/**
 * `tilewise profile --tune`: hill-climbing over the fused kernel's blocking (FusedTuning) on one
 * problem. Starting from the tuning the device uses now, each round times every neighbour that
 * changes one knob (rm, tx, maxRows, maxKeys halved or doubled, unroll, subgroups, analytic or permute flipped) and moves to the
 * fastest if it beats the current best by more than 2% (noise); candidates that plan to the same
 * kernel are timed once. Only candidates within 1e-4 of the float64 reference can win. The winner
 * is stored for the adapter's description in the tuning file (tuning.ts).
 */

export interface TuneRow {
  round: number;
  tuning: FusedTuning;
  /** What the tuning planned to on this problem and device. */
  plan: { rows: number; keys: number; threads: number; qTile: readonly number[]; kvTile: readonly number[] };
  result: ProfileRow;
  /** Why it cannot win (wrong results or not runnable), if so. */
  rejected?: string;
}

export interface TuneReport {
  adapter: string;
  label: string;
  start: FusedTuning;
  rows: TuneRow[];
  winner: TuneRow | null;
  /** The file the winner went to. */
  stored: string | null;
}

const TOL = 1e-4;
const NOISE = 0.98;

/** Every tuning that differs from `t` in one knob, within the ranges a tuning file accepts. */
export function neighbours(t: FusedTuning): FusedTuning[] {
  const out: FusedTuning[] = [];
  for (const k of ['rm', 'tx', 'maxRows', 'maxKeys'] as const)
    for (const f of [0.5, 2]) {
      const c = { ...t, [k]: t[k] * f };
      if (typeof checkTuning(c) !== 'string') out.push(c);
    }
  out.push({ ...t, unroll: !t.unroll });
  // paths: absent means the default (on for subgroups and analytic, off for permute and pad)
  out.push({ ...t, subgroups: t.subgroups === false }, { ...t, analytic: t.analytic === false }, { ...t, permute: t.permute !== true }, { ...t, pad: t.pad !== true });
  return out;
}

export async function tune(a: ProfileArgs, target: GpuTarget, onStep: (what: string) => void): Promise<TuneReport> {
  const { ctx } = target;
  const c = buildCase(a);
  const p = c.problem;
  onStep('reference');
  const ref = sampledReference(c);
  const io = await uploadCase(target, p, c.inputs);
  const seen = new Map<string, TuneRow>();
  const rows: TuneRow[] = [];
  const start = resolveTuning(ctx.adapterClass, ctx.tuning);
  const evaluate = async (t: FusedTuning, round: number): Promise<TuneRow> => {
    const plan = planFused(p, ctx.limits, t, ctx.subgroupMinSize);
    const key = stableStringify({ spec: plan.spec, q: plan.problem.qTile, kv: plan.problem.kvTile });
    const known = seen.get(key);
    if (known) return known;
    onStep(`round ${round}: ${JSON.stringify(t)}`);
    setFusedTuning(t);
    const result = await measure(() => tensorRunner(target, io, p, runWebGPUFusedTensors, a.gpuTiming === 'wall'), 'fused', c.useful, p, a.repeat, ref);
    const s = plan.spec;
    const row: TuneRow = {
      round,
      tuning: t,
      plan: { rows: s.rows, keys: s.keys, threads: (s.rows / s.rm) * s.tx, qTile: plan.problem.qTile, kvTile: plan.problem.kvTile },
      result,
    };
    if (result.ms === null) row.rejected = result.unavailable;
    else if (!(result.relErr! < TOL)) row.rejected = `relErr ${result.relErr} >= ${TOL}`;
    seen.set(key, row);
    rows.push(row);
    return row;
  };
  try {
    let best: TuneRow | null = null;
    const first = await evaluate(start, 0);
    if (!first.rejected) best = first;
    let current = start;
    for (let round = 1; round <= a.tuneRounds; round++) {
      let moved = false;
      for (const t of neighbours(current)) {
        const row = await evaluate(t, round);
        if (row.rejected) continue;
        if (!best || row.result.ms! < best.result.ms! * NOISE) {
          best = row;
          moved = true;
        }
      }
      if (!moved) break;
      current = best!.tuning;
    }
    let stored: string | null = null;
    if (best) {
      stored = await saveTuning(ctx.description, { fused: best.tuning, ms: best.result.ms!, problem: c.label, measured: new Date().toISOString() }, await currentTuningPath());
      // the acquired context keeps the tuning it started with; later calls in this process use the winner
      setFusedTuning(best.tuning);
    } else setFusedTuning(undefined);
    return { adapter: ctx.description, label: c.label, start, rows, winner: best, stored };
  } catch (e) {
    setFusedTuning(undefined);
    throw e;
  } finally {
    io.release();
  }
}

export function formatTune(r: TuneReport): string {
  const head = ['round', 'rm', 'tx', 'maxRows', 'maxKeys', 'unroll', 'rows x keys', 'threads', 'median ms', 'TFLOP/s', 'peak extra', 'relErr', 'timing', ''];
  const body = r.rows.map((x) => {
    const { tuning: t, result: res } = x;
    const ms = res.ms === null ? 'n/a' : res.ms.toFixed(res.ms < 10 ? 2 : 1);
    return [
      String(x.round),
      String(t.rm),
      String(t.tx),
      String(t.maxRows),
      String(t.maxKeys),
      String(t.unroll),
      `${x.plan.rows} x ${x.plan.keys}`,
      String(x.plan.threads),
      ms,
      res.usefulTflops === null ? '-' : res.usefulTflops.toExponential(2),
      res.peakBytes === null ? '-' : fmtBytes(res.peakBytes),
      res.relErr === null ? '-' : res.relErr.toExponential(1),
      res.timing,
      x === r.winner ? '<- winner' : x.rejected ? `rejected: ${x.rejected}` : '',
    ];
  });
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd();
  const startRow = r.rows[0];
  const outcome = r.winner
    ? `winner ${JSON.stringify(r.winner.tuning)}: ${r.winner.result.ms!.toFixed(2)} ms` +
      (startRow?.result.ms ? ` (start ${startRow.result.ms.toFixed(2)} ms, ${(startRow.result.ms / r.winner.result.ms!).toFixed(2)}x)` : '') +
      `\nstored for "${r.adapter}" in ${r.stored}`
    : 'no candidate passed the accuracy check; nothing stored';
  return [`tuning the fused kernel on ${r.label}, adapter "${r.adapter}"`, line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line), outcome].join('\n');
}
