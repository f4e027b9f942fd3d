/**
 * The quota ledger as a control-plane service: persisted in the store (every
 * mutation and its snapshot commit in one transaction), enforced when an
 * instance is created, released when it is removed.
 *
 * The Ledger stays synchronous and pure; the store is asynchronous. Every mutating call runs
 * alone (an async mutex): the synchronous ledger step decides and changes the in-memory state,
 * then its changed rows and audit entries are written in ONE store transaction, then the ledger
 * is told they are persisted. Admission is decided only by that step, one at a time, so
 * concurrent promises cannot oversubscribe. If the write fails, the ledger is reloaded from the
 * store (what was committed) and the error rethrown, so memory never keeps an unpersisted change.
 *
 * Several control-plane processes (replicas) may share one store. The store's ledger is then the
 * authority and the memory a cache: every mutation's transaction first takes the ledger's lock and
 * compares the stored version with the one in memory, catching up on what other replicas wrote
 * (the state row, and only the instance rows written since) before the step decides; the state is
 * then written compare-and-set on that version, so a write based on stale memory can never
 * commit (it is retried on fresh state). On SQLite the check follows the step (see mutate). Reads
 * answer from memory, refreshed by a poll (see QuotaServiceOptions) or on demand with refresh().
 *
 * Do not call a mutating method from inside a store transaction of your own: it waits for the
 * mutex, whose holder may be waiting for your transaction to end. Store work that must commit
 * with a ledger change goes in the `alsoInTransaction` hook (see ensureProject, deleteProject).
 */
import { DEFAULT_LOG_LIMITS } from '../../agent/drivers/container/container-logs.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord } from '../../store/records.js';
import { logger } from '../../core/log.js';
import { Ledger, type AdmitRequest, type Decision, type LimitsPatch, type Loan, type PoolView, type ProjectView } from './ledger.js';
import type { AuditEntry, LedgerState, ReclaimOperation } from './state.js';
import { RESOURCES, type PartialVec, type Vec } from './resources.js';
import { fillMissingResources } from './upgrade.js';
import { Conflict, InvalidArgument, QuotaExceeded, Unavailable } from '../../core/errors.js';
import { MAX_STORAGE_BYTES, MIN_MEMORY_BYTES, MIN_STORAGE_BYTES } from '../../core/limits.js';

const log = logger('quota');

/** Hard limit of a project nobody has limited: effectively unlimited, still an integer. */
export const UNLIMITED = 2 ** 40;
const MiB = 1024 * 1024;
/** runc's smallest memory limit, in whole MiB. */
const MIN_CONTAINER_MEMORY_MIB = Math.ceil(MIN_MEMORY_BYTES / MiB);
/** How often a pending reclaim's waiter looks for a release made by another replica. */
const WAITER_POLL_MS = 250;
/** Default read staleness bound on a shared (PostgreSQL) store; 0 turns the poll off. */
const SHARED_REFRESH_MS = 1000;
/** Longest pause between polls after failures (a store that is down is not hammered). */
const MAX_POLL_BACKOFF_MS = 30_000;
/** Compare-and-set retries before a mutation gives up (only without the ledger lock can it lose). */
const MAX_ATTEMPTS = 8;

export interface QuotaServiceOptions {
  /**
   * Poll the stored ledger's version this often and catch up when another replica changed it, so
   * that reads (show, explain, loans, holds, ledger) are at most about this stale. Default: 1 s on
   * PostgreSQL (shared by replicas), off on SQLite (embedded: one process). Waiters of a pending
   * reclaim poll every 250 ms whatever this is.
   */
  refreshMs?: number;
  /** This control-plane replica: every admission records it (a dead replica's half-made creates are found by it). */
  replicaId?: string;
}

/**
 * What a container is charged: one instance, whole CPUs rounded up, memory in MiB (0 when
 * unlimited), and disk in MiB: its writable layer's size (0 when unbounded) and what its log may
 * keep beyond the default rotation's (10 MiB × 3, which every container has: --log-opt max-size=1g
 * max-file=64 would otherwise keep 64 GiB on its host uncharged; Kubernetes counts logs into
 * ephemeral storage too).
 */
export function containerDemand(c: Pick<ContainerRecord['config'], 'cpus' | 'memoryBytes' | 'storageBytes' | 'log'>): PartialVec {
  const disk = (c.storageBytes === undefined ? 0 : Math.ceil(c.storageBytes / MiB)) + logBeyondDefaultMiB(c.log);
  return {
    instances: 1,
    cpus: c.cpus === undefined ? 0 : Math.ceil(c.cpus),
    memory: c.memoryBytes === undefined ? 0 : Math.ceil(c.memoryBytes / MiB),
    ...(disk > 0 ? { disk } : {}),
  };
}

/** The disk a container claims on its host at placement, in bytes: what the ledger charges it (its layer and its log beyond the default's). */
export function containerDiskBytes(c: Parameters<typeof containerDemand>[0]): number {
  return (containerDemand(c).disk ?? 0) * MiB;
}

/** MiB a container's log rotation keeps beyond the default's (0 for the default or less). */
export function logBeyondDefaultMiB(log: { maxSizeBytes?: number; maxFiles?: number } | undefined): number {
  if (!log) return 0;
  const keeps = (l: { maxSizeBytes: number; maxFiles: number }) => l.maxSizeBytes * l.maxFiles;
  const asked = keeps({ ...DEFAULT_LOG_LIMITS, ...log });
  return Math.max(0, Math.ceil((asked - keeps(DEFAULT_LOG_LIMITS)) / MiB));
}

const auditRow = (e: AuditEntry) => ({ seq: e.seq, project: e.project, json: JSON.stringify(e) });

/** One holder at a time, first come first served. */
class Mutex {
  private tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let unlock!: () => void;
    this.tail = new Promise<void>((ok) => (unlock = ok));
    await before;
    try {
      return await fn();
    } finally {
      unlock();
    }
  }
}

/** How the synchronous ledger step went: whether it changed the ledger, and whether it was cut short inside a mutation. */
interface StepOutcome<T> {
  ok: boolean;
  value?: T;
  error?: unknown;
  changed: boolean;
  /** A ledger mutation threw half-way: the in-memory state cannot be trusted. */
  torn: boolean;
}

/** A step decided on memory another replica had outdated (SQLite checks after the step; PostgreSQL only without its lock): retried on fresh state. */
class LedgerMoved extends Error {
  constructor() {
    super('the stored quota ledger changed under this write');
    this.name = 'LedgerMoved';
  }
}

/**
 * The ledger as stored and its version, moving the layouts of before (audit in the state,
 * instances in the state) on the way. In one transaction holding the ledger lock (joins the caller's).
 */
async function loadState(store: Store): Promise<{ state: LedgerState | undefined; version: number }> {
  return store.transaction(async () => {
    await store.lockQuotaLedger();
    const saved = await store.loadQuotaState();
    const state = saved ? (JSON.parse(saved) as LedgerState) : undefined;
    if (state) {
      if (state.audit.length > 0) {
        // a store written before the audit had its own table: move the entries there
        const entries = state.audit.map(auditRow);
        state.audit = [];
        await store.appendQuotaAudit(entries);
        await store.saveQuotaState(JSON.stringify(state));
      }
      const instancesInCore = Object.values(state.instances);
      const projectsInCore = Object.values(state.projects);
      if (instancesInCore.length > 0 || projectsInCore.length > 0) {
        // a store written before instances, or projects, had their own rows: move them there (the state first: rows carry its version)
        await store.saveQuotaState(JSON.stringify({ ...state, projects: {}, instances: {}, audit: [] }));
        await store.saveQuotaInstances(instancesInCore.map((i) => ({ id: i.id, json: JSON.stringify(i) })));
        await store.saveQuotaProjects(projectsInCore.map((p) => ({ id: p.id, json: JSON.stringify(p) })));
      }
      for (const json of await store.loadQuotaInstances()) {
        const inst = JSON.parse(json) as LedgerState['instances'][string];
        state.instances[inst.id] = inst;
      }
      for (const json of await store.loadQuotaProjects()) {
        const p = JSON.parse(json) as LedgerState['projects'][string];
        state.projects[p.id] = p;
      }
    }
    return { state, version: await store.quotaLedgerVersion() };
  });
}

/**
 * What brings rows (projects or instances) held at our version to the stored one: the rows written
 * since, and the ids of all only when some were removed (rows unchanged since our version are
 * ours already; the stored rows are those plus the changed ones, minus removed ones). Only reads:
 * apply() changes `held` in place once every read of the catch-up is done.
 */
async function rowsToCatchUp<T extends { id: string }>(held: Record<string, T>, since: { changed: string[]; count: number }, ids: () => Promise<string[]>): Promise<{ apply(): Record<string, T> }> {
  const updates = since.changed.map((json) => JSON.parse(json) as T);
  const merged = Object.keys(held).length + updates.filter((u) => held[u.id] === undefined).length;
  const kept = merged === since.count ? undefined : new Set(await ids());
  return {
    apply() {
      for (const u of updates) held[u.id] = u;
      if (kept) for (const id of Object.keys(held)) if (!kept.has(id)) delete held[id];
      return held;
    },
  };
}

export class QuotaService {
  private current!: Ledger;
  /** The stored ledger's version that the in-memory one is (0: nothing stored yet). */
  private version = 0;
  /** Audit entries of the running step, written with its changes. */
  private readonly pending: AuditEntry[] = [];
  private readonly mutex = new Mutex();
  /** The step running under the mutex (mutations anywhere else are refused: they would not be persisted). */
  private step: { changed: boolean; torn: boolean } | undefined;
  /** A failed write could not be undone by a reload either: reload before the next mutation. */
  private stale = false;
  /** Woken after every committed mutation and catch-up: pending reclaims may have completed. */
  private readonly released = new Set<() => void>();
  private readonly refreshMs: number;
  private pollTimer: NodeJS.Timeout | undefined;
  private pollDelay = 0;
  private pollFailures = 0;
  private closed = false;
  /** Set by the daemon: re-arms the reclaimer when a reclaim is planned (here or, seen on catching up, by another replica). */
  onReclaimPlanned: (() => void) | undefined;

  private readonly replicaId: string | undefined;

  private constructor(private readonly store: Store, options: QuotaServiceOptions) {
    this.refreshMs = options.refreshMs ?? (store.kind === 'postgres' ? SHARED_REFRESH_MS : 0);
    this.replicaId = options.replicaId;
  }

  /** The request as this replica makes it. */
  private owned(req: AdmitRequest): AdmitRequest {
    return this.replicaId === undefined ? req : { ...req, replica: this.replicaId };
  }

  /** The service over the ledger the store holds (moving the layouts of before into their tables). */
  static async open(store: Store, options: QuotaServiceOptions = {}): Promise<QuotaService> {
    const q = new QuotaService(store, options);
    await q.reload();
    q.armPoll();
    return q;
  }

  /**
   * The in-memory ledger, for reads (evictions, operations, snapshots). Its mutating methods throw
   * when called directly: change it through this service, which persists what changes.
   */
  get ledger(): Ledger {
    return this.current;
  }

  private makeLedger(state: LedgerState | undefined): Ledger {
    // a state stored before a resource existed (disk) gets it filled in: see upgrade.ts
    if (state) fillMissingResources(state, UNLIMITED);
    return new Ledger(state, {
      auditLimit: 1000, // the in-memory log keeps only the latest entries; the store has them all
      onAudit: (e) => this.pending.push(e),
      transaction: (fn) => {
        const step = this.step;
        if (!step) throw new Error('the quota ledger is changed only through QuotaService (which persists it)');
        step.torn = true;
        const out = fn();
        step.torn = false;
        step.changed = true;
        return out;
      },
    });
  }

  /** Replace the in-memory ledger with what the store committed (inside the caller's transaction, or its own). */
  private async reload(): Promise<void> {
    const { state, version } = await loadState(this.store);
    this.pending.length = 0;
    this.current = this.makeLedger(state);
    this.version = version;
    this.stale = false;
  }

  /**
   * Inside a transaction holding the ledger lock: bring memory up to the stored version, reading
   * the state row and only the instance rows written since (ids are listed only when rows were
   * removed). Every read happens before memory changes, so a failed read leaves it as it was.
   * True when memory changed.
   */
  private async catchUp(): Promise<boolean> {
    if (this.stale) {
      await this.reload();
      return true;
    }
    const stored = await this.store.quotaLedgerVersion();
    if (stored === this.version) return false;
    const core = await this.store.loadQuotaState();
    const next = core === undefined ? undefined : (JSON.parse(core) as LedgerState);
    if (next === undefined || stored < this.version || next.audit.length > 0 || Object.keys(next.instances).length > 0 || Object.keys(next.projects).length > 0) {
      // gone, gone back (a restored backup), or written in a layout of before: read it all
      await this.reload();
      return true;
    }
    const held = this.current.raw;
    const instances = await rowsToCatchUp(held.instances as LedgerState['instances'], await this.store.loadQuotaInstancesSince(this.version), () => this.store.quotaInstanceIds());
    const projects = await rowsToCatchUp(held.projects as LedgerState['projects'], await this.store.loadQuotaProjectsSince(this.version), () => this.store.quotaProjectIds());
    // the old ledger is dropped here: its project and instance objects move over to the new one instead of being copied
    next.instances = instances.apply();
    next.projects = projects.apply();
    next.audit = [...this.current.raw.audit];
    this.pending.length = 0;
    this.current = this.makeLedger(next);
    this.version = stored;
    return true;
  }

  /** Memory caught up with other replicas' changes: waiters look again, the reclaimer re-arms for evictions planned elsewhere. */
  private caughtUp(): void {
    this.wake();
    if (this.current.evictions().length > 0) this.onReclaimPlanned?.();
  }

  /**
   * Catch up with what other replicas committed. Costs one version read when nothing changed.
   * Reads answer from memory: call this first when an answer must include changes made elsewhere
   * a moment ago (the poll bounds how stale they are otherwise). True when memory changed.
   */
  async refresh(): Promise<boolean> {
    if (!this.stale && (await this.store.quotaLedgerVersion()) === this.version) return false;
    return this.mutex.run(async () => {
      const changed = await this.store.transaction(async () => {
        await this.store.lockQuotaLedger();
        return this.catchUp();
      });
      if (changed) this.caughtUp();
      return changed;
    });
  }

  /** The next poll: every refreshMs, every 250 ms while a reclaim is awaited, backing off after failures. */
  private armPoll(): void {
    if (this.closed) return;
    const waiting = this.released.size > 0;
    const every = waiting ? WAITER_POLL_MS : this.refreshMs;
    if (every <= 0) return;
    const delay = Math.min(every * 2 ** Math.min(this.pollFailures, 10), MAX_POLL_BACKOFF_MS);
    if (this.pollTimer) {
      if (this.pollDelay <= delay) return;
      clearTimeout(this.pollTimer);
    }
    this.pollDelay = delay;
    // poll() catches everything it can meet: nothing is left to reject
    this.pollTimer = setTimeout(() => void this.poll(), delay);
    // a poll for reads alone does not keep the process alive; one for a waiter does (it awaits this)
    if (!waiting) this.pollTimer.unref();
  }

  /** The last waiter gone: back to the read poll's pace (or none), not keeping the process alive. */
  private waiterLeft(): void {
    if (this.released.size > 0 || !this.pollTimer) return;
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.armPoll();
  }

  private async poll(): Promise<void> {
    this.pollTimer = undefined;
    try {
      await this.refresh();
      this.pollFailures = 0;
    } catch (e) {
      if (this.pollFailures++ === 0) log.warn("checking the stored quota ledger for other replicas' changes failed; retrying", { error: e });
    }
    this.armPoll();
  }

  /** Stops the poll; waiters of pending reclaims are told the service closed. Call before closing the store. */
  close(): void {
    this.closed = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.wake();
  }

  private runStep<T>(fn: (ledger: Ledger) => T): StepOutcome<T> {
    this.step = { changed: false, torn: false };
    this.pending.length = 0;
    try {
      return { ok: true, value: fn(this.current), changed: this.step.changed, torn: false };
    } catch (error) {
      return { ok: false, error, changed: this.step.changed, torn: this.step.torn };
    } finally {
      this.step = undefined;
    }
  }

  /** The ledger's changed rows and the step's audit entries (inside the caller's transaction): the state first, compare-and-set. */
  private async writeChanges(): Promise<void> {
    const changes = this.current.changes();
    const audit = this.pending.map(auditRow);
    if (!(await this.store.saveQuotaStateIfVersion(changes.core, this.version))) throw new LedgerMoved();
    await this.store.saveQuotaProjects(changes.projects);
    await this.store.saveQuotaInstances(changes.instances);
    await this.store.appendQuotaAudit(audit);
  }

  /**
   * The one mutation path: alone (mutex), in one store transaction holding the ledger lock: catch
   * up with other replicas (on SQLite: verify afterwards), `alsoInTransaction`'s store work, the
   * synchronous ledger step, its changes. A step that throws after changing the ledger (a rejection that is audited, then
   * thrown) is persisted, then its error rethrown; a failed write restores the ledger from the
   * store; a write that lost to another replica's is retried on fresh state.
   */
  private mutate<T>(fn: (ledger: Ledger) => T, alsoInTransaction?: () => Promise<void>): Promise<T> {
    return this.mutex.run(async () => {
      // SQLite is mostly one process: decide first, then verify (a change by its compare-and-set,
      // anything else by a version read), which spares the embedded path a read per mutation
      let checkFirst = this.store.kind === 'postgres';
      for (let attempt = 1; ; attempt++) {
        let outcome: StepOutcome<T> | undefined;
        let caughtUp = false;
        try {
          await this.store.transaction(async () => {
            await this.store.lockQuotaLedger();
            if (checkFirst || this.stale) caughtUp = await this.catchUp();
            if (alsoInTransaction) await alsoInTransaction();
            outcome = this.runStep(fn);
            if (!checkFirst && !outcome.changed && !outcome.torn && (await this.store.quotaLedgerVersion()) !== this.version) throw new LedgerMoved();
            if (outcome.torn || (!outcome.ok && !outcome.changed)) throw outcome.error;
            if (outcome.changed) await this.writeChanges();
          });
        } catch (e) {
          if (outcome?.changed || outcome?.torn) await this.restore();
          else if (caughtUp) this.caughtUp();
          if (e instanceof LedgerMoved) {
            checkFirst = true; // decided on stale memory: catch up first this time
            if (attempt < MAX_ATTEMPTS) continue;
            throw new Conflict(`the quota ledger kept changing under this change (${attempt} attempts)`, { attempts: attempt });
          }
          throw e;
        } finally {
          this.pending.length = 0;
        }
        if (outcome!.changed) {
          this.version++; // committed as expected + 1
          this.current.markPersisted(); // those rows need not be written again
        }
        if (caughtUp) this.caughtUp();
        else if (outcome!.changed) this.wake();
        if (!outcome!.ok) throw outcome!.error;
        return outcome!.value as T;
      }
    });
  }

  /** After a failed write: back to what the store holds; if even that fails, before the next mutation. */
  private async restore(): Promise<void> {
    try {
      await this.reload();
    } catch (e) {
      this.stale = true;
      log.error('reloading the quota ledger after a failed write failed; retried before the next change', { error: e });
    } finally {
      this.wake(); // a reclaim planned in the lost change is gone: its waiter learns so
    }
  }

  private wake(): void {
    for (const wake of [...this.released]) wake();
  }

  /** Every store project exists in the ledger; a new one starts unlimited under its parent. */
  ensureProject(id: string, parent: string | null, alsoInTransaction?: () => Promise<void>): Promise<void> {
    return this.mutate((l) => this.createIfMissing(l, id, parent), alsoInTransaction);
  }

  /** ensureProject for many (parents before children, as listed), in one transaction: the daemon's start. */
  ensureProjects(projects: readonly { id: string; parentId: string | null }[]): Promise<void> {
    return this.mutate((l) => {
      for (const p of projects) this.createIfMissing(l, p.id, p.parentId);
    });
  }

  private createIfMissing(l: Ledger, id: string, parent: string | null): void {
    if (l.hasProject(id)) return;
    const hard = Object.fromEntries(RESOURCES.map((r) => [r, UNLIMITED])) as Vec;
    l.createProject(id, parent, parent ? {} : { hard }, Date.now());
  }

  /** Remove the project from the ledger (refused while it holds anything), with `alsoInTransaction`'s store work. */
  deleteProject(id: string, alsoInTransaction?: () => Promise<void>): Promise<void> {
    return this.mutate((l) => {
      if (l.hasProject(id)) l.deleteProject(id, Date.now());
    }, alsoInTransaction);
  }

  /** Admit or throw QuotaExceeded naming the deciding line; the rejection is audited first. */
  private async admitOrThrow(req: AdmitRequest): Promise<Decision> {
    const d = await this.mutate((l) => l.admit(this.owned(req), Date.now()));
    if (!d.admitted) throw new QuotaExceeded(d.reason, { ...d.decidedBy, instance: d.instance });
    return d;
  }

  /** Admit a container or throw QuotaExceeded naming the deciding line. */
  admitContainer(id: string, projectId: string, config: ContainerRecord['config']): Promise<Decision> {
    return this.admitOrThrow({ instanceId: id, project: projectId, resources: containerDemand(config), kind: 'container' });
  }

  /**
   * Admit a container now, or, when its project lent the capacity to siblings (or its deserved pool
   * share is in use), plan a reclaim: `done` settles when the borrowers' instances have been evicted
   * after their grace period and the container is admitted. Rejected (QuotaExceeded) when even a
   * reclaim cannot make room.
   */
  async admitContainerOrPlanReclaim(id: string, projectId: string, config: ContainerRecord['config']): Promise<{ decision: Decision } | { reclaim: ReclaimOperation; done: Promise<Decision> }> {
    const req: AdmitRequest = { instanceId: id, project: projectId, resources: containerDemand(config), kind: 'container' };
    const { decision, operation } = await this.mutate((l) => l.admitOrReclaim(this.owned(req), Date.now()));
    if (decision.admitted) return { decision };
    if (!operation) throw new QuotaExceeded(decision.reason, { ...decision.decidedBy, instance: id });
    this.onReclaimPlanned?.();
    // the operation as the ledger holds it now (undefined: lost with a write that failed and was undone)
    const status = () => {
      try {
        return this.current.operation(operation.id);
      } catch {
        return undefined;
      }
    };
    // woken by this replica's changes, and by the poll (every 250 ms while waiting) for other replicas' releases
    const done = new Promise<void>((ok) => {
      const check = () => {
        if (!this.closed && status()?.status === 'pending') return;
        this.released.delete(check);
        this.waiterLeft();
        ok();
      };
      this.released.add(check);
      this.armPoll();
      check();
    }).then((): Decision => {
      const after = status();
      if (!after) throw new QuotaExceeded(`reclaim ${operation.id} was lost`, { operation: operation.id, instance: id });
      if (after.status === 'pending') throw new Unavailable(`the quota service closed while reclaim ${after.id} was pending`, { operation: after.id, instance: id });
      if (after.status !== 'done') throw new QuotaExceeded(`reclaim ${after.id} ${after.status}: ${after.reason}`, { operation: after.id, instance: id });
      return { ...decision, admitted: true, reason: after.reason };
    });
    return { reclaim: operation, done };
  }

  /** Admit a container, waiting through a reclaim if one is needed (see admitContainerOrPlanReclaim). */
  async admitContainerReclaiming(id: string, projectId: string, config: ContainerRecord['config']): Promise<Decision> {
    const r = await this.admitContainerOrPlanReclaim(id, projectId, config);
    return 'decision' in r ? r.decision : r.done;
  }

  /**
   * Does the ledger hold this instance (a reclaimed container holds nothing until started again)?
   * From memory: with replicas, as stale as reads are (see QuotaServiceOptions). To admit an
   * instance unless it is held, use admitContainerUnlessHeld / admitVmUnlessHeld, which decide on
   * the stored ledger.
   */
  holds(id: string): boolean {
    return this.current.holds(id);
  }

  /**
   * Whether another process may change the ledger (a store other processes share): then only the
   * stored ledger can say an instance still holds its quota. On the embedded store this process
   * is the only writer and holds() is the truth, with no store round trip on every start.
   */
  get shared(): boolean {
    return this.store.kind === 'postgres';
  }

  /** In one step on the stored ledger: nothing if the instance holds quota already, else admit it or throw QuotaExceeded. */
  private async admitUnlessHeld(req: AdmitRequest): Promise<void> {
    const d = await this.mutate((l) => (l.holds(req.instanceId) ? undefined : l.admit(this.owned(req), Date.now())));
    if (d && !d.admitted) throw new QuotaExceeded(d.reason, { ...d.decidedBy, instance: d.instance });
  }

  /** A container started again: admitted unless it still holds its quota (a reclaim released it, maybe on another replica). */
  admitContainerUnlessHeld(id: string, projectId: string, config: ContainerRecord['config']): Promise<void> {
    return this.admitUnlessHeld({ instanceId: id, project: projectId, resources: containerDemand(config), kind: 'container' });
  }

  /** A VM resumed or started again: admitted unless it still holds its quota. */
  admitVmUnlessHeld(id: string, projectId: string, demand: { cpus: number; memoryMiB: number }): Promise<void> {
    return this.admitUnlessHeld({ instanceId: id, project: projectId, resources: { instances: 1, cpus: demand.cpus, memory: demand.memoryMiB }, kind: 'vm' });
  }

  /** Admit a VM: one instance, its vCPUs, its guest memory in MiB. */
  admitVm(id: string, projectId: string, demand: { cpus: number; memoryMiB: number }): Promise<Decision> {
    const resources = { instances: 1, cpus: demand.cpus, memory: demand.memoryMiB };
    return this.admitOrThrow({ instanceId: id, project: projectId, resources, kind: 'vm' });
  }

  /** Admit a network: one of the project's `networks` (never borrowed back by a reclaim). */
  async admitNetwork(id: string, projectId: string): Promise<void> {
    await this.admitOrThrow({ instanceId: id, project: projectId, resources: { instances: 0, networks: 1 }, kind: 'network' });
  }

  /**
   * Admit a named volume: one of the project's `volumes` and its size in MiB of `disk` (never
   * reclaimed: evicting a volume would be losing its data). Its id is the ledger instance's.
   * Not tagged with this replica: the leader's sweep of gone replicas (control/leader/gone-replicas.ts)
   * releases a tagged charge that has no container, VM or network record, and would release every
   * volume's once the replica that made it stopped. A charge whose create died before its row is
   * released by the leader's start-time reconcile instead (its id is no live volume).
   */
  async admitVolume(id: string, projectId: string, sizeMiB: number): Promise<void> {
    await this.admitOrThrow({ instanceId: id, project: projectId, resources: { instances: 0, volumes: 1, disk: sizeMiB }, kind: 'volume' });
  }

  /** Admit a block volume's snapshot: its volume's size in MiB of `disk` (Cinder counts snapshots in gigabytes too), no instance nor volume. */
  async admitVolumeSnapshot(id: string, projectId: string, sizeMiB: number): Promise<void> {
    await this.admitOrThrow({ instanceId: id, project: projectId, resources: { instances: 0, disk: sizeMiB }, kind: 'volume' });
  }

  /**
   * Admit an image build: its CPUs (whole ones, rounded up) and memory in MiB, no instance, held
   * while it runs and released after (never reclaimed: a build is short). QuotaExceeded naming the
   * deciding line otherwise.
   */
  async admitBuild(id: string, projectId: string, demand: { cpus: number; memoryBytes: number }): Promise<void> {
    const resources = { instances: 0, cpus: Math.ceil(demand.cpus), memory: Math.ceil(demand.memoryBytes / MiB) };
    await this.admitOrThrow({ instanceId: id, project: projectId, resources, kind: 'build' });
  }

  /** Give back what the instance holds (nothing happens when it holds nothing). */
  release(id: string, reason: string): Promise<void> {
    return this.mutate((l) => {
      if (l.holds(id)) l.release(id, Date.now(), reason);
    });
  }

  explain(projectId: string, resources: PartialVec): Decision {
    return this.current.explain({ instanceId: `explain-${Date.now()}`, project: projectId, resources }, Date.now());
  }

  /**
   * Bytes a container created without a memory size is given (limited and charged) in the project,
   * in whole MiB as the ledger counts: while its memory is limited (any project but an unlimited
   * root: a child's hard limit is handed down within its parent's), the nearest
   * containerMemoryDefault set on it or above it, else the daemon's (`daemonDefaultBytes`);
   * undefined (best effort: unlimited, charged nothing) where memory is unlimited or the default
   * found is 0. From memory, as stale as reads are (QuotaServiceOptions).
   */
  unsizedContainerMemory(projectId: string, daemonDefaultBytes: number): number | undefined {
    if (!this.current.hasProject(projectId) || this.current.hardLimit(projectId, 'memory') >= UNLIMITED) return undefined;
    const mib = this.current.containerMemoryDefault(projectId) ?? Math.ceil(daemonDefaultBytes / MiB);
    return mib > 0 ? mib * MiB : undefined;
  }

  /**
   * Bytes the writable layer of a container created without a storage size may hold in the
   * project (bounded, and charged to its disk) while its disk is limited (any project but an
   * unlimited root): the nearest containerStorageDefault set on it or above it, else the daemon's
   * `daemonDefaultBytes`, whole MiB; undefined (unbounded, as under Docker) where disk is unlimited
   * or the default found is 0.
   */
  unsizedContainerStorage(projectId: string, daemonDefaultBytes: number): number | undefined {
    if (!this.current.hasProject(projectId) || this.current.hardLimit(projectId, 'disk') >= UNLIMITED) return undefined;
    const mib = this.current.containerStorageDefault(projectId) ?? Math.ceil(daemonDefaultBytes / MiB);
    return mib > 0 ? mib * MiB : undefined;
  }

  show(projectId: string): ProjectView {
    return this.current.show(projectId);
  }

  async setLimits(projectId: string, patch: LimitsPatch): Promise<ProjectView> {
    const d = patch.containerMemoryDefault;
    if (typeof d === 'number' && d > 0 && d < MIN_CONTAINER_MEMORY_MIB) throw new InvalidArgument(`a container memory default is 0 (none: best effort) or at least ${MIN_CONTAINER_MEMORY_MIB} MiB, got ${d}`);
    const st = patch.containerStorageDefault;
    if (typeof st === 'number' && st > 0 && (st < MIN_STORAGE_BYTES / MiB || st > MAX_STORAGE_BYTES / MiB)) {
      throw new InvalidArgument(`a container storage default is 0 (none: unbounded) or from ${MIN_STORAGE_BYTES / MiB} MiB to 16 TiB, got ${st} MiB`);
    }
    return this.mutate((l) => l.setLimits(projectId, patch, Date.now()));
  }

  /** Pools are named per owner: the ledger id is "<owner id>/<name>", so names never collide across tenants. */
  createPool(owner: string, name: string, capacity: PartialVec, weights: Record<string, number>): Promise<PoolView> {
    return this.mutate((l) => l.createPool(`${owner}/${name}`, owner, capacity, weights, Date.now()));
  }

  updatePool(owner: string, name: string, patch: { capacity?: PartialVec; weights?: Record<string, number> }): Promise<PoolView> {
    return this.mutate((l) => l.updatePool(`${owner}/${name}`, patch, Date.now()));
  }

  /** Active loans the project made or took. */
  loans(projectId: string): Loan[] {
    return [...this.current.loans({ lender: projectId }), ...this.current.loans({ borrower: projectId })];
  }

  /** Audit entries from the store, oldest first: the newest `limit` (default 10,000) after sinceSeq. */
  async audit(filter: { project?: string; projects?: readonly string[]; sinceSeq?: number; limit?: number }): Promise<AuditEntry[]> {
    const rows = await this.store.queryQuotaAudit({ ...filter, limit: filter.limit ?? 10_000 });
    return rows.map((j) => JSON.parse(j) as AuditEntry);
  }

  /**
   * Instances admitted by a replica that is not among `aliveReplicas` (a process that died), on the
   * stored ledger: what a dead replica's creates may have left half-made.
   */
  async admittedByGoneReplicas(aliveReplicas: ReadonlySet<string>): Promise<string[]> {
    await this.refresh();
    return Object.values(this.current.raw.instances).filter((i) => i.replica !== undefined && !aliveReplicas.has(i.replica)).map((i) => i.id);
  }

  /**
   * Daemon start, or a new leader: instances the ledger holds for containers or VMs that no longer
   * exist are released (all in one transaction). Returns how many.
   *
   * What another live replica admitted is left to it (`otherLiveReplicas`): its create may be in
   * flight, charged with its record not written yet, and releasing it would admit past the quota
   * (the leader's pass and a create on another replica race at every failover). If that replica
   * dies, the gone-replica sweep settles what it left.
   */
  reconcile(liveInstanceIds: Set<string>, otherLiveReplicas: ReadonlySet<string> = new Set()): Promise<number> {
    const othersInFlight = (replica: string | undefined) => replica !== undefined && replica !== this.replicaId && otherLiveReplicas.has(replica);
    return this.mutate((l) => {
      // A create waiting for a reclaim does not survive a restart (its Operation is failed as interrupted):
      // spare its victims rather than evict them for an instance nobody will create.
      for (const op of Object.values(l.raw.operations)) {
        if (op.status === 'pending' && !liveInstanceIds.has(op.request.instanceId) && !othersInFlight(op.request.replica)) l.cancelReclaim(op.id, Date.now());
      }
      let released = 0;
      for (const [id, instance] of Object.entries(l.raw.instances)) {
        if (!liveInstanceIds.has(id) && !othersInFlight(instance.replica)) {
          l.release(id, Date.now(), 'reconciled: the instance no longer exists');
          released++;
        }
      }
      return released;
    });
  }
}
