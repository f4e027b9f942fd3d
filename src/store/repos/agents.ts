import { NotFound } from '../../core/errors.js';
import type { AgentRecord, HostFacts } from '../records.js';
import type { AgentRegistrationRecord, AgentRepo, HostSettingsPatch } from '../store.js';
import { str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

/** The url of the embedded agent's row: a host with settings, never connected to. */
export const EMBEDDED_AGENT_URL = 'embedded:';

function agent(r: Row): AgentRecord {
  const disabledAt = strOrNull(r.disabled_at);
  return {
    name: str(r.name), url: str(r.url), token: str(r.token), registeredAt: str(r.registered_at),
    zone: str(r.zone),
    labels: JSON.parse(str(r.labels)) as Record<string, string>,
    disabled: disabledAt === null ? null : { reason: str(r.disabled_reason ?? ''), at: disabledAt, by: str(r.disabled_by ?? '') },
    allocationRatios: JSON.parse(str(r.allocation_ratios)) as AgentRecord['allocationRatios'],
    facts: r.facts === null || r.facts === undefined ? null : (JSON.parse(str(r.facts)) as HostFacts),
  };
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
  async put(a: AgentRegistrationRecord) {
    // a registration again changes how the host is reached, never what an administrator set on it
    await this.db.run(
      `INSERT INTO agents (name, url, token, registered_at, zone, labels, disabled_reason, disabled_at, disabled_by, allocation_ratios, facts)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET url = excluded.url, token = excluded.token, registered_at = excluded.registered_at`,
      [
        a.name, a.url, a.token, a.registeredAt, a.zone ?? 'default', JSON.stringify(a.labels ?? {}),
        a.disabled?.reason ?? null, a.disabled?.at ?? null, a.disabled?.by ?? null,
        JSON.stringify(a.allocationRatios ?? {}), a.facts ? JSON.stringify(a.facts) : null,
      ],
    );
  }
  async ensureEmbedded(name: string, registeredAt: string) {
    await this.db.run(
      `INSERT INTO agents (name, url, token, registered_at) VALUES (?, ?, '', ?) ON CONFLICT (name) DO NOTHING`,
      [name, EMBEDDED_AGENT_URL, registeredAt],
    );
  }
  async updateSettings(name: string, patch: HostSettingsPatch) {
    const sets: string[] = [];
    const params: Array<string | null> = [];
    if (patch.zone !== undefined) sets.push('zone = ?'), params.push(patch.zone);
    if (patch.labels !== undefined) sets.push('labels = ?'), params.push(JSON.stringify(patch.labels));
    if (patch.allocationRatios !== undefined) sets.push('allocation_ratios = ?'), params.push(JSON.stringify(patch.allocationRatios));
    if (patch.disabled !== undefined) {
      sets.push('disabled_reason = ?', 'disabled_at = ?', 'disabled_by = ?');
      params.push(patch.disabled?.reason ?? null, patch.disabled?.at ?? null, patch.disabled?.by ?? null);
    }
    if (sets.length) await this.db.run(`UPDATE agents SET ${sets.join(', ')} WHERE name = ?`, [...params, name]);
    const rec = await this.get(name);
    if (!rec) throw new NotFound(`no such host: ${name}`, { host: name });
    return rec;
  }
  async recordFacts(name: string, facts: HostFacts) {
    const r = await this.db.run('UPDATE agents SET facts = ? WHERE name = ?', [JSON.stringify(facts), name]);
    return r.changes > 0;
  }
  async delete(name: string) {
    await this.db.run('DELETE FROM agents WHERE name = ?', [name]);
  }
}
