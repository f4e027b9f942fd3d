/**
 * The hierarchical quota ledger (see README.md for the model).
 *
 * Pure and synchronous: no I/O, no clock — every mutating call takes `now`
 * (epoch ms). State is one plain serialisable object (LedgerState). Every
 * mutation runs inside `mutate()`, the single place a persistence layer wraps
 * in a database transaction (`LedgerOptions.transaction`); validation happens
 * before any write, so a thrown error leaves the state untouched.
 */
import { Conflict, InvalidArgument, NotFound, QuotaExceeded } from '../../core/errors.js';
import { demandOf, evaluate, freeOf, lendableOf, type DecidedBy, type Evaluation, type PlannedLoan } from './admission.js';
import { deservedVec, memberUse, NO_FENCES, type Fences } from './pools.js';
import { planReclaim, type ReclaimPlan } from './reclaim.js';
import { RESOURCES, addInto, checkAmount, compact, copy, isZero, vec, zero, type PartialVec, type Resource, type Vec } from './resources.js';
import {
  emptyState,
  type AdmitRequest,
  type AuditEntry,
  type AuditKind,
  type InstanceState,
  type LedgerState,
  type Loan,
  type PoolCharge,
  type PoolState,
  type ProjectState,
  type ReclaimOperation,
  type Victim,
} from './state.js';

export type { AdmitRequest, AuditEntry, LedgerState, Loan, PoolCharge, ReclaimOperation, Victim } from './state.js';
export type { DecidedBy, LedgerLine, PlannedLoan } from './admission.js';
export type { ReclaimPlan } from './reclaim.js';

export interface Decision {
  admitted: boolean;
  project: string;
  instance: string;
  reason: string;
  decidedBy: DecidedBy;
  demand: PartialVec;
  /** Part of the demand charged to the project's own hard limit. */
  own: PartialVec;
  loans: PlannedLoan[];
  poolCharges: PoolCharge[];
  /** Only from explain() and admitOrReclaim() when not admitted: what a reclaim would evict. */
  reclaim?: ReclaimPlan;
}

export interface LimitsPatch {
  hard?: PartialVec;
  reserved?: PartialVec;
  lendingLimit?: PartialVec;
  borrowingLimit?: PartialVec;
  gracePeriodMs?: number;
  /** MiB an unsized container is given here (ProjectState.containerMemoryDefault); null: its parent's again. */
  containerMemoryDefault?: number | null;
  /** MiB an unsized container's writable layer may hold here (ProjectState.containerStorageDefault); null: its parent's again. */
  containerStorageDefault?: number | null;
}

export interface ResourceFigures {
  hard: number;
  used: number;
  reserved: number;
  allocated: number;
  /** hard − own − reserved − allocated − lent; equals the article's hard − used − reserved − allocated without loans or pools. */
  free: number;
  own: number;
  lent: number;
  borrowed: number;
  pool: number;
  lendingLimit: number;
  borrowingLimit: number;
  lendable: number;
}

export interface PoolView {
  id: string;
  owner: string;
  capacity: PartialVec;
  used: PartialVec;
  members: { project: string; weight: number; deserved: PartialVec; used: PartialVec }[];
}

export interface ProjectView {
  id: string;
  parent: string | null;
  children: string[];
  gracePeriodMs: number;
  /** Its own setting (LimitsPatch.containerMemoryDefault); null: inherited. */
  containerMemoryDefault: number | null;
  /** Its own setting (LimitsPatch.containerStorageDefault); null: inherited. */
  containerStorageDefault: number | null;
  resources: Record<Resource, ResourceFigures>;
  pools: PoolView[];
  memberOf: string[];
}

export interface DueEviction extends Victim {
  operation: string;
}

export interface LedgerOptions {
  /** Wrap each mutation (e.g. in a SQLite transaction). Must call fn exactly once and return its result. */
  transaction?: <T>(fn: () => T) => T;
  /** Called for each audit entry as it is committed (e.g. to persist it). */
  onAudit?: (e: AuditEntry) => void;
  /** In-memory audit entries kept (oldest dropped first); default 100,000. */
  auditLimit?: number;
  /**
   * How long a finished reclaim operation stays in the state after it completed (its waiters read
   * how it ended; the audit keeps its entries for good); default 10 minutes.
   */
  finishedOperationRetentionMs?: number;
}

const FINISHED_OPERATION_RETENTION_MS = 10 * 60_000;

type Emit = (kind: AuditKind, project: string, reason: string, extra?: Partial<Pick<AuditEntry, 'instance' | 'operation' | 'data'>>) => void;

function bad(msg: string, details?: Record<string, unknown>): never {
  throw new InvalidArgument(msg, details);
}

/** What changed since the last markPersisted(): the state without projects, instances and audit, and the projects and instances that changed (null: gone). */
export interface LedgerChanges {
  core: string;
  projects: { id: string; json: string | null }[];
  instances: { id: string; json: string | null }[];
}

export class Ledger {
  private readonly state: LedgerState;
  private readonly opts: LedgerOptions;
  private fenceCache: Fences | undefined;
  private inMutation = false;
  /**
   * Instances added, changed or removed since the last markPersisted(). Instances are the part of
   * the state that grows with use; saving only the changed ones keeps each admission's save
   * independent of how many instances there are (the property test checks nothing is missed).
   */
  private readonly dirtyInstances = new Set<string>();
  /**
   * Projects looked up for a change since the last markPersisted(), changed or not: the projects
   * are the part of the state that grows with tenants, and stringifying all of them at each
   * admission cost 28 ms (1,000 projects) to 173 ms (10,000) here. Every change starts with a
   * lookup: through project() (which notes it; reads use peek()), or inside a mutation through
   * `state.projects`, then a view that notes every project taken from it. The property test
   * checks that the saved rows miss nothing.
   */
  private readonly dirtyProjects = new Set<string>();

  constructor(state: LedgerState = emptyState(), opts: LedgerOptions = {}) {
    if (state.version !== 1) bad(`unsupported ledger state version ${String(state.version)}`);
    this.state = state;
    this.opts = opts;
  }

  /** A deep copy of the whole state (serialisable with JSON.stringify). */
  snapshot(): LedgerState {
    return structuredClone(this.state);
  }

  /** For a persistence layer that keeps instances as rows: the core and the instances changed since markPersisted(). */
  changes(): LedgerChanges {
    const instances = [...this.dirtyInstances].map((id) => {
      const inst = this.state.instances[id];
      return { id, json: inst === undefined ? null : JSON.stringify(inst) };
    });
    const projects = [...this.dirtyProjects].map((id) => {
      const p = this.state.projects[id];
      return { id, json: p === undefined ? null : JSON.stringify(p) };
    });
    return { core: JSON.stringify({ ...this.state, projects: {}, instances: {}, audit: [] }), projects, instances };
  }

  /** The changes() last taken are stored. */
  markPersisted(): void {
    this.dirtyInstances.clear();
    this.dirtyProjects.clear();
  }

  /** `projects` as a mutation sees it: every project taken, set or deleted is noted as changed. */
  private noting(projects: Record<string, ProjectState>): Record<string, ProjectState> {
    const dirty = this.dirtyProjects;
    return new Proxy(projects, {
      get(target, key, receiver) {
        if (typeof key === 'string' && Object.hasOwn(target, key)) dirty.add(key);
        return Reflect.get(target, key, receiver) as unknown;
      },
      set(target, key, value, receiver) {
        if (typeof key === 'string') dirty.add(key);
        return Reflect.set(target, key, value, receiver);
      },
      deleteProperty(target, key) {
        if (typeof key === 'string') dirty.add(key);
        return Reflect.deleteProperty(target, key);
      },
      defineProperty(target, key, desc) {
        if (typeof key === 'string') dirty.add(key);
        return Reflect.defineProperty(target, key, desc);
      },
    });
  }

  // ---------------------------------------------------------------- the one mutation path

  private mutate<T>(at: number, fn: (emit: Emit) => T): T {
    if (this.inMutation) throw new Error('Ledger.mutate is not re-entrant');
    if (!Number.isFinite(at)) bad(`now must be a finite timestamp, got ${String(at)}`);
    const run = (): T => {
      this.inMutation = true;
      const pending: AuditEntry[] = [];
      const projects = this.state.projects;
      this.state.projects = this.noting(projects);
      try {
        const emit: Emit = (kind, project, reason, extra) => {
          pending.push({ seq: 0, at, kind, project, reason, ...extra });
        };
        const result = fn(emit);
        for (const e of pending) {
          e.seq = ++this.state.seq;
          this.state.audit.push(e);
          this.opts.onAudit?.(e);
        }
        const limit = this.opts.auditLimit ?? 100_000;
        if (this.state.audit.length > limit + Math.max(1, limit >> 3)) this.state.audit.splice(0, this.state.audit.length - limit);
        this.pruneFinishedOperations(at);
        return result;
      } finally {
        this.state.projects = projects;
        this.inMutation = false;
        this.fenceCache = undefined;
      }
    };
    return this.opts.transaction ? this.opts.transaction(run) : run();
  }

  private nextId(prefix: string): string {
    return `${prefix}-${++this.state.seq}`;
  }

  // ---------------------------------------------------------------- lookups

  /** A project a change may follow: noted for the next save (see dirtyProjects), inside a mutation or before it. */
  private project(id: string): ProjectState {
    const p = this.peek(id);
    this.dirtyProjects.add(id);
    return p;
  }

  /** A project only read (views, limits, defaults): not noted. */
  private peek(id: string): ProjectState {
    const p = this.state.projects[id];
    if (p === undefined) throw new NotFound(`project ${id} not found`, { project: id });
    return p;
  }

  private pool(id: string): PoolState {
    const p = this.state.pools[id];
    if (p === undefined) throw new NotFound(`pool ${id} not found`, { pool: id });
    return p;
  }

  private fences(): Fences {
    if (this.fenceCache !== undefined) return this.fenceCache;
    const lenders = new Set<string>();
    const pools = new Map<string, Set<string>>();
    for (const op of Object.values(this.state.operations)) {
      if (op.status !== 'pending') continue;
      lenders.add(op.project);
      for (const pid of op.fencedPools) {
        let s = pools.get(pid);
        if (s === undefined) pools.set(pid, (s = new Set()));
        s.add(op.project);
      }
    }
    this.fenceCache = lenders.size === 0 && pools.size === 0 ? NO_FENCES : { lenders, pools };
    return this.fenceCache;
  }

  hasProject(id: string): boolean {
    return this.state.projects[id] !== undefined;
  }

  /** A project's hard limit of one resource. */
  hardLimit(id: string, r: Resource): number {
    return this.peek(id).hard[r];
  }

  /** The nearest containerMemoryDefault set on the project or above it; undefined: none is. */
  containerMemoryDefault(id: string): number | undefined {
    return this.nearest(id, 'containerMemoryDefault');
  }

  /** The nearest containerStorageDefault set on the project or above it; undefined: none is. */
  containerStorageDefault(id: string): number | undefined {
    return this.nearest(id, 'containerStorageDefault');
  }

  private nearest(id: string, setting: 'containerMemoryDefault' | 'containerStorageDefault'): number | undefined {
    for (let p: ProjectState | undefined = this.peek(id); p; p = p.parent === null ? undefined : this.state.projects[p.parent]) {
      if (p[setting] !== undefined) return p[setting];
    }
    return undefined;
  }

  instance(id: string): InstanceState | undefined {
    const i = this.state.instances[id];
    return i === undefined ? undefined : structuredClone(i);
  }

  /** Whether the instance holds quota here (instance() without its copy: a start asks this, and the copy was 2–3 % of a burst's event loop). */
  holds(id: string): boolean {
    return this.state.instances[id] !== undefined;
  }

  operation(id: string): ReclaimOperation {
    const op = this.state.operations[id];
    if (op === undefined) throw new NotFound(`operation ${id} not found`, { operation: id });
    return structuredClone(op);
  }

  loans(filter: { lender?: string; borrower?: string; instance?: string } = {}): Loan[] {
    return Object.values(this.state.loans)
      .filter((l) => (filter.lender === undefined || l.lender === filter.lender) && (filter.borrower === undefined || l.borrower === filter.borrower) && (filter.instance === undefined || l.instance === filter.instance))
      .map((l) => ({ ...l }));
  }

  auditLog(filter: { project?: string; kind?: AuditKind; instance?: string; sinceSeq?: number } = {}): AuditEntry[] {
    return this.state.audit.filter(
      (e) =>
        (filter.project === undefined || e.project === filter.project) &&
        (filter.kind === undefined || e.kind === filter.kind) &&
        (filter.instance === undefined || e.instance === filter.instance) &&
        (filter.sinceSeq === undefined || e.seq > filter.sinceSeq),
    );
  }

  show(id: string): ProjectView {
    const p = this.peek(id);
    const fences = this.fences();
    const resources = {} as Record<Resource, ResourceFigures>;
    for (const r of RESOURCES) {
      resources[r] = {
        hard: p.hard[r],
        used: p.used[r],
        reserved: p.reserved[r],
        allocated: p.allocated[r],
        free: freeOf(p, r),
        own: p.own[r],
        lent: p.lent[r],
        borrowed: p.borrowed[r],
        pool: p.pooled[r],
        lendingLimit: p.lendingLimit[r],
        borrowingLimit: p.borrowingLimit[r],
        lendable: lendableOf(p, r, fences),
      };
    }
    return {
      id: p.id,
      parent: p.parent,
      children: [...p.children],
      gracePeriodMs: p.gracePeriodMs,
      containerMemoryDefault: p.containerMemoryDefault ?? null,
      containerStorageDefault: p.containerStorageDefault ?? null,
      resources,
      pools: p.pools.map((pid) => this.poolView(this.pool(pid))),
      memberOf: [...p.memberOf],
    };
  }

  private poolView(pool: PoolState): PoolView {
    return {
      id: pool.id,
      owner: pool.owner,
      capacity: compact(pool.capacity),
      used: compact(pool.used),
      members: Object.entries(pool.weights).map(([m, w]) => ({ project: m, weight: w, deserved: compact(deservedVec(pool, m)), used: compact(memberUse(pool, m)) })),
    };
  }

  // ---------------------------------------------------------------- projects and limits

  createProject(id: string, parent: string | null, limits: LimitsPatch = {}, now = 0): ProjectView {
    if (typeof id !== 'string' || id.length === 0) bad('project id must be a non-empty string');
    if (this.state.projects[id] !== undefined) throw new Conflict(`project ${id} already exists`, { project: id });
    const par = parent === null ? undefined : this.project(parent);
    const p: ProjectState = {
      id,
      parent,
      children: [],
      hard: zero(),
      reserved: zero(),
      lendingLimit: zero(),
      borrowingLimit: zero(),
      gracePeriodMs: 0,
      used: zero(),
      own: zero(),
      allocated: zero(),
      lent: zero(),
      borrowed: zero(),
      pooled: zero(),
      pools: [],
      memberOf: [],
    };
    const next = this.checkLimits(p, limits);
    this.mutate(now, (emit) => {
      this.state.projects[id] = p;
      par?.children.push(id);
      emit('project', id, parent === null ? 'created root project' : `created under ${parent}`);
      this.applyLimits(p, next, emit);
    });
    return this.show(id);
  }

  /** Remove a project with no children, instances, loans or pools; its hard limit returns to the parent's free. */
  deleteProject(id: string, now = 0): void {
    const p = this.project(id);
    if (p.children.length > 0) throw new Conflict(`project ${id} has children`, { project: id });
    if (!isZero(p.used) || !isZero(p.lent) || !isZero(p.borrowed)) throw new Conflict(`project ${id} still has instances or loans`, { project: id });
    if (p.pools.length > 0) throw new Conflict(`project ${id} owns pools ${p.pools.join(', ')}`, { project: id });
    if (Object.values(this.state.operations).some((o) => o.status === 'pending' && o.project === id)) throw new Conflict(`project ${id} has a pending reclaim`);
    this.mutate(now, (emit) => {
      const par = p.parent === null ? undefined : this.state.projects[p.parent];
      if (par !== undefined) {
        addInto(par.allocated, p.hard, -1);
        par.children = par.children.filter((c) => c !== id);
      }
      for (const pid of p.memberOf) {
        const pool = this.state.pools[pid];
        if (pool === undefined) continue;
        delete pool.weights[id];
        delete pool.usedBy[id];
      }
      delete this.state.projects[id];
      emit('project', id, 'deleted');
    });
  }

  private checkLimits(p: ProjectState, patch: LimitsPatch): { hard: Vec; reserved: Vec; lendingLimit: Vec; borrowingLimit: Vec; gracePeriodMs: number; containerMemoryDefault: number | undefined; containerStorageDefault: number | undefined } {
    const setting = (name: 'containerMemoryDefault' | 'containerStorageDefault') => {
      const v = patch[name];
      return v === undefined ? p[name] : v === null ? undefined : checkAmount(name, v);
    };
    const next = {
      containerMemoryDefault: setting('containerMemoryDefault'),
      containerStorageDefault: setting('containerStorageDefault'),
      hard: vec(patch.hard, 'hard', p.hard),
      reserved: vec(patch.reserved, 'reserved', p.reserved),
      lendingLimit: vec(patch.lendingLimit, 'lendingLimit', p.lendingLimit),
      borrowingLimit: vec(patch.borrowingLimit, 'borrowingLimit', p.borrowingLimit),
      gracePeriodMs: patch.gracePeriodMs === undefined ? p.gracePeriodMs : checkAmount('gracePeriodMs', patch.gracePeriodMs),
    };
    const par = p.parent === null ? undefined : this.state.projects[p.parent];
    for (const r of RESOURCES) {
      if (next.lendingLimit[r] < p.lent[r]) throw new Conflict(`${p.id}: lendingLimit.${r} ${next.lendingLimit[r]} is below what is lent (${p.lent[r]}); reclaim first`, { project: p.id, resource: r, line: 'lendingLimit' });
      if (next.borrowingLimit[r] < p.borrowed[r]) throw new Conflict(`${p.id}: borrowingLimit.${r} ${next.borrowingLimit[r]} is below what is borrowed (${p.borrowed[r]})`, { project: p.id, resource: r, line: 'borrowingLimit' });
      const committed = p.own[r] + next.reserved[r] + p.allocated[r] + p.lent[r];
      if (committed > next.hard[r]) {
        const details = { project: p.id, resource: r, line: 'free', hard: next.hard[r], used: p.own[r], reserved: next.reserved[r], allocated: p.allocated[r], lent: p.lent[r] };
        const msg = `${p.id}: ${r} hard ${next.hard[r]} < used ${p.own[r]} + reserved ${next.reserved[r]} + allocated ${p.allocated[r]} + lent ${p.lent[r]}`;
        if (next.hard[r] < p.hard[r]) throw new Conflict(msg, details);
        throw new QuotaExceeded(msg, details);
      }
      const delta = next.hard[r] - p.hard[r];
      if (par !== undefined && delta > 0 && delta > freeOf(par, r)) {
        throw new QuotaExceeded(`${p.id}: raising ${r} hard by ${delta} exceeds parent ${par.id}'s free ${freeOf(par, r)}`, { project: par.id, resource: r, line: 'free', requested: delta, free: freeOf(par, r) });
      }
    }
    return next;
  }

  private applyLimits(p: ProjectState, next: ReturnType<Ledger['checkLimits']>, emit: Emit): void {
    const par = p.parent === null ? undefined : this.state.projects[p.parent];
    if (par !== undefined) for (const r of RESOURCES) par.allocated[r] += next.hard[r] - p.hard[r];
    // the audit entry's view of the settings, before and after
    const settings = () => ({ hard: compact(p.hard), reserved: compact(p.reserved), lendingLimit: compact(p.lendingLimit), borrowingLimit: compact(p.borrowingLimit), gracePeriodMs: p.gracePeriodMs, containerMemoryDefault: p.containerMemoryDefault ?? null, containerStorageDefault: p.containerStorageDefault ?? null });
    const before = settings();
    p.hard = next.hard;
    p.reserved = next.reserved;
    p.lendingLimit = next.lendingLimit;
    p.borrowingLimit = next.borrowingLimit;
    p.gracePeriodMs = next.gracePeriodMs;
    for (const name of ['containerMemoryDefault', 'containerStorageDefault'] as const) {
      const v = next[name];
      if (v === undefined) delete p[name];
      else p[name] = v;
    }
    emit('limits', p.id, 'limits set', { data: { before, after: settings() } });
  }

  /** Change limits. A child's hard can only grow within its parent's free; nothing can drop below what is committed. */
  setLimits(id: string, patch: LimitsPatch, now = 0): ProjectView {
    const p = this.project(id);
    const next = this.checkLimits(p, patch);
    this.mutate(now, (emit) => {
      this.applyLimits(p, next, emit);
      this.completeOperations(now, emit);
    });
    return this.show(id);
  }

  // ---------------------------------------------------------------- pools

  /** Set `capacity` of `owner`'s free aside as a pool shared by some of its direct children with weights. */
  createPool(id: string, owner: string, capacity: PartialVec, weights: Record<string, number>, now = 0): PoolView {
    if (this.state.pools[id] !== undefined) throw new Conflict(`pool ${id} already exists`, { pool: id });
    const o = this.project(owner);
    const cap = vec(capacity, 'capacity');
    this.checkWeights(o, weights, undefined);
    for (const r of RESOURCES) {
      if (cap[r] > freeOf(o, r)) throw new QuotaExceeded(`pool ${id}: ${r} capacity ${cap[r]} exceeds ${owner}'s free ${freeOf(o, r)}`, { project: owner, resource: r, line: 'free' });
    }
    this.mutate(now, (emit) => {
      const pool: PoolState = { id, owner, capacity: cap, weights: { ...weights }, used: zero(), usedBy: {} };
      this.state.pools[id] = pool;
      o.pools.push(id);
      addInto(o.allocated, cap);
      for (const m of Object.keys(weights)) this.project(m).memberOf.push(id);
      emit('pool', owner, `created pool ${id}`, { data: { pool: id, capacity: compact(cap), weights: { ...weights } } });
    });
    return this.poolView(this.pool(id));
  }

  private checkWeights(owner: ProjectState, weights: Record<string, number>, pool: PoolState | undefined): void {
    if (typeof weights !== 'object' || weights === null || Object.keys(weights).length === 0) bad('a pool needs at least one member with a weight');
    for (const [m, w] of Object.entries(weights)) {
      const mp = this.project(m);
      if (mp.parent !== owner.id) bad(`pool member ${m} is not a direct child of ${owner.id}`, { member: m });
      if (typeof w !== 'number' || !Number.isFinite(w) || w <= 0) bad(`weight of ${m} must be a positive number`, { member: m });
    }
    if (pool !== undefined) {
      for (const m of Object.keys(pool.weights)) {
        if (weights[m] === undefined && !isZero(memberUse(pool, m))) throw new Conflict(`pool ${pool.id}: member ${m} still uses the pool`, { member: m });
      }
    }
  }

  updatePool(id: string, patch: { capacity?: PartialVec; weights?: Record<string, number> }, now = 0): PoolView {
    const pool = this.pool(id);
    const o = this.project(pool.owner);
    const cap = vec(patch.capacity, 'capacity', pool.capacity);
    if (patch.weights !== undefined) this.checkWeights(o, patch.weights, pool);
    for (const r of RESOURCES) {
      if (cap[r] < pool.used[r]) throw new Conflict(`pool ${id}: ${r} capacity ${cap[r]} below its use ${pool.used[r]}`, { pool: id, resource: r });
      const delta = cap[r] - pool.capacity[r];
      if (delta > freeOf(o, r)) throw new QuotaExceeded(`pool ${id}: growing ${r} by ${delta} exceeds ${o.id}'s free ${freeOf(o, r)}`, { project: o.id, resource: r, line: 'free' });
    }
    this.mutate(now, (emit) => {
      for (const r of RESOURCES) o.allocated[r] += cap[r] - pool.capacity[r];
      pool.capacity = cap;
      if (patch.weights !== undefined) {
        for (const m of Object.keys(pool.weights)) {
          if (patch.weights[m] === undefined) {
            const mp = this.state.projects[m];
            if (mp !== undefined) mp.memberOf = mp.memberOf.filter((x) => x !== id);
            delete pool.usedBy[m];
          }
        }
        for (const m of Object.keys(patch.weights)) if (pool.weights[m] === undefined) this.project(m).memberOf.push(id);
        pool.weights = { ...patch.weights };
      }
      emit('pool', o.id, `updated pool ${id}`, { data: { pool: id, capacity: compact(cap), weights: { ...pool.weights } } });
      this.completeOperations(now, emit);
    });
    return this.poolView(pool);
  }

  // ---------------------------------------------------------------- admission

  private toDecision(ev: Evaluation, plan?: ReclaimPlan): Decision {
    const d: Decision = {
      admitted: ev.admitted,
      project: ev.project,
      instance: ev.instance,
      reason: ev.reason,
      decidedBy: ev.decidedBy,
      demand: compact(ev.demand),
      own: compact(ev.own),
      loans: ev.loans,
      poolCharges: ev.poolCharges,
    };
    if (plan !== undefined) d.reclaim = plan;
    return d;
  }

  private checkRequest(req: AdmitRequest): Vec {
    if (typeof req !== 'object' || req === null) bad('request must be an object');
    if (typeof req.instanceId !== 'string' || req.instanceId.length === 0) bad('instanceId must be a non-empty string');
    this.project(req.project);
    if (req.kind !== undefined && req.kind !== 'container' && req.kind !== 'vm' && req.kind !== 'network' && req.kind !== 'volume' && req.kind !== 'build') bad(`kind must be container, vm, network, volume or build`);
    if (req.priority !== undefined && !Number.isSafeInteger(req.priority)) bad('priority must be an integer');
    if (this.state.instances[req.instanceId] !== undefined) throw new Conflict(`instance ${req.instanceId} already holds quota`, { instance: req.instanceId });
    return demandOf(req);
  }

  /** What admit() would decide, and what a reclaim would evict if it would not; changes nothing. */
  explain(req: AdmitRequest, now = 0): Decision {
    const demand = this.checkRequest(req);
    const ev = evaluate(this.state, this.fences(), req, demand);
    return this.toDecision(ev, ev.admitted ? undefined : planReclaim(this.state, this.fences(), ev, now));
  }

  /**
   * Check and commit in one synchronous step: either the instance is charged
   * (own free, pool, loans) or nothing changes. Rejections are audited too.
   */
  admit(req: AdmitRequest, now = 0): Decision {
    const demand = this.checkRequest(req);
    const ev = evaluate(this.state, this.fences(), req, demand);
    this.mutate(now, (emit) => {
      if (ev.admitted) this.applyAdmission(req, ev, now, emit);
      else emit('reject', req.project, ev.reason, { instance: req.instanceId, data: { decidedBy: ev.decidedBy, shortfall: compact(ev.shortfall) } });
    });
    return this.toDecision(ev);
  }

  /** admit() that throws QuotaExceeded (with decidedBy in details) when not admitted. */
  admitOrThrow(req: AdmitRequest, now = 0): Decision {
    const d = this.admit(req, now);
    if (!d.admitted) throw new QuotaExceeded(d.reason, { ...d.decidedBy, instance: d.instance });
    return d;
  }

  /**
   * Admit, or, when the request does not fit but would after taking back lent
   * capacity or the project's deserved pool share, start a reclaim Operation.
   * The operation completes (and the instance is admitted) when the evicted
   * instances have been released. Without a sufficient plan it is a plain reject.
   */
  admitOrReclaim(req: AdmitRequest, now = 0): { decision: Decision; operation?: ReclaimOperation } {
    const demand = this.checkRequest(req);
    if (Object.values(this.state.operations).some((o) => o.status === 'pending' && o.request.instanceId === req.instanceId)) {
      throw new Conflict(`a reclaim for instance ${req.instanceId} is already pending`, { instance: req.instanceId });
    }
    const ev = evaluate(this.state, this.fences(), req, demand);
    if (ev.admitted) {
      this.mutate(now, (emit) => this.applyAdmission(req, ev, now, emit));
      return { decision: this.toDecision(ev) };
    }
    const plan = planReclaim(this.state, this.fences(), ev, now);
    if (!plan.sufficient || plan.victims.length === 0) {
      this.mutate(now, (emit) => emit('reject', req.project, `${ev.reason}; reclaim cannot cover it`, { instance: req.instanceId, data: { decidedBy: ev.decidedBy, shortfall: compact(ev.shortfall), remaining: compact(plan.remaining) } }));
      return { decision: this.toDecision(ev, plan) };
    }
    const op = this.mutate(now, (emit) => {
      const o: ReclaimOperation = {
        id: this.nextId('reclaim'),
        project: req.project,
        request: structuredClone(req),
        status: 'pending',
        createdAt: now,
        plan: plan.victims,
        fencedPools: [...new Set(plan.victims.flatMap((v) => (v.via.kind === 'pool' ? [v.via.pool] : [])))],
        reason: `${ev.reason}; reclaiming ${plan.victims.length} instance(s)`,
      };
      this.state.operations[o.id] = o;
      this.markVictims(o, plan.victims, emit);
      return o;
    });
    return { decision: this.toDecision(ev, plan), operation: structuredClone(op) };
  }

  private markVictims(op: ReclaimOperation, victims: Victim[], emit: Emit): void {
    for (const v of victims) {
      const inst = this.state.instances[v.instance];
      if (inst === undefined) continue;
      inst.eviction = { operation: op.id, deadline: v.deadline, action: v.action };
      this.dirtyInstances.add(inst.id);
      emit('reclaim-planned', v.project, `${v.action} ${v.instance} (priority ${v.priority}) by ${v.deadline} for ${op.project}: ${v.via.kind === 'loan' ? `holds a loan from ${v.via.lender}` : `over its deserved share of pool ${v.via.pool}`}`, {
        instance: v.instance,
        operation: op.id,
        data: { frees: v.frees, deadline: v.deadline, action: v.action },
      });
    }
  }

  private applyAdmission(req: AdmitRequest, ev: Evaluation, now: number, emit: Emit): void {
    const p = this.project(req.project);
    const inst: InstanceState = {
      id: req.instanceId,
      project: p.id,
      kind: req.kind ?? 'container',
      priority: req.priority ?? 0,
      createdAt: now,
      ...(req.replica !== undefined ? { replica: req.replica } : {}),
      demand: copy(ev.demand),
      own: copy(ev.own),
      poolCharges: ev.poolCharges.map((c) => ({ ...c })),
      loans: [],
    };
    addInto(p.used, ev.demand);
    addInto(p.own, ev.own);
    for (const c of ev.poolCharges) {
      const pool = this.pool(c.pool);
      pool.used[c.resource] += c.amount;
      (pool.usedBy[p.id] ??= zero())[c.resource] += c.amount;
      p.pooled[c.resource] += c.amount;
    }
    this.state.instances[inst.id] = inst;
    this.dirtyInstances.add(inst.id);
    emit('admit', p.id, ev.reason, { instance: inst.id, data: { demand: compact(ev.demand), decidedBy: ev.decidedBy, poolCharges: ev.poolCharges } });
    for (const l of ev.loans) {
      const lender = this.project(l.lender);
      const loan: Loan = { id: this.nextId('loan'), lender: l.lender, borrower: p.id, resource: l.resource, amount: l.amount, instance: inst.id, at: now };
      this.state.loans[loan.id] = loan;
      inst.loans.push(loan.id);
      lender.lent[l.resource] += l.amount;
      p.borrowed[l.resource] += l.amount;
      emit('loan', p.id, `${p.id} borrows ${l.amount} ${l.resource} from ${l.lender} for ${inst.id}`, { instance: inst.id, data: { ...loan } });
    }
  }

  // ---------------------------------------------------------------- release and reclaim

  /** Give back everything an instance holds (its own charge, pool charges, loans). Completes reclaims that now fit. */
  release(instanceId: string, now = 0, reason = 'released'): void {
    const inst = this.state.instances[instanceId];
    if (inst === undefined) throw new NotFound(`instance ${instanceId} holds no quota`, { instance: instanceId });
    this.mutate(now, (emit) => {
      this.applyRelease(inst, reason, emit);
      this.completeOperations(now, emit);
    });
  }

  private applyRelease(inst: InstanceState, reason: string, emit: Emit): void {
    const p = this.project(inst.project);
    addInto(p.used, inst.demand, -1);
    addInto(p.own, inst.own, -1);
    for (const c of inst.poolCharges) {
      const pool = this.state.pools[c.pool];
      if (pool !== undefined) {
        pool.used[c.resource] -= c.amount;
        const u = pool.usedBy[p.id];
        if (u !== undefined) {
          u[c.resource] -= c.amount;
          if (isZero(u)) delete pool.usedBy[p.id];
        }
      }
      p.pooled[c.resource] -= c.amount;
    }
    for (const lid of inst.loans) {
      const loan = this.state.loans[lid];
      if (loan === undefined) continue;
      const lender = this.state.projects[loan.lender];
      if (lender !== undefined) lender.lent[loan.resource] -= loan.amount;
      p.borrowed[loan.resource] -= loan.amount;
      delete this.state.loans[lid];
      emit('return', p.id, `${p.id} returns ${loan.amount} ${loan.resource} to ${loan.lender} (${inst.id} ${reason})`, { instance: inst.id, data: { ...loan } });
    }
    delete this.state.instances[inst.id];
    this.dirtyInstances.add(inst.id);
    if (inst.eviction !== undefined) {
      emit('reclaim-evicted', p.id, `${inst.id} ${inst.eviction.action === 'save' ? 'saved' : 'stopped'} for reclaim ${inst.eviction.operation}`, { instance: inst.id, operation: inst.eviction.operation });
    } else {
      emit('release', p.id, reason, { instance: inst.id, data: { demand: compact(inst.demand) } });
    }
  }

  /** Pending reclaims, FIFO: admit the ones that now fit; re-plan or fail the ones whose victims are all gone. */
  /**
   * Finished operations past their retention leave the state: each one stayed in the state's one
   * row (written at every mutation) and in every completion pass's scan, so both grew with every
   * reclaim ever made.
   */
  private pruneFinishedOperations(now: number): void {
    const keep = this.opts.finishedOperationRetentionMs ?? FINISHED_OPERATION_RETENTION_MS;
    for (const op of Object.values(this.state.operations)) {
      if (op.status !== 'pending' && op.completedAt !== undefined && op.completedAt < now - keep) delete this.state.operations[op.id];
    }
  }

  private completeOperations(now: number, emit: Emit): void {
    const pending = Object.values(this.state.operations).filter((o) => o.status === 'pending');
    for (const op of pending) {
      this.fenceCache = undefined;
      if (this.state.instances[op.request.instanceId] !== undefined) {
        this.finishOp(op, 'failed', `instance ${op.request.instanceId} already exists`, now, emit);
        continue;
      }
      if (this.state.projects[op.project] === undefined) {
        this.finishOp(op, 'failed', `project ${op.project} is gone`, now, emit);
        continue;
      }
      // evaluate as if this op were no longer pending, so its own fence does not block it
      op.status = 'done';
      this.fenceCache = undefined;
      const ev = evaluate(this.state, this.fences(), op.request);
      op.status = 'pending';
      this.fenceCache = undefined;
      if (ev.admitted) {
        this.applyAdmission(op.request, ev, now, emit);
        this.finishOp(op, 'done', `capacity is back: ${ev.reason}`, now, emit);
        continue;
      }
      const stillRunning = op.plan.some((v) => this.state.instances[v.instance]?.eviction?.operation === op.id);
      if (stillRunning) continue;
      const plan = planReclaim(this.state, this.fences(), ev, now);
      if (plan.sufficient && plan.victims.length > 0) {
        op.plan.push(...plan.victims);
        this.markVictims(op, plan.victims, emit);
      } else {
        this.finishOp(op, 'failed', `victims gone but the request still does not fit: ${ev.reason}`, now, emit);
      }
    }
    this.fenceCache = undefined;
  }

  private finishOp(op: ReclaimOperation, status: 'done' | 'failed' | 'cancelled', reason: string, now: number, emit: Emit): void {
    op.status = status;
    op.completedAt = now;
    op.reason = reason;
    // victims not yet evicted are spared
    for (const inst of Object.values(this.state.instances)) {
      if (inst.eviction?.operation !== op.id) continue;
      delete inst.eviction;
      this.dirtyInstances.add(inst.id);
    }
    emit(status === 'done' ? 'reclaim-done' : status === 'failed' ? 'reclaim-failed' : 'reclaim-cancelled', op.project, reason, { operation: op.id, instance: op.request.instanceId });
    this.fenceCache = undefined;
  }

  cancelReclaim(operationId: string, now = 0): ReclaimOperation {
    const op = this.state.operations[operationId];
    if (op === undefined) throw new NotFound(`operation ${operationId} not found`, { operation: operationId });
    if (op.status !== 'pending') throw new Conflict(`operation ${operationId} is ${op.status}`, { operation: operationId });
    this.mutate(now, (emit) => this.finishOp(op, 'cancelled', 'cancelled by caller', now, emit));
    return structuredClone(op);
  }

  /** Victims whose grace period has run out: the caller stops/saves them, then calls release(). */
  dueEvictions(now: number): DueEviction[] {
    return this.evictions().filter((v) => v.deadline <= now);
  }

  /** Every instance marked for eviction, with its deadline. */
  evictions(): DueEviction[] {
    const out: DueEviction[] = [];
    for (const op of Object.values(this.state.operations)) {
      if (op.status !== 'pending') continue;
      for (const v of op.plan) {
        if (this.state.instances[v.instance]?.eviction?.operation === op.id) out.push({ ...v, operation: op.id });
      }
    }
    return out.sort((a, b) => a.deadline - b.deadline || (a.instance < b.instance ? -1 : 1));
  }

  /** Read-only access for tests and the persistence layer (do not mutate). */
  get raw(): Readonly<LedgerState> {
    return this.state;
  }
}
