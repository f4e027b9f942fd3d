/**
 * PLACEHOLDER until the scheduler lands (filters, weighers, claims): places on the pinned
 * host, else the first host that is up and enabled. Claims nothing.
 */
import { ResourceExhausted } from '../../core/errors.js';
import type { Store } from '../../store/store.js';
import type { Explanation, HostSource, Placement, PlacementRequest, Scheduler } from './types.js';

export interface SchedulerOptions {
  /** Spread (default) or pack. */
  strategy?: 'spread' | 'pack';
}

export class FilterScheduler implements Scheduler {
  constructor(
    readonly store: Store,
    private readonly hosts: HostSource,
    readonly options: SchedulerOptions = {},
  ) {}

  async place(req: PlacementRequest): Promise<Placement> {
    const e = await this.explain(req);
    if (!e.chosen) throw new ResourceExhausted('no host can take this instance', { hosts: e.hosts });
    return { host: e.chosen };
  }

  async explain(req: PlacementRequest): Promise<Explanation> {
    const hosts = await this.hosts.candidates();
    const ok = hosts.filter((h) => (req.host ? h.name === req.host : h.state === 'up' && !h.disabled));
    return { chosen: ok[0]?.name, hosts: hosts.map((h) => ({ host: h.name })) };
  }

  async release(_consumerId: string): Promise<void> {}
  async moveClaim(_consumerId: string, _toHost: string): Promise<void> {}
}
