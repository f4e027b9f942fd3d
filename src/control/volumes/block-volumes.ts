/**
 * Block volumes for VMs in the control plane (docs/volumes.md "Block volumes"): snapshots (rows
 * of their own, charged `disk` like the volume), attachments to VMs (kept in the VM's config,
 * `volumes`, so a VM's removal detaches and never deletes) and the one-writer rule: a volume is
 * attached read-write to one VM at a time unless it was created shared; read-only to any number
 * while nobody writes it.
 */
import { Conflict, InvalidArgument, NotFound, hasCode } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import type { Store } from '../../store/store.js';
import type { VmRecord } from '../../store/records.js';
import type { VolumeRecord, VolumeSnapshotRecord } from '../../store/repos/volumes.js';
import type { EventBus } from '../events/event-bus.js';
import type { HostAgents } from '../compute/hosts.js';
import { withDeadline } from '../compute/deadline.js';
import { isLive } from '../compute/vm-state.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { QuotaService } from '../quota/quota-service.js';

const log = logger('volumes.block');
const MiB = 1024 * 1024;
/** One agent call on a block volume (qemu-img on metadata; a snapshot removal may copy a snapshot's data into what it backed). */
const AGENT_DEADLINE_MS = 600_000;
/** A detach waits for the guest to release the disk (the agent gives it 60 s). */
const DETACH_DEADLINE_MS = 90_000;
const EVERYWHERE: ProjectScope = { canRead: () => true };

/** One block volume on a VM, as the VM's config keeps it. */
export interface VmVolume {
  volumeId: string;
  readonly?: boolean;
  /** The disk it boots from. */
  boot?: boolean;
}

/** Who holds a volume: a VM and how. */
export interface VolumeHolder {
  vmId: string;
  vm: string;
  readonly: boolean;
  boot: boolean;
  status: VmRecord['status'];
}

export const vmVolumes = (vm: Pick<VmRecord, 'config'>): VmVolume[] => (vm.config as { volumes?: VmVolume[] }).volumes ?? [];

export const isBlock = (v: Pick<VolumeRecord, 'type'>): boolean => v.type === 'block';

function checkName(name: string, what: string): void {
  if (typeof name !== 'string' || !isValidName(name)) {
    throw new InvalidArgument(`invalid ${what} name ${JSON.stringify(String(name).slice(0, 80))}: use letters, digits, '_', '.', '-' (max 128)`, { field: 'name' });
  }
}

export class BlockVolumes {
  /** Serialises attach, detach and snapshot per volume (the one-writer check and its write). */
  private readonly locks = new KeyedLock();
  /** The VM's own lock (VmService's, set by the daemon), so an attach does not race a start or a resize of the same VM. */
  vmLock: <T>(vmId: string, fn: () => Promise<T>) => Promise<T> = (id, fn) => this.locks.run(`vm:${id}`, fn);

  constructor(
    private readonly store: Store,
    private readonly hosts: HostAgents,
    private readonly quota: QuotaService,
    private readonly events: EventBus,
  ) {}

  private publish(kind: 'volume' | 'volume-snapshot', id: string, projectId: string, action: string, attributes: Record<string, unknown>): void {
    this.events.publish({ type: 'volume', action, id, projectId, attributes: { kind, ...attributes } });
  }

  /** The VMs of the volume's project that hold it. */
  async holders(v: Pick<VolumeRecord, 'id' | 'projectId'>): Promise<VolumeHolder[]> {
    const out: VolumeHolder[] = [];
    for (const vm of await this.store.vms.list({ projectId: v.projectId })) {
      for (const a of vmVolumes(vm)) {
        if (a.volumeId === v.id) out.push({ vmId: vm.id, vm: vm.name, readonly: a.readonly === true, boot: a.boot === true, status: vm.status });
      }
    }
    return out;
  }

  /**
   * Conflict when the volume cannot be taken by `vmId` now: a block volume, ready, and not held in
   * a way the one-writer rule forbids (read-write by another VM, unless shared; read-write while
   * others read it).
   */
  async checkAttachable(v: VolumeRecord, vmId: string, readonly: boolean): Promise<void> {
    if (!isBlock(v)) throw new InvalidArgument(`volume ${v.name} is a filesystem volume (for containers: nimbus run -v); VMs attach block volumes (nimbus volume create --type block)`, { volume: v.name });
    if (v.status !== 'ready') throw new Conflict(`volume ${v.name} is ${v.status}`, { volume: v.name });
    const others = (await this.holders(v)).filter((h) => h.vmId !== vmId);
    if (v.shared || !others.length) return;
    const writer = others.find((h) => !h.readonly);
    if (writer) {
      throw new Conflict(`volume ${v.name} is attached read-write to VM ${writer.vm}: detach it there first, or create volumes several VMs write with --shared`, { volume: v.name, holder: writer.vm });
    }
    if (!readonly) {
      throw new Conflict(`volume ${v.name} is attached read-only to VM ${others.map((h) => h.vm).sort().join(', ')}: it can be attached read-write only when nobody else holds it (or create it --shared)`, { volume: v.name, holder: others[0]!.vm });
    }
  }

  /** A volume of the VM's project by name or id (another project's is NotFound: tenancy). */
  private async volumeOf(projectId: string, ref: string): Promise<VolumeRecord> {
    const byId = await this.store.volumes.get(ref);
    const v = byId && byId.projectId === projectId ? byId : await this.store.volumes.byName(projectId, ref);
    if (!v) throw new NotFound(`no such volume in the VM's project: ${ref}`, { volume: ref });
    return v;
  }

  /** For a VM booting from a volume (vm run --boot-volume): the volume, checked like an attach. */
  async forBoot(ref: string, projectId: string): Promise<VolumeRecord> {
    const v = await this.volumeOf(projectId, ref);
    await this.checkAttachable(v, '', false);
    return v;
  }

  /**
   * Attach to a VM of the same project on the same host: hot-plugged while it runs, applied at
   * its next start while created or stopped (the agent refuses a paused or saved VM).
   */
  async attach(vm: VmRecord, ref: string, opts: { readonly?: boolean } = {}): Promise<{ vm: VmRecord; volume: VolumeRecord; live: boolean }> {
    const v0 = await this.volumeOf(vm.projectId, ref);
    return this.vmLock(vm.id, () => this.locks.run(v0.id, async () => {
      const cur = await this.store.vms.get(vm.id);
      if (!cur) throw new NotFound(`no such vm: ${vm.name}`);
      const v = await this.store.volumes.get(v0.id);
      if (!v) throw new NotFound(`no such volume: ${ref}`);
      const readonly = opts.readonly === true;
      await this.checkAttachable(v, cur.id, readonly);
      if (vmVolumes(cur).some((a) => a.volumeId === v.id)) throw new Conflict(`volume ${v.name} is attached to VM ${cur.name} already`, { volume: v.name });
      if (v.host !== cur.agent) {
        throw new Conflict(`volume ${v.name} is on host ${v.host} and VM ${cur.name} runs on ${cur.agent}: a VM attaches volumes of its own host only (volumes do not move between hosts)`, { volume: v.name, host: v.host });
      }
      if (cur.config.template) throw new Conflict(`VM ${cur.name} is a clone of a saved VM: its devices are its template's`);
      if ((await this.store.vms.list()).some((o) => o.config.template === cur.id)) throw new Conflict(`VM ${cur.name} is the template of other VMs: its devices are fixed`);
      const entry: VmVolume = { volumeId: v.id, ...(readonly ? { readonly: true } : {}) };
      const r = await withDeadline(this.hosts.get(cur.agent).attachVmVolume(cur.id, entry), DETACH_DEADLINE_MS, `host ${cur.agent}'s attach of volume ${v.name}`);
      let next: VmRecord;
      try {
        next = await this.store.vms.update(cur.id, { config: { ...cur.config, volumes: [...vmVolumes(cur), entry] } as VmRecord['config'] });
      } catch (e) {
        await this.hosts.get(cur.agent).detachVmVolume(cur.id, v.id).catch((x: unknown) => log.error('undoing an attach whose record failed failed', { vm: cur.id, volume: v.id, error: String(x) }));
        throw e;
      }
      this.publish('volume', v.id, v.projectId, 'attach', { name: v.name, vm: cur.name, live: r.live, readonly });
      return { vm: next, volume: v, live: r.live };
    }));
  }

  /** Detach from the VM: unplugged once the guest lets go while it runs, off the record otherwise. A boot volume stays while the VM exists. */
  async detach(vm: VmRecord, ref: string): Promise<{ vm: VmRecord; volume: VolumeRecord; live: boolean }> {
    const v = await this.volumeOf(vm.projectId, ref);
    return this.vmLock(vm.id, () => this.locks.run(v.id, async () => {
      const cur = await this.store.vms.get(vm.id);
      if (!cur) throw new NotFound(`no such vm: ${vm.name}`);
      const entry = vmVolumes(cur).find((a) => a.volumeId === v.id);
      if (!entry) throw new NotFound(`volume ${v.name} is not attached to VM ${cur.name}`, { volume: v.name });
      if (entry.boot) throw new Conflict(`volume ${v.name} is VM ${cur.name}'s boot volume: it goes with the VM (nimbus vm rm keeps the volume)`, { volume: v.name });
      let live = false;
      try {
        live = (await withDeadline(this.hosts.get(cur.agent).detachVmVolume(cur.id, v.id), DETACH_DEADLINE_MS, `host ${cur.agent}'s detach of volume ${v.name}`)).live;
      } catch (e) {
        // the host does not have it on the VM (a record ahead of a host that lost it): the record follows the host
        if (!hasCode(e, 'NotFound')) throw e;
        log.warn('detaching a volume the host did not have on the VM', { vm: cur.id, volume: v.id, error: String(e) });
      }
      const next = await this.store.vms.update(cur.id, { config: { ...cur.config, volumes: vmVolumes(cur).filter((a) => a.volumeId !== v.id) } as VmRecord['config'] });
      this.publish('volume', v.id, v.projectId, 'detach', { name: v.name, vm: cur.name, live });
      return { vm: next, volume: v, live };
    }));
  }

  // ---- snapshots

  async getSnapshot(ref: string, scope: ProjectScope = EVERYWHERE): Promise<VolumeSnapshotRecord> {
    if (!ref) throw new InvalidArgument('a snapshot name is required');
    const exact = await this.store.volumes.getSnapshot(ref);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await this.store.volumes.snapshotsNamed(ref)).filter((s) => inScope(scope, s.projectId));
    if (!named.length) throw new NotFound(`no such volume snapshot: ${ref}`, { snapshot: ref });
    return pickInScope(named, scope, (s) => s.id, 'volume snapshot', ref);
  }

  /** A snapshot of the project (for a clone: another project's is NotFound). */
  async snapshotOf(projectId: string, ref: string): Promise<VolumeSnapshotRecord> {
    const byId = await this.store.volumes.getSnapshot(ref);
    const s = byId && byId.projectId === projectId ? byId : await this.store.volumes.snapshotByName(projectId, ref);
    if (!s) throw new NotFound(`no such volume snapshot in this project: ${ref}`, { snapshot: ref });
    if (s.status !== 'ready') throw new Conflict(`volume snapshot ${s.name} is ${s.status}`, { snapshot: s.name });
    return s;
  }

  listSnapshots(filter: { projectId?: string; volumeId?: string } = {}): Promise<VolumeSnapshotRecord[]> {
    return this.store.volumes.listSnapshots(filter);
  }

  /**
   * A point-in-time snapshot of a block volume (Cinder's `volume snapshot create`): refused while a
   * running or paused VM holds the volume (as Cinder refuses an in-use volume), and for a shared
   * volume (a raw file: no qcow2 chain). Charged the volume's size in `disk`.
   */
  async createSnapshot(v: VolumeRecord, name: string): Promise<VolumeSnapshotRecord> {
    checkName(name, 'snapshot');
    if (!isBlock(v)) throw new InvalidArgument(`volume ${v.name} is a filesystem volume: only block volumes have snapshots`, { volume: v.name });
    if (v.shared) throw new InvalidArgument(`volume ${v.name} is shared (a raw disk several VMs write): it has no snapshots`, { volume: v.name });
    return this.locks.run(v.id, async () => {
      const cur = await this.store.volumes.get(v.id);
      if (!cur || cur.status !== 'ready') throw new Conflict(`volume ${v.name} is ${cur?.status ?? 'gone'}`, { volume: v.name });
      const live = (await this.holders(cur)).filter((h) => isLive(h.status));
      if (live.length) {
        throw new Conflict(`volume ${v.name} is in use by ${live[0]!.status} VM ${live[0]!.vm}: stop the VM or detach the volume first`, { volume: v.name, holder: live[0]!.vm });
      }
      if (await this.store.volumes.snapshotByName(cur.projectId, name)) throw new Conflict(`volume snapshot "${name}" already exists in this project`, { snapshot: name });
      const id = newId();
      await this.quota.admitVolumeSnapshot(id, cur.projectId, cur.sizeBytes / MiB);
      const rec: VolumeSnapshotRecord = { id, name, projectId: cur.projectId, volumeId: cur.id, host: cur.host, sizeBytes: cur.sizeBytes, status: 'creating', createdAt: new Date().toISOString() };
      let inserted = false;
      try {
        await this.store.volumes.insertSnapshot(rec);
        inserted = true;
        await withDeadline(this.hosts.get(cur.host).snapshotBlockVolume(cur.id, id), AGENT_DEADLINE_MS, `host ${cur.host}'s snapshot of volume ${cur.name}`);
        const ready = await this.store.volumes.setSnapshotStatus(id, 'ready');
        this.publish('volume-snapshot', id, cur.projectId, 'snapshot', { name, volume: cur.name });
        return ready;
      } catch (e) {
        try {
          if (inserted) await this.store.volumes.deleteSnapshot(id);
          await this.quota.release(id, 'volume snapshot failed');
        } catch (x) {
          log.error('cleaning up after a failed snapshot failed', { id, error: String(x) });
        }
        throw e;
      }
    });
  }

  /** Remove a snapshot: what it backs (its volume's later layers, clones made from it) keeps its data. */
  async removeSnapshot(s: VolumeSnapshotRecord): Promise<void> {
    await this.locks.run(s.volumeId, async () => {
      const cur = await this.store.volumes.getSnapshot(s.id);
      if (!cur) return;
      await this.store.volumes.setSnapshotStatus(s.id, 'removing');
      try {
        await withDeadline(this.hosts.get(cur.host).removeBlockSnapshot(cur.id), AGENT_DEADLINE_MS, `host ${cur.host}'s removal of snapshot ${cur.name}`);
      } catch (e) {
        await this.store.volumes.setSnapshotStatus(s.id, 'ready').catch(() => undefined);
        throw e;
      }
      await this.store.volumes.deleteSnapshot(cur.id);
      await this.quota.release(cur.id, 'volume snapshot removed');
      this.publish('volume-snapshot', cur.id, cur.projectId, 'destroy', { name: cur.name });
    });
  }

  /** Conflict naming what keeps a block volume from being removed: VMs holding it, its snapshots. */
  async checkRemovable(v: VolumeRecord): Promise<void> {
    const holders = await this.holders(v);
    if (holders.length) {
      throw new Conflict(`volume ${v.name} is attached to VM${holders.length > 1 ? 's' : ''} ${holders.map((h) => h.vm).join(', ')}: detach it (nimbus vm detach-volume) or remove the VM first`, { volume: v.name, vms: holders.map((h) => h.vmId) });
    }
    const snaps = await this.store.volumes.listSnapshots({ volumeId: v.id });
    if (snaps.length) {
      throw new Conflict(`volume ${v.name} has snapshot${snaps.length > 1 ? 's' : ''} ${snaps.map((s) => s.name).join(', ')}: remove ${snaps.length > 1 ? 'them' : 'it'} first (nimbus volume snapshot rm)`, { volume: v.name, snapshots: snaps.map((s) => s.id) });
    }
  }

  /** Leader's start: snapshot rows cut short are finished (creating ones undone, removing ones removed). */
  async reconcileRows(staleMs: number): Promise<void> {
    for (const s of await this.store.volumes.listSnapshots()) {
      const stale = Date.now() - Date.parse(s.createdAt) > staleMs;
      if (s.status === 'removing' || (s.status === 'creating' && stale)) {
        if (this.hosts.has(s.host) && !this.hosts.isDown?.(s.host)) await this.hosts.get(s.host).removeBlockSnapshot(s.id).catch(() => undefined);
        await this.store.volumes.deleteSnapshot(s.id);
        await this.quota.release(s.id, 'volume snapshot cut short');
      }
    }
  }
}
