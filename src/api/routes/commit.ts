/**
 * A container made into an image, a container's filesystem as a tar, and a rootfs tarball made
 * into an image (`nimbus commit`, `nimbus export`, `nimbus image import-rootfs`; the Docker API's
 * /commit, /containers/{id}/export and /images/create?fromSrc=- are the same services).
 */
import { Type } from '@sinclair/typebox';
import { Unavailable } from '../../core/errors.js';
import { withSpooledBody } from '../spooled-body.js';
import { MAX_CHANGES, MAX_CHANGE_LENGTH } from '../../control/images/changes.js';
import { route, stream } from '../route.js';
import { IdParam, Image, Ref } from '../schemas.js';
import { CONTAINER } from './containers.js';
import { base64Frames } from './container-files.js';

const Changes = Type.Array(Type.String({ maxLength: MAX_CHANGE_LENGTH }), {
  maxItems: MAX_CHANGES,
  description: 'Dockerfile instructions applied to the image config, as docker commit --change: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL',
});


export const commitRoutes = [
  route({
    method: 'POST', path: '/containers/{id}/commit', operationId: 'commitContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: "A new image of the container's project: its image's layers plus one layer of its writable layer (deletions as whiteouts), the container's config edited by `changes`; a running container is frozen while its layer is read unless pause is false",
    params: IdParam,
    body: Type.Object({
      reference: Type.Optional(Ref('REPO[:TAG] to tag the image with (":latest" when no tag); none: an untagged image', 1024)),
      changes: Type.Optional(Changes),
      comment: Type.Optional(Type.String({ maxLength: 65536, description: 'The commit message (docker commit -m)' })),
      author: Type.Optional(Type.String({ maxLength: 4096, description: 'The author (docker commit -a)' })),
      pause: Type.Boolean({ default: true, description: 'Freeze a running container while its layer is read' }),
    }, { additionalProperties: false }),
    response: Image, status: 201,
    handler: async ({ params, body, services, auth }) => {
      if (!services.commits) throw new Unavailable('this daemon does not commit containers');
      const img = await services.commits.commit({
        container: params.id, projectId: auth.project(), pause: body.pause,
        ...(body.reference ? { reference: body.reference } : {}),
        ...(body.changes ? { changes: body.changes } : {}),
        ...(body.comment ? { comment: body.comment } : {}),
        ...(body.author ? { author: body.author } : {}),
      });
      return { status: 201, body: img };
    },
  }),
  route({
    method: 'GET', path: '/containers/{id}/export', operationId: 'exportContainer', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: "The container's whole filesystem as its processes see it (image layers and writable layer merged; mounts not included) as one tar, running or stopped (docker export): NDJSON frames {\"data\": base64 of the tar's next bytes}; a running container is frozen until the stream ends",
    params: IdParam, streams: 'ndjson',
    response: Type.Object({ data: Type.String({ contentEncoding: 'base64' }) }),
    handler: async ({ params, services }) => stream('ndjson', base64Frames(await services.containers.exportFs(params.id))),
  }),
  route({
    method: 'POST', path: '/images/import-rootfs', operationId: 'importRootfs', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'A one-layer image from a root filesystem tarball in the request body, plain or gzip (docker import): its entries checked as any image layer\'s (paths out of the root, device nodes, links out of the tree and oversize layers refused), its config from `changes`',
    query: Type.Object({
      reference: Type.Optional(Ref('REPO[:TAG] to tag the image with', 1024)),
      changes: Type.Optional(Changes),
      message: Type.Optional(Type.String({ maxLength: 65536, description: 'The history comment (default "Imported from -")' })),
    }),
    rawBody: 'application/x-tar', response: Image, status: 201,
    handler: ({ query, services, req, auth }) => withSpooledBody(req, services.options.tmpDir, 'import-rootfs', '.tar', async (file) => {
      const img = await services.images.importRootfs(file, auth.project(), {
        ...(query.reference ? { reference: query.reference } : {}),
        ...(query.changes ? { changes: query.changes } : {}),
        ...(query.message ? { message: query.message } : {}),
      });
      return { status: 201, body: img };
    }),
  }),
];
