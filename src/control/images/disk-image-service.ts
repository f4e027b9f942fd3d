/**
 * VM disk images in the image service, beside OCI images: the content is stored once by digest
 * in the host's content store (shared, like layers), the name belongs to a project. A VM's root
 * disk is a qcow2 overlay backed by the blob, so many VMs share one base and none can change it.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Conflict, InvalidArgument, NimbusError, NotFound, Unavailable, hasCode, toNimbusError } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import { digestFile } from '../../core/stream-digest.js';
import type { Agent, DiskImageInfo, VmImageKind } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { DiskImageRecord, VmRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import { inScope, type ProjectScope } from '../identity/scope.js';
import type { HostAgents } from '../compute/hosts.js';
import { carryBlobs, sourcesFor } from './carry.js';

const log = logger('disk-images');

/** A disk's formats are raw and qcow2; kernels and initrds are boot files. */
export function kindOf(d: Pick<DiskImageRecord, 'format'>): VmImageKind {
  return d.format === 'kernel' || d.format === 'initrd' ? d.format : 'disk';
}

/** An image as a VM's record names it, with the role it plays (what the host checks it as). */
export interface ImageRef {
  name: string;
  digest: string;
  kind: VmImageKind;
}

export class DiskImageService {
  constructor(
    private readonly store: Store,
    private readonly agent: Agent,
    private readonly events: EventBus,
    /** Frees what nothing references any more (the OCI image service's collector, which keeps disk blobs in use). */
    private readonly collectGarbage: () => Promise<unknown>,
  ) {}

  /** The hosts VM images may be carried to, and imports go to under --no-agent (the daemon calls it once the directory is open). */
  private hosts: HostAgents | undefined;
  /** Transfers in flight, by "host digest": concurrent creates there wait for one. */
  private readonly carrying = new Map<string, Promise<string>>();

  useHosts(hosts: HostAgents): void {
    this.hosts = hosts;
  }

  /**
   * `file` is this process's own copy of the upload. With the embedded agent it is imported there;
   * without one (--no-agent) it is streamed to a registered host that answers, which checks it as
   * an import does (and drops it when refused); VMs elsewhere get it carried from there.
   */
  async import(file: string, name: string, projectId: string, kind: VmImageKind = 'disk'): Promise<DiskImageRecord> {
    if (!isValidName(name)) throw new InvalidArgument(`invalid disk image name "${name}": use letters, digits, '_', '.', '-' (max 128)`);
    if (await this.store.disks.get(projectId, name)) throw new Conflict(`disk image "${name}" already exists in this project; remove it first`);
    const info = this.hosts && this.hosts.localName === undefined ? await this.uploadToHost(file, kind, this.hosts) : await this.agent.importDiskImage(file, kind);
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

  /** The host path VMs' overlays are backed by, on the embedded agent. */
  path(d: DiskImageRecord): string {
    return this.agent.diskImagePath(d.digest);
  }

  /**
   * The image on `host`, and its path there, for a VM placed on it: nothing to carry when the host
   * has the blob; else it is streamed from a host that has it (the embedded agent first), and the
   * target checks it as an import does before it is used.
   */
  ensureOnHost(d: ImageRef, host: string, hosts: HostAgents | undefined = this.hosts): Promise<string> {
    if (!hosts || host === hosts.localName) return Promise.resolve(this.agent.diskImagePath(d.digest));
    const key = `${host} ${d.digest}`;
    const pending = this.carrying.get(key);
    if (pending) return pending;
    const p = this.carryToHost(d, host, hosts).finally(() => this.carrying.delete(key));
    this.carrying.set(key, p);
    return p;
  }

  private async carryToHost(d: ImageRef, host: string, hosts: HostAgents): Promise<string> {
    const target = hosts.get(host);
    if ((await target.missingBlobs([d.digest])).length) {
      const { up, down } = sourcesFor(hosts, [...(hosts.localName !== undefined ? [hosts.localName] : []), ...hosts.names()], host);
      let failure: NimbusError | undefined;
      let carried = false;
      for (const source of up) {
        try {
          const from = hosts.get(source);
          if ((await from.missingBlobs([d.digest])).length) continue;
          log.info('carrying a VM image to a host', { image: d.name, digest: d.digest, from: source, to: host });
          await carryBlobs(from, target, [d.digest]);
          carried = true;
          break;
        } catch (e) {
          const err = toNimbusError(e);
          failure = new NimbusError(err.code, `carrying VM image ${d.name} from host ${source} to host ${host}: ${err.message}`, { ...err.details, image: d.digest, source, host }, { cause: e });
          // gone from that host or the host went away: another may have it; anything else (the target refused it) is final
          if (!(hasCode(e, 'NotFound') || hasCode(e, 'Unavailable'))) throw failure;
        }
      }
      if (!carried) {
        throw failure ?? new Unavailable(`VM image ${d.name} cannot be carried to host ${host}: no host that answers holds it${up.length ? ` (asked ${up.join(', ')})` : ''}${down.length ? `; ${down.join(', ')} ${down.length > 1 ? 'do' : 'does'} not answer` : ''}`, {
          image: d.digest, host, hosts: [...up, ...down],
        });
      }
    }
    // checked there as an import checks a file; the path is that host's
    return (await target.adoptDiskImage(d.digest, d.kind)).path;
  }

  /** --no-agent: the upload streamed to the first registered host that answers, and checked there. */
  private async uploadToHost(file: string, kind: VmImageKind, hosts: HostAgents): Promise<DiskImageInfo> {
    const host = hosts.names().find((n) => !hosts.isDown?.(n));
    if (host === undefined) throw new Unavailable('no registered host answers to take the image: register an agent first (nimbusd agent --join-token)');
    const { digest } = await digestFile(file); // off the main thread: disk images are gigabytes
    const { size } = await stat(file);
    const target = hosts.get(host);
    await target.writeBlob(digest, size, createReadStream(file));
    const { path: _path, ...info } = await target.adoptDiskImage(digest, kind);
    return info;
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
