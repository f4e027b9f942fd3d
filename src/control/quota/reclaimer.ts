/**
 * Carries out the ledger's reclaim plans: when a victim's grace period runs
 * out, its instance is stopped (containers; VMs will be saved) and its quota
 * released, which lets the ledger complete the lender's pending admission.
 * One timer, armed for the earliest deadline; nothing polls while idle.
 */
import { logger } from '../../core/log.js';
import type { QuotaService } from './quota-service.js';

const log = logger('quota.reclaim');

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
  kick(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const next = this.quota.ledger.evictions()[0];
    if (!next) return;
    this.timer = setTimeout(() => void this.run(), Math.max(0, next.deadline - Date.now()));
  }

  private async run(): Promise<void> {
    this.timer = undefined;
    if (this.running) return;
    this.running = true;
    try {
      for (const v of this.quota.ledger.dueEvictions(Date.now())) {
        try {
          await this.evict(v.instance, v.action);
        } catch (e) {
          log.warn('evicting an instance failed; releasing its quota anyway', { instance: v.instance, error: e });
        }
        // The instance may have gone meanwhile (removed by its owner): the ledger released it then.
        this.quota.release(v.instance, `reclaimed by ${v.operation}`);
        log.info('instance evicted for a reclaim', { instance: v.instance, operation: v.operation, action: v.action });
      }
    } finally {
      this.running = false;
      this.kick();
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
