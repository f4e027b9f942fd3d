/**
 * `nimbus host evacuate HOST` (docs/overlay.md, "Evacuating a host"): the host is disabled (no
 * new placements), then each of its running VMs live-migrates and each of its containers moves,
 * live where it can (CRIU) and cold otherwise (container-move.ts), to the host the scheduler
 * picks among the others, one at a time (a
 * move is disk and network heavy; two at once would only share them). An Operation
 * (host.evacuate) whose progress lists every instance with its state; instances that cannot
 * leave (a stopped VM: VMs move live only; a container refused by moveRefusal) are skipped with
 * the reason, and a failed move is reported and the others go on. The operation fails, naming
 * them, when any instance is still on the host at the end; it stays disabled either way.
 * `--dry-run` (evacuationPlan) shows what it would do, changing nothing.
 */
import { Conflict, NotFound, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord, VmRecord } from '../../store/records.js';
import type { OperationService } from '../operations/operations.js';
import type { Scheduler } from '../scheduler/types.js';
import type { HostAgents } from './hosts.js';
import type { ContainerService } from './container-service.js';
import type { VmService } from './vm-service.js';
import { moveRefusal } from './container-move.js';

const log = logger('compute-evacuate');

export interface EvacuatedInstance {
  kind: 'container' | 'vm';
  id: string;
  name: string;
  state: 'pending' | 'moving' | 'moved' | 'skipped' | 'failed';
  to?: string;
  /** How it moves (or would): a VM live; a container live (CRIU) or cold. */
  mode?: 'live' | 'cold';
  reason?: string;
}

export interface EvacuateDeps {
  store: Store;
  hosts: HostAgents;
  scheduler: Pick<Scheduler, 'explain'>;
  operations: Pick<OperationService, 'start'>;
  containers: Pick<ContainerService, 'moveForEvacuation' | 'planMove'>;
  vms: Pick<VmService, 'migrate'>;
  /** Whose the operation is (the default project: a host is nobody's). */
  projectId: string;
  /** nimbus host disable. */
  disable(host: string, o: { reason: string; by: string }): Promise<unknown>;
}

/**
 * The best host other than `from` for a VM (the scheduler's filters and weights; an evacuated host
 * is disabled by then, a dead one down); Conflict naming each other host's refusal when none fits.
 */
export async function vmDestination(deps: { scheduler: Pick<Scheduler, 'explain'>; hosts: Pick<HostAgents, 'has'> }, v: VmRecord, from: string): Promise<string> {
  const e = await deps.scheduler.explain({ consumerId: v.id, projectId: v.projectId, kind: 'vm', vcpus: v.config.cpus, memoryBytes: v.config.memoryMiB * 1024 * 1024, diskBytes: 0 });
  const best = e.hosts.filter((h) => h.host !== from && !h.rejectedBy && deps.hosts.has(h.host)).sort((a, b) => (b.weight ?? 0) - (a.weight ?? 0))[0];
  if (!best) {
    const why = e.hosts.filter((h) => h.host !== from).map((h) => `${h.host}: ${h.rejectedBy ? `${h.rejectedBy.filter}: ${h.rejectedBy.reason}` : 'unknown'}`);
    throw new Conflict(`no other host can take VM ${v.name}: ${why.join('; ') || 'there is no other host'}`);
  }
  return best.host;
}

/** Why an evacuation leaves a VM where it is (undefined: it moves): VMs move live only. */
function vmStays(v: VmRecord): string | undefined {
  return v.status === 'running' ? undefined : `the VM is ${v.status}: VMs move live only, while they run`;
}

export async function startEvacuate(deps: EvacuateDeps, host: string, by: string): Promise<OperationRecord> {
  if (!deps.hosts.has(host)) throw new NotFound(`no such host: ${host}`, { host });
  return deps.operations.start('host.evacuate', host, deps.projectId, (op) => evacuate(deps, host, by, (p) => op.progress(p)));
}

/** Every instance off the host, one at a time; the list of what happened to each. */
export async function evacuate(deps: EvacuateDeps, host: string, by: string, progress: (p: Record<string, unknown>) => void = () => undefined): Promise<{ host: string; instances: EvacuatedInstance[] }> {
  await deps.disable(host, { reason: 'evacuating', by });
  const vms = (await deps.store.vms.list()).filter((v) => v.agent === host);
  const containers = await deps.store.containers.onHost(host);
  const list: EvacuatedInstance[] = [
    ...vms.map((v): EvacuatedInstance => ({ kind: 'vm', id: v.id, name: v.name, state: 'pending' })),
    ...containers.map((c): EvacuatedInstance => ({ kind: 'container', id: c.id, name: c.name, state: 'pending' })),
  ];
  const report = () => progress({ host, instances: list.map((i) => ({ ...i })) });
  report();
  for (const item of list) {
    try {
      if (item.kind === 'vm') {
        const v = vms.find((x) => x.id === item.id)!;
        const stays = vmStays(v);
        if (stays) {
          Object.assign(item, { state: 'skipped', reason: stays });
          continue;
        }
        item.to = await vmDestination(deps, v, host);
        item.mode = 'live';
        item.state = 'moving';
        report();
        await deps.vms.migrate(v.id, item.to);
      } else {
        const c = await deps.store.containers.get(item.id);
        if (!c || c.host !== host) {
          Object.assign(item, { state: 'skipped', reason: 'no longer on the host' });
          continue;
        }
        const refusal = await moveRefusal(deps, c);
        if (refusal) {
          Object.assign(item, { state: 'skipped', reason: refusal.message });
          continue;
        }
        item.state = 'moving';
        report();
        const moved = await deps.containers.moveForEvacuation(c.id);
        Object.assign(item, { to: moved.report.to, mode: moved.live ? 'live' : 'cold', ...(moved.notLive ? { reason: `cold: ${moved.notLive}` } : {}) });
      }
      item.state = 'moved';
    } catch (e) {
      Object.assign(item, { state: 'failed', reason: toNimbusError(e).message });
      log.warn('an instance could not leave an evacuated host', { host, kind: item.kind, id: item.id, error: item.reason });
    } finally {
      report();
    }
  }
  const left = list.filter((i) => i.state !== 'moved');
  if (left.length) {
    throw new Conflict(`${left.length} of ${list.length} instance${list.length > 1 ? 's' : ''} did not leave host ${host}: ${left.map((i) => `${i.kind} ${i.name} (${i.state}: ${i.reason})`).join('; ')}`, { host, instances: list });
  }
  log.info('host evacuated', { host, instances: list.length });
  return { host, instances: list };
}

/**
 * What an evacuation would do, changing nothing (`nimbus host evacuate HOST --dry-run`): each
 * instance with the host the scheduler would pick now and how it would move, or why it would be
 * skipped. The host is not disabled, so a real evacuation may pick differently.
 */
export async function evacuationPlan(deps: Pick<EvacuateDeps, 'store' | 'hosts' | 'scheduler' | 'containers'>, host: string): Promise<{ host: string; instances: EvacuatedInstance[] }> {
  if (!deps.hosts.has(host)) throw new NotFound(`no such host: ${host}`, { host });
  const out: EvacuatedInstance[] = [];
  for (const v of (await deps.store.vms.list()).filter((x) => x.agent === host)) {
    const item: EvacuatedInstance = { kind: 'vm', id: v.id, name: v.name, state: 'pending' };
    const stays = vmStays(v);
    if (stays) Object.assign(item, { state: 'skipped', reason: stays });
    else {
      try {
        Object.assign(item, { to: await vmDestination(deps, v, host), mode: 'live' });
      } catch (e) {
        Object.assign(item, { state: 'skipped', reason: toNimbusError(e).message });
      }
    }
    out.push(item);
  }
  for (const c of await deps.store.containers.onHost(host)) {
    const item: EvacuatedInstance = { kind: 'container', id: c.id, name: c.name, state: 'pending' };
    const refusal = await moveRefusal(deps, c);
    if (refusal) Object.assign(item, { state: 'skipped', reason: refusal.message });
    else {
      try {
        const plan = await deps.containers.planMove(c.id);
        Object.assign(item, { to: plan.to, mode: plan.live ? 'live' : 'cold', ...(plan.notLive ? { reason: `cold: ${plan.notLive}` } : {}) });
      } catch (e) {
        Object.assign(item, { state: 'skipped', reason: toNimbusError(e).message });
      }
    }
    out.push(item);
  }
  return { host, instances: out };
}
