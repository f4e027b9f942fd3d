import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../../core/exec.js';
import { cgroupPaths, detectCgroupLayout, removeCgroup, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { conmonArgs, launchConmon, parseK8sLog, parseK8sLogLine, parseSyncMessage, readExitFile } from './conmon.js';
import { readK8sLog } from './container-logs.js';
import { FifoStock } from './fifo-stock.js';
import { findBinary } from './oci-runtime.js';
import { buildOciSpec, readHardLimits } from './oci-spec.js';
import { makeBusyboxRootfs } from './rootfs-test-support.js';

test('k8s-file lines', () => {
  assert.deepEqual(parseK8sLogLine('2026-11-22T09:06:41.245747670+00:00 stdout F hi there'), {
    time: '2026-11-22T09:06:41.245747670+00:00',
    stream: 'stdout',
    line: 'hi there',
  });
  assert.deepEqual(parseK8sLogLine('2026-11-22T09:06:41Z stderr P part'), {
    time: '2026-11-22T09:06:41Z',
    stream: 'stderr',
    line: 'part',
    partial: true,
  });
  assert.deepEqual(parseK8sLogLine('2026-11-22T09:06:41Z stdout F '), { time: '2026-11-22T09:06:41Z', stream: 'stdout', line: '' });
  assert.deepEqual(parseK8sLogLine('2026-11-22T09:06:41Z stdout F'), { time: '2026-11-22T09:06:41Z', stream: 'stdout', line: '' });
  assert.equal(parseK8sLogLine('garbage'), undefined);
  assert.equal(parseK8sLogLine('t stdin F x'), undefined);
  assert.equal(parseK8sLogLine('t stdout X x'), undefined);
  // an incomplete final line is not a record yet
  assert.equal(parseK8sLog('t stdout F a\nt stdout F b\nt stdout F c').length, 2);
});

test('sync pipe messages and the command line', () => {
  assert.deepEqual(parseSyncMessage('{"data": 4547}'), { data: 4547 });
  assert.deepEqual(parseSyncMessage('{"data": -1, "message": "boom"}'), { data: -1, message: 'boom' });
  assert.throws(() => parseSyncMessage('{"x":1}'));
  const args = conmonArgs({
    conmonPath: '/usr/bin/conmon', id: 'c1', name: 'web', runtimePath: '/usr/sbin/runc', runtimeArgs: ['--root=/r'],
    bundle: '/b', containerPidFile: '/b/pid', conmonPidFile: '/b/cpid', logPath: '/b/log', exitDir: '/e', socketDir: '/s',
    persistDir: '/p', logSizeMax: 1048576,
  });
  assert.deepEqual(args, [
    '--api-version', '1', '-c', 'c1', '-u', 'c1', '-n', 'web', '-r', '/usr/sbin/runc', '-b', '/b', '-p', '/b/pid',
    '-P', '/b/cpid', '-l', 'k8s-file:/b/log', '--exit-dir', '/e', '--socket-dir-path', '/s', '--log-level', 'error',
    '--log-size-max', '1048576', '--persist-dir', '/p', '--runtime-arg', '--root=/r',
  ]);
});

test('tail, follow until exited-and-drained, abort, exit file', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-conmon-'));
  try {
    const log = path.join(dir, 'ctr.log');
    const lines = Array.from({ length: 5000 }, (_, i) => `2026-01-01T00:00:00Z stdout F line${i}\n`).join('');
    await writeFile(log, lines);
    for await (const _ of readK8sLog(log, { tail: 0 })) assert.fail('tail 0: no records');
    const all: string[] = [];
    for await (const r of readK8sLog(log, { tail: 3 })) all.push(r.line);
    assert.deepEqual(all, ['line4997', 'line4998', 'line4999']);
    let n = 0;
    for await (const _ of readK8sLog(log, {})) n++;
    assert.equal(n, 5000);
    assert.equal((await (async () => { const a = []; for await (const r of readK8sLog(log, { tail: 10000 })) a.push(r); return a; })()).length, 5000);

    // follow: records written later arrive; stops once "exited" and drained
    const small = path.join(dir, 'f.log');
    await writeFile(small, '2026-01-01T00:00:00Z stdout F a\n');
    let exited = false;
    const got: string[] = [];
    const p = (async () => {
      for await (const r of readK8sLog(small, { follow: true, isExited: async () => exited, pollMs: 20 })) got.push(r.line);
    })();
    await new Promise((r) => setTimeout(r, 100));
    await appendFile(small, '2026-01-01T00:00:01Z stderr P b1');
    await appendFile(small, '\n2026-01-01T00:00:01Z stdout F c\n');
    exited = true;
    await p;
    assert.deepEqual(got, ['a', 'b1', 'c']);

    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const got2: string[] = [];
    for await (const r of readK8sLog(small, { follow: true, signal: ac.signal, tail: 1 })) got2.push(r.line);
    assert.deepEqual(got2, ['c']);
    // a missing log without follow is empty
    for await (const _ of readK8sLog(path.join(dir, 'nope'), {})) assert.fail('no records');

    await writeFile(path.join(dir, 'exit'), '137');
    assert.equal((await readExitFile(path.join(dir, 'exit')))?.code, 137);
    assert.equal(await readExitFile(path.join(dir, 'absent')), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('conmon launched from a host shell (a FIFO for its sync pipe) and spawned by nimbusd (pipes): the same pid, the same failure', async (t) => {
  const conmon = await findBinary('conmon');
  const runc = await findBinary('runc');
  if (!conmon || !runc) return t.skip('needs conmon and runc');
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-conmon-launch-'));
  const layout = await detectCgroupLayout();
  const parent = `/nimbus-conmon-launch-${process.pid}`;
  const root = path.join(dir, 'runtime');
  const ids: string[] = [];
  const fifos = new FifoStock(path.join(dir, 'fifos'), '0600');
  t.after(async () => {
    for (const id of ids) await run(runc, ['--root', root, 'delete', '--force', id]);
    for (const id of ids) await removeCgroup(cgroupPaths(layout, `${parent}/${id}`)).catch(() => undefined);
    await removeCgroupParentIfEmpty(layout, parent);
    fifos.clear();
    await rm(dir, { recursive: true, force: true });
  });
  const rootfs = path.join(dir, 'rootfs');
  await makeBusyboxRootfs(rootfs, ['sleep']);
  const hardLimits = await readHardLimits();
  const launch = async (id: string, args: string[], viaShell: boolean) => {
    ids.push(id);
    const bundle = path.join(dir, id);
    await mkdir(path.join(bundle, 'persist'), { recursive: true });
    await mkdir(path.join(bundle, 'sock'));
    const { config } = buildOciSpec(
      { id, name: id, rootfs: [], process: { args, env: ['PATH=/bin'], cwd: '/', user: '' }, resources: {} },
      { hardLimits, cgroupsPath: `${parent}/${id}`, userDb: { passwd: [], group: [] } },
    );
    await writeFile(path.join(bundle, 'config.json'), JSON.stringify({ ...config, root: { path: rootfs, readonly: true } }));
    return launchConmon({
      conmonPath: conmon, id, name: id, runtimePath: runc, runtimeArgs: [`--root=${root}`], bundle,
      containerPidFile: path.join(bundle, 'pid'), conmonPidFile: path.join(bundle, 'conmon.pid'), logPath: path.join(bundle, 'log'),
      exitDir: dir, socketDir: path.join(bundle, 'sock'), persistDir: path.join(bundle, 'persist'), stderrPath: path.join(bundle, 'conmon.err'),
      ...(viaShell ? { placeFifo: (dest: string) => fifos.place(dest) } : {}),
    });
  };
  for (const viaShell of [true, false]) {
    const how = viaShell ? 'shell' : 'spawn';
    const ok = await launch(`launch-${how}-${process.pid}`, ['sleep', '60'], viaShell);
    assert.ok(ok.pid > 0 && ok.conmonPid > 0, how);
    assert.equal((await readFile(path.join(dir, `launch-${how}-${process.pid}`, 'pid'), 'utf8')).trim(), String(ok.pid), `${how}: the pid runc wrote`);
    assert.match(await readFile(`/proc/${ok.conmonPid}/cmdline`, 'utf8'), /conmon/, `${how}: conmon runs on`);
    assert.ok(!existsSync(path.join(dir, `launch-${how}-${process.pid}`, 'persist', 'conmon-sync')), `${how}: no sync fifo left`);
    await assert.rejects(launch(`launch-${how}-bad-${process.pid}`, ['/no/such/program'], viaShell), /create launch-\S+ failed: .*no\/such\/program/, `${how}: runc's own words`);
  }
});
