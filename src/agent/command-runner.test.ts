import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CommandRunner } from './command-runner.js';
import { findBinary } from './drivers/container/oci-runtime.js';

test('command runner: output and exit status come back per request, in order, from a long-lived shell', async (t) => {
  const r = new CommandRunner(2);
  t.after(() => r.close());
  const ok = await r.run('ip', ['-batch', '-'], 'link show dev lo\n');
  assert.equal(ok.code, 0);
  assert.match(ok.output, /^1: lo: /);
  // a failing command reports its status and its message (stderr is part of the output)
  const bad = await r.run('ip', ['-batch', '-'], 'link show dev nimbus-no-such-device\n');
  assert.notEqual(bad.code, 0);
  assert.match(bad.output, /does not exist|Cannot find device/);
  // many at once: each gets its own answer
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => r.run('ip', ['-batch', '-'], i % 2 ? 'link show dev lo\n' : 'link show dev nimbus-nope\n')));
  many.forEach((m, i) => assert.equal(m.code === 0, i % 2 === 1, `request ${i}: ${m.output}`));
  // input with shell syntax reaches the program untouched (a quoted here-document)
  const nft = await r.run('nft', ['-c', '-f', '-'], 'table inet nimbus_runner_check { comment "$(touch /tmp/nimbus-pwned) `id`"; }\n');
  assert.equal(nft.code, 0, nft.output); // -c: checked, not applied
  assert.ok(!(await import('node:fs')).existsSync('/tmp/nimbus-pwned'), 'the shell expanded nothing');
});

test('command runner: only ip and nft, with arguments that need no quoting', (t) => {
  const r = new CommandRunner(1);
  t.after(() => r.close());
  assert.throws(() => r.run('sh', ['-c', 'true']), /does not run sh/);
  assert.throws(() => r.run('ip', ['link', 'show', 'dev', 'lo; reboot']), /unsafe argument/);
  assert.throws(() => r.run('ip', ['$(id)']), /unsafe argument/);
});

test('command runner: a shell that dies fails its request, and the next request gets a new shell', async (t) => {
  const r = new CommandRunner(1);
  t.after(() => r.close());
  assert.equal((await r.run('ip', ['-batch', '-'], 'link show dev lo\n')).code, 0);
  r.close();
  assert.equal((await r.run('ip', ['-batch', '-'], 'link show dev lo\n')).code, 0);
});

test('command runner: a command past its timeout is killed with its shell; the next request gets a new shell', async (t) => {
  const r = new CommandRunner(1);
  t.after(() => r.close());
  // `ip monitor` runs until it is killed
  await assert.rejects(r.run('ip', ['monitor', 'link'], '', undefined, { timeoutMs: 200 }), /did not finish within 200 ms/);
  const after = await r.run('ip', ['-batch', '-'], 'link show dev lo\n', undefined, { timeoutMs: 10_000 });
  assert.equal(after.code, 0, after.output);
});

test('command runner: the OCI runtimes by absolute path, nothing else by path', async (t) => {
  const r = new CommandRunner(1);
  const root = mkdtempSync(path.join(tmpdir(), 'nimbus-runner-')); // runc list makes its root
  t.after(() => {
    r.close();
    rmSync(root, { recursive: true, force: true });
  });
  assert.throws(() => r.run('/bin/sh', ['-c', 'true']), /does not run \/bin\/sh/);
  assert.throws(() => r.run('runc', ['list']), /does not run runc/, 'a runtime only by the path the agent resolved');
  assert.throws(() => r.run('/tmp/x y/runc', ['list']), /does not run/);
  const res = await r.run('/usr/sbin/runc', ['--root', root, 'list']);
  assert.equal(res.code, 0, res.output);
});

test('command runner: launch starts only a monitor by absolute path, its output appended to a file, fd 3 opened for it', async (t) => {
  const r = new CommandRunner(1);
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-launch-'));
  t.after(() => {
    r.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const conmon = await findBinary('conmon');
  const opts = { cwd: dir, env: { _OCI_SYNCPIPE: '3' }, stderrFile: path.join(dir, 'err'), fd3: path.join(dir, 'sync') };
  assert.throws(() => r.launch('/bin/sh', ['-c', 'true'], opts), /does not launch \/bin\/sh/);
  assert.throws(() => r.launch('conmon', ['--version'], opts), /does not launch/, 'only by the path the agent resolved');
  assert.throws(() => r.launch('/usr/bin/conmon', ['$(id)'], opts), /does not launch/);
  assert.throws(() => r.launch('/usr/bin/conmon', [], { ...opts, env: { 'A;B': '1' } }), /does not launch/);
  assert.throws(() => r.launch('/usr/bin/conmon', [], { ...opts, env: { A: '$(id)' } }), /does not launch/);
  assert.throws(() => r.launch('/usr/bin/conmon', [], { ...opts, fd3: `${dir}/a b` }), /does not launch/);
  if (!conmon) return t.skip('no conmon here');
  const ok = await r.launch(conmon, ['--version'], opts);
  assert.equal(ok.code, 0, ok.output);
  assert.equal(ok.output, '', 'its stdout went to the file, not to the runner');
  assert.match(readFileSync(opts.stderrFile, 'utf8'), /conmon version/);
  assert.ok(existsSync(opts.fd3), 'fd 3 was opened on the given path');
  const bad = await r.launch(conmon, ['--no-such-option'], opts);
  assert.notEqual(bad.code, 0);
  assert.match(readFileSync(opts.stderrFile, 'utf8'), /conmon version[^]*Unknown option --no-such-option/, 'what it said appended to the file');
  const noDir = await r.launch(conmon, ['--version'], { ...opts, cwd: path.join(dir, 'missing') });
  assert.notEqual(noDir.code, 0);
  assert.match(noDir.output, /can't cd|No such file/, "the shell's own complaint comes back as output");
});
