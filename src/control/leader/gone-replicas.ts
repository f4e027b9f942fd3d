/**
 * What a dead replica half-made, settled by the leader (docs/replicas.md). A create runs
 * admission (a ledger row naming the replica), then the claim, then the record, then the host;
 * a replica killed in between leaves the first steps behind:
 *
 * - a ledger charge without a record, admitted by a replica that is gone: released;
 * - a claim without a record and without a ledger charge (claims follow admissions and go before
 *   them, so no live create has one): released;
 * - a record still 'created' that its host does not have, admitted by a replica that is gone:
 *   undone as a failed create.
 *
 * Reads are ordered so a live replica's create racing the sweep is never taken for an orphan:
 * claims are read before charges, charges before records.
 */
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { Scheduler } from '../scheduler/types.js';
import type { ReplicaRegistry } from './replicas.js';

const log = logger('leader');

export interface GoneReplicaWork {
  chargesReleased: number;
  claimsReleased: number;
  recordsUndone: number;
}

export interface SweepDeps {
  store: Store;
  quota: QuotaService;
  scheduler: Pick<Scheduler, 'release'>;
  /** Who is alive (the registry's view; a test may give its own). */
  registry: Pick<ReplicaRegistry, 'list'>;
  /** This process (alive whatever its row says). */
  self: string;
  /** Undo a record its host never got (ContainerService.settleUncreated). */
  settleUncreated: (id: string) => Promise<boolean>;
}

export async function settleGoneReplicas(d: SweepDeps): Promise<GoneReplicaWork> {
  const alive = new Set((await d.registry.list()).filter((r) => r.live).map((r) => r.id));
  alive.add(d.self);
  const claims = await d.store.placement.consumers();
  const gone = new Set(await d.quota.admittedByGoneReplicas(alive));
  const charged = new Set(await d.store.quotaInstanceIds());
  const [containers, vms, networks, volumes] = [await d.store.containers.list(), await d.store.vms.list(), await d.store.networks.list(), await d.store.volumes.list()];
  const records = new Set([...containers, ...vms, ...networks, ...volumes, ...(await d.store.volumes.listSnapshots())].map((r) => r.id));
  const out: GoneReplicaWork = { chargesReleased: 0, claimsReleased: 0, recordsUndone: 0 };

  for (const c of containers) {
    if (c.status === 'created' && gone.has(c.id) && (await d.settleUncreated(c.id))) out.recordsUndone++;
  }
  for (const id of gone) {
    if (records.has(id)) continue;
    await d.quota.release(id, 'create abandoned: its control-plane replica died');
    out.chargesReleased++;
  }
  for (const id of claims) {
    if (records.has(id) || charged.has(id)) continue;
    await d.scheduler.release(id);
    out.claimsReleased++;
  }
  if (out.chargesReleased || out.claimsReleased || out.recordsUndone) log.warn('settled what dead replicas left half-made', { ...out });
  return out;
}
