import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError, helpText, parseArgs, parseRestart, parseSize, type CommandSpec } from './args.js';
import { humanSize, statusText, table } from './output.js';

const run: CommandSpec = {
  name: 'run', usage: 'IMAGE [CMD...]', summary: 'run', stopAtPositional: true, minArgs: 1,
  options: [
    { name: 'detach', short: 'd', type: 'boolean', description: 'detach' },
    { name: 'interactive', short: 'i', type: 'boolean', description: 'i' },
    { name: 'env', short: 'e', type: 'list', description: 'env' },
    { name: 'memory', short: 'm', type: 'string', description: 'mem' },
    { name: 'cpus', type: 'number', description: 'cpus' },
    { name: 'restart', type: 'string', description: 'restart', default: 'no' },
  ],
  run: async () => 0,
};

test('options stop at the first positional, so the container gets its own flags', () => {
  const p = parseArgs(run, ['-d', '--env', 'A=1', '-e', 'B=2', '--memory=64m', 'busybox', 'ls', '-l', '--all']);
  assert.equal(p.opts.detach, true);
  assert.deepEqual(p.opts.env, ['A=1', 'B=2']);
  assert.equal(p.opts.memory, '64m');
  assert.equal(p.opts.restart, 'no', 'default applied');
  assert.deepEqual(p.args, ['busybox', 'ls', '-l', '--all']);
});

test('grouped short booleans, a value glued to a short option, and --', () => {
  const p = parseArgs(run, ['-di', '-m512m', '--', '-image-like']);
  assert.equal(p.opts.detach, true);
  assert.equal(p.opts.interactive, true);
  assert.equal(p.opts.memory, '512m');
  assert.deepEqual(p.args, ['-image-like']);
});

test('usage errors are clear', () => {
  assert.throws(() => parseArgs(run, ['--nope', 'x']), (e: unknown) => e instanceof UsageError && /unknown option --nope/.test(e.message));
  assert.throws(() => parseArgs(run, ['--cpus', 'lots', 'x']), /needs a number/);
  assert.throws(() => parseArgs(run, ['--memory']), /needs a value/);
  assert.throws(() => parseArgs(run, ['-d']), /at least 1 argument/);
});

test('help lists every option', () => {
  const h = helpText(run);
  for (const o of run.options) assert.ok(h.includes(`--${o.name}`), o.name);
  assert.match(h, /repeatable/);
  assert.match(h, /^Usage: nimbus run \[OPTIONS\] IMAGE \[CMD\.\.\.\]/);
});

test('sizes and restart policies', () => {
  assert.equal(parseSize('64m'), 64 * 1024 * 1024);
  assert.equal(parseSize('1.5g'), 1.5 * 1024 ** 3);
  assert.equal(parseSize('512k'), 512 * 1024);
  assert.equal(parseSize('1024'), 1024);
  assert.equal(parseSize('2MiB'), 2 * 1024 * 1024);
  assert.throws(() => parseSize('lots'), UsageError);
  assert.deepEqual(parseRestart('on-failure:3'), { name: 'on-failure', maxRetries: 3 });
  assert.deepEqual(parseRestart('always'), { name: 'always' });
  assert.throws(() => parseRestart('sometimes'), UsageError);
  assert.throws(() => parseRestart('always:3'), UsageError);
});

test('tables align and statuses read like docker', () => {
  assert.equal(table(['A', 'LONGER'], [['xx', 'y'], ['z', 'w']]), 'A    LONGER\nxx   y\nz    w\n', 'three spaces between columns');
  assert.equal(humanSize(1053221), '1.05MB');
  const now = Date.parse('2026-01-01T00:10:00Z');
  assert.equal(statusText({ status: 'running', exitCode: null, startedAt: '2026-01-01T00:08:00Z', finishedAt: null, createdAt: '' }, now), 'Up 2 minutes');
  assert.equal(statusText({ status: 'exited', exitCode: 137, startedAt: null, finishedAt: '2026-01-01T00:09:55Z', createdAt: '' }, now), 'Exited (137) 5 seconds ago');
});
