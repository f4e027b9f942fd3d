/**
 * Quota events: the ledger's audit entries (admit, reject, release, loan, return, reclaim-…,
 * limits, pool, project) published on the event bus with their project and actor.
 *
 * The quota service writes its entries inside its own store transactions, in the async context
 * of the call that caused them (a request's, whose actor the edge set, or the reclaimer's:
 * "system"). The store it is given (daemon: QuotaService.open(withQuotaEvents(store, …))) is the
 * real one with two members wrapped: a transaction collects the entries appended inside it, and
 * they are handed on once it committed, in the caller's context; a rolled-back transaction's
 * entries are dropped. So an event is never published for an entry the store does not hold. Each
 * replica publishes the entries it wrote; the bus relays them to the others.
 */
import { ContextSlot } from '../../core/async-context.js';
import { logger } from '../../core/log.js';
import type { QuotaAuditRow, Store } from '../../store/store.js';
import type { EventBus } from '../events/event-bus.js';

const log = logger('quota.events');

/** An audit entry as the ledger stores it (src/control/quota/state.ts AuditEntry), read as far as events need. */
interface AuditEntryJson {
  seq: number;
  kind: string;
  project: string;
  instance?: string;
  operation?: string;
  reason?: string;
  data?: Record<string, unknown>;
}

/** The store with the quota service's committed audit entries handed to `committed` (in the writer's async context). */
export function withQuotaEvents(store: Store, committed: (rows: readonly QuotaAuditRow[]) => void): Store {
  const pending = new ContextSlot<QuotaAuditRow[]>('quota audit rows');
  const hand = (rows: readonly QuotaAuditRow[]) => {
    try {
      if (rows.length) committed(rows);
    } catch (e) {
      log.warn('publishing quota events failed', { error: String(e) });
    }
  };
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === 'transaction') {
        return async <T>(fn: () => Promise<T>): Promise<T> => {
          if (pending.get()) return target.transaction(fn); // nested: the outer one hands them on
          const rows: QuotaAuditRow[] = [];
          const out = await pending.run(rows, () => target.transaction(fn));
          hand(rows);
          return out;
        };
      }
      if (prop === 'appendQuotaAudit') {
        return async (rows: readonly QuotaAuditRow[]): Promise<void> => {
          await target.appendQuotaAudit(rows);
          const collecting = pending.get();
          if (collecting) collecting.push(...rows);
          else hand(rows); // outside a transaction: committed already
        };
      }
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
}

/** Publishes committed audit rows as `quota` events (action: the entry's kind; id: its instance, else its project). */
export function quotaEventPublisher(events: EventBus, counted?: (kind: string) => void): (rows: readonly QuotaAuditRow[]) => void {
  return (rows) => {
    for (const row of rows) {
      const e = JSON.parse(row.json) as AuditEntryJson;
      counted?.(e.kind);
      events.publish({
        type: 'quota', action: e.kind, id: e.instance ?? e.project, projectId: e.project,
        attributes: {
          seq: e.seq, ...(e.reason ? { reason: e.reason } : {}), ...(e.instance ? { instance: e.instance } : {}),
          ...(e.operation ? { operation: e.operation } : {}), ...(e.data ? { data: e.data } : {}),
        },
      });
    }
  };
}
