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
