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

test('checkProcess: NUL and control characters, execve sizes and uid_t ranges are refused, naming the field', async () => {
  const { checkProcess, checkUser, MAX_ARG_STRLEN, MAX_ARGV_ENV_BYTES } = await import('./process-spec.js');
  const p = (over: Partial<{ args: string[]; env: string[]; cwd: string; user: string }>) => ({ args: ['sh'], env: ['PATH=/bin'], cwd: '/', user: '0', ...over });
  checkProcess(p({ args: ['sh', '-c', 'echo a\n\techo b\r'], env: ['CERT=line1\nline2'] })); // scripts and values carry newlines and tabs
  assert.throws(() => checkProcess(p({ args: ['sh', 'a\0b'] })), { code: 'InvalidArgument', message: /^cmd: .*NUL/ });
  assert.throws(() => checkProcess(p({ args: ['s\nh'] })), { code: 'InvalidArgument', message: /^cmd: the program name/ });
  assert.throws(() => checkProcess(p({ args: [''] })), { code: 'InvalidArgument', message: /^cmd: the program name is empty/ });
  assert.throws(() => checkProcess(p({ env: ['A=\x07'] })), { code: 'InvalidArgument', message: /^env: / });
  assert.throws(() => checkProcess(p({ cwd: '/a\nb' })), { code: 'InvalidArgument', message: /^workdir / });
  checkProcess(p({ args: ['sh', 'x'.repeat(MAX_ARG_STRLEN - 1)] }));
  assert.throws(() => checkProcess(p({ args: ['sh', 'x'.repeat(MAX_ARG_STRLEN)] })), { code: 'InvalidArgument', message: /one entry is 131073 bytes/ });
  const many = Array.from({ length: Math.ceil(MAX_ARGV_ENV_BYTES / MAX_ARG_STRLEN) + 1 }, () => `A=${'x'.repeat(MAX_ARG_STRLEN - 10)}`);
  assert.throws(() => checkProcess(p({ env: many })), { code: 'InvalidArgument', message: /together; at most 1048576/ });
  for (const ok of ['0', '2147483647:2147483647', 'app', 'app:wheel', '1000:staff']) checkUser(ok);
  for (const bad of ['4294967295', '0:4294967295', '2147483648', '99999999999999999999', 'a:b:c', ':0', '0:', 'a b', 'x\0']) {
    assert.throws(() => checkUser(bad), { code: 'InvalidArgument' }, bad);
  }
});
