/**
 * The embedded store's schema history: the twelve SQLite migrations that built the schema
 * before it had one source for both dialects (schema.ts). A fresh SQLite store starts from the
 * baseline; a store at an older version (PRAGMA user_version 1–11) climbs this history to
 * BASELINE_VERSION first, then runs the shared migrations like any other.
 */
import type Database from 'better-sqlite3';
import { BASELINE, BASELINE_VERSION, MIGRATIONS, SCHEMA_VERSION, ddl, newerThanCode } from './schema.js';

/** History i brings a store to version i + 1 (kept verbatim: these exact texts built the stores in the field). */
export const SQLITE_HISTORY: readonly string[] = [
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

if (SQLITE_HISTORY.length !== BASELINE_VERSION) throw new Error('the SQLite history must end at the baseline');

/** Brings an SQLite database to SCHEMA_VERSION (or refuses one newer than the code). */
export function migrateSqlite(db: Database.Database): void {
  const version = () => Number(db.pragma('user_version', { simple: true }));
  const start = version();
  if (start > SCHEMA_VERSION) throw newerThanCode(start);
  if (start === SCHEMA_VERSION) return;
  // Table rebuilds need foreign keys off (they cannot change inside a transaction); checked before turning them back on.
  db.pragma('foreign_keys = OFF');
  try {
    for (;;) {
      // IMMEDIATE: another process opening the same file migrates first or waits; the version is read again under the lock
      db.exec('BEGIN IMMEDIATE');
      try {
        const v = version();
        if (v > SCHEMA_VERSION) throw newerThanCode(v);
        if (v === SCHEMA_VERSION) {
          db.exec('COMMIT');
          return;
        }
        const [next, sql] =
          v === 0 ? [BASELINE_VERSION, ddl('sqlite', BASELINE)]
          : v < BASELINE_VERSION ? [v + 1, SQLITE_HISTORY[v]!]
          : [v + 1, ddl('sqlite', MIGRATIONS[v - BASELINE_VERSION]!)];
        db.exec(sql);
        const broken = db.pragma('foreign_key_check') as unknown[];
        if (broken.length) throw new Error(`migration to version ${next} broke ${broken.length} foreign key(s)`);
        db.pragma(`user_version = ${next}`);
        db.exec('COMMIT');
      } catch (e) {
        if (db.inTransaction) db.exec('ROLLBACK');
        throw e;
      }
    }
  } finally {
    db.pragma('foreign_keys = ON');
  }
}
