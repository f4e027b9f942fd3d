import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { MIGRATIONS, SqliteStore } from './sqlite.js';
import type { ContainerRecord } from './records.js';

function container(id: string, name: string): ContainerRecord {
  return {
    id, name, projectId: 'p1', imageDigest: 'sha256:' + 'a'.repeat(64),
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} },
    status: 'created', runtime: 'runc', pid: null, exitCode: null, oomKilled: false, restartCount: 0,
    stoppedByUser: false, createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, warnings: [],
  };
}

test('sqlite store: containers round-trip, survive reopen, resolve by prefix and name', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  let s = new SqliteStore(file);
  s.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  s.containers.insert(container('abc123' + '0'.repeat(58), 'web'));
  s.containers.insert(container('abd456' + '0'.repeat(58), 'db'));
  assert.throws(() => s.containers.insert(container('ffff' + '0'.repeat(60), 'web')), { code: 'AlreadyExists' });
  s.containers.update('abc123' + '0'.repeat(58), { status: 'running', pid: 42, oomKilled: true });
  s.close();

  s = new SqliteStore(file);
  t.after(() => s.close());
  const web = s.containers.byName('p1', 'web')!;
  assert.equal(web.status, 'running');
  assert.equal(web.pid, 42);
  assert.equal(web.oomKilled, true);
  assert.deepEqual(s.containers.withIdPrefix('abc').map((c) => c.name), ['web']);
  assert.deepEqual(s.containers.withIdPrefix('ab').map((c) => c.name).sort(), ['db', 'web']);
  assert.deepEqual(s.containers.withIdPrefix('x%'), [], 'not hex: no LIKE patterns');
  assert.equal(s.containers.byName('p1', 'nope'), undefined);
  // names are unique per project only
  s.projects.insert({ id: 'p2', name: 'other', parentId: null, createdAt: 'now' });
  s.containers.insert({ ...container('eeee' + '0'.repeat(60), 'web'), projectId: 'p2' });
  assert.deepEqual(s.containers.named('web').map((c) => c.projectId).sort(), ['p1', 'p2']);
  assert.deepEqual(s.containers.list({ status: ['running'] }).map((c) => c.name), ['web']);
});

test('sqlite store: transactions roll back on error', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  const s = new SqliteStore(join(dir, 'db'));
  t.after(() => { s.close(); rmSync(dir, { recursive: true, force: true }); });
  assert.throws(() =>
    s.transaction(() => {
      s.projects.insert({ id: 'x', name: 'x', parentId: null, createdAt: 'now' });
      throw new Error('boom');
    }),
  );
  assert.equal(s.projects.get('x'), undefined);
});

test('sqlite store: a version-2 store upgrades in place (projects rebuilt, references kept, names unique among siblings)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  const old = new Database(file);
  for (const m of MIGRATIONS.slice(0, 2)) old.exec(m);
  old.exec(`INSERT INTO projects VALUES ('p1', 'default', NULL, 'then');
    INSERT INTO containers (id, name, project_id, image_digest, config, status, runtime, created_at) VALUES ('c1', 'web', 'p1', 'sha256:x', '{}', 'exited', 'runc', 'then');
    PRAGMA user_version = 2;`);
  old.close();
  const s = new SqliteStore(file);
  t.after(() => s.close());
  assert.equal(s.projects.byName('default')?.id, 'p1');
  s.projects.insert({ id: 'p2', name: 'default', parentId: 'p1', createdAt: 'now' });
  assert.throws(() => s.projects.insert({ id: 'p3', name: 'default', parentId: 'p1', createdAt: 'now' }), { code: 'AlreadyExists' });
  assert.equal(s.projects.child('p1', 'default')?.id, 'p2');
  assert.equal(s.projects.byName('default')?.id, 'p1', 'root first');
  assert.equal(s.containers.byName('p1', 'web')?.id, 'c1', 'containers kept through their rebuild');
  assert.throws(() => s.containers.insert({ ...container('c2', 'web'), projectId: 'p1' }), { code: 'AlreadyExists' });
  s.containers.insert({ ...container('c3', 'web'), projectId: 'p2' });
});

test('sqlite store: a version-4 store upgrades to images per project (owner → reference, tags kept in their project)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  const d = 'sha256:' + 'd'.repeat(64);
  const old = new Database(file);
  for (const m of MIGRATIONS.slice(0, 4)) old.exec(m);
  old.exec(`INSERT INTO projects VALUES ('pa', 'A', NULL, 'then'), ('pb', 'B', NULL, 'then');
    INSERT INTO images VALUES ('${d}', 'pa', NULL, 'sha256:c', '{}', '[]', 'chain', 10, 'then');
    INSERT INTO image_tags VALUES ('r/x:latest', '${d}', 'pa', 'then');
    PRAGMA user_version = 4;`);
  old.close();
  const s = new SqliteStore(file);
  t.after(() => s.close());
  assert.deepEqual(s.images.list('pa').map((i) => [i.digest, i.projectId]), [[d, 'pa']]);
  assert.deepEqual(s.images.list('pb'), []);
  assert.equal(s.images.tag('pa', 'r/x:latest')?.digest, d);
  // B gets the same image: shared content, its own reference and tag
  s.images.upsert({ ...s.images.ref('pa', d)!, projectId: 'pb', createdAt: 'now' });
  s.images.setTag({ projectId: 'pb', name: 'r/x:latest', digest: d, updatedAt: 'now' });
  assert.equal(s.images.refCount(d), 2);
  s.images.deleteRef('pa', d);
  assert.equal(s.images.tag('pa', 'r/x:latest'), undefined, "A's tag went with its reference");
  assert.equal(s.images.tag('pb', 'r/x:latest')?.digest, d, "B's did not");
  assert.equal(s.images.get(d)?.chainId, 'chain', 'the content stays while referenced');
  assert.throws(() => s.images.setTag({ projectId: 'pa', name: 'r/y:1', digest: d, updatedAt: 'now' }), 'a tag needs its reference');
});
