/**
 * The deferred mknod/setxattr helper on its own: it reaches each target from the layer's root
 * without following a symlink, whatever the extractor's bookkeeping (apply-layer.ts) says.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hasCode } from '../../core/errors.js';
import { applySpecialOps } from './special-ops.js';

let base: string;
before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-special-ops-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

function xattrs(p: string): string {
  const g = spawnSync('getfattr', ['-h', '-d', '-m', '-', p]);
  assert.equal(g.status, 0, `getfattr: ${g.stderr.toString()}`);
  return g.stdout.toString();
}

describe('applySpecialOps', () => {
  it('makes whiteouts, fifos and xattrs under the root, the root itself included', async () => {
    const root = path.join(base, 'ok');
    await mkdir(path.join(root, 'a', 'b'), { recursive: true });
    await writeFile(path.join(root, 'a', 'f'), 'x');
    await applySpecialOps(
      root,
      [
        { kind: 'whiteout', rel: 'a/b/gone', entry: 'a/b/.wh.gone', mode: 0 },
        { kind: 'fifo', rel: 'a/p', entry: 'a/p', mode: 0o640 },
      ],
      [
        { rel: 'a/f', entry: 'a/f', name: 'user.note', value: Buffer.from('hi') },
        { rel: '', entry: '.wh..wh..opq', name: 'user.top', value: Buffer.from('y') },
      ],
    );
    const wh = await lstat(path.join(root, 'a', 'b', 'gone'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'a 0:0 character device');
    assert.ok((await lstat(path.join(root, 'a', 'p'))).isFIFO());
    assert.match(xattrs(path.join(root, 'a', 'f')), /user\.note="hi"/);
    assert.match(xattrs(root), /user\.top="y"/);
  });

  it('refuses a target whose parent is a symlink, making nothing where it points (the message names the entry, not a host path)', async () => {
    const root = path.join(base, 'hostile');
    const outside = path.join(base, 'outside');
    await mkdir(root);
    await mkdir(outside);
    await writeFile(path.join(outside, 'file'), 'original');
    await symlink(outside, path.join(root, 's'));
    await mkdir(path.join(root, 'real'));
    await symlink(outside, path.join(root, 'real', 'deeper'));
    const refused = (e: unknown) => {
      assert.ok(hasCode(e, 'InvalidArgument'), String(e));
      assert.match((e as Error).message, /layer entry "s\/\.wh\.x"|layer entry "real\/deeper\/p"|layer entry "s\/file"/);
      assert.match((e as Error).message, /refusing to follow/);
      assert.doesNotMatch((e as Error).message, new RegExp(base));
      return true;
    };
    await assert.rejects(applySpecialOps(root, [{ kind: 'whiteout', rel: 's/x', entry: 's/.wh.x', mode: 0 }], []), refused);
    await assert.rejects(applySpecialOps(root, [{ kind: 'fifo', rel: 'real/deeper/p', entry: 'real/deeper/p', mode: 0o644 }], []), refused);
    await assert.rejects(applySpecialOps(root, [], [{ rel: 's/file', entry: 's/file', name: 'user.pwned', value: Buffer.from('yes') }]), refused);
    assert.deepEqual(await readdir(outside), ['file']);
    assert.doesNotMatch(xattrs(path.join(outside, 'file')), /pwned/);
  });
});
