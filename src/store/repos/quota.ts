import type { QuotaAuditRow } from '../store.js';
import { str, type SqlExecutor, type SqlValue } from '../sql/executor.js';
import { oneOf } from './where.js';

/**
 * The ledger's own PostgreSQL advisory lock (two-key form, in "NIMB"'s space like the executor's
 * keys; "QUOT" keeps clear of their small numbers). Held for the transaction, it makes each
 * replica's check-then-write of the ledger exclusive whatever else serialises transactions.
 */
const LOCK_SPACE = 0x4e494d42;
const QUOTA_LOCK = 0x51554f54;

/** The ledger's tables of one row per instance or project (never a caller's string). */
type RowTable = 'quota_instances' | 'quota_projects';

/**
 * The quota ledger's rows: its state (one row), its projects and its instances (one row each) and
 * its audit log (append-only). quota_ledger.version counts the committed writes of the state; a
 * project or instance row carries the version of the state written with it (the state is written
 * first), so a replica at version v reads only the rows written after it.
 */
export class SqlQuotaRows {
  constructor(private readonly db: SqlExecutor) {}
  async loadState(): Promise<string | undefined> {
    const r = await this.db.get('SELECT state FROM quota_ledger WHERE id = 1');
    return r ? str(r.state) : undefined;
  }
  /** Unconditional (a layout move, a test): still counts as a new version, so replicas reload. */
  async saveState(json: string): Promise<void> {
    await this.db.run(
      `INSERT INTO quota_ledger (id, state, updated_at, version) VALUES (1, ?, ?, 1)
       ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, version = quota_ledger.version + 1`,
      [json, new Date().toISOString()],
    );
  }
  /** Writes the state as version expected + 1 only if the stored one is still `expected` (0: none yet). */
  async saveStateIfVersion(json: string, expected: number): Promise<boolean> {
    const at = new Date().toISOString();
    const r =
      expected === 0
        ? // the first write, or the first since the version column came (rows of before are at 0)
          await this.db.run(
            `INSERT INTO quota_ledger (id, state, updated_at, version) VALUES (1, ?, ?, 1)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, version = 1
             WHERE quota_ledger.version = 0`,
            [json, at],
          )
        : await this.db.run('UPDATE quota_ledger SET state = ?, updated_at = ?, version = ? WHERE id = 1 AND version = ?', [json, at, expected + 1, expected]);
    return r.changes === 1;
  }
  async version(): Promise<number> {
    const r = await this.db.get('SELECT version FROM quota_ledger WHERE id = 1');
    return r ? Number(r.version) : 0;
  }
  async lock(): Promise<void> {
    // SQLite: the transaction's BEGIN IMMEDIATE already holds the database's only write lock
    if (this.db.dialect === 'postgres') await this.db.get('SELECT pg_advisory_xact_lock(?, ?)', [LOCK_SPACE, QUOTA_LOCK]);
  }
  loadInstances(): Promise<string[]> {
    return this.loadRows('quota_instances');
  }
  loadInstancesSince(version: number): Promise<{ changed: string[]; count: number }> {
    return this.rowsSince('quota_instances', version);
  }
  instanceIds(): Promise<string[]> {
    return this.rowIds('quota_instances');
  }
  saveInstances(rows: readonly { id: string; json: string | null }[]): Promise<void> {
    return this.saveRows('quota_instances', rows);
  }
  loadProjects(): Promise<string[]> {
    return this.loadRows('quota_projects');
  }
  loadProjectsSince(version: number): Promise<{ changed: string[]; count: number }> {
    return this.rowsSince('quota_projects', version);
  }
  projectIds(): Promise<string[]> {
    return this.rowIds('quota_projects');
  }
  saveProjects(rows: readonly { id: string; json: string | null }[]): Promise<void> {
    return this.saveRows('quota_projects', rows);
  }

  // The ledger's row tables (instances, projects) share one shape: id, state, the state's version written with it.
  private async loadRows(table: RowTable): Promise<string[]> {
    return (await this.db.all(`SELECT state FROM ${table} ORDER BY id`)).map((r) => str(r.state));
  }
  private async rowsSince(table: RowTable, version: number): Promise<{ changed: string[]; count: number }> {
    const changed = (await this.db.all(`SELECT state FROM ${table} WHERE version > ?`, [version])).map((r) => str(r.state));
    const count = Number((await this.db.get(`SELECT COUNT(*) AS n FROM ${table}`))?.n ?? 0);
    return { changed, count };
  }
  private async rowIds(table: RowTable): Promise<string[]> {
    return (await this.db.all(`SELECT id FROM ${table}`)).map((r) => str(r.id));
  }
  private async saveRows(table: RowTable, rows: readonly { id: string; json: string | null }[]): Promise<void> {
    if (rows.length === 0) return;
    // one transaction (or the caller's): all the rows or none, and one commit for many rows
    await this.db.transaction(async () => {
      for (const r of rows) {
        if (r.json === null) await this.db.run(`DELETE FROM ${table} WHERE id = ?`, [r.id]);
        else {
          await this.db.run(
            `INSERT INTO ${table} (id, state, version) VALUES (?, ?, COALESCE((SELECT version FROM quota_ledger WHERE id = 1), 0))
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, version = excluded.version`,
            [r.id, r.json],
          );
        }
      }
    });
  }
  async appendAudit(entries: readonly QuotaAuditRow[]): Promise<void> {
    if (entries.length === 0) return;
    await this.db.transaction(async () => {
      for (const e of entries) await this.db.run('INSERT INTO quota_audit (seq, project, entry) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', [e.seq, e.project, e.json]);
    });
  }
  async queryAudit(filter: { project?: string; projects?: readonly string[]; sinceSeq?: number; limit: number }): Promise<string[]> {
    const where: string[] = ['seq > ?'];
    const params: SqlValue[] = [filter.sinceSeq ?? 0];
    if (filter.project !== undefined) {
      where.push('project = ?');
      params.push(filter.project);
    }
    if (filter.projects !== undefined) {
      // of those projects: the newest of theirs, not of everyone's, filtered
      const among = oneOf(this.db.dialect, 'project', filter.projects);
      where.push(among.sql);
      params.push(...among.params);
    }
    // the newest `limit` entries, returned oldest first
    const rows = await this.db.all(
      `SELECT entry FROM (SELECT seq, entry FROM quota_audit WHERE ${where.join(' AND ')} ORDER BY seq DESC LIMIT ?) AS newest ORDER BY seq`,
      [...params, filter.limit],
    );
    return rows.map((r) => str(r.entry));
  }

}
