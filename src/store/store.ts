/**
 * The Store seam: the system of record behind narrow repositories. SQLite is the
 * embedded default; PostgreSQL (multi-host) will implement the same interface.
 */
import type {
  ContainerRecord,
  ContainerStatus,
  ImageRecord,
  ImageTagRecord,
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

export interface ImageRepo {
  get(digest: string): ImageRecord | undefined;
  list(projectId?: string): ImageRecord[];
  upsert(img: ImageRecord): void;
  delete(digest: string): void;
  tags(digest?: string): ImageTagRecord[];
  tag(name: string): ImageTagRecord | undefined;
  setTag(t: ImageTagRecord): void;
  deleteTag(name: string): void;
}

export interface ContainerRepo {
  get(id: string): ContainerRecord | undefined;
  byName(name: string): ContainerRecord | undefined;
  /** By full id, unique id prefix, or name; throws NotFound / InvalidArgument (ambiguous). */
  resolve(idOrName: string): ContainerRecord;
  list(filter?: { projectId?: string; status?: ContainerStatus[] }): ContainerRecord[];
  insert(c: ContainerRecord): void;
  update(id: string, patch: Partial<Omit<ContainerRecord, 'id'>>): ContainerRecord;
  delete(id: string): void;
  countByImage(digest: string): number;
}

export interface VmRepo {
  get(id: string): VmRecord | undefined;
  byName(name: string): VmRecord | undefined;
  /** By full id, unique id prefix, or name; throws NotFound / InvalidArgument (ambiguous). */
  resolve(idOrName: string): VmRecord;
  list(filter?: { projectId?: string; status?: VmStatus[] }): VmRecord[];
  insert(v: VmRecord): void;
  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): VmRecord;
  delete(id: string): void;
}

export interface OperationRepo {
  get(id: string): OperationRecord | undefined;
  list(limit?: number): OperationRecord[];
  insert(op: OperationRecord): void;
  update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): OperationRecord;
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
  readonly operations: OperationRepo;
  readonly users: UserRepo;
  readonly tokens: TokenRepo;
  readonly roles: RoleRepo;
  /** Runs fn atomically; nested calls join the outer transaction. */
  transaction<T>(fn: () => T): T;
  /** The quota ledger's state (JSON), kept whole for now; per-row tables come with PostgreSQL. */
  loadQuotaState(): string | undefined;
  saveQuotaState(json: string): void;
  /** Append audit entries of the ledger (idempotent by seq). */
  appendQuotaAudit(entries: readonly QuotaAuditRow[]): void;
  /** Audit entries (JSON) after sinceSeq, of one project or all, at most limit (the newest), oldest first. */
  queryQuotaAudit(filter: { project?: string; sinceSeq?: number; limit: number }): string[];
  close(): void;
}
