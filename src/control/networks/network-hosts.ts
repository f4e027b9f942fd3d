/**
 * Networks on the hosts: which agent a host's calls go to, networks laid out on a host before
 * an instance there uses them, and reconciles of a host's networks (at the daemon's start, and
 * when a host registers again).
 */
import type { Agent } from '../../agent/agent.js';
import type { NetworkSpec } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import type { NetworkRecord } from '../../store/records.js';
import { NewConnections, type HostAgents } from '../compute/hosts.js';
import { withDeadline } from '../compute/deadline.js';
import { logger } from '../../core/log.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { OVERLAY_MTU, overVxlan, type NetworkOverlay, type OverlayHosts } from './overlay.js';

const log = logger('networks');
/** How long a start-time reconcile waits for one host: a host that does not answer is left alone. */
const HOST_RECONCILE_MS = 15_000;

export type HostReconcile = { endpointsRemoved: number; networksRemoved: number; netnsRemoved: number };

/** What a host lays the network out from. */
export function networkSpec(n: NetworkRecord): NetworkSpec {
  // a network that may span hosts over VXLAN has the overlay's MTU everywhere from the start (its endpoints cannot be told later)
  return { id: n.id, name: n.name, driver: n.driver, subnet: n.subnet, gateway: n.gateway, internal: n.internal, device: n.device, ...(overVxlan(n) ? { mtu: OVERLAY_MTU } : {}) };
}

export interface NetworkHostsDeps {
  store: Store;
  /** The embedded agent (every host's, until useHosts). */
  agent: Agent;
  overlay: () => Pick<NetworkOverlay, 'reconcileHost'>;
  /** A network event (here: a network laid out on a host). */
  publish(n: NetworkRecord, action: string, attributes: Record<string, unknown>): void;
}

export class NetworkHosts implements OverlayHosts {
  /** Hosts other than the embedded agent; unset: the embedded agent only (named 'local'). */
  private hosts: HostAgents | undefined;
  /** One layout or reconcile of a host's networks at a time. */
  private readonly hostLocks = new KeyedLock();

  constructor(private readonly d: NetworkHostsDeps) {}

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

  /** The hosts networks may be laid out on. */
  names(): string[] {
    return this.hosts ? this.hosts.names() : ['local'];
  }

  /** The embedded agent's name (every network is laid out there when made); undefined with --no-agent. */
  get localName(): string | undefined {
    return this.hosts ? this.hosts.localName : 'local';
  }

  /** The agent of a host. */
  get(host: string): Agent {
    return this.hosts ? this.hosts.get(host) : this.d.agent;
  }

  /** Subnets the embedded agent's host routes (none with --no-agent: other hosts are not asked). */
  async foreignSubnets(): Promise<string[]> {
    return this.localName === undefined ? [] : this.d.agent.foreignSubnets();
  }

  /**
   * The networks laid out on host before an instance there uses them (idempotent; recorded in
   * network_hosts first, so a removal reaches the host even if the layout half failed). The
   * embedded agent has every network already. A network's parts are joined once two hosts have
   * endpoints on it: a bridge network's by the overlay (overlay.ts), a routed one's by routes (routed.ts).
   */
  async ensureOnHost(networks: readonly NetworkRecord[], host: string): Promise<void> {
    if (host === this.localName) return;
    const store = this.d.store;
    // after a reconcile of the host in flight (one of a host that just registered): it would take
    // the endpoints of a container made on it meanwhile for a gone container's
    await this.hostLocks.run(host, async () => undefined);
    for (const n of networks) {
      if ((await store.networks.hosts(n.id)).includes(host)) continue;
      // not beside the host's reconcile: one that read the host's networks before this layout
      // would remove it again (a host that had just registered lost a network so)
      await this.hostLocks.run(host, async () => {
        if ((await store.networks.hosts(n.id)).includes(host)) return;
        await store.networks.addHost(n.id, host);
        await this.get(host).ensureNetwork(networkSpec(n));
        this.d.publish(n, 'layout', { host });
      });
    }
  }

  /** Every host's networks reconciled (reconcileHost); one that does not answer is left as it is and named. */
  async reconcileAll(): Promise<HostReconcile & { unreachableHosts: string[] }> {
    const total = { endpointsRemoved: 0, networksRemoved: 0, netnsRemoved: 0, unreachableHosts: [] as string[] };
    await Promise.all(this.names().map(async (host) => {
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
  reconcileHost(host: string): Promise<HostReconcile> {
    return this.hostLocks.run(host, () => this.reconcileHostNow(host));
  }

  private async reconcileHostNow(host: string): Promise<HostReconcile> {
    const store = this.d.store;
    const agent = this.get(host);
    const networks = await store.networks.onHost(host);
    for (const n of networks) await agent.ensureNetwork(networkSpec(n));
    // every instance with endpoints there: containers, and VMs (their taps are endpoints too)
    const instanceIds = [
      ...(await store.containers.onHost(host)).map((c) => c.id),
      ...(await store.vms.list()).filter((v) => v.agent === host).map((v) => v.id),
    ];
    const removed = await agent.reconcileNetworks(instanceIds, networks.map((n) => n.id));
    // the overlays on it pushed whole again (peers that changed while it was away, devices it should no longer have)
    await this.d.overlay().reconcileHost(host);
    return removed;
  }
}
