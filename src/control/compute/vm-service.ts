/**
 * VMs as the control plane sees them: the record in the store, the state
 * machine (vm-state.ts), quota admission and release, events, and calls to
 * the host's agent (which owns the QEMU driver; nothing here imports it).
 */
import { Conflict, InvalidArgument, NotFound, PermissionDenied, hasCode } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { InstanceStats } from '../../agent/drivers/instance-driver.js';
import type { Agent, VmCreateRequest, VmHostState, VmImageKind, VmMigrationSpec } from '../../agent/agent.js';
import { migrateLive, type MigrationReport } from '../../agent/migration.js';
import type { AgentDirectory } from '../agents/agent-directory.js';
import type { HostAgents } from './hosts.js';

/** The hosts VMs are placed on, with the exits of every one (the agent directory; with --no-agent, the registered agents). */
export type VmHosts = HostAgents & Pick<AgentDirectory, 'onVmExit'>;
import type { VmInspect } from '../../agent/drivers/vm/vm-driver.js';
import type { LogRecord } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { DiskImageRecord, NetworkRecord, VmConfig, VmRecord, VmStatus } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { NetworkService } from '../networks/network-service.js';
import type { DiskImageService } from '../images/disk-image-service.js';
import type { OperationService } from '../operations/operations.js';
import type { OperationRecord } from '../../store/records.js';
import { assertVmTransition, isLive } from './vm-state.js';
import { generateName } from './names.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import { AsyncQueue } from '../../core/async-queue.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { InFlight } from '../../core/in-flight.js';
import { signalNumber } from '../../core/signals.js';
import { placementFields, withGroupResolved, type PlacementInput } from './hosts.js';
import type { Scheduler } from '../scheduler/types.js';
import type { Readable } from 'node:stream';
import { KeyedLock } from '../../core/keyed-lock.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import { spokenProtocol, tooOldForVolumeMigration } from '../../agent/remote/agent-protocol.js';

/** What VM creates need of block volumes (the volume service's; docs/volumes.md "Block volumes"). */
export interface BootVolumes {
  /** The project's block volume by name or id, checked attachable read-write (Conflict naming its holder otherwise). */
  forBoot(ref: string, projectId: string): Promise<VolumeRecord>;
}

const log = logger('compute-vm');
const EVERYWHERE: ProjectScope = { canRead: () => true };
/** Guest memory when the request names none. */
export const DEFAULT_VM_MEMORY_MIB = 256;
/**
 * VM ids are 128 bits (32 hex): the VM's QMP and console sockets live in a
 * directory named after it, and a unix socket path must fit in 108 bytes.
 */
const newVmId = (): string => newId().slice(0, 32);
/**
 * Why a VM cannot be rebuilt on another host from what the control plane holds (an --ha VM must
 * not need its host); undefined when it can: its boot files are images of the image service and
 * it has no block volume (a volume's data is on its host).
 */
export function vmRebuildRefusal(config: VmConfig): string | undefined {
  for (const [role, image] of [['disk', config.diskImage], ['kernel', config.kernelImage], ['initrd', config.initrdImage]] as const) {
    if (config[role] !== undefined && image === undefined) return `its ${role} is a host file (${config[role]}), which another host does not have`;
  }
  if (config.volumes?.length) return 'it has block volumes, whose data is on its host';
  return undefined;
}

/** Seconds between the ACPI power button and SIGKILL when the request names none. */
export const DEFAULT_VM_STOP_TIMEOUT = 30;

export interface CreateVmInput {
  name?: string;
  cpus?: number;
  /** Room to grow its vCPUs while it runs (hot-plug up to this many). */
  maxCpus?: number;
  memoryMiB?: number;
  /** A kernel image's name (image service), or, for system administrators, a host path. */
  kernel?: string;
  initrd?: string;
  append?: string;
  /** A host path for system administrators (everyone else names a disk image in `image`). */
  disk?: string;
  pin?: number[];
  /** Networks (names or ids, of the VM's project) for its virtio-net NICs: eth0, eth1, ... */
  networks?: string[];
  /** A disk image of the image service (instead of a host path in `disk`): the root disk is an overlay of it. */
  image?: string;
  /** Rebuilt elsewhere when its host dies while it runs (healing.ts); refused with host files or block volumes. */
  ha?: boolean;
  /** The host to run it on (administrators; --host, or its older name --agent); default: the scheduler's choice. */
  agent?: string;
  host?: string;
  zone?: string;
  constraints?: Record<string, string>;
  group?: string;
  /** A block volume of the project to boot from (attached read-write as the VM's boot disk; it outlives the VM). */
  bootVolume?: string;
}

/** Most a migration may stop the guest for (QEMU's default limit is 300 ms). */
const MAX_DOWNTIME_LIMIT_MS = 60_000;

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

  /** The agent a VM lives on (Unavailable-typed errors come from the transport when it is down). */
  /** As listings and inspect show it: "unknown" while its host does not answer (the stored status is kept). */
  view<T extends VmRecord>(v: T): Omit<T, 'status'> & { status: VmStatus | 'unknown' } {
    return !this.agents.has(v.agent) || this.agents.isDown?.(v.agent) ? { ...v, status: 'unknown' } : v;
  }

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

  private publish(v: VmRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'vm', action, id: v.id, projectId: v.projectId, attributes: { name: v.name, ...attributes } });
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

  /** The record plus what the host knows (accelerator, QEMU argv, pinning, sockets). */
  async inspect(idOrName: string): Promise<VmRecord & { host: VmInspect | null; hostError?: string }> {
    const v = await this.get(idOrName);
    let hostError: string | undefined;
    const host = await this.on(v).inspectVm(v.id).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) return null;
      // an agent that is down does not hide the record: the host's view is just missing
      if (hasCode(e, 'Unavailable')) {
        hostError = (e as Error).message;
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

  /**
   * Names are unique per project across containers and VMs (instances are one resource; the
   * store's instance_names holds to it when two creates race past this check).
   */
  private async checkName(name: string | undefined, projectId: string): Promise<{ name: string; release: () => void }> {
    const inStore = async (n: string) => (await this.store.vms.byName(projectId, n)) !== undefined || (await this.store.containers.byName(projectId, n)) !== undefined;
    if (name === undefined) {
      // a generated name is held until the record has it: creates of one burst must not draw the same one
      const generated = await generateName(async (n) => {
        const key = `${projectId}/${n}`;
        if (this.generatedNames.has(key) || (await inStore(n)) || this.generatedNames.has(key)) return true;
        this.generatedNames.add(key);
        return false;
      });
      return { name: generated, release: () => this.generatedNames.delete(`${projectId}/${generated}`) };
    }
    if (!isValidName(name)) throw new InvalidArgument(`invalid VM name "${name}": use letters, digits, '_', '.', '-' (max 128)`);
    if (await inStore(name)) throw new Conflict(`the name "${name}" is already in use by an instance`);
    return { name, release: () => undefined };
  }

  /** Generated names ("project/name") chosen by creates whose record is not written yet. */
  private readonly generatedNames = new Set<string>();

  /**
   * Kernels, initrds and base disks come from the image service (names of the project's images,
   * or its ancestors'); a host path (one starting with '/') only when `hostPaths` says the caller
   * is a system administrator, and then the agent still accepts only files in the directories the
   * operator allowed (docs/security.md).
   */
  async create(asked: CreateVmInput, projectId: string, opts: { hostPaths?: boolean } = {}): Promise<VmRecord> {
    if (asked.host !== undefined && asked.agent !== undefined && asked.host !== asked.agent) throw new InvalidArgument(`--host ${asked.host} and --agent ${asked.agent} name two hosts: --agent is --host's older name`);
    const pinned = asked.host ?? asked.agent;
    const placement: PlacementInput = await withGroupResolved(this.store, projectId, {
      ...(pinned !== undefined ? { host: pinned } : {}),
      ...(asked.zone !== undefined ? { zone: asked.zone } : {}),
      ...(asked.constraints ? { constraints: asked.constraints } : {}),
      ...(asked.group !== undefined ? { group: asked.group } : {}),
    });
    for (const role of ['kernel', 'initrd', 'disk'] as const) {
      if (asked[role]?.startsWith('/') && !opts.hostPaths) {
        throw new PermissionDenied(`${role}: host paths are for system administrators; import the file into the image service (nimbus image import-disk${role === 'disk' ? '' : ` --type ${role}`}) and name it`);
      }
    }
    if (asked.disk !== undefined && !asked.disk.startsWith('/')) throw new InvalidArgument('disk must be an absolute host path; name a disk image with --image');
    // images of the image service, resolved now; their paths are the chosen host's, known after placement
    const images: Pick<VmConfig, 'diskImage' | 'kernelImage' | 'initrdImage'> = {};
    const fromImages: Array<{ role: 'disk' | 'kernel' | 'initrd'; image: DiskImageRecord }> = [];
    const input = { ...asked };
    const fromImage = async (name: string, kind: VmImageKind): Promise<DiskImageRecord> => {
      if (!this.disks) throw new InvalidArgument('images for VMs are not available');
      return this.disks.resolve(name, projectId, { projectId }, kind);
    };
    if (asked.image !== undefined) {
      if (asked.disk !== undefined) throw new InvalidArgument('give a disk image (--image) or a host disk file (--disk), not both');
      const image = await fromImage(asked.image, 'disk');
      fromImages.push({ role: 'disk', image });
      images.diskImage = { name: image.name, digest: image.digest };
    }
    for (const role of ['kernel', 'initrd'] as const) {
      const v = asked[role];
      if (v === undefined || v.startsWith('/')) continue;
      const image = await fromImage(v, role);
      fromImages.push({ role, image });
      images[role === 'kernel' ? 'kernelImage' : 'initrdImage'] = { name: image.name, digest: image.digest };
      delete input[role];
    }
    const diskImage = images.diskImage;
    let bootVolume: VolumeRecord | undefined;
    if (asked.bootVolume !== undefined) {
      if (!this.bootVolumes) throw new InvalidArgument('block volumes are not available');
      if (asked.disk !== undefined || diskImage !== undefined) throw new InvalidArgument('give a boot volume (--boot-volume) or a disk (--image, --disk), not both');
      bootVolume = await this.bootVolumes.forBoot(asked.bootVolume, projectId);
      if (placement.host !== undefined && placement.host !== bootVolume.host) {
        throw new Conflict(`volume ${bootVolume.name} is on host ${bootVolume.host}: a VM booting from it runs there (volumes do not move between hosts)`, { volume: bootVolume.name, host: bootVolume.host });
      }
      placement.host = bootVolume.host;
    }
    const hasKernel = input.kernel !== undefined || images.kernelImage !== undefined;
    const hasDisk = input.disk !== undefined || diskImage !== undefined || bootVolume !== undefined;
    if (!hasKernel && !hasDisk) throw new InvalidArgument('a VM needs a kernel (with --kernel) or a disk image (with --image or --disk)');
    if (hasDisk && !hasKernel && (input.initrd || images.initrdImage || input.append)) {
      throw new InvalidArgument('initrd and append need a kernel');
    }
    const cpus = input.cpus ?? 1;
    if (input.maxCpus !== undefined && (!Number.isInteger(input.maxCpus) || input.maxCpus < cpus || input.maxCpus > 64)) {
      throw new InvalidArgument(`max cpus must be from the VM's vCPUs (${cpus}) to 64, got ${input.maxCpus}`);
    }
    const config: VmConfig = {
      cpus,
      ...(input.maxCpus !== undefined && input.maxCpus > cpus ? { maxCpus: input.maxCpus } : {}),
      memoryMiB: input.memoryMiB ?? DEFAULT_VM_MEMORY_MIB,
      ...(input.kernel ? { kernel: input.kernel } : {}),
      ...(input.initrd ? { initrd: input.initrd } : {}),
      ...(input.append ? { append: input.append } : {}),
      ...(input.disk ? { disk: input.disk } : {}),
      ...(input.pin?.length ? { pin: input.pin } : {}),
      ...(diskImage ? { diskImage } : {}),
      ...(images.kernelImage ? { kernelImage: images.kernelImage } : {}),
      ...(images.initrdImage ? { initrdImage: images.initrdImage } : {}),
      ...(bootVolume ? { volumes: [{ volumeId: bootVolume.id, boot: true }] } : {}),
      ...(input.ha ? { ha: true } : {}),
    };
    if (config.ha) {
      const why = vmRebuildRefusal({ ...config, ...images });
      if (why) throw new InvalidArgument(`--ha: ${why}`);
    }
    const chosen = await this.checkName(input.name, projectId);
    const name = chosen.name;
    let rec: VmRecord;
    const id = newVmId();
    let networks: NetworkRecord[];
    try {
      networks = await Promise.all((input.networks ?? []).map((n) => (this.networks ? this.networks.forVm(n, projectId) : Promise.reject(new InvalidArgument('networks are not available')))));
      if (networks.length) config.networks = networks.map((n) => n.id);
      rec = await this.admitAndInsert(id, name, projectId, config, 'created', placement);
    } finally {
      chosen.release();
    }
    const agentName = rec.agent;
    let req: VmCreateRequest = { id, name, ...config };
    try {
      if (fromImages.length) {
        // the images onto the chosen host (carried there when it lacks them); the record keeps that host's paths
        const paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
        for (const { role, image } of fromImages) paths[role] = await this.disks!.ensureOnHost({ ...image, kind: role }, agentName, this.agents);
        rec = await this.store.vms.update(id, { config: { ...config, ...paths } });
        req = { id, name, ...rec.config };
      }
      // laid out on its host first: each host's part of a network is its own segment until overlays (issue 15)
      if (networks.length) await this.networks!.ensureOnHost(networks, agentName);
      if (networks.length) req.nics = await this.networks!.leaseVm(id, name, networks);
      // an agent before protocol 7 would pass over `volumes` and boot without the disk: it refuses this first, clearly
      if (bootVolume) await this.agents.get(agentName).blockVolumeInfo(bootVolume.id);
      await this.agents.get(agentName).createVm(req);
    } catch (e) {
      await this.forget(id, agentName, 'create failed');
      throw e;
    }
    this.publish(rec, 'create', { cpus: config.cpus, memoryMiB: config.memoryMiB });
    return rec;
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

  /** A new VM from a saved one (RunD's microVM templates); it is saved, and restore starts it. */
  async createFromTemplate(templateIdOrName: string, name: string | undefined, projectId: string): Promise<VmRecord> {
    const t = await this.get(templateIdOrName);
    if (t.status !== 'saved' || t.config.template) throw new Conflict(`VM ${t.name} is not a saved VM that can serve as a template (it is ${t.status})`);
    if (t.config.volumes?.length) throw new Conflict(`VM ${t.name} has block volumes attached: a clone would share its disks; detach them first (they are applied at its next start)`);
    const chosen = await this.checkName(name, projectId);
    const newName = chosen.name;
    const id = newVmId();
    const { template: _none, ...base } = t.config;
    const rec = await this.admitAndInsert(id, newName, projectId, { ...base, template: t.id }, 'saved', { host: t.agent }).finally(() => chosen.release());
    try {
      await this.on(t).createVmFromTemplate(t.id, id, newName);
    } catch (e) {
      await this.forget(id, t.agent, 'create failed');
      throw e;
    }
    this.publish(rec, 'create', { template: t.id });
    return rec;
  }

  /** Admission first, then the scheduler's host and claim: a refused request leaves nothing behind. */
  private async admitAndInsert(id: string, name: string, projectId: string, config: VmConfig, status: VmStatus, placement: PlacementInput): Promise<VmRecord> {
    await this.quota.admitVm(id, projectId, { cpus: config.cpus, memoryMiB: config.memoryMiB });
    let agent: string;
    try {
      ({ host: agent } = await this.scheduler.place({
        consumerId: id, projectId, kind: 'vm', vcpus: config.cpus, memoryBytes: config.memoryMiB * 1024 * 1024, diskBytes: 0, ...placementFields(placement),
      }));
    } catch (e) {
      await this.quota.release(id, 'create failed');
      throw e;
    }
    try {
      this.agents.get(agent); // a host the directory does not know: NotFound before anything is made
    } catch (e) {
      await this.scheduler.release(id);
      await this.quota.release(id, 'create failed');
      throw e;
    }
    const now = new Date().toISOString();
    const rec: VmRecord = {
      id, name, projectId, config, status, pid: null, exitCode: null,
      createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent,
    };
    try {
      await this.store.vms.insert(rec);
    } catch (e) {
      await this.scheduler.release(id);
      await this.quota.release(id, 'create failed');
      throw e;
    }
    return rec;
  }

  /** A failed create leaves nothing: not the host state, not the record, not the quota. */
  private async forget(id: string, agent: string, reason: string): Promise<void> {
    void this.agents.get(agent).removeVm(id).catch(() => undefined);
    try {
      await this.store.vms.delete(id); // its address leases go with it
      await this.scheduler.release(id);
      await this.quota.release(id, reason);
    } catch (e) {
      // the caller throws the create's own error; this one is only logged
      log.error('cleaning up after a failed VM create failed', { id, error: String(e) });
    }
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

  /** ACPI power button, then SIGKILL after the timeout. */
  /**
   * A graceful stop waits up to its timeout for the guest (at most MAX_STOP_TIMEOUT_SEC) while it
   * holds the VM's lock; it is the one lifecycle call another may cut short: a SIGKILL (kill, or
   * remove with force) goes to QEMU at once, and the stop's wait then sees QEMU end and records it.
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

  /** The whole VM (RAM, devices, vCPUs) to disk; QEMU ends; the VM is saved. */
  async save(idOrName: string): Promise<{ vm: VmRecord; bytes: number; ms: number }> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      assertVmTransition(cur.name, cur.status, 'saved', 'save');
      const r = await this.on(cur).saveVm(v.id);
      const next = await this.store.vms.update(v.id, { status: 'saved', pid: null, savedAt: new Date().toISOString() });
      this.publish(next, 'save', { bytes: r.bytes, ms: r.ms });
      return { vm: next, bytes: r.bytes, ms: r.ms };
    });
  }

  /**
   * Save as an Operation (its time grows with guest memory). A VM that cannot be
   * saved now is refused here, not as a failed operation.
   */
  async startSave(idOrName: string): Promise<OperationRecord> {
    const v = await this.get(idOrName);
    assertVmTransition(v.name, v.status, 'saved', 'save');
    return this.operations.start('vm.save', v.id, v.projectId, async () => {
      const r = await this.save(v.id);
      return { id: v.id, name: v.name, status: r.vm.status, bytes: r.bytes, ms: r.ms };
    });
  }

  async startRestore(idOrName: string): Promise<OperationRecord> {
    const v = await this.get(idOrName);
    if (v.status !== 'saved') throw new Conflict(`cannot restore VM ${v.name}: it is ${v.status}, not saved`);
    await this.assertNotTemplate(v, 'restore');
    return this.operations.start('vm.restore', v.id, v.projectId, async () => {
      const r = await this.restore(v.id);
      return { id: v.id, name: v.name, status: r.vm.status, ms: r.ms };
    });
  }

  /**
   * A template's saved state and frozen disk back the VMs made from it: restoring
   * it would move its disk on under them, removing it would pull it away.
   */
  private async assertNotTemplate(v: VmRecord, verb: string): Promise<void> {
    const children = (await this.store.vms.list()).filter((o) => o.config.template === v.id);
    if (children.length) throw new Conflict(`cannot ${verb} VM ${v.name}: it is the template of ${children.map((c) => c.name).join(', ')}; remove those first`);
  }

  /**
   * A VM whose charge a reclaim released (it was saved or stopped for a lender) is
   * admitted again before it runs; QuotaExceeded when its project has no room now.
   */
  private async readmit(v: VmRecord): Promise<void> {
    if (!this.quota.shared && this.quota.holds(v.id)) return;
    await this.quota.admitVmUnlessHeld(v.id, v.projectId, { cpus: v.config.cpus, memoryMiB: v.config.memoryMiB });
  }

  /** A saved VM back, its guest continuing where it was. */
  async restore(idOrName: string): Promise<{ vm: VmRecord; ms: number }> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      if (cur.status !== 'saved') throw new Conflict(`cannot restore VM ${cur.name}: it is ${cur.status}, not saved`);
      await this.assertNotTemplate(cur, 'restore');
      await this.readmit(cur);
      const r = await this.on(cur).restoreVm(v.id);
      const next = await this.running(v.id, await this.on(cur).vmState(v.id), 'restore', { ms: r.ms });
      return { vm: next, ms: r.ms };
    });
  }

  async remove(idOrName: string, force: boolean): Promise<void> {
    const v = await this.get(idOrName);
    if (force) await this.preemptStop(v);
    return this.locked(v.id, async () => {
      const cur = await this.store.vms.get(v.id);
      if (!cur) return;
      if (isLive(cur.status) && !force) throw new Conflict(`VM ${cur.name} is ${cur.status}: stop it first or use --force`);
      await this.assertNotTemplate(cur, 'remove');
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
   * Live migration to another agent, as an Operation: the destination waits for the stream,
   * the source pre-copies RAM while the guest runs and stops it only for the last pass, the
   * guest resumes at the destination. Checked before the operation starts, so a VM that
   * cannot move now is a plain error, not a failed operation.
   */
  async startMigrate(idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<OperationRecord> {
    const v = await this.get(idOrName);
    this.checkMigration(v, to, opts);
    await this.movingVolumes(v, to);
    return this.operations.start('vm.migrate', v.id, v.projectId, () => this.migrate(v.id, to, opts));
  }

  /**
   * The block volumes that move with the VM (their data mirrored like its root disk), or a
   * Conflict saying why one cannot: a shared volume (other VMs may hold it on this host), one with
   * snapshots (they and the clones made from them stay on the host: remove them first), both
   * agents able to carry volumes (protocol 9).
   */
  private async movingVolumes(v: VmRecord, to: string): Promise<VolumeRecord[]> {
    const attached = v.config.volumes ?? [];
    if (!attached.length) return [];
    const out: VolumeRecord[] = [];
    for (const a of attached) {
      const vol = await this.store.volumes.get(a.volumeId);
      if (!vol) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${a.volumeId} has no record`);
      if (vol.shared) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} is shared (other VMs on host ${vol.host} may hold it); detach it first`, { volume: vol.name });
      if (vol.host !== v.agent) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} is on host ${vol.host}, not the VM's ${v.agent}`, { volume: vol.name });
      const snaps = await this.store.volumes.listSnapshots({ volumeId: vol.id });
      if (snaps.length) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} has ${snaps.length} snapshot(s), which stay on host ${vol.host} with the clones made from them; remove them first`, { volume: vol.name });
      out.push(vol);
    }
    for (const [agent, host] of [[this.agents.get(v.agent), v.agent], [this.agents.get(to), to]] as const) {
      const version = await spokenProtocol(agent);
      const refusal = version === undefined ? undefined : tooOldForVolumeMigration(version, host);
      if (refusal) throw refusal;
    }
    return out;
  }

  private checkMigration(v: VmRecord, to: string, opts: { maxDowntimeMs?: number }): void {
    if (!this.agents.has(to)) throw new NotFound(`no such agent: ${to}`, { agent: to });
    if (to === v.agent) throw new InvalidArgument(`VM ${v.name} is on agent ${to} already`);
    if (v.status !== 'running') throw new Conflict(`cannot migrate VM ${v.name}: it is ${v.status}; only a running VM migrates live`);
    if (v.config.networks?.length && !this.networks) throw new InvalidArgument(`cannot migrate VM ${v.name}: it has NICs and networks are not available here`);
    const d = opts.maxDowntimeMs;
    if (d !== undefined && (!Number.isInteger(d) || d < 1 || d > MAX_DOWNTIME_LIMIT_MS)) throw new InvalidArgument(`max downtime must be 1–${MAX_DOWNTIME_LIMIT_MS} ms, got ${d}`);
  }

  /** The five steps of a live migration across agents (see docs/vms.md); on failure the guest goes on at the source. */
  async migrate(idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<MigrationReport & { from: string; to: string }> {
    const v = await this.get(idOrName);
    return this.locked(v.id, async () => {
      const cur = await this.current(v.id);
      this.checkMigration(cur, to, opts);
      const volumes = await this.movingVolumes(cur, to);
      const from = cur.agent;
      const src = this.on(cur);
      const dst = this.agents.get(to);
      let next = cur;
      // each volume's file at the destination, empty, of its size: the source mirrors into it
      const made: string[] = [];
      const dropMade = async () => {
        for (const id of made) await dst.removeBlockVolume(id).catch((e: unknown) => log.warn('removing a volume a failed migration made failed', { id, agent: to, error: String(e) }));
      };
      // the host files it boots from, as the destination has them (images carried there first); the record takes them when it moves
      let atDestination: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
      // the destination's capacity is claimed first, the VM's and its volumes' (checked atomically by
      // the scheduler, as a container move does); a failed move gives it back
      const claims = [v.id, ...volumes.map((vol) => vol.id)];
      const claimed: string[] = [];
      const claimsBack = async (at: string) => {
        for (const consumer of claimed) await this.scheduler.moveClaim(consumer, at).catch((x: unknown) => log.warn('moving a claim back failed', { id: consumer, error: String(x) }));
      };
      try {
        for (const consumer of claims) {
          await this.scheduler.moveClaim(consumer, to);
          claimed.push(consumer);
        }
        for (const vol of volumes) {
          made.push(vol.id);
          await dst.createBlockVolume(vol.id, vol.sizeBytes, {});
        }
      } catch (e) {
        await dropMade();
        await claimsBack(from);
        throw e;
      }
      const { report: moved } = await migrateLive(
        v.id,
        {
          spec: () => src.vmMigrationSpec(v.id),
          send: (uri, o) => src.migrateVmOut(v.id, uri, o),
          // once the guest runs at the destination, a source that cannot let go is only logged
          end: (outcome) => src.endVmMigration(v.id, outcome).catch((e: unknown) => {
            if (outcome === 'resume') throw e;
            log.warn('ending the source half of a migration failed', { id: v.id, agent: from, error: String(e) });
          }),
        },
        {
          prepare: async (spec) => {
            const moving = await this.specAt(cur, spec, to);
            atDestination = moving.paths;
            return dst.prepareVmIncoming(moving.spec);
          },
          // The guest runs at the destination now: the record says so before the source lets go.
          // (Here, not in migrateLive's synchronous `arrived`: the write is awaited, and if it fails
          // the migration is undone like any failed finish, so the guest goes on where recorded.)
          finish: async (h) => {
            const fin = await dst.finishVmIncoming(v.id, h);
            next = await this.store.vms.update(v.id, { agent: to, status: 'running', pid: fin.state.pid ?? null, ...(Object.keys(atDestination).length ? { config: { ...cur.config, ...atDestination } } : {}) });
            // its volumes are the destination's now (their files there have every write the guest made)
            for (const vol of volumes) await this.store.volumes.moveHost(vol.id, to);
            // the overlay's forwarding entries follow now: the guest answers at the destination already
            if (cur.config.networks?.length) this.networks?.endpointsMoved(v.id);
            return fin;
          },
          abandon: () => dst.abandonVmIncoming(v.id),
        },
        {
          ...(opts.maxDowntimeMs !== undefined ? { maxDowntimeMs: opts.maxDowntimeMs } : {}),
          failed: (e) => this.publish(cur, 'migrate-failed', { from, to, error: String(e) }),
        },
      ).catch(async (e: unknown) => {
        // the guest goes on at the source (or, if the record moved, where it says): the claim follows the record
        const at = (await this.store.vms.get(v.id))?.agent ?? from;
        if (at !== to) {
          await claimsBack(at);
          await dropMade(); // the source's volumes are the ones the guest writes
        }
        throw e;
      });
      // the source's copies of its volumes go (its QEMU has let go); a failure leaves them to the host's reconcile
      for (const vol of volumes) await src.removeBlockVolume(vol.id).catch((e: unknown) => log.warn('removing a moved volume at its old host failed', { id: vol.id, agent: from, error: String(e) }));
      const report = { ...moved, from, to };
      this.publish(next, 'migrate', { ...report });
      log.info('vm migrated', { ...report });
      return report;
    });
  }

  /**
   * An --ha VM of a host that does not answer, made again on `to` (healing.ts): from its images
   * (a fresh overlay over its disk image: what the dead host held is not reachable), with its id,
   * name, size and NICs (same addresses, hence MACs), then started. The claim moves first (the
   * capacity checked); the record names `to` only once the VM runs there. Quota is unchanged.
   */
  async rebuild(id: string, to: string): Promise<VmRecord> {
    return this.locked(id, async () => {
      const cur = await this.current(id);
      const from = cur.agent;
      const why = vmRebuildRefusal(cur.config);
      if (why) throw new Conflict(`VM ${cur.name} cannot be rebuilt on another host: ${why}`);
      if (cur.status !== 'running' && cur.status !== 'paused') throw new Conflict(`VM ${cur.name} is ${cur.status}: only a running VM is rebuilt`);
      const dst = this.agents.get(to);
      await this.scheduler.moveClaim(id, to);
      let created = false;
      try {
        const config: VmConfig = { ...cur.config, ...(await this.imagesOn(cur.config, to)) };
        const req: VmCreateRequest = { id, name: cur.name, ...config };
        if (cur.config.networks?.length) req.nics = await this.networks!.vmNicsFor(id, cur.name, to);
        created = true; // from the call on, the destination may hold it
        await dst.createVm(req);
        const state = await dst.startVm(id);
        await this.store.vms.update(id, { agent: to, config });
        if (cur.config.networks?.length) this.networks?.endpointsMoved(id);
        const v = await this.running(id, state, 'start');
        this.publish(v, 'heal', { from, to });
        log.warn('VM rebuilt on another host: its host does not answer', { id, name: v.name, from, to });
        return v;
      } catch (e) {
        if (created) await dst.removeVm(id).catch(() => undefined);
        await this.scheduler.moveClaim(id, from).catch((x: unknown) => log.warn('moving a claim back after a failed rebuild failed', { id, error: String(x) }));
        throw e;
      }
    });
  }

  /**
   * The source's spec as the destination needs it: boot files at the destination's paths (images
   * carried there when it lacks them; host paths stay as they are, and the destination checks
   * them as a create would), the base under a local disk likewise, and the NICs with their
   * networks laid out there.
   */
  /** The VM's boot files from the image service at `to`'s paths (carried there when it lacks them); host paths are not here. */
  private async imagesOn(config: VmConfig, to: string): Promise<Pick<VmConfig, 'disk' | 'kernel' | 'initrd'>> {
    const paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
    for (const [role, image] of [['kernel', config.kernelImage], ['initrd', config.initrdImage], ['disk', config.diskImage]] as const) {
      if (!image) continue;
      if (!this.disks) throw new InvalidArgument('images for VMs are not available');
      paths[role] = await this.disks.ensureOnHost({ ...image, kind: role }, to, this.agents);
    }
    return paths;
  }

  private async specAt(v: VmRecord, spec: VmMigrationSpec, to: string): Promise<{ spec: VmMigrationSpec; paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> }> {
    const paths = await this.imagesOn(v.config, to);
    const config = { ...spec.config };
    if (paths.kernel) config.kernel = paths.kernel;
    if (paths.initrd) config.initrd = paths.initrd;
    const storage = spec.storage && (paths.disk && spec.storage.backing ? { ...spec.storage, backing: paths.disk } : spec.storage);
    const nics = v.config.networks?.length ? await this.networks!.vmNicsFor(v.id, v.name, to) : [];
    return { spec: { ...spec, config, ...(storage ? { storage } : {}), ...(nics.length ? { nics } : {}) }, paths };
  }

  /**
   * Daemon start, before serving: each agent's driver reconciles its own state first
   * (orphan QEMU killed, record-less directories removed, live VMs watched again), then
   * the store and the hosts are brought into agreement. VMs keep running across a daemon
   * restart and are simply re-attached. An agent that does not answer is left alone: its
   * VMs keep their records until it is back (they are not "lost" because we cannot see them).
   */
  async reconcile(): Promise<{ running: number; stopped: number; lost: number; orphansRemoved: number; qemuKilled: number; agentsDown: string[] }> {
    const hosts = new Map<string, Set<string>>();
    const agentsDown: string[] = [];
    let qemuKilled = 0;
    for (const name of this.agents.names()) {
      try {
        const agent = this.agents.get(name);
        qemuKilled += (await agent.reconcileVms()).killed.length;
        hosts.set(name, new Set(await agent.listVms()));
      } catch (e) {
        log.warn('agent unreachable at reconcile; its VMs are left as recorded', { agent: name, error: String(e) });
        agentsDown.push(name);
      }
    }
    let running = 0, stopped = 0, lost = 0, orphansRemoved = 0;
    for (const v of await this.store.vms.list()) {
      let onHost = hosts.get(v.agent);
      if (!onHost) {
        if (!this.agents.has(v.agent) && v.status !== 'stopped') {
          // its agent was removed from the directory: nothing can run it any more
          await this.store.vms.update(v.id, { status: 'stopped', pid: null, exitCode: v.exitCode ?? 255, finishedAt: v.finishedAt ?? new Date().toISOString() });
          lost++;
        }
        continue;
      }
      if (onHost.has(v.id)) {
        // on two agents: a migration the control plane did not see finish. The guest runs where it
        // arrived if the recorded copy is a source QEMU left in postmigrate (its guest went away).
        const other = [...hosts].find(([name, ids]) => name !== v.agent && ids.has(v.id))?.[0];
        if (other && (await this.runState(v.agent, v.id)) === 'postmigrate' && (await this.runState(other, v.id)) === 'running') {
          log.warn('VM on two agents; following it to where it runs', { id: v.id, recorded: v.agent, running: other });
          v.agent = other; // the recorded agent still lists it: its copy is removed below, as an orphan
          await this.store.vms.update(v.id, { agent: other });
          onHost = hosts.get(other)!;
        }
      }
      if (!onHost.has(v.id)) {
        // a migration whose last step the control plane did not see: the VM is where it arrived
        const elsewhere = [...hosts].find(([, ids]) => ids.has(v.id))?.[0];
        if (elsewhere && v.status !== 'removing') {
          log.warn('VM found on another agent than recorded; following it', { id: v.id, recorded: v.agent, found: elsewhere });
          v.agent = elsewhere;
          await this.store.vms.update(v.id, { agent: elsewhere });
          onHost = hosts.get(elsewhere)!;
        }
      }
      const agent = this.on(v);
      if (v.status === 'removing') {
        await agent.removeVm(v.id).catch(() => undefined);
        await this.store.vms.delete(v.id);
        await this.quota.release(v.id, 'vm removed');
        continue;
      }
      if (!onHost.has(v.id)) {
        // its host state is gone: nothing can run or restore it any more
        if (v.status !== 'stopped') {
          await this.store.vms.update(v.id, { status: 'stopped', pid: null, exitCode: v.exitCode ?? 255, finishedAt: v.finishedAt ?? new Date().toISOString() });
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
        await this.store.vms.update(v.id, { status: state.lifecycle, pid: state.pid ?? v.pid });
        running++;
      } else if (state.lifecycle === 'stopped' && v.status !== 'stopped') {
        await this.recordStop(v.id, state);
        stopped++;
      } else if (state.lifecycle === 'saved' && v.status !== 'saved') {
        await this.store.vms.update(v.id, { status: 'saved', pid: null, savedAt: v.savedAt ?? new Date().toISOString() });
      }
    }
    for (const [name, orphans] of hosts) {
      for (const orphan of orphans) {
        log.warn('removing a VM the store does not know', { id: orphan, agent: name });
        await this.agents.get(name).removeVm(orphan).catch((e: unknown) => log.warn('orphan VM removal failed', { id: orphan, error: String(e) }));
        orphansRemoved++;
      }
    }
    return { running, stopped, lost, orphansRemoved, qemuKilled, agentsDown };
  }

  /** QEMU's run state of a VM on an agent, or undefined when it cannot say. */
  private async runState(agent: string, id: string): Promise<string | undefined> {
    return (await this.agents.get(agent).inspectVm(id).catch(() => undefined))?.runState;
  }

  /** VMs recorded on an agent (the directory's listing; a removal is refused while there are any). */
  async countOn(agent: string): Promise<number> {
    return (await this.store.vms.list()).filter((v) => v.agent === agent).length;
  }
}
