/**
 * nimbusd migrate-store: a populated embedded store copied to PostgreSQL (one throwaway cluster
 * for the file, a fresh database per test), checked independently of the command's own checks;
 * an interrupted copy resumed; the refusals (a target with rows, a table the copier does not
 * know, a running nimbusd, a source at an older schema).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { clusterForTests } from '../../scripts/fixtures/postgres.js';
import { openStore } from '../store/open.js';
import { SCHEMA_VERSION } from '../store/schema.js';
import type { Store } from '../store/store.js';
import { container, vm } from '../store/conformance.js';
import { QuotaService } from '../control/quota/quota-service.js';
import { checkInvariants } from '../control/quota/invariants.js';
import { migrateStoreCommand, parentsFirstOrder, type MigrateStoreOptions } from './migrate-store.js';

const theCluster = clusterForTests('the migrate-store tests');
const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };
const NOW = '2026-12-03T00:00:00.000Z';
const TOKEN_HASH = 'f'.repeat(64);
const IMAGE = 'sha256:' + '1'.repeat(64);

/** A home with an SQLite store in it, removed after the test. */
function tempHome(t: TestContext): { home: string; db: string } {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-migrate-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  return { home, db: join(home, 'nimbus.db') };
}

async function freshTarget(t: TestContext): Promise<string> {
  const db = await theCluster().freshDatabase();
  t.after(() => db.drop());
  return db.url;
}

/**
 * A store with a bit of everything. Project ids sort children before parents, so a copy in key
 * order alone would break the parent foreign key. The ledger holds a loan (borrower from lender)
 * and a pool (team's, used by deep); auditRows extra audit entries make a long table.
 */
async function populate(file: string, auditRows = 0): Promise<void> {
  const store = await openStore(file);
  try {
    const projects = [
      { id: 'zz-org', name: 'org', parentId: null },
      { id: 'aa-lender', name: 'lender', parentId: 'zz-org' },
      { id: 'ab-borrower', name: 'borrower', parentId: 'zz-org' },
      { id: 'ac-team', name: 'team', parentId: 'zz-org' },
      { id: 'a-deep', name: 'deep', parentId: 'ac-team' },
    ];
    for (const p of projects) await store.projects.insert({ ...p, createdAt: NOW });
    const quota = await QuotaService.open(store);
    try {
      await quota.ensureProjects(projects);
      await quota.setLimits('aa-lender', { hard: { instances: 2 }, lendingLimit: { instances: 1 } });
      await quota.setLimits('ab-borrower', { borrowingLimit: { instances: 1 } });
      await quota.setLimits('ac-team', { hard: { instances: 4 } });
      await quota.createPool('ac-team', 'share', { instances: 2 }, { 'a-deep': 1 });
      for (const [id, project] of [['c-lender', 'aa-lender'], ['c-borrower', 'ab-borrower'], ['c-deep', 'a-deep']] as const) {
        assert.equal((await quota.admitContainer(id, project, cfg)).admitted, true, `${id} admitted`);
        await store.containers.insert(container(id, id, { projectId: project, imageDigest: IMAGE, status: 'running', pid: 4242 }));
      }
      const ledger = quota.ledger.snapshot();
      assert.equal(Object.keys(ledger.loans).length, 1, 'the populated ledger has a loan');
      assert.equal(Object.keys(ledger.pools).length, 1, 'and a pool');
      assert.deepEqual(checkInvariants(ledger), []);
    } finally {
      quota.close();
    }
    await store.users.insert({ id: 'u1', name: 'alice', passwordHash: 'scrypt$x', systemAdmin: false, defaultProjectId: 'aa-lender', createdAt: NOW });
    await store.tokens.insert({ id: 't1', userId: 'u1', kind: 'apikey', name: 'ci', hash: TOKEN_HASH, createdAt: NOW, expiresAt: null });
    await store.tokens.insert({ id: 't2', userId: 'u1', kind: 'session', name: null, hash: 'e'.repeat(64), createdAt: NOW, expiresAt: Date.parse(NOW) + 3_600_000 });
    await store.roles.grant({ userId: 'u1', projectId: 'aa-lender', role: 'member', createdAt: NOW });
    await store.images.upsert({
      digest: IMAGE, projectId: 'aa-lender', indexDigest: null, configDigest: 'sha256:c', config: { architecture: 'amd64', config: { Cmd: ['sh'] } },
      layers: [{ digest: 'sha256:l1', mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 5_000_000_000, diffId: 'sha256:d1' }],
      chainId: 'chain1', size: 5_000_000_000, createdAt: NOW,
    });
    await store.images.setTag({ projectId: 'aa-lender', name: 'docker.io/library/busybox:latest', digest: IMAGE, updatedAt: NOW });
    await store.vms.insert(vm('v1', 'vm1', { projectId: 'ab-borrower', status: 'saved', savedAt: NOW }));
    await store.networks.insert({
      id: 'n1', name: 'net', projectId: 'aa-lender', driver: 'bridge', subnet: '10.90.0.0/24', gateway: '10.90.0.1', internal: false,
      device: 'nb-test', builtin: false, labels: { team: 'a' }, createdAt: NOW,
    });
    await store.networks.lease({ networkId: 'n1', address: '10.90.0.2', instanceId: 'c-lender', ifIndex: 0, createdAt: NOW });
    await store.networks.lease({ networkId: 'n1', address: '10.90.0.3', instanceId: 'v1', ifIndex: 0, createdAt: NOW });
    await store.networks.lease({ networkId: 'n1', address: '10.90.0.4', instanceId: 'c-borrower', ifIndex: 0, createdAt: NOW });
    await store.disks.insert({ projectId: 'ab-borrower', name: 'root', digest: 'sha256:' + '2'.repeat(64), format: 'qcow2', size: 1 << 20, virtualSize: 1 << 30, createdAt: NOW });
    await store.agents.put({ name: 'h2', url: 'https://h2:7000', token: 'secret', registeredAt: NOW });
    await store.joinTokens.insert({ id: 'j1', hash: 'd'.repeat(64), createdAt: NOW, expiresAt: Date.parse(NOW) + 600_000, usedAt: null, usedBy: null });
    await store.operations.insert({
      id: 'op1', kind: 'image.pull', projectId: 'aa-lender', status: 'succeeded', target: 'busybox', progress: { layers: 1 },
      result: { digest: IMAGE }, error: null, createdAt: NOW, updatedAt: NOW, replica: null,
    });
    for (let done = 0; done < auditRows; done += 5000) {
      const n = Math.min(5000, auditRows - done);
      await store.appendQuotaAudit(Array.from({ length: n }, (_, i) => ({ seq: 1_000_000 + done + i, project: 'aa-lender', json: JSON.stringify({ seq: 1_000_000 + done + i, kind: 'admit', note: 'x'.repeat(80) }) })));
    }
  } finally {
    await store.close();
  }
}

/** Runs the command, capturing what it prints. */
async function run(argv: string[], hooks: Pick<MigrateStoreOptions, 'afterBatch'> = {}): Promise<{ status: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const status = await migrateStoreCommand(argv, { out: (s) => (out += s), err: (s) => (err += s) }, hooks);
  return { status, out, err };
}

/** Rows per table, read with clients of the test's own (not through the copier). */
async function sqliteCounts(file: string): Promise<Record<string, number>> {
  const db = new Database(file, { readonly: true });
  try {
    const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name`).all() as { name: string }[];
    return Object.fromEntries(tables.map((t) => [t.name, (db.prepare(`SELECT COUNT(*) AS n FROM "${t.name}"`).get() as { n: number }).n]));
  } finally {
    db.close();
  }
}

async function postgresCounts(url: string): Promise<Record<string, number>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const tables = await client.query<{ name: string }>(`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'schema_version' ORDER BY table_name`);
    const out: Record<string, number> = {};
    for (const t of tables.rows) out[t.name] = Number((await client.query(`SELECT COUNT(*) AS n FROM "${t.name}"`)).rows[0].n);
    return out;
  } finally {
    await client.end();
  }
}

/** What a store holds, compared record by record between source and target. */
async function contents(store: Store): Promise<Record<string, unknown>> {
  const quota = await QuotaService.open(store, { refreshMs: 0 });
  try {
    return {
      projects: await store.projects.list(),
      container: await store.containers.get('c-lender'),
      containers: await store.containers.list(),
      token: await store.tokens.byHash(TOKEN_HASH),
      roles: await store.roles.list(),
      vms: await store.vms.list(),
      leases: await store.networks.leases({ networkId: 'n1' }),
      images: await store.images.list(),
      tags: await store.images.tags(),
      disks: await store.disks.list(),
      operation: await store.operations.get('op1'),
      ledger: quota.ledger.snapshot(),
      ledgerVersion: await store.quotaLedgerVersion(),
      auditTail: await store.queryQuotaAudit({ limit: 50 }),
    };
  } finally {
    quota.close();
  }
}

async function contentsAt(location: string): Promise<Record<string, unknown>> {
  const store = await openStore(location);
  try {
    return await contents(store);
  } finally {
    await store.close();
  }
}

test('migrate-store: a populated embedded store lands in PostgreSQL whole: rows per table, records, the ledger; the copy rate of 50,000 audit rows', async (t) => {
  const { home, db } = tempHome(t);
  await populate(db, 50_000);
  const url = await freshTarget(t);
  const before = await contentsAt(db);

  const r = await run(['--home', home, '--to', url]);
  assert.equal(r.status, 0, r.err);
  assert.match(r.out, /^TABLE\s+ROWS\s+COPIED\s+TIME$/m);
  assert.match(r.out, /invariants hold, equal to the source's/);
  assert.match(r.err, /migrate-store: quota_audit: \d+ rows in/, 'progress per table on stderr');

  const source = await sqliteCounts(db);
  const target = await postgresCounts(url);
  assert.deepEqual(target, source, 'every table, the same number of rows');
  assert.ok(source.quota_audit! >= 50_000 && source.projects === 5 && source.network_leases === 3 && source.quota_instances === 3, JSON.stringify(source));
  const after = await contentsAt(url);
  assert.deepEqual(after, before, 'the records, the token by its hash and the ledger read back the same');
  assert.equal((after.token as { userId: string }).userId, 'u1');

  const audit = /^quota_audit\s+(\d+)\s+(\d+)\s+([\d.]+) (ms|s)$/m.exec(r.out);
  assert.ok(audit, r.out);
  const seconds = Number(audit[3]) / (audit[4] === 'ms' ? 1000 : 1);
  t.diagnostic(`quota_audit: ${audit[2]} rows in ${audit[3]} ${audit[4]} = ${Math.round(Number(audit[2]) / seconds)} rows/s`);
  t.diagnostic(r.out.trim().split('\n').slice(-3).join(' | '));
});

// Batches of 2 rows: the project tree takes three statements (children's keys sort before their
// parents'), and the copy stops inside network_leases (a two-column key), after everything ordered before it.
test('migrate-store: an interrupted copy is refused without --resume, and --resume completes it equal to the source', async (t) => {
  const { home, db } = tempHome(t);
  await populate(db, 300);
  const url = await freshTarget(t);
  const interrupted = await run(['--home', home, '--to', url, '--batch-rows', '2'], {
    afterBatch: (table, rows) => {
      if (table === 'network_leases' && rows >= 2) throw new Error('interrupted by the test');
    },
  });
  assert.equal(interrupted.status, 1);
  assert.match(interrupted.err, /interrupted by the test/);
  assert.match(interrupted.err, /run again with --resume/);
  const partial = await postgresCounts(url);
  assert.equal(partial.network_leases, 2, 'whole batches were written up to the interruption');
  assert.equal(partial.tokens, 0, 'and nothing ordered after it');

  const again = await run(['--home', home, '--to', url]);
  assert.equal(again.status, 1);
  assert.match(again.err, /Conflict: the target already has rows .*give --resume/);

  const resumed = await run(['--home', home, '--to', url, '--resume']);
  assert.equal(resumed.status, 0, resumed.err);
  assert.match(resumed.out, /^network_leases\s+3\s+1\s/m, 'the rest of the interrupted table is copied, not what was there');
  assert.match(resumed.out, /^projects\s+5\s+0\s/m, 'tables copied before the interruption are checked, not copied again');
  assert.match(resumed.out, /^quota_audit\s+3\d\d\s+0\s/m);
  assert.match(resumed.out, /^tokens\s+2\s+2\s/m, 'tables after it are copied');
  assert.deepEqual(await postgresCounts(url), await sqliteCounts(db));
  assert.deepEqual(await contentsAt(url), await contentsAt(db));

  const twice = await run(['--home', home, '--to', url, '--resume']);
  assert.equal(twice.status, 0, 'resuming a complete copy checks it and copies nothing');
  assert.match(twice.out, /^0 rows copied/m);
});

test('migrate-store: a target with rows of its own is refused, with or without --resume', async (t) => {
  const { home, db } = tempHome(t);
  await populate(db);
  const url = await freshTarget(t);
  const other = await openStore(url);
  try {
    await other.projects.insert({ id: 'zz-org', name: 'someone-else', parentId: null, createdAt: NOW });
  } finally {
    await other.close();
  }
  const plain = await run(['--home', home, '--to', url]);
  assert.equal(plain.status, 1);
  assert.match(plain.err, /the target already has rows \(projects: 1\)/);
  const resumed = await run(['--home', home, '--to', url, '--resume']);
  assert.equal(resumed.status, 1);
  assert.match(resumed.err, /Conflict: the target's row of projects with key \["zz-org"\] differs from the source's/);

  const url2 = await freshTarget(t);
  const other2 = await openStore(url2);
  try {
    await other2.projects.insert({ id: 'b-foreign', name: 'foreign', parentId: null, createdAt: NOW });
  } finally {
    await other2.close();
  }
  const extra = await run(['--home', home, '--to', url2, '--resume']);
  assert.equal(extra.status, 1);
  assert.match(extra.err, /table projects: the source has 5 rows \(5 read\), the target 6 after the copy: the target holds rows that are not the source's/);
});

test('migrate-store: a table the copier does not know is refused before anything is copied', async (t) => {
  const { home, db } = tempHome(t);
  await populate(db);
  const raw = new Database(db);
  raw.exec('CREATE TABLE stray_notes (id TEXT PRIMARY KEY, note TEXT)');
  raw.close();
  const url = await freshTarget(t);
  const r = await run(['--home', home, '--to', url]);
  assert.equal(r.status, 1);
  assert.match(r.err, /Conflict: the source has table\(s\) stray_notes that are not part of this nimbusd's schema/);
  assert.ok(Object.values(await postgresCounts(url)).every((n) => n === 0), 'nothing was copied');
});

test('migrate-store: refuses while a nimbusd uses the home, and a source at an older schema (left as it was)', async (t) => {
  const { home, db } = tempHome(t);
  await populate(db);
  const url = await freshTarget(t);
  writeFileSync(join(home, 'nimbusd.pid'), `${process.ppid}\n`); // a live process that is not this one
  const running = await run(['--home', home, '--to', url]);
  assert.equal(running.status, 1);
  assert.match(running.err, new RegExp(`Unavailable: a nimbusd \\(pid ${process.ppid}\\) is using ${home}`));
  writeFileSync(join(home, 'nimbusd.pid'), '999999999\n'); // a stale lock is no obstacle (takePidLock's rule)

  const raw = new Database(db);
  raw.pragma(`user_version = ${SCHEMA_VERSION - 1}`);
  raw.close();
  const old = await run(['--from', `sqlite:${db}`, '--to', url]);
  assert.equal(old.status, 1);
  assert.match(old.err, /at schema version \d+, this nimbusd's is \d+: start this nimbusd on it once/);
  const check = new Database(db, { readonly: true });
  assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION - 1, 'the source was not upgraded');
  check.close();

  const help = await run(['--help']);
  assert.equal(help.status, 0);
  assert.match(help.out, /What is not copied/);
  assert.equal((await run(['--home', home])).status, 2, '--to is required');
});

test('migrate-store: tables are ordered parents first by their foreign keys; a cycle is refused', () => {
  assert.deepEqual(
    parentsFirstOrder(['image_tags', 'image_refs', 'images', 'projects'], [
      { child: 'image_tags', parent: 'image_refs' }, { child: 'image_refs', parent: 'images' }, { child: 'image_refs', parent: 'projects' }, { child: 'projects', parent: 'projects' },
    ]),
    ['images', 'projects', 'image_refs', 'image_tags'],
  );
  assert.throws(() => parentsFirstOrder(['a', 'b'], [{ child: 'a', parent: 'b' }, { child: 'b', parent: 'a' }]), /reference each other in a cycle/);
});
