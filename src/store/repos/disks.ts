import { AlreadyExists } from '../../core/errors.js';
import type { DiskImageRecord } from '../records.js';
import type { DiskImageRepo } from '../store.js';
import { isUniqueViolation, str, type Row, type SqlExecutor } from '../sql/executor.js';

function disk(r: Row): DiskImageRecord {
  return {
    projectId: str(r.project_id), name: str(r.name), digest: str(r.digest), format: str(r.format) as DiskImageRecord['format'],
    size: Number(r.size), virtualSize: Number(r.virtual_size), createdAt: str(r.created_at),
  };
}

export class SqlDiskImageRepo implements DiskImageRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(projectId: string, name: string) {
    const r = await this.db.get('SELECT * FROM disk_images WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && disk(r);
  }
  async list(projectId?: string) {
    const rows = projectId
      ? await this.db.all('SELECT * FROM disk_images WHERE project_id = ? ORDER BY name', [projectId])
      : await this.db.all('SELECT * FROM disk_images ORDER BY project_id, name');
    return rows.map(disk);
  }
  async insert(d: DiskImageRecord) {
    try {
      await this.db.run('INSERT INTO disk_images (project_id, name, digest, format, size, virtual_size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)', [
        d.projectId, d.name, d.digest, d.format, d.size, d.virtualSize, d.createdAt,
      ]);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`disk image "${d.name}" already exists in this project`);
      throw e;
    }
  }
  async delete(projectId: string, name: string) {
    await this.db.run('DELETE FROM disk_images WHERE project_id = ? AND name = ?', [projectId, name]);
  }
  async countByDigest(digest: string) {
    return Number((await this.db.get('SELECT COUNT(*) AS n FROM disk_images WHERE digest = ?', [digest]))!.n);
  }
}
