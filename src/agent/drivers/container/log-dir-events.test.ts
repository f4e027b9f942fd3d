import assert from 'node:assert/strict';
import { appendFileSync, closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { until } from '../../../../test/helpers/wait.js';
import { LogDirEvents } from './log-dir-events.js';

let base: string;
before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-logdir-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

const lstatOrUndefined = (p: string) => lstat(p).catch(() => undefined);

function recorder() {
  const changed: string[] = [];
  const failed: string[] = [];
  const degraded: string[] = [];
  const events = new LogDirEvents({
    changed: (k) => changed.push(k),
    failed: (k, why) => failed.push(`${k}: ${why}`),
    degraded: (why) => degraded.push(why),
  });
  return { events, changed, failed, degraded };
}


test("conmon's rotation (a created file renamed over the log) is told; writes, and names without the prefix, are not", async () => {
  const dir = await mkdtemp(path.join(base, 'a-'));
  const log = path.join(dir, 'ctr.log');
  await writeFile(log, '');
  const r = recorder();
  try {
    await r.events.ready(); // the helper holds its descriptor before any watch is asked for
    assert.ok(r.events.helperPid(), 'a helper runs once ready');
    r.events.add('c1', dir, 'ctr.log');
    await until(() => r.changed.length === 1, 'the watch in place', 5_000);
    // a fast writer: 20,000 appends, as conmon writes records; the helper does not even wake
    const pid = r.events.helperPid()!;
    const wakeups = async () => Number(/voluntary_ctxt_switches:\s*(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))![1]);
    const before = await wakeups();
    const fd = openSync(log, 'a');
    for (let i = 0; i < 20_000; i++) writeSync(fd, `2026-12-07T00:00:00Z stdout F line ${i}\n`);
    closeSync(fd);
    await sleep(100);
    assert.ok((await wakeups()) - before <= 3, `the helper woke ${(await wakeups()) - before} times for writes`);
    await writeFile(path.join(dir, 'state.json.tmp'), '{}');
    await rename(path.join(dir, 'state.json.tmp'), path.join(dir, 'state.json'));
    await sleep(200);
    assert.deepEqual(r.changed, ['c1'], 'no event for writes or other names');
    // the rotation: conmon opens <log>.tmp (through our symlink: creates ctr.log.3) and renames it over the log
    await symlink('ctr.log.3', `${log}.tmp`);
    await until(() => r.changed.length === 2, 'the symlink told', 5_000);
    appendFileSync(`${log}.tmp`, 'x\n');
    await rename(`${log}.tmp`, log);
    await until(() => r.changed.length >= 3, 'the rotation told', 5_000);
    assert.ok(r.changed.every((k) => k === 'c1'));
    assert.deepEqual([r.failed, r.degraded], [[], []]);
    // removed: nothing more
    r.events.remove('c1');
    await sleep(50);
    const seen = r.changed.length;
    await writeFile(path.join(dir, 'ctr.log.9'), '');
    await sleep(200);
    assert.equal(r.changed.length, seen);
    await r.events.close();
    assert.ok(!existsSync(`/proc/${pid}`), 'the helper ended and was reaped');
  } finally {
    await r.events.close();
  }
});

test("with prepareNext the helper makes the next generation's symlink the moment conmon renames over the log", async () => {
  const dir = await mkdtemp(path.join(base, 'p-'));
  const other = await mkdtemp(path.join(base, 'q-'));
  const log = path.join(dir, 'ctr.log');
  const r = recorder();
  try {
    // the log's two symlinks made before the watch: their creation is no event to wait out (it
    // could arrive after `told` below and pass for the rotation's)
    await symlink('ctr.log.1', log);
    await symlink('ctr.log.3', `${log}.tmp`);
    await r.events.ready();
    r.events.add('c1', dir, 'ctr.log', { prepareNext: true });
    r.events.add('c2', other, 'ctr.log'); // not asked: only told
    await until(() => r.changed.length === 2, 'the watches in place', 5_000);
    // conmon's rotation through our symlink (ctr.log.tmp -> ctr.log.3): open creates .3, the rename moves the symlink
    const rotate = async (d: string) => {
      appendFileSync(path.join(d, 'ctr.log.tmp'), 'x\n');
      await rename(path.join(d, 'ctr.log.tmp'), path.join(d, 'ctr.log'));
    };
    const told = r.changed.length;
    await rotate(dir);
    await until(() => r.changed.length > told, 'the rotation told', 5_000);
    // prepared before the worker was told: no wait needed
    assert.equal(await readlink(`${log}.tmp`), 'ctr.log.5');
    assert.ok(!existsSync(path.join(dir, 'ctr.log.5')), 'a dangling symlink: conmon creates the file');
    // a rotation without our symlink (a plain file renamed over): nothing prepared, the pass names it first
    await rm(`${log}.tmp`);
    await writeFile(`${log}.tmp`, 'plain\n');
    const told2 = r.changed.length;
    await rename(`${log}.tmp`, log);
    await until(() => r.changed.length > told2, 'the plain rotation told', 5_000);
    await sleep(50);
    assert.ok(!existsSync(`${log}.tmp`) && !(await lstatOrUndefined(`${log}.tmp`)), 'no symlink next to a plain log');
    // never a name that exists (conmon would truncate it)
    await rm(log);
    await symlink('ctr.log.7', log);
    await writeFile(path.join(dir, 'ctr.log.9'), 'kept\n');
    await symlink('ctr.log.7', `${log}.tmp`);
    const told3 = r.changed.length;
    await rename(`${log}.tmp`, log);
    await until(() => r.changed.length > told3, 'told', 5_000);
    await sleep(50);
    assert.equal(await lstatOrUndefined(`${log}.tmp`), undefined, 'ctr.log.9 exists: left to the pass');
    assert.equal(await readFile(path.join(dir, 'ctr.log.9'), 'utf8'), 'kept\n');
    // a key added without the option is only told
    await symlink('ctr.log.1', path.join(other, 'ctr.log'));
    await symlink('ctr.log.3', path.join(other, 'ctr.log.tmp'));
    const told4 = r.changed.length;
    await rotate(other);
    await until(() => r.changed.filter((k) => k === 'c2').length > 1 && r.changed.length > told4, 'c2 told', 5_000);
    await sleep(50);
    assert.equal(await lstatOrUndefined(path.join(other, 'ctr.log.tmp')), undefined);
    assert.deepEqual([r.failed, r.degraded], [[], []]);
  } finally {
    await r.events.close();
  }
});

test('two keys in one directory each get their own names; a missing directory fails its key alone; a removed directory ends its watch', async () => {
  const dir = await mkdtemp(path.join(base, 'b-'));
  const r = recorder();
  try {
    r.events.add('one', dir, 'one.log');
    r.events.add('two', dir, 'two.log');
    r.events.add('none', path.join(dir, 'missing'), 'x.log');
    await until(() => r.changed.length === 2 && r.failed.length === 1, 'both watches and the failure', 5_000);
    assert.match(r.failed[0]!, /^none: .*No such file/);
    await writeFile(path.join(dir, 'two.log.1'), '');
    await until(() => r.changed.length === 3, 'two told', 5_000);
    assert.equal(r.changed[2], 'two');
    r.events.remove('two');
    await writeFile(path.join(dir, 'one.log.1'), '');
    await writeFile(path.join(dir, 'two.log.2'), '');
    await until(() => r.changed.length === 4, 'one told', 5_000);
    await sleep(100);
    assert.deepEqual(r.changed.slice(3), ['one'], 'the remaining key keeps the shared watch');
    await rm(dir, { recursive: true });
    const other = await mkdtemp(path.join(base, 'c-'));
    r.events.add('three', other, 'ctr.log');
    await until(() => r.changed.at(-1) === 'three', 'a later watch still works', 5_000);
    await writeFile(path.join(other, 'ctr.log.1'), '');
    await until(() => r.changed.filter((k) => k === 'three').length === 2, 'three told', 5_000);
    assert.deepEqual(r.degraded, []);
  } finally {
    await r.events.close();
  }
});

test('when the helper dies, fs.watch takes over every watched directory and says so', async () => {
  const dir = await mkdtemp(path.join(base, 'd-'));
  await mkdir(path.join(dir, 'sub'));
  const r = recorder();
  try {
    r.events.add('k', dir, 'ctr.log');
    await until(() => r.changed.length === 1, 'the watch in place', 5_000);
    const pid = r.events.helperPid();
    assert.ok(pid, 'a helper runs');
    process.kill(pid, 'SIGKILL');
    await until(() => r.degraded.length === 1, 'the fallback', 5_000);
    assert.match(r.degraded[0]!, /SIGKILL/);
    const n = r.changed.length;
    await writeFile(path.join(dir, 'ctr.log.5'), '');
    await until(() => r.changed.length > n, 'told through fs.watch', 5_000);
    assert.equal(r.events.helperPid(), undefined);
  } finally {
    await r.events.close();
  }
});
