/**
 * LocalImageHost: container images and VM images in this host's content store and snapshots
 * (the agent's ImageHost): pulls and imports unpacked into snapshots, builds and commits, blobs
 * carried between hosts and the images adopted from them, and garbage collection of what no
 * image keeps. LocalAgent delegates here with the parts it owns.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Conflict, DataLoss, InvalidArgument, NotFound, ResourceExhausted, hasCode } from '../../core/errors.js';
import { parseReference } from '../../core/image-reference.js';
import { logger } from '../../core/log.js';
import type { CompiledOptions } from '../../core/config.js';
import type { LayerRecord } from '../../store/records.js';
import type { AdoptedDiskImage, AgentImage, BlobStream, BuildProgress, BuildRequest, CommitRequest, ContainerCommitHost, DiskImageInfo, GcResult, ImageHost, PullOptions, PullProgress, VmImageKind } from '../agent.js';
import { fileBytes, type ContentStore } from '../content/content-store.js';
import { LocalContentStore, assertDigest } from '../content/local-content-store.js';
import { DiskSpace } from '../content/disk-space.js';
import { snapshotterNamed } from '../snapshots/registry.js';
import { snapshotExists, type Snapshotter } from '../snapshots/snapshotter.js';
import { LayerUnpacker } from '../layers/layer-unpacker.js';
import { DEFAULT_LAYER_MAX_BYTES, ImageBudget } from '../layers/unpack-limits.js';
import { exportTree } from '../move/tree-tar.js';
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, checkDescriptor, pullImage } from './pull.js';
import { LAYER_TYPES, isIndex, type ImageConfig, type ImageManifest } from './media-types.js';
import { importImageArchive } from './import.js';
import { warmPullPath, type ScratchPuller } from './pull-warmup.js';
import { CollectionGate } from './collection-gate.js';
import { BuildHost } from './build.js';
import { checkCommitRequest, storeCommittedImage, writeLayerBlob } from './commit.js';
import { inspectBootFile, inspectDiskImage } from './vm-image-files.js';

const log = logger('agent');

/** chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)) — OCI image-spec. */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

/** Digests one missingBlobs call may ask about. */
const MAX_BLOBS_ASKED = 4096;
/** The largest blob a host takes from another (a disk image can be large; more than this is a mistake). */
export const MAX_RECEIVED_BLOB_BYTES = 1024 ** 4;
/** How long a received blob that nothing adopted is kept from garbage collection. */
const RECEIVED_BLOB_GRACE_MS = 60 * 60_000;

interface ImageContent {
  manifestDigest: string;
  indexDigest?: string;
  configDigest: string;
  config: AgentImage['config'];
  layers: { digest: string; mediaType: string; size: number }[];
  reference?: string;
}

/** What garbage collection keeps (the images' documents and layer chains, and blobs named besides). */
type GcKeep = Parameters<ImageHost['garbageCollect']>[0];

/** What the image host is given by the agent that owns it. */
export interface ImageHostParts {
  options: Pick<CompiledOptions, 'agentName' | 'home' | 'tmpDir' | 'containersDir' | 'imageMaxBytes' | 'layerMaxBytes' | 'allowedRegistries'>;
  content: ContentStore;
  snapshotter: Snapshotter;
  /** Free space where images land (the content store, the snapshots): pulls and unpacks check it. */
  room(): DiskSpace;
  /** Removed and warm containers hold their image's layers: garbage collection has them let go first (but of the kept chains). */
  releaseLayers(keepChainIds: string[]): Promise<void>;
  /** A container's writable layer (frozen when `pause`) while fn reads it: what a commit makes its new layer of. */
  withWritableLayer<T>(id: string, pause: boolean, fn: (upperDir: string) => Promise<T>): Promise<T>;
}

export class LocalImageHost implements ImageHost, ContainerCommitHost {
  /** Unpacks layers into snapshots (layer-unpacker.ts); made on first use. */
  private layersP: LayerUnpacker | undefined;
  /** Pulls, imports, builds, blob writes, adoptions and commits against garbage collection (collection-gate.ts). */
  private readonly gate = new CollectionGate();
  /** Blobs writeBlob stored and no adopt has used yet, with when: garbage collection leaves them alone for a while. */
  private readonly received = new Map<string, number>();
  /** The pull path's one-off costs, paid as the agent starts (images/pull-warmup.ts); close() waits for it. */
  private readonly pullWarmup: Promise<void>;

  /** `warmUp: false`: no pull warm-up (the warm-up's own scratch host). */
  constructor(private readonly p: ImageHostParts, opts: { warmUp?: boolean } = {}) {
    this.pullWarmup = opts.warmUp === false ? Promise.resolve() : warmPullPath(p.options.tmpDir, this.scratchPuller).then(() => undefined);
  }

  /**
   * What the warm-up pulls with: an image host like this one (the same snapshotter) over a content
   * store and snapshots of its own in the scratch directory, so the pull runs this file's code and
   * what it calls, and nothing reaches this host's images.
   */
  private readonly scratchPuller: ScratchPuller = (dir) => {
    const host = new LocalImageHost({
      options: { ...this.p.options, home: dir, tmpDir: dir, containersDir: dir },
      content: new LocalContentStore(join(dir, 'content')),
      snapshotter: snapshotterNamed(this.p.snapshotter.name, join(dir, 'snapshots')),
      room: () => new DiskSpace({ content: dir, snapshots: dir }),
      releaseLayers: async () => undefined,
      withWritableLayer: () => Promise.reject(new Conflict('the pull warm-up has no containers')),
    }, { warmUp: false });
    // its own loopback server, the only registry it pulls from: named, as an administrator names one
    return { pull: (reference) => host.pullImage(reference, { allowedRegistries: [parseReference(reference).registry] }, () => undefined), close: () => host.close() };
  };

  async pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void): Promise<AgentImage> {
    const leave = await this.gate.enter();
    try {
      const layerState = new Map<string, PullProgress['layers'][number]>();
      const report = (phase: PullProgress['phase']) => {
        const layers = [...layerState.values()];
        progress({
          phase,
          layers,
          bytesDone: layers.reduce((a, l) => a + l.bytesDone, 0),
          bytesTotal: layers.reduce((a, l) => a + l.bytesTotal, 0),
        });
      };
      report('resolving');
      // Unpack while downloading (layer-unpacker.ts): each layer from its bytes as they arrive, committed in order.
      const budget = new ImageBudget(this.p.options.imageMaxBytes);
      const reusable = new Set(opts.reusable ?? []);
      const unpack = this.layers.forPull(budget);
      let unpacking: Promise<unknown> | undefined;
      const pulled = await pullImage(ref, {
        store: this.p.content,
        room: this.p.room(),
        insecureRegistries: opts.insecureRegistries ?? [],
        // named by the control plane's administrator, or by this host's (nimbusd agent --allow-registry)
        allowedRegistries: [...(opts.allowedRegistries ?? []), ...this.p.options.allowedRegistries],
        ...(opts.credentials ? { credentials: opts.credentials } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
        mayReuse: (digest) => reusable.has(digest),
        onProgress: (ev) => {
          layerState.set(ev.digest, { digest: ev.digest, status: ev.status, bytesDone: ev.bytesDone, bytesTotal: ev.bytesTotal });
          report('downloading');
        },
        onConfig: (config, layers) => {
          const diffIds = config.rootfs?.diff_ids ?? [];
          if (diffIds.length !== layers.length) return; // unpack() below reports it
          unpacking = unpack.start(diffIds, chainIds(diffIds), layers);
          return unpacking; // a failed unpack (a limit, the disk) stops the downloads
        },
        onLayerStream: (index) => unpack.stream(index),
        onLayerReady: (index) => {
          log.debug('layer downloaded', { ref, index });
          unpack.ready(index);
        },
      }).catch(async (e: unknown) => {
        unpack.abort(e); // unpacks in flight remove their snapshots before the pull reports
        await unpack.settled();
        throw e;
      });
      report('unpacking');
      log.debug('downloads done; waiting for unpacking', { ref });
      await unpacking?.catch(async (e: unknown) => {
        await unpack.settled();
        throw e;
      });
      const img = await this.unpack({
        manifestDigest: pulled.manifestDigest,
        ...(pulled.indexDigest ? { indexDigest: pulled.indexDigest } : {}),
        configDigest: pulled.configDigest,
        config: pulled.config as AgentImage['config'],
        layers: pulled.layers.map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size })),
        reference: pulled.reference,
      }, budget);
      report('done');
      return img;
    } finally {
      leave();
    }
  }

  async importImages(archivePath: string): Promise<AgentImage[]> {
    const leave = await this.gate.enter();
    try {
      const found = await importImageArchive(archivePath, this.p.content, { room: this.p.room() });
      const out: AgentImage[] = [];
      for (const f of found) {
        out.push(
          await this.unpack({
            manifestDigest: f.manifestDigest,
            configDigest: f.configDigest,
            config: f.config as AgentImage['config'],
            layers: f.layers.map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size })),
            ...(f.name ? { reference: f.name } : {}),
          }, new ImageBudget(this.p.options.imageMaxBytes)),
        );
      }
      return out;
    } finally {
      leave();
    }
  }

  // ---------------------------------------------------------------- builds (images/build.ts)

  private builderP: BuildHost | undefined;
  private get builder(): BuildHost {
    // runc: crun refuses a hybrid cgroup layout; overlay storage where the host's snapshots are overlayfs
    return (this.builderP ??= new BuildHost({
      home: this.p.options.home,
      storageDriver: this.p.snapshotter.name === 'overlayfs' ? 'overlay' : 'vfs',
      content: this.p.content,
      importArchive: (path) => this.importImages(path),
      adoptImage: (digest) => this.adoptImage(digest),
    }));
  }

  async buildImage(req: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<AgentImage> {
    // garbage collection waits: the FROM images' blobs are linked out of the store while it runs
    const leave = await this.gate.enter();
    try {
      return await this.builder.build(req, context, progress, signal);
    } finally {
      leave();
    }
  }

  /**
   * Unpack every layer into a committed snapshot named by its chain id; budget bounds the image's
   * unpacked bytes. With `undoOnFailure`, the snapshots this call committed are removed again
   * when a later layer fails (an adopted image leaves nothing half-unpacked).
   */
  private async unpack(c: ImageContent, budget: ImageBudget, undoOnFailure = false): Promise<AgentImage> {
    const diffIds = c.config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== c.layers.length) {
      throw new DataLoss(`image config lists ${diffIds.length} diff ids for ${c.layers.length} layers`);
    }
    if (c.layers.length === 0) throw new InvalidArgument('image has no layers');
    const chains = chainIds(diffIds);
    const committed: string[] = [];
    try {
      for (let i = 0; i < c.layers.length; i++) {
        const existed = undoOnFailure && (await snapshotExists(this.p.snapshotter, chains[i]!));
        await this.unpackLayer(c.layers[i]!, diffIds[i]!, chains[i]!, i > 0 ? chains[i - 1] : undefined, budget);
        if (undoOnFailure && !existed) committed.push(chains[i]!);
      }
    } catch (e) {
      // children first; one another unpack has built on since is kept (Conflict): garbage collection takes it later
      for (const key of committed.reverse()) await this.p.snapshotter.remove(key).catch(() => undefined);
      throw e;
    }
    const layers: LayerRecord[] = c.layers.map((l, i) => ({ ...l, diffId: diffIds[i]! }));
    return {
      ...(c.reference ? { reference: c.reference } : {}),
      manifestDigest: c.manifestDigest,
      ...(c.indexDigest ? { indexDigest: c.indexDigest } : {}),
      configDigest: c.configDigest,
      config: c.config,
      layers,
      chainId: chains[chains.length - 1]!,
      size: c.layers.reduce((a, l) => a + l.size, 0),
    };
  }

  private get layers(): LayerUnpacker {
    return (this.layersP ??= new LayerUnpacker({
      content: this.p.content,
      snapshotter: this.p.snapshotter,
      ...(this.p.options.layerMaxBytes ? { layerMaxBytes: this.p.options.layerMaxBytes } : {}),
      room: () => this.p.room(),
    }));
  }

  private unpackLayer(layer: ImageContent['layers'][number], diffId: string, chainId: string, parent: string | undefined, budget: ImageBudget): Promise<void> {
    return this.layers.unpackLayer(layer, diffId, chainId, parent, budget);
  }

  async importDiskImage(file: string, kind: VmImageKind = 'disk'): Promise<DiskImageInfo> {
    const info = kind === 'disk' ? await inspectDiskImage(file) : await inspectBootFile(file, kind);
    // read once: hashed as it is copied in (disk images are gigabytes; a digest pass first read them twice)
    const stored = await this.p.content.ingestComputed(fileBytes(file), { size: info.size }); // another size: the file changed meanwhile
    return { digest: stored.digest, size: stored.size, format: info.format, virtualSize: info.virtualSize };
  }

  diskImagePath(digest: string): string {
    return this.p.content.blobPath(digest);
  }

  // ------------------------------------------------- content carried between hosts

  async missingBlobs(digests: string[]): Promise<string[]> {
    if (digests.length > MAX_BLOBS_ASKED) throw new InvalidArgument(`at most ${MAX_BLOBS_ASKED} digests at once, got ${digests.length}`);
    const missing: string[] = [];
    for (const d of digests) if (!(await this.p.content.info(d))) missing.push(d);
    return missing;
  }

  async readBlob(digest: string): Promise<BlobStream> {
    const info = await this.p.content.info(digest);
    if (!info) throw new NotFound(`blob ${digest} is not in the content store of host ${this.p.options.agentName}`, { digest });
    return { size: info.size, bytes: this.p.content.openRead(digest) };
  }

  async writeBlob(digest: string, size: number, bytes: AsyncIterable<Uint8Array>): Promise<{ digest: string; size: number }> {
    assertDigest(digest);
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgument(`blob ${digest}: size must be a non-negative integer, got ${size}`);
    if (size > MAX_RECEIVED_BLOB_BYTES) {
      throw new ResourceExhausted(`blob ${digest} is ${size} bytes; a host takes blobs of at most ${MAX_RECEIVED_BLOB_BYTES} bytes`, { digest, size });
    }
    const existing = await this.p.content.info(digest);
    if (existing) {
      if (existing.size !== size) throw new DataLoss(`blob ${digest}: size mismatch: sent as ${size} bytes, stored ${existing.size}`, { digest });
      return existing; // the bytes are not read: the sender stops
    }
    // garbage collection skips while a write is in flight (it holds a blob no image references yet)
    const leave = await this.gate.enter();
    try {
      await this.p.room().ensureRoom({ content: size, snapshots: 0 }, `receiving blob ${digest}`);
      const stored = await this.p.content.ingest({ digest, size }, bytes);
      this.received.set(digest, Date.now());
      return stored;
    } finally {
      leave();
    }
  }

  async adoptImage(manifestDigest: string): Promise<AgentImage> {
    const leave = await this.gate.enter();
    try {
      const manifest = await this.storedJson<ImageManifest>(manifestDigest, MAX_MANIFEST_BYTES, 'manifest');
      const what = `image ${manifestDigest}`;
      if (isIndex(manifest.mediaType, manifest)) throw new InvalidArgument(`${what} is an index: adopt the manifest of this host's platform`);
      if (!manifest.config || !Array.isArray(manifest.layers)) throw new DataLoss(`${what}: the manifest has no config or layers`);
      checkDescriptor(manifest.config, `${what}: config`);
      manifest.layers.forEach((l, i) => checkDescriptor(l, `${what}: layer ${i}`));
      for (const l of manifest.layers) {
        if (!LAYER_TYPES.has(l.mediaType)) throw new InvalidArgument(`${what}: unsupported layer media type ${l.mediaType} (layer ${l.digest})`);
      }
      if (manifest.config.size > MAX_CONFIG_BYTES) throw new InvalidArgument(`${what}: config is ${manifest.config.size} bytes; the limit is ${MAX_CONFIG_BYTES}`);
      // every blob here, of the size the manifest says (a descriptor is part of what the digest covers)
      for (const d of [manifest.config, ...manifest.layers]) {
        const info = await this.p.content.info(d.digest);
        if (!info) throw new NotFound(`${what}: blob ${d.digest} is not in the content store of host ${this.p.options.agentName}`, { digest: d.digest });
        if (info.size !== d.size) throw new DataLoss(`${what}: blob ${d.digest} is ${info.size} bytes, the manifest says ${d.size}`);
      }
      const config = await this.storedJson<AgentImage['config']>(manifest.config.digest, MAX_CONFIG_BYTES, 'config');
      const arch = process.arch === 'x64' ? 'amd64' : process.arch;
      if ((config.os !== undefined && config.os !== 'linux') || (config.architecture !== undefined && config.architecture !== arch)) {
        throw new InvalidArgument(`${what} is for ${config.os ?? '?'}/${config.architecture ?? '?'}; host ${this.p.options.agentName} runs linux/${arch}`);
      }
      await this.p.room().ensureRoom({ content: 0, snapshots: manifest.layers.reduce((a, l) => a + l.size, 0) }, `unpacking ${what}`);
      const img = await this.unpack({
        manifestDigest,
        configDigest: manifest.config.digest,
        config,
        layers: manifest.layers.map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size })),
      }, new ImageBudget(this.p.options.imageMaxBytes), true);
      for (const d of [manifestDigest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) this.received.delete(d);
      return img;
    } finally {
      leave();
    }
  }

  async adoptDiskImage(digest: string, kind: VmImageKind): Promise<AdoptedDiskImage> {
    const file = this.p.content.blobPath(digest);
    if (!(await this.p.content.info(digest))) throw new NotFound(`VM image ${digest} is not in the content store of host ${this.p.options.agentName}`, { digest });
    try {
      const info = kind === 'disk' ? await inspectDiskImage(file) : await inspectBootFile(file, kind);
      this.received.delete(digest);
      return { digest, size: info.size, format: info.format, virtualSize: info.virtualSize, path: file };
    } catch (e) {
      // a blob that just arrived and is no VM image of this kind is not kept (one imported here stays: it may be another kind's)
      if (this.received.has(digest) && hasCode(e, 'InvalidArgument')) {
        this.received.delete(digest);
        await this.p.content.delete(digest);
      }
      throw e;
    }
  }

  /** A JSON document from the content store, bounded in size. */
  private async storedJson<T>(digest: string, maxBytes: number, what: string): Promise<T> {
    const info = await this.p.content.info(digest);
    if (!info) throw new NotFound(`${what} ${digest} is not in the content store of host ${this.p.options.agentName}`, { digest });
    if (info.size > maxBytes) throw new InvalidArgument(`${what} ${digest} is ${info.size} bytes; the limit is ${maxBytes}`);
    let doc: unknown;
    try {
      doc = JSON.parse((await this.p.content.readBlob(digest)).toString('utf8'));
    } catch {
      throw new DataLoss(`${what} ${digest} is not valid JSON`);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new DataLoss(`${what} ${digest} is not a JSON object`);
    return doc as T;
  }

  async garbageCollect(keep: GcKeep): Promise<GcResult> {
    const nothing: GcResult = { blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 0 };
    // A pull in flight holds blobs and snapshots no image references yet: the next collection's.
    if (this.gate.inFlight > 0) return nothing;
    // build cache stores go with the images they built (images/build-cache.ts)
    await this.builder.collectCache(new Set(keep.manifestDigests)).catch((e: unknown) => log.warn('gc: collecting the build cache failed', { error: String(e) }));
    // Removed containers and warm ones hold their image's layers: let go of them first. (Not
    // under the gate: it waits for the reaper, and pulls need not wait for that.)
    await this.p.releaseLayers(keep.chainIds);
    // The sweep itself: not while work is in flight, and no work starts under it (collection-gate.ts).
    return (await this.gate.collect(() => this.sweep(keep))) ?? nothing;
  }

  private async sweep(keep: GcKeep): Promise<GcResult> {
    const result: GcResult = { blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 0 };
    // Snapshots: keep image chains and their ancestors, and every container's writable layer.
    const snaps = await this.p.snapshotter.list();
    const byKey = new Map(snaps.map((s) => [s.key, s]));
    const live = new Set<string>();
    const markChain = (key: string | undefined) => {
      while (key && !live.has(key)) {
        live.add(key);
        key = byKey.get(key)?.parent;
      }
    };
    for (const c of keep.chainIds) markChain(c);
    for (const s of snaps) if (s.kind !== 'committed' && !s.key.startsWith('extract-')) markChain(s.key);
    // Remove children before parents: repeat until nothing more can go.
    let removedSome = true;
    while (removedSome) {
      removedSome = false;
      for (const s of await this.p.snapshotter.list()) {
        if (live.has(s.key)) continue;
        try {
          const usage = await this.p.snapshotter.usage(s.key).catch(() => ({ size: 0, inodes: 0 }));
          await this.p.snapshotter.remove(s.key);
          result.snapshotsRemoved++;
          result.bytesFreed += usage.size;
          removedSome = true;
        } catch (e) {
          if (!hasCode(e, 'Conflict') && !hasCode(e, 'NotFound')) throw e;
        }
      }
    }

    // Blobs: keep manifests, indexes, and what the manifests reference.
    const liveBlobs = new Set<string>([...keep.manifestDigests, ...keep.indexDigests, ...(keep.blobs ?? [])]);
    for (const m of keep.manifestDigests) {
      try {
        const manifest = JSON.parse((await this.p.content.readBlob(m)).toString('utf8')) as {
          config?: { digest: string };
          layers?: { digest: string }[];
        };
        if (manifest.config) liveBlobs.add(manifest.config.digest);
        for (const l of manifest.layers ?? []) liveBlobs.add(l.digest);
      } catch (e) {
        log.warn('gc: cannot read manifest; keeping everything', { digest: m, error: String(e) });
        return result;
      }
    }
    const now = Date.now();
    for (const [d, at] of this.received) if (now - at > RECEIVED_BLOB_GRACE_MS) this.received.delete(d);
    for (const b of await this.p.content.list()) {
      // carried here and not adopted yet: the control plane adopts them next
      if (liveBlobs.has(b.digest) || this.received.has(b.digest)) continue;
      await this.p.content.delete(b.digest);
      result.blobsRemoved++;
      result.bytesFreed += b.size;
    }
    return result;
  }

  // ------------------------------------------------- docker commit (images/commit.ts), protocol 9

  private commitDirSwept: Promise<void> | undefined;

  async commitContainer(id: string, req: CommitRequest): Promise<AgentImage> {
    checkCommitRequest(req);
    if (this.p.snapshotter.name !== 'overlayfs') {
      throw new Conflict(`host ${this.p.options.agentName} uses the native snapshotter: only containers on overlayfs can be committed`, { host: this.p.options.agentName });
    }
    // the blobs written below are no image's until adopted: a collection meanwhile must keep them
    const leave = await this.gate.enter();
    const dir = join(this.p.options.containersDir, 'commit');
    const file = join(dir, `${id.slice(0, 32)}-${randomBytes(4).toString('hex')}.tar.gz`);
    try {
      const parentManifest = await this.storedJson<ImageManifest>(req.parentManifest, MAX_MANIFEST_BYTES, 'manifest');
      if (!parentManifest.config) throw new DataLoss(`image ${req.parentManifest}: the manifest has no config`);
      const parentConfig = await this.storedJson<ImageConfig>(parentManifest.config.digest, MAX_CONFIG_BYTES, 'config');
      // what a commit cut short by a crash left goes before this process's first commit writes there
      await (this.commitDirSwept ??= rm(dir, { recursive: true, force: true }).catch((e: unknown) => log.warn('clearing an earlier run\'s commit files failed', { dir, error: String(e) })));
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // the layer is read (and the container frozen, when asked) only while the tar is written out
      // a layer the host would not adopt is not read past its limit (a sparse file is free to make, not to write out)
      const maxBytes = this.p.options.layerMaxBytes ?? DEFAULT_LAYER_MAX_BYTES;
      const layer = await this.p.withWritableLayer(id, req.pause, (upper) => writeLayerBlob(exportTree(upper, { kind: 'overlay', maxBytes }), file));
      await this.p.room().ensureRoom({ content: layer.size, snapshots: layer.size }, `committing container ${id.slice(0, 12)}`);
      const { manifestDigest } = await storeCommittedImage(this.p.content, parentManifest, parentConfig, layer, req);
      log.info('container committed', { container: id, manifest: manifestDigest, layerBytes: layer.size });
      return await this.adoptImage(manifestDigest);
    } finally {
      leave();
      await rm(file, { force: true });
    }
  }

  /** A build killed with its agent: its storage, mounts, cgroup (a no-op once a build ran). */
  sweepBuilds(): Promise<void> {
    return this.builder.sweepOnce();
  }

  /** The pull warm-up done: its scratch directory goes before the daemon does. */
  async close(): Promise<void> {
    await this.pullWarmup;
  }
}
