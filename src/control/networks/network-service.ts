/**
 * Networks as the control plane sees them: records per project, the IPAM (address
 * leases in the store, one per container and network, never two for one address),
 * and how a container's --network/-p/--ip/--link become the agent's request.
 *
 * Every project has its own default network, "bridge", made on first use: the
 * default project's is the host's nimbus0 (10.88.0.0/16); another project's gets
 * a /24 of the subnet pool. Networks are isolated from each other, so tenants
 * never share one unless they create it together (they cannot: a network belongs
 * to one project).
 */
import { AlreadyExists, Conflict, InvalidArgument, NotFound, hasCode } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import type { AddressProvider, Agent, ContainerNetworkRequest } from '../../agent/agent.js';
import type { NetworkSpec } from '../../agent/network/network-driver.js';
import { cidrContains, cidrsOverlap, intToIp, ipToInt, macFor, parseCidr, parseNetworkSubnet, portsClash } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import { hostChoosesPort } from '../../core/port-ranges.js';
import type { ContainerConfig, ContainerRecord, NetworkDriverName, NetworkLeaseRecord, NetworkRecord, PortSpec } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import { NewConnections, type HostAgents } from '../compute/hosts.js';
import { withDeadline } from '../compute/deadline.js';
import { logger } from '../../core/log.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { NetworkOverlay, OVERLAY_MTU, overVxlan, spansHosts } from './overlay.js';

const log = logger('networks');
/** How long a start-time reconcile waits for one host: a host that does not answer is left alone. */
const HOST_RECONCILE_MS = 15_000;
/** How long an instance's create waits for its network's overlay push (a host that does not answer is mended later). */
const OVERLAY_PUSH_MS = 5_000;
/** A second push after endpoints appeared: a create that failed after its lease publishes nothing. */
const OVERLAY_FOLLOW_UP_MS = 30_000;

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

export interface EndpointView {
  network: string;
  networkId: string;
  address: string;
  gateway: string;
  prefix: number;
  mac: string;
  ifName: string;
}

export interface NetworkView extends NetworkRecord {
  containers: Array<{ id: string; name: string; address: string; ifName: string }>;
}

/** What a container's network settings resolve to before addresses are leased. */
export type NetworkIntent =
  | { mode: 'none' }
  | { mode: 'host' }
  | { mode: 'container'; container: ContainerRecord }
  | { mode: 'networks'; networks: NetworkRecord[] };

/** The quota service's side for networks (it may persist its ledger, so either may be asynchronous). */
export interface NetworkQuota {
  admitNetwork(id: string, projectId: string): void | Promise<void>;
  release(id: string, reason: string): void | Promise<void>;
}

export class NetworkService {
  /** Networks across hosts (overlay.ts: VXLAN peers; routed.ts: routes): pushed when endpoints appear, move or go. */
  readonly overlay: NetworkOverlay;

  constructor(
    private readonly store: Store,
    private readonly agent: Agent,
    private readonly events: EventBus,
    private readonly quota: NetworkQuota,
    private readonly o: NetworkServiceOptions,
  ) {
    this.overlay = new NetworkOverlay(store, () => ({ names: () => (this.hosts ? this.hosts.names() : ['local']), get: (h) => this.agentOn(h) }));
    // endpoints go with their instance's record (no call reaches this service): its destroy is when
    // peers are told; a move changes its host. (Creates push from lease(), before the instance starts.)
    events.on((e) => {
      if ((e.type === 'container' || e.type === 'vm') && (e.action === 'destroy' || e.action === 'migrate')) {
        void this.overlayChangedFor(e.id, e.action === 'migrate').catch((x: unknown) => log.warn('updating overlays after an instance change', { id: e.id, error: String(x) }));
      }
    });
  }

  /** An instance's record went without a destroy event (a create that failed after its lease): its peers are withdrawn now, not at the follow-up push. */
  endpointsGone(instanceId: string): void {
    void this.overlayChangedFor(instanceId, false).catch((x: unknown) => log.warn('updating overlays after a failed create', { id: instanceId, error: String(x) }));
  }

  /**
   * A container was renamed (its record holds the new name): its host's DNS answers the new name,
   * and the overlay's peers (other hosts' DNS) are pushed again.
   */
  async renamed(c: ContainerRecord, from: string): Promise<void> {
    await this.agentOn(c.host).renameContainer(c.id, from, c.name);
    await this.overlayChangedFor(c.id, true);
  }

  /** An instance's record moved to another host (a VM arrived there): its peers learn at once, not when the source has let go. */
  endpointsMoved(instanceId: string): void {
    void this.overlayChangedFor(instanceId, true).catch((x: unknown) => log.warn('updating overlays after a move', { id: instanceId, error: String(x) }));
  }

  /** The networks an instance was on (seen by the overlay; with its leases when it still has them) get their peers pushed again. */
  private async overlayChangedFor(instanceId: string, readLeases: boolean): Promise<void> {
    const leased = readLeases ? (await this.store.networks.leases({ instanceId })).map((l) => l.networkId) : [];
    const ids = new Set([...leased, ...this.overlay.networksOf(instanceId)]);
    await Promise.all([...ids].map((id) => this.overlay.sync(id)));
  }

  /** After endpoints appeared on networks: peers pushed before the instance starts (bounded: a host that does not answer is mended later). */
  private async pushOverlays(networks: readonly NetworkRecord[]): Promise<void> {
    const spanning = networks.filter(spansHosts);
    if (!spanning.length) return;
    await withDeadline(Promise.all(spanning.map((n) => this.overlay.sync(n.id, OVERLAY_FOLLOW_UP_MS))), OVERLAY_PUSH_MS, 'pushing overlay peers').catch((e: unknown) => log.warn('overlay push still running', { error: String(e) }));
  }

  /** Hosts other than the embedded agent; unset: the embedded agent only (named 'local'). */
  private hosts: HostAgents | undefined;

  /** Networks on every host (the daemon calls it once the agent directory is open). */
  useHosts(hosts: HostAgents): void {
    this.hosts = hosts;
  }

  /** Hosts that register (again) after the daemon's start: their networks laid out and overlays pushed whole. */
  private readonly newHosts = new NewConnections(
    () => this.hosts,
    (host) => withDeadline(this.reconcileHost(host), HOST_RECONCILE_MS, `reconciling the networks of host ${host}`),
    (host, e) => log.warn('reconciling the networks of a host that registered failed', { host, error: String(e) }),
  );

  /**
   * A host that registers (again: an agent restarted, a host rebooted) gets its networks laid out
   * and its overlays pushed whole: every few seconds the directory is looked at (no call to a
   * host) and each agent not seen yet is reconciled in the background.
   */
  watchHosts(everyMs = 5000): void {
    this.newHosts.markAllHandled(); // the daemon's start reconciles these
    this.newHosts.start(everyMs);
  }

  stopWatchingHosts(): void {
    this.newHosts.stop();
  }

  /** The embedded agent's name (every network is laid out there when made); undefined with --no-agent. */
  private get localName(): string | undefined {
    return this.hosts ? this.hosts.localName : 'local';
  }

  private agentOn(host: string): Agent {
    return this.hosts ? this.hosts.get(host) : this.agent;
  }

  /**
   * The networks laid out on host before an instance there uses them (idempotent; recorded in
   * network_hosts first, so a removal reaches the host even if the layout half failed). The
   * embedded agent has every network already. A network's parts are joined once two hosts have
   * endpoints on it: a bridge network's by the overlay (overlay.ts), a routed one's by routes (routed.ts).
   */
  async ensureOnHost(networks: readonly NetworkRecord[], host: string): Promise<void> {
    if (host === this.localName) return;
    // after a reconcile of the host in flight (one of a host that just registered): it would take
    // the endpoints of a container made on it meanwhile for a gone container's
    await this.hostLocks.run(host, async () => undefined);
    for (const n of networks) {
      if ((await this.store.networks.hosts(n.id)).includes(host)) continue;
      // not beside the host's reconcile: one that read the host's networks before this layout
      // would remove it again (a host that had just registered lost a network so)
      await this.hostLocks.run(host, async () => {
        if ((await this.store.networks.hosts(n.id)).includes(host)) return;
        await this.store.networks.addHost(n.id, host);
        await this.agentOn(host).ensureNetwork(this.spec(n));
        this.publish(n, 'layout', { host });
      });
    }
  }

  /** One layout or reconcile of a host's networks at a time. */
  private readonly hostLocks = new KeyedLock();

  /** Subnets the embedded agent's host routes (none with --no-agent: other hosts are not asked). */
  private async foreignSubnets(): Promise<string[]> {
    return this.localName === undefined ? [] : this.agent.foreignSubnets();
  }

  private publish(n: NetworkRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'network', action, id: n.id, projectId: n.projectId, attributes: { name: n.name, ...attributes } });
  }

  /** By id, unique id prefix or name, in scope. */
  async get(idOrName: string, scope: ProjectScope = EVERYWHERE): Promise<NetworkRecord> {
    if (!idOrName) throw new InvalidArgument('a network id or name is required');
    const exact = await this.store.networks.get(idOrName);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await this.store.networks.named(idOrName)).filter((n) => inScope(scope, n.projectId));
    if (named.length) return pickInScope(named, scope, (n) => n.id, 'network', idOrName);
    return pickInScope(await this.store.networks.withIdPrefix(idOrName), scope, (n) => n.id, 'network', idOrName);
  }

  async list(projectId?: string): Promise<NetworkRecord[]> {
    return this.store.networks.list(projectId ? { projectId } : {});
  }

  async view(n: NetworkRecord): Promise<NetworkView> {
    const containers: NetworkView['containers'] = [];
    for (const l of await this.instanceLeases(n.id)) {
      const name = await this.instanceName(l.instanceId);
      containers.push({ id: l.instanceId, name: name ?? '', address: l.address, ifName: `eth${l.ifIndex}` });
    }
    return { ...n, containers };
  }

  /** A container's network settings as inspect shows them. */
  async settings(c: ContainerRecord): Promise<{ mode: string; endpoints: EndpointView[]; ports: PortSpec[] }> {
    const mode = c.config.network ?? DEFAULT_NETWORK;
    return { mode, endpoints: await this.endpointsOf(c.id), ports: c.config.ports ?? [] };
  }

  /** An instance's interfaces (container or VM), from its leases. */
  async endpointsOf(instanceId: string): Promise<EndpointView[]> {
    const endpoints: EndpointView[] = [];
    for (const l of await this.store.networks.leases({ instanceId })) {
      const n = await this.store.networks.get(l.networkId);
      if (n) endpoints.push({ network: n.name, networkId: n.id, address: l.address, gateway: n.gateway, prefix: parseCidr(n.subnet).prefix, mac: macFor(l.address), ifName: `eth${l.ifIndex}` });
    }
    return endpoints;
  }

  private spec(n: NetworkRecord): NetworkSpec {
    // a network that may span hosts over VXLAN has the overlay's MTU everywhere from the start (its endpoints cannot be told later)
    return { id: n.id, name: n.name, driver: n.driver, subnet: n.subnet, gateway: n.gateway, internal: n.internal, device: n.device, ...(overVxlan(n) ? { mtu: OVERLAY_MTU } : {}) };
  }

  /** A /24 of the pool that overlaps neither another network nor a host route. */
  private async pickSubnet(): Promise<string> {
    const pool = parseCidr(this.o.subnetPool);
    const taken = [...(await this.store.networks.list()).map((n) => n.subnet), ...(await this.foreignSubnets())].map((s) => parseCidr(s));
    for (let a = pool.network; a + 256 <= pool.network + pool.size; a += 256) {
      const c = parseCidr(`${intToIp(a)}/24`);
      if (!taken.some((t) => cidrsOverlap(t, c))) return `${intToIp(a)}/24`;
    }
    throw new Conflict(`no free /24 left in the subnet pool ${this.o.subnetPool}; give --subnet`);
  }

  private async checkSubnet(subnet: string): Promise<void> {
    let c;
    try {
      c = parseNetworkSubnet(subnet);
    } catch (e) {
      throw new InvalidArgument(e instanceof Error ? e.message : String(e));
    }
    const clash = (await this.store.networks.list()).find((n) => cidrsOverlap(parseCidr(n.subnet), c));
    if (clash) throw new Conflict(`subnet ${subnet} overlaps network ${clash.name} (${clash.subnet})`);
    const foreign = (await this.foreignSubnets()).find((s) => cidrsOverlap(parseCidr(s), c));
    if (foreign) throw new Conflict(`subnet ${subnet} overlaps the host's route to ${foreign}`);
  }

  async create(input: CreateNetworkInput, projectId: string): Promise<NetworkRecord> {
    if (!isValidName(input.name) || input.name.length > 64) throw new InvalidArgument(`invalid network name "${input.name}": use letters, digits, '_', '.', '-' (max 64)`);
    if (RESERVED.has(input.name)) throw new InvalidArgument(`"${input.name}" is a reserved network name`);
    return this.make({ ...input, builtin: false }, projectId);
  }

  private async make(input: CreateNetworkInput & { builtin: boolean; device?: string }, projectId: string): Promise<NetworkRecord> {
    const driver = input.driver ?? 'bridge';
    if (driver !== 'bridge' && driver !== 'route') throw new InvalidArgument(`unknown network driver "${String(driver)}": bridge or route`);
    if (await this.store.networks.byName(projectId, input.name)) throw new AlreadyExists(`network "${input.name}" already exists in this project`);
    if (input.gateway && !input.subnet) throw new InvalidArgument('--gateway needs --subnet');
    const subnet = input.subnet ?? (await this.pickSubnet());
    if (input.subnet) {
      await this.checkSubnet(subnet).catch((e: unknown) => {
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
    if (!rec.builtin) await this.quota.admitNetwork(id, projectId);
    try {
      await this.store.networks.insert(rec);
    } catch (e) {
      await this.quota.release(id, 'network create failed');
      throw e;
    }
    // laid out on the embedded agent now; on other hosts when an instance there first needs it (ensureOnHost)
    const local = this.localName;
    if (local !== undefined) {
      try {
        await this.store.networks.addHost(id, local, rec.createdAt);
        await this.agent.ensureNetwork(this.spec(rec));
      } catch (e) {
        await this.agent.removeNetwork(id).catch(() => undefined);
        await this.store.networks.delete(id);
        await this.quota.release(id, 'network create failed');
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
    const found = await this.store.networks.byName(projectId, DEFAULT_NETWORK);
    if (found) return found;
    const isDefault = projectId === this.o.defaultProjectId;
    return this.make({
      name: DEFAULT_NETWORK, driver: 'bridge', builtin: true,
      ...(isDefault ? { subnet: await this.defaultSubnet(), device: this.o.bridge } : {}),
    }, projectId);
  }

  /** The default project's subnet: the configured one, or, when defaulted and taken (podman's 10.88/16), a free /16 below it. */
  private async defaultSubnet(): Promise<string> {
    if (!this.o.bridgeSubnetFallback) return this.o.bridgeSubnet;
    const taken = [...(await this.store.networks.list()).map((n) => n.subnet), ...(await this.foreignSubnets())].map((x) => parseCidr(x));
    const free = (c: string) => !taken.some((t) => cidrsOverlap(t, parseCidr(c)));
    if (free(this.o.bridgeSubnet)) return this.o.bridgeSubnet;
    for (let b = 87; b >= 80; b--) if (free(`10.${b}.0.0/16`)) return `10.${b}.0.0/16`;
    return this.o.bridgeSubnet; // the create then says what overlaps and which setting to change
  }

  async remove(idOrName: string, scope: ProjectScope): Promise<void> {
    const n = await this.get(idOrName, scope);
    const users = await this.instanceLeases(n.id);
    if (users.length) {
      const names: string[] = [];
      for (const l of users) names.push((await this.instanceName(l.instanceId)) ?? l.instanceId.slice(0, 12));
      throw new Conflict(`network ${n.name} is in use by ${users.length} instance(s): ${names.join(', ')}`, { instances: names });
    }
    // from every host it is laid out on; a host that fails keeps its row (and the network its record)
    const failed: string[] = [];
    for (const host of await this.store.networks.hosts(n.id)) {
      try {
        await this.agentOn(host).removeNetwork(n.id);
        await this.store.networks.removeHost(n.id, host);
      } catch (e) {
        if (!hasCode(e, 'NotFound')) {
          log.warn('removing a network from a host failed', { network: n.id, host, error: String(e) });
          failed.push(`${host}: ${e instanceof Error ? e.message : String(e)}`);
        } else await this.store.networks.removeHost(n.id, host);
      }
    }
    if (failed.length) throw new Conflict(`network ${n.name} could not be removed from every host (${failed.join('; ')}); try again`, { network: n.id });
    // warm containers' addresses on it (they are not instances): released, their interfaces die with the bridge
    await this.store.transaction(async () => {
      for (const l of await this.store.networks.leases({ networkId: n.id })) await this.store.networks.release(l.instanceId, n.id);
      await this.store.networks.delete(n.id);
    });
    await this.quota.release(n.id, 'network removed');
    this.overlay.forget(n.id); // its hosts removed its VXLAN devices with it
    this.publish(n, 'destroy');
  }

  /** network connect: lease an address (--ip or the next free) and add the endpoint to the container's namespace. */
  async connect(networkRef: string, c: ContainerRecord, opts: { ip?: string; aliases?: string[] } = {}): Promise<NetworkView> {
    const n = await this.get(networkRef, { projectId: c.projectId });
    const mode = c.config.network ?? DEFAULT_NETWORK;
    if (mode === 'none' || mode === 'host' || mode.startsWith('container:')) throw new Conflict(`container ${c.name} uses --network ${mode}: it has no namespace of its own to connect`);
    // the checks, the interface index and the lease in one transaction: two connects of one container cannot take one index
    const lease = await this.store.transaction(async () => {
      const held = await this.store.networks.leases({ instanceId: c.id });
      if (held.some((l) => l.networkId === n.id)) throw new Conflict(`container ${c.name} is already on ${n.name}`);
      if (opts.ip && !cidrContains(parseCidr(n.subnet), opts.ip)) throw new InvalidArgument(`--ip ${opts.ip} is outside ${n.name} (${n.subnet})`);
      const used = new Set(held.map((l) => l.ifIndex));
      let ifIndex = 0;
      while (used.has(ifIndex)) ifIndex++;
      return this.leaseOne(n, c.id, ifIndex, opts.ip);
    });
    try {
      await this.ensureOnHost([n], c.host);
      await this.agentOn(c.host).connectContainer(c.id, { network: this.spec(n), address: lease.address, dnsNames: [c.name, ...(c.config.aliases ?? []), ...(opts.aliases ?? [])] });
    } catch (e) {
      await this.store.networks.release(c.id, n.id);
      throw e;
    }
    await this.pushOverlays([n]);
    this.publish(n, 'connect', { container: c.id, address: lease.address });
    return this.view(n);
  }

  async disconnect(networkRef: string, c: ContainerRecord): Promise<NetworkView> {
    const n = await this.get(networkRef, { projectId: c.projectId });
    if (!(await this.store.networks.leases({ instanceId: c.id, networkId: n.id })).length) throw new NotFound(`container ${c.name} is not on ${n.name}`);
    await this.agentOn(c.host).disconnectContainer(c.id, n.id);
    await this.store.networks.release(c.id, n.id);
    await this.pushOverlays([n]);
    this.publish(n, 'disconnect', { container: c.id });
    return this.view(n);
  }

  /** A network a VM of this project may have a NIC on ("bridge": the project's default). */
  async forVm(ref: string, projectId: string): Promise<NetworkRecord> {
    return ref === DEFAULT_NETWORK ? this.defaultNetwork(projectId) : this.get(ref, { projectId });
  }

  /** Lease a VM's addresses (its record exists): one per network, eth0 first. */
  async leaseVm(vmId: string, name: string, networks: NetworkRecord[]): Promise<Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>> {
    const leased = await this.store.transaction(async () => {
      const endpoints: Array<{ network: NetworkSpec; address: string; dnsNames: string[] }> = [];
      for (const [i, n] of networks.entries()) endpoints.push({ network: this.spec(n), address: (await this.leaseOne(n, vmId, i)).address, dnsNames: [name] });
      return endpoints;
    });
    await this.pushOverlays(networks);
    return leased;
  }

  /**
   * A VM's NICs as its leases have them, eth0 first, for a host it moves to: its networks laid
   * out there first. Same addresses, hence the same MACs (macFor): the guest sees nothing change.
   */
  async vmNicsFor(vmId: string, name: string, host: string): Promise<Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>> {
    const leases = (await this.store.networks.leases({ instanceId: vmId })).sort((a, b) => a.ifIndex - b.ifIndex);
    const networks: NetworkRecord[] = [];
    for (const l of leases) {
      const n = await this.store.networks.get(l.networkId);
      if (!n) throw new NotFound(`VM ${name}'s network ${l.networkId} is gone`);
      networks.push(n);
    }
    await this.ensureOnHost(networks, host);
    return leases.map((l, i) => ({ network: this.spec(networks[i]!), address: l.address, dnsNames: [name] }));
  }

  /** The project's default network goes with the project (it is unused: the project has no container left). */
  async removeDefault(projectId: string): Promise<void> {
    const n = await this.store.networks.byName(projectId, DEFAULT_NETWORK);
    if (n?.builtin) await this.remove(n.id, { projectId });
  }

  // ------------------------------------------------------------ containers

  /** What --network means for a container of this project (checked before anything is made). */
  async intent(config: ContainerConfig, projectId: string, scope: ProjectScope): Promise<NetworkIntent> {
    const want = config.network ?? DEFAULT_NETWORK;
    const networked = want !== 'none' && want !== 'host' && !want.startsWith('container:');
    if (!networked && config.ports?.length) throw new InvalidArgument(`ports cannot be published with --network ${want}`);
    if (!networked && config.ip) throw new InvalidArgument(`--ip needs a network (not --network ${want})`);
    if (want === 'none' || want === 'host') return { mode: want };
    if (want.startsWith('container:')) {
      const ref = want.slice('container:'.length);
      const other = (await this.store.containers.get(ref))
        ?? (await this.store.containers.named(ref)).find((c) => inScope(scope, c.projectId))
        ?? (await this.store.containers.withIdPrefix(ref)).find((c) => inScope(scope, c.projectId));
      if (!other || !inScope(scope, other.projectId)) throw new NotFound(`no such container: ${ref}`);
      if (other.status !== 'running' && other.status !== 'paused') throw new Conflict(`container ${other.name} is ${other.status}: its network namespace can be joined only while it runs`);
      return { mode: 'container', container: other };
    }
    const net = want === DEFAULT_NETWORK ? await this.defaultNetwork(projectId) : await this.get(want, { projectId });
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
    for (const c of ports.length ? await this.store.containers.list({ status: ['created', 'running', 'paused', 'restarting'] }) : []) {
      for (const q of c.config.ports ?? []) {
        const clash = ports.find((p) => portsClash(p, q));
        // only the project's own containers are named: another tenant's are none of the caller's business
        if (clash) throw new Conflict(`host port ${clash.hostPort}/${clash.protocol} is already published${c.projectId === projectId ? ` by ${c.name}` : ''}`);
      }
    }
    return { mode: 'networks', networks: [net] };
  }

  /** The endpoints of a request before its addresses are leased (what a warm container is matched on). */
  unleased(intent: Extract<NetworkIntent, { mode: 'networks' }>): Array<{ network: NetworkSpec; address: string; dnsNames: string[] }> {
    return intent.networks.map((n) => ({ network: this.spec(n), address: '', dnsNames: [] }));
  }

  /**
   * Lease the container's addresses (its record exists) and make the agent's request.
   * Deleting the record deletes its leases, so a failed create leaves none.
   */
  async lease(c: ContainerRecord, intent: NetworkIntent): Promise<ContainerNetworkRequest> {
    if (intent.mode === 'none' || intent.mode === 'host') return { mode: intent.mode };
    if (intent.mode === 'container') return { mode: 'container', container: intent.container.id };
    const networks = intent.networks;
    const request = await this.store.transaction(async () => {
      const endpoints: Extract<ContainerNetworkRequest, { mode: 'networks' }>['endpoints'] = [];
      for (const [i, n] of networks.entries()) {
        const l = await this.keepOrLease(n, c.id, i, i === 0 ? c.config.ip : undefined);
        endpoints.push({ network: this.spec(n), address: l.address, dnsNames: [c.name, ...(c.config.aliases ?? [])] });
      }
      return {
        mode: 'networks',
        endpoints,
        ports: (c.config.ports ?? []).map((p) => ({
          protocol: p.protocol, hostPort: p.hostPort, containerPort: p.containerPort, ...(p.hostIp ? { hostIp: p.hostIp } : {}), ...(p.hostPortEnd !== undefined ? { hostPortEnd: p.hostPortEnd } : {}),
        })),
        extraHosts: [...(await this.linkHosts(c, networks)), ...(c.config.extraHosts ?? [])],
        dns: c.config.dns ?? [],
      } satisfies ContainerNetworkRequest;
    });
    await this.pushOverlays(networks);
    return request;
  }

  /** A warm container's address leased ahead of demand is the container's now (unless --ip asks for another). */
  private async keepOrLease(n: NetworkRecord, instanceId: string, ifIndex: number, wanted?: string): Promise<NetworkLeaseRecord> {
    const held = (await this.store.networks.leases({ instanceId, networkId: n.id }))[0];
    if (held && (!wanted || wanted === held.address)) return held;
    if (held) await this.store.networks.release(instanceId, n.id);
    return this.leaseOne(n, instanceId, ifIndex, wanted);
  }

  /** What the agent leases warm containers' addresses through (see Agent.setAddressProvider). */
  addressProvider(): AddressProvider {
    return {
      lease: async (networkId, instanceId) => {
        try {
          // the network is read in the transaction: one removed meanwhile gets no lease
          return await this.store.transaction(async () => {
            const n = await this.store.networks.get(networkId);
            return n ? (await this.leaseOne(n, instanceId, 0)).address : undefined;
          });
        } catch {
          return undefined; // none free: the warm container gets its address when claimed
        }
      },
      // only a lease without an instance is a warm container's: a container's goes with its record
      // (checked in the transaction, so a container claiming the warm one meanwhile keeps its address)
      release: async (instanceId) => {
        await this.store.transaction(async () => {
          if (!(await this.isInstance(instanceId))) await this.store.networks.release(instanceId);
        });
      },
    };
  }

  /** Whether the store has a container or VM of this id (a warm container's is neither). */
  private async isInstance(id: string): Promise<boolean> {
    return (await this.store.containers.get(id)) !== undefined || (await this.store.vms.get(id)) !== undefined;
  }

  /** The name of the container or VM of this id, if the store has one. */
  private async instanceName(id: string): Promise<string | undefined> {
    return ((await this.store.containers.get(id)) ?? (await this.store.vms.get(id)))?.name;
  }

  /** Leases held by an instance the store knows (not by a warm container waiting to be claimed). */
  private async instanceLeases(networkId: string): Promise<NetworkLeaseRecord[]> {
    const held: NetworkLeaseRecord[] = [];
    for (const l of await this.store.networks.leases({ networkId })) if (await this.isInstance(l.instanceId)) held.push(l);
    return held;
  }

  /** Callers run it in a transaction: the free address it picks is still free when it writes the lease. */
  private async leaseOne(n: NetworkRecord, instanceId: string, ifIndex: number, wanted?: string): Promise<NetworkLeaseRecord> {
    const c = parseCidr(n.subnet);
    const createdAt = new Date().toISOString();
    if (wanted) {
      if (!isUsableAddress(c, wanted) || wanted === n.gateway) throw new InvalidArgument(`${wanted} is not an assignable address of ${n.name} (${n.subnet})`);
      try {
        const l = { networkId: n.id, address: wanted, instanceId, ifIndex, createdAt };
        await this.store.networks.lease(l);
        return l;
      } catch (e) {
        if (hasCode(e, 'AlreadyExists')) throw new Conflict(`address ${wanted} is already in use on ${n.name}`);
        throw e;
      }
    }
    const taken = new Set((await this.store.networks.leases({ networkId: n.id })).map((l) => l.address));
    taken.add(n.gateway);
    for (let a = c.network + 1; a < c.network + c.size - 1; a++) {
      const address = intToIp(a);
      if (taken.has(address)) continue;
      const l = { networkId: n.id, address, instanceId, ifIndex, createdAt };
      await this.store.networks.lease(l);
      return l;
    }
    throw new Conflict(`network ${n.name} (${n.subnet}) has no free address left`);
  }

  /** A linked container's address on one of the linking container's networks (the one they share). */
  private async linkAddress(target: string, networks: readonly NetworkRecord[]): Promise<string | undefined> {
    return (await this.store.networks.leases({ instanceId: target })).find((l) => networks.some((n) => n.id === l.networkId))?.address;
  }

  /** /etc/hosts lines for --link: the linked container's address on a network both share. */
  private async linkHosts(c: ContainerRecord, networks: readonly NetworkRecord[]): Promise<string[]> {
    const hosts: string[] = [];
    for (const l of c.config.links ?? []) {
      const target = await this.store.containers.get(l.container);
      const address = await this.linkAddress(l.container, networks);
      if (!target || !address) throw new Conflict(`linked container ${l.alias} has no address`);
      hosts.push(`${l.alias === target.name ? l.alias : `${l.alias} ${target.name}`}:${address}`);
    }
    return hosts;
  }

  /**
   * Docker's link variables: ALIAS_NAME, ALIAS_PORT=<first port>, ALIAS_PORT_<p>_<proto>[_ADDR|_PORT|_PROTO],
   * ALIAS_ENV_<K> for the target's environment. Resolved when the container is created.
   */
  async linkEnv(
    c: Pick<ContainerRecord, 'name'>,
    links: Array<{ container: string; alias: string }>,
    networks: readonly NetworkRecord[],
    exposed: (target: ContainerRecord) => string[] | Promise<string[]>,
  ): Promise<string[]> {
    const env: string[] = [];
    for (const l of links) {
      const t = await this.store.containers.get(l.container);
      const address = await this.linkAddress(l.container, networks);
      if (!t || !address) continue;
      const p = l.alias.toUpperCase().replace(/[^A-Z0-9]/g, '_');
      env.push(`${p}_NAME=/${c.name}/${l.alias}`);
      const ports = (await exposed(t)).map((x) => {
        const [port, proto = 'tcp'] = x.split('/');
        return { port: port!, proto };
      }).sort((a, b) => Number(a.port) - Number(b.port));
      if (ports[0]) env.push(`${p}_PORT=${ports[0].proto}://${address}:${ports[0].port}`);
      for (const { port, proto } of ports) {
        const k = `${p}_PORT_${port}_${proto.toUpperCase()}`;
        env.push(`${k}=${proto}://${address}:${port}`, `${k}_ADDR=${address}`, `${k}_PORT=${port}`, `${k}_PROTO=${proto}`);
      }
      for (const kv of t.config.env) {
        const key = kv.slice(0, kv.indexOf('='));
        if (key && key !== 'PATH' && key !== 'HOME' && key !== 'HOSTNAME') env.push(`${p}_ENV_${kv}`);
      }
    }
    return env;
  }

  /**
   * Daemon start: every network is laid out on the host again if it lost it, endpoints of
   * containers that are gone are removed, networks the store no longer has are removed.
   */
  async reconcile(): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number; leasesReleased: number }> {
    // a lease whose instance is gone (a crash between the two deletes) is released
    const leasesReleased = await this.store.transaction(async () => {
      let released = 0;
      for (const l of await this.store.networks.leases({})) {
        if (!(await this.isInstance(l.instanceId))) released += await this.store.networks.release(l.instanceId);
      }
      return released;
    });
    const total = { endpointsRemoved: 0, networksRemoved: 0, netnsRemoved: 0, leasesReleased, unreachableHosts: [] as string[] };
    // each host its own networks and containers; one that does not answer is left as it is
    const hosts = this.hosts ? this.hosts.names() : ['local'];
    await Promise.all(hosts.map(async (host) => {
      const job = this.reconcileHost(host);
      try {
        const r = host === this.localName ? await job : await withDeadline(job, HOST_RECONCILE_MS, `reconciling the networks of host ${host}`);
        total.endpointsRemoved += r.endpointsRemoved;
        total.networksRemoved += r.networksRemoved;
        total.netnsRemoved += r.netnsRemoved;
      } catch (e) {
        if (host === this.localName) throw e;
        log.warn('a host did not reconcile its networks; left as it is', { host, error: String(e) });
        total.unreachableHosts.push(host);
      }
    }));
    return total;
  }

  /** One host: its networks laid out again if it lost them, endpoints of its containers that are gone removed, networks not its own removed. */
  reconcileHost(host: string): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    return this.hostLocks.run(host, () => this.reconcileHostNow(host));
  }

  private async reconcileHostNow(host: string): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    const agent = this.agentOn(host);
    const networks = await this.store.networks.onHost(host);
    for (const n of networks) await agent.ensureNetwork(this.spec(n));
    // every instance with endpoints there: containers, and VMs (their taps are endpoints too)
    const instanceIds = [
      ...(await this.store.containers.onHost(host)).map((c) => c.id),
      ...(await this.store.vms.list()).filter((v) => v.agent === host).map((v) => v.id),
    ];
    const removed = await agent.reconcileNetworks(instanceIds, networks.map((n) => n.id));
    // the overlays on it pushed whole again (peers that changed while it was away, devices it should no longer have)
    await this.overlay.reconcileHost(host);
    return removed;
  }
}

function isUsableAddress(c: ReturnType<typeof parseCidr>, ip: string): boolean {
  let n: number;
  try {
    n = ipToInt(ip);
  } catch {
    return false;
  }
  return n > c.network && n < c.network + c.size - 1;
}

export type { PortSpec };
