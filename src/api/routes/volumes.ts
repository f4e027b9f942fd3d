/** Named volumes (docs/volumes.md): per project, sized, charged to quota, on one host. */
import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Empty, IdParam, Volume, VolumeCreate } from '../schemas.js';
import { PermissionDenied } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';

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
    summary: 'Create a named volume: a sparse ext4 image of its size on one host, charged to the project\'s volumes and disk (MiB) quota',
    status: 201, body: VolumeCreate, response: Volume,
    handler: async ({ body, services, auth }) => {
      if (body.host !== undefined && auth.principal?.systemAdmin !== true) throw new PermissionDenied('only a system administrator may choose a volume\'s host');
      const v = await services.volumes.create({ name: body.name, ...(body.sizeBytes !== undefined ? { sizeBytes: body.sizeBytes } : {}), ...(body.driver ? { driver: body.driver } : {}), labels: body.labels, ...(body.host !== undefined ? { host: body.host } : {}) }, auth.project());
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
];
