/**
 * VMs as the control plane sees them: the record in the store, the state
 * machine (vm-state.ts), quota admission and release, events, and calls to
 * the host's agent (which owns the QEMU driver; nothing here imports it).
 * This file is the lifecycle (start, stop, kill, pause, save, restore, resize,
 * remove, exits) and the lookups; the other parts are their own modules, given
 * what they need of it (parts()): creation (vm-create.ts), save and restore
 * (vm-save-restore.ts), moves to another host (vm-move.ts) and the reconcile
 * at daemon start (vm-reconcile.ts).
 */
import { Conflict, InvalidArgument, NotFound, hasCode, toNimbusError, type NimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { InstanceStats, LogRecord } from '../../agent/drivers/instance-driver.js';
import type { Agent, VmHostState } from '../../agent/agent.js';
import type { MigrationReport } from '../../agent/migration.js';
import type { VmInspect } from '../../agent/drivers/vm/vm-driver.js';
import type { AgentDirectory } from '../agents/agent-directory.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord, VmConfig, VmRecord, VmStatus } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { NetworkService } from '../networks/network-service.js';
import type { DiskImageService } from '../images/disk-image-service.js';
import type { OperationService } from '../operations/operations.js';
import type { Scheduler } from '../scheduler/types.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { Readable } from 'node:stream';
import { AsyncQueue } from '../../core/async-queue.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { InFlight } from '../../core/in-flight.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { signalNumber } from '../../core/signals.js';
import type { HostAgents } from './hosts.js';
import { assertVmTransition, isLive } from './vm-state.js';
import { createVm, createVmFromTemplate, type BootVolumes, type CreateVmInput, type VmCreateDeps } from './vm-create.js';
import { migrateVm, rebuildVm, startMigrate, type VmMoveDeps } from './vm-move.js';
import type { MigrationTls } from '../../agent/drivers/vm/migration-tls.js';
import { reconcileVms, type VmReconcileDeps, type VmReconcileReport } from './vm-reconcile.js';
import { assertNotTemplate, restoreVm, saveVm, startRestore, startSave, type VmSaveRestoreDeps } from './vm-save-restore.js';

/** The hosts VMs are placed on, with the exits of every one (the agent directory; with --no-agent, the registered agents). */
export type VmHosts = HostAgents & Pick<AgentDirectory, 'onVmExit'>;

const log = logger('compute-vm');
const EVERYWHERE: ProjectScope = { canRead: () => true };

/** Seconds between the ACPI power button and SIGKILL when the request names none. */
export const DEFAULT_VM_STOP_TIMEOUT = 30;

export class VmService {
  private readonly locks = new KeyedLock();
  /** Graceful stops in flight, which a SIGKILL may cut short (see stop). */
  private readonly stopping = new InFlight<VmRecord>();

  constructor(
    private readonly store: Store,
    private readonly agents: VmHosts,
    private readonly events: EventBus,
    private readonly quota: QuotaService,
    private readonly operations: OperationService,
    private readonly scheduler: Scheduler,
    private readonly networks?: NetworkService,
    private readonly disks?: DiskImageService,
    /** Whether this process records VM exits (only the leading replica does; default always). */
    handlesExits: () => boolean = () => true,
  ) {
    agents.onVmExit((agent, id) => {
      if (handlesExits()) void this.handleExit(id, agent).catch((e: unknown) => log.warn('recording a VM exit failed', { id, error: String(e) }));
    });
  }

  /** As listings and inspect show it: "unknown" while its host does not answer (the stored status is kept). */
  view<T extends VmRecord>(v: T): Omit<T, 'status'> & { status: VmStatus | 'unknown' } {
    return !this.agents.has(v.agent) || this.agents.isDown?.(v.agent) ? { ...v, status: 'unknown' } : v;
  }

  /** The agent a VM lives on (Unavailable-typed errors come from the transport when it is down). */
  private on(v: Pick<VmRecord, 'agent'>): Agent {
    return this.agents.get(v.agent);
  }

  /** Serialises lifecycle calls per VM so concurrent requests cannot interleave. */
  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  /** The VM's lock, for changes made elsewhere to its record (block volume attachments). */
  lockedVm<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locked(id, fn);
  }

  /** Block volumes (set by the daemon): VMs booted from a volume. */
  bootVolumes?: BootVolumes;
  /** Mints a live migration's own certificate for an agent (the agent CA: docs/security.md); absent: agents use their own. */
  migrationCredentials?: (agent: string) => Promise<MigrationTls>;

  private publish(v: VmRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'vm', action, id: v.id, projectId: v.projectId, attributes: { name: v.name, ...attributes } });
  }

  /** Generated names ("project/name") chosen by creates whose record is not written yet. */
  private readonly generatedNames = new Set<string>();

  /** What the modules doing the service's other parts need of it (creation, moves, save and restore, reconcile). */
  private parts(): VmCreateDeps & VmMoveDeps & VmReconcileDeps & VmSaveRestoreDeps {
    return {
      store: this.store,
      agents: this.agents,
      quota: this.quota,
      scheduler: this.scheduler,
      operations: this.operations,
      networks: this.networks,
      disks: this.disks,
      bootVolumes: this.bootVolumes,
      migrationCredentials: this.migrationCredentials,
      generatedNames: this.generatedNames,
      get: (idOrName) => this.get(idOrName),
      current: (id) => this.current(id),
      locked: (id, fn) => this.locked(id, fn),
      readmit: (v) => this.readmit(v),
      running: (id, state, action, attributes) => this.running(id, state, action, attributes),
      recordStop: (id, state) => this.recordStop(id, state),
      publish: (v, action, attributes) => this.publish(v, action, attributes),
    };
  }

  /**
   * By full id, name or unique id prefix, looked up in `scope` (by default everywhere: internal
   * callers pass ids; the API edge passes the caller's scope and hands handlers the full id).
   * Names are unique per project, so other projects' VMs neither match nor make it ambiguous.
   */
  async get(idOrName: string, scope: ProjectScope = EVERYWHERE): Promise<VmRecord> {
    if (!idOrName) throw new InvalidArgument('a VM id or name is required');
    const exact = await this.store.vms.get(idOrName);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await this.store.vms.named(idOrName)).filter((v) => inScope(scope, v.projectId));
    if (named.length) return pickInScope(named, scope, (v) => v.id, 'vm', idOrName);
    // A prefix shared by VMs of two projects is ambiguous: no default project wins it.
    const prefixScope: ProjectScope = 'projectId' in scope ? scope : { canRead: scope.canRead };
    return pickInScope(await this.store.vms.withIdPrefix(idOrName), prefixScope, (v) => v.id, 'vm', idOrName);
  }

  /**
   * The record plus what the host knows (accelerator, QEMU argv, pinning, sockets); `hostError`
   * is why that is missing, whole: the caller shows it as its viewer may read it (messageFor).
   */
  async inspect(idOrName: string): Promise<VmRecord & { host: VmInspect | null; hostError?: NimbusError }> {
    const v = await this.get(idOrName);
    let hostError: NimbusError | undefined;
    const host = await this.on(v).inspectVm(v.id).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) return null;
      // an agent that is down does not hide the record: the host's view is just missing
      if (hasCode(e, 'Unavailable')) {
        hostError = toNimbusError(e);
        return null;
      }
      throw e;
    });
    return { ...v, host, ...(hostError ? { hostError } : {}) };
  }

  list(opts: { all?: boolean; projectId?: string } = {}): Promise<VmRecord[]> {
    return this.store.vms.list({
      ...(opts.projectId ? { projectId: opts.projectId } : {}),
      ...(opts.all ? {} : { status: ['running', 'paused'] as VmStatus[] }),
    });
  }

  /** A new VM (vm-create.ts): its boot files are images of the image service, or host paths when `hostPaths` (system administrators). */
  create(asked: CreateVmInput, projectId: string, opts: { hostPaths?: boolean } = {}): Promise<VmRecord> {
    return createVm(this.parts(), asked, projectId, opts);
  }

  /** A new VM from a saved one (RunD's microVM templates); it is saved, and restore starts it. */
  createFromTemplate(templateIdOrName: string, name: string | undefined, projectId: string): Promise<VmRecord> {
    return createVmFromTemplate(this.parts(), templateIdOrName, name, projectId);
  }

  /**
   * Resize where QEMU allows it (the driver decides: while running, memory through the balloon
   * and vCPUs added by hot-plug; anything while stopped). The new size is charged first, so a
   * refusal changes nothing; a running one stays charged its boot memory (the guest can take it back).
   */
  async resize(idOrName: string, want: { cpus?: number; memoryMiB?: number }): Promise<VmRecord & { balloonMiB?: number }> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (want.cpus === undefined && want.memoryMiB === undefined) throw new InvalidArgument('resize needs --cpus or --memory');
      // a running VM's memory moves within its boot size (it stays charged that); its vCPUs are charged as plugged
      const next = { cpus: want.cpus ?? cur.config.cpus, memoryMiB: isLive(cur.status) ? cur.config.memoryMiB : want.memoryMiB ?? cur.config.memoryMiB };
      const old = { cpus: cur.config.cpus, memoryMiB: cur.config.memoryMiB };
      const recharge = this.quota.holds(v.id) && (next.cpus !== old.cpus || next.memoryMiB !== old.memoryMiB);
      if (recharge) {
        await this.quota.release(v.id, 'resize');
        try {
          await this.quota.admitVm(v.id, cur.projectId, next);
        } catch (e) {
          await this.quota.admitVm(v.id, cur.projectId, old);
          throw e;
        }
      }
      let r: Awaited<ReturnType<Agent['resizeVm']>>;
      try {
        r = await this.on(cur).resizeVm(v.id, want);
      } catch (e) {
        if (recharge) {
          await this.quota.release(v.id, 'resize failed');
          await this.quota.admitVm(v.id, cur.projectId, old);
        }
        throw e;
      }
      const config: VmConfig = { ...cur.config, cpus: r.cpus, memoryMiB: r.memoryMiB };
      if (config.maxCpus !== undefined && config.maxCpus < r.cpus) config.maxCpus = r.cpus;
      const updated = await this.store.vms.update(v.id, { config });
      this.publish(updated, 'resize', { cpus: r.cpus, memoryMiB: r.memoryMiB, ...(r.balloonMiB !== undefined ? { balloonMiB: r.balloonMiB } : {}) });
      return { ...updated, ...(r.balloonMiB !== undefined ? { balloonMiB: r.balloonMiB } : {}) };
    });
  }

  private async current(id: string): Promise<VmRecord> {
    const v = await this.store.vms.get(id);
    if (!v) throw new NotFound(`no such vm: ${id}`);
    return v;
  }

  private async running(id: string, state: VmHostState, action: string, attributes: Record<string, unknown> = {}): Promise<VmRecord> {
    const v = await this.store.vms.update(id, {
      status: 'running', pid: state.pid ?? null, startedAt: state.startedAt ?? new Date().toISOString(),
      finishedAt: null, exitCode: null,
    });
    this.publish(v, action, { pid: v.pid, ...attributes });
    return v;
  }

  async start(idOrName: string): Promise<VmRecord> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (isLive(cur.status)) return cur;
      if (cur.status === 'saved') throw new Conflict(`VM ${cur.name} is saved: restore it (nimbus vm restore ${cur.name})`);
      assertVmTransition(cur.name, cur.status, 'running', 'start');
      await this.readmit(cur);
      return this.running(v.id, await this.on(cur).startVm(v.id), 'start');
    });
  }

  /**
   * A VM whose charge a reclaim released (it was saved or stopped for a lender) is
   * admitted again before it runs; QuotaExceeded when its project has no room now.
   */
  private async readmit(v: VmRecord): Promise<void> {
    if (!this.quota.shared && this.quota.holds(v.id)) return;
    await this.quota.admitVmUnlessHeld(v.id, v.projectId, { cpus: v.config.cpus, memoryMiB: v.config.memoryMiB });
  }

  /**
   * ACPI power button, then SIGKILL after the timeout. A graceful stop waits up to its timeout
   * for the guest (at most MAX_STOP_TIMEOUT_SEC) while it holds the VM's lock; it is the one
   * lifecycle call another may cut short: a SIGKILL (kill, or remove with force) goes to QEMU at
   * once, and the stop's wait then sees QEMU end and records it.
   */
  async stop(idOrName: string, timeoutSec = DEFAULT_VM_STOP_TIMEOUT): Promise<VmRecord> {
    if (!Number.isInteger(timeoutSec) || timeoutSec < 0 || timeoutSec > MAX_STOP_TIMEOUT_SEC) {
      throw new InvalidArgument(`stop timeout must be 0 to ${MAX_STOP_TIMEOUT_SEC} seconds, got ${timeoutSec}`);
    }
    const v = await this.get(idOrName);
    const done = this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (!isLive(cur.status)) return cur;
      return this.recordStop(v.id, await this.on(cur).stopVm(v.id, timeoutSec));
    });
    return this.stopping.track(v.id, done);
  }

  /** Ends a graceful stop in flight at once (SIGKILL to QEMU) and waits for it to record the exit. */
  private async preemptStop(v: VmRecord): Promise<boolean> {
    const inFlight = this.stopping.get(v.id);
    if (inFlight === undefined) return false;
    await this.on(v).killVm(v.id, 'SIGKILL').catch((e: unknown) => log.warn('SIGKILL to a stopping VM failed', { id: v.id, error: String(e) }));
    await inFlight.catch(() => undefined);
    return true;
  }

  async kill(idOrName: string, signal = 'SIGKILL'): Promise<VmRecord> {
    const v = await this.get(idOrName);
    if (signalNumber(signal) === 9) {
      if (await this.preemptStop(v)) {
        const after = await this.current(v.id);
        this.publish(after, 'kill', { signal });
        return after;
      }
    }
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (!isLive(cur.status)) throw new Conflict(`cannot kill VM ${cur.name}: it is ${cur.status}`);
      await this.on(cur).killVm(v.id, signal);
      this.publish(cur, 'kill', { signal });
      const state = await this.on(cur).vmState(v.id);
      return state.lifecycle === 'stopped' ? this.recordStop(v.id, state) : this.current(v.id);
    });
  }

  pause(idOrName: string): Promise<VmRecord> {
    return this.simpleTransition(idOrName, 'paused', 'pause', (v) => this.on(v).pauseVm(v.id));
  }

  async unpause(idOrName: string): Promise<VmRecord> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (cur.status !== 'paused') throw new Conflict(`cannot unpause VM ${cur.name}: it is ${cur.status}`);
      await this.on(cur).unpauseVm(v.id);
      const next = await this.store.vms.update(v.id, { status: 'running' });
      this.publish(next, 'unpause');
      return next;
    });
  }

  private async simpleTransition(idOrName: string, to: VmStatus, verb: string, call: (v: VmRecord) => Promise<void>): Promise<VmRecord> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (cur.status === to) return cur;
      assertVmTransition(cur.name, cur.status, to, verb);
      await call(cur);
      const next = await this.store.vms.update(v.id, { status: to });
      this.publish(next, verb);
      return next;
    });
  }

  /** The whole VM (RAM, devices, vCPUs) to disk; QEMU ends; the VM is saved (vm-save-restore.ts). */
  save(idOrName: string): Promise<{ vm: VmRecord; bytes: number; ms: number }> {
    return saveVm(this.parts(), idOrName);
  }

  /** Save as an Operation; a VM that cannot be saved now is refused here, not as a failed operation. */
  startSave(idOrName: string): Promise<OperationRecord> {
    return startSave(this.parts(), idOrName);
  }

  /** Restore as an Operation; a VM that cannot be restored now is refused here. */
  startRestore(idOrName: string): Promise<OperationRecord> {
    return startRestore(this.parts(), idOrName);
  }

  /** A saved VM back, its guest continuing where it was. */
  restore(idOrName: string): Promise<{ vm: VmRecord; ms: number }> {
    return restoreVm(this.parts(), idOrName);
  }

  async remove(idOrName: string, force: boolean): Promise<void> {
    const v = await this.get(idOrName);
    if (force) await this.preemptStop(v);
    return this.locked(v.id, async () => {
      const cur = await this.store.vms.get(v.id);
      if (!cur) return;
      if (isLive(cur.status) && !force) throw new Conflict(`VM ${cur.name} is ${cur.status}: stop it first or use --force`);
      await assertNotTemplate(this.parts(), cur, 'remove');
      await this.store.vms.update(v.id, { status: 'removing' });
      try {
        await this.on(cur).removeVm(v.id); // kills a live QEMU first
      } catch (e) {
        if (!hasCode(e, 'NotFound')) {
          await this.store.vms.update(v.id, { status: cur.status });
          throw e;
        }
      }
      await this.store.vms.delete(v.id);
      await this.quota.release(v.id, 'vm removed');
      await this.scheduler.release(v.id).catch((e: unknown) => log.warn('releasing a placement claim failed', { id: v.id, error: String(e) }));
      this.publish(cur, 'destroy');
    });
  }

  /**
   * The serial console: `input` goes to the guest, its output comes back as
   * frames of base64 bytes until the VM ends or the caller goes (signal).
   * The input ending does not close the line: a script may send and then read.
   */
  async console(idOrName: string, input: Readable, signal: AbortSignal): Promise<AsyncIterable<{ data: string }>> {
    const v = await this.get(idOrName);
    if (!isLive(v.status)) throw new Conflict(`VM ${v.name} is ${v.status}; the console needs it running`);
    const line = await this.on(v).openVmConsole(v.id);
    const out = new AsyncQueue<{ data: string }>();
    line.on('data', (b: Buffer) => out.push({ data: b.toString('base64') }));
    line.once('close', () => out.end());
    line.once('error', () => out.end());
    input.pipe(line, { end: false });
    const hangUp = () => {
      input.unpipe(line);
      line.destroy();
      out.end();
    };
    if (signal.aborted) hangUp();
    else signal.addEventListener('abort', hangUp, { once: true });
    this.publish(v, 'console');
    return out;
  }

  async logs(idOrName: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): Promise<AsyncIterable<LogRecord>> {
    const v = await this.get(idOrName);
    return this.on(v).vmLogs(v.id, opts);
  }

  private async recordStop(id: string, state: VmHostState): Promise<VmRecord> {
    const cur = await this.current(id);
    if (cur.status === 'stopped') return cur;
    const next = await this.store.vms.update(id, {
      status: 'stopped', pid: null,
      exitCode: state.exitCode ?? cur.exitCode ?? 255,
      finishedAt: state.finishedAt ?? new Date().toISOString(),
    });
    this.publish(next, 'die', { exitCode: next.exitCode });
    return next;
  }

  /** The agent saw QEMU end (guest power-off, crash, kill from outside): record it. */
  async handleExit(id: string, from?: string): Promise<void> {
    const cur = await this.store.vms.get(id);
    if (!cur || !isLive(cur.status)) return;
    // a host the VM is not recorded on (the source of a migration, whose QEMU quits once the
    // guest runs at the destination) reports its own copy's end, not the VM's
    if (from !== undefined && from !== cur.agent) return;
    await this.locked(id, async () => {
      const now = await this.store.vms.get(id);
      if (!now || !isLive(now.status) || (from !== undefined && from !== now.agent)) return;
      const state = await this.on(now).vmState(id);
      if (state.lifecycle === 'stopped') await this.recordStop(id, state);
    });
  }

  /** CPU (QEMU's own time), memory and its NICs' counters while it runs (the agent's vmStats). */
  async stats(idOrName: string): Promise<InstanceStats & { id: string; name: string }> {
    const v = await this.get(idOrName);
    if (!isLive(v.status)) throw new Conflict(`VM ${v.name} is ${v.status}; no stats`);
    return { id: v.id, name: v.name, ...(await this.on(v).vmStats(v.id)) };
  }

  /**
   * Live migration to another agent, as an Operation (vm-move.ts). Checked before the operation
   * starts, so a VM that cannot move now is a plain error, not a failed operation.
   */
  startMigrate(idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<OperationRecord> {
    return startMigrate(this.parts(), idOrName, to, opts);
  }

  /** The five steps of a live migration across agents (see docs/vms.md); on failure the guest goes on at the source. */
  migrate(idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<MigrationReport & { from: string; to: string }> {
    return migrateVm(this.parts(), idOrName, to, opts);
  }

  /** An --ha VM of a host that does not answer, made again on `to` from its images (healing.ts; vm-move.ts). */
  rebuild(id: string, to: string): Promise<VmRecord> {
    return rebuildVm(this.parts(), id, to);
  }

  /** Daemon start, before serving: the store and the hosts brought into agreement (vm-reconcile.ts). */
  reconcile(): Promise<VmReconcileReport> {
    return reconcileVms(this.parts());
  }

  /** VMs recorded on an agent (the directory's listing; a removal is refused while there are any). */
  async countOn(agent: string): Promise<number> {
    return (await this.store.vms.list()).filter((v) => v.agent === agent).length;
  }
}