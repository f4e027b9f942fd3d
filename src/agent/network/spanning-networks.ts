/**
 * This host's part of the networks that span hosts, as the control plane last pushed it: a
 * bridge network's VXLAN device and remote endpoints (overlay.ts), a routed network's host
 * routes to its endpoints on other hosts (routed-peers.ts). Remembered on disk
 * (overlays/<network id>.json, routes/<network id>.json) and laid out again at reconcile.
 */
import { InvalidArgument, NotFound } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import * as kernel from './kernel.js';
import type { NetworkSpec } from './network-driver.js';
import type { NetworkStateDir } from './network-state.js';
import { checkPeers, ensureVxlan, readVxlan, removeVxlan, setPeers, sourceAddressToward, vxlanDeviceName, type OverlayPeer } from './overlay.js';
import { checkRoutedPeers, enableForwarding, setPeerRoutes, type RoutedPeer } from './routed-peers.js';

const log = logger('agent.network');

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

export interface SpanningNetworksDeps {
  /** The networks this host has. */
  readonly networks: ReadonlyMap<string, NetworkSpec>;
  readonly state: NetworkStateDir;
  /** The host's table rendered again (it drops instances' VXLAN while an overlay exists; routed peers' addresses are in its rules). */
  renderTable(): Promise<void>;
  /** This host's address on the underlay, when configured (--underlay-ip). */
  readonly underlayIp?: string;
}

/** Callers serialise the changes (NetworkHost's lock). */
export class SpanningNetworks {
  /** Networks that span hosts over VXLAN: their device and peers here (by network id). */
  private readonly overlays = new Map<string, OverlayFile>();
  /** Routed networks that span hosts: their routes to the other hosts' endpoints (by network id). */
  private readonly routes = new Map<string, RoutedFile>();

  constructor(private readonly d: SpanningNetworksDeps) {
    for (const o of d.state.read<OverlayFile>('overlays')) this.overlays.set(o.networkId, o);
    for (const r of d.state.read<RoutedFile>('routes')) this.routes.set(r.networkId, r);
  }

  /**
   * The network's VXLAN device here holds exactly these remote endpoints (FDB and neighbour
   * entries); none: the device goes. Idempotent: the control plane pushes the whole set after
   * any change. `local` is this host's underlay address as the control plane knows it
   * (the host's own --underlay-ip wins).
   */
  async setOverlayPeers(networkId: string, vni: number, local: string, peers: OverlayPeer[]): Promise<void> {
    const spec = this.d.networks.get(networkId);
    if (!spec) throw new NotFound(`network ${networkId} is not on this host`);
    if (spec.driver !== 'bridge') throw new InvalidArgument(`network ${spec.name} is routed (driver ${spec.driver}): only bridge networks span hosts over VXLAN`);
    checkPeers(vni, peers);
    if (!peers.length) return this.dropOverlay(networkId);
    const file: OverlayFile = { networkId, device: vxlanDeviceName(networkId), vni, local: this.d.underlayIp ?? local, peers };
    const hadTable = this.overlays.size > 0;
    await ensureVxlan({ device: file.device, vni, local: file.local, bridge: spec.device });
    await setPeers(file.device, peers);
    this.overlays.set(networkId, file);
    await this.d.state.save('overlays', networkId, file);
    if (!hadTable) await this.d.renderTable(); // instances' VXLAN to the hosts is dropped while an overlay exists
  }

  /** The network's overlay as this host has it (tests, inspection). */
  overlayOf(networkId: string): { device: string; vni: number; local: string; peers: OverlayPeer[] } | undefined {
    const o = this.overlays.get(networkId);
    return o && { device: o.device, vni: o.vni, local: o.local, peers: [...o.peers] };
  }

  hasOverlays(): boolean {
    return this.overlays.size > 0;
  }

  /** This host's underlay address: the configured one, else the kernel's source toward another host's. */
  async underlayAddress(toward?: string): Promise<string | undefined> {
    if (this.d.underlayIp) return this.d.underlayIp;
    return toward ? sourceAddressToward(toward) : undefined;
  }

  /**
   * The routed network's endpoints on other hosts: a host route to each via its host's
   * underlay address, exactly these (stale ones removed); the table lets them in to this
   * host's endpoints and nothing else from outside (nftables.ts). None: every route goes.
   * Idempotent: the control plane pushes the whole set after any change.
   */
  async setRoutedPeers(networkId: string, peers: RoutedPeer[]): Promise<void> {
    const spec = this.d.networks.get(networkId);
    if (!spec) throw new NotFound(`network ${networkId} is not on this host`);
    if (spec.driver !== 'route') throw new InvalidArgument(`network ${spec.name} is a ${spec.driver} network: only routed networks take routed peers (bridge networks span hosts over VXLAN)`);
    checkRoutedPeers(spec.subnet, peers);
    if (!peers.length) return this.dropRoutes(networkId);
    await enableForwarding(); // an internal routed network's layout leaves it as it was
    await setPeerRoutes(spec.subnet, peers);
    const before = this.routes.get(networkId)?.peers.map((p) => p.ip).sort().join();
    const file: RoutedFile = { networkId, subnet: spec.subnet, peers };
    this.routes.set(networkId, file);
    await this.d.state.save('routes', networkId, file);
    if (before !== peers.map((p) => p.ip).sort().join()) await this.d.renderTable(); // the peers' addresses are in its rules
  }

  /** A routed network's peers as this host has them (tests, inspection). */
  routedPeersOf(networkId: string): RoutedPeer[] | undefined {
    const r = this.routes.get(networkId);
    return r && [...r.peers];
  }

  /** The addresses of a routed network's endpoints on other hosts, when it spans hosts (the table's rules name them). */
  routedPeerIps(networkId: string): string[] | undefined {
    return this.routes.get(networkId)?.peers.map((p) => p.ip);
  }

  /** The network's endpoints on other hosts, as the control plane pushed them (overlay or routes). */
  remotePeers(networkId: string): ReadonlyArray<OverlayPeer | RoutedPeer> {
    return this.overlays.get(networkId)?.peers ?? this.routes.get(networkId)?.peers ?? [];
  }

  /** A network leaves this host: its VXLAN port (it outlives its bridge otherwise: deleting a bridge only frees its ports) and its peer routes go. */
  async drop(networkId: string): Promise<void> {
    await this.dropOverlay(networkId);
    await this.dropRoutes(networkId);
  }

  private async dropRoutes(networkId: string): Promise<void> {
    const r = this.routes.get(networkId);
    if (!r) return; // never spanned hosts here: no process spawned for it
    await setPeerRoutes(r.subnet, []);
    this.routes.delete(networkId);
    await this.d.state.forget('routes', networkId);
    await this.d.renderTable();
  }

  private async dropOverlay(networkId: string): Promise<void> {
    const o = this.overlays.get(networkId);
    const device = o?.device ?? vxlanDeviceName(networkId);
    if (!o && !kernel.linkExists(device)) return; // never spanned hosts here: no process spawned for it
    await removeVxlan(device);
    if (!o) return;
    this.overlays.delete(networkId);
    await this.d.state.forget('overlays', networkId);
    if (!this.overlays.size) await this.d.renderTable();
  }

  /**
   * Daemon start, once the networks are laid out: overlays and routed peers of networks this
   * host no longer has go; the others are made again if the host lost them (a reboot); stray
   * VXLAN ports and peer routes (a crash between making them and their record) are removed.
   */
  async reconcile(): Promise<void> {
    for (const o of [...this.overlays.values()]) {
      const spec = this.d.networks.get(o.networkId);
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
    for (const spec of this.d.networks.values()) {
      if (spec.driver !== 'route' || this.routes.has(spec.id)) continue;
      await setPeerRoutes(spec.subnet, []).catch((e: unknown) => log.warn('removing stray routes of a routed network', { network: spec.name, error: String(e) }));
    }
    for (const r of [...this.routes.values()]) {
      const spec = this.d.networks.get(r.networkId);
      try {
        if (spec) {
          await enableForwarding();
          await setPeerRoutes(r.subnet, r.peers);
          continue;
        }
        await setPeerRoutes(r.subnet, []);
        this.routes.delete(r.networkId);
        await this.d.state.forget('routes', r.networkId);
      } catch (e) {
        log.warn('a routed network\'s peer routes could not be laid out again; the next push from the control plane retries', { network: r.networkId, error: String(e) });
      }
    }
  }

  /** VXLAN ports of this host's bridges that no overlay record explains (a crash between make and record). */
  private async removeStrayVxlans(): Promise<void> {
    const bridges = new Set([...this.d.networks.values()].map((n) => n.device));
    const known = new Set([...this.overlays.values()].map((o) => o.device));
    for (const name of await kernel.vxlanLinks()) {
      if (known.has(name)) continue;
      const dev = await readVxlan(name);
      if (dev?.master && bridges.has(dev.master)) await removeVxlan(name).catch(() => undefined);
    }
  }
}
