/**
 * LocalAgent: the agent side of one host, used in-process by the embedded
 * daemon. It owns the content store, the snapshotter and the instance drivers,
 * and turns control-plane requests into calls on them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { availableParallelism, hostname, cpus as hostCpus, totalmem, release } from 'node:os';
import { join } from 'node:path';
import { createReadStream, existsSync, readdirSync, readFileSync } from 'node:fs';
import { Conflict, DataLoss, InvalidArgument, NotFound, ResourceExhausted, Unavailable, hasCode } from '../core/errors.js';
import { deferredIterable } from '../core/streams.js';
import { newId } from '../core/ids.js';
import { run } from '../core/exec.js';
import { logger } from '../core/log.js';
import type { CompiledOptions } from '../core/config.js';
import type { LayerRecord } from '../store/records.js';
import type { AdoptedDiskImage, Agent, AgentImage, AgentInfo, BlobStream, ContainerCreateRequest, DiskImageInfo, GcResult, PullOptions, PullProgress } from './agent.js';
import type { ContentStore } from './content/content-store.js';
import { LocalContentStore, assertDigest } from './content/local-content-store.js';
import type { InstanceDriver, InstanceSpec, LogRecord, RuntimeState } from './drivers/instance-driver.js';
import { ContainerDriver } from './drivers/container/container-driver.js';
import { DEFAULT_LOG_LIMITS } from './drivers/container/container-logs.js';
import { RUNTIME_NAMES, probeRuntime } from './drivers/container/oci-runtime.js';
import { DEFAULT_CGROUP_PARENT, detectCgroupLayout, removeCgroupParentIfEmpty } from './cgroups/cgroups.js';
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, checkDescriptor, pullImage } from './images/pull.js';
import { LAYER_TYPES, isIndex, type ImageConfig, type ImageManifest } from './images/media-types.js';
import { importImageArchive } from './images/import.js';
import { warmPullPath } from './images/pull-warmup.js';
import { spreadSubdirectories } from './spread-directories.js';
import { LayerUnpacker } from './layers/layer-unpacker.js';
import { ImageBudget } from './layers/unpack-limits.js';
import { DiskSpace, statfsProbe } from './content/disk-space.js';
import type { MountSpec, Snapshotter } from './snapshots/snapshotter.js';
import { OverlaySnapshotter, overlayfsSupported } from './snapshots/overlayfs.js';
import { HostFileResolver } from './drivers/vm/host-files.js';
import { NativeSnapshotter } from './snapshots/native.js';
import { WarmPool, type WarmTemplate } from './warm-pool.js';
import { SecureDriver } from './drivers/secure/secure-driver.js';
import { Reaper } from './reaper.js';
import { removeEarlierLeftovers, removeInterruptedWrites } from './interrupted-writes.js';
import { killOrphanProbes } from './orphan-probes.js';
import type { MigrateOutOptions, VmCreateRequest, VmHostState, VmImageKind, VmMigrationSpec } from './agent.js';
import { VmDriver } from './drivers/vm/vm-driver.js';
import type { MigrationTls } from './drivers/vm/migration-tls.js';
import { chooseAccelerator, type AcceleratorChoice } from './drivers/vm/accel.js';
import { hostProbeGuest } from './drivers/vm/probe-guest.js';
import { NetworkHost } from './network/network-host.js';
import type { OverlayPeer } from './network/overlay.js';
import type { RoutedPeer } from './network/routed-peers.js';
import { hostRoutes } from './network/kernel.js';
import { hostsFile, resolvConf } from './network/etc-files.js';
import type { NetworkSpec, PortMapping } from './network/network-driver.js';
import type { AddressProvider, HostVolumeInfo } from './agent.js';
import type { BuildProgress, BuildRequest, CommitRequest, ProcessTable } from './agent.js';
import { checkCommitRequest, storeCommittedImage, writeLayerBlob } from './images/commit.js';
import { exportTree } from './move/tree-tar.js';
import type { OciMount } from './drivers/container/oci-spec.js';
import { VolumeStore } from './volumes/volume-store.js';
import { BlockVolumeStore } from './volumes/block-volume-store.js';
import { BuildHost } from './images/build.js';
import { MoveHost } from './move/move-host.js';
import { LiveMoveHost, liveMoveSupport } from './move/live-move-host.js';
import { CopyHost } from './copy/container-copy.js';
import { ociMounts } from './volumes/container-mounts.js';
import { copyUpIntoVolumes, sweepCopyUpLeftovers } from './volumes/copy-up.js';
import type { AttachRequest, AttachSession, EtcFiles, InstanceStats } from './drivers/instance-driver.js';
import { readInstanceNetwork } from './network/endpoint-counters.js';
import { removeStateFile, replaceStateFile } from '../core/state-files.js';
import { procStat } from '../core/proc.js';

const log = logger('agent');

/** More runnable tasks than CPUs right now (/proc/stat procs_running, the scheduler's own count, this reader included). */
function hostCpusBusy(): boolean {
  try {
    const m = /^procs_running (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'));
    return m !== null && Number(m[1]) > availableParallelism();
  } catch {
    return false;
  }
}

/**
 * The warm template a create request could be served from, or undefined: only requests whose
 * config can match a warm one (the default hostname, the id's prefix; no terminal; no mounts,
 * which a warm bundle lacks and a claim does not add; the default log max-size, on conmon's
 * command line since the warm create; a namespace of its own, to which endpoints can be added).
 */
function warmTemplateOf(req: Omit<ContainerCreateRequest, 'id'>): WarmTemplate | undefined {
  if (req.hostname !== undefined || req.process.terminal || req.process.stdin || req.runtime === 'vm') return undefined;
  if (req.mounts?.length) return undefined;
  if (req.log?.maxSizeBytes !== undefined && req.log.maxSizeBytes !== DEFAULT_LOG_LIMITS.maxSizeBytes) return undefined;
  if (req.network && req.network.mode !== 'networks' && req.network.mode !== 'none') return undefined;
  const network = req.network?.mode === 'networks' ? req.network.endpoints[0]?.network : undefined;
  return { imageChainId: req.imageChainId, user: req.process.user, ...(req.runtime ? { runtime: req.runtime } : {}), ...(network ? { network } : {}) };
}

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

export class LocalAgent implements Agent {
  /** Kernels, initrds and disks VMs may boot from: the content store's blobs and the operator's --vm-host-dir. */
  private readonly hostFiles = new HostFileResolver(() => [join(this.options.contentDir, 'blobs'), ...this.options.vmHostDirs]);
  private readonly exitListeners: ((id: string) => void)[] = [];
  /** Unpacks layers into snapshots (layer-unpacker.ts); made on first use. */
  private layersP: LayerUnpacker | undefined;
  private activePulls = 0;
  /** Blobs writeBlob stored and no adopt has used yet, with when: garbage collection leaves them alone for a while. */
  private readonly received = new Map<string, number>();
  /** Created here and not started yet: start() can skip asking the runtime for its state. */
  private readonly neverStarted = new Set<string>();
  /** Containers created ahead of demand (warm-pool.ts). */
  private readonly warm: WarmPool;
  /** The directory of saved requests, made once. */
  private requestsDir: Promise<void> | undefined;
  /** Warm containers handed out by claimWarmContainer and not yet given their request. */
  private readonly claimed = new Set<string>();
  /** Destroys removed containers' host state in the background (reaper.ts). */
  private readonly reaper: Reaper;
  /** The pull path's one-off costs, paid as the agent starts (images/pull-warmup.ts); close() waits for it. */
  private readonly pullWarmup: Promise<void>;
  /** Secure containers (runtime "vm"): made on first use (the accelerator probe costs seconds, once). */
  private secureP: Promise<SecureDriver> | undefined;
  private readonly vmExitListeners: ((id: string) => void)[] = [];
  /** Container networking on this host: namespaces, veths, the nftables table, DNS. */
  private readonly network: NetworkHost;
  private cpuCount: number | undefined;
  /** Addresses for warm containers, from the control plane (setAddressProvider). */
  private addresses: AddressProvider | undefined;

  private constructor(
    private readonly options: CompiledOptions,
    private readonly content: ContentStore,
    private readonly snapshotter: Snapshotter,
    private readonly snapshotterName: 'overlayfs' | 'native',
    private readonly containers: ContainerDriver,
    private readonly probes: { runtimes: AgentInfo['runtimes']; snapshotters: AgentInfo['snapshotters'] },
    private readonly vms: VmDriver,
  ) {
    vms.onExit((id) => {
      for (const l of this.vmExitListeners) l(id);
    });
    this.network = new NetworkHost({
      stateDir: options.networkDir, dnsPort: options.dnsPort, nftTable: options.nftTable,
      // nimbusd agent --underlay-ip sets it (main.ts); the embedded agent takes it from the environment
      ...(process.env.NIMBUS_UNDERLAY_IP ? { underlayIp: process.env.NIMBUS_UNDERLAY_IP } : {}),
      ...(options.dnsUpstreams ? { upstreams: options.dnsUpstreams } : {}),
    });
    this.warm = new WarmPool(
      { create: (t) => this.createWarmContainer(t), destroy: (id) => this.destroyContainerState(id), measure: (id) => this.warmContainerBytes(id) },
      {
        perImage: options.warmPerImage, maxImages: options.warmImages, hostBusy: hostCpusBusy,
        // grown from demand within the budget, a batch per CPU at a time while the agent is quiet
        budgetBytes: options.warmBudgetBytes, fillConcurrency: availableParallelism(),
      },
    );
    if (existsSync(this.secureDir) && readdirSync(this.secureDir).some((n) => n !== 'vms' && n !== 'guest')) {
      void this.secureDriver().catch((e: unknown) => log.error('secure containers unavailable', { error: String(e) }));
    }
    this.reaper = new Reaper((id) => this.destroyContainerState(id), (maxMs) => this.warm.quiet(maxMs));
    this.pullWarmup = warmPullPath(options.tmpDir);
    // containers come and go: their directories spread over ext4's block groups (spread-directories.ts)
    void mkdir(options.containersDir, { recursive: true, mode: 0o700 }).then(() => spreadSubdirectories(options.containersDir), () => false);
    containers.onExit((id) => {
      if (this.warm.has(id)) return this.warm.discard(id); // a warm stub died: not an instance
      if (this.reaper.has(id)) return; // removed already; its exit is nobody's news
      for (const l of this.exitListeners) l(id);
    });
  }

  /** `migrationTls`: the agent's certificate from the agent CA, for live migrations over TLS (docs/security.md). */
  static async create(options: CompiledOptions, extra: { migrationTls?: MigrationTls } = {}): Promise<LocalAgent> {
    const overlayReason = await overlayfsSupported(options.tmpDir);
    let snapshotterName: 'overlayfs' | 'native';
    if (options.snapshotter === 'overlayfs' && overlayReason) {
      throw new InvalidArgument(`snapshotter overlayfs is not usable here: ${overlayReason}`);
    }
    snapshotterName = options.snapshotter === 'native' || overlayReason ? 'native' : 'overlayfs';
    if (overlayReason && options.snapshotter === 'auto') log.warn('overlayfs unusable, using native snapshotter', { reason: overlayReason });
    const root = join(options.snapshotsDir, snapshotterName);
    const snapshotter: Snapshotter = snapshotterName === 'overlayfs' ? new OverlaySnapshotter(root) : new NativeSnapshotter(root);
    const content = new LocalContentStore(options.contentDir);
    // NIMBUS_CGROUP_PARENT: hosts that share one cgroup tree (test hosts in network namespaces) keep apart
    const containers = new ContainerDriver({ stateDir: options.containersDir, runtime: options.runtime, cgroupParent: cgroupParent() });
    // in the driver's order of preference (chooseRuntime): the default reported is the one containers get
    const probes = await Promise.all(RUNTIME_NAMES.map(async (name) => ({ name, reason: await probeRuntime(name) })));
    const usable = probes.filter((p) => p.reason === undefined).map((p) => p.name);
    const chosen = options.runtime === 'auto' ? usable[0] : options.runtime;
    if (!chosen || !usable.includes(chosen)) {
      throw new Unavailable(`no usable OCI runtime (${probes.map((p) => `${p.name}: ${p.reason ?? 'ok'}`).join('; ')})`);
    }
    const runtimes = probes.map((p) => ({
      name: p.name,
      usable: p.reason === undefined,
      ...(p.reason ? { reason: p.reason } : {}),
      ...(p.name === chosen ? { default: true } : {}),
    }));
    // each create names its accelerator (vmAccelerator(), probed on first use); this default is never used
    const vms = new VmDriver({ stateDir: join(options.vmsDir, 'instances'), accel: 'tcg', ...(extra.migrationTls ? { tls: extra.migrationTls } : {}) });
    return new LocalAgent(options, content, snapshotter, snapshotterName, containers, {
      runtimes,
      snapshotters: [
        overlayReason ? { name: 'overlayfs', usable: false, reason: overlayReason } : { name: 'overlayfs', usable: true },
        { name: 'native', usable: true },
      ],
    }, vms);
  }

  async info(): Promise<AgentInfo> {
    return {
      name: this.options.agentName,
      hostname: hostname(),
      cgroupLayout: (await detectCgroupLayout()).mode,
      snapshotter: this.snapshotterName,
      runtimes: this.probes.runtimes,
      snapshotters: this.probes.snapshotters,
      kernel: release(),
      cpus: (this.cpuCount ??= hostCpus().length), // os.cpus() reads every CPU's times: not per /info call
      memoryBytes: totalmem(),
      diskBytes: (await statfsProbe(this.options.home)).totalBytes,
      architecture: process.arch === 'x64' ? 'amd64' : process.arch,
      warmPool: this.warm.stats(),
      removals: this.reaper.stats(),
      liveMove: await liveMoveSupport(),
      // never waits for (nor starts) the probe: a listing must not take a probe boot's 20 s
      vm: this.accelDecided
        ? { accelerator: this.accelDecided.accel, reason: this.accelDecided.reason, decidedAt: this.accelDecided.decidedAt }
        : { accelerator: 'undecided', reason: this.accelChoice ? 'probing: a boot of the host kernel under KVM (at most 20 s)' : 'decided by a probe boot when the first VM or secure container is created' },
    };
  }

  // ---------------------------------------------------------------- images

  async pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void): Promise<AgentImage> {
    this.activePulls++;
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
      const budget = new ImageBudget(this.options.imageMaxBytes);
      const unpack = this.layers.forPull(budget);
      let unpacking: Promise<unknown> | undefined;
      const pulled = await pullImage(ref, {
        store: this.content,
        room: this.diskSpace(),
        insecureRegistries: opts.insecureRegistries ?? [],
        ...(opts.credentials ? { credentials: opts.credentials } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
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
      this.activePulls--;
    }
  }

  async importImages(archivePath: string): Promise<AgentImage[]> {
    this.activePulls++;
    try {
      const found = await importImageArchive(archivePath, this.content, { room: this.diskSpace() });
      const out: AgentImage[] = [];
      for (const f of found) {
        out.push(
          await this.unpack({
            manifestDigest: f.manifestDigest,
            configDigest: f.configDigest,
            config: f.config as AgentImage['config'],
            layers: f.layers.map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size })),
            ...(f.name ? { reference: f.name } : {}),
          }, new ImageBudget(this.options.imageMaxBytes)),
        );
      }
      return out;
    } finally {
      this.activePulls--;
    }
  }

  // ---------------------------------------------------------------- builds (images/build.ts)

  private builderP: BuildHost | undefined;
  private get builder(): BuildHost {
    // runc: crun refuses a hybrid cgroup layout; overlay storage where the host's snapshots are overlayfs
    return (this.builderP ??= new BuildHost({
      home: this.options.home,
      storageDriver: this.snapshotterName === 'overlayfs' ? 'overlay' : 'vfs',
      content: this.content,
      importArchive: (path) => this.importImages(path),
      adoptImage: (digest) => this.adoptImage(digest),
    }));
  }

  async buildImage(req: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<AgentImage> {
    // garbage collection waits: the FROM images' blobs are linked out of the store while it runs
    this.activePulls++;
    try {
      return await this.builder.build(req, context, progress, signal);
    } finally {
      this.activePulls--;
    }
  }

  /** Free space where images land (the content store, the snapshots): pulls and unpacks check it. */
  private diskSpace(): DiskSpace {
    return new DiskSpace({ content: this.options.contentDir, snapshots: this.options.snapshotsDir });
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
        const existed = undoOnFailure && (await this.snapshotExists(chains[i]!));
        await this.unpackLayer(c.layers[i]!, diffIds[i]!, chains[i]!, i > 0 ? chains[i - 1] : undefined, budget);
        if (undoOnFailure && !existed) committed.push(chains[i]!);
      }
    } catch (e) {
      // children first; one another unpack has built on since is kept (Conflict): garbage collection takes it later
      for (const key of committed.reverse()) await this.snapshotter.remove(key).catch(() => undefined);
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
      content: this.content,
      snapshotter: this.snapshotter,
      ...(this.options.layerMaxBytes ? { layerMaxBytes: this.options.layerMaxBytes } : {}),
      room: () => this.diskSpace(),
    }));
  }

  private unpackLayer(layer: ImageContent['layers'][number], diffId: string, chainId: string, parent: string | undefined, budget: ImageBudget): Promise<void> {
    return this.layers.unpackLayer(layer, diffId, chainId, parent, budget);
  }

  private async snapshotExists(key: string): Promise<boolean> {
    try {
      await this.snapshotter.stat(key);
      return true;
    } catch (e) {
      if (hasCode(e, 'NotFound')) return false;
      throw e;
    }
  }

  async importDiskImage(file: string, kind: VmImageKind = 'disk'): Promise<DiskImageInfo> {
    const info = kind === 'disk' ? await inspectDiskImage(file) : await inspectBootFile(file, kind);
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
    const digest = `sha256:${hash.digest('hex')}`;
    const stored = await this.content.ingest({ digest, size: info.size }, createReadStream(file));
    return { digest, size: stored.size, format: info.format, virtualSize: info.virtualSize };
  }

  diskImagePath(digest: string): string {
    return this.content.blobPath(digest);
  }

  // ------------------------------------------------- content carried between hosts

  async missingBlobs(digests: string[]): Promise<string[]> {
    if (digests.length > MAX_BLOBS_ASKED) throw new InvalidArgument(`at most ${MAX_BLOBS_ASKED} digests at once, got ${digests.length}`);
    const missing: string[] = [];
    for (const d of digests) if (!(await this.content.info(d))) missing.push(d);
    return missing;
  }

  async readBlob(digest: string): Promise<BlobStream> {
    const info = await this.content.info(digest);
    if (!info) throw new NotFound(`blob ${digest} is not in the content store of host ${this.options.agentName}`, { digest });
    return { size: info.size, bytes: this.content.openRead(digest) };
  }

  async writeBlob(digest: string, size: number, bytes: AsyncIterable<Uint8Array>): Promise<{ digest: string; size: number }> {
    assertDigest(digest);
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgument(`blob ${digest}: size must be a non-negative integer, got ${size}`);
    if (size > MAX_RECEIVED_BLOB_BYTES) {
      throw new ResourceExhausted(`blob ${digest} is ${size} bytes; a host takes blobs of at most ${MAX_RECEIVED_BLOB_BYTES} bytes`, { digest, size });
    }
    const existing = await this.content.info(digest);
    if (existing) {
      if (existing.size !== size) throw new DataLoss(`blob ${digest}: size mismatch: sent as ${size} bytes, stored ${existing.size}`, { digest });
      return existing; // the bytes are not read: the sender stops
    }
    // garbage collection skips while a write is in flight (it holds a blob no image references yet)
    this.activePulls++;
    try {
      await this.diskSpace().ensureRoom({ content: size, snapshots: 0 }, `receiving blob ${digest}`);
      const stored = await this.content.ingest({ digest, size }, bytes);
      this.received.set(digest, Date.now());
      return stored;
    } finally {
      this.activePulls--;
    }
  }

  async adoptImage(manifestDigest: string): Promise<AgentImage> {
    this.activePulls++;
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
        const info = await this.content.info(d.digest);
        if (!info) throw new NotFound(`${what}: blob ${d.digest} is not in the content store of host ${this.options.agentName}`, { digest: d.digest });
        if (info.size !== d.size) throw new DataLoss(`${what}: blob ${d.digest} is ${info.size} bytes, the manifest says ${d.size}`);
      }
      const config = await this.storedJson<AgentImage['config']>(manifest.config.digest, MAX_CONFIG_BYTES, 'config');
      const arch = process.arch === 'x64' ? 'amd64' : process.arch;
      if ((config.os !== undefined && config.os !== 'linux') || (config.architecture !== undefined && config.architecture !== arch)) {
        throw new InvalidArgument(`${what} is for ${config.os ?? '?'}/${config.architecture ?? '?'}; host ${this.options.agentName} runs linux/${arch}`);
      }
      await this.diskSpace().ensureRoom({ content: 0, snapshots: manifest.layers.reduce((a, l) => a + l.size, 0) }, `unpacking ${what}`);
      const img = await this.unpack({
        manifestDigest,
        configDigest: manifest.config.digest,
        config,
        layers: manifest.layers.map((l) => ({ digest: l.digest, mediaType: l.mediaType, size: l.size })),
      }, new ImageBudget(this.options.imageMaxBytes), true);
      for (const d of [manifestDigest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) this.received.delete(d);
      return img;
    } finally {
      this.activePulls--;
    }
  }

  async adoptDiskImage(digest: string, kind: VmImageKind): Promise<AdoptedDiskImage> {
    const file = this.content.blobPath(digest);
    if (!(await this.content.info(digest))) throw new NotFound(`VM image ${digest} is not in the content store of host ${this.options.agentName}`, { digest });
    try {
      const info = kind === 'disk' ? await inspectDiskImage(file) : await inspectBootFile(file, kind);
      this.received.delete(digest);
      return { digest, size: info.size, format: info.format, virtualSize: info.virtualSize, path: file };
    } catch (e) {
      // a blob that just arrived and is no VM image of this kind is not kept (one imported here stays: it may be another kind's)
      if (this.received.has(digest) && hasCode(e, 'InvalidArgument')) {
        this.received.delete(digest);
        await this.content.delete(digest);
      }
      throw e;
    }
  }

  /** A JSON document from the content store, bounded in size. */
  private async storedJson<T>(digest: string, maxBytes: number, what: string): Promise<T> {
    const info = await this.content.info(digest);
    if (!info) throw new NotFound(`${what} ${digest} is not in the content store of host ${this.options.agentName}`, { digest });
    if (info.size > maxBytes) throw new InvalidArgument(`${what} ${digest} is ${info.size} bytes; the limit is ${maxBytes}`);
    let doc: unknown;
    try {
      doc = JSON.parse((await this.content.readBlob(digest)).toString('utf8'));
    } catch {
      throw new DataLoss(`${what} ${digest} is not valid JSON`);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new DataLoss(`${what} ${digest} is not a JSON object`);
    return doc as T;
  }

  async garbageCollect(keep: { manifestDigests: string[]; indexDigests: string[]; chainIds: string[]; blobs?: string[] }): Promise<GcResult> {
    const result: GcResult = { blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 0 };
    // A pull in flight holds blobs and snapshots no image references yet.
    if (this.activePulls > 0) return result;
    // build cache stores go with the images they built (images/build-cache.ts)
    await this.builder.collectCache(new Set(keep.manifestDigests)).catch((e: unknown) => log.warn('gc: collecting the build cache failed', { error: String(e) }));
    // Removed containers and warm ones hold their image's layers: let go of them first.
    await this.reaper.idle();
    await this.warm.retainOnly(new Set(keep.chainIds));

    // Snapshots: keep image chains and their ancestors, and every container's writable layer.
    const snaps = await this.snapshotter.list();
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
      for (const s of await this.snapshotter.list()) {
        if (live.has(s.key)) continue;
        try {
          const usage = await this.snapshotter.usage(s.key).catch(() => ({ size: 0, inodes: 0 }));
          await this.snapshotter.remove(s.key);
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
        const manifest = JSON.parse((await this.content.readBlob(m)).toString('utf8')) as {
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
    for (const b of await this.content.list()) {
      // carried here and not adopted yet: the control plane adopts them next
      if (liveBlobs.has(b.digest) || this.received.has(b.digest)) continue;
      await this.content.delete(b.digest);
      result.blobsRemoved++;
      result.bytesFreed += b.size;
    }
    return result;
  }

  // ------------------------------------------------------------ containers

  private requestFile(id: string) {
    return join(this.options.containersDir, 'requests', `${id}.json`);
  }

  /** `madeNetns`: the namespace makeNamespace() made for this create, which the runtime joins. */
  private async specFor(req: ContainerCreateRequest, rootfs: MountSpec[], madeNetns?: string): Promise<InstanceSpec> {
    const n = req.network;
    let netnsPath: string | undefined;
    if (n?.mode === 'container') netnsPath = await this.joinableNetns(n.container);
    // started again after an exit: the namespace kept its endpoints, join it
    if (n?.mode === 'networks') netnsPath = madeNetns ?? this.network.netnsOf(req.id);
    return {
      id: req.id,
      name: req.name,
      rootfs,
      process: req.process,
      resources: req.resources,
      ...(req.hostname ? { hostname: req.hostname } : {}),
      ...(req.runtime ? { runtime: req.runtime } : {}),
      ...(req.labels ? { labels: req.labels } : {}),
      ...(req.log ? { log: req.log } : {}),
      ...(netnsPath ? { netnsPath } : {}),
      ...(n?.mode === 'host' ? { hostNetwork: true } : {}),
      etc: await this.etcFor(req),
    };
  }

  /** The network namespace of a running container, for another to join (container:ID). */
  private async joinableNetns(id: string): Promise<string> {
    const named = this.network.netnsOf(id);
    if (named) return named;
    const st = await this.containers.state(id).catch(() => undefined);
    if (st?.status !== 'running' && st?.status !== 'paused' || !st.pid) {
      throw new InvalidArgument(`container ${id.slice(0, 12)} is not running: its network namespace cannot be joined`);
    }
    return `/proc/${st.pid}/ns/net`;
  }

  private resolvConf: { text: string; readAt: number } | undefined;
  /** The host's resolv.conf, read at most once a second: a burst of creates reads it once, an edit reaches creates a second later. */
  private hostResolvConf(): string {
    const now = performance.now();
    if (!this.resolvConf || now - this.resolvConf.readAt > 1000) {
      this.resolvConf = { text: existsSync('/etc/resolv.conf') ? readFileSync('/etc/resolv.conf', 'utf8') : '', readAt: now };
    }
    return this.resolvConf.text;
  }

  private async etcFor(req: ContainerCreateRequest): Promise<EtcFiles> {
    const n = req.network;
    const hostname = req.hostname ?? req.id.slice(0, 12);
    const hostResolvConf = this.hostResolvConf();
    if (n?.mode === 'host') return { hosts: existsSync('/etc/hosts') ? readFileSync('/etc/hosts', 'utf8') : hostsFile({ hostname, addresses: [], extraHosts: [], dns: [], hostResolvConf }), resolvConf: hostResolvConf };
    if (n?.mode === 'container') {
      const dir = join(this.options.containersDir, n.container, 'etc');
      const read = (f: string) => readFile(join(dir, f), 'utf8').catch(() => undefined);
      const [hosts, resolv] = await Promise.all([read('hosts'), read('resolv.conf')]);
      if (hosts !== undefined && resolv !== undefined) return { hosts, resolvConf: resolv };
    }
    const net = n?.mode === 'networks' ? n : undefined;
    const input = {
      hostname,
      addresses: net?.endpoints.map((e) => e.address) ?? [],
      extraHosts: net?.extraHosts ?? [],
      dns: net?.dns ?? [],
      hostResolvConf,
      ...(net?.endpoints[0] ? { embeddedDns: net.endpoints[0].network.gateway } : {}),
    };
    return { hosts: hostsFile(input), resolvConf: resolvConf(input) };
  }

  /**
   * A container's endpoints, unless its namespace has them already (started again): in the
   * namespace of its created process (`pid`), or in the one makeNamespace() made for it.
   */
  private async plumb(req: ContainerCreateRequest, into: { pid: number | undefined } | { namespaceMade: true }): Promise<PortMapping[] | undefined> {
    const n = req.network;
    if (n?.mode !== 'networks' || this.network.netnsOf(req.id)) return undefined;
    if ('pid' in into && !into.pid) throw new InvalidArgument(`container ${req.id.slice(0, 12)} has no process to network`);
    const t0 = performance.now();
    const { ports } = await this.network.attach({ containerId: req.id, ...('pid' in into ? { pid: into.pid! } : { namespaceMade: true }), endpoints: n.endpoints, ports: n.ports });
    log.debug('container networked', { id: req.id, endpoints: n.endpoints.length, ports: n.ports.length, ms: Math.round(performance.now() - t0) });
    // ports the host chose (hostPort 0, or of a range) are kept in the saved request: networked again (after a reboot) it asks for the same ones
    if (n.ports.some((p) => p.hostPort === 0 || p.hostPortEnd !== undefined)) await this.saveRequest({ ...req, network: { ...n, ports } });
    return ports;
  }

  claimWarmContainer(req: Omit<ContainerCreateRequest, 'id'>): string | undefined {
    const t = warmTemplateOf(req);
    const id = t && this.warm.take(t);
    if (id) this.claimed.add(id);
    return id;
  }

  /** What a ready warm container holds: its cgroup's memory (the stub, kernel objects) and its conmon's PSS. */
  private async warmContainerBytes(id: string): Promise<number | undefined> {
    const [stats, pids] = await Promise.all([this.containers.stats(id), this.containers.processIds(id)]);
    const conmon = pids[0] === undefined ? undefined : procStat(pids[0])?.ppid;
    const pss = conmon === undefined ? undefined : await readFile(`/proc/${conmon}/smaps_rollup`, 'utf8').then((t) => /^Pss:\s+(\d+) kB/m.exec(t)?.[1], () => undefined);
    return pss === undefined ? undefined : stats.memoryBytes + Number(pss) * 1024;
  }

  private async createWarmContainer(t: WarmTemplate): Promise<string> {
    const id = newId();
    const rootfs = await this.snapshotter.prepare(id, t.imageChainId);
    try {
      const state = await this.containers.createWarm({
        id, name: `warm-${id.slice(0, 12)}`, rootfs, resources: {},
        process: { args: ['true'], env: [], cwd: '/', user: t.user },
        ...(t.runtime ? { runtime: t.runtime } : {}),
      });
      // its interface too, on the network its requests use, with an address leased ahead of demand
      if (t.network && state.pid) await this.network.prewire(id, state.pid, t.network, await this.addresses?.lease(t.network.id, id));
    } catch (e) {
      await this.destroyContainerState(id).catch(() => undefined);
      throw e;
    }
    return id;
  }

  private get secureDir(): string {
    return join(this.options.containersDir, 'secure');
  }

  private secureDriver(): Promise<SecureDriver> {
    this.secureP ??= (async () => {
      // the same accelerator choice as VMs: one probe boot per agent, not one per kind of guest
      const accel = await this.vmAccelerator();
      log.info('secure containers run in microVMs', { accel: accel.accel, reason: accel.reason });
      const d = new SecureDriver({ stateDir: this.secureDir, accel: accel.accel, guestCacheDir: join(this.options.home, 'guest') });
      d.onExit((id) => {
        for (const l of this.exitListeners) l(id);
      });
      return d;
    })();
    this.secureP.catch(() => {
      this.secureP = undefined; // try again next time (e.g. a kernel installed meanwhile)
    });
    return this.secureP;
  }

  private isSecure(id: string): boolean {
    return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id) && existsSync(join(this.secureDir, id));
  }

  /** The driver that runs this container: runc/crun, or a microVM for runtime "vm". */
  private async driverOf(id: string): Promise<InstanceDriver> {
    return this.isSecure(id) ? this.secureDriver() : this.containers;
  }

  /** Runtime state, network endpoints and writable layer of a container, gone. */
  private async destroyContainerState(id: string): Promise<void> {
    await (await this.driverOf(id)).delete(id);
    await this.network.detach(id);
    await this.addresses?.release(id); // a warm container's lease (one that became a container's went with its record)
    try {
      await this.snapshotter.remove(id);
    } catch (e) {
      if (!hasCode(e, 'NotFound')) throw e;
    }
  }

  async createContainer(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string; ports?: PortMapping[] }> {
    try {
      return await this.warm.busy(() => this.createContainerNow(req));
    } finally {
      // the end of the demand its claimWarmContainer counted (warm-demand.ts)
      const t = warmTemplateOf(req);
      if (t) this.warm.done(t);
    }
  }

  private copyUpSwept: Promise<void> | undefined;
  private copyUpDir(): string {
    return join(this.options.containersDir, 'copy-up');
  }
  /** A crashed predecessor's copy-up mounts, gone once per process and before its first copy-up. */
  private sweepCopyUp(): Promise<void> {
    return (this.copyUpSwept ??= sweepCopyUpLeftovers(this.copyUpDir()));
  }

  /** Volumes made for this container (copyUp): the image's files at their targets copied in, before its process exists (volumes/copy-up.ts). */
  private async copyUp(req: ContainerCreateRequest, rootfs: MountSpec[]): Promise<void> {
    const asked = (req.mounts ?? []).flatMap((m) => (m.type === 'volume' && m.copyUp ? [m] : []));
    if (!asked.length) return;
    const volumes = await Promise.all(asked.map(async (m) => ({ target: m.target, dir: (await this.volumeStore.ensureMounted(m.volumeId)).path })));
    await this.sweepCopyUp();
    await copyUpIntoVolumes(rootfs, volumes, {
      // not docker cp's scratch directory: its sweep of leftovers would take a copy-up's mount from under it
      scratchDir: this.copyUpDir(),
      room: () => this.diskSpace(),
      ...(this.options.layerMaxBytes ? { maxBytes: this.options.layerMaxBytes } : {}),
    });
  }

  /** The request's mounts as OCI mounts (volumes mounted first if they are not); none: empty. */
  private async mountsFor(req: ContainerCreateRequest): Promise<OciMount[]> {
    if (!req.mounts?.length) return [];
    return ociMounts(req.mounts, async (id) => (await this.volumeStore.ensureMounted(id)).path);
  }

  private async createContainerNow(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string; ports?: PortMapping[] }> {
    if (req.runtime === 'vm') return this.createSecureContainer(req);
    // checked before anything is made: a forbidden bind or a missing volume leaves nothing behind
    const extraMounts = await this.mountsFor(req);
    if (this.claimed.delete(req.id)) {
      await this.saveRequest(req);
      const state = await this.containers.claimWarm(await this.specFor(req, await this.snapshotter.mounts(req.id)));
      if (state) {
        const ports = await this.plumb(req, { pid: state.pid });
        this.neverStarted.add(req.id);
        return { ...state, warnings: await this.containers.warnings(req.id), runtime: await this.containers.runtimeOf(req.id), ...(ports ? { ports } : {}) };
      }
      // Not usable for this request after all: make it cold, under the same id, on a fresh layer.
      await this.destroyContainerState(req.id);
    }
    if (!(await this.snapshotExists(req.imageChainId))) {
      throw new NotFound(`image layers ${req.imageChainId} are not on this host; pull the image again`);
    }
    await this.saveRequest(req);
    let mounts: MountSpec[];
    try {
      mounts = await this.snapshotter.prepare(req.id, req.imageChainId);
    } catch (e) {
      if (!hasCode(e, 'AlreadyExists')) throw e;
      mounts = await this.snapshotter.mounts(req.id);
    }
    await this.copyUp(req, mounts);
    const { state, ports } = await this.createAndPlumb(req, mounts, extraMounts);
    this.neverStarted.add(req.id);
    return { ...state, warnings: await this.containers.warnings(req.id), runtime: await this.containers.runtimeOf(req.id), ...(ports ? { ports } : {}) };
  }

  /**
   * The runtime's create and the network's plumbing of a cold container, side by side when it
   * has networks: its namespace is made first and named, the runtime joins it by path while ip
   * plumbs the endpoints (a cold create's conmon + runtime create is 35-50 ms here, the plumbing
   * 5-15 ms more when it followed). Both are waited for; what either made on a failure is removed
   * by the container's removal, as the control plane does after a failed create.
   */
  private async createAndPlumb(req: ContainerCreateRequest, mounts: MountSpec[], extraMounts: OciMount[]): Promise<{ state: RuntimeState; ports: PortMapping[] | undefined }> {
    // (no endpoints: the runtime makes the namespace and brings its loopback up, as before)
    const networked = req.network?.mode === 'networks' && req.network.endpoints.length > 0 && !this.network.netnsOf(req.id);
    if (!networked) {
      const state = await this.containers.create(await this.specFor(req, mounts), { mounts: extraMounts });
      return { state, ports: await this.plumb(req, { pid: state.pid }) };
    }
    const netns = await this.network.makeNamespace(req.id);
    const [created, plumbed] = await Promise.allSettled([
      this.specFor(req, mounts, netns).then((spec) => this.containers.create(spec, { mounts: extraMounts })),
      this.plumb(req, { namespaceMade: true }),
    ]);
    if (created.status === 'rejected') throw created.reason;
    if (plumbed.status === 'rejected') throw plumbed.reason;
    return { state: created.value, ports: plumbed.value };
  }

  private async createSecureContainer(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string }> {
    if (req.network && req.network.mode !== 'none') {
      throw new InvalidArgument('secure containers (--runtime vm) have no network yet: use --network none');
    }
    if (req.mounts?.length) throw new InvalidArgument('secure containers (--runtime vm) cannot mount volumes, host paths or tmpfs yet');
    if (!(await this.snapshotExists(req.imageChainId))) {
      throw new NotFound(`image layers ${req.imageChainId} are not on this host; pull the image again`);
    }
    const secure = await this.secureDriver();
    await this.saveRequest(req);
    const mounts = await this.snapshotter.prepare(req.id, req.imageChainId);
    const state = await secure.create(await this.specFor(req, mounts));
    return { ...state, warnings: [], runtime: 'vm' };
  }

  private async saveRequest(req: ContainerCreateRequest): Promise<void> {
    const file = this.requestFile(req.id);
    this.requestsDir ??= mkdir(join(this.options.containersDir, 'requests'), { recursive: true }).then(
      () => undefined,
      (e: unknown) => {
        this.requestsDir = undefined; // try again next time
        throw e;
      },
    );
    await this.requestsDir;
    await replaceStateFile(file, JSON.stringify(req));
  }

  startContainer(id: string): Promise<RuntimeState> {
    // after a copy in progress: a start after exit mounts the rootfs again
    return this.warm.busy(() => this.copies.lifecycle(id, () => this.startContainerNow(id)));
  }

  private async startContainerNow(id: string): Promise<RuntimeState> {
    if (this.isSecure(id)) return (await this.secureDriver()).start(id); // a microVM boots again from its rootfs
    // A container created by this agent and never started needs no state check: start it.
    if (this.neverStarted.delete(id)) return this.containers.start(id);
    const st = await this.containers.state(id).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) return { status: 'unknown' } as RuntimeState;
      throw e;
    });
    if (st.status === 'stopped' || st.status === 'unknown') {
      // Start again after exit: a fresh runtime container on the same writable layer.
      const req = JSON.parse(await readFile(this.requestFile(id), 'utf8').catch(() => {
        throw new NotFound(`no saved configuration for container ${id}`);
      })) as ContainerCreateRequest;
      const extraMounts = await this.mountsFor(req);
      await this.containers.delete(id);
      const state = await this.containers.create(await this.specFor(req, await this.snapshotter.mounts(id)), { mounts: extraMounts });
      await this.plumb(req, { pid: state.pid });
    }
    return this.containers.start(id);
  }

  async stopContainer(id: string, timeoutSec: number, signal?: string) {
    // after a copy in progress, which holds the container frozen (a stop would thaw it)
    return this.copies.lifecycle(id, async () => (await this.driverOf(id)).stop(id, timeoutSec, signal));
  }
  async killContainer(id: string, signal: string) {
    return (await this.driverOf(id)).kill(id, signal);
  }
  async pauseContainer(id: string) {
    return this.copies.lifecycle(id, async () => (await this.driverOf(id)).pause(id));
  }
  async unpauseContainer(id: string) {
    return this.copies.lifecycle(id, async () => (await this.driverOf(id)).unpause(id));
  }
  async containerState(id: string) {
    return (await this.driverOf(id)).state(id);
  }
  async attachContainer(id: string, req: AttachRequest): Promise<AttachSession> {
    if (this.isSecure(id)) throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM: attaching to its process is not supported yet`);
    return this.containers.attach(id, req);
  }
  async resizeContainer(id: string, rows: number, cols: number): Promise<void> {
    if (this.isSecure(id)) throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM: it has no terminal`);
    return this.containers.resize(id, rows, cols);
  }
  async execInContainer(id: string, req: Parameters<InstanceDriver['exec']>[1]) {
    return (await this.driverOf(id)).exec(id, req);
  }
  containerLogs(id: string, opts: Parameters<InstanceDriver['logs']>[1]): AsyncIterable<LogRecord> {
    return deferredIterable(async () => (await this.driverOf(id)).logs(id, opts));
  }
  /** `ps -ef`'s columns for the container's cgroup's processes (runc containers; a secure one's run in its microVM). */
  async containerTop(id: string): Promise<ProcessTable> {
    if (this.isSecure(id)) throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM: its processes are not the host's to list`);
    const pids = await this.containers.processIds(id);
    const titles = ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD'];
    if (!pids.length) return { titles, processes: [] };
    // one ps for all of them; a process that ended meanwhile is simply not listed (ps exits 1 if none is left)
    const r = await run('ps', ['-o', 'user:32=,pid=,ppid=,c=,stime=,tty=,time=,args=', '-p', pids.join(',')]);
    const processes = r.stdout.split('\n').filter((l) => l.trim()).map((l) => {
      const cols = l.trim().split(/\s+/);
      return [...cols.slice(0, 7), cols.slice(7).join(' ')];
    });
    return { titles, processes };
  }

  async containerStats(id: string) {
    return this.withNetwork(id, await (await this.driverOf(id)).stats(id));
  }

  /** Stats plus the counters of the instance's endpoints here (absent when it has none of its own). */
  private async withNetwork(id: string, stats: InstanceStats): Promise<InstanceStats> {
    const network = await readInstanceNetwork(this.network.endpointsOf(id).map((e) => e.hostIf));
    return network ? { ...stats, network } : stats;
  }

  removeContainer(id: string): Promise<void> {
    return this.warm.busy(() => this.removeContainerNow(id));
  }

  private async removeContainerNow(id: string): Promise<void> {
    await this.copies.lifecycle(id, async () => undefined); // a copy in progress ends before its rootfs goes
    this.neverStarted.delete(id);
    this.claimed.delete(id);
    // at once, not by the reaper: its published ports and names may be someone else's next
    await this.network.release(id);
    await removeStateFile(this.requestFile(id));
    this.reaper.add(id);
  }

  async listContainers(): Promise<string[]> {
    const ids = new Set(await this.containers.list());
    if (this.secureP || existsSync(this.secureDir)) {
      try {
        for (const id of await (await this.secureDriver()).list()) ids.add(id);
      } catch (e) {
        log.warn('cannot list secure containers', { error: String(e) });
      }
    }
    // A writable snapshot without runtime state is also a container's leftover.
    for (const s of await this.snapshotter.list()) {
      if (s.kind === 'active' && !s.key.startsWith('extract-')) ids.add(s.key);
    }
    return [...ids];
  }

  onContainerExit(listener: (id: string) => void): void {
    this.exitListeners.push(listener);
  }

  // ---------------------------------------------------------------- networks

  setAddressProvider(p: AddressProvider): void {
    this.addresses = p;
  }
  ensureNetwork(spec: NetworkSpec): Promise<void> {
    return this.network.ensureNetwork(spec);
  }
  removeNetwork(id: string): Promise<void> {
    return this.network.removeNetwork(id);
  }
  async foreignSubnets(): Promise<string[]> {
    const ours = new Set(this.network.listNetworks().map((n) => n.device));
    return hostRoutes().filter((r) => !ours.has(r.dev)).map((r) => r.subnet);
  }
  connectContainer(id: string, endpoint: { network: NetworkSpec; address: string; dnsNames: string[] }) {
    return this.network.connect(id, endpoint);
  }
  disconnectContainer(id: string, networkId: string) {
    return this.network.disconnect(id, networkId);
  }
  renameContainer(id: string, from: string, to: string) {
    return this.network.renameEndpoints(id, from, to);
  }
  setOverlayPeers(networkId: string, vni: number, localUnderlayIp: string, peers: OverlayPeer[]): Promise<void> {
    return this.network.setOverlayPeers(networkId, vni, localUnderlayIp, peers);
  }
  underlayAddress(toward?: string): Promise<string | undefined> {
    return this.network.underlayAddress(toward);
  }
  setRoutedPeers(networkId: string, peers: RoutedPeer[]): Promise<void> {
    return this.network.setRoutedPeers(networkId, peers);
  }
  async reconcileNetworks(liveContainers: string[], liveNetworks: string[]) {
    // at start: files a SIGKILLed predecessor left half-written (interrupted-writes.ts)
    await removeInterruptedWrites([join(this.options.containersDir, 'requests'), join(this.options.networkDir, 'endpoints'), join(this.options.networkDir, 'networks'), join(this.options.networkDir, 'overlays'), join(this.options.networkDir, 'routes')]);
    await removeEarlierLeftovers(join(this.options.contentDir, 'ingest')); // a pull killed mid-blob
    for (const s of ['overlayfs', 'native']) await removeEarlierLeftovers(join(this.options.snapshotsDir, s), /^metadata\.json\..+\.tmp$/);
    await this.builder.sweepOnce(); // a build killed with its agent: its storage, mounts, cgroup (a no-op once a build ran)
    await this.sweepCopyUp(); // a create killed mid copy-up: its read-only mount of the snapshot
    return this.network.reconcile(new Set(liveContainers), new Set(liveNetworks));
  }

  // ---------------------------------------------------------------- VMs

  private accelChoice: Promise<AcceleratorChoice> | undefined;
  private accelDecided: AcceleratorChoice | undefined;

  /**
   * The accelerator for new VMs, decided on first use rather than at start: a
   * daemon that runs no VM never boots a probe (which can take its whole bound
   * where KVM hangs) and never delays its start for one.
   */
  private vmAccelerator(): Promise<AcceleratorChoice> {
    this.accelChoice ??= chooseVmAccelerator(this.options).then(
      (a) => {
        log.info('VM accelerator chosen', { accel: a.accel, reason: a.reason });
        this.accelDecided = a;
        return a;
      },
      (e: unknown) => {
        this.accelChoice = undefined; // ask again next time
        throw e;
      },
    );
    return this.accelChoice;
  }

  private async vmHostState(id: string): Promise<VmHostState> {
    const [state, inspect] = await Promise.all([this.vms.state(id), this.vms.inspect(id)]);
    return { ...state, lifecycle: inspect.lifecycle };
  }

  async createVm(req: VmCreateRequest): Promise<VmHostState> {
    // host files: only from the content store or an allow-listed directory, by their real path
    req = { ...req };
    for (const role of ['kernel', 'initrd', 'disk'] as const) {
      const file = req[role];
      if (file !== undefined) req[role] = await this.hostFiles.resolve(role, file);
    }
    const accel = (await this.vmAccelerator()).accel;
    // NICs: taps on the networks first; the guest learns its addresses from its command line
    // (nimbus.net=eth0,ADDR/PREFIX,GATEWAY: the test guest's init reads it; other guests configure themselves)
    const nics = req.nics?.length ? await this.network.attachTaps(req.id, req.nics) : [];
    const netArgs = (req.nics ?? []).map((n, i) => `nimbus.net=eth${i},${n.address}/${n.network.subnet.split('/')[1]},${n.network.gateway}`);
    const append = req.kernel && netArgs.length ? [req.append ?? '', ...netArgs].filter(Boolean).join(' ') : req.append;
    try {
      await this.vms.create({
        id: req.id,
        name: req.name,
        rootfs: [],
        process: { args: [], env: [], cwd: '/', user: '0' },
        resources: { cpus: req.cpus, memoryBytes: req.memoryMiB * 1024 * 1024 },
        vm: {
          accel,
          ...(req.kernel ? { kernel: req.kernel } : {}),
          ...(req.initrd ? { initrd: req.initrd } : {}),
          ...(append ? { append } : {}),
          ...(req.disk ? { disk: req.disk } : {}),
          ...(req.pin?.length ? { pin: req.pin } : {}),
          ...(req.maxCpus !== undefined ? { maxCpus: req.maxCpus } : {}),
          ...(nics.length ? { nics } : {}),
          ...(req.volumes?.length ? { blockVolumes: await this.blockVolumePaths(req.volumes) } : {}),
        },
      });
    } catch (e) {
      if (nics.length) await this.network.detach(req.id).catch(() => undefined);
      throw e;
    }
    return this.vmHostState(req.id);
  }
  async createVmFromTemplate(templateId: string, id: string, name: string): Promise<VmHostState> {
    // a clone would open its template's taps and carry its MACs: not yet
    if (this.network.endpointsOf(templateId).length) throw new InvalidArgument('a VM with network interfaces cannot serve as a template yet');
    await this.vms.createFromTemplate(templateId, id, name);
    return this.vmHostState(id);
  }
  async startVm(id: string): Promise<VmHostState> {
    await this.vms.start(id);
    return this.vmHostState(id);
  }
  async stopVm(id: string, timeoutSec: number): Promise<VmHostState> {
    await this.vms.stop(id, timeoutSec);
    return this.vmHostState(id);
  }
  killVm(id: string, signal: string) {
    return this.vms.kill(id, signal);
  }
  pauseVm(id: string) {
    return this.vms.pause(id);
  }
  unpauseVm(id: string) {
    return this.vms.unpause(id);
  }
  resizeVm(id: string, want: { cpus?: number; memoryMiB?: number }) {
    return this.vms.resize(id, want);
  }
  saveVm(id: string) {
    return this.vms.saveState(id);
  }
  restoreVm(id: string) {
    return this.vms.restoreState(id);
  }
  vmState(id: string) {
    return this.vmHostState(id);
  }
  inspectVm(id: string) {
    return this.vms.inspect(id);
  }
  async vmStats(id: string) {
    return this.withNetwork(id, await this.vms.stats(id));
  }
  openVmConsole(id: string) {
    return this.vms.openConsole(id);
  }
  vmLogs(id: string, opts: Parameters<InstanceDriver['logs']>[1]) {
    return this.vms.logs(id, opts);
  }
  async removeVm(id: string) {
    await this.vms.delete(id);
    await this.network.detach(id); // its taps
  }
  listVms() {
    return this.vms.list();
  }
  async reconcileVms() {
    // the KVM probe's initrd (hostProbeGuest): a probe QEMU a killed nimbusd left runs forever
    const probes = killOrphanProbes(join(this.options.vmsDir, 'probe-empty.initrd'));
    const r = await this.vms.reconcile();
    return { ...r, killed: [...r.killed, ...probes] };
  }
  vmMigrationSpec(id: string) {
    return this.vms.migrationSpec(id);
  }
  async prepareVmIncoming(spec: VmMigrationSpec) {
    // the same rule for boot files as a create: they must be ones this host may boot from
    const config = { ...spec.config };
    for (const role of ['kernel', 'initrd', 'disk'] as const) {
      const file = config[role];
      if (typeof file === 'string') config[role] = await this.hostFiles.resolve(role, file);
    }
    const storage = spec.storage?.backing ? { ...spec.storage, backing: await this.hostFiles.resolve('disk', spec.storage.backing) } : spec.storage;
    // its block volumes: this host's files of them (made empty by the control plane before; the
    // source mirrors into them), never the source's paths
    if (Array.isArray(config.blockVolumes) && config.blockVolumes.length) {
      const asked = config.blockVolumes as Array<{ volumeId: string; readonly?: boolean; boot?: boolean; shared?: boolean }>;
      if (asked.some((b) => b.shared)) throw new Conflict(`VM ${spec.id} has a shared volume attached: it cannot move`, { id: spec.id });
      config.blockVolumes = await this.blockVolumePaths(asked.map((b) => ({ volumeId: b.volumeId, ...(b.readonly ? { readonly: true } : {}), ...(b.boot ? { boot: true } : {}) })));
    }
    // its taps here before QEMU opens them: same names (from the VM's id) and MACs (from the addresses)
    if (spec.nics?.length) config.nics = await this.network.attachTaps(spec.id, spec.nics);
    try {
      // the stream comes in on the address other hosts reach this one by
      return await this.vms.prepareIncoming({ ...spec, config, ...(storage ? { storage } : {}) }, this.options.migrationAddress);
    } catch (e) {
      if (spec.nics?.length) await this.network.detach(spec.id).catch(() => undefined);
      throw e;
    }
  }
  async migrateVmOut(id: string, uri: string, opts: MigrateOutOptions) {
    const out = await this.vms.migrateOut(id, uri, opts);
    // the guest no longer runs here: frames for it stop going into this host's taps
    await this.network.setTaps(id, false).catch((e: unknown) => log.warn('taking a migrated VM\'s taps down failed', { id, error: String(e) }));
    return out;
  }
  async finishVmIncoming(id: string, consoleHistory: string) {
    const { resumedAt } = await this.vms.finishIncoming(id, consoleHistory);
    return { resumedAt, state: await this.vmHostState(id) };
  }
  async abandonVmIncoming(id: string) {
    await this.vms.abandonIncoming(id);
    await this.network.detach(id); // its taps, if it had NICs
  }
  async endVmMigration(id: string, outcome: 'moved' | 'resume') {
    if (outcome === 'resume') await this.network.setTaps(id, true);
    await this.vms.endMigration(id, outcome);
    if (outcome === 'moved') await this.network.detach(id); // the guest's NICs are the destination's taps now
  }
  onVmExit(listener: (id: string) => void): void {
    this.vmExitListeners.push(listener);
  }

  // ---------------------------------------------------------------- block volumes (docs/volumes.md "Block volumes")
  private blockVolumesP: BlockVolumeStore | undefined;
  private get blockVolumeStore(): BlockVolumeStore {
    return (this.blockVolumesP ??= new BlockVolumeStore(join(this.options.home, 'block-volumes')));
  }
  /** The volumes' qcow2 files here (NotFound for one this host lacks). */
  private async blockVolumePaths(vols: NonNullable<VmCreateRequest['volumes']>): Promise<Array<{ volumeId: string; path: string; readonly?: boolean; boot?: boolean; format?: 'raw'; shared?: boolean }>> {
    return Promise.all(vols.map(async (v) => {
      const b = await this.blockVolumeStore.get(v.volumeId);
      return { ...v, path: b.path, ...(b.format === 'raw' ? { format: 'raw' as const, shared: true } : {}) };
    }));
  }
  createBlockVolume(id: string, sizeBytes: number, opts: { fromSnapshot?: string; shared?: boolean }) {
    return this.blockVolumeStore.create(id, sizeBytes, opts);
  }
  removeBlockVolume(id: string) {
    return this.blockVolumeStore.remove(id);
  }
  blockVolumeInfo(id: string) {
    return this.blockVolumeStore.get(id);
  }
  snapshotBlockVolume(volumeId: string, snapshotId: string) {
    return this.blockVolumeStore.snapshot(volumeId, snapshotId);
  }
  removeBlockSnapshot(snapshotId: string) {
    return this.blockVolumeStore.removeSnapshot(snapshotId);
  }
  reconcileBlockVolumes(volumes: string[], snapshots: string[]) {
    return this.blockVolumeStore.reconcile(volumes, snapshots);
  }
  async attachVmVolume(vmId: string, volume: { volumeId: string; readonly?: boolean; boot?: boolean }) {
    const [b] = await this.blockVolumePaths([volume]);
    return this.vms.attachVolume(vmId, b!);
  }
  detachVmVolume(vmId: string, volumeId: string) {
    return this.vms.detachVolume(vmId, volumeId);
  }

  // ---------------------------------------------------------------- volumes

  /** Made on first use: the volumes directory under the agent's home. */
  private volumesP: VolumeStore | undefined;
  private get volumeStore(): VolumeStore {
    return (this.volumesP ??= new VolumeStore(join(this.options.home, 'volumes')));
  }
  async createVolume(id: string, sizeBytes: number): Promise<HostVolumeInfo> {
    return this.volumeStore.create(id, sizeBytes);
  }
  async removeVolume(id: string): Promise<void> {
    await this.volumeStore.remove(id);
  }
  async volumeUsage(id: string): Promise<HostVolumeInfo & { usedBytes: number }> {
    return this.volumeStore.usage(id);
  }
  async reconcileVolumes(live: string[]): Promise<{ mounted: number; removed: string[]; missing: string[] }> {
    return this.volumeStore.reconcile(live);
  }

  // ------------------------------------------------- containers moved between hosts, cold (move/move-host.ts)

  private moverP: MoveHost | undefined;
  private get mover(): MoveHost {
    return (this.moverP ??= new MoveHost({
      agentName: this.options.agentName, snapshotter: this.snapshotter, snapshotterName: this.snapshotterName,
      containerState: (id) => this.containerState(id), listContainers: () => this.listContainers(),
      snapshotExists: (key) => this.snapshotExists(key), volume: (id) => this.volumeStore.ensureMounted(id),
      room: () => this.diskSpace(),
      savedRequest: async (id) => JSON.parse(await readFile(this.requestFile(id), 'utf8').catch(() => {
        throw new NotFound(`no saved configuration for container ${id} on host ${this.options.agentName}`, { container: id });
      })) as ContainerCreateRequest,
      ...(this.options.layerMaxBytes ? { layerMaxBytes: this.options.layerMaxBytes } : {}),
      logs: { export: (id) => this.containers.exportLogs(id), import: (id, bytes) => this.containers.importLogs(id, bytes) },
      restored: this.restoredAwaitingLog,
    }));
  }

  // ------------------------------------------------- containers moved live (move/live-move-host.ts)

  /** Restored here by a live move and running: their log from the source is still to come (importContainerLogs takes it once). */
  private readonly restoredAwaitingLog = new Set<string>();
  private liveMoverP: LiveMoveHost | undefined;
  private get liveMover(): LiveMoveHost {
    return (this.liveMoverP ??= new LiveMoveHost({
      agentName: this.options.agentName,
      containers: this.containers,
      netnsOf: (id) => this.network.netnsOf(id),
      plumbFresh: async (req) => {
        if (req.network?.mode !== 'networks') return;
        await this.network.attach({ containerId: req.id, endpoints: req.network.endpoints, ports: req.network.ports });
      },
      unplumb: (id) => this.network.release(id),
      restoreSpec: async (req) => {
        const mounts = await this.mountsFor(req);
        return { spec: await this.specFor(req, await this.snapshotter.mounts(req.id)), mounts };
      },
      saveRequest: (req) => this.saveRequest(req),
      warnings: (id) => this.containers.warnings(id),
      runtimeOf: (id) => this.containers.runtimeOf(id),
    }));
  }
  checkpointContainer(id: string) {
    return this.copies.lifecycle(id, () => this.liveMover.checkpointContainer(id));
  }
  exportCheckpoint(id: string) {
    return this.liveMover.exportCheckpoint(id);
  }
  importCheckpoint(id: string, bytes: AsyncIterable<Uint8Array>) {
    return this.liveMover.importCheckpoint(id, bytes);
  }
  async restoreContainer(req: ContainerCreateRequest) {
    const state = await this.warm.busy(() => this.liveMover.restoreContainer(req));
    this.restoredAwaitingLog.add(req.id);
    return state;
  }
  containerRequest(id: string) {
    return this.mover.containerRequest(id);
  }
  exportContainerLayer(id: string) {
    return this.mover.exportContainerLayer(id);
  }
  importContainerLayer(id: string, imageChainId: string, bytes: AsyncIterable<Uint8Array>) {
    return this.mover.importContainerLayer(id, imageChainId, bytes);
  }
  exportVolume(id: string) {
    return this.mover.exportVolume(id);
  }
  importVolume(id: string, bytes: AsyncIterable<Uint8Array>) {
    return this.mover.importVolume(id, bytes);
  }
  exportContainerLogs(id: string) {
    return this.mover.exportContainerLogs(id);
  }
  importContainerLogs(id: string, bytes: AsyncIterable<Uint8Array>) {
    return this.mover.importContainerLogs(id, bytes);
  }

  // ------------------------------------------------- docker cp (copy/container-copy.ts)

  private copiesP: CopyHost | undefined;
  private get copies(): CopyHost {
    return (this.copiesP ??= new CopyHost({
      agentName: this.options.agentName,
      isSecure: (id) => this.isSecure(id),
      view: (id) => this.containers.copyView(id),
      state: (id) => this.containers.state(id),
      freeze: (id) => this.containers.pause(id),
      thaw: (id) => this.containers.unpause(id),
      snapshotMounts: (id) => this.snapshotter.mounts(id),
      saved: async (id) => {
        const req = JSON.parse(await readFile(this.requestFile(id), 'utf8')) as ContainerCreateRequest;
        return { mountPoints: (req.mounts ?? []).map((m) => m.target) };
      },
      scratchDir: join(this.options.containersDir, 'copy'),
      room: () => this.diskSpace(),
      ...(this.options.layerMaxBytes ? { maxBytes: this.options.layerMaxBytes } : {}),
    }));
  }
  containerPathStat(id: string, path: string) {
    return this.copies.stat(id, path);
  }
  readContainerArchive(id: string, path: string) {
    return this.copies.read(id, path);
  }
  writeContainerArchive(id: string, path: string, opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean }, bytes: AsyncIterable<Uint8Array>) {
    return this.copies.write(id, path, opts, bytes);
  }

  // ------------------------------------------------- docker commit (images/commit.ts), protocol 9

  private commitDirSwept: Promise<void> | undefined;

  async commitContainer(id: string, req: CommitRequest): Promise<AgentImage> {
    checkCommitRequest(req);
    if (this.snapshotterName !== 'overlayfs') {
      throw new Conflict(`host ${this.options.agentName} uses the native snapshotter: only containers on overlayfs can be committed`, { host: this.options.agentName });
    }
    // the blobs written below are no image's until adopted: a collection meanwhile must keep them
    this.activePulls++;
    const dir = join(this.options.containersDir, 'commit');
    const file = join(dir, `${id.slice(0, 32)}-${randomBytes(4).toString('hex')}.tar.gz`);
    try {
      const parentManifest = await this.storedJson<ImageManifest>(req.parentManifest, MAX_MANIFEST_BYTES, 'manifest');
      if (!parentManifest.config) throw new DataLoss(`image ${req.parentManifest}: the manifest has no config`);
      const parentConfig = await this.storedJson<ImageConfig>(parentManifest.config.digest, MAX_CONFIG_BYTES, 'config');
      // what a commit cut short by a crash left goes before this process's first commit writes there
      await (this.commitDirSwept ??= rm(dir, { recursive: true, force: true }).catch((e: unknown) => log.warn('clearing an earlier run\'s commit files failed', { dir, error: String(e) })));
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // the layer is read (and the container frozen, when asked) only while the tar is written out
      const layer = await this.copies.withWritableLayer(id, req.pause, (upper) => writeLayerBlob(exportTree(upper, { kind: 'overlay' }), file));
      await this.diskSpace().ensureRoom({ content: layer.size, snapshots: layer.size }, `committing container ${id.slice(0, 12)}`);
      const { manifestDigest } = await storeCommittedImage(this.content, parentManifest, parentConfig, layer, req);
      log.info('container committed', { container: id, manifest: manifestDigest, layerBytes: layer.size });
      return await this.adoptImage(manifestDigest);
    } finally {
      this.activePulls--;
      await rm(file, { force: true });
    }
  }

  async close(): Promise<void> {
    await this.pullWarmup; // its scratch directory goes before the daemon does
    await this.reaper.idle();
    await this.warm.close(); // warm containers' endpoints go with them: the network layer closes after
    await this.network.close();
    this.containers.close();
    // the host's mounts of the volumes go (containers still running keep theirs); the next start mounts them again
    await this.volumesP?.unmountAll().catch((e: unknown) => log.warn('unmounting volumes failed', { error: String(e) }));
    // Leave no empty /nimbus cgroup behind when no container is left (checked at shutdown, not per
    // delete, so a concurrent runc create never loses its parent).
    if ((await this.containers.list()).length === 0) {
      await removeCgroupParentIfEmpty(await detectCgroupLayout(), cgroupParent()).catch(() => undefined);
    }
  }
}

/** The containers' parent cgroup: NIMBUS_CGROUP_PARENT, else /nimbus. */
function cgroupParent(): string {
  return process.env.NIMBUS_CGROUP_PARENT || DEFAULT_CGROUP_PARENT;
}

/**
 * KVM only when a probe boot of the host kernel gets through under it, else TCG;
 * cached per host boot in the VM directory (a hanging probe costs its whole bound).
 */
async function chooseVmAccelerator(options: CompiledOptions): Promise<AcceleratorChoice> {
  const force = options.vmAccel === 'auto' ? undefined : options.vmAccel;
  const guest = await hostProbeGuest(options.vmsDir);
  if (!guest) {
    const accel = force ?? 'tcg';
    const reason = force ? `forced (NIMBUS_VM_ACCEL=${force})` : 'no host kernel in /boot to probe KVM with; using TCG';
    return { accel, reason, bootId: '', decidedAt: new Date().toISOString() };
  }
  return chooseAccelerator({ guest, cacheFile: join(options.vmsDir, 'accel.json'), ...(force ? { force } : {}) });
}

/**
 * What qemu-img says of a disk image, refusing what a VM must not be given: a format other than
 * raw or qcow2, and a qcow2 whose backing or external data file would reach another file on the
 * host (an image is hostile until checked, like a layer).
 */
export async function inspectDiskImage(file: string): Promise<{ format: 'raw' | 'qcow2'; size: number; virtualSize: number }> {
  const r = await run('qemu-img', ['info', '--output=json', file]);
  // qemu-img names the file: the caller's upload lives in a host path it need not learn
  if (r.code !== 0) throw new InvalidArgument(`not a disk image qemu-img can read: ${(r.stderr.trim().split('\n').pop() ?? '').split(file).join('the image')}`);
  const info = JSON.parse(r.stdout) as { format?: string; 'virtual-size'?: number; 'actual-size'?: number; 'backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string } } };
  if (info.format !== 'raw' && info.format !== 'qcow2') throw new InvalidArgument(`disk image format ${info.format ?? 'unknown'}: raw or qcow2 expected`);
  if (info['backing-filename']) throw new InvalidArgument(`refusing a qcow2 with a backing file (${info['backing-filename']}): it would reach another file on the host`);
  if (info['format-specific']?.data?.['data-file']) throw new InvalidArgument('refusing a qcow2 with an external data file');
  return { format: info.format, size: (await stat(file)).size, virtualSize: info['virtual-size'] ?? 0 };
}

/** Most a kernel or an initrd may take: the kernel loads both into guest RAM. */
const MAX_BOOT_FILE_BYTES = 1024 * 1024 * 1024;

/**
 * A kernel must be a bzImage ("HdrS" at 0x202, the x86 boot protocol) or an ELF image; an initrd a
 * cpio archive, plain or in a compression the kernel unpacks. Checked for a clear error now rather
 * than a guest that never boots; what the file does inside the guest is the guest's business.
 */
export async function inspectBootFile(file: string, kind: 'kernel' | 'initrd'): Promise<{ format: 'kernel' | 'initrd'; size: number; virtualSize: number }> {
  const { size } = await stat(file);
  if (size === 0) throw new InvalidArgument(`the ${kind} is empty`);
  if (size > MAX_BOOT_FILE_BYTES) throw new InvalidArgument(`the ${kind} is larger than ${MAX_BOOT_FILE_BYTES / 1024 / 1024} MiB`);
  const head = Buffer.alloc(0x206);
  const fh = await open(file, 'r');
  try {
    await fh.read(head, 0, head.length, 0);
  } finally {
    await fh.close();
  }
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (kind === 'kernel') {
    const bzImage = head.subarray(0x202, 0x206).toString('latin1') === 'HdrS';
    if (!bzImage && !starts(0x7f, 0x45, 0x4c, 0x46)) throw new InvalidArgument('not a kernel: a bzImage or an ELF image expected');
  } else {
    const cpio = head.subarray(0, 6).toString('latin1');
    const known = cpio === '070701' || cpio === '070702' || cpio === '070707' ||
      starts(0x1f, 0x8b) || starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) || starts(0x28, 0xb5, 0x2f, 0xfd) ||
      starts(0x02, 0x21, 0x4c, 0x18) || starts(0x42, 0x5a, 0x68) || starts(0x5d, 0x00, 0x00) || starts(0x89, 0x4c, 0x5a, 0x4f);
    if (!known) throw new InvalidArgument('not an initrd: a cpio archive (plain, gzip, xz, zstd, lz4, bzip2, lzma or lzo) expected');
  }
  return { format: kind, size, virtualSize: 0 };
}

/** Where a layer is written: the upper dir of an overlay, or the bind source. */
