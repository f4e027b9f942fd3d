import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AsyncQueue } from './async-queue.js';

test('async queue delivers pushed items in order, ends on end() and on abort', async () => {
  const q = new AsyncQueue<number>();
  setTimeout(() => {
    q.push(1);
    q.push(2);
    setTimeout(() => {
      q.push(3);
      q.end();
    }, 5);
  }, 5);
  const got: number[] = [];
  for await (const n of q) got.push(n);
  assert.deepEqual(got, [1, 2, 3]);

  const ac = new AbortController();
  const q2 = new AsyncQueue<number>();
  q2.push(7);
  const seen: number[] = [];
  setTimeout(() => ac.abort(), 10);
  for await (const n of q2.drain(ac.signal)) seen.push(n);
  assert.deepEqual(seen, [7], 'stops at abort without waiting for more');
});
