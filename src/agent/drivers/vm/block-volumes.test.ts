/**
 * Block volumes on a VM without waiting for any guest: the argv (pure), the record's rules, and
 * the driver with real QEMU: a volume attached while the VM is created is in QEMU at its start
 * (QMP query-block), one detached while it is stopped is not at the next; a boot volume's argv.
 * QEMU is killed right after each start: the guest never gets far under TCG.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { hasCode } from '../../../core/errors.js';
import { blockVolumeArgs, blockVolumeNames, qemuArgv, type QemuConfig } from './qemu.js';
import { blockChangeMode, withVolume, withoutVolume } from './block-volumes.js';
import { VmDriver, qemuPidsMentioning } from './vm-driver.js';
import { withQmp, instancePaths } from './qemu-process.js';
import { BlockVolumeStore } from '../../volumes/block-volume-store.js';
import { buildTestGuest, workloadAppend } from '../../../../scripts/fixtures/guest.js';
import { GUEST_CACHE } from './vm-test-env.js';

const id = () => randomBytes(16).toString('hex');
const MiB = 1024 * 1024;

test('argv: -blockdev + virtio-blk with a serial; bootindex only without a kernel; raw and share-rw for shared volumes', () => {
  const v = 'a'.repeat(32);
  const n = blockVolumeNames(v);
  assert.deepEqual(n, { node: `bv-${'a'.repeat(24)}`, device: `bvd-${'a'.repeat(24)}`, serial: 'a'.repeat(20) });
  assert.deepEqual(blockVolumeArgs({ volumeId: v, path: '/x/disk.qcow2' }, true), [
    '-blockdev', `driver=qcow2,node-name=${n.node},read-only=off,file.driver=file,file.filename=/x/disk.qcow2`,
    '-device', `virtio-blk-pci,id=${n.device},drive=${n.node},serial=${n.serial}`,
  ]);
  assert.match(blockVolumeArgs({ volumeId: v, path: '/x/d,1', boot: true }, false).join(' '), /file\.filename=\/x\/d,,1 .*,bootindex=0$/);
  assert.doesNotMatch(blockVolumeArgs({ volumeId: v, path: '/x', boot: true }, true).join(' '), /bootindex/);
  assert.match(blockVolumeArgs({ volumeId: v, path: '/x', format: 'raw', shared: true, readonly: true }, true).join(' '), /driver=raw,.*read-only=on.*share-rw=on/);
  assert.throws(() => blockVolumeNames('../../etc'), /bad volume id/);
  const base: QemuConfig = { name: 'x', accel: 'tcg', cpus: 1, memoryMiB: 64, nics: [], debugExit: false, startPaused: true, paths: { qmpSocket: '/q', consoleSocket: '/c', consoleLog: '/l', pidFile: '/p' } };
  assert.throws(() => qemuArgv(base), /a kernel, a root disk or a boot volume/);
  assert.doesNotThrow(() => qemuArgv({ ...base, blockVolumes: [{ volumeId: v, path: '/x', boot: true }] }));
});

test('the record\'s rules: live while running, recorded while created or stopped, refused while paused or saved; no doubles, one boot volume', () => {
  assert.equal(blockChangeMode('vm', 'running', 'attach'), 'live');
  assert.equal(blockChangeMode('vm', 'stopped', 'detach'), 'record');
  assert.equal(blockChangeMode('vm', 'created', 'attach'), 'record');
  assert.throws(() => blockChangeMode('vm', 'paused', 'detach'), /unpause it first/);
  assert.throws(() => blockChangeMode('vm', 'saved', 'attach'), /saved state holds its devices/);
  const a = id();
  const l = withVolume(undefined, { volumeId: a, path: '/a', boot: true });
  assert.throws(() => withVolume(l, { volumeId: a, path: '/a' }), /attached to this VM already/);
  assert.throws(() => withVolume(l, { volumeId: id(), path: '/b', boot: true }), /boot volume already/);
  assert.throws(() => withVolume(l, { volumeId: id(), path: 'relative' }), /absolute/);
  assert.deepEqual(withoutVolume(l, a), []);
  assert.throws(() => withoutVolume(l, id()), /not attached/);
});

test('the driver with real QEMU: attached while created → in QEMU at start; detached while stopped → gone at the next start; a boot volume needs no kernel', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-vmblk-'));
  // the test guest (the host's kernel, a busybox initrd) running `sleep 1000`: up while QMP is asked
  const guest = await buildTestGuest(GUEST_CACHE);
  const drv = new VmDriver({ stateDir: path.join(dir, 'vms'), accel: 'tcg' });
  const bs = new BlockVolumeStore(path.join(dir, 'block-volumes'));
  t.after(async () => {
    for (const pid of await qemuPidsMentioning(dir)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  const v1 = await bs.create(id(), 16 * MiB);
  const vmId = id();
  await drv.create({ id: vmId, name: 'blk', rootfs: [], process: { args: [], env: [], cwd: '/', user: '0' }, resources: { cpus: 1, memoryBytes: 192 * MiB }, vm: { kernel: guest.kernel, initrd: guest.initrd, append: workloadAppend(guest, 'sleep 1000'), accel: 'tcg' } });
  assert.deepEqual(await drv.attachVolume(vmId, { volumeId: v1.id, path: v1.path }), { live: false });
  const nodes = async () => {
    const p = instancePaths(path.join(dir, 'vms', vmId));
    const b = await withQmp(p, (c) => c.execute<Array<{ inserted?: { 'node-name'?: string } }>>('query-block')).catch(async (e: unknown) => {
      // QEMU gone: say how it ended and what the guest printed last
      const st = await drv.state(vmId).catch(() => undefined);
      const consoleTail = (await readFile(p.consoleLog, 'utf8').catch(() => '')).split('\n').slice(-8).join('\n');
      throw new Error(`${(e as Error).message}; the VM is ${JSON.stringify(st)}; its console ends:\n${consoleTail}`);
    });
    return b.map((x) => x.inserted?.['node-name']).filter((x): x is string => x !== undefined);
  };
  // (the host kernel alone, 64 MiB and no initrd, reset itself ~80 ms after the start in 1 of 5
  // runs on a loaded host, before printing anything, and QEMU -no-reboot ended); should it end anyway:
  const killIfRunning = (vm: string) => drv.kill(vm, 'SIGKILL').catch((e: unknown) => {
    if (!hasCode(e, 'Conflict')) throw e;
  });
  await drv.start(vmId);
  assert.deepEqual(await nodes(), [blockVolumeNames(v1.id).node], 'applied at start');
  assert.match((await drv.inspect(vmId)).argv.join(' '), new RegExp(`serial=${v1.id.slice(0, 20)}`));
  await killIfRunning(vmId);
  for (let i = 0; i < 100 && (await drv.state(vmId)).status !== 'stopped'; i++) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(await drv.detachVolume(vmId, v1.id), { live: false });
  await drv.start(vmId);
  assert.deepEqual(await nodes(), [], 'gone at the next start');
  await killIfRunning(vmId);
  await drv.delete(vmId);
  assert.ok((await bs.get(v1.id)).path, 'deleting the VM leaves the volume');

  // a VM that boots from a volume needs no kernel and no root disk
  const boot = await bs.create(id(), 16 * MiB);
  const bootVm = id();
  await drv.create({ id: bootVm, name: 'boot', rootfs: [], process: { args: [], env: [], cwd: '/', user: '0' }, resources: { cpus: 1, memoryBytes: 64 * MiB }, vm: { accel: 'tcg', blockVolumes: [{ volumeId: boot.id, path: boot.path, boot: true }] } });
  assert.match((await drv.inspect(bootVm)).argv.join(' '), /bootindex=0/);
  await drv.delete(bootVm);
  assert.deepEqual(await qemuPidsMentioning(dir), []);
});
