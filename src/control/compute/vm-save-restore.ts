/**
 * A VM's whole state (RAM, devices, vCPUs) to disk and back: save ends QEMU and leaves the VM
 * saved, restore runs it again where its guest was, each also as an Operation (its time grows
 * with guest memory). A saved VM may be a template (vm-create.ts, createVmFromTemplate): while
 * VMs made from it exist, its saved state and disk stay as they are (assertNotTemplate).
 */
import { Conflict } from '../../core/errors.js';
import type { VmHostState } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord, VmRecord } from '../../store/records.js';
import type { OperationService } from '../operations/operations.js';
import type { HostAgents } from './hosts.js';
import { assertVmTransition } from './vm-state.js';

/** What saving and restoring a VM needs of the VM service. */
export interface VmSaveRestoreDeps {
  store: Store;
  agents: HostAgents;
  operations: Pick<OperationService, 'start'>;
  /** A VM by id or name. */
  get(idOrName: string): Promise<VmRecord>;
  /** Its record now (NotFound when it is gone). */
  current(id: string): Promise<VmRecord>;
  /** The VM's lifecycle lock. */
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /** Its quota charge taken again if a reclaim released it (QuotaExceeded when there is no room now). */
  readmit(v: VmRecord): Promise<void>;
  /** Records it running with the host's state, and publishes `action`. */
  running(id: string, state: VmHostState, action: string, attributes?: Record<string, unknown>): Promise<VmRecord>;
  publish(v: VmRecord, action: string, attributes?: Record<string, unknown>): void;
}

/** The whole VM (RAM, devices, vCPUs) to disk; QEMU ends; the VM is saved. */
export async function saveVm(deps: VmSaveRestoreDeps, idOrName: string): Promise<{ vm: VmRecord; bytes: number; ms: number }> {
  const v = await deps.get(idOrName);
  return deps.locked(v.id, async () => {
    const cur = await deps.current(v.id);
    assertVmTransition(cur.name, cur.status, 'saved', 'save');
    const r = await deps.agents.get(cur.agent).saveVm(v.id);
    const next = await deps.store.vms.update(v.id, { status: 'saved', pid: null, savedAt: new Date().toISOString() });
    deps.publish(next, 'save', { bytes: r.bytes, ms: r.ms });
    return { vm: next, bytes: r.bytes, ms: r.ms };
  });
}

/**
 * Save as an Operation (its time grows with guest memory). A VM that cannot be
 * saved now is refused here, not as a failed operation.
 */
export async function startSave(deps: VmSaveRestoreDeps, idOrName: string): Promise<OperationRecord> {
  const v = await deps.get(idOrName);
  assertVmTransition(v.name, v.status, 'saved', 'save');
  return deps.operations.start('vm.save', v.id, v.projectId, async () => {
    const r = await saveVm(deps, v.id);
    return { id: v.id, name: v.name, status: r.vm.status, bytes: r.bytes, ms: r.ms };
  });
}

export async function startRestore(deps: VmSaveRestoreDeps, idOrName: string): Promise<OperationRecord> {
  const v = await deps.get(idOrName);
  if (v.status !== 'saved') throw new Conflict(`cannot restore VM ${v.name}: it is ${v.status}, not saved`);
  await assertNotTemplate(deps, v, 'restore');
  return deps.operations.start('vm.restore', v.id, v.projectId, async () => {
    const r = await restoreVm(deps, v.id);
    return { id: v.id, name: v.name, status: r.vm.status, ms: r.ms };
  });
}

/**
 * A template's saved state and frozen disk back the VMs made from it: restoring
 * it would move its disk on under them, removing it would pull it away.
 */
export async function assertNotTemplate(deps: Pick<VmSaveRestoreDeps, 'store'>, v: VmRecord, verb: string): Promise<void> {
  const children = (await deps.store.vms.list()).filter((o) => o.config.template === v.id);
  if (children.length) throw new Conflict(`cannot ${verb} VM ${v.name}: it is the template of ${children.map((c) => c.name).join(', ')}; remove those first`);
}

/** A saved VM back, its guest continuing where it was. */
export async function restoreVm(deps: VmSaveRestoreDeps, idOrName: string): Promise<{ vm: VmRecord; ms: number }> {
  const v = await deps.get(idOrName);
  return deps.locked(v.id, async () => {
    const cur = await deps.current(v.id);
    if (cur.status !== 'saved') throw new Conflict(`cannot restore VM ${cur.name}: it is ${cur.status}, not saved`);
    await assertNotTemplate(deps, cur, 'restore');
    await deps.readmit(cur);
    const r = await deps.agents.get(cur.agent).restoreVm(v.id);
    const next = await deps.running(v.id, await deps.agents.get(cur.agent).vmState(v.id), 'restore', { ms: r.ms });
    return { vm: next, ms: r.ms };
  });
}
