#!/usr/bin/env node
import { TilewiseError } from '../errors.js';
import { cpuThreads, setCpuThreads } from '../cpu/pool.js';
import { type ProfileArgs, parseProfileArgs } from './args.js';
import { formatEvalRow, parseEvalArgs, runEval } from './longheads-eval.js';
import { type ProfileReport, QUICK_SUITE, backwardRatio, caseSteps, footer, formatComparison, formatTable, profileCase, progressBar } from './profile.js';
import { enableRelaxedSimd } from './relaxed.js';
import { type Target, resolveTargets } from './targets.js';

const USAGE = `usage: tilewise profile [--backend cpu|webgpu|auto|cpu,webgpu] [--pattern dense|causal|window|na|blocksparse]
                        [--shape 32x32] [--batch 1] [--heads 4] [--dim 32] [--kernel 7|7x5]
                        [--dilation 1] [--stride 1] [--causal] [--window l,r] [--density 0.25]
                        [--repeat N|auto] [--impl fused,unfused,...] [--threads N] [--json]
                        [--gpu-timing auto|wall] [--backward] [--html report.html]
                        [--tune [--tune-rounds 3]] [--tuning-file PATH]
Without a problem flag it runs a quick suite (under a minute on 2 cores, CPU).
A backend list profiles every case on each backend (same inputs) and prints their time ratios.
--backward also times the fused backward (CPU and WebGPU) and prints backward / forward.
--tune (WebGPU) searches the fused kernel's blocking on the given problem and stores the winner for
the adapter in the tuning file (--tuning-file, else $TILEWISE_TUNING, else ~/.cache/tilewise/tuning.json),
which the WebGPU backend reads whenever it acquires a device.

       tilewise longheads-eval [--backend cpu|webgpu|auto] [--lengths 4096,8192,...] [--trials 20]
                        [--budget 4096] [--chunk 256] [--heads 2] [--dim 64] [--rope-base 500000]
                        [--needle-tokens 16] [--needle-logit 20] [--methods full,window,longheads] [--json]
Attention-level passkey retrieval: full causal attention vs a budget-sized sliding window vs LongHeads.`;

async function profile(argv: string[]): Promise<void> {
  const { args, quick } = parseProfileArgs(argv);
  if (args.threads) setCpuThreads(args.threads);
  if (args.tuningFile) {
    // before anything acquires the device, which is when the file is read
    const { setTuningFile } = await import('../webgpu/tuning.js');
    setTuningFile(args.tuningFile);
  }
  const { targets, notes } = await resolveTargets(args.backends, cpuThreads);
  if (args.tune) return tuneCommand(args, targets[0]!);
  const cases: ProfileArgs[] = quick ? QUICK_SUITE.map((c) => ({ ...args, ...c })) : [args];
  const bar = progressBar(cases.reduce((n, c) => n + caseSteps(c, targets.length), 0));
  const perCase: ProfileReport[][] = [];
  try {
    for (const c of cases) perCase.push(await profileCase(c, targets, bar.step));
  } finally {
    bar.stop();
  }
  const reports = perCase.flat();
  if (args.html) {
    const { writeFile } = await import('node:fs/promises');
    const { htmlReport } = await import('./report-html.js');
    await writeFile(args.html, htmlReport(perCase, footer(targets, reports, notes)));
  }
  if (args.json) {
    for (const n of notes) console.error(`tilewise: ${n}`);
    console.log(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 1));
    return;
  }
  for (const rs of perCase) {
    for (const r of rs) {
      const ratio = backwardRatio(r);
      console.log(`${formatTable(`${r.label} [${r.backend}]`, r.results)}${r.path ? `\nfused path: ${r.path}` : ''}${ratio ? `\nbackward / forward: ${ratio.toFixed(2)}x` : ''}\n`);
    }
    if (rs.length > 1) console.log(`${formatComparison(rs)}\n`);
  }
  console.log(footer(targets, reports, notes));
  if (args.html) console.log(`report: ${args.html}`);
}

async function tuneCommand(args: ProfileArgs, target: Target): Promise<void> {
  if (target.name !== 'webgpu') throw new TilewiseError('--tune', 'needs the WebGPU backend');
  const { formatTune, tune } = await import('./tune.js');
  const bar = progressBar(1 + 12 * args.tuneRounds + 1); // reference, then at most 12 neighbours a round plus the start
  let report;
  try {
    report = await tune(args, target, bar.step);
  } finally {
    bar.stop();
  }
  if (args.json) console.log(JSON.stringify(report, null, 1));
  else console.log(formatTune(report));
}

async function longHeadsEval(argv: string[]): Promise<void> {
  const a = parseEvalArgs(argv);
  if (!a.json) console.log(`backend ${a.backend}, H=${a.heads} D=${a.dim}, budget ${a.budget}, chunk ${a.chunk}, RoPE base ${a.ropeBase}, needle ${a.needleTokens} tokens at logit ${a.needleLogit}, ${a.trials} trials`);
  const results = await runEval(a, a.json ? undefined : (r) => console.log(formatEvalRow(r)));
  if (a.json) console.log(JSON.stringify({ backend: a.backend, results }, null, 1));
}

async function main(): Promise<void> {
  enableRelaxedSimd();
  const [cmd, ...rest] = process.argv.slice(2);
  if (rest.includes('--help') || rest.includes('-h') || cmd === '-h') {
    console.log(USAGE);
    return;
  }
  if (cmd === 'profile') return profile(rest);
  if (cmd === 'longheads-eval') return longHeadsEval(rest);
  console.log(USAGE);
  if (cmd !== undefined && cmd !== 'help' && cmd !== '--help') process.exitCode = 2;
}

main().catch((e: unknown) => {
  if (e instanceof TilewiseError || (e instanceof Error && 'code' in e && String((e as { code: unknown }).code).startsWith('ERR_PARSE_ARGS'))) {
    console.error(`tilewise: ${e.message}`);
    process.exitCode = 2;
  } else {
    console.error(e);
    process.exitCode = 1;
  }
});
