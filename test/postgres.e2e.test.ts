/**
 * nimbusd on PostgreSQL end to end: a real nimbusd started with `--store postgres://…` on a
 * throwaway cluster (initdb/pg_ctl, unix socket only) runs a container through the API, the
 * quota ledger admits and refuses on it, every record lands in PostgreSQL (and no SQLite file
 * appears), and all of it survives a SIGKILL of the daemon.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startPostgres, type PostgresFixture } from '../scripts/fixtures/postgres.js';
import { buildTestImages } from '../scripts/fixtures/images.js';
import { imageArchives } from './helpers/registry-images.js';
import { call } from './helpers/http.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';

let cluster: PostgresFixture;
let db: { url: string; drop(): Promise<void> };
let d: DaemonProcess;
let dir: string;

async function sql<T extends Record<string, unknown>>(text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    return (await c.query(text, params)).rows as T[];
  } finally {
    await c.end();
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nimbus-pg-e2e-'));
  cluster = await startPostgres();
  db = await cluster.freshDatabase();
  d = await startDaemonProcess(['--store', db.url]);
});
after(async () => {
  await d?.destroy();
  await db?.drop();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('nimbusd --store postgres://: containers, quota and projects live in PostgreSQL and survive a SIGKILL', async () => {
  assert.match(d.output(), /store postgres:\/\/nimbus@/, 'the banner names the store');
  assert.equal(existsSync(join(d.home, 'nimbus.db')), false, 'no SQLite file beside a PostgreSQL store');

  assert.equal((await d.api('POST', '/projects', { name: 'team' })).status, 201);
  assert.equal((await d.api('PUT', '/quota/team', { hard: { instances: 1 } })).status, 200);
  const { dockerSave } = await imageArchives(await buildTestImages(), dir);
  assert.equal((await call({ socketPath: d.socket }, 'POST', '/images/import?project=team', { raw: readFileSync(dockerSave) })).status, 201);

  const web = await d.api<{ id: string; status: string }>('POST', '/containers?project=team', { image: 'imported/saved:v1', name: 'web', cmd: ['sleep', '600'], stopSignal: 'SIGKILL', start: true });
  assert.equal(web.status, 201, JSON.stringify(web.body));
  assert.equal(web.body.status, 'running');
  const refused = await d.api<{ error: { code: string } }>('POST', '/containers?project=team', { image: 'imported/saved:v1', name: 'second', cmd: ['true'] });
  assert.equal(refused.status, 429, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'QuotaExceeded');

  // the records are PostgreSQL's: read them with a client of our own
  const rows = await sql<{ name: string; status: string; project: string }>(
    'SELECT c.name, c.status, p.name AS project FROM containers c JOIN projects p ON p.id = c.project_id ORDER BY c.name');
  assert.deepEqual(rows, [{ name: 'web', status: 'running', project: 'team' }]);
  assert.equal((await sql('SELECT id FROM quota_instances WHERE id = $1', [web.body.id])).length, 1, 'the ledger charged the container in PostgreSQL');
  const audit = await sql<{ n: string | number }>('SELECT count(*) AS n FROM quota_audit');
  assert.ok(Number(audit[0]!.n) >= 2, 'admission and refusal are audited');

  // a crash loses nothing: the container, its project and the ledger's charge come back
  await d.kill('SIGKILL');
  await d.restart();
  const list = await d.api<{ name: string; status: string }[]>('GET', '/containers?project=team&all=true');
  assert.deepEqual(list.body.map((c) => [c.name, c.status]), [['web', 'running']]);
  const again = await d.api<{ error: { code: string } }>('POST', '/containers?project=team', { image: 'imported/saved:v1', name: 'second', cmd: ['true'] });
  assert.equal(again.status, 429, 'the charge survived the restart');

  // removing it gives the capacity back
  assert.equal((await d.api('DELETE', `/containers/${web.body.id}?force=true`)).status, 204);
  assert.equal((await sql('SELECT id FROM quota_instances WHERE id = $1', [web.body.id])).length, 0);
  const next = await d.api<{ status: string }>('POST', '/containers?project=team', { image: 'imported/saved:v1', name: 'second', cmd: ['true'] });
  assert.equal(next.status, 201, JSON.stringify(next.body));
});
