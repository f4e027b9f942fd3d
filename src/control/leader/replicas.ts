/**
 * This control-plane process's row among the replicas sharing the store: written at start,
 * its last_seen refreshed every few seconds, deleted on a clean shutdown. A row last seen
 * more than REPLICA_STALE_MS ago is a replica that is gone: the leader fails its operations.
 */
import { hostname } from 'node:os';
import { logger } from '../../core/log.js';
import type { ReplicaRecord } from '../../store/records.js';
import type { Store } from '../../store/store.js';

const log = logger('replicas');

/** A replica not seen for this long is gone (five missed heartbeats). */
export const REPLICA_STALE_MS = 15_000;
export const REPLICA_HEARTBEAT_MS = 3_000;
/** Rows of replicas gone this long are deleted by the leader (kept a while for `replicas` listings). */
export const REPLICA_FORGET_MS = 10 * 60_000;

export interface ReplicaView extends ReplicaRecord {
  /** Seen within REPLICA_STALE_MS. */
  live: boolean;
}

export class ReplicaRegistry {
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(private readonly store: Store, private readonly record: ReplicaRecord, private readonly heartbeatMs: number) {}

  /**
   * Registers this process. On SQLite it is the only one (the pid lock), so the rows of earlier
   * processes are removed: their operations are interrupted at once, not after REPLICA_STALE_MS.
   */
  static async start(store: Store, opts: { replicaId: string; apiUrl?: string | null; heartbeatMs?: number }): Promise<ReplicaRegistry> {
    const now = Date.now();
    const record: ReplicaRecord = { id: opts.replicaId, hostname: hostname(), pid: process.pid, startedAt: now, lastSeen: now, apiUrl: opts.apiUrl ?? null };
    if (store.kind === 'sqlite') {
      for (const r of await store.operations.listReplicas()) await store.operations.removeReplica(r.id);
    }
    await store.operations.registerReplica(record);
    const registry = new ReplicaRegistry(store, record, opts.heartbeatMs ?? REPLICA_HEARTBEAT_MS);
    registry.schedule();
    return registry;
  }

  get replicaId(): string {
    return this.record.id;
  }

  /** Where this replica's API listens over TCP (known once it listens). */
  async setApiUrl(apiUrl: string | null): Promise<void> {
    this.record.apiUrl = apiUrl;
    await this.store.operations.registerReplica({ ...this.record, lastSeen: Date.now() });
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.beating = this.beat().finally(() => this.schedule());
    }, this.heartbeatMs);
    this.timer.unref();
  }

  private async beat(): Promise<void> {
    if (this.closed) return;
    const now = Date.now();
    try {
      // pruned by a leader while we could not write (a long partition): register again
      if (!(await this.store.operations.touchReplica(this.record.id, now))) await this.store.operations.registerReplica({ ...this.record, lastSeen: now });
    } catch (e) {
      log.warn('replica heartbeat failed', { replica: this.record.id, error: String(e) });
    }
  }

  /** Every replica, live or recently gone. */
  async list(now = Date.now()): Promise<ReplicaView[]> {
    return (await this.store.operations.listReplicas()).map((r) => ({ ...r, live: r.lastSeen >= now - REPLICA_STALE_MS }));
  }

  /** Deletes this replica's row (a clean shutdown: its operations are failed at once by the leader, not after the staleness delay). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.beating;
    await this.store.operations.removeReplica(this.record.id).catch((e: unknown) => log.warn('removing the replica row failed', { error: String(e) }));
  }
}

/** The leader's pass: rows of replicas gone long ago are deleted. */
export async function forgetGoneReplicas(store: Store, now = Date.now()): Promise<number> {
  return store.operations.pruneReplicas(now - REPLICA_FORGET_MS);
}
