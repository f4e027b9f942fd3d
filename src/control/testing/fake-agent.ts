/**
 * A typed fake host for control-service tests (Nova's fake virt driver in spirit): it implements
 * the whole `Agent` interface in memory, records every call, keeps containers and VMs as state
 * maps, and lets a test fire exits or make any method fail. Nothing touches the host.
 *
 *   const agent = new FakeAgent({ name: 'b', cpus: 8 });
 *   agent.override('pullImage', async (ref) => myImage(ref));   // a method's behaviour, typed
 *   agent.failNext('startContainer', new Unavailable('down'));  // one failure, then normal
 *   agent.exitContainer(id, 137);                               // what conmon would report
 *   agent.calls('createContainer')                              // the arguments of each call
 */
import { createHash } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import type { Duplex } from 'node:stream';
import { Conflict, DataLoss, NotFound } from '../../core/errors.js';
import type { ContainerArchiveResult, ContainerPathStat } from '../../agent/agent.js';
import type {
  AddressProvider,
  AdoptedDiskImage,
  Agent,
  AgentImage,
  AgentInfo,
  ProcessTable,
  BlobStream,
  ContainerCreateRequest,
  GcResult,
  HostVolumeInfo,
  HostBlockVolumeInfo,
  OutgoingMigration,
  TreeImportResult,
  VmCreateRequest,
  VmHostState,
  VmImageFormat,
  VmMigrationSpec,
} from '../../agent/agent.js';
import type { RuntimeState, LogRecord, InstanceStats, ExecSession } from '../../agent/drivers/instance-driver.js';
import type { VmInspect } from '../../agent/drivers/vm/vm-driver.js';
import type { EndpointSpec, NetworkSpec } from '../../agent/network/network-driver.js';

type AgentMethod = { [K in keyof Agent]: Agent[K] extends (...args: never[]) => unknown ? K : never }[keyof Agent];

/** What the fake says of itself (info()); every field optional with a small host's defaults. */
export interface FakeAgentOptions {
  name?: string;
  hostname?: string;
  cpus?: number;
  memoryBytes?: number;
  diskBytes?: number;
  architecture?: string;
  kernel?: string;
  /** Usable runtimes (the first is the default). */
  runtimes?: string[];
  /** The VM accelerator; absent: the host runs no VMs (info() has no vm section). */
  accelerator?: 'kvm' | 'tcg' | 'undecided';
  /** Live moves (info().liveMove); absent: the section is left out, as an agent older than protocol 9 does. */
  liveMove?: { usable: boolean; reason?: string };
}

interface FakeContainer {
  req: ContainerCreateRequest;
  state: RuntimeState;
  logs: LogRecord[];
  endpoints: Map<string, EndpointSpec>;
}

interface FakeVm {
  req: VmCreateRequest;
  state: VmHostState;
}

export class FakeAgent implements Agent {
  /** What info() answers; a test may change it between calls. */
  readonly host: Required<Omit<FakeAgentOptions, 'accelerator' | 'liveMove'>> & Pick<FakeAgentOptions, 'accelerator' | 'liveMove'>;
  readonly containers = new Map<string, FakeContainer>();
  readonly vms = new Map<string, FakeVm>();
  readonly networks = new Map<string, NetworkSpec>();
  /** Images pulled or imported, by manifest digest. */
  readonly images = new Map<string, AgentImage>();
  /**
   * The content store, in memory. A held image's manifest blob is the AgentImage as JSON (so an
   * adopt on another fake rebuilds it); its config and layer blobs are filler of their sizes.
   * Bytes are not hashed: the real content store's checks are tested against the real agent.
   */
  readonly blobs = new Map<string, Buffer>();
  /** Named volumes by id: their sizes (in memory: no file, no mount). */
  readonly volumes = new Map<string, number>();
  /** Containers' writable layers and volumes' data as the move methods carry them (bytes, by id). */
  readonly layers = new Map<string, Buffer>();
  readonly volumeData = new Map<string, Buffer>();
  /** Containers' log files as the move methods carry them (bytes, by id). */
  readonly logFiles = new Map<string, Buffer>();
  /** Warm container ids claimWarmContainer hands out, first first. */
  readonly warm: string[] = [];
  foreign: string[] = [];
  addressProvider: AddressProvider | undefined;
  closed = false;
  private readonly callLog: Array<{ method: AgentMethod; args: unknown[] }> = [];
  private readonly overrides = new Map<AgentMethod, (...args: never[]) => unknown>();
  private readonly failures = new Map<AgentMethod, Error[]>();
  private readonly containerExits: Array<(id: string) => void> = [];
  private readonly vmExits: Array<(id: string) => void> = [];

  constructor(o: FakeAgentOptions = {}) {
    this.host = {
      name: o.name ?? 'local', hostname: o.hostname ?? `${o.name ?? 'local'}.test`, cpus: o.cpus ?? 4, memoryBytes: o.memoryBytes ?? 8 * 1024 ** 3,
      diskBytes: o.diskBytes ?? 100 * 1024 ** 3, architecture: o.architecture ?? 'amd64', kernel: o.kernel ?? '6.1.0-fake', runtimes: o.runtimes ?? ['runc'],
      ...(o.accelerator ? { accelerator: o.accelerator } : {}),
      ...(o.liveMove ? { liveMove: o.liveMove } : {}),
    };
  }

  // ---- test controls

  /** Replace a method's behaviour (typed as the method); calls are still recorded. */
  override<K extends AgentMethod>(method: K, impl: Agent[K]): this {
    this.overrides.set(method, impl as unknown as (...args: never[]) => unknown);
    return this;
  }

  /** The next call of the method throws this error (queued: one per call). */
  failNext(method: AgentMethod, error: Error): this {
    const q = this.failures.get(method) ?? [];
    q.push(error);
    this.failures.set(method, q);
    return this;
  }

  /** The arguments of each call of the method so far, oldest first. */
  calls<K extends AgentMethod>(method: K): Array<Parameters<Agent[K]>> {
    return this.callLog.filter((c) => c.method === method).map((c) => c.args as Parameters<Agent[K]>);
  }

  /** Every call's method name, in order. */
  callNames(): AgentMethod[] {
    return this.callLog.map((c) => c.method);
  }

  /** A container's process ended (as conmon reports): its state becomes stopped and exit listeners hear of it. */
  exitContainer(id: string, exitCode = 0, oomKilled = false): void {
    const c = this.containers.get(id);
    if (c) c.state = { status: 'stopped', exitCode, oomKilled, ...(c.state.startedAt ? { startedAt: c.state.startedAt } : {}), finishedAt: new Date().toISOString() };
    for (const l of this.containerExits) l(id);
  }

  /** A VM's QEMU ended: stopped, and exit listeners hear of it. */
  exitVm(id: string, exitCode = 0): void {
    const v = this.vms.get(id);
    if (v) v.state = { ...v.state, status: 'stopped', lifecycle: 'stopped', exitCode, finishedAt: new Date().toISOString() };
    for (const l of this.vmExits) l(id);
  }

  /** The image's blobs into this fake's content store, as a pull would leave them (returns the image). */
  holdImage(img: AgentImage): AgentImage {
    this.images.set(img.manifestDigest, img);
    this.blobs.set(img.manifestDigest, Buffer.from(JSON.stringify(img)));
    if (!this.blobs.has(img.configDigest)) this.blobs.set(img.configDigest, Buffer.from(JSON.stringify(img.config)));
    for (const l of img.layers) if (!this.blobs.has(l.digest)) this.blobs.set(l.digest, Buffer.alloc(l.size, 1));
    return img;
  }

  /** Lines a container's logs will show. */
  addLog(id: string, line: string, stream: 'stdout' | 'stderr' = 'stdout'): void {
    this.container(id).logs.push({ time: new Date().toISOString(), stream, line });
  }

  /** Records the call, then throws a queued failure or runs the override, else the built-in behaviour. */
  private run<K extends AgentMethod>(method: K, args: unknown[], builtIn: () => ReturnType<Agent[K]>): ReturnType<Agent[K]> {
    this.callLog.push({ method, args });
    const failure = this.failures.get(method)?.shift();
    const impl = this.overrides.get(method);
    const isAsync = !['claimWarmContainer', 'diskImagePath', 'containerLogs', 'vmLogs', 'onContainerExit', 'onVmExit', 'setAddressProvider'].includes(method);
    if (failure) {
      if (isAsync) return Promise.reject(failure) as ReturnType<Agent[K]>;
      throw failure;
    }
    if (impl) return (impl as (...a: unknown[]) => ReturnType<Agent[K]>)(...args);
    return builtIn();
  }

  private container(id: string): FakeContainer {
    const c = this.containers.get(id);
    if (!c) throw new NotFound(`no such container on ${this.host.name}: ${id}`, { id });
    return c;
  }

  private vm(id: string): FakeVm {
    const v = this.vms.get(id);
    if (!v) throw new NotFound(`no such VM on ${this.host.name}: ${id}`, { id });
    return v;
  }

  private setVm(id: string, lifecycle: VmHostState['lifecycle']): VmHostState {
    const v = this.vm(id);
    const status: RuntimeState['status'] = lifecycle === 'running' ? 'running' : lifecycle === 'paused' ? 'paused' : lifecycle === 'created' ? 'created' : 'stopped';
    v.state = { ...v.state, lifecycle, status, ...(lifecycle === 'running' ? { startedAt: new Date().toISOString() } : {}) };
    return { ...v.state };
  }

  // ---- HostInfoApi

  info(): Promise<AgentInfo> {
    return this.run('info', [], async () => ({
      name: this.host.name, hostname: this.host.hostname, cgroupLayout: 'v2', snapshotter: 'native',
      runtimes: this.host.runtimes.map((name, i) => ({ name, usable: true, ...(i === 0 ? { default: true } : {}) })),
      snapshotters: [{ name: 'native', usable: true }], kernel: this.host.kernel,
      cpus: this.host.cpus, memoryBytes: this.host.memoryBytes, diskBytes: this.host.diskBytes, architecture: this.host.architecture,
      ...(this.host.accelerator ? { vm: { accelerator: this.host.accelerator, reason: 'fake' } } : {}),
      ...(this.host.liveMove ? { liveMove: this.host.liveMove } : {}),
    }));
  }

  // ---- ImageHost

  pullImage(...args: Parameters<Agent['pullImage']>): Promise<AgentImage> {
    return this.run('pullImage', args, async () => {
      const [ref, , progress] = args;
      const img = this.holdImage(fakeImage(ref));
      progress({ phase: 'done', layers: [], bytesDone: img.size, bytesTotal: img.size });
      return img;
    });
  }

  importImages(...args: Parameters<Agent['importImages']>): Promise<AgentImage[]> {
    return this.run('importImages', args, async () => []);
  }

  garbageCollect(...args: Parameters<Agent['garbageCollect']>): Promise<GcResult> {
    return this.run('garbageCollect', args, async () => ({ blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 0 }));
  }

  importDiskImage(...args: Parameters<Agent['importDiskImage']>): Promise<{ digest: string; size: number; format: VmImageFormat; virtualSize: number }> {
    return this.run('importDiskImage', args, async (): Promise<{ digest: string; size: number; format: VmImageFormat; virtualSize: number }> => {
      const [file, kind = 'disk'] = args;
      const digest = `sha256:${createHash('sha256').update(file).digest('hex')}`;
      this.blobs.set(digest, Buffer.from(file));
      return { digest, size: Buffer.byteLength(file), format: kind === 'disk' ? 'qcow2' : kind, virtualSize: 1 };
    });
  }

  diskImagePath(...args: Parameters<Agent['diskImagePath']>): string {
    return this.run('diskImagePath', args, () => `/fake/${this.host.name}/blobs/${args[0]}`);
  }

  missingBlobs(...args: Parameters<Agent['missingBlobs']>): Promise<string[]> {
    return this.run('missingBlobs', args, async () => args[0].filter((d) => !this.blobs.has(d)));
  }

  readBlob(...args: Parameters<Agent['readBlob']>): Promise<BlobStream> {
    return this.run('readBlob', args, async () => {
      const b = this.blobs.get(args[0]);
      if (!b) throw new NotFound(`blob ${args[0]} is not in the content store of host ${this.host.name}`, { digest: args[0] });
      return { size: b.length, bytes: Readable.from([b]) };
    });
  }

  writeBlob(...args: Parameters<Agent['writeBlob']>): Promise<{ digest: string; size: number }> {
    return this.run('writeBlob', args, async () => {
      const [digest, size, bytes] = args;
      const chunks: Buffer[] = [];
      for await (const c of bytes) chunks.push(Buffer.from(c));
      const b = Buffer.concat(chunks);
      if (b.length !== size) throw new DataLoss(`blob ${digest}: size mismatch: expected ${size}, got ${b.length}`);
      this.blobs.set(digest, b);
      return { digest, size };
    });
  }

  adoptImage(...args: Parameters<Agent['adoptImage']>): Promise<AgentImage> {
    return this.run('adoptImage', args, async () => {
      const m = this.blobs.get(args[0]);
      if (!m) throw new NotFound(`image ${args[0]}: blob ${args[0]} is not in the content store of host ${this.host.name}`);
      const img = JSON.parse(m.toString('utf8')) as AgentImage;
      for (const d of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
        if (!this.blobs.has(d)) throw new NotFound(`image ${args[0]}: blob ${d} is not in the content store of host ${this.host.name}`);
      }
      const { reference: _ref, indexDigest: _index, ...adopted } = img;
      this.images.set(img.manifestDigest, adopted);
      return adopted;
    });
  }

  adoptDiskImage(...args: Parameters<Agent['adoptDiskImage']>): Promise<AdoptedDiskImage> {
    return this.run('adoptDiskImage', args, async (): Promise<AdoptedDiskImage> => {
      const [digest, kind] = args;
      const b = this.blobs.get(digest);
      if (!b) throw new NotFound(`VM image ${digest} is not in the content store of host ${this.host.name}`, { digest });
      return { digest, size: b.length, format: kind === 'disk' ? 'qcow2' : kind, virtualSize: 1, path: `/fake/${this.host.name}/blobs/${digest}` };
    });
  }

  /** A build that consumes its context and answers a made-up image named by the build's id. */
  buildImage(...args: Parameters<Agent['buildImage']>): Promise<AgentImage> {
    return this.run('buildImage', args, async () => {
      const [req, context, progress] = args;
      for await (const _c of context) void _c;
      progress({ line: `STEP 1/1: FROM ${req.baseImages[0]?.name ?? 'scratch'}` });
      const { reference: _ref, ...img } = this.holdImage(fakeImage(`built/${req.id}`));
      return img;
    });
  }

  // ---- VolumeHost

  createVolume(...args: Parameters<Agent['createVolume']>): Promise<HostVolumeInfo> {
    return this.run('createVolume', args, async () => {
      const [id, sizeBytes] = args;
      this.volumes.set(id, sizeBytes);
      return { id, sizeBytes, path: `/fake/${this.host.name}/volumes/${id}`, mounted: true };
    });
  }

  removeVolume(...args: Parameters<Agent['removeVolume']>): Promise<void> {
    return this.run('removeVolume', args, async () => {
      this.volumes.delete(args[0]);
      this.volumeData.delete(args[0]);
    });
  }

  volumeUsage(...args: Parameters<Agent['volumeUsage']>): Promise<HostVolumeInfo & { usedBytes: number }> {
    return this.run('volumeUsage', args, async () => {
      const [id] = args;
      const sizeBytes = this.volumes.get(id);
      if (sizeBytes === undefined) throw new NotFound(`volume ${id} is not on host ${this.host.name}`, { id });
      return { id, sizeBytes, path: `/fake/${this.host.name}/volumes/${id}`, mounted: true, usedBytes: 0 };
    });
  }

  reconcileVolumes(...args: Parameters<Agent['reconcileVolumes']>): Promise<{ mounted: number; removed: string[]; missing: string[] }> {
    return this.run('reconcileVolumes', args, async () => {
      const [live] = args;
      const removed = [...this.volumes.keys()].filter((id) => !live.includes(id));
      for (const id of removed) this.volumes.delete(id);
      return { mounted: live.length - live.filter((id) => !this.volumes.has(id)).length, removed, missing: live.filter((id) => !this.volumes.has(id)) };
    });
  }

  // ---- BlockVolumeHost (in memory: the qcow2 side is tested against the real store)

  /** Block volumes by id (their sizes and the snapshot they were cloned from), snapshots by id, VMs' attachments. */
  readonly blockVolumes = new Map<string, { sizeBytes: number; fromSnapshot?: string }>();
  readonly blockSnapshots = new Map<string, { volumeId: string; sizeBytes: number }>();
  readonly vmVolumes = new Map<string, Array<{ volumeId: string; readonly?: boolean; boot?: boolean }>>();

  createBlockVolume(...args: Parameters<Agent['createBlockVolume']>): Promise<HostBlockVolumeInfo> {
    return this.run('createBlockVolume', args, async () => {
      const [id, sizeBytes, { fromSnapshot }] = args;
      if (fromSnapshot !== undefined && !this.blockSnapshots.has(fromSnapshot)) throw new NotFound(`snapshot ${fromSnapshot} is not on host ${this.host.name}`);
      this.blockVolumes.set(id, { sizeBytes, ...(fromSnapshot !== undefined ? { fromSnapshot } : {}) });
      return { id, sizeBytes, path: `/fake/${this.host.name}/block-volumes/${id}/disk.qcow2`, allocatedBytes: 0, format: args[2].shared ? ('raw' as const) : ('qcow2' as const) };
    });
  }

  removeBlockVolume(...args: Parameters<Agent['removeBlockVolume']>): Promise<void> {
    return this.run('removeBlockVolume', args, async () => {
      this.blockVolumes.delete(args[0]);
    });
  }

  blockVolumeInfo(...args: Parameters<Agent['blockVolumeInfo']>): Promise<HostBlockVolumeInfo> {
    return this.run('blockVolumeInfo', args, async () => {
      const v = this.blockVolumes.get(args[0]);
      if (!v) throw new NotFound(`block volume ${args[0]} is not on host ${this.host.name}`);
      return { id: args[0], sizeBytes: v.sizeBytes, path: `/fake/${this.host.name}/block-volumes/${args[0]}/disk.qcow2`, allocatedBytes: 0, format: 'qcow2' as const };
    });
  }

  snapshotBlockVolume(...args: Parameters<Agent['snapshotBlockVolume']>): Promise<{ id: string; volumeId: string; sizeBytes: number }> {
    return this.run('snapshotBlockVolume', args, async () => {
      const [volumeId, id] = args;
      const v = this.blockVolumes.get(volumeId);
      if (!v) throw new NotFound(`block volume ${volumeId} is not on host ${this.host.name}`);
      this.blockSnapshots.set(id, { volumeId, sizeBytes: v.sizeBytes });
      return { id, volumeId, sizeBytes: v.sizeBytes };
    });
  }

  removeBlockSnapshot(...args: Parameters<Agent['removeBlockSnapshot']>): Promise<void> {
    return this.run('removeBlockSnapshot', args, async () => {
      this.blockSnapshots.delete(args[0]);
    });
  }

  reconcileBlockVolumes(...args: Parameters<Agent['reconcileBlockVolumes']>): Promise<{ removed: string[]; missing: string[] }> {
    return this.run('reconcileBlockVolumes', args, async () => {
      const [volumes, snapshots] = args;
      const removed = [...[...this.blockVolumes.keys()].filter((id) => !volumes.includes(id)), ...[...this.blockSnapshots.keys()].filter((id) => !snapshots.includes(id))];
      for (const id of removed) {
        this.blockVolumes.delete(id);
        this.blockSnapshots.delete(id);
      }
      return { removed, missing: [...volumes.filter((id) => !this.blockVolumes.has(id)), ...snapshots.filter((id) => !this.blockSnapshots.has(id))] };
    });
  }

  attachVmVolume(...args: Parameters<Agent['attachVmVolume']>): Promise<{ live: boolean }> {
    return this.run('attachVmVolume', args, async () => {
      const [vmId, v] = args;
      const vm = this.vm(vmId);
      if (!this.blockVolumes.has(v.volumeId)) throw new NotFound(`block volume ${v.volumeId} is not on host ${this.host.name}`);
      const list = this.vmVolumes.get(vmId) ?? [];
      if (list.some((x) => x.volumeId === v.volumeId)) throw new Conflict(`volume ${v.volumeId} is attached to this VM already`);
      this.vmVolumes.set(vmId, [...list, v]);
      return { live: vm.state.status === 'running' };
    });
  }

  detachVmVolume(...args: Parameters<Agent['detachVmVolume']>): Promise<{ live: boolean }> {
    return this.run('detachVmVolume', args, async () => {
      const [vmId, volumeId] = args;
      const vm = this.vm(vmId);
      const list = this.vmVolumes.get(vmId) ?? [];
      if (!list.some((x) => x.volumeId === volumeId)) throw new NotFound(`volume ${volumeId} is not attached to this VM`);
      this.vmVolumes.set(vmId, list.filter((x) => x.volumeId !== volumeId));
      return { live: vm.state.status === 'running' };
    });
  }

  // ---- ContainerCopyHost (docker cp: the container's files are the real agent's; here one file, /etc/hostname, and tars kept whole)

  containerPathStat(...args: Parameters<Agent['containerPathStat']>): Promise<ContainerPathStat> {
    return this.run('containerPathStat', args, async () => {
      this.container(args[0]);
      if (args[1].replace(/\/+$/, '') !== '/etc/hostname') throw new NotFound(`no such file or directory: ${args[1]}`);
      return { name: 'hostname', size: 4, mode: 0o100644, mtime: new Date(0).toISOString(), linkTarget: '' };
    });
  }

  readContainerArchive(...args: Parameters<Agent['readContainerArchive']>): Promise<{ stat: ContainerPathStat; bytes: Readable }> {
    return this.run('readContainerArchive', args, async () => {
      const stat = await this.containerPathStat(args[0], args[1]);
      return { stat, bytes: Readable.from([this.copied.get(args[0]) ?? Buffer.alloc(0)]) };
    });
  }

  /** docker commit: a new image over the container's image's layers, as a real host adopts one (protocol 9). */
  commitContainer(...args: Parameters<Agent['commitContainer']>): Promise<AgentImage> {
    return this.run('commitContainer', args, async () => {
      this.container(args[0]);
      const parent = this.images.get(args[1].parentManifest);
      if (!parent) throw new NotFound(`image ${args[1].parentManifest} is not on host ${this.host.name}`);
      const layerDigest = `sha256:${createHash('sha256').update(`layer of ${args[0]} ${Date.now()} ${Math.random()}`).digest('hex')}`;
      const layers = [...parent.layers, { digest: layerDigest, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 1, diffId: layerDigest }];
      const config = { ...parent.config, config: args[1].config, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) } };
      const manifestDigest = `sha256:${createHash('sha256').update(JSON.stringify({ layers, config })).digest('hex')}`;
      const img: AgentImage = { manifestDigest, configDigest: manifestDigest, config, layers, chainId: `sha256:${createHash('sha256').update(layerDigest).digest('hex')}`, size: parent.size + 1 };
      this.images.set(manifestDigest, img);
      return img;
    });
  }

  writeContainerArchive(...args: Parameters<Agent['writeContainerArchive']>): Promise<ContainerArchiveResult> {
    return this.run('writeContainerArchive', args, async () => {
      this.container(args[0]);
      const got = await fakeTree(args[3]);
      this.copied.set(args[0], got.data);
      return { bytes: got.data.length, entries: 1, unpackedBytes: got.data.length };
    });
  }
  /** The last tar written into each container (writeContainerArchive). */
  readonly copied = new Map<string, Buffer>();

  // ---- ContainerMoveHost (bytes in memory: the tar format is tested against the real agent)

  containerRequest(...args: Parameters<Agent['containerRequest']>): Promise<ContainerCreateRequest> {
    return this.run('containerRequest', args, async () => structuredClone(this.container(args[0]).req));
  }

  exportContainerLayer(...args: Parameters<Agent['exportContainerLayer']>): Promise<Readable> {
    return this.run('exportContainerLayer', args, async () => {
      const c = this.container(args[0]);
      if (c.state.status === 'running' || c.state.status === 'paused') throw new Conflict(`container ${args[0]} is ${c.state.status}`);
      return Readable.from([this.layers.get(args[0]) ?? Buffer.alloc(0)]);
    });
  }

  importContainerLayer(...args: Parameters<Agent['importContainerLayer']>): Promise<TreeImportResult> {
    return this.run('importContainerLayer', args, async () => {
      const [id, , bytes] = args;
      if (this.containers.has(id) || this.layers.has(id)) throw new Conflict(`host ${this.host.name} has a container ${id} already`);
      const got = await fakeTree(bytes);
      this.layers.set(id, got.data);
      return got.result;
    });
  }

  exportVolume(...args: Parameters<Agent['exportVolume']>): Promise<Readable> {
    return this.run('exportVolume', args, async () => {
      if (!this.volumes.has(args[0])) throw new NotFound(`volume ${args[0]} is not on host ${this.host.name}`);
      return Readable.from([this.volumeData.get(args[0]) ?? Buffer.alloc(0)]);
    });
  }

  importVolume(...args: Parameters<Agent['importVolume']>): Promise<TreeImportResult> {
    return this.run('importVolume', args, async () => {
      if (!this.volumes.has(args[0])) throw new NotFound(`volume ${args[0]} is not on host ${this.host.name}`);
      const got = await fakeTree(args[1]);
      this.volumeData.set(args[0], got.data);
      return got.result;
    });
  }

  exportContainerLogs(...args: Parameters<Agent['exportContainerLogs']>): Promise<Readable> {
    return this.run('exportContainerLogs', args, async () => {
      const c = this.container(args[0]);
      if (c.state.status === 'running' || c.state.status === 'paused') throw new Conflict(`container ${args[0]} is ${c.state.status}`);
      return Readable.from([this.logFiles.get(args[0]) ?? Buffer.alloc(0)]);
    });
  }

  importContainerLogs(...args: Parameters<Agent['importContainerLogs']>): Promise<TreeImportResult> {
    return this.run('importContainerLogs', args, async () => {
      const c = this.container(args[0]);
      // as the real agent: before the first start, or once right after a live move's restore
      if (c.state.status !== 'created' && !(c.state.status === 'running' && this.restored.delete(args[0]))) throw new Conflict(`container ${args[0]} is ${c.state.status}: a log is imported before its first start only`);
      const got = await fakeTree(args[1]);
      this.logFiles.set(args[0], got.data);
      return got.result;
    });
  }

  // ---- ContainerLiveMoveHost (the checkpoint is the container's state, carried as bytes)

  readonly checkpoints = new Map<string, Buffer>();
  private readonly restored = new Set<string>();

  checkpointContainer(...args: Parameters<Agent['checkpointContainer']>): Promise<{ bytes: number; ms: number }> {
    return this.run('checkpointContainer', args, async () => {
      const c = this.container(args[0]);
      if (c.state.status !== 'running') throw new Conflict(`container ${args[0]} is ${c.state.status}: only a running container is checkpointed`);
      const image = Buffer.from(JSON.stringify(c.state));
      this.checkpoints.set(args[0], image);
      c.state = { status: 'unknown' };
      return { bytes: image.length, ms: 1 };
    });
  }

  exportCheckpoint(...args: Parameters<Agent['exportCheckpoint']>): Promise<Readable> {
    return this.run('exportCheckpoint', args, async () => {
      const image = this.checkpoints.get(args[0]);
      if (!image) throw new NotFound(`no checkpoint of container ${args[0]}`);
      return Readable.from([image]);
    });
  }

  importCheckpoint(...args: Parameters<Agent['importCheckpoint']>): Promise<TreeImportResult> {
    return this.run('importCheckpoint', args, async () => {
      const got = await fakeTree(args[1]);
      this.checkpoints.set(args[0], got.data);
      return got.result;
    });
  }

  restoreContainer(...args: Parameters<Agent['restoreContainer']>): Promise<RuntimeState & { warnings: string[]; runtime: string }> {
    return this.run('restoreContainer', args, async () => {
      const [req] = args;
      const image = this.checkpoints.get(req.id);
      if (!image) throw new NotFound(`no checkpoint of container ${req.id} on ${this.host.name}`);
      this.checkpoints.delete(req.id);
      const state = JSON.parse(image.toString()) as RuntimeState;
      const had = this.containers.get(req.id);
      this.containers.set(req.id, { req, state, logs: had?.logs ?? [], endpoints: had?.endpoints ?? new Map() });
      this.restored.add(req.id);
      return { ...state, warnings: [], runtime: req.runtime && req.runtime !== 'auto' ? req.runtime : 'runc' };
    });
  }

  // ---- ContainerHost

  claimWarmContainer(...args: Parameters<Agent['claimWarmContainer']>): string | undefined {
    return this.run('claimWarmContainer', args, () => this.warm.shift());
  }

  createContainer(...args: Parameters<Agent['createContainer']>): Promise<RuntimeState & { warnings: string[]; runtime: string }> {
    return this.run('createContainer', args, async () => {
      const [req] = args;
      const state: RuntimeState = { status: 'created' };
      this.containers.set(req.id, { req, state, logs: [], endpoints: new Map() });
      return { ...state, warnings: [], runtime: req.runtime && req.runtime !== 'auto' ? req.runtime : this.host.runtimes[0] ?? 'runc' };
    });
  }

  startContainer(...args: Parameters<Agent['startContainer']>): Promise<RuntimeState> {
    return this.run('startContainer', args, async () => {
      const c = this.container(args[0]);
      c.state = { status: 'running', pid: 1000 + this.containers.size, startedAt: new Date().toISOString() };
      return { ...c.state };
    });
  }

  stopContainer(...args: Parameters<Agent['stopContainer']>): Promise<RuntimeState> {
    return this.run('stopContainer', args, async () => {
      const c = this.container(args[0]);
      if (c.state.status === 'running' || c.state.status === 'paused') this.exitContainer(args[0], 143);
      return { ...c.state };
    });
  }

  killContainer(...args: Parameters<Agent['killContainer']>): Promise<void> {
    return this.run('killContainer', args, async () => {
      const c = this.container(args[0]);
      if (c.state.status === 'running' && /KILL|TERM|INT|^9$|^15$/.test(args[1])) this.exitContainer(args[0], 137);
    });
  }

  pauseContainer(...args: Parameters<Agent['pauseContainer']>): Promise<void> {
    return this.run('pauseContainer', args, async () => {
      this.container(args[0]).state.status = 'paused';
    });
  }

  unpauseContainer(...args: Parameters<Agent['unpauseContainer']>): Promise<void> {
    return this.run('unpauseContainer', args, async () => {
      this.container(args[0]).state.status = 'running';
    });
  }

  containerState(...args: Parameters<Agent['containerState']>): Promise<RuntimeState> {
    return this.run('containerState', args, async () => ({ ...this.container(args[0]).state }));
  }

  execInContainer(...args: Parameters<Agent['execInContainer']>): Promise<ExecSession> {
    return this.run('execInContainer', args, async () => {
      this.container(args[0]);
      return { stdout: Readable.from([]), stderr: Readable.from([]), exit: Promise.resolve(0) };
    });
  }

  attachContainer(...args: Parameters<Agent['attachContainer']>): Promise<ExecSession> {
    return this.run('attachContainer', args, async () => {
      this.container(args[0]);
      return { stdout: Readable.from([]), stderr: Readable.from([]), exit: Promise.resolve(0) };
    });
  }

  resizeContainer(...args: Parameters<Agent['resizeContainer']>): Promise<void> {
    return this.run('resizeContainer', args, async () => {
      this.container(args[0]);
    });
  }

  containerLogs(...args: Parameters<Agent['containerLogs']>): AsyncIterable<LogRecord> {
    return this.run('containerLogs', args, () => {
      const [id, opts] = args;
      const logs = this.container(id).logs;
      return (async function* () {
        yield* opts.tail !== undefined ? logs.slice(-opts.tail) : logs;
      })();
    });
  }

  containerTop(...args: Parameters<Agent['containerTop']>): Promise<ProcessTable> {
    return this.run('containerTop', args, async () => ({ titles: ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD'], processes: [['root', '4242', '1', '0', '00:00', '?', '00:00:00', 'sleep 60']] }));
  }

  containerStats(...args: Parameters<Agent['containerStats']>): Promise<InstanceStats> {
    return this.run('containerStats', args, async () => {
      this.container(args[0]);
      return { cpuUsageNs: 0, memoryBytes: 0, pids: 1, time: new Date().toISOString() };
    });
  }

  removeContainer(...args: Parameters<Agent['removeContainer']>): Promise<void> {
    return this.run('removeContainer', args, async () => {
      this.containers.delete(args[0]);
      this.layers.delete(args[0]);
      this.logFiles.delete(args[0]);
    });
  }

  listContainers(): Promise<string[]> {
    return this.run('listContainers', [], async () => [...this.containers.keys()]);
  }

  /** Each known container's layer: its bytes as the fake holds them (layers), one inode. */
  containerLayerUsage(...args: Parameters<Agent['containerLayerUsage']>): ReturnType<Agent['containerLayerUsage']> {
    return this.run('containerLayerUsage', args, async () => Object.fromEntries(args[0].filter((id) => this.containers.has(id)).map((id) => [id, { bytes: this.layers.get(id)?.length ?? 0, inodes: 1 }])));
  }

  onContainerExit(...args: Parameters<Agent['onContainerExit']>): void {
    this.run('onContainerExit', args, () => void this.containerExits.push(args[0]));
  }

  // ---- NetworkHost

  setAddressProvider(...args: Parameters<Agent['setAddressProvider']>): void {
    this.run('setAddressProvider', args, () => {
      this.addressProvider = args[0];
    });
  }

  ensureNetwork(...args: Parameters<Agent['ensureNetwork']>): Promise<void> {
    return this.run('ensureNetwork', args, async () => {
      this.networks.set(args[0].id, args[0]);
    });
  }

  removeNetwork(...args: Parameters<Agent['removeNetwork']>): Promise<void> {
    return this.run('removeNetwork', args, async () => {
      this.networks.delete(args[0]);
      this.overlays.delete(args[0]);
    });
  }

  foreignSubnets(): Promise<string[]> {
    return this.run('foreignSubnets', [], async () => [...this.foreign]);
  }

  connectContainer(...args: Parameters<Agent['connectContainer']>): Promise<EndpointSpec> {
    return this.run('connectContainer', args, async () => {
      const [id, ep] = args;
      const c = this.container(id);
      const spec: EndpointSpec = {
        networkId: ep.network.id, containerId: id, netns: `nimbus-${id.slice(0, 12)}`, ifName: `eth${c.endpoints.size}`,
        hostIf: `nv${id.slice(0, 8)}${c.endpoints.size}`, address: ep.address, mac: '02:42:00:00:00:01', defaultRoute: c.endpoints.size === 0, dnsNames: ep.dnsNames,
      };
      c.endpoints.set(ep.network.id, spec);
      return spec;
    });
  }

  disconnectContainer(...args: Parameters<Agent['disconnectContainer']>): Promise<void> {
    return this.run('disconnectContainer', args, async () => {
      this.container(args[0]).endpoints.delete(args[1]);
    });
  }

  renameContainer(...args: Parameters<Agent['renameContainer']>): Promise<void> {
    return this.run('renameContainer', args, async () => {
      const [id, from, to] = args;
      for (const e of this.container(id).endpoints.values()) e.dnsNames = e.dnsNames.map((n) => (n === from ? to : n));
    });
  }

  /** Each network's overlay as last pushed (network id → VNI, local address, peers). */
  readonly overlays = new Map<string, { vni: number; local: string; peers: Parameters<Agent['setOverlayPeers']>[3] }>();
  /** What underlayAddress answers (undefined: like a host with no --underlay-ip). */
  underlay: string | undefined;

  setOverlayPeers(...args: Parameters<Agent['setOverlayPeers']>): Promise<void> {
    return this.run('setOverlayPeers', args, async () => {
      const [networkId, vni, local, peers] = args;
      if (!this.networks.has(networkId)) throw new NotFound(`network ${networkId} is not on this host`);
      if (peers.length) this.overlays.set(networkId, { vni, local, peers: [...peers] });
      else this.overlays.delete(networkId);
    });
  }

  underlayAddress(...args: Parameters<Agent['underlayAddress']>): Promise<string | undefined> {
    return this.run('underlayAddress', args, async () => this.underlay);
  }

  /** Each routed network's peers as last pushed (network id → peers). */
  readonly routedPeers = new Map<string, Parameters<Agent['setRoutedPeers']>[1]>();

  setRoutedPeers(...args: Parameters<Agent['setRoutedPeers']>): Promise<void> {
    return this.run('setRoutedPeers', args, async () => {
      const [networkId, peers] = args;
      if (!this.networks.has(networkId)) throw new NotFound(`network ${networkId} is not on this host`);
      if (peers.length) this.routedPeers.set(networkId, [...peers]);
      else this.routedPeers.delete(networkId);
    });
  }

  reconcileNetworks(...args: Parameters<Agent['reconcileNetworks']>): Promise<{ endpointsRemoved: number; networksRemoved: number; netnsRemoved: number }> {
    return this.run('reconcileNetworks', args, async () => {
      const keep = new Set(args[1]);
      let networksRemoved = 0;
      for (const id of [...this.networks.keys()]) {
        if (!keep.has(id)) {
          this.networks.delete(id);
          networksRemoved++;
        }
      }
      return { endpointsRemoved: 0, networksRemoved, netnsRemoved: 0 };
    });
  }

  // ---- VmHost

  createVm(...args: Parameters<Agent['createVm']>): Promise<VmHostState> {
    return this.run('createVm', args, async (): Promise<VmHostState> => {
      const [req] = args;
      this.vms.set(req.id, { req, state: { status: 'created', lifecycle: 'created' } });
      return { status: 'created', lifecycle: 'created' };
    });
  }

  createVmFromTemplate(...args: Parameters<Agent['createVmFromTemplate']>): Promise<VmHostState> {
    return this.run('createVmFromTemplate', args, async (): Promise<VmHostState> => {
      const [templateId, id, name] = args;
      const t = this.vm(templateId);
      this.vms.set(id, { req: { ...t.req, id, name }, state: { status: 'stopped', lifecycle: 'saved' } });
      return { status: 'stopped', lifecycle: 'saved' };
    });
  }

  startVm(...args: Parameters<Agent['startVm']>): Promise<VmHostState> {
    return this.run('startVm', args, async () => this.setVm(args[0], 'running'));
  }

  stopVm(...args: Parameters<Agent['stopVm']>): Promise<VmHostState> {
    return this.run('stopVm', args, async () => this.setVm(args[0], 'stopped'));
  }

  killVm(...args: Parameters<Agent['killVm']>): Promise<void> {
    return this.run('killVm', args, async () => {
      this.vm(args[0]);
      this.exitVm(args[0], 137);
    });
  }

  pauseVm(...args: Parameters<Agent['pauseVm']>): Promise<void> {
    return this.run('pauseVm', args, async () => void this.setVm(args[0], 'paused'));
  }

  unpauseVm(...args: Parameters<Agent['unpauseVm']>): Promise<void> {
    return this.run('unpauseVm', args, async () => void this.setVm(args[0], 'running'));
  }

  resizeVm(...args: Parameters<Agent['resizeVm']>): Promise<{ cpus: number; memoryMiB: number; balloonMiB?: number }> {
    return this.run('resizeVm', args, async () => {
      const [id, want] = args;
      const v = this.vm(id);
      v.req = { ...v.req, ...(want.cpus !== undefined ? { cpus: want.cpus } : {}), ...(want.memoryMiB !== undefined ? { memoryMiB: want.memoryMiB } : {}) };
      return { cpus: v.req.cpus, memoryMiB: v.req.memoryMiB };
    });
  }

  saveVm(...args: Parameters<Agent['saveVm']>): Promise<{ file: string; bytes: number; ms: number }> {
    return this.run('saveVm', args, async () => {
      this.setVm(args[0], 'saved');
      return { file: `/fake/${args[0]}.state`, bytes: 0, ms: 0 };
    });
  }

  restoreVm(...args: Parameters<Agent['restoreVm']>): Promise<{ ms: number }> {
    return this.run('restoreVm', args, async () => {
      this.setVm(args[0], 'running');
      return { ms: 0 };
    });
  }

  vmState(...args: Parameters<Agent['vmState']>): Promise<VmHostState> {
    return this.run('vmState', args, async () => ({ ...this.vm(args[0]).state }));
  }

  inspectVm(...args: Parameters<Agent['inspectVm']>): Promise<VmInspect> {
    return this.run('inspectVm', args, async (): Promise<VmInspect> => {
      const v = this.vm(args[0]);
      return {
        id: v.req.id, lifecycle: v.state.lifecycle, accel: this.host.accelerator === 'kvm' ? 'kvm' : 'tcg', cpus: v.req.cpus, memoryMiB: v.req.memoryMiB,
        qmpSocket: '/fake/qmp', consoleSocket: '/fake/console', consoleLog: '/fake/console.log', pinning: [], argv: [],
      };
    });
  }

  vmStats(...args: Parameters<Agent['vmStats']>): Promise<InstanceStats> {
    return this.run('vmStats', args, async () => {
      const v = this.vm(args[0]);
      if (v.state.lifecycle !== 'running' && v.state.lifecycle !== 'paused') throw new Conflict(`VM ${v.req.id} is not running`);
      return { cpuUsageNs: 0, memoryBytes: 0, pids: 1, time: new Date().toISOString() };
    });
  }

  openVmConsole(...args: Parameters<Agent['openVmConsole']>): Promise<Duplex> {
    return this.run('openVmConsole', args, async () => {
      this.vm(args[0]);
      return new PassThrough();
    });
  }

  vmLogs(...args: Parameters<Agent['vmLogs']>): AsyncIterable<LogRecord> {
    return this.run('vmLogs', args, () => (async function* (): AsyncGenerator<LogRecord> {})());
  }

  removeVm(...args: Parameters<Agent['removeVm']>): Promise<void> {
    return this.run('removeVm', args, async () => {
      this.vms.delete(args[0]);
      this.vmVolumes.delete(args[0]);
    });
  }

  listVms(): Promise<string[]> {
    return this.run('listVms', [], async () => [...this.vms.keys()]);
  }

  reconcileVms(): Promise<{ killed: number[]; removed: string[] }> {
    return this.run('reconcileVms', [], async () => ({ killed: [], removed: [] }));
  }

  onVmExit(...args: Parameters<Agent['onVmExit']>): void {
    this.run('onVmExit', args, () => void this.vmExits.push(args[0]));
  }

  // ---- VmMigrationHost: the source hands over its VM, the destination takes it

  vmMigrationSpec(...args: Parameters<Agent['vmMigrationSpec']>): Promise<VmMigrationSpec> {
    return this.run('vmMigrationSpec', args, async () => {
      const v = this.vm(args[0]);
      return { id: v.req.id, name: v.req.name, createdAt: new Date().toISOString(), config: { ...v.req } };
    });
  }

  prepareVmIncoming(...args: Parameters<Agent['prepareVmIncoming']>): Promise<{ uri: string; tls?: string }> {
    return this.run('prepareVmIncoming', args, async () => {
      const [spec] = args;
      this.vms.set(spec.id, { req: spec.config as unknown as VmCreateRequest, state: { status: 'created', lifecycle: 'created' } });
      // as a real destination answers: over TLS with the certificate it was given, named so
      return { uri: `tcp:${this.host.name}:49152`, ...(spec.tls && spec.credentials ? { tls: spec.credentials.name } : {}) };
    });
  }

  migrateVmOut(...args: Parameters<Agent['migrateVmOut']>): Promise<OutgoingMigration> {
    return this.run('migrateVmOut', args, async () => {
      this.vm(args[0]);
      return { qemuDowntimeMs: 1, totalMs: 1, bytes: 0, iterations: 1, consoleHistory: '' };
    });
  }

  finishVmIncoming(...args: Parameters<Agent['finishVmIncoming']>): Promise<{ resumedAt: number; state: VmHostState }> {
    return this.run('finishVmIncoming', args, async () => ({ resumedAt: Date.now(), state: this.setVm(args[0], 'running') }));
  }

  abandonVmIncoming(...args: Parameters<Agent['abandonVmIncoming']>): Promise<void> {
    return this.run('abandonVmIncoming', args, async () => {
      this.vms.delete(args[0]);
    });
  }

  endVmMigration(...args: Parameters<Agent['endVmMigration']>): Promise<void> {
    return this.run('endVmMigration', args, async () => {
      if (args[1] === 'moved') this.vms.delete(args[0]);
    });
  }

  close(): Promise<void> {
    return this.run('close', [], async () => {
      this.closed = true;
    });
  }
}

/** An image as a pull of `ref` would give it: one layer, digests derived from the reference. */
export function fakeImage(ref: string, over: Partial<AgentImage> = {}): AgentImage {
  const h = (salt: string) => createHash('sha256').update(`${salt}:${ref}`).digest('hex');
  return {
    reference: ref, manifestDigest: `sha256:${h('m')}`, configDigest: `sha256:${h('c')}`,
    config: { architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'] } },
    layers: [{ digest: `sha256:${h('l')}`, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 10, diffId: `sha256:${h('d')}` }],
    chainId: `sha256:${h('d')}`, size: 10, ...over,
  };
}

/** The bytes of a fake tree import, and what a real import would answer for them. */
async function fakeTree(bytes: AsyncIterable<Uint8Array>): Promise<{ data: Buffer; result: TreeImportResult }> {
  const chunks: Buffer[] = [];
  for await (const c of bytes) chunks.push(Buffer.from(c));
  const data = Buffer.concat(chunks);
  return { data, result: { bytes: data.length, digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, entries: 1, unpackedBytes: data.length } };
}
