/**
 * What a container's --network, -p and --ip mean before anything is made: the mode, the
 * network it joins, and the checks (ports only on a network, --ip in its subnet, host ports
 * not published twice).
 */
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { cidrContains, parseCidr, portsClash } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import { hostChoosesPort } from '../../core/port-ranges.js';
import type { ContainerConfig, ContainerRecord, NetworkRecord } from '../../store/records.js';
import { inScope, type ProjectScope } from '../identity/scope.js';
import { DEFAULT_NETWORK, type NetworkRecords } from './network-records.js';

/** What a container's network settings resolve to before addresses are leased. */
export type NetworkIntent =
  | { mode: 'none' }
  | { mode: 'host' }
  | { mode: 'container'; container: ContainerRecord }
  | { mode: 'networks'; networks: NetworkRecord[] };

export interface NetworkIntentDeps {
  store: Store;
  networks: Pick<NetworkRecords, 'defaultNetwork' | 'get'>;
}

/** What --network means for a container of this project (checked before anything is made). */
export async function networkIntent(d: NetworkIntentDeps, config: ContainerConfig, projectId: string, scope: ProjectScope): Promise<NetworkIntent> {
  const want = config.network ?? DEFAULT_NETWORK;
  const networked = want !== 'none' && want !== 'host' && !want.startsWith('container:');
  if (!networked && config.ports?.length) throw new InvalidArgument(`ports cannot be published with --network ${want}`);
  if (!networked && config.ip) throw new InvalidArgument(`--ip needs a network (not --network ${want})`);
  if (want === 'none' || want === 'host') return { mode: want };
  if (want.startsWith('container:')) {
    const ref = want.slice('container:'.length);
    const other = (await d.store.containers.get(ref))
      ?? (await d.store.containers.named(ref)).find((c) => inScope(scope, c.projectId))
      ?? (await d.store.containers.withIdPrefix(ref)).find((c) => inScope(scope, c.projectId));
    if (!other || !inScope(scope, other.projectId)) throw new NotFound(`no such container: ${ref}`);
    if (other.status !== 'running' && other.status !== 'paused') throw new Conflict(`container ${other.name} is ${other.status}: its network namespace can be joined only while it runs`);
    return { mode: 'container', container: other };
  }
  const net = want === DEFAULT_NETWORK ? await d.networks.defaultNetwork(projectId) : await d.networks.get(want, { projectId });
  if (config.ports?.length && net.internal) throw new InvalidArgument(`ports cannot be published from the internal network ${net.name}`);
  if (config.ip && !cidrContains(parseCidr(net.subnet), config.ip)) throw new InvalidArgument(`--ip ${config.ip} is outside ${net.name} (${net.subnet})`);
  const ports = config.ports ?? [];
  for (const [i, p] of ports.entries()) {
    // hostPort 0 or a range: the host chooses a free one for each (-P, -p PORT, -p FIRST-LAST:PORT), never twice
    if (!hostChoosesPort(p) && ports.slice(0, i).some((q) => !hostChoosesPort(q) && q.protocol === p.protocol && q.hostPort === p.hostPort && (q.hostIp ?? '') === (p.hostIp ?? ''))) {
      throw new InvalidArgument(`host port ${p.hostPort}/${p.protocol} is published twice`);
    }
  }
  // (only a request that publishes ports pays for the scan of the others')
  for (const c of ports.length ? await d.store.containers.list({ status: ['created', 'running', 'paused', 'restarting'] }) : []) {
    for (const q of c.config.ports ?? []) {
      const clash = ports.find((p) => portsClash(p, q));
      // only the project's own containers are named: another tenant's are none of the caller's business
      if (clash) throw new Conflict(`host port ${clash.hostPort}/${clash.protocol} is already published${c.projectId === projectId ? ` by ${c.name}` : ''}`);
    }
  }
  return { mode: 'networks', networks: [net] };
}
