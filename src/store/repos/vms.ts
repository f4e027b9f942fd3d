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

/** The VM rows: everything is what the two instance tables share (instances.ts). */
export class SqlVmRepo extends InstanceRows<VmRecord> implements VmRepo {
  constructor(db: SqlExecutor) {
    super(db, 'vm', COLUMNS, value, vm);
  }
}
