/**
 * Networks as the control plane sees them: records per project, the IPAM (address leases in
 * the store, one per container and network, never two for one address), and how a container's
 * --network/-p/--ip/--link become the agent's request. This service coordinates the parts and
 * attaches instances to networks; each part has a file of its own:
 *   network-records.ts  records and their lifecycle (subnets.ts: which subnet one gets)
 *   address-leases.ts   the IPAM
 *   network-intent.ts   what --network/-p/--ip mean; container-links.ts: --link
 *   network-hosts.ts    networks laid out on hosts, and reconciles
 *   overlay-pushes.ts   when spanning networks' peers are pushed (overlay.ts, routed.ts: the push)
 *
 * Every project has its own default network, "bridge", made on first use: the
 * default project's is the host's nimbus0 (10.88.0.0/16); another project's gets
 * a /24 of the subnet pool. Networks are isolated from each other, so tenants
 * never share one unless they create it together (they cannot: a network belongs
 * to one project).
 */
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import type { AddressProvider, Agent, ContainerNetworkRequest } from '../../agent/agent.js';
import type { NetworkSpec } from '../../agent/network/network-driver.js';
import { cidrContains, macFor, parseCidr } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerConfig, ContainerRecord, NetworkRecord, PortSpec } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { ProjectScope } from '../identity/scope.js';
import type { HostAgents } from '../compute/hosts.js';
import { NetworkOverlay } from './overlay.js';
import { AddressLeases } from './address-leases.js';
import { NetworkHosts, networkSpec } from './network-hosts.js';
import { OverlayPushes } from './overlay-pushes.js';
import { DEFAULT_NETWORK, NetworkRecords, type CreateNetworkInput, type NetworkQuota, type NetworkServiceOptions } from './network-records.js';
import { networkIntent, type NetworkIntent, type NetworkIntentDeps } from './network-intent.js';
import { linkEnv, linkHosts } from './container-links.js';

export { DEFAULT_NETWORK };
export type { CreateNetworkInput, NetworkIntent, NetworkQuota, NetworkServiceOptions };

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

export class NetworkService {
  /** Networks across hosts (overlay.ts: VXLAN peers; routed.ts: routes): pushed when endpoints appear, move or go. */
  readonly overlay: NetworkOverlay;
  private readonly hosts: NetworkHosts;
  private readonly pushes: OverlayPushes;
  private readonly leases: AddressLeases;
  private readonly records: NetworkRecords;
  private readonly intentDeps: NetworkIntentDeps;

  constructor(
    private readonly store: Store,
    agent: Agent,
    events: EventBus,
    quota: NetworkQuota,
    options: NetworkServiceOptions,
  ) {
    this.hosts = new NetworkHosts({ store, agent, overlay: () => this.overlay, publish: (n, action, attributes) => this.records.publish(n, action, attributes) });
    this.overlay = new NetworkOverlay(store, () => this.hosts);
    this.pushes = new OverlayPushes(store, this.overlay, events);
    this.leases = new AddressLeases(store);
    this.records = new NetworkRecords({ store, agent, events, quota, hosts: this.hosts, leases: this.leases, overlay: this.overlay, options });
    this.intentDeps = { store, networks: this.records };
  }

  // ------------------------------------------------------------ records

  /** By id, unique id prefix or name, in scope. */
  get(idOrName: string, scope?: ProjectScope): Promise<NetworkRecord> {
    return this.records.get(idOrName, scope);
  }

  list(projectId?: string): Promise<NetworkRecord[]> {
    return this.records.list(projectId);
  }

  create(input: CreateNetworkInput, projectId: string): Promise<NetworkRecord> {
    return this.records.create(input, projectId);
  }

  /** The project's "bridge", made on first use. */
  defaultNetwork(projectId: string): Promise<NetworkRecord> {
    return this.records.defaultNetwork(projectId);
  }

  remove(idOrName: string, scope: ProjectScope): Promise<void> {
    return this.records.remove(idOrName, scope);
  }

  /** The project's default network goes with the project (it is unused: the project has no container left). */
  removeDefault(projectId: string): Promise<void> {
    return this.records.removeDefault(projectId);
  }

  // ------------------------------------------------------------ hosts and overlays

  /** Networks on every host (the daemon calls it once the agent directory is open). */
  useHosts(hosts: HostAgents): void {
    this.hosts.useHosts(hosts);
  }

  /** Hosts that register (again) after the daemon's start get their networks laid out and overlays pushed whole. */
  watchHosts(everyMs?: number): void {
    this.hosts.watchHosts(everyMs);
  }

  stopWatchingHosts(): void {
    this.hosts.stopWatchingHosts();
  }

  /** The networks laid out on host before an instance there uses them (network-hosts.ts). */
  ensureOnHost(networks: readonly NetworkRecord[], host: string): Promise<void> {
    return this.hosts.ensureOnHost(networks, host);
  }

  /** An instance's record went without a destroy event (a create that failed after its lease): its peers are withdrawn now. */
  endpointsGone(instanceId: string): void {
    this.pushes.endpointsGone(instanceId);
  }

  /** An instance's record moved to another host (a VM arrived there): its peers learn at once. */
  endpointsMoved(instanceId: string): void {
    this.pushes.endpointsMoved(instanceId);
  }

  /**
   * A container was renamed (its record holds the new name): its host's DNS answers the new name,
   * and the overlay's peers (other hosts' DNS) are pushed again.
   */
  async renamed(c: ContainerRecord, from: string): Promise<void> {
    await this.hosts.get(c.host).renameContainer(c.id, from, c.name);
    await this.pushes.changedFor(c.id, true);
  }

  /**
   * Daemon start: every network is laid out on the host again if it lost it, endpoints of
   * containers that are gone are removed, networks the store no longer has are removed.
   */
  async reconcile(): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number; leasesReleased: number; unreachableHosts: string[] }> {
    // a lease whose instance is gone (a crash between the two deletes) is released
    const leasesReleased = await this.leases.releaseOrphans();
    // each host its own networks and containers; one that does not answer is left as it is (and named)
    const r = await this.hosts.reconcileAll();
    return { endpointsRemoved: r.endpointsRemoved, networksRemoved: r.networksRemoved, netnsRemoved: r.netnsRemoved, leasesReleased, unreachableHosts: r.unreachableHosts };
  }

  /** One host: its networks laid out again if it lost them, endpoints of its containers that are gone removed, networks not its own removed. */
  reconcileHost(host: string): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    return this.hosts.reconcileHost(host);
  }

  // ------------------------------------------------------------ instances on networks


  async view(n: NetworkRecord): Promise<NetworkView> {
    const containers: NetworkView['containers'] = [];
    for (const l of await this.leases.instanceLeases(n.id)) containers.push({ id: l.instanceId, name: l.instanceName, address: l.address, ifName: `eth${l.ifIndex}` });
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

  /** network connect: lease an address (--ip or the next free) and add the endpoint to the container's namespace. */
  async connect(networkRef: string, c: ContainerRecord, opts: { ip?: string; aliases?: string[] } = {}): Promise<NetworkView> {
    const n = await this.records.get(networkRef, { projectId: c.projectId });
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
      return this.leases.leaseOne(n, c.id, ifIndex, opts.ip);
    });
    try {
      await this.hosts.ensureOnHost([n], c.host);
      await this.hosts.get(c.host).connectContainer(c.id, { network: networkSpec(n), address: lease.address, dnsNames: [c.name, ...(c.config.aliases ?? []), ...(opts.aliases ?? [])] });
    } catch (e) {
      await this.store.networks.release(c.id, n.id);
      throw e;
    }
    await this.pushes.afterEndpoints([n]);
    this.records.publish(n, 'connect', { container: c.id, address: lease.address });
    return this.view(n);
  }

  async disconnect(networkRef: string, c: ContainerRecord): Promise<NetworkView> {
    const n = await this.records.get(networkRef, { projectId: c.projectId });
    if (!(await this.store.networks.leases({ instanceId: c.id, networkId: n.id })).length) throw new NotFound(`container ${c.name} is not on ${n.name}`);
    await this.hosts.get(c.host).disconnectContainer(c.id, n.id);
    await this.store.networks.release(c.id, n.id);
    await this.pushes.afterEndpoints([n]);
    this.records.publish(n, 'disconnect', { container: c.id });
    return this.view(n);
  }

  /** A network a VM of this project may have a NIC on ("bridge": the project's default). */
  async forVm(ref: string, projectId: string): Promise<NetworkRecord> {
    return ref === DEFAULT_NETWORK ? this.records.defaultNetwork(projectId) : this.records.get(ref, { projectId });
  }

  /** Lease a VM's addresses (its record exists): one per network, eth0 first. */
  async leaseVm(vmId: string, name: string, networks: NetworkRecord[]): Promise<Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>> {
    const leased = await this.store.transaction(async () => {
      const endpoints: Array<{ network: NetworkSpec; address: string; dnsNames: string[] }> = [];
      for (const [i, n] of networks.entries()) endpoints.push({ network: networkSpec(n), address: (await this.leases.leaseOne(n, vmId, i)).address, dnsNames: [name] });
      return endpoints;
    });
    await this.pushes.afterEndpoints(networks);
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
    await this.hosts.ensureOnHost(networks, host);
    return leases.map((l, i) => ({ network: networkSpec(networks[i]!), address: l.address, dnsNames: [name] }));
  }

  /** The endpoints of a request before its addresses are leased (what a warm container is matched on). */
  unleased(intent: Extract<NetworkIntent, { mode: 'networks' }>): Array<{ network: NetworkSpec; address: string; dnsNames: string[] }> {
    return intent.networks.map((n) => ({ network: networkSpec(n), address: '', dnsNames: [] }));
  }

  /**
   * Lease the container's addresses (its record exists) and make the agent's request.
   * Deleting the record deletes its leases, so a failed create leaves none.
   */
  async lease(c: ContainerRecord, intent: NetworkIntent): Promise<ContainerNetworkRequest> {
    const request = await this.leaseInTransaction(c, intent);
    await this.afterLease(intent);
    return request;
  }

  /**
   * lease()'s store part, in a transaction of its own or joining the caller's (a create's: the
   * record's insert and its addresses in one); afterLease() follows once that has committed.
   */
  async leaseInTransaction(c: ContainerRecord, intent: NetworkIntent): Promise<ContainerNetworkRequest> {
    if (intent.mode === 'none' || intent.mode === 'host') return { mode: intent.mode };
    if (intent.mode === 'container') return { mode: 'container', container: intent.container.id };
    const networks = intent.networks;
    return this.store.transaction(async () => {
      const endpoints: Extract<ContainerNetworkRequest, { mode: 'networks' }>['endpoints'] = [];
      for (const [i, n] of networks.entries()) {
        const l = await this.leases.keepOrLease(n, c.id, i, i === 0 ? c.config.ip : undefined);
        endpoints.push({ network: networkSpec(n), address: l.address, dnsNames: [c.name, ...(c.config.aliases ?? [])] });
      }
      return {
        mode: 'networks',
        endpoints,
        ports: (c.config.ports ?? []).map((p) => ({
          protocol: p.protocol, hostPort: p.hostPort, containerPort: p.containerPort, ...(p.hostIp ? { hostIp: p.hostIp } : {}), ...(p.hostPortEnd !== undefined ? { hostPortEnd: p.hostPortEnd } : {}),
        })),
        extraHosts: [...(await linkHosts(this.store, c, networks)), ...(c.config.extraHosts ?? [])],
        dns: c.config.dns ?? [],
      } satisfies ContainerNetworkRequest;
    });
  }

  /** After the lease's transaction: other hosts learn the new endpoints (the overlay's entries). */
  async afterLease(intent: NetworkIntent): Promise<void> {
    if (intent.mode === 'networks') await this.pushes.afterEndpoints(intent.networks);
  }

  /** What --network means for a container of this project (checked before anything is made). */
  intent(config: ContainerConfig, projectId: string, scope: ProjectScope): Promise<NetworkIntent> {
    return networkIntent(this.intentDeps, config, projectId, scope);
  }

  /** What the agent leases warm containers' addresses through (see Agent.setAddressProvider). */
  addressProvider(): AddressProvider {
    return this.leases.addressProvider();
  }

  /** Docker's link variables for a container's --link (container-links.ts). */
  linkEnv(
    c: Pick<ContainerRecord, 'name'>,
    links: Array<{ container: string; alias: string }>,
    networks: readonly NetworkRecord[],
    exposed: (target: ContainerRecord) => string[] | Promise<string[]>,
  ): Promise<string[]> {
    return linkEnv(this.store, c, links, networks, exposed);
  }
}

export type { PortSpec };
