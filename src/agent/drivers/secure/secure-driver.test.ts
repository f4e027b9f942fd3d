// Secure containers against real QEMU (TCG here): an OCI image's rootfs run inside a
// microVM — entrypoint, env and workdir honoured, output on the logs, the exit code
// returned, ACPI stop ending the workload, nothing left behind.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buildTestImages } from '../../../../scripts/fixtures/images.js';
import { GUEST_CACHE_DIR, buildTestGuest } from '../../../../scripts/fixtures/guest.js';
import { applyLayer } from '../../layers/apply-layer.js';
import { mountsUnder } from '../../snapshots/mount.js';
import { collectLogs, freshId, waitForLog, waitStopped } from '../instance-driver-conformance.js';
import { qemuPidsUnder, testAccelerator } from '../vm/vm-test-env.js';
import { instancePaths, withQmp } from '../vm/qemu-process.js';
import { isQemuUid } from '../vm/qemu-user.js';
import { SecureDriver } from './secure-driver.js';
import { buildSecureGuest } from './secure-guest.js';
import type { InstanceSpec } from '../instance-driver.js';

let base: string;
let image: string;
let driver: SecureDriver;

before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-secure-'));
  image = path.join(base, 'image');
  await mkdir(image);
  const img = (await buildTestImages()).amd64;
  for (const l of img.layers) await applyLayer(image, Readable.from([l.data]), { mediaType: l.mediaType, mode: 'native' });
  await buildSecureGuest(GUEST_CACHE_DIR);
  const accel = await testAccelerator(await buildTestGuest(GUEST_CACHE_DIR)); // probed once per host boot, cached
  driver = new SecureDriver({ stateDir: path.join(base, 'state'), accel: accel.accel, guestCacheDir: GUEST_CACHE_DIR });
});
after(async () => {
  const left = await qemuPidsUnder(base);
  for (const pid of left) process.kill(pid, 'SIGKILL');
  const mounts = await mountsUnder(base);
  await rm(base, { recursive: true, force: true });
  assert.deepEqual(left, [], 'no QEMU outlives the tests');
  assert.deepEqual(mounts, [], 'no mount outlives the tests');
});

/** A writable copy of the image as the container's rootfs, as the snapshotter would give. */
async function specFor(id: string, args: string[], over: Partial<InstanceSpec['process']> = {}): Promise<InstanceSpec> {
  const rw = path.join(base, `rw-${id}`);
  await mkdir(rw);
  const upper = path.join(rw, 'upper');
  const work = path.join(rw, 'work');
  await mkdir(upper);
  await mkdir(work);
  return {
    id, name: id,
    rootfs: [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${image}`, `upperdir=${upper}`, `workdir=${work}`] }],
    process: { args, env: ['GREETING=hello from a microVM'], cwd: '/srv/app', user: '0', ...over },
    resources: { memoryBytes: 192 << 20 },
  };
}

test('an OCI rootfs runs in a microVM restored from a saved template: env, workdir, output and exit code; again after exit', async (t) => {
  const id = freshId('sec');
  try {
    await driver.create(await specFor(id, ['sh', '-c', 'echo "$GREETING in $(pwd)"; cat /etc/nimbus-release; ls /data/opaque; exit 7']));
    const t0 = performance.now();
    await driver.start(id);
    const st = await waitStopped(driver, id, 120_000);
    t.diagnostic(`boot + run + power-off ${Math.round(performance.now() - t0)} ms`);
    assert.equal(st.exitCode, 7);
    const lines = (await collectLogs(driver, id)).map((r) => r.line).filter(Boolean);
    assert.deepEqual(lines.slice(-3), ['hello from a microVM in /srv/app', 'nimbus test image 1', 'new.txt']);
    // started again after its exit: a fresh microVM from the template, same rootfs
    await driver.start(id);
    assert.equal((await waitStopped(driver, id, 120_000)).exitCode, 7);
  } finally {
    await driver.delete(id);
  }
  assert.ok(!existsSync(path.join(base, 'state', id)), 'nothing left of it');
});

test('with the jail\'s five capabilities the guest\'s files keep the owners and modes it gives them (9p passthrough): on the host too', async () => {
  const id = freshId('sec');
  try {
    const script = [
      'echo data > /made && chown 1234:2345 /made && chmod 2751 /made',
      'mkdir /closed && chmod 700 /closed && echo in > /closed/f && chown 1234 /closed',
      'ln -s made /link && ln /made /hard',
      'stat -c "%u:%g %a %h" /made; cat /closed/f',
    ].join(' && ');
    await driver.create(await specFor(id, ['sh', '-c', script]));
    await driver.start(id);
    const st = await waitStopped(driver, id, 120_000);
    const lines = (await collectLogs(driver, id)).map((r) => r.line.trim()).filter(Boolean);
    assert.equal(st.exitCode, 0, lines.join(' | '));
    assert.deepEqual(lines.slice(-2), ['1234:2345 2751 2', 'in'], 'as the guest sees them');
    const upper = path.join(base, `rw-${id}`, 'upper');
    const made = await stat(path.join(upper, 'made'));
    assert.deepEqual([made.uid, made.gid, (made.mode & 0o7777).toString(8), made.nlink], [1234, 2345, '2751', 2], 'as the host keeps them');
    assert.equal((await stat(path.join(upper, 'closed'))).uid, 1234);
  } finally {
    await driver.delete(id);
  }
});

test('the guest owns its rootfs: an exit status it makes a symlink to a host file is not read through (its number is not the exit code)', async () => {
  const id = freshId('sec');
  const hostFile = path.join(base, 'host-number');
  await writeFile(hostFile, '42\n');
  try {
    // the link's target does not exist in the guest, so nimbus-init's own write of the status fails and the link stays
    await driver.create(await specFor(id, ['sh', '-c', `rm -f /.nimbus/exit; ln -s ${hostFile} /.nimbus/exit; exit 3`]));
    await driver.start(id);
    const st = await waitStopped(driver, id, 120_000);
    assert.equal((await lstat(path.join(base, `rw-${id}`, 'upper', '.nimbus', 'exit'))).isSymbolicLink(), true, 'the guest\'s symlink is there');
    assert.notEqual(st.exitCode, 42, 'the host file was not read as the status');
    assert.equal(st.exitCode, 255, 'no status came back');
    // started again: the link goes, not the file it names
    await driver.start(id);
    await waitStopped(driver, id, 120_000);
    assert.equal(await readFile(hostFile, 'utf8'), '42\n', 'the host file is untouched');
  } finally {
    await driver.delete(id);
  }
});

test('stop asks the guest: the workload gets TERM and its trap runs', async () => {
  const id = freshId('sec');
  try {
    await driver.create(await specFor(id, ['sh', '-c', 'trap "echo got term; exit 0" TERM; echo ready; while true; do sleep 0.2; done']));
    await driver.start(id);
    await waitForLog(driver, id, /^ready$/, 120_000);
    const st = await driver.stop(id, 30);
    assert.equal(st.status, 'stopped');
    assert.equal(st.exitCode, 0);
    assert.ok((await collectLogs(driver, id)).some((r) => r.line === 'got term'));
  } finally {
    await driver.delete(id);
  }
});

test("the microVM's QEMU runs in a jail, as a user of its own with 9p's capabilities ambient and no others: its own mount namespace holding only what it opens, no new privileges", async () => {
  const id = freshId('sec');
  const other = path.join(base, 'not-for-it');
  await mkdir(other, { recursive: true });
  try {
    await driver.create(await specFor(id, ['sh', '-c', 'echo ready; while true; do sleep 0.2; done']));
    await driver.start(id);
    await waitForLog(driver, id, /^ready$/, 120_000);
    const [pid] = await qemuPidsUnder(base);
    assert.ok(pid, 'its QEMU runs');
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const field = (f: string) => new RegExp(`^${f}:\\s+(\\S+)`, 'm').exec(status)?.[1];
    const uid = Number(field('Uid'));
    assert.ok(isQemuUid(uid), `a QEMU user of its own, not root: ${uid}`);
    assert.deepEqual(status.match(/^Uid:\s+(.*)$/m)?.[1]?.split(/\s+/).map(Number), [uid, uid, uid, uid], 'real, effective, saved and file-system uid alike');
    // chown 0, dac_override 1, fowner 3, fsetid 4, mknod 27: ambient, what 9p passthrough uses
    assert.equal(field('CapBnd'), '000000000800001b', 'the bounding set: 9p\'s capabilities only');
    assert.equal(field('CapAmb'), '000000000800001b');
    assert.equal(field('CapEff'), '000000000800001b');
    // no NIC: a network of its own (and System V IPC, mounts)
    for (const ns of ['net', 'ipc', 'mnt']) assert.notEqual(await readlink(`/proc/${pid}/ns/${ns}`), await readlink(`/proc/self/ns/${ns}`), `its own ${ns} namespace`);
    assert.equal(field('NoNewPrivs'), '1');
    const root = `/proc/${pid}/root`;
    assert.deepEqual((await readdir(root)).filter((n) => !['bin', 'lib', 'lib32', 'lib64', 'libx32', 'sbin', 'usr'].includes(n)).sort(), [base.split('/')[1]!, 'dev', 'proc'].sort(), 'the host\'s programs, its own paths, a few devices and /proc/self/fd');
    assert.deepEqual((await readdir(path.join(root, 'dev'))).filter((n) => n !== 'kvm').sort(), ['full', 'null', 'random', 'urandom', 'zero'], 'no disk, no kmsg, no mem (kvm where it is used)');
    assert.equal(existsSync(path.join(root, 'etc/passwd')), false, 'no /etc');
    assert.equal(existsSync(path.join(root, other)), false, 'nothing of the host beside its paths');
    assert.equal(existsSync(path.join(root, image)), false, "not its rootfs' layers, only the rootfs it is given");
    assert.deepEqual(await readdir(path.join(root, 'proc')), ['self'], 'of /proc, itself only');
    await assert.rejects(writeFile(path.join(root, 'planted'), 'x'), /EROFS/, 'its root is read-only');
    // asked over QMP to open a host file, it finds none
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    // its run files are descriptors (the console log's fd set names the QMP socket), no pid file
    assert.ok(!argv.includes('-pidfile'));
    const qmpSocket = /opaque=(.*)$/.exec(argv[argv.indexOf('-add-fd') + 1]!)?.[1] ?? '';
    const dir = path.dirname(qmpSocket);
    assert.equal(existsSync(path.join(dir, 'vm.json')), true, `the VM's directory: ${dir}`);
    assert.equal(existsSync(path.join(root, dir)), false, 'not in its jail: the agent uses its files by path');
    const opened = await withQmp(instancePaths(dir), (c) => c.execute('blockdev-add', { driver: 'raw', 'node-name': 'probe', file: { driver: 'file', filename: '/etc/passwd' } })).then(() => 'opened', (e: unknown) => String(e));
    assert.match(opened, /No such file/);
  } finally {
    await driver.delete(id);
  }
});

test('a non-root user is refused with a clear error and nothing is left', async () => {
  const id = freshId('sec');
  await assert.rejects(driver.create(await specFor(id, ['true'], { user: '1000' })), /root inside the microVM/);
  assert.ok(!existsSync(path.join(base, 'state', id)));
});
