/**
 * A host's container networking: the networks laid out in its kernel, each
 * container's endpoints in its own named network namespace, the published
 * ports, the nftables table, and one embedded DNS per network. The control
 * plane decides (records, addresses, ports); this applies and remembers, so a
 * restarted daemon can tear down or re-render exactly what exists.
 *
 * This file keeps the networks and their DNS, serialises changes to the host's
 * tables, and wires the parts that do the rest: instance-endpoints.ts (instances'
 * endpoints, with published-ports.ts), host-table.ts (the nftables table),
 * spanning-networks.ts (overlays and routed peers across hosts), network-state.ts
 * (the records on disk, under stateDir: networks/, endpoints/, overlays/, routes/).
 */
import { existsSync, readFileSync } from 'node:fs';
import { Conflict, InvalidArgument } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { EmbeddedDns } from './dns/embedded-dns.js';
import * as kernel from './kernel.js';
import { resolvConfNameservers } from './etc-files.js';
import { cidrContains, parseNetworkSubnet, type EndpointSpec, type NetworkSpec, type PortMapping } from './network-driver.js';
import { NFT_TABLE } from './nftables.js';
import type { OverlayPeer } from './overlay.js';
import type { RoutedPeer } from './routed-peers.js';
import { readInstanceNetwork } from './endpoint-counters.js';
import type { InstanceStats } from '../drivers/instance-driver.js';
import { driverFor } from './host-drivers.js';
import { NetworkStateDir } from './network-state.js';
import { HostTable } from './host-table.js';
import { SpanningNetworks } from './spanning-networks.js';
import { InstanceEndpoints, type AttachRequest, type EndpointRequest } from './instance-endpoints.js';

export type { AttachRequest, EndpointRequest } from './instance-endpoints.js';

const log = logger('agent.network');

export interface NetworkHostOptions {
  stateDir: string;
  /** Port the per-network DNS listens on at the gateway address (default 53). */
  dnsPort?: number;
  /** Resolvers for names that are not a network's own (default: the host's /etc/resolv.conf). */
  upstreams?: string[];
  /** The nftables table (inet family) this host renders (default "nimbus"); also the prefix of its namespaces' names. */
  nftTable?: string;
  /** This host's address on the underlay (VXLAN's outer source); absent: the one the control plane reaches it by. */
  underlayIp?: string;
}

export class NetworkHost {
  private readonly networks = new Map<string, NetworkSpec>();
  private readonly state: NetworkStateDir;
  private readonly table: HostTable;
  private readonly spanning: SpanningNetworks;
  private readonly endpoints: InstanceEndpoints;
  private readonly dns = new EmbeddedDns();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly upstreams: string[];

  constructor(private readonly o: NetworkHostOptions) {
    this.state = new NetworkStateDir(o.stateDir);
    for (const n of this.state.read<NetworkSpec>('networks')) this.networks.set(n.id, n);
    const renderTable = () => this.table.render();
    this.spanning = new SpanningNetworks({ networks: this.networks, state: this.state, renderTable, underlayIp: o.underlayIp });
    const tableName = o.nftTable ?? NFT_TABLE;
    this.table = new HostTable(tableName, {
      networks: this.networks,
      attached: () => this.endpoints.attached(),
      routedPeerIps: (id) => this.spanning.routedPeerIps(id),
      hasOverlays: () => this.spanning.hasOverlays(),
    });
    this.endpoints = new InstanceEndpoints({ networks: this.networks, state: this.state, table: this.table, netnsPrefix: `${tableName}-` });
    this.upstreams = o.upstreams ?? resolvConfNameservers(existsSync('/etc/resolv.conf') ? readFileSync('/etc/resolv.conf', 'utf8') : '');
  }

  /** Changes to the host's tables happen one at a time (the nft table is rendered from the whole state). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  netnsName(containerId: string): string {
    return this.endpoints.netnsName(containerId);
  }

  /** See InstanceEndpoints.makeNamespace: a new container's namespace, named and empty, before its runtime creates it. */
  makeNamespace(containerId: string): Promise<string> {
    return this.endpoints.makeNamespace(containerId);
  }

  /** The container's named network namespace, when it has one (its endpoints are inside). */
  netnsOf(containerId: string): string | undefined {
    return this.endpoints.netnsOf(containerId);
  }

  /** A VM's taps up or down (down once its guest runs elsewhere: see InstanceEndpoints.setTaps). */
  setTaps(vmId: string, up: boolean): Promise<void> {
    return this.endpoints.setTaps(vmId, up);
  }

  endpointsOf(containerId: string): EndpointSpec[] {
    return this.endpoints.endpointsOf(containerId);
  }

  /** Stats plus the counters of the instance's endpoints here (absent when it has none of its own). */
  async withCounters(id: string, stats: InstanceStats): Promise<InstanceStats> {
    const network = await readInstanceNetwork(this.endpointsOf(id).map((e) => e.hostIf));
    return network ? { ...stats, network } : stats;
  }

  listNetworks(): NetworkSpec[] {
    return [...this.networks.values()];
  }

  // ------------------------------------------------------------ networks

  /** Lay the network out in the kernel unless it is there; its DNS listens on the gateway. */
  ensureNetwork(spec: NetworkSpec): Promise<void> {
    return this.serial(async () => {
      const driver = driverFor(spec.driver);
      const subnet = parseNetworkSubnet(spec.subnet);
      if (!cidrContains(subnet, spec.gateway)) throw new InvalidArgument(`gateway ${spec.gateway} is outside ${spec.subnet}`);
      if (spec.device.length > 15) throw new InvalidArgument(`device name ${spec.device} is longer than 15 characters`);
      if (!kernel.linkExists(spec.device)) await kernel.applyPlan(driver.createPlan(spec));
      else await kernel.writeSysctls(driver.createPlan(spec).sysctls);
      this.networks.set(spec.id, spec);
      await this.state.save('networks', spec.id, spec);
      await this.table.render();
      await this.listenDns(spec);
    });
  }

  private async listenDns(spec: NetworkSpec): Promise<void> {
    const zone = {
      resolve: (name: string) => {
        const out: string[] = [];
        for (const c of this.endpoints.attached()) {
          for (const e of c.endpoints) if (e.networkId === spec.id && e.dnsNames.some((n) => n.toLowerCase() === name)) out.push(e.address);
        }
        // the network's endpoints on other hosts, as the control plane pushed them
        for (const p of this.spanning.remotePeers(spec.id)) if (p.names?.some((n) => n.toLowerCase() === name)) out.push(p.ip);
        return out.length ? out : undefined;
      },
      reverse: (ip: string) => {
        for (const c of this.endpoints.attached()) for (const e of c.endpoints) if (e.networkId === spec.id && e.address === ip) return e.dnsNames[0];
        return this.spanning.remotePeers(spec.id).find((p) => p.ip === ip)?.names?.[0];
      },
    };
    try {
      await this.dns.listen({ address: spec.gateway, port: this.o.dnsPort ?? 53, zone, upstreams: spec.internal ? [] : this.upstreams });
    } catch (e) {
      // names are a convenience; the network works without them
      log.warn('embedded DNS unavailable on this network', { network: spec.name, gateway: spec.gateway, error: e instanceof Error ? e.message : String(e) });
    }
  }

  removeNetwork(id: string): Promise<void> {
    return this.serial(async () => {
      const spec = this.networks.get(id);
      if (!spec) return;
      const users = this.endpoints.usersOf(id);
      if (users.length) throw new Conflict(`network ${spec.name} has ${users.length} endpoint(s) on this host`, { containers: users });
      await this.dns.close(spec.gateway, this.o.dnsPort ?? 53);
      await this.spanning.drop(id);
      await kernel.applyUndo(driverFor(spec.driver).removePlan(spec), { links: [spec.device] });
      this.networks.delete(id);
      await this.state.forget('networks', id);
      await this.table.render();
    });
  }

  // ------------------------------------------------------------ networks across hosts (spanning-networks.ts)

  /** The network's VXLAN device here holds exactly these remote endpoints; none: the device goes. */
  setOverlayPeers(networkId: string, vni: number, local: string, peers: OverlayPeer[]): Promise<void> {
    return this.serial(() => this.spanning.setOverlayPeers(networkId, vni, local, peers));
  }

  /** The network's overlay as this host has it (tests, inspection). */
  overlayOf(networkId: string): { device: string; vni: number; local: string; peers: OverlayPeer[] } | undefined {
    return this.spanning.overlayOf(networkId);
  }

  /** This host's underlay address: the configured one, else the kernel's source toward another host's. */
  underlayAddress(toward?: string): Promise<string | undefined> {
    return this.spanning.underlayAddress(toward);
  }

  /** The routed network's endpoints on other hosts: a host route to each, exactly these; none: every route goes. */
  setRoutedPeers(networkId: string, peers: RoutedPeer[]): Promise<void> {
    return this.serial(() => this.spanning.setRoutedPeers(networkId, peers));
  }

  /** A routed network's peers as this host has them (tests, inspection). */
  routedPeersOf(networkId: string): RoutedPeer[] | undefined {
    return this.spanning.routedPeersOf(networkId);
  }

  // ------------------------------------------------------------ endpoints (instance-endpoints.ts)

  /**
   * Name the container's network namespace and plumb its endpoints and ports. On failure
   * whatever was made is undone. Published ports must be free on the host. Not serialised:
   * its checks and reservations are synchronous, so a burst plumbs in parallel.
   */
  attach(req: AttachRequest): Promise<{ netns: string; endpoints: EndpointSpec[]; ports: PortMapping[] }> {
    return this.endpoints.attach(req);
  }

  /** A warm container's interface made ahead of demand (with its address, when one was leased for it). */
  prewire(containerId: string, pid: number, network: NetworkSpec, address?: string): Promise<void> {
    return this.endpoints.prewire(containerId, pid, network, address);
  }

  /** A VM's NICs: one tap device per network; returned in order, with the MAC each NIC gets. */
  attachTaps(vmId: string, nics: EndpointRequest[]): Promise<Array<{ tap: string; mac: string; mtu?: number }>> {
    return this.endpoints.attachTaps(vmId, nics);
  }

  /** One more endpoint in the container's namespace (network connect); eth<n> with the next free n. */
  connect(containerId: string, e: EndpointRequest): Promise<EndpointSpec> {
    return this.serial(() => this.endpoints.connect(containerId, e));
  }

  /** The container's endpoints answer DNS by `to` instead of `from` (its aliases stay); no kernel work. */
  renameEndpoints(containerId: string, from: string, to: string): Promise<void> {
    return this.serial(() => this.endpoints.renameEndpoints(containerId, from, to));
  }

  /** Remove one endpoint (network disconnect); its published ports go with it. */
  disconnect(containerId: string, networkId: string): Promise<void> {
    return this.serial(() => this.endpoints.disconnect(containerId, networkId));
  }

  /** A removed container's ports and names given back at once; detach() tears its interfaces down later. */
  release(containerId: string): Promise<void> {
    return this.endpoints.release(containerId);
  }

  /** Resolves once the table changes queued so far are in the kernel (a released container's ports among them). */
  tableSettled(): Promise<void> {
    return this.table.settled();
  }

  /** Remove the container's endpoints, ports and namespace name (idempotent). */
  detach(containerId: string): Promise<void> {
    return this.endpoints.detach(containerId);
  }

  // ------------------------------------------------------------ reconciliation

  /**
   * Daemon start: containers that no longer exist lose their endpoints; every remaining
   * network is laid out again if the host lost it (a reboot), the table rendered, DNS listening;
   * named namespaces and veths nobody owns are removed.
   */
  reconcile(liveContainers: Set<string>, liveNetworks?: Set<string>): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    return this.serial(async () => {
      const { endpointsRemoved, netnsRemoved } = await this.endpoints.reconcile(liveContainers);
      let networksRemoved = 0;
      for (const spec of [...this.networks.values()]) {
        const inUse = this.endpoints.usersOf(spec.id).length > 0;
        if (liveNetworks && !liveNetworks.has(spec.id) && !inUse) {
          await kernel.applyUndo(driverFor(spec.driver).removePlan(spec)).catch(() => undefined);
          this.networks.delete(spec.id);
          await this.state.forget('networks', spec.id);
          networksRemoved++;
          continue;
        }
        if (!kernel.linkExists(spec.device)) await kernel.applyPlan(driverFor(spec.driver).createPlan(spec));
      }
      await this.spanning.reconcile();
      await this.table.render();
      for (const spec of this.networks.values()) await this.listenDns(spec);
      return { endpointsRemoved, networksRemoved, netnsRemoved };
    });
  }

  async close(): Promise<void> {
    await this.chain;
    await this.table.settled();
    await this.dns.closeAll();
    kernel.closeKernel();
  }
}
