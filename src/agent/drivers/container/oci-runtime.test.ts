import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { cgroupPaths, detectCgroupLayout, hybridCgroup2Controllers, removeCgroup, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { buildOciSpec, readHardLimits } from './oci-spec.js';
import { OciRuntime, chooseRuntime, findBinary, mapRuntimeError, probeRuntime, readRuncStateHead, releaseThroughExecFifo, runtimeMessage, writeExecFifo } from './oci-runtime.js';
import { makeBusyboxRootfs } from './rootfs-test-support.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { run } from '../../../core/exec.js';

test('runtime messages and error mapping', () => {
  assert.equal(runtimeMessage('time="2026-11-22T09:06:57Z" level=error msg="container does not exist"\n'), 'container does not exist');
  assert.equal(runtimeMessage('crun: cgroups in hybrid mode not supported\n'), 'cgroups in hybrid mode not supported');
  const m = (s: string) => mapRuntimeError('runc', 'op', 'x', `time="t" level=error msg="${s}"`, 1).code;
  assert.equal(m('container does not exist'), 'NotFound');
  assert.equal(m('container not running'), 'Conflict');
  assert.equal(m('container not paused'), 'Conflict');
  assert.equal(m('cannot start a container that has stopped'), 'Conflict');
  assert.equal(m('container with id exists: x'), 'AlreadyExists');
  assert.equal(m('something odd'), 'Internal');
  assert.equal(mapRuntimeError('crun', 'state', 'x', 'crun: error opening file `/r/x/status`: No such file or directory', 1).code, 'NotFound');
  assert.equal(mapRuntimeError('crun', 'start', 'x', 'crun: cannot open `/r/x/exec.fifo`: No such file or directory', 1).code, 'Conflict', 'a started container');
});

test("runc's state head: the first two fields read from the start; any other start parsed whole", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ocirt-head-'));
  try {
    const f = path.join(dir, 'state.json');
    await writeFile(f, JSON.stringify({ id: 'c1', init_process_pid: 42, config: { big: 'x'.repeat(50_000) } }));
    assert.deepEqual(await readRuncStateHead(f), { id: 'c1', init_process_pid: 42 });
    const other = { created: 't', id: 'c2', init_process_pid: 7 }; // another order: the whole file
    await writeFile(f, JSON.stringify(other));
    assert.deepEqual(await readRuncStateHead(f), other);
    await writeFile(f, '{"id":"c3","init_process_pid":');
    await assert.rejects(readRuncStateHead(f), SyntaxError, 'a cut file is no state');
    await assert.rejects(readRuncStateHead(path.join(dir, 'missing')), (e) => (e as NodeJS.ErrnoException).code === 'ENOENT');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('probes: runc works here; crun reports its real reason; auto choice', async () => {
  const runc = await probeRuntime('runc');
  assert.equal(runc, undefined, runc);
  const crun = await probeRuntime('crun');
  const layout = await detectCgroupLayout();
  const offered = hybridCgroup2Controllers(layout);
  if (offered.length > 0 && (await findBinary('crun'))) {
    assert.match(crun ?? '', /crun cannot run a container here: .*hybrid.*scripts\/cgroup-hybrid/);
    assert.equal(await chooseRuntime('auto'), 'runc');
    await assert.rejects(chooseRuntime('crun'), (e) => hasCode(e, 'InvalidArgument'));
  } else {
    // runc wherever it works (RUNTIME_NAMES says why); crun when asked
    assert.equal(await chooseRuntime('auto'), 'runc');
    if (crun === undefined) assert.equal(await chooseRuntime('crun'), 'crun');
  }
});

test('runc lifecycle through the wrapper (no conmon)', async () => {
  const bin = await findBinary('runc');
  assert.ok(bin);
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ocirt-'));
  const id = `ocirt-${process.pid}`;
  const parent = `/nimbus-ocirt-${process.pid}`;
  const layout = await detectCgroupLayout();
  const rt = new OciRuntime('runc', bin, path.join(dir, 'state'));
  try {
    await makeBusyboxRootfs(path.join(dir, 'rootfs'), ['sh', 'sleep', 'echo']);
    const { config } = buildOciSpec(
      { id, name: id, rootfs: [], process: { args: ['sleep', '60'], env: [], cwd: '/', user: '' }, resources: {} },
      { hardLimits: await readHardLimits(), cgroupsPath: `${parent}/${id}`, userDb: { passwd: [], group: [] } },
    );
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
    await assert.rejects(rt.state(id), (e) => hasCode(e, 'NotFound'));
    assert.deepEqual(await rt.list(), []);
    await rt.create(id, dir, path.join(dir, 'pid'));
    await assert.rejects(rt.create(id, dir, path.join(dir, 'pid')), (e) => hasCode(e, 'AlreadyExists'));
    assert.equal((await rt.state(id)).status, 'created');
    await rt.start(id);
    const st = await rt.state(id);
    assert.equal(st.status, 'running');
    assert.equal(String(st.pid), (await readFile(path.join(dir, 'pid'), 'utf8')).trim());
    // runc's own state.json begins with what forgetStopped reads (the head, not the ~34 KB whole)
    const stateFile = path.join(dir, 'state', id, 'state.json');
    const whole = JSON.parse(await readFile(stateFile, 'utf8')) as { id: string; init_process_pid: number };
    assert.deepEqual(await readRuncStateHead(stateFile), { id, init_process_pid: st.pid });
    assert.deepEqual([whole.id, whole.init_process_pid], [id, st.pid]);
    assert.deepEqual((await rt.list()).map((s) => s.id), [id]);
    await rt.pause(id);
    assert.equal((await rt.state(id)).status, 'paused');
    await assert.rejects(rt.pause(id), (e) => hasCode(e, 'Conflict'));
    await rt.resume(id);
    await assert.rejects(rt.resume(id), (e) => hasCode(e, 'Conflict'));
    await writeFile(path.join(dir, 'proc.json'), JSON.stringify({ ...config.process, args: ['sh', '-c', 'echo in; exit 3'] }));
    const child = rt.exec(id, { processFile: path.join(dir, 'proc.json') });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    const code = await new Promise((r) => child.on('close', r));
    assert.equal(code, 3);
    assert.equal(out.trim(), 'in');
    await assert.rejects(rt.delete(id), (e) => hasCode(e, 'Conflict'));
    await rt.kill(id, 'SIGKILL');
    for (let i = 0; i < 100 && (await rt.state(id)).status !== 'stopped'; i++) await new Promise((r) => setTimeout(r, 20));
    await assert.rejects(rt.kill(id, 'SIGKILL'), (e) => hasCode(e, 'Conflict'));
    await assert.rejects(rt.start(id), (e) => hasCode(e, 'Conflict'));
    await rt.delete(id);
    await assert.rejects(rt.delete(id), (e) => hasCode(e, 'NotFound'));
  } finally {
    await rt.delete(id, true).catch(() => undefined);
    await removeCgroup(cgroupPaths(layout, `${parent}/${id}`)).catch(() => undefined);
    await removeCgroupParentIfEmpty(layout, parent);
    await rm(dir, { recursive: true, force: true });
  }
});

test('the exec fifo release: a waiting writer, a late one, none, a wrong answer', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-fifo-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const fifo = async (name: string) => {
    const f = path.join(dir, name);
    assert.equal((await run('mkfifo', [f])).code, 0);
    return f;
  };
  // what runc init does: open the fifo for writing (blocks until a reader comes), write "0"
  const writer = (f: string, delayS: number, what = '0') => {
    const c = spawn('sh', ['-c', `sleep ${delayS}; printf '${what}' > '${f}'`], { stdio: 'ignore' });
    return new Promise<number | null>((r) => c.once('exit', r));
  };

  const waiting = await fifo('waiting');
  const w1 = writer(waiting, 0);
  await new Promise((r) => setTimeout(r, 200)); // the writer is blocked in open()
  assert.equal(await releaseThroughExecFifo(waiting), true);
  assert.equal(await w1, 0, 'the writer got through');
  assert.ok(!existsSync(waiting), 'the fifo is removed, as runc start does');

  const late = await fifo('late');
  const w2 = writer(late, 0.3);
  assert.equal(await releaseThroughExecFifo(late), true, 'a writer that opens after us is waited for, not taken for a dead one');
  assert.equal(await w2, 0);

  const nobody = await fifo('nobody');
  assert.equal(await releaseThroughExecFifo(nobody, { timeoutMs: 200 }), false, 'no writer: false after the timeout (the caller falls back to runc start)');
  assert.ok(existsSync(nobody), 'nothing touched');

  // with init's pid: waited for while it lives (past the 2 s a bare wait gives), given up once it is gone
  const slow = await fifo('slow');
  const w4 = spawn('sh', ['-c', `sleep 2.5; printf 0 > '${slow}'`], { stdio: 'ignore' });
  assert.equal(await releaseThroughExecFifo(slow, { initPid: w4.pid! }), true, 'a live init slower than 2 s is waited for');
  const dying = await fifo('dying');
  const w5 = spawn('sleep', ['0.3'], { stdio: 'ignore' });
  const t0 = Date.now();
  assert.equal(await releaseThroughExecFifo(dying, { initPid: w5.pid! }), false, 'an init that died without writing: false');
  assert.ok(Date.now() - t0 < 10_000, 'given up when it died, not after the 60 s limit');

  const wrong = await fifo('wrong');
  const w3 = writer(wrong, 0, 'x');
  await assert.rejects(releaseThroughExecFifo(wrong), /reported "x"/);
  await w3;

  assert.equal(await releaseThroughExecFifo(path.join(dir, 'missing')), false);
});

test("crun's start through its exec fifo: a waiting reader gets one byte and the fifo goes; no reader, no fifo: false", async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-crunfifo-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const waiting = path.join(dir, 'waiting');
  assert.equal((await run('mkfifo', [waiting])).code, 0);
  // what crun's init does: read the fifo (its open blocks until a writer comes)
  const reader = spawn('sh', ['-c', `od -An -tx1 -N1 '${waiting}' > '${dir}/got'`], { stdio: 'ignore' });
  const exited = new Promise<number | null>((r) => reader.once('exit', r));
  // the reader must hold its end before a non-blocking open for writing can succeed
  for (let i = 0; i < 100 && !writeExecFifo(waiting); i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await exited, 0);
  assert.equal((await readFile(path.join(dir, 'got'), 'utf8')).trim(), '00', 'one zero byte, as crun start writes');
  assert.ok(!existsSync(waiting), 'the fifo is removed, as crun start does');

  const nobody = path.join(dir, 'nobody');
  assert.equal((await run('mkfifo', [nobody])).code, 0);
  assert.equal(writeExecFifo(nobody), false, 'no reader (init gone): false, and the caller runs crun start');
  assert.ok(existsSync(nobody), 'nothing touched');
  assert.equal(writeExecFifo(path.join(dir, 'missing')), false);
});

test('crun lifecycle through the wrapper (no conmon): started through its exec fifo', async (t) => {
  const bin = await findBinary('crun');
  const reason = bin ? await probeRuntime('crun') : 'not installed';
  if (reason) return t.skip(`crun does not run here: ${reason}`);
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ocirt-crun-'));
  const id = `ocirt-crun-${process.pid}`;
  const parent = `/nimbus-ocirt-crun-${process.pid}`;
  const layout = await detectCgroupLayout();
  const rt = new OciRuntime('crun', bin!, path.join(dir, 'state'));
  try {
    await makeBusyboxRootfs(path.join(dir, 'rootfs'), ['sleep']);
    const { config } = buildOciSpec(
      { id, name: id, rootfs: [], process: { args: ['sleep', '60'], env: [], cwd: '/', user: '' }, resources: {} },
      { hardLimits: await readHardLimits(), cgroupsPath: `${parent}/${id}`, userDb: { passwd: [], group: [] } },
    );
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
    await rt.create(id, dir, path.join(dir, 'pid'));
    assert.equal((await rt.state(id)).status, 'created');
    assert.ok(existsSync(path.join(dir, 'state', id, 'exec.fifo')), 'crun keeps its exec fifo where writeExecFifo looks');
    await rt.start(id);
    assert.ok(!existsSync(path.join(dir, 'state', id, 'exec.fifo')), 'started through the fifo, not by a crun process that would also remove it');
    const st = await rt.state(id);
    assert.equal(st.status, 'running');
    const pid = Number((await readFile(path.join(dir, 'pid'), 'utf8')).trim());
    assert.equal(st.pid, pid);
    for (let i = 0; i < 100 && !(await readFile(`/proc/${pid}/cmdline`, 'utf8')).startsWith('sleep'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal((await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')[0], 'sleep', 'the container runs its own program');
    await assert.rejects(rt.start(id), (e) => hasCode(e, 'Conflict'), 'a second start is refused (crun start finds no fifo)');
    await rt.kill(id, 'SIGKILL');
    for (let i = 0; i < 100 && (await rt.state(id)).status !== 'stopped'; i++) await new Promise((r) => setTimeout(r, 20));
    await rt.delete(id);
  } finally {
    await rt.delete(id, true).catch(() => undefined);
    await removeCgroup(cgroupPaths(layout, `${parent}/${id}`)).catch(() => undefined);
    await removeCgroupParentIfEmpty(layout, parent);
    await rm(dir, { recursive: true, force: true });
  }
});

test("requestFault: a create the request's own settings broke is InvalidArgument with the runtime's message; the host's failures stay Internal", async () => {
  const { requestFault } = await import('./oci-runtime.js');
  const { Internal, Unavailable } = await import('../../../core/errors.js');
  const mine = requestFault(new Internal('/usr/sbin/runc create abc failed: runc create failed: unable to start container process: error during container init: sethostname: invalid argument', { id: 'abc' }));
  assert.equal(mine?.code, 'InvalidArgument');
  assert.match(mine?.message ?? '', /^runc: .*sethostname: invalid argument$/);
  assert.deepEqual(mine?.details, { id: 'abc' });
  assert.equal(requestFault(new Internal('/usr/sbin/runc create abc failed: exec: "/x": stat /x: no such file or directory'))?.code, 'InvalidArgument');
  assert.equal(requestFault(new Internal('/usr/sbin/runc create abc failed: cgroup: cannot write cpu.cfs_quota_us: device or resource busy')), undefined);
  assert.equal(requestFault(new Unavailable('exec: "x" ... but not a runtime failure')), undefined);
});
