import { AsyncQueue } from '../../core/async-queue.js';
import { currentActor, SYSTEM_ACTOR } from './actor.js';

/**
 * Every state change is an event (Incus /events). Subscribers get a live async
 * iterator; a bounded ring keeps recent history for `since` replays.
 *
 * Across replicas (EventBus.connect on PostgreSQL) each bus also relays what it publishes to
 * the others and delivers what they publish (postgres-relay.ts): a subscriber on any replica
 * sees every replica's events. `seq` is this bus's own numbering (what `since` replays by);
 * `time` is when the publishing replica published it.
 */
export interface NimbusEvent {
  seq: number;
  time: string;
  type: string; // "container" | "image" | "operation" | ...
  action: string; // "create" | "start" | "die" | "progress" | ...
  id: string;
  projectId?: string;
  /** Who caused it: the user (or "local-admin") whose request it came from, else "system" (see actor.ts). */
  actor?: string;
  attributes?: Record<string, unknown>;
}

export interface EventFilter {
  types?: string[];
  id?: string;
  /** An instance's events by its id, or by its name (a container's or VM's events name it in attributes.name): one not made yet can be named. */
  instance?: string;
  /** Only events of these projects (events without a project are left out). */
  projectIds?: ReadonlySet<string>;
  since?: number;
}

type Listener = (e: NimbusEvent) => void;

/** Carries a bus's events to the other replicas' buses. */
export interface EventRelay {
  /** Queue an event this replica published; never throws (a relay failure is the relay's to log). */
  send(e: NimbusEvent): void;
  close(): Promise<void>;
}

export interface ConnectOptions {
  /** The store's location: postgres://… relays through the database, anything else stays in process. */
  storeLocation: string;
  /** This replica (its own events coming back are not delivered twice). */
  replicaId: string;
  capacity?: number;
}

export class EventBus {
  private seq = 0;
  private readonly ring: NimbusEvent[] = [];
  private readonly listeners = new Set<Listener>();
  private readonly publishedListeners = new Set<Listener>();
  private relay: EventRelay | undefined;
  constructor(private readonly capacity = 2048) {}

  /** A bus that reaches the other replicas sharing the store (PostgreSQL), else an in-process one. */
  static async connect(opts: ConnectOptions): Promise<EventBus> {
    const bus = new EventBus(opts.capacity);
    // the test of open.ts's isPostgresLocation, not imported: that would load the whole store
    if (/^postgres(ql)?:\/\//.test(opts.storeLocation)) {
      const { PostgresEventRelay } = await import('./postgres-relay.js');
      bus.relay = await PostgresEventRelay.open(opts.storeLocation, opts.replicaId, (e) => bus.deliver(e));
    }
    return bus;
  }

  /** Published with the current request's actor unless it names one. */
  publish(e: Omit<NimbusEvent, 'seq' | 'time'>): NimbusEvent {
    const full = this.deliver({ time: new Date().toISOString(), ...e, actor: e.actor ?? currentActor() ?? SYSTEM_ACTOR });
    this.relay?.send(full);
    for (const l of this.publishedListeners) l(full);
    return full;
  }

  /** To this bus's subscribers (an event of this replica, or one relayed from another) under the next seq. */
  private deliver(e: Omit<NimbusEvent, 'seq'>): NimbusEvent {
    const full: NimbusEvent = { seq: 0, ...e }; // seq first, as clients have always seen it
    full.seq = ++this.seq;
    this.ring.push(full);
    if (this.ring.length > this.capacity) this.ring.shift();
    for (const l of this.listeners) l(full);
    return full;
  }

  /** Stops relaying (after sending what was published so far); the bus still works in process. */
  async close(): Promise<void> {
    const relay = this.relay;
    this.relay = undefined;
    await relay?.close();
  }

  on(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Events this bus published (not those relayed from other replicas): what per-process counters count. */
  onPublished(listener: Listener): () => void {
    this.publishedListeners.add(listener);
    return () => this.publishedListeners.delete(listener);
  }

  static matches(e: NimbusEvent, f: EventFilter): boolean {
    return (!f.types?.length || f.types.includes(e.type)) && (!f.id || e.id === f.id)
      && (!f.instance || e.id === f.instance || ((e.type === 'container' || e.type === 'vm') && e.attributes?.name === f.instance))
      && (!f.projectIds || (e.projectId !== undefined && f.projectIds.has(e.projectId)));
  }

  /** Live stream, optionally replaying buffered events after `since`. Ends when signal aborts. */
  subscribe(filter: EventFilter, signal: AbortSignal): AsyncIterable<NimbusEvent> {
    const queue = new AsyncQueue<NimbusEvent>();
    if (filter.since !== undefined) {
      for (const e of this.ring) if (e.seq > filter.since && EventBus.matches(e, filter)) queue.push(e);
    }
    const off = this.on((e) => {
      if (EventBus.matches(e, filter)) queue.push(e);
    });
    signal.addEventListener('abort', () => {
      off();
      queue.end();
    });
    return queue.drain(signal);
  }
}
