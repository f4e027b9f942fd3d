import { AsyncQueue } from '../../core/async-queue.js';

/**
 * Every state change is an event (Incus /events). Subscribers get a live async
 * iterator; a bounded ring keeps recent history for `since` replays.
 */
export interface NimbusEvent {
  seq: number;
  time: string;
  type: string; // "container" | "image" | "operation" | ...
  action: string; // "create" | "start" | "die" | "progress" | ...
  id: string;
  projectId?: string;
  attributes?: Record<string, unknown>;
}

export interface EventFilter {
  types?: string[];
  id?: string;
  since?: number;
}

type Listener = (e: NimbusEvent) => void;

export class EventBus {
  private seq = 0;
  private readonly ring: NimbusEvent[] = [];
  private readonly listeners = new Set<Listener>();
  constructor(private readonly capacity = 2048) {}

  publish(e: Omit<NimbusEvent, 'seq' | 'time'>): NimbusEvent {
    const full: NimbusEvent = { seq: ++this.seq, time: new Date().toISOString(), ...e };
    this.ring.push(full);
    if (this.ring.length > this.capacity) this.ring.shift();
    for (const l of this.listeners) l(full);
    return full;
  }

  on(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  static matches(e: NimbusEvent, f: EventFilter): boolean {
    return (!f.types?.length || f.types.includes(e.type)) && (!f.id || e.id === f.id);
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
