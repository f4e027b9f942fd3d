import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasCode } from '../../core/errors.js';
import { DiskSpace, statfsProbe, type FsSpace } from './disk-space.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** A probe answering from a table: which filesystem each directory is on and its space. */
function fakeProbe(table: Record<string, FsSpace>) {
  return async (dir: string) => {
    const fs = table[dir];
    if (!fs) throw new Error(`no such dir ${dir}`);
    return fs;
  };
}

test('ensureRoom: the content store and the snapshots add up on one filesystem, not on two; the reserve is min(bytes, ratio)', async () => {
  const one = { id: '1', availBytes: 10 * GiB, totalBytes: 100 * GiB };
  const shared = new DiskSpace({ content: '/c', snapshots: '/s' }, { probe: fakeProbe({ '/c': one, '/s': one }) });
  // reserve = min(1 GiB, 5 GiB) = 1 GiB: 9 GiB of room
  await shared.ensureRoom({ content: 4 * GiB, snapshots: 5 * GiB }, 'pulling x');
  await assert.rejects(shared.ensureRoom({ content: 4 * GiB, snapshots: 5 * GiB + 1 }, 'pulling x'), (e: unknown) => {
    assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
    assert.match((e as Error).message, /^not enough disk space for pulling x: needs at least 9216 MiB, 9216 MiB free beyond the 1024 MiB reserve$/);
    return true;
  });

  const apart = new DiskSpace(
    { content: '/c', snapshots: '/s' },
    { probe: fakeProbe({ '/c': one, '/s': { id: '2', availBytes: 6 * GiB, totalBytes: 10 * GiB } }) },
  );
  // snapshots' filesystem: reserve = min(1 GiB, 0.5 GiB) = 0.5 GiB
  await apart.ensureRoom({ content: 9 * GiB, snapshots: 5.5 * GiB }, 'x');
  await assert.rejects(apart.ensureRoom({ content: 9 * GiB, snapshots: 5.5 * GiB + 1 }, 'x'), /512 MiB reserve/);
  await assert.rejects(apart.ensureRoom({ content: 9 * GiB + 1, snapshots: 0 }, 'x'), /1024 MiB reserve/);

  // a filesystem already into its reserve refuses even an empty need; snapshotRoom says how much is left
  const full = new DiskSpace({ content: '/c', snapshots: '/c' }, { reserveBytes: 64 * MiB, probe: fakeProbe({ '/c': { id: '1', availBytes: 64 * MiB, totalBytes: 100 * GiB } }) });
  await assert.rejects(full.ensureRoom({ content: 0, snapshots: 0 }, 'x'), (e: unknown) => hasCode(e, 'ResourceExhausted'));
  await assert.rejects(full.snapshotRoom('layer sha256:1'), /fell to its 64 MiB reserve while unpacking layer sha256:1/);
  const some = new DiskSpace({ content: '/c', snapshots: '/c' }, { reserveBytes: 64 * MiB, probe: fakeProbe({ '/c': { id: '1', availBytes: 100 * MiB, totalBytes: 100 * GiB } }) });
  assert.equal(await some.snapshotRoom('x'), 36 * MiB);
});

test('statfsProbe: a real tmpfs, its not-yet-created subdirectories, and another filesystem', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-disk-space-'));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'nimbus-test', mnt]);
  assert.equal(m.status, 0, `mount tmpfs: ${m.stderr}`);
  t.after(() => {
    spawnSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  });
  const fs = await statfsProbe(mnt);
  assert.equal(fs.totalBytes, 16 * MiB);
  assert.equal(fs.availBytes, 16 * MiB);
  const later = await statfsProbe(join(mnt, 'content', 'not', 'yet'));
  assert.equal(later.id, fs.id, 'a missing directory is measured on its nearest ancestor');
  assert.notEqual((await statfsProbe(dir)).id, fs.id);

  writeFileSync(join(mnt, 'fill'), Buffer.alloc(10 * MiB, 1));
  assert.equal((await statfsProbe(mnt)).availBytes, 6 * MiB);
  // reserve = min(1 GiB, 5% of 16 MiB) = 819 KiB; 6 MiB free leaves 5.2 MiB of room
  const space = new DiskSpace({ content: join(mnt, 'content'), snapshots: join(mnt, 'snapshots') });
  await space.ensureRoom({ content: 2 * MiB, snapshots: 3 * MiB }, 'x');
  await assert.rejects(space.ensureRoom({ content: 3 * MiB, snapshots: 3 * MiB }, 'pulling y'), (e: unknown) => {
    assert.ok(hasCode(e, 'ResourceExhausted'));
    assert.match((e as Error).message, /pulling y: needs at least 6\.0 MiB, 5\.2 MiB free beyond the 0\.8 MiB reserve/);
    assert.doesNotMatch((e as Error).message, /\//, 'no path in the message');
    return true;
  });
});
