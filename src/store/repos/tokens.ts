import { AlreadyExists } from '../../core/errors.js';
import type { TokenRecord } from '../records.js';
import type { TokenRepo } from '../store.js';
import { isUniqueViolation, numOrNull, str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

function token(r: Row): TokenRecord {
  return {
    id: str(r.id), userId: str(r.user_id), kind: str(r.kind) as TokenRecord['kind'], name: strOrNull(r.name),
    hash: str(r.hash), createdAt: str(r.created_at), expiresAt: numOrNull(r.expires_at),
  };
}

export class SqlTokenRepo implements TokenRepo {
  constructor(private readonly db: SqlExecutor) {}
  async byHash(hash: string) {
    const r = await this.db.get('SELECT * FROM tokens WHERE hash = ?', [hash]);
    return r && token(r);
  }
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM tokens WHERE id = ?', [id]);
    return r && token(r);
  }
  async list(userId: string, kind: TokenRecord['kind']) {
    return (await this.db.all('SELECT * FROM tokens WHERE user_id = ? AND kind = ? ORDER BY created_at, id', [userId, kind])).map(token);
  }
  async insert(t: TokenRecord) {
    try {
      await this.db.run('INSERT INTO tokens (id, user_id, kind, name, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)', [
        t.id, t.userId, t.kind, t.name, t.hash, t.createdAt, t.expiresAt,
      ]);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`an API key named "${t.name ?? ''}" already exists`);
      throw e;
    }
  }
  async delete(id: string) {
    await this.db.run('DELETE FROM tokens WHERE id = ?', [id]);
  }
  async deleteExpired(now: number) {
    return (await this.db.run('DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?', [now])).changes;
  }
}
