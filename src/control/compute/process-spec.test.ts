import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mergeEnv, processSpecFor } from './process-spec.js';
import type { ContainerConfig } from '../../store/records.js';

const base: ContainerConfig = { image: 'x', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} };

test('image cmd is used when the user gives none; user cmd replaces it', () => {
  const img = { config: { Entrypoint: ['/entry'], Cmd: ['serve'], Env: ['A=1'], WorkingDir: '/app', User: 'app' } };
  assert.deepEqual(processSpecFor(img, base).args, ['/entry', 'serve']);
  assert.deepEqual(processSpecFor(img, { ...base, cmd: ['debug'] }).args, ['/entry', 'debug']);
  const s = processSpecFor(img, { ...base, entrypoint: ['sh'], env: ['A=2', 'B=3'], workdir: '/tmp', user: '1000' });
  assert.deepEqual(s.args, ['sh'], 'a user entrypoint drops the image cmd');
  assert.deepEqual(s.env.slice(1), ['A=2', 'B=3']);
  assert.ok(s.env[0]!.startsWith('PATH='));
  assert.equal(s.cwd, '/tmp');
  assert.equal(s.user, '1000');
});

test('no command at all is a clear error', () => {
  assert.throws(() => processSpecFor({}, base), { code: 'InvalidArgument', message: /no command specified/ });
});

test('env merge keeps order and overrides by key', () => {
  assert.deepEqual(mergeEnv(['A=1', 'B=2'], ['B=3', 'C']), ['A=1', 'B=3', 'C=']);
  assert.throws(() => mergeEnv([], ['=x']), { code: 'InvalidArgument' });
});
