/**
 * The Store seam: the system of record behind narrow repositories. SQLite is the
 * embedded default; PostgreSQL (multi-host) will implement the same interface.
 */
import type {
  AgentRecord,
  ContainerRecord,
  ContainerStatus,
  DiskImageRecord,
  ImageContentRecord,
  ImageRecord,
  ImageTagRecord,
  NetworkLeaseRecord,
  NetworkRecord,
  OperationRecord,
  ProjectRecord,
  RoleGrantRecord,
  TokenRecord,
  UserRecord,
  VmRecord,
  VmStatus,
} from './records.js';

export interface ProjectRepo {
  get(id: string): ProjectRecord | undefined;
  /** A project by name, root projects first (names are unique only among siblings). */
  byName(name: string): ProjectRecord | undefined;
  /** The child of parentId (null: a root project) with this name. */
  child(parentId: string | null, name: string): ProjectRecord | undefined;
  children(parentId: string | null): ProjectRecord[];
  list(): ProjectRecord[];
  insert(p: ProjectRecord): void;
  delete(id: string): void;
}

export interface UserRepo {
  get(id: string): UserRecord | undefined;
  byName(name: string): UserRecord | undefined;
  list(): UserRecord[];
  insert(u: UserRecord): void;
  update(id: string, patch: Partial<Omit<UserRecord, 'id'>>): void;
  delete(id: string): void;
}

export interface TokenRepo {
  byHash(hash: string): TokenRecord | undefined;
  list(userId: string, kind: TokenRecord['kind']): TokenRecord[];
  insert(t: TokenRecord): void;
  delete(id: string): void;
  deleteExpired(now: number): number;
}

export interface RoleRepo {
  list(filter?: { userId?: string; projectId?: string }): RoleGrantRecord[];
  /** Insert or replace the user's role on the project (one role per user and project). */
  grant(g: RoleGrantRecord): void;
  revoke(userId: string, projectId: string): boolean;
}

/**
 * Images: content (manifest, config, layers) shared host-wide, referenced per project.
 * A project sees only the images it references; tags are per project.
 */
export interface ImageRepo {
  /** The content, whoever references it. */
  get(digest: string): ImageContentRecord | undefined;
  contents(): ImageContentRecord[];
  /** The image as projectId sees it, if that project references it. */
  ref(projectId: string, digest: string): ImageRecord | undefined;
  /** References (one per project and digest) with their content; all projects' when none is given. */
  list(projectId?: string): ImageRecord[];
  /** Store the content (kept if present) and add img.projectId's reference to it. */
  upsert(img: ImageRecord): void;
  /** Remove one project's reference (and its tags). */
  deleteRef(projectId: string, digest: string): void;
  refCount(digest: string): number;
  /** Remove the content and every reference and tag to it. */
  delete(digest: string): void;
  tags(filter?: { projectId?: string; digest?: string; name?: string }): ImageTagRecord[];
  tag(projectId: string, name: string): ImageTagRecord | undefined;
  /** A tag implies the project's reference: add that first. */
  setTag(t: ImageTagRecord): void;
  deleteTag(projectId: string, name: string): void;
}

export interface ContainerRepo {
  get(id: string): ContainerRecord | undefined;
  /** Names are unique per project only. */
  byName(projectId: string, name: string): ContainerRecord | undefined;
  /** Every project's containers of this name (the caller scopes them: see control/identity/scope.ts). */
  named(name: string): ContainerRecord[];
  /** Containers whose id starts with prefix (hex only; anything else matches none). */
  withIdPrefix(prefix: string): ContainerRecord[];
  list(filter?: { projectId?: string; status?: ContainerStatus[] }): ContainerRecord[];
  insert(c: ContainerRecord): void;
  update(id: string, patch: Partial<Omit<ContainerRecord, 'id'>>): ContainerRecord;
  /** The record and its address leases. */
  delete(id: string): void;
  /** Containers made from the image, in one project or all. */
  countByImage(digest: string, projectId?: string): number;
}

export interface VmRepo {
  get(id: string): VmRecord | undefined;
  byName(name: string): VmRecord | undefined;
  /** By full id, unique id prefix, or name; throws NotFound / InvalidArgument (ambiguous). */
  resolve(idOrName: string): VmRecord;
  list(filter?: { projectId?: string; status?: VmStatus[] }): VmRecord[];
  insert(v: VmRecord): void;
  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): VmRecord;
  /** The record and its address leases. */
  delete(id: string): void;
}

export interface AgentRepo {
  get(name: string): AgentRecord | undefined;
  list(): AgentRecord[];
  /** Insert or replace (an agent registers again on every start; its URL may change). */
  put(a: AgentRecord): void;
  delete(name: string): void;
}

export interface OperationRepo {
  get(id: string): OperationRecord | undefined;
  list(limit?: number): OperationRecord[];
  insert(op: OperationRecord): void;
  update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): OperationRecord;
}

export interface DiskImageRepo {
  get(projectId: string, name: string): DiskImageRecord | undefined;
  list(projectId?: string): DiskImageRecord[];
  /** AlreadyExists when the project has one of that name. */
  insert(d: DiskImageRecord): void;
  delete(projectId: string, name: string): void;
  /** Every project's references to this content. */
  countByDigest(digest: string): number;
}

export interface NetworkRepo {
  get(id: string): NetworkRecord | undefined;
  byName(projectId: string, name: string): NetworkRecord | undefined;
  /** Every project's networks of this name (the caller scopes them). */
  named(name: string): NetworkRecord[];
  withIdPrefix(prefix: string): NetworkRecord[];
  list(filter?: { projectId?: string }): NetworkRecord[];
  /** AlreadyExists when the name is taken in the project, or the subnet or device by any network. */
  insert(n: NetworkRecord): void;
  delete(id: string): void;
  leases(filter: { networkId?: string; instanceId?: string }): NetworkLeaseRecord[];
  /** AlreadyExists when the address is leased already (the unique key is what keeps IPAM honest). */
  lease(l: NetworkLeaseRecord): void;
  release(instanceId: string, networkId?: string): number;
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
  readonly operations: OperationRepo;
  readonly users: UserRepo;
  readonly tokens: TokenRepo;
  readonly roles: RoleRepo;
  /** Runs fn atomically; nested calls join the outer transaction. */
  transaction<T>(fn: () => T): T;
  /** The quota ledger's state (JSON) without its instances: projects, pools, loans, operations. */
  loadQuotaState(): string | undefined;
  saveQuotaState(json: string): void;
  /** The ledger's instances (JSON each), one row per instance. */
  loadQuotaInstances(): string[];
  /** Write changed instance rows; json null removes the row. */
  saveQuotaInstances(rows: readonly { id: string; json: string | null }[]): void;
  /** Append audit entries of the ledger (idempotent by seq). */
  appendQuotaAudit(entries: readonly QuotaAuditRow[]): void;
  /** Audit entries (JSON) after sinceSeq, of one project or all, at most limit (the newest), oldest first. */
  queryQuotaAudit(filter: { project?: string; sinceSeq?: number; limit: number }): string[];
  close(): void;
}
