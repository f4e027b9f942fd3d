/**
 * Files into and out of a container, running or stopped (`nimbus cp`; the Docker API's
 * /containers/{id}/archive is the same service): the path's stat, the path as a tar (NDJSON
 * frames: the stat, then the tar's bytes in base64 chunks, so a failure mid-way is an in-band
 * error as on every Nimbus stream), and a tar (the request body) extracted under a directory.
 * The container's host resolves the path and unpacks the tar inside the container's rootfs,
 * treating both as hostile (agent/copy/).
 */
import type { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { InvalidArgument } from '../../core/errors.js';
import { route, stream } from '../route.js';
import { ContainerPath, IdParam } from '../schemas.js';
import type { ContainerPathStat } from '../../agent/agent.js';
import { CONTAINER } from './containers.js';

const PathStat = Type.Object({
  name: Type.String(),
  size: Type.Integer(),
  mode: Type.Integer({ description: 'st_mode: type and permission bits' }),
  mtime: Type.String({ format: 'date-time' }),
  linkTarget: Type.String({ description: "A symlink's target resolved inside the container ('' otherwise)" }),
}, { $id: 'ContainerPathStat' });

// optional in the schema so the edge answers who may call (403, 404) before a missing path (400)
const PathQuery = Type.Object({ path: Type.Optional(ContainerPath) });

function required(path: string | undefined): string {
  if (path === undefined) throw new InvalidArgument('path is required: the path in the container', { field: 'path' });
  return path;
}

/** The tar's bytes per frame (base64 makes a frame a third larger). */
const CHUNK_BYTES = 48 * 1024;

/** A tar's bytes as base64 frames; the stream is destroyed when the client goes (what it holds is held until then). */
export async function* base64Frames(bytes: Readable): AsyncGenerator<{ data: string }> {
  try {
    let pending: Buffer = Buffer.alloc(0);
    for await (const chunk of bytes as AsyncIterable<Buffer>) {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      while (pending.length >= CHUNK_BYTES) {
        yield { data: pending.subarray(0, CHUNK_BYTES).toString('base64') };
        pending = pending.subarray(CHUNK_BYTES);
      }
    }
    if (pending.length) yield { data: pending.toString('base64') };
  } finally {
    bytes.destroy();
  }
}

/** The stat, then the tar in base64 frames (the container is held until the stream ends). */
async function* frames(stat: ContainerPathStat, bytes: Readable): AsyncGenerator<unknown> {
  let handedOver = false;
  try {
    yield { stat };
    handedOver = true;
  } finally {
    if (!handedOver) bytes.destroy(); // the client went after the stat
  }
  yield* base64Frames(bytes);
}

export const containerFileRoutes = [
  route({
    method: 'GET', path: '/containers/{id}/archive/stat', operationId: 'containerPathStat', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'A path in the container (running or stopped): its stat, the last symlink not followed unless the path ends in / (its linkTarget resolved inside the container)',
    params: IdParam, query: PathQuery, response: PathStat,
    handler: ({ params, query, services }) => services.containers.pathStat(params.id, required(query.path)),
  }),
  route({
    method: 'GET', path: '/containers/{id}/archive', operationId: 'readContainerArchive', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'A path in the container as a tar, entries named from its last component (docker cp out): NDJSON frames, {"stat"} then {"data": base64 of the tar\'s next bytes}; a running container is frozen until the stream ends',
    params: IdParam, query: PathQuery, streams: 'ndjson',
    response: Type.Union([Type.Object({ stat: PathStat }), Type.Object({ data: Type.String({ contentEncoding: 'base64' }) })]),
    handler: async ({ params, query, services }) => {
      const { stat, bytes } = await services.containers.readArchive(params.id, required(query.path));
      return stream('ndjson', frames(stat, bytes));
    },
  }),
  route({
    method: 'POST', path: '/containers/{id}/archive', operationId: 'writeContainerArchive', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Extract the tar in the request body under a directory of the container (docker cp in), into its writable layer: entries out of the directory, through symlinks, device nodes and oversize trees are refused',
    params: IdParam,
    query: Type.Object({
      path: Type.Optional(ContainerPath),
      noOverwriteDirNonDir: Type.Boolean({ default: true, description: 'Refuse to replace a directory with a non-directory or the reverse' }),
      copyUIDGID: Type.Boolean({ default: false, description: "Own every entry as the container's user (else the tar's owners)" }),
    }),
    rawBody: 'application/x-tar',
    response: Type.Object({ bytes: Type.Integer(), entries: Type.Integer(), unpackedBytes: Type.Integer() }),
    handler: ({ params, query, services, req }) =>
      services.containers.writeArchive(params.id, required(query.path), { noOverwriteDirNonDir: query.noOverwriteDirNonDir, copyUIDGID: query.copyUIDGID }, req),
  }),
];
