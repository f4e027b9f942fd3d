/**
 * The Store seam: the system of record behind narrow repositories, asynchronous so that a
 * networked database can sit behind it. SQLite is the embedded default, PostgreSQL the
 * store of a cloud of many hosts; both implement this interface and pass one conformance
 * suite (src/store/conformance.ts). Open one with openStore() (src/store/open.ts).
 *
 * Transactions: `await store.transaction(async () => { ... })` runs fn atomically. Every
 * repository call made inside fn's async context (however deep in the services) joins
 * the transaction, without a handle being threaded through (AsyncLocalStorage); calls from
 * anywhere else wait for it or run beside it, never inside it. fn must await only the store:
 * a transaction holds a connection (PostgreSQL) or the database (SQLite) while it runs.
 */
import type {
  AgentRecord,
  HostFacts,
  JoinTokenRecord,
  ContainerRecord,
  ContainerStatus,
  DiskImageRecord,
  ImageContentRecord,
  ImageRecord,
  ImageTagRecord,
  NetworkLeaseRecord,
  NetworkRecord,
  OperationRecord,
  ReplicaRecord,
  ProjectRecord,
  RoleGrantRecord,
  TokenRecord,
  UserRecord,
  VmRecord,
  VmStatus,
} from './records.js';

import type { PlacementRepo } from './repos/placement.js';
import type { SettingsRepo } from './repos/settings.js';
import type { UsageRepo } from './repos/usage.js';
import type { VolumeRepo } from './repos/volumes.js';
import type { RegistryCredentialRepo } from './repos/registry-credentials.js';
import type { FailedAttemptRepo } from './repos/failed-attempts.js';

export interface ProjectRepo {
  get(id: string): Promise<ProjectRecord | undefined>;
  /** A project by name, root projects first (names are unique only among siblings). */
  byName(name: string): Promise<ProjectRecord | undefined>;
  /** Every project of that name, under any parent, in list() order. */
  named(name: string): Promise<ProjectRecord[]>;
  /** The child of parentId (null: a root project) with this name. */
  child(parentId: string | null, name: string): Promise<ProjectRecord | undefined>;
  children(parentId: string | null): Promise<ProjectRecord[]>;
  list(): Promise<ProjectRecord[]>;
  insert(p: ProjectRecord): Promise<void>;
  delete(id: string): Promise<void>;
}

export interface UserRepo {
  get(id: string): Promise<UserRecord | undefined>;
  byName(name: string): Promise<UserRecord | undefined>;
  list(): Promise<UserRecord[]>;
  insert(u: UserRecord): Promise<void>;
  update(id: string, patch: Partial<Omit<UserRecord, 'id'>>): Promise<void>;
  delete(id: string): Promise<void>;
}

export interface TokenRepo {
  byHash(hash: string): Promise<TokenRecord | undefined>;
  /** By id: whether the token a caller presented still stands (a long-lived stream's recheck). */
  get(id: string): Promise<TokenRecord | undefined>;
  list(userId: string, kind: TokenRecord['kind']): Promise<TokenRecord[]>;
  insert(t: TokenRecord): Promise<void>;
  delete(id: string): Promise<void>;
  deleteExpired(now: number): Promise<number>;
}

export interface RoleRepo {
  list(filter?: { userId?: string; projectId?: string }): Promise<RoleGrantRecord[]>;
  /** Insert or replace the user's role on the project (one role per user and project). */
  grant(g: RoleGrantRecord): Promise<void>;
  revoke(userId: string, projectId: string): Promise<boolean>;
}

/**
 * Images: content (manifest, config, layers) shared host-wide, referenced per project.
 * A project sees only the images it references; tags are per project.
 */
export interface ImageRepo {
  /** The content, whoever references it. */
  get(digest: string): Promise<ImageContentRecord | undefined>;
  contents(): Promise<ImageContentRecord[]>;
  /** The image as projectId sees it, if that project references it. */
  ref(projectId: string, digest: string): Promise<ImageRecord | undefined>;
  /** References (one per project and digest) with their content; all projects' when none is given. */
  list(projectId?: string): Promise<ImageRecord[]>;
  /** Store the content (kept if present) and add img.projectId's reference to it. */
  upsert(img: ImageRecord): Promise<void>;
  /** Remove one project's reference (and its tags). */
  deleteRef(projectId: string, digest: string): Promise<void>;
  refCount(digest: string): Promise<number>;
  /** Remove the content and every reference and tag to it. */
  delete(digest: string): Promise<void>;
  tags(filter?: { projectId?: string; digest?: string; name?: string }): Promise<ImageTagRecord[]>;
  tag(projectId: string, name: string): Promise<ImageTagRecord | undefined>;
  /** A tag implies the project's reference: add that first. */
  setTag(t: ImageTagRecord): Promise<void>;
  deleteTag(projectId: string, name: string): Promise<void>;
  /** Record that host holds the image's layers (chain id); idempotent. */
  addHost(chainId: string, host: string, at?: string): Promise<void>;
  /** The hosts that hold the chain's layers, by name. */
  hosts(chainId: string): Promise<string[]>;
  /** Forget what host holds (one chain, or all of it when the host goes); how many rows went. */
  removeHost(host: string, chainId?: string): Promise<number>;
}

export interface ContainerRepo {
  get(id: string): Promise<ContainerRecord | undefined>;
  /** Names are unique per project only. */
  byName(projectId: string, name: string): Promise<ContainerRecord | undefined>;
  /** Every project's containers of this name (the caller scopes them: see control/identity/scope.ts). */
  named(name: string): Promise<ContainerRecord[]>;
  /** Containers whose id starts with prefix (hex only; anything else matches none). */
  withIdPrefix(prefix: string): Promise<ContainerRecord[]>;
  list(filter?: { projectId?: string; status?: ContainerStatus[] }): Promise<ContainerRecord[]>;
  /** AlreadyExists when an instance of its project (a container or a VM) has its name, or its id is taken. */
  insert(c: ContainerRecord): Promise<void>;
  update(id: string, patch: Partial<Omit<ContainerRecord, 'id'>>): Promise<ContainerRecord>;
  /** The record and its address leases. */
  delete(id: string): Promise<void>;
  /** Containers made from the image, in one project or all. */
  countByImage(digest: string, projectId?: string): Promise<number>;
  /** Every container whose record names this host, newest first. */
  onHost(host: string): Promise<ContainerRecord[]>;
}

export interface VmRepo {
  get(id: string): Promise<VmRecord | undefined>;
  /** Names are unique per project only. */
  byName(projectId: string, name: string): Promise<VmRecord | undefined>;
  /** Every project's VMs of this name (the caller scopes them: see control/identity/scope.ts). */
  named(name: string): Promise<VmRecord[]>;
  /** VMs whose id starts with prefix (hex only; anything else matches none). */
  withIdPrefix(prefix: string): Promise<VmRecord[]>;
  list(filter?: { projectId?: string; status?: VmStatus[] }): Promise<VmRecord[]>;
  /** AlreadyExists when an instance of its project (a container or a VM) has its name, or its id is taken. */
  insert(v: VmRecord): Promise<void>;
  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): Promise<VmRecord>;
  /** The record and its address leases. */
  delete(id: string): Promise<void>;
}

/** What an agent's registration sets; the host settings and facts of an existing row are kept. */
export type AgentRegistrationRecord = Pick<AgentRecord, 'name' | 'url' | 'token' | 'registeredAt'> & Partial<Omit<AgentRecord, 'name' | 'url' | 'token' | 'registeredAt'>>;

/** An administrator's change to a host (zone, labels, disabled, ratios); absent fields are kept. */
export type HostSettingsPatch = Partial<Pick<AgentRecord, 'zone' | 'labels' | 'disabled' | 'allocationRatios'>>;

export interface AgentRepo {
  get(name: string): Promise<AgentRecord | undefined>;
  list(): Promise<AgentRecord[]>;
  /**
   * Insert or re-register (an agent registers again on every start; its URL may change): a
   * new row takes the given host fields (defaults otherwise), an existing one keeps its own.
   */
  put(a: AgentRegistrationRecord): Promise<void>;
  /** The embedded agent's row (url "embedded:"), made once; an existing row is left alone. */
  ensureEmbedded(name: string, registeredAt: string): Promise<void>;
  /** NotFound for an unknown name. */
  updateSettings(name: string, patch: HostSettingsPatch): Promise<AgentRecord>;
  /** The facts of the host's latest answer; false when the row is gone. */
  recordFacts(name: string, facts: HostFacts): Promise<boolean>;
  delete(name: string): Promise<void>;
}

/** Agents' one-time join tokens: in the store, so that any control-plane process can redeem one. */
export interface JoinTokenRepo {
  get(id: string): Promise<JoinTokenRecord | undefined>;
  /** Oldest first. */
  list(): Promise<JoinTokenRecord[]>;
  insert(t: JoinTokenRecord): Promise<void>;
  /**
   * Burn the token for an agent: true when this call did, i.e. the hash matched and it was
   * unused and unexpired at `now`. One statement: of two redeeming it at once, one wins.
   */
  redeem(id: string, hash: string, agent: string, now: number): Promise<boolean>;
  /** Tokens expired or used before `before` (epoch ms); how many went. */
  deleteStale(before: number): Promise<number>;
}

/** Operations, and the control-plane processes (replicas) that run them. */
export interface OperationRepo {
  get(id: string): Promise<OperationRecord | undefined>;
  /** The newest first, at most limit (default 100): of one kind, of some projects only (the newest of those, not of all). */
  list(limit?: number, filter?: { kind?: string; projectIds?: readonly string[] }): Promise<OperationRecord[]>;
  insert(op: OperationRecord): Promise<void>;
  update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): Promise<OperationRecord>;
  /**
   * Fail every unfinished operation whose replica is gone: none recorded, no replica row, or a
   * row last seen before `seenBefore` (epoch ms); `keep`'s own are never touched. The failed
   * ones, as now stored. One statement: two replicas doing it at once fail each one once.
   */
  failOrphaned(seenBefore: number, keep: string, error: { code: string; message: string }, updatedAt: string): Promise<OperationRecord[]>;
  /** Insert or replace a replica's row. */
  registerReplica(r: ReplicaRecord): Promise<void>;
  /** A replica's heartbeat; false when it has no row (pruned: register again). */
  touchReplica(id: string, lastSeen: number): Promise<boolean>;
  removeReplica(id: string): Promise<void>;
  /** Every replica row, oldest start first. */
  listReplicas(): Promise<ReplicaRecord[]>;
  /** Rows last seen before `seenBefore` (epoch ms); how many went. */
  pruneReplicas(seenBefore: number): Promise<number>;
}

export interface DiskImageRepo {
  get(projectId: string, name: string): Promise<DiskImageRecord | undefined>;
  list(projectId?: string): Promise<DiskImageRecord[]>;
  /** AlreadyExists when the project has one of that name. */
  insert(d: DiskImageRecord): Promise<void>;
  delete(projectId: string, name: string): Promise<void>;
  /** Every project's references to this content. */
  countByDigest(digest: string): Promise<number>;
}

export interface NetworkRepo {
  get(id: string): Promise<NetworkRecord | undefined>;
  byName(projectId: string, name: string): Promise<NetworkRecord | undefined>;
  /** Every project's networks of this name (the caller scopes them). */
  named(name: string): Promise<NetworkRecord[]>;
  withIdPrefix(prefix: string): Promise<NetworkRecord[]>;
  list(filter?: { projectId?: string }): Promise<NetworkRecord[]>;
  /**
   * Give the network this VXLAN id unless it has one: answers the id it has afterwards (its own
   * if it had one already), or undefined when another network holds `vni` (try another).
   */
  setVni(id: string, vni: number): Promise<number | undefined>;
  /** The VXLAN ids networks hold. */
  vnisInUse(): Promise<number[]>;
  /** AlreadyExists when the name is taken in the project, or the subnet or device by any network. */
  insert(n: NetworkRecord): Promise<void>;
  delete(id: string): Promise<void>;
  /** The addresses leased on a network, in no order (what an allocation needs, at a fraction of leases()' cost). */
  leasedAddresses(networkId: string): Promise<string[]>;
  /** Which of these addresses are leased on the network, in no order (one indexed query: an allocation's candidates). */
  leasedAmong(networkId: string, addresses: readonly string[]): Promise<string[]>;
  leases(filter: { networkId?: string; instanceId?: string }): Promise<NetworkLeaseRecord[]>;
  /** AlreadyExists when the address is leased already (the unique key is what keeps IPAM honest). */
  lease(l: NetworkLeaseRecord): Promise<void>;
  release(instanceId: string, networkId?: string): Promise<number>;
  /** Record that the network is laid out on host (network_hosts); idempotent. */
  addHost(networkId: string, host: string, at?: string): Promise<void>;
  /** The hosts it is laid out on, by name. */
  hosts(networkId: string): Promise<string[]>;
  /** The networks laid out on host. */
  onHost(host: string): Promise<NetworkRecord[]>;
  removeHost(networkId: string, host: string): Promise<void>;
}

/** One ledger audit entry as stored. */
export interface QuotaAuditRow {
  seq: number;
  project: string;
  json: string;
}

export interface Store {
  readonly projects: ProjectRepo;
  readonly images: ImageRepo;
  readonly containers: ContainerRepo;
  readonly vms: VmRepo;
  readonly networks: NetworkRepo;
  readonly disks: DiskImageRepo;
  readonly agents: AgentRepo;
  readonly joinTokens: JoinTokenRepo;
  readonly operations: OperationRepo;
  readonly users: UserRepo;
  readonly tokens: TokenRepo;
  readonly roles: RoleRepo;
  /** Hosts' claims and server groups (the scheduler's rows). */
  readonly placement: PlacementRepo;
  /** Facts the control-plane processes sharing this store agree on. */
  readonly settings: SettingsRepo;
  /** Usage metering: per-instance usage by hour and the cursors that keep it exactly-once (docs/metering.md). */
  readonly usage: UsageRepo;
  /** Named volumes (docs/volumes.md). */
  readonly volumes: VolumeRepo;
  /** Registry credentials per project, the passwords sealed (docs/registries.md). */
  readonly registryCredentials: RegistryCredentialRepo;
  readonly failedAttempts: FailedAttemptRepo;
  /** Which implementation this is (for logs, /info and dialect-specific tests). */
  readonly kind: StoreKind;
  /** Runs fn atomically (see above); a nested call joins the outer transaction. A throw rolls back. */
  transaction<T>(fn: () => Promise<T>): Promise<T>;
  /** The quota ledger's state (JSON) without its projects and instances: pools, loans, operations, its sequence. */
  loadQuotaState(): Promise<string | undefined>;
  saveQuotaState(json: string): Promise<void>;
  /** The ledger's instances (JSON each), one row per instance. */
  loadQuotaInstances(): Promise<string[]>;
  /** Write changed instance rows; json null removes the row. Rows carry the state's current version: save the state first. */
  saveQuotaInstances(rows: readonly { id: string; json: string | null }[]): Promise<void>;
  /** The ledger's projects (JSON each), one row per project: an admission writes the projects it touched, not all. */
  loadQuotaProjects(): Promise<string[]>;
  /** Write changed project rows; json null removes the row. Rows carry the state's current version: save the state first. */
  saveQuotaProjects(rows: readonly { id: string; json: string | null }[]): Promise<void>;
  /** Project rows written after the state's version `version`, and how many rows there are in all. */
  loadQuotaProjectsSince(version: number): Promise<{ changed: string[]; count: number }>;
  /** The ids of every project row. */
  quotaProjectIds(): Promise<string[]>;
  /** Append audit entries of the ledger (idempotent by seq). */
  appendQuotaAudit(entries: readonly QuotaAuditRow[]): Promise<void>;
  /** Audit entries (JSON) after sinceSeq, of one project, of some (`projects`) or of all, at most limit (the newest), oldest first. */
  queryQuotaAudit(filter: { project?: string; projects?: readonly string[]; sinceSeq?: number; limit: number }): Promise<string[]>;
  /**
   * Inside a transaction: this transaction alone may read-then-write the ledger until it ends
   * (PostgreSQL: the ledger's advisory lock; SQLite: its BEGIN IMMEDIATE already is that).
   */
  lockQuotaLedger(): Promise<void>;
  /** How many times the ledger's state was written (0: never); every save counts one. */
  quotaLedgerVersion(): Promise<number>;
  /** Compare-and-set: write the state as version expected + 1 if the stored version is still expected; false if not. */
  saveQuotaStateIfVersion(json: string, expected: number): Promise<boolean>;
  /** Instance rows written after the state's version `version` (JSON each), and how many rows there are in all. */
  loadQuotaInstancesSince(version: number): Promise<{ changed: string[]; count: number }>;
  /** The ids of every instance row. */
  quotaInstanceIds(): Promise<string[]>;
  close(): Promise<void>;
}

export type StoreKind = 'sqlite' | 'postgres';
