/**
 * Carries out the ledger's reclaim plans: when a victim's grace period runs
 * out, its instance is stopped (containers; VMs will be saved) and its quota
 * released, which lets the ledger complete the lender's pending admission.
 * One timer, armed for the earliest deadline; nothing polls while idle.
 */
import { logger } from '../../core/log.js';
import type { QuotaService } from './quota-service.js';

const log = logger('quota.reclaim');
/** After a failed release, the due evictions are retried this much later. */
const RETRY_MS = 5000;

export class Reclaimer {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private stopped = false;

  constructor(
    private readonly quota: QuotaService,
    /** Stop (or save) the instance; it must not restart by policy. */
    private readonly evict: (instanceId: string, action: 'stop' | 'save') => Promise<void>,
  ) {}

  /** Re-arm for the earliest eviction deadline (call after a reclaim is planned, and at start). */
  kick(notBefore = 0): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const next = this.quota.ledger.evictions()[0];
    if (!next) return;
    // run() catches everything it can meet: nothing is left to reject
    this.timer = setTimeout(() => void this.run(), Math.max(notBefore, next.deadline - Date.now()));
  }

  private async run(): Promise<void> {
    this.timer = undefined;
    if (this.running) return;
    this.running = true;
    let failed = false;
    try {
      try {
        // another replica may have evicted, released or cancelled meanwhile: act on the stored ledger
        await this.quota.refresh();
      } catch (e) {
        log.warn('refreshing the quota ledger before evicting failed; using what this process holds', { error: e });
      }
      for (const v of this.quota.ledger.dueEvictions(Date.now())) {
        try {
          await this.evict(v.instance, v.action);
        } catch (e) {
          log.warn('evicting an instance failed; releasing its quota anyway', { instance: v.instance, error: e });
        }
        // The instance may have gone meanwhile (removed by its owner): the ledger released it then.
        try {
          await this.quota.release(v.instance, `reclaimed by ${v.operation}`);
        } catch (e) {
          // the ledger is as before (the write failed): the next run retries this eviction
          log.warn('releasing an evicted instance\'s quota failed; retrying', { instance: v.instance, operation: v.operation, error: e });
          failed = true;
          continue;
        }
        log.info('instance evicted for a reclaim', { instance: v.instance, operation: v.operation, action: v.action });
      }
    } finally {
      this.running = false;
      this.kick(failed ? RETRY_MS : 0); // a store that failed is not hammered
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
