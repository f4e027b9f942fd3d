import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { hasCode, type NimbusError } from '../../core/errors.js';
import { MAX_LAYERS, OverlaySnapshotter, overlayfsSupported } from './overlayfs.js';
import { mountAll, mountsUnder, unmountAll } from './mount.js';
import { makeExt4Image, mountExt4Image } from './ext4-image.js';

const MiB = 1024 * 1024;
// the conformance suite runs over the registry (registry.test.ts)

describe('overlayfs specifics', () => {
  it('overlayfsSupported really mounts and cleans up', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-probe-'));
    try {
      assert.equal(await overlayfsSupported(dir), undefined);
      assert.deepEqual(await readdir(dir), []);
      assert.deepEqual(await mountsUnder(dir), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('mount specs: bind for a base, overlay with top-first lowerdirs for a chain', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-spec-'));
    try {
      const sn = new OverlaySnapshotter(dir);
      const [b] = await sn.prepare('a');
      assert.equal(b?.type, 'bind');
      assert.deepEqual(b?.options, ['bind', 'rw']);
      await sn.commit('A', 'a');
      await sn.prepare('b', 'A');
      await sn.commit('B', 'b');
      const [v1] = await sn.view('v1', 'A');
      assert.equal(v1?.type, 'bind');
      assert.ok(v1?.options.includes('ro'));
      const [v2] = await sn.view('v2', 'B');
      assert.equal(v2?.type, 'overlay');
      assert.ok(!v2?.options.some((o) => o.startsWith('upperdir=')));
      const [p] = await sn.prepare('p', 'B');
      const lower = p?.options.find((o) => o.startsWith('lowerdir='));
      assert.equal(lower, `lowerdir=${dir}/snapshots/2/fs:${dir}/snapshots/1/fs`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a failed mount names no snapshot directory in its message (a member may read it); its adminMessage does', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-fail-'));
    try {
      const sn = new OverlaySnapshotter(dir);
      await sn.prepare('a');
      await sn.commit('A', 'a');
      const mounts = await sn.prepare('p', 'A');
      // its lower directory gone: the overlay mount fails
      await rm(path.join(dir, 'snapshots', '1', 'fs'), { recursive: true });
      const target = path.join(dir, 'mnt');
      await mkdir(target);
      const err = await mountAll(mounts, target).then(() => assert.fail('mounted'), (e: unknown) => e as NimbusError);
      assert.ok(hasCode(err, 'Internal'), String(err));
      assert.match(err.message, /^mount -t overlay .*failed \(exit \d+\)/);
      assert.ok(!err.message.includes(dir) && !JSON.stringify(err.details ?? {}).includes(dir), `${err.message} ${JSON.stringify(err.details)}`);
      // mounted from the snapshots' directory with relative options (mount.ts), which it names
      assert.ok(err.adminMessage?.includes('lowerdir=1/fs') && err.adminMessage.includes(`(in ${dir}/snapshots)`), String(err.adminMessage));
    } finally {
      await unmountAll(path.join(dir, 'mnt'));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('concurrent creates write their records together; a save that fails fails every record it held and leaves no directory, and a commit or remove it fails is undone', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-batch-'));
    let pinned = false;
    try {
      const sn = new OverlaySnapshotter(dir);
      await sn.prepare('a');
      await sn.commit('A', 'a');
      // twenty at once: each gets its own record and directory
      const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
      await Promise.all(keys.map((k) => sn.prepare(k, 'A')));
      assert.deepEqual((await sn.list()).map((i) => i.key).sort(), ['A', ...keys].sort());
      // the metadata cannot be written (its directory and its journal immutable): every create of the batch fails
      try {
        execFileSync('chattr', ['+i', dir]);
        pinned = true;
      } catch {
        return; // no chattr, or a filesystem without the flag
      }
      execFileSync('chattr', ['+i', path.join(dir, 'metadata.journal')]); // there since the first create
      const failed = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => sn.prepare(`f${i}`, 'A')));
      // a commit and a remove that cannot be saved are undone in memory too (changes are made in place)
      await assert.rejects(sn.commit('K0', 'k0'));
      await assert.rejects(sn.remove('k1'));
      execFileSync('chattr', ['-i', dir, path.join(dir, 'metadata.journal')]);
      pinned = false;
      assert.ok(failed.every((r) => r.status === 'rejected'), 'a create reported done whose record was not written');
      assert.equal((await sn.stat('k0')).kind, 'active', 'the commit that was not saved is undone');
      await assert.rejects(sn.stat('K0'), (e: NimbusError) => hasCode(e, 'NotFound'));
      assert.equal((await sn.stat('k1')).kind, 'active', 'the remove that was not saved is undone');
      assert.deepEqual((await sn.list()).length, 21);
      assert.deepEqual((await new OverlaySnapshotter(dir).list()).length, 21, 'what is on disk agrees');
      const onDisk = (await readdir(path.join(dir, 'snapshots'))).length;
      assert.equal(onDisk, 21, 'a failed create left its directory');
      // and the snapshotter goes on
      await sn.prepare('after', 'A');
      assert.equal((await sn.list()).length, 22);
    } finally {
      if (pinned) execFileSync('chattr', ['-i', dir, ...(existsSync(path.join(dir, 'metadata.journal')) ? [path.join(dir, 'metadata.journal')] : [])]);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it(`refuses chains longer than ${MAX_LAYERS} layers clearly`, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-long-'));
    try {
      const sn = new OverlaySnapshotter(dir);
      let parent: string | undefined;
      for (let i = 0; i < MAX_LAYERS; i++) {
        const [m] = await sn.prepare(`k${i}`, parent);
        // write straight into the snapshot's own dir: the bind source or the overlay upperdir
        const own = m!.options.find((o) => o.startsWith('upperdir='))?.slice('upperdir='.length) ?? m!.source;
        if (i === 0 || i === MAX_LAYERS - 1) await writeFile(path.join(own, `f${i}`), `${i}`);
        await sn.commit(`L${i}`, `k${i}`);
        parent = `L${i}`;
      }
      // exactly MAX_LAYERS lowers: the options exceed a page, mount.ts compacts them
      const mounts = await sn.prepare('ok', parent);
      assert.ok(mounts[0]!.options.join(',').length > 4096);
      const target = path.join(dir, 'mnt');
      await mkdir(target);
      await mountAll(mounts, target);
      try {
        assert.deepEqual((await readdir(target)).sort(), ['f0', `f${MAX_LAYERS - 1}`]);
      } finally {
        await unmountAll(target);
      }
      await sn.prepare('one-more', parent);
      await sn.commit(`L${MAX_LAYERS}`, 'one-more');
      await assert.rejects(sn.prepare('too-long', `L${MAX_LAYERS}`), (e: unknown) => {
        assert.ok(hasCode(e, 'InvalidArgument'));
        assert.match(String(e), /exceeds/);
        return true;
      });
    } finally {
      await unmountAll(path.join(dir, 'mnt'));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a sized snapshot is mounted again after a host restart, once, through a symlinked home too; a create cut short leaves nothing after the next start', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ovl-sized-'));
    const target = path.join(dir, 'rootfs');
    try {
      // the home reached through a symlink: mountinfo and the loop devices name real paths
      await mkdir(path.join(dir, 'real-root'));
      await symlink('real-root', path.join(dir, 'root'));
      const sn = new OverlaySnapshotter(path.join(dir, 'root'));
      await sn.prepare('base-active');
      await sn.commit('base', 'base-active');
      await sn.prepare('kept', 'base', { sizeBytes: 16 * MiB });
      await mkdir(target);
      await mountAll(await sn.mounts('kept'), target);
      await writeFile(path.join(target, 'mine'), 'written before the restart');
      await unmountAll(target);
      const snapshots = path.join(dir, 'root', 'snapshots');
      const [kept] = await mountsUnder(snapshots);
      assert.ok(kept, 'the sized snapshot has its own filesystem');
      // a host restart: nothing is mounted any more
      await unmountAll(kept);
      // a create cut short once its filesystem was mounted, before its record was written
      const orphan = path.join(snapshots, '9999');
      await mkdir(orphan);
      await makeExt4Image(path.join(dir, 'root', 'disks', '9999.ext4'), 16 * MiB, 'orphan');
      await mountExt4Image(path.join(dir, 'root', 'disks', '9999.ext4'), orphan);
      await writeFile(path.join(orphan, 'half'), 'x');
      // and one killed inside mount(8): its image attached to a loop device, mounted nowhere
      await makeExt4Image(path.join(dir, 'root', 'disks', '9998.ext4'), 16 * MiB, 'stray');
      const stray = execFileSync('losetup', ['-f', '--show', path.join(dir, 'root', 'disks', '9998.ext4')], { encoding: 'utf8' }).trim();

      const again = new OverlaySnapshotter(path.join(dir, 'root'));
      assert.equal((await again.stat('kept')).sizeBytes, 16 * MiB);
      assert.deepEqual(await mountsUnder(snapshots), [kept], 'the kept one mounted again, the orphan gone');
      const third = new OverlaySnapshotter(path.join(dir, 'root'));
      await third.list();
      assert.equal((await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4] === kept).length, 1, 'not mounted twice by a later start');
      await assert.rejects(stat(orphan), /ENOENT/);
      assert.equal(existsSync(`/sys/block/${path.basename(stray)}/loop/backing_file`), false, 'the stray loop device detached');
      assert.deepEqual(await readdir(path.join(dir, 'root', 'disks')), [`${path.basename(kept)}.ext4`]);
      await mountAll(await again.mounts('kept'), target);
      assert.equal(await readFile(path.join(target, 'mine'), 'utf8'), 'written before the restart');
      await assert.rejects(writeFile(path.join(target, 'big'), Buffer.alloc(20 * MiB, 1)), /ENOSPC/);
      await unmountAll(target);
      await again.remove('kept');
      assert.deepEqual(await mountsUnder(dir), []);
      assert.deepEqual(await readdir(path.join(dir, 'root', 'disks')), []);
    } finally {
      for (const m of await mountsUnder(dir)) await unmountAll(m).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
