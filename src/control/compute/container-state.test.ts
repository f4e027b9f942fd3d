import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertTransition, canTransition } from './container-state.js';

test('container state machine allows the lifecycle and refuses the rest', () => {
  assert.ok(canTransition('created', 'running'));
  assert.ok(canTransition('running', 'paused'));
  assert.ok(canTransition('paused', 'running'));
  assert.ok(canTransition('exited', 'running'));
  assert.ok(!canTransition('created', 'paused'));
  assert.ok(!canTransition('exited', 'paused'));
  assert.ok(!canTransition('removing', 'running'));
  assert.throws(() => assertTransition('web', 'exited', 'paused', 'pause'), { code: 'Conflict', message: /cannot pause container web: it is exited/ });
});

test('StopsInFlight: a stop registers for its run; abort gives its waiters the reason; stopped settles when its stop part is over', async () => {
  const { StopsInFlight } = await import('./container-state.js');
  const stops = new StopsInFlight();
  assert.equal(stops.abort('c1', new Error('x')), false, 'nothing in flight');
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let aborted: unknown;
  const run = stops.run('c1', async (signal, stopDone) => {
    signal.addEventListener('abort', () => (aborted = signal.reason));
    await gate;
    stopDone();
    return 'done';
  });
  const entry = stops.get('c1');
  assert.ok(entry);
  let stopped = false;
  void entry.stopped.then(() => (stopped = true));
  const reason = new Error('removed');
  assert.equal(stops.abort('c1', reason), true);
  assert.equal(aborted, reason);
  await new Promise((r) => setImmediate(r));
  assert.equal(stopped, false, 'not before the stop part is over');
  release();
  assert.equal(await run, 'done');
  assert.equal(stopped, true);
  assert.equal(stops.get('c1'), undefined, 'unregistered at the end');
});
