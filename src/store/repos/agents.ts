import type { AgentRecord } from '../records.js';
import type { AgentRepo } from '../store.js';
import { str, type Row, type SqlExecutor } from '../sql/executor.js';

function agent(r: Row): AgentRecord {
  return { name: str(r.name), url: str(r.url), token: str(r.token), registeredAt: str(r.registered_at) };
}

export class SqlAgentRepo implements AgentRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(name: string) {
    const r = await this.db.get('SELECT * FROM agents WHERE name = ?', [name]);
    return r && agent(r);
  }
  async list() {
    return (await this.db.all('SELECT * FROM agents ORDER BY name')).map(agent);
  }
  async put(a: AgentRecord) {
    await this.db.run(
      `INSERT INTO agents (name, url, token, registered_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET url = excluded.url, token = excluded.token, registered_at = excluded.registered_at`,
      [a.name, a.url, a.token, a.registeredAt],
    );
  }
  async delete(name: string) {
    await this.db.run('DELETE FROM agents WHERE name = ?', [name]);
  }
}
