import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { run } from '../../core/exec.js';
import { mountsUnder, unmountAll } from '../snapshots/mount.js';
import { VolumeStore } from './volume-store.js';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const id = () => randomBytes(32).toString('hex');

async function home(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-volumes-'));
  t.after(async () => {
    await unmountAll(dir); // whatever a failed test left mounted
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

test('a volume is a sparse ext4 image: it holds its size and not a byte more (ENOSPC), takes no disk until written', { skip: !isRoot && 'needs root (mount)' }, async (t) => {
  const dir = await home(t);
  const vs = new VolumeStore(path.join(dir, 'volumes'));
  const v = id();
  const t0 = performance.now();
  const made = await vs.create(v, 32 * MiB);
  const createMs = performance.now() - t0;
  t.diagnostic(`create of a 32 MiB volume: ${createMs.toFixed(0)} ms`);
  assert.equal(made.sizeBytes, 32 * MiB);
  assert.equal(made.mounted, true);
  // its loop device: autoclear (it goes with the unmount), direct I/O (no double caching)
  const loop = await run('losetup', ['-l', '-n', '-O', 'AUTOCLEAR,DIO', '-j', path.join(dir, 'volumes', v, 'image.ext4')]);
  assert.deepEqual(loop.stdout.trim().split(/\s+/), ['1', '1'], loop.stdout);
  const image = await stat(path.join(dir, 'volumes', v, 'image.ext4'));
  assert.equal(image.size, 32 * MiB);
  assert.ok(image.blocks * 512 < 8 * MiB, `sparse: ${image.blocks * 512} bytes allocated`);
  // retried create: the same volume; another size: Conflict
  assert.equal((await vs.create(v, 32 * MiB)).path, made.path);
  await assert.rejects(vs.create(v, 64 * MiB), { code: 'Conflict' });

  await writeFile(path.join(made.path, 'hello'), 'world');
  // fill it: dd stops at the filesystem's end
  const dd = await run('dd', ['if=/dev/zero', `of=${path.join(made.path, 'fill')}`, 'bs=1M', 'count=64']);
  assert.notEqual(dd.code, 0);
  assert.match(dd.stderr, /No space left on device/);
  const filled = (await stat(path.join(made.path, 'fill'))).size;
  assert.ok(filled <= 32 * MiB && filled > 20 * MiB, `wrote ${filled} bytes`);
  const use = await vs.usage(v);
  assert.ok(use.usedBytes > 20 * MiB && use.usedBytes <= 32 * MiB, `used ${use.usedBytes}`);

  // unmounted behind its back (a host restart): reconcile mounts it again, the data is there
  await run('umount', [path.join(dir, 'volumes', v, 'mnt')]);
  const stray = id();
  await vs.create(stray, 16 * MiB);
  // made a moment ago: its row may be newer than the list, so it stays
  assert.deepEqual(await vs.reconcile([v]), { mounted: 1, removed: [], missing: [] });
  const manifest = path.join(dir, 'volumes', stray, 'volume.json');
  await writeFile(manifest, JSON.stringify({ ...JSON.parse(await readFile(manifest, 'utf8')), createdAt: new Date(Date.now() - 3600_000).toISOString() }));
  const cutShort = path.join(dir, 'volumes', id());
  await mkdir(path.join(cutShort, 'mnt'), { recursive: true }); // no manifest: a create that died half-way
  const r = await vs.reconcile([v, 'f'.repeat(64)]);
  assert.deepEqual(r.removed.sort(), [stray, path.basename(cutShort)].sort());
  assert.deepEqual({ ...r, removed: [] }, { mounted: 1, removed: [], missing: ['f'.repeat(64)] });
  assert.equal(await readFile(path.join(made.path, 'hello'), 'utf8'), 'world');
  assert.deepEqual(await vs.list(), [v]);

  await vs.remove(v);
  await vs.remove(v); // idempotent
  assert.deepEqual(await vs.list(), []);
  assert.deepEqual(await mountsUnder(dir), [], 'nothing left mounted');
  const loops = await run('losetup', ['-j', path.join(dir, 'volumes', v, 'image.ext4')]);
  assert.equal(loops.stdout.trim(), '', 'no loop device left');
});

test('sizes are checked: too small, not whole MiB, more than the host has', { skip: !isRoot && 'needs root (mount)' }, async (t) => {
  const dir = await home(t);
  const vs = new VolumeStore(path.join(dir, 'volumes'));
  await assert.rejects(vs.create(id(), 1 * MiB), { code: 'InvalidArgument' });
  await assert.rejects(vs.create(id(), 16 * MiB + 1), { code: 'InvalidArgument' });
  await assert.rejects(vs.create('../etc', 16 * MiB), { code: 'InvalidArgument' });
  await assert.rejects(vs.create(id(), 16 * 1024 * 1024 * MiB), { code: 'ResourceExhausted' });
  assert.deepEqual(await vs.list(), []);
});
