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
  /** 'block': a qcow2 file VMs attach (virtio-blk); absent: a filesystem volume for containers. */
  type?: VolumeType;
  /** A block volume that may be attached read-write to several VMs at once (--shared); absent: one at a time. */
  shared?: true;
  /** The snapshot a block volume was cloned from (its first contents), when it was. */
  sourceSnapshot?: string;
}

export type VolumeType = 'filesystem' | 'block';

/** A point-in-time copy of a block volume, on its volume's host; a new volume can be cloned from it. */
export interface VolumeSnapshotRecord {
  id: string;
  /** Unique in its project. */
  name: string;
  projectId: string;
  volumeId: string;
  host: string;
  /** The volume's size when it was taken. */
  sizeBytes: number;
  status: VolumeStatus;
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
  /** Snapshots of block volumes. AlreadyExists when the project has one of that name, or the id is taken. */
  insertSnapshot(s: VolumeSnapshotRecord): Promise<void>;
  getSnapshot(id: string): Promise<VolumeSnapshotRecord | undefined>;
  snapshotByName(projectId: string, name: string): Promise<VolumeSnapshotRecord | undefined>;
  /** Every project's snapshots of this name (the caller scopes them). */
  snapshotsNamed(name: string): Promise<VolumeSnapshotRecord[]>;
  /** Oldest first; filtered by project, volume or host. */
  listSnapshots(filter?: { projectId?: string; volumeId?: string; host?: string }): Promise<VolumeSnapshotRecord[]>;
  /** NotFound when the row is gone. */
  setSnapshotStatus(id: string, status: VolumeStatus): Promise<VolumeSnapshotRecord>;
  /** True when this call removed the row. */
  deleteSnapshot(id: string): Promise<boolean>;
}

function snapshot(r: Row): VolumeSnapshotRecord {
  return {
    id: str(r.id), name: str(r.name), projectId: str(r.project_id), volumeId: str(r.volume_id), host: str(r.host),
    sizeBytes: Number(r.size_bytes), status: str(r.status) as VolumeStatus, createdAt: str(r.created_at),
  };
}

function volume(r: Row): VolumeRecord {
  return {
    id: str(r.id), name: str(r.name), projectId: str(r.project_id), host: str(r.host), driver: str(r.driver),
    sizeBytes: Number(r.size_bytes), status: str(r.status) as VolumeStatus,
    labels: JSON.parse(str(r.labels)) as Record<string, string>, driverOptions: JSON.parse(str(r.driver_options)) as Record<string, string>,
    createdAt: str(r.created_at),
    // absent when default, so a filesystem volume's record reads as it did before block volumes
    ...(r.type !== undefined && r.type !== null && str(r.type) !== 'filesystem' ? { type: str(r.type) as VolumeType } : {}),
    ...(Number(r.shared ?? 0) ? { shared: true as const } : {}),
    ...(r.source_snapshot !== undefined && r.source_snapshot !== null ? { sourceSnapshot: str(r.source_snapshot) } : {}),
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
        'INSERT INTO volumes (id, name, project_id, host, driver, size_bytes, status, labels, driver_options, created_at, type, shared, source_snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        [v.id, v.name, v.projectId, v.host, v.driver, v.sizeBytes, v.status, JSON.stringify(v.labels), JSON.stringify(v.driverOptions), v.createdAt, v.type ?? 'filesystem', v.shared ? 1 : 0, v.sourceSnapshot ?? null],
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
  async insertSnapshot(x: VolumeSnapshotRecord) {
    try {
      await this.db.run(
        'INSERT INTO volume_snapshots (id, name, project_id, volume_id, host, size_bytes, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        [x.id, x.name, x.projectId, x.volumeId, x.host, x.sizeBytes, x.status, x.createdAt],
      );
    } catch (e) {
      if (!isUniqueViolation(e)) throw e;
      if (e.involves('name')) throw new AlreadyExists(`volume snapshot "${x.name}" already exists in this project`, { name: x.name });
      throw new AlreadyExists(`volume snapshot id ${x.id} is taken`);
    }
  }
  async getSnapshot(id: string) {
    const r = await this.db.get('SELECT * FROM volume_snapshots WHERE id = ?', [id]);
    return r && snapshot(r);
  }
  async snapshotByName(projectId: string, name: string) {
    const r = await this.db.get('SELECT * FROM volume_snapshots WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && snapshot(r);
  }
  async snapshotsNamed(name: string) {
    return (await this.db.all('SELECT * FROM volume_snapshots WHERE name = ? ORDER BY created_at, id', [name])).map(snapshot);
  }
  async listSnapshots(filter: { projectId?: string; volumeId?: string; host?: string } = {}) {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.projectId !== undefined) { where.push('project_id = ?'); params.push(filter.projectId); }
    if (filter.volumeId !== undefined) { where.push('volume_id = ?'); params.push(filter.volumeId); }
    if (filter.host !== undefined) { where.push('host = ?'); params.push(filter.host); }
    const sql = `SELECT * FROM volume_snapshots${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id`;
    return (await this.db.all(sql, params)).map(snapshot);
  }
  async setSnapshotStatus(id: string, status: VolumeStatus) {
    const r = await this.db.run('UPDATE volume_snapshots SET status = ? WHERE id = ?', [status, id]);
    if (r.changes === 0) throw new NotFound(`volume snapshot ${id} not found`);
    const x = await this.getSnapshot(id);
    if (!x) throw new NotFound(`volume snapshot ${id} not found`);
    return x;
  }
  async deleteSnapshot(id: string) {
    return (await this.db.run('DELETE FROM volume_snapshots WHERE id = ?', [id])).changes > 0;
  }
}
