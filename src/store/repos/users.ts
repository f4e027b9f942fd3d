import { AlreadyExists, NotFound } from '../../core/errors.js';
import type { UserRecord } from '../records.js';
import type { UserRepo } from '../store.js';
import { isUniqueViolation, str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

function user(r: Row): UserRecord {
  return {
    id: str(r.id), name: str(r.name), passwordHash: str(r.password_hash), systemAdmin: Boolean(r.system_admin),
    defaultProjectId: strOrNull(r.default_project_id), createdAt: str(r.created_at),
  };
}

export class SqlUserRepo implements UserRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM users WHERE id = ?', [id]);
    return r && user(r);
  }
  async byName(name: string) {
    const r = await this.db.get('SELECT * FROM users WHERE name = ?', [name]);
    return r && user(r);
  }
  async list() {
    return (await this.db.all('SELECT * FROM users ORDER BY name')).map(user);
  }
  async insert(u: UserRecord) {
    try {
      await this.db.run(
        'INSERT INTO users (id, name, password_hash, system_admin, default_project_id, created_at) VALUES (?, ?, ?, ?, ?, ?)',
        [u.id, u.name, u.passwordHash, u.systemAdmin ? 1 : 0, u.defaultProjectId, u.createdAt],
      );
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`user "${u.name}" already exists`);
      throw e;
    }
  }
  async update(id: string, patch: Partial<Omit<UserRecord, 'id'>>) {
    const cur = await this.get(id);
    if (!cur) throw new NotFound(`no such user: ${id}`);
    const n = { ...cur, ...patch };
    await this.db.run('UPDATE users SET name = ?, password_hash = ?, system_admin = ?, default_project_id = ? WHERE id = ?', [
      n.name, n.passwordHash, n.systemAdmin ? 1 : 0, n.defaultProjectId, id,
    ]);
  }
  async delete(id: string) {
    await this.db.run('DELETE FROM users WHERE id = ?', [id]);
  }
}
