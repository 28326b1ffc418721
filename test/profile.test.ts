import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ProfileArgs, parseProfileArgs } from '../src/cli/args.js';
import { type ProfileReport, formatComparison, formatTable, measure, profileCase } from '../src/cli/profile.js';
import { type Target, resolveTargets } from '../src/cli/targets.js';
import { cpuThreads } from '../src/cpu/pool.js';
import { TilewiseError } from '../src/errors.js';
import { webgpuAvailable } from '../src/webgpu/device.js';

const base = (over: Partial<ProfileArgs>): ProfileArgs => ({ ...parseProfileArgs(['--repeat', '1']).args, ...over });
const tinyNA = base({ pattern: 'na', shape: [9, 9], kernel: [3, 5], dilation: [1, 1], stride: [1, 1], heads: 2, dim: 8 });
const tinySparse = base({ pattern: 'blocksparse', shape: [150], heads: 2, dim: 8, density: 0.3 });
const quiet = () => undefined;

test('profile flags: backend lists, the quick suite only without problem flags, --tune is for WebGPU', () => {
  assert.deepEqual(parseProfileArgs([]).args.backends, ['auto']);
  assert.equal(parseProfileArgs([]).quick, true);
  assert.equal(parseProfileArgs(['--backend', 'webgpu', '--json', '--repeat', '5']).quick, true);
  assert.equal(parseProfileArgs(['--pattern', 'dense']).quick, false);
  assert.deepEqual(parseProfileArgs(['--backend', 'webgpu,cpu,webgpu']).args.backends, ['webgpu', 'cpu']);
  assert.throws(() => parseProfileArgs(['--backend', 'gpu']), (e: unknown) => e instanceof TilewiseError && e.arg === '--backend');
  const t = parseProfileArgs(['--tune', '--tuning-file', '/tmp/t.json']);
  assert.equal(t.quick, false);
  assert.deepEqual(t.args.backends, ['webgpu']);
  assert.equal(t.args.tuningFile, '/tmp/t.json');
  assert.throws(() => parseProfileArgs(['--tune', '--backend', 'cpu']), (e: unknown) => e instanceof TilewiseError && e.arg === '--tune');
  assert.equal(parseProfileArgs([]).args.gpuTiming, 'auto');
  assert.equal(parseProfileArgs(['--gpu-timing', 'wall']).args.gpuTiming, 'wall');
  assert.throws(() => parseProfileArgs(['--gpu-timing', 'cuda']), (e: unknown) => e instanceof TilewiseError && e.arg === '--gpu-timing');
});

test('a row whose backend cannot run it becomes n/a with the reason; other errors propagate', async () => {
  const p = { heads: 1, dim: 4, dimV: 4 } as Parameters<typeof measure>[3];
  const failing = () => ({
    timing: 'wall' as const,
    check: () => Promise.reject(new TilewiseError('impl', "'unfused' runs on the CPU backend only")),
    time: () => Promise.resolve(1),
  });
  const row = await measure(failing, 'unfused', 10, p, 1);
  assert.equal(row.ms, null);
  assert.match(row.unavailable!, /unfused/);
  const table = formatTable('t', [row]);
  assert.match(table, /unfused +n\/a \(impl: 'unfused' runs on the CPU backend only\)/);
  const broken = () => ({ timing: 'wall' as const, check: () => Promise.reject(new RangeError('bug')), time: () => Promise.resolve(1) });
  await assert.rejects(measure(broken, 'fused', 10, p, 1), RangeError);
});

function checkRows(r: ProfileReport): void {
  for (const row of r.results) {
    if (row.impl === 'reference') continue;
    if (row.ms === null) {
      assert.ok(row.unavailable, `${r.backend} ${row.impl}: n/a needs a reason`);
      continue;
    }
    assert.ok(row.ms >= 0 && row.usefulTflops! >= 0, `${r.backend} ${row.impl}`);
    if (row.impl !== 'dense-fused') assert.ok(row.relErr! < 1e-4, `${r.backend} ${row.impl}: relErr ${row.relErr}`);
  }
}

test('profileCase on the CPU: every implementation, checked against the reference', async () => {
  const targets: Target[] = [{ name: 'cpu', threads: cpuThreads() }];
  const [r] = await profileCase(tinyNA, targets, quiet);
  assert.deepEqual(
    r!.results.map((x) => x.impl),
    ['reference', 'naive', 'unfused', 'fused', 'dense-fused'],
  );
  assert.ok(r!.results.every((x) => x.ms !== null));
  checkRows(r!);
});

const available = await webgpuAvailable();
const skip: string | false = available === true ? false : `no WebGPU device: ${available}`;

test('GPU: profileCase on CPU and WebGPU in one run (NA, block-sparse): no crash, rows checked, ratios printed', { skip }, async () => {
  const { targets } = await resolveTargets(['cpu', 'webgpu'], cpuThreads);
  assert.deepEqual(
    targets.map((t) => t.name),
    ['cpu', 'webgpu'],
  );
  for (const a of [tinyNA, tinySparse]) {
    const reports = await profileCase(a, targets, quiet);
    assert.equal(reports.length, 2);
    reports.forEach(checkRows);
    const gpu = reports[1]!;
    const features = gpu.device['features'] as string[];
    for (const row of gpu.results) {
      if (row.ms === null || row.impl === 'reference' || row.impl === 'unfused') continue;
      assert.equal(row.timing, features.includes('timestamp-query') ? 'gpu-ts' : 'wall-gpu', row.impl);
      assert.ok(row.peakBytes! >= 0, `${row.impl}: measured GPU bytes`);
    }
    assert.match(formatComparison(reports), /cpu\/webgpu/);
  }
  // --gpu-timing wall: end-to-end wall-clock even where timestamps exist
  const [wall] = await profileCase({ ...tinyNA, gpuTiming: 'wall' }, targets.slice(1), quiet);
  checkRows(wall!);
  assert.ok(wall!.results.filter((r) => r.ms !== null && ['naive', 'fused', 'dense-fused'].includes(r.impl)).every((r) => r.timing === 'wall-gpu'));
});

test('tilewise profile --help and -h print the usage and exit 0; --backward adds the backward row and its ratio', async () => {
  const { spawnSync } = await import('node:child_process');
  const main = new URL('../src/cli/main.js', import.meta.url).pathname;
  for (const flag of ['--help', '-h']) {
    const r = spawnSync(process.execPath, [main, 'profile', flag], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, `profile ${flag} exits 0 (stderr: ${r.stderr})`);
    assert.match(r.stdout, /usage: tilewise profile/);
  }
  const rep = await profileCase(base({ ...tinyNA, backward: true, backends: ['cpu'] }), [{ name: 'cpu', threads: cpuThreads() } as Target], quiet);
  const row = rep[0]!.results.find((x) => x.impl === 'fused-backward');
  assert.ok(row && row.ms !== null && row.ms > 0, 'a timed fused-backward row');
});

test('profile: repeats calibrate themselves, --impl selects implementations, ratio tables name mixed timings', async () => {
  const { timeRuns } = await import('../src/cli/profile.js');
  assert.equal(parseProfileArgs([]).args.repeat, 0, 'calibrated by default');
  assert.equal((await timeRuns(async () => 100, 0)).length, 3, 'slow rows: at least 3 runs');
  assert.equal((await timeRuns(async () => 0.5, 0)).length, 200, 'fast rows: many runs (capped)');
  assert.equal((await timeRuns(async () => 0.5, 5)).length, 5, 'an explicit --repeat wins');
  // a cold start (the first calls slow, as the CPU workers' JIT warms up) stays out of the timed runs
  let calls = 0;
  const cold = await timeRuns(async () => (calls++ < 2 ? 100 : 1), 3);
  assert.deepEqual(cold, [1, 1, 1], 'the first calls are warm-up, not timed');
  assert.deepEqual(parseProfileArgs(['--impl', 'fused,reference']).args.impls, ['fused', 'reference']);
  assert.throws(() => parseProfileArgs(['--impl', 'fast']), (e: unknown) => e instanceof TilewiseError && e.arg === '--impl');
  const rep = await profileCase(base({ ...tinyNA, impls: ['fused'] }), [{ name: 'cpu', threads: cpuThreads() } as Target], quiet);
  assert.deepEqual(rep[0]!.results.map((r) => r.impl), ['fused']);
  assert.equal(rep[0]!.path, 'query lanes (tile step)', 'two heads: the query-lane tile step, and the report says so');
  const four = await profileCase(base({ ...tinyNA, heads: 4, impls: ['fused'] }), [{ name: 'cpu', threads: cpuThreads() } as Target], quiet);
  assert.match(four[0]!.path ?? '', /^head lanes/, 'heads in fours: head lanes');
  const row = (timing: 'wall' | 'gpu-ts') => ({ impl: 'fused' as const, ms: 1, usefulTflops: 1, relErr: null, peakBytes: null, timing });
  const mixed = formatComparison([
    { backend: 'cpu', device: {}, label: 'x', problem: {}, results: [row('wall')] },
    { backend: 'webgpu', device: {}, label: 'x', problem: {}, results: [row('gpu-ts')] },
  ]);
  assert.match(mixed, /ratios divide cpu wall by webgpu gpu-ts/);
});
