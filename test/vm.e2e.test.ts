/**
 * VMs end to end through a real nimbusd process and the nimbus CLI, with real
 * QEMU (TCG here) and the test guest from scripts/build-guest: one boot, then
 * console, pause/unpause, save/restore (the guest continues, no second boot),
 * a kill -9 of nimbusd while the VM runs (it keeps running and is re-attached),
 * stop by ACPI, rm. Nothing of it may stay behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { buildTestGuest, GUEST_CACHE_DIR, READY_MARKER, type TestGuest } from '../scripts/fixtures/guest.js';
import { waitFor as poll } from './helpers/wait.js';
import { qemuUnder } from './helpers/qemu.js';

const waitFor = <T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 90_000) => poll(what, fn, timeoutMs, 200);

let d: DaemonProcess;
let guest: TestGuest;
const NAME = 'e2e-vm';

interface Vm { id: string; name: string; type: string; status: string; exitCode: number | null; host: { qemuPid?: number; pinning: { vcpu: number; hostCpus: number[] }[]; accel: string; rootDisk?: string } | null }


async function cliOk(args: string[], input?: string): Promise<string> {
  const r = await d.cli(args, input !== undefined ? { input } : {});
  assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function inspect(name = NAME): Promise<Vm> {
  return (JSON.parse(await cliOk(['inspect', name])) as Vm[])[0]!;
}

describe('VMs end to end', { concurrency: false }, () => {
  before(async () => {
    guest = await buildTestGuest(GUEST_CACHE_DIR);
    d = await startDaemonProcess();
  });
  after(async () => {
    if (!d) return;
    try {
      const list = await d.api<{ id: string }[]>('GET', '/vms?all=true').catch(() => ({ status: 0, body: [] }));
      for (const v of list.body ?? []) await d.api('DELETE', `/vms/${v.id}?force=true`).catch(() => undefined);
    } finally {
      const left = qemuUnder(d.home);
      for (const pid of left) process.kill(pid, 'SIGKILL');
      await d.destroy();
      assert.deepEqual(left, [], 'no QEMU left behind');
    }
  });

  test('info shows the accelerator and why: undecided until a VM needs it (no probe boot before)', async () => {
    const out = await cliOk(['info']);
    assert.match(out, /^VM accelerator: undecided \(decided by a probe boot when the first VM .+\)$/m);
    assert.deepEqual(qemuUnder(d.home), [], 'info started no probe');
  });

  test('create is admitted by quota (vCPUs) and refused whole when over it; bad requests are usage errors', async () => {
    await cliOk(['quota', 'set', 'default', '--cpus', '1']);
    const r = await d.cli(['vm', 'create', '--cpus', '2', '--kernel', guest.kernel, 'too-big']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /QuotaExceeded/);
    assert.deepEqual(JSON.parse(await cliOk(['vm', 'ls', '-a', '-o', 'json'])), [], 'nothing left by a refused create');
    await cliOk(['quota', 'set', 'default', '--cpus', '64']);
    assert.equal((await d.cli(['vm', 'create', 'no-boot-source'])).code, 2);
    assert.equal((await d.cli(['vm', 'run', '--kernel', guest.kernel, '--pin', '1-0'])).code, 2);
  });

  test('vm run boots the guest; ps lists it with type vm; logs show its readiness; console answers', async () => {
    await cliOk(['vm', 'run', '--name', NAME, '--cpus', '1', '--memory', '192m', '--pin', '0',
      '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', guest.append]);
    const ps = JSON.parse(await cliOk(['ps', '-o', 'json'])) as Vm[];
    assert.deepEqual(ps.filter((i) => i.name === NAME).map((i) => [i.type, i.status]), [['vm', 'running']]);
    assert.match(await cliOk(['ps']), new RegExp(`\\bvm\\b.*Up .*${NAME}\\n`));
    await waitFor('the readiness marker in nimbus logs', async () => ((await cliOk(['logs', NAME])).includes(READY_MARKER) ? true : undefined));
    assert.match(await cliOk(['console', NAME], 'echo first-answer\n'), /first-answer/);
    const v = await inspect();
    assert.equal(v.type, 'vm');
    assert.deepEqual(v.host?.pinning.map((p) => p.hostCpus), [[0]], 'vCPU 0 pinned to host CPU 0');
    assert.match(await cliOk(['info']), /^VM accelerator: (kvm|tcg) \(.+\)$/m, 'decided by the first VM');
  });

  test('block volumes: hot-plugged into the running guest (it reads the volume\'s data), one writer at a time, unplugged when the guest lets go; no extra boot', async () => {
    // the API's schemas refuse what they do not know before anything is made
    assert.equal((await d.api('POST', '/volumes', { name: 'bad', type: 'tape' })).status, 400);
    assert.equal((await d.api('POST', `/vms/${NAME}/volumes`, { volume: 'x', extra: 1 })).status, 400);
    await cliOk(['volume', 'create', 'e2e-blk', '--size', '32m', '--type', 'block']);
    const vol = (await d.api<{ id: string; type: string; mountpoint: string }>('GET', '/volumes/e2e-blk')).body;
    assert.equal(vol.type, 'block');
    // data the guest will read: written into the qcow2 on the host while nothing holds it
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x4e 0 4096', vol.mountpoint]);
    const serial = vol.id.slice(0, 20);
    const disks = async () => ((await cliOk(['console', NAME], 'disks\n')).match(/^disks (.*)$/m)?.[1] ?? '').trim();
    assert.match(await cliOk(['vm', 'attach-volume', NAME, 'e2e-blk']), /^Attached volume e2e-blk to VM e2e-vm\n$/);
    const seen = await waitFor('the guest to see the hot-plugged disk', async () => {
      const d1 = await disks();
      return d1.includes(serial) ? d1 : undefined;
    });
    // name:serial:sectors:first 16 bytes, as the guest reads them
    assert.match(seen, new RegExp(`\\bvd[a-z]:${serial}:${(32 * 1024 * 1024) / 512}:N{16}\\b`), 'the guest sees its size and reads what the host wrote');
    // one writer: another VM (created, never booted) is refused, naming the holder; rm and snapshot too
    const other = await d.api<{ id: string }>('POST', '/vms', { name: 'e2e-other', memoryMiB: 64, kernel: guest.kernel });
    assert.equal(other.status, 201);
    const taken = await d.cli(['vm', 'attach-volume', 'e2e-other', 'e2e-blk']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /Conflict: volume e2e-blk is attached read-write to VM e2e-vm/);
    const rm = await d.api<{ error: { message: string } }>('DELETE', '/volumes/e2e-blk');
    assert.deepEqual([rm.status, /attached to VM e2e-vm/.test(rm.body.error.message)], [409, true]);
    const snap = await d.api<{ error: { message: string } }>('POST', '/volumes/e2e-blk/snapshots', { name: 'e2e-snap' });
    assert.deepEqual([snap.status, /in use by running VM e2e-vm/.test(snap.body.error.message)], [409, true]);
    // detach: device_del, the guest's eject, DEVICE_DELETED, then the file is closed
    assert.match(await cliOk(['vm', 'detach-volume', NAME, 'e2e-blk']), /^Detached volume e2e-blk from VM e2e-vm\n$/);
    assert.equal((await disks()).includes(serial), false, 'gone from the guest once detach returns');
    // now the other VM may take it (recorded for its start); removing that VM detaches, never deletes
    assert.equal((await d.api('POST', '/vms/e2e-other/volumes', { volume: 'e2e-blk' })).status, 200);
    assert.equal((await d.api('DELETE', '/vms/e2e-other')).status, 204);
    // snapshot and clone through the real agent: the clone holds the data
    await cliOk(['volume', 'snapshot', 'e2e-blk', 'e2e-snap']);
    await cliOk(['volume', 'create', 'e2e-clone', '--snapshot', 'e2e-snap']);
    const clone = (await d.api<{ mountpoint: string; sizeBytes: number }>('GET', '/volumes/e2e-clone')).body;
    assert.equal(clone.sizeBytes, 32 * 1024 * 1024);
    execFileSync('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', 'read -P 0x4e 0 4096', clone.mountpoint]);
    assert.equal((await d.api('DELETE', '/volume-snapshots/e2e-snap')).status, 204);
    await cliOk(['volume', 'rm', 'e2e-blk', 'e2e-clone']);
  });

  test('pause stops the vCPUs, unpause resumes them', async () => {
    await cliOk(['pause', NAME]);
    assert.equal((await inspect()).status, 'paused');
    assert.match(await cliOk(['ps']), /\(Paused\)/);
    await cliOk(['unpause', NAME]);
    assert.equal((await inspect()).status, 'running');
  });

  test('resize: memory through the balloon while it runs; vCPUs are refused until it stops', async () => {
    const out = await cliOk(['vm', 'resize', NAME, '--memory', '128m']);
    assert.match(out, /1 vCPUs, 192 MiB \(guest has 128 MiB now\)/);
    const r = await d.cli(['vm', 'resize', NAME, '--cpus', '2']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Conflict: .*without room for more vCPUs \(--max-cpus\)/);
    const tooFew = await d.cli(['vm', 'create', '--cpus', '2', '--max-cpus', '1', '--kernel', guest.kernel, 'too-few']);
    assert.equal(tooFew.code, 1);
    assert.match(tooFew.stderr, /InvalidArgument: max cpus must be from the VM's vCPUs \(2\)/);
    assert.equal((await d.cli(['vm', 'resize', NAME])).code, 2, 'a resize of nothing is a usage error');
    await cliOk(['vm', 'resize', NAME, '--memory', '192m']);
  });

  test('save ends QEMU; restore brings the same guest back without a boot', async () => {
    const pidBefore = (await inspect()).host?.qemuPid;
    assert.ok(pidBefore);
    await cliOk(['vm', 'save', NAME]);
    const saved = await inspect();
    assert.equal(saved.status, 'saved');
    assert.deepEqual(qemuUnder(d.home), [], 'no QEMU while saved');
    assert.match(await cliOk(['ps', '-a']), /Saved/);
    assert.equal((await d.cli(['start', NAME])).code, 1, 'a saved VM is restored, not started');
    // the saved VM as a template: a clone starts by restore from its state, no boot
    await cliOk(['vm', 'clone', NAME, '--name', 'e2e-clone']);
    const refused = await d.cli(['vm', 'restore', NAME]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /Conflict: .*template of e2e-clone/);
    await cliOk(['vm', 'restore', 'e2e-clone']);
    assert.match(await cliOk(['console', 'e2e-clone'], 'echo from-the-clone\n'), /from-the-clone/);
    assert.equal((await cliOk(['vm', 'logs', 'e2e-clone'])).includes(READY_MARKER), false, 'the clone never booted');
    await cliOk(['rm', '-f', 'e2e-clone']);
    await cliOk(['vm', 'restore', NAME]);
    assert.equal((await inspect()).status, 'running');
    assert.match(await cliOk(['console', NAME], 'echo after-restore\n'), /after-restore/);
    const log = await cliOk(['vm', 'logs', NAME]);
    assert.equal(log.split(READY_MARKER).length - 1, 1, 'the guest booted once: it continued after restore');
    assert.match(log, /first-answer[\s\S]*after-restore/);
  });

  test('kill -9 of nimbusd leaves the VM running; after restart it is listed running and can be stopped', async () => {
    const pid = (await inspect()).host?.qemuPid;
    assert.ok(pid);
    await d.kill('SIGKILL');
    assert.deepEqual(qemuUnder(d.home), [pid], 'QEMU outlives the daemon');
    await d.restart();
    const v = await inspect();
    assert.equal(v.status, 'running');
    assert.equal(v.host?.qemuPid, pid, 're-attached to the same QEMU');
    await cliOk(['stop', '-t', '60', NAME]);
    const stopped = await inspect();
    assert.equal(stopped.status, 'stopped');
    assert.equal(stopped.exitCode, 0, 'the guest powered off on the ACPI button');
    assert.deepEqual(qemuUnder(d.home), []);
  });

  test('disk images in the image service: VMs get overlays backed by one blob; hostile qcow2 refused; rm refused while in use', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nimbus-disk-'));
    try {
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '32M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', join(dir, 'evil.qcow2')]);
      assert.match(await cliOk(['image', 'import-disk', 'base', join(dir, 'base.qcow2')]), /Imported disk image base: qcow2, 33\.6MB virtual/);
      const evil = await d.cli(['image', 'import-disk', 'evil', join(dir, 'evil.qcow2')]);
      assert.equal(evil.code, 1);
      assert.match(evil.stderr, /refusing a qcow2 with a backing file \(\/etc\/hostname\)/);
      const disks = JSON.parse(await cliOk(['image', 'disks', '-o', 'json'])) as Array<{ name: string; format: string; virtualSize: number; digest: string }>;
      assert.deepEqual(disks.map((x) => [x.name, x.format, x.virtualSize]), [['base', 'qcow2', 32 * 1024 * 1024]]);
      const backing: string[] = [];
      for (const n of ['disk1', 'disk2']) {
        await cliOk(['vm', 'create', '--name', n, '--memory', '64m', '--image', 'base', '--kernel', guest.kernel, '--initrd', guest.initrd]);
        const overlay = (await inspect(n)).host?.rootDisk;
        assert.ok(overlay, 'the VM has a root disk');
        backing.push((JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', overlay], { encoding: 'utf8' })) as { 'backing-filename': string })['backing-filename']);
      }
      assert.equal(backing[0], backing[1], 'both overlays are backed by the same blob');
      assert.match(backing[0]!, new RegExp(`${disks[0]!.digest.replace('sha256:', '')}$`), 'the blob is the image content, by digest');
      const busy = await d.cli(['image', 'rm-disk', 'base']);
      assert.equal(busy.code, 1);
      assert.match(busy.stderr, /backs the disk of 2 VM\(s\): disk\d, disk\d/);
      await cliOk(['vm', 'rm', 'disk1', 'disk2']);
      await cliOk(['image', 'rm-disk', 'base']);
      assert.equal(existsSync(backing[0]!), false, 'the blob is collected once nothing names or uses it');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('rm removes the VM and its host state; its name is free again', async () => {
    await cliOk(['rm', NAME]);
    assert.deepEqual(JSON.parse(await cliOk(['vm', 'ls', '-a', '-o', 'json'])), []);
    assert.deepEqual(readdirSync(join(d.home, 'vms', 'instances')), []);
    const r = await d.cli(['inspect', NAME]);
    assert.equal(r.code, 1);
  });
});
