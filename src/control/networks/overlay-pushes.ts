/**
 * When spanning networks' peers are pushed again (overlay.ts does the push): after endpoints
 * appear, and when an instance is destroyed, moves, is renamed or its record goes without an
 * event. Endpoints go with their instance's record (no call reaches the network service): its
 * destroy event is when peers are told; a move changes its host. (Creates push from the
 * leases, before the instance starts.)
 */
import type { Store } from '../../store/store.js';
import type { NetworkRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import { withDeadline } from '../compute/deadline.js';
import { logger } from '../../core/log.js';
import { spansHosts, type NetworkOverlay } from './overlay.js';

const log = logger('networks');
/** How long an instance's create waits for its network's overlay push (a host that does not answer is mended later). */
const OVERLAY_PUSH_MS = 5_000;
/** A second push after endpoints appeared: a create that failed after its lease publishes nothing. */
const OVERLAY_FOLLOW_UP_MS = 30_000;

export class OverlayPushes {
  constructor(
    private readonly store: Store,
    private readonly overlay: Pick<NetworkOverlay, 'networksOf' | 'sync'>,
    events: Pick<EventBus, 'on'>,
  ) {
    events.on((e) => {
      if ((e.type === 'container' || e.type === 'vm') && (e.action === 'destroy' || e.action === 'migrate')) {
        void this.changedFor(e.id, e.action === 'migrate').catch((x: unknown) => log.warn('updating overlays after an instance change', { id: e.id, error: String(x) }));
      }
    });
  }

  /** An instance's record went without a destroy event (a create that failed after its lease): its peers are withdrawn now, not at the follow-up push. */
  endpointsGone(instanceId: string): void {
    void this.changedFor(instanceId, false).catch((x: unknown) => log.warn('updating overlays after a failed create', { id: instanceId, error: String(x) }));
  }

  /** An instance's record moved to another host (a VM arrived there): its peers learn at once, not when the source has let go. */
  endpointsMoved(instanceId: string): void {
    void this.changedFor(instanceId, true).catch((x: unknown) => log.warn('updating overlays after a move', { id: instanceId, error: String(x) }));
  }

  /** The networks an instance was on (seen by the overlay; with its leases when it still has them) get their peers pushed again. */
  async changedFor(instanceId: string, readLeases: boolean): Promise<void> {
    const leased = readLeases ? (await this.store.networks.leases({ instanceId })).map((l) => l.networkId) : [];
    const ids = new Set([...leased, ...this.overlay.networksOf(instanceId)]);
    await Promise.all([...ids].map((id) => this.overlay.sync(id)));
  }

  /** After endpoints appeared on networks: peers pushed before the instance starts (bounded: a host that does not answer is mended later). */
  async afterEndpoints(networks: readonly NetworkRecord[]): Promise<void> {
    const spanning = networks.filter(spansHosts);
    if (!spanning.length) return;
    await withDeadline(Promise.all(spanning.map((n) => this.overlay.sync(n.id, OVERLAY_FOLLOW_UP_MS))), OVERLAY_PUSH_MS, 'pushing overlay peers').catch((e: unknown) => log.warn('overlay push still running', { error: String(e) }));
  }
}
