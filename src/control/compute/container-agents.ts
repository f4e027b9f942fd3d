/**
 * The hosts' agents as the container service reaches them: each agent listened to for container
 * exits from its first use on, those registered (again) later picked up by a watch, and which
 * hosts answer (a container on one that does not shows "unknown").
 */
import { logger } from '../../core/log.js';
import type { Agent } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, ContainerStatus } from '../../store/records.js';
import { withDeadline } from './deadline.js';
import type { HostAgents } from './hosts.js';

const log = logger('compute');
/** How long the start-time reconcile waits for a host other than the embedded one: one that does not answer is left alone. */
export const HOST_RECONCILE_MS = 15_000;

/** A container as listings and inspect show it: "unknown" while its host does not answer (the stored status is kept). */
export type ContainerView = Omit<ContainerRecord, 'status'> & { status: ContainerStatus | 'unknown' };

export class ContainerAgents {
  /** Agents whose container exits this service listens to (an agent that registers again is a new object). */
  private readonly watched = new WeakSet<Agent>();
  /** Hosts that did not answer the last reconcile: their containers show "unknown" until one does. */
  private readonly unreachable = new Set<string>();
  private hostWatch: NodeJS.Timeout | undefined;

  /** onExit: an agent saw a container's process exit (or may have, while it was away); it cannot wait for the handling. */
  constructor(
    private readonly hosts: HostAgents,
    private readonly store: Store,
    private readonly onExit: (id: string, host?: string) => void,
  ) {
    for (const name of hosts.names()) this.on(name);
  }

  /** The agent of a host, its container exits listened to from the first use on. */
  on(host: string): Agent {
    const agent = this.hosts.get(host);
    if (!this.watched.has(agent)) {
      this.watched.add(agent);
      agent.onContainerExit((id) => this.onExit(id, host));
    }
    return agent;
  }

  /**
   * Exits from every host, those registered (again) later included: every few seconds the
   * directory is looked at (no call to a host) and an agent not listened to yet is; its running
   * containers are then checked, so an exit it saw while away is recorded.
   */
  watch(everyMs = 5000): void {
    this.hostWatch ??= setInterval(() => this.attachNewHosts(), everyMs);
    this.hostWatch.unref();
  }

  private attachNewHosts(): void {
    for (const host of this.hosts.names()) {
      let agent: Agent;
      try {
        agent = this.hosts.get(host);
      } catch {
        continue; // removed meanwhile
      }
      if (this.watched.has(agent)) continue;
      this.on(host);
      void this.recheckHost(host, agent).catch((e: unknown) => log.warn('re-checking the containers of a host failed', { host, error: String(e) }));
    }
  }

  /** A host back (or new): it answers again, and its live containers' exits are looked for. */
  private async recheckHost(host: string, agent: Agent): Promise<void> {
    await withDeadline(agent.listContainers(), HOST_RECONCILE_MS, `host ${host}'s container list`);
    this.answered(host);
    for (const c of await this.store.containers.onHost(host)) {
      if (c.status === 'running' || c.status === 'paused') this.onExit(c.id, host);
    }
  }

  /** The host answered (a reconcile, a re-check): its containers show their stored status again. */
  answered(host: string): void {
    this.unreachable.delete(host);
  }

  /** The host did not answer a reconcile: its containers show "unknown" until it does. */
  didNotAnswer(host: string): void {
    this.unreachable.add(host);
  }

  /** As listings and inspect show it: "unknown" while its host does not answer (the last reconcile, or the directory's refresh now). */
  view(c: ContainerRecord): ContainerView {
    return this.unreachable.has(c.host) || !this.hosts.has(c.host) || this.hosts.isDown?.(c.host) ? { ...c, status: 'unknown' } : c;
  }

  stopWatching(): void {
    clearInterval(this.hostWatch);
    this.hostWatch = undefined;
  }
}
