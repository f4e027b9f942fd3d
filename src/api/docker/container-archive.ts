/**
 * `docker cp` both ways, on running and stopped containers of the request's project:
 * HEAD /containers/{id}/archive?path= (the path's stat in X-Docker-Container-Path-Stat),
 * GET (a tar of the path, the stat beside it) and PUT (a tar extracted under the directory path;
 * noOverwriteDirNonDir, copyUIDGID). The container's host resolves the path and unpacks the tar
 * inside the container's rootfs, treating both as hostile (agent/copy/); this edge only speaks
 * Docker's words and streams.
 */
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgument, NotFound } from '../../core/errors.js';
import type { ContainerPathStat } from '../../agent/agent.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { inDockerWords, noSuchContainer } from './errors.js';

export const PATH_STAT_HEADER = 'x-docker-container-path-stat';

/** Go's os.FileMode bits the docker CLI reads (IsDir, symlinks, the irregular kinds). */
const GO_MODE = {
  dir: 2 ** 31, symlink: 2 ** 27, device: 2 ** 26, namedPipe: 2 ** 25, socket: 2 ** 24,
  setuid: 2 ** 23, setgid: 2 ** 22, charDevice: 2 ** 21, sticky: 2 ** 20,
} as const;

/** st_mode → Go's os.FileMode, as dockerd's stat answers it. */
export function goFileMode(stMode: number): number {
  let m = stMode & 0o777;
  switch (stMode & 0o170000) {
    case 0o040000: m += GO_MODE.dir; break;
    case 0o120000: m += GO_MODE.symlink; break;
    case 0o010000: m += GO_MODE.namedPipe; break;
    case 0o140000: m += GO_MODE.socket; break;
    case 0o020000: m += GO_MODE.device + GO_MODE.charDevice; break;
    case 0o060000: m += GO_MODE.device; break;
    default: break;
  }
  if (stMode & 0o4000) m += GO_MODE.setuid;
  if (stMode & 0o2000) m += GO_MODE.setgid;
  if (stMode & 0o1000) m += GO_MODE.sticky;
  return m;
}

/** The X-Docker-Container-Path-Stat header: base64 of Docker's ContainerPathStat JSON. */
export function pathStatHeader(stat: ContainerPathStat): string {
  const doc = { name: stat.name, size: stat.size, mode: goFileMode(stat.mode), mtime: stat.mtime, linkTarget: stat.linkTarget };
  return Buffer.from(JSON.stringify(doc)).toString('base64');
}

/** A query flag as the docker CLI sends it ("true", "1"). */
const flag = (v: string | null) => v === '1' || v === 'true' || v === 'True';

async function target(ctx: DockerContext) {
  const ref = ctx.params[0]!.replace(/^\//, '');
  const path = ctx.query.get('path') ?? '';
  // dockerd's words for a missing path parameter
  if (!path) throw new InvalidArgument('bad parameter: path cannot be empty');
  const c = await inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
  // dockerd's words for a path that is not there (the CLI prints "No such container:path")
  const notThere = () => new NotFound(`Could not find the file ${path} in container ${ref}`);
  return { c, path, notThere };
}

async function stat(ctx: DockerContext) {
  const { c, path, notThere } = await target(ctx);
  const st = await inDockerWords(ctx.services.containers.pathStat(c.id, path), notThere);
  return { status: 200, headers: { [PATH_STAT_HEADER]: pathStatHeader(st) } };
}

/** A 200 with a tar body; a stream that fails after the 200 is cut, so the client sees a broken archive, not a short one. */
export async function sendTar(ctx: DockerContext, bytes: Readable, headers: Record<string, string> = {}): Promise<typeof HANDLED> {
  ctx.res.writeHead(200, { 'content-type': 'application/x-tar', ...headers });
  try {
    await pipeline(bytes, ctx.res);
  } catch {
    bytes.destroy();
    ctx.res.destroy();
  }
  return HANDLED;
}

async function read(ctx: DockerContext): Promise<typeof HANDLED> {
  const { c, path, notThere } = await target(ctx);
  const { stat: st, bytes } = await inDockerWords(ctx.services.containers.readArchive(c.id, path), notThere);
  return sendTar(ctx, bytes, { [PATH_STAT_HEADER]: pathStatHeader(st) });
}

async function write(ctx: DockerContext) {
  const { c, path, notThere } = await target(ctx);
  const opts = {
    ...(flag(ctx.query.get('noOverwriteDirNonDir')) ? { noOverwriteDirNonDir: true } : {}),
    ...(flag(ctx.query.get('copyUIDGID')) ? { copyUIDGID: true } : {}),
  };
  await inDockerWords(ctx.services.containers.writeArchive(c.id, path, opts, ctx.req), notThere);
  return { status: 200 };
}

const ARCHIVE = /^\/containers\/([^/]+)\/archive$/;

export const containerArchiveRoutes: DockerRoute[] = [
  { method: 'HEAD', pattern: ARCHIVE, name: 'container path stat', access: 'reader', handler: stat },
  { method: 'GET', pattern: ARCHIVE, name: 'container archive', access: 'reader', handler: read },
  { method: 'PUT', pattern: ARCHIVE, name: 'container extract to dir', access: 'member', handler: write },
];
