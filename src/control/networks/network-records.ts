/**
 * Network records and their lifecycle: made (a user's, or a project's default "bridge" on
 * first use) with a subnet and quota, found by id, prefix or name in scope, removed from every
 * host they are laid out on. Their events ('create', 'destroy', ...) are published from here.
 */
import { AlreadyExists, Conflict, InvalidArgument, hasCode } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import type { Agent } from '../../agent/agent.js';
import { intToIp, parseCidr } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import type { NetworkDriverName, NetworkRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import { logger } from '../../core/log.js';
import { isUsableAddress, type AddressLeases } from './address-leases.js';
import { networkSpec, type NetworkHosts } from './network-hosts.js';
import { checkSubnet, defaultSubnet, pickSubnet, type SubnetDeps } from './subnets.js';
import type { NetworkOverlay } from './overlay.js';

const log = logger('networks');

export const DEFAULT_NETWORK = 'bridge';
/** Names with a meaning of their own in --network. */
const RESERVED = new Set(['bridge', 'none', 'host', 'default']);
const EVERYWHERE: ProjectScope = { canRead: () => true };

export interface CreateNetworkInput {
  name: string;
  driver?: NetworkDriverName;
  subnet?: string;
  gateway?: string;
  internal?: boolean;
  labels?: Record<string, string>;
}

export interface NetworkServiceOptions {
  defaultProjectId: string;
  /** The default project's bridge device and subnet. */
  bridge: string;
  bridgeSubnet: string;
  /** Not set by the operator: another free /16 may be taken when the host routes bridgeSubnet. */
  bridgeSubnetFallback?: boolean;
  /** /24s for networks without --subnet. */
  subnetPool: string;
}

/** The quota service's side for networks (it may persist its ledger, so either may be asynchronous). */
export interface NetworkQuota {
  admitNetwork(id: string, projectId: string): void | Promise<void>;
  release(id: string, reason: string): void | Promise<void>;
}

export interface NetworkRecordsDeps {
  store: Store;
  /** The embedded agent: every network is laid out there when made. */
  agent: Agent;
  events: Pick<EventBus, 'publish'>;
  quota: NetworkQuota;
  hosts: Pick<NetworkHosts, 'localName' | 'get' | 'foreignSubnets'>;
  leases: Pick<AddressLeases, 'instanceLeases'>;
  overlay: Pick<NetworkOverlay, 'forget'>;
  options: NetworkServiceOptions;
}

export class NetworkRecords {
  private readonly subnets: SubnetDeps;

  constructor(private readonly d: NetworkRecordsDeps) {
    this.subnets = { store: d.store, foreignSubnets: () => d.hosts.foreignSubnets() };
  }

  publish(n: NetworkRecord, action: string, attributes: Record<string, unknown> = {}): void {
    this.d.events.publish({ type: 'network', action, id: n.id, projectId: n.projectId, attributes: { name: n.name, ...attributes } });
  }

  /** By id, unique id prefix or name, in scope. */
  async get(idOrName: string, scope: ProjectScope = EVERYWHERE): Promise<NetworkRecord> {
    const store = this.d.store;
    if (!idOrName) throw new InvalidArgument('a network id or name is required');
    const exact = await store.networks.get(idOrName);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await store.networks.named(idOrName)).filter((n) => inScope(scope, n.projectId));
    if (named.length) return pickInScope(named, scope, (n) => n.id, 'network', idOrName);
    return pickInScope(await store.networks.withIdPrefix(idOrName), scope, (n) => n.id, 'network', idOrName);
  }

  async list(projectId?: string): Promise<NetworkRecord[]> {
    return this.d.store.networks.list(projectId ? { projectId } : {});
  }

  async create(input: CreateNetworkInput, projectId: string): Promise<NetworkRecord> {
    if (!isValidName(input.name) || input.name.length > 64) throw new InvalidArgument(`invalid network name "${input.name}": use letters, digits, '_', '.', '-' (max 64)`);
    if (RESERVED.has(input.name)) throw new InvalidArgument(`"${input.name}" is a reserved network name`);
    return this.make({ ...input, builtin: false }, projectId);
  }

  private async make(input: CreateNetworkInput & { builtin: boolean; device?: string }, projectId: string): Promise<NetworkRecord> {
    const driver = input.driver ?? 'bridge';
    if (driver !== 'bridge' && driver !== 'route') throw new InvalidArgument(`unknown network driver "${String(driver)}": bridge or route`);
    if (await this.d.store.networks.byName(projectId, input.name)) throw new AlreadyExists(`network "${input.name}" already exists in this project`);
    if (input.gateway && !input.subnet) throw new InvalidArgument('--gateway needs --subnet');
    const subnet = input.subnet ?? (await pickSubnet(this.subnets, this.d.options.subnetPool));
    if (input.subnet) {
      await checkSubnet(this.subnets, subnet).catch((e: unknown) => {
        // the default project's bridge subnet comes from the daemon's options: say which one to change
        if (input.builtin && e instanceof Error) e.message += ' (set NIMBUS_BRIDGE_SUBNET to another subnet for the default network)';
        throw e;
      });
    }
    const c = parseCidr(subnet);
    const gateway = input.gateway ?? intToIp(c.network + 1);
    if (!isUsableAddress(c, gateway)) throw new InvalidArgument(`gateway ${gateway} is not a host address of ${subnet}`);
    const id = newId().slice(0, 32);
    const rec: NetworkRecord = {
      id, name: input.name, projectId, driver, subnet, gateway, internal: input.internal ?? false,
      device: input.device ?? `${driver === 'route' ? 'nr' : 'nb'}-${id.slice(0, 12)}`,
      builtin: input.builtin, labels: input.labels ?? {}, createdAt: new Date().toISOString(),
    };
    // a project's default network comes with the project: only networks a user makes count against `networks`
    if (!rec.builtin) await this.d.quota.admitNetwork(id, projectId);
    try {
      await this.d.store.networks.insert(rec);
    } catch (e) {
      await this.d.quota.release(id, 'network create failed');
      throw e;
    }
    // laid out on the embedded agent now; on other hosts when an instance there first needs it (ensureOnHost)
    const local = this.d.hosts.localName;
    if (local !== undefined) {
      try {
        await this.d.store.networks.addHost(id, local, rec.createdAt);
        await this.d.agent.ensureNetwork(networkSpec(rec));
      } catch (e) {
        await this.d.agent.removeNetwork(id).catch(() => undefined);
        await this.d.store.networks.delete(id);
        await this.d.quota.release(id, 'network create failed');
        throw e;
      }
    }
    this.publish(rec, 'create', { driver, subnet });
    return rec;
  }

  /**
   * The project's "bridge", made on first use. Concurrent callers share one lookup (not
   * just one create): a caller whose read missed the network must not make a second one
   * after the first caller's create has finished.
   */
  private resolvingDefault = new Map<string, Promise<NetworkRecord>>();
  async defaultNetwork(projectId: string): Promise<NetworkRecord> {
    const pending = this.resolvingDefault.get(projectId);
    if (pending !== undefined) return pending;
    const p = this.findOrMakeDefault(projectId).finally(() => this.resolvingDefault.delete(projectId));
    this.resolvingDefault.set(projectId, p);
    return p;
  }

  private async findOrMakeDefault(projectId: string): Promise<NetworkRecord> {
    const found = await this.d.store.networks.byName(projectId, DEFAULT_NETWORK);
    if (found) return found;
    const isDefault = projectId === this.d.options.defaultProjectId;
    return this.make({
      name: DEFAULT_NETWORK, driver: 'bridge', builtin: true,
      ...(isDefault ? { subnet: await defaultSubnet(this.subnets, this.d.options), device: this.d.options.bridge } : {}),
    }, projectId);
  }

  async remove(idOrName: string, scope: ProjectScope): Promise<void> {
    const n = await this.get(idOrName, scope);
    const users = await this.d.leases.instanceLeases(n.id);
    if (users.length) {
      const names = users.map((l) => l.instanceName);
      throw new Conflict(`network ${n.name} is in use by ${users.length} instance(s): ${names.join(', ')}`, { instances: names });
    }
    // from every host it is laid out on; a host that fails keeps its row (and the network its record)
    const failed: string[] = [];
    for (const host of await this.d.store.networks.hosts(n.id)) {
      try {
        await this.d.hosts.get(host).removeNetwork(n.id);
        await this.d.store.networks.removeHost(n.id, host);
      } catch (e) {
        if (!hasCode(e, 'NotFound')) {
          log.warn('removing a network from a host failed', { network: n.id, host, error: String(e) });
          failed.push(`${host}: ${e instanceof Error ? e.message : String(e)}`);
        } else await this.d.store.networks.removeHost(n.id, host);
      }
    }
    if (failed.length) throw new Conflict(`network ${n.name} could not be removed from every host (${failed.join('; ')}); try again`, { network: n.id });
    // warm containers' addresses on it (they are not instances): released, their interfaces die with the bridge
    await this.d.store.transaction(async () => {
      for (const l of await this.d.store.networks.leases({ networkId: n.id })) await this.d.store.networks.release(l.instanceId, n.id);
      await this.d.store.networks.delete(n.id);
    });
    await this.d.quota.release(n.id, 'network removed');
    this.d.overlay.forget(n.id); // its hosts removed its VXLAN devices with it
    this.publish(n, 'destroy');
  }

  /** The project's default network goes with the project (it is unused: the project has no container left). */
  async removeDefault(projectId: string): Promise<void> {
    const n = await this.d.store.networks.byName(projectId, DEFAULT_NETWORK);
    if (n?.builtin) await this.remove(n.id, { projectId });
  }
}
