/** examples/train-na.ts, shortened: SGD on tilewise's neighborhood-attention gradients lowers the loss. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { train } from '../examples/train-na.js';

test('examples/train-na: 40 SGD steps on na2dBackward gradients lower the loss clearly', async () => {
  const losses = await train(40);
  assert.ok(losses.every((l) => Number.isFinite(l)), 'every loss is finite');
  const [first, last] = [losses[0]!, losses[losses.length - 1]!];
  assert.ok(last < 0.6 * first, `loss ${first} -> ${last}`);
  // and it falls step over step most of the way (plain SGD on a smooth toy problem)
  let down = 0;
  for (let i = 1; i < losses.length; i++) if (losses[i]! < losses[i - 1]!) down++;
  assert.ok(down >= 0.9 * (losses.length - 1), `loss fell on ${down} of ${losses.length - 1} steps`);
});
