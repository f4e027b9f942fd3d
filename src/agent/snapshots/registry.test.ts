import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { hasCode } from '../../core/errors.js';
import { chooseSnapshotter, snapshotterNamed, snapshotters } from './registry.js';
import { snapshotterConformance } from './snapshotter-conformance.js';

// every registered snapshotter passes the one conformance suite (a new one gets it by registering)
for (const name of snapshotters.names()) snapshotterConformance(name, async (root) => snapshotterNamed(name, root));

describe('snapshotter registry', () => {
  it('auto takes overlayfs where it works, native when asked, and each under its own name', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-snap-choose-'));
    try {
      const auto = await chooseSnapshotter('auto', { snapshotsDir: dir, probeDir: dir });
      assert.equal(auto.snapshotter.name, 'overlayfs');
      assert.deepEqual(auto.probes, [{ name: 'overlayfs', usable: true }, { name: 'native', usable: true }]);
      const native = await chooseSnapshotter('native', { snapshotsDir: dir, probeDir: dir });
      assert.equal(native.snapshotter.name, 'native');
      await native.snapshotter.prepare('k');
      await auto.snapshotter.prepare('k');
      assert.deepEqual((await readdir(dir)).sort(), ['native', 'overlayfs'], 'each keeps its snapshots under its own name');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an unusable overlayfs: auto falls back to native, asking for it is refused with the reason', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-snap-choose-'));
    try {
      const notADir = path.join(dir, 'file'); // the probe cannot make its trial mount under a file
      await writeFile(notADir, '');
      const ctx = { snapshotsDir: dir, probeDir: notADir };
      const auto = await chooseSnapshotter('auto', ctx);
      assert.equal(auto.snapshotter.name, 'native');
      const overlay = auto.probes.find((p) => p.name === 'overlayfs');
      assert.equal(overlay?.usable, false);
      assert.match(overlay?.reason ?? '', /overlay probe failed/);
      await assert.rejects(chooseSnapshotter('overlayfs', ctx), (e: unknown) => hasCode(e, 'InvalidArgument') && /snapshotter overlayfs is not usable here: overlay probe failed/.test((e as Error).message));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a name nothing registered is an internal error, not a silent default', () => {
    assert.throws(() => snapshotterNamed('zfs', tmpdir()), (e: unknown) => hasCode(e, 'Internal'));
  });
});
