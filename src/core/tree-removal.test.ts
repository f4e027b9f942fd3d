import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { removeTree, removeTreeUnlessMounted, startRemovalThread } from './tree-removal.js';

function makeTree(root: string): void {
  for (const d of ['a/b/c', 'a/d', 'e']) mkdirSync(path.join(root, d), { recursive: true });
  for (const f of ['a/b/c/1', 'a/d/2', 'e/3', '4']) writeFileSync(path.join(root, f), 'x');
}

const isRoot = process.getuid?.() === 0;

test('a tree is removed before the thread runs (fs.promises) and through it, and an absent one is no error', async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-tree-removal-'));
  try {
    const first = path.join(base, 'first');
    makeTree(first);
    await removeTree(first);
    assert.equal(existsSync(first), false);
    await startRemovalThread();
    const second = path.join(base, 'second');
    makeTree(second);
    await removeTree(second);
    assert.equal(existsSync(second), false);
    await removeTree(path.join(base, 'absent'));
    assert.deepEqual(await removeTreeUnlessMounted(path.join(base, 'absent')), []);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});

test('a tree with a mount below it is left whole and its mount points returned', { skip: !isRoot && 'needs root to mount' }, async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-tree-removal-'));
  const mnt = path.join(base, 'tree/a/mnt');
  try {
    await startRemovalThread();
    makeTree(path.join(base, 'tree'));
    mkdirSync(mnt);
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', 'nimbus-test', mnt]).status, 0);
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', 'nimbus-test', mnt]).status, 0); // stacked: named once
    writeFileSync(path.join(mnt, 'kept'), 'x');
    assert.deepEqual(await removeTreeUnlessMounted(path.join(base, 'tree')), [mnt]);
    assert.equal(existsSync(path.join(mnt, 'kept')), true);
    assert.equal(existsSync(path.join(base, 'tree/a/b/c/1')), true);
    assert.equal(spawnSync('umount', [mnt]).status, 0);
    assert.equal(spawnSync('umount', [mnt]).status, 0);
    assert.deepEqual(await removeTreeUnlessMounted(path.join(base, 'tree')), []);
    assert.equal(existsSync(path.join(base, 'tree')), false);
  } finally {
    spawnSync('umount', [mnt]);
    spawnSync('umount', [mnt]);
    rmSync(base, { recursive: true, force: true });
  }
});

test('a removal the thread cannot finish rejects with the error code', { skip: !isRoot && 'needs root for chattr +i' }, async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-tree-removal-'));
  const pinned = path.join(base, 'tree/e/3');
  try {
    await startRemovalThread();
    makeTree(path.join(base, 'tree'));
    if (spawnSync('chattr', ['+i', pinned]).status !== 0) return; // a filesystem without the flag
    await assert.rejects(removeTree(path.join(base, 'tree')), (e: NodeJS.ErrnoException) => typeof e.code === 'string' && e.code.startsWith('E')); // EPERM, or ENOTDIR as rm's retry puts it
    // the thread goes on with the next one
    spawnSync('chattr', ['-i', pinned]);
    await removeTree(path.join(base, 'tree'));
    assert.equal(existsSync(path.join(base, 'tree')), false);
  } finally {
    spawnSync('chattr', ['-i', pinned]);
    rmSync(base, { recursive: true, force: true });
  }
});

test('the thread holds a process while a removal is pending, and not once it is idle', async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-tree-removal-'));
  try {
    makeTree(path.join(base, 'tree'));
    // The removal is not awaited: only the thread's own hold keeps the process until it is done;
    // then the idle thread (it stays for a minute) must not keep the process alive.
    const script = `
      import { removeTree, startRemovalThread } from ${JSON.stringify(new URL('./tree-removal.js', import.meta.url).href)};
      await startRemovalThread();
      void removeTree(${JSON.stringify(path.join(base, 'tree'))}).then(() => console.log('removed'));
    `;
    const file = path.join(base, 'remove.mjs'); // a file, not -e: the thread would inherit --input-type
    writeFileSync(file, script);
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 20_000 });
    const ms = Date.now() - t0;
    assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}: ${r.stderr}`);
    assert.equal(r.stdout.trim(), 'removed', 'the pending removal finished before the process ended');
    assert.equal(existsSync(path.join(base, 'tree')), false);
    assert.ok(ms < 10_000, `the process ended ${ms} ms after it started (the idle thread held it)`);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});
