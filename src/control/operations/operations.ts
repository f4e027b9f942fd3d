/**
 * Long work runs as an Operation resource (202 + id): its progress and outcome
 * are stored, published as events, and can be waited on.
 *
 * With several control-plane replicas (docs/replicas.md) each operation names the replica
 * running it; any replica reads it and waits on it (woken by the relayed operation events,
 * the store re-read as the authority, a slow poll as the safety net), and the leader fails
 * the operations of replicas that are gone (failInterrupted).
 */
import { newId } from '../../core/ids.js';
import { NotFound, logMessage, messageFor, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';

const log = logger('operations');
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export interface OperationServiceOptions {
  /** The replica (control-plane process) this service runs operations for; a new one by default. */
  replicaId?: string;
  /** A replica not seen for this long is gone: failInterrupted fails its operations (default 15 s). */
  replicaStaleMs?: number;
  /** A wait re-reads the store at least this often, events or not (default 2 s). */
  waitPollMs?: number;
}

export interface OperationHandle {
  readonly id: string;
  /** Synchronous for the work: the write is queued behind the operation's earlier writes. */
  progress(p: Record<string, unknown>): void;
}

export class OperationService {
  private readonly done = new Map<string, Promise<OperationRecord>>();
  /**
   * Per running operation, the tail of its record's writes: progress and the outcome are
   * written in the order they happen, and a read waits for the writes queued before it.
   */
  private readonly writes = new Map<string, Promise<void>>();
  /** Progress is published at most this often per operation, and stored at the end. */
  private readonly progressIntervalMs = 100;

  readonly replicaId: string;
  private readonly replicaStaleMs: number;
  private readonly waitPollMs: number;

  constructor(private readonly store: Store, private readonly events: EventBus, options: OperationServiceOptions = {}) {
    this.replicaId = options.replicaId ?? newId().slice(0, 16);
    this.replicaStaleMs = options.replicaStaleMs ?? 15_000;
    this.waitPollMs = options.waitPollMs ?? 2_000;
  }

  /**
   * Reconcile: unfinished operations whose replica is gone (no replica row, or one not seen for
   * replicaStaleMs; a restarted process is a new replica) are failed, not left dangling, and
   * their failure published. Never this replica's own, nor a live replica's. Run at start and
   * by the leader periodically; safe to run on several replicas at once (one UPDATE).
   */
  async failInterrupted(): Promise<number> {
    const now = Date.now();
    const failed = await this.store.operations.failOrphaned(
      now - this.replicaStaleMs,
      this.replicaId,
      { code: 'Unavailable', message: 'the nimbusd process running this operation stopped before it finished' },
      new Date(now).toISOString(),
    );
    for (const op of failed) {
      log.warn('operation interrupted', { id: op.id, kind: op.kind, replica: op.replica });
      this.events.publish({
        type: 'operation', action: 'failed', id: op.id, projectId: op.projectId,
        attributes: { kind: op.kind, target: op.target, error: op.error, interrupted: true },
      });
    }
    return failed.length;
  }

  /** Queue a write of operation id's record behind its earlier ones; a failed write is logged, not thrown. */
  private enqueue(id: string, write: () => Promise<unknown>): Promise<void> {
    const tail = (this.writes.get(id) ?? Promise.resolve()).then(write).then(
      () => undefined,
      (e: unknown) => log.error('writing an operation record failed', { id, error: String(e) }),
    );
    this.writes.set(id, tail);
    return tail;
  }

  /**
   * Stores the operation and starts work (it is running when this resolves). Resolves to the
   * record as stored then: with the progress the work reported before its first await.
   */
  async start<T>(kind: string, target: string, projectId: string, work: (op: OperationHandle) => Promise<T>): Promise<OperationRecord> {
    const now = new Date().toISOString();
    const rec: OperationRecord = {
      id: newId(), kind, projectId, status: 'running', target, progress: {}, result: null, error: null,
      createdAt: now, updatedAt: now, replica: this.replicaId,
    };
    await this.store.operations.insert(rec);
    this.events.publish({ type: 'operation', action: 'create', id: rec.id, projectId, attributes: { kind, target } });
    let latest: Record<string, unknown> = {};
    let lastSent = 0;
    const handle: OperationHandle = {
      id: rec.id,
      progress: (p) => {
        latest = p;
        const t = Date.now();
        if (t - lastSent >= this.progressIntervalMs) {
          lastSent = t;
          // Stored too (as often as published), so a client polling the operation sees it while it runs.
          void this.enqueue(rec.id, () => this.store.operations.update(rec.id, { progress: p, updatedAt: new Date(t).toISOString() }));
          this.events.publish({ type: 'operation', action: 'progress', id: rec.id, projectId, attributes: { kind, target, progress: p } });
        }
      },
    };
    const finished = (async () => {
      try {
        const result = await work(handle);
        return await this.finish(rec, { status: 'succeeded', result: result ?? null, progress: latest });
      } catch (e) {
        const err = toNimbusError(e);
        log.warn('operation failed', { id: rec.id, kind, target, code: err.code, error: logMessage(err) });
        // the project's members read the operation: the words any caller may see (an agent's address, a host path are in the log)
        return await this.finish(rec, { status: 'failed', error: { code: err.code, message: messageFor(err, false) }, progress: latest });
      }
    })();
    this.done.set(rec.id, finished);
    // finished never rejects (finish logs a failed write)
    void finished.finally(() => {
      this.writes.delete(rec.id);
      setTimeout(() => this.done.delete(rec.id), 60_000).unref();
    });
    // the work runs now whatever happens here: a failed read answers with the record as inserted
    const stored = await this.readAfterWrites(rec.id).catch((e: unknown) => {
      log.warn('reading a started operation failed', { id: rec.id, error: String(e) });
      return undefined;
    });
    return stored ?? rec;
  }

  /** The outcome, written after every progress write; a failed write is logged and the outcome still returned (a restart fails the stored one). */
  private async finish(rec: OperationRecord, patch: Partial<OperationRecord>): Promise<OperationRecord> {
    let out: OperationRecord = { ...rec, ...patch, updatedAt: new Date().toISOString() };
    await this.enqueue(rec.id, async () => {
      out = await this.store.operations.update(rec.id, { ...patch, updatedAt: out.updatedAt });
    });
    this.events.publish({
      type: 'operation', action: out.status, id: rec.id, projectId: out.projectId,
      attributes: { kind: out.kind, target: out.target, ...(out.error ? { error: out.error } : {}) },
    });
    return out;
  }

  /** The stored record once the writes queued so far are done (a read never sees less than was reported before it). */
  private async readAfterWrites(id: string): Promise<OperationRecord | undefined> {
    await this.writes.get(id);
    return this.store.operations.get(id);
  }

  async get(id: string): Promise<OperationRecord> {
    const op = await this.readAfterWrites(id);
    if (!op) throw new NotFound(`no such operation: ${id}`);
    return op;
  }

  /** The newest first: at most `limit` (default 100), of one kind when asked, of some projects only when asked. */
  list(opts: { kind?: string; limit?: number; projectIds?: readonly string[] } = {}): Promise<OperationRecord[]> {
    return this.store.operations.list(opts.limit, { ...(opts.kind !== undefined ? { kind: opts.kind } : {}), ...(opts.projectIds !== undefined ? { projectIds: opts.projectIds } : {}) });
  }

  /**
   * Resolves when the operation ends or timeoutMs passes (returns the current record either
   * way), wherever it runs: this replica's work, or an event for it (relayed from the replica
   * running it) wakes the wait, and the store, re-read then and every waitPollMs, decides.
   */
  async wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<OperationRecord> {
    let wake: (() => void) | undefined;
    // listening before the first read: an end published between the read and the wait is not missed
    const off = this.events.on((e) => {
      if (e.type === 'operation' && e.id === id && TERMINAL.has(e.action)) wake?.();
    });
    const onAbort = () => wake?.();
    signal?.addEventListener('abort', onAbort);
    const deadline = Date.now() + timeoutMs;
    try {
      let op = await this.get(id);
      while (!TERMINAL.has(op.status) && !signal?.aborted) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          this.done.get(id) ?? new Promise<never>(() => undefined),
          new Promise<void>((r) => {
            wake = r;
            timer = setTimeout(r, Math.min(left, this.waitPollMs));
          }),
        ]);
        clearTimeout(timer);
        wake = undefined;
        op = await this.get(id);
      }
      return op;
    } finally {
      off();
      signal?.removeEventListener('abort', onAbort);
    }
  }
}
