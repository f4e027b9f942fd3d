import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { spreadSubdirectories } from './spread-directories.js';

const lsattrFlags = (dir: string): string | undefined => {
  const r = spawnSync('lsattr', ['-d', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split(/\s+/)[0] : undefined;
};

describe('spreadSubdirectories', () => {
  it('marks a directory on ext4 "top of directory hierarchies" (T), once per process', async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-spread-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const before = lsattrFlags(dir);
    if (before === undefined) return t.skip(`lsattr cannot read ${tmpdir()}'s flags here: not ext4`);
    assert.ok(!before.includes('T'), `a new directory has no T flag (${before})`);
    assert.equal(await spreadSubdirectories(dir), true);
    assert.ok(lsattrFlags(dir)!.includes('T'), `T set: ${lsattrFlags(dir)}`);
    // the same promise again: no second chattr
    assert.equal(spreadSubdirectories(dir), spreadSubdirectories(dir));
    // not inherited: a subdirectory's own children are placed as before
    const sub = path.join(dir, 'sub');
    spawnSync('mkdir', [sub]);
    assert.ok(!lsattrFlags(sub)!.includes('T'), 'the flag is not inherited');
  });

  it('resolves false, never rejects, where it cannot be set (tmpfs, a missing directory)', async () => {
    assert.equal(await spreadSubdirectories(path.join(tmpdir(), 'nimbus-spread-missing-' + process.pid)), false);
    assert.equal(await spreadSubdirectories('/dev/shm'), false); // tmpfs has no such flag
  });
});
