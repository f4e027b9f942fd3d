/**
 * The store's containers and their hosts brought into agreement: at daemon start (every host, one
 * that does not answer left alone), and for a create a dead control-plane replica left half made.
 */
import { logger } from '../../core/log.js';
import type { RuntimeState } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord } from '../../store/records.js';
import type { QuotaService } from '../quota/quota-service.js';
import { HOST_RECONCILE_MS, type ContainerAgents } from './container-agents.js';
import type { ContainerExits } from './container-exits.js';
import { withDeadline } from './deadline.js';
import type { HostAgents } from './hosts.js';

const log = logger('compute');

export interface ReconcileDeps {
  store: Store;
  hosts: HostAgents;
  quota: Pick<QuotaService, 'release'>;
  agents: Pick<ContainerAgents, 'on' | 'answered' | 'didNotAnswer'>;
  exits: Pick<ContainerExits, 'recordExit' | 'maybeRestart'>;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
  /** The scheduler's claim given back (a failure logged). */
  releaseClaim(id: string): Promise<void>;
  /** rm -f, for an exited --rm container. */
  remove(id: string): Promise<void>;
}

export interface HostReconcile { running: number; exited: number; orphansRemoved: number; lost: number }

/**
 * Daemon start: each host brings the store and itself into agreement (reconcileHost), the
 * embedded one first and at once, the others in parallel within HOST_RECONCILE_MS. A host that
 * does not answer is left alone: its containers keep their records and show "unknown".
 */
export async function reconcile(deps: ReconcileDeps): Promise<HostReconcile & { unreachableHosts: string[] }> {
  const total = { running: 0, exited: 0, orphansRemoved: 0, lost: 0, unreachableHosts: [] as string[] };
  const add = (r: HostReconcile) => {
    total.running += r.running;
    total.exited += r.exited;
    total.orphansRemoved += r.orphansRemoved;
    total.lost += r.lost;
  };
  const local = deps.hosts.localName;
  if (local !== undefined) add(await reconcileHost(deps, local));
  await Promise.all(deps.hosts.names().filter((h) => h !== local).map(async (host) => {
    try {
      add(await withDeadline(reconcileHost(deps, host), HOST_RECONCILE_MS, `reconciling the containers of host ${host}`));
    } catch (e) {
      deps.agents.didNotAnswer(host);
      total.unreachableHosts.push(host);
      log.warn('a host did not reconcile its containers; they keep their records', { host, error: String(e) });
    }
  }));
  // records naming a host no agent serves any more (removed while they lived): unknown, never guessed exited
  for (const c of await deps.store.containers.list()) {
    if (!deps.hosts.has(c.host) && !total.unreachableHosts.includes(c.host)) total.unreachableHosts.push(c.host);
  }
  return total;
}

/**
 * One host: containers it still runs stay running; those that exited meanwhile get their
 * exit code; those it lost are exited; state it has that the store does not know is removed.
 */
export async function reconcileHost(deps: ReconcileDeps, host: string): Promise<HostReconcile> {
  const { store, exits } = deps;
  const agent = deps.agents.on(host);
  const onHost = new Set(await agent.listContainers());
  deps.agents.answered(host);
  let running = 0, exited = 0, lost = 0, orphansRemoved = 0;
  for (const c of await store.containers.onHost(host)) {
    if (c.status === 'removing') {
      await agent.removeContainer(c.id).catch(() => undefined);
      await store.containers.delete(c.id);
      await deps.quota.release(c.id, 'container removed');
      await deps.releaseClaim(c.id);
      continue;
    }
    if (!onHost.has(c.id)) {
      if (c.status !== 'exited' && c.status !== 'created') {
        await store.containers.update(c.id, { status: 'exited', exitCode: c.exitCode ?? 255, pid: null, finishedAt: c.finishedAt ?? new Date().toISOString() });
        lost++;
      }
      continue;
    }
    onHost.delete(c.id);
    const state = await agent.containerState(c.id).catch(() => ({ status: 'unknown' }) as RuntimeState);
    if (state.status === 'running' || state.status === 'paused') {
      await store.containers.update(c.id, { status: state.status, pid: state.pid ?? c.pid });
      running++;
    } else if (state.status === 'stopped' && c.status !== 'exited') {
      const rec = await exits.recordExit(c.id, state);
      exited++;
      if (rec.config.autoRemove) await deps.remove(c.id).catch(() => undefined);
      else await exits.maybeRestart(rec);
    } else if (state.status === 'stopped' && c.status === 'exited' && c.config.restart.name === 'always' && !c.stoppedByUser) {
      await exits.maybeRestart(c);
    }
  }
  for (const orphan of onHost) {
    log.warn('removing orphaned container state', { id: orphan, host });
    await agent.removeContainer(orphan).catch((e: unknown) => log.warn('orphan removal failed', { id: orphan, host, error: String(e) }));
    orphansRemoved++;
  }
  return { running, exited, orphansRemoved, lost };
}

/**
 * A create whose replica died between writing the record and the host making the container:
 * the record is still 'created' and its host does not know it. Undone as a failed create is
 * (record, quota, claim). True when it was; a container its host has, or one that moved on, is
 * left alone.
 */
export async function settleUncreated(deps: ReconcileDeps, id: string): Promise<boolean> {
  return deps.locked(id, async () => {
    const c = await deps.store.containers.get(id);
    if (!c || c.status !== 'created') return false;
    const onHost = await withDeadline(deps.agents.on(c.host).listContainers(), HOST_RECONCILE_MS, `host ${c.host}'s container list`);
    if (onHost.includes(id)) return false;
    await deps.store.containers.delete(id);
    await deps.releaseClaim(id);
    await deps.quota.release(id, 'create abandoned: its control-plane replica died');
    deps.publish(c, 'destroy', { reason: 'create abandoned' });
    log.warn('a dead replica\'s half-made container removed', { id, name: c.name, host: c.host });
    return true;
  });
}
