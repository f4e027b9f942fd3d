/**
 * Named volumes (docs/volumes.md): one row per volume, per project, naming the host that holds
 * its image file. The record type and the repository interface live here (as placement's do).
 */
import { AlreadyExists, NotFound } from '../../core/errors.js';
import { isUniqueViolation, str, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';

/** creating: the row is in, the host's file may not be yet; ready: usable; removing: on its way out. */
export type VolumeStatus = 'creating' | 'ready' | 'removing';

export interface VolumeRecord {
  id: string;
  name: string;
  projectId: string;
  /** The agent (host) whose disk holds it: containers using it run there. */
  host: string;
  /** "local" only for now (a sparse ext4 image loop-mounted on the host). */
  driver: string;
  /** What it may hold, in bytes (the ext4 image's size; a whole number of MiB). */
  sizeBytes: number;
  status: VolumeStatus;
  labels: Record<string, string>;
  /** The driver options as the creator gave them (Docker's `--opt size=2g`: {"size": "2g"}); {} when none. */
  driverOptions: Record<string, string>;
  createdAt: string;
}

export interface VolumeRepo {
  get(id: string): Promise<VolumeRecord | undefined>;
  byName(projectId: string, name: string): Promise<VolumeRecord | undefined>;
  /** Every project's volumes of this name (the caller scopes them). */
  named(name: string): Promise<VolumeRecord[]>;
  /** Oldest first; one project's, or every project's. */
  list(filter?: { projectId?: string }): Promise<VolumeRecord[]>;
  /** The volumes this host holds, oldest first. */
  onHost(host: string): Promise<VolumeRecord[]>;
  /** AlreadyExists when the project has a volume of that name, or the id is taken. */
  insert(v: VolumeRecord): Promise<void>;
  /** NotFound when the row is gone. */
  setStatus(id: string, status: VolumeStatus): Promise<VolumeRecord>;
  /** True when this call removed the row. */
  delete(id: string): Promise<boolean>;
  /** Its data is on another host now (a container moved with it); NotFound when the row is gone. */
  moveHost(id: string, host: string): Promise<VolumeRecord>;
}

function volume(r: Row): VolumeRecord {
  return {
    id: str(r.id), name: str(r.name), projectId: str(r.project_id), host: str(r.host), driver: str(r.driver),
    sizeBytes: Number(r.size_bytes), status: str(r.status) as VolumeStatus,
    labels: JSON.parse(str(r.labels)) as Record<string, string>, driverOptions: JSON.parse(str(r.driver_options)) as Record<string, string>,
    createdAt: str(r.created_at),
  };
}

export class SqlVolumeRepo implements VolumeRepo {
  constructor(private readonly db: SqlExecutor) {}
  private async rows(sql: string, params: SqlValue[] = []): Promise<VolumeRecord[]> {
    return (await this.db.all(sql, params)).map(volume);
  }
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM volumes WHERE id = ?', [id]);
    return r && volume(r);
  }
  async byName(projectId: string, name: string) {
    const r = await this.db.get('SELECT * FROM volumes WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && volume(r);
  }
  named(name: string) {
    return this.rows('SELECT * FROM volumes WHERE name = ? ORDER BY created_at, id', [name]);
  }
  list(filter: { projectId?: string } = {}) {
    return filter.projectId
      ? this.rows('SELECT * FROM volumes WHERE project_id = ? ORDER BY created_at, id', [filter.projectId])
      : this.rows('SELECT * FROM volumes ORDER BY created_at, id');
  }
  onHost(host: string) {
    return this.rows('SELECT * FROM volumes WHERE host = ? ORDER BY created_at, id', [host]);
  }
  async insert(v: VolumeRecord) {
    try {
      await this.db.run(
        'INSERT INTO volumes (id, name, project_id, host, driver, size_bytes, status, labels, driver_options, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        [v.id, v.name, v.projectId, v.host, v.driver, v.sizeBytes, v.status, JSON.stringify(v.labels), JSON.stringify(v.driverOptions), v.createdAt],
      );
    } catch (e) {
      if (!isUniqueViolation(e)) throw e;
      if (e.involves('name')) throw new AlreadyExists(`volume "${v.name}" already exists in this project`, { name: v.name });
      throw new AlreadyExists(`volume id ${v.id} is taken`);
    }
  }
  async setStatus(id: string, status: VolumeStatus) {
    const r = await this.db.run('UPDATE volumes SET status = ? WHERE id = ?', [status, id]);
    if (r.changes === 0) throw new NotFound(`volume ${id} not found`);
    const v = await this.get(id);
    if (!v) throw new NotFound(`volume ${id} not found`);
    return v;
  }
  async delete(id: string) {
    return (await this.db.run('DELETE FROM volumes WHERE id = ?', [id])).changes > 0;
  }
  async moveHost(id: string, host: string) {
    const r = await this.db.run('UPDATE volumes SET host = ? WHERE id = ?', [host, id]);
    if (r.changes === 0) throw new NotFound(`volume ${id} not found`);
    const v = await this.get(id);
    if (!v) throw new NotFound(`volume ${id} not found`);
    return v;
  }
}
