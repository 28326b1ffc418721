/**
 * tilewise's CPU backend inside headless Chromium, in two pages: a cross-origin isolated page
 * (COOP/COEP headers: the CPU engine runs on Web Workers over a shared WebAssembly.Memory) and a
 * plain page (no isolation: one thread, the page's main thread, yielding between slices).
 *
 *   npm run build && node dist/bench/cpu-browser.js [--quick] [--json]
 *
 * Each page imports the BUILT library from dist/ over a tiny static HTTP server (as
 * test/browser.test.ts does) and times the cases with the library's own API: one warm-up, then the
 * median of at least 3 timed runs (as many as fit in about 1.5 s per case; --quick uses smaller sizes,
 * about 20 s in all). Useful FLOPs count only allowed (query, key) pairs:
 * 4 D pairs H (B = 1). As a sanity check the 2-D neighborhood output of each page is sent back and
 * compared with the same call in Node (randn is seeded, so both sides build the same inputs).
 *
 * Chromium binary: $TILEWISE_CHROMIUM, else Debian's /usr/lib/chromium/chromium.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Browser, Page } from 'playwright-core';
import { cpuInfo, na2d, randn, relError, type CpuInfo } from '../src/index.js';
import { enableRelaxedSimd } from '../src/cli/relaxed.js';
import { CHROMIUM, CHROMIUM_ARGS, serveStatic } from '../test/browser-harness.js';

// Node 20 keeps relaxed SIMD behind a flag; Chromium has it by default. With it on, the Node
// reference runs the same tile kernels as the pages.
enableRelaxedSimd();

type Lib = typeof import('../src/index.js');

/** This file runs from dist/bench/, so dist/ is one up: the pages import dist/src/index.js from there. */
const DIST = normalize(join(dirname(fileURLToPath(import.meta.url)), '..'));

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});

/** One case, as plain data: it crosses into the page, which builds its own inputs from the seeds. */
interface Case {
  id: string;
  kind: 'dense' | 'causal' | 'na';
  grid: number[]; // token grid (one axis for dense/causal)
  heads: number;
  dim: number;
  kernel?: number; // neighborhoods: the same kernel size on every axis
  seed: number; // q from seed, k from seed + 1, v from seed + 2
}
const full: Case[] = [
  { id: 'dense2048', kind: 'dense', grid: [2048], heads: 8, dim: 64, seed: 11 },
  { id: 'causal4096', kind: 'causal', grid: [4096], heads: 8, dim: 64, seed: 21 },
  { id: 'na2d', kind: 'na', grid: [64, 64], heads: 4, dim: 32, kernel: 7, seed: 31 },
  { id: 'na3d', kind: 'na', grid: [16, 16, 16], heads: 4, dim: 32, kernel: 5, seed: 41 },
];
// --quick: same ids, heads, dims and kernels, smaller grids
const quickGrid: Record<string, number[]> = { dense2048: [512], causal4096: [1024], na2d: [32, 32], na3d: [8, 8, 8] };
const cases = args.quick ? full.map((c) => ({ ...c, grid: quickGrid[c.id]! })) : full;
const TARGET_MS = 1500; // timed runs per case add up to about this much (at least MIN_RUNS); --quick has smaller sizes, not fewer ms
const MIN_RUNS = 3;
const MAX_RUNS = 200;
/** The case whose output is sent back and checked against Node. */
const CHECK = 'na2d';

const tokens = (c: Case) => c.grid.reduce((a, b) => a * b, 1);
function allowedPairs(c: Case): number {
  const n = tokens(c);
  if (c.kind === 'dense') return n * n;
  if (c.kind === 'causal') return (n * (n + 1)) / 2;
  return n * c.kernel! ** c.grid.length;
}
const usefulFlops = (c: Case) => 4 * c.dim * allowedPairs(c) * c.heads;
const label = (c: Case) => `B1 ${c.grid.join('x')} H${c.heads} D${c.dim}${c.kernel ? ` k${Array(c.grid.length).fill(c.kernel).join('x')}` : ''}`;

interface PageInfo {
  crossOriginIsolated: boolean;
  sharedArrayBuffer: boolean;
  hardwareConcurrency: number;
  /** after the cases ran, so `kernels` names what actually ran */
  cpuInfo: CpuInfo;
  userAgent: string;
}
interface Timing {
  /** the warm-up call (first call of a page also starts the engine: wasm compile, workers) */
  warmupMs: number;
  /** every timed run, in order */
  times: number[];
  /** base64 of out.data and lse.data bytes, for the case that is checked against Node */
  out?: string;
  lse?: string;
}

/** Runs in the page (serialised by playwright): must not touch anything from this module's scope. */
async function pageInfo(url: string): Promise<PageInfo> {
  const lib = (await import(url)) as Lib;
  return {
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    sharedArrayBuffer: typeof SharedArrayBuffer !== 'undefined',
    hardwareConcurrency: navigator.hardwareConcurrency,
    cpuInfo: lib.cpuInfo(),
    userAgent: navigator.userAgent,
  };
}

/** Runs in the page (serialised by playwright): must not touch anything from this module's scope. */
async function pageCase(arg: { url: string; c: Case; targetMs: number; minRuns: number; maxRuns: number; sendOutput: boolean }): Promise<Timing> {
  const lib = (await import(arg.url)) as Lib; // the module map caches it: one load per page
  const { c } = arg;
  const shape = [1, ...c.grid, c.heads, c.dim];
  const q = lib.randn(shape, c.seed);
  const k = lib.randn(shape, c.seed + 1);
  const v = lib.randn(shape, c.seed + 2);
  const call = () => {
    if (c.kind === 'dense') return lib.attention(q, k, v);
    if (c.kind === 'causal') return lib.attention(q, k, v, { causal: true });
    const o = { kernelSize: c.kernel! };
    if (c.grid.length === 2) return lib.na2d(q, k, v, o);
    if (c.grid.length === 3) return lib.na3d(q, k, v, o);
    throw new Error(`no neighborhood function for ${c.grid.length} axes`);
  };
  let t = performance.now();
  const first = await call();
  const warmupMs = performance.now() - t;
  // timed runs until they add up to targetMs (at least minRuns, at most maxRuns): the warm-up of a
  // page's first case also starts the engine, so it is no guide to how many runs fit
  const times: number[] = [];
  let total = 0;
  while (times.length < arg.minRuns || (total < arg.targetMs && times.length < arg.maxRuns)) {
    t = performance.now();
    await call();
    times.push(performance.now() - t);
    total += times[times.length - 1]!;
  }
  const b64 = (a: Float32Array): string => {
    const u8 = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let s = '';
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
    return btoa(s);
  };
  return arg.sendOutput ? { warmupMs, times, out: b64(first.out.data), lse: b64(first.lse.data) } : { warmupMs, times };
}

const fromB64 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  return new Float32Array(new Uint8Array(b).buffer); // a copy: Buffer's offset need not be 4-aligned
};

const progress = (s: string) => process.stderr.write(s + '\n');
function die(msg: string): never {
  process.stderr.write(`cpu-browser: ${msg}\n`);
  process.exit(1);
}

if (!existsSync(CHROMIUM)) die(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set TILEWISE_CHROMIUM to a Chromium binary)`);
if (!existsSync(join(DIST, 'src', 'index.js'))) die(`no built library at ${join(DIST, 'src', 'index.js')} (run npm run build)`);
let chromium: typeof import('playwright-core').chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  die(`playwright-core is not installed: ${(e as Error).message}`);
}

interface Row {
  case: string;
  shape: string;
  gflop: number;
  ms?: number;
  runs?: number;
  warmupMs?: number;
  gflops?: number;
  error?: string;
}
interface PageReport {
  page: 'isolated' | 'plain';
  info?: PageInfo;
  rows: Row[];
  /** the checked case against Node: relative L2 error of out and lse */
  check?: { case: string; relErrOut: number; relErrLse: number } | { case: string; error: string };
  error?: string;
}

const served = await serveStatic(DIST, '<!doctype html><link rel="icon" href="data:,"><title>tilewise cpu bench</title>');
let browser: Browser;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: [...CHROMIUM_ARGS],
  });
} catch (e) {
  await served.close();
  die(`Chromium at ${CHROMIUM} did not start: ${(e as Error).message.split('\n')[0]}`);
}
const chromiumVersion = browser.version();
progress(`chromium ${chromiumVersion} at ${CHROMIUM}; serving ${DIST} at ${served.origin}`);

// Node reference for the checked case, computed once (same seeds, same library, CPU backend).
const checkCase = cases.find((c) => c.id === CHECK)!;
const refShape = [1, ...checkCase.grid, checkCase.heads, checkCase.dim];
progress(`node reference: ${CHECK} ${label(checkCase)} ...`);
const ref = await na2d(randn(refShape, checkCase.seed), randn(refShape, checkCase.seed + 1), randn(refShape, checkCase.seed + 2), { kernelSize: checkCase.kernel!, backend: 'cpu' });
const nodeCpu = cpuInfo();

const reports: PageReport[] = [];
try {
  for (const which of ['isolated', 'plain'] as const) {
    const prefix = which === 'isolated' ? '/isolated' : '';
    const url = `${prefix}/src/index.js`;
    const report: PageReport = { page: which, rows: [] };
    reports.push(report);
    let page: Page | undefined;
    const problems: string[] = [];
    try {
      page = await browser.newPage();
      page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console: ${m.text()}`);
      });
      await page.goto(`${served.origin}${prefix}/`);
      // with the problems the page reported: a failed module load shows its reason only on the console
      const withProblems = (e: unknown) => new Error(`${(e as Error).message.split('\n')[0]}${problems.length ? ` [${problems.join('; ')}]` : ''}`);
      const before = await page.evaluate(pageInfo, url).catch((e) => {
        throw withProblems(e);
      });
      progress(`${which} page: crossOriginIsolated ${before.crossOriginIsolated}, hardwareConcurrency ${before.hardwareConcurrency}, cpuInfo ${JSON.stringify(before.cpuInfo)}`);
      for (const c of cases) {
        const row: Row = { case: c.id, shape: label(c), gflop: usefulFlops(c) / 1e9 };
        report.rows.push(row);
        progress(`  ${which}: ${c.id} ${row.shape} ...`);
        try {
          const r = await page.evaluate(pageCase, { url, c, targetMs: TARGET_MS, minRuns: MIN_RUNS, maxRuns: MAX_RUNS, sendOutput: c.id === CHECK }).catch((e) => {
            throw withProblems(e);
          });
          const sorted = [...r.times].sort((a, b) => a - b);
          const n = sorted.length;
          const ms = n % 2 ? sorted[n >> 1]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
          Object.assign(row, { ms, runs: n, warmupMs: r.warmupMs, gflops: usefulFlops(c) / (ms * 1e6) });
          progress(`    ${ms.toFixed(1)} ms median of ${n} (warm-up ${r.warmupMs.toFixed(1)} ms), ${row.gflops!.toFixed(2)} GFLOP/s`);
          if (r.out !== undefined && r.lse !== undefined) {
            const out = fromB64(r.out);
            const lse = fromB64(r.lse);
            if (out.length !== ref.out.data.length || lse.length !== ref.lse.data.length)
              report.check = { case: c.id, error: `size mismatch: out ${out.length} vs ${ref.out.data.length}, lse ${lse.length} vs ${ref.lse.data.length}` };
            else report.check = { case: c.id, relErrOut: relError(out, ref.out.data), relErrLse: relError(lse, ref.lse.data) };
          }
        } catch (e) {
          row.error = (e as Error).message.slice(0, 300);
          progress(`    error: ${row.error}`);
        }
      }
      report.info = await page.evaluate(pageInfo, url);
    } catch (e) {
      report.error = (e as Error).message.slice(0, 300);
      progress(`${which} page failed: ${report.error}`);
    } finally {
      await page?.close();
    }
  }
} finally {
  await browser.close();
  await served.close();
}

const machine = `${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores; node ${process.version}; ${os.platform()} ${os.arch()}; load avg ${os
  .loadavg()
  .map((x) => x.toFixed(2))
  .join(' ')}`;
if (args.json) {
  console.log(
    JSON.stringify(
      { machine: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, chromium: chromiumVersion, quick: args.quick, targetMs: TARGET_MS, nodeCpuInfo: nodeCpu, pages: reports },
      null,
      1,
    ),
  );
} else {
  const f = (x: number | undefined, d: number) => (x === undefined ? '—' : x.toFixed(d));
  const iso = reports.find((r) => r.page === 'isolated');
  const plain = reports.find((r) => r.page === 'plain');
  console.log(`# tilewise CPU backend in headless Chromium\n`);
  console.log(`machine: ${machine}`);
  console.log(`chromium: ${chromiumVersion} (${CHROMIUM}); timing: 1 warm-up, then the median of >= ${MIN_RUNS} runs adding up to ~${TARGET_MS} ms per case${args.quick ? '; --quick sizes' : ''}\n`);
  console.log('| page | crossOriginIsolated | navigator.hardwareConcurrency | cpuInfo threads | mode | kernels | note |');
  console.log('|---|---|---:|---:|---|---|---|');
  for (const r of reports) {
    const i = r.info;
    console.log(`| ${r.page} | ${i?.crossOriginIsolated ?? '—'} | ${i?.hardwareConcurrency ?? '—'} | ${i?.cpuInfo.threads ?? '—'} | ${i?.cpuInfo.mode ?? '—'} | ${i?.cpuInfo.kernels ?? '—'} | ${r.error ?? ''} |`);
  }
  console.log('');
  console.log('| case | shape | useful GFLOP | isolated ms (median) | runs | isolated GFLOP/s | plain ms (median) | runs | plain GFLOP/s | isolated speedup | note |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const c of cases) {
    const a = iso?.rows.find((r) => r.case === c.id);
    const b = plain?.rows.find((r) => r.case === c.id);
    const speedup = a?.ms !== undefined && b?.ms !== undefined ? b.ms / a.ms : undefined;
    const note = [a?.error && `isolated: ${a.error}`, b?.error && `plain: ${b.error}`].filter(Boolean).join('; ');
    console.log(
      `| ${c.id} | ${label(c)} | ${f(usefulFlops(c) / 1e9, 2)} | ${f(a?.ms, 1)} | ${a?.runs ?? '—'} | ${f(a?.gflops, 2)} | ${f(b?.ms, 1)} | ${b?.runs ?? '—'} | ${f(b?.gflops, 2)} | ${f(speedup, 2)} | ${note} |`,
    );
  }
  console.log('');
  console.log(`Sanity check: ${CHECK} (${label(checkCase)}) output of each page against the same call in Node (tilewise CPU, ${nodeCpu.threads} threads, ${nodeCpu.kernels} kernels), relative L2 error (want < 1e-5):\n`);
  for (const r of reports) {
    const ch = r.check;
    const txt = !ch ? 'not checked (the case did not run)' : 'error' in ch ? ch.error : `out ${ch.relErrOut.toExponential(2)}, lse ${ch.relErrLse.toExponential(2)}${ch.relErrOut < 1e-5 && ch.relErrLse < 1e-5 ? ' (ok)' : ' (TOO LARGE)'}`;
    console.log(`- ${r.page}: ${txt}`);
  }
}
const bad = reports.some((r) => r.error || r.rows.some((x) => x.error) || !r.check || 'error' in r.check || !(r.check.relErrOut < 1e-5 && r.check.relErrLse < 1e-5));
process.exitCode = bad ? 1 : 0;
