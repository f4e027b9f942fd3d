/**
 * Healing (issue 15; docs/overlay.md, "Healing"): a host that stays down past a grace period has
 * its containers that should be running (a restart policy, not stopped by a user) and its running
 * VMs marked --ha rebuilt on other hosts, from their images, with the same id, name, addresses
 * and aliases; and a host that
 * comes back has its stale copies of what moved away destroyed (fencing) before anything else
 * of it is trusted again.
 *
 * One service on the leader (a second healer would rebuild twice). Every tick it looks at the
 * directory's view of the hosts (no call to a host):
 * - a host down for graceMs: each candidate rebuilt elsewhere, one at a time (rebuildContainer);
 *   one that cannot be (its volume's data is on the dead host, a host path, a shared namespace,
 *   no room anywhere) is reported once per outage with the reason, in an event and the log;
 * - a host that was down, or whose agent registered again (a new connection: restarted, maybe
 *   rebooted), is fenced: every container it holds whose record is gone or names another host is
 *   destroyed there. A copy a move is making (its record still names the source) is left alone:
 *   fencing waits while a move or an evacuation is in flight.
 *
 * A rebuild is a fresh container from its image: the writable layer stayed on the dead host (as
 * with Kubernetes rescheduling a pod). Quota is charged per container, so it stays charged once;
 * the scheduler's claim moves to the new host with its capacity check; addresses are kept (the
 * leases are the record's), and the overlay's forwarding entries follow it.
 */
import { Conflict, logMessage, textForAnyone } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent, ContainerCreateRequest } from '../../agent/agent.js';
import type { RuntimeState } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, ImageRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { VmService } from './vm-service.js';
import { vmRebuildRefusal } from './vm-move.js';
import type { HostAgents } from './hosts.js';
import type { Scheduler } from '../scheduler/types.js';
import type { ImageService } from '../images/image-service.js';
import type { NetworkService } from '../networks/network-service.js';
import { chooseDestination, containerImage } from './container-move.js';
import { vmDestination } from './host-evacuate.js';
import { HostFence } from './host-fence.js';

const log = logger('compute-heal');

/** How long a host stays down before its containers are rebuilt elsewhere (default). */
export const DEFAULT_HEAL_GRACE_MS = 10_000;
/** A container whose rebuild failed is tried again after this long while its host stays down. */
const RETRY_MS = 30_000;

/** NIMBUS_HEAL_GRACE_MS: 0 turns healing off; default DEFAULT_HEAL_GRACE_MS. */
export function healGraceFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.NIMBUS_HEAL_GRACE_MS;
  if (raw === undefined || raw === '') return DEFAULT_HEAL_GRACE_MS;
  const ms = Number(raw);
  if (!Number.isInteger(ms) || ms < 0) throw new Conflict(`NIMBUS_HEAL_GRACE_MS must be a whole number of milliseconds (0: healing off), got "${raw}"`);
  return ms;
}

/** What a rebuild needs of the container service: its lock, the request rebuilt from the record, its events and exits. */
export interface HealDeps {
  store: Store;
  hosts: HostAgents;
  scheduler: Scheduler;
  images: Pick<ImageService, 'ensureOnHost'>;
  networks: Pick<NetworkService, 'endpointsMoved'>;
  agentOn(host: string): Agent;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  cancelRestart(id: string): Promise<void>;
  /** The agent's create request for the container as its record has it, for `host`: its addresses kept, its networks laid out there. */
  requestFor(c: ContainerRecord, image: ImageRecord, host: string): Promise<ContainerCreateRequest>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
  /** An exit reported for the container now (detached: it takes the lock). */
  exitMaybe(id: string): void;
  bounded<T>(id: string, op: string, p: Promise<T>): Promise<T>;
}

/** Whether a container on a dead host is one to rebuild: it should be running. */
export function wantsRunning(c: ContainerRecord): boolean {
  if (c.stoppedByUser || c.config.restart.name === 'no') return false;
  return c.status === 'running' || c.status === 'restarting' || c.status === 'paused';
}

/** Why a container that should run cannot be rebuilt away from `host`; undefined when it can. */
export async function rebuildRefusal(store: Store, c: ContainerRecord): Promise<string | undefined> {
  const net = c.config.network ?? 'bridge';
  if (net.startsWith('container:')) return `it shares the network namespace of ${net.slice('container:'.length)}, which is on the same host`;
  const binds = (c.config.mounts ?? []).filter((m) => m.type === 'bind');
  if (binds.length) return `it binds host path${binds.length > 1 ? 's' : ''} ${binds.map((m) => m.source).join(', ')} of host ${c.host}`;
  for (const m of c.config.mounts ?? []) {
    if (m.type !== 'volume') continue;
    const v = await store.volumes.get(m.volumeId);
    if (!v) return `its volume ${m.name} is gone`;
    if (v.host === c.host) return `its volume ${m.name} holds its data on host ${c.host}, which does not answer: it is rebuilt only with it`;
  }
  return undefined;
}

export interface RebuildReport {
  id: string;
  name: string;
  from: string;
  to: string;
  totalMs: number;
}

/**
 * Rebuilds a container of a dead host on another: the claim moved (capacity checked), the image
 * and networks laid out there, the container created from its record and started, then the
 * record switched to the new host in one write. A failure before the switch leaves the record as
 * it was (still on the dead host) and removes what was made.
 */
export function rebuildContainer(deps: HealDeps, id: string, to?: string): Promise<RebuildReport> {
  return deps.locked(id, async () => {
    const t0 = Date.now();
    const c = await deps.store.containers.get(id);
    if (!c) throw new Conflict(`container ${id} is gone`);
    const from = c.host;
    if (!deps.hosts.isDown?.(from) && deps.hosts.has(from)) throw new Conflict(`container ${c.name}'s host ${from} answers again: it is not rebuilt`);
    if (!wantsRunning(c)) throw new Conflict(`container ${c.name} is not one to rebuild (restart policy ${c.config.restart.name}, ${c.stoppedByUser ? 'stopped by a user' : c.status})`);
    const refusal = await rebuildRefusal(deps.store, c);
    if (refusal) throw new Conflict(`container ${c.name} cannot be rebuilt elsewhere: ${refusal}`);
    const dest = to ?? (await chooseDestination(deps, c, undefined));
    await deps.cancelRestart(id);
    const dst = deps.agentOn(dest);
    let claimed = false;
    let created = false;
    try {
      await deps.scheduler.moveClaim(id, dest);
      claimed = true;
      const image = await containerImage(deps.store, c);
      await deps.images.ensureOnHost(image, dest);
      const request = await deps.requestFor(c, image, dest);
      created = true; // from the call on, the destination may hold it (an answer lost on the way)
      const made = await deps.bounded(id, 'create', dst.createContainer(request));
      const state: RuntimeState = await deps.bounded(id, 'start', dst.startContainer(id));
      const now = new Date().toISOString();
      const moved = await deps.store.containers.update(id, {
        host: dest, runtime: made.runtime, warnings: made.warnings,
        status: 'running', pid: state.pid ?? null, startedAt: state.startedAt ?? now, finishedAt: null, exitCode: null, oomKilled: false,
        restartCount: c.restartCount + 1,
      });
      deps.networks.endpointsMoved(id);
      deps.publish(moved, 'heal', { from, to: dest });
      deps.publish(moved, 'start', { pid: moved.pid });
      if (state.status === 'stopped') deps.exitMaybe(id);
      const report = { id, name: c.name, from, to: dest, totalMs: Date.now() - t0 };
      log.warn('container rebuilt on another host: its host does not answer', report);
      return report;
    } catch (e) {
      if (created) await deps.bounded(id, 'removal', dst.removeContainer(id)).catch(() => undefined);
      if (claimed) await deps.scheduler.moveClaim(id, from).catch((x: unknown) => log.warn('moving a claim back after a failed rebuild failed', { id, error: String(x) }));
      throw e;
    }
  });
}

export interface HealingOptions {
  graceMs?: number;
  tickMs?: number;
  clock?: () => number;
}

export interface HealingStats {
  rebuilt: number;
  failed: number;
  /** Containers that should run but cannot be rebuilt (reported once per outage). */
  refused: number;
  /** Stale copies destroyed on hosts that came back. */
  fenced: number;
}

export class HealingService {
  readonly stats: HealingStats = { rebuilt: 0, failed: 0, refused: 0, fenced: 0 };
  private readonly graceMs: number;
  private readonly tickMs: number;
  private readonly clock: () => number;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> = Promise.resolve();
  /** When each host was first seen down in its current outage. */
  private readonly downSince = new Map<string, number>();
  /** Hosts to fence once they answer: down since the service started, or seen with a new agent. */
  private readonly toFence = new Set<string>();
  private readonly fencer: HostFence;
  /** The agent object each host had at the last tick: a new one is a new registration. */
  private readonly agents = new Map<string, Agent>();
  /** Per container, when its last rebuild attempt ended (failed or refused): not tried again before RETRY_MS. */
  private readonly lastAttempt = new Map<string, number>();

  constructor(
    /**
     * fenceWaits: true while a move, a migration or an evacuation is in flight anywhere (its
     * copies are not stale); vms: absent, VMs are neither rebuilt nor fenced.
     */
    private readonly deps: HealDeps & { fenceWaits?(): Promise<boolean>; vms?: Pick<VmService, 'rebuild' | 'lockedVm'> },
    private readonly events: Pick<EventBus, 'publish'>,
    opts: HealingOptions = {},
  ) {
    this.graceMs = opts.graceMs ?? DEFAULT_HEAL_GRACE_MS;
    this.clock = opts.clock ?? Date.now;
    this.tickMs = opts.tickMs ?? 1000;
    this.fencer = new HostFence(deps, events);
  }

  start(): void {
    if (this.timer) return;
    for (const host of this.deps.hosts.names()) {
      try {
        this.agents.set(host, this.deps.hosts.get(host));
      } catch {
        // removed meanwhile
      }
    }
    const tick = () => {
      this.ticking = this.tick().catch((e: unknown) => log.error('a healing pass failed', { error: String(e) }));
    };
    this.timer = setInterval(() => {
      void this.ticking.then(tick);
    }, this.tickMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.ticking;
  }

  /** One look at every host: outages past the grace healed, returns fenced. */
  async tick(): Promise<void> {
    const now = this.clock();
    const names = this.deps.hosts.names();
    for (const host of [...this.downSince.keys()]) if (!names.includes(host)) this.downSince.delete(host);
    for (const host of names) {
      if (this.deps.hosts.isDown?.(host)) {
        const since = this.downSince.get(host) ?? now;
        this.downSince.set(host, since);
        this.toFence.add(host);
        if (now - since >= this.graceMs) await this.healHost(host);
        continue;
      }
      this.downSince.delete(host);
      let agent: Agent;
      try {
        agent = this.deps.hosts.get(host);
      } catch {
        continue;
      }
      if (this.agents.get(host) !== agent) this.toFence.add(host);
      this.agents.set(host, agent);
      if (this.toFence.has(host) && (await this.fence(host, agent))) this.toFence.delete(host);
    }
  }

  /** Every container of the dead host that should run, and every --ha VM running there, rebuilt elsewhere (or reported once why not). */
  async healHost(host: string): Promise<void> {
    await this.healContainers(host);
    if (this.deps.vms) await this.healVms(host, this.deps.vms);
  }

  private async healContainers(host: string): Promise<void> {
    for (const c of await this.deps.store.containers.onHost(host)) {
      if (!wantsRunning(c)) continue;
      const last = this.lastAttempt.get(c.id);
      if (last !== undefined && this.clock() - last < RETRY_MS) continue;
      if (!this.deps.hosts.isDown?.(host)) return; // it came back meanwhile: fencing's turn
      const refusal = await rebuildRefusal(this.deps.store, c);
      if (refusal) {
        this.lastAttempt.set(c.id, this.clock());
        this.stats.refused++;
        log.warn('a container of a host that does not answer cannot be rebuilt elsewhere', { id: c.id, name: c.name, host, reason: refusal });
        this.deps.publish(c, 'heal-refused', { host, reason: refusal });
        continue;
      }
      try {
        await rebuildContainer(this.deps, c.id);
        this.lastAttempt.delete(c.id);
        this.stats.rebuilt++;
      } catch (e) {
        this.lastAttempt.set(c.id, this.clock());
        this.stats.failed++;
        log.warn('rebuilding a container of a host that does not answer failed', { id: c.id, name: c.name, host, error: logMessage(e) });
        this.deps.publish(c, 'heal-failed', { host, error: textForAnyone(e) });
      }
    }
  }

  private async healVms(host: string, vms: Pick<VmService, 'rebuild' | 'lockedVm'>): Promise<void> {
    const onHost = (await this.deps.store.vms.list()).filter((v) => v.agent === host && v.config.ha && (v.status === 'running' || v.status === 'paused'));
    for (const v of onHost) {
      const last = this.lastAttempt.get(v.id);
      if (last !== undefined && this.clock() - last < RETRY_MS) continue;
      if (!this.deps.hosts.isDown?.(host)) return;
      const vmEvent = (action: string, attributes: Record<string, unknown>) =>
        this.events.publish({ type: 'vm', action, id: v.id, projectId: v.projectId, attributes: { name: v.name, host, ...attributes } });
      const refusal = vmRebuildRefusal(v.config);
      if (refusal) {
        this.lastAttempt.set(v.id, this.clock());
        this.stats.refused++;
        log.warn('an --ha VM of a host that does not answer cannot be rebuilt elsewhere', { id: v.id, name: v.name, host, reason: refusal });
        vmEvent('heal-refused', { reason: refusal });
        continue;
      }
      try {
        await vms.rebuild(v.id, await vmDestination(this.deps, v, host));
        this.lastAttempt.delete(v.id);
        this.stats.rebuilt++;
      } catch (e) {
        this.lastAttempt.set(v.id, this.clock());
        this.stats.failed++;
        log.warn('rebuilding an --ha VM of a host that does not answer failed', { id: v.id, name: v.name, host, error: logMessage(e) });
        vmEvent('heal-failed', { error: textForAnyone(e) });
      }
    }
  }

  /**
   * Destroys what the host holds that the store puts elsewhere or nowhere; true when done
   * (false: it did not answer, or a move is in flight: tried again next tick).
   */
  async fence(host: string, agent: Agent): Promise<boolean> {
    const r = await this.fencer.fence(host, agent);
    this.stats.fenced += r.destroyed;
    return r.done;
  }
}
