/**
 * Block volumes on a host with real qemu-img and qemu-io (no guest boots): sizes, snapshots and
 * clones as qcow2 backing files (data checked byte by byte), snapshot removal keeping what it
 * backed, shared (raw) volumes, the lock of a running QEMU refusing a snapshot and a removal, and
 * the QMP hot-plug of a volume into a QEMU that never runs a guest (paused: -S).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { run } from '../../core/exec.js';
import { BlockVolumeStore } from './block-volume-store.js';
import { blockVolumeArgs, blockVolumeNames } from '../drivers/vm/qemu.js';
import { plugBlockVolume, unplugBlockVolume } from '../drivers/vm/block-volumes.js';
import { instancePaths, withQmp } from '../drivers/vm/qemu-process.js';

const MiB = 1024 * 1024;
const id = () => randomBytes(16).toString('hex');

async function home(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-blk-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** qemu-io: write `byte` over [offset, offset+len) of the qcow2 (or raw) file. */
async function write(file: string, byte: number, offset: number, len = 4096, fmt = 'qcow2'): Promise<void> {
  const r = await run('qemu-io', ['-f', fmt, '-c', `write -P 0x${byte.toString(16)} ${offset} ${len}`, file]);
  assert.equal(r.code, 0, r.stderr + r.stdout);
}

/** Whether [offset, offset+len) of the image reads as `byte` (through its whole backing chain). */
async function reads(file: string, byte: number, offset: number, len = 4096): Promise<boolean> {
  const r = await run('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', `read -P 0x${byte.toString(16)} ${offset} ${len}`, file]);
  return r.code === 0 && !/verification failed/.test(r.stdout + r.stderr);
}

async function backing(file: string): Promise<string | undefined> {
  const r = await run('qemu-img', ['info', '-U', '--output=json', file]);
  return (JSON.parse(r.stdout) as { 'backing-filename'?: string })['backing-filename'];
}

test('block volumes: a qcow2 of its size; snapshots freeze it, clones start from them, removing a snapshot keeps every byte of what it backed', async (t) => {
  const dir = await home(t);
  const bs = new BlockVolumeStore(path.join(dir, 'block-volumes'));
  const v = id();
  const made = await bs.create(v, 32 * MiB);
  assert.equal(made.format, 'qcow2');
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', made.path])).stdout) as { 'virtual-size': number; format: string };
  assert.deepEqual([info.format, info['virtual-size']], ['qcow2', 32 * MiB]);
  assert.ok(made.allocatedBytes < 2 * MiB, `allocates as written: ${made.allocatedBytes}`);
  // retried create: the same; another size: Conflict; bad sizes and ids: InvalidArgument
  assert.equal((await bs.create(v, 32 * MiB)).path, made.path);
  await assert.rejects(bs.create(v, 64 * MiB), /Conflict|another size/);
  await assert.rejects(bs.create(id(), 15 * MiB), /whole number of MiB from 16 MiB/);
  await assert.rejects(bs.create('../etc', 32 * MiB), /invalid volume id/);

  await write(made.path, 0x41, 0);
  await write(made.path, 0x41, MiB);
  const s1 = id();
  assert.deepEqual(await bs.snapshot(v, s1), { id: s1, volumeId: v, sizeBytes: 32 * MiB });
  assert.deepEqual(await bs.snapshot(v, s1), { id: s1, volumeId: v, sizeBytes: 32 * MiB }, 'idempotent');
  assert.match((await backing(made.path)) ?? '', new RegExp(`${s1}\\.qcow2$`), 'the volume is an overlay on its snapshot');
  await write(made.path, 0x42, 0); // after the snapshot
  assert.equal(await reads(made.path, 0x42, 0), true);
  assert.equal(await reads(made.path, 0x41, MiB), true, 'older data through the chain');

  // a clone of the snapshot: the data as it was, larger if asked; smaller is refused
  const c = id();
  await assert.rejects(bs.create(c, 16 * MiB, { fromSnapshot: s1 }), /at least its snapshot's size/);
  const clone = await bs.create(c, 64 * MiB, { fromSnapshot: s1 });
  assert.equal(await reads(clone.path, 0x41, 0), true, 'the clone reads the snapshot');
  await write(clone.path, 0x43, MiB);
  assert.equal(await reads(made.path, 0x41, MiB), true, 'a clone\'s writes are its own');
  await assert.rejects(bs.create(id(), 32 * MiB, { fromSnapshot: id() }), /not on this host/);

  // removing the snapshot: the volume and the clone keep every byte, and no longer need it
  await bs.removeSnapshot(s1);
  assert.equal(existsSync(path.join(dir, 'block-volumes', 'snapshots', `${s1}.qcow2`)), false);
  assert.equal(await backing(made.path), undefined);
  assert.equal(await backing(clone.path), undefined);
  assert.equal(await reads(made.path, 0x42, 0), true);
  assert.equal(await reads(made.path, 0x41, MiB), true);
  assert.equal(await reads(clone.path, 0x41, 0), true);
  assert.equal(await reads(clone.path, 0x43, MiB), true);
  await bs.removeSnapshot(s1); // idempotent

  // a chain of two: removing the older one folds it into the newer (still a frozen copy)
  const s2 = id();
  const s3 = id();
  await bs.snapshot(v, s2);
  await write(made.path, 0x44, 2 * MiB);
  await bs.snapshot(v, s3);
  await bs.removeSnapshot(s2);
  const s3file = path.join(dir, 'block-volumes', 'snapshots', `${s3}.qcow2`);
  assert.equal(await reads(s3file, 0x42, 0), true);
  assert.equal(await reads(s3file, 0x44, 2 * MiB), true);
  assert.equal(await reads(made.path, 0x41, MiB), true);

  // reconcile: listed ones stay, a listed one this host lacks is missing
  const r = await bs.reconcile([v, c], [s3, 'ffffffffffffffffffff']);
  assert.deepEqual(r, { removed: [], missing: ['ffffffffffffffffffff'] });
  // an unlisted old volume goes; an unlisted snapshot that backs a kept volume stays
  const old = id();
  await bs.create(old, 16 * MiB);
  await writeFile(path.join(dir, 'block-volumes', old, 'volume.json'), JSON.stringify({ id: old, sizeBytes: 16 * MiB, createdAt: '2020-01-01T00:00:00.000Z' }));
  const r2 = await bs.reconcile([v, c], []);
  assert.deepEqual(r2.removed, [old]);
  assert.ok(existsSync(s3file), 'a snapshot the volume is backed by is kept');

  await bs.remove(v);
  await bs.remove(c);
  await bs.remove(v);
  assert.deepEqual((await readdir(path.join(dir, 'block-volumes'))).filter((n) => n !== 'snapshots'), []);
});

test('shared block volumes are sparse raw disks without snapshots', async (t) => {
  const dir = await home(t);
  const bs = new BlockVolumeStore(path.join(dir, 'block-volumes'));
  const v = id();
  const made = await bs.create(v, 32 * MiB, { shared: true });
  assert.equal(made.format, 'raw');
  assert.match(made.path, /disk\.raw$/);
  await assert.rejects(bs.snapshot(v, id()), /shared \(raw\): it has no snapshots/);
  await assert.rejects(bs.create(id(), 32 * MiB, { shared: true, fromSnapshot: id() }), /cannot be cloned/);
  await assert.rejects(bs.create(v, 32 * MiB), /another size or source/);
  await bs.remove(v);
});

test('a running QEMU holding a volume: snapshot and removal are refused (its lock); QMP hot-plug adds the disk, an unanswered unplug is refused', async (t) => {
  const dir = await home(t);
  const bs = new BlockVolumeStore(path.join(dir, 'block-volumes'));
  const v = id();
  const vol = await bs.create(v, 16 * MiB);
  const hot = id();
  const hotVol = await bs.create(hot, 16 * MiB);
  const p = instancePaths(path.join(dir, 'vm'));
  await run('mkdir', ['-p', path.join(dir, 'vm')]);
  // a QEMU that never runs a guest (-S): the volume attached at start as the driver's argv does
  const qemu = spawn('qemu-system-x86_64', [
    '-machine', 'pc,accel=tcg', '-nodefaults', '-display', 'none', '-S', '-m', '32M',
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
    ...blockVolumeArgs({ volumeId: v, path: vol.path }, true),
  ], { stdio: 'ignore' });
  t.after(() => {
    qemu.kill('SIGKILL');
  });
  for (let i = 0; i < 100 && !existsSync(p.qmpSocket); i++) await new Promise((r) => setTimeout(r, 50));
  await assert.rejects(bs.snapshot(v, id()), (e: unknown) => (e as { code?: string }).code === 'Conflict' && /in use by a running VM/.test(String(e)));
  await assert.rejects(bs.remove(v), (e: unknown) => (e as { code?: string }).code === 'Conflict');
  assert.ok(existsSync(vol.path), 'the refused removal left the file');

  await plugBlockVolume(p, { volumeId: hot, path: hotVol.path });
  const devs = await withQmp(p, (c) => c.execute<Array<{ dev: string; qdev?: string; inserted?: { 'node-name'?: string } }>>('query-block'));
  const n = blockVolumeNames(hot);
  assert.ok(devs.some((d) => d.inserted?.['node-name'] === n.node), `the hot-plugged node is there: ${JSON.stringify(devs.map((d) => d.inserted?.['node-name']))}`);
  await assert.rejects(bs.remove(hot), /in use/, 'QEMU holds the hot-plugged file');
  // no guest runs to answer the ACPI eject: refused, and the disk stays
  await assert.rejects(unplugBlockVolume(p, hot, 1500), /did not release volume/);
  qemu.kill('SIGKILL');
  await new Promise((r) => qemu.once('exit', r));
  await bs.remove(v);
  await bs.remove(hot);
});
