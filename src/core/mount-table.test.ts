import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { isMounted, mountPointsSync, mountsUnder, mountsUnderSync, readMountInfoSync } from './mount-table.js';
import { unmountAll } from '../agent/snapshots/mount.js';

const isRoot = process.getuid?.() === 0;
const mount = (dir: string) => assert.equal(spawnSync('mount', ['-t', 'tmpfs', 'nimbus-test', dir]).status, 0);

test('the mount points read alone are the full parse\'s', () => {
  assert.deepEqual(mountPointsSync(), readMountInfoSync().map((m) => m.mountPoint));
  assert.ok(mountPointsSync().includes('/'));
});

test('mounts below a directory: escaped names decoded, deepest first, a stack listed topmost first; unmountAll takes them all', { skip: !isRoot && 'needs root to mount' }, async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-mount-table-'));
  const spaced = path.join(base, 'a dir');
  const nested = path.join(spaced, 'inner');
  try {
    mkdirSync(spaced);
    mount(spaced);
    mount(spaced); // stacked on the first
    mkdirSync(nested);
    mount(nested);
    assert.ok(await isMounted(spaced));
    assert.deepEqual(mountsUnderSync(base), [nested, spaced, spaced]);
    assert.deepEqual(await mountsUnder(base), [nested, spaced]);
    await unmountAll(base);
    assert.deepEqual(mountsUnderSync(base), []);
    assert.equal(await isMounted(spaced), false);
    await unmountAll(base); // nothing left: no error
  } finally {
    for (let i = 0; i < 3; i++) spawnSync('umount', ['-R', spaced]);
    rmSync(base, { recursive: true, force: true });
  }
});

test('an overlay is mounted with its directories relative to their common parent, and its table line shows no host path', { skip: !isRoot && 'needs root to mount' }, async () => {
  const { compactOverlayOptions, mountAll } = await import('../agent/snapshots/mount.js');
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-mount-table-'));
  const snaps = path.join(base, 'snapshots');
  const target = path.join(base, 'rootfs');
  try {
    for (const d of ['1/fs', '2/fs', '7/fs', '7/work']) mkdirSync(path.join(snaps, d), { recursive: true });
    mkdirSync(target);
    const options = [`workdir=${snaps}/7/work`, `upperdir=${snaps}/7/fs`, `lowerdir=${snaps}/2/fs:${snaps}/1/fs`];
    assert.deepEqual(compactOverlayOptions(options), { options: ['workdir=7/work', 'upperdir=7/fs', 'lowerdir=2/fs:1/fs'], cwd: snaps });
    // not all under one parent, or a relative one already: left as they are
    assert.deepEqual(compactOverlayOptions(['lowerdir=/a/x:/b/y', 'upperdir=/c/z']), { options: ['lowerdir=/a/x:/b/y', 'upperdir=/c/z'] });
    assert.deepEqual(compactOverlayOptions(['lowerdir=x:/b/y']), { options: ['lowerdir=x:/b/y'] });
    await mountAll([{ type: 'overlay', source: 'overlay', options }], target);
    const line = readMountInfoSync().find((m) => m.mountPoint === target);
    assert.ok(line, 'mounted');
    assert.match(line.superOptions, /lowerdir=2\/fs:1\/fs/);
    assert.ok(!line.superOptions.includes(snaps), line.superOptions);
    await unmountAll(target);
    assert.equal(await isMounted(target), false);
  } finally {
    spawnSync('umount', [target]);
    rmSync(base, { recursive: true, force: true });
  }
});
