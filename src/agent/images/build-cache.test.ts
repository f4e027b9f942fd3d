/**
 * The build cache's bookkeeping without buildah (test/build.e2e.test.ts drives it with real
 * builds): stores per project and per FROM set, the bound per project, collection by the images
 * kept, a store left in use by a dead agent or dirtied by a killed build removed, never one in use.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BuildCache, MAX_STORES_PER_PROJECT, type CacheKey } from './build-cache.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'nimbus-build-cache-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

const key = (projectId: string, base = 'sha256:aa', network: 'none' | 'host' = 'none'): CacheKey => ({
  projectId, storageDriver: 'vfs', network, bases: [{ name: 'busybox', manifestDigest: base }],
});
const result = (n: number) => ({ imageId: String(n).padStart(64, '0'), manifestDigest: `sha256:${String(n).padStart(64, '0')}` });
const stores = (project: string) => (existsSync(join(root, project)) ? readdirSync(join(root, project)) : []);

test('one store per project and FROM set and network; another project never gets it', async () => {
  const cache = new BuildCache(join(root, 'a'));
  const l1 = await cache.acquire(key('p1'));
  const l2 = await cache.acquire(key('p1'));
  assert.equal(l1.storage, l2.storage, 'the same FROM images: one store, shared at once');
  assert.notEqual((await cache.acquire(key('p2'))).storage, l1.storage, 'never another project\'s');
  assert.notEqual((await cache.acquire(key('p1', 'sha256:bb'))).storage, l1.storage, 'other FROM images: another store');
  assert.notEqual((await cache.acquire(key('p1', 'sha256:aa', 'host'))).storage, l1.storage, 'the host network: another store');
  assert.equal(l1.basesReady, false);
  await l1.markBasesReady();
  await l1.release({ result: result(1) });
  await l2.release({});
  const again = await cache.acquire(key('p1'));
  assert.equal(again.basesReady, true, 'the FROM images stay in the store');
  assert.equal(await again.importedAs(result(1).imageId), result(1).manifestDigest);
  await again.release({});
});

test('collection removes idle stores none of whose images is kept, never one in use', async () => {
  const r = join(root, 'b');
  const cache = new BuildCache(r);
  const kept = await cache.acquire(key('p1'));
  await kept.release({ result: result(1) });
  const dropped = await cache.acquire(key('p1', 'sha256:bb'));
  await dropped.release({ result: result(2) });
  const busy = await cache.acquire(key('p1', 'sha256:cc'));
  assert.equal(await cache.collect(new Set([result(1).manifestDigest])), 1);
  assert.ok(existsSync(kept.storage), 'an image it built is kept');
  assert.equal(existsSync(dropped.storage), false, 'none of its images is kept');
  assert.ok(existsSync(busy.storage), 'in use');
  await busy.release({});
  assert.equal(await cache.collect(new Set()), 2);
  assert.equal(existsSync(join(r, 'p1')), false, 'the project\'s directory goes with its last store');
});

test('a project keeps at most MAX_STORES_PER_PROJECT stores: the least recently used idle one goes', async () => {
  const cache = new BuildCache(join(root, 'c'));
  const made: string[] = [];
  for (let i = 0; i < MAX_STORES_PER_PROJECT; i++) {
    const l = await cache.acquire(key('p1', `sha256:${i}`));
    made.push(l.storage);
    await l.release({});
    await new Promise((res) => setTimeout(res, 5));
  }
  const l = await cache.acquire(key('p1', 'sha256:new'));
  assert.equal(existsSync(made[0]!), false, 'the oldest went');
  assert.ok(made.slice(1).every((s) => existsSync(s)));
  await l.release({});
});

test('a store whose build was killed goes when its last user leaves; one left in use by a dead agent goes at the sweep', async () => {
  const r = join(root, 'd');
  const cache = new BuildCache(r);
  const a = await cache.acquire(key('p1'));
  const b = await cache.acquire(key('p1'));
  await a.release({ dirty: true });
  assert.ok(existsSync(a.storage), 'still in use by the other build');
  await b.release({ result: result(3) });
  assert.equal(existsSync(a.storage), false, 'removed once idle');
  const left = await cache.acquire(key('p2'));
  writeFileSync(join(left.storage, 'half-written'), '');
  const clean = await cache.acquire(key('p3'));
  await clean.release({});
  // a new agent process on the same home: p2's store was in use when the old one died
  await new BuildCache(r).sweep();
  assert.deepEqual(stores('d/p2'), []);
  assert.equal(stores('d/p3').length, 1, 'an idle store is kept');
});
