/**
 * Fencing a host (docs/overlay.md, "Healing"): every container and VM it holds whose record is
 * gone or names another host is a stale copy (left by a move, a migration or a rebuild while the
 * host did not answer) and is destroyed there. Two callers: healing, on a host that came back or
 * whose agent registered again; and forgetting a host (DELETE /agents/{name}, /hosts/{name}),
 * so that nothing is left running there that no record manages.
 */
import { Conflict, hasCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../../agent/agent.js';
import type { EventBus } from '../events/event-bus.js';
import type { VmService } from './vm-service.js';
import type { HealDeps } from './healing.js';
import { withDeadline } from './deadline.js';
import type { Services } from '../services.js';

const log = logger('compute-heal');

/** A host being fenced answers its container and VM lists within this. */
const LIST_DEADLINE_MS = 10_000;

export interface FenceDeps extends Pick<HealDeps, 'store' | 'locked' | 'bounded'> {
  /** True while a move, a migration or an evacuation is in flight anywhere: its copies are not stale. */
  fenceWaits?(): Promise<boolean>;
  /** Absent: VMs are not fenced. */
  vms?: Pick<VmService, 'lockedVm'>;
}

export interface FenceResult {
  /** Every stale copy destroyed (false: the host did not answer, a removal failed, or a move is in flight). */
  done: boolean;
  /** Copies destroyed by this pass. */
  destroyed: number;
}

const ignoreNotFound = (e: unknown): void => {
  if (!hasCode(e, 'NotFound')) throw e;
};

export class HostFence {
  constructor(
    private readonly deps: FenceDeps,
    private readonly events: Pick<EventBus, 'publish'>,
  ) {}

  /** Destroys what the host holds that the store puts elsewhere or nowhere. */
  async fence(host: string, agent: Agent): Promise<FenceResult> {
    if (this.deps.fenceWaits && (await this.deps.fenceWaits())) return { done: false, destroyed: 0 };
    let held: string[];
    try {
      held = await withDeadline(agent.listContainers(), LIST_DEADLINE_MS, `host ${host}'s container list`);
    } catch (e) {
      log.warn('fencing a host: its container list failed', { host, error: String(e) });
      return { done: false, destroyed: 0 };
    }
    const stale: string[] = [];
    let failed = false;
    await Promise.all(held.map(async (id) => {
      // under the container's lock: a move or rebuild in this process is over before it is judged
      const gone = await this.deps.locked(id, async () => {
        const c = await this.deps.store.containers.get(id);
        if (c && c.host === host) return false;
        // killed first, as rm -f does: a removal of a running container would stop it gracefully
        await this.deps.bounded(id, 'fencing kill', agent.killContainer(id, 'SIGKILL')).catch(() => undefined);
        // gone already (another fence of the same copy, the healer's and a forget's): what was asked
        await this.deps.bounded(id, 'fencing removal', agent.removeContainer(id)).catch(ignoreNotFound);
        return true;
      }).catch((e: unknown) => {
        failed = true;
        log.warn('fencing: removing a stale copy failed', { id, host, error: String(e) });
        return false;
      });
      if (gone) stale.push(id);
    }));
    const vms = this.deps.vms ? await this.fenceVms(host, agent, this.deps.vms) : { stale: [], failed: false };
    if (vms.failed) failed = true;
    const destroyed = stale.length + vms.stale.length;
    if (destroyed) {
      log.warn('fenced a host: its copies of instances that live elsewhere now (or nowhere) destroyed', { host, containers: stale, vms: vms.stale });
      this.events.publish({ type: 'host', action: 'fence', id: host, attributes: { containers: stale, vms: vms.stale } });
    }
    return { done: !failed, destroyed };
  }

  /** The host's VMs whose records are gone or name another host, killed and removed; failed: its list or a removal failed. */
  private async fenceVms(host: string, agent: Agent, vms: Pick<VmService, 'lockedVm'>): Promise<{ stale: string[]; failed: boolean }> {
    let held: string[];
    try {
      held = await withDeadline(agent.listVms(), LIST_DEADLINE_MS, `host ${host}'s VM list`);
    } catch (e) {
      log.warn('fencing a host: its VM list failed', { host, error: String(e) });
      return { stale: [], failed: true };
    }
    const stale: string[] = [];
    let failed = false;
    for (const id of held) {
      // under the VM's lock, as containers are judged under theirs: a migration to this host holds
      // it from before the incoming copy exists until the record names this host (the fence's
      // check for operations in flight is made once, before the containers; a move begun since
      // would otherwise see its incoming copy destroyed as stale)
      await vms.lockedVm(id, async () => {
        const v = await this.deps.store.vms.get(id);
        if (v && v.agent === host) return;
        await withDeadline(agent.killVm(id, 'SIGKILL'), LIST_DEADLINE_MS, `fencing VM ${id}`).catch(() => undefined);
        await withDeadline(agent.removeVm(id), LIST_DEADLINE_MS, `fencing VM ${id}`).catch(ignoreNotFound);
        stale.push(id);
      }).catch((e: unknown) => {
        failed = true;
        log.warn('fencing: removing a stale VM failed', { id, host, error: String(e) });
      });
    }
    return { stale, failed };
  }
}

/** Conflict while instances are recorded on the host, naming how many (its records must not be orphaned). */
async function refuseWhileInstances(services: Pick<Services, 'vms' | 'store'>, name: string): Promise<void> {
  const vms = await services.vms.countOn(name);
  const containers = (await services.store.containers.list()).filter((c) => c.host === name).length;
  if (vms || containers) {
    throw new Conflict(`host ${name} has ${containers} container(s) and ${vms} VM(s) recorded on it; remove or move them first`, { host: name, containers, vms });
  }
}

/**
 * DELETE /agents/{name} and /hosts/{name}: refused while instances are recorded on the host; a
 * host that answers is fenced first, so that no stale copy a move or a migration left there (its
 * agent killed before it ended it) stays running with no record to manage it. A host that does
 * not answer is forgotten as it is: an agent that registers again is fenced then.
 */
export async function forgetHost(services: Pick<Services, 'agents' | 'hosts' | 'vms' | 'store' | 'fence'>, name: string): Promise<void> {
  if (name === services.agents.localName) throw new Conflict('the embedded agent cannot be removed');
  await refuseWhileInstances(services, name);
  if (services.fence && !services.hosts.isDown?.(name) && services.hosts.has(name)) {
    const fenced = await services.fence.fence(name, services.hosts.get(name));
    if (!fenced.done) {
      throw new Conflict(`host ${name} still holds copies of instances that live elsewhere now, and they could not all be removed yet (a move or migration in flight, or the host did not answer); try again in a moment`, { host: name });
    }
  }
  await services.agents.remove(name);
}
