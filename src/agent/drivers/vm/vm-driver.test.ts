// VM-only behaviour of the VM driver against real QEMU: save/restore with the
// guest continuing, vCPU pinning read back from /proc, overlay disks, failed
// starts that leave nothing behind, and a VM outliving a SIGKILLed daemon.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runOk } from '../../../core/exec.js';
import { hasCode } from '../../../core/errors.js';
import { collectLogs, freshId, sleep, waitForLog, waitStopped } from '../instance-driver-conformance.js';
import { READY_MARKER } from '../../../../scripts/fixtures/guest.js';
import { makeVmEnv, type VmEnv } from './vm-test-env.js';
import { instancePaths, withQmp } from './qemu-process.js';
import { isQemuUid } from './qemu-user.js';

let env: VmEnv;
before(async () => {
  env = await makeVmEnv('drv');
});
after(async () => {
  const left = env ? await env.qemuPids() : [];
  await env?.teardown();
  assert.deepEqual(left, [], 'no QEMU outlives the tests');
});

/**
 * Its QEMU runs as a user of its own (qemu-user.ts): not root, no capabilities, no_new_privs, its
 * seccomp filter; its directory root's alone; and a file named to it over QMP stays closed to it.
 */
async function checkDeprivileged(id: string, ins: { qemuPid?: number; qemuUid?: number }): Promise<{ uid: number }> {
  const status = await readFile(`/proc/${ins.qemuPid}/status`, 'utf8');
  const field = (name: string) => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(status)?.[1]?.trim();
  const uid = Number(field('Uid')!.split(/\s+/)[0]);
  assert.ok(isQemuUid(uid), `QEMU's uid ${uid}`);
  assert.deepEqual(field('Uid')!.split(/\s+/).map(Number), [uid, uid, uid, uid], 'real, effective, saved and filesystem uid alike');
  assert.equal(ins.qemuUid, uid, 'inspect says which');
  assert.equal(field('CapEff'), '0000000000000000');
  assert.equal(field('CapPrm'), '0000000000000000');
  // as root, before its drop, it could hold only setgid, setuid and sys_chroot (jailer.ts DROP_CAPS)
  assert.equal(field('CapBnd'), '00000000000400c0');
  assert.equal(field('NoNewPrivs'), '1');
  assert.equal(field('Seccomp'), '2');
  const dir = path.join(env.stateDir, id);
  assert.equal((await stat(dir)).mode & 0o777, 0o700, "the VM's directory is root's alone");
  const refused = await withQmp(instancePaths(dir), (c) => c.execute('blockdev-add', { driver: 'raw', 'node-name': 'probe', file: { driver: 'file', filename: path.join(dir, 'vm.json') } })).then(() => 'opened', (e: unknown) => String(e));
  assert.match(refused, /No such file|Permission denied/, 'QEMU cannot open its own record by path');
  assert.equal(await readlink(`/proc/${ins.qemuPid}/root`), path.join(dir, 'jail'), 'chrooted into its empty jail');
  const hostFile = await withQmp(instancePaths(dir), (c) => c.execute('blockdev-add', { driver: 'raw', 'node-name': 'probe', file: { driver: 'file', filename: '/etc/passwd' } })).then(() => 'opened', (e: unknown) => String(e));
  assert.match(hostFile, /No such file/, "no file of the host, world-readable ones included, is there for it");
  return { uid };
}

const ticks = (lines: string[]) => lines.map((l) => /^tick (\d+)$/.exec(l)?.[1]).filter((x) => x !== undefined).map(Number);

test('save/restore: the guest continues where it was; vCPUs pinned before and after, read back from /proc', async (t) => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['sh', '-c', 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done'], { resources: { memoryBytes: 192 << 20, cpus: 2 } });
  spec.vm = { ...spec.vm, pin: [1, 0] };
  try {
    await d.create(spec);
    await d.start(id);
    const checkPinning = async () => {
      const ins = await d.inspect(id);
      assert.equal(ins.pinning.length, 2);
      for (const p of ins.pinning) {
        const status = await readFile(`/proc/${ins.qemuPid}/task/${p.threadId}/status`, 'utf8');
        const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1];
        assert.equal(allowed, String(p.vcpu === 0 ? 1 : 0), `vCPU ${p.vcpu} thread ${p.threadId}`);
        assert.deepEqual(p.hostCpus, [p.vcpu === 0 ? 1 : 0]);
      }
      return ins;
    };
    const before = await checkPinning();
    await checkDeprivileged(id, before);
    await waitForLog(d, id, /^tick 3$/, 60_000);
    const saved = await d.saveState(id);
    assert.ok(saved.bytes > 1 << 20, `state file ${saved.bytes} bytes`);
    assert.equal((await d.state(id)).status, 'stopped');
    assert.equal((await d.inspect(id)).lifecycle, 'saved');
    assert.deepEqual(await env.qemuPids(), [], 'QEMU ended after save');
    const atSave = ticks((await collectLogs(d, id)).map((r) => r.line));
    const last = atSave[atSave.length - 1]!;
    await assert.rejects(d.start(id), (e) => hasCode(e, 'Conflict'));
    await sleep(1000); // wall time passes while saved; the guest must not notice a reboot
    const restored = await d.restoreState(id);
    t.diagnostic(`save ${saved.ms} ms (${(saved.bytes / 2 ** 20).toFixed(1)} MiB), restore ${restored.ms} ms, accel ${env.accel.accel}`);
    assert.equal((await d.state(id)).status, 'running');
    const afterIns = await checkPinning();
    assert.equal((await checkDeprivileged(id, afterIns)).uid, before.qemuUid, 'restored: the same user, the state read from a descriptor');
    await assert.rejects(d.kill(id, 'SIGNOPE'), (e) => hasCode(e, 'InvalidArgument'));
    assert.notEqual(afterIns.qemuPid, before.qemuPid);
    await waitForLog(d, id, new RegExp(`^tick ${last + 3}$`), 60_000);
    const all = ticks((await collectLogs(d, id)).map((r) => r.line));
    // one unbroken count: no restart from 0, no gap, no repeat
    assert.deepEqual(all, all.map((_, i) => i), `ticks ${all.join(' ')}`);
    assert.ok(all.length > atSave.length);
    assert.equal((await d.stop(id, 0)).status, 'stopped');
  } finally {
    await d.delete(id);
  }
  assert.ok(!existsSync(path.join(env.stateDir, id)));
});

test('the idle guest signals readiness and answers requests on the serial console; exit CODE ends it with that code', async () => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, []);
  spec.vm = { ...spec.vm, append: env.guest.append }; // no workload: the request loop
  try {
    await d.create(spec);
    await d.start(id);
    await waitForLog(d, id, new RegExp(`^${READY_MARKER}$`), 60_000);
    const con = await d.openConsole(id);
    try {
      con.write('echo ping-42\n');
      await waitForLog(d, id, /^ping-42$/, 30_000);
      con.write('uptime\n');
      await waitForLog(d, id, /^\d+\.\d+$/, 30_000);
      con.write('exit 9\n');
      const st = await waitStopped(d, id, 30_000);
      assert.equal(st.exitCode, 9);
    } finally {
      con.destroy();
    }
  } finally {
    await d.delete(id);
  }
});

test('templates: VMs made from a saved VM start by restore, each with its own console; the template cannot go while they exist', async () => {
  const d = env.driver;
  const tpl = freshId('tpl');
  const kids: string[] = [];
  const spec = env.makeSpec(tpl, []);
  spec.vm = { ...spec.vm, append: env.guest.append };
  try {
    await d.create(spec);
    await d.start(tpl);
    await waitForLog(d, tpl, new RegExp(`^${READY_MARKER}$`), 60_000);
    await d.saveState(tpl);
    for (const n of [1, 2]) {
      const id = `${tpl}-kid${n}`;
      kids.push(id);
      await d.createFromTemplate(tpl, id);
      assert.equal((await d.inspect(id)).lifecycle, 'saved');
      await d.restoreState(id);
      // the clone never booted: it answers at once, where the template left off
      const con = await d.openConsole(id);
      con.write(`echo from-${id}\n`);
      await waitForLog(d, id, new RegExp(`^from-${id}$`), 30_000);
      con.destroy();
      assert.ok(!(await collectLogs(d, id)).some((r) => r.line === READY_MARKER), 'no boot in the clone');
    }
    assert.equal((await d.inspect(tpl)).lifecycle, 'saved');
    await assert.rejects(d.delete(tpl), (e) => hasCode(e, 'Conflict'));
  } finally {
    for (const k of kids) await d.delete(k);
    await d.delete(tpl);
  }
});

test('root disk: a qcow2 overlay backed by the image, gone with the VM; the image untouched', async () => {
  const d = env.driver;
  const image = path.join(env.base, 'base.raw');
  await runOk('qemu-img', ['create', '-q', '-f', 'raw', image, '16M']);
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['sleep', '60']);
  spec.vm = { ...spec.vm, disk: image };
  try {
    await d.create(spec);
    const ins = await d.inspect(id);
    assert.ok(ins.rootDisk && existsSync(ins.rootDisk));
    const info = JSON.parse(await runOk('qemu-img', ['info', '-U', '--output=json', ins.rootDisk])) as Record<string, unknown>;
    assert.equal(info.format, 'qcow2');
    assert.equal(info['backing-filename'], image);
    assert.equal(info['backing-filename-format'], 'raw');
    assert.ok(ins.argv.some((a) => a.startsWith('if=none,id=root,file=') && a.includes('root.qcow2')));
    await d.start(id);
    assert.equal((await d.state(id)).status, 'running');
  } finally {
    await d.delete(id);
  }
  assert.ok(!existsSync(path.join(env.stateDir, id)), 'overlay removed');
  assert.equal((await runOk('qemu-img', ['info', '--output=json', image])).includes('"format": "raw"'), true);
  // a disk that is not an image fails create and leaves nothing
  const bad = freshId('vm');
  const badSpec = env.makeSpec(bad, ['true']);
  badSpec.vm = { ...badSpec.vm, disk: path.join(env.base, 'missing.img') };
  await assert.rejects(d.create(badSpec));
  assert.ok(!existsSync(path.join(env.stateDir, bad)));
});

test('reconcile: an orphan QEMU (no record) is killed and its directory removed; recorded VMs are left alone', async () => {
  const d = env.driver;
  const keep = freshId('vm');
  await d.create(env.makeSpec(keep, ['true']));
  const orphanDir = path.join(env.stateDir, 'orphan-x');
  await mkdir(orphanDir, { recursive: true });
  const orphan = spawn('qemu-system-x86_64', ['-S', '-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${orphanDir}/qmp.sock,server=on,wait=off`, '-pidfile', `${orphanDir}/qemu.pid`], { stdio: 'ignore', detached: true });
  orphan.unref();
  try {
    for (let i = 0; i < 200 && !existsSync(`${orphanDir}/qemu.pid`); i++) await sleep(20);
    const r = await env.newDriver().reconcile();
    assert.deepEqual(r.killed, [orphan.pid]);
    assert.deepEqual(r.removed, ['orphan-x']);
    assert.ok(!existsSync(orphanDir));
    assert.equal((await d.state(keep)).status, 'created');
  } finally {
    if (orphan.exitCode === null) orphan.kill('SIGKILL');
    await d.delete(keep);
  }
});

test('a failed start leaves no QEMU and no socket; the VM stays created', async () => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['true']);
  spec.vm = { ...spec.vm, kernel: path.join(env.base, 'no-such-kernel') };
  await d.create(spec);
  try {
    await assert.rejects(d.start(id), (e) => hasCode(e, 'Internal') && /QEMU did not start.*no-such-kernel/.test((e as Error).message));
    assert.deepEqual(await env.qemuPids(), []);
    const files = await readdir(path.join(env.stateDir, id));
    assert.deepEqual(files.filter((f) => f.endsWith('.sock') || f.endsWith('.pid')), []);
    assert.equal((await d.state(id)).status, 'created');
  } finally {
    await d.delete(id);
  }
  assert.ok(!existsSync(path.join(env.stateDir, id)));
});

test('a VM outlives a SIGKILLed daemon; a new driver finds it, its logs, and stops it', async () => {
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['sh', '-c', 'trap "exit 5" TERM; echo alive; while true; do sleep 0.1; done']);
  const driverUrl = new URL('./vm-driver.js', import.meta.url).href;
  // a separate "daemon" process creates and starts the VM, then is killed -9
  const script = `
    const { VmDriver } = await import(${JSON.stringify(driverUrl)});
    const d = new VmDriver({ stateDir: ${JSON.stringify(env.stateDir)}, accel: ${JSON.stringify(env.accel.accel)} });
    await d.create(${JSON.stringify(spec)});
    await d.start(${JSON.stringify(id)});
    console.log('started');
    setInterval(() => {}, 1000);`;
  const daemon = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'], cwd: path.dirname(fileURLToPath(import.meta.url)) });
  try {
    await new Promise<void>((resolve, reject) => {
      daemon.stdout.on('data', (b: Buffer) => b.toString().includes('started') && resolve());
      daemon.on('exit', (c) => reject(new Error(`daemon exited ${c}`)));
    });
    daemon.kill('SIGKILL');
    await new Promise((r) => daemon.once('exit', r));
    const d2 = env.newDriver();
    assert.ok((await d2.list()).includes(id));
    assert.equal((await d2.state(id)).status, 'running');
    await waitForLog(d2, id, /^alive$/, 60_000);
    const exited: string[] = [];
    d2.onExit((x) => exited.push(x));
    const st = await d2.stop(id, 30);
    assert.equal(st.exitCode, 5, 'ACPI power button → TERM to the workload → its exit code');
    await waitStopped(d2, id);
    for (let i = 0; i < 50 && !exited.includes(id); i++) await sleep(100);
    assert.ok(exited.includes(id), 'onExit from a driver that did not start it');
  } finally {
    if (daemon.exitCode === null) daemon.kill('SIGKILL');
    await env.newDriver().delete(id);
  }
});

test('resize: memory through the balloon while running (the guest gives pages back), vCPUs and memory while stopped', async () => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['sh', '-c', 'echo sized; while true; do sleep 0.2; done'], { resources: { memoryBytes: 256 << 20, cpus: 1 } });
  try {
    await d.create(spec);
    assert.ok((await d.inspect(id)).argv.includes('virtio-balloon-pci,id=balloon0'));
    await d.start(id);
    await waitForLog(d, id, /^sized$/, 60_000);
    await assert.rejects(d.resize(id, { cpus: 2 }), (e) => hasCode(e, 'Conflict'), 'no vCPU change while running');
    await assert.rejects(d.resize(id, { memoryMiB: 512 }), (e) => hasCode(e, 'InvalidArgument'), 'not beyond the boot size while running');
    assert.deepEqual(await d.resize(id, { memoryMiB: 160 }), { cpus: 1, memoryMiB: 256, balloonMiB: 160 });
    // the guest's virtio_balloon driver inflates: QEMU's view of its memory comes down to the target
    let actual = await d.balloonActualMiB(id);
    for (let i = 0; i < 300 && actual !== undefined && actual > 165; i++) {
      await sleep(200);
      actual = await d.balloonActualMiB(id);
    }
    assert.ok(actual !== undefined && actual <= 165, `balloon actual ${actual} MiB, target 160`);
    assert.equal((await d.inspect(id)).balloonMiB, 160);
    await d.resize(id, { memoryMiB: 256 }); // and back up
    await d.kill(id, 'SIGKILL');
    await waitStopped(d, id);
    assert.deepEqual(await d.resize(id, { cpus: 2, memoryMiB: 320 }), { cpus: 2, memoryMiB: 320 });
    const argv = (await d.inspect(id)).argv;
    assert.equal(argv[argv.indexOf('-smp') + 1], '2');
    assert.equal(argv[argv.indexOf('-m') + 1], '320M');
    await assert.rejects(d.resize(id, { cpus: 0 }), (e) => hasCode(e, 'InvalidArgument'));
  } finally {
    await d.delete(id);
  }
});

test('vCPU hot-plug: a VM created with room for more grows while it runs (the guest sees the CPU), is pinned, survives save/restore, and folds the plugged ones in at a cold boot', async () => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, [], { resources: { memoryBytes: 192 << 20, cpus: 1 } });
  spec.vm = { ...spec.vm, append: env.guest.append, maxCpus: 2, pin: [1, 0] };
  // Asked again until the answer matches: the guest answers what it sees at the moment, and an
  // ACPI hot-add under TCG on a loaded host can land after the first answer (seen once in CI).
  const ask = async (line: string, answer: RegExp, totalMs = 60_000) => {
    const con = await d.openConsole(id);
    const deadline = Date.now() + totalMs;
    try {
      for (;;) {
        con.write(`${line}\n`);
        try {
          await waitForLog(d, id, answer, 3_000);
          return;
        } catch (e) {
          if (Date.now() > deadline) throw e;
        }
      }
    } finally {
      con.destroy();
    }
  };
  try {
    await d.create(spec);
    assert.ok((await d.inspect(id)).argv.includes('cpus=1,maxcpus=2'));
    await d.start(id);
    await waitForLog(d, id, new RegExp(`^${READY_MARKER}$`), 60_000);
    await ask('cpus', /^cpus present 0$/);
    await assert.rejects(d.resize(id, { cpus: 3 }), (e) => hasCode(e, 'InvalidArgument'), 'not beyond --max-cpus while running');
    assert.deepEqual(await d.resize(id, { cpus: 2 }), { cpus: 2, memoryMiB: 192 });
    await ask('cpus', /^cpus present 0-1$/); // the guest took the ACPI hot-add
    const ins = await d.inspect(id);
    assert.equal(ins.cpus, 2);
    assert.ok(ins.argv.some((a) => /^[a-z0-9_-]+-cpu,id=vcpu1,/.test(a)), `the plugged vCPU is in the argv a restore replays: ${ins.argv.join(' ')}`);
    assert.deepEqual(ins.pinning.map((p) => [p.vcpu, p.hostCpus]), [[0, [1]], [1, [0]]]);
    for (const p of ins.pinning) {
      const status = await readFile(`/proc/${ins.qemuPid}/task/${p.threadId}/status`, 'utf8');
      assert.equal(/Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1], String(p.hostCpus[0]), 'the new vCPU thread is pinned too');
    }
    await assert.rejects(d.resize(id, { cpus: 0 }), (e) => hasCode(e, 'InvalidArgument'));
    await assert.rejects(d.resize(id, { cpus: 1 }), (e) => hasCode(e, 'Conflict'), 'vCPUs are added while it runs, not removed');
    // save/restore: the state has two CPUs, the restored QEMU must too
    await d.saveState(id);
    await d.restoreState(id);
    assert.equal((await d.inspect(id)).pinning.length, 2);
    await ask('echo after-restore', /^after-restore$/);
    // a cold boot: both are boot vCPUs now
    await d.kill(id, 'SIGKILL');
    await waitStopped(d, id);
    await d.start(id);
    const argv = (await d.inspect(id)).argv;
    assert.equal(argv[argv.indexOf('-smp') + 1], 'cpus=2,maxcpus=2');
    assert.ok(!argv.some((a) => a.includes('id=vcpu1')), 'no -device for a vCPU that boots');
    await d.kill(id, 'SIGKILL');
    await waitStopped(d, id);
    assert.deepEqual(await d.resize(id, { cpus: 1 }), { cpus: 1, memoryMiB: 192 }, 'stopped, it can go down');
  } finally {
    await d.delete(id);
  }
});

test('why it ended, in QEMU\'s own word: a guest that powers off is guest-shutdown, one whose kernel panics guest-reset, a QEMU sent SIGTERM host-signal', async () => {
  const d = env.driver;
  const off = freshId('vm');
  const signalled = freshId('vm');
  const panicked = freshId('vm');
  try {
    await d.create(env.makeSpec(off, ['true'])); // its end: the init powers the guest off
    await d.create(env.makeSpec(signalled, ['sh', '-c', 'echo up; sleep 1000']));
    // panic=-1 reboots at once, and -no-reboot ends QEMU with 0 and no shutdown request: its run state says it
    await d.create(env.makeSpec(panicked, ['sh', '-c', 'echo c > /proc/sysrq-trigger']));
    await d.start(off);
    await d.start(signalled);
    await d.start(panicked);
    await waitStopped(d, off, 60_000);
    assert.equal((await d.inspect(off)).endCause, 'guest-shutdown');
    await waitStopped(d, panicked, 60_000);
    assert.deepEqual([(await d.inspect(panicked)).endCause, (await d.state(panicked)).exitCode], ['guest-reset', 0]);
    await waitForLog(d, signalled, /^up$/, 60_000);
    await d.kill(signalled, 'SIGTERM');
    await waitStopped(d, signalled, 30_000);
    assert.equal((await d.inspect(signalled)).endCause, 'host-signal');
  } finally {
    await d.delete(off);
    await d.delete(signalled);
    await d.delete(panicked);
  }
});

test('a SIGKILL cuts a graceful stop short: the guest ignores the power button, kill answers at once (issue 13, finding 2)', async () => {
  const d = env.driver;
  const id = freshId('vm');
  // the power button sends TERM to the workload: this one ignores it, so the stop would wait its whole timeout
  const spec = env.makeSpec(id, ['sh', '-c', "trap '' TERM; echo deaf; while true; do sleep 1; done"]);
  try {
    await d.create(spec);
    await d.start(id);
    await waitForLog(d, id, /^deaf$/, 60_000);
    const stop = d.stop(id, 600);
    await sleep(500); // the button pressed, the guest deaf to it
    const t0 = Date.now();
    await d.kill(id, 'SIGKILL');
    const killMs = Date.now() - t0;
    assert.ok(killMs < 15_000, `kill waited ${killMs} ms behind a 600 s stop`);
    assert.equal((await stop).status, 'stopped', 'the stop ends with the kill');
    assert.equal((await d.inspect(id)).lifecycle, 'stopped');
    assert.equal((await d.inspect(id)).endCause, undefined, 'a SIGKILLed QEMU requested no shutdown: no cause (its exit code says 137)');
    await assert.rejects(d.kill(id, 'SIGNOPE'), (e) => hasCode(e, 'InvalidArgument'));
  } finally {
    await d.delete(id);
  }
});

test('two creates of one id at once: one VM, the other refused (AlreadyExists)', async () => {
  const d = env.driver;
  const id = freshId('vm');
  const spec = env.makeSpec(id, []);
  try {
    const results = await Promise.allSettled([d.create(spec), d.create(spec)]);
    assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
    const refused = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')!;
    assert.ok(hasCode(refused.reason, 'AlreadyExists'), String(refused.reason));
    assert.equal((await d.state(id)).status, 'created');
  } finally {
    await d.delete(id).catch(() => undefined);
  }
});
