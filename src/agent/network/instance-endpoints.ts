/**
 * The instances' endpoints on this host: each container's interfaces in its own named network
 * namespace (<prefix><container id>), warm containers' interfaces made ahead of demand, a VM's
 * taps, and the ports published on them, each instance's set remembered in
 * endpoints/<instance id>.json. The table follows each change (host-table.ts).
 */
import { existsSync } from 'node:fs';
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import * as kernel from './kernel.js';
import { driverFor } from './host-drivers.js';
import { macFor, type EndpointSpec, type NetworkSpec, type PortMapping } from './network-driver.js';
import type { PublishedPort } from './nftables.js';
import type { NetworkStateDir } from './network-state.js';
import { asMappings, assertNotPublished, PortReservation } from './published-ports.js';
import { routed, tableNeed, type HostTable } from './host-table.js';

const log = logger('agent.network');
/** Endpoints attached more recently than this are not judged by reconcile() (see attachedAt). */
const YOUNG_ENDPOINTS_MS = 60_000;

export interface EndpointRequest {
  network: NetworkSpec;
  address: string;
  /** Names other containers of the network resolve to this address (name, aliases). */
  dnsNames: string[];
}

export interface AttachRequest {
  containerId: string;
  /**
   * A process inside the container's (not yet named) network namespace: its init after runtime
   * create. Absent: a new namespace is made (a live move's destination: the container is
   * restored into it), unless makeNamespace() made it already.
   */
  pid?: number;
  /** The namespace was made by makeNamespace(), and the container's runtime joins it: only the endpoints are left. */
  namespaceMade?: boolean;
  endpoints: EndpointRequest[];
  /** Published on the first endpoint's address. */
  ports: PortMapping[];
}

export interface EndpointsFile {
  containerId: string;
  netns: string;
  endpoints: EndpointSpec[];
  ports: PublishedPort[];
  /** A warm container's interface, made ahead of demand, no address yet. */
  prewired?: boolean;
  /** A VM's taps (no namespace: QEMU holds the other end). */
  vm?: boolean;
}

export interface InstanceEndpointsDeps {
  /** The networks this host has. */
  readonly networks: ReadonlyMap<string, NetworkSpec>;
  readonly state: NetworkStateDir;
  readonly table: Pick<HostTable, 'render' | 'after' | 'changePorts'>;
  /** Namespaces this host owns are named <prefix><container id>; reconcile never touches others (a second daemon's). */
  readonly netnsPrefix: string;
}

export class InstanceEndpoints {
  private readonly containers = new Map<string, EndpointsFile>();
  /** Warm containers whose interface is made, waiting for an address (prewire()). */
  private readonly prewired = new Map<string, EndpointsFile>();
  /** Being attached: checked and reserved, kernel work in flight. */
  private readonly pending = new Map<string, EndpointsFile>();
  /**
   * When this process attached each endpoint set (not kept across restarts: loaded ones are old).
   * reconcile() leaves the young ones alone: the control plane's list of live instances may have
   * been read before their create.
   */
  private readonly attachedAt = new WeakMap<EndpointsFile, number>();
  /** Released (ports and names gone), interfaces and namespace not torn down yet (see release()). */
  private readonly dying = new Map<string, EndpointsFile>();

  constructor(private readonly d: InstanceEndpointsDeps) {
    for (const e of d.state.read<EndpointsFile>('endpoints')) {
      if (e.prewired) this.prewired.set(e.containerId, e);
      else this.containers.set(e.containerId, e);
    }
  }

  /** The attached instances' endpoint sets (what the table and DNS answer from). */
  attached(): IterableIterator<EndpointsFile> {
    return this.containers.values();
  }

  /** The attached instances with an endpoint on the network. */
  usersOf(networkId: string): string[] {
    return [...this.containers.values()].filter((c) => c.endpoints.some((e) => e.networkId === networkId)).map((c) => c.containerId);
  }

  netnsName(containerId: string): string {
    return `${this.d.netnsPrefix}${containerId}`;
  }

  /**
   * A new container's network namespace, named and empty, made before its runtime creates it:
   * the runtime joins it by path, and attach({ namespaceMade: true }) plumbs its endpoints while
   * the runtime works (a cold create's network then costs no time of its own: ~5-15 ms of ip here).
   * A name left by a crash is replaced. detach() removes it, attached or not.
   */
  async makeNamespace(containerId: string): Promise<string> {
    if (this.containers.has(containerId) || this.pending.has(containerId) || this.prewired.has(containerId)) throw new Conflict(`container ${containerId} is already attached`);
    const name = this.netnsName(containerId);
    await kernel.deleteNetns(name);
    await kernel.applyPlan({ host: [['netns', 'add', name]] });
    return kernel.netnsPath(name);
  }

  /** The container's named network namespace, when it has one (its endpoints are inside). */
  netnsOf(containerId: string): string | undefined {
    const p = kernel.netnsPath(this.netnsName(containerId));
    return this.containers.has(containerId) && existsSync(p) ? p : undefined;
  }

  /**
   * A VM's taps up or down. Down once its guest runs elsewhere (a live migration's last pass is
   * out): the bridge drops what it learned on them at once (a port that goes down has its
   * forwarding entries flushed), so peers' frames go toward the guest's new host instead of
   * into a QEMU that no longer runs it. Up again if the guest resumes here.
   */
  async setTaps(vmId: string, up: boolean): Promise<void> {
    const endpoints = this.endpointsOf(vmId).filter((e) => kernel.linkExists(e.hostIf));
    if (!endpoints.length) return;
    const lines = endpoints.map((e) => ['link', 'set', e.hostIf, up ? 'up' : 'down']);
    // a link set down loses its routes: a routed tap's host route is laid again when it comes back
    for (const e of up ? endpoints : []) {
      const n = this.d.networks.get(e.networkId);
      if (n?.driver === 'route') lines.push(['route', 'replace', `${e.address}/32`, 'dev', e.hostIf, 'src', n.gateway]);
    }
    await kernel.applyPlan({ host: lines });
  }

  endpointsOf(containerId: string): EndpointSpec[] {
    return this.containers.get(containerId)?.endpoints ?? [];
  }

  /**
   * Name the container's network namespace and plumb its endpoints and ports. On failure
   * whatever was made is undone. Published ports must be free on the host.
   */
  async attach(req: AttachRequest): Promise<{ netns: string; endpoints: EndpointSpec[]; ports: PortMapping[] }> {
    // Checked and reserved synchronously (no await in between), so concurrent attaches see each
    // other's ports; the kernel work then runs outside the lock: a burst plumbs in parallel.
    if (this.pending.has(req.containerId)) throw new Conflict(`container ${req.containerId} is being attached`);
    const stale = this.containers.get(req.containerId);
    if (stale) {
      if (existsSync(kernel.netnsPath(stale.netns))) throw new Conflict(`container ${req.containerId} is already attached`);
      // its record outlived its namespace (the host rebooted): what is left goes, then plumb anew
      this.containers.delete(req.containerId);
      await this.undoEndpoints(stale).catch(() => undefined);
    }
    for (const e of req.endpoints) {
      if (!this.d.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
    }
    if (req.endpoints.length > 10) throw new InvalidArgument('at most 10 networks per container');
    const published = () => this.publishedPorts();
    assertNotPublished(req.ports, published);
    const name = this.netnsName(req.containerId);
    const file: EndpointsFile = {
      containerId: req.containerId, netns: name, ports: [],
      endpoints: req.endpoints.map((e, i) => containerEndpoint(req.containerId, name, e.network, i, e.address, e.dnsNames)),
    };
    const first = file.endpoints[0];
    // its ports chosen and held synchronously with the checks above (the file is pending before any await)
    const reservation = new PortReservation(published, req.containerId, req.ports, first && { endpoint: first, internal: this.d.networks.get(first.networkId)?.internal });
    file.ports = reservation.ports;
    // a warm container prewired for this network: only its address and route are left to give
    const wired = this.prewired.get(req.containerId);
    this.prewired.delete(req.containerId);
    const reuse = wired && req.endpoints.length >= 1 && wired.endpoints[0]?.networkId === req.endpoints[0]!.network.id;
    // ...and given the very address it was leased ahead of demand: nothing is left to do in the kernel
    const ready = reuse && wired.endpoints[0]!.address !== '' && wired.endpoints[0]!.address === req.endpoints[0]!.address && req.endpoints.length === 1;
    this.pending.set(req.containerId, file);
    let plumbed = false;
    try {
      if (wired && !reuse) await this.undoEndpoints(wired); // prewired for another network: start over
      await reservation.confirmFree();
      // naming the namespace and every endpoint: one ip process on the host, one inside
      const plans = file.endpoints.map((spec, i) => {
        const d = driverFor(req.endpoints[i]!.network.driver);
        if (i === 0 && reuse && wired.endpoints[0]!.address) {
          // wired with an address other than the one asked for (--ip): replace it
          const plan = d.addressPlan(req.endpoints[i]!.network, spec);
          return { ...plan, inNetns: { netns: plan.inNetns!.netns, lines: [['addr', 'flush', 'dev', spec.ifName], ...plan.inNetns!.lines] } };
        }
        return i === 0 && reuse ? d.addressPlan(req.endpoints[i]!.network, spec) : d.attachPlan(req.endpoints[i]!.network, spec);
      });
      plumbed = true;
      const naming = req.pid === undefined ? ['netns', 'add', name] : ['netns', 'attach', name, String(req.pid)];
      if (!ready) await kernel.applyPlan(kernel.mergePlans(plans, reuse || req.namespaceMade ? [] : [naming]));
      await this.d.state.save('endpoints', req.containerId, file);
      this.pending.delete(req.containerId);
      this.containers.set(req.containerId, file);
      this.attachedAt.set(file, Date.now());
      await this.d.table.after('add', file);
      return { netns: kernel.netnsPath(name), endpoints: file.endpoints, ports: asMappings(file.ports) };
    } catch (err) {
      this.pending.delete(req.containerId);
      const was = this.containers.delete(req.containerId);
      // refused before any kernel work: a prewired interface stays tracked, so the container's removal tears it down
      if (!plumbed && wired && reuse) this.prewired.set(req.containerId, wired);
      if (plumbed) await this.undoEndpoints(file).catch((e: unknown) => log.warn('undoing a failed attach', { id: req.containerId, error: String(e) }));
      await this.d.state.forget('endpoints', req.containerId);
      if (was) await this.d.table.after('delete', file).catch(() => undefined);
      throw err;
    }
  }

  /** Every port this host publishes or is reserving (attaches in flight). */
  private publishedPorts(): PublishedPort[] {
    return [...this.containers.values(), ...this.pending.values()].flatMap((c) => c.ports);
  }

  /**
   * A warm container's interface made ahead of demand: its namespace named, a veth pair with
   * the host end on the network and the container end up. With an address (leased ahead of
   * demand for it by the control plane), it is configured whole and a claim that keeps it needs
   * no kernel work; without one, a claim has one ip process left to run inside the namespace.
   */
  async prewire(containerId: string, pid: number, network: NetworkSpec, address?: string): Promise<void> {
    if (!this.d.networks.has(network.id) || this.containers.has(containerId) || this.pending.has(containerId)) return;
    const name = this.netnsName(containerId);
    const e = containerEndpoint(containerId, name, network, 0, address ?? '', []);
    const file: EndpointsFile = { containerId, netns: name, endpoints: [e], ports: [], prewired: true };
    const d = driverFor(network.driver);
    const plan = address ? d.attachPlan(network, e) : d.prewirePlan(network, e);
    this.pending.set(containerId, file);
    try {
      await kernel.applyPlan({ ...plan, host: [['netns', 'attach', name, String(pid)], ...plan.host] });
      await this.d.state.save('endpoints', containerId, file);
      this.prewired.set(containerId, file);
      if (address && routed(e)) await this.d.table.render();
    } catch (err) {
      await this.undoEndpoints(file).catch(() => undefined);
      throw err;
    } finally {
      this.pending.delete(containerId);
    }
  }

  /**
   * A VM's NICs: one tap device per network (vif<8 of its id>.<n>, Xen's vifX.Y), on the
   * network's bridge (or routed to its address); QEMU opens them, the guest holds the
   * addresses. Returned in order, with the MAC each NIC gets.
   */
  async attachTaps(vmId: string, nics: EndpointRequest[]): Promise<Array<{ tap: string; mac: string; mtu?: number }>> {
    if (this.containers.has(vmId) || this.pending.has(vmId)) throw new Conflict(`VM ${vmId} already has NICs`);
    for (const e of nics) if (!this.d.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
    if (nics.length > 8) throw new InvalidArgument('at most 8 NICs per VM');
    const file: EndpointsFile = {
      containerId: vmId, netns: '', ports: [], vm: true,
      endpoints: nics.map((e, i) => ({
        networkId: e.network.id, containerId: vmId, netns: '', ifName: `eth${i}`, hostIf: `vif${vmId.slice(0, 8)}.${i}`,
        address: e.address, mac: macFor(e.address), defaultRoute: i === 0, dnsNames: e.dnsNames,
      })),
    };
    for (const e of file.endpoints) if (kernel.linkExists(e.hostIf)) throw new Conflict(`tap ${e.hostIf} exists already`);
    this.pending.set(vmId, file);
    try {
      await kernel.applyPlan(kernel.mergePlans(file.endpoints.map((e, i) => driverFor(nics[i]!.network.driver).tapPlan(nics[i]!.network, e))));
      await this.d.state.save('endpoints', vmId, file);
      this.containers.set(vmId, file);
      this.attachedAt.set(file, Date.now());
      await this.d.table.after('add', file);
      // an overlay network's lower MTU goes to the guest too (virtio-net host_mtu)
      return file.endpoints.map((e, i) => ({ tap: e.hostIf, mac: e.mac, ...(nics[i]!.network.mtu !== undefined ? { mtu: nics[i]!.network.mtu } : {}) }));
    } catch (err) {
      await this.undoEndpoints(file).catch(() => undefined);
      throw err;
    } finally {
      this.pending.delete(vmId);
    }
  }

  /** The endpoints and the namespace's name, in one ip process. */
  private async undoEndpoints(file: EndpointsFile): Promise<void> {
    const plans = file.endpoints.map((e) => {
      const n = this.d.networks.get(e.networkId);
      return n ? driverFor(n.driver).detachPlan(n, e) : { host: [['link', 'del', e.hostIf]] };
    });
    const lines = plans.flatMap((p) => p.host);
    if (file.netns && existsSync(kernel.netnsPath(file.netns))) lines.push(['netns', 'delete', file.netns]);
    await kernel.applyUndo({ host: lines }, { links: file.endpoints.map((e) => e.hostIf), netns: file.netns ? [file.netns] : [] });
  }

  /** One more endpoint in the container's namespace (network connect); eth<n> with the next free n. */
  async connect(containerId: string, e: EndpointRequest): Promise<EndpointSpec> {
    const file = this.containers.get(containerId);
    if (!file || !existsSync(kernel.netnsPath(file.netns))) throw new Conflict(`container ${containerId.slice(0, 12)} has no network namespace of its own to connect`);
    if (!this.d.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
    if (file.endpoints.some((x) => x.networkId === e.network.id)) throw new Conflict(`container ${containerId.slice(0, 12)} is already on ${e.network.name}`);
    const used = new Set(file.endpoints.map((x) => x.ifName));
    let i = 0;
    while (used.has(`eth${i}`)) i++;
    if (i > 9) throw new InvalidArgument('at most 10 networks per container');
    const spec = { ...containerEndpoint(containerId, file.netns, e.network, i, e.address, e.dnsNames), defaultRoute: file.endpoints.length === 0 };
    try {
      await kernel.applyPlan(driverFor(e.network.driver).attachPlan(e.network, spec));
    } catch (err) {
      await kernel.applyUndo({ host: [['link', 'del', spec.hostIf]] }, { links: [spec.hostIf] }).catch(() => undefined);
      throw err;
    }
    file.endpoints.push(spec);
    await this.d.state.save('endpoints', containerId, file);
    if (routed(spec)) await this.d.table.render();
    return spec;
  }

  /** The container's endpoints answer DNS by `to` instead of `from` (its aliases stay); no kernel work. */
  async renameEndpoints(containerId: string, from: string, to: string): Promise<void> {
    const file = this.containers.get(containerId);
    if (!file) return; // no endpoints of its own here (host network, none, another's namespace)
    for (const e of file.endpoints) e.dnsNames = e.dnsNames.map((n) => (n === from ? to : n));
    await this.d.state.save('endpoints', containerId, file);
  }

  /** Remove one endpoint (network disconnect); its published ports go with it. */
  async disconnect(containerId: string, networkId: string): Promise<void> {
    const file = this.containers.get(containerId);
    const ep = file?.endpoints.find((x) => x.networkId === networkId);
    if (!file || !ep) throw new NotFound(`container ${containerId.slice(0, 12)} is not on that network`);
    const n = this.d.networks.get(networkId);
    await kernel.applyUndo(n ? driverFor(n.driver).detachPlan(n, ep) : { host: [['link', 'del', ep.hostIf]] }, { links: [ep.hostIf] });
    file.endpoints = file.endpoints.filter((x) => x !== ep);
    const gone = file.ports.filter((p) => p.networkId === networkId);
    file.ports = file.ports.filter((p) => p.networkId !== networkId);
    await this.d.state.save('endpoints', containerId, file);
    if (routed(ep) || tableNeed(file) === 'render') await this.d.table.render();
    else await this.d.table.changePorts('delete', gone);
  }

  /**
   * A removed container gives back at once what someone else may want next: its published
   * ports (free at once; their map elements deleted just behind) and its names (DNS no longer
   * answers them).
   * Its interfaces and namespace are torn down by detach(), off the request path: deleting a
   * veth waits for RCU grace periods (20-30 ms here). Its addresses are safe to lease again
   * meanwhile: they live in its own namespace, and its host end carries no traffic.
   */
  async release(containerId: string): Promise<void> {
    const file = this.containers.get(containerId);
    if (!file) return;
    this.containers.delete(containerId);
    this.dying.set(containerId, file);
    const table = this.d.table.after('delete', file);
    if (tableNeed(file) !== 'ports') return table;
    // Its ports are free in this host's books at once; the kernel's element delete (~16 ms here:
    // it waits out an RCU grace period, where an add takes ~4) runs behind the request, queued
    // before any later publish of the same port, which therefore waits for it.
    void table.catch((e: unknown) => log.warn('withdrawing published ports', { id: containerId, error: String(e) }));
  }

  /** Remove the container's endpoints, ports and namespace name (idempotent). */
  async detach(containerId: string): Promise<void> {
    const file = this.containers.get(containerId) ?? this.dying.get(containerId) ?? this.prewired.get(containerId);
    this.prewired.delete(containerId);
    if (!file) {
      await kernel.deleteNetns(this.netnsName(containerId));
      return;
    }
    // its ports go at once (released containers' went already), its interfaces after
    const table = this.containers.delete(containerId) ? this.d.table.after('delete', file) : Promise.resolve();
    this.dying.set(containerId, file);
    try {
      await this.undoEndpoints(file);
    } finally {
      await table;
    }
    this.dying.delete(containerId);
    await this.d.state.forget('endpoints', containerId);
  }

  /**
   * Daemon start: instances that no longer exist lose their endpoints (but those attached within
   * the last minute, judged at the next reconcile), and named namespaces nobody owns go.
   */
  async reconcile(liveContainers: Set<string>): Promise<{ endpointsRemoved: number; netnsRemoved: number }> {
    let endpointsRemoved = 0, netnsRemoved = 0;
    for (const file of [...this.containers.values(), ...this.dying.values(), ...this.prewired.values()]) {
      if (liveContainers.has(file.containerId) && !this.dying.has(file.containerId) && !this.prewired.has(file.containerId)) continue;
      // attached by this process within the last minute: younger than the caller's list, maybe (judged at the next reconcile)
      if (this.containers.get(file.containerId) === file && Date.now() - (this.attachedAt.get(file) ?? 0) < YOUNG_ENDPOINTS_MS) continue;
      await this.undoEndpoints(file).catch((e: unknown) => log.warn('removing orphaned endpoints', { id: file.containerId, error: String(e) }));
      this.containers.delete(file.containerId);
      this.dying.delete(file.containerId);
      this.prewired.delete(file.containerId);
      await this.d.state.forget('endpoints', file.containerId);
      endpointsRemoved++;
    }
    for (const name of await kernel.listNetns(this.d.netnsPrefix)) {
      const id = name.slice(this.d.netnsPrefix.length);
      if (this.containers.has(id) || liveContainers.has(id) || this.dying.has(id) || this.prewired.has(id) || this.pending.has(id)) continue;
      await kernel.deleteNetns(name).catch(() => undefined);
      netnsRemoved++;
    }
    return { endpointsRemoved, netnsRemoved };
  }
}

/** A container's endpoint eth<index> on a network: its host end is n[vr]<12 of the id><index> (≤ 15 characters). */
function containerEndpoint(containerId: string, netns: string, network: NetworkSpec, index: number, address: string, dnsNames: string[]): EndpointSpec {
  return {
    networkId: network.id, containerId, netns, ifName: `eth${index}`,
    hostIf: `n${network.driver === 'route' ? 'r' : 'v'}${containerId.slice(0, 12)}${index}`,
    address, mac: address ? macFor(address) : '', defaultRoute: index === 0, dnsNames,
  };
}
