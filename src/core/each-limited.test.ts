import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eachLimited } from './each-limited.js';

test('eachLimited: at most `limit` at once, every item once; the first failure stops new starts and is thrown after those in flight', async () => {
  let running = 0;
  let peak = 0;
  const done: number[] = [];
  await eachLimited([1, 2, 3, 4, 5, 6, 7], 3, async (i) => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    done.push(i);
  });
  assert.equal(peak, 3);
  assert.deepEqual(done.sort(), [1, 2, 3, 4, 5, 6, 7]);

  const started: number[] = [];
  let settled = 0;
  await assert.rejects(
    eachLimited([1, 2, 3, 4, 5, 6], 2, async (i) => {
      started.push(i);
      await new Promise((r) => setTimeout(r, i === 1 ? 1 : 10));
      settled++;
      if (i === 1) throw new Error('first');
      if (i === 2) throw new Error('second');
    }),
    /first/,
  );
  assert.deepEqual(started, [1, 2], 'nothing started after the failure');
  assert.equal(settled, 2, 'the one in flight settled before the throw');
  await eachLimited([], 4, async () => assert.fail('no items, no calls'));
});
