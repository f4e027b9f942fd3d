import assert from 'node:assert/strict';
import { appendFileSync, closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
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
