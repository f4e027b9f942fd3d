/**
 * LocalContainerHost: containers on this host (the agent's ContainerHost): their creation (the
 * runtime spec and /etc files, the network plumbed beside the runtime's create, copy-up into
 * volumes, warm containers claimed), their lifecycle through the driver that runs them (runc or
 * crun, or a microVM for runtime "vm"), and their removal (the reaper destroys what is left in
 * the background). LocalAgent delegates here with the parts it owns.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Conflict, InvalidArgument, NotFound, hasCode } from '../core/errors.js';
import { deferredIterable } from '../core/streams.js';
import { eachLimited } from '../core/each-limited.js';
import { Limiter } from '../core/limiter.js';
import { run } from '../core/exec.js';
import { logger } from '../core/log.js';
import type { CompiledOptions } from '../core/config.js';
import type { AddressProvider, ContainerCreateRequest, ContainerHost, LayerUsage, ProcessTable } from './agent.js';
import type { AttachRequest, AttachSession, EtcFiles, InstanceDriver, InstanceSpec, LogRecord, RuntimeState } from './drivers/instance-driver.js';
import type { ContainerDriver } from './drivers/container/container-driver.js';
import { DEFAULT_LOG_LIMITS } from './drivers/container/container-logs.js';
import { isContainerId } from './drivers/container/container-store.js';
import type { OciMount } from './drivers/container/oci-spec.js';
import { SecureDriver } from './drivers/secure/secure-driver.js';
import type { AcceleratorChoice } from './drivers/vm/accel.js';
import type { DiskSpace } from './content/disk-space.js';
import { layerSize, snapshotExists, type MountSpec, type Snapshotter } from './snapshots/snapshotter.js';
import type { NetworkHost } from './network/network-host.js';
import { hostsFile, resolvConf } from './network/etc-files.js';
import type { PortMapping } from './network/network-driver.js';
import { WarmPool, type WarmTemplate } from './warm-pool.js';
import { Reaper } from './reaper.js';
import { spreadSubdirectories } from './spread-directories.js';
import { ociMounts } from './volumes/container-mounts.js';
import { copyUpIntoVolumes, sweepCopyUpLeftovers } from './volumes/copy-up.js';
import { removeStateFile, replaceStateFile } from '../core/state-files.js';
import { procStat } from '../core/proc.js';
import { readPseudoFile } from './cgroups/cgroups.js';

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
  const { memoryBytes } = req.resources;
  const { storageBytes } = req;
  return {
    imageChainId: req.imageChainId, user: req.process.user,
    ...(req.runtime ? { runtime: req.runtime } : {}), ...(network ? { network } : {}), ...(memoryBytes !== undefined ? { memoryBytes } : {}),
    ...(storageBytes !== undefined ? { storageBytes } : {}),
  };
}

/** What the container host is given by the agent that owns it. */
export interface ContainerHostParts {
  options: Pick<CompiledOptions, 'agentName' | 'home' | 'containersDir' | 'layerMaxBytes' | 'warmPerImage' | 'warmImages' | 'warmBudgetBytes'>;
  snapshotter: Snapshotter;
  containers: ContainerDriver;
  /** The host's container networking: namespaces, veths, DNS. */
  network: NetworkHost;
  /** The accelerator VMs run under (the VM host's choice). */
  vmAccelerator(): Promise<AcceleratorChoice>;
  /** A named volume, mounted if it is not. */
  volume(id: string): Promise<{ path: string }>;
  /** Free space on the disks of the content store and the snapshots: a copy-up checks it. */
  room(): DiskSpace;
  /** A lifecycle call (start, stop, pause, unpause, remove) once the container's copy in progress is done (copy/container-copy.ts). */
  lifecycle<T>(id: string, fn: () => Promise<T>): Promise<T>;
}

export class LocalContainerHost implements ContainerHost {
  private readonly exitListeners: ((id: string) => void)[] = [];
  /** Created here and not started yet: start() can skip asking the runtime for its state. */
  private readonly neverStarted = new Set<string>();
  /** Containers created ahead of demand (warm-pool.ts). */
  private readonly warm: WarmPool;
  /** The directory of saved requests, made once. */
  private requestsDir: Promise<void> | undefined;
  /** Warm containers handed out by claimWarmContainer and not yet given their request: whether each was made (one may still be under way). */
  private readonly claimed = new Map<string, Promise<boolean>>();
  /**
   * Cold creates in flight at most: two per CPU. They are CPU-bound (runc's create and init alone
   * ~45 ms of host CPU each here), so a burst past the warm pool finishes no later for being let
   * through all at once, and every request of it then finished at the end: 200 at once ran their
   * first container after ~7-12 s and their last after 12.5-14.6 s; four at a time, the first
   * after ~0.1 s, 100 after ~6-7 s and the last after 11.7-14.2 s (ad-hoc probe, bench log).
   */
  private readonly coldCreates = new Limiter(2 * availableParallelism());
  /** Destroys removed containers' host state in the background (reaper.ts). */
  private readonly reaper: Reaper;
  /** Secure containers (runtime "vm"): made on first use (the accelerator probe costs seconds, once). */
  private secureP: Promise<SecureDriver> | undefined;
  /** Addresses for warm containers, from the control plane (setAddressProvider). */
  private addresses: AddressProvider | undefined;

  constructor(private readonly p: ContainerHostParts) {
    this.warm = new WarmPool(
      { create: (t, id) => this.createWarmContainer(t, id), destroy: (id) => this.destroyContainerState(id), measure: (id) => this.warmContainerBytes(id) },
      {
        perImage: p.options.warmPerImage, maxImages: p.options.warmImages, hostBusy: hostCpusBusy,
        // grown from demand within the budget, a batch per CPU at a time while the agent is quiet
        budgetBytes: p.options.warmBudgetBytes, fillConcurrency: availableParallelism(),
      },
    );
    if (existsSync(this.secureDir) && readdirSync(this.secureDir).some((n) => n !== 'vms' && n !== 'guest')) {
      void this.secureDriver().catch((e: unknown) => log.error('secure containers unavailable', { error: String(e) }));
    }
    this.reaper = new Reaper((id) => this.destroyContainerState(id), (maxMs) => this.warm.quiet(maxMs));
    // containers come and go: their directories spread over ext4's block groups (spread-directories.ts)
    void mkdir(p.options.containersDir, { recursive: true, mode: 0o700 }).then(() => spreadSubdirectories(p.options.containersDir), () => false);
    p.containers.onExit((id) => {
      if (this.warm.has(id)) return this.warm.discard(id); // a warm stub died: not an instance
      if (this.reaper.has(id)) return; // removed already; its exit is nobody's news
      for (const l of this.exitListeners) l(id);
    });
  }

  /** Where the request a container was created with is saved (started again, moved, copied into from it). */
  requestFile(id: string) {
    return join(this.p.options.containersDir, 'requests', `${id}.json`);
  }

  /** `madeNetns`: the namespace makeNamespace() made for this create, which the runtime joins. */
  async specFor(req: ContainerCreateRequest, rootfs: MountSpec[], madeNetns?: string): Promise<InstanceSpec> {
    const n = req.network;
    let netnsPath: string | undefined;
    if (n?.mode === 'container') netnsPath = await this.joinableNetns(n.container);
    // started again after an exit: the namespace kept its endpoints, join it
    if (n?.mode === 'networks') netnsPath = madeNetns ?? this.p.network.netnsOf(req.id);
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
    const named = this.p.network.netnsOf(id);
    if (named) return named;
    const st = await this.p.containers.state(id).catch(() => undefined);
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
      const dir = join(this.p.options.containersDir, n.container, 'etc');
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
    if (n?.mode !== 'networks' || this.p.network.netnsOf(req.id)) return undefined;
    if ('pid' in into && !into.pid) throw new InvalidArgument(`container ${req.id.slice(0, 12)} has no process to network`);
    const t0 = performance.now();
    const { ports } = await this.p.network.attach({ containerId: req.id, ...('pid' in into ? { pid: into.pid! } : { namespaceMade: true }), endpoints: n.endpoints, ports: n.ports });
    log.debug('container networked', { id: req.id, endpoints: n.endpoints.length, ports: n.ports.length, ms: Math.round(performance.now() - t0) });
    // ports the host chose (hostPort 0, or of a range) are kept in the saved request: networked again (after a reboot) it asks for the same ones
    if (n.ports.some((p) => p.hostPort === 0 || p.hostPortEnd !== undefined)) await this.saveRequest({ ...req, network: { ...n, ports } });
    return ports;
  }

  claimWarmContainer(req: Omit<ContainerCreateRequest, 'id'>): string | undefined {
    const t = warmTemplateOf(req);
    const id = t && this.warm.take(t);
    if (id) this.claimed.set(id, this.warm.made(id));
    return id;
  }

  /** What a ready warm container holds: its cgroup's memory (the stub, kernel objects) and its conmon's PSS. */
  private async warmContainerBytes(id: string): Promise<number | undefined> {
    const [stats, pids] = await Promise.all([this.p.containers.stats(id), this.p.containers.processIds(id)]);
    const conmon = pids[0] === undefined ? undefined : procStat(pids[0])?.ppid;
    const rollup = conmon === undefined ? undefined : readPseudoFile(`/proc/${conmon}/smaps_rollup`);
    const pss = rollup === undefined ? undefined : /^Pss:\s+(\d+) kB/m.exec(rollup)?.[1];
    return pss === undefined ? undefined : stats.memoryBytes + Number(pss) * 1024;
  }

  private async createWarmContainer(t: WarmTemplate, id: string): Promise<void> {
    const rootfs = await this.p.snapshotter.prepare(id, t.imageChainId, layerSize(t));
    try {
      const state = await this.p.containers.createWarm({
        id, name: `warm-${id.slice(0, 12)}`, rootfs, resources: t.memoryBytes !== undefined ? { memoryBytes: t.memoryBytes } : {},
        process: { args: ['true'], env: [], cwd: '/', user: t.user },
        ...(t.runtime ? { runtime: t.runtime } : {}),
      });
      // its interface too, on the network its requests use, with an address leased ahead of demand
      if (t.network && state.pid) await this.p.network.prewire(id, state.pid, t.network, await this.addresses?.lease(t.network.id, id));
    } catch (e) {
      await this.destroyContainerState(id).catch(() => undefined);
      throw e;
    }
  }

  private get secureDir(): string {
    return join(this.p.options.containersDir, 'secure');
  }

  private secureDriver(): Promise<SecureDriver> {
    this.secureP ??= (async () => {
      // the same accelerator choice as VMs: one probe boot per agent, not one per kind of guest
      const accel = await this.p.vmAccelerator();
      log.info('secure containers run in microVMs', { accel: accel.accel, reason: accel.reason });
      const d = new SecureDriver({ stateDir: this.secureDir, accel: accel.accel, guestCacheDir: join(this.p.options.home, 'guest') });
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

  /** Runs in a microVM of its own (runtime "vm"). */
  isSecure(id: string): boolean {
    return isContainerId(id) && existsSync(join(this.secureDir, id));
  }

  /** The driver that runs this container: runc/crun, or a microVM for runtime "vm". */
  private async driverOf(id: string): Promise<InstanceDriver> {
    return this.isSecure(id) ? this.secureDriver() : this.p.containers;
  }

  /** Runtime state, network endpoints and writable layer of a container, gone. */
  private async destroyContainerState(id: string): Promise<void> {
    await (await this.driverOf(id)).delete(id);
    await this.p.network.detach(id);
    await this.addresses?.release(id); // a warm container's lease (one that became a container's went with its record)
    try {
      await this.p.snapshotter.remove(id);
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
    return join(this.p.options.containersDir, 'copy-up');
  }
  /** A crashed predecessor's copy-up mounts, gone once per process and before its first copy-up. */
  sweepCopyUp(): Promise<void> {
    return (this.copyUpSwept ??= sweepCopyUpLeftovers(this.copyUpDir()));
  }

  /** Volumes made for this container (copyUp): the image's files at their targets copied in, before its process exists (volumes/copy-up.ts). */
  private async copyUp(req: ContainerCreateRequest, rootfs: MountSpec[]): Promise<void> {
    const asked = (req.mounts ?? []).flatMap((m) => (m.type === 'volume' && m.copyUp ? [m] : []));
    if (!asked.length) return;
    const volumes = await Promise.all(asked.map(async (m) => ({ target: m.target, dir: (await this.p.volume(m.volumeId)).path })));
    await this.sweepCopyUp();
    await copyUpIntoVolumes(rootfs, volumes, {
      // not docker cp's scratch directory: its sweep of leftovers would take a copy-up's mount from under it
      scratchDir: this.copyUpDir(),
      room: () => this.p.room(),
      ...(this.p.options.layerMaxBytes ? { maxBytes: this.p.options.layerMaxBytes } : {}),
    });
  }

  /** The request's mounts as OCI mounts (volumes mounted first if they are not); none: empty. */
  async mountsFor(req: ContainerCreateRequest): Promise<OciMount[]> {
    if (!req.mounts?.length) return [];
    return ociMounts(req.mounts, async (id) => (await this.p.volume(id)).path);
  }

  private async createContainerNow(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string; ports?: PortMapping[] }> {
    if (req.runtime === 'vm') return this.createSecureContainer(req);
    // checked before anything is made: a forbidden bind or a missing volume leaves nothing behind
    const extraMounts = await this.mountsFor(req);
    const claimed = this.claimed.get(req.id);
    if (claimed) {
      this.claimed.delete(req.id);
      // a warm container taken while it was being made is waited for; one that failed left nothing
      let state: RuntimeState | undefined;
      if (await claimed) {
        await this.saveRequest(req);
        state = await this.p.containers.claimWarm(await this.specFor(req, await this.p.snapshotter.mounts(req.id)));
      }
      if (state) {
        const ports = await this.plumb(req, { pid: state.pid });
        this.neverStarted.add(req.id);
        return { ...state, warnings: await this.p.containers.warnings(req.id), runtime: await this.p.containers.runtimeOf(req.id), ...(ports ? { ports } : {}) };
      }
      // Not usable for this request after all: make it cold, under the same id, on a fresh layer.
      await this.destroyContainerState(req.id);
    }
    return this.coldCreates.run(() => this.createCold(req, extraMounts));
  }

  private async createCold(req: ContainerCreateRequest, extraMounts: OciMount[]): Promise<RuntimeState & { warnings: string[]; runtime: string; ports?: PortMapping[] }> {
    if (!(await snapshotExists(this.p.snapshotter, req.imageChainId))) {
      throw new NotFound(`image layers ${req.imageChainId} are not on this host; pull the image again`);
    }
    await this.saveRequest(req);
    let mounts: MountSpec[];
    try {
      mounts = await this.p.snapshotter.prepare(req.id, req.imageChainId, layerSize(req));
    } catch (e) {
      if (!hasCode(e, 'AlreadyExists')) throw e;
      mounts = await this.p.snapshotter.mounts(req.id);
    }
    await this.copyUp(req, mounts);
    const { state, ports } = await this.createAndPlumb(req, mounts, extraMounts);
    this.neverStarted.add(req.id);
    return { ...state, warnings: await this.p.containers.warnings(req.id), runtime: await this.p.containers.runtimeOf(req.id), ...(ports ? { ports } : {}) };
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
    const networked = req.network?.mode === 'networks' && req.network.endpoints.length > 0 && !this.p.network.netnsOf(req.id);
    if (!networked) {
      const state = await this.p.containers.create(await this.specFor(req, mounts), { mounts: extraMounts });
      return { state, ports: await this.plumb(req, { pid: state.pid }) };
    }
    const netns = await this.p.network.makeNamespace(req.id);
    const [created, plumbed] = await Promise.allSettled([
      this.specFor(req, mounts, netns).then((spec) => this.p.containers.create(spec, { mounts: extraMounts })),
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
    if (!(await snapshotExists(this.p.snapshotter, req.imageChainId))) {
      throw new NotFound(`image layers ${req.imageChainId} are not on this host; pull the image again`);
    }
    const secure = await this.secureDriver();
    await this.saveRequest(req);
    const mounts = await this.p.snapshotter.prepare(req.id, req.imageChainId, layerSize(req));
    const state = await secure.create(await this.specFor(req, mounts));
    return { ...state, warnings: [], runtime: 'vm' };
  }

  /** The request a container was created with, as saved on this host; NotFound naming the host when there is none. */
  async savedRequest(id: string): Promise<ContainerCreateRequest> {
    const text = await readFile(this.requestFile(id), 'utf8').catch(() => {
      throw new NotFound(`no saved configuration for container ${id} on host ${this.p.options.agentName}`, { container: id });
    });
    return JSON.parse(text) as ContainerCreateRequest;
  }

  async saveRequest(req: ContainerCreateRequest): Promise<void> {
    const file = this.requestFile(req.id);
    this.requestsDir ??= mkdir(join(this.p.options.containersDir, 'requests'), { recursive: true }).then(
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
    return this.warm.busy(() => this.p.lifecycle(id, () => this.startContainerNow(id)));
  }

  private async startContainerNow(id: string): Promise<RuntimeState> {
    if (this.isSecure(id)) return (await this.secureDriver()).start(id); // a microVM boots again from its rootfs
    // A container created by this agent and never started needs no state check: start it.
    if (this.neverStarted.delete(id)) return this.p.containers.start(id);
    const st = await this.p.containers.state(id).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) return { status: 'unknown' } as RuntimeState;
      throw e;
    });
    if (st.status === 'stopped' || st.status === 'unknown') {
      // Start again after exit: a fresh runtime container on the same writable layer.
      const req = await this.savedRequest(id);
      const extraMounts = await this.mountsFor(req);
      await this.p.containers.delete(id);
      const state = await this.p.containers.create(await this.specFor(req, await this.p.snapshotter.mounts(id)), { mounts: extraMounts });
      await this.plumb(req, { pid: state.pid });
    }
    return this.p.containers.start(id);
  }

  async stopContainer(id: string, timeoutSec: number, signal?: string) {
    // after a copy in progress, which holds the container frozen (a stop would thaw it)
    return this.p.lifecycle(id, async () => (await this.driverOf(id)).stop(id, timeoutSec, signal));
  }
  async killContainer(id: string, signal: string) {
    return (await this.driverOf(id)).kill(id, signal);
  }
  async pauseContainer(id: string) {
    return this.p.lifecycle(id, async () => (await this.driverOf(id)).pause(id));
  }
  async unpauseContainer(id: string) {
    return this.p.lifecycle(id, async () => (await this.driverOf(id)).unpause(id));
  }
  async containerState(id: string) {
    return (await this.driverOf(id)).state(id);
  }
  async attachContainer(id: string, req: AttachRequest): Promise<AttachSession> {
    if (this.isSecure(id)) throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM: attaching to its process is not supported yet`);
    return this.p.containers.attach(id, req);
  }
  async resizeContainer(id: string, rows: number, cols: number): Promise<void> {
    if (this.isSecure(id)) throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM: it has no terminal`);
    return this.p.containers.resize(id, rows, cols);
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
    const pids = await this.p.containers.processIds(id);
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
    return this.p.network.withCounters(id, await (await this.driverOf(id)).stats(id));
  }


  removeContainer(id: string): Promise<void> {
    return this.warm.busy(() => this.removeContainerNow(id));
  }

  private async removeContainerNow(id: string): Promise<void> {
    await this.p.lifecycle(id, async () => undefined); // a copy in progress ends before its rootfs goes
    this.neverStarted.delete(id);
    const claimed = this.claimed.get(id);
    this.claimed.delete(id);
    await claimed; // a warm container still being made is finished before the reaper destroys it
    // at once, not by the reaper: its published ports and names may be someone else's next
    await this.p.network.release(id);
    await removeStateFile(this.requestFile(id));
    this.reaper.add(id);
  }

  /**
   * What each container's writable layer holds (docker ps -s, system df), walked as `du` walks
   * (snapshotter.ts usage: outside the snapshotter's lock), a few at a time; warm containers and
   * ids this host does not have are left out.
   */
  async containerLayerUsage(ids: string[]): Promise<Record<string, LayerUsage>> {
    const out: Record<string, LayerUsage> = {};
    await eachLimited(ids.filter((id) => !this.warm.has(id)), 4, async (id) => {
      try {
        const u = await this.p.snapshotter.usage(id);
        out[id] = { bytes: u.size, inodes: u.inodes };
      } catch (e) {
        if (!hasCode(e, 'NotFound')) log.warn('measuring a writable layer failed', { id, error: String(e) });
      }
    });
    return out;
  }

  async listContainers(): Promise<string[]> {
    const ids = new Set(await this.p.containers.list());
    if (this.secureP || existsSync(this.secureDir)) {
      try {
        for (const id of await (await this.secureDriver()).list()) ids.add(id);
      } catch (e) {
        log.warn('cannot list secure containers', { error: String(e) });
      }
    }
    // A writable snapshot without runtime state is also a container's leftover.
    for (const s of await this.p.snapshotter.list()) {
      if (s.kind === 'active' && !s.key.startsWith('extract-')) ids.add(s.key);
    }
    return [...ids];
  }

  onContainerExit(listener: (id: string) => void): void {
    this.exitListeners.push(listener);
  }

  setAddressProvider(p: AddressProvider): void {
    this.addresses = p;
  }

  /** While fn runs the agent is busy: the warm pool does not fill behind it. */
  busy<T>(fn: () => Promise<T>): Promise<T> {
    return this.warm.busy(fn);
  }

  /** Removed containers' host state destroyed and warm containers of other images gone: they hold their image's layers (garbage collection). */
  async releaseLayers(keepChainIds: string[]): Promise<void> {
    await this.reaper.idle();
    await this.warm.retainOnly(new Set(keepChainIds));
  }

  warmPoolStats() {
    return this.warm.stats();
  }

  removalStats() {
    return this.reaper.stats();
  }

  /** Removals done and warm containers gone (their endpoints with them: the network closes after). */
  async close(): Promise<void> {
    await this.reaper.idle();
    await this.warm.close();
  }
}
