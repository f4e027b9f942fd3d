/**
 * Image builds as the control plane runs them (docs/builds.md): the context is kept in a private
 * temp file (bounded), its Dockerfile read for the images it names, the build's CPU and memory
 * admitted against the project's quota (held until it ends), each named image resolved in the
 * project or pulled through Nimbus (credentials, digest checks) and made present on the build's
 * host, then the host builds (agent buildImage: buildah, no registry access of its own) and the
 * result becomes the project's image, tagged as asked. The work is an Operation `image.build`
 * whose progress carries the builder's output lines.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { InvalidArgument, NotFound, PayloadTooLarge, PermissionDenied, hasCode } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { DEFAULT_REGISTRY, parseReference } from '../../core/image-reference.js';
import { logger } from '../../core/log.js';
import type { BuildRequest } from '../../agent/agent.js';
import { MAX_DOCKERFILE_BYTES, dockerfileImages, remoteAddSources } from '../../agent/images/dockerfile.js';
import type { OperationRecord } from '../../store/records.js';
import type { OperationService } from '../operations/operations.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { ImageService } from './image-service.js';

const log = logger('builds');

/** The largest build context accepted (the API checks Content-Length first; a chunked body is counted). */
export const MAX_BUILD_CONTEXT_BYTES = 512 * 1024 * 1024;
/** What a build asks of the quota unless it says otherwise. */
export const DEFAULT_BUILD_RESOURCES = { cpus: 1, memoryBytes: 1024 * 1024 * 1024 };
/** A build's progress keeps this many output lines (the oldest are dropped, and counted). */
const MAX_PROGRESS_LINES = 2000;
/** How long a FROM image's pull may take before the build gives up on it. */
const PULL_WAIT_MS = 15 * 60_000;

export interface BuildInput {
  projectId: string;
  /** Tags the image gets (docker build -t), as given. */
  tags: string[];
  dockerfile?: string;
  buildArgs?: Record<string, string>;
  target?: string;
  labels?: Record<string, string>;
  /** RUN steps' network: none unless asked for, and host only for a system administrator. */
  network?: 'none' | 'host';
  mayUseHostNetwork: boolean;
  resources?: { cpus?: number; memoryBytes?: number };
  /** Registry credentials for the FROM images' pulls, by registry host (never logged). */
  credentials?: Record<string, { username: string; password: string }>;
  /** docker build --no-cache: every step run again (the results still cached for later builds). */
  noCache?: boolean;
}

/** An image.build operation's progress: the builder's lines (a window: `dropped` went before it) and the step it is at. */
export interface BuildProgressDoc {
  phase: 'admitted' | 'base-images' | 'building' | 'importing' | 'done';
  step?: string;
  lines: string[];
  dropped: number;
  /** The Dockerfile's instructions (Docker's "Step N/T" total). */
  totalSteps: number;
}

export class BuildService {
  constructor(
    private readonly images: ImageService,
    private readonly operations: OperationService,
    private readonly quota: QuotaService,
    private readonly tmpDir: string,
  ) {}

  /**
   * The context (a tar stream) into a temp file, the request checked, the quota admitted, then the
   * build started as an Operation. What is wrong with the request (the Dockerfile, a tag, the
   * quota) is refused here, before any Operation exists.
   */
  async start(input: BuildInput, context: AsyncIterable<Uint8Array>): Promise<OperationRecord> {
    const dockerfile = (input.dockerfile || 'Dockerfile').replace(/^(\.\/)+/, '');
    if (dockerfile.startsWith('/') || posix.normalize(dockerfile).startsWith('..')) throw new InvalidArgument(`the Dockerfile path ${dockerfile.slice(0, 200)} is outside the build context`);
    const tags = [...new Set(input.tags.map((t) => this.images.normalize(t)))];
    if (input.network === 'host' && !input.mayUseHostNetwork) throw new PermissionDenied('a build with the host network is for system administrators only');
    const resources = { ...DEFAULT_BUILD_RESOURCES, ...Object.fromEntries(Object.entries(input.resources ?? {}).filter(([, v]) => v !== undefined)) };
    if (!(resources.cpus > 0 && resources.cpus <= 64)) throw new InvalidArgument('a build asks for between 0 and 64 CPUs');
    if (!(resources.memoryBytes >= 64 * 1024 * 1024)) throw new InvalidArgument('a build asks for at least 64 MiB of memory');

    const id = newId().slice(0, 24);
    await mkdir(this.tmpDir, { recursive: true });
    const file = join(this.tmpDir, `build-${id}.tar`);
    let admitted = false;
    try {
      await saveBounded(context, file, MAX_BUILD_CONTEXT_BYTES);
      const text = await readMember(file, dockerfile);
      const named = dockerfileImages(text, input.buildArgs ?? {});
      const remote = remoteAddSources(text, input.buildArgs ?? {});
      if (remote.length && input.network !== 'host') throw new PermissionDenied(`ADD ${remote[0]!.slice(0, 200)}: the builder would fetch it from the host's network; put it in the build context (remote ADD needs network=host, for administrators)`);
      if (input.target && !named.stages.includes(input.target.toLowerCase())) throw new InvalidArgument(`target stage "${input.target}" is not in the Dockerfile`);
      await this.quota.admitBuild(`build-${id}`, input.projectId, resources);
      admitted = true;
      const totalSteps = countInstructions(text);
      return await this.operations.start('image.build', tags[0] ?? `build ${id}`, input.projectId, async (op) => {
        // one document, handed over as it grows (not copied per line: a build prints thousands)
        const doc: BuildProgressDoc = { phase: 'admitted', lines: [], dropped: 0, totalSteps };
        const say = (line: string) => {
          doc.lines.push(line);
          if (doc.lines.length > MAX_PROGRESS_LINES) doc.dropped += doc.lines.splice(0, doc.lines.length - MAX_PROGRESS_LINES).length;
          if (/^(\[\d+\/\d+\] )?STEP \d+\/\d+: /.test(line)) doc.step = line;
          op.progress(doc as unknown as Record<string, unknown>);
        };
        try {
          doc.phase = 'base-images';
          const host = this.images.pullHost();
          const baseImages: BuildRequest['baseImages'] = [];
          for (const name of named.images) baseImages.push({ name, manifestDigest: await this.baseImage(name, input, host.name, say) });
          doc.phase = 'building';
          const req: BuildRequest = {
            id: `b${id}`.toLowerCase(), projectId: input.projectId, dockerfile, buildArgs: input.buildArgs ?? {},
            ...(input.target ? { target: input.target } : {}), ...(input.labels ? { labels: input.labels } : {}),
            network: input.network ?? 'none', baseImages, resources, ...(input.noCache ? { noCache: true } : {}),
          };
          const img = await host.agent.buildImage(req, createReadStream(file), (p) => say(p.line));
          doc.phase = 'importing';
          const view = await this.images.recordBuilt(img, input.projectId, tags, host.name);
          doc.phase = 'done';
          op.progress(doc as unknown as Record<string, unknown>);
          return { id: view.digest, digest: view.digest, tags, size: view.size, layers: view.layers.length };
        } finally {
          await rm(file, { force: true });
          await this.quota.release(`build-${id}`, 'the build ended').catch((e: unknown) => log.error('releasing a build\'s quota failed', { id, error: String(e) }));
        }
      });
    } catch (e) {
      await rm(file, { force: true });
      if (admitted) await this.quota.release(`build-${id}`, 'the build did not start').catch(() => undefined);
      throw e;
    }
  }

  /** The image a Dockerfile names, as the project has it or pulled through Nimbus, present on the build's host. */
  private async baseImage(name: string, input: BuildInput, host: string, say: (l: string) => void): Promise<string> {
    let img = await this.images.resolve(name, { projectId: input.projectId }).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) return undefined;
      throw e;
    });
    if (!img) {
      say(`Pulling ${name} through Nimbus`);
      const registry = parseReference(name).registry;
      // the docker CLI names Docker Hub index.docker.io; parseReference makes that docker.io too
      const creds = Object.entries(input.credentials ?? {}).find(([r]) => r === registry || (registry === DEFAULT_REGISTRY && /(^|\.)docker\.io$/.test(r)))?.[1];
      let op = await this.images.pull(name, input.projectId, creds);
      const deadline = Date.now() + PULL_WAIT_MS;
      while ((op.status === 'running' || op.status === 'pending') && Date.now() < deadline) op = await this.operations.wait(op.id, 60_000);
      if (op.status !== 'succeeded') throw new NotFound(`the build's image ${name} could not be pulled: ${op.error?.message ?? op.status}`, { image: name });
      img = await this.images.resolve(name, { projectId: input.projectId });
    }
    await this.images.ensureOnHost(img, host);
    return img.digest;
  }
}

/** The request body into a file of this process's (0600), refused past maxBytes however it is sent. */
async function saveBounded(source: AsyncIterable<Uint8Array>, file: string, maxBytes: number): Promise<void> {
  let n = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > maxBytes) return cb(new PayloadTooLarge(`the build context is larger than ${maxBytes} bytes`));
      cb(null, chunk);
    },
  });
  await pipeline(source, count, createWriteStream(file, { mode: 0o600 }));
}

/** One member of a tar file (a regular file, at most MAX_DOCKERFILE_BYTES), as text. */
async function readMember(file: string, name: string): Promise<string> {
  const extract = tar.extract();
  let found: string | undefined;
  let problem: Error | undefined;
  extract.on('entry', (h, stream, next) => {
    const n = posix.normalize(h.name).replace(/^(\.\/)+/, '').replace(/^\/+/, '');
    if (n !== name || found !== undefined) {
      stream.on('end', () => next());
      stream.resume();
      return;
    }
    if (h.type !== 'file' && h.type !== 'contiguous-file') {
      problem = new InvalidArgument(`the Dockerfile ${name} in the build context is not a regular file`);
      stream.on('end', () => next());
      stream.resume();
      return;
    }
    if ((h.size ?? 0) > MAX_DOCKERFILE_BYTES) {
      problem = new InvalidArgument(`the Dockerfile is larger than ${MAX_DOCKERFILE_BYTES} bytes`);
      stream.on('end', () => next());
      stream.resume();
      return;
    }
    const chunks: Buffer[] = [];
    stream.on('data', (c: unknown) => {
      chunks.push(c as Buffer);
    });
    stream.on('end', () => {
      found = Buffer.concat(chunks).toString('utf8');
      next();
    });
  });
  try {
    await pipeline(createReadStream(file), extract as unknown as NodeJS.WritableStream);
  } catch (e) {
    throw new InvalidArgument(`the build context is not a valid tar archive: ${(e as Error).message}`);
  }
  if (problem) throw problem;
  if (found === undefined) throw new InvalidArgument(`the build context has no ${name}`);
  return found;
}

/** Instructions in a Dockerfile (Docker's "Step N/T" counts them all). */
function countInstructions(text: string): number {
  let n = 0;
  let cont = false;
  for (const line of text.split(/\r?\n/)) {
    const t = line.trim();
    if (!cont && (t === '' || t.startsWith('#'))) continue;
    if (!cont) n++;
    cont = t.endsWith('\\');
  }
  return n;
}
