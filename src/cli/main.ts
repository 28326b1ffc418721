#!/usr/bin/env node
import { TilewiseError } from '../errors.js';
import { type ProfileArgs, parseProfileArgs } from './args.js';
import { formatEvalRow, parseEvalArgs, runEval } from './longheads-eval.js';
import { QUICK_SUITE, formatTable, profileCase, progressBar } from './profile.js';

const USAGE = `usage: tilewise profile [--backend cpu|auto] [--pattern dense|causal|window|na|blocksparse]
                        [--shape 32x32] [--batch 1] [--heads 4] [--dim 32] [--kernel 7|7x5]
                        [--dilation 1] [--stride 1] [--causal] [--window l,r] [--density 0.25]
                        [--repeat 3] [--threads N] [--json]
With no flags it runs a quick suite (under a minute on 2 cores).

       tilewise longheads-eval [--backend cpu|webgpu|auto] [--lengths 4096,8192,...] [--trials 20]
                        [--budget 4096] [--chunk 256] [--heads 2] [--dim 64] [--rope-base 500000]
                        [--needle-tokens 16] [--needle-logit 20] [--methods full,window,longheads] [--json]
Attention-level passkey retrieval: full causal attention vs a budget-sized sliding window vs LongHeads.`;

async function profile(argv: string[]): Promise<void> {
  const { args, quick } = parseProfileArgs(argv);
  const cases: ProfileArgs[] = quick ? QUICK_SUITE.map((c) => ({ ...args, ...c })) : [args];
  const steps = cases.reduce((n, c) => n + (c.pattern === 'na' ? 5 : 3), 0);
  const bar = progressBar(steps);
  const reports = [];
  for (const c of cases) reports.push(await profileCase(c, bar.step));
  bar.stop();
  if (args.json) {
    const out = reports.map(({ label: _l, ...r }) => r);
    console.log(JSON.stringify(quick ? out : out[0], null, 1));
    return;
  }
  for (const r of reports) console.log(`${formatTable(r.label, r.results)}\n`);
  console.log(`backend: cpu (${reports[0]!.problem['threads']} threads). * reference timed on a row subsample and scaled to all rows; relErr on sampled rows vs float64.`);
}

async function longHeadsEval(argv: string[]): Promise<void> {
  const a = parseEvalArgs(argv);
  if (!a.json) console.log(`backend ${a.backend}, H=${a.heads} D=${a.dim}, budget ${a.budget}, chunk ${a.chunk}, RoPE base ${a.ropeBase}, needle ${a.needleTokens} tokens at logit ${a.needleLogit}, ${a.trials} trials`);
  const results = await runEval(a, a.json ? undefined : (r) => console.log(formatEvalRow(r)));
  if (a.json) console.log(JSON.stringify({ backend: a.backend, results }, null, 1));
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
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
