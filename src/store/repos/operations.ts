import { NotFound } from '../../core/errors.js';
import type { OperationRecord, ReplicaRecord } from '../records.js';
import type { OperationRepo } from '../store.js';
import { str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';
import { oneOf } from './where.js';

function operation(r: Row): OperationRecord {
  return {
    id: str(r.id),
    kind: str(r.kind),
    projectId: str(r.project_id),
    status: str(r.status) as OperationRecord['status'],
    target: str(r.target),
    progress: JSON.parse(str(r.progress)) as Record<string, unknown>,
    result: r.result === null ? null : (JSON.parse(str(r.result)) as unknown),
    error: r.error === null ? null : (JSON.parse(str(r.error)) as OperationRecord['error']),
    createdAt: str(r.created_at),
    updatedAt: str(r.updated_at),
    replica: strOrNull(r.replica),
  };
}

function replica(r: Row): ReplicaRecord {
  return {
    id: str(r.id),
    hostname: str(r.hostname),
    pid: Number(r.pid),
    startedAt: Number(r.started_at),
    lastSeen: Number(r.last_seen),
    apiUrl: strOrNull(r.api_url),
  };
}

const json = (v: unknown): string | null => (v === null || v === undefined ? null : JSON.stringify(v));

export class SqlOperationRepo implements OperationRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM operations WHERE id = ?', [id]);
    return r && operation(r);
  }
  async list(limit = 100, filter: { kind?: string; projectIds?: readonly string[] } = {}) {
    const kind = filter.kind !== undefined ? ['kind = ?'] : [];
    const kindParam = filter.kind !== undefined ? [filter.kind] : [];
    const newest = 'ORDER BY created_at DESC, id DESC LIMIT ?';
    if (filter.projectIds !== undefined) {
      // the newest of those projects: not the newest of all, filtered (other tenants' work would crowd them out)
      const among = oneOf(this.db.dialect, 'project_id', filter.projectIds);
      return (await this.db.all(`SELECT * FROM operations WHERE ${[...kind, among.sql].join(' AND ')} ${newest}`, [...kindParam, ...among.params, limit])).map(operation);
    }
    return (await this.db.all(`SELECT * FROM operations ${kind.length ? `WHERE ${kind[0]} ` : ''}${newest}`, [...kindParam, limit])).map(operation);
  }
  async insert(op: OperationRecord) {
    await this.db.run(
      `INSERT INTO operations (id, kind, project_id, status, target, progress, result, error, created_at, updated_at, replica)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [op.id, op.kind, op.projectId, op.status, op.target, JSON.stringify(op.progress), json(op.result), op.error ? JSON.stringify(op.error) : null, op.createdAt, op.updatedAt, op.replica ?? null],
    );
  }
  async update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): Promise<OperationRecord> {
    const cur = await this.get(id);
    if (!cur) throw new NotFound(`no such operation: ${id}`);
    const next = { ...cur, ...patch };
    await this.db.run('UPDATE operations SET status = ?, progress = ?, result = ?, error = ?, updated_at = ?, replica = ? WHERE id = ?', [
      next.status, JSON.stringify(next.progress), json(next.result), next.error ? JSON.stringify(next.error) : null, next.updatedAt, next.replica ?? null, id,
    ]);
    return next;
  }
  async failOrphaned(seenBefore: number, keep: string, error: { code: string; message: string }, updatedAt: string): Promise<OperationRecord[]> {
    // the status test repeats the partial index's predicate so both planners use it
    const rows = await this.db.all(
      `UPDATE operations SET status = 'failed', error = ?, updated_at = ?
       WHERE status IN ('pending', 'running')
         AND (replica IS NULL OR replica <> ?)
         AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = operations.replica AND r.last_seen >= ?)
       RETURNING *`,
      [JSON.stringify(error), updatedAt, keep, seenBefore],
    );
    return rows.map(operation).sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : 1));
  }
  async registerReplica(r: ReplicaRecord): Promise<void> {
    await this.db.run(
      `INSERT INTO replicas (id, hostname, pid, started_at, last_seen, api_url) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid, started_at = excluded.started_at,
         last_seen = excluded.last_seen, api_url = excluded.api_url`,
      [r.id, r.hostname, r.pid, r.startedAt, r.lastSeen, r.apiUrl],
    );
  }
  async touchReplica(id: string, lastSeen: number): Promise<boolean> {
    return (await this.db.run('UPDATE replicas SET last_seen = ? WHERE id = ?', [lastSeen, id])).changes > 0;
  }
  async removeReplica(id: string): Promise<void> {
    await this.db.run('DELETE FROM replicas WHERE id = ?', [id]);
  }
  async listReplicas(): Promise<ReplicaRecord[]> {
    return (await this.db.all('SELECT * FROM replicas ORDER BY started_at, id')).map(replica);
  }
  async pruneReplicas(seenBefore: number): Promise<number> {
    return (await this.db.run('DELETE FROM replicas WHERE last_seen < ?', [seenBefore])).changes;
  }
}
