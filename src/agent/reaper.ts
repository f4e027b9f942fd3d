/**
 * Removal off the critical path: when a container is removed, the control plane's
 * record goes at once and the host state (runtime state, conmon, mounts, cgroups,
 * writable layer) is destroyed here, in the background, two containers at a time
 * (one a core on this machine kind: one at a time, 200 removals took ~75 s here while
 * the warm pool refilled beside them), each preferring a moment when the agent is idle while
 * only a few wait. A longer queue is destroyed without waiting: under a steady stream of
 * `run --rm` the agent is never idle, and waiting each time let the queue grow with the stream
 * (117 containers' mounts, namespaces and cgroups held after 300 back-to-back requests).
 * Garbage collection and shutdown wait for it; a crash in between leaves directories
 * the daemon's reconciliation on the next start removes as orphans.
 */
import { logger } from '../core/log.js';

const log = logger('agent.reaper');

export interface ReaperStats {
  pending: number;
  removed: number;
  failed: number;
}

export class Reaper {
  private readonly queue: string[] = [];
  private readonly pending = new Set<string>();
  private readonly workers = new Set<Promise<void>>();
  private removed = 0;
  private failed = 0;

  constructor(
    private readonly destroy: (id: string) => Promise<void>,
    /** Resolves when the agent is idle, or after maxMs at the latest. */
    private readonly quiet: (maxMs: number) => Promise<void>,
    private readonly maxDelayMs = 200,
    /** Destroys in flight at most. */
    private readonly concurrency = 2,
    /** A destroy waits for a quiet moment only while fewer than this many are queued behind it. */
    private readonly patientBelow = 4,
  ) {}

  /** Queue a container's host state for destruction (idempotent). */
  add(id: string): void {
    if (this.pending.has(id)) return;
    this.pending.add(id);
    this.queue.push(id);
    this.spawn();
  }

  /** Another worker, unless enough run (a running one takes what is queued). */
  private spawn(): void {
    if (this.workers.size >= Math.max(1, this.concurrency) || this.queue.length === 0) return;
    const worker: Promise<void> = this.drain().finally(() => {
      this.workers.delete(worker);
      this.spawn(); // anything queued while this one was finishing
    });
    this.workers.add(worker);
  }

  has(id: string): boolean {
    return this.pending.has(id);
  }

  /** Resolves once everything queued so far (and since) is destroyed or has failed. */
  async idle(): Promise<void> {
    while (this.workers.size) await Promise.all(this.workers);
  }

  stats(): ReaperStats {
    return { pending: this.pending.size, removed: this.removed, failed: this.failed };
  }

  private async drain(): Promise<void> {
    for (let id = this.queue.shift(); id !== undefined; id = this.queue.shift()) {
      if (this.queue.length < this.patientBelow) await this.quiet(this.maxDelayMs);
      try {
        await this.destroy(id);
        this.removed++;
      } catch (e) {
        this.failed++;
        log.error('cannot remove container state; the next daemon start will retry', { id, error: e instanceof Error ? e.message : String(e) });
      } finally {
        this.pending.delete(id);
      }
    }
  }
}
