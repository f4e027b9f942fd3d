/**
 * Image builds on a host, by buildah (Debian's, 1.28) rather than a Dockerfile interpreter of our
 * own. One build, one directory under the agent's home (builds/<project>/<build>): the context,
 * its configuration files and the archive it writes. Nothing of it outlives the build: any mount
 * left under the directory is unmounted, the directory goes, and the cgroup the whole process tree
 * ran in is emptied and removed, on success and on failure alike (docs/builds.md). buildah's
 * storage is the project's layer cache (build-cache.ts): kept for the project's next builds, never
 * another project's; with the cache off it is the build's own and goes with it.
 *
 * FROM images are the host's own (the control plane pulled them with its credentials and digest
 * checks, or the project already had them): each is written as an OCI layout from the content
 * store, handed to buildah with `buildah pull oci:` and tagged with the name the Dockerfile uses;
 * the build runs with --pull-never, so buildah never reaches a registry. Its result is pushed as
 * an OCI archive and imported through the import path (digests verified, layers hardened).
 *
 * RUN steps run under runc with buildah's OCI isolation, without a network unless the request
 * says host (which the control plane allows only to administrators).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, link, lstat, mkdir, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { BuildCache, unmountUnder, type CacheLease } from './build-cache.js';
import { createInterface } from 'node:readline';
import { InvalidArgument, Internal, NimbusError, PermissionDenied, Unavailable } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { AgentImage, BuildProgress, BuildRequest } from '../agent.js';
import type { ContentReader } from '../content/content-store.js';
import { cgroupPaths, detectCgroupLayout, removeCgroup, removeCgroupParentIfEmpty, type CgroupLayout } from '../cgroups/cgroups.js';
import { DEFAULT_CONTEXT_LIMITS, contextPath, extractContext, type ContextLimits } from './build-context.js';
import { MAX_DOCKERFILE_BYTES, remoteAddSources, runWithFlags } from './dockerfile.js';
import { MT } from './media-types.js';

const log = logger('build');

/** The cgroup parent of builds (apart from containers' /nimbus: a build's removal never races a container's). */
export const BUILD_CGROUP_PARENT = '/nimbus-build';
/** Processes a build may have at once (a fork bomb in a RUN step stops here). */
const BUILD_PIDS_MAX = 4096;
/** Output lines longer than this are cut (a RUN step printing one endless line). */
const MAX_LINE = 8192;
/** The failure message carries this many of the last output lines. */
const FAILURE_TAIL_LINES = 20;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export interface BuildHostOptions {
  /** The agent's home: builds live under home/builds. */
  home: string;
  /** buildah's storage driver: overlay where the host's snapshotter is overlayfs, else vfs. */
  storageDriver: 'overlay' | 'vfs';
  content: ContentReader;
  /** The import path (OCI layout tar → content store → snapshots). */
  importArchive(path: string): Promise<AgentImage[]>;
  /** An image whose blobs are in the content store, checked as an import is (a fully cached build's earlier result). */
  adoptImage?(manifestDigest: string): Promise<AgentImage>;
  contextLimits?: ContextLimits;
  buildah?: string;
  runtime?: string;
  /** Keep buildah's layer cache between a project's builds (default true; docs/builds.md). */
  cache?: boolean;
}

/** Where buildah keeps its images and its run state for one build. */
interface Roots {
  storage: string;
  runroot: string;
}

/** The one exit status a command ended with, and its last lines. */
interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  tail: string[];
}

export class BuildHost {
  /** This agent's builds' cgroup parent: several agents on one host (tests) never touch each other's. */
  private readonly cgroupParent: string;
  /** What an earlier process of this agent left (it died mid-build), removed before the first build. */
  private swept: Promise<void> | undefined;
  private readonly cache: BuildCache;

  constructor(private readonly o: BuildHostOptions) {
    this.cgroupParent = `${BUILD_CGROUP_PARENT}/${createHash('sha256').update(o.home).digest('hex').slice(0, 12)}`;
    this.cache = new BuildCache(join(o.home, 'build-cache'));
  }

  /** Garbage collection's turn: cache stores none of whose images is kept any more go (build-cache.ts). */
  async collectCache(keepManifests: ReadonlySet<string>): Promise<number> {
    await this.sweepOnce();
    return this.cache.collect(keepManifests);
  }

  /** The sweep below, once per process (at the agent's start, else before its first build); later calls are no-ops. */
  sweepOnce(): Promise<void> {
    return (this.swept ??= this.sweep().catch((e: unknown) => log.warn('removing what earlier builds left failed', { error: String(e) })));
  }

  /** Every build directory (unmounted first) and build cgroup (its processes killed) of this agent's home. */
  private async sweep(): Promise<void> {
    const layout = await detectCgroupLayout();
    const cg = cgroupPaths(layout, this.cgroupParent);
    await killCgroup(cg.all);
    await removeCgroup(cg).catch((e: unknown) => log.warn('removing leftover build cgroups failed', { error: String(e) }));
    await removeCgroupParentIfEmpty(layout, BUILD_CGROUP_PARENT);
    const root = join(this.o.home, 'builds');
    for (const project of await readdir(root).catch(() => [] as string[])) {
      for (const build of await readdir(join(root, project)).catch(() => [] as string[])) await unmountUnder(join(root, project, build));
    }
    await rm(root, { recursive: true, force: true });
    await this.cache.sweep();
  }

  private get buildah(): string {
    return this.o.buildah ?? 'buildah';
  }

  async build(req: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<AgentImage> {
    if (!ID_RE.test(req.id) || !ID_RE.test(req.projectId)) throw new InvalidArgument('build: malformed build or project id');
    const dockerfile = contextPath(req.dockerfile || 'Dockerfile');
    if (!dockerfile) throw new InvalidArgument(`the Dockerfile path ${JSON.stringify(req.dockerfile.slice(0, 200))} is outside the build context`);
    // buildah runs a Dockerfile named *.in through cpp on the host first: an #include reads any host file
    if (dockerfile.endsWith('.in')) throw new InvalidArgument(`the Dockerfile ${JSON.stringify(dockerfile.slice(0, 200))} ends in .in, which the builder would run through the C preprocessor; rename it`);
    const dir = join(this.o.home, 'builds', req.projectId, req.id);
    await this.sweepOnce();
    const layout = await detectCgroupLayout();
    const cg = cgroupPaths(layout, `${this.cgroupParent}/${req.id}`);
    const started = Date.now();
    let lease: CacheLease | undefined;
    let roots: Roots = { storage: join(dir, 'storage'), runroot: join(dir, 'run') };
    // a buildah process killed mid-way (cancelled, OOM) may leave its store half-written: not kept
    let dirty = false;
    let result: { imageId: string; manifestDigest: string } | undefined;
    try {
      await rm(dir, { recursive: true, force: true });
      for (const d of ['storage', 'run', 'home', 'tmp', 'bases']) await mkdir(join(dir, d), { recursive: true, mode: 0o700 });
      const ctxDir = join(dir, 'context');
      const got = await extractContext(context, ctxDir, this.o.contextLimits ?? DEFAULT_CONTEXT_LIMITS);
      await checkDockerfile(ctxDir, dockerfile);
      await checkIgnoreFiles(ctxDir, dockerfile);
      // latin1: one character a byte, as buildah's parser reads it
      const text = await readFile(join(ctxDir, dockerfile), 'latin1');
      // buildah fetches a remote ADD from the host's network: not for a build without one (its own network
      // namespace below is what stops it; this says why early)
      const remote = remoteAddSources(text, req.buildArgs);
      if (remote.length && req.network !== 'host') throw new PermissionDenied(`ADD ${remote[0]!.slice(0, 200)}: a remote source needs the host network`);
      refuseRunFlags(runWithFlags(text), 'the Dockerfile');
      for (const b of req.baseImages) refuseRunFlags(runWithFlags((await this.onBuildTriggers(b.manifestDigest)).join('\n')), `the ONBUILD triggers of ${b.name}`);
      progress({ line: `Sending build context to Nimbus: ${got.files} files, ${got.bytes} bytes` });
      const joins = await makeCgroup(layout, cg, req.resources);
      const network = req.network === 'host' ? 'host' : 'none';
      // without the host network buildah itself gets none either: a remote ADD however spelt (an ENV of
      // the base image, quotes, escapes) cannot reach the host's network or what it routes to
      const ownNetwork = network === 'none';
      if (this.o.cache !== false) {
        lease = await this.cache.acquire({ projectId: req.projectId, storageDriver: this.o.storageDriver, network, bases: req.baseImages });
        roots = { storage: lease.storage, runroot: lease.runroot };
      }
      const env = await this.environment(dir, roots);
      const run = async (args: string[], onLine?: (l: string) => void) => {
        try {
          const r = await this.run(dir, roots, joins, env, args, signal, onLine, ownNetwork);
          if (r.signal) dirty = true;
          return r;
        } catch (e) {
          if (signal?.aborted) dirty = true;
          throw e;
        }
      };

      // a cache store is keyed by its FROM images: once there (and named), they stay
      for (const [i, b] of lease?.basesReady ? [] : req.baseImages.entries()) {
        await this.writeLayout(b.manifestDigest, join(dir, 'bases', `b${i}`));
        // relative to the build directory (buildah's cwd): buildah names the image after the path, which must be lowercase
        const pulled = await run(['pull', '--quiet', `oci:bases/b${i}`]);
        const id = pulled.tail.at(-1)?.trim() ?? '';
        if (pulled.code !== 0 || !/^[0-9a-f]{64}$/.test(id)) throw new Internal(`handing FROM image ${b.name} to the builder failed: ${pulled.tail.join(' ').slice(-500)}`);
        for (const name of new Set(tagNames(b.name))) {
          const tagged = await run(['tag', id, name]);
          if (tagged.code !== 0) throw new InvalidArgument(`FROM ${b.name}: the builder cannot tag it as ${name}: ${tagged.tail.join(' ').slice(-300)}`);
        }
      }

      await lease?.markBasesReady();
      const iidfile = join(dir, 'iid');
      const bud = [
        // runc's state under the build's directory (not /run/runc): a killed step's container is found and deleted there
        'bud', '--pull-never', '--isolation', 'oci', '--runtime', this.o.runtime ?? 'runc', '--runtime-flag', `root=${join(dir, 'runc')}`,
        '--network', network,
        // --layers: each step's result is kept and reused by the project's next build (build-cache.ts);
        // no name for the result (a name would stay on the cached image): pushed by the id in iidfile
        `--layers=${this.o.cache !== false}`, '--force-rm', '--iidfile', iidfile,
        // --no-cache: no step reused, each one's result still stored for the next build (docker's meaning)
        ...(req.noCache ? ['--no-cache'] : []),
        '--format', 'oci', '-f', join(ctxDir, dockerfile),
        ...(req.target ? ['--target', req.target] : []),
        ...Object.entries(req.buildArgs).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
        ...Object.entries(req.labels ?? {}).flatMap(([k, v]) => ['--label', `${k}=${v}`]),
        ctxDir,
      ];
      const built = await run(bud, (line) => progress({ line }));
      if (built.code !== 0) {
        const isStep = (l: string) => /^(\[\d+\/\d+\] )?STEP \d+\/\d+: /.test(l);
        const at = built.tail.findLastIndex(isStep);
        // the failing step's own output (and buildah's reason), not the steps before it
        const output = (at >= 0 ? built.tail.slice(at + 1) : built.tail).slice(-FAILURE_TAIL_LINES);
        throw new InvalidArgument(`the build failed${at >= 0 ? ` at ${built.tail[at]!.slice(0, 300)}` : ''}: ${output.join('\n')}`, { exitCode: built.code });
      }
      const imageId = (await readFile(iidfile, 'utf8').catch(() => '')).trim().replace(/^sha256:/, '');
      if (!/^[0-9a-f]{64}$/.test(imageId)) throw new Internal('the builder did not say which image it built');
      const img = (await this.reuse(lease, imageId)) ?? (await this.export(run, dir, imageId));
      result = { imageId, manifestDigest: img.manifestDigest };
      log.info('image built', { id: req.id, project: req.projectId, image: img.manifestDigest, ms: Date.now() - started });
      const { reference: _ignored, ...rest } = img;
      return rest;
    } finally {
      await this.cleanup(dir, roots, !lease, layout, cg).catch((e: unknown) => log.error('cleaning up after a build failed', { id: req.id, error: String(e) }));
      // after the cgroup's processes are gone: nothing of this build writes to the store any more
      await lease?.release({ ...(result ? { result } : {}), dirty: dirty || !!signal?.aborted })
        .catch((e: unknown) => log.error('releasing a build cache store failed', { id: req.id, error: String(e) }));
    }
  }

  /**
   * Every step came from the cache, so buildah's result is an image an earlier build of this store
   * already imported: that image again, if its content is still on this host (else undefined).
   */
  private async reuse(lease: CacheLease | undefined, imageId: string): Promise<AgentImage | undefined> {
    const digest = await lease?.importedAs(imageId);
    if (!digest || !this.o.adoptImage) return undefined;
    return this.o.adoptImage(digest).catch(() => undefined);
  }

  /** buildah's image out as an OCI archive, then in through the import path (digests verified, layers hardened). */
  private async export(run: (args: string[]) => Promise<Ran>, dir: string, imageId: string): Promise<AgentImage> {
    const archive = join(dir, 'image.tar');
    const pushed = await run(['push', '--quiet', imageId, `oci-archive:${archive}`]);
    if (pushed.code !== 0) throw new Internal(`exporting the built image failed: ${pushed.tail.join(' ').slice(-500)}`);
    const [img] = await this.o.importArchive(archive);
    if (!img) throw new Internal('the built image archive holds no image');
    return img;
  }

  /** containers/* configuration of our own: nothing of the host's (registries, storage, hooks) applies. */
  private async environment(dir: string, { storage, runroot }: Roots): Promise<NodeJS.ProcessEnv> {
    await writeFile(join(dir, 'registries.conf'), 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n');
    await writeFile(join(dir, 'storage.conf'), `[storage]\ndriver = "${this.o.storageDriver}"\ngraphroot = "${storage}"\nrunroot = "${runroot}"\n`);
    // cgroupfs: the RUN steps' cgroups nest under the build's own (a systemd manager would put them elsewhere)
    await writeFile(join(dir, 'containers.conf'), '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n[containers]\nlog_driver = "k8s-file"\n');
    return {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      LC_ALL: 'C',
      HOME: join(dir, 'home'),
      TMPDIR: join(dir, 'tmp'),
      CONTAINERS_REGISTRIES_CONF: join(dir, 'registries.conf'),
      CONTAINERS_STORAGE_CONF: join(dir, 'storage.conf'),
      CONTAINERS_CONF: join(dir, 'containers.conf'),
      BUILDAH_ISOLATION: 'oci',
    };
  }

  /**
   * buildah with our roots, started inside the build's cgroup (a shell joins it, then execs buildah);
   * with `ownNetwork`, in a network namespace of its own (nothing but a loopback that is down).
   */
  private run(dir: string, roots: Roots, cgroupProcs: string[], env: NodeJS.ProcessEnv, args: string[], signal: AbortSignal | undefined, onLine?: (l: string) => void, ownNetwork = false): Promise<Ran> {
    const globals = ['--root', roots.storage, '--runroot', roots.runroot, '--storage-driver', this.o.storageDriver];
    const command = [...(ownNetwork ? ['unshare', '--net', '--'] : []), this.buildah, ...globals, ...args];
    const script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"';
    return new Promise<Ran>((resolve, reject) => {
      if (signal?.aborted) return reject(new Unavailable('the build was cancelled: its caller went away'));
      const child = spawn('/bin/sh', ['-c', script, 'sh', String(cgroupProcs.length), ...cgroupProcs, ...command], {
        cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
      });
      const t0 = Date.now();
      const tail: string[] = [];
      const take = (raw: string) => {
        // the tenant sees its context, not where this host keeps it
        const l = raw.replaceAll(join(dir, 'context'), '<context>').replaceAll(dir, '<build>').replaceAll(join(this.o.home, 'build-cache'), '<cache>');
        const line = l.length > MAX_LINE ? `${l.slice(0, MAX_LINE)}…` : l;
        tail.push(line);
        if (tail.length > FAILURE_TAIL_LINES * 5) tail.splice(0, tail.length - FAILURE_TAIL_LINES * 5);
        onLine?.(line);
      };
      // stdout and stderr as one story, line by line
      const outs = [child.stdout, child.stderr].map((s) => createInterface({ input: s, crlfDelay: Infinity }));
      for (const rl of outs) rl.on('line', take);
      const closed = Promise.all(outs.map((rl) => new Promise<void>((r) => rl.once('close', () => r()))));
      const abort = () => {
        try {
          if (child.pid) process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* gone already */
        }
      };
      signal?.addEventListener('abort', abort, { once: true });
      child.once('error', (e) => {
        signal?.removeEventListener('abort', abort);
        reject(new Unavailable(`the builder could not be started (${(e as NodeJS.ErrnoException).code ?? e.message}): is buildah installed?`, undefined, { cause: e }));
      });
      child.once('close', (code, sig) => {
        signal?.removeEventListener('abort', abort);
        // killed because its caller went: that is the story, not the exit status
        if (signal?.aborted) return reject(new Unavailable('the build was cancelled: its caller went away'));
        log.debug('buildah ran', { command: args[0], code, ms: Date.now() - t0 });
        void closed.then(() => resolve({ code, signal: sig, tail }));
      });
    });
  }

  private deleteRuncContainers(root: string): Promise<void> {
    return deleteRuncIn(this.o.runtime ?? 'runc', root);
  }

  /** The image as an OCI layout: its manifest and blobs linked (or copied) out of the content store. */
  private async writeLayout(manifestDigest: string, dir: string): Promise<void> {
    const blobs = join(dir, 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });
    const manifestBytes = await this.o.content.readBlob(manifestDigest);
    const manifest = JSON.parse(manifestBytes.toString('utf8')) as { mediaType?: string; config?: { digest: string }; layers?: { digest: string }[] };
    if (!manifest.config || !Array.isArray(manifest.layers)) throw new Internal(`image ${manifestDigest} on this host has no config or layers`);
    for (const d of [manifestDigest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
      const to = join(blobs, d.replace(/^sha256:/, ''));
      await link(this.o.content.blobPath(d), to).catch(async (e: NodeJS.ErrnoException) => {
        if (e.code === 'EEXIST') return;
        await copyFile(this.o.content.blobPath(d), to);
      });
    }
    await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await writeFile(join(dir, 'index.json'), JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: manifest.mediaType ?? MT.ociManifest, digest: manifestDigest, size: manifestBytes.length }],
    }));
  }

  /**
   * The ONBUILD triggers of a base image's config: buildah runs them (a docker-format image's, read from its
   * config whatever the letter case of its keys, as Go's JSON decoder reads them), so every list under an
   * "OnBuild" key anywhere in it counts.
   */
  private async onBuildTriggers(manifestDigest: string): Promise<string[]> {
    const manifest = JSON.parse((await this.o.content.readBlob(manifestDigest)).toString('utf8')) as { config?: { digest?: unknown } };
    if (typeof manifest.config?.digest !== 'string') throw new Internal(`image ${manifestDigest} on this host has no config`);
    const found: string[] = [];
    const walk = (v: unknown, depth: number): void => {
      if (depth > 32 || typeof v !== 'object' || v === null) return;
      for (const [k, x] of Object.entries(v)) {
        // as bytes read as latin1, as the Dockerfile is (Go holds the decoded strings as UTF-8)
        if (k.toLowerCase() === 'onbuild' && Array.isArray(x)) found.push(...x.map((t) => Buffer.from(String(t), 'utf8').toString('latin1')));
        else walk(x, depth + 1);
      }
    };
    walk(JSON.parse((await this.o.content.readBlob(manifest.config.digest)).toString('utf8')), 0);
    return found;
  }

  /**
   * Everything the build made goes: mounts left under dir, dir, the cgroup; and buildah's containers
   * and images when its storage was the build's own (`ownStorage`: not a cache store other builds share).
   */
  private async cleanup(dir: string, roots: Roots, ownStorage: boolean, layout: CgroupLayout, cg: ReturnType<typeof cgroupPaths>): Promise<void> {
    const env = ownStorage ? await this.environment(dir, roots).catch(() => undefined) : undefined;
    if (env) {
      // best effort: whatever they leave, the unmount and the removal below take
      await this.run(dir, roots, [], env, ['rm', '--all'], undefined).catch(() => undefined);
      await this.run(dir, roots, [], env, ['rmi', '--all', '--force'], undefined).catch(() => undefined);
    }
    await killCgroup(cg.all);
    await this.deleteRuncContainers(join(dir, 'runc'));
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
    await removeCgroup(cg).catch((e: unknown) => log.warn('removing a build cgroup failed', { error: String(e) }));
    await removeCgroupParentIfEmpty(layout, this.cgroupParent);
    await removeCgroupParentIfEmpty(layout, BUILD_CGROUP_PARENT);
    // the project's directory too, once no build of it is left
    await rmdir(posix.dirname(dir)).catch(() => undefined);
  }
}

/** Every container runc keeps state of under root (a RUN step whose build was killed), deleted. */
async function deleteRuncIn(runtime: string, root: string): Promise<void> {
  const names = await readdir(root).catch(() => [] as string[]);
  for (const id of names) {
    await new Promise<void>((resolve) => {
      const c = spawn(runtime, ['--root', root, 'delete', '--force', id], { stdio: 'ignore' });
      c.once('error', () => resolve());
      c.once('close', () => resolve());
    });
  }
}

/** FROM's name as buildah may look it up locally: as written, and fully qualified as Nimbus normalises it. */
function tagNames(name: string): string[] {
  // a digest reference is looked up by the image's digest, which the layout kept
  if (name.includes('@')) return [];
  const out = [name];
  const lastPart = name.slice(name.lastIndexOf('/') + 1);
  const withTag = lastPart.includes(':') ? name : `${name}:latest`;
  const first = withTag.split('/')[0]!;
  const hasRegistry = withTag.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  out.push(hasRegistry ? withTag : withTag.includes('/') ? `docker.io/${withTag}` : `docker.io/library/${withTag}`);
  return out;
}

async function checkDockerfile(ctxDir: string, path: string): Promise<void> {
  // no component of the path may be a symlink (it could lead out of the context)
  const parts = path.split('/');
  for (let i = 1; i <= parts.length; i++) {
    const st = await lstat(join(ctxDir, ...parts.slice(0, i))).catch(() => undefined);
    if (!st) throw new InvalidArgument(`the build context has no ${path}`);
    if (st.isSymbolicLink()) throw new InvalidArgument(`the Dockerfile ${path} is (or is under) a symlink`);
    if (i === parts.length) {
      if (!st.isFile()) throw new InvalidArgument(`the Dockerfile ${path} is not a file`);
      if (st.size > MAX_DOCKERFILE_BYTES) throw new InvalidArgument(`the Dockerfile is larger than ${MAX_DOCKERFILE_BYTES} bytes`);
    }
  }
}

/** The ignore files buildah 1.28 reads (a Dockerfile's own first) may not be symlinks: it reads them on the host, following one. */
async function checkIgnoreFiles(ctxDir: string, dockerfile: string): Promise<void> {
  for (const name of [`${dockerfile}.containerignore`, `${dockerfile}.dockerignore`, '.containerignore', '.dockerignore']) {
    const st = await lstat(join(ctxDir, name)).catch(() => undefined);
    if (st?.isSymbolicLink()) throw new InvalidArgument(`${name} in the build context is a symlink; the builder would read what it points to on the host`);
  }
}

/** A RUN flag is a --mount, whose source buildah finds on the host (dockerfile.ts, runWithFlags). */
function refuseRunFlags(found: string[], where: string): void {
  if (found.length) throw new InvalidArgument(`${where}: ${found[0]!.slice(0, 200)}: RUN takes no flags here (a RUN --mount reaches host paths with this builder)`);
}

/** The build's cgroup in the cpu, memory and pids hierarchies, with its limits; the cgroup.procs files to join. */
async function makeCgroup(layout: CgroupLayout, cg: ReturnType<typeof cgroupPaths>, resources: BuildRequest['resources']): Promise<string[]> {
  const period = 100_000;
  const quota = Math.max(1000, Math.round(resources.cpus * period));
  const mk = async (d: string) => {
    try {
      await mkdir(d, { recursive: true });
    } catch (e) {
      // the parent was removed by another build's cleanup in between: once more
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await mkdir(d, { recursive: true });
    }
  };
  const procs: string[] = [];
  try {
    if (layout.mode === 'v2' && cg.unified) {
      const parent = posix.dirname(cg.unified);
      await mk(cg.unified);
      for (const d of [layout.unified!, parent]) await writeFile(join(d, 'cgroup.subtree_control'), '+cpu +memory +pids').catch(() => undefined);
      await writeFile(join(cg.unified, 'memory.max'), String(resources.memoryBytes));
      await writeFile(join(cg.unified, 'cpu.max'), `${quota} ${period}`);
      await writeFile(join(cg.unified, 'pids.max'), String(BUILD_PIDS_MAX));
      procs.push(join(cg.unified, 'cgroup.procs'));
    } else {
      const need = ['memory', 'cpu', 'pids'];
      for (const c of need) if (!cg.v1[c]) throw new Unavailable(`this host has no ${c} cgroup controller: builds cannot be limited`);
      for (const c of need) await mk(cg.v1[c]!);
      await writeFile(join(cg.v1['memory']!, 'memory.limit_in_bytes'), String(resources.memoryBytes));
      await writeFile(join(cg.v1['cpu']!, 'cpu.cfs_period_us'), String(period));
      await writeFile(join(cg.v1['cpu']!, 'cpu.cfs_quota_us'), String(quota));
      await writeFile(join(cg.v1['pids']!, 'pids.max'), String(BUILD_PIDS_MAX));
      for (const c of need) procs.push(join(cg.v1[c]!, 'cgroup.procs'));
    }
  } catch (e) {
    if (e instanceof NimbusError) throw e;
    throw new Internal(`the build's cgroup could not be made (${(e as NodeJS.ErrnoException).code ?? String(e)})`, undefined, { cause: e });
  }
  return procs;
}

/** Every process in the cgroups (and their children) killed, until none is left or ~5 s have passed. */
async function killCgroup(dirs: string[]): Promise<void> {
  const pidsUnder = async (d: string): Promise<number[]> => {
    const out: number[] = [];
    const text = await readFile(join(d, 'cgroup.procs'), 'utf8').catch(() => '');
    for (const l of text.split('\n')) if (/^\d+$/.test(l.trim())) out.push(Number(l));
    const subs = await readdir(d, { withFileTypes: true }).catch(() => []);
    for (const s of subs) if (s.isDirectory()) out.push(...(await pidsUnder(join(d, s.name))));
    return out;
  };
  for (let i = 0; i < 100; i++) {
    const pids = new Set<number>();
    for (const d of dirs) for (const p of await pidsUnder(d)) pids.add(p);
    if (!pids.size) return;
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  log.warn('processes of a build survived its cgroup being killed');
}
