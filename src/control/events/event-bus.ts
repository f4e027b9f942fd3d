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
  async *subscribe(filter: EventFilter, signal: AbortSignal): AsyncGenerator<NimbusEvent> {
    const queue: NimbusEvent[] = [];
    let wake: (() => void) | undefined;
    const off = this.on((e) => {
      if (EventBus.matches(e, filter)) {
        queue.push(e);
        wake?.();
      }
    });
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort);
    try {
      if (filter.since !== undefined) {
        for (const e of this.ring) if (e.seq > filter.since && EventBus.matches(e, filter)) queue.unshift(e);
        queue.sort((a, b) => a.seq - b.seq);
      }
      while (!signal.aborted) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      off();
      signal.removeEventListener('abort', onAbort);
    }
  }
}
