/** The backend chooser: explicit choices kept, 'auto' walks the priority list and says why it skipped one. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseBackend, cpuBackend, webgpuBackend } from '../src/backends.js';
import { planAttention, planNA } from '../src/api.js';
import { randn } from '../src/index.js';
import { getContext, webgpuAvailable } from '../src/webgpu/device.js';

test("chooseBackend: unset is the CPU, explicit choices stay, 'auto' skips WebGPU with a reason unless a hardware adapter can run it", async () => {
  const q = randn([1, 32, 2, 8], 1);
  const { problem } = planAttention(q, q, q, { causal: true });
  assert.equal((await chooseBackend(undefined, problem, 'fused')).backend, cpuBackend);
  assert.equal((await chooseBackend('cpu', problem, 'fused')).backend, cpuBackend);
  assert.equal((await chooseBackend('webgpu', problem, 'fused')).backend, webgpuBackend);
  const auto = await chooseBackend('auto', problem, 'fused');
  const avail = await webgpuAvailable();
  if (avail !== true) {
    assert.equal(auto.backend, cpuBackend);
    assert.deepEqual(auto.skipped, [{ name: 'webgpu', reason: avail }]);
    return;
  }
  const hardware = (await getContext()).adapterClass === 'gpu';
  assert.equal(auto.backend, hardware ? webgpuBackend : cpuBackend);
  if (!hardware) assert.match(auto.skipped[0]!.reason, /software/);
  // a kernel the device cannot run is skipped with the kernel's own reason
  const x = randn([1, 6, 6, 1, 8], 2);
  const na = planNA(x, x, x, { kernelSize: 3 }).problem;
  const can = await webgpuBackend.canRun(na, 'naive');
  assert.ok(can === true || typeof can === 'string');
});
