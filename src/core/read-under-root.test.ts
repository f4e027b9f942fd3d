// A file read from a tree someone else writes: no symlink followed on the way, a regular file
// only, bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readUnderRoot, removeUnderRoot } from './read-under-root.js';

test('readUnderRoot: a regular file below the root; nothing through a symlink anywhere on the way, nor a FIFO, nor more than the bound', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-read-under-root-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  const host = path.join(dir, 'host'); // outside the root: what a symlink would reach
  await mkdir(path.join(root, 'etc'), { recursive: true });
  await mkdir(path.join(host, 'etc'), { recursive: true });
  await writeFile(path.join(root, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  await writeFile(path.join(host, 'etc', 'passwd'), 'host-secret\n');
  await writeFile(path.join(host, 'number'), '42\n');
  assert.equal((await readUnderRoot(root, 'etc/passwd', 1024))?.toString(), 'root:x:0:0::/root:/bin/sh\n');
  assert.equal((await readUnderRoot(root, '/etc//passwd', 1024))?.toString(), 'root:x:0:0::/root:/bin/sh\n', 'leading and doubled slashes');
  assert.equal(await readUnderRoot(root, 'etc/passwd', 10), undefined, 'larger than the bound');
  assert.equal(await readUnderRoot(root, 'etc/shadow', 1024), undefined, 'not there');
  // the last component a symlink (absolute: the host's path)
  await symlink(path.join(host, 'number'), path.join(root, 'exit'));
  assert.equal(await readUnderRoot(root, 'exit', 1024), undefined, 'a symlink is not followed');
  // a directory on the way a symlink
  await mkdir(path.join(root, 'lib'));
  await symlink(path.join(host, 'etc'), path.join(root, 'lib', 'etc'));
  assert.equal(await readUnderRoot(root, 'lib/etc/passwd', 1024), undefined, 'nor a directory that is one');
  // a FIFO would block a reader; a directory is not a file
  execFileSync('mkfifo', [path.join(root, 'fifo')]);
  assert.equal(await readUnderRoot(root, 'fifo', 1024), undefined);
  assert.equal(await readUnderRoot(root, 'etc', 1024), undefined);
  await assert.rejects(readUnderRoot(root, '../host/number', 1024), /not a path below the root/);
});

test('removeUnderRoot: the name itself (a symlink, not what it names); nothing through a symlinked directory; nothing there is no error', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-remove-under-root-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  const host = path.join(dir, 'host');
  await mkdir(path.join(root, 'd'), { recursive: true });
  await mkdir(host);
  await writeFile(path.join(host, 'exit'), 'kept');
  await symlink(path.join(host, 'exit'), path.join(root, 'd', 'exit'));
  await removeUnderRoot(root, 'd/exit');
  await assert.rejects(lstat(path.join(root, 'd', 'exit')), /ENOENT/, 'the link went');
  assert.equal(await readFile(path.join(host, 'exit'), 'utf8'), 'kept', 'not what it named');
  await symlink(host, path.join(root, 'linked'));
  await removeUnderRoot(root, 'linked/exit');
  assert.equal(await readFile(path.join(host, 'exit'), 'utf8'), 'kept', 'not through a symlinked directory');
  await removeUnderRoot(root, 'd/none');
});
