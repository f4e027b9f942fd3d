/**
 * `docker commit`, `docker export` and `docker import` in the request's project, over the control
 * services (images/commit-service.ts, container-service.ts exportFs, image-service.ts
 * importRootfs): this edge speaks Docker's words and streams.
 *
 * POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes= (201 {"Id"}); GET
 * /containers/{id}/export (the merged rootfs as a tar); POST /images/create?fromSrc=-&repo=&tag=
 * &changes=&message= with the tarball as the body (images.ts hands fromSrc requests here). A
 * fromSrc URL is refused: nimbusd fetching an address a tenant chose, from inside the cloud's
 * network, is a server-side request forgery hole (docs/docker-api.md).
 */
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import { withSpooledBody } from '../spooled-body.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { inDockerWords, noSuchContainer } from './errors.js';
import { sendTar } from './container-archive.js';

/** dockerd's BoolValue: absent, "", "0", "false", "no", "none" are false. */
const boolValue = (v: string | null) => v !== null && !['', '0', 'false', 'no', 'none'].includes(v.trim().toLowerCase());

/** repo and tag as the CLI sends them (the tag apart, or in repo when the CLI passed the whole reference). */
export function referenceOf(repo: string | null, tag: string | null): string | undefined {
  if (!repo) {
    if (tag) throw new InvalidArgument('a tag needs a repository (repo=)');
    return undefined;
  }
  return tag ? `${repo}:${tag}` : repo;
}

/** The reason a fromSrc that is not "-" is refused, in the 400 the client prints. */
export const FROM_URL_REFUSED = 'docker import from a URL is not supported by Nimbus: nimbusd would fetch an address the caller chose from inside the cloud\'s network (a server-side request forgery hole); download the tarball and import the file (docker import FILE, or - for stdin)';

async function commit(ctx: DockerContext) {
  const { services, query, project } = ctx;
  if (!services.commits) throw new Unavailable('docker commit is not available on this server');
  const ref = query.get('container') ?? '';
  if (!ref) throw new InvalidArgument('container is required (docker commit CONTAINER)');
  // the CLI sends the container config it was given (none: null); Nimbus takes the config from --change only
  const body = await ctx.body();
  if (body !== undefined && body !== null && (typeof body !== 'object' || Object.keys(body).length > 0)) {
    throw new InvalidArgument('a container config in the commit request body is not supported by Nimbus: give the changes as --change instructions');
  }
  const c = await inDockerWords(services.containers.get(ref, { projectId: project }), () => noSuchContainer(ref));
  const reference = referenceOf(query.get('repo'), query.get('tag'));
  // dockerd: an absent pause is true (API 1.13 on), any other value is read as a bool
  const pauseParam = query.get('pause');
  const img = await services.commits.commit({
    container: c.id,
    projectId: project,
    ...(reference ? { reference } : {}),
    changes: query.getAll('changes'),
    ...(query.get('comment') ? { comment: query.get('comment')! } : {}),
    ...(query.get('author') ? { author: query.get('author')! } : {}),
    pause: pauseParam === null || pauseParam === '' ? true : boolValue(pauseParam),
  });
  return { status: 201, json: { Id: img.digest } };
}

async function exportContainer(ctx: DockerContext): Promise<typeof HANDLED> {
  const ref = ctx.params[0]!;
  const c = await inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
  return sendTar(ctx, await ctx.services.containers.exportFs(c.id));
}

/** POST /images/create?fromSrc=…: docker import (images.ts routes fromSrc requests here). */
export async function importTarball(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, query, project } = ctx;
  if (query.get('fromSrc') !== '-') throw new InvalidArgument(FROM_URL_REFUSED);
  if (query.get('platform')) throw new InvalidArgument('docker import --platform is not supported by Nimbus yet: an import is for the host\'s own platform');
  const reference = referenceOf(query.get('repo'), query.get('tag'));
  const { digest: id } = await withSpooledBody(ctx.req, services.options.tmpDir, 'docker-import', '.tar', (file) => services.images.importRootfs(file, project, {
    ...(reference ? { reference } : {}),
    changes: query.getAll('changes'),
    ...(query.get('message') ? { message: query.get('message')! } : {}),
  }));
  // dockerd's answer: a progress stream whose last status is the image's id (the CLI prints it)
  ctx.res.writeHead(200, { 'content-type': 'application/json' });
  ctx.res.end(`${JSON.stringify({ status: id })}\n`);
  return HANDLED;
}

export const commitRoutes: DockerRoute[] = [
  { method: 'POST', pattern: /^\/commit$/, name: 'image commit', access: 'member', handler: commit },
  { method: 'GET', pattern: /^\/containers\/([^/]+)\/export$/, name: 'container export', access: 'reader', handler: exportContainer },
];
