import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTtl } from './agents.js';

test('agent join-token --ttl takes seconds, minutes or hours', () => {
  assert.deepEqual(['90', '90s', '10m', '1h'].map(parseTtl), [90, 90, 600, 3600]);
  for (const bad of ['', '10d', '-1m', '1.5h', 'm']) assert.throws(() => parseTtl(bad), { code: 'InvalidArgument' }, bad);
});
