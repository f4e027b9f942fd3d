/**
 * Containers as the control plane sees them: the record in the store and the service callers
 * use. Its parts, each in its own module, are wired here around what they share (the per-container
 * lock, bounded agent calls, events):
 *
 *   container-create-request.ts, container-create.ts  a create: checked, admitted, placed, made
 *   container-lifecycle.ts                            start, stop, kill, restart, pause, rename, rm, wait
 *   container-exits.ts                                exits recorded, restart policies applied
 *   container-agents.ts, container-reconcile.ts       the hosts' agents listened to; store and hosts agreeing
 *   container-agent-calls.ts                          logs, exec, attach, top, stats, cp: straight to the host
 *   container-move.ts, healing.ts                     a move to another host; a rebuild off a dead one
 */
import { InvalidArgument, NotFound, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { ContainerArchiveResult, ContainerCreateRequest, ContainerPathStat, LayerUsage, ProcessTable } from '../../agent/agent.js';
import type { Readable } from 'node:stream';
import type { AttachRequest, AttachSession, ExecRequest, ExecSession, InstanceStats, LogRecord } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, ContainerStatus, ImageRecord, OperationRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { ImageService } from '../images/image-service.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { OperationService } from '../operations/operations.js';
import type { NetworkService } from '../networks/network-service.js';
import { withDeadline } from './deadline.js';
import type { HostAgents } from './hosts.js';
import type { Scheduler } from '../scheduler/types.js';
import type { VolumeService } from '../volumes/volume-service.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { chooseDestination, moveContainer, startMove, type MoveDeps, type MoveOptions, type MoveReport } from './container-move.js';
import { checkLiveHosts, liveMoveRefusal } from './live-move-rules.js';
import type { HealDeps } from './healing.js';
import { ContainerAgents, type ContainerView } from './container-agents.js';
import { ContainerAgentCalls } from './container-agent-calls.js';
import { ContainerCreates, type CreateRequested } from './container-create.js';
import { requestFor, type CreateContainerInput, type CreateOptions } from './container-create-request.js';
import { ContainerExits } from './container-exits.js';
import { ContainerLifecycle } from './container-lifecycle.js';
import { reconcile, reconcileHost, settleUncreated, type HostReconcile, type ReconcileDeps } from './container-reconcile.js';

export type { ContainerView } from './container-agents.js';
export type { CreateContainerInput, CreateOptions } from './container-create-request.js';

const log = logger('compute');
const EVERYWHERE: ProjectScope = { canRead: () => true };
/**
 * How long one agent call under a container's lifecycle lock may take (a stop: its timeout more).
 * Covers the slowest honest one: a start after exit deletes and re-creates the runtime container
 * (conmon's own bound on `runc create` is 30 s).
 */
const AGENT_DEADLINE_MS = 120_000;

export interface ContainerServiceOptions {
  /** Override AGENT_DEADLINE_MS (tests). */
  agentDeadlineMs?: number;
  /**
   * Whether this process records exits and applies restart policies (every replica hears every
   * host's exits; only the leader acts on them, so a container is restarted once). Default: always.
   */
  handlesExits?: () => boolean;
  /**
   * What a container created without a memory size is limited to and charged in a project whose
   * memory is limited and that sets no default of its own (NimbusOptions.containerMemoryDefaultBytes;
   * QuotaService.unsizedContainerMemory); absent or 0: nothing unless a project sets one.
   */
  memoryDefaultBytes?: number;
  /**
   * What the writable layer of a container created without a storage size may hold, and is
   * charged to the disk quota, in a project whose disk is limited (NimbusOptions.
   * containerStorageDefaultBytes; QuotaService.unsizedContainerStorage); absent or 0: unbounded.
   */
  storageDefaultBytes?: number;
}

export class ContainerService {
  /** Serialises lifecycle calls per container so concurrent requests cannot interleave (kill excepted: container-state.ts). */
  private readonly locks = new KeyedLock();
  /** Named volumes (set by the daemon): mounts are resolved through it; absent, a create with mounts is refused. */
  private volumes: VolumeService | undefined;

  private readonly agents: ContainerAgents;
  private readonly exits: ContainerExits;
  private readonly lifecycle: ContainerLifecycle;
  private readonly creates: ContainerCreates;
  private readonly calls: ContainerAgentCalls;
  private readonly reconciling: ReconcileDeps;
  /** What a move (container-move.ts) and healing (healing.ts) need of this service: its lock, stop and start, events and exits. */
  private readonly moving: MoveDeps;

  constructor(
    private readonly store: Store,
    hosts: HostAgents,
    private readonly scheduler: Scheduler,
    images: ImageService,
    private readonly events: EventBus,
    quota: QuotaService,
    operations: OperationService,
    private readonly networks: NetworkService,
    private readonly opts: ContainerServiceOptions = {},
  ) {
    // what every part shares: the record, the agent of its host, the lock, bounded calls, events
    const shared = {
      store,
      get: (idOrName: string, scope?: ProjectScope) => this.get(idOrName, scope),
      current: (id: string) => this.current(id),
      agentOn: (host: string) => this.agents.on(host),
      agentOf: (c: { host: string }) => this.agents.on(c.host),
      locked: <T>(id: string, fn: () => Promise<T>) => this.locked(id, fn),
      bounded: <T>(id: string, op: string, p: Promise<T>, extraMs?: number, signal?: AbortSignal) => this.bounded(id, op, p, extraMs, signal),
      publish: (c: ContainerRecord, action: string, attributes?: Record<string, unknown>) => this.publish(c, action, attributes),
      volumes: () => this.volumes,
      releaseClaim: (id: string) => this.releaseClaim(id),
      remove: (id: string) => this.remove(id, true),
    };
    this.agents = new ContainerAgents(hosts, store, (id, host) => this.exits.handleExitDetached(id, host));
    this.exits = new ContainerExits({
      ...shared,
      startByPolicy: (id) => this.lifecycle.startLocked(id, true),
      handlesExits: opts.handlesExits,
    });
    this.lifecycle = new ContainerLifecycle({ ...shared, events, quota, networks, exits: this.exits });
    this.creates = new ContainerCreates({
      ...shared, hosts, scheduler, images, networks, quota, operations,
      defaultMemoryBytes: (projectId) => quota.unsizedContainerMemory(projectId, opts.memoryDefaultBytes ?? 0),
      defaultStorageBytes: (projectId) => quota.unsizedContainerStorage(projectId, opts.storageDefaultBytes ?? 0),
      startLocked: (id, alsoWrite) => this.lifecycle.startLocked(id, false, alsoWrite),
    });
    this.calls = new ContainerAgentCalls(shared);
    this.reconciling = { ...shared, hosts, quota, agents: this.agents, exits: this.exits };
    this.moving = {
      ...shared, hosts, scheduler, images, networks, operations,
      cancelRestart: (id) => this.exits.cancelRestart(id),
      stop: (id) => this.lifecycle.stopLocked(id),
      start: (id) => this.lifecycle.startLocked(id, false),
      exitMaybe: (id) => this.exits.handleExitDetached(id),
    };
  }

  /** The daemon's volume service: containers' mounts name its volumes (and run on their host). */
  useVolumes(volumes: VolumeService): void {
    this.volumes = volumes;
  }

  /** Exits from every host, those registered (again) later included (container-agents.ts). */
  watchHosts(everyMs = 5000): void {
    this.agents.watch(everyMs);
  }

  /** As listings and inspect show it: "unknown" while its host does not answer (container-agents.ts). */
  view(c: ContainerRecord): ContainerView {
    return this.agents.view(c);
  }

  /** An agent call for container id, bounded: a hung agent answers Unavailable instead of holding the lock for ever. */
  private bounded<T>(id: string, op: string, p: Promise<T>, extraMs = 0, signal?: AbortSignal): Promise<T> {
    return withDeadline(p, (this.opts.agentDeadlineMs ?? AGENT_DEADLINE_MS) + extraMs, `the agent's ${op} of container ${id.slice(0, 12)}`, signal);
  }

  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  /** As Docker does: the container's labels, its image and name, then what the action adds (`docker events --filter label=…` matches them). */
  private publish(c: ContainerRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'container', action, id: c.id, projectId: c.projectId, attributes: { ...c.config.labels, image: c.config.image, name: c.name, ...attributes } });
  }

  /** The scheduler's claim given back; a failure is logged (the scheduler's own reconcile finds claims without an instance). */
  private async releaseClaim(id: string): Promise<void> {
    await this.scheduler.release(id).catch((e: unknown) => log.warn('releasing a placement claim failed', { id, error: String(e) }));
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

  private async current(id: string): Promise<ContainerRecord> {
    const c = await this.store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    return c;
  }

  list(opts: { all?: boolean; projectId?: string } = {}): Promise<ContainerRecord[]> {
    return this.store.containers.list({
      ...(opts.projectId ? { projectId: opts.projectId } : {}),
      ...(opts.all ? {} : { status: ['running', 'paused', 'restarting'] as ContainerStatus[] }),
    });
  }

  // Creates (container-create.ts).

  /** Create, waiting through a reclaim if one is needed. `imageScope`: where the image is looked up (by default the project's own images). */
  async create(input: CreateContainerInput, projectId: string, imageScope: ProjectScope = { projectId }, opts: CreateOptions = {}): Promise<ContainerRecord> {
    const r = await this.requestCreate(input, projectId, imageScope, opts);
    return 'container' in r ? r.container : r.finished;
  }

  /** Create now when the quota admits it, else an Operation (container.create) that creates it after a reclaim. */
  requestCreate(input: CreateContainerInput, projectId: string, imageScope: ProjectScope = { projectId }, opts: CreateOptions = {}): Promise<CreateRequested> {
    return this.creates.request(input, projectId, imageScope, opts);
  }

  /** The create request of an existing container, from its record, for `host` (container-create-request.ts). */
  requestFor(c: ContainerRecord, image: ImageRecord, host: string): Promise<ContainerCreateRequest> {
    return requestFor({ store: this.store, networks: this.networks }, c, image, host);
  }

  // The lifecycle (container-lifecycle.ts).

  start(idOrName: string): Promise<ContainerRecord> {
    return this.lifecycle.start(idOrName);
  }

  stop(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    return this.lifecycle.stop(idOrName, timeoutSec);
  }

  kill(idOrName: string, signal?: string): Promise<ContainerRecord> {
    return this.lifecycle.kill(idOrName, signal);
  }

  restart(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    return this.lifecycle.restart(idOrName, timeoutSec);
  }

  pause(idOrName: string): Promise<ContainerRecord> {
    return this.lifecycle.pause(idOrName);
  }

  unpause(idOrName: string): Promise<ContainerRecord> {
    return this.lifecycle.unpause(idOrName);
  }

  rename(idOrName: string, to: string): Promise<ContainerRecord> {
    return this.lifecycle.rename(idOrName, to);
  }

  remove(idOrName: string, force: boolean, opts: { volumes?: boolean } = {}): Promise<void> {
    return this.lifecycle.remove(idOrName, force, opts);
  }

  wait(idOrName: string, condition?: 'not-running' | 'removed', signal?: AbortSignal): Promise<{ exitCode: number; oomKilled: boolean }> {
    return this.lifecycle.wait(idOrName, condition, signal);
  }

  // Straight to the container's host (container-agent-calls.ts).

  logs(idOrName: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): Promise<AsyncIterable<LogRecord>> {
    return this.calls.logs(idOrName, opts);
  }

  exec(idOrName: string, req: ExecRequest): Promise<ExecSession> {
    return this.calls.exec(idOrName, req);
  }

  attach(idOrName: string, req: AttachRequest): Promise<AttachSession> {
    return this.calls.attach(idOrName, req);
  }

  resize(idOrName: string, rows: number, cols: number): Promise<void> {
    return this.calls.resize(idOrName, rows, cols);
  }

  top(idOrName: string): Promise<ProcessTable> {
    return this.calls.top(idOrName);
  }

  /** What these containers' writable layers hold, by id; those whose host did not answer are missing (container-agent-calls.ts). */
  layerUsage(containers: readonly Pick<ContainerRecord, 'id' | 'host'>[]): Promise<Map<string, LayerUsage>> {
    return this.calls.layerUsage(containers);
  }

  stats(idOrName: string): Promise<InstanceStats & { id: string; name: string }> {
    return this.calls.stats(idOrName);
  }

  /** Metering's counters: the current run's, or the last run's once it ended (container-agent-calls.ts). */
  runCounters(id: string): Promise<InstanceStats> {
    return this.calls.runCounters(id);
  }

  pathStat(idOrName: string, path: string): Promise<ContainerPathStat> {
    return this.calls.pathStat(idOrName, path);
  }

  readArchive(idOrName: string, path: string): Promise<{ stat: ContainerPathStat; bytes: Readable }> {
    return this.calls.readArchive(idOrName, path);
  }

  exportFs(idOrName: string): Promise<Readable> {
    return this.calls.exportFs(idOrName);
  }

  writeArchive(idOrName: string, path: string, opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean }, bytes: AsyncIterable<Uint8Array>): Promise<ContainerArchiveResult> {
    return this.calls.writeArchive(idOrName, path, opts, bytes);
  }

  // Exits and the hosts' agreement (container-exits.ts, container-reconcile.ts).

  /** The agent of `from` (absent: the container's own) saw the process exit: record it, then apply the restart policy. */
  handleExit(id: string, from?: string): Promise<void> {
    return this.exits.handleExit(id, from);
  }

  /** A create whose control-plane replica died half way, undone; true when it was (container-reconcile.ts). */
  settleUncreated(id: string): Promise<boolean> {
    return settleUncreated(this.reconciling, id);
  }

  /** Daemon start: every host and the store brought into agreement (container-reconcile.ts). */
  reconcile(): Promise<HostReconcile & { unreachableHosts: string[] }> {
    return reconcile(this.reconciling);
  }

  /** One host and the store brought into agreement (container-reconcile.ts). */
  reconcileHost(host: string): Promise<HostReconcile> {
    return reconcileHost(this.reconciling, host);
  }

  // Moves (container-move.ts) and healing (healing.ts).

  /** Move it to another host, cold (container-move.ts): checked now, then an Operation (container.move). */
  async startMove(idOrName: string, opts: MoveOptions = {}): Promise<OperationRecord> {
    return startMove(this.moving, await this.get(idOrName), opts);
  }

  /** The move itself, waited for (an evacuation, tests; the API starts an Operation). Without `to`: the scheduler's choice. */
  async move(id: string, to?: string, opts: { live?: boolean } = {}): Promise<MoveReport> {
    return moveContainer(this.moving, id, to ?? (await chooseDestination(this.moving, await this.get(id), undefined)), undefined, opts);
  }

  /**
   * Where an evacuation would send it (the scheduler's pick) and whether live (CRIU) is possible
   * there: the container's own rules and both hosts' (live-move-rules.ts); `notLive` says why not.
   */
  async planMove(id: string): Promise<{ to: string; live: boolean; notLive?: string }> {
    const c = await this.get(id);
    const to = await chooseDestination(this.moving, c, undefined);
    const refusal = liveMoveRefusal(c)
      ?? (await checkLiveHosts([{ name: c.host, agent: this.agents.on(c.host) }, { name: to, agent: this.agents.on(to) }]).then(() => undefined, (e: unknown) => toNimbusError(e)));
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
    const m = this.moving;
    return {
      store: m.store, hosts: m.hosts, scheduler: m.scheduler, images: m.images, networks: m.networks, agentOn: m.agentOn, locked: m.locked,
      cancelRestart: m.cancelRestart, publish: m.publish, exitMaybe: m.exitMaybe, bounded: m.bounded,
      requestFor: (c, image, host) => this.requestFor(c, image, host),
    };
  }

  shutdown(): void {
    this.agents.stopWatching();
    this.exits.cancelAll();
  }
}
