/**
 * The store on PostgreSQL: the conformance suite every backend passes, and what is PostgreSQL's
 * own (migrating under an advisory lock, transactions serialised across processes). One
 * throwaway cluster for the file (scripts/fixtures/postgres.ts), one fresh database per test.
 * Without PostgreSQL installed these tests fail, saying so: they do not skip.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { clusterForTests } from '../scripts/fixtures/postgres.js';
import { INSTANCE_NAMES_SEED, INSTANCE_NAMES_VERSION, assertInstanceNamesMigrated, container, storeConformance, type ConformanceTarget } from '../src/store/conformance.js';
import { volumeConformance } from '../src/store/conformance-volumes.js';
import { usageConformance } from '../src/store/conformance-usage.js';
import { openStore } from '../src/store/open.js';
import { BASELINE, BASELINE_VERSION, MIGRATIONS, SCHEMA_VERSION, ddl } from '../src/store/schema.js';
import { toNumberedPlaceholders } from '../src/store/sql/executor.js';
import { parsePostgresLocation } from '../src/store/sql/postgres-executor.js';
import type { Store } from '../src/store/store.js';

const theCluster = clusterForTests('the store tests');


const openPostgres = async (): Promise<ConformanceTarget> => {
  const db = await theCluster().freshDatabase();
  let store: Store | undefined = await openStore(db.url);
  assert.equal(store.kind, 'postgres');
  return {
    store,
    reopen: async () => {
      await store?.close();
      store = undefined;
      store = await openStore(db.url);
      return store;
    },
    cleanup: async () => {
      await store?.close();
      await db.drop();
    },
  };
};
storeConformance('postgres', openPostgres);
volumeConformance('postgres', openPostgres);
usageConformance('postgres', openPostgres);

test('postgres store: processes opening a fresh database together migrate it once', async (t) => {
  const db = await theCluster().freshDatabase();
  const started = Date.now();
  const stores = await Promise.all(Array.from({ length: 4 }, () => openStore(db.url)));
  t.diagnostic(`4 concurrent opens + migration of a fresh database: ${Date.now() - started} ms`);
  t.after(async () => {
    for (const s of stores) await s.close();
    await db.drop();
  });
  const check = new pg.Client({ connectionString: db.url });
  await check.connect();
  try {
    const versions = await check.query('SELECT version FROM schema_version');
    assert.deepEqual(versions.rows, [{ version: SCHEMA_VERSION }]);
    const collations = await check.query("SELECT DISTINCT collation_name FROM information_schema.columns WHERE table_schema = 'public' AND data_type = 'text'");
    assert.deepEqual(collations.rows, [{ collation_name: 'C' }], 'text sorts by bytes whatever the database locale');
  } finally {
    await check.end();
  }
  await stores[0]!.projects.insert({ id: 'p1', name: 'a', parentId: null, createdAt: 'now' });
  assert.equal((await stores[3]!.projects.get('p1'))?.name, 'a', 'one database');
});

test('postgres store: instance names move to instance_names, VM names become unique per project; rows kept', async (t) => {
  const db = await theCluster().freshDatabase();
  let s: Store | undefined;
  t.after(async () => {
    await s?.close(); // before the drop, which ends its connections
    await db.drop();
  });
  // a database one version before instance_names, with data
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    await c.query('CREATE TABLE schema_version (version INTEGER NOT NULL)');
    await c.query(ddl('postgres', BASELINE));
    for (const m of MIGRATIONS.slice(0, INSTANCE_NAMES_VERSION - 1 - BASELINE_VERSION)) await c.query(ddl('postgres', m));
    await c.query('INSERT INTO schema_version (version) VALUES ($1)', [INSTANCE_NAMES_VERSION - 1]);
    await c.query(INSTANCE_NAMES_SEED);
  } finally {
    await c.end();
  }
  s = await openStore(db.url);
  await assertInstanceNamesMigrated(s);
});

test('postgres store: a database newer than the code is refused', async (t) => {
  const db = await theCluster().freshDatabase();
  t.after(() => db.drop());
  const started = Date.now();
  await (await openStore(db.url)).close();
  t.diagnostic(`open + migrate a fresh database, then close: ${Date.now() - started} ms`);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  await c.query('UPDATE schema_version SET version = $1', [SCHEMA_VERSION + 1]);
  await c.end();
  await assert.rejects(openStore(db.url), /newer than this nimbusd/);
});

test('postgres store: transactions of two processes (two pools) lose no update either', async (t) => {
  const db = await theCluster().freshDatabase();
  const a = await openStore(`${db.url}&max=3`);
  const b = await openStore(`${db.url}&max=3`);
  t.after(async () => {
    await a.close();
    await b.close();
    await db.drop();
  });
  await a.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: 'now' });
  await a.containers.insert(container('c1', 'counter'));
  await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).transaction(async () => {
    const s = i % 2 ? a : b;
    const c = (await s.containers.get('c1'))!;
    await s.containers.update('c1', { restartCount: c.restartCount + 1 });
  })));
  assert.equal((await b.containers.get('c1'))?.restartCount, 40);
});

test('postgres store: the pool size comes from ?max=, other parameters stay in the URL', () => {
  assert.deepEqual(parsePostgresLocation('postgres://u@h/db'), { connectionString: 'postgres://u@h/db', max: 10 });
  assert.deepEqual(parsePostgresLocation('postgresql://u@/db?host=%2Ftmp%2Fs&max=4'), { connectionString: 'postgresql://u@/db?host=%2Ftmp%2Fs', max: 4 });
  assert.throws(() => parsePostgresLocation('postgres://u@h/db?max=many'), /max must be an integer/);
});

test('postgres store: ? placeholders become $n outside quoted text only', () => {
  assert.equal(toNumberedPlaceholders(`SELECT '?', "a?b" FROM t WHERE a = ? AND b LIKE ? || '%?'`), `SELECT '?', "a?b" FROM t WHERE a = $1 AND b LIKE $2 || '%?'`);
});

test('postgres store: the same tables, columns and named indexes as the SQLite store, from the one baseline', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  const db = await theCluster().freshDatabase();
  t.after(async () => {
    rmSync(dir, { recursive: true, force: true });
    await db.drop();
  });
  await (await openStore(join(dir, 'nimbus.db'))).close();
  const lite = new Database(join(dir, 'nimbus.db'), { readonly: true });
  const sqlite: Record<string, string[]> = {};
  for (const { name } of lite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]) {
    sqlite[name] = (lite.prepare(`PRAGMA table_info(${name})`).all() as { name: string }[]).map((c) => c.name);
  }
  const sqliteIndexes = (lite.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  lite.close();

  await (await openStore(db.url)).close();
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    const cols = await c.query<{ table_name: string; column_name: string }>(
      "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position",
    );
    const postgres: Record<string, string[]> = {};
    for (const r of cols.rows) (postgres[r.table_name] ??= []).push(r.column_name);
    // key constraints' own indexes (…_pkey, …_key) are SQLite's unnamed autoindexes
    const idx = await c.query<{ indexname: string }>("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname !~ '_(pkey|key)$' ORDER BY indexname COLLATE \"C\"");
    assert.deepEqual(postgres, sqlite);
    assert.deepEqual(idx.rows.map((r) => r.indexname), sqliteIndexes);
  } finally {
    await c.end();
  }
});
