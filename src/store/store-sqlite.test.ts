import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { INSTANCE_NAMES_SEED, INSTANCE_NAMES_VERSION, assertInstanceNamesMigrated, container, storeConformance, type ConformanceTarget } from './conformance.js';
import { volumeConformance } from './conformance-volumes.js';
import { usageConformance } from './conformance-usage.js';
import { openStore } from './open.js';
import { BASELINE_VERSION, MIGRATIONS, SCHEMA_VERSION, ddl } from './schema.js';
import { SQLITE_HISTORY } from './sqlite-history.js';
import type { Store } from './store.js';

function tempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

const openSqlite = async (): Promise<ConformanceTarget> => {
  const { dir, remove } = tempDir();
  const file = join(dir, 'nimbus.db');
  let store: Store | undefined = await openStore(file);
  return {
    store,
    reopen: async () => {
      await store?.close();
      store = undefined;
      store = await openStore(`sqlite:${file}`);
      return store;
    },
    cleanup: async () => {
      await store?.close();
      remove();
    },
  };
};
storeConformance('sqlite', openSqlite);
volumeConformance('sqlite', openSqlite);
usageConformance('sqlite', openSqlite);

/** A database built by the first `version` historical migrations, then seeded. */
function historicalStore(file: string, version: number, seed: string): void {
  const old = new Database(file);
  old.pragma('synchronous = OFF'); // a fixture: no need to wait for the disk
  for (const m of SQLITE_HISTORY.slice(0, version)) old.exec(m);
  old.exec(seed);
  old.pragma(`user_version = ${version}`);
  old.close();
}

test('sqlite store: a version-2 store upgrades in place (projects rebuilt, references kept, names unique among siblings)', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const file = join(dir, 'nimbus.db');
  historicalStore(file, 2, `INSERT INTO projects VALUES ('p1', 'default', NULL, 'then');
    INSERT INTO containers (id, name, project_id, image_digest, config, status, runtime, created_at) VALUES ('c1', 'web', 'p1', 'sha256:x', '{}', 'exited', 'runc', 'then');`);
  const s = await openStore(file);
  t.after(() => s.close());
  assert.equal((await s.projects.byName('default'))?.id, 'p1');
  await s.projects.insert({ id: 'p2', name: 'default', parentId: 'p1', createdAt: 'now' });
  await assert.rejects(s.projects.insert({ id: 'p3', name: 'default', parentId: 'p1', createdAt: 'now' }), { code: 'AlreadyExists' });
  assert.equal((await s.projects.child('p1', 'default'))?.id, 'p2');
  assert.equal((await s.projects.byName('default'))?.id, 'p1', 'root first');
  assert.equal((await s.containers.byName('p1', 'web'))?.id, 'c1', 'containers kept through their rebuild');
  await assert.rejects(s.containers.insert({ ...container('c2', 'web'), projectId: 'p1' }), { code: 'AlreadyExists' });
  await s.containers.insert({ ...container('c3', 'web'), projectId: 'p2' });
});

test('sqlite store: a version-4 store upgrades to images per project (owner → reference, tags kept in their project)', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const file = join(dir, 'nimbus.db');
  const d = 'sha256:' + 'd'.repeat(64);
  historicalStore(file, 4, `INSERT INTO projects VALUES ('pa', 'A', NULL, 'then'), ('pb', 'B', NULL, 'then');
    INSERT INTO images VALUES ('${d}', 'pa', NULL, 'sha256:c', '{}', '[]', 'chain', 10, 'then');
    INSERT INTO image_tags VALUES ('r/x:latest', '${d}', 'pa', 'then');`);
  const s = await openStore(file);
  t.after(() => s.close());
  assert.deepEqual((await s.images.list('pa')).map((i) => [i.digest, i.projectId]), [[d, 'pa']]);
  assert.deepEqual(await s.images.list('pb'), []);
  assert.equal((await s.images.tag('pa', 'r/x:latest'))?.digest, d);
  // B gets the same image: shared content, its own reference and tag
  await s.images.upsert({ ...(await s.images.ref('pa', d))!, projectId: 'pb', createdAt: 'now' });
  await s.images.setTag({ projectId: 'pb', name: 'r/x:latest', digest: d, updatedAt: 'now' });
  assert.equal(await s.images.refCount(d), 2);
  await s.images.deleteRef('pa', d);
  assert.equal(await s.images.tag('pa', 'r/x:latest'), undefined, "A's tag went with its reference");
  assert.equal((await s.images.tag('pb', 'r/x:latest'))?.digest, d, "B's did not");
  assert.equal((await s.images.get(d))?.chainId, 'chain', 'the content stays while referenced');
  await assert.rejects(s.images.setTag({ projectId: 'pa', name: 'r/y:1', digest: d, updatedAt: 'now' }), 'a tag needs its reference');
});

/** A database at `version` (past the baseline: the shared migrations before it run too), then seeded. */
function storeAt(file: string, version: number, seed: string): void {
  const old = new Database(file);
  old.pragma('synchronous = OFF');
  for (const m of SQLITE_HISTORY) old.exec(m);
  for (const m of MIGRATIONS.slice(0, version - BASELINE_VERSION)) old.exec(ddl('sqlite', m));
  old.exec(seed);
  old.pragma(`user_version = ${version}`);
  old.close();
}

test('sqlite store: instance names move to instance_names, VM names become unique per project; rows kept', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const file = join(dir, 'nimbus.db');
  storeAt(file, INSTANCE_NAMES_VERSION - 1, INSTANCE_NAMES_SEED);
  const s = await openStore(file);
  t.after(() => s.close());
  await assertInstanceNamesMigrated(s);
});

test('sqlite store: every historical version upgrades to the current schema', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  for (let v = 1; v <= SQLITE_HISTORY.length; v++) {
    const file = join(dir, `v${v}.db`);
    historicalStore(file, v, '');
    const s = await openStore(file);
    await s.close();
    const db = new Database(file, { readonly: true });
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION, `from version ${v}`);
    db.close();
  }
});

/** Tables with their columns (name, type, not null, default, primary key position) and index names, as SQLite describes them. */
function describe(file: string): { tables: Record<string, string[]>; indexes: string[] } {
  const db = new Database(file, { readonly: true });
  try {
    const tables: Record<string, string[]> = {};
    const names = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[];
    for (const { name } of names) {
      const cols = db.prepare(`PRAGMA table_info(${name})`).all() as { name: string; type: string; notnull: number; dflt_value: string | null; pk: number }[];
      tables[name] = cols.map((c) => `${c.name} ${c.type}${c.notnull ? ' NOT NULL' : ''}${c.dflt_value !== null ? ` DEFAULT ${c.dflt_value}` : ''}${c.pk ? ` PK${c.pk}` : ''}`);
    }
    const indexes = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
    return { tables, indexes };
  } finally {
    db.close();
  }
}

test('sqlite store: a store built through the history and one built from the baseline have the same tables, columns and indexes', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const viaHistory = join(dir, 'history.db');
  historicalStore(viaHistory, 1, '');
  const fresh = join(dir, 'fresh.db');
  for (const file of [viaHistory, fresh]) await (await openStore(file)).close();
  const a = describe(viaHistory);
  const b = describe(fresh);
  assert.ok(Object.keys(a.tables).length >= 17, 'the comparison has something to compare');
  assert.deepEqual(b.tables, a.tables);
  assert.deepEqual(b.indexes, a.indexes);
});

test('sqlite store: a store newer than the code is refused, and left as it was', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const file = join(dir, 'nimbus.db');
  const db = new Database(file);
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db.close();
  await assert.rejects(openStore(file), /newer than this nimbusd/);
  const again = new Database(file, { readonly: true });
  assert.equal(again.pragma('user_version', { simple: true }), SCHEMA_VERSION + 1);
  again.close();
});

test('sqlite store: close waits for a running transaction to commit', async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const s = await openStore(join(dir, 'nimbus.db'));
  const tx = s.transaction(async () => {
    await s.agents.put({ name: 'a', url: 'u', token: 't', registeredAt: 'now' });
  });
  const closed = s.close();
  await tx;
  await closed;
  const s2 = await openStore(join(dir, 'nimbus.db'));
  t.after(() => s2.close());
  assert.equal((await s2.agents.get('a'))?.url, 'u', 'committed before the close');
});

test("sqlite store: its files are root's alone (0600), a store an older daemon left readable included", async (t) => {
  const { dir, remove } = tempDir();
  t.after(remove);
  const fresh = join(dir, 'fresh.db');
  let store = await openStore(fresh);
  await store.projects.insert({ id: 'p', name: 'p', parentId: null, createdAt: new Date().toISOString() });
  for (const f of [fresh, `${fresh}-wal`, `${fresh}-shm`]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
  await store.close();
  const old = join(dir, 'old.db');
  new Database(old).close();
  chmodSync(old, 0o644);
  store = await openStore(old);
  for (const f of [old, `${old}-wal`, `${old}-shm`]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
  await store.close();
});
