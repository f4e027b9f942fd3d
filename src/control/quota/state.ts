/**
 * The ledger's whole state: plain, JSON-serialisable objects (no Maps, no classes,
 * no Dates — times are epoch milliseconds passed in by the caller). A persistence
 * layer can store this as-is or map each record to a table row.
 *
 * Aggregates on ProjectState (used, own, allocated, lent, borrowed, pooled) are
 * caches derivable from instances, loans, pools and children; the property test
 * recomputes them after every step.
 */
import type { PartialVec, Resource, Vec } from './resources.js';

/** What holds quota: instances, and networks and volumes (which count against `networks`, or `volumes` and `disk`, and are never reclaimed). */
/** build: an image build's CPU and memory, held while it runs (control/images/build-service.ts). */
export type InstanceKind = 'container' | 'vm' | 'network' | 'volume' | 'build';

export interface ProjectState {
  id: string;
  parent: string | null;
  children: string[];
  /** Limits set by the operator. */
  hard: Vec;
  reserved: Vec;
  /** Most this project may lend to its siblings (0 = lends nothing: exclusive mode). */
  lendingLimit: Vec;
  /** Most this project may borrow from its siblings (0 = borrows nothing). */
  borrowingLimit: Vec;
  /** How long a borrower's instance may keep running after a reclaim is planned. */
  gracePeriodMs: number;
  /**
   * MiB a container created without a memory size is given here while the project's memory is
   * limited (0: none, it runs best effort); absent: its parent's, up to the daemon's default.
   * Kubernetes' LimitRange default, per project.
   */
  containerMemoryDefault?: number;
  /**
   * MiB the writable layer of a container created without a storage size may hold here while the
   * project's disk is limited (0: none, unbounded); absent: its parent's, up to the daemon's default.
   */
  containerStorageDefault?: number;
  /** Σ demand of this project's own instances, whatever capacity backs them. */
  used: Vec;
  /** The part of `used` charged to this project's own hard limit. */
  own: Vec;
  /** Σ direct children's hard + Σ capacity of pools this project owns. */
  allocated: Vec;
  /** Σ active loans where this project is the lender. */
  lent: Vec;
  /** Σ active loans where this project is the borrower. */
  borrowed: Vec;
  /** Σ this project's usage drawn from shared pools (as a member). */
  pooled: Vec;
  /** Pools this project owns (capacity carved out of its own hard). */
  pools: string[];
  /** Pools this project is a member of (owned by its parent). */
  memberOf: string[];
}

export interface PoolState {
  id: string;
  /** The parent whose capacity backs the pool. */
  owner: string;
  capacity: Vec;
  /** member (a direct child of owner) → weight > 0. */
  weights: Record<string, number>;
  used: Vec;
  usedBy: Record<string, Vec>;
}

export interface Loan {
  id: string;
  lender: string;
  borrower: string;
  resource: Resource;
  amount: number;
  instance: string;
  at: number;
}

export interface PoolCharge {
  pool: string;
  resource: Resource;
  amount: number;
}

export interface Eviction {
  operation: string;
  deadline: number;
  /** Containers are stopped; VMs are saved to disk (restorable), never killed. */
  action: 'stop' | 'save';
}

export interface InstanceState {
  id: string;
  project: string;
  kind: InstanceKind;
  priority: number;
  createdAt: number;
  /** The control-plane replica that admitted it (absent: embedded, or before replicas). */
  replica?: string;
  demand: Vec;
  own: Vec;
  poolCharges: PoolCharge[];
  loans: string[];
  eviction?: Eviction;
}

export interface AdmitRequest {
  instanceId: string;
  project: string;
  /** `instances` defaults to 1. */
  resources: PartialVec;
  kind?: InstanceKind;
  /** Higher is more important; default 0. */
  priority?: number;
  /** The control-plane replica admitting it (a dead replica's half-made creates are found by it). */
  replica?: string;
}

export type OperationStatus = 'pending' | 'done' | 'failed' | 'cancelled';

export interface Victim {
  instance: string;
  project: string;
  priority: number;
  createdAt: number;
  /** Why it is a candidate: it holds a loan from the requester, or it is over its deserved share of a pool. */
  via: { kind: 'loan'; lender: string } | { kind: 'pool'; pool: string };
  frees: PartialVec;
  deadline: number;
  action: 'stop' | 'save';
}

export interface ReclaimOperation {
  id: string;
  project: string;
  request: AdmitRequest;
  status: OperationStatus;
  createdAt: number;
  completedAt?: number;
  plan: Victim[];
  /** While pending: the requester lends nothing new, and other members may not grow past their deserved share of these pools. */
  fencedPools: string[];
  reason: string;
}

export type AuditKind =
  | 'project'
  | 'limits'
  | 'pool'
  | 'admit'
  | 'reject'
  | 'loan'
  | 'return'
  | 'release'
  | 'reclaim-planned'
  | 'reclaim-evicted'
  | 'reclaim-done'
  | 'reclaim-failed'
  | 'reclaim-cancelled';

export interface AuditEntry {
  seq: number;
  at: number;
  kind: AuditKind;
  project: string;
  instance?: string;
  operation?: string;
  reason: string;
  data?: Record<string, unknown>;
}

export interface LedgerState {
  version: 1;
  seq: number;
  projects: Record<string, ProjectState>;
  pools: Record<string, PoolState>;
  instances: Record<string, InstanceState>;
  loans: Record<string, Loan>;
  operations: Record<string, ReclaimOperation>;
  audit: AuditEntry[];
}

export function emptyState(): LedgerState {
  return { version: 1, seq: 0, projects: {}, pools: {}, instances: {}, loans: {}, operations: {}, audit: [] };
}
