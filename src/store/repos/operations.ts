import { NotFound } from '../../core/errors.js';
import type { OperationRecord } from '../records.js';
import type { OperationRepo } from '../store.js';
import { str, type Row, type SqlExecutor } from '../sql/executor.js';

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
  };
}

const json = (v: unknown): string | null => (v === null || v === undefined ? null : JSON.stringify(v));

export class SqlOperationRepo implements OperationRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM operations WHERE id = ?', [id]);
    return r && operation(r);
  }
  async list(limit = 100) {
    return (await this.db.all('SELECT * FROM operations ORDER BY created_at DESC, id DESC LIMIT ?', [limit])).map(operation);
  }
  async insert(op: OperationRecord) {
    await this.db.run(
      `INSERT INTO operations (id, kind, project_id, status, target, progress, result, error, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [op.id, op.kind, op.projectId, op.status, op.target, JSON.stringify(op.progress), json(op.result), op.error ? JSON.stringify(op.error) : null, op.createdAt, op.updatedAt],
    );
  }
  async update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): Promise<OperationRecord> {
    const cur = await this.get(id);
    if (!cur) throw new NotFound(`no such operation: ${id}`);
    const next = { ...cur, ...patch };
    await this.db.run('UPDATE operations SET status = ?, progress = ?, result = ?, error = ?, updated_at = ? WHERE id = ?', [
      next.status, JSON.stringify(next.progress), json(next.result), next.error ? JSON.stringify(next.error) : null, next.updatedAt, id,
    ]);
    return next;
  }
}
