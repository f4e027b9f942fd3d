import { AlreadyExists } from '../../core/errors.js';
import type { ProjectRecord } from '../records.js';
import type { ProjectRepo } from '../store.js';
import { isUniqueViolation, str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

function project(r: Row): ProjectRecord {
  return { id: str(r.id), name: str(r.name), parentId: strOrNull(r.parent_id), createdAt: str(r.created_at) };
}

export class SqlProjectRepo implements ProjectRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM projects WHERE id = ?', [id]);
    return r && project(r);
  }
  async byName(name: string) {
    const r = await this.db.get('SELECT * FROM projects WHERE name = ? ORDER BY parent_id IS NOT NULL, created_at, id LIMIT 1', [name]);
    return r && project(r);
  }
  async named(name: string) {
    return (await this.db.all('SELECT * FROM projects WHERE name = ? ORDER BY parent_id IS NOT NULL, created_at, id', [name])).map(project);
  }
  async child(parentId: string | null, name: string) {
    const r = await this.db.get("SELECT * FROM projects WHERE COALESCE(parent_id, '') = ? AND name = ?", [parentId ?? '', name]);
    return r && project(r);
  }
  async children(parentId: string | null) {
    return (await this.db.all("SELECT * FROM projects WHERE COALESCE(parent_id, '') = ? ORDER BY name", [parentId ?? ''])).map(project);
  }
  async list() {
    // names repeat across parents: roots first, then by age, for one order on every backend
    return (await this.db.all('SELECT * FROM projects ORDER BY name, parent_id IS NOT NULL, created_at, id')).map(project);
  }
  async insert(p: ProjectRecord) {
    try {
      await this.db.run('INSERT INTO projects (id, name, parent_id, created_at) VALUES (?, ?, ?, ?)', [p.id, p.name, p.parentId, p.createdAt]);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`project "${p.name}" already exists${p.parentId ? ' under that parent' : ''}`);
      throw e;
    }
  }
  async delete(id: string) {
    await this.db.run('DELETE FROM projects WHERE id = ?', [id]);
  }
}
