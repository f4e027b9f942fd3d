// Garbage collection against image work on a real image host (native snapshotter, a loopback
// registry serving a one-layer image): a pull sent while a collection sweeps starts only after it,
// and what it pulled is all there afterwards. (With the old check at the collection's start
// only, the pull ran under the collection, whose later sweep then removed its blobs and snapshot.)
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { testImageHost } from './image-host-test-support.js';
import { serveSampleImage } from './pull-warmup.js';

test('a pull sent during a garbage collection\'s sweep waits for it, and keeps every blob and snapshot it pulled', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-gc-race-'));
  const registry = await serveSampleImage();
  try {
    let entered!: () => void;
    const inCollection = new Promise<void>((r) => (entered = r));
    let collectionWaits!: () => void;
    const held = new Promise<void>((r) => (collectionWaits = r));
    // the sweep's first look at the snapshots: held there until the pull has been sent
    const { host, content, snapshotter } = testImageHost(dir, {
      prepare: ({ snapshotter: s }) => {
        const list = s.list.bind(s);
        let first = true;
        s.list = async () => {
          if (first) {
            first = false;
            entered();
            await held;
          }
          return list();
        };
      },
    });
    const collected = host.garbageCollect({ manifestDigests: [], indexDigests: [], chainIds: [] });
    await inCollection;
    const pulled = host.pullImage(registry.reference, { allowedRegistries: [registry.host] }, () => undefined);
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
    await registry.close();
    await rm(dir, { recursive: true, force: true });
  }
});
