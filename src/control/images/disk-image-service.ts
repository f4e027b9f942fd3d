/**
 * VM disk images in the image service, beside OCI images: the content is stored once by digest
 * in the host's content store (shared, like layers), the name belongs to a project. A VM's root
 * disk is a qcow2 overlay backed by the blob, so many VMs share one base and none can change it.
 */
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import type { Agent, VmImageKind } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { DiskImageRecord, VmRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import { inScope, type ProjectScope } from '../identity/scope.js';

/** A disk's formats are raw and qcow2; kernels and initrds are boot files. */
export function kindOf(d: Pick<DiskImageRecord, 'format'>): VmImageKind {
  return d.format === 'kernel' || d.format === 'initrd' ? d.format : 'disk';
}

export class DiskImageService {
  constructor(
    private readonly store: Store,
    private readonly agent: Agent,
    private readonly events: EventBus,
    /** Frees what nothing references any more (the OCI image service's collector, which keeps disk blobs in use). */
    private readonly collectGarbage: () => Promise<unknown>,
  ) {}

  async import(file: string, name: string, projectId: string, kind: VmImageKind = 'disk'): Promise<DiskImageRecord> {
    if (!isValidName(name)) throw new InvalidArgument(`invalid disk image name "${name}": use letters, digits, '_', '.', '-' (max 128)`);
    if (await this.store.disks.get(projectId, name)) throw new Conflict(`disk image "${name}" already exists in this project; remove it first`);
    const info = await this.agent.importDiskImage(file, kind);
    const rec: DiskImageRecord = { projectId, name, ...info, createdAt: new Date().toISOString() };
    await this.store.disks.insert(rec);
    this.events.publish({ type: 'image', action: 'import', id: rec.digest, projectId, attributes: { name, kind: 'disk', format: rec.format } });
    return rec;
  }

  async list(projectId?: string): Promise<DiskImageRecord[]> {
    return this.store.disks.list(projectId);
  }

  /**
   * By name in the project, else in a project the scope can read (a parent's, say). With a kind,
   * an image of another kind is refused by name (a kernel is no root disk, a disk no kernel).
   */
  async resolve(name: string, projectId: string, scope: ProjectScope = { projectId }, kind?: VmImageKind): Promise<DiskImageRecord> {
    const found = (await this.store.disks.get(projectId, name)) ?? (await this.pickInScope(name, scope));
    if (kind !== undefined && kindOf(found) !== kind) throw new InvalidArgument(`image "${name}" is a ${kindOf(found)}, not a ${kind}`);
    return found;
  }

  private async pickInScope(name: string, scope: ProjectScope): Promise<DiskImageRecord> {
    const found = (await this.store.disks.list()).filter((d) => d.name === name && inScope(scope, d.projectId));
    if (found.length === 1) return found[0]!;
    if (found.length > 1) throw new InvalidArgument(`"${name}" names disk images in several projects you can read; name the project (--project P)`);
    throw new NotFound(`no such disk image: ${name}`);
  }

  /** The host path VMs' overlays are backed by. */
  path(d: DiskImageRecord): string {
    return this.agent.diskImagePath(d.digest);
  }

  /** Refused while a VM's disk is backed by it (the content goes when no project names it). */
  async remove(name: string, projectId: string): Promise<void> {
    // checked and deleted in one transaction: no VM comes to be backed by it in between
    const d = await this.store.transaction(async () => {
      const found = await this.store.disks.get(projectId, name);
      if (!found) throw new NotFound(`no such disk image: ${name}`);
      const backs = (v: VmRecord) => [v.config.diskImage, v.config.kernelImage, v.config.initrdImage].some((i) => i?.digest === found.digest);
      // another project's VM keeps the content only when this is the last name of it
      const lastName = (await this.store.disks.countByDigest(found.digest)) === 1;
      const users = (await this.store.vms.list()).filter((v) => backs(v) && (v.projectId === projectId || lastName));
      if (users.length) throw new Conflict(`disk image ${name} backs the disk of ${users.length} VM(s): ${users.map((v) => v.name).join(', ')}`);
      await this.store.disks.delete(projectId, name);
      return found;
    });
    this.events.publish({ type: 'image', action: 'delete', id: d.digest, projectId, attributes: { name, kind: 'disk' } });
    await this.collectGarbage();
  }
}
