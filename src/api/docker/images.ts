/** Images: pull (with Docker's progress lines), list, inspect, tag, remove — in the request's project. */
import { setTimeout as sleep } from 'node:timers/promises';
import { InvalidArgument, toNimbusError } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import type { ImageView } from '../../control/images/image-service.js';
import type { OperationRecord } from '../../store/records.js';
import { familiarName, parseFilters } from './mapping.js';
import { inDockerWords, noSuchImage } from './errors.js';
import { IMAGE_LIST_FILTERS, checkImageFilters, imageCreated, matchesImageFilters, tagsMatching } from './image-filters.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { importTarball } from './commit.js';

const unix = (iso: string | undefined) => (iso ? Math.floor(Date.parse(iso) / 1000) : 0);
/** How often a pull's operation is read for progress lines. */
const PULL_POLL_MS = 150;

/** "repo:tag" → "repo@sha256:…" for each repository the image is tagged in. */
function repoDigests(img: ImageView): string[] {
  const repos = new Set(img.tags.map((t) => t.replace(/:[^:/]+$/, '')));
  return [...repos].map((r) => `${familiarName(r)}@${img.indexDigest ?? img.digest}`);
}

export function imageSummary(img: ImageView): Record<string, unknown> {
  return {
    Id: img.digest,
    ParentId: '',
    RepoTags: img.tags.map(familiarName),
    RepoDigests: repoDigests(img),
    Created: unix(img.config.created ?? img.createdAt),
    Size: img.size,
    VirtualSize: img.size,
    SharedSize: -1,
    Labels: img.config.config?.Labels ?? {},
    Containers: img.containers,
  };
}

export function imageInspect(img: ImageView): Record<string, unknown> {
  const c = img.config.config ?? {};
  const config = {
    Hostname: '', Domainname: '', User: c.User ?? '', AttachStdin: false, AttachStdout: false, AttachStderr: false, Tty: false, OpenStdin: false, StdinOnce: false,
    Env: c.Env ?? null, Cmd: c.Cmd ?? null, Entrypoint: c.Entrypoint ?? null, Image: '', Volumes: null, WorkingDir: c.WorkingDir ?? '',
    Labels: c.Labels ?? null, OnBuild: null, ExposedPorts: c.ExposedPorts ?? null, ...(c.StopSignal ? { StopSignal: c.StopSignal } : {}),
  };
  return {
    Id: img.digest,
    RepoTags: img.tags.map(familiarName),
    RepoDigests: repoDigests(img),
    Parent: '',
    // docker commit -m and -a, docker import -m: the config's comment and author
    Comment: typeof (img.config as { comment?: unknown }).comment === 'string' ? (img.config as { comment: string }).comment : '',
    Created: img.config.created ?? img.createdAt,
    Container: '',
    DockerVersion: '',
    Author: typeof (img.config as { author?: unknown }).author === 'string' ? (img.config as { author: string }).author : '',
    Config: config,
    // the legacy builder's record of the container an image was committed from: clients still read it (compose 1.29 does)
    ContainerConfig: config,
    Architecture: img.config.architecture ?? '',
    Os: img.config.os ?? 'linux',
    Size: img.size,
    VirtualSize: img.size,
    GraphDriver: { Name: 'overlay', Data: null },
    RootFS: { Type: 'layers', Layers: img.config.rootfs?.diff_ids ?? img.layers.map((l) => l.diffId) },
    Metadata: { LastTagTime: img.createdAt },
  };
}

export { matchesImageFilters, tagsMatching } from './image-filters.js';

/** The creation time of the image a before= or since= filter names (one value, as dockerd takes the last). */
async function boundOf(services: Services, project: string, filters: Map<string, string[]>, key: 'before' | 'since'): Promise<number | undefined> {
  const values = filters.get(key) ?? [];
  if (!values.length) return undefined;
  return imageCreated(await projectImage(services, values[values.length - 1]!, project));
}

/** X-Registry-Auth: base64(url) JSON of the CLI's stored credentials for the registry; "{}" when it has none. */
export function registryAuth(header: string | undefined): { username: string; password: string } | undefined {
  if (!header) return undefined;
  let doc: { username?: unknown; password?: unknown; identitytoken?: unknown };
  try {
    doc = JSON.parse(Buffer.from(header.replace(/-/g, '+').replace(/_/g, '/'), 'base64').toString('utf8')) as typeof doc;
  } catch {
    throw new InvalidArgument('X-Registry-Auth is not base64 JSON');
  }
  if (doc && typeof doc.identitytoken === 'string' && doc.identitytoken) throw new InvalidArgument('registry identity tokens are not supported yet: log in with a user name and password');
  if (!doc || typeof doc.username !== 'string' || !doc.username) return undefined;
  return { username: doc.username, password: typeof doc.password === 'string' ? doc.password : '' };
}

/** The reference a pull names: fromImage with tag (a tag or a digest), "latest" when neither says. */
export function pullReference(fromImage: string, tag: string | null): string {
  if (!fromImage) throw new InvalidArgument('fromImage is required (or fromSrc=- to import a tarball)');
  if (tag) return tag.startsWith('sha256:') ? `${fromImage}@${tag}` : `${fromImage}:${tag}`;
  const lastPart = fromImage.slice(fromImage.lastIndexOf('/') + 1);
  return lastPart.includes(':') || fromImage.includes('@') ? fromImage : `${fromImage}:latest`;
}

interface PullProgressDoc { layers?: Array<{ digest: string; status: string; bytesDone: number; bytesTotal: number }>; phase?: string }

/** Docker's line for one layer's state (the CLI draws a bar from progressDetail). */
export function layerLine(l: NonNullable<PullProgressDoc['layers']>[number]): Record<string, unknown> {
  const id = l.digest.replace(/^sha256:/, '').slice(0, 12);
  switch (l.status) {
    case 'waiting': return { status: 'Waiting', progressDetail: {}, id };
    case 'verifying': return { status: 'Verifying Checksum', progressDetail: {}, id };
    case 'done': return { status: 'Pull complete', progressDetail: {}, id };
    case 'exists': return { status: 'Already exists', progressDetail: {}, id };
    default: return { status: 'Downloading', progressDetail: { current: l.bytesDone, total: l.bytesTotal }, id };
  }
}

async function pull(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, query, req, res, project, signal } = ctx;
  // docker import: a rootfs tarball in the body (commit.ts)
  if (query.get('fromSrc') !== null) return importTarball(ctx);
  const ref = pullReference(query.get('fromImage') ?? '', query.get('tag'));
  const auth = registryAuth(req.headers['x-registry-auth'] as string | undefined);
  const normalized = services.images.normalize(ref);
  const before = await services.images.resolve(ref, { projectId: project }).catch(() => undefined);
  const op = await services.images.pull(ref, project, auth);
  res.writeHead(200, { 'content-type': 'application/json' });
  const line = (doc: unknown) => res.write(JSON.stringify(doc) + '\n');
  const at = ref.lastIndexOf('@') > 0 ? ref.lastIndexOf('@') : ref.lastIndexOf(':') > ref.lastIndexOf('/') ? ref.lastIndexOf(':') : ref.length;
  line({ status: `Pulling from ${familiarName(ref.slice(0, at))}`, id: ref.slice(at + 1) || 'latest' });
  const sent = new Map<string, string>();
  let cur: OperationRecord = op;
  for (;;) {
    for (const l of (cur.progress as PullProgressDoc).layers ?? []) {
      const doc = layerLine(l);
      const key = JSON.stringify(doc);
      if (sent.get(l.digest) !== key) {
        sent.set(l.digest, key);
        line(doc);
      }
    }
    if (cur.status !== 'pending' && cur.status !== 'running') break;
    if (signal.aborted) return HANDLED; // the pull goes on: another pull of it joins the content
    await sleep(PULL_POLL_MS);
    cur = await services.operations.get(op.id);
  }
  if (cur.status !== 'succeeded') {
    const message = cur.error?.message ?? `pull ${cur.status}`;
    res.end(JSON.stringify({ errorDetail: { message }, error: message }) + '\n');
    return HANDLED;
  }
  const result = cur.result as { digest?: string } | null;
  line({ status: `Digest: ${result?.digest ?? ''}` });
  line({ status: before && before.digest === result?.digest ? `Status: Image is up to date for ${familiarName(normalized)}` : `Status: Downloaded newer image for ${familiarName(normalized)}` });
  res.end();
  return HANDLED;
}

/** The project's image named in the path, in Docker's words when it has none by that name. */
export async function projectImage(services: Services, ref: string, project: string): Promise<ImageView> {
  return inDockerWords(services.images.inspect(ref, project), () => noSuchImage(ref));
}

export const imageRoutes: DockerRoute[] = [
  { method: 'POST', pattern: /^\/images\/create$/, name: 'image pull', access: 'member', handler: pull },
  {
    method: 'GET', pattern: /^\/images\/json$/, name: 'image list', access: 'reader',
    handler: async ({ services, project, query }) => {
      const filters = parseFilters(query.get('filters') ?? undefined);
      checkImageFilters(filters, IMAGE_LIST_FILTERS);
      const bounds = { before: await boundOf(services, project, filters, 'before'), since: await boundOf(services, project, filters, 'since') };
      const images = (await services.images.list(project)).filter((img) => matchesImageFilters(img, filters, bounds));
      // as dockerd: an image listed by reference shows the tags that matched only
      const refs = filters.get('reference');
      return { json: images.map((img) => imageSummary(refs?.length ? { ...img, tags: tagsMatching(img.tags, refs) } : img)) };
    },
  },
  {
    method: 'GET', pattern: /^\/images\/(.+)\/json$/, name: 'image inspect', access: 'reader',
    handler: async ({ services, params, project }) => ({ json: imageInspect(await projectImage(services, params[0]!, project)) }),
  },
  {
    method: 'POST', pattern: /^\/images\/(.+)\/tag$/, name: 'image tag', access: 'member',
    handler: async ({ services, params, project, query }) => {
      const img = await projectImage(services, params[0]!, project);
      const repo = query.get('repo');
      if (!repo) throw new InvalidArgument('repo is required');
      const tag = query.get('tag') || 'latest';
      await services.images.tag(img, `${repo}:${tag}`, project);
      return { status: 201 };
    },
  },
  {
    method: 'DELETE', pattern: /^\/images\/(.+)$/, name: 'image remove', access: 'member',
    handler: async ({ services, params, project, query }) => {
      const ref = params[0]!;
      const force = query.get('force') === '1' || query.get('force') === 'true';
      try {
        const r = await inDockerWords(services.images.remove(ref, project, force), () => noSuchImage(ref));
        return { json: [...r.untagged.map((u) => ({ Untagged: familiarName(u) })), ...r.deleted.map((d) => ({ Deleted: d }))] };
      } catch (e) {
        // Docker's wording for an image in use (scripts grep for it)
        const err = toNimbusError(e);
        if (err.code === 'Conflict' && /used by/.test(err.message)) err.message = `conflict: unable to remove repository reference "${ref}" (must force) - ${err.message}`;
        throw err;
      }
    },
  },
];
