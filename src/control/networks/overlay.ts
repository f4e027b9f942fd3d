/**
 * Networks across hosts, the control plane's side (docs/overlay.md): a user bridge network
 * with endpoints on two or more hosts is joined by VXLAN, one VNI per network, without
 * multicast or flood-and-learn. The control plane knows every endpoint (its leases: address,
 * MAC, the instance's host) and pushes to each host with endpoints the others' (Neutron's
 * l2population); a host left with none, or alone on the network, is told to drop its device.
 * The push is the whole set every time (idempotent), so any change, a missed push or an agent
 * restart is mended by the next one. A routed network spans hosts the same way, pushed routes
 * instead of VXLAN forwarding entries (routed.ts): the same push, to the same hosts, when.
 */
import { createHash } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { isIPv4 } from 'node:net';
import { Conflict, hasCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../../agent/agent.js';
import { macFor } from '../../agent/network/network-driver.js';
import { MAX_VNI, OVERLAY_MTU, type OverlayPeer } from '../../agent/network/overlay.js';
import type { RoutedPeer } from '../../agent/network/routed-peers.js';
import type { Store } from '../../store/store.js';
import type { NetworkRecord } from '../../store/records.js';
import { isRouted, routedPeersByHost } from './routed.js';

const log = logger('networks.overlay');

export { OVERLAY_MTU };

/** Networks that span hosts: every bridge network (a project's default one too) over VXLAN, routed ones by routes. */
export function spansHosts(n: Pick<NetworkRecord, 'driver' | 'builtin'>): boolean {
  return overVxlan(n) || isRouted(n);
}

/** Networks joined over VXLAN (with its lower MTU): bridge networks; routed networks are routed, not bridged. */
export function overVxlan(n: Pick<NetworkRecord, 'driver'>): boolean {
  return n.driver === 'bridge';
}

/** The network id's hash into 1..16M: where the search for its VNI starts (spread, so collisions are rare). */
export function hashedVni(networkId: string): number {
  return (createHash('sha256').update(networkId).digest().readUInt32BE(0) % MAX_VNI) + 1;
}

/**
 * The network's stored VNI, given now if it has none: its hash, or the next one no network
 * holds. The store's unique index settles two replicas giving the same one at once (the loser
 * tries the next); once given it never changes, whatever other networks come and go.
 */
export async function vniOf(store: Store, n: Pick<NetworkRecord, 'id' | 'vni'>): Promise<number> {
  if (n.vni !== undefined) return n.vni;
  const taken = new Set(await store.networks.vnisInUse());
  let vni = hashedVni(n.id);
  for (let tries = 0; tries < 64; tries++) {
    while (taken.has(vni)) vni = (vni % MAX_VNI) + 1;
    const got = await store.networks.setVni(n.id, vni);
    if (got !== undefined) return got;
    taken.add(vni); // another network took it meanwhile
  }
  throw new Conflict(`no VXLAN id could be given to network ${n.id} (64 tries lost to other networks)`);
}

/** One endpoint of a network: an instance's address on it and the host it is on. */
export interface OverlayEndpoint {
  instanceId: string;
  ip: string;
  mac: string;
  host: string;
  /** What the network's DNS answers with its address (name, aliases). */
  names: string[];
}

/** What the overlay needs of the hosts (the network service's view of them). */
export interface OverlayHosts {
  names(): string[];
  get(host: string): Agent;
}

/** The peers each host of the network gets: the endpoints on the other hosts. Hosts alone on the network get none. */
export function peersByHost(endpoints: readonly OverlayEndpoint[], underlay: ReadonlyMap<string, string>): Map<string, OverlayPeer[]> {
  const hosts = new Set(endpoints.map((e) => e.host).filter((h) => underlay.has(h)));
  const out = new Map<string, OverlayPeer[]>();
  if (hosts.size < 2) return out;
  for (const h of hosts) {
    out.set(h, endpoints.filter((e) => e.host !== h && underlay.has(e.host)).map((e) => ({ ip: e.ip, mac: e.mac, underlayIp: underlay.get(e.host)!, names: e.names })));
  }
  return out;
}

export class NetworkOverlay {
  /**
   * Each host's underlay address, once found, by its agent connection: a host registered again
   * (another URL, another connection) is asked again; forgotten too when the host reconciles.
   */
  private readonly underlay = new WeakMap<Agent, string>();
  /** Hosts each network's overlay was pushed to with peers (they are told when they have none left). */
  private readonly pushed = new Map<string, Set<string>>();
  /** The networks each instance had endpoints on at the last sync (its leases are gone by the time it is destroyed). */
  private readonly instanceNetworks = new Map<string, Set<string>>();
  private readonly running = new Map<string, Promise<void>>();
  private readonly dirty = new Set<string>();
  /** Follow-up pushes scheduled (syncLater), one per network at a time: when, and its timer. */
  private readonly later = new Map<string, { at: number; timer: NodeJS.Timeout }>();

  constructor(private readonly store: Store, private readonly hosts: () => OverlayHosts) {}

  /** The networks an instance was seen on (for its destroy event). */
  networksOf(instanceId: string): string[] {
    return [...(this.instanceNetworks.get(instanceId) ?? [])];
  }

  /**
   * Push the network's peers to its hosts, after the current push if one runs (a change
   * meanwhile is included: the push reads the store when it starts). Never rejects: a host
   * that fails is logged and mended by the next push or its reconcile. `followUpMs`: one more
   * push that much later when the network spans hosts (syncLater).
   */
  sync(networkId: string, followUpMs?: number): Promise<void> {
    const current = this.running.get(networkId);
    if (current) {
      this.dirty.add(networkId);
      if (followUpMs !== undefined) this.syncLater(networkId, followUpMs);
      return current;
    }
    const p = (async () => {
      let spans = false;
      do {
        this.dirty.delete(networkId);
        spans = await this.syncNow(networkId).catch((e: unknown) => {
          log.warn('pushing a network\'s overlay failed', { network: networkId, error: String(e) });
          return true; // tried again later, if asked
        });
      } while (this.dirty.has(networkId));
      if (spans && followUpMs !== undefined) this.syncLater(networkId, followUpMs);
    })().finally(() => this.running.delete(networkId));
    this.running.set(networkId, p);
    return p;
  }

  /**
   * One more push in `ms` (unless one is scheduled as soon already): mends what no event reports,
   * such as a create that failed after its addresses were leased and pushed (its record just goes).
   */
  syncLater(networkId: string, ms: number): void {
    const at = Date.now() + ms;
    const pending = this.later.get(networkId);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.later.delete(networkId);
      void this.sync(networkId);
    }, ms);
    timer.unref(); // never what keeps a process alive
    this.later.set(networkId, { at, timer });
  }

  /** Every push in flight finished (tests; shutdown). */
  async settled(): Promise<void> {
    while (this.running.size) await Promise.all([...this.running.values()]);
  }

  /** A host's agent (re)started: its underlay address is asked again and every spanning network on it pushed, empty ones too. */
  async reconcileHost(host: string): Promise<void> {
    this.underlay.delete(this.hosts().get(host));
    const networks = (await this.store.networks.onHost(host)).filter(spansHosts);
    for (const n of networks) {
      const set = this.pushed.get(n.id) ?? new Set<string>();
      set.add(host); // told even when it has no peers: it may hold a device from before
      this.pushed.set(n.id, set);
    }
    await Promise.all(networks.map((n) => this.sync(n.id)));
  }

  /** The network is gone (its hosts removed its devices with it). */
  forget(networkId: string): void {
    this.pushed.delete(networkId);
    for (const nets of this.instanceNetworks.values()) nets.delete(networkId);
  }

  /** The network's endpoints: leases of instances (containers and VMs) the store has, with their hosts. */
  async endpoints(networkId: string): Promise<OverlayEndpoint[]> {
    const out: OverlayEndpoint[] = [];
    for (const l of await this.store.networks.leases({ networkId })) {
      const c = await this.store.containers.get(l.instanceId);
      const v = c ? undefined : await this.store.vms.get(l.instanceId);
      const host = c?.host ?? v?.agent;
      if (host === undefined) continue; // a warm container's lease: not an endpoint until claimed
      const names = c ? [c.name, ...(c.config.aliases ?? [])] : [v!.name];
      out.push({ instanceId: l.instanceId, ip: l.address, mac: macFor(l.address), host, names });
    }
    return out;
  }

  /** False when the network does not span hosts (nothing was pushed or needed). */
  private async syncNow(networkId: string): Promise<boolean> {
    const n = await this.store.networks.get(networkId);
    if (!n || !spansHosts(n)) return false;
    const laidOut = new Set(await this.store.networks.hosts(n.id));
    // on one host only (every single-host cloud): no overlay to make, and no endpoint scan paid per create
    if (laidOut.size < 2 && !this.pushed.get(n.id)?.size) return false;
    const vni = overVxlan(n) ? await vniOf(this.store, n) : 0; // a routed network has none
    const endpoints = await this.endpoints(n.id);
    for (const [id, nets] of this.instanceNetworks) if (nets.delete(n.id) && !nets.size) this.instanceNetworks.delete(id);
    for (const e of endpoints) {
      const nets = this.instanceNetworks.get(e.instanceId) ?? new Set<string>();
      nets.add(n.id);
      this.instanceNetworks.set(e.instanceId, nets);
    }
    const known = new Set(this.hosts().names());
    const withEndpoints = [...new Set(endpoints.map((e) => e.host))].filter((h) => laidOut.has(h) && known.has(h));
    const underlay = withEndpoints.length >= 2 ? await this.underlayOf(withEndpoints) : new Map<string, string>();
    const placed = endpoints.filter((e) => laidOut.has(e.host));
    const routed = isRouted(n);
    const overlayPeers = routed ? new Map<string, OverlayPeer[]>() : peersByHost(placed, underlay);
    const routedPeers = routed ? routedPeersByHost(placed, underlay) : new Map<string, RoutedPeer[]>();
    const pushed = this.pushed.get(n.id) ?? new Set<string>();
    this.pushed.set(n.id, pushed);
    const targets = new Set([...overlayPeers.keys(), ...routedPeers.keys(), ...[...pushed].filter((h) => laidOut.has(h) && known.has(h))]);
    await Promise.all([...targets].map(async (host) => {
      const list = (routed ? routedPeers : overlayPeers).get(host) ?? [];
      try {
        if (routed) await this.hosts().get(host).setRoutedPeers(n.id, routedPeers.get(host) ?? []);
        else await this.hosts().get(host).setOverlayPeers(n.id, vni, underlay.get(host) ?? '', overlayPeers.get(host) ?? []);
        if (list.length) pushed.add(host);
        else pushed.delete(host);
      } catch (e) {
        // an older agent (protocol < 4; < 8 for routes) keeps its segment to itself; one that is down is pushed at its reconcile
        log.warn('a host did not take its overlay peers', { network: n.name, host, peers: list.length, error: String(e), tooOld: hasCode(e, 'Conflict') });
      }
    }));
    return true;
  }

  /**
   * The hosts' underlay addresses: the host's own (--underlay-ip), else the address its agent
   * is reached by (its URL's host), else its source address toward another host's. A host with
   * none is left out of the overlay (logged).
   */
  private async underlayOf(hosts: string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const missing: string[] = [];
    for (const h of hosts) {
      const known = this.underlay.get(this.hosts().get(h)) ?? (await this.askedOrUrl(h));
      if (known) out.set(h, known);
      else missing.push(h);
    }
    for (const h of missing) {
      const other = [...out.values()][0];
      const found = other ? await this.hosts().get(h).underlayAddress(other).catch(() => undefined) : undefined;
      if (found) out.set(h, found);
      else log.warn('a host has no underlay address: its endpoints are left out of the overlay (give it --underlay-ip)', { host: h });
    }
    for (const [h, a] of out) this.underlay.set(this.hosts().get(h), a);
    return out;
  }

  private async askedOrUrl(host: string): Promise<string | undefined> {
    const agent = this.hosts().get(host);
    const own = await agent.underlayAddress().catch(() => undefined);
    if (own) return own;
    const url = (agent as Partial<{ url: unknown }>).url;
    if (typeof url !== 'string' || !/^https?:\/\//.test(url)) return undefined;
    const name = new URL(url).hostname.replace(/^\[|\]$/g, '');
    if (isIPv4(name)) return name === '127.0.0.1' ? undefined : name;
    return (await lookup(name, { family: 4 }).catch(() => undefined))?.address;
  }
}
