/**
 * A container create, once checked (container-create-request.ts): its name held, admitted by the
 * quota (now, or as an Operation after a reclaim), placed by the scheduler, then its record
 * written and its host's container made (a warm one claimed where it can be), started too if
 * asked. A create that fails leaves nothing behind.
 */
import { NimbusError, Unavailable, isNimbusError, toNimbusError } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { Agent, ContainerCreateRequest } from '../../agent/agent.js';
import type { PortMapping } from '../../agent/network/network-driver.js';
import { hostChoosesPort } from '../../core/port-ranges.js';
import type { ContainerConfig, ContainerRecord, ImageRecord, OperationRecord, PortSpec } from '../../store/records.js';
import type { ImageService } from '../images/image-service.js';
import type { ProjectScope } from '../identity/scope.js';
import type { NetworkIntent, NetworkService } from '../networks/network-service.js';
import type { OperationService } from '../operations/operations.js';
import { containerDiskBytes, type QuotaService } from '../quota/quota-service.js';
import type { PlacementRequest, Scheduler } from '../scheduler/types.js';
import { prepareCreate, type CreateContainerInput, type CreateOptions, type CreateRequestDeps, type PreparedCreate } from './container-create-request.js';
import { placementFields, type HostAgents, type PlacementInput } from './hosts.js';
import { generateName } from './names.js';

const log = logger('compute');

export interface CreateDeps extends CreateRequestDeps {
  hosts: HostAgents;
  scheduler: Pick<Scheduler, 'place' | 'release'>;
  images: Pick<ImageService, 'resolve' | 'ensureOnHost'>;
  networks: CreateRequestDeps['networks'] & Pick<NetworkService, 'endpointsGone' | 'leaseInTransaction' | 'afterLease'>;
  quota: Pick<QuotaService, 'admitContainerOrPlanReclaim' | 'release'>;
  operations: Pick<OperationService, 'start'>;
  /** The agent of a host, its exits listened to (NotFound for a host the directory does not know). */
  agentOn(host: string): Agent;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /** The start, under the lock the caller holds; `alsoWrite` goes into the same record update. */
  startLocked(id: string, alsoWrite: Partial<Omit<ContainerRecord, 'id'>>): Promise<ContainerRecord>;
  /** rm -f, for an --rm container whose start failed. */
  remove(id: string): Promise<void>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
}

/** A create now, or an Operation that creates it after a reclaim. */
export type CreateRequested = { container: ContainerRecord } | { operation: OperationRecord; finished: Promise<ContainerRecord> };

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

/**
 * A refusal on memory or disk for a size the container did not ask for says where the size came
 * from: the project's default memory, or its default writable layer.
 */
function withDefaultSizeHint(e: unknown, input: CreateContainerInput, config: ContainerConfig): unknown {
  if (!isNimbusError(e) || e.code !== 'QuotaExceeded') return e;
  const mib = (bytes: number) => `${Math.round(bytes / 2 ** 20)} MiB`;
  let hint: string;
  if (e.details?.resource === 'memory' && input.memoryBytes === undefined && config.memoryBytes !== undefined) {
    hint = `a container created without --memory is given ${mib(config.memoryBytes)} in a project whose memory is limited: ask for less with --memory, or for more memory quota`;
  } else if (e.details?.resource === 'disk' && input.storageBytes === undefined && config.storageBytes !== undefined) {
    hint = `a container created without --storage has a writable layer of ${mib(config.storageBytes)}, charged to the disk quota, in a project whose disk is limited: ask for less with --storage, or for more disk quota`;
  } else return e;
  return new NimbusError(e.code, `${e.message} (${hint})`, e.details, { cause: e, ...(e.adminMessage !== undefined ? { adminMessage: `${e.adminMessage} (${hint})` } : {}) });
}

export class ContainerCreates {
  /** "<project id>/<name>" of creates waiting for a reclaim: their names are taken. */
  private readonly pendingNames = new Set<string>();
  /** Generated names ("project/name") chosen by creates whose record is not written yet. */
  private readonly generatedNames = new Set<string>();

  constructor(private readonly deps: CreateDeps) {}

  /**
   * Create now when the quota admits it. When the project's capacity must first be reclaimed from
   * borrowers, return at once an Operation (container.create) that creates the container when the
   * reclaim is done (after the borrowers' grace period); its progress names the plan. The name is
   * held meanwhile. Rejected (QuotaExceeded) when even a reclaim cannot make room.
   */
  async request(input: CreateContainerInput, projectId: string, imageScope: ProjectScope, opts: CreateOptions): Promise<CreateRequested> {
    // anonymous volumes the create makes (-v /path): a create that fails takes them with it
    const made: string[] = [];
    const undo = async () => {
      if (made.length) await this.deps.volumes()?.removeAnonymous(made, projectId);
    };
    try {
      const r = await this.requestNamedOrGenerated(input, projectId, imageScope, opts, made);
      if ('finished' in r) r.finished.catch(() => undo()).catch(() => undefined);
      return r;
    } catch (e) {
      await undo();
      throw e;
    }
  }

  /** Names are per project; a VM of the same project and name counts too (instances are one resource). */
  private async inStore(projectId: string, name: string): Promise<boolean> {
    return (await this.deps.store.containers.byName(projectId, name)) !== undefined || (await this.deps.store.vms.byName(projectId, name)) !== undefined;
  }

  private async requestNamedOrGenerated(input: CreateContainerInput, projectId: string, imageScope: ProjectScope, opts: CreateOptions, made: string[]): Promise<CreateRequested> {
    if (input.name !== undefined) return this.requestNamed(input, projectId, imageScope, opts, made);
    // A generated name is held from its choice until the record has it: creates of one burst
    // drew the same one from the 400 pairs and all but one failed AlreadyExists (metering bench).
    const name = await generateName(async (n) => {
      const key = `${projectId}/${n}`;
      const held = () => this.generatedNames.has(key) || this.pendingNames.has(key);
      if (held() || (await this.inStore(projectId, n))) return true;
      if (held()) return true; // chosen by another create while the store was asked
      this.generatedNames.add(key);
      return false;
    });
    try {
      return await this.requestNamed({ ...input, name }, projectId, imageScope, opts, made);
    } finally {
      this.generatedNames.delete(`${projectId}/${name}`);
    }
  }

  private async requestNamed(input: CreateContainerInput, projectId: string, imageScope: ProjectScope, opts: CreateOptions, made: string[]): Promise<CreateRequested> {
    const taken = async (n: string) => this.pendingNames.has(`${projectId}/${n}`) || (await this.inStore(projectId, n));
    const prepared = await prepareCreate(this.deps, input, projectId, imageScope, opts, made, taken);
    const { name, image, config, request, placement } = prepared;
    const local = this.deps.hosts.localName;
    // A container the embedded agent created ahead of demand becomes this one, id and all (dropped if it is placed elsewhere).
    const warmId = local !== undefined && (placement.host === undefined || placement.host === local) ? this.deps.agentOn(local).claimWarmContainer(request) : undefined;
    const id = warmId ?? newId();
    const now = new Date().toISOString();
    const rec: ContainerRecord = {
      id, name, projectId, imageDigest: image.digest, config,
      status: 'created', runtime: config.runtime ?? 'auto', pid: null, exitCode: null, oomKilled: false,
      restartCount: 0, stoppedByUser: false, createdAt: now, startedAt: null, finishedAt: null, warnings: [],
      host: local ?? '', // the scheduler's choice, once admitted
    };
    const dropWarm = () => {
      if (warmId && local !== undefined) void this.deps.agentOn(local).removeContainer(warmId).catch(() => undefined);
    };
    // Admission first: a refused request leaves nothing behind.
    let admission: Awaited<ReturnType<QuotaService['admitContainerOrPlanReclaim']>>;
    try {
      admission = await this.deps.quota.admitContainerOrPlanReclaim(id, projectId, rec.config);
    } catch (e) {
      dropWarm();
      throw withDefaultSizeHint(e, input, config);
    }
    if ('decision' in admission) return { container: await this.createAdmitted(rec, warmId, prepared, opts) };

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
      operation = await this.deps.operations.start('container.create', name, projectId, (op) => {
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
          return this.createAdmitted(rec, warmId, prepared, opts);
        })();
        return finished;
      });
    } catch (e) {
      // no operation was started (the store refused it): the name is free again, and what the reclaim admits is given back
      this.pendingNames.delete(held);
      dropWarm();
      void done
        .then(() => this.deps.quota.release(id, 'create failed'), () => undefined)
        .catch((x: unknown) => log.warn('releasing the quota of a create that did not start failed', { id, error: String(x) }));
      throw e;
    }
    return { operation, finished };
  }

  /** "org/team" for progress messages (ids mean nothing to a user). */
  private async projectPath(id: string): Promise<string> {
    const { store } = this.deps;
    const names: string[] = [];
    for (let p = await store.projects.get(id); p; p = p.parentId ? await store.projects.get(p.parentId) : undefined) names.unshift(p.name);
    return names.length ? names.join('/') : id;
  }

  /** The part of a create after admission: the host, the record, then the agent's container (started too if asked). */
  private async createAdmitted(admitted: ContainerRecord, admittedWarmId: string | undefined, prepared: PreparedCreate, opts: CreateOptions): Promise<ContainerRecord> {
    const { rec, warmId } = await this.place(admitted, admittedWarmId, prepared.intent, prepared.image, prepared.placement);
    const { record, patch } = await this.createRecordAndInstance(rec, prepared.request, warmId, prepared.intent, opts.start === true);
    if (!opts.start) return record;
    try {
      // what the create learnt (runtime, warnings) is written with the start: one row update, not two
      return await this.deps.locked(rec.id, () => this.deps.startLocked(rec.id, patch));
    } catch (e) {
      const err = toNimbusError(e);
      if (rec.config.autoRemove) await this.deps.remove(rec.id).catch(() => undefined);
      else await this.writeCreatePatch(rec.id, patch);
      throw new NimbusError(err.code, err.message, { ...err.details, container: rec.id, removed: rec.config.autoRemove }, { cause: e, ...(err.adminMessage !== undefined ? { adminMessage: err.adminMessage } : {}) });
    }
  }

  /**
   * The scheduler's host for an admitted container, with the image and the networks it needs
   * laid out there. On failure nothing is held: not the claim, the quota nor a warm container.
   */
  private async place(
    rec: ContainerRecord, warmId: string | undefined, intent: NetworkIntent, image: ImageRecord, placement: PlacementInput,
  ): Promise<{ rec: ContainerRecord; warmId: string | undefined }> {
    const { scheduler, quota } = this.deps;
    const local = this.deps.hosts.localName;
    const runtime = rec.config.runtime;
    const req: PlacementRequest = {
      consumerId: rec.id, projectId: rec.projectId, kind: runtime === 'vm' ? 'secure-container' : 'container',
      vcpus: rec.config.cpus ?? 0, memoryBytes: rec.config.memoryBytes ?? 0, diskBytes: containerDiskBytes(rec.config),
      ...(runtime && runtime !== 'vm' ? { runtime } : {}),
      ...(image.config.architecture ? { architecture: image.config.architecture } : {}),
      imageChainId: image.chainId,
      ...placementFields(placement),
    };
    let claimed = false;
    let warm = warmId;
    try {
      const { host } = await scheduler.place(req);
      claimed = true;
      this.deps.agentOn(host); // a host the directory does not know: NotFound now, before anything is made there
      if (warm && host !== local) {
        void this.deps.agentOn(local!).removeContainer(warm).catch(() => undefined);
        warm = undefined;
      }
      await this.deps.images.ensureOnHost(image, host);
      if (intent.mode === 'networks') await this.deps.networks.ensureOnHost(intent.networks, host);
      return { rec: { ...rec, host }, warmId: warm };
    } catch (e) {
      if (warm && local !== undefined) void this.deps.agentOn(local).removeContainer(warm).catch(() => undefined);
      try {
        if (claimed) await scheduler.release(rec.id);
        await quota.release(rec.id, 'create failed');
      } catch (x) {
        log.error('cleaning up after a failed placement failed', { id: rec.id, error: String(x) });
      }
      throw e;
    }
  }

  /** After a failed start: keep what the create learnt (a failed write is logged; the start's error is the one thrown). */
  private async writeCreatePatch(id: string, patch: CreatePatch): Promise<void> {
    try {
      if (await this.deps.store.containers.get(id)) await this.deps.store.containers.update(id, patch);
    } catch (e) {
      log.warn('recording a created container failed', { id, error: String(e) });
    }
  }

  /** deferUpdate: the agent's answer (runtime, warnings) is returned as a patch for the caller to write, not written. */
  private async createRecordAndInstance(
    rec: ContainerRecord, request: Omit<ContainerCreateRequest, 'id'>, warmId: string | undefined, intent: NetworkIntent, deferUpdate = false,
  ): Promise<{ record: ContainerRecord; patch: CreatePatch }> {
    const { store, scheduler, quota, networks } = this.deps;
    const id = rec.id;
    const agent = this.deps.agentOn(rec.host);
    try {
      // the record and its addresses in one transaction (one commit fewer a create; deleting the
      // record deletes them; a failed lease leaves no record)
      request.network = await store.transaction(async () => {
        await store.containers.insert(rec);
        return networks.leaseInTransaction(rec, intent);
      });
    } catch (e) {
      await scheduler.release(id).catch((x: unknown) => log.warn('releasing a claim failed', { id, error: String(x) }));
      await quota.release(id, 'create failed');
      if (warmId) void agent.removeContainer(warmId).catch(() => undefined);
      throw e;
    }
    try {
      await networks.afterLease(intent);
      const created = await agent.createContainer({ id, ...request });
      // ports asked as 0 (-P, -p PORT) are recorded as the host chose them: what ps, port and inspect show
      const chosen = chosenPorts(rec.config.ports, created.ports);
      const patch: CreatePatch = { warnings: created.warnings, runtime: created.runtime, ...(chosen ? { config: { ...rec.config, ports: chosen } } : {}) };
      const record = deferUpdate ? { ...rec, ...patch } : await store.containers.update(id, patch);
      this.deps.publish(record, 'create', { image: rec.config.image });
      return { record, patch };
    } catch (e) {
      // A failed create leaves nothing behind: not the record, not the agent's state, not the claim.
      await agent.removeContainer(id).catch(() => undefined);
      try {
        await store.containers.delete(id); // its address leases go with it
        networks.endpointsGone(id); // and other hosts' overlay entries for them
        await scheduler.release(id);
        await quota.release(id, 'create failed');
      } catch (x) {
        log.error('cleaning up after a failed container create failed', { id, error: String(x) });
      }
      throw e;
    }
  }
}
