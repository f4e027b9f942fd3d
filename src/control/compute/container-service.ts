/**
 * Containers as the control plane sees them: the record in the store, the
 * state machine, restart supervision, and calls to the host's agent.
 */
import { Conflict, InvalidArgument, NimbusError, NotFound, Unavailable, hasCode, toNimbusError } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { logger } from '../../core/log.js';
import type { Agent, ContainerArchiveResult, ContainerCreateRequest, ContainerPathStat, ProcessTable } from '../../agent/agent.js';
import type { PortMapping } from '../../agent/network/network-driver.js';
import type { Readable } from 'node:stream';
import { badTerminalSize, type AttachRequest, type AttachSession, type ExecRequest, type ExecSession, type InstanceStats, type LogRecord, type ProcessSpec, type RuntimeState } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerConfig, ContainerRecord, ContainerStatus, ImageRecord, NetworkRecord, OperationRecord, PortSpec } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { ImageService } from '../images/image-service.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { OperationService } from '../operations/operations.js';
import type { NetworkIntent, NetworkService } from '../networks/network-service.js';
import { assertTransition, StopsInFlight } from './container-state.js';
import { checkHostname, checkIpv4, checkPorts, checkResources, checkStopTimeout } from './container-input.js';
import { withDeadline } from './deadline.js';
import { generateName } from './names.js';
import { checkProcess, processSpecFor } from './process-spec.js';
import { withExposedPorts } from '../networks/publish-all.js';
import { hostChoosesPort } from '../../core/port-ranges.js';
import { placementFields, withGroupResolved, type HostAgents, type PlacementInput } from './hosts.js';
import type { PlacementRequest, Scheduler } from '../scheduler/types.js';
import { agentMounts, mountsOf, type MountInput, type StoredMount, type VolumeService } from '../volumes/volume-service.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { chooseDestination, moveContainer, startMove, type MoveDeps, type MoveOptions, type MoveReport } from './container-move.js';
import { checkLiveHosts, liveMoveRefusal } from './live-move-rules.js';
import type { HealDeps } from './healing.js';

const log = logger('compute');
const EVERYWHERE: ProjectScope = { canRead: () => true };
const RESTART_BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 6400, 10_000];
/**
 * How long one agent call under a container's lifecycle lock may take (a stop: its timeout more).
 * Covers the slowest honest one: a start after exit deletes and re-creates the runtime container
 * (conmon's own bound on `runc create` is 30 s).
 */
const AGENT_DEADLINE_MS = 120_000;
/** How long the start-time reconcile waits for a host other than the embedded one: one that does not answer is left alone. */
const HOST_RECONCILE_MS = 15_000;

/** A container as listings and inspect show it: "unknown" while its host does not answer (the stored status is kept). */
export type ContainerView = Omit<ContainerRecord, 'status'> & { status: ContainerStatus | 'unknown' };

export interface ContainerServiceOptions {
  /** Override AGENT_DEADLINE_MS (tests). */
  agentDeadlineMs?: number;
  /**
   * Whether this process records exits and applies restart policies (every replica hears every
   * host's exits; only the leader acts on them, so a container is restarted once). Default: always.
   */
  handlesExits?: () => boolean;
}

export interface CreateContainerInput extends Omit<ContainerConfig, 'mounts'> {
  name?: string;
  /** -P: each port the image exposes (ExposedPorts) and `ports` does not name, published on a free host port. */
  publishAll?: boolean;
  /** Volumes by name, host paths, tmpfs (docs/volumes.md); the record keeps them resolved (StoredMount). */
  mounts?: MountInput[];
}

export interface CreateOptions {
  /**
   * Start it too, in the same request (Incus's `"start": true`; `nimbus run -d`). A start that
   * fails leaves the container created, or removes it when it is autoRemove (as dockerd does),
   * and the error names it in details.container.
   */
  start?: boolean;
  /** Where it may run (--host, --zone, --constraint, --group); the scheduler decides. */
  placement?: PlacementInput;
  /** The caller may bind host paths (a system administrator: the API edge decides). Default: no. */
  mayBindHostPaths?: boolean;
}

/** What a create learnt from its host, written with the start (or alone). */
type CreatePatch = Pick<ContainerRecord, 'warnings' | 'runtime'> & { config?: ContainerRecord['config'] };

/** The config's ports with the host ports the agent chose for those asked as 0 or as a range (same order); undefined when none was. */
function chosenPorts(asked: readonly PortSpec[] | undefined, published: readonly PortMapping[] | undefined): PortSpec[] | undefined {
  if (!asked?.some(hostChoosesPort)) return undefined;
  if (!published || published.length !== asked.length) throw new Unavailable('the host did not say which ports it chose for the container');
  return asked.map((p, i) => {
    if (!hostChoosesPort(p)) return p;
    const { hostPortEnd: _range, ...rest } = p; // the record keeps the port chosen: the container's across restarts
    return { ...rest, hostPort: published[i]!.hostPort };
  });
}

export class ContainerService {
  private readonly restartTimers = new Map<string, NodeJS.Timeout>();
  /** Serialises lifecycle calls per container so concurrent requests cannot interleave (kill excepted: container-state.ts). */
  private readonly locks = new KeyedLock();
  /** Graceful stops holding a lock: what kill and rm -f preempt (container-state.ts). */
  private readonly stops = new StopsInFlight();

  /** "<project id>/<name>" of creates waiting for a reclaim: their names are taken. */
  private readonly pendingNames = new Set<string>();
  /** Generated names ("project/name") chosen by creates whose record is not written yet. */
  private readonly generatedNames = new Set<string>();

  /** Agents whose container exits this service listens to (an agent that registers again is a new object). */
  private readonly watched = new WeakSet<Agent>();
  /** Hosts that did not answer the last reconcile: their containers show "unknown" until one does. */
  private readonly unreachable = new Set<string>();
  private hostWatch: NodeJS.Timeout | undefined;
  /** Named volumes (set by the daemon): mounts are resolved through it; absent, a create with mounts is refused. */
  private volumes: VolumeService | undefined;

  constructor(
    private readonly store: Store,
    private readonly hosts: HostAgents,
    private readonly scheduler: Scheduler,
    private readonly images: ImageService,
    private readonly events: EventBus,
    private readonly quota: QuotaService,
    private readonly operations: OperationService,
    private readonly networks: NetworkService,
    private readonly opts: ContainerServiceOptions = {},
  ) {
    for (const name of hosts.names()) this.agentOn(name);
  }

  /** The daemon's volume service: containers' mounts name its volumes (and run on their host). */
  useVolumes(volumes: VolumeService): void {
    this.volumes = volumes;
  }

  /** The agent of a host, its container exits listened to from the first use on. */
  private agentOn(host: string): Agent {
    const agent = this.hosts.get(host);
    if (!this.watched.has(agent)) {
      this.watched.add(agent);
      agent.onContainerExit((id) => this.handleExitDetached(id, host));
    }
    return agent;
  }

  /**
   * Exits from every host, those registered (again) later included: every few seconds the
   * directory is looked at (no call to a host) and an agent not listened to yet is; its running
   * containers are then checked, so an exit it saw while away is recorded.
   */
  watchHosts(everyMs = 5000): void {
    this.hostWatch ??= setInterval(() => this.attachNewHosts(), everyMs);
    this.hostWatch.unref();
  }

  private attachNewHosts(): void {
    for (const host of this.hosts.names()) {
      let agent: Agent;
      try {
        agent = this.hosts.get(host);
      } catch {
        continue; // removed meanwhile
      }
      if (this.watched.has(agent)) continue;
      this.agentOn(host);
      void this.recheckHost(host, agent).catch((e: unknown) => log.warn('re-checking the containers of a host failed', { host, error: String(e) }));
    }
  }

  /** A host back (or new): it answers again, and its live containers' exits are looked for. */
  private async recheckHost(host: string, agent: Agent): Promise<void> {
    await withDeadline(agent.listContainers(), HOST_RECONCILE_MS, `host ${host}'s container list`);
    this.unreachable.delete(host);
    for (const c of await this.store.containers.onHost(host)) {
      if (c.status === 'running' || c.status === 'paused') this.handleExitDetached(c.id, host);
    }
  }

  /** The agent of the host the container lives on. */
  private agentOf(c: { host: string }): Agent {
    return this.agentOn(c.host);
  }

  /** handleExit from a callback that cannot wait for it: its failure is logged. */
  private handleExitDetached(id: string, host?: string): void {
    if (this.opts.handlesExits && !this.opts.handlesExits()) return;
    void this.handleExit(id, host).catch((e: unknown) => log.warn('recording a container exit failed', { id, error: String(e) }));
  }

  /** As listings and inspect show it: "unknown" while its host does not answer (the last reconcile, or the directory's refresh now). */
  view(c: ContainerRecord): ContainerView {
    return this.unreachable.has(c.host) || !this.hosts.has(c.host) || this.hosts.isDown?.(c.host) ? { ...c, status: 'unknown' } : c;
  }

  /** An agent call for container id, bounded: a hung agent answers Unavailable instead of holding the lock for ever. */
  private bounded<T>(id: string, op: string, p: Promise<T>, extraMs = 0, signal?: AbortSignal): Promise<T> {
    return withDeadline(p, (this.opts.agentDeadlineMs ?? AGENT_DEADLINE_MS) + extraMs, `the agent's ${op} of container ${id.slice(0, 12)}`, signal);
  }

  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  /** "org/team" for progress messages (ids mean nothing to a user). */
  private async projectPath(id: string): Promise<string> {
    const names: string[] = [];
    for (let p = await this.store.projects.get(id); p; p = p.parentId ? await this.store.projects.get(p.parentId) : undefined) names.unshift(p.name);
    return names.length ? names.join('/') : id;
  }

  /** As Docker does: the container's labels, its image and name, then what the action adds (`docker events --filter label=…` matches them). */
  private publish(c: ContainerRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'container', action, id: c.id, projectId: c.projectId, attributes: { ...c.config.labels, image: c.config.image, name: c.name, ...attributes } });
  }

  /**
   * By full id, name or unique id prefix, looked up in `scope` (by default everywhere: internal
   * callers pass ids; the API edge passes the caller's scope and hands handlers the full id).
   * Names are unique per project, so other projects' containers neither match nor make it ambiguous.
   */
  async get(idOrName: string, scope: ProjectScope = EVERYWHERE): Promise<ContainerRecord> {
    if (!idOrName) throw new InvalidArgument('a container id or name is required');
    const exact = await this.store.containers.get(idOrName);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = (await this.store.containers.named(idOrName)).filter((c) => inScope(scope, c.projectId));
    if (named.length) return pickInScope(named, scope, (c) => c.id, 'container', idOrName);
    // A prefix shared by containers of two projects is ambiguous: no default project wins it.
    const prefixScope: ProjectScope = 'projectId' in scope ? scope : { canRead: scope.canRead };
    return pickInScope(await this.store.containers.withIdPrefix(idOrName), prefixScope, (c) => c.id, 'container', idOrName);
  }

  list(opts: { all?: boolean; projectId?: string } = {}): Promise<ContainerRecord[]> {
    return this.store.containers.list({
      ...(opts.projectId ? { projectId: opts.projectId } : {}),
      ...(opts.all ? {} : { status: ['running', 'paused', 'restarting'] as ContainerStatus[] }),
    });
  }

  /** Create, waiting through a reclaim if one is needed. `imageScope`: where the image is looked up (by default the project's own images). */
  async create(input: CreateContainerInput, projectId: string, imageScope: ProjectScope = { projectId }, opts: CreateOptions = {}): Promise<ContainerRecord> {
    const r = await this.requestCreate(input, projectId, imageScope, opts);
    return 'container' in r ? r.container : r.finished;
  }

  /**
   * Create now when the quota admits it. When the project's capacity must first be reclaimed from
   * borrowers, return at once an Operation (container.create) that creates the container when the
   * reclaim is done (after the borrowers' grace period); its progress names the plan. The name is
   * held meanwhile. Rejected (QuotaExceeded) when even a reclaim cannot make room.
   */
  async requestCreate(
    input: CreateContainerInput,
    projectId: string,
    imageScope: ProjectScope = { projectId },
    opts: CreateOptions = {},
  ): Promise<{ container: ContainerRecord } | { operation: OperationRecord; finished: Promise<ContainerRecord> }> {
    // anonymous volumes the create makes (-v /path): a create that fails takes them with it
    const made: string[] = [];
    const undo = async () => {
      if (made.length) await this.volumes?.removeAnonymous(made, projectId);
    };
    try {
      const r = await this.requestCreateNamedOrGenerated(input, projectId, imageScope, opts, made);
      if ('finished' in r) r.finished.catch(() => undo()).catch(() => undefined);
      return r;
    } catch (e) {
      await undo();
      throw e;
    }
  }

  private async requestCreateNamedOrGenerated(
    input: CreateContainerInput,
    projectId: string,
    imageScope: ProjectScope,
    opts: CreateOptions,
    made: string[],
  ): Promise<{ container: ContainerRecord } | { operation: OperationRecord; finished: Promise<ContainerRecord> }> {
    if (input.name !== undefined) return this.requestCreateNamed(input, projectId, imageScope, opts, made);
    // A generated name is held from its choice until the record has it: creates of one burst
    // drew the same one from the 400 pairs and all but one failed AlreadyExists (metering bench).
    const name = await generateName(async (n) => {
      const key = `${projectId}/${n}`;
      const held = () => this.generatedNames.has(key) || this.pendingNames.has(key);
      if (held() || (await this.store.containers.byName(projectId, n)) !== undefined || (await this.store.vms.byName(projectId, n)) !== undefined) return true;
      if (held()) return true; // chosen by another create while the store was asked
      this.generatedNames.add(key);
      return false;
    });
    try {
      return await this.requestCreateNamed({ ...input, name }, projectId, imageScope, opts, made);
    } finally {
      this.generatedNames.delete(`${projectId}/${name}`);
    }
  }

  private async requestCreateNamed(
    input: CreateContainerInput,
    projectId: string,
    imageScope: ProjectScope,
    opts: CreateOptions,
    made: string[],
  ): Promise<{ container: ContainerRecord } | { operation: OperationRecord; finished: Promise<ContainerRecord> }> {
    const image = await this.images.resolve(input.image, imageScope);
    if (input.name !== undefined && !isValidName(input.name)) {
      throw new InvalidArgument(`invalid container name "${input.name}": use letters, digits, '_', '.', '-' (max 128)`);
    }
    // Names are per project; a VM of the same project and name counts too (instances are one resource).
    const taken = async (n: string) =>
      this.pendingNames.has(`${projectId}/${n}`) || (await this.store.containers.byName(projectId, n)) !== undefined || (await this.store.vms.byName(projectId, n)) !== undefined;
    if (input.name && (await taken(input.name))) {
      throw new Conflict(`the container name "${input.name}" is already in use in this project`);
    }
    if (input.memoryBytes !== undefined && input.memoryBytes < 6 * 1024 * 1024) {
      throw new InvalidArgument('memory limit must be at least 6 MiB');
    }
    checkResources(input);
    if (input.stopTimeout !== undefined) checkStopTimeout(input.stopTimeout, 'stopTimeout');
    if (input.hostname !== undefined) checkHostname(input.hostname);
    if (input.ip !== undefined) checkIpv4(input.ip);
    for (const d of input.dns ?? []) checkIpv4(d, 'dns');
    const { name: requestedName, mounts: mountInput, publishAll, ...asked } = input;
    if (input.runtime === 'vm' && asked.network === undefined) asked.network = 'none'; // microVMs have no network yet
    // -P: every port the image exposes that the request does not publish, on a port its host
    // chooses; moot without a network of its own (none, host, container:), as dockerd passes over it
    const ownNetwork = asked.network !== 'none' && asked.network !== 'host' && !asked.network?.startsWith('container:');
    if (publishAll && ownNetwork) asked.ports = withExposedPorts(asked.ports, Object.keys(image.config.config?.ExposedPorts ?? {}));
    checkPorts(asked.ports);
    if (input.runtime === 'vm' && (input.tty || input.openStdin)) throw new InvalidArgument("a secure container's main process has no terminal or stdin yet (-t, -i)");
    if (input.stdinOnce && !input.openStdin) throw new InvalidArgument('stdinOnce needs openStdin');
    // Network settings are checked before anything is made; addresses are leased once the record exists.
    const links: Array<{ container: string; alias: string }> = [];
    for (const l of asked.links ?? []) {
      const t = await this.get(l.container, { projectId });
      if (t.status !== 'running') throw new Conflict(`cannot link to ${t.name}: it is ${t.status}`);
      links.push({ container: t.id, alias: l.alias });
    }
    const config = { ...asked, ...(links.length ? { links } : {}) };
    const intent: NetworkIntent = await this.networks.intent(config, projectId, { projectId });
    if (links.length && intent.mode !== 'networks') throw new InvalidArgument('--link needs a network (not none, host or container:)');
    const linkNetworks = intent.mode === 'networks' ? intent.networks : [];
    for (const l of links) {
      const shares = (await this.store.networks.leases({ instanceId: l.container })).some((x) => linkNetworks.some((n) => n.id === x.networkId));
      if (!shares) throw new InvalidArgument(`cannot link to ${(await this.store.containers.get(l.container))?.name}: it is not on the same network`);
    }
    const name = requestedName ?? (await generateName(taken));
    const process = await this.processFor(config, image, name, linkNetworks);
    // before a warm container is claimed or a cold one made: both paths give the same answer
    checkProcess(process);
    // volumes resolved (one that does not exist is made, as Docker does): the container runs on their host
    let mounts: StoredMount[] = [];
    let copyUp: string[] = [];
    let volumeHost: string | undefined;
    if (mountInput?.length) {
      if (!this.volumes) throw new Unavailable('this control plane has no volume service');
      if (config.runtime === 'vm') throw new InvalidArgument('secure containers (--runtime vm) cannot mount volumes, host paths or tmpfs yet');
      const resolved = await this.volumes.resolveMounts(mountInput, projectId, {
        mayBindHostPaths: opts.mayBindHostPaths === true,
        ...(opts.placement?.host !== undefined ? { pinnedHost: opts.placement.host } : {}),
        made,
      });
      mounts = resolved.mounts;
      copyUp = resolved.copyUp;
      volumeHost = resolved.host;
    }
    const request = this.requestOf(config, image, name, process, intent, mounts, copyUp);
    const local = this.hosts.localName;
    // container:<id> shares that container's namespace, so it runs on that container's host
    const netnsHost = intent.mode === 'container' ? intent.container.host : undefined;
    if (netnsHost !== undefined && opts.placement?.host !== undefined && opts.placement.host !== netnsHost) {
      throw new InvalidArgument(`--network container:${intent.mode === 'container' ? intent.container.name : ''} runs on that container's host ${netnsHost}, not ${opts.placement.host}`);
    }
    // its volumes are on one host (resolveMounts checked them against a pin): it runs there
    if (netnsHost !== undefined && volumeHost !== undefined && netnsHost !== volumeHost) {
      throw new Conflict(`--network container:${intent.mode === 'container' ? intent.container.name : ''} runs on host ${netnsHost}, and this container's volumes are on ${volumeHost}`);
    }
    const sameHostAs = netnsHost ?? volumeHost;
    // a server group named in the request resolves before anything is held (NotFound names it)
    const placement: PlacementInput = await withGroupResolved(this.store, projectId, { ...opts.placement, ...(sameHostAs !== undefined ? { host: sameHostAs } : {}) });
    // A container the embedded agent created ahead of demand becomes this one, id and all (dropped if it is placed elsewhere).
    const warmId = local !== undefined && (placement.host === undefined || placement.host === local) ? this.agentOn(local).claimWarmContainer(request) : undefined;
    const id = warmId ?? newId();
    const now = new Date().toISOString();
    const rec: ContainerRecord = {
      // the mounts resolved (volumes by id) are kept in the config: what a volume's in-use check reads
      id, name, projectId, imageDigest: image.digest, config: { ...config, image: input.image, ...(mounts.length ? { mounts } : {}) },
      status: 'created', runtime: config.runtime ?? 'auto', pid: null, exitCode: null, oomKilled: false,
      restartCount: 0, stoppedByUser: false, createdAt: now, startedAt: null, finishedAt: null, warnings: [],
      host: local ?? '', // the scheduler's choice, once admitted
    };
    const dropWarm = () => {
      if (warmId && local !== undefined) void this.agentOn(local).removeContainer(warmId).catch(() => undefined);
    };
    // Admission first: a refused request leaves nothing behind.
    let admission: Awaited<ReturnType<QuotaService['admitContainerOrPlanReclaim']>>;
    try {
      admission = await this.quota.admitContainerOrPlanReclaim(id, projectId, rec.config);
    } catch (e) {
      dropWarm();
      throw e;
    }
    if ('decision' in admission) return { container: await this.createAdmitted(rec, request, warmId, intent, opts, image, placement) };

    const { reclaim, done } = admission;
    const held = `${projectId}/${name}`;
    this.pendingNames.add(held);
    const deadline = Math.max(...reclaim.plan.map((v) => v.deadline));
    let finished!: Promise<ContainerRecord>;
    let operation: OperationRecord;
    try {
      const progress = {
        phase: 'reclaim',
        reclaim: reclaim.id,
        instances: reclaim.plan.length,
        projects: [...new Set(await Promise.all(reclaim.plan.map((v) => this.projectPath(v.project))))],
        graceSeconds: Math.max(0, Math.ceil((deadline - Date.now()) / 1000)),
        deadline: new Date(deadline).toISOString(),
      };
      operation = await this.operations.start('container.create', name, projectId, (op) => {
        op.progress(progress);
        finished = (async () => {
          try {
            await done;
          } catch (e) {
            dropWarm();
            throw e;
          } finally {
            this.pendingNames.delete(held);
          }
          return this.createAdmitted(rec, request, warmId, intent, opts, image, placement);
        })();
        return finished;
      });
    } catch (e) {
      // no operation was started (the store refused it): the name is free again, and what the reclaim admits is given back
      this.pendingNames.delete(held);
      dropWarm();
      void done
        .then(() => this.quota.release(id, 'create failed'), () => undefined)
        .catch((x: unknown) => log.warn('releasing the quota of a create that did not start failed', { id, error: String(x) }));
      throw e;
    }
    return { operation, finished };
  }

  /** The main process a create asks for: the image's defaults under the config's, with its links' environment first. */
  private async processFor(config: ContainerConfig, image: ImageRecord, name: string, linkNetworks: readonly NetworkRecord[]): Promise<ProcessSpec> {
    const linkEnv = await this.networks.linkEnv({ name }, config.links ?? [], linkNetworks, async (t) => Object.keys((await this.store.images.get(t.imageDigest))?.config.config?.ExposedPorts ?? {}));
    return processSpecFor(image.config, linkEnv.length ? { ...config, env: [...linkEnv, ...config.env] } : config);
  }

  /** The agent's create request for a config (its network as named: the addresses are leased once the record exists). */
  private requestOf(config: ContainerConfig, image: ImageRecord, name: string, process: ProcessSpec, intent: NetworkIntent, mounts: StoredMount[], copyUp: readonly string[] = []): Omit<ContainerCreateRequest, 'id'> {
    return {
      name, imageChainId: image.chainId, process,
      resources: {
        ...(config.memoryBytes !== undefined ? { memoryBytes: config.memoryBytes } : {}),
        ...(config.cpus !== undefined ? { cpus: config.cpus } : {}),
        ...(config.pidsLimit !== undefined ? { pidsLimit: config.pidsLimit } : {}),
      },
      // unset = the id's first 12 characters, decided by the agent (so a warm container fits)
      ...(config.hostname !== undefined ? { hostname: config.hostname } : {}),
      ...(config.runtime ? { runtime: config.runtime } : {}),
      ...(config.labels ? { labels: config.labels } : {}),
      ...(config.log ? { log: config.log } : {}),
      // the networks named now (a warm container may already be on the first), addresses leased after admission
      network: intent.mode === 'networks' ? { mode: 'networks', endpoints: this.networks.unleased(intent), ports: [], extraHosts: [], dns: [] } : intent.mode === 'container' ? { mode: 'container', container: intent.container.id } : { mode: intent.mode },
      // copyUp only in a create's own request: a rebuild elsewhere or a move carries the volume's data, not the image's
      ...(mounts.length ? { mounts: agentMounts(mounts, copyUp) } : {}),
    };
  }

  /**
   * The create request of an existing container, from its record, for `host` (a rebuild on
   * another host, healing.ts): its networks laid out there and its leases kept (same addresses).
   */
  async requestFor(c: ContainerRecord, image: ImageRecord, host: string): Promise<ContainerCreateRequest> {
    const intent = await this.networks.intent(c.config, c.projectId, { projectId: c.projectId });
    const linkNetworks = intent.mode === 'networks' ? intent.networks : [];
    const request = this.requestOf(c.config, image, c.name, await this.processFor(c.config, image, c.name, linkNetworks), intent, c.config.mounts ?? []);
    if (intent.mode === 'networks') await this.networks.ensureOnHost(intent.networks, host);
    request.network = await this.networks.lease(c, intent);
    return { id: c.id, ...request };
  }

  /** The part of a create after admission: the host, the record, then the agent's container (started too if asked). */
  private async createAdmitted(
    admitted: ContainerRecord,
    request: Omit<ContainerCreateRequest, 'id'>,
    admittedWarmId: string | undefined,
    intent: NetworkIntent,
    opts: CreateOptions,
    image: ImageRecord,
    placement: PlacementInput,
  ): Promise<ContainerRecord> {
    const { rec, warmId } = await this.place(admitted, admittedWarmId, intent, image, placement);
    const { record, patch } = await this.createRecordAndInstance(rec, request, warmId, intent, opts.start === true);
    if (!opts.start) return record;
    try {
      // what the create learnt (runtime, warnings) is written with the start: one row update, not two
      return await this.locked(rec.id, () => this.startLocked(rec.id, false, patch));
    } catch (e) {
      const err = toNimbusError(e);
      if (rec.config.autoRemove) await this.remove(rec.id, true).catch(() => undefined);
      else await this.writeCreatePatch(rec.id, patch);
      throw new NimbusError(err.code, err.message, { ...err.details, container: rec.id, removed: rec.config.autoRemove }, { cause: e });
    }
  }

  /**
   * The scheduler's host for an admitted container, with the image and the networks it needs
   * laid out there. On failure nothing is held: not the claim, the quota nor a warm container.
   */
  private async place(
    rec: ContainerRecord, warmId: string | undefined, intent: NetworkIntent, image: ImageRecord, placement: PlacementInput,
  ): Promise<{ rec: ContainerRecord; warmId: string | undefined }> {
    const local = this.hosts.localName;
    const runtime = rec.config.runtime;
    const req: PlacementRequest = {
      consumerId: rec.id, projectId: rec.projectId, kind: runtime === 'vm' ? 'secure-container' : 'container',
      vcpus: rec.config.cpus ?? 0, memoryBytes: rec.config.memoryBytes ?? 0, diskBytes: 0,
      ...(runtime && runtime !== 'vm' ? { runtime } : {}),
      ...(image.config.architecture ? { architecture: image.config.architecture } : {}),
      imageChainId: image.chainId,
      ...placementFields(placement),
    };
    let claimed = false;
    let warm = warmId;
    try {
      const { host } = await this.scheduler.place(req);
      claimed = true;
      this.agentOn(host); // a host the directory does not know: NotFound now, before anything is made there
      if (warm && host !== local) {
        void this.agentOn(local!).removeContainer(warm).catch(() => undefined);
        warm = undefined;
      }
      await this.images.ensureOnHost(image, host);
      if (intent.mode === 'networks') await this.networks.ensureOnHost(intent.networks, host);
      return { rec: { ...rec, host }, warmId: warm };
    } catch (e) {
      if (warm && local !== undefined) void this.agentOn(local).removeContainer(warm).catch(() => undefined);
      try {
        if (claimed) await this.scheduler.release(rec.id);
        await this.quota.release(rec.id, 'create failed');
      } catch (x) {
        log.error('cleaning up after a failed placement failed', { id: rec.id, error: String(x) });
      }
      throw e;
    }
  }

  /** After a failed start: keep what the create learnt (a failed write is logged; the start's error is the one thrown). */
  private async writeCreatePatch(id: string, patch: CreatePatch): Promise<void> {
    try {
      if (await this.store.containers.get(id)) await this.store.containers.update(id, patch);
    } catch (e) {
      log.warn('recording a created container failed', { id, error: String(e) });
    }
  }

  /** deferUpdate: the agent's answer (runtime, warnings) is returned as a patch for the caller to write, not written. */
  private async createRecordAndInstance(
    rec: ContainerRecord, request: Omit<ContainerCreateRequest, 'id'>, warmId: string | undefined, intent: NetworkIntent, deferUpdate = false,
  ): Promise<{ record: ContainerRecord; patch: CreatePatch }> {
    const id = rec.id;
    const agent = this.agentOf(rec);
    try {
      await this.store.containers.insert(rec);
    } catch (e) {
      await this.scheduler.release(id).catch((x: unknown) => log.warn('releasing a claim failed', { id, error: String(x) }));
      await this.quota.release(id, 'create failed');
      if (warmId) void agent.removeContainer(warmId).catch(() => undefined);
      throw e;
    }
    try {
      // addresses are leased with the record in place (deleting the record deletes them)
      request.network = await this.networks.lease(rec, intent);
      const created = await agent.createContainer({ id, ...request });
      // ports asked as 0 (-P, -p PORT) are recorded as the host chose them: what ps, port and inspect show
      const chosen = chosenPorts(rec.config.ports, created.ports);
      const patch: CreatePatch = { warnings: created.warnings, runtime: created.runtime, ...(chosen ? { config: { ...rec.config, ports: chosen } } : {}) };
      const record = deferUpdate ? { ...rec, ...patch } : await this.store.containers.update(id, patch);
      this.publish(record, 'create', { image: rec.config.image });
      return { record, patch };
    } catch (e) {
      // A failed create leaves nothing behind: not the record, not the agent's state, not the claim.
      await agent.removeContainer(id).catch(() => undefined);
      try {
        await this.store.containers.delete(id); // its address leases go with it
        this.networks.endpointsGone(id); // and other hosts' overlay entries for them
        await this.scheduler.release(id);
        await this.quota.release(id, 'create failed');
      } catch (x) {
        log.error('cleaning up after a failed container create failed', { id, error: String(x) });
      }
      throw e;
    }
  }

  async start(idOrName: string): Promise<ContainerRecord> {
    const c = await this.get(idOrName);
    return this.locked(c.id, () => this.startLocked(c.id, false));
  }

  private async startLocked(id: string, byRestartPolicy: boolean, alsoWrite: Partial<Omit<ContainerRecord, 'id'>> = {}): Promise<ContainerRecord> {
    let c = await this.store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    if (c.status === 'running' || c.status === 'paused') return c;
    assertTransition(c.name, c.status, 'running', 'start');
    // A container stopped by a quota reclaim gave its quota back: it runs again only if admitted again.
    if (this.quota.shared || !this.quota.holds(id)) await this.quota.admitContainerUnlessHeld(id, c.projectId, c.config);
    const state = await this.bounded(id, 'start', this.agentOf(c).startContainer(id));
    // Even if it already finished, record it as started: handleExit records the exit.
    c = await this.store.containers.update(id, {
      ...alsoWrite,
      status: 'running',
      pid: state.pid ?? null,
      // the host's time of the start, from the clock its exit time will come from (metering takes
      // the run as finishedAt - startedAt; ours, after the answer, was late by as much as a busy
      // event loop holds it: CI read a 6 s run as 5.1 s)
      startedAt: state.startedAt ?? new Date().toISOString(),
      finishedAt: null,
      exitCode: null,
      oomKilled: false,
      stoppedByUser: false,
      ...(byRestartPolicy ? { restartCount: c.restartCount + 1 } : {}),
    });
    this.publish(c, 'start', { pid: c.pid });
    // detached: handleExit takes this container's lock, which the caller holds
    if (state.status === 'stopped') this.handleExitDetached(id);
    return c;
  }

  async stop(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = await this.get(idOrName);
    await this.cancelRestart(c.id);
    return this.locked(c.id, () => this.stops.run(c.id, (signal) => this.stopLocked(c.id, timeoutSec, signal)));
  }

  /** The graceful stop, registered in this.stops: kill cuts its wait short, rm -f aborts it (signal). */
  private async stopLocked(id: string, timeoutSec: number | undefined, signal: AbortSignal): Promise<ContainerRecord> {
    let cur = await this.store.containers.get(id);
    if (!cur) throw new NotFound(`no such container: ${id}`);
    if (cur.status !== 'running' && cur.status !== 'paused' && cur.status !== 'restarting') return cur;
    cur = await this.store.containers.update(id, { stoppedByUser: true });
    // a record made before stopTimeout was bounded may hold more: the bound holds for it too
    const t = timeoutSec ?? Math.min(cur.config.stopTimeout ?? 10, MAX_STOP_TIMEOUT_SEC);
    const imageSignal = (await this.store.images.get(cur.imageDigest))?.config.config?.StopSignal;
    // its timeout, then the agent's SIGKILL and wait, within the usual deadline
    const agent = this.agentOf(cur);
    await this.bounded(id, 'stop', agent.stopContainer(id, t, cur.config.stopSignal ?? imageSignal), t * 1000, signal);
    const state = await this.bounded(id, 'state', agent.containerState(id), 0, signal);
    return this.recordExit(id, state);
  }

  /**
   * Signal the process. Not under the lifecycle lock: a graceful stop holding it must not delay a
   * kill (container-state.ts). During a stop, a process already gone is what the kill wanted, and
   * a SIGKILL answers once the stop has recorded the exit.
   */
  async kill(idOrName: string, signal = 'SIGKILL'): Promise<ContainerRecord> {
    const c = await this.get(idOrName);
    const stopping = this.stops.get(c.id);
    const cur = await this.store.containers.get(c.id);
    if (!cur) throw new NotFound(`no such container: ${c.id}`);
    if (!stopping && cur.status !== 'running' && cur.status !== 'paused') {
      throw new Conflict(`cannot kill container ${cur.name}: it is ${cur.status}`);
    }
    try {
      await this.bounded(c.id, 'kill', this.agentOf(cur).killContainer(c.id, signal));
    } catch (e) {
      if (!stopping || !(hasCode(e, 'Conflict') || hasCode(e, 'NotFound'))) throw e;
    }
    this.publish(cur, 'kill', { signal });
    if (stopping && /^(SIG)?KILL$|^9$/i.test(signal)) await this.bounded(c.id, 'stop', stopping.stopped);
    return (await this.store.containers.get(c.id)) ?? cur;
  }

  /** Stop then start, as one lifecycle operation: rm -f cancels it (no start after), kill only cuts its stop short. */
  async restart(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = await this.get(idOrName);
    await this.cancelRestart(c.id);
    return this.locked(c.id, () =>
      this.stops.run(c.id, async (signal, stopDone) => {
        await this.stopLocked(c.id, timeoutSec, signal);
        stopDone();
        if (signal.aborted) throw signal.reason as Error;
        return this.startLocked(c.id, false);
      }),
    );
  }

  async pause(idOrName: string): Promise<ContainerRecord> {
    const c = await this.get(idOrName);
    return this.locked(c.id, async () => {
      const cur = await this.current(c.id);
      assertTransition(cur.name, cur.status, 'paused', 'pause');
      if (cur.status === 'paused') return cur;
      await this.bounded(c.id, 'pause', this.agentOf(cur).pauseContainer(c.id));
      const next = await this.store.containers.update(c.id, { status: 'paused' });
      this.publish(next, 'pause');
      return next;
    });
  }

  async unpause(idOrName: string): Promise<ContainerRecord> {
    const c = await this.get(idOrName);
    return this.locked(c.id, async () => {
      const cur = await this.current(c.id);
      if (cur.status !== 'paused') throw new Conflict(`cannot unpause container ${cur.name}: it is ${cur.status}`);
      await this.bounded(c.id, 'unpause', this.agentOf(cur).unpauseContainer(c.id));
      const next = await this.store.containers.update(c.id, { status: 'running' });
      this.publish(next, 'unpause');
      return next;
    });
  }

  /**
   * A new name in its project (AlreadyExists when an instance there has it). DNS follows on every
   * host: its own host's endpoints answer the new name, the overlay's peers are pushed again.
   * The record changes first; if its host refuses, the old name comes back.
   */
  async rename(idOrName: string, to: string): Promise<ContainerRecord> {
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/.test(to)) throw new InvalidArgument(`invalid container name "${to.slice(0, 64)}": letters, digits, _ . - (not first), at most 128`);
    const c = await this.get(idOrName);
    return this.locked(c.id, async () => {
      const cur = await this.current(c.id);
      if (cur.name === to) return cur;
      const next = await this.store.containers.update(c.id, { name: to });
      try {
        await this.networks.renamed(next, cur.name);
      } catch (e) {
        await this.store.containers.update(c.id, { name: cur.name });
        throw e;
      }
      this.publish(next, 'rename', { oldName: cur.name });
      return next;
    });
  }

  /**
   * rm; with force, it preempts (container-state.ts): a pending restart is cancelled, a stop in
   * flight aborted and the process SIGKILLed at once, then the removal takes the lock.
   */
  async remove(idOrName: string, force: boolean, opts: { volumes?: boolean } = {}): Promise<void> {
    const c = await this.get(idOrName);
    await this.removeLocked(c, force, opts.volumes === true);
  }

  private async removeLocked(c: ContainerRecord, force: boolean, volumes: boolean): Promise<void> {
    await this.cancelRestart(c.id);
    if (force) {
      this.stops.abort(c.id, new Conflict(`container ${c.name} was removed (rm -f) while it stopped`, { container: c.id }));
      const cur = await this.store.containers.get(c.id);
      if (cur && (cur.status === 'running' || cur.status === 'paused')) {
        await this.bounded(c.id, 'kill', this.agentOf(cur).killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
    }
    return this.locked(c.id, async () => {
      const cur = await this.store.containers.get(c.id);
      if (!cur) return;
      if ((cur.status === 'running' || cur.status === 'paused' || cur.status === 'restarting') && !force) {
        throw new Conflict(`container ${cur.name} is ${cur.status}: stop it first or use --force`);
      }
      await this.store.containers.update(c.id, { status: 'removing' });
      const agent = this.agentOf(cur);
      if (cur.status === 'running' || cur.status === 'paused') {
        await this.bounded(c.id, 'kill', agent.killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
      await this.bounded(c.id, 'removal', agent.removeContainer(c.id));
      await this.store.containers.delete(c.id);
      await this.quota.release(c.id, 'container removed');
      await this.releaseClaim(c.id);
      // rm -v, and --rm (as dockerd): its anonymous volumes go too, unless another container uses
      // them; before the destroy event, which is what `run --rm` waits for
      if (this.volumes && (volumes || cur.config.autoRemove)) {
        await this.volumes.removeAnonymous(mountsOf(cur).flatMap((m) => (m.type === 'volume' && m.anonymous ? [m.volumeId] : [])), cur.projectId);
      }
      this.publish(cur, 'destroy');
    });
  }

  /**
   * Docker's wait conditions: "not-running" resolves once the container has
   * exited; "removed" once it is also gone (what `run --rm` waits for).
   */
  async wait(idOrName: string, condition: 'not-running' | 'removed' = 'not-running', signal?: AbortSignal): Promise<{ exitCode: number; oomKilled: boolean }> {
    const c = await this.get(idOrName);
    let last: { exitCode: number; oomKilled: boolean } | undefined;
    const settled = (r: ContainerRecord) => ({ exitCode: r.exitCode ?? -1, oomKilled: r.oomKilled });
    return new Promise((resolve, reject) => {
      const check = async () => {
        const r = await this.store.containers.get(c.id);
        if (r && (r.status === 'exited' || r.status === 'dead') && r.exitCode !== null) last = settled(r);
        const done = condition === 'removed' ? !r : !r || r.status === 'exited' || r.status === 'dead';
        if (done) {
          off();
          resolve(last ?? (r ? settled(r) : { exitCode: -1, oomKilled: false }));
        }
      };
      // one read at a time, in event order: `last` is the exit seen before the removal
      let checks = Promise.resolve();
      const recheck = () => {
        checks = checks.then(check).catch((e: unknown) => {
          off();
          reject(e as Error);
        });
      };
      const off = this.events.on((e) => {
        if (e.type !== 'container' || e.id !== c.id || (e.action !== 'die' && e.action !== 'destroy')) return;
        // the exit as the event carries it: with --rm the record may be gone by the time a read runs
        const a = e.attributes ?? {};
        if (e.action === 'die' && typeof a.exitCode === 'number') last = { exitCode: a.exitCode, oomKilled: a.oomKilled === true };
        recheck();
      });
      signal?.addEventListener('abort', () => {
        off();
        reject(new Error('aborted'));
      });
      recheck();
    });
  }

  async logs(idOrName: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): Promise<AsyncIterable<LogRecord>> {
    const c = await this.get(idOrName);
    return this.agentOf(c).containerLogs(c.id, opts);
  }

  async exec(idOrName: string, req: ExecRequest): Promise<ExecSession> {
    const c = await this.get(idOrName);
    if (c.status !== 'running') throw new Conflict(`container ${c.name} is ${c.status}; exec needs it running`);
    if (!req.args.length) throw new InvalidArgument('exec needs a command');
    this.publish(c, 'exec', { args: req.args, ...(req.tty ? { tty: true } : {}) });
    return this.agentOf(c).execInContainer(c.id, req);
  }

  /**
   * Attach to its main process on its host: the output from now on and, with `stdin`, its input
   * (Conflict when it was made without an open stdin). A created container can be attached before
   * its start (docker run attaches first); an exited one has no process to attach to.
   */
  async attach(idOrName: string, req: AttachRequest): Promise<AttachSession> {
    const c = await this.get(idOrName);
    if (req.stdin && !c.config.openStdin) throw new Conflict(`container ${c.name} was created without an open stdin (docker run -i)`);
    if (c.status !== 'created' && c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is ${c.status}; attach needs it created or running`);
    return this.agentOf(c).attachContainer(c.id, req);
  }

  /** Its main process's terminal's new size (Conflict for a container without -t). */
  async resize(idOrName: string, rows: number, cols: number): Promise<void> {
    const c = await this.get(idOrName);
    if (!c.config.tty) throw new Conflict(`container ${c.name} has no terminal (docker run -t)`);
    const bad = badTerminalSize(rows, cols);
    if (bad) throw new InvalidArgument(bad);
    if (c.status !== 'created' && c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is not running`);
    await this.agentOf(c).resizeContainer(c.id, rows, cols);
  }

  /** Its processes as `ps -ef` shows them, from its host (running or paused containers). */
  async top(idOrName: string): Promise<ProcessTable> {
    const c = await this.get(idOrName);
    if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is not running`);
    return this.agentOf(c).containerTop(c.id);
  }

  /** docker cp: a path's stat in the container, running or not, from its host (which resolves it inside the rootfs). */
  async pathStat(idOrName: string, path: string): Promise<ContainerPathStat> {
    const c = await this.get(idOrName);
    return this.agentOf(c).containerPathStat(c.id, path);
  }

  /** docker cp out: the path as a tar stream and its stat; the caller consumes or destroys the stream. */
  async readArchive(idOrName: string, path: string): Promise<{ stat: ContainerPathStat; bytes: Readable }> {
    const c = await this.get(idOrName);
    return this.agentOf(c).readContainerArchive(c.id, path);
  }

  /**
   * docker export: the container's whole filesystem as its processes see it (its image's layers
   * and its writable layer merged; what is mounted on it, volumes and the like, not) as one flat
   * tar, running (frozen while its tree is walked) or stopped: docker cp's read of "/" on its host.
   */
  async exportFs(idOrName: string): Promise<Readable> {
    return (await this.readArchive(idOrName, '/')).bytes;
  }

  /** docker cp in: the tar extracted under the directory path, into the container's writable layer. */
  async writeArchive(idOrName: string, path: string, opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean }, bytes: AsyncIterable<Uint8Array>): Promise<ContainerArchiveResult> {
    const c = await this.get(idOrName);
    return this.agentOf(c).writeContainerArchive(c.id, path, opts, bytes);
  }

  async stats(idOrName: string): Promise<InstanceStats & { id: string; name: string }> {
    const c = await this.get(idOrName);
    if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is ${c.status}; no stats`);
    return { id: c.id, name: c.name, ...(await this.agentOf(c).containerStats(c.id)) };
  }

  private async current(id: string): Promise<ContainerRecord> {
    const c = await this.store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    return c;
  }

  private async recordExit(id: string, state: RuntimeState): Promise<ContainerRecord> {
    const cur = await this.current(id);
    if (cur.status === 'exited' && cur.exitCode !== null) return cur;
    const next = await this.store.containers.update(id, {
      status: 'exited',
      pid: null,
      exitCode: state.exitCode ?? cur.exitCode ?? 255,
      oomKilled: state.oomKilled ?? false,
      finishedAt: state.finishedAt ?? new Date().toISOString(),
    });
    this.publish(next, 'die', { exitCode: next.exitCode, oomKilled: next.oomKilled });
    return next;
  }

  /** The agent of `from` (absent: the container's own) saw the process exit: record it, then apply the restart policy. */
  async handleExit(id: string, from?: string): Promise<void> {
    const cur = await this.store.containers.get(id);
    if (!cur || cur.status === 'removing') return;
    // another host's report of an id it does not hold for us (its own stale state) is not this container's exit
    if (from !== undefined && from !== cur.host) return;
    const agent = this.agentOf(cur);
    let state: RuntimeState;
    try {
      state = await agent.containerState(id);
    } catch (e) {
      if (hasCode(e, 'NotFound')) return;
      throw e;
    }
    if (state.status !== 'stopped') return;
    const rec = await this.locked(id, async () => {
      const now = await this.store.containers.get(id);
      // an exit from a host the container has left (a move) is not its exit
      if (!now || now.status === 'removing' || now.host !== cur.host) return undefined;
      // An exit older than the last start may be the previous run's (a restart held the lock
      // meanwhile): ask again. (A fast exit's time, the exit file's mtime on the file system's coarse clock, can also read before startedAt.)
      if (now.status === 'running' && now.startedAt && state.finishedAt && state.finishedAt < now.startedAt) {
        const fresh = await this.bounded(id, 'state', agent.containerState(id));
        return fresh.status === 'stopped' ? this.recordExit(id, fresh) : undefined;
      }
      return this.recordExit(id, state);
    });
    if (!rec) return;
    if (rec.config.autoRemove) {
      await this.remove(id, true).catch((e: unknown) => log.warn('auto-remove failed', { id, error: String(e) }));
      return;
    }
    await this.maybeRestart(rec);
  }

  private async maybeRestart(c: ContainerRecord): Promise<void> {
    const p = c.config.restart;
    if (c.stoppedByUser || p.name === 'no') return;
    if (p.name === 'on-failure') {
      if (c.exitCode === 0) return;
      if (p.maxRetries !== undefined && p.maxRetries > 0 && c.restartCount >= p.maxRetries) return;
    }
    const delay = RESTART_BACKOFF_MS[Math.min(c.restartCount, RESTART_BACKOFF_MS.length - 1)]!;
    // The timer is registered before the status is written, so a stop or rm from now on cancels it.
    const timer = setTimeout(() => {
      this.restartTimers.delete(c.id);
      void this.locked(c.id, async () => {
        const now = await this.store.containers.get(c.id);
        if (!now || now.status !== 'restarting') return;
        await this.startLocked(c.id, true);
      }).catch(async (e: unknown) => {
        log.warn('restart failed', { id: c.id, error: String(e) });
        await this.settleRestarting(c.id);
      }).catch((e: unknown) => log.warn('recording a failed restart failed', { id: c.id, error: String(e) }));
    }, delay);
    timer.unref();
    this.restartTimers.set(c.id, timer);
    await this.store.containers.update(c.id, { status: 'restarting' });
    // cancelled while the status was written: the canceller may have read the status before it
    if (this.restartTimers.get(c.id) !== timer) await this.settleRestarting(c.id);
    else this.publish(c, 'restarting', { delayMs: delay });
  }

  /** A restart that will not happen: a container left restarting is exited. */
  private async settleRestarting(id: string): Promise<void> {
    const now = await this.store.containers.get(id);
    if (now?.status === 'restarting') await this.store.containers.update(id, { status: 'exited' });
  }

  private async cancelRestart(id: string): Promise<void> {
    const t = this.restartTimers.get(id);
    if (t) {
      // the timer first, at once: nothing may start the container from here on
      clearTimeout(t);
      this.restartTimers.delete(id);
      await this.settleRestarting(id);
    }
  }

  /** The scheduler's claim given back; a failure is logged (the scheduler's own reconcile finds claims without an instance). */
  /**
   * A create whose replica died between writing the record and the host making the container:
   * the record is still 'created' and its host does not know it. Undone as a failed create is
   * (record, quota, claim). True when it was; a container its host has, or one that moved on, is
   * left alone.
   */
  async settleUncreated(id: string): Promise<boolean> {
    return this.locked(id, async () => {
      const c = await this.store.containers.get(id);
      if (!c || c.status !== 'created') return false;
      const onHost = await withDeadline(this.agentOf(c).listContainers(), HOST_RECONCILE_MS, `host ${c.host}'s container list`);
      if (onHost.includes(id)) return false;
      await this.store.containers.delete(id);
      await this.releaseClaim(id);
      await this.quota.release(id, 'create abandoned: its control-plane replica died');
      this.publish(c, 'destroy', { reason: 'create abandoned' });
      log.warn('a dead replica\'s half-made container removed', { id, name: c.name, host: c.host });
      return true;
    });
  }

  private async releaseClaim(id: string): Promise<void> {
    await this.scheduler.release(id).catch((e: unknown) => log.warn('releasing a placement claim failed', { id, error: String(e) }));
  }

  /**
   * Daemon start: each host brings the store and itself into agreement (reconcileHost), the
   * embedded one first and at once, the others in parallel within HOST_RECONCILE_MS. A host that
   * does not answer is left alone: its containers keep their records and show "unknown".
   */
  async reconcile(): Promise<{ running: number; exited: number; orphansRemoved: number; lost: number; unreachableHosts: string[] }> {
    const total = { running: 0, exited: 0, orphansRemoved: 0, lost: 0, unreachableHosts: [] as string[] };
    const add = (r: Awaited<ReturnType<ContainerService['reconcileHost']>>) => {
      total.running += r.running;
      total.exited += r.exited;
      total.orphansRemoved += r.orphansRemoved;
      total.lost += r.lost;
    };
    const local = this.hosts.localName;
    if (local !== undefined) add(await this.reconcileHost(local));
    await Promise.all(this.hosts.names().filter((h) => h !== local).map(async (host) => {
      try {
        add(await withDeadline(this.reconcileHost(host), HOST_RECONCILE_MS, `reconciling the containers of host ${host}`));
      } catch (e) {
        this.unreachable.add(host);
        total.unreachableHosts.push(host);
        log.warn('a host did not reconcile its containers; they keep their records', { host, error: String(e) });
      }
    }));
    // records naming a host no agent serves any more (removed while they lived): unknown, never guessed exited
    for (const c of await this.store.containers.list()) {
      if (!this.hosts.has(c.host) && !total.unreachableHosts.includes(c.host)) total.unreachableHosts.push(c.host);
    }
    return total;
  }

  /**
   * One host: containers it still runs stay running; those that exited meanwhile get their
   * exit code; those it lost are exited; state it has that the store does not know is removed.
   */
  async reconcileHost(host: string): Promise<{ running: number; exited: number; orphansRemoved: number; lost: number }> {
    const agent = this.agentOn(host);
    const onHost = new Set(await agent.listContainers());
    this.unreachable.delete(host);
    let running = 0, exited = 0, lost = 0, orphansRemoved = 0;
    for (const c of await this.store.containers.onHost(host)) {
      if (c.status === 'removing') {
        await agent.removeContainer(c.id).catch(() => undefined);
        await this.store.containers.delete(c.id);
        await this.quota.release(c.id, 'container removed');
        await this.releaseClaim(c.id);
        continue;
      }
      if (!onHost.has(c.id)) {
        if (c.status !== 'exited' && c.status !== 'created') {
          await this.store.containers.update(c.id, { status: 'exited', exitCode: c.exitCode ?? 255, pid: null, finishedAt: c.finishedAt ?? new Date().toISOString() });
          lost++;
        }
        continue;
      }
      onHost.delete(c.id);
      const state = await agent.containerState(c.id).catch(() => ({ status: 'unknown' }) as RuntimeState);
      if (state.status === 'running' || state.status === 'paused') {
        await this.store.containers.update(c.id, { status: state.status, pid: state.pid ?? c.pid });
        running++;
      } else if (state.status === 'stopped' && c.status !== 'exited') {
        const rec = await this.recordExit(c.id, state);
        exited++;
        if (rec.config.autoRemove) await this.remove(c.id, true).catch(() => undefined);
        else await this.maybeRestart(rec);
      } else if (state.status === 'stopped' && c.status === 'exited' && c.config.restart.name === 'always' && !c.stoppedByUser) {
        await this.maybeRestart(c);
      }
    }
    for (const orphan of onHost) {
      log.warn('removing orphaned container state', { id: orphan, host });
      await agent.removeContainer(orphan).catch((e: unknown) => log.warn('orphan removal failed', { id: orphan, host, error: String(e) }));
      orphansRemoved++;
    }
    return { running, exited, orphansRemoved, lost };
  }

  /** Move it to another host, cold (container-move.ts): checked now, then an Operation (container.move). */
  async startMove(idOrName: string, opts: MoveOptions = {}): Promise<OperationRecord> {
    return startMove(this.moveDeps(), await this.get(idOrName), opts);
  }

  /** The move itself, waited for (an evacuation, tests; the API starts an Operation). Without `to`: the scheduler's choice. */
  async move(id: string, to?: string, opts: { live?: boolean } = {}): Promise<MoveReport> {
    const deps = this.moveDeps();
    return moveContainer(deps, id, to ?? (await chooseDestination(deps, await this.get(id), undefined)), undefined, opts);
  }

  /**
   * Where an evacuation would send it (the scheduler's pick) and whether live (CRIU) is possible
   * there: the container's own rules and both hosts' (live-move-rules.ts); `notLive` says why not.
   */
  async planMove(id: string): Promise<{ to: string; live: boolean; notLive?: string }> {
    const deps = this.moveDeps();
    const c = await this.get(id);
    const to = await chooseDestination(deps, c, undefined);
    const refusal = liveMoveRefusal(c)
      ?? (await checkLiveHosts([{ name: c.host, agent: this.agentOn(c.host) }, { name: to, agent: this.agentOn(to) }]).then(() => undefined, (e: unknown) => toNimbusError(e)));
    return refusal ? { to, live: false, notLive: refusal.message } : { to, live: true };
  }

  /**
   * An evacuation's move: live where possible, cold otherwise (issue 15). A live move CRIU refuses
   * (an established connection) rolls back at the source, running; it then moves cold.
   */
  async moveForEvacuation(id: string): Promise<{ report: MoveReport; live: boolean; notLive?: string }> {
    const plan = await this.planMove(id);
    if (plan.live) {
      try {
        return { report: await this.move(id, plan.to, { live: true }), live: true };
      } catch (e) {
        const c = await this.store.containers.get(id);
        if (!c || c.host === plan.to) throw e; // it is not at the source: nothing for a cold move to do
        plan.notLive = `the live move failed: ${toNimbusError(e).message}`;
      }
    }
    return { report: await this.move(id, plan.to), live: false, ...(plan.notLive ? { notLive: plan.notLive } : {}) };
  }

  /** What healing (healing.ts) needs of this service: what a move does, and the request rebuilt from a record. */
  healDeps(): HealDeps {
    const m = this.moveDeps();
    return {
      store: m.store, hosts: m.hosts, scheduler: m.scheduler, images: m.images, networks: m.networks, agentOn: m.agentOn, locked: m.locked,
      cancelRestart: m.cancelRestart, publish: m.publish, exitMaybe: m.exitMaybe, bounded: m.bounded,
      requestFor: (c, image, host) => this.requestFor(c, image, host),
    };
  }

  /** What the move needs of this service: its lock, stop and start, events and exits. */
  private moveDeps(): MoveDeps {
    return {
      store: this.store, hosts: this.hosts, scheduler: this.scheduler, images: this.images, networks: this.networks, operations: this.operations,
      agentOn: (host) => this.agentOn(host),
      locked: (id, fn) => this.locked(id, fn),
      cancelRestart: (id) => this.cancelRestart(id),
      stop: (id) => this.stops.run(id, (signal) => this.stopLocked(id, undefined, signal)),
      start: (id) => this.startLocked(id, false),
      publish: (c, action, attributes) => this.publish(c, action, attributes),
      exitMaybe: (id) => this.handleExitDetached(id),
      bounded: (id, op, p) => this.bounded(id, op, p),
    };
  }

  shutdown(): void {
    clearInterval(this.hostWatch);
    this.hostWatch = undefined;
    for (const t of this.restartTimers.values()) clearTimeout(t);
    this.restartTimers.clear();
  }
}
