import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  OUTPUT_OPTION, UsageError, helpText, parseArgs, parseEnvFile, parseLabels, parseRestart, parseSize, resolveEnv, type CommandSpec,
} from './args.js';
import { COMMANDS, resolveCommand } from './cli.js';
import { createBody } from './commands/containers.js';

const run: CommandSpec = {
  name: 'run', usage: 'IMAGE [CMD...]', summary: 'run', stopAtPositional: true, minArgs: 1,
  options: [
    { name: 'detach', short: 'd', type: 'boolean', description: 'detach' },
    { name: 'interactive', short: 'i', type: 'boolean', description: 'i' },
    { name: 'tty', short: 't', type: 'boolean', description: 't' },
    { name: 'env', short: 'e', type: 'list', description: 'env' },
    { name: 'memory', short: 'm', type: 'string', description: 'mem' },
    { name: 'cpus', type: 'number', description: 'cpus' },
    { name: 'pids-limit', type: 'number', integer: true, description: 'pids' },
    { name: 'restart', type: 'string', description: 'restart', default: 'no' },
    OUTPUT_OPTION,
  ],
  run: async () => 0,
};
const ls: CommandSpec = { ...run, name: 'ls', stopAtPositional: false, minArgs: 0, maxArgs: 2 };

test('options stop at the first positional, so the container gets its own flags', () => {
  const p = parseArgs(run, ['-d', '--env', 'A=1', '-e', 'B=2', '--memory=64m', 'busybox', 'ls', '-l', '--all', '-e', 'C=3']);
  assert.equal(p.opts.detach, true);
  assert.deepEqual(p.opts.env, ['A=1', 'B=2'], 'repeated options accumulate; the ones after IMAGE belong to the container');
  assert.equal(p.opts.memory, '64m');
  assert.equal(p.opts.restart, 'no', 'default applied');
  assert.equal(p.opts.interactive, false, 'booleans default to false');
  assert.deepEqual(p.args, ['busybox', 'ls', '-l', '--all', '-e', 'C=3']);
  assert.equal(parseArgs(run, ['busybox', '--help']).help, undefined, '--help after IMAGE is the container\'s');
});

test('without stopAtPositional options may follow positionals', () => {
  const p = parseArgs(ls, ['a', '-d', 'b', '--cpus', '0.5']);
  assert.deepEqual(p.args, ['a', 'b']);
  assert.equal(p.opts.detach, true);
  assert.equal(p.opts.cpus, 0.5);
});

test('grouped short booleans, a value glued to a short option, -- and a lone -', () => {
  const p = parseArgs(run, ['-itd', '-m512m', '--', '-image-like', '-x']);
  assert.equal(p.opts.detach, true);
  assert.equal(p.opts.interactive, true);
  assert.equal(p.opts.tty, true);
  assert.equal(p.opts.memory, '512m');
  assert.deepEqual(p.args, ['-image-like', '-x']);
  assert.equal(parseArgs(run, ['-dm', '1g', 'img']).opts.memory, '1g', 'a value option ends a group and takes the next word');
  assert.deepEqual(parseArgs(ls, ['-']).args, ['-']);
  assert.equal(parseArgs(run, ['--detach=false', 'x']).opts.detach, false);
});

test('--help and -h anywhere before the first positional', () => {
  assert.equal(parseArgs(run, ['-d', '--help']).help, true);
  assert.equal(parseArgs(run, ['-h']).help, true, 'even when the required arguments are missing');
  assert.equal(parseArgs(ls, ['a', '-h']).help, true);
});

test('usage errors are clear', () => {
  const usage = (argv: string[], re: RegExp, spec = run) => assert.throws(() => parseArgs(spec, argv), (e: unknown) => e instanceof UsageError && re.test(e.message), re.source);
  usage(['--nope', 'x'], /unknown option --nope/);
  usage(['-dz', 'x'], /unknown option -z \(in -dz\)/);
  usage(['--cpus', 'lots', 'x'], /--cpus needs a number, got "lots"/);
  usage(['--pids-limit', '1.5', 'x'], /whole number/);
  usage(['--memory'], /--memory needs a value/);
  usage(['-d'], /at least 1 argument/);
  usage(['--output', 'yaml', 'x'], /must be one of table, json/);
  usage(['a', 'b', 'c'], /at most 2 arguments/, ls);
  usage(['--detach=maybe', 'x'], /takes no value/);
});

test('long aliases: --format is --output', () => {
  assert.equal(parseArgs(ls, ['--format', 'json']).opts.output, 'json');
  assert.equal(parseArgs(ls, ['-o', 'table']).opts.output, 'table');
  assert.equal(parseArgs(ls, ['--format=json']).opts.output, 'json');
});

test('help lists every option of every command, with usage', () => {
  const h = helpText(run);
  for (const o of run.options) assert.ok(h.includes(`--${o.name}`), o.name);
  assert.match(h, /repeatable/);
  assert.match(h, /--format FORMAT/);
  assert.match(h, /^Usage: nimbus run \[OPTIONS\] IMAGE \[CMD\.\.\.\]/);
  for (const c of COMMANDS) {
    const text = helpText(c);
    assert.ok(text.startsWith(`Usage: nimbus ${c.name}`), c.name);
    for (const o of c.options) {
      assert.ok(text.includes(`--${o.name}`), `${c.name} --${o.name}`);
      if (o.short) assert.ok(text.includes(`-${o.short}, --${o.name}`), `${c.name} -${o.short}`);
    }
  }
});

test('every command of the brief exists; aliases resolve', () => {
  const names = ['image pull', 'image ls', 'image inspect', 'image rm', 'image import', 'image prune', 'run', 'create', 'start', 'stop', 'kill', 'restart',
    'pause', 'unpause', 'rm', 'ps', 'inspect', 'logs', 'exec', 'stats', 'wait', 'info', 'version', 'events', 'operation ls', 'operation show', 'operation wait'];
  for (const n of names) assert.equal(resolveCommand(n.split(' '))?.spec.name, n, n);
  assert.equal(resolveCommand(['pull', 'busybox'])?.spec.name, 'image pull');
  assert.equal(resolveCommand(['pull', 'busybox'])?.consumed, 1);
  assert.equal(resolveCommand(['images'])?.spec.name, 'image ls');
  assert.equal(resolveCommand(['image', 'ls', '-q'])?.consumed, 2);
  assert.equal(resolveCommand(['run', 'rm'])?.spec.name, 'run', 'a one-word command is not confused by its first argument');
  assert.ok(new Set(COMMANDS.map((c) => c.name)).size === COMMANDS.length, 'no duplicate names');
});

test('sizes', () => {
  assert.equal(parseSize('64m'), 64 * 1024 * 1024);
  assert.equal(parseSize('64M'), 64 * 1024 * 1024);
  assert.equal(parseSize('1g'), 1024 ** 3);
  assert.equal(parseSize('1.5g'), 1.5 * 1024 ** 3);
  assert.equal(parseSize('512k'), 512 * 1024);
  assert.equal(parseSize('512kb'), 512 * 1024);
  assert.equal(parseSize('1024'), 1024);
  assert.equal(parseSize('100b'), 100);
  assert.equal(parseSize('2MiB'), 2 * 1024 * 1024);
  for (const bad of ['lots', '', '-1m', '1x', 'm', '1.2.3g', '10bb']) assert.throws(() => parseSize(bad), UsageError, bad);
  assert.throws(() => parseSize('lots'), /invalid size "lots".*64m/);
});

test('restart policies', () => {
  assert.deepEqual(parseRestart('no'), { name: 'no' });
  assert.deepEqual(parseRestart('on-failure'), { name: 'on-failure' });
  assert.deepEqual(parseRestart('on-failure:3'), { name: 'on-failure', maxRetries: 3 });
  assert.deepEqual(parseRestart('always'), { name: 'always' });
  assert.deepEqual(parseRestart('unless-stopped'), { name: 'unless-stopped' });
  for (const bad of ['sometimes', 'always:3', 'on-failure:x', 'on-failure:-1', 'on-failure:1.5', 'on-failure:1:2', '']) assert.throws(() => parseRestart(bad), UsageError, bad);
});

test('environment: K=V as given, K alone from this shell (dropped when unset), env files', () => {
  assert.deepEqual(resolveEnv(['A=1', 'HOME', 'UNSET_VAR', 'B='], { HOME: '/root' }), ['A=1', 'HOME=/root', 'B=']);
  assert.throws(() => resolveEnv(['=x'], {}), UsageError);
  assert.deepEqual(parseEnvFile('# comment\nA=1\n\n  B=two words  \r\nC\n'), ['A=1', 'B=two words', 'C']);
  assert.deepEqual(parseLabels(['a=b', 'c', 'd=e=f']), { a: 'b', c: '', d: 'e=f' });
});

test('run/create options become the POST /containers body', () => {
  const spec = resolveCommand(['run'])!.spec;
  const p = parseArgs(spec, ['--name', 'web', '-e', 'A=1', '-e', 'SHELLVAR', '--env-file', 'f.env', '-w', '/srv', '-u', '1000:1000', '--entrypoint', '/bin/sh',
    '-m', '64m', '--cpus', '0.5', '--pids-limit', '50', '--restart', 'on-failure:3', '--rm', '--runtime', 'crun', '--hostname', 'h',
    '-l', 'tier=web', '--stop-signal', 'SIGUSR1', '--stop-timeout', '3', 'busybox', 'echo', '-n', 'hi']);
  const body = createBody(p.opts, p.args, { SHELLVAR: 'x' }, () => 'FROMFILE=1\n');
  assert.deepEqual(body, {
    image: 'busybox', cmd: ['echo', '-n', 'hi'], name: 'web', env: ['FROMFILE=1', 'A=1', 'SHELLVAR=x'], workdir: '/srv', user: '1000:1000',
    entrypoint: ['/bin/sh'], memoryBytes: 64 * 1024 * 1024, cpus: 0.5, pidsLimit: 50, restart: { name: 'on-failure', maxRetries: 3 },
    autoRemove: true, runtime: 'crun', hostname: 'h', labels: { tier: 'web' }, stopSignal: 'SIGUSR1', stopTimeout: 3,
  });
  const minimal = createBody(parseArgs(spec, ['busybox']).opts, ['busybox'], {});
  assert.deepEqual(minimal, { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} });
  assert.throws(() => createBody(parseArgs(spec, ['-m', 'big', 'x']).opts, ['x'], {}), /invalid size "big"/);
  assert.throws(() => createBody(parseArgs(spec, ['--cpus', '0', 'x']).opts, ['x'], {}), /--cpus must be more than 0/);
  assert.throws(() => parseArgs(spec, ['--runtime', 'kata', 'x']), /runc, crun/);
  const logged = createBody(parseArgs(spec, ['--log-opt', 'max-size=10m', '--log-opt', 'max-file=3', 'x']).opts, ['x'], {});
  assert.deepEqual(logged.log, { maxSizeBytes: 10 * 1024 * 1024, maxFiles: 3 });
  assert.throws(() => createBody(parseArgs(spec, ['--log-opt', 'compress=true', 'x']).opts, ['x'], {}), /unknown --log-opt/);
  assert.throws(() => createBody(parseArgs(spec, ['--log-opt', 'max-file=two', 'x']).opts, ['x'], {}), /whole number/);
  // -p without a host port and -P: the host chooses (hostPort 0)
  const pub = createBody(parseArgs(spec, ['-P', '-p', '80', '-p', '127.0.0.1::53/udp', '-p', '8080:81', 'x']).opts, ['x'], {});
  assert.deepEqual(pub.ports, [
    { protocol: 'tcp', hostPort: 0, containerPort: 80 }, { protocol: 'udp', hostIp: '127.0.0.1', hostPort: 0, containerPort: 53 }, { protocol: 'tcp', hostPort: 8080, containerPort: 81 },
  ]);
  assert.equal(pub.publishAll, true);
  assert.throws(() => createBody(parseArgs(spec, ['-p', '127.0.0.1:80', 'x']).opts, ['x'], {}), /invalid -p/);
  assert.throws(() => createBody(parseArgs(spec, ['-p', '0:80', 'x']).opts, ['x'], {}), /ports are 1-65535/);
});
