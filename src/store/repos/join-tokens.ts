import type { JoinTokenRecord } from '../records.js';
import type { JoinTokenRepo } from '../store.js';
import { numOrNull, str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

function joinToken(r: Row): JoinTokenRecord {
  return {
    id: str(r.id), hash: str(r.hash), createdAt: str(r.created_at), expiresAt: Number(r.expires_at),
    usedAt: numOrNull(r.used_at), usedBy: strOrNull(r.used_by),
  };
}

export class SqlJoinTokenRepo implements JoinTokenRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM agent_join_tokens WHERE id = ?', [id]);
    return r && joinToken(r);
  }
  async list() {
    return (await this.db.all('SELECT * FROM agent_join_tokens ORDER BY created_at, id')).map(joinToken);
  }
  async insert(t: JoinTokenRecord) {
    await this.db.run('INSERT INTO agent_join_tokens (id, hash, created_at, expires_at, used_at, used_by) VALUES (?, ?, ?, ?, ?, ?)', [
      t.id, t.hash, t.createdAt, t.expiresAt, t.usedAt, t.usedBy,
    ]);
  }
  async redeem(id: string, hash: string, agent: string, now: number) {
    // the conditions and the burn in one statement: a concurrent redeemer finds it used
    const r = await this.db.run(
      'UPDATE agent_join_tokens SET used_at = ?, used_by = ? WHERE id = ? AND hash = ? AND used_at IS NULL AND expires_at > ?',
      [now, agent, id, hash, now],
    );
    return r.changes === 1;
  }
  async deleteStale(before: number) {
    return (await this.db.run('DELETE FROM agent_join_tokens WHERE expires_at <= ? OR used_at <= ?', [before, before])).changes;
  }
}
