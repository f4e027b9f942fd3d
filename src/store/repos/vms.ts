import type { VmRecord, VmStatus } from '../records.js';
import type { VmRepo } from '../store.js';
import { numOrNull, str, strOrNull, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';
import { InstanceRows } from './instances.js';

const COLUMNS: Record<string, string> = {
  name: 'name',
  projectId: 'project_id',
  config: 'config',
  status: 'status',
  pid: 'pid',
  exitCode: 'exit_code',
  createdAt: 'created_at',
  startedAt: 'started_at',
  finishedAt: 'finished_at',
  savedAt: 'saved_at',
  agent: 'agent',
};

function value(key: string, v: unknown): SqlValue {
  return key === 'config' ? JSON.stringify(v) : ((v ?? null) as SqlValue);
}

function vm(r: Row): VmRecord {
  return {
    id: str(r.id),
    name: str(r.name),
    projectId: str(r.project_id),
    config: JSON.parse(str(r.config)) as VmRecord['config'],
    status: str(r.status) as VmStatus,
    pid: numOrNull(r.pid),
    exitCode: numOrNull(r.exit_code),
    createdAt: str(r.created_at),
    startedAt: strOrNull(r.started_at),
    finishedAt: strOrNull(r.finished_at),
    savedAt: strOrNull(r.saved_at),
    agent: str(r.agent ?? 'local'),
  };
}

export class SqlVmRepo implements VmRepo {
  private readonly rows: InstanceRows<VmRecord>;
  constructor(db: SqlExecutor) {
    this.rows = new InstanceRows(db, 'vm', COLUMNS, value, vm);
  }
  get(id: string) {
    return this.rows.get(id);
  }
  byName(projectId: string, name: string) {
    return this.rows.byName(projectId, name);
  }
  named(name: string) {
    return this.rows.named(name);
  }
  withIdPrefix(prefix: string) {
    return this.rows.withIdPrefix(prefix);
  }
  list(filter: { projectId?: string; status?: VmStatus[] } = {}) {
    return this.rows.list(filter);
  }
  insert(v: VmRecord) {
    return this.rows.insert(v, `a VM named "${v.name}" already exists in this project`);
  }
  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): Promise<VmRecord> {
    return this.rows.update(id, patch);
  }
  delete(id: string) {
    return this.rows.delete(id);
  }
}
