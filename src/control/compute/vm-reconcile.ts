/**
 * VMs at daemon start (docs/vms.md, "Daemon start"): the store and the hosts brought into
 * agreement. A record follows a VM a migration left on another host, takes its host's state, or
 * is recorded stopped when its host state is gone; removals in flight finish; VMs no record
 * knows are removed from their hosts.
 */
import { logger } from '../../core/log.js';
import type { VmHostState } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { VmRecord } from '../../store/records.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { HostAgents } from './hosts.js';

const log = logger('compute-vm');

/** What reconciling VMs needs of the VM service. */
export interface VmReconcileDeps {
  store: Store;
  agents: HostAgents;
  quota: Pick<QuotaService, 'release'>;
  /** Records the VM stopped with its host's exit status, and publishes its death. */
  recordStop(id: string, state: VmHostState): Promise<VmRecord>;
}

/** What a reconcile found and did; agentsDown are the hosts that did not answer (their VMs left as recorded). */
export interface VmReconcileReport {
  running: number;
  stopped: number;
  lost: number;
  orphansRemoved: number;
  qemuKilled: number;
  agentsDown: string[];
}

/**
 * Daemon start, before serving: each agent's driver reconciles its own state first
 * (orphan QEMU killed, record-less directories removed, live VMs watched again), then
 * the store and the hosts are brought into agreement. VMs keep running across a daemon
 * restart and are simply re-attached. An agent that does not answer is left alone: its
 * VMs keep their records until it is back (they are not "lost" because we cannot see them).
 */
export async function reconcileVms(deps: VmReconcileDeps): Promise<VmReconcileReport> {
  const hosts = new Map<string, Set<string>>();
  const agentsDown: string[] = [];
  let qemuKilled = 0;
  for (const name of deps.agents.names()) {
    try {
      const agent = deps.agents.get(name);
      qemuKilled += (await agent.reconcileVms()).killed.length;
      hosts.set(name, new Set(await agent.listVms()));
    } catch (e) {
      log.warn('agent unreachable at reconcile; its VMs are left as recorded', { agent: name, error: String(e) });
      agentsDown.push(name);
    }
  }
  let running = 0, stopped = 0, lost = 0, orphansRemoved = 0;
  for (const v of await deps.store.vms.list()) {
    let onHost = hosts.get(v.agent);
    if (!onHost) {
      if (!deps.agents.has(v.agent) && v.status !== 'stopped') {
        // its agent was removed from the directory: nothing can run it any more
        await deps.store.vms.update(v.id, { status: 'stopped', pid: null, exitCode: v.exitCode ?? 255, finishedAt: v.finishedAt ?? new Date().toISOString() });
        lost++;
      }
      continue;
    }
    if (onHost.has(v.id)) {
      // on two agents: a migration the control plane did not see finish. The guest runs where it
      // arrived if the recorded copy is a source QEMU left in postmigrate (its guest went away).
      const other = [...hosts].find(([name, ids]) => name !== v.agent && ids.has(v.id))?.[0];
      if (other && (await runState(deps, v.agent, v.id)) === 'postmigrate' && (await runState(deps, other, v.id)) === 'running') {
        log.warn('VM on two agents; following it to where it runs', { id: v.id, recorded: v.agent, running: other });
        v.agent = other; // the recorded agent still lists it: its copy is removed below, as an orphan
        await deps.store.vms.update(v.id, { agent: other });
        onHost = hosts.get(other)!;
      }
    }
    if (!onHost.has(v.id)) {
      // a migration whose last step the control plane did not see: the VM is where it arrived
      const elsewhere = [...hosts].find(([, ids]) => ids.has(v.id))?.[0];
      if (elsewhere && v.status !== 'removing') {
        log.warn('VM found on another agent than recorded; following it', { id: v.id, recorded: v.agent, found: elsewhere });
        v.agent = elsewhere;
        await deps.store.vms.update(v.id, { agent: elsewhere });
        onHost = hosts.get(elsewhere)!;
      }
    }
    const agent = deps.agents.get(v.agent);
    if (v.status === 'removing') {
      await agent.removeVm(v.id).catch(() => undefined);
      await deps.store.vms.delete(v.id);
      await deps.quota.release(v.id, 'vm removed');
      continue;
    }
    if (!onHost.has(v.id)) {
      // its host state is gone: nothing can run or restore it any more
      if (v.status !== 'stopped') {
        await deps.store.vms.update(v.id, { status: 'stopped', pid: null, exitCode: v.exitCode ?? 255, finishedAt: v.finishedAt ?? new Date().toISOString() });
        lost++;
      }
      continue;
    }
    onHost.delete(v.id);
    let state: VmHostState;
    try {
      state = await agent.vmState(v.id);
    } catch (e) {
      // one unreadable VM must not keep the daemon from serving the others
      log.warn('cannot read a VM\'s host state; leaving its record as it was', { id: v.id, error: String(e) });
      continue;
    }
    if (state.lifecycle === 'running' || state.lifecycle === 'paused') {
      await deps.store.vms.update(v.id, { status: state.lifecycle, pid: state.pid ?? v.pid });
      running++;
    } else if (state.lifecycle === 'stopped' && v.status !== 'stopped') {
      await deps.recordStop(v.id, state);
      stopped++;
    } else if (state.lifecycle === 'saved' && v.status !== 'saved') {
      await deps.store.vms.update(v.id, { status: 'saved', pid: null, savedAt: v.savedAt ?? new Date().toISOString() });
    }
  }
  for (const [name, orphans] of hosts) {
    for (const orphan of orphans) {
      log.warn('removing a VM the store does not know', { id: orphan, agent: name });
      await deps.agents.get(name).removeVm(orphan).catch((e: unknown) => log.warn('orphan VM removal failed', { id: orphan, error: String(e) }));
      orphansRemoved++;
    }
  }
  return { running, stopped, lost, orphansRemoved, qemuKilled, agentsDown };
}

/** QEMU's run state of a VM on an agent, or undefined when it cannot say. */
async function runState(deps: Pick<VmReconcileDeps, 'agents'>, agent: string, id: string): Promise<string | undefined> {
  return (await deps.agents.get(agent).inspectVm(id).catch(() => undefined))?.runState;
}
