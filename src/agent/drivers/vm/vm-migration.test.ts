// Live migration between two VM drivers (two agents' state directories) on this host,
// over TCP on loopback, against real QEMU: the guest's counter goes on unbroken at the
// destination, nothing of the VM stays at the source, vCPU pinning is re-applied there,
// and the report carries the measured downtime, bytes and passes.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile } from 'node:fs/promises';
import { runOk } from '../../../core/exec.js';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { collectLogs, freshId, waitForLog } from '../instance-driver-conformance.js';
import { makeVmEnv, type VmEnv } from './vm-test-env.js';
import { VmDriver } from './vm-driver.js';

let env: VmEnv;
before(async () => {
  env = await makeVmEnv('mig');
});
after(async () => {
  const left = env ? await env.qemuPids() : [];
  await env?.teardown();
  assert.deepEqual(left, [], 'no QEMU outlives the tests');
});

const ticks = (lines: string[]) => lines.map((l) => /^tick (\d+)$/.exec(l)?.[1]).filter((x) => x !== undefined).map(Number);

test('live migration to another driver: the guest goes on, the source is gone, the report has the downtime', async (t) => {
  const source = env.driver;
  const otherState = path.join(env.base, 'agent-b');
  await mkdir(otherState, { recursive: true });
  const dest = new VmDriver({ stateDir: otherState, accel: env.accel.accel });
  const id = freshId('vm');
  const spec = env.makeSpec(id, ['sh', '-c', 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done'], { resources: { memoryBytes: 192 << 20, cpus: 2 } });
  spec.vm = { ...spec.vm, pin: [1, 0] };
  try {
    await source.create(spec);
    await source.start(id);
    await waitForLog(source, id, /^tick 2$/, 60_000);
    await assert.rejects(source.migrateTo(id, source), (e) => hasCode(e, 'InvalidArgument'), 'not to itself');

    const report = await source.migrateTo(id, dest, { maxDowntimeMs: 100 });
    t.diagnostic(JSON.stringify(report));
    assert.equal(report.id, id);
    assert.ok(report.bytes > 1 << 20, `bytes ${report.bytes}`);
    assert.ok(report.iterations >= 1, `passes ${report.iterations}`);
    assert.ok(report.downtimeMs >= 0 && report.qemuDowntimeMs >= 0, 'downtime measured');
    assert.equal(report.maxDowntimeMs, 100);

    assert.ok(!existsSync(path.join(env.stateDir, id)), 'nothing of the VM stays at the source');
    await assert.rejects(source.state(id), (e) => hasCode(e, 'NotFound'));
    assert.equal((await dest.state(id)).status, 'running');
    const ins = await dest.inspect(id);
    for (const p of ins.pinning) {
      const status = await readFile(`/proc/${ins.qemuPid}/task/${p.threadId}/status`, 'utf8');
      assert.equal(/Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1], String(p.vcpu === 0 ? 1 : 0), 'pinning re-applied at the destination');
    }
    const atMove = ticks((await collectLogs(dest, id)).map((r) => r.line));
    const last = atMove[atMove.length - 1]!;
    await waitForLog(dest, id, new RegExp(`^tick ${last + 3}$`), 60_000);
    const all = ticks((await collectLogs(dest, id)).map((r) => r.line));
    assert.deepEqual(all, all.map((_, i) => i), `one unbroken count across the move: ${all.join(' ')}`);

    // and back again
    const back = await dest.migrateTo(id, source);
    assert.equal(back.id, id);
    assert.equal((await source.state(id)).status, 'running');
    assert.ok(!existsSync(path.join(otherState, id)));
    const last2 = ticks((await collectLogs(source, id)).map((r) => r.line)).at(-1)!;
    await waitForLog(source, id, new RegExp(`^tick ${last2 + 2}$`), 60_000);
    const twice = ticks((await collectLogs(source, id)).map((r) => r.line));
    assert.deepEqual(twice, twice.map((_, i) => i), `unbroken across two moves: ${twice.join(' ')}`);
    assert.equal((await source.stop(id, 0)).status, 'stopped');
  } finally {
    await source.delete(id).catch(() => undefined);
    await dest.delete(id).catch(() => undefined);
  }
});

test('a VM with a local disk live-migrates with it: every write the guest made before, during and after the move is on the destination disk', async (t) => {
  const dest = new VmDriver({ stateDir: path.join(env.base, 'agent-d'), accel: env.accel.accel });
  const id = freshId('vm');
  // the base both hosts have (a marker in it, read through the destination's own overlay), 4 MiB
  const base = path.join(env.base, 'base.img');
  await runOk('qemu-img', ['create', '-q', '-f', 'raw', base, '4M']);
  const marker = Buffer.from('nimbus-base-marker');
  const fh = await open(base, 'r+');
  await fh.write(marker, 0, marker.length, 3 << 20);
  await fh.close();
  // block i (4 KiB: a page of its own, so that no later write carries it again) holds "tick i",
  // written and flushed before the tick is printed
  const loop = 'i=0; while [ $i -lt 700 ]; do echo "tick $i" | dd of=/dev/vda bs=4096 seek=$i conv=notrunc,fsync 2>/dev/null && echo tick $i; i=$((i+1)); sleep 0.05; done; sleep 1000';
  const spec = env.makeSpec(id, ['sh', '-c', loop], { resources: { memoryBytes: 192 << 20, cpus: 1 } });
  spec.vm = { ...spec.vm, disk: base };
  try {
    await env.driver.create(spec);
    await env.driver.start(id);
    await waitForLog(env.driver, id, /^tick 5$/, 60_000);
    const report = await env.driver.migrateTo(id, dest, { maxDowntimeMs: 100 });
    t.diagnostic(JSON.stringify(report));
    assert.ok(report.diskBytes > 0, `disk bytes mirrored: ${report.diskBytes}`);
    assert.ok(report.diskBytes < 4 << 20, `only the overlay's clusters travel, not the base: ${report.diskBytes}`);
    assert.ok(!existsSync(path.join(env.stateDir, id)), 'nothing of the VM stays at the source');
    const atMove = ticks((await collectLogs(dest, id)).map((r) => r.line)).at(-1)!;
    await waitForLog(dest, id, new RegExp(`^tick ${atMove + 5}$`), 60_000);
    const overlay = (await dest.inspect(id)).rootDisk!;
    assert.ok(overlay.startsWith(path.join(env.base, 'agent-d')), `the destination's own overlay: ${overlay}`);
    await dest.kill(id, 'SIGKILL');
    const printed = ticks((await collectLogs(dest, id)).map((r) => r.line));
    assert.deepEqual(printed, printed.map((_, i) => i), 'one unbroken count across the move');
    const raw = path.join(env.base, `${id}.raw`);
    await runOk('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', overlay, raw]);
    const disk = await readFile(raw);
    const lost = printed.filter((i) => disk.subarray(i * 4096, i * 4096 + 16).toString().split('\n')[0] !== `tick ${i}`);
    assert.deepEqual(lost, [], `ticks the guest wrote but the destination disk lacks (of ${printed.length})`);
    assert.equal(disk.subarray(3 << 20, (3 << 20) + marker.length).toString(), marker.toString(), 'the base shows through the destination overlay');
  } finally {
    await env.driver.delete(id).catch(() => undefined);
    await dest.delete(id).catch(() => undefined);
  }
});

test('a VM that is not running does not migrate; nothing is left at the destination', async () => {
  const dest = new VmDriver({ stateDir: path.join(env.base, 'agent-c'), accel: env.accel.accel });
  const id = freshId('vm');
  await env.driver.create(env.makeSpec(id, ['true']));
  try {
    await assert.rejects(env.driver.migrateTo(id, dest), (e) => hasCode(e, 'Conflict'));
    assert.ok(!existsSync(path.join(env.base, 'agent-c', id)));
  } finally {
    await env.driver.delete(id);
  }
});
