/**
 * A host's container networking: the networks laid out in its kernel, each
 * container's endpoints in its own named network namespace, the published
 * ports, the nftables table, and one embedded DNS per network. The control
 * plane decides (records, addresses, ports); this applies and remembers, so a
 * restarted daemon can tear down or re-render exactly what exists.
 *
 * State on disk (under stateDir): networks/<id>.json, endpoints/<container id>.json,
 * overlays/<network id>.json (a network's VXLAN device and remote peers, overlay.ts),
 * routes/<network id>.json (a routed network's endpoints on other hosts, routed-peers.ts).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import path from 'node:path';
import { Conflict, InvalidArgument, NotFound, ResourceExhausted } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { bridgeDriver } from './bridge-driver.js';
import { routeDriver } from './route-driver.js';
import { EmbeddedDns } from './dns/embedded-dns.js';
import * as kernel from './kernel.js';
import { resolvConfNameservers } from './etc-files.js';
import { cidrContains, macFor, networkDrivers, parseNetworkSubnet, portsClash, type EndpointSpec, type NetworkDriver, type NetworkDriverName, type NetworkSpec, type PortMapping } from './network-driver.js';
import { NFT_TABLE, deleteTableScript, portElementsScript, renderRuleset, replaceTableScript, type PublishedPort } from './nftables.js';
import { replaceStateFile } from '../../core/state-files.js';
import { checkPeers, ensureVxlan, readVxlan, removeVxlan, setPeers, sourceAddressToward, vxlanDeviceName, type OverlayPeer } from './overlay.js';
import { checkRoutedPeers, enableForwarding, setPeerRoutes, type RoutedPeer } from './routed-peers.js';
import { readInstanceNetwork } from './endpoint-counters.js';
import type { InstanceStats } from '../drivers/instance-driver.js';

const log = logger('agent.network');
/** Endpoints attached more recently than this are not judged by reconcile() (see attachedAt). */
const YOUNG_ENDPOINTS_MS = 60_000;

// The drivers this host has, in the seam's registry (probes: iproute2 and nftables are what they need).
const needsTools = async () => (existsSync('/proc/net/dev') ? undefined : 'no /proc/net/dev');
networkDrivers.register({ name: 'bridge', probe: needsTools, create: () => bridgeDriver });
networkDrivers.register({ name: 'route', probe: needsTools, create: () => routeDriver });

export function driverFor(name: NetworkDriverName): NetworkDriver {
  const d = networkDrivers.get(name)?.create({});
  if (!d || d instanceof Promise) throw new InvalidArgument(`unknown network driver "${name}"`);
  return d;
}

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

/** A network's overlay on this host as last pushed by the control plane. */
interface OverlayFile {
  networkId: string;
  device: string;
  vni: number;
  local: string;
  peers: OverlayPeer[];
}

/** A routed network's endpoints on other hosts as last pushed (each a host route via its host). */
interface RoutedFile {
  networkId: string;
  /** Kept: the routes of a network this host no longer has are found by it. */
  subnet: string;
  peers: RoutedPeer[];
}

interface EndpointsFile {
  containerId: string;
  netns: string;
  endpoints: EndpointSpec[];
  ports: PublishedPort[];
  /** A warm container's interface, made ahead of demand, no address yet. */
  prewired?: boolean;
  /** A VM's taps (no namespace: QEMU holds the other end). */
  vm?: boolean;
}

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
  /** Networks that span hosts: their VXLAN device and peers here (by network id). */
  private readonly overlays = new Map<string, OverlayFile>();
  /** Routed networks that span hosts: their routes to the other hosts' endpoints (by network id). */
  private readonly routes = new Map<string, RoutedFile>();
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
  private readonly dns = new EmbeddedDns();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly upstreams: string[];
  private readonly table: string;
  /** Namespaces this host owns are named <prefix><container id>; reconcile never touches others (a second daemon's). */
  private readonly netnsPrefix: string;

  constructor(private readonly o: NetworkHostOptions) {
    for (const f of this.readDir('networks')) {
      const n = JSON.parse(f) as NetworkSpec;
      this.networks.set(n.id, n);
    }
    for (const f of this.readDir('overlays')) {
      const o = JSON.parse(f) as OverlayFile;
      this.overlays.set(o.networkId, o);
    }
    for (const f of this.readDir('routes')) {
      const r = JSON.parse(f) as RoutedFile;
      this.routes.set(r.networkId, r);
    }
    for (const f of this.readDir('endpoints')) {
      const e = JSON.parse(f) as EndpointsFile;
      if (e.prewired) this.prewired.set(e.containerId, e);
      else this.containers.set(e.containerId, e);
    }
    this.table = o.nftTable ?? NFT_TABLE;
    this.netnsPrefix = `${this.table}-`;
    this.upstreams = o.upstreams ?? resolvConfNameservers(existsSync('/etc/resolv.conf') ? readFileSync('/etc/resolv.conf', 'utf8') : '');
  }

  private readDir(sub: string): string[] {
    const dir = path.join(this.o.stateDir, sub);
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => readFileSync(path.join(dir, f), 'utf8'));
  }

  private async save(sub: string, id: string, value: unknown): Promise<void> {
    const dir = path.join(this.o.stateDir, sub);
    await mkdir(dir, { recursive: true });
    await replaceStateFile(path.join(dir, `${id}.json`), JSON.stringify(value));
  }

  private async forget(sub: string, id: string): Promise<void> {
    await rm(path.join(this.o.stateDir, sub, `${id}.json`), { force: true });
  }

  /** Changes to the host's tables happen one at a time (the nft table is rendered from the whole state). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  netnsName(containerId: string): string {
    return `${this.netnsPrefix}${containerId}`;
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
      const n = this.networks.get(e.networkId);
      if (n?.driver === 'route') lines.push(['route', 'replace', `${e.address}/32`, 'dev', e.hostIf, 'src', n.gateway]);
    }
    await kernel.applyPlan({ host: lines });
  }

  endpointsOf(containerId: string): EndpointSpec[] {
    return this.containers.get(containerId)?.endpoints ?? [];
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
      await this.save('networks', spec.id, spec);
      await this.renderTable();
      await this.listenDns(spec);
    });
  }

  private async listenDns(spec: NetworkSpec): Promise<void> {
    const zone = {
      resolve: (name: string) => {
        const out: string[] = [];
        for (const c of this.containers.values()) {
          for (const e of c.endpoints) if (e.networkId === spec.id && e.dnsNames.some((n) => n.toLowerCase() === name)) out.push(e.address);
        }
        // the network's endpoints on other hosts, as the control plane pushed them
        for (const p of this.remotePeers(spec.id)) if (p.names?.some((n) => n.toLowerCase() === name)) out.push(p.ip);
        return out.length ? out : undefined;
      },
      reverse: (ip: string) => {
        for (const c of this.containers.values()) for (const e of c.endpoints) if (e.networkId === spec.id && e.address === ip) return e.dnsNames[0];
        return this.remotePeers(spec.id).find((p) => p.ip === ip)?.names?.[0];
      },
    };
    try {
      await this.dns.listen({ address: spec.gateway, port: this.o.dnsPort ?? 53, zone, upstreams: spec.internal ? [] : this.upstreams });
    } catch (e) {
      // names are a convenience; the network works without them
      log.warn('embedded DNS unavailable on this network', { network: spec.name, gateway: spec.gateway, error: e instanceof Error ? e.message : String(e) });
    }
  }

  /** The network's endpoints on other hosts, as the control plane pushed them (overlay or routes). */
  private remotePeers(networkId: string): ReadonlyArray<OverlayPeer | RoutedPeer> {
    return this.overlays.get(networkId)?.peers ?? this.routes.get(networkId)?.peers ?? [];
  }

  removeNetwork(id: string): Promise<void> {
    return this.serial(async () => {
      const spec = this.networks.get(id);
      if (!spec) return;
      const users = [...this.containers.values()].filter((c) => c.endpoints.some((e) => e.networkId === id)).map((c) => c.containerId);
      if (users.length) throw new Conflict(`network ${spec.name} has ${users.length} endpoint(s) on this host`, { containers: users });
      await this.dns.close(spec.gateway, this.o.dnsPort ?? 53);
      // the VXLAN port outlives its bridge otherwise (deleting a bridge only frees its ports)
      await this.dropOverlay(id);
      await this.dropRoutes(id);
      await kernel.applyUndo(driverFor(spec.driver).removePlan(spec), { links: [spec.device] });
      this.networks.delete(id);
      await this.forget('networks', id);
      await this.renderTable();
    });
  }

  // ------------------------------------------------------------ overlay (networks across hosts)

  /**
   * The network's VXLAN device here holds exactly these remote endpoints (FDB and neighbour
   * entries); none: the device goes. Idempotent: the control plane pushes the whole set after
   * any change. `local` is this host's underlay address as the control plane knows it
   * (the host's own --underlay-ip wins).
   */
  setOverlayPeers(networkId: string, vni: number, local: string, peers: OverlayPeer[]): Promise<void> {
    return this.serial(async () => {
      const spec = this.networks.get(networkId);
      if (!spec) throw new NotFound(`network ${networkId} is not on this host`);
      if (spec.driver !== 'bridge') throw new InvalidArgument(`network ${spec.name} is routed (driver ${spec.driver}): only bridge networks span hosts over VXLAN`);
      checkPeers(vni, peers);
      if (!peers.length) return this.dropOverlay(networkId);
      const file: OverlayFile = { networkId, device: vxlanDeviceName(networkId), vni, local: this.o.underlayIp ?? local, peers };
      const hadTable = this.overlays.size > 0;
      await ensureVxlan({ device: file.device, vni, local: file.local, bridge: spec.device });
      await setPeers(file.device, peers);
      this.overlays.set(networkId, file);
      await this.save('overlays', networkId, file);
      if (!hadTable) await this.renderTable(); // instances' VXLAN to the hosts is dropped while an overlay exists
    });
  }

  /** The network's overlay as this host has it (tests, inspection). */
  overlayOf(networkId: string): { device: string; vni: number; local: string; peers: OverlayPeer[] } | undefined {
    const o = this.overlays.get(networkId);
    return o && { device: o.device, vni: o.vni, local: o.local, peers: [...o.peers] };
  }

  /** This host's underlay address: the configured one, else the kernel's source toward another host's. */
  async underlayAddress(toward?: string): Promise<string | undefined> {
    if (this.o.underlayIp) return this.o.underlayIp;
    return toward ? sourceAddressToward(toward) : undefined;
  }

  // ------------------------------------------------------------ routed networks across hosts

  /**
   * The routed network's endpoints on other hosts: a host route to each via its host's
   * underlay address, exactly these (stale ones removed); the table lets them in to this
   * host's endpoints and nothing else from outside (nftables.ts). None: every route goes.
   * Idempotent: the control plane pushes the whole set after any change.
   */
  setRoutedPeers(networkId: string, peers: RoutedPeer[]): Promise<void> {
    return this.serial(async () => {
      const spec = this.networks.get(networkId);
      if (!spec) throw new NotFound(`network ${networkId} is not on this host`);
      if (spec.driver !== 'route') throw new InvalidArgument(`network ${spec.name} is a ${spec.driver} network: only routed networks take routed peers (bridge networks span hosts over VXLAN)`);
      checkRoutedPeers(spec.subnet, peers);
      if (!peers.length) return this.dropRoutes(networkId);
      await enableForwarding(); // an internal routed network's layout leaves it as it was
      await setPeerRoutes(spec.subnet, peers);
      const before = this.routes.get(networkId)?.peers.map((p) => p.ip).sort().join();
      const file: RoutedFile = { networkId, subnet: spec.subnet, peers };
      this.routes.set(networkId, file);
      await this.save('routes', networkId, file);
      if (before !== peers.map((p) => p.ip).sort().join()) await this.renderTable(); // the peers' addresses are in its rules
    });
  }

  /** A routed network's peers as this host has them (tests, inspection). */
  routedPeersOf(networkId: string): RoutedPeer[] | undefined {
    const r = this.routes.get(networkId);
    return r && [...r.peers];
  }

  private async dropRoutes(networkId: string): Promise<void> {
    const r = this.routes.get(networkId);
    if (!r) return; // never spanned hosts here: no process spawned for it
    await setPeerRoutes(r.subnet, []);
    this.routes.delete(networkId);
    await this.forget('routes', networkId);
    await this.renderTable();
  }

  private async dropOverlay(networkId: string): Promise<void> {
    const o = this.overlays.get(networkId);
    const device = o?.device ?? vxlanDeviceName(networkId);
    if (!o && !kernel.linkExists(device)) return; // never spanned hosts here: no process spawned for it
    await removeVxlan(device);
    if (!o) return;
    this.overlays.delete(networkId);
    await this.forget('overlays', networkId);
    if (!this.overlays.size) await this.renderTable();
  }

  // ------------------------------------------------------------ endpoints

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
      if (!this.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
    }
    if (req.endpoints.length > 10) throw new InvalidArgument('at most 10 networks per container');
    for (const p of req.ports) {
      const clash = this.publishedPorts().find((q) => portsClash(p, q));
      if (clash) throw new Conflict(`port ${p.hostIp ?? '0.0.0.0'}:${p.hostPort}/${p.protocol} is already in use by container ${clash.containerId.slice(0, 12)}`);
    }
    const name = this.netnsName(req.containerId);
    const file: EndpointsFile = {
      containerId: req.containerId, netns: name, ports: [],
      endpoints: req.endpoints.map((e, i) => containerEndpoint(req.containerId, name, e.network, i, e.address, e.dnsNames)),
    };
    const first = file.endpoints[0];
    if (req.ports.length && !first) throw new InvalidArgument('published ports need a network (not none or host)');
    if (first && req.ports.length && this.networks.get(first.networkId)?.internal) throw new InvalidArgument('ports cannot be published from an internal network');
    // hostPort 0 (-P, -p PORT) or a range (-p FIRST-LAST:PORT): a port of the ephemeral range or of
    // the range that no published port holds, chosen and reserved here, synchronously with the
    // checks above (the file is pending from now on); 0 until chosen, which clashes with none
    const chosen = req.ports.flatMap((p, i) => (p.hostPort === 0 || p.hostPortEnd !== undefined ? [i] : []));
    for (const p of req.ports) {
      if (p.hostPortEnd !== undefined && !(p.hostPort >= 1 && p.hostPortEnd >= p.hostPort && p.hostPortEnd <= 65535)) throw new InvalidArgument(`host port range ${p.hostPort}-${p.hostPortEnd} is not a range of ports 1-65535`);
    }
    if (first) {
      file.ports = req.ports.map(({ hostPortEnd: _range, ...p }, i) => ({
        ...p, ...(chosen.includes(i) ? { hostPort: 0 } : {}), containerId: req.containerId, address: first.address, networkId: first.networkId,
      }));
    }
    const passedOver = new Map<number, Set<number>>(); // per chosen port: those a host process turned down
    const choose = (i: number) => {
      file.ports[i] = { ...file.ports[i]!, hostPort: 0 };
      file.ports[i] = { ...file.ports[i]!, hostPort: this.freeHostPort(file.ports[i]!, req.ports[i]!, file.ports, passedOver.get(i)) };
    };
    for (const i of chosen) choose(i);
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
      await Promise.all(file.ports.map(async (p, i) => {
        // a chosen port a host process holds is passed over for another (bounded: the ephemeral
        // range is large; a range asked for is tried whole, up to CHOSEN_RANGE_TRIES ports)
        const range = req.ports[i]!.hostPortEnd;
        const limit = range === undefined ? CHOSEN_PORT_TRIES : Math.min(range - p.hostPort + 1, CHOSEN_RANGE_TRIES);
        for (let tries = 1; chosen.includes(i); tries++) {
          if (await portFreeOnHost(file.ports[i]!)) return;
          if (tries >= limit) {
            throw new ResourceExhausted(range === undefined ? `no free host port for ${p.containerPort}/${p.protocol} after ${CHOSEN_PORT_TRIES} tries`
              : `no free host port in ${req.ports[i]!.hostPort}-${range}/${p.protocol} for ${p.containerPort}/${p.protocol}: host processes hold the ${tries} tried`);
          }
          const held = passedOver.get(i) ?? new Set<number>();
          passedOver.set(i, held.add(file.ports[i]!.hostPort));
          choose(i);
        }
        await assertPortFree(p);
      }));
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
      await this.save('endpoints', req.containerId, file);
      this.pending.delete(req.containerId);
      this.containers.set(req.containerId, file);
      this.attachedAt.set(file, Date.now());
      await this.tableAfter('add', file);
      return { netns: kernel.netnsPath(name), endpoints: file.endpoints, ports: file.ports.map(({ protocol, hostIp, hostPort, containerPort }) => ({ protocol, ...(hostIp ? { hostIp } : {}), hostPort, containerPort })) };
    } catch (err) {
      this.pending.delete(req.containerId);
      const was = this.containers.delete(req.containerId);
      // refused before any kernel work: a prewired interface stays tracked, so the container's removal tears it down
      if (!plumbed && wired && reuse) this.prewired.set(req.containerId, wired);
      if (plumbed) await this.undoEndpoints(file).catch((e: unknown) => log.warn('undoing a failed attach', { id: req.containerId, error: String(e) }));
      await this.forget('endpoints', req.containerId);
      if (was) await this.tableAfter('delete', file).catch(() => undefined);
      throw err;
    }
  }

  /** Every port this host publishes or is reserving (attaches in flight). */
  private publishedPorts(): PublishedPort[] {
    return [...this.containers.values(), ...this.pending.values()].flatMap((c) => c.ports);
  }

  /**
   * A port that neither this host's published ports nor `also` (the request's own) hold, nor
   * `skip` lists: of the ephemeral range from a random start, as dockerd, or of the range asked
   * (`asked.hostPortEnd`) from its first port.
   */
  private freeHostPort(p: PortMapping, asked: PortMapping, also: readonly PortMapping[], skip?: ReadonlySet<number>): number {
    const held = [...this.publishedPorts(), ...also];
    const ranged = asked.hostPortEnd !== undefined;
    const { first, last } = ranged ? { first: asked.hostPort, last: asked.hostPortEnd! } : EPHEMERAL_PORTS;
    const span = last - first + 1;
    const start = ranged ? 0 : randomInt(span);
    for (let k = 0; k < span; k++) {
      const hostPort = first + ((start + k) % span);
      if (!skip?.has(hostPort) && !held.some((q) => q !== p && portsClash({ ...p, hostPort }, q))) return hostPort;
    }
    throw new ResourceExhausted(ranged ? `no free host port in ${first}-${last}/${p.protocol}: each is published, or held by a host process`
      : `every host port of ${first}-${last}/${p.protocol} is published`);
  }

  /**
   * A warm container's interface made ahead of demand: its namespace named, a veth pair with
   * the host end on the network and the container end up. With an address (leased ahead of
   * demand for it by the control plane), it is configured whole and a claim that keeps it needs
   * no kernel work; without one, a claim has one ip process left to run inside the namespace.
   */
  async prewire(containerId: string, pid: number, network: NetworkSpec, address?: string): Promise<void> {
    if (!this.networks.has(network.id) || this.containers.has(containerId) || this.pending.has(containerId)) return;
    const name = this.netnsName(containerId);
    const e = containerEndpoint(containerId, name, network, 0, address ?? '', []);
    const file: EndpointsFile = { containerId, netns: name, endpoints: [e], ports: [], prewired: true };
    const d = driverFor(network.driver);
    const plan = address ? d.attachPlan(network, e) : d.prewirePlan(network, e);
    this.pending.set(containerId, file);
    try {
      await kernel.applyPlan({ ...plan, host: [['netns', 'attach', name, String(pid)], ...plan.host] });
      await this.save('endpoints', containerId, file);
      this.prewired.set(containerId, file);
      if (address && routed(e)) await this.renderTable();
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
    for (const e of nics) if (!this.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
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
      await this.save('endpoints', vmId, file);
      this.containers.set(vmId, file);
      this.attachedAt.set(file, Date.now());
      await this.tableAfter('add', file);
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
      const n = this.networks.get(e.networkId);
      return n ? driverFor(n.driver).detachPlan(n, e) : { host: [['link', 'del', e.hostIf]] };
    });
    const lines = plans.flatMap((p) => p.host);
    if (file.netns && existsSync(kernel.netnsPath(file.netns))) lines.push(['netns', 'delete', file.netns]);
    await kernel.applyUndo({ host: lines }, { links: file.endpoints.map((e) => e.hostIf), netns: file.netns ? [file.netns] : [] });
  }

  /** One more endpoint in the container's namespace (network connect); eth<n> with the next free n. */
  connect(containerId: string, e: EndpointRequest): Promise<EndpointSpec> {
    return this.serial(async () => {
      const file = this.containers.get(containerId);
      if (!file || !existsSync(kernel.netnsPath(file.netns))) throw new Conflict(`container ${containerId.slice(0, 12)} has no network namespace of its own to connect`);
      if (!this.networks.has(e.network.id)) throw new NotFound(`network ${e.network.name} is not on this host`);
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
      await this.save('endpoints', containerId, file);
      if (routed(spec)) await this.renderTable();
      return spec;
    });
  }

  /** The container's endpoints answer DNS by `to` instead of `from` (its aliases stay); no kernel work. */
  renameEndpoints(containerId: string, from: string, to: string): Promise<void> {
    return this.serial(async () => {
      const file = this.containers.get(containerId);
      if (!file) return; // no endpoints of its own here (host network, none, another's namespace)
      for (const e of file.endpoints) e.dnsNames = e.dnsNames.map((n) => (n === from ? to : n));
      await this.save('endpoints', containerId, file);
    });
  }

  /** Remove one endpoint (network disconnect); its published ports go with it. */
  disconnect(containerId: string, networkId: string): Promise<void> {
    return this.serial(async () => {
      const file = this.containers.get(containerId);
      const ep = file?.endpoints.find((x) => x.networkId === networkId);
      if (!file || !ep) throw new NotFound(`container ${containerId.slice(0, 12)} is not on that network`);
      const n = this.networks.get(networkId);
      await kernel.applyUndo(n ? driverFor(n.driver).detachPlan(n, ep) : { host: [['link', 'del', ep.hostIf]] }, { links: [ep.hostIf] });
      file.endpoints = file.endpoints.filter((x) => x !== ep);
      const gone = file.ports.filter((p) => p.networkId === networkId);
      file.ports = file.ports.filter((p) => p.networkId !== networkId);
      await this.save('endpoints', containerId, file);
      if (routed(ep) || tableNeed(file) === 'render') await this.renderTable();
      else await this.changePorts('delete', gone);
    });
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
    const table = this.tableAfter('delete', file);
    if (tableNeed(file) !== 'ports') return table;
    // Its ports are free in this host's books at once; the kernel's element delete (~16 ms here:
    // it waits out an RCU grace period, where an add takes ~4) runs behind the request, queued
    // before any later publish of the same port, which therefore waits for it.
    void table.catch((e: unknown) => log.warn('withdrawing published ports', { id: containerId, error: String(e) }));
  }

  /** Resolves once the table changes queued so far are in the kernel (a released container's ports among them). */
  async tableSettled(): Promise<void> {
    await this.renderChain;
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
    const table = this.containers.delete(containerId) ? this.tableAfter('delete', file) : Promise.resolve();
    this.dying.set(containerId, file);
    try {
      await this.undoEndpoints(file);
    } finally {
      await table;
    }
    this.dying.delete(containerId);
    await this.forget('endpoints', containerId);
  }

  // ------------------------------------------------------------ the table, reconciliation

  /**
   * The table from the current state, one render at a time, in order; calls that arrive while
   * one is running share the next (it sees all their changes).
   */
  private renderQueued: Promise<void> | undefined;
  private renderTable(): Promise<void> {
    if (this.renderQueued) return this.renderQueued;
    const next = this.renderChain.then(() => {
      this.renderQueued = undefined;
      return this.renderNow();
    });
    this.renderQueued = next;
    this.renderChain = next.catch(() => undefined);
    return next;
  }
  private renderChain: Promise<void> = Promise.resolve();

  private async renderNow(): Promise<void> {
    const version = this.portsVersion;
    if (!this.networks.size) {
      if (await kernel.nftList(this.table)) await kernel.nft(deleteTableScript(this.table));
      this.renderedPortsVersion = version;
      return;
    }
    const endpoints = [...this.containers.values()].flatMap((c) => c.endpoints);
    const ruleset = renderRuleset({
      networks: [...this.networks.values()].map((spec) => ({
        spec, driver: driverFor(spec.driver), endpoints: endpoints.filter((e) => e.networkId === spec.id),
        ...(this.routes.has(spec.id) ? { routedPeers: this.routes.get(spec.id)!.peers.map((p) => p.ip) } : {}),
      })),
      ports: [...this.containers.values()].flatMap((c) => c.ports),
      overlay: this.overlays.size > 0,
    }, this.table);
    await kernel.nft(replaceTableScript(ruleset, this.table));
    // a failed render left the previous table: element changes since then still apply to it
    this.renderedPortsVersion = version;
  }

  /** Bumped by every change to published ports; a render records the one it wrote (after it succeeded). */
  private portsVersion = 0;
  private renderedPortsVersion = 0;

  /**
   * Ports published or withdrawn: their elements added to or deleted from the table's maps in
   * one small nft transaction, in order with renders (issue 18: a render of the whole table per
   * container start cost ~30 ms). A render that ran since the change already wrote it. An element
   * change the kernel refuses (its table and this host's state disagree) is followed by a render,
   * which puts the table right; only if that fails too does the change fail.
   */
  private changePorts(op: 'add' | 'delete', ports: readonly PublishedPort[]): Promise<void> {
    if (!ports.length) return Promise.resolve();
    const version = ++this.portsVersion;
    const next = this.renderChain.then(async () => {
      if (version <= this.renderedPortsVersion) return;
      try {
        await kernel.nft(portElementsScript(op, ports, this.table));
      } catch (e) {
        log.warn('published ports: an element change was refused; rendering the table', { op, error: e instanceof Error ? e.message : String(e) });
        await this.renderNow();
      }
    });
    this.renderChain = next.catch(() => undefined);
    return next;
  }

  /** The table after a container's endpoints came or went: rendered (per-interface rules), its ports' elements changed, or nothing. */
  private tableAfter(op: 'add' | 'delete', file: EndpointsFile): Promise<void> {
    const need = tableNeed(file);
    return need === 'render' ? this.renderTable() : need === 'ports' ? this.changePorts(op, file.ports) : Promise.resolve();
  }

  /**
   * Daemon start: containers that no longer exist lose their endpoints; every remaining
   * network is laid out again if the host lost it (a reboot), the table rendered, DNS listening;
   * named namespaces and veths nobody owns are removed.
   */
  reconcile(liveContainers: Set<string>, liveNetworks?: Set<string>): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    return this.serial(async () => {
      let endpointsRemoved = 0, networksRemoved = 0, netnsRemoved = 0;
      for (const file of [...this.containers.values(), ...this.dying.values(), ...this.prewired.values()]) {
        if (liveContainers.has(file.containerId) && !this.dying.has(file.containerId) && !this.prewired.has(file.containerId)) continue;
        // attached by this process within the last minute: younger than the caller's list, maybe (judged at the next reconcile)
        if (this.containers.get(file.containerId) === file && Date.now() - (this.attachedAt.get(file) ?? 0) < YOUNG_ENDPOINTS_MS) continue;
        await this.undoEndpoints(file).catch((e: unknown) => log.warn('removing orphaned endpoints', { id: file.containerId, error: String(e) }));
        this.containers.delete(file.containerId);
        this.dying.delete(file.containerId);
        this.prewired.delete(file.containerId);
        await this.forget('endpoints', file.containerId);
        endpointsRemoved++;
      }
      for (const name of await kernel.listNetns(this.netnsPrefix)) {
        const id = name.slice(this.netnsPrefix.length);
        if (this.containers.has(id) || liveContainers.has(id) || this.dying.has(id) || this.prewired.has(id) || this.pending.has(id)) continue;
        await kernel.deleteNetns(name).catch(() => undefined);
        netnsRemoved++;
      }
      for (const spec of [...this.networks.values()]) {
        const inUse = [...this.containers.values()].some((c) => c.endpoints.some((e) => e.networkId === spec.id));
        if (liveNetworks && !liveNetworks.has(spec.id) && !inUse) {
          await kernel.applyUndo(driverFor(spec.driver).removePlan(spec)).catch(() => undefined);
          this.networks.delete(spec.id);
          await this.forget('networks', spec.id);
          networksRemoved++;
          continue;
        }
        if (!kernel.linkExists(spec.device)) await kernel.applyPlan(driverFor(spec.driver).createPlan(spec));
      }
      // overlays of networks this host no longer has go; the others are made again if the host lost them
      for (const o of [...this.overlays.values()]) {
        const spec = this.networks.get(o.networkId);
        if (!spec) {
          await this.dropOverlay(o.networkId).catch((e: unknown) => log.warn('removing an orphaned overlay', { network: o.networkId, error: String(e) }));
          continue;
        }
        try {
          await ensureVxlan({ device: o.device, vni: o.vni, local: o.local, bridge: spec.device });
          await setPeers(o.device, o.peers);
        } catch (e) {
          log.warn('an overlay could not be laid out again; the next push from the control plane retries', { network: spec.name, error: String(e) });
        }
      }
      await this.removeStrayVxlans();
      // routed peers: re-made if the host lost them (a reboot), those of networks it no longer has
      // removed, and stray ones (a crash between the routes and their record) with them
      for (const spec of this.networks.values()) {
        if (spec.driver !== 'route' || this.routes.has(spec.id)) continue;
        await setPeerRoutes(spec.subnet, []).catch((e: unknown) => log.warn('removing stray routes of a routed network', { network: spec.name, error: String(e) }));
      }
      for (const r of [...this.routes.values()]) {
        const spec = this.networks.get(r.networkId);
        try {
          if (spec) {
            await enableForwarding();
            await setPeerRoutes(r.subnet, r.peers);
            continue;
          }
          await setPeerRoutes(r.subnet, []);
          this.routes.delete(r.networkId);
          await this.forget('routes', r.networkId);
        } catch (e) {
          log.warn('a routed network\'s peer routes could not be laid out again; the next push from the control plane retries', { network: r.networkId, error: String(e) });
        }
      }
      await this.renderTable();
      for (const spec of this.networks.values()) await this.listenDns(spec);
      return { endpointsRemoved, networksRemoved, netnsRemoved };
    });
  }

  /** VXLAN ports of this host's bridges that no overlay record explains (a crash between make and record). */
  private async removeStrayVxlans(): Promise<void> {
    const bridges = new Set([...this.networks.values()].map((n) => n.device));
    const known = new Set([...this.overlays.values()].map((o) => o.device));
    for (const name of await kernel.vxlanLinks()) {
      if (known.has(name)) continue;
      const dev = await readVxlan(name);
      if (dev?.master && bridges.has(dev.master)) await removeVxlan(name).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    await this.chain;
    await this.renderChain;
    await this.dns.closeAll();
    kernel.closeKernel();
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

/** A routed endpoint's interface is named in the table (bridge endpoints are covered by their bridge). */
const routed = (e: EndpointSpec) => e.hostIf.startsWith('nr');

/**
 * What a container's coming or going needs of the table: routed interfaces have rules of their
 * own (a render); published ports are map elements (changed one transaction at a time); bridge
 * endpoints are covered by their bridge's rules (nothing).
 */
function tableNeed(file: EndpointsFile): 'render' | 'ports' | 'none' {
  // a VM's taps may be routed (named in the table, like nr… veths); VMs are made rarely: render
  if (file.vm === true || file.endpoints.some(routed)) return 'render';
  return file.ports.length > 0 ? 'ports' : 'none';
}

/** dockerd's range for ports it chooses (-P, -p PORT): the kernel's default ephemeral range starts at 32768, this above most. */
export const EPHEMERAL_PORTS = { first: 49153, last: 65535 };
/** How many chosen ports a host process may turn down before a publish gives up. */
const CHOSEN_PORT_TRIES = 32;
/** ...and of a range asked for (-p FIRST-LAST:PORT), how many of its ports are tried at most. */
const CHOSEN_RANGE_TRIES = 256;

/** A published port must not shadow something already listening on the host. */
async function assertPortFree(p: PortMapping): Promise<void> {
  if (!(await portFreeOnHost(p))) throw new Conflict(`port ${p.hostIp ?? '0.0.0.0'}:${p.hostPort}/${p.protocol} is already in use on the host`);
}

/** Whether the port can be bound on the host now (bound for an instant, then let go). */
async function portFreeOnHost(p: PortMapping): Promise<boolean> {
  const host = p.hostIp ?? '0.0.0.0';
  const taken = await new Promise<boolean>((resolve) => {
    if (p.protocol === 'udp') {
      const s = createSocket('udp4');
      s.once('error', () => resolve(true));
      s.bind(p.hostPort, host, () => s.close(() => resolve(false)));
      return;
    }
    const s = createServer();
    s.once('error', () => resolve(true));
    s.listen(p.hostPort, host, () => s.close(() => resolve(false)));
  });
  return !taken;
}
