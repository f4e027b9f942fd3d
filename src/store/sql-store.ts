/** The Store over an SQL executor: the repositories of src/store/repos, the same on every backend. */
import type { SqlExecutor } from './sql/executor.js';
import type { QuotaAuditRow, Store, StoreKind } from './store.js';
import { SqlAgentRepo } from './repos/agents.js';
import { SqlJoinTokenRepo } from './repos/join-tokens.js';
import { SqlContainerRepo } from './repos/containers.js';
import { SqlDiskImageRepo } from './repos/disks.js';
import { SqlImageRepo } from './repos/images.js';
import { SqlNetworkRepo } from './repos/networks.js';
import { SqlOperationRepo } from './repos/operations.js';
import { SqlProjectRepo } from './repos/projects.js';
import { SqlQuotaRows } from './repos/quota.js';
import { SqlRoleRepo } from './repos/roles.js';
import { SqlTokenRepo } from './repos/tokens.js';
import { SqlUserRepo } from './repos/users.js';
import { SqlVmRepo } from './repos/vms.js';
import { SqlPlacementRepo } from './repos/placement.js';
import { SqlSettingsRepo } from './repos/settings.js';
import { SqlUsageRepo } from './repos/usage.js';
import { SqlVolumeRepo } from './repos/volumes.js';
import { SqlRegistryCredentialRepo } from './repos/registry-credentials.js';
import { SqlFailedAttemptRepo } from './repos/failed-attempts.js';

export class SqlStore implements Store {
  readonly kind: StoreKind;
  readonly projects: SqlProjectRepo;
  readonly images: SqlImageRepo;
  readonly containers: SqlContainerRepo;
  readonly vms: SqlVmRepo;
  readonly networks: SqlNetworkRepo;
  readonly disks: SqlDiskImageRepo;
  readonly agents: SqlAgentRepo;
  readonly joinTokens: SqlJoinTokenRepo;
  readonly operations: SqlOperationRepo;
  readonly users: SqlUserRepo;
  readonly tokens: SqlTokenRepo;
  readonly roles: SqlRoleRepo;
  readonly placement: SqlPlacementRepo;
  readonly settings: SqlSettingsRepo;
  readonly usage: SqlUsageRepo;
  readonly volumes: SqlVolumeRepo;
  readonly registryCredentials: SqlRegistryCredentialRepo;
  readonly failedAttempts: SqlFailedAttemptRepo;
  private readonly quota: SqlQuotaRows;

  /** db: an executor on a migrated database (see openStore). */
  constructor(private readonly db: SqlExecutor) {
    this.kind = db.dialect;
    this.projects = new SqlProjectRepo(db);
    this.images = new SqlImageRepo(db);
    this.containers = new SqlContainerRepo(db);
    this.vms = new SqlVmRepo(db);
    this.networks = new SqlNetworkRepo(db);
    this.disks = new SqlDiskImageRepo(db);
    this.agents = new SqlAgentRepo(db);
    this.joinTokens = new SqlJoinTokenRepo(db);
    this.operations = new SqlOperationRepo(db);
    this.users = new SqlUserRepo(db);
    this.tokens = new SqlTokenRepo(db);
    this.roles = new SqlRoleRepo(db);
    this.placement = new SqlPlacementRepo(db);
    this.settings = new SqlSettingsRepo(db);
    this.usage = new SqlUsageRepo(db);
    this.volumes = new SqlVolumeRepo(db);
    this.registryCredentials = new SqlRegistryCredentialRepo(db);
    this.failedAttempts = new SqlFailedAttemptRepo(db);
    this.quota = new SqlQuotaRows(db);
  }

  transaction<T>(fn: () => Promise<T>): Promise<T> {
    return this.db.transaction(fn);
  }
  loadQuotaState() {
    return this.quota.loadState();
  }
  saveQuotaState(json: string) {
    return this.quota.saveState(json);
  }
  loadQuotaInstances() {
    return this.quota.loadInstances();
  }
  saveQuotaInstances(rows: readonly { id: string; json: string | null }[]) {
    return this.quota.saveInstances(rows);
  }
  appendQuotaAudit(entries: readonly QuotaAuditRow[]) {
    return this.quota.appendAudit(entries);
  }
  queryQuotaAudit(filter: { project?: string; projects?: readonly string[]; sinceSeq?: number; limit: number }) {
    return this.quota.queryAudit(filter);
  }
  lockQuotaLedger() {
    return this.quota.lock();
  }
  quotaLedgerVersion() {
    return this.quota.version();
  }
  saveQuotaStateIfVersion(json: string, expected: number) {
    return this.quota.saveStateIfVersion(json, expected);
  }
  loadQuotaInstancesSince(version: number) {
    return this.quota.loadInstancesSince(version);
  }
  quotaInstanceIds() {
    return this.quota.instanceIds();
  }
  loadQuotaProjects() {
    return this.quota.loadProjects();
  }
  saveQuotaProjects(rows: readonly { id: string; json: string | null }[]) {
    return this.quota.saveProjects(rows);
  }
  loadQuotaProjectsSince(version: number) {
    return this.quota.loadProjectsSince(version);
  }
  quotaProjectIds() {
    return this.quota.projectIds();
  }
  close() {
    return this.db.close();
  }
}
