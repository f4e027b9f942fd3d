/** The container state machine: named states and the only legal transitions. */
import { Conflict } from '../../core/errors.js';
import type { ContainerStatus } from '../../store/records.js';

const LEGAL: Record<ContainerStatus, readonly ContainerStatus[]> = {
  created: ['running', 'exited', 'removing'],
  running: ['paused', 'exited', 'restarting', 'removing'],
  paused: ['running', 'exited', 'removing'],
  restarting: ['running', 'exited', 'removing'],
  exited: ['running', 'restarting', 'removing'],
  removing: ['dead'],
  dead: ['removing'],
};

export function canTransition(from: ContainerStatus, to: ContainerStatus): boolean {
  return from === to || LEGAL[from].includes(to);
}

export function assertTransition(name: string, from: ContainerStatus, to: ContainerStatus, verb: string): void {
  if (!canTransition(from, to)) {
    throw new Conflict(`cannot ${verb} container ${name}: it is ${from}`, { status: from });
  }
}

/**
 * Graceful stops in flight, the one wait in the lifecycle that lasts as long as the caller asks
 * (a stop's or restart's timeout, up to MAX_STOP_TIMEOUT_SEC). Lifecycle calls are serialised per
 * container, so the stop holds the container's lock while it waits; kill and rm -f preempt it
 * instead of queueing behind it:
 *
 *   - kill does not take the lock: it signals at once. The stop's wait sees the process exit and
 *     the stop completes normally (it records the exit); a SIGKILL answers once that is recorded.
 *   - rm -f aborts the stop: the stop stops waiting (its caller gets the abort's reason, a
 *     Conflict), a restart does not start the container again, and the removal, which sends its
 *     own SIGKILL first, takes the lock as soon as the stop lets go.
 *
 * A stop registers for its whole operation (a restart: stop and start); `stopped` settles when its
 * stop part is over, whatever the outcome.
 */
export interface StopInFlight {
  /** Aborted by rm -f: whoever waits in the stop gives up with signal.reason. */
  readonly signal: AbortSignal;
  /** Settles when the stop part is over (exit recorded, or failed, or aborted). */
  readonly stopped: Promise<void>;
}

interface Entry extends StopInFlight {
  controller: AbortController;
  markStopped(): void;
}

export class StopsInFlight {
  private readonly entries = new Map<string, Entry>();

  /** The stop in flight for this container, if any. */
  get(id: string): StopInFlight | undefined {
    return this.entries.get(id);
  }

  /**
   * Run a stop (and what follows it, for a restart) registered for this container. fn calls
   * stopDone() when its stop part is over; it is called for it when fn ends. Callers hold the
   * container's lock, so there is at most one per container.
   */
  async run<T>(id: string, fn: (signal: AbortSignal, stopDone: () => void) => Promise<T>): Promise<T> {
    const controller = new AbortController();
    let markStopped!: () => void;
    const stopped = new Promise<void>((r) => (markStopped = r));
    const entry: Entry = { controller, signal: controller.signal, stopped, markStopped };
    this.entries.set(id, entry);
    try {
      return await fn(controller.signal, markStopped);
    } finally {
      markStopped();
      if (this.entries.get(id) === entry) this.entries.delete(id);
    }
  }

  /** rm -f: make the stop in flight give up with reason. False when none is in flight. */
  abort(id: string, reason: Error): boolean {
    const e = this.entries.get(id);
    if (!e) return false;
    e.controller.abort(reason);
    return true;
  }
}
