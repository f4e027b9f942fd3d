/**
 * A VM made: the request checked and resolved (images of the image service, a boot volume,
 * networks, placement), its name chosen, quota admitted and the scheduler's host claimed before
 * the record is written, then its host's part (images carried there, NICs leased, the agent's
 * create). From a request (create) or from a saved VM (a template). A create that fails leaves
 * nothing behind: not the host state, the record, the claim or the quota.
 */
import { Conflict, InvalidArgument, PermissionDenied } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { VmCreateRequest, VmImageKind } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { DiskImageRecord, NetworkRecord, VmConfig, VmRecord, VmStatus } from '../../store/records.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { NetworkService } from '../networks/network-service.js';
import type { DiskImageService } from '../images/disk-image-service.js';
import type { Scheduler } from '../scheduler/types.js';
import { placementFields, withGroupResolved, type HostAgents, type PlacementInput } from './hosts.js';
import { generateName } from './names.js';
import { vmRebuildRefusal } from './vm-move.js';

const log = logger('compute-vm');

/** What VM creates need of block volumes (the volume service's; docs/volumes.md "Block volumes"). */
export interface BootVolumes {
  /** The project's block volume by name or id, checked attachable read-write (Conflict naming its holder otherwise). */
  forBoot(ref: string, projectId: string): Promise<VolumeRecord>;
}

/** Guest memory when the request names none. */
export const DEFAULT_VM_MEMORY_MIB = 256;
/**
 * VM ids are 128 bits (32 hex): the VM's QMP and console sockets live in a
 * directory named after it, and a unix socket path must fit in 108 bytes.
 */
const newVmId = (): string => newId().slice(0, 32);

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

/** What creating a VM needs of the VM service. */
export interface VmCreateDeps {
  store: Store;
  agents: HostAgents;
  quota: Pick<QuotaService, 'admitVm' | 'release'>;
  scheduler: Pick<Scheduler, 'place' | 'release'>;
  networks?: Pick<NetworkService, 'forVm' | 'ensureOnHost' | 'leaseVm'> | undefined;
  disks?: Pick<DiskImageService, 'resolve' | 'ensureOnHost'> | undefined;
  bootVolumes?: BootVolumes | undefined;
  /** Generated names ("project/name") chosen by creates whose record is not written yet (the service's one set, shared by all its creates). */
  generatedNames: Set<string>;
  /** A VM by id or name (the template). */
  get(idOrName: string): Promise<VmRecord>;
  publish(v: VmRecord, action: string, attributes?: Record<string, unknown>): void;
}

/**
 * Kernels, initrds and base disks come from the image service (names of the project's images,
 * or its ancestors'); a host path (one starting with '/') only when `hostPaths` says the caller
 * is a system administrator, and then the agent still accepts only files in the directories the
 * operator allowed (docs/security.md).
 */
export async function createVm(deps: VmCreateDeps, asked: CreateVmInput, projectId: string, opts: { hostPaths?: boolean } = {}): Promise<VmRecord> {
  if (asked.host !== undefined && asked.agent !== undefined && asked.host !== asked.agent) throw new InvalidArgument(`--host ${asked.host} and --agent ${asked.agent} name two hosts: --agent is --host's older name`);
  const pinned = asked.host ?? asked.agent;
  const placement: PlacementInput = await withGroupResolved(deps.store, projectId, {
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
    if (!deps.disks) throw new InvalidArgument('images for VMs are not available');
    return deps.disks.resolve(name, projectId, { projectId }, kind);
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
    if (!deps.bootVolumes) throw new InvalidArgument('block volumes are not available');
    if (asked.disk !== undefined || diskImage !== undefined) throw new InvalidArgument('give a boot volume (--boot-volume) or a disk (--image, --disk), not both');
    bootVolume = await deps.bootVolumes.forBoot(asked.bootVolume, projectId);
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
  const chosen = await checkName(deps, input.name, projectId);
  const name = chosen.name;
  let rec: VmRecord;
  const id = newVmId();
  let networks: NetworkRecord[];
  try {
    networks = await Promise.all((input.networks ?? []).map((n) => (deps.networks ? deps.networks.forVm(n, projectId) : Promise.reject(new InvalidArgument('networks are not available')))));
    if (networks.length) config.networks = networks.map((n) => n.id);
    rec = await admitAndInsert(deps, id, name, projectId, config, 'created', placement);
  } finally {
    chosen.release();
  }
  const agentName = rec.agent;
  let req: VmCreateRequest = { id, name, ...config };
  try {
    if (fromImages.length) {
      // the images onto the chosen host (carried there when it lacks them); the record keeps that host's paths
      const paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
      for (const { role, image } of fromImages) paths[role] = await deps.disks!.ensureOnHost({ ...image, kind: role }, agentName, deps.agents);
      rec = await deps.store.vms.update(id, { config: { ...config, ...paths } });
      req = { id, name, ...rec.config };
    }
    // laid out on its host first: each host's part of a network is its own segment until overlays (issue 15)
    if (networks.length) await deps.networks!.ensureOnHost(networks, agentName);
    if (networks.length) req.nics = await deps.networks!.leaseVm(id, name, networks);
    // an agent before protocol 7 would pass over `volumes` and boot without the disk: it refuses this first, clearly
    if (bootVolume) await deps.agents.get(agentName).blockVolumeInfo(bootVolume.id);
    await deps.agents.get(agentName).createVm(req);
  } catch (e) {
    await forget(deps, id, agentName, 'create failed');
    throw e;
  }
  deps.publish(rec, 'create', { cpus: config.cpus, memoryMiB: config.memoryMiB });
  return rec;
}

/** A new VM from a saved one (RunD's microVM templates); it is saved, and restore starts it. */
export async function createVmFromTemplate(deps: VmCreateDeps, templateIdOrName: string, name: string | undefined, projectId: string): Promise<VmRecord> {
  const t = await deps.get(templateIdOrName);
  if (t.status !== 'saved' || t.config.template) throw new Conflict(`VM ${t.name} is not a saved VM that can serve as a template (it is ${t.status})`);
  if (t.config.volumes?.length) throw new Conflict(`VM ${t.name} has block volumes attached: a clone would share its disks; detach them first (they are applied at its next start)`);
  const chosen = await checkName(deps, name, projectId);
  const newName = chosen.name;
  const id = newVmId();
  const { template: _none, ...base } = t.config;
  const rec = await admitAndInsert(deps, id, newName, projectId, { ...base, template: t.id }, 'saved', { host: t.agent }).finally(() => chosen.release());
  try {
    await deps.agents.get(t.agent).createVmFromTemplate(t.id, id, newName);
  } catch (e) {
    await forget(deps, id, t.agent, 'create failed');
    throw e;
  }
  deps.publish(rec, 'create', { template: t.id });
  return rec;
}

/**
 * Names are unique per project across containers and VMs (instances are one resource; the
 * store's instance_names holds to it when two creates race past this check).
 */
async function checkName(deps: Pick<VmCreateDeps, 'store' | 'generatedNames'>, name: string | undefined, projectId: string): Promise<{ name: string; release: () => void }> {
  const inStore = async (n: string) => (await deps.store.vms.byName(projectId, n)) !== undefined || (await deps.store.containers.byName(projectId, n)) !== undefined;
  if (name === undefined) {
    // a generated name is held until the record has it: creates of one burst must not draw the same one
    const generated = await generateName(async (n) => {
      const key = `${projectId}/${n}`;
      if (deps.generatedNames.has(key) || (await inStore(n)) || deps.generatedNames.has(key)) return true;
      deps.generatedNames.add(key);
      return false;
    });
    return { name: generated, release: () => deps.generatedNames.delete(`${projectId}/${generated}`) };
  }
  if (!isValidName(name)) throw new InvalidArgument(`invalid VM name "${name}": use letters, digits, '_', '.', '-' (max 128)`);
  if (await inStore(name)) throw new Conflict(`the name "${name}" is already in use by an instance`);
  return { name, release: () => undefined };
}

/** Admission first, then the scheduler's host and claim: a refused request leaves nothing behind. */
async function admitAndInsert(deps: Pick<VmCreateDeps, 'store' | 'agents' | 'quota' | 'scheduler'>, id: string, name: string, projectId: string, config: VmConfig, status: VmStatus, placement: PlacementInput): Promise<VmRecord> {
  await deps.quota.admitVm(id, projectId, { cpus: config.cpus, memoryMiB: config.memoryMiB });
  let agent: string;
  try {
    ({ host: agent } = await deps.scheduler.place({
      consumerId: id, projectId, kind: 'vm', vcpus: config.cpus, memoryBytes: config.memoryMiB * 1024 * 1024, diskBytes: 0, ...placementFields(placement),
    }));
  } catch (e) {
    await deps.quota.release(id, 'create failed');
    throw e;
  }
  try {
    deps.agents.get(agent); // a host the directory does not know: NotFound before anything is made
  } catch (e) {
    await deps.scheduler.release(id);
    await deps.quota.release(id, 'create failed');
    throw e;
  }
  const now = new Date().toISOString();
  const rec: VmRecord = {
    id, name, projectId, config, status, pid: null, exitCode: null,
    createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent,
  };
  try {
    await deps.store.vms.insert(rec);
  } catch (e) {
    await deps.scheduler.release(id);
    await deps.quota.release(id, 'create failed');
    throw e;
  }
  return rec;
}

/** A failed create leaves nothing: not the host state, not the record, not the quota. */
async function forget(deps: Pick<VmCreateDeps, 'store' | 'agents' | 'quota' | 'scheduler'>, id: string, agent: string, reason: string): Promise<void> {
  void deps.agents.get(agent).removeVm(id).catch(() => undefined);
  try {
    await deps.store.vms.delete(id); // its address leases go with it
    await deps.scheduler.release(id);
    await deps.quota.release(id, reason);
  } catch (e) {
    // the caller throws the create's own error; this one is only logged
    log.error('cleaning up after a failed VM create failed', { id, error: String(e) });
  }
}
