import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { hasCode, type NimbusError } from '../../core/errors.js';
import { MAX_LAYERS, OverlaySnapshotter, overlayfsSupported } from './overlayfs.js';
import { mountAll, mountsUnder, unmountAll } from './mount.js';
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
      assert.ok(err.adminMessage?.includes(`lowerdir=${dir}/snapshots/1/fs`), String(err.adminMessage));
    } finally {
      await unmountAll(path.join(dir, 'mnt'));
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
});
