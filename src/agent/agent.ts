/**
 * The agent protocol: everything the control plane asks of a host. In the
 * embedded default it is a direct in-process object (LocalAgent); across hosts
 * the same interface is carried over an authenticated channel.
 */
import type { Duplex, Readable } from 'node:stream';
import type { WarmPoolStats } from './warm-pool.js';
import type { ReaperStats } from './reaper.js';
import type { ImageConfigDoc, LayerRecord } from '../store/records.js';
import type {
  AttachRequest,
  AttachSession,
  ExecRequest,
  ExecSession,
  InstanceStats,
  LogLimits,
  LogRecord,
  ProcessSpec,
  ResourceLimits,
  RuntimeState,
} from './drivers/instance-driver.js';
import type { VmInspect, VmLifecycle } from './drivers/vm/vm-driver.js';
import type { AcceleratorChoice } from './drivers/vm/accel.js';
import type { MigrationTls } from './drivers/vm/migration-tls.js';
import type { EndpointSpec, NetworkSpec, PortMapping } from './network/network-driver.js';
import type { OverlayPeer } from './network/overlay.js';
import type { RoutedPeer } from './network/routed-peers.js';

export interface AgentImage {
  /** Normalised reference it was pulled or imported as, when known. */
  reference?: string;
  manifestDigest: string;
  indexDigest?: string;
  configDigest: string;
  config: ImageConfigDoc;
  layers: LayerRecord[];
  chainId: string;
  size: number;
}

export interface PullProgress {
  layers: { digest: string; status: string; bytesDone: number; bytesTotal: number }[];
  bytesDone: number;
  bytesTotal: number;
  phase: 'resolving' | 'downloading' | 'unpacking' | 'done';
}

export interface PullOptions {
  insecureRegistries?: string[];
  /** Registries an administrator allows on this host's own, loopback or link-local addresses (registry-egress.ts). */
  allowedRegistries?: string[];
  credentials?: { username: string; password: string };
  signal?: AbortSignal;
  /**
   * The configs and layers the pulling project holds already (the control plane's images of it):
   * only these are taken from the host's store without a download. Any other blob the host has is
   * fetched from the registry and checked, so that a digest alone never gets another project's
   * content. Absent: none.
   */
  reusable?: string[];
}

/**
 * An image build on a host (buildah; agent/images/build.ts, docs/builds.md). The FROM images are
 * the host's own, named by the control plane: the builder never pulls. Protocol 6 and later.
 */
export interface BuildRequest {
  /** The build's id: its directories and cgroup are named by it. */
  id: string;
  /** Whose build: its storage is this project's alone. */
  projectId: string;
  /** The Dockerfile's path inside the context. */
  dockerfile: string;
  buildArgs: Record<string, string>;
  target?: string;
  labels?: Record<string, string>;
  /** RUN steps' network: none unless the control plane allowed the host's. */
  network: 'none' | 'host';
  /** Every image the Dockerfile names (FROM, COPY --from), as written, with the manifest this host holds for it. */
  baseImages: { name: string; manifestDigest: string }[];
  /** The cgroup limits of the builder's whole process tree (what the quota admitted). */
  resources: { cpus: number; memoryBytes: number };
  /** Every step run again, the project's layer cache not read (docker build --no-cache); what it makes is cached for later builds. Protocol 8. */
  noCache?: boolean;
}

/** One line of the builder's output (a step's header, a RUN step's output). */
export interface BuildProgress {
  line: string;
}

/**
 * How a container is networked. "networks": its own namespace with one endpoint per network
 * (addresses leased by the control plane); "none": its own namespace with only loopback;
 * "host": the host's namespace; "container": another container's namespace (a pod's).
 */
export type ContainerNetworkRequest =
  | { mode: 'none' }
  | { mode: 'host' }
  | { mode: 'container'; container: string }
  | {
      mode: 'networks';
      endpoints: Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>;
      ports: PortMapping[];
      extraHosts: string[];
      dns: string[];
    };

export interface AddressProvider {
  /** An address on the network for this (warm) instance id, or undefined (none left, network gone). */
  lease(networkId: string, instanceId: string): Promise<string | undefined>;
  /** Give back whatever the id holds (idempotent; a no-op for ids that became containers). */
  release(instanceId: string): Promise<void>;
}

export interface ContainerCreateRequest {
  id: string;
  name: string;
  /** Absent: "none" (a namespace of its own with loopback only). */
  network?: ContainerNetworkRequest;
  /** Snapshot chain id of the image's top layer. */
  imageChainId: string;
  process: ProcessSpec;
  resources: ResourceLimits;
  hostname?: string;
  runtime?: string;
  labels?: Record<string, string>;
  /** Log rotation (max-size / max-file); absent: the driver's defaults. */
  log?: LogLimits;
  /** Volumes, host directories and tmpfs mounted into it (docs/volumes.md); absent: none. Protocol 5 and later. */
  mounts?: ContainerMount[];
  /**
   * What its writable layer may hold, in bytes (whole MiB, 16 MiB to 16 TiB): the layer gets a
   * filesystem of that size of its own (snapshotter.ts PrepareOptions). Absent: unbounded.
   * Protocol 12 (STORAGE_LIMITS_SINCE): an older agent would ignore it, so it is never sent one.
   */
  storageBytes?: number;
}

/**
 * One mount of a container. A volume is named by id and must be on the container's host; a bind
 * names a host path, resolved (symlinks too) and checked on the host, where the path is; tmpfs is
 * memory, `sizeBytes` at most (absent: the kernel's default, half the host's memory).
 */
export type ContainerMount =
  // copyUp (protocol 9): made for this container; the image's files at the target are copied in before it runs, if it is empty
  | { type: 'volume'; volumeId: string; target: string; readonly?: boolean; copyUp?: boolean }
  | { type: 'bind'; source: string; target: string; readonly?: boolean }
  | { type: 'tmpfs'; target: string; sizeBytes?: number; mode?: number };

/** A moved container's writable layer at its destination: of the size it had (protocol 12). */
export interface LayerImportOptions {
  storageBytes?: number;
}

/** A named volume on its host (docs/volumes.md). */
export interface HostVolumeInfo {
  id: string;
  sizeBytes: number;
  /** Where its data is on the host (what a container's mount binds). */
  path: string;
  mounted: boolean;
}

export interface VmCreateRequest {
  id: string;
  name: string;
  cpus: number;
  /** Room for vCPU hot-plug while it runs (resize); absent: none. */
  maxCpus?: number;
  memoryMiB: number;
  kernel?: string;
  initrd?: string;
  append?: string;
  disk?: string;
  pin?: number[];
  /** virtio-net NICs, one per network, with the addresses the control plane leased (the guest is told them on its command line). */
  nics?: Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>;
  /** Block volumes attached from the start, by id (a boot volume: `boot`). Protocol 7: the control plane sends it to no older agent. */
  volumes?: Array<{ volumeId: string; readonly?: boolean; boot?: boolean }>;
}

/**
 * Live migration between agents: what the destination needs to rebuild the VM's devices.
 * Opaque to the control plane (the source's driver record less its host paths), carried as JSON.
 */
export interface VmMigrationSpec {
  id: string;
  name: string;
  createdAt: string;
  config: Record<string, unknown>;
  pin?: number[];
  /**
   * A VM with a local root disk (a qcow2 overlay): the destination makes an overlay of its own and
   * the source mirrors the disk into it over NBD while RAM is copied. With `backing` (the same base
   * image as this host has it; the control plane puts the destination's path of it here) only the
   * overlay's own clusters travel; without one the whole disk does, into an image of virtualSize.
   */
  storage?: { virtualSize: number; backing?: string; backingFormat?: 'raw' | 'qcow2' };
  /** NICs the destination re-creates before the stream (same networks and addresses, hence the same MACs); set by the control plane. */
  nics?: Array<{ network: NetworkSpec; address: string; dnsNames: string[] }>;
  /** The source agent's certificate name when it can send over TLS (protocol 8; docs/security.md, "Live migration"). */
  tls?: string;
  /**
   * The source takes a certificate minted for the move though it has none of its own (protocol
   * 14: an agent on a unix socket): the control plane then mints both sides' and the move is TLS.
   * An older source without a certificate sends in clear.
   */
  takesMintedCredentials?: boolean;
  /**
   * The destination's certificate for this migration alone (protocol 11): minted by the control
   * plane, short-lived and named `migration.AGENT`, so that QEMU never holds the agent's own key.
   * Absent: the agent's own certificate. Never logged.
   */
  credentials?: MigrationTls;
  /**
   * A one-time secret of this move (protocol 14; 64 hex digits), made by the source agent when its
   * QEMU takes its connections from the agent: the destination hands QEMU only a connection that
   * sends it first, and keeps listening past one that does not (a stranger who reached the port
   * first no longer fails the move). Never logged.
   */
  streamToken?: string;
}

/** A stream token's length in bytes, and its form on the wire (hex): the schema's and the driver's one rule. */
export const STREAM_TOKEN_BYTES = 32;
export const STREAM_TOKEN_PATTERN = `^[0-9a-f]{${STREAM_TOKEN_BYTES * 2}}$`;

/** Where the source sends a migration (the destination's answer to prepareVmIncoming). */
export interface IncomingMigrationTarget {
  uri: string;
  /** The NBD export the disk is mirrored into, when the VM has a local disk. */
  nbd?: string;
  /** The NBD export each attached block volume is mirrored into, by volume id (protocol 9: an older destination offers none, and the move is refused). */
  nbdVolumes?: Record<string, string>;
  /** The streams are TLS: the destination's certificate name, which the source checks. Absent: plain. */
  tls?: string;
  /** The destination takes the stream only after the spec's streamToken (protocol 14): the source must send it first. */
  checksStreamToken?: boolean;
}

/** How the source sends: the downtime limit, a bandwidth cap, and where the disk goes (the destination's NBD export, when the VM has a local disk). */
export interface MigrateOutOptions {
  maxDowntimeMs: number;
  maxBandwidthBytes?: number;
  nbd?: string;
  /** Where each attached block volume goes (the destination's exports, by volume id; protocol 9). */
  nbdVolumes?: Record<string, string>;
  /** The destination's certificate name: send over TLS and check it (absent: plain, the destination asked for no TLS). */
  tls?: string;
  /** The source's certificate for this migration alone (protocol 11; VmMigrationSpec.credentials). Never logged. */
  credentials?: MigrationTls;
  /** Send this first on the stream's connection and wait for the destination's acceptance (VmMigrationSpec.streamToken, when the destination checks it). Never logged. */
  streamToken?: string;
}

/** The source's half of a live migration, once the last pass is sent. */
export interface OutgoingMigration {
  /** The source QMP STOP event (ms since the epoch, the source host's clock); absent if QEMU sent none. */
  stoppedAt?: number;
  /** QEMU's own downtime figure (source side: stop to the end of the last pass). */
  qemuDowntimeMs: number;
  /** The downtime limit as the source QEMU reported it back after it was set. */
  downtimeLimitMs?: number;
  /** From migrate to completed at the source. */
  totalMs: number;
  bytes: number;
  /** RAM passes (dirty-sync-count). */
  iterations: number;
  /** Disk bytes mirrored to the destination (0 without a local disk). */
  diskBytes?: number;
  /** Bytes mirrored per attached block volume (absent without volumes). */
  volumeBytes?: Record<string, number>;
  /** The RAM stream and the disk's went over TLS. */
  tls?: boolean;
  /** The console output the VM printed on this host and the ones before it, base64. */
  consoleHistory: string;
}

/** A VM as its host sees it: the driver's lifecycle plus the runtime facts. */
export interface VmHostState extends RuntimeState {
  lifecycle: VmLifecycle;
}

export interface AgentInfo {
  name: string;
  hostname: string;
  cgroupLayout: string;
  snapshotter: string;
  runtimes: { name: string; usable: boolean; reason?: string; default?: boolean }[];
  snapshotters: { name: string; usable: boolean; reason?: string }[];
  kernel: string;
  cpus: number;
  memoryBytes: number;
  /** Size of the filesystem holding the agent's data (content store, snapshots, VM disks); absent from agents that predate it. */
  diskBytes?: number;
  /** CPU architecture in OCI spelling (amd64, arm64); absent from agents that predate it. */
  architecture?: string;
  /** Containers created ahead of demand (absent where the agent has no pool). */
  warmPool?: WarmPoolStats;
  /** Removed containers whose host state is still being destroyed in the background. */
  removals?: ReaperStats;
  /** The accelerator new VMs get, and why; "undecided" until the first VM needs it (absent where the agent runs no VMs). */
  vm?: { accelerator: AcceleratorChoice['accel'] | 'undecided'; reason: string; decidedAt?: string };
  /** Whether containers move live to or from this host (a CRIU that passes `criu check`), and why not. Protocol 9; absent from older agents. */
  liveMove?: LiveMoveSupport;
}

/** A host's CRIU for live container moves. */
export interface LiveMoveSupport {
  usable: boolean;
  /** The binary runc is given (NIMBUS_CRIU, Nimbus' build, the system's). */
  criu?: string;
  version?: string;
  /** Why not: each candidate's `criu check` failure. */
  reason?: string;
}

export interface GcResult {
  blobsRemoved: number;
  snapshotsRemoved: number;
  bytesFreed: number;
}

/** What a VM image is for: its root disk, or the kernel and initrd of a direct kernel boot (Glance's ami / aki / ari). */
export type VmImageKind = 'disk' | 'kernel' | 'initrd';
/** A disk's format, or the boot file it is. */
export type VmImageFormat = 'raw' | 'qcow2' | 'kernel' | 'initrd';

/*
 * The agent protocol as narrow host-side interfaces (containerd's split of services): a control
 * service takes the ones it calls, so a test fakes only those and a host that runs no VMs
 * could leave them out. `Agent` is all of them: what LocalAgent and RemoteAgent implement.
 */

/** What the host says of itself (capacity, runtimes, accelerator). */
export interface HostInfoApi {
  info(): Promise<AgentInfo>;
}

/** Container images and VM images in the host's content store. */
export interface ImageHost {
  pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void): Promise<AgentImage>;
  importImages(archivePath: string): Promise<AgentImage[]>;
  /** Remove every blob and snapshot not reachable from the given images (and disk images' blobs). */
  garbageCollect(keep: { manifestDigests: string[]; indexDigests: string[]; chainIds: string[]; blobs?: string[] }): Promise<GcResult>;
  /**
   * A VM image into the content store, checked first. A disk: raw or qcow2 only, and a qcow2 that
   * names a backing or data file (another file on this host) is refused. A kernel: a bzImage or an
   * ELF image. An initrd: a cpio archive, plain or compressed as the kernel can unpack it.
   */
  importDiskImage(file: string, kind?: VmImageKind): Promise<DiskImageInfo>;
  /** Where a disk image's blob is on this host (VM overlays are backed by it; it never changes). */
  diskImagePath(digest: string): string;
  /*
   * Carrying content between hosts (containerd's content Reader/Writer by digest): the control
   * plane streams a blob from one host's readBlob into another's writeBlob, which verifies it,
   * then has the target adopt the image from its own store. Protocol 3 and later.
   */
  /** Which of these digests the content store lacks (in the order given). */
  missingBlobs(digests: string[]): Promise<string[]>;
  /** The blob's bytes as a stream, with its size; NotFound when absent. */
  readBlob(digest: string): Promise<BlobStream>;
  /**
   * A blob into the content store: written aside, its size and sha256 checked, then committed
   * atomically; a mismatch (DataLoss) leaves nothing. A blob already there is a no-op (the
   * bytes are not read). Refused up front when the disk cannot hold `size` bytes.
   */
  writeBlob(digest: string, size: number, bytes: AsyncIterable<Uint8Array>): Promise<{ digest: string; size: number }>;
  /** The image whose manifest, config and layers are in the content store, unpacked with the checks of an import. */
  adoptImage(manifestDigest: string): Promise<AgentImage>;
  /** A VM image blob in the content store, checked as importDiskImage checks a file; with its path on this host. */
  adoptDiskImage(digest: string, kind: VmImageKind): Promise<AdoptedDiskImage>;
  /**
   * Build an image from a context (a tar stream) and import it into the content store as an
   * import is (verified, layers hardened); nothing of the build is left afterwards, on failure too,
   * but the project's layer cache (images/build-cache.ts: its own project's builds only).
   */
  buildImage(req: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<AgentImage>;
}

/** A blob being read: its bytes (the reader must consume or destroy it) and its size. */
export interface BlobStream {
  size: number;
  bytes: Readable;
}

/** `ps`'s columns and one row of them per process. */
export interface ProcessTable {
  titles: string[];
  processes: string[][];
}

/** What importDiskImage returns. */
export interface DiskImageInfo {
  digest: string;
  size: number;
  format: VmImageFormat;
  virtualSize: number;
}

/** A VM image ready on a host: what an import returns, and where VMs there find it. */
export interface AdoptedDiskImage extends DiskImageInfo {
  path: string;
}

/** Containers on the host: lifecycle, I/O, warm claims, exits. */
export interface ContainerHost {
  /**
   * A container created ahead of demand that can serve this request, reserved for the
   * caller, who must then use its id in createContainer (or removeContainer it). Undefined
   * when none is ready; the agent then warms some for next time.
   */
  claimWarmContainer(req: Omit<ContainerCreateRequest, 'id'>): string | undefined;
  /** Returns the runtime chosen ("runc" | "crun") and any adjustments made to the request (e.g. clamped rlimits). */
  /** `ports`: the request's ports as published, those asked as hostPort 0 with the port the host chose (protocol 8). */
  createContainer(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string; ports?: PortMapping[] }>;
  /** Start a created container; a stopped one is first re-created on the same writable layer (Docker semantics). */
  startContainer(id: string): Promise<RuntimeState>;
  stopContainer(id: string, timeoutSec: number, signal?: string): Promise<RuntimeState>;
  killContainer(id: string, signal: string): Promise<void>;
  pauseContainer(id: string): Promise<void>;
  unpauseContainer(id: string): Promise<void>;
  containerState(id: string): Promise<RuntimeState>;
  execInContainer(id: string, req: ExecRequest): Promise<ExecSession>;
  /** Attach to the main process through its monitor: output from now on, its stdin when asked. Protocol 8. */
  attachContainer(id: string, req: AttachRequest): Promise<AttachSession>;
  /** The main process's terminal's new size (a container made with process.terminal). Protocol 8. */
  resizeContainer(id: string, rows: number, cols: number): Promise<void>;
  containerLogs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord>;
  containerStats(id: string): Promise<InstanceStats>;
  /** Its processes as `ps -ef` shows them (host pids), for `top`. Protocol 6. */
  containerTop(id: string): Promise<ProcessTable>;
  /**
   * Forget a container: once this resolves the agent no longer serves it; its host
   * state may still be being destroyed in the background (garbage collection and
   * close wait for that).
   */
  removeContainer(id: string): Promise<void>;
  listContainers(): Promise<string[]>;
  /**
   * What each of these containers' writable layers holds on this host, as `du` counts it
   * (allocated bytes, inodes; docker ps -s, system df's SizeRw). Containers the host does not
   * have are left out. Protocol 13.
   */
  containerLayerUsage(ids: string[]): Promise<Record<string, LayerUsage>>;
  onContainerExit(listener: (id: string) => void): void;
}

/** A writable layer's usage (Agent.containerLayerUsage). */
export interface LayerUsage {
  bytes: number;
  inodes: number;
}

/** Networks laid out by the agent; records and addresses belong to the control plane. */
export interface NetworkHost {
  /**
   * How the agent gets addresses for containers it creates ahead of demand (warm ones): the
   * control plane leases them to the warm container's id, which a claim makes the container's.
   * In the embedded daemon a direct call; across hosts, a call back to the control plane.
   */
  setAddressProvider(p: AddressProvider): void;
  /** Lay the network out on this host unless it is there (idempotent). */
  ensureNetwork(spec: NetworkSpec): Promise<void>;
  /** Conflict while a container on this host is attached to it. */
  removeNetwork(id: string): Promise<void>;
  /** IPv4 subnets the host routes that are not Nimbus networks (a new network must not overlap them). */
  foreignSubnets(): Promise<string[]>;
  /** Another endpoint in a container's namespace (it must have one of its own: not none, host or container:). */
  connectContainer(id: string, endpoint: { network: NetworkSpec; address: string; dnsNames: string[] }): Promise<EndpointSpec>;
  disconnectContainer(id: string, networkId: string): Promise<void>;
  /** The container was renamed: its endpoints here answer DNS by the new name, no longer by `from` (aliases kept). Protocol 6. */
  renameContainer(id: string, from: string, to: string): Promise<void>;
  /** Daemon start: endpoints of containers that are gone removed, networks not listed removed, the rest laid out again. */
  reconcileNetworks(liveContainers: string[], liveNetworks: string[]): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }>;
  /**
   * A network spanning hosts (docs/overlay.md): its VXLAN device here (VNI `vni`, outer source
   * `localUnderlayIp` unless the host was given its own) holds exactly `peers`, the network's
   * endpoints on other hosts; none removes the device. Idempotent: the whole set every time.
   */
  setOverlayPeers(networkId: string, vni: number, localUnderlayIp: string, peers: OverlayPeer[]): Promise<void>;
  /** The host's underlay address: its --underlay-ip, else its source address toward `toward` (another host's), else undefined. */
  underlayAddress(toward?: string): Promise<string | undefined>;
  /**
   * A routed network spanning hosts (docs/overlay.md, "Routed networks"): a host route here to
   * each of `peers`, the network's endpoints on other hosts, via its host's underlay address;
   * exactly these (none removes them all). Idempotent: the whole set every time. Protocol 8.
   */
  setRoutedPeers(networkId: string, peers: RoutedPeer[]): Promise<void>;
}

/** VMs under the host's QEMU driver. */
export interface VmHost {
  createVm(req: VmCreateRequest): Promise<VmHostState>;
  /** A new VM from a saved one (same devices, disk backed by the template's); left saved, restoreVm starts it. */
  createVmFromTemplate(templateId: string, id: string, name: string): Promise<VmHostState>;
  startVm(id: string): Promise<VmHostState>;
  /** ACPI power button, then SIGKILL after timeoutSec. */
  stopVm(id: string, timeoutSec: number): Promise<VmHostState>;
  killVm(id: string, signal: string): Promise<void>;
  pauseVm(id: string): Promise<void>;
  unpauseVm(id: string): Promise<void>;
  /** Memory through the balloon while it runs (down from its boot size and back); vCPUs and memory while stopped. */
  resizeVm(id: string, want: { cpus?: number; memoryMiB?: number }): Promise<{ cpus: number; memoryMiB: number; balloonMiB?: number }>;
  /** The whole VM state to disk; QEMU then ends and the VM is saved. */
  saveVm(id: string): Promise<{ file: string; bytes: number; ms: number }>;
  /** A saved VM back, the guest continuing where it was. */
  restoreVm(id: string): Promise<{ ms: number }>;
  vmState(id: string): Promise<VmHostState>;
  inspectVm(id: string): Promise<VmInspect>;
  /** QEMU's CPU time and resident memory, and the NICs' counters (protocol 5); Conflict when it is not running. */
  vmStats(id: string): Promise<InstanceStats>;
  /**
   * The VM's serial line, both ways (one client at a time). In-process it is the
   * QEMU chardev socket itself; a remote transport carries it as a stream.
   */
  openVmConsole(id: string): Promise<Duplex>;
  vmLogs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord>;
  removeVm(id: string): Promise<void>;
  listVms(): Promise<string[]>;
  /** Daemon start, before any other VM call: orphan QEMU killed, record-less state removed, exits watched. */
  reconcileVms(): Promise<{ killed: number[]; removed: string[] }>;
  onVmExit(listener: (id: string) => void): void;
}

/** A remote host's link as its events stream sees it (RemoteAgent; not part of Agent: the embedded agent is this process, and a test double need not have one). */
export interface LinkWatch {
  /**
   * Told once per change: lost at once on a reset, after three missed pings on silence (a host
   * cut off or frozen). `reason` names the host, not its address; `adminReason`, when it says
   * more (the agent's URL), is for administrators and the log.
   */
  onLinkChange?(listener: (up: boolean, reason?: string, adminReason?: string) => void): void;
}

/** Live migration between agents (the control plane drives the steps; docs/vms.md). */
export interface VmMigrationHost {
  /** Source, step 1: the running VM's description for the destination (with its local disk's size and base). Conflict unless it runs. */
  vmMigrationSpec(id: string): Promise<VmMigrationSpec>;
  /** Destination, step 2: a QEMU with the VM's devices waiting for the stream; the URI the source sends to. */
  prepareVmIncoming(spec: VmMigrationSpec): Promise<IncomingMigrationTarget>;
  /**
   * Source, step 3: pre-copy while the guest runs, then the final pass (downtime within
   * maxDowntimeMs where QEMU can). On failure the guest goes on here and this throws.
   */
  migrateVmOut(id: string, uri: string, opts: MigrateOutOptions): Promise<OutgoingMigration>;
  /** Destination, step 4: the guest resumed here (QMP RESUME time, ms since the epoch); recorded running, vCPUs pinned. */
  finishVmIncoming(id: string, consoleHistory: string): Promise<{ resumedAt: number; state: VmHostState }>;
  /** Destination, on failure at any step: nothing of the half-arrived VM stays. */
  abandonVmIncoming(id: string): Promise<void>;
  /**
   * Source, step 5: 'moved' ends the source QEMU (left in postmigrate) and removes its state
   * without reporting an exit; 'resume' lets the guest go on here (the destination failed).
   */
  endVmMigration(id: string, outcome: 'moved' | 'resume'): Promise<void>;
}

/** Named volumes: sparse ext4 images loop-mounted on the host (agent/volumes/volume-store.ts). Protocol 5 and later. */
export interface VolumeHost {
  /** Make and mount it; the same id and size again is a no-op. ResourceExhausted when the host's disk cannot hold the size. */
  createVolume(id: string, sizeBytes: number): Promise<HostVolumeInfo>;
  /** Its data gone; an unknown id is a no-op. The control plane checks that no container uses it first. */
  removeVolume(id: string): Promise<void>;
  /** The volume as the host has it, with the bytes its files take; NotFound when the host lacks it. */
  volumeUsage(id: string): Promise<HostVolumeInfo & { usedBytes: number }>;
  /** Daemon start: the listed volumes mounted, every other one removed; the listed ones the host lacks returned as missing. */
  reconcileVolumes(live: string[]): Promise<{ mounted: number; removed: string[]; missing: string[] }>;
}

/** A block volume on its host (agent/volumes/block-volume-store.ts). */
export interface HostBlockVolumeInfo {
  id: string;
  sizeBytes: number;
  /** Its qcow2 file on the host. */
  path: string;
  /** Bytes the file takes (qcow2 allocates as the guest writes). */
  allocatedBytes: number;
  /** qcow2; raw for a shared volume. */
  format: 'qcow2' | 'raw';
}

/**
 * Block volumes for VMs (docs/volumes.md "Block volumes"): qcow2 files, their snapshots and
 * clones, attached to VMs as virtio-blk disks. Protocol 7.
 */
export interface BlockVolumeHost {
  /** An empty qcow2 of the size, or a clone (an overlay on a snapshot on this host), or with `shared` a sparse raw disk several VMs may write. Idempotent. */
  createBlockVolume(id: string, sizeBytes: number, opts: { fromSnapshot?: string; shared?: boolean }): Promise<HostBlockVolumeInfo>;
  /** Its file gone (its snapshots stay); an unknown id is a no-op; Conflict while a running VM holds it. */
  removeBlockVolume(id: string): Promise<void>;
  blockVolumeInfo(id: string): Promise<HostBlockVolumeInfo>;
  /** A point-in-time snapshot; Conflict while a running VM holds the volume. */
  snapshotBlockVolume(volumeId: string, snapshotId: string): Promise<{ id: string; volumeId: string; sizeBytes: number }>;
  /** Folded into what is backed by it, then gone; Conflict when a running VM holds one of those. */
  removeBlockSnapshot(snapshotId: string): Promise<void>;
  /** Daemon start: volumes and snapshots not listed removed (unless young or backing a kept one); listed ones missing returned. */
  reconcileBlockVolumes(volumes: string[], snapshots: string[]): Promise<{ removed: string[]; missing: string[] }>;
  /** Onto a VM on this host: hot-plugged while it runs, recorded for its next start while created or stopped; Conflict while paused or saved. */
  attachVmVolume(vmId: string, volume: { volumeId: string; readonly?: boolean; boot?: boolean }): Promise<{ live: boolean }>;
  /** Off the VM: unplugged once the guest releases it while it runs, off the record otherwise. */
  detachVmVolume(vmId: string, volumeId: string): Promise<{ live: boolean }>;
}

/** What a tree import (a writable layer, a volume's data) received and wrote. */
export interface TreeImportResult {
  /** Bytes of tar received. */
  bytes: number;
  /** sha256 of the tar received, "sha256:<hex>". */
  digest: string;
  entries: number;
  /** Bytes of regular files written. */
  unpackedBytes: number;
}

/**
 * A stopped container moved to another host, cold (docs/overlay.md, "Moving containers"): its
 * writable layer and its volumes' data travel as tar streams (agent/move/tree-tar.ts). Protocol 6.
 */
export interface ContainerMoveHost {
  /** Source: the request the container was created with (what the destination creates it from); NotFound when the host has none. */
  containerRequest(id: string): Promise<ContainerCreateRequest>;
  /** Source: a stopped container's writable layer as a tar (an OCI layer: whiteouts as .wh. entries). Conflict unless stopped; the reader consumes or destroys it. */
  exportContainerLayer(id: string): Promise<Readable>;
  /**
   * Destination, before createContainer(id): a writable layer for id on the image's layers with the
   * tar unpacked into it, checked as hostile input. Conflict when the host has id already; on
   * failure nothing of it stays.
   */
  importContainerLayer(id: string, imageChainId: string, bytes: AsyncIterable<Uint8Array>, opts?: LayerImportOptions): Promise<TreeImportResult>;
  /** Source: a volume's data as a tar. The control plane makes sure no running container uses it. */
  exportVolume(id: string): Promise<Readable>;
  /** Destination: the tar into a volume createVolume has just made (empty), within its size. */
  importVolume(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult>;
  /**
   * Source: a stopped container's log as a tar of its generations, oldest first (the newest
   * max-file − 1 that hold output: the destination's own new file is the last). Protocol 8.
   */
  exportContainerLogs(id: string): Promise<Readable>;
  /**
   * Destination, after createContainer(id) and before its start: the generations placed before
   * the log conmon opened, checked as hostile input (names, count and sizes within the container's
   * log limits, k8s-file records). Conflict once the container has written to its log. Protocol 8.
   */
  importContainerLogs(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult>;
}

/** What a checkpoint wrote at the source. */
export interface CheckpointResult {
  /** Bytes of the CRIU images. */
  bytes: number;
  /** How long the dump took (the process frozen, then killed). */
  ms: number;
}

/**
 * A running container moved live (docs/overlay.md, "Moving containers"): checkpointed with runc
 * and CRIU at the source, its images carried as a tar beside its writable layer, restored at the
 * destination in a network namespace re-made with the same address and MAC. Protocol 9.
 */
export interface ContainerLiveMoveHost {
  /** Source: the container's processes dumped into images and killed (its layer is then exportable). Conflict for what cannot be checkpointed. */
  checkpointContainer(id: string): Promise<CheckpointResult>;
  /** Source: a checkpoint's images as a tar; the reader consumes or destroys it. */
  exportCheckpoint(id: string): Promise<Readable>;
  /** Destination, before restoreContainer: the images, checked as hostile input (files only, within the host's memory). */
  importCheckpoint(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult>;
  /**
   * Destination (after importContainerLayer and importCheckpoint), or the source again (a rolled-back
   * move, from the images it kept): the container made from req and restored, running.
   */
  restoreContainer(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string }>;
}

/** A path in a container as `docker cp` stats it (Docker's ContainerPathStat; mode is st_mode). */
export interface ContainerPathStat {
  name: string;
  size: number;
  mode: number;
  /** ISO 8601. */
  mtime: string;
  /** A symlink's target resolved in the container ('' otherwise). */
  linkTarget: string;
}

/** What an extraction into a container wrote. */
export interface ContainerArchiveResult {
  bytes: number;
  entries: number;
  unpackedBytes: number;
}

/**
 * Files into and out of a container, running or stopped, as tar streams (`docker cp`,
 * agent/copy/container-copy.ts): the path and the tar are hostile, resolved and unpacked inside
 * its rootfs, writes land in its writable layer. Protocol 8.
 */
export interface ContainerCopyHost {
  /** The path's stat, its last symlink not followed (unless the path ends in '/'); NotFound when nothing is there. */
  containerPathStat(id: string, path: string): Promise<ContainerPathStat>;
  /** The path as a tar, entries named from its last component; the reader consumes or destroys it (the container is held until then). */
  readContainerArchive(id: string, path: string): Promise<{ stat: ContainerPathStat; bytes: Readable }>;
  /** The tar extracted under the directory path (followed to the end); hostile entries refused. */
  writeContainerArchive(id: string, path: string, opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean }, bytes: AsyncIterable<Uint8Array>): Promise<ContainerArchiveResult>;
}

/**
 * docker commit on a host (agent/images/commit.ts). Protocol 9: an agent of 8 is refused with a
 * Conflict naming the protocol (METHOD_SINCE).
 */
export interface CommitRequest {
  /** The manifest of the container's image, as this host holds it: the new image's layers go on its. */
  parentManifest: string;
  /** The new image's runtime config (OCI's `config`: the container's, with the --change edits), computed by the control plane. */
  config: NonNullable<ImageConfigDoc['config']>;
  author?: string;
  comment?: string;
  /** The history entry's created_by. */
  createdBy?: string;
  /** Freeze a running container while its writable layer is read (docker commit's default). */
  pause: boolean;
}

/** Images made from containers (protocol 9). */
export interface ContainerCommitHost {
  /**
   * A new image in this host's content store and snapshots: the container's image layers plus one
   * layer of its writable layer (overlayfs whiteouts as OCI whiteouts), with req's config; a
   * running container frozen while its layer is read when req.pause. Conflict for a secure
   * container or a host on the native snapshotter.
   */
  commitContainer(id: string, req: CommitRequest): Promise<AgentImage>;
}

/** Everything the control plane asks of a host: what LocalAgent and RemoteAgent implement. */
export interface Agent extends HostInfoApi, ImageHost, ContainerHost, NetworkHost, VmHost, VmMigrationHost, VolumeHost, BlockVolumeHost, ContainerMoveHost, ContainerLiveMoveHost, ContainerCopyHost, ContainerCommitHost {
  close(): Promise<void>;
}
