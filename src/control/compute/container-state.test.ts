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
