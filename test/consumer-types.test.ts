/**
 * A consumer project type-checks against the published declarations strictly, without
 * skipLibCheck and without @types/node: the declarations carry their own WebGPU types reference.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root: this file runs from dist/test/. */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

test('a strict consumer (no skipLibCheck, no @types/node) type-checks against the package declarations', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tilewise-consumer-'));
  try {
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', type: 'module', private: true }));
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, lib: ['ES2022', 'DOM'], types: [] }, files: ['main.ts'] }),
    );
    writeFileSync(
      join(dir, 'main.ts'),
      `import { attention, attentionBackward, na2d, randn, webgpu, type GpuResult } from 'tilewise';
const q = randn([1, 16, 2, 8]);
const r = await attention(q, q, q, { causal: true });
const g = await attentionBackward(q, q, q, r.out, r.lse, r.out, { causal: true });
const x = randn([1, 4, 4, 1, 8]);
await na2d(x, x, x, { kernelSize: 3 });
declare const device: GPUDevice;
webgpu.setDevice(device);
declare const onGpu: GpuResult;
const buffer: GPUBuffer = onGpu.out.buffer;
// the backward on GPU tensors: GPU gradients, typed as such
declare const gq: webgpu.GpuTensor;
const gg = await attentionBackward(gq, gq, gq, onGpu.out, onGpu.lse, onGpu.out, { backend: 'webgpu' });
const dqOnGpu: GPUBuffer = gg.dq.buffer;
export const shapes = [g.dq.shape, buffer.size, dqOnGpu.size];
`,
    );
    mkdirSync(join(dir, 'node_modules', '@webgpu'), { recursive: true });
    symlinkSync(ROOT, join(dir, 'node_modules', 'tilewise'), 'dir');
    symlinkSync(join(ROOT, 'node_modules', '@webgpu', 'types'), join(dir, 'node_modules', '@webgpu', 'types'), 'dir');
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const r = spawnSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8', timeout: 120000 });
    assert.equal(r.status, 0, `tsc reported:\n${r.stdout}${r.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('published source maps carry their sources (src/ is not in the package)', async () => {
  const { readdirSync, readFileSync } = await import('node:fs');
  const dir = join(ROOT, 'dist', 'src');
  const maps = (readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith('.js.map'));
  assert.ok(maps.length > 20);
  for (const f of maps) {
    const m = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { sources: string[]; sourcesContent?: (string | null)[] };
    assert.ok(m.sourcesContent && m.sourcesContent.length === m.sources.length && m.sourcesContent.every((s) => typeof s === 'string' && s.length > 0), `${f} lacks its sources`);
  }
});
