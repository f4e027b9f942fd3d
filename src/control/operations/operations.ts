/**
 * Long work runs as an Operation resource (202 + id): its progress and outcome
 * are stored, published as events, and can be waited on.
 */
import { newId } from '../../core/ids.js';
import { NotFound, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';

const log = logger('operations');
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

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

  constructor(private readonly store: Store, private readonly events: EventBus) {}

  /** Reconcile: operations that were running when the daemon died are failed, not left dangling. */
  async failInterrupted(): Promise<number> {
    let n = 0;
    for (const op of await this.store.operations.list(1000)) {
      if (!TERMINAL.has(op.status)) {
        await this.store.operations.update(op.id, {
          status: 'failed',
          error: { code: 'Unavailable', message: 'nimbusd restarted while this operation was running' },
          updatedAt: new Date().toISOString(),
        });
        n++;
      }
    }
    return n;
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
      createdAt: now, updatedAt: now,
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
        log.warn('operation failed', { id: rec.id, kind, target, code: err.code, error: err.message });
        return await this.finish(rec, { status: 'failed', error: { code: err.code, message: err.message }, progress: latest });
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

  list(): Promise<OperationRecord[]> {
    return this.store.operations.list();
  }

  /** Resolves when the operation ends or timeoutMs passes (returns the current record either way). */
  async wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<OperationRecord> {
    const op = await this.get(id);
    if (TERMINAL.has(op.status)) return op;
    const pending = this.done.get(id);
    if (pending === undefined) return op; // ended long ago (or before a restart): the record is all there is
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((r) => {
      timer = setTimeout(r, timeoutMs);
      signal?.addEventListener('abort', () => r());
    });
    await Promise.race([pending, timeout]);
    clearTimeout(timer);
    return this.get(id);
  }
}
