/**
 * The quota ledger as a control-plane service: persisted in the store (every
 * mutation and its snapshot commit in one transaction), enforced when an
 * instance is created, released when it is removed.
 */
import type { Store } from '../../store/store.js';
import type { ContainerRecord } from '../../store/records.js';
import { Ledger, type Decision, type LimitsPatch, type Loan, type PoolView, type ProjectView } from './ledger.js';
import type { AuditEntry, LedgerState, ReclaimOperation } from './state.js';
import type { PartialVec } from './resources.js';
import { QuotaExceeded } from '../../core/errors.js';

/** Hard limit of a project nobody has limited: effectively unlimited, still an integer. */
export const UNLIMITED = 2 ** 40;
const MiB = 1024 * 1024;

/** What a container is charged: one instance, whole CPUs rounded up, memory in MiB (0 when unlimited). */
export function containerDemand(c: Pick<ContainerRecord['config'], 'cpus' | 'memoryBytes'>): PartialVec {
  return {
    instances: 1,
    cpus: c.cpus === undefined ? 0 : Math.ceil(c.cpus),
    memory: c.memoryBytes === undefined ? 0 : Math.ceil(c.memoryBytes / MiB),
  };
}

const auditRow = (e: AuditEntry) => ({ seq: e.seq, project: e.project, json: JSON.stringify(e) });

export class QuotaService {
  readonly ledger: Ledger;
  /** Woken after every release: pending reclaims may have completed. */
  private readonly released = new Set<() => void>();
  /** Set by the daemon: re-arms the reclaimer when a reclaim is planned. */
  onReclaimPlanned: (() => void) | undefined;

  constructor(private readonly store: Store) {
    const saved = store.loadQuotaState();
    const state = saved ? (JSON.parse(saved) as LedgerState) : undefined;
    if (state && state.audit.length > 0) {
      // a store written before the audit had its own table: move the entries there
      store.transaction(() => {
        store.appendQuotaAudit(state.audit.map(auditRow));
        state.audit = [];
        store.saveQuotaState(JSON.stringify(state));
      });
    }
    if (state) {
      const inCore = Object.values(state.instances);
      if (inCore.length > 0) {
        // a store written before instances had their own rows: move them there
        store.transaction(() => {
          store.saveQuotaInstances(inCore.map((i) => ({ id: i.id, json: JSON.stringify(i) })));
          store.saveQuotaState(JSON.stringify({ ...state, instances: {}, audit: [] }));
        });
      }
      for (const json of store.loadQuotaInstances()) {
        const inst = JSON.parse(json) as LedgerState['instances'][string];
        state.instances[inst.id] = inst;
      }
    }
    const pending: AuditEntry[] = [];
    let ledger: Ledger;
    // The ledger's one mutation path runs inside a store transaction that saves its state and
    // appends its new audit entries; the in-memory log only keeps the latest ones.
    ledger = new Ledger(state, {
      auditLimit: 1000,
      onAudit: (e) => pending.push(e),
      transaction: (fn) => {
        try {
          const out = store.transaction(() => {
            const result = fn();
            const changes = ledger.changes();
            store.saveQuotaState(changes.core);
            store.saveQuotaInstances(changes.instances);
            store.appendQuotaAudit(pending.map(auditRow));
            return result;
          });
          ledger.markPersisted(); // committed: those rows need not be written again
          return out;
        } finally {
          pending.length = 0;
        }
      },
    });
    this.ledger = ledger;
  }

  /** Every store project exists in the ledger; a new one starts unlimited under its parent. */
  ensureProject(id: string, parent: string | null): void {
    if (this.ledger.hasProject(id)) return;
    const hard = { instances: UNLIMITED, cpus: UNLIMITED, memory: UNLIMITED, networks: UNLIMITED, volumes: UNLIMITED };
    this.ledger.createProject(id, parent, parent ? {} : { hard }, Date.now());
  }

  /** Admit a container or throw QuotaExceeded naming the deciding line. */
  admitContainer(id: string, projectId: string, config: ContainerRecord['config']): Decision {
    return this.ledger.admitOrThrow({ instanceId: id, project: projectId, resources: containerDemand(config), kind: 'container' }, Date.now());
  }

  /**
   * Admit a container now, or, when its project lent the capacity to siblings (or its deserved pool
   * share is in use), plan a reclaim: `done` settles when the borrowers' instances have been evicted
   * after their grace period and the container is admitted. Rejected (QuotaExceeded) when even a
   * reclaim cannot make room.
   */
  admitContainerOrPlanReclaim(id: string, projectId: string, config: ContainerRecord['config']): { decision: Decision } | { reclaim: ReclaimOperation; done: Promise<Decision> } {
    const { decision, operation } = this.ledger.admitOrReclaim({ instanceId: id, project: projectId, resources: containerDemand(config), kind: 'container' }, Date.now());
    if (decision.admitted) return { decision };
    if (!operation) throw new QuotaExceeded(decision.reason, { ...decision.decidedBy, instance: id });
    this.onReclaimPlanned?.();
    const done = new Promise<void>((ok) => {
      const check = () => {
        if (this.ledger.operation(operation.id).status === 'pending') return;
        this.released.delete(check);
        ok();
      };
      this.released.add(check);
      check();
    }).then((): Decision => {
      const after = this.ledger.operation(operation.id);
      if (after.status !== 'done') throw new QuotaExceeded(`reclaim ${after.id} ${after.status}: ${after.reason}`, { operation: after.id, instance: id });
      return { ...decision, admitted: true, reason: after.reason };
    });
    return { reclaim: operation, done };
  }

  /** Admit a container, waiting through a reclaim if one is needed (see admitContainerOrPlanReclaim). */
  async admitContainerReclaiming(id: string, projectId: string, config: ContainerRecord['config']): Promise<Decision> {
    const r = this.admitContainerOrPlanReclaim(id, projectId, config);
    return 'decision' in r ? r.decision : r.done;
  }

  /** Does the ledger hold this instance (a reclaimed container holds nothing until started again)? */
  holds(id: string): boolean {
    return this.ledger.instance(id) !== undefined;
  }

  /** Admit a VM: one instance, its vCPUs, its guest memory in MiB. */
  admitVm(id: string, projectId: string, demand: { cpus: number; memoryMiB: number }): Decision {
    const resources = { instances: 1, cpus: demand.cpus, memory: demand.memoryMiB };
    return this.ledger.admitOrThrow({ instanceId: id, project: projectId, resources, kind: 'vm' }, Date.now());
  }

  /** Admit a network: one of the project's `networks` (never borrowed back by a reclaim). */
  admitNetwork(id: string, projectId: string): void {
    this.ledger.admitOrThrow({ instanceId: id, project: projectId, resources: { instances: 0, networks: 1 }, kind: 'network' }, Date.now());
  }

  release(id: string, reason: string): void {
    if (this.ledger.instance(id)) this.ledger.release(id, Date.now(), reason);
    for (const wake of [...this.released]) wake();
  }

  explain(projectId: string, resources: PartialVec): Decision {
    return this.ledger.explain({ instanceId: `explain-${Date.now()}`, project: projectId, resources }, Date.now());
  }

  show(projectId: string): ProjectView {
    return this.ledger.show(projectId);
  }

  setLimits(projectId: string, patch: LimitsPatch): ProjectView {
    return this.ledger.setLimits(projectId, patch, Date.now());
  }

  /** Pools are named per owner: the ledger id is "<owner id>/<name>", so names never collide across tenants. */
  createPool(owner: string, name: string, capacity: PartialVec, weights: Record<string, number>): PoolView {
    return this.ledger.createPool(`${owner}/${name}`, owner, capacity, weights, Date.now());
  }

  updatePool(owner: string, name: string, patch: { capacity?: PartialVec; weights?: Record<string, number> }): PoolView {
    return this.ledger.updatePool(`${owner}/${name}`, patch, Date.now());
  }

  /** Active loans the project made or took. */
  loans(projectId: string): Loan[] {
    return [...this.ledger.loans({ lender: projectId }), ...this.ledger.loans({ borrower: projectId })];
  }

  /** Audit entries from the store, oldest first: the newest `limit` (default 10,000) after sinceSeq. */
  audit(filter: { project?: string; sinceSeq?: number; limit?: number }): AuditEntry[] {
    return this.store
      .queryQuotaAudit({ ...filter, limit: filter.limit ?? 10_000 })
      .map((j) => JSON.parse(j) as AuditEntry);
  }

  /** Daemon start: instances the ledger holds for containers or VMs that no longer exist are released. */
  reconcile(liveInstanceIds: Set<string>): number {
    // A create waiting for a reclaim does not survive a restart (its Operation is failed as interrupted):
    // spare its victims rather than evict them for an instance nobody will create.
    for (const op of Object.values(this.ledger.snapshot().operations)) {
      if (op.status === 'pending' && !liveInstanceIds.has(op.request.instanceId)) this.ledger.cancelReclaim(op.id, Date.now());
    }
    for (const wake of [...this.released]) wake();
    let released = 0;
    for (const id of Object.keys(this.ledger.snapshot().instances)) {
      if (!liveInstanceIds.has(id)) {
        this.release(id, 'reconciled: the instance no longer exists');
        released++;
      }
    }
    return released;
  }
}
