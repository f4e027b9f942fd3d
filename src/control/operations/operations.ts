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
  progress(p: Record<string, unknown>): void;
}

export class OperationService {
  private readonly done = new Map<string, Promise<OperationRecord>>();
  /** Progress is published at most this often per operation, and stored at the end. */
  private readonly progressIntervalMs = 100;

  constructor(private readonly store: Store, private readonly events: EventBus) {}

  /** Reconcile: operations that were running when the daemon died are failed, not left dangling. */
  failInterrupted(): number {
    let n = 0;
    for (const op of this.store.operations.list(1000)) {
      if (!TERMINAL.has(op.status)) {
        this.store.operations.update(op.id, {
          status: 'failed',
          error: { code: 'Unavailable', message: 'nimbusd restarted while this operation was running' },
          updatedAt: new Date().toISOString(),
        });
        n++;
      }
    }
    return n;
  }

  start<T>(kind: string, target: string, projectId: string, work: (op: OperationHandle) => Promise<T>): OperationRecord {
    const now = new Date().toISOString();
    const rec: OperationRecord = {
      id: newId(), kind, projectId, status: 'running', target, progress: {}, result: null, error: null,
      createdAt: now, updatedAt: now,
    };
    this.store.operations.insert(rec);
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
          this.store.operations.update(rec.id, { progress: p, updatedAt: new Date(t).toISOString() });
          this.events.publish({ type: 'operation', action: 'progress', id: rec.id, projectId, attributes: { kind, target, progress: p } });
        }
      },
    };
    const finished = (async () => {
      try {
        const result = await work(handle);
        return this.finish(rec.id, { status: 'succeeded', result: result ?? null, progress: latest });
      } catch (e) {
        const err = toNimbusError(e);
        log.warn('operation failed', { id: rec.id, kind, target, code: err.code, error: err.message });
        return this.finish(rec.id, { status: 'failed', error: { code: err.code, message: err.message }, progress: latest });
      }
    })();
    this.done.set(rec.id, finished);
    void finished.finally(() => setTimeout(() => this.done.delete(rec.id), 60_000).unref());
    // As stored now: with the progress the work reported before its first await.
    return this.store.operations.get(rec.id) ?? rec;
  }

  private finish(id: string, patch: Partial<OperationRecord>): OperationRecord {
    const rec = this.store.operations.update(id, { ...patch, updatedAt: new Date().toISOString() });
    this.events.publish({
      type: 'operation', action: rec.status, id, projectId: rec.projectId,
      attributes: { kind: rec.kind, target: rec.target, ...(rec.error ? { error: rec.error } : {}) },
    });
    return rec;
  }

  get(id: string): OperationRecord {
    const op = this.store.operations.get(id);
    if (!op) throw new NotFound(`no such operation: ${id}`);
    return op;
  }

  list(): OperationRecord[] {
    return this.store.operations.list();
  }

  /** Resolves when the operation ends or timeoutMs passes (returns the current record either way). */
  async wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<OperationRecord> {
    const op = this.get(id);
    if (TERMINAL.has(op.status)) return op;
    const pending = this.done.get(id);
    if (!pending) return op;
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
