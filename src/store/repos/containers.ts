import type { ContainerHealth, ContainerRecord, ContainerStatus } from '../records.js';
import type { ContainerRepo } from '../store.js';
import { numOrNull, str, strOrNull, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';
import { InstanceRows } from './instances.js';

const COLUMNS: Record<string, string> = {
  name: 'name',
  projectId: 'project_id',
  imageDigest: 'image_digest',
  config: 'config',
  status: 'status',
  runtime: 'runtime',
  pid: 'pid',
  exitCode: 'exit_code',
  oomKilled: 'oom_killed',
  restartCount: 'restart_count',
  stoppedByUser: 'stopped_by_user',
  createdAt: 'created_at',
  startedAt: 'started_at',
  finishedAt: 'finished_at',
  warnings: 'warnings',
  host: 'host',
  health: 'health',
};

function value(key: string, v: unknown): SqlValue {
  if (key === 'config' || key === 'warnings') return JSON.stringify(v);
  if (key === 'health') return v ? JSON.stringify(v) : null;
  if (typeof v === 'boolean') return v ? 1 : 0;
  return (v ?? null) as SqlValue;
}

function container(r: Row): ContainerRecord {
  return {
    id: str(r.id),
    name: str(r.name),
    projectId: str(r.project_id),
    imageDigest: str(r.image_digest),
    config: JSON.parse(str(r.config)) as ContainerRecord['config'],
    status: str(r.status) as ContainerStatus,
    runtime: str(r.runtime),
    pid: numOrNull(r.pid),
    exitCode: numOrNull(r.exit_code),
    oomKilled: Boolean(r.oom_killed),
    restartCount: Number(r.restart_count),
    stoppedByUser: Boolean(r.stopped_by_user),
    createdAt: str(r.created_at),
    startedAt: strOrNull(r.started_at),
    finishedAt: strOrNull(r.finished_at),
    warnings: JSON.parse(str(r.warnings)) as string[],
    host: str(r.host ?? 'local'),
    ...(r.health ? { health: JSON.parse(str(r.health)) as ContainerHealth } : {}),
  };
}

/** The container rows: what the two instance tables share (instances.ts), counts by image and containers per host. */
export class SqlContainerRepo extends InstanceRows<ContainerRecord> implements ContainerRepo {
  constructor(db: SqlExecutor) {
    super(db, 'container', COLUMNS, value, container);
  }
  async countByImage(digest: string, projectId?: string) {
    const sql = projectId === undefined
      ? 'SELECT COUNT(*) AS n FROM containers WHERE image_digest = ?'
      : 'SELECT COUNT(*) AS n FROM containers WHERE image_digest = ? AND project_id = ?';
    const params = projectId === undefined ? [digest] : [digest, projectId];
    return Number((await this.db.get(sql, params))!.n);
  }
  async onHost(host: string) {
    return (await this.db.all('SELECT * FROM containers WHERE host = ? ORDER BY created_at DESC, id DESC', [host])).map(container);
  }
}
