// Garbage collection against image work on a real image host (native snapshotter, a loopback
// registry serving a one-layer image): a pull sent while a collection sweeps starts only after it,
// and what it pulled is all there afterwards. (With the old check at the collection's start
// only, the pull ran under the collection, whose later sweep then removed its blobs and snapshot.)
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DiskSpace } from '../content/disk-space.js';
import { LocalContentStore } from '../content/local-content-store.js';
import { NativeSnapshotter } from '../snapshots/native.js';
import { LocalImageHost } from './image-host.js';
import { serveSampleImage } from './pull-warmup.js';

test('a pull sent during a garbage collection\'s sweep waits for it, and keeps every blob and snapshot it pulled', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-gc-race-'));
  const registry = await serveSampleImage();
  try {
    let entered!: () => void;
    const inCollection = new Promise<void>((r) => (entered = r));
    let collectionWaits!: () => void;
    const held = new Promise<void>((r) => (collectionWaits = r));
    const content = new LocalContentStore(path.join(dir, 'content'));
    const snapshotter = new NativeSnapshotter(path.join(dir, 'snapshots'));
    // the sweep's first look at the snapshots: held there until the pull has been sent
    const list = snapshotter.list.bind(snapshotter);
    let first = true;
    snapshotter.list = async () => {
      if (first) {
        first = false;
        entered();
        await held;
      }
      return list();
    };
    const host = new LocalImageHost({
      options: { agentName: 'local', home: dir, tmpDir: dir, containersDir: dir, imageMaxBytes: 1 << 30, layerMaxBytes: 1 << 30 },
      content, snapshotter, snapshotterName: 'native',
      room: () => new DiskSpace({ content: dir, snapshots: dir }),
      releaseLayers: async () => undefined,
      withWritableLayer: () => Promise.reject(new Error('none')),
    }, { warmUp: false });
    const collected = host.garbageCollect({ manifestDigests: [], indexDigests: [], chainIds: [] });
    await inCollection;
    const pulled = host.pullImage(registry.reference, {}, () => undefined);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(registry.requests(), 0, 'the pull waits for the collection before it fetches anything');
    collectionWaits();
    await collected;
    const image = await pulled;
    assert.ok(registry.requests() >= 4, 'then it pulls');
    for (const d of [image.manifestDigest, image.configDigest, ...image.layers.map((l) => l.digest)]) {
      assert.ok(await content.info(d), `blob ${d} is in the store after the collection`);
    }
    const snaps = (await snapshotter.list()).map((s) => s.key);
    assert.ok(snaps.includes(image.chainId), `its snapshot is there: ${snaps.join(', ')}`);
    await host.close();
  } finally {
    registry.server.closeAllConnections();
    await new Promise<void>((r) => registry.server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  }
});
