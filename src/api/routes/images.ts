import { Type } from '@sinclair/typebox';
import { withSpooledBody } from '../spooled-body.js';
import { route } from '../route.js';
import { Image, Operation, Ref } from '../schemas.js';
import { buildRoutes } from './builds.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';

/** Image routes with a reference in the path act on the referencing project (the reference itself stays as given). */
const IMAGE = { param: 'ref', kind: 'image', owner: async (s: Services, ref: string, scope: ProjectScope) => (await s.images.resolve(ref, scope)).projectId };


const RefParam = Type.Object({ ref: Ref('Reference, digest or id (URL-encoded)', 1024) });

export const imageRoutes = [
  ...buildRoutes,
  route({
    method: 'GET', path: '/images', operationId: 'listImages', tag: 'images', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List images', response: Type.Array(Image),
    handler: async ({ services, auth }) => (await services.images.list(auth.projectId)).filter((i) => auth.canRead(i.projectId)),
  }),
  route({
    method: 'POST', path: '/images/pull', operationId: 'pullImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Pull an image from an OCI registry; returns an Operation (202)', status: 202,
    body: Type.Object({
      reference: Ref('name[:tag] or name@sha256:digest', 1024),
      username: Type.Optional(Type.String({ maxLength: 256 })),
      // registry tokens (ECR's, say) run to several KiB
      password: Type.Optional(Type.String({ maxLength: 16 * 1024 })),
    }, { additionalProperties: false }),
    response: Operation,
    handler: async ({ body, services, auth }) => ({
      status: 202,
      body: await services.images.pull(
        body.reference,
        auth.project(),
        body.username !== undefined ? { username: body.username, password: body.password ?? '' } : undefined,
      ),
    }),
  }),
  route({
    method: 'POST', path: '/images/import', operationId: 'importImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Import an OCI image-layout tar or a `docker save` tar (request body is the tar)',
    rawBody: 'application/x-tar', response: Type.Array(Type.Object({ name: Type.Union([Type.String(), Type.Null()]), image: Image })), status: 201,
    handler: ({ services, req, auth }) => withSpooledBody(req, services.options.tmpDir, 'import', '.tar', async (file) => (
      { status: 201, body: await services.images.importArchive(file, auth.project()) }
    )),
  }),
  route({
    method: 'POST', path: '/images/prune', operationId: 'pruneImages', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: "Remove the project's dangling images (all=true: every one no container of it uses) and collect garbage no project needs",
    body: Type.Object({ all: Type.Boolean({ default: false }) }, { additionalProperties: false }),
    response: Type.Object({ deleted: Type.Array(Type.String()), bytesFreed: Type.Integer() }),
    handler: ({ body, services, auth }) => services.images.prune(body.all, auth.project()),
  }),
  route({
    method: 'GET', path: '/images/{ref}', operationId: 'inspectImage', tag: 'images', access: 'read',
    auth: { role: 'reader', project: IMAGE },
    summary: 'Inspect an image', params: RefParam, response: Image,
    handler: async ({ params, services, auth }) => {
      const img = await services.images.inspect(params.ref, auth.project());
      // which hosts hold its layers is the operator's to know
      return auth.principal?.systemAdmin === true ? { ...img, hosts: await services.store.images.hosts(img.chainId) } : img;
    },
  }),
  route({
    method: 'DELETE', path: '/images/{ref}', operationId: 'removeImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: IMAGE },
    summary: 'Untag an image; delete it when no tag and no container is left', params: RefParam,
    query: Type.Object({ force: Type.Boolean({ default: false }) }),
    response: Type.Object({ untagged: Type.Array(Type.String()), deleted: Type.Array(Type.String()) }),
    handler: ({ params, query, services, auth }) => services.images.remove(params.ref, auth.project(), query.force),
  }),
];
