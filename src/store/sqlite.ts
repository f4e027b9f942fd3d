import Database from 'better-sqlite3';
import { AlreadyExists, InvalidArgument, NotFound } from '../core/errors.js';
import type {
  AgentRecord,
  DiskImageRecord,
  NetworkLeaseRecord,
  NetworkRecord,
  ContainerRecord,
  ContainerStatus,
  ImageContentRecord,
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
import type { AgentRepo, ContainerRepo, DiskImageRepo, ImageRepo, NetworkRepo, OperationRepo, ProjectRepo, QuotaAuditRow, RoleRepo, Store, TokenRepo, UserRepo, VmRepo } from './store.js';

/** Ordered migrations; the index + 1 is the schema version kept in PRAGMA user_version. Exported for upgrade tests. */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    parent_id TEXT REFERENCES projects(id),
    created_at TEXT NOT NULL
  );
  CREATE TABLE images (
    digest TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    index_digest TEXT,
    config_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    layers TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE image_tags (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id),
    updated_at TEXT NOT NULL
  );
  CREATE INDEX image_tags_digest ON image_tags(digest);
  CREATE TABLE containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects(id),
    image_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    runtime TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    restart_count INTEGER NOT NULL DEFAULT 0,
    stopped_by_user INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    warnings TEXT NOT NULL DEFAULT '[]'
  );
  CREATE INDEX containers_image ON containers(image_digest);
  CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id TEXT NOT NULL,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  `,
  `
  CREATE TABLE quota_ledger (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  `,
  // The ledger's audit log, one row per entry (append-only): kept out of the ledger's
  // state so saving the state does not grow with history.
  `
  CREATE TABLE quota_audit (
    seq INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    entry TEXT NOT NULL
  );
  CREATE INDEX quota_audit_by_project ON quota_audit (project, seq);
  `,
  // Identity: project names unique among siblings only (table rebuilt, the SQLite way), users, tokens, role grants.
  `
  CREATE TABLE projects_new (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id TEXT REFERENCES projects(id),
    created_at TEXT NOT NULL
  );
  INSERT INTO projects_new (id, name, parent_id, created_at) SELECT id, name, parent_id, created_at FROM projects;
  DROP TABLE projects;
  ALTER TABLE projects_new RENAME TO projects;
  CREATE UNIQUE INDEX projects_sibling_name ON projects(COALESCE(parent_id, ''), name);
  CREATE INDEX projects_parent ON projects(parent_id);
  CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    system_admin INTEGER NOT NULL DEFAULT 0,
    default_project_id TEXT REFERENCES projects(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('session', 'apikey')),
    name TEXT,
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at INTEGER
  );
  CREATE UNIQUE INDEX tokens_apikey_name ON tokens(user_id, name) WHERE kind = 'apikey';
  CREATE TABLE role_grants (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('reader', 'member', 'admin')),
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id)
  );
  CREATE INDEX role_grants_project ON role_grants(project_id);
  `,
  // VMs: instances beside containers (names unique across both, checked by the services).
  `
  CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL REFERENCES projects(id),
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    saved_at TEXT
  );
  `,
  // Images per project: the content (manifest, config, layers) is shared host-wide, while a
  // project's reference to it ("this project has this image") and its tags belong to the project.
  // Existing rows: the first puller's ownership becomes a reference, every tag stays in its project.
  `
  CREATE TABLE images_new (
    digest TEXT PRIMARY KEY,
    index_digest TEXT,
    config_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    layers TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
  );
  INSERT INTO images_new (digest, index_digest, config_digest, config, layers, chain_id, size, created_at)
    SELECT digest, index_digest, config_digest, config, layers, chain_id, size, created_at FROM images;
  CREATE TABLE image_refs (
    project_id TEXT NOT NULL REFERENCES projects(id),
    digest TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, digest)
  );
  INSERT INTO image_refs (project_id, digest, created_at) SELECT project_id, digest, created_at FROM images;
  INSERT OR IGNORE INTO image_refs (project_id, digest, created_at) SELECT project_id, digest, updated_at FROM image_tags;
  CREATE TABLE image_tags_new (
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name),
    FOREIGN KEY (project_id, digest) REFERENCES image_refs(project_id, digest) ON DELETE CASCADE
  );
  INSERT INTO image_tags_new (project_id, name, digest, updated_at) SELECT project_id, name, digest, updated_at FROM image_tags;
  DROP TABLE image_tags;
  DROP TABLE images;
  ALTER TABLE images_new RENAME TO images;
  ALTER TABLE image_tags_new RENAME TO image_tags;
  CREATE INDEX image_refs_digest ON image_refs(digest);
  CREATE INDEX image_tags_ref ON image_tags(project_id, digest);
  `,
  // Container names unique per project only (ids stay unique host-wide): table rebuilt, the SQLite way.
  `
  CREATE TABLE containers_new (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id),
    image_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    runtime TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    restart_count INTEGER NOT NULL DEFAULT 0,
    stopped_by_user INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    warnings TEXT NOT NULL DEFAULT '[]'
  );
  INSERT INTO containers_new SELECT id, name, project_id, image_digest, config, status, runtime, pid, exit_code, oom_killed,
    restart_count, stopped_by_user, created_at, started_at, finished_at, warnings FROM containers;
  DROP TABLE containers;
  ALTER TABLE containers_new RENAME TO containers;
  CREATE UNIQUE INDEX containers_project_name ON containers(project_id, name);
  CREATE INDEX containers_image ON containers(image_digest);
  `,
  // Networks and their address leases. A lease belongs to an instance (a container or a VM: the
  // instance repositories delete it with the instance's row); the primary key (network, address)
  // is what makes a double lease impossible.
  `
  CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id),
    driver TEXT NOT NULL,
    subnet TEXT NOT NULL UNIQUE,
    gateway TEXT NOT NULL,
    internal INTEGER NOT NULL DEFAULT 0,
    device TEXT NOT NULL UNIQUE,
    builtin INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
  );
  CREATE UNIQUE INDEX networks_project_name ON networks(project_id, name);
  CREATE TABLE network_leases (
    network_id TEXT NOT NULL REFERENCES networks(id),
    address TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    if_index INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (network_id, address)
  );
  CREATE UNIQUE INDEX network_leases_instance ON network_leases(instance_id, network_id);
  `,
  // VM disk images: content by digest in the content store (shared), names per project.
  `
  CREATE TABLE disk_images (
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    format TEXT NOT NULL,
    size INTEGER NOT NULL,
    virtual_size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
  );
  CREATE INDEX disk_images_digest ON disk_images(digest);
  `,
  // Agents in other processes or on other hosts, and which agent each VM lives on.
  `
  CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    token TEXT NOT NULL,
    registered_at TEXT NOT NULL
  );
  ALTER TABLE vms ADD COLUMN agent TEXT NOT NULL DEFAULT 'local';
  `,
  // The ledger's instances, one row each: the part of its state that grows with use, so an
  // admission writes its own row and a small core, not every instance (QuotaService moves
  // the instances of a state saved whole into rows on load).
  `
  CREATE TABLE quota_instances (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL
  );
  `,
  // Tags looked up by name alone: every create resolves its image reference this way.
  `
  CREATE INDEX image_tags_name ON image_tags(name);
  `,
];

type Row = Record<string, unknown>;
const str = (v: unknown): string => String(v);
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

function isUniqueViolation(e: unknown): boolean {
  return e instanceof Error && 'code' in e && String((e as { code: unknown }).code).startsWith('SQLITE_CONSTRAINT');
}

/** What the repositories use of the database: statements, prepared once and reused. */
type Db = Pick<Database.Database, 'prepare'>;

/** Preparing a statement costs more than running a small query: keep them (bounded; the SQL texts are few). */
function withStatementCache(db: Database.Database, max = 512): Db {
  const cache = new Map<string, Database.Statement>();
  const prepare = (sql: string) => {
    let st = cache.get(sql);
    if (!st) {
      if (cache.size >= max) cache.clear();
      st = db.prepare(sql);
      cache.set(sql, st);
    }
    return st;
  };
  return { prepare: prepare as Database.Database['prepare'] };
}

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly stmts: Db;
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

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    this.stmts = withStatementCache(this.db);
    this.projects = new SqliteProjects(this.stmts);
    this.images = new SqliteImages(this.stmts);
    this.containers = new SqliteContainers(this.stmts);
    this.vms = new SqliteVms(this.stmts);
    this.networks = new SqliteNetworks(this.stmts);
    this.disks = new SqliteDiskImages(this.stmts);
    this.agents = new SqliteAgents(this.stmts);
    this.operations = new SqliteOperations(this.stmts);
    this.users = new SqliteUsers(this.stmts);
    this.tokens = new SqliteTokens(this.stmts);
    this.roles = new SqliteRoles(this.stmts);
  }

  private migrate(): void {
    const current = Number(this.db.pragma('user_version', { simple: true }));
    if (current > MIGRATIONS.length) {
      throw new Error(`store schema version ${current} is newer than this nimbusd (${MIGRATIONS.length}); refusing to start`);
    }
    if (current === MIGRATIONS.length) return;
    // Table rebuilds need foreign keys off (they cannot change inside a transaction); checked before turning them back on.
    this.db.pragma('foreign_keys = OFF');
    try {
      for (let v = current; v < MIGRATIONS.length; v++) {
        this.db.transaction(() => {
          this.db.exec(MIGRATIONS[v]!);
          const broken = this.db.pragma('foreign_key_check') as unknown[];
          if (broken.length) throw new Error(`migration ${v + 1} broke ${broken.length} foreign key(s)`);
          this.db.pragma(`user_version = ${v + 1}`);
        })();
      }
    } finally {
      this.db.pragma('foreign_keys = ON');
    }
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  loadQuotaState(): string | undefined {
    const r = this.stmts.prepare('SELECT state FROM quota_ledger WHERE id = 1').get() as Row | undefined;
    return r ? str(r.state) : undefined;
  }

  saveQuotaState(json: string): void {
    this.stmts
      .prepare(`INSERT INTO quota_ledger (id, state, updated_at) VALUES (1, ?, ?)
                ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at`)
      .run(json, new Date().toISOString());
  }

  loadQuotaInstances(): string[] {
    return (this.stmts.prepare('SELECT state FROM quota_instances').all() as Row[]).map((r) => str(r.state));
  }

  saveQuotaInstances(rows: readonly { id: string; json: string | null }[]): void {
    const put = this.stmts.prepare('INSERT INTO quota_instances (id, state) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state');
    const del = this.stmts.prepare('DELETE FROM quota_instances WHERE id = ?');
    for (const r of rows) {
      if (r.json === null) del.run(r.id);
      else put.run(r.id, r.json);
    }
  }

  appendQuotaAudit(entries: readonly QuotaAuditRow[]): void {
    if (entries.length === 0) return;
    const ins = this.stmts.prepare('INSERT OR IGNORE INTO quota_audit (seq, project, entry) VALUES (?, ?, ?)');
    for (const e of entries) ins.run(e.seq, e.project, e.json);
  }

  queryQuotaAudit(filter: { project?: string; sinceSeq?: number; limit: number }): string[] {
    const where: string[] = ['seq > ?'];
    const args: (string | number)[] = [filter.sinceSeq ?? 0];
    if (filter.project !== undefined) {
      where.push('project = ?');
      args.push(filter.project);
    }
    // the newest `limit` entries, returned oldest first
    const rows = this.stmts
      .prepare(`SELECT entry FROM (SELECT seq, entry FROM quota_audit WHERE ${where.join(' AND ')} ORDER BY seq DESC LIMIT ?) ORDER BY seq`)
      .all(...args, filter.limit) as Row[];
    return rows.map((r) => str(r.entry));
  }

  close(): void {
    this.db.close();
  }
}

class SqliteProjects implements ProjectRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): ProjectRecord | undefined {
    if (!r) return undefined;
    return { id: str(r.id), name: str(r.name), parentId: strOrNull(r.parent_id), createdAt: str(r.created_at) };
  }
  get(id: string) {
    return this.row(this.db.prepare('SELECT * FROM projects WHERE id = ?').get(id) as Row | undefined);
  }
  byName(name: string) {
    return this.row(this.db.prepare('SELECT * FROM projects WHERE name = ? ORDER BY parent_id IS NOT NULL, created_at LIMIT 1').get(name) as Row | undefined);
  }
  child(parentId: string | null, name: string) {
    return this.row(this.db.prepare("SELECT * FROM projects WHERE COALESCE(parent_id, '') = ? AND name = ?").get(parentId ?? '', name) as Row | undefined);
  }
  children(parentId: string | null) {
    return (this.db.prepare("SELECT * FROM projects WHERE COALESCE(parent_id, '') = ? ORDER BY name").all(parentId ?? '') as Row[]).map((r) => this.row(r)!);
  }
  list() {
    return (this.db.prepare('SELECT * FROM projects ORDER BY name').all() as Row[]).map((r) => this.row(r)!);
  }
  insert(p: ProjectRecord) {
    try {
      this.db
        .prepare('INSERT INTO projects (id, name, parent_id, created_at) VALUES (?, ?, ?, ?)')
        .run(p.id, p.name, p.parentId, p.createdAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`project "${p.name}" already exists${p.parentId ? ' under that parent' : ''}`);
      throw e;
    }
  }
  delete(id: string) {
    this.db.prepare('DELETE FROM projects WHERE id = ?').run(id);
  }
}

class SqliteUsers implements UserRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): UserRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id), name: str(r.name), passwordHash: str(r.password_hash), systemAdmin: Boolean(r.system_admin),
      defaultProjectId: strOrNull(r.default_project_id), createdAt: str(r.created_at),
    };
  }
  get(id: string) {
    return this.row(this.db.prepare('SELECT * FROM users WHERE id = ?').get(id) as Row | undefined);
  }
  byName(name: string) {
    return this.row(this.db.prepare('SELECT * FROM users WHERE name = ?').get(name) as Row | undefined);
  }
  list() {
    return (this.db.prepare('SELECT * FROM users ORDER BY name').all() as Row[]).map((r) => this.row(r)!);
  }
  insert(u: UserRecord) {
    try {
      this.db
        .prepare('INSERT INTO users (id, name, password_hash, system_admin, default_project_id, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(u.id, u.name, u.passwordHash, u.systemAdmin ? 1 : 0, u.defaultProjectId, u.createdAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`user "${u.name}" already exists`);
      throw e;
    }
  }
  update(id: string, patch: Partial<Omit<UserRecord, 'id'>>) {
    const cur = this.get(id);
    if (!cur) throw new NotFound(`no such user: ${id}`);
    const n = { ...cur, ...patch };
    this.db
      .prepare('UPDATE users SET name = ?, password_hash = ?, system_admin = ?, default_project_id = ? WHERE id = ?')
      .run(n.name, n.passwordHash, n.systemAdmin ? 1 : 0, n.defaultProjectId, id);
  }
  delete(id: string) {
    this.db.prepare('DELETE FROM users WHERE id = ?').run(id);
  }
}

class SqliteTokens implements TokenRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): TokenRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id), userId: str(r.user_id), kind: str(r.kind) as TokenRecord['kind'], name: strOrNull(r.name),
      hash: str(r.hash), createdAt: str(r.created_at), expiresAt: numOrNull(r.expires_at),
    };
  }
  byHash(hash: string) {
    return this.row(this.db.prepare('SELECT * FROM tokens WHERE hash = ?').get(hash) as Row | undefined);
  }
  list(userId: string, kind: TokenRecord['kind']) {
    return (this.db.prepare('SELECT * FROM tokens WHERE user_id = ? AND kind = ? ORDER BY created_at').all(userId, kind) as Row[]).map((r) => this.row(r)!);
  }
  insert(t: TokenRecord) {
    try {
      this.db
        .prepare('INSERT INTO tokens (id, user_id, kind, name, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(t.id, t.userId, t.kind, t.name, t.hash, t.createdAt, t.expiresAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`an API key named "${t.name ?? ''}" already exists`);
      throw e;
    }
  }
  delete(id: string) {
    this.db.prepare('DELETE FROM tokens WHERE id = ?').run(id);
  }
  deleteExpired(now: number) {
    return this.db.prepare('DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?').run(now).changes;
  }
}

class SqliteRoles implements RoleRepo {
  constructor(private readonly db: Db) {}
  list(filter: { userId?: string; projectId?: string } = {}): RoleGrantRecord[] {
    const rows = this.db
      .prepare('SELECT * FROM role_grants WHERE (@u IS NULL OR user_id = @u) AND (@p IS NULL OR project_id = @p) ORDER BY created_at')
      .all({ u: filter.userId ?? null, p: filter.projectId ?? null }) as Row[];
    return rows.map((r) => ({ userId: str(r.user_id), projectId: str(r.project_id), role: str(r.role) as RoleGrantRecord['role'], createdAt: str(r.created_at) }));
  }
  grant(g: RoleGrantRecord) {
    this.db
      .prepare(`INSERT INTO role_grants (user_id, project_id, role, created_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(user_id, project_id) DO UPDATE SET role = excluded.role`)
      .run(g.userId, g.projectId, g.role, g.createdAt);
  }
  revoke(userId: string, projectId: string) {
    return this.db.prepare('DELETE FROM role_grants WHERE user_id = ? AND project_id = ?').run(userId, projectId).changes > 0;
  }
}

class SqliteImages implements ImageRepo {
  constructor(private readonly db: Db) {}
  private content(r: Row | undefined): ImageContentRecord | undefined {
    if (!r) return undefined;
    return {
      digest: str(r.digest),
      indexDigest: strOrNull(r.index_digest),
      configDigest: str(r.config_digest),
      config: JSON.parse(str(r.config)) as ImageRecord['config'],
      layers: JSON.parse(str(r.layers)) as ImageRecord['layers'],
      chainId: str(r.chain_id),
      size: Number(r.size),
      createdAt: str(r.created_at),
    };
  }
  /** A reference row joined with its content: the image as that project sees it (created = when it got it). */
  private referenced(r: Row): ImageRecord {
    return { ...this.content(r)!, projectId: str(r.project_id), createdAt: str(r.ref_created_at) };
  }
  private tagRow(r: Row): ImageTagRecord {
    return { name: str(r.name), digest: str(r.digest), projectId: str(r.project_id), updatedAt: str(r.updated_at) };
  }
  get(digest: string) {
    return this.content(this.db.prepare('SELECT * FROM images WHERE digest = ?').get(digest) as Row | undefined);
  }
  contents() {
    return (this.db.prepare('SELECT * FROM images ORDER BY created_at').all() as Row[]).map((r) => this.content(r)!);
  }
  ref(projectId: string, digest: string) {
    const r = this.db
      .prepare('SELECT i.*, r.project_id, r.created_at AS ref_created_at FROM image_refs r JOIN images i ON i.digest = r.digest WHERE r.project_id = ? AND r.digest = ?')
      .get(projectId, digest) as Row | undefined;
    return r ? this.referenced(r) : undefined;
  }
  list(projectId?: string) {
    const rows = this.db
      .prepare('SELECT i.*, r.project_id, r.created_at AS ref_created_at FROM image_refs r JOIN images i ON i.digest = r.digest WHERE (@p IS NULL OR r.project_id = @p) ORDER BY r.created_at')
      .all({ p: projectId ?? null }) as Row[];
    return rows.map((r) => this.referenced(r));
  }
  upsert(img: ImageRecord) {
    const { projectId, ...content } = img;
    this.db
      .prepare(
        `INSERT INTO images (digest, index_digest, config_digest, config, layers, chain_id, size, created_at)
         VALUES (@digest, @indexDigest, @configDigest, @config, @layers, @chainId, @size, @createdAt)
         ON CONFLICT(digest) DO UPDATE SET index_digest = COALESCE(excluded.index_digest, images.index_digest)`,
      )
      .run({ ...content, config: JSON.stringify(img.config), layers: JSON.stringify(img.layers) });
    this.db.prepare('INSERT OR IGNORE INTO image_refs (project_id, digest, created_at) VALUES (?, ?, ?)').run(projectId, img.digest, img.createdAt);
  }
  deleteRef(projectId: string, digest: string) {
    this.db.prepare('DELETE FROM image_refs WHERE project_id = ? AND digest = ?').run(projectId, digest);
  }
  refCount(digest: string) {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM image_refs WHERE digest = ?').get(digest) as Row).n);
  }
  delete(digest: string) {
    this.db.prepare('DELETE FROM images WHERE digest = ?').run(digest);
  }
  tags(filter: { projectId?: string; digest?: string; name?: string } = {}) {
    // only the conditions given, so that an index serves each (an "@x IS NULL OR" form scans)
    const where: string[] = [];
    const args: string[] = [];
    for (const [column, value] of [['project_id', filter.projectId], ['digest', filter.digest], ['name', filter.name]] as const) {
      if (value === undefined) continue;
      where.push(`${column} = ?`);
      args.push(value);
    }
    const rows = this.db.prepare(`SELECT * FROM image_tags ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY name`).all(...args) as Row[];
    return rows.map((r) => this.tagRow(r));
  }
  tag(projectId: string, name: string) {
    const r = this.db.prepare('SELECT * FROM image_tags WHERE project_id = ? AND name = ?').get(projectId, name) as Row | undefined;
    return r ? this.tagRow(r) : undefined;
  }
  setTag(t: ImageTagRecord) {
    this.db
      .prepare(
        `INSERT INTO image_tags (project_id, name, digest, updated_at) VALUES (@projectId, @name, @digest, @updatedAt)
         ON CONFLICT(project_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`,
      )
      .run(t);
  }
  deleteTag(projectId: string, name: string) {
    this.db.prepare('DELETE FROM image_tags WHERE project_id = ? AND name = ?').run(projectId, name);
  }
}

const CONTAINER_COLUMNS: Record<string, string> = {
  name: 'name',
  projectId: 'project_id',
  imageDigest: 'image_digest',
  config: 'config',
  status: 'status',
  runtime: 'runtime',
  pid: 'pid',
  exitCode: 'exit_code',
  oomKilled: 'oom_killed',
  restartCount: 'restart_count',
  stoppedByUser: 'stopped_by_user',
  createdAt: 'created_at',
  startedAt: 'started_at',
  finishedAt: 'finished_at',
  warnings: 'warnings',
};

function containerValue(key: string, v: unknown): unknown {
  if (key === 'config' || key === 'warnings') return JSON.stringify(v);
  if (typeof v === 'boolean') return v ? 1 : 0;
  return v ?? null;
}

/**
 * What the two instance tables (containers, vms) share: rows by id, listed by project and
 * status, inserted and patched through a map of record fields to columns.
 */
class InstanceRows<R extends { id: string; name: string }> {
  constructor(
    private readonly db: Db,
    private readonly table: 'containers' | 'vms',
    /** "container" | "vm", for NotFound */
    private readonly noun: string,
    private readonly columns: Record<string, string>,
    private readonly value: (field: string, v: unknown) => unknown,
    private readonly row: (r: Row | undefined) => R | undefined,
  ) {}
  get(id: string): R | undefined {
    return this.row(this.db.prepare(`SELECT * FROM ${this.table} WHERE id = ?`).get(id) as Row | undefined);
  }
  list(filter: { projectId?: string; status?: string[] } = {}): R[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.projectId) {
      where.push('project_id = ?');
      args.push(filter.projectId);
    }
    if (filter.status?.length) {
      where.push(`status IN (${filter.status.map(() => '?').join(',')})`);
      args.push(...filter.status);
    }
    const sql = `SELECT * FROM ${this.table} ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at DESC`;
    return (this.db.prepare(sql).all(...args) as Row[]).map((r) => this.row(r)!);
  }
  /** duplicate: the message when the name is taken (a unique index on it). */
  insert(rec: R, duplicate: string): void {
    const cols = ['id', ...Object.values(this.columns)];
    const vals = [rec.id, ...Object.keys(this.columns).map((k) => this.value(k, rec[k as keyof R]))];
    try {
      this.db.prepare(`INSERT INTO ${this.table} (${cols.join(',')}) VALUES (${cols.map(() => '?').join(',')})`).run(...vals);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(duplicate);
      throw e;
    }
  }
  update(id: string, patch: Partial<Omit<R, 'id'>>): R {
    const keys = Object.keys(patch).filter((k) => k in this.columns);
    if (keys.length) {
      const sets = keys.map((k) => `${this.columns[k]} = ?`).join(', ');
      const vals = keys.map((k) => this.value(k, patch[k as keyof typeof patch]));
      // the row as updated, in the same statement (no second read)
      const row = this.row(this.db.prepare(`UPDATE ${this.table} SET ${sets} WHERE id = ? RETURNING *`).get(...vals, id) as Row | undefined);
      if (!row) throw new NotFound(`no such ${this.noun}: ${id}`);
      return row;
    }
    const row = this.get(id);
    if (!row) throw new NotFound(`no such ${this.noun}: ${id}`);
    return row;
  }
  /** The row, and the instance's address leases with it (network_leases has no foreign key: it serves both tables). */
  delete(id: string): void {
    this.db.prepare('DELETE FROM network_leases WHERE instance_id = ?').run(id);
    this.db.prepare(`DELETE FROM ${this.table} WHERE id = ?`).run(id);
  }
}

class SqliteContainers implements ContainerRepo {
  private readonly rows: InstanceRows<ContainerRecord>;
  constructor(private readonly db: Db) {
    this.rows = new InstanceRows(db, 'containers', 'container', CONTAINER_COLUMNS, containerValue, (r) => this.row(r));
  }
  private row(r: Row | undefined): ContainerRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id),
      name: str(r.name),
      projectId: str(r.project_id),
      imageDigest: str(r.image_digest),
      config: JSON.parse(str(r.config)) as ContainerRecord['config'],
      status: str(r.status) as ContainerStatus,
      runtime: str(r.runtime),
      pid: numOrNull(r.pid),
      exitCode: numOrNull(r.exit_code),
      oomKilled: Boolean(r.oom_killed),
      restartCount: Number(r.restart_count),
      stoppedByUser: Boolean(r.stopped_by_user),
      createdAt: str(r.created_at),
      startedAt: strOrNull(r.started_at),
      finishedAt: strOrNull(r.finished_at),
      warnings: JSON.parse(str(r.warnings)) as string[],
    };
  }
  get(id: string) {
    return this.rows.get(id);
  }
  byName(projectId: string, name: string) {
    return this.row(this.db.prepare('SELECT * FROM containers WHERE project_id = ? AND name = ?').get(projectId, name) as Row | undefined);
  }
  named(name: string) {
    return (this.db.prepare('SELECT * FROM containers WHERE name = ? ORDER BY created_at').all(name) as Row[]).map((r) => this.row(r)!);
  }
  withIdPrefix(prefix: string) {
    if (!/^[0-9a-f]{1,64}$/.test(prefix)) return [];
    return (this.db.prepare('SELECT * FROM containers WHERE id LIKE ? ORDER BY created_at').all(`${prefix}%`) as Row[]).map((r) => this.row(r)!);
  }
  list(filter: { projectId?: string; status?: ContainerStatus[] } = {}) {
    return this.rows.list(filter);
  }
  insert(c: ContainerRecord) {
    this.rows.insert(c, `a container named "${c.name}" already exists in this project`);
  }
  update(id: string, patch: Partial<Omit<ContainerRecord, 'id'>>): ContainerRecord {
    return this.rows.update(id, patch);
  }
  delete(id: string) {
    this.rows.delete(id);
  }
  countByImage(digest: string, projectId?: string) {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM containers WHERE image_digest = @d AND (@p IS NULL OR project_id = @p)').get({ d: digest, p: projectId ?? null }) as Row).n);
  }
}

const VM_COLUMNS: Record<string, string> = {
  name: 'name',
  projectId: 'project_id',
  config: 'config',
  status: 'status',
  pid: 'pid',
  exitCode: 'exit_code',
  createdAt: 'created_at',
  startedAt: 'started_at',
  finishedAt: 'finished_at',
  savedAt: 'saved_at',
  agent: 'agent',
};

class SqliteVms implements VmRepo {
  private readonly rows: InstanceRows<VmRecord>;
  constructor(private readonly db: Db) {
    this.rows = new InstanceRows(db, 'vms', 'vm', VM_COLUMNS, (k, v) => this.value(k, v), (r) => this.row(r));
  }
  private row(r: Row | undefined): VmRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id),
      name: str(r.name),
      projectId: str(r.project_id),
      config: JSON.parse(str(r.config)) as VmRecord['config'],
      status: str(r.status) as VmStatus,
      pid: numOrNull(r.pid),
      exitCode: numOrNull(r.exit_code),
      createdAt: str(r.created_at),
      startedAt: strOrNull(r.started_at),
      finishedAt: strOrNull(r.finished_at),
      savedAt: strOrNull(r.saved_at),
      agent: str(r.agent ?? 'local'),
    };
  }
  private value(key: string, v: unknown): unknown {
    return key === 'config' ? JSON.stringify(v) : (v ?? null);
  }
  get(id: string) {
    return this.rows.get(id);
  }
  byName(name: string) {
    return this.row(this.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as Row | undefined);
  }
  resolve(idOrName: string): VmRecord {
    if (!idOrName) throw new InvalidArgument('a VM id or name is required');
    const exact = this.get(idOrName) ?? this.byName(idOrName);
    if (exact) return exact;
    if (/^[0-9a-f]{1,64}$/.test(idOrName)) {
      const rows = this.db.prepare('SELECT * FROM vms WHERE id LIKE ? LIMIT 2').all(`${idOrName}%`) as Row[];
      if (rows.length > 1) throw new InvalidArgument(`VM id prefix "${idOrName}" is ambiguous`);
      if (rows.length === 1) return this.row(rows[0])!;
    }
    throw new NotFound(`no such vm: ${idOrName}`);
  }
  list(filter: { projectId?: string; status?: VmStatus[] } = {}) {
    return this.rows.list(filter);
  }
  insert(v: VmRecord) {
    this.rows.insert(v, `a VM named "${v.name}" already exists`);
  }
  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): VmRecord {
    return this.rows.update(id, patch);
  }
  delete(id: string) {
    this.rows.delete(id);
  }
}

class SqliteOperations implements OperationRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): OperationRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id),
      kind: str(r.kind),
      projectId: str(r.project_id),
      status: str(r.status) as OperationRecord['status'],
      target: str(r.target),
      progress: JSON.parse(str(r.progress)) as Record<string, unknown>,
      result: r.result === null ? null : (JSON.parse(str(r.result)) as unknown),
      error: r.error === null ? null : (JSON.parse(str(r.error)) as OperationRecord['error']),
      createdAt: str(r.created_at),
      updatedAt: str(r.updated_at),
    };
  }
  get(id: string) {
    return this.row(this.db.prepare('SELECT * FROM operations WHERE id = ?').get(id) as Row | undefined);
  }
  list(limit = 100) {
    return (this.db.prepare('SELECT * FROM operations ORDER BY created_at DESC LIMIT ?').all(limit) as Row[]).map(
      (r) => this.row(r)!,
    );
  }
  insert(op: OperationRecord) {
    this.db
      .prepare(
        `INSERT INTO operations (id, kind, project_id, status, target, progress, result, error, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        op.id,
        op.kind,
        op.projectId,
        op.status,
        op.target,
        JSON.stringify(op.progress),
        op.result === null || op.result === undefined ? null : JSON.stringify(op.result),
        op.error ? JSON.stringify(op.error) : null,
        op.createdAt,
        op.updatedAt,
      );
  }
  update(id: string, patch: Partial<Omit<OperationRecord, 'id'>>): OperationRecord {
    const cur = this.get(id);
    if (!cur) throw new NotFound(`no such operation: ${id}`);
    const next = { ...cur, ...patch };
    this.db
      .prepare('UPDATE operations SET status = ?, progress = ?, result = ?, error = ?, updated_at = ? WHERE id = ?')
      .run(
        next.status,
        JSON.stringify(next.progress),
        next.result === null || next.result === undefined ? null : JSON.stringify(next.result),
        next.error ? JSON.stringify(next.error) : null,
        next.updatedAt,
        id,
      );
    return next;
  }
}

class SqliteNetworks implements NetworkRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): NetworkRecord | undefined {
    if (!r) return undefined;
    return {
      id: str(r.id), name: str(r.name), projectId: str(r.project_id), driver: str(r.driver) as NetworkRecord['driver'],
      subnet: str(r.subnet), gateway: str(r.gateway), internal: Boolean(r.internal), device: str(r.device),
      builtin: Boolean(r.builtin), labels: JSON.parse(str(r.labels)) as Record<string, string>, createdAt: str(r.created_at),
    };
  }
  private rows(sql: string, ...args: unknown[]): NetworkRecord[] {
    return (this.db.prepare(sql).all(...args) as Row[]).map((r) => this.row(r)!);
  }
  get(id: string) {
    return this.row(this.db.prepare('SELECT * FROM networks WHERE id = ?').get(id) as Row | undefined);
  }
  byName(projectId: string, name: string) {
    return this.row(this.db.prepare('SELECT * FROM networks WHERE project_id = ? AND name = ?').get(projectId, name) as Row | undefined);
  }
  named(name: string) {
    return this.rows('SELECT * FROM networks WHERE name = ? ORDER BY created_at', name);
  }
  withIdPrefix(prefix: string) {
    if (!/^[0-9a-f]{1,64}$/.test(prefix)) return [];
    return this.rows("SELECT * FROM networks WHERE id LIKE ? || '%' ORDER BY created_at", prefix);
  }
  list(filter: { projectId?: string } = {}) {
    return filter.projectId
      ? this.rows('SELECT * FROM networks WHERE project_id = ? ORDER BY created_at', filter.projectId)
      : this.rows('SELECT * FROM networks ORDER BY created_at');
  }
  insert(n: NetworkRecord) {
    try {
      this.db
        .prepare('INSERT INTO networks (id, name, project_id, driver, subnet, gateway, internal, device, builtin, labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(n.id, n.name, n.projectId, n.driver, n.subnet, n.gateway, n.internal ? 1 : 0, n.device, n.builtin ? 1 : 0, JSON.stringify(n.labels), n.createdAt);
    } catch (e) {
      if (!isUniqueViolation(e)) throw e;
      const msg = String((e as Error).message);
      if (msg.includes('subnet')) throw new AlreadyExists(`subnet ${n.subnet} is used by another network`);
      if (msg.includes('device')) throw new AlreadyExists(`device ${n.device} is used by another network`);
      throw new AlreadyExists(`network "${n.name}" already exists in this project`);
    }
  }
  delete(id: string) {
    this.db.prepare('DELETE FROM networks WHERE id = ?').run(id);
  }
  leases(filter: { networkId?: string; instanceId?: string }): NetworkLeaseRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.networkId) {
      where.push('network_id = ?');
      args.push(filter.networkId);
    }
    if (filter.instanceId) {
      where.push('instance_id = ?');
      args.push(filter.instanceId);
    }
    const sql = `SELECT * FROM network_leases ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY instance_id, if_index`;
    return (this.db.prepare(sql).all(...args) as Row[]).map((r) => ({
      networkId: str(r.network_id), address: str(r.address), instanceId: str(r.instance_id), ifIndex: Number(r.if_index), createdAt: str(r.created_at),
    }));
  }
  lease(l: NetworkLeaseRecord) {
    try {
      this.db.prepare('INSERT INTO network_leases (network_id, address, instance_id, if_index, created_at) VALUES (?, ?, ?, ?, ?)').run(l.networkId, l.address, l.instanceId, l.ifIndex, l.createdAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`address ${l.address} is already leased on this network, or the container is already on it`);
      throw e;
    }
  }
  release(instanceId: string, networkId?: string): number {
    return networkId
      ? this.db.prepare('DELETE FROM network_leases WHERE instance_id = ? AND network_id = ?').run(instanceId, networkId).changes
      : this.db.prepare('DELETE FROM network_leases WHERE instance_id = ?').run(instanceId).changes;
  }
}

class SqliteAgents implements AgentRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): AgentRecord | undefined {
    return r ? { name: str(r.name), url: str(r.url), token: str(r.token), registeredAt: str(r.registered_at) } : undefined;
  }
  get(name: string) {
    return this.row(this.db.prepare('SELECT * FROM agents WHERE name = ?').get(name) as Row | undefined);
  }
  list() {
    return (this.db.prepare('SELECT * FROM agents ORDER BY name').all() as Row[]).map((r) => this.row(r)!);
  }
  put(a: AgentRecord) {
    this.db.prepare('INSERT OR REPLACE INTO agents (name, url, token, registered_at) VALUES (?, ?, ?, ?)').run(a.name, a.url, a.token, a.registeredAt);
  }
  delete(name: string) {
    this.db.prepare('DELETE FROM agents WHERE name = ?').run(name);
  }
}

class SqliteDiskImages implements DiskImageRepo {
  constructor(private readonly db: Db) {}
  private row(r: Row | undefined): DiskImageRecord | undefined {
    if (!r) return undefined;
    return {
      projectId: str(r.project_id), name: str(r.name), digest: str(r.digest), format: str(r.format) as DiskImageRecord['format'],
      size: Number(r.size), virtualSize: Number(r.virtual_size), createdAt: str(r.created_at),
    };
  }
  get(projectId: string, name: string) {
    return this.row(this.db.prepare('SELECT * FROM disk_images WHERE project_id = ? AND name = ?').get(projectId, name) as Row | undefined);
  }
  list(projectId?: string) {
    const rows = projectId
      ? this.db.prepare('SELECT * FROM disk_images WHERE project_id = ? ORDER BY name').all(projectId)
      : this.db.prepare('SELECT * FROM disk_images ORDER BY project_id, name').all();
    return (rows as Row[]).map((r) => this.row(r)!);
  }
  insert(d: DiskImageRecord) {
    try {
      this.db
        .prepare('INSERT INTO disk_images (project_id, name, digest, format, size, virtual_size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(d.projectId, d.name, d.digest, d.format, d.size, d.virtualSize, d.createdAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(`disk image "${d.name}" already exists in this project`);
      throw e;
    }
  }
  delete(projectId: string, name: string) {
    this.db.prepare('DELETE FROM disk_images WHERE project_id = ? AND name = ?').run(projectId, name);
  }
  countByDigest(digest: string) {
    return Number((this.db.prepare('SELECT COUNT(*) AS n FROM disk_images WHERE digest = ?').get(digest) as Row).n);
  }
}
