/**
 * Containers as the control plane sees them: the record in the store, the
 * state machine, restart supervision, and calls to the host's agent.
 */
import { Conflict, InvalidArgument, NimbusError, NotFound, hasCode, toNimbusError } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { logger } from '../../core/log.js';
import type { Agent, ContainerCreateRequest } from '../../agent/agent.js';
import type { ExecRequest, ExecSession, InstanceStats, LogRecord, RuntimeState } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerConfig, ContainerRecord, ContainerStatus, OperationRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { ImageService } from '../images/image-service.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { QuotaService } from '../quota/quota-service.js';
import type { OperationService } from '../operations/operations.js';
import type { NetworkIntent, NetworkService } from '../networks/network-service.js';
import { assertTransition, StopsInFlight } from './container-state.js';
import { checkHostname, checkIpv4, checkResources, checkStopTimeout } from './container-input.js';
import { withDeadline } from './deadline.js';
import { generateName } from './names.js';
import { checkProcess, processSpecFor } from './process-spec.js';

const log = logger('compute');
const EVERYWHERE: ProjectScope = { canRead: () => true };
const RESTART_BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 6400, 10_000];
/**
 * How long one agent call under a container's lifecycle lock may take (a stop: its timeout more).
 * Covers the slowest honest one: a start after exit deletes and re-creates the runtime container
 * (conmon's own bound on `runc create` is 30 s).
 */
const AGENT_DEADLINE_MS = 120_000;

export interface ContainerServiceOptions {
  /** Override AGENT_DEADLINE_MS (tests). */
  agentDeadlineMs?: number;
}

export interface CreateContainerInput extends ContainerConfig {
  name?: string;
}

export interface CreateOptions {
  /**
   * Start it too, in the same request (Incus's `"start": true`; `nimbus run -d`). A start that
   * fails leaves the container created, or removes it when it is autoRemove (as dockerd does),
   * and the error names it in details.container.
   */
  start?: boolean;
}

export class ContainerService {
  private readonly restartTimers = new Map<string, NodeJS.Timeout>();
  /** Serialises lifecycle calls per container so concurrent requests cannot interleave (kill excepted: container-state.ts). */
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Graceful stops holding a lock: what kill and rm -f preempt (container-state.ts). */
  private readonly stops = new StopsInFlight();

  /** "<project id>/<name>" of creates waiting for a reclaim: their names are taken. */
  private readonly pendingNames = new Set<string>();

  constructor(
    private readonly store: Store,
    private readonly agent: Agent,
    private readonly images: ImageService,
    private readonly events: EventBus,
    private readonly quota: QuotaService,
    private readonly operations: OperationService,
    private readonly networks: NetworkService,
    private readonly opts: ContainerServiceOptions = {},
  ) {
    agent.onContainerExit((id) => void this.handleExit(id));
  }

  /** An agent call for container id, bounded: a hung agent answers Unavailable instead of holding the lock for ever. */
  private bounded<T>(id: string, op: string, p: Promise<T>, extraMs = 0, signal?: AbortSignal): Promise<T> {
    return withDeadline(p, (this.opts.agentDeadlineMs ?? AGENT_DEADLINE_MS) + extraMs, `the agent's ${op} of container ${id.slice(0, 12)}`, signal);
  }

  private async locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(id, tail);
    void tail.then(() => {
      if (this.locks.get(id) === tail) this.locks.delete(id);
    });
    return next;
  }

  /** "org/team" for progress messages (ids mean nothing to a user). */
  private projectPath(id: string): string {
    const names: string[] = [];
    for (let p = this.store.projects.get(id); p; p = p.parentId ? this.store.projects.get(p.parentId) : undefined) names.unshift(p.name);
    return names.length ? names.join('/') : id;
  }

  private publish(c: ContainerRecord, action: string, attributes: Record<string, unknown> = {}) {
    this.events.publish({ type: 'container', action, id: c.id, projectId: c.projectId, attributes: { name: c.name, ...attributes } });
  }

  /**
   * By full id, name or unique id prefix, looked up in `scope` (by default everywhere: internal
   * callers pass ids; the API edge passes the caller's scope and hands handlers the full id).
   * Names are unique per project, so other projects' containers neither match nor make it ambiguous.
   */
  get(idOrName: string, scope: ProjectScope = EVERYWHERE): ContainerRecord {
    if (!idOrName) throw new InvalidArgument('a container id or name is required');
    const exact = this.store.containers.get(idOrName);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = this.store.containers.named(idOrName).filter((c) => inScope(scope, c.projectId));
    if (named.length) return pickInScope(named, scope, (c) => c.id, 'container', idOrName);
    // A prefix shared by containers of two projects is ambiguous: no default project wins it.
    const prefixScope: ProjectScope = 'projectId' in scope ? scope : { canRead: scope.canRead };
    return pickInScope(this.store.containers.withIdPrefix(idOrName), prefixScope, (c) => c.id, 'container', idOrName);
  }

  list(opts: { all?: boolean; projectId?: string } = {}): ContainerRecord[] {
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
    const image = this.images.resolve(input.image, imageScope);
    if (input.name !== undefined && !isValidName(input.name)) {
      throw new InvalidArgument(`invalid container name "${input.name}": use letters, digits, '_', '.', '-' (max 128)`);
    }
    // Names are per project; a VM of the same project and name counts too (instances are one resource).
    const taken = (n: string) =>
      this.store.containers.byName(projectId, n) !== undefined || this.pendingNames.has(`${projectId}/${n}`) || this.store.vms.byName(n)?.projectId === projectId;
    if (input.name && taken(input.name)) {
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
    const { name: requestedName, ...asked } = input;
    if (input.runtime === 'vm' && asked.network === undefined) asked.network = 'none'; // microVMs have no network yet
    // Network settings are checked before anything is made; addresses are leased once the record exists.
    const links = (asked.links ?? []).map((l) => {
      const t = this.get(l.container, { projectId });
      if (t.status !== 'running') throw new Conflict(`cannot link to ${t.name}: it is ${t.status}`);
      return { container: t.id, alias: l.alias };
    });
    const config = { ...asked, ...(links.length ? { links } : {}) };
    const intent: NetworkIntent = await this.networks.intent(config, projectId, { projectId });
    if (links.length && intent.mode !== 'networks') throw new InvalidArgument('--link needs a network (not none, host or container:)');
    const linkNetworks = intent.mode === 'networks' ? intent.networks : [];
    for (const l of links) {
      const shares = this.store.networks.leases({ instanceId: l.container }).some((x) => linkNetworks.some((n) => n.id === x.networkId));
      if (!shares) throw new InvalidArgument(`cannot link to ${this.store.containers.get(l.container)?.name}: it is not on the same network`);
    }
    const name = requestedName ?? generateName(taken);
    const linkEnv = this.networks.linkEnv({ name }, links, linkNetworks, (t) => Object.keys(this.store.images.get(t.imageDigest)?.config.config?.ExposedPorts ?? {}));
    const process = processSpecFor(image.config, linkEnv.length ? { ...config, env: [...linkEnv, ...config.env] } : config);
    // before a warm container is claimed or a cold one made: both paths give the same answer
    checkProcess(process);
    const request: Omit<ContainerCreateRequest, 'id'> = {
      name: '', imageChainId: image.chainId, process,
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
    };
    request.name = name;
    // A container the agent created ahead of demand becomes this one, id and all.
    const warmId = this.agent.claimWarmContainer(request);
    const id = warmId ?? newId();
    const now = new Date().toISOString();
    const rec: ContainerRecord = {
      id, name, projectId, imageDigest: image.digest, config: { ...config, image: input.image },
      status: 'created', runtime: config.runtime ?? 'auto', pid: null, exitCode: null, oomKilled: false,
      restartCount: 0, stoppedByUser: false, createdAt: now, startedAt: null, finishedAt: null, warnings: [],
    };
    const dropWarm = () => {
      if (warmId) void this.agent.removeContainer(warmId).catch(() => undefined);
    };
    // Admission first: a refused request leaves nothing behind.
    let admission: ReturnType<QuotaService['admitContainerOrPlanReclaim']>;
    try {
      admission = this.quota.admitContainerOrPlanReclaim(id, projectId, rec.config);
    } catch (e) {
      dropWarm();
      throw e;
    }
    if ('decision' in admission) return { container: await this.createAdmitted(rec, request, warmId, intent, opts) };

    const { reclaim, done } = admission;
    const held = `${projectId}/${name}`;
    this.pendingNames.add(held);
    const deadline = Math.max(...reclaim.plan.map((v) => v.deadline));
    const progress = {
      phase: 'reclaim',
      reclaim: reclaim.id,
      instances: reclaim.plan.length,
      projects: [...new Set(reclaim.plan.map((v) => this.projectPath(v.project)))],
      graceSeconds: Math.max(0, Math.ceil((deadline - Date.now()) / 1000)),
      deadline: new Date(deadline).toISOString(),
    };
    let finished!: Promise<ContainerRecord>;
    const operation = this.operations.start('container.create', name, projectId, (op) => {
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
        return this.createAdmitted(rec, request, warmId, intent, opts);
      })();
      return finished;
    });
    return { operation, finished };
  }

  /** The part of a create after admission: the record, then the agent's container (started too if asked). */
  private async createAdmitted(
    rec: ContainerRecord,
    request: Omit<ContainerCreateRequest, 'id'>,
    warmId: string | undefined,
    intent: NetworkIntent,
    opts: CreateOptions,
  ): Promise<ContainerRecord> {
    const { record, patch } = await this.createRecordAndInstance(rec, request, warmId, intent, opts.start === true);
    if (!opts.start) return record;
    try {
      // what the create learnt (runtime, warnings) is written with the start: one row update, not two
      return await this.locked(rec.id, () => this.startLocked(rec.id, false, patch));
    } catch (e) {
      const err = toNimbusError(e);
      if (rec.config.autoRemove) await this.remove(rec.id, true).catch(() => undefined);
      else if (this.store.containers.get(rec.id)) this.store.containers.update(rec.id, patch);
      throw new NimbusError(err.code, err.message, { ...err.details, container: rec.id, removed: rec.config.autoRemove }, { cause: e });
    }
  }

  /** deferUpdate: the agent's answer (runtime, warnings) is returned as a patch for the caller to write, not written. */
  private async createRecordAndInstance(
    rec: ContainerRecord, request: Omit<ContainerCreateRequest, 'id'>, warmId: string | undefined, intent: NetworkIntent, deferUpdate = false,
  ): Promise<{ record: ContainerRecord; patch: Pick<ContainerRecord, 'warnings' | 'runtime'> }> {
    const id = rec.id;
    try {
      this.store.containers.insert(rec);
    } catch (e) {
      this.quota.release(id, 'create failed');
      if (warmId) void this.agent.removeContainer(warmId).catch(() => undefined);
      throw e;
    }
    try {
      // addresses are leased with the record in place (deleting the record deletes them)
      request.network = this.networks.lease(rec, intent);
      const created = await this.agent.createContainer({ id, ...request });
      const patch = { warnings: created.warnings, runtime: created.runtime };
      const record = deferUpdate ? { ...rec, ...patch } : this.store.containers.update(id, patch);
      this.publish(record, 'create', { image: rec.config.image });
      return { record, patch };
    } catch (e) {
      // A failed create leaves nothing behind: not the record, not the agent's state.
      await this.agent.removeContainer(id).catch(() => undefined);
      this.store.containers.delete(id); // its address leases go with it
      this.quota.release(id, 'create failed');
      throw e;
    }
  }

  start(idOrName: string): Promise<ContainerRecord> {
    const c = this.get(idOrName);
    return this.locked(c.id, () => this.startLocked(c.id, false));
  }

  private async startLocked(id: string, byRestartPolicy: boolean, alsoWrite: Partial<Omit<ContainerRecord, 'id'>> = {}): Promise<ContainerRecord> {
    let c = this.store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    if (c.status === 'running' || c.status === 'paused') return c;
    assertTransition(c.name, c.status, 'running', 'start');
    // A container stopped by a quota reclaim gave its quota back: it runs again only if admitted again.
    if (!this.quota.holds(id)) this.quota.admitContainer(id, c.projectId, c.config);
    const state = await this.bounded(id, 'start', this.agent.startContainer(id));
    // Even if it already finished, record it as started: handleExit records the exit.
    c = this.store.containers.update(id, {
      ...alsoWrite,
      status: 'running',
      pid: state.pid ?? null,
      startedAt: new Date().toISOString(),
      finishedAt: null,
      exitCode: null,
      oomKilled: false,
      stoppedByUser: false,
      ...(byRestartPolicy ? { restartCount: c.restartCount + 1 } : {}),
    });
    this.publish(c, 'start', { pid: c.pid });
    if (state.status === 'stopped') void this.handleExit(id);
    return c;
  }

  async stop(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = this.get(idOrName);
    this.cancelRestart(c.id);
    return this.locked(c.id, () => this.stops.run(c.id, (signal) => this.stopLocked(c.id, timeoutSec, signal)));
  }

  /** The graceful stop, registered in this.stops: kill cuts its wait short, rm -f aborts it (signal). */
  private async stopLocked(id: string, timeoutSec: number | undefined, signal: AbortSignal): Promise<ContainerRecord> {
    let cur = this.store.containers.get(id);
    if (!cur) throw new NotFound(`no such container: ${id}`);
    if (cur.status !== 'running' && cur.status !== 'paused' && cur.status !== 'restarting') return cur;
    cur = this.store.containers.update(id, { stoppedByUser: true });
    // a record made before stopTimeout was bounded may hold more: the bound holds for it too
    const t = timeoutSec ?? Math.min(cur.config.stopTimeout ?? 10, MAX_STOP_TIMEOUT_SEC);
    const imageSignal = this.store.images.get(cur.imageDigest)?.config.config?.StopSignal;
    // its timeout, then the agent's SIGKILL and wait, within the usual deadline
    await this.bounded(id, 'stop', this.agent.stopContainer(id, t, cur.config.stopSignal ?? imageSignal), t * 1000, signal);
    const state = await this.bounded(id, 'state', this.agent.containerState(id), 0, signal);
    return this.recordExit(id, state);
  }

  /**
   * Signal the process. Not under the lifecycle lock: a graceful stop holding it must not delay a
   * kill (container-state.ts). During a stop, a process already gone is what the kill wanted, and
   * a SIGKILL answers once the stop has recorded the exit.
   */
  async kill(idOrName: string, signal = 'SIGKILL'): Promise<ContainerRecord> {
    const c = this.get(idOrName);
    const stopping = this.stops.get(c.id);
    const cur = this.store.containers.get(c.id);
    if (!cur) throw new NotFound(`no such container: ${c.id}`);
    if (!stopping && cur.status !== 'running' && cur.status !== 'paused') {
      throw new Conflict(`cannot kill container ${cur.name}: it is ${cur.status}`);
    }
    try {
      await this.bounded(c.id, 'kill', this.agent.killContainer(c.id, signal));
    } catch (e) {
      if (!stopping || !(hasCode(e, 'Conflict') || hasCode(e, 'NotFound'))) throw e;
    }
    this.publish(cur, 'kill', { signal });
    if (stopping && /^(SIG)?KILL$|^9$/i.test(signal)) await this.bounded(c.id, 'stop', stopping.stopped);
    return this.store.containers.get(c.id) ?? cur;
  }

  /** Stop then start, as one lifecycle operation: rm -f cancels it (no start after), kill only cuts its stop short. */
  async restart(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = this.get(idOrName);
    this.cancelRestart(c.id);
    return this.locked(c.id, () =>
      this.stops.run(c.id, async (signal, stopDone) => {
        await this.stopLocked(c.id, timeoutSec, signal);
        stopDone();
        if (signal.aborted) throw signal.reason as Error;
        return this.startLocked(c.id, false);
      }),
    );
  }

  pause(idOrName: string): Promise<ContainerRecord> {
    const c = this.get(idOrName);
    return this.locked(c.id, async () => {
      const cur = this.store.containers.get(c.id)!;
      assertTransition(cur.name, cur.status, 'paused', 'pause');
      if (cur.status === 'paused') return cur;
      await this.bounded(c.id, 'pause', this.agent.pauseContainer(c.id));
      const next = this.store.containers.update(c.id, { status: 'paused' });
      this.publish(next, 'pause');
      return next;
    });
  }

  unpause(idOrName: string): Promise<ContainerRecord> {
    const c = this.get(idOrName);
    return this.locked(c.id, async () => {
      const cur = this.store.containers.get(c.id)!;
      if (cur.status !== 'paused') throw new Conflict(`cannot unpause container ${cur.name}: it is ${cur.status}`);
      await this.bounded(c.id, 'unpause', this.agent.unpauseContainer(c.id));
      const next = this.store.containers.update(c.id, { status: 'running' });
      this.publish(next, 'unpause');
      return next;
    });
  }

  /**
   * rm; with force, it preempts (container-state.ts): a pending restart is cancelled, a stop in
   * flight aborted and the process SIGKILLed at once, then the removal takes the lock.
   */
  async remove(idOrName: string, force: boolean): Promise<void> {
    const c = this.get(idOrName);
    this.cancelRestart(c.id);
    if (force) {
      this.stops.abort(c.id, new Conflict(`container ${c.name} was removed (rm -f) while it stopped`, { container: c.id }));
      const cur = this.store.containers.get(c.id);
      if (cur && (cur.status === 'running' || cur.status === 'paused')) {
        await this.bounded(c.id, 'kill', this.agent.killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
    }
    return this.locked(c.id, async () => {
      const cur = this.store.containers.get(c.id);
      if (!cur) return;
      if ((cur.status === 'running' || cur.status === 'paused' || cur.status === 'restarting') && !force) {
        throw new Conflict(`container ${cur.name} is ${cur.status}: stop it first or use --force`);
      }
      this.store.containers.update(c.id, { status: 'removing' });
      if (cur.status === 'running' || cur.status === 'paused') {
        await this.bounded(c.id, 'kill', this.agent.killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
      await this.bounded(c.id, 'removal', this.agent.removeContainer(c.id));
      this.store.containers.delete(c.id);
      this.quota.release(c.id, 'container removed');
      this.publish(cur, 'destroy');
    });
  }

  /**
   * Docker's wait conditions: "not-running" resolves once the container has
   * exited; "removed" once it is also gone (what `run --rm` waits for).
   */
  async wait(idOrName: string, condition: 'not-running' | 'removed' = 'not-running', signal?: AbortSignal): Promise<{ exitCode: number; oomKilled: boolean }> {
    const c = this.get(idOrName);
    let last: { exitCode: number; oomKilled: boolean } | undefined;
    const settled = (r: ContainerRecord) => ({ exitCode: r.exitCode ?? -1, oomKilled: r.oomKilled });
    return new Promise((resolve, reject) => {
      const check = () => {
        const r = this.store.containers.get(c.id);
        if (r && (r.status === 'exited' || r.status === 'dead')) last = settled(r);
        const done = condition === 'removed' ? !r : !r || r.status === 'exited' || r.status === 'dead';
        if (done) {
          off();
          resolve(last ?? (r ? settled(r) : { exitCode: -1, oomKilled: false }));
        }
      };
      const off = this.events.on((e) => {
        if (e.type === 'container' && e.id === c.id && (e.action === 'die' || e.action === 'destroy')) check();
      });
      signal?.addEventListener('abort', () => {
        off();
        reject(new Error('aborted'));
      });
      check();
    });
  }

  logs(idOrName: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    const c = this.get(idOrName);
    return this.agent.containerLogs(c.id, opts);
  }

  async exec(idOrName: string, req: ExecRequest): Promise<ExecSession> {
    const c = this.get(idOrName);
    if (c.status !== 'running') throw new Conflict(`container ${c.name} is ${c.status}; exec needs it running`);
    if (!req.args.length) throw new InvalidArgument('exec needs a command');
    this.publish(c, 'exec', { args: req.args });
    return this.agent.execInContainer(c.id, req);
  }

  async stats(idOrName: string): Promise<InstanceStats & { id: string; name: string }> {
    const c = this.get(idOrName);
    if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is ${c.status}; no stats`);
    return { id: c.id, name: c.name, ...(await this.agent.containerStats(c.id)) };
  }

  private recordExit(id: string, state: RuntimeState): ContainerRecord {
    const cur = this.store.containers.get(id);
    if (!cur) throw new NotFound(`no such container: ${id}`);
    if (cur.status === 'exited' && cur.exitCode !== null) return cur;
    const next = this.store.containers.update(id, {
      status: 'exited',
      pid: null,
      exitCode: state.exitCode ?? cur.exitCode ?? 255,
      oomKilled: state.oomKilled ?? false,
      finishedAt: state.finishedAt ?? new Date().toISOString(),
    });
    this.publish(next, 'die', { exitCode: next.exitCode, oomKilled: next.oomKilled });
    return next;
  }

  /** The agent saw the process exit: record it, then apply the restart policy. */
  async handleExit(id: string): Promise<void> {
    const cur = this.store.containers.get(id);
    if (!cur || cur.status === 'removing') return;
    let state: RuntimeState;
    try {
      state = await this.agent.containerState(id);
    } catch (e) {
      if (hasCode(e, 'NotFound')) return;
      throw e;
    }
    if (state.status !== 'stopped') return;
    const rec = await this.locked(id, async () => {
      const now = this.store.containers.get(id);
      if (!now || now.status === 'removing') return undefined;
      // An exit older than the last start may be the previous run's (a restart held the lock
      // meanwhile): ask again. (A fast exit can also predate startedAt, which is written after.)
      if (now.status === 'running' && now.startedAt && state.finishedAt && state.finishedAt < now.startedAt) {
        const fresh = await this.bounded(id, 'state', this.agent.containerState(id));
        return fresh.status === 'stopped' ? this.recordExit(id, fresh) : undefined;
      }
      return this.recordExit(id, state);
    });
    if (!rec) return;
    if (rec.config.autoRemove) {
      await this.remove(id, true).catch((e: unknown) => log.warn('auto-remove failed', { id, error: String(e) }));
      return;
    }
    this.maybeRestart(rec);
  }

  private maybeRestart(c: ContainerRecord): void {
    const p = c.config.restart;
    if (c.stoppedByUser || p.name === 'no') return;
    if (p.name === 'on-failure') {
      if (c.exitCode === 0) return;
      if (p.maxRetries !== undefined && p.maxRetries > 0 && c.restartCount >= p.maxRetries) return;
    }
    const delay = RESTART_BACKOFF_MS[Math.min(c.restartCount, RESTART_BACKOFF_MS.length - 1)]!;
    this.store.containers.update(c.id, { status: 'restarting' });
    this.publish(c, 'restarting', { delayMs: delay });
    const timer = setTimeout(() => {
      this.restartTimers.delete(c.id);
      void this.locked(c.id, async () => {
        const now = this.store.containers.get(c.id);
        if (!now || now.status !== 'restarting') return;
        await this.startLocked(c.id, true);
      }).catch((e: unknown) => {
        log.warn('restart failed', { id: c.id, error: String(e) });
        const now = this.store.containers.get(c.id);
        if (now?.status === 'restarting') this.store.containers.update(c.id, { status: 'exited' });
      });
    }, delay);
    timer.unref();
    this.restartTimers.set(c.id, timer);
  }

  private cancelRestart(id: string): void {
    const t = this.restartTimers.get(id);
    if (t) {
      clearTimeout(t);
      this.restartTimers.delete(id);
      const c = this.store.containers.get(id);
      if (c?.status === 'restarting') this.store.containers.update(id, { status: 'exited' });
    }
  }

  /**
   * Daemon start: bring the store and the host into agreement. Containers the
   * agent still runs stay running; those that exited meanwhile get their exit
   * code; state the store does not know is removed.
   */
  async reconcile(): Promise<{ running: number; exited: number; orphansRemoved: number; lost: number }> {
    const onHost = new Set(await this.agent.listContainers());
    let running = 0, exited = 0, lost = 0, orphansRemoved = 0;
    for (const c of this.store.containers.list()) {
      if (c.status === 'removing') {
        await this.agent.removeContainer(c.id).catch(() => undefined);
        this.store.containers.delete(c.id);
        this.quota.release(c.id, 'container removed');
        continue;
      }
      if (!onHost.has(c.id)) {
        if (c.status !== 'exited' && c.status !== 'created') {
          this.store.containers.update(c.id, { status: 'exited', exitCode: c.exitCode ?? 255, pid: null, finishedAt: c.finishedAt ?? new Date().toISOString() });
          lost++;
        }
        continue;
      }
      onHost.delete(c.id);
      const state = await this.agent.containerState(c.id).catch(() => ({ status: 'unknown' }) as RuntimeState);
      if (state.status === 'running' || state.status === 'paused') {
        this.store.containers.update(c.id, { status: state.status, pid: state.pid ?? c.pid });
        running++;
      } else if (state.status === 'stopped' && c.status !== 'exited') {
        const rec = this.recordExit(c.id, state);
        exited++;
        if (rec.config.autoRemove) await this.remove(c.id, true).catch(() => undefined);
        else this.maybeRestart(rec);
      } else if (state.status === 'stopped' && c.status === 'exited' && c.config.restart.name === 'always' && !c.stoppedByUser) {
        this.maybeRestart(c);
      }
    }
    for (const orphan of onHost) {
      log.warn('removing orphaned container state', { id: orphan });
      await this.agent.removeContainer(orphan).catch((e: unknown) => log.warn('orphan removal failed', { id: orphan, error: String(e) }));
      orphansRemoved++;
    }
    return { running, exited, orphansRemoved, lost };
  }

  shutdown(): void {
    for (const t of this.restartTimers.values()) clearTimeout(t);
    this.restartTimers.clear();
  }
}
