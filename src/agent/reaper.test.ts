import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Reaper } from './reaper.js';

const tick = () => new Promise((r) => setTimeout(r, 5));

test('reaper: destroys everything queued, at most `concurrency` at once, each once; failures counted, not fatal', async () => {
  let inFlight = 0;
  let most = 0;
  const destroyed: string[] = [];
  const reaper = new Reaper(
    async (id) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await tick();
      inFlight--;
      if (id === 'bad') throw new Error('umount: busy');
      destroyed.push(id);
    },
    async () => undefined,
    0,
    2,
  );
  const ids = Array.from({ length: 9 }, (_, i) => `c${i}`);
  for (const id of ids) reaper.add(id);
  reaper.add('c0'); // queued already: not twice
  reaper.add('bad');
  assert.ok(reaper.has('c3'));
  await reaper.idle();
  assert.deepEqual([...destroyed].sort(), [...ids].sort());
  assert.equal(most, 2, 'two at a time, not more, not fewer');
  assert.deepEqual(reaper.stats(), { pending: 0, removed: 9, failed: 1 });
  assert.ok(!reaper.has('c3'));
  // queued again after it went idle: drained again
  reaper.add('late');
  await reaper.idle();
  assert.deepEqual(reaper.stats(), { pending: 0, removed: 10, failed: 1 });
});

test('reaper: each destroy waits for the agent to be quiet first', async () => {
  let quietCalls = 0;
  let destroyedBeforeQuiet = 0;
  let released!: () => void;
  const gate = new Promise<void>((r) => (released = r));
  const reaper = new Reaper(
    async () => {
      if (quietCalls === 0) destroyedBeforeQuiet++;
    },
    async () => {
      quietCalls++;
      await gate;
    },
    200,
    1,
  );
  reaper.add('a');
  await tick();
  assert.equal(reaper.stats().pending, 1, 'held while the agent is busy');
  released();
  await reaper.idle();
  assert.equal(destroyedBeforeQuiet, 0);
  assert.equal(reaper.stats().removed, 1);
});

test('reaper: a long queue is destroyed without waiting for quiet, the last few wait', async () => {
  const waitedFor: number[] = [];
  const order: string[] = [];
  let n = 0;
  const reaper = new Reaper(
    async (id) => {
      order.push(id);
    },
    async () => {
      waitedFor.push(n);
      await new Promise((r) => setTimeout(r, 50)); // never quiet: the full wait each time
    },
    50,
    1,
    3,
  );
  for (n = 0; n < 10; n++) reaper.add(`c${n}`);
  const t0 = Date.now();
  await reaper.idle();
  assert.equal(order.length, 10);
  // the first was taken as it came, nothing behind it yet: it waited; then 8, 7, ... 0 queued
  // behind each, and only those with fewer than 3 behind them waited
  assert.deepEqual(waitedFor, [0, 10, 10, 10], 'the first and the last three waited for quiet, the six between did not');
  assert.ok(Date.now() - t0 < 400, `a queue of 10 took ${Date.now() - t0} ms: it waited for quiet each time`);
});
