/** The volumes part of the store conformance suite: rows, names per project, hosts, status, removal. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { ConformanceTarget } from './conformance.js';
import type { VolumeRecord } from './repos/volumes.js';
import type { Store } from './store.js';

const MiB = 1024 * 1024;

const volumeOf = (id: string, name: string, over: Partial<VolumeRecord> = {}): VolumeRecord => ({
  id, name, projectId: 'p1', host: 'h1', driver: 'local', sizeBytes: 64 * MiB, status: 'creating', labels: {}, driverOptions: {},
  createdAt: `2026-01-01T00:00:0${id.length % 10}.000Z`, ...over,
});

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal((e as { code?: unknown }).code, code, `expected ${code}, got ${String(e)}`);
    if (message) assert.match((e as Error).message, message);
    return true;
  });
}

export function volumeConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  async function setup(t: TestContext): Promise<{ s: Store; target: ConformanceTarget }> {
    const target = await open();
    t.after(() => target.cleanup());
    const s = target.store;
    await s.projects.insert({ id: 'p1', name: 'a', parentId: null, createdAt: '2026-01-01T00:00:00.000Z' });
    await s.projects.insert({ id: 'p2', name: 'b', parentId: null, createdAt: '2026-01-01T00:00:00.000Z' });
    return { s, target };
  }

  test(`${name}: volumes: names are unique per project, rows read back whole, big sizes stay exact`, async (t) => {
    const { s } = await setup(t);
    const v = s.volumes;
    const data = volumeOf('v1', 'data', { labels: { tier: 'gold', 'a.b': 'c d' }, sizeBytes: 3 * 1024 ** 4 });
    await v.insert(data);
    assert.deepEqual(await v.get('v1'), data);
    assert.deepEqual(await v.byName('p1', 'data'), data);
    // the same name in another project is another volume; in the same project it is refused
    await v.insert(volumeOf('v22', 'data', { projectId: 'p2', host: 'h2' }));
    await rejectsWith(v.insert(volumeOf('v333', 'data')), 'AlreadyExists', /volume "data" already exists in this project/);
    await rejectsWith(v.insert(volumeOf('v1', 'other')), 'AlreadyExists', /id v1 is taken/);
    assert.deepEqual((await v.named('data')).map((x) => x.id), ['v1', 'v22']);
    assert.deepEqual((await v.list({ projectId: 'p2' })).map((x) => x.id), ['v22']);
    assert.deepEqual((await v.list()).map((x) => x.id), ['v1', 'v22']);
    assert.deepEqual((await v.onHost('h1')).map((x) => x.id), ['v1']);
    assert.deepEqual(await v.onHost('nowhere'), []);
    assert.equal(await v.get('nope'), undefined);
    assert.equal(await v.byName('p2', 'nope'), undefined);
  });

  test(`${name}: volumes: status moves, a removed row is gone once, an unknown one is NotFound`, async (t) => {
    const { s, target } = await setup(t);
    const v = s.volumes;
    await v.insert(volumeOf('v1', 'data'));
    assert.equal((await v.setStatus('v1', 'ready')).status, 'ready');
    await rejectsWith(v.setStatus('gone', 'ready'), 'NotFound');
    // a status outside the three is refused by the schema itself
    await assert.rejects(v.insert(volumeOf('v4444', 'bad', { status: 'broken' as VolumeRecord['status'] })));
    // inside a transaction that throws, an insert is rolled back
    await assert.rejects(s.transaction(async () => {
      await v.insert(volumeOf('v55555', 'rolled'));
      throw new Error('undo');
    }), /undo/);
    assert.equal(await v.byName('p1', 'rolled'), undefined);
    // rows survive a reopen
    const again = target.reopen ? await target.reopen() : s;
    assert.equal((await again.volumes.get('v1'))?.status, 'ready');
    assert.equal(await again.volumes.delete('v1'), true);
    assert.equal(await again.volumes.delete('v1'), false);
    assert.deepEqual(await again.volumes.list(), []);
    // the name is free again
    await again.volumes.insert(volumeOf('v666666', 'data'));
  });

  test(`${name}: block volumes: type, shared and source read back; snapshots are per project, filtered, removed once`, async (t) => {
    const { s } = await setup(t);
    const v = s.volumes;
    const blk = volumeOf('b1', 'disk', { type: 'block', shared: true, status: 'ready' });
    await v.insert(blk);
    assert.deepEqual(await v.get('b1'), blk);
    // a filesystem volume reads back without the block fields (as before they existed)
    await v.insert(volumeOf('f1', 'files'));
    const fs = await v.get('f1');
    assert.equal(fs?.type, undefined);
    assert.equal(fs?.shared, undefined);
    const snap = { id: 's1', name: 'nightly', projectId: 'p1', volumeId: 'b1', host: 'h1', sizeBytes: 64 * MiB, status: 'creating' as const, createdAt: '2026-01-01T00:00:01.000Z' };
    await v.insertSnapshot(snap);
    assert.deepEqual(await v.getSnapshot('s1'), snap);
    assert.deepEqual(await v.snapshotByName('p1', 'nightly'), snap);
    await rejectsWith(v.insertSnapshot({ ...snap, id: 's2' }), 'AlreadyExists', /snapshot "nightly" already exists/);
    await v.insertSnapshot({ ...snap, id: 's3', projectId: 'p2', volumeId: 'x', host: 'h2', createdAt: '2026-01-01T00:00:02.000Z' });
    assert.deepEqual((await v.snapshotsNamed('nightly')).map((x) => x.id), ['s1', 's3']);
    assert.deepEqual((await v.listSnapshots({ volumeId: 'b1' })).map((x) => x.id), ['s1']);
    assert.deepEqual((await v.listSnapshots({ projectId: 'p2' })).map((x) => x.id), ['s3']);
    assert.deepEqual((await v.listSnapshots({ host: 'h2' })).map((x) => x.id), ['s3']);
    assert.deepEqual((await v.listSnapshots()).map((x) => x.id), ['s1', 's3']);
    assert.equal((await v.setSnapshotStatus('s1', 'ready')).status, 'ready');
    await rejectsWith(v.setSnapshotStatus('nope', 'ready'), 'NotFound');
    await v.insert(volumeOf('c1', 'clone', { type: 'block', sourceSnapshot: 's1' }));
    assert.equal((await v.get('c1'))?.sourceSnapshot, 's1');
    assert.equal(await v.deleteSnapshot('s1'), true);
    assert.equal(await v.deleteSnapshot('s1'), false);
    assert.equal(await v.getSnapshot('s1'), undefined);
  });
}
