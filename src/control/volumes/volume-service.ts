/**
 * Named volumes as the control plane sees them (docs/volumes.md): a row per volume in its
 * project, its size charged to the project's quota (`volumes` 1 and `disk` in MiB) and claimed
 * on the host the scheduler chose (its disk), the ext4 image made there by the agent. A
 * container that uses a volume runs on the volume's host (resolveMounts pins it).
 *
 * Create: quota, then the host's claim, then the row (creating), then the agent's image, then
 * the row ready; a failure at any step undoes the steps before it. Remove: the row goes to
 * removing (no new container takes it), the agent's image, then the row, the claim and the quota.
 */
import { Conflict, InvalidArgument, NotFound, PermissionDenied, hasCode } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Agent, ContainerMount } from '../../agent/agent.js';
import { checkMountTarget, checkTmpfsSize, isForbiddenBindSource } from '../../agent/volumes/container-mounts.js';
import type { ContainerRecord, StoredMount } from '../../store/records.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import type { Store } from '../../store/store.js';
import type { EventBus } from '../events/event-bus.js';
import { NewConnections, type HostAgents } from '../compute/hosts.js';
import { withDeadline } from '../compute/deadline.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { Scheduler } from '../scheduler/types.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { BlockVolumes, isBlock, type VolumeHolder } from './block-volumes.js';

const log = logger('volumes');
const MiB = 1024 * 1024;
/** A volume made without a size (`volume create NAME`, or `run -v NAME:/p` of one that does not exist): 1 GiB, as a small disk. */
export const DEFAULT_VOLUME_BYTES = 1024 * MiB;
export const MIN_VOLUME_BYTES = 16 * MiB;
export const MAX_VOLUME_BYTES = 16 * 1024 * 1024 * MiB;
/** One agent call about a volume: making the image is a mkfs of metadata only (tens of ms), mounting it the same. */
const AGENT_DEADLINE_MS = 120_000;
/** How long the start-time reconcile waits for a host other than the embedded one. */
const HOST_RECONCILE_MS = 15_000;
/** A row still creating after this long at the leader's start was cut short (a create takes well under a second). */
const STALE_CREATE_MS = 10 * 60_000;
const EVERYWHERE: ProjectScope = { canRead: () => true };

export interface CreateVolumeInput {
  name: string;
  /** Bytes, a whole number of MiB; absent: DEFAULT_VOLUME_BYTES. */
  sizeBytes?: number;
  /** "local" (the only one). */
  driver?: string;
  labels?: Record<string, string>;
  /** The driver options as given (Docker's --opt), kept to be answered back; sizeBytes is what they mean. */
  driverOptions?: Record<string, string>;
  /** Pinned host (system administrators only: the API checks). */
  host?: string;
  /** 'block': a qcow2 disk for VMs (docs/volumes.md "Block volumes"); default 'filesystem' (containers). */
  type?: 'filesystem' | 'block';
  /** Block only: attachable read-write to several VMs at once (a raw disk; no snapshots). */
  shared?: boolean;
  /** Block only: a clone of this snapshot (name or id, of the project); the size defaults to the snapshot's. */
  fromSnapshot?: string;
}

/** A volume as listings and inspect show it. */
export interface VolumeView extends VolumeRecord {
  /** Where its data is on its host (Docker's Mountpoint). */
  mountpoint?: string;
  /** Bytes its files take (inspect only; absent while the host does not answer). */
  usedBytes?: number;
  /** Containers whose mounts name it. */
  usedBy: string[];
  /** Block volumes: the VMs that hold it (inspect). */
  attachedTo?: Array<Pick<VolumeHolder, 'vm' | 'readonly' | 'boot'>>;
  /** Block volumes: its snapshots' names (inspect). */
  snapshots?: string[];
}

/** A mount as a create request gives it: a volume by name, a host path, or tmpfs. */
export type MountInput =
  // source absent: an anonymous volume (a random name, removed with the container by rm -v and autoRemove);
  // anonymous with a source: another container's anonymous volume (--volumes-from)
  // nocopy: a volume made for this mount starts empty (Docker's -v vol:/p:nocopy), not with the image's files at the path
  | { type: 'volume'; source?: string; target: string; readonly?: boolean; anonymous?: boolean; nocopy?: boolean }
  | { type: 'bind'; source: string; target: string; readonly?: boolean }
  | { type: 'tmpfs'; target: string; sizeBytes?: number; mode?: number };

export type { StoredMount };

export function mountsOf(c: Pick<ContainerRecord, 'config'>): StoredMount[] {
  return c.config.mounts ?? [];
}

/** The agent's form of stored mounts; `copyUp`: targets of volumes the create made, to fill with the image's files there (docs/volumes.md). */
export function agentMounts(mounts: readonly StoredMount[], copyUp: readonly string[] = []): ContainerMount[] {
  return mounts.map((m) => (m.type === 'volume'
    ? { type: 'volume', volumeId: m.volumeId, target: m.target, ...(m.readonly ? { readonly: true } : {}), ...(copyUp.includes(m.target) ? { copyUp: true } : {}) }
    : m));
}

/** The label dockerd (23+) puts on the volumes it makes for `-v /path` and an image's VOLUME. */
export const ANONYMOUS_VOLUME_LABEL = 'com.docker.volume.anonymous';

/** A new anonymous volume's name: 64 hex digits, as dockerd names them. */
export function anonymousVolumeName(): string {
  return randomBytes(32).toString('hex');
}

export function checkVolumeSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < MIN_VOLUME_BYTES || sizeBytes > MAX_VOLUME_BYTES || sizeBytes % MiB !== 0) {
    throw new InvalidArgument(`a volume's size must be a whole number of MiB from 16 MiB to 16 TiB, got ${String(sizeBytes)} bytes`, { field: 'size' });
  }
}

function checkName(name: string): void {
  if (typeof name !== 'string' || !isValidName(name)) {
    throw new InvalidArgument(`invalid volume name ${JSON.stringify(String(name).slice(0, 80))}: use letters, digits, '_', '.', '-' (max 128)`, { field: 'name' });
  }
}

export class VolumeService {
  /** Agents (connections) whose volumes were reconciled: one that registers again is a new object. */
  /** Hosts that register (again) after the leader's start: each told which volumes it holds. */
  private readonly newHosts = new NewConnections(
    () => this.hosts,
    (host, agent) => this.reconcileHost(host, agent),
    (host, e) => log.warn('reconciling the volumes of a host that registered failed', { host, error: String(e) }),
  );
  /** Serialises create and remove per project and name, so that a create and a remove of one name do not interleave. */
  private readonly locks = new KeyedLock();
  /** Block volumes' snapshots and attachments to VMs. */
  readonly block: BlockVolumes;

  constructor(
    private readonly store: Store,
    private readonly hosts: HostAgents,
    private readonly scheduler: Scheduler,
    private readonly quota: QuotaService,
    private readonly events: EventBus,
  ) {
    this.block = new BlockVolumes(store, hosts, quota, events);
  }

  private locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(key, fn);
  }

  private agentCall<T>(what: string, v: Pick<VolumeRecord, 'name' | 'host'>, p: Promise<T>): Promise<T> {
    return withDeadline(p, AGENT_DEADLINE_MS, `host ${v.host}'s ${what} of volume ${v.name}`);
  }

  private publish(v: VolumeRecord, action: string, attributes: Record<string, unknown> = {}): void {
    this.events.publish({ type: 'volume', action, id: v.id, projectId: v.projectId, attributes: { name: v.name, driver: v.driver, ...attributes } });
  }

  /** By name (or full id) in scope. */
  async get(ref: string, scope: ProjectScope = EVERYWHERE): Promise<VolumeRecord> {
    if (!ref) throw new InvalidArgument('a volume name is required');
    const exact = await this.store.volumes.get(ref);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await this.store.volumes.named(ref)).filter((v) => inScope(scope, v.projectId));
    if (!named.length) throw new NotFound(`no such volume: ${ref}`, { volume: ref });
    return pickInScope(named, scope, (v) => v.id, 'volume', ref);
  }

  list(projectId?: string): Promise<VolumeRecord[]> {
    return this.store.volumes.list(projectId ? { projectId } : {});
  }

  /** The project's containers whose mounts name the volume (any state: a stopped one still holds it, as in Docker). */
  async usedBy(v: Pick<VolumeRecord, 'id' | 'projectId'>): Promise<ContainerRecord[]> {
    return (await this.store.containers.list({ projectId: v.projectId })).filter((c) => mountsOf(c).some((m) => m.type === 'volume' && m.volumeId === v.id));
  }

  /** The record with what its host says (mount point, bytes used) and who uses it. */
  async inspect(v: VolumeRecord): Promise<VolumeView> {
    if (isBlock(v)) return this.inspectBlock(v);
    const usedBy = (await this.usedBy(v)).map((c) => c.name);
    if (v.status !== 'ready' || !this.hosts.has(v.host) || this.hosts.isDown?.(v.host)) return { ...v, usedBy };
    try {
      const u = await withDeadline(this.hosts.get(v.host).volumeUsage(v.id), 5000, `host ${v.host}'s volume usage`);
      return { ...v, usedBy, mountpoint: u.path, usedBytes: u.usedBytes };
    } catch (e) {
      log.warn('a volume\'s host did not say its usage', { volume: v.id, host: v.host, error: String(e) });
      return { ...v, usedBy };
    }
  }

  private async inspectBlock(v: VolumeRecord): Promise<VolumeView> {
    const attachedTo = (await this.block.holders(v)).map((h) => ({ vm: h.vm, readonly: h.readonly, boot: h.boot }));
    const snapshots = (await this.store.volumes.listSnapshots({ volumeId: v.id })).map((s) => s.name);
    const view: VolumeView = { ...v, usedBy: attachedTo.map((a) => a.vm), attachedTo, snapshots };
    if (v.status !== 'ready' || !this.hosts.has(v.host) || this.hosts.isDown?.(v.host)) return view;
    try {
      const u = await withDeadline(this.hosts.get(v.host).blockVolumeInfo(v.id), 5000, `host ${v.host}'s block volume info`);
      return { ...view, mountpoint: u.path, usedBytes: u.allocatedBytes };
    } catch (e) {
      log.warn('a block volume\'s host did not answer', { volume: v.id, host: v.host, error: String(e) });
      return view;
    }
  }

  async create(input: CreateVolumeInput, projectId: string): Promise<VolumeRecord> {
    checkName(input.name);
    const type = input.type ?? (input.fromSnapshot !== undefined ? 'block' : 'filesystem');
    if (type !== 'block' && type !== 'filesystem') throw new InvalidArgument(`unknown volume type ${JSON.stringify(String(type).slice(0, 40))}: filesystem or block`, { field: 'type' });
    if (type !== 'block' && input.shared) throw new InvalidArgument('--shared is for block volumes (--type block): a filesystem volume is shared by the containers that mount it', { field: 'shared' });
    if (type !== 'block' && input.fromSnapshot !== undefined) throw new InvalidArgument('a volume made from a snapshot is a block volume', { field: 'fromSnapshot' });
    if (input.shared && input.fromSnapshot !== undefined) throw new InvalidArgument('a shared volume is a raw disk and cannot be cloned from a snapshot', { field: 'shared' });
    const snap = input.fromSnapshot !== undefined ? await this.block.snapshotOf(projectId, input.fromSnapshot) : undefined;
    if (snap && input.host !== undefined && input.host !== snap.host) throw new Conflict(`snapshot ${snap.name} is on host ${snap.host}: its clones are made there`, { host: snap.host });
    const sizeBytes = input.sizeBytes ?? snap?.sizeBytes ?? DEFAULT_VOLUME_BYTES;
    if (snap && sizeBytes < snap.sizeBytes) throw new InvalidArgument(`a clone must be at least its snapshot's size (${snap.sizeBytes / MiB} MiB)`, { field: 'size' });
    checkVolumeSize(sizeBytes);
    const driver = input.driver ?? 'local';
    if (driver !== 'local') throw new InvalidArgument(`volume driver ${JSON.stringify(driver.slice(0, 40))} is not supported: only "local"`, { field: 'driver' });
    for (const [k, val] of Object.entries(input.labels ?? {})) {
      if (typeof val !== 'string' || k.length > 1024 || val.length > 4096) throw new InvalidArgument('volume labels are strings (keys up to 1 KiB, values up to 4 KiB)', { field: 'labels' });
    }
    return this.locked(`${projectId}/${input.name}`, async () => {
      if (await this.store.volumes.byName(projectId, input.name)) {
        throw new Conflict(`volume "${input.name}" already exists in this project`, { volume: input.name });
      }
      const id = newId();
      // quota first: a refused request leaves nothing behind
      await this.quota.admitVolume(id, projectId, sizeBytes / MiB);
      let claimed = false;
      let inserted = false;
      let host = input.host ?? '';
      try {
        ({ host } = await this.scheduler.place({
          consumerId: id, projectId, kind: 'volume', vcpus: 0, memoryBytes: 0, diskBytes: sizeBytes,
          ...(input.host !== undefined ? { host: input.host } : snap ? { host: snap.host } : {}),
        }));
        claimed = true;
        const agent = this.hosts.get(host);
        const rec: VolumeRecord = {
          id, name: input.name, projectId, host, driver, sizeBytes, status: 'creating', labels: input.labels ?? {}, driverOptions: input.driverOptions ?? {}, createdAt: new Date().toISOString(),
          ...(type === 'block' ? { type } : {}), ...(input.shared ? { shared: true as const } : {}), ...(snap ? { sourceSnapshot: snap.id } : {}),
        };
        await this.store.volumes.insert(rec);
        inserted = true;
        if (type === 'block') {
          await this.agentCall('create', rec, agent.createBlockVolume(id, sizeBytes, { ...(snap ? { fromSnapshot: snap.id } : {}), ...(input.shared ? { shared: true } : {}) }));
        } else {
          await this.agentCall('create', rec, agent.createVolume(id, sizeBytes));
        }
        const ready = await this.store.volumes.setStatus(id, 'ready');
        this.publish(ready, 'create', { host, sizeBytes, ...(type === 'block' ? { type } : {}) });
        return ready;
      } catch (e) {
        // nothing of a failed create stays: the host's image, the row, the claim, the quota
        if (inserted) await (type === 'block' ? this.hosts.get(host).removeBlockVolume(id) : this.hosts.get(host).removeVolume(id)).catch((x: unknown) => log.warn('removing a failed volume on its host failed (the host reconciles it)', { id, error: String(x) }));
        try {
          if (inserted) await this.store.volumes.delete(id);
          if (claimed) await this.scheduler.release(id);
          await this.quota.release(id, 'volume create failed');
        } catch (x) {
          log.error('cleaning up after a failed volume create failed', { id, error: String(x) });
        }
        throw e;
      }
    });
  }

  /**
   * Remove it and its data. Conflict while a container (running or not) names it: remove the
   * container first. force: a volume that does not exist is not an error, and a host that does
   * not answer does not keep the record (the host removes the image when it reconciles).
   */
  async remove(ref: string, scope: ProjectScope, opts: { force?: boolean } = {}): Promise<VolumeRecord | undefined> {
    let v: VolumeRecord;
    try {
      v = await this.get(ref, scope);
    } catch (e) {
      if (opts.force && hasCode(e, 'NotFound')) return undefined;
      throw e;
    }
    return this.locked(`${v.projectId}/${v.name}`, async () => {
      const now = await this.store.volumes.get(v.id);
      if (!now) {
        if (opts.force) return undefined;
        throw new NotFound(`no such volume: ${ref}`, { volume: ref });
      }
      if (isBlock(now)) await this.block.checkRemovable(now);
      const users = await this.usedBy(now);
      if (users.length) {
        throw new Conflict(`volume ${now.name} is in use by container${users.length > 1 ? 's' : ''} ${users.map((c) => c.name).join(', ')}: remove ${users.length > 1 ? 'them' : 'it'} first`, {
          volume: now.name,
          containers: users.map((c) => c.id),
        });
      }
      await this.store.volumes.setStatus(now.id, 'removing');
      try {
        await this.agentCall('removal', now, isBlock(now) ? this.hosts.get(now.host).removeBlockVolume(now.id) : this.hosts.get(now.host).removeVolume(now.id));
      } catch (e) {
        if (!opts.force) {
          await this.store.volumes.setStatus(now.id, 'ready').catch(() => undefined);
          throw e;
        }
        log.warn('a forced volume removal goes on without its host (the host removes the image when it reconciles)', { id: now.id, host: now.host, error: String(e) });
      }
      await this.forget(now);
      this.publish(now, 'destroy');
      return now;
    });
  }

  /** The row, the host's claim and the quota of a volume that is gone. */
  private async forget(v: VolumeRecord): Promise<void> {
    await this.store.volumes.delete(v.id);
    await this.scheduler.release(v.id);
    await this.quota.release(v.id, 'volume removed');
  }

  /** Every volume of the project no container names (Docker 1.41's prune: all unused local volumes); the removed ones. */
  async prune(projectId: string): Promise<VolumeRecord[]> {
    const removed: VolumeRecord[] = [];
    for (const v of await this.store.volumes.list({ projectId })) {
      // block volumes are not Docker's: prune leaves them (a VM's disk is never collected by a prune)
      if (v.status !== 'ready' || isBlock(v) || (await this.usedBy(v)).length) continue;
      try {
        const r = await this.remove(v.id, { projectId });
        if (r) removed.push(r);
      } catch (e) {
        // one in use meanwhile, or its host away: the others still go
        log.warn('pruning a volume failed', { id: v.id, error: String(e) });
      }
    }
    return removed;
  }

  /**
   * A create's mounts checked and resolved: volumes by name in the project (made with the default
   * size when missing, as Docker does), host paths only for system administrators (the host
   * checks the path itself), tmpfs. `host`: where the container must run (its volumes' host);
   * Conflict when its volumes are on different hosts, or pinned elsewhere.
   */
  async resolveMounts(
    mounts: readonly MountInput[],
    projectId: string,
    opts: { mayBindHostPaths: boolean; pinnedHost?: string; made?: string[] },
  ): Promise<{ mounts: StoredMount[]; host?: string; copyUp: string[] }> {
    // the anonymous volumes made, for the caller to remove if its create fails later
    const made = opts.made ?? [];
    try {
      return await this.resolveMountsNow(mounts, projectId, opts, made);
    } catch (e) {
      // anonymous volumes this call made have no name anyone knows: they go with the failed request
      await this.removeAnonymous(made.splice(0), projectId);
      throw e;
    }
  }

  /** Anonymous volumes by id, each unless another container uses it (rm -v, autoRemove, a failed create). */
  async removeAnonymous(volumeIds: readonly string[], projectId: string): Promise<void> {
    for (const id of volumeIds) {
      await this.remove(id, { projectId }).catch((e: unknown) => {
        // in use by another container (--volumes-from): kept, as dockerd keeps it
        if (!hasCode(e, 'Conflict') && !hasCode(e, 'NotFound')) log.warn('removing an anonymous volume failed', { id, error: String(e) });
      });
    }
  }

  private async resolveMountsNow(
    mounts: readonly MountInput[],
    projectId: string,
    opts: { mayBindHostPaths: boolean; pinnedHost?: string },
    made: string[],
  ): Promise<{ mounts: StoredMount[]; host?: string; copyUp: string[] }> {
    if (mounts.length > 64) throw new InvalidArgument('at most 64 mounts per container', { field: 'mounts' });
    const out: StoredMount[] = [];
    // volumes made by this create (not nocopy): the agent copies the image's files at the path into them
    const copyUp: string[] = [];
    let host = opts.pinnedHost;
    const targets = new Set<string>();
    for (const m of mounts) {
      // the host checks again (and resolves a bind's symlinks there): this refuses early, before anything is held
      const target = checkMountTarget(m.target);
      if (targets.has(target)) throw new InvalidArgument(`two mounts at ${target}`, { field: 'target' });
      targets.add(target);
      if (m.type === 'bind') {
        if (typeof m.source !== 'string' || !m.source.startsWith('/')) throw new InvalidArgument('a bind mount\'s source must be an absolute host path', { field: 'source' });
        const given = path.posix.normalize(m.source).replace(/\/+$/, '') || '/';
        if (isForbiddenBindSource(given)) throw new PermissionDenied(`host path ${given} cannot be bound into a container`, { source: given });
        if (!opts.mayBindHostPaths) {
          throw new PermissionDenied(`only a system administrator may bind a host path into a container (${m.source.slice(0, 200)}); use a named volume`, { source: m.source });
        }
        out.push({ type: 'bind', source: m.source, target, ...(m.readonly ? { readonly: true } : {}) });
      } else if (m.type === 'tmpfs') {
        checkTmpfsSize(m.sizeBytes);
        out.push({ type: 'tmpfs', target, ...(m.sizeBytes !== undefined ? { sizeBytes: m.sizeBytes } : {}), ...(m.mode !== undefined ? { mode: m.mode } : {}) });
      } else if (m.type === 'volume') {
        const anonymous = m.source === undefined || m.anonymous === true;
        const source = m.source ?? anonymousVolumeName();
        checkName(source);
        let v = await this.store.volumes.byName(projectId, source);
        if (!v) {
          try {
            // charged to the quota as a named volume; the label tells rm -v (and `volume ls`) what it is
            v = await this.create({ name: source, ...(host !== undefined ? { host } : {}), ...(m.source === undefined ? { labels: { [ANONYMOUS_VOLUME_LABEL]: '' } } : {}) }, projectId);
            if (m.source === undefined) made.push(v.id);
            if (m.nocopy !== true) copyUp.push(target);
          } catch (e) {
            // made meanwhile by another create: take that one
            if (!hasCode(e, 'Conflict')) throw e;
            v = await this.store.volumes.byName(projectId, source);
            if (!v) throw e;
          }
        }
        if (isBlock(v)) throw new InvalidArgument(`volume ${v.name} is a block volume (a disk for VMs: nimbus vm attach-volume); containers mount filesystem volumes`, { volume: v.name });
        if (v.status !== 'ready') throw new Conflict(`volume ${v.name} is ${v.status}`, { volume: v.name });
        if (host !== undefined && v.host !== host) {
          throw new Conflict(`volume ${v.name} is on host ${v.host}, and this container must run on ${host} (${opts.pinnedHost === host ? 'pinned there' : 'another of its volumes is there'}): volumes do not move between hosts yet`, { volume: v.name, host: v.host });
        }
        host = v.host;
        out.push({ type: 'volume', volumeId: v.id, name: v.name, target, ...(m.readonly ? { readonly: true } : {}), ...(anonymous ? { anonymous: true } : {}) });
      } else {
        throw new InvalidArgument(`unknown mount type ${JSON.stringify((m as { type?: unknown }).type)}: volume, bind or tmpfs`, { field: 'type' });
      }
    }
    return { mounts: out, ...(host !== undefined ? { host } : {}), copyUp };
  }

  /**
   * Daemon start (as the leader): creates and removals cut short are finished (a create undone,
   * a removal completed), and every host that answers is told which volumes it holds (it mounts
   * them and removes the others). Volumes a host lacks are logged: their data is lost, and the
   * row stays for an administrator to see and remove.
   */
  async reconcile(): Promise<{ undone: number; removed: number; hostsRemoved: number; missing: string[] }> {
    let undone = 0;
    let removed = 0;
    const now = Date.now();
    for (const v of await this.store.volumes.list()) {
      const stale = now - Date.parse(v.createdAt) > STALE_CREATE_MS;
      if (v.status === 'removing' || (v.status === 'creating' && stale)) {
        if (this.hosts.has(v.host) && !this.hosts.isDown?.(v.host)) await (isBlock(v) ? this.hosts.get(v.host).removeBlockVolume(v.id) : this.hosts.get(v.host).removeVolume(v.id)).catch(() => undefined);
        await this.forget(v);
        if (v.status === 'removing') removed++;
        else undone++;
      }
    }
    await this.block.reconcileRows(STALE_CREATE_MS);
    let hostsRemoved = 0;
    const missing: string[] = [];
    for (const host of this.hosts.names()) {
      if (this.hosts.isDown?.(host)) continue;
      try {
        const agent = this.hosts.get(host);
        const r = await this.reconcileHost(host, agent);
        this.newHosts.markHandled(agent);
        hostsRemoved += r.removed.length;
        missing.push(...r.missing);
      } catch (e) {
        // an agent before protocol 5 holds no volumes; one that does not answer is left alone (watchHosts tries again)
        log.warn('reconciling the volumes of a host failed', { host, error: String(e) });
      }
    }
    return { undone, removed, hostsRemoved, missing };
  }

  /** One host told which volumes it holds (a create in flight, creating and young, is listed too: the host keeps it). */
  private async reconcileHost(host: string, agent: Agent): Promise<{ removed: string[]; missing: string[] }> {
    const onHost = await this.store.volumes.onHost(host);
    const live = onHost.filter((v) => !isBlock(v)).map((v) => v.id);
    const r = await withDeadline(agent.reconcileVolumes(live), HOST_RECONCILE_MS, `host ${host}'s volume reconcile`);
    // block volumes and their snapshots (protocol 7: an older agent holds none and refuses the call)
    const blocks = onHost.filter(isBlock).map((v) => v.id);
    const snaps = (await this.store.volumes.listSnapshots({ host })).map((x) => x.id);
    try {
      const b = await withDeadline(agent.reconcileBlockVolumes(blocks, snaps), HOST_RECONCILE_MS, `host ${host}'s block volume reconcile`);
      r.removed.push(...b.removed);
      r.missing.push(...b.missing);
    } catch (e) {
      if (blocks.length || snaps.length) throw e;
      log.info('a host did not reconcile block volumes (it holds none)', { host, error: String(e) });
    }
    for (const id of r.missing) log.error('a volume the store holds is not on its host: its data is lost', { id, host });
    if (r.removed.length) log.info('volumes the store does not hold were removed from a host', { host, removed: r.removed.length });
    return r;
  }

  /**
   * Hosts that register (again) from now on are reconciled too (a remote agent that restarted, or
   * joined after the daemon's start): every few seconds the directory is looked at, no host called
   * unless its connection is new. The leader's start reconciles the hosts there at the time.
   */
  watchHosts(everyMs = 5000): void {
    this.newHosts.start(everyMs);
  }

  stopWatchingHosts(): void {
    this.newHosts.stop();
  }
}
