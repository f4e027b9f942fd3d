/**
 * LocalAgent: the agent side of one host, used in-process by the embedded
 * daemon. It owns the content store, the snapshotter, the instance drivers and
 * the host's networking, and turns control-plane requests into calls on the
 * hosts that do each job: images (images/image-host.ts), containers
 * (container-host.ts), VMs (vm-host.ts), volumes, moves and copies.
 */
import { hostname, cpus as hostCpus, totalmem, release } from 'node:os';
import { join } from 'node:path';
import { Unavailable } from '../core/errors.js';
import { logger } from '../core/log.js';
import { startStateFileThread } from '../core/state-files.js';
import type { CompiledOptions } from '../core/config.js';
import type { Agent, AgentInfo, BuildProgress, BuildRequest, CommitRequest, ContainerCreateRequest, HostVolumeInfo, LayerImportOptions, MigrateOutOptions, PullOptions, PullProgress, VmCreateRequest, VmImageKind, VmMigrationSpec, AddressProvider } from './agent.js';
import type { ContentStore } from './content/content-store.js';
import { LocalContentStore } from './content/local-content-store.js';
import type { AttachRequest, InstanceDriver } from './drivers/instance-driver.js';
import { ContainerDriver } from './drivers/container/container-driver.js';
import { RUNTIME_NAMES, probeRuntime } from './drivers/container/oci-runtime.js';
import { DEFAULT_CGROUP_PARENT, detectCgroupLayout, removeCgroupParentIfEmpty } from './cgroups/cgroups.js';
import { DiskSpace, statfsProbe } from './content/disk-space.js';
import { snapshotExists, type Snapshotter } from './snapshots/snapshotter.js';
import { chooseSnapshotter } from './snapshots/registry.js';
import { removeEarlierLeftovers, removeInterruptedWrites } from './interrupted-writes.js';
import { VmDriver } from './drivers/vm/vm-driver.js';
import type { MigrationTls } from './drivers/vm/migration-tls.js';
import { NetworkHost } from './network/network-host.js';
import type { OverlayPeer } from './network/overlay.js';
import type { RoutedPeer } from './network/routed-peers.js';
import { hostRoutes } from './network/kernel.js';
import type { NetworkSpec } from './network/network-driver.js';
import { VolumeStore } from './volumes/volume-store.js';
import { BlockVolumeStore } from './volumes/block-volume-store.js';
import { MoveHost } from './move/move-host.js';
import { LiveMoveHost, liveMoveSupport } from './move/live-move-host.js';
import { CopyHost } from './copy/container-copy.js';
import { LocalImageHost } from './images/image-host.js';
import { LocalContainerHost } from './container-host.js';
import { LocalVmHost } from './vm-host.js';

const log = logger('agent');

export class LocalAgent implements Agent {
  /** Container networking on this host: namespaces, veths, the nftables table, DNS; containers and VMs both plug into it. */
  private readonly network: NetworkHost;
  /** Images and their content: pulls, imports, builds, commits, blobs between hosts, garbage collection. */
  private readonly imageHost: LocalImageHost;
  /** Containers: creation (warm ones too), lifecycle, removal. */
  private readonly containerHost: LocalContainerHost;
  /** VMs: the accelerator, creation and lifecycle, live migrations. */
  private readonly vmHost: LocalVmHost;
  private cpuCount: number | undefined;

  private constructor(
    private readonly options: CompiledOptions,
    private readonly content: ContentStore,
    private readonly snapshotter: Snapshotter,
    private readonly containers: ContainerDriver,
    private readonly probes: { runtimes: AgentInfo['runtimes']; snapshotters: AgentInfo['snapshotters'] },
    vms: VmDriver,
  ) {
    this.network = new NetworkHost({
      stateDir: options.networkDir, dnsPort: options.dnsPort, nftTable: options.nftTable,
      // nimbusd agent --underlay-ip sets it (main.ts); the embedded agent takes it from the environment
      ...(process.env.NIMBUS_UNDERLAY_IP ? { underlayIp: process.env.NIMBUS_UNDERLAY_IP } : {}),
      ...(options.dnsUpstreams ? { upstreams: options.dnsUpstreams } : {}),
    });
    this.vmHost = new LocalVmHost({ options, vms, network: this.network, blockVolume: (id) => this.blockVolumeStore.get(id) });
    this.containerHost = new LocalContainerHost({
      options, snapshotter, containers, network: this.network,
      // the same accelerator choice as VMs: one probe boot per agent, not one per kind of guest
      vmAccelerator: () => this.vmHost.vmAccelerator(),
      volume: (id) => this.volumeStore.ensureMounted(id),
      room: () => this.diskSpace(),
      lifecycle: (id, fn) => this.copies.lifecycle(id, fn),
    });
    this.imageHost = new LocalImageHost({
      options, content: this.content, snapshotter,
      room: () => this.diskSpace(),
      releaseLayers: (keepChainIds) => this.containerHost.releaseLayers(keepChainIds),
      withWritableLayer: (id, pause, fn) => this.copies.withWritableLayer(id, pause, fn),
    });
  }

  /** `migrationTls`: the agent's certificate from the agent CA, for live migrations over TLS (docs/security.md). */
  static async create(options: CompiledOptions, extra: { migrationTls?: MigrationTls } = {}): Promise<LocalAgent> {
    // the thread the state files are written on (core/state-files.ts), started beside the probes: a first write would wait for it
    const stateFiles = startStateFileThread().catch((e: unknown) => log.warn('state files are written through the thread pool: their thread did not start', { error: e }));
    const { snapshotter, probes: snapshotterProbes } = await chooseSnapshotter(options.snapshotter, { snapshotsDir: options.snapshotsDir, probeDir: options.tmpDir });
    const content = new LocalContentStore(options.contentDir);
    // NIMBUS_CGROUP_PARENT: hosts that share one cgroup tree (test hosts in network namespaces) keep apart
    const containers = new ContainerDriver({
      stateDir: options.containersDir, runtime: options.runtime, cgroupParent: cgroupParent(),
      ...(options.seccompProfile ? { seccompProfile: options.seccompProfile } : {}),
    });
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
    await stateFiles;
    return new LocalAgent(options, content, snapshotter, containers, {
      runtimes,
      snapshotters: snapshotterProbes,
    }, vms);
  }

  async info(): Promise<AgentInfo> {
    return {
      name: this.options.agentName,
      hostname: hostname(),
      cgroupLayout: (await detectCgroupLayout()).mode,
      snapshotter: this.snapshotter.name,
      runtimes: this.probes.runtimes,
      snapshotters: this.probes.snapshotters,
      kernel: release(),
      cpus: (this.cpuCount ??= hostCpus().length), // os.cpus() reads every CPU's times: not per /info call
      memoryBytes: totalmem(),
      diskBytes: (await statfsProbe(this.options.home)).totalBytes,
      architecture: process.arch === 'x64' ? 'amd64' : process.arch,
      warmPool: this.containerHost.warmPoolStats(),
      removals: this.containerHost.removalStats(),
      liveMove: await liveMoveSupport(),
      vm: this.vmHost.acceleratorInfo(),
    };
  }

  /** Free space where images land (the content store, the snapshots): pulls and unpacks check it. */
  private diskSpace(): DiskSpace {
    return new DiskSpace({ content: this.options.contentDir, snapshots: this.options.snapshotsDir });
  }

  // ---------------------------------------------------------------- images (images/image-host.ts)

  pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void) {
    return this.imageHost.pullImage(ref, opts, progress);
  }
  importImages(archivePath: string) {
    return this.imageHost.importImages(archivePath);
  }
  buildImage(req: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal) {
    return this.imageHost.buildImage(req, context, progress, signal);
  }
  importDiskImage(file: string, kind?: VmImageKind) {
    return this.imageHost.importDiskImage(file, kind);
  }
  diskImagePath(digest: string): string {
    return this.imageHost.diskImagePath(digest);
  }
  missingBlobs(digests: string[]) {
    return this.imageHost.missingBlobs(digests);
  }
  readBlob(digest: string) {
    return this.imageHost.readBlob(digest);
  }
  writeBlob(digest: string, size: number, bytes: AsyncIterable<Uint8Array>) {
    return this.imageHost.writeBlob(digest, size, bytes);
  }
  adoptImage(manifestDigest: string) {
    return this.imageHost.adoptImage(manifestDigest);
  }
  adoptDiskImage(digest: string, kind: VmImageKind) {
    return this.imageHost.adoptDiskImage(digest, kind);
  }
  garbageCollect(keep: { manifestDigests: string[]; indexDigests: string[]; chainIds: string[]; blobs?: string[] }) {
    return this.imageHost.garbageCollect(keep);
  }
  /** docker commit (images/commit.ts), protocol 9. */
  commitContainer(id: string, req: CommitRequest) {
    return this.imageHost.commitContainer(id, req);
  }

  // ------------------------------------------------------------ containers (container-host.ts)

  claimWarmContainer(req: Omit<ContainerCreateRequest, 'id'>) {
    return this.containerHost.claimWarmContainer(req);
  }
  createContainer(req: ContainerCreateRequest) {
    return this.containerHost.createContainer(req);
  }
  startContainer(id: string) {
    return this.containerHost.startContainer(id);
  }
  stopContainer(id: string, timeoutSec: number, signal?: string) {
    return this.containerHost.stopContainer(id, timeoutSec, signal);
  }
  killContainer(id: string, signal: string) {
    return this.containerHost.killContainer(id, signal);
  }
  pauseContainer(id: string) {
    return this.containerHost.pauseContainer(id);
  }
  unpauseContainer(id: string) {
    return this.containerHost.unpauseContainer(id);
  }
  containerState(id: string) {
    return this.containerHost.containerState(id);
  }
  attachContainer(id: string, req: AttachRequest) {
    return this.containerHost.attachContainer(id, req);
  }
  resizeContainer(id: string, rows: number, cols: number) {
    return this.containerHost.resizeContainer(id, rows, cols);
  }
  execInContainer(id: string, req: Parameters<InstanceDriver['exec']>[1]) {
    return this.containerHost.execInContainer(id, req);
  }
  containerLogs(id: string, opts: Parameters<InstanceDriver['logs']>[1]) {
    return this.containerHost.containerLogs(id, opts);
  }
  containerTop(id: string) {
    return this.containerHost.containerTop(id);
  }
  containerStats(id: string) {
    return this.containerHost.containerStats(id);
  }
  removeContainer(id: string) {
    return this.containerHost.removeContainer(id);
  }
  containerLayerUsage(ids: string[]) {
    return this.containerHost.containerLayerUsage(ids);
  }
  listContainers() {
    return this.containerHost.listContainers();
  }
  onContainerExit(listener: (id: string) => void): void {
    this.containerHost.onContainerExit(listener);
  }

  // ---------------------------------------------------------------- networks

  setAddressProvider(p: AddressProvider): void {
    this.containerHost.setAddressProvider(p);
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
    await this.imageHost.sweepBuilds(); // a build killed with its agent: its storage, mounts, cgroup (a no-op once a build ran)
    await this.containerHost.sweepCopyUp(); // a create killed mid copy-up: its read-only mount of the snapshot
    return this.network.reconcile(new Set(liveContainers), new Set(liveNetworks));
  }

  // ---------------------------------------------------------------- VMs (vm-host.ts)

  createVm(req: VmCreateRequest) {
    return this.vmHost.createVm(req);
  }
  createVmFromTemplate(templateId: string, id: string, name: string) {
    return this.vmHost.createVmFromTemplate(templateId, id, name);
  }
  startVm(id: string) {
    return this.vmHost.startVm(id);
  }
  stopVm(id: string, timeoutSec: number) {
    return this.vmHost.stopVm(id, timeoutSec);
  }
  killVm(id: string, signal: string) {
    return this.vmHost.killVm(id, signal);
  }
  pauseVm(id: string) {
    return this.vmHost.pauseVm(id);
  }
  unpauseVm(id: string) {
    return this.vmHost.unpauseVm(id);
  }
  resizeVm(id: string, want: { cpus?: number; memoryMiB?: number }) {
    return this.vmHost.resizeVm(id, want);
  }
  saveVm(id: string) {
    return this.vmHost.saveVm(id);
  }
  restoreVm(id: string) {
    return this.vmHost.restoreVm(id);
  }
  vmState(id: string) {
    return this.vmHost.vmState(id);
  }
  inspectVm(id: string) {
    return this.vmHost.inspectVm(id);
  }
  vmStats(id: string) {
    return this.vmHost.vmStats(id);
  }
  openVmConsole(id: string) {
    return this.vmHost.openVmConsole(id);
  }
  vmLogs(id: string, opts: Parameters<InstanceDriver['logs']>[1]) {
    return this.vmHost.vmLogs(id, opts);
  }
  removeVm(id: string) {
    return this.vmHost.removeVm(id);
  }
  listVms() {
    return this.vmHost.listVms();
  }
  reconcileVms() {
    return this.vmHost.reconcileVms();
  }
  vmMigrationSpec(id: string) {
    return this.vmHost.vmMigrationSpec(id);
  }
  prepareVmIncoming(spec: VmMigrationSpec) {
    return this.vmHost.prepareVmIncoming(spec);
  }
  migrateVmOut(id: string, uri: string, opts: MigrateOutOptions) {
    return this.vmHost.migrateVmOut(id, uri, opts);
  }
  finishVmIncoming(id: string, consoleHistory: string) {
    return this.vmHost.finishVmIncoming(id, consoleHistory);
  }
  abandonVmIncoming(id: string) {
    return this.vmHost.abandonVmIncoming(id);
  }
  endVmMigration(id: string, outcome: 'moved' | 'resume') {
    return this.vmHost.endVmMigration(id, outcome);
  }
  onVmExit(listener: (id: string) => void): void {
    this.vmHost.onVmExit(listener);
  }

  // ---------------------------------------------------------------- block volumes (docs/volumes.md "Block volumes")
  private blockVolumesP: BlockVolumeStore | undefined;
  private get blockVolumeStore(): BlockVolumeStore {
    return (this.blockVolumesP ??= new BlockVolumeStore(join(this.options.home, 'block-volumes')));
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
  attachVmVolume(vmId: string, volume: { volumeId: string; readonly?: boolean; boot?: boolean }) {
    return this.vmHost.attachVmVolume(vmId, volume);
  }
  detachVmVolume(vmId: string, volumeId: string) {
    return this.vmHost.detachVmVolume(vmId, volumeId);
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
      agentName: this.options.agentName, snapshotter: this.snapshotter,
      containerState: (id) => this.containerState(id), listContainers: () => this.listContainers(),
      snapshotExists: (key) => snapshotExists(this.snapshotter, key), volume: (id) => this.volumeStore.ensureMounted(id),
      room: () => this.diskSpace(),
      savedRequest: (id) => this.containerHost.savedRequest(id),
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
        const mounts = await this.containerHost.mountsFor(req);
        return { spec: await this.containerHost.specFor(req, await this.snapshotter.mounts(req.id)), mounts };
      },
      saveRequest: (req) => this.containerHost.saveRequest(req),
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
    const state = await this.containerHost.busy(() => this.liveMover.restoreContainer(req));
    this.restoredAwaitingLog.add(req.id);
    return state;
  }
  containerRequest(id: string) {
    return this.mover.containerRequest(id);
  }
  exportContainerLayer(id: string) {
    return this.mover.exportContainerLayer(id);
  }
  importContainerLayer(id: string, imageChainId: string, bytes: AsyncIterable<Uint8Array>, opts?: LayerImportOptions) {
    return this.mover.importContainerLayer(id, imageChainId, bytes, opts);
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
      isSecure: (id) => this.containerHost.isSecure(id),
      view: (id) => this.containers.copyView(id),
      state: (id) => this.containers.state(id),
      freeze: (id) => this.containers.pause(id),
      thaw: (id) => this.containers.unpause(id),
      snapshotMounts: (id) => this.snapshotter.mounts(id),
      saved: async (id) => ({ mountPoints: ((await this.containerHost.savedRequest(id)).mounts ?? []).map((m) => m.target) }),
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

  async close(): Promise<void> {
    await this.imageHost.close(); // the pull warm-up: its scratch directory goes before the daemon does
    await this.containerHost.close(); // warm containers' endpoints go with them: the network layer closes after
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
