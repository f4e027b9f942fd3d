/** Named volumes (docs/volumes.md): per project, sized, charged to quota, on one host. */
import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Empty, IdParam, Name, Ref, Volume, VolumeCreate, VolumeSnapshot } from '../schemas.js';
import { PermissionDenied } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';

/** Snapshot routes act on the project of the snapshot named in the path. */
const SNAPSHOT = {
  param: 'id', kind: 'volume snapshot',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const x = await s.volumes.block.getSnapshot(ref, scope);
    return { projectId: x.projectId, id: x.id };
  },
};

/** VM routes (attach, detach) act on the project of the VM in the path: the volume is looked up in that project only. */
const VM = {
  param: 'id', kind: 'vm',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const v = await s.vms.get(ref, scope);
    return { projectId: v.projectId, id: v.id };
  },
};

const Attachment = Type.Object({
  vm: Type.String(), vmId: Type.String(), volume: Type.String(), volumeId: Type.String(),
  live: Type.Boolean({ description: 'true: plugged into (or out of) the running guest now; false: recorded, applied at the VM\'s next start' }),
  readonly: Type.Optional(Type.Boolean()),
}, { $id: 'VolumeAttachment' });

/** Volume routes act on the project of the volume named in the path, looked up in the caller's scope. */
const VOLUME = {
  param: 'id', kind: 'volume',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const v = await s.volumes.get(ref, scope);
    return { projectId: v.projectId, id: v.id };
  },
};

export const volumeRoutes = [
  route({
    method: 'GET', path: '/volumes', operationId: 'listVolumes', tag: 'volumes', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List volumes',
    response: Type.Array(Volume),
    handler: async ({ services, auth }) => (await services.volumes.list(auth.projectId ?? undefined)).filter((v) => auth.canRead(v.projectId)),
  }),
  route({
    method: 'POST', path: '/volumes', operationId: 'createVolume', tag: 'volumes', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a named volume: a sparse ext4 image for containers, or (type block) a qcow2 disk for VMs, of its size on one host, charged to the project\'s volumes and disk (MiB) quota; fromSnapshot clones a block volume\'s snapshot',
    status: 201, body: VolumeCreate, response: Volume,
    handler: async ({ body, services, auth }) => {
      if (body.host !== undefined && auth.principal?.systemAdmin !== true) throw new PermissionDenied('only a system administrator may choose a volume\'s host');
      const v = await services.volumes.create({
        name: body.name, ...(body.sizeBytes !== undefined ? { sizeBytes: body.sizeBytes } : {}), ...(body.driver ? { driver: body.driver } : {}), labels: body.labels, ...(body.host !== undefined ? { host: body.host } : {}),
        ...(body.type !== undefined ? { type: body.type } : {}), ...(body.shared !== undefined ? { shared: body.shared } : {}), ...(body.fromSnapshot !== undefined ? { fromSnapshot: body.fromSnapshot } : {}),
      }, auth.project());
      return { status: 201, body: v };
    },
  }),
  route({
    method: 'GET', path: '/volumes/{id}', operationId: 'inspectVolume', tag: 'volumes', access: 'read',
    auth: { role: 'reader', project: VOLUME },
    summary: 'Inspect a volume: its size, the bytes its files take, the containers that use it', params: IdParam, response: Volume,
    handler: async ({ params, services, auth }) => {
      const { mountpoint, ...view } = await services.volumes.inspect(await services.volumes.get(params.id));
      // where it lies on the host is the operator's to know (as VM boot files: docs/security.md)
      return auth.principal?.systemAdmin === true && mountpoint !== undefined ? { ...view, mountpoint } : view;
    },
  }),
  route({
    method: 'DELETE', path: '/volumes/{id}', operationId: 'removeVolume', tag: 'volumes', access: 'write',
    auth: { role: 'member', project: VOLUME },
    summary: 'Remove a volume and its data (refused while a container uses it; force: a host that does not answer does not keep it)',
    params: IdParam, query: Type.Object({ force: Type.Boolean({ default: false }) }), response: Empty,
    handler: async ({ params, query, services }) => {
      await services.volumes.remove(params.id, { canRead: () => true }, { force: query.force });
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/volumes/prune', operationId: 'pruneVolumes', tag: 'volumes', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Remove every volume of the project that no container uses',
    response: Type.Object({ removed: Type.Array(Type.String()), bytesFreed: Type.Integer({ description: 'The removed volumes\' sizes (what the quota got back)' }) }),
    handler: async ({ services, auth }) => {
      const removed: VolumeRecord[] = await services.volumes.prune(auth.project());
      return { removed: removed.map((v) => v.name), bytesFreed: removed.reduce((n, v) => n + v.sizeBytes, 0) };
    },
  }),
  route({
    method: 'POST', path: '/volumes/{id}/snapshots', operationId: 'snapshotVolume', tag: 'volumes', access: 'write',
    auth: { role: 'member', project: VOLUME },
    summary: 'Take a snapshot of a block volume (refused while a running VM holds it, as Cinder refuses an in-use volume); charged its size in disk',
    status: 201, params: IdParam, body: Type.Object({ name: Name({ description: 'Unique in the project' }) }, { additionalProperties: false }), response: VolumeSnapshot,
    handler: async ({ params, body, services }) => ({ status: 201, body: await services.volumes.block.createSnapshot(await services.volumes.get(params.id), body.name) }),
  }),
  route({
    method: 'GET', path: '/volume-snapshots', operationId: 'listVolumeSnapshots', tag: 'volumes', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List block volumes\' snapshots', query: Type.Object({ volume: Type.Optional(Ref('Only this volume\'s (name or id, in the project)', 128)) }),
    response: Type.Array(VolumeSnapshot),
    handler: async ({ services, auth, query }) => {
      const volumeId = query.volume !== undefined ? (await services.volumes.get(query.volume, { canRead: (p: string) => auth.canRead(p) && (!auth.projectId || p === auth.projectId) })).id : undefined;
      return (await services.volumes.block.listSnapshots({ ...(auth.projectId ? { projectId: auth.projectId } : {}), ...(volumeId ? { volumeId } : {}) })).filter((x) => auth.canRead(x.projectId));
    },
  }),
  route({
    method: 'GET', path: '/volume-snapshots/{id}', operationId: 'inspectVolumeSnapshot', tag: 'volumes', access: 'read',
    auth: { role: 'reader', project: SNAPSHOT }, summary: 'Inspect a volume snapshot', params: IdParam, response: VolumeSnapshot,
    handler: async ({ params, services }) => services.volumes.block.getSnapshot(params.id),
  }),
  route({
    method: 'DELETE', path: '/volume-snapshots/{id}', operationId: 'removeVolumeSnapshot', tag: 'volumes', access: 'write',
    auth: { role: 'member', project: SNAPSHOT },
    summary: 'Remove a snapshot: what it backs (its volume, clones made from it) keeps its data; refused while a running VM holds one of those',
    params: IdParam, response: Empty,
    handler: async ({ params, services }) => {
      await services.volumes.block.removeSnapshot(await services.volumes.block.getSnapshot(params.id));
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/vms/{id}/volumes', operationId: 'attachVolume', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Attach a block volume of the VM\'s project and host: hot-plugged (virtio-blk) while it runs, applied at its next start while stopped; one read-write holder at a time unless the volume is shared',
    params: IdParam,
    body: Type.Object({ volume: Ref('Block volume name or id, in the VM\'s project', 128), readonly: Type.Optional(Type.Boolean({ default: false })) }, { additionalProperties: false }),
    response: Attachment,
    handler: async ({ params, body, services }) => {
      const r = await services.volumes.block.attach(await services.vms.get(params.id), body.volume, { readonly: body.readonly === true });
      return { vm: r.vm.name, vmId: r.vm.id, volume: r.volume.name, volumeId: r.volume.id, live: r.live, ...(body.readonly ? { readonly: true } : {}) };
    },
  }),
  route({
    method: 'DELETE', path: '/vms/{id}/volumes/{volume}', operationId: 'detachVolume', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Detach a block volume: unplugged once the guest releases it (DEVICE_DELETED) while the VM runs, off its record otherwise; the volume stays',
    params: Type.Object({ id: Ref('Full id, unique id prefix, or name'), volume: Ref('Block volume name or id', 128) }),
    response: Attachment,
    handler: async ({ params, services }) => {
      const r = await services.volumes.block.detach(await services.vms.get(params.id), params.volume);
      return { vm: r.vm.name, vmId: r.vm.id, volume: r.volume.name, volumeId: r.volume.id, live: r.live };
    },
  }),
];
