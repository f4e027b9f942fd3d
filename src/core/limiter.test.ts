import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Limiter } from './limiter.js';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

test('limiter: at most `limit` in flight, first come first served, a failure frees its slot', async () => {
  const l = new Limiter(2);
  let inFlight = 0;
  let most = 0;
  const started: number[] = [];
  const results = await Promise.allSettled(Array.from({ length: 7 }, (_, i) => l.run(async () => {
    started.push(i);
    inFlight++;
    most = Math.max(most, inFlight);
    await tick();
    inFlight--;
    if (i === 1) throw new Error('boom');
    return i;
  })));
  assert.equal(most, 2);
  assert.deepEqual(started, [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(results.filter((r) => r.status === 'rejected').length, 1);
  assert.deepEqual(results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])), [0, 2, 3, 4, 5, 6]);
  assert.equal(l.queued, 0);
  // free again: the next runs at once
  assert.equal(await l.run(async () => 'now'), 'now');
});
