import { Type } from '@sinclair/typebox';
import { withSpooledBody } from '../spooled-body.js';
import { InvalidArgument } from '../../core/errors.js';
import { route } from '../route.js';
import { Empty } from '../schemas.js';
import type { Services } from '../../control/services.js';
import { pickInScope, type ProjectScope } from '../../control/identity/scope.js';

const DiskImage = Type.Object(
  {
    projectId: Type.String(),
    name: Type.String(),
    digest: Type.String(),
    format: Type.Union([Type.Literal('raw'), Type.Literal('qcow2'), Type.Literal('kernel'), Type.Literal('initrd')], { description: 'raw or qcow2 for a disk; kernel or initrd for a direct kernel boot' }),
    size: Type.Integer(),
    virtualSize: Type.Integer(),
    createdAt: Type.String(),
  },
  { $id: 'DiskImage' },
);

const NameParam = Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }) });

/** A disk image named in the path belongs to the project it is found in (the caller's scope). */
const DISK = {
  param: 'name', kind: 'disk image',
  owner: async (s: Services, name: string, scope: ProjectScope) => {
    const d = pickInScope((await s.disks.list()).filter((x) => x.name === name), scope, (x) => `${x.projectId}/${x.name}`, 'disk image', name);
    return { projectId: d.projectId, id: d.name };
  },
};

export const diskImageRoutes = [
  route({
    method: 'GET', path: '/disk-images', operationId: 'listDiskImages', tag: 'images', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List VM disk images (raw, qcow2)', response: Type.Array(DiskImage),
    handler: async ({ services, auth }) => (await services.disks.list(auth.projectId ?? undefined)).filter((d) => auth.canRead(d.projectId)),
  }),
  route({
    method: 'POST', path: '/disk-images', operationId: 'importDiskImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Import a VM image (the request body is the file): a disk (raw or qcow2; a qcow2 naming a backing or data file is refused), '
      + 'or the kernel (bzImage or ELF) or initrd (cpio) of a direct kernel boot, which VMs then name in kernel and initrd',
    // optional in the schema so that access is decided before the request's shape (as for every route)
    query: Type.Object({
      name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'The image\'s name in the project (required)' })),
      type: Type.Union([Type.Literal('disk'), Type.Literal('kernel'), Type.Literal('initrd')], { default: 'disk', description: 'What the file is for' }),
    }),
    rawBody: 'application/octet-stream', response: DiskImage, status: 201,
    handler: async ({ services, req, auth, query }) => {
      if (!query.name) throw new InvalidArgument('a disk image needs a name (?name=)');
      const name = query.name;
      return withSpooledBody(req, services.options.tmpDir, 'disk', '', async (file) => (
        { status: 201, body: await services.disks.import(file, name, auth.project(), query.type) }
      ));
    },
  }),
  route({
    method: 'DELETE', path: '/disk-images/{name}', operationId: 'removeDiskImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: DISK },
    summary: 'Remove a disk image (refused while a VM\'s disk is backed by it)', params: NameParam, response: Empty,
    handler: async ({ params, services, auth }) => {
      await services.disks.remove(params.name, auth.project());
      return { status: 204 };
    },
  }),
];
