/**
 * This process as one replica of the control plane, in one piece for the daemon: its id, its
 * leadership, its event bus (relayed to the other replicas on PostgreSQL), its row among the
 * replicas, and the leader-only tasks. See docs/replicas.md.
 */
import type { Store } from '../../store/store.js';
import { EventBus } from '../events/event-bus.js';
import { newReplicaId, openLeadership, type Leadership } from './leadership.js';
import { ReplicaRegistry, type ReplicaView } from './replicas.js';
import { runWhileLeader, type Stopper } from './run-while-leader.js';

export interface ReplicaListing {
  /** This replica. */
  self: string;
  /** The leading replica as the database sees it (undefined while there is none). */
  leader: string | undefined;
  replicas: (ReplicaView & { leader: boolean })[];
}

export class Replica {
  private readonly stoppers: Stopper[] = [];
  private closing: Promise<void> | undefined;

  private constructor(
    readonly replicaId: string,
    readonly leadership: Leadership,
    readonly events: EventBus,
    readonly registry: ReplicaRegistry,
  ) {}

  /**
   * Opens the pieces for the store at storeLocation (the same `store` the daemon opened there).
   * Undoes what it opened if a later piece fails.
   */
  static async open(store: Store, storeLocation: string, opts: { apiUrl?: string | null; replicaId?: string } = {}): Promise<Replica> {
    const replicaId = opts.replicaId ?? newReplicaId();
    const registry = await ReplicaRegistry.start(store, { replicaId, apiUrl: opts.apiUrl ?? null });
    let events: EventBus | undefined;
    try {
      events = await EventBus.connect({ storeLocation, replicaId });
      const leadership = await openLeadership(storeLocation, replicaId);
      return new Replica(replicaId, leadership, events, registry);
    } catch (e) {
      await events?.close();
      await registry.close();
      throw e;
    }
  }

  /** Runs start() while this replica leads (see runWhileLeader); stopped by close(). */
  whileLeader(name: string, start: () => Stopper): void {
    this.stoppers.push(runWhileLeader(this.leadership, name, start));
  }

  /** Every replica, live or recently gone, and who leads (GET /replicas). */
  async list(): Promise<ReplicaListing> {
    const [leader, replicas] = await Promise.all([this.leadership.currentLeader(), this.registry.list()]);
    return { self: this.replicaId, leader, replicas: replicas.map((r) => ({ ...r, leader: r.id === leader })) };
  }

  /**
   * Leader tasks stop first (before the lock goes: the next leader never overlaps them), then
   * the row goes (this replica's operations fail at the leader's next pass) and the relay
   * closes after sending what was published. Call after the API stopped, before the store closes.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const stop of this.stoppers.splice(0)) await stop();
      await this.leadership.close();
      await this.registry.close();
      await this.events.close();
    })();
    return this.closing;
  }
}
