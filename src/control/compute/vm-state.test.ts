import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertVmTransition, canTransition } from './vm-state.js';

test('VM transitions: save and restore, stop and start, removal from anywhere but removing', () => {
  assert.ok(canTransition('running', 'saved'));
  assert.ok(canTransition('saved', 'running'));
  assert.ok(canTransition('paused', 'stopped'));
  assert.ok(!canTransition('saved', 'paused'), 'a saved VM has no vCPUs to pause');
  assert.ok(!canTransition('created', 'paused'));
  assert.ok(!canTransition('stopped', 'saved'));
  assert.ok(!canTransition('removing', 'running'));
  assert.throws(() => assertVmTransition('v', 'stopped', 'paused', 'pause'), { code: 'Conflict', message: /cannot pause VM v: it is stopped/ });
});
