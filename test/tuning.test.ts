import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { planAttention } from '../src/api.js';
import { neighbours } from '../src/cli/tune.js';
import { referenceAttention } from '../src/reference.js';
import { randn, relError } from '../src/tensor.js';
import { getContext, setDevice, webgpuAvailable } from '../src/webgpu/device.js';
import { FUSED_TUNING, type FusedTuning, resolveTuning, runWebGPUFused, tuningFor } from '../src/webgpu/fused.js';
import { GpuTimer } from '../src/webgpu/timing.js';
import { TUNING_VERSION, checkTuning, parseTuningFile, readTuningFile, saveTuning, setTuningFile, tuningPath, withEntry } from '../src/webgpu/tuning.js';

// The stored-tuning logic is pure (parse, validate, resolve, path) and tested without a GPU; one
// test at the end acquires a device through a tuning file and is skipped with the reason without one.

const T: FusedTuning = { rm: 4, tx: 2, maxRows: 16, maxKeys: 16, unroll: false };
const file = (adapters: Record<string, unknown>, version: unknown = TUNING_VERSION) => JSON.stringify({ version, adapters });

test('checkTuning accepts complete in-range tunings and names what is wrong otherwise', () => {
  assert.deepEqual(checkTuning({ ...T, note: 'extra keys are ignored' }), T);
  assert.match(String(checkTuning(null)), /object/);
  assert.match(String(checkTuning([1])), /object/);
  assert.match(String(checkTuning({ ...T, rm: 0 })), /^rm must be an integer in \[1, 32\]/);
  assert.match(String(checkTuning({ ...T, tx: 1.5 })), /^tx/);
  assert.match(String(checkTuning({ ...T, maxKeys: 4096 })), /^maxKeys/);
  assert.match(String(checkTuning({ ...T, maxRows: '16' })), /^maxRows/);
  const { unroll: _u, ...noUnroll } = T;
  assert.match(String(checkTuning(noUnroll)), /^unroll must be a boolean/);
  // optional path switches: kept when boolean, named when not
  assert.deepEqual(checkTuning({ ...T, subgroups: false, analytic: true, permute: true }), { ...T, subgroups: false, analytic: true, permute: true });
  assert.match(String(checkTuning({ ...T, permute: 'yes' })), /^permute must be a boolean when given/);
  assert.deepEqual(checkTuning({ ...T, pad: true }), { ...T, pad: true });
  assert.match(String(checkTuning({ ...T, pad: 1 })), /^pad must be a boolean when given/);
  assert.match(String(checkTuning({ ...T, analytic: 1 })), /^analytic must be a boolean when given/);
});

test('parseTuningFile: good entries kept, bad ones warned about, a bad file means the table', () => {
  const ok = parseTuningFile(file({ A: { fused: T, ms: 1.5 }, B: { fused: { ...T, unroll: true } } }), 'f.json');
  assert.equal(ok.wellFormed, true);
  assert.deepEqual(ok.warnings, []);
  assert.deepEqual(ok.entries.get('A'), T);
  assert.equal(ok.entries.get('B')!.unroll, true);

  const mixed = parseTuningFile(file({ A: { fused: T }, B: { fused: { ...T, rm: -1 } }, C: 7, D: {} }), 'f.json');
  assert.equal(mixed.wellFormed, true);
  assert.deepEqual([...mixed.entries.keys()], ['A']);
  assert.equal(mixed.warnings.length, 3);
  assert.match(mixed.warnings[0]!, /^f\.json: entry for "B" ignored: fused rm/);

  for (const [text, why] of [
    ['{ not json', /not JSON/],
    ['[1, 2]', /must be a JSON object/],
    [file({ A: { fused: T } }, 2), /version must be 1/],
    [JSON.stringify({ version: 1, adapters: [] }), /"adapters" must be an object/],
  ] as const) {
    const r = parseTuningFile(text, 'bad.json');
    assert.equal(r.wellFormed, false, text);
    assert.equal(r.entries.size, 0);
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0]!, why);
    assert.match(r.warnings[0]!, /^bad\.json: .*using the built-in tuning table$/);
  }
});

test('tuningPath: explicit path, then $TILEWISE_TUNING, then ~/.cache/tilewise/tuning.json', () => {
  assert.equal(tuningPath('/x/t.json', { TILEWISE_TUNING: '/env.json' }, '/home/u'), '/x/t.json');
  assert.equal(tuningPath(undefined, { TILEWISE_TUNING: '/env.json' }, '/home/u'), '/env.json');
  assert.equal(tuningPath(undefined, { TILEWISE_TUNING: '' }, '/home/u/'), '/home/u/.cache/tilewise/tuning.json');
  assert.equal(tuningPath(undefined, {}, '/root'), '/root/.cache/tilewise/tuning.json');
});

test('resolveTuning: override over stored over the class table', () => {
  assert.deepEqual(resolveTuning('gpu'), FUSED_TUNING.gpu);
  assert.deepEqual(resolveTuning('cpu'), FUSED_TUNING.cpu);
  assert.deepEqual(resolveTuning('cpu', T), T);
  assert.deepEqual(resolveTuning('gpu', T, { unroll: true }), { ...T, unroll: true });
  assert.deepEqual(resolveTuning('gpu', undefined, { rm: 1 }), { ...FUSED_TUNING.gpu, rm: 1 });
  assert.deepEqual(tuningFor({ adapterClass: 'cpu', tuning: T }), T);
  assert.deepEqual(tuningFor({ adapterClass: 'cpu' }), FUSED_TUNING.cpu);
});

test('withEntry adds or replaces one adapter and keeps the others', () => {
  const one = withEntry(undefined, 'A', { fused: T, ms: 2 });
  const two = withEntry(one, 'B', { fused: { ...T, rm: 8 } });
  const three = withEntry(two, 'A', { fused: { ...T, tx: 4 } });
  const parsed = parseTuningFile(three, 'x');
  assert.deepEqual(parsed.warnings, []);
  assert.deepEqual(parsed.entries.get('A'), { ...T, tx: 4 });
  assert.deepEqual(parsed.entries.get('B'), { ...T, rm: 8 });
});

test('tuning file IO: missing is silent, save creates directories, a malformed file is moved aside', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tilewise-tuning-'));
  try {
    const path = join(dir, 'sub', 'dir', 'tuning.json');
    assert.deepEqual(await readTuningFile(path), { entries: new Map(), warnings: [], wellFormed: true });
    await saveTuning('adapter A', { fused: T, problem: 'dense' }, path);
    await saveTuning('adapter B', { fused: { ...T, rm: 2 } }, path);
    const back = await readTuningFile(path);
    assert.deepEqual(back.entries.get('adapter A'), T);
    assert.deepEqual(back.entries.get('adapter B'), { ...T, rm: 2 });

    const bad = join(dir, 'bad.json');
    await writeFile(bad, '{ truncated');
    const warnings: string[] = [];
    const onWarn = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarn);
    try {
      await saveTuning('adapter A', { fused: T }, bad);
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarn);
    }
    assert.equal(await readFile(`${bad}.bad`, 'utf8'), '{ truncated');
    assert.deepEqual((await readTuningFile(bad)).entries.get('adapter A'), T);
    assert.ok(warnings.some((w) => /moved to .*\.bad/.test(w)), warnings.join('\n'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('tuner neighbours change exactly one knob and stay in range', () => {
  const ns = neighbours({ rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false });
  for (const n of ns) {
    assert.equal(typeof checkTuning(n), 'object', JSON.stringify(n));
    const start: FusedTuning = { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false };
    const diff = (Object.keys(n) as (keyof FusedTuning)[]).filter((k) => n[k] !== start[k]);
    assert.equal(diff.length, 1, JSON.stringify(n));
  }
  // rm cannot halve below 1, tx and maxKeys cannot double past their caps
  assert.deepEqual(
    ns.map((n) => JSON.stringify(n)),
    [
      { rm: 2, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false },
      { rm: 1, tx: 16, maxRows: 64, maxKeys: 1024, unroll: false },
      { rm: 1, tx: 32, maxRows: 32, maxKeys: 1024, unroll: false },
      { rm: 1, tx: 32, maxRows: 128, maxKeys: 1024, unroll: false },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 512, unroll: false },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: true },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false, subgroups: false },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false, analytic: false },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false, permute: true },
      { rm: 1, tx: 32, maxRows: 64, maxKeys: 1024, unroll: false, pad: true },
    ].map((n) => JSON.stringify(n)),
  );
});

// ---------------------------------------------------------------------------------------------

const available = await webgpuAvailable();
const skip: string | false = available === true ? false : `no WebGPU device: ${available}`;

test('GPU: a tuning file entry for the adapter is read at acquisition and used by the fused kernel', { skip }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tilewise-tuning-gpu-'));
  try {
    const first = await getContext();
    const mine: FusedTuning = { rm: 2, tx: 2, maxRows: 8, maxKeys: 8, unroll: false };
    const path = join(dir, 'tuning.json');
    await writeFile(path, file({ [first.description]: { fused: mine }, 'some other adapter': { fused: T } }));
    setTuningFile(path);
    setDevice(undefined); // the next call acquires a device, reading the file
    const ctx = await getContext();
    assert.notEqual(ctx.device, first.device);
    assert.deepEqual(ctx.tuning, mine);
    assert.deepEqual(tuningFor(ctx), mine);

    const q = randn([1, 37, 2, 8], 1);
    const k = randn([1, 37, 2, 8], 2);
    const v = randn([1, 37, 2, 8], 3);
    const { problem } = planAttention(q, k, v, { causal: true });
    const got = await runWebGPUFused(problem, q.data, k.data, v.data, { poison: true });
    const ref = referenceAttention(problem, { q: q.data, k: k.data, v: v.data });
    assert.ok(relError(got.out, ref.out) < 1e-4);

    // the features requested at acquisition; GPU timestamps work when the device has them
    if (GpuTimer.supported(ctx)) {
      const timer = new GpuTimer(ctx);
      const { runWebGPUFusedTensors } = await import('../src/webgpu/fused.js');
      const { toGpu, releaseTensor } = await import('../src/webgpu/tensor.js');
      const [qg, kg, vg] = await Promise.all([q, k, v].map((t) => toGpu(t.data, [37, 2, 8])));
      const res = await runWebGPUFusedTensors(problem, qg!, kg!, vg!, { timer });
      assert.equal(timer.passes, 1);
      const ms = await timer.read();
      assert.ok(ms > 0 && ms < 10_000, `timed ${ms} ms`);
      assert.equal(timer.passes, 0);
      [qg!, kg!, vg!, res.out, res.lse].forEach(releaseTensor);
      timer.destroy();
    }

    // a malformed file: a warning, and the table again
    await writeFile(path, '{');
    setDevice(undefined);
    const warned: string[] = [];
    const onWarn = (w: Error) => warned.push(w.message);
    process.on('warning', onWarn);
    try {
      const again = await getContext();
      await new Promise((r) => setImmediate(r));
      assert.equal(again.tuning, undefined);
      assert.deepEqual(tuningFor(again), FUSED_TUNING[again.adapterClass]);
    } finally {
      process.off('warning', onWarn);
    }
    assert.ok(warned.some((w) => w.includes(path) && /not JSON/.test(w)), warned.join('\n'));
  } finally {
    setTuningFile(undefined);
    setDevice(undefined);
    await rm(dir, { recursive: true, force: true });
  }
});

test('permuteFrom: a row with it permutes neighborhoods whose window holds that many keys, the built-in rows never, an explicit permute wins; bad values are named', async () => {
  const { planFused } = await import('../src/webgpu/fused.js');
  const { planNA } = await import('../src/api.js');
  const limits = {
    maxComputeWorkgroupStorageSize: 49152,
    maxComputeInvocationsPerWorkgroup: 1024,
    maxComputeWorkgroupSizeX: 1024,
    maxComputeWorkgroupsPerDimension: 65535,
    maxStorageBufferBindingSize: 1 << 30,
    maxBufferSize: 1 << 30,
    maxStorageBuffersPerShaderStage: 8,
  };
  const x = randn([1, 48, 48, 2, 16], 1);
  const plan = (kernelSize: number, t: FusedTuning) => planFused(planNA(x, x, x, { kernelSize }).problem, limits, t).spec.permute;
  const from256 = { ...FUSED_TUNING.gpu, permuteFrom: 256 };
  assert.equal(plan(17, from256), true, '289 keys: permuted from 256');
  assert.equal(plan(13, from256), false, '169 keys: not');
  assert.equal(plan(17, FUSED_TUNING.gpu), false, 'the GPU row never by default');
  assert.equal(plan(17, FUSED_TUNING.cpu), false, 'the CPU row never by default');
  assert.equal(plan(13, { ...FUSED_TUNING.gpu, permute: true }), true, 'an explicit permute wins');
  assert.equal(plan(17, { ...from256, permute: false }), false, 'an explicit permute wins');
  assert.match(String(checkTuning({ ...T, permuteFrom: 0 })), /permuteFrom/);
  assert.deepEqual(checkTuning({ ...T, permuteFrom: 300 }), { ...T, permuteFrom: 300 });
});
