import { AlreadyExists } from '../../core/errors.js';
import type { NetworkLeaseRecord, NetworkRecord } from '../records.js';
import type { NetworkRepo } from '../store.js';
import { isUniqueViolation, str, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';
import { oneOf } from './where.js';

function network(r: Row): NetworkRecord {
  return {
    id: str(r.id), name: str(r.name), projectId: str(r.project_id), driver: str(r.driver) as NetworkRecord['driver'],
    subnet: str(r.subnet), gateway: str(r.gateway), internal: Boolean(r.internal), device: str(r.device),
    builtin: Boolean(r.builtin), labels: JSON.parse(str(r.labels)) as Record<string, string>, createdAt: str(r.created_at),
    ...(r.vni !== null && r.vni !== undefined ? { vni: Number(r.vni) } : {}),
  };
}

function lease(r: Row): NetworkLeaseRecord {
  return { networkId: str(r.network_id), address: str(r.address), instanceId: str(r.instance_id), ifIndex: Number(r.if_index), createdAt: str(r.created_at) };
}

export class SqlNetworkRepo implements NetworkRepo {
  constructor(private readonly db: SqlExecutor) {}
  private async rows(sql: string, params: SqlValue[] = []): Promise<NetworkRecord[]> {
    return (await this.db.all(sql, params)).map(network);
  }
  async get(id: string) {
    const r = await this.db.get('SELECT * FROM networks WHERE id = ?', [id]);
    return r && network(r);
  }
  async byName(projectId: string, name: string) {
    const r = await this.db.get('SELECT * FROM networks WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && network(r);
  }
  named(name: string) {
    return this.rows('SELECT * FROM networks WHERE name = ? ORDER BY created_at, id', [name]);
  }
  async withIdPrefix(prefix: string) {
    if (!/^[0-9a-f]{1,64}$/.test(prefix)) return [];
    return this.rows('SELECT * FROM networks WHERE id LIKE ? ORDER BY created_at, id', [`${prefix}%`]);
  }
  list(filter: { projectId?: string } = {}) {
    return filter.projectId
      ? this.rows('SELECT * FROM networks WHERE project_id = ? ORDER BY created_at, id', [filter.projectId])
      : this.rows('SELECT * FROM networks ORDER BY created_at, id');
  }
  async insert(n: NetworkRecord) {
    try {
      await this.db.run(
        'INSERT INTO networks (id, name, project_id, driver, subnet, gateway, internal, device, builtin, labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        [n.id, n.name, n.projectId, n.driver, n.subnet, n.gateway, n.internal ? 1 : 0, n.device, n.builtin ? 1 : 0, JSON.stringify(n.labels), n.createdAt],
      );
    } catch (e) {
      if (!isUniqueViolation(e)) throw e;
      if (e.involves('subnet')) throw new AlreadyExists(`subnet ${n.subnet} is used by another network`);
      if (e.involves('device')) throw new AlreadyExists(`device ${n.device} is used by another network`);
      throw new AlreadyExists(`network "${n.name}" already exists in this project`);
    }
  }
  async setVni(id: string, vni: number): Promise<number | undefined> {
    try {
      // given once: a network that has one keeps it, whoever asks
      await this.db.run('UPDATE networks SET vni = ? WHERE id = ? AND vni IS NULL', [vni, id]);
    } catch (e) {
      if (isUniqueViolation(e)) return undefined;
      throw e;
    }
    const r = await this.db.get('SELECT vni FROM networks WHERE id = ?', [id]);
    return r && r.vni !== null && r.vni !== undefined ? Number(r.vni) : undefined;
  }
  async vnisInUse(): Promise<number[]> {
    return (await this.db.all('SELECT vni FROM networks WHERE vni IS NOT NULL')).map((r) => Number(r.vni));
  }
  async delete(id: string) {
    await this.db.transaction(async () => {
      await this.db.run('DELETE FROM network_hosts WHERE network_id = ?', [id]);
      await this.db.run('DELETE FROM networks WHERE id = ?', [id]);
    });
  }
  async leases(filter: { networkId?: string; instanceId?: string }): Promise<NetworkLeaseRecord[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.networkId) {
      where.push('network_id = ?');
      params.push(filter.networkId);
    }
    if (filter.instanceId) {
      where.push('instance_id = ?');
      params.push(filter.instanceId);
    }
    const sql = `SELECT * FROM network_leases ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY instance_id, if_index, network_id`;
    return (await this.db.all(sql, params)).map(lease);
  }
  async leasedAddresses(networkId: string) {
    // the primary key's index holds both columns: no table read, no sort, no record per row
    return (await this.db.all('SELECT address FROM network_leases WHERE network_id = ?', [networkId])).map((r) => str(r.address));
  }
  async leasedAmong(networkId: string, addresses: readonly string[]) {
    if (!addresses.length) return [];
    const among = oneOf(this.db.dialect, 'address', addresses);
    return (await this.db.all(`SELECT address FROM network_leases WHERE network_id = ? AND ${among.sql}`, [networkId, ...among.params])).map((r) => str(r.address));
  }
  async lease(l: NetworkLeaseRecord) {
    try {
      await this.db.run('INSERT INTO network_leases (network_id, address, instance_id, if_index, created_at) VALUES (?, ?, ?, ?, ?)', [
        l.networkId, l.address, l.instanceId, l.ifIndex, l.createdAt,
      ]);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`address ${l.address} is already leased on this network, or the container is already on it`);
      throw e;
    }
  }
  async addHost(networkId: string, host: string, at = new Date().toISOString()) {
    await this.db.run('INSERT INTO network_hosts (network_id, host, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', [networkId, host, at]);
  }
  async hosts(networkId: string) {
    return (await this.db.all('SELECT host FROM network_hosts WHERE network_id = ? ORDER BY host', [networkId])).map((r) => str(r.host));
  }
  async onHost(host: string) {
    return this.rows('SELECT n.* FROM networks n JOIN network_hosts h ON h.network_id = n.id WHERE h.host = ? ORDER BY n.created_at, n.id', [host]);
  }
  async removeHost(networkId: string, host: string) {
    await this.db.run('DELETE FROM network_hosts WHERE network_id = ? AND host = ?', [networkId, host]);
  }
  async release(instanceId: string, networkId?: string): Promise<number> {
    const r = networkId
      ? await this.db.run('DELETE FROM network_leases WHERE instance_id = ? AND network_id = ?', [instanceId, networkId])
      : await this.db.run('DELETE FROM network_leases WHERE instance_id = ?', [instanceId]);
    return r.changes;
  }
}
