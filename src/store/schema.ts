/**
 * The store's schema, one source for both dialects.
 *
 * BASELINE creates the schema as it stands at version BASELINE_VERSION (what the twelve
 * historical SQLite migrations in sqlite-history.ts add up to). MIGRATIONS are the changes
 * after it, in order, run by both dialects: migration i brings the store to version
 * BASELINE_VERSION + i + 1. A store is at SCHEMA_VERSION when fully migrated; a newer one is
 * refused. SQLite keeps the version in PRAGMA user_version, PostgreSQL in schema_version.
 *
 * DDL is written in the portable subset with two type words the dialects spell differently:
 * INT64 (SQLite INTEGER, which is 64-bit; PostgreSQL BIGINT) for byte sizes, epoch
 * milliseconds and sequence numbers, and TEXT, which PostgreSQL gets with the "C" collation
 * so that ORDER BY on text sorts by bytes as SQLite does, whatever the database's locale.
 * Booleans are INTEGER 0/1.
 *
 * Where the dialects need different statements (changing a constraint: PostgreSQL alters the
 * table, SQLite must rebuild it), a migration wraps each variant in a section of its own,
 * a line `--@sqlite` or `--@postgres` opening it and a line `--@end` closing it; ddl() keeps
 * the sections of its dialect and drops the others. Text outside sections is for both.
 */
import type { Dialect } from './sql/executor.js';

export const BASELINE_VERSION = 12;

export const BASELINE = `
  CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id TEXT REFERENCES projects(id),
    created_at TEXT NOT NULL
  );
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
    expires_at INT64
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

  CREATE TABLE images (
    digest TEXT PRIMARY KEY,
    index_digest TEXT,
    config_digest TEXT NOT NULL,
    config TEXT NOT NULL,
    layers TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    size INT64 NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE image_refs (
    project_id TEXT NOT NULL REFERENCES projects(id),
    digest TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, digest)
  );
  CREATE INDEX image_refs_digest ON image_refs(digest);
  CREATE TABLE image_tags (
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name),
    FOREIGN KEY (project_id, digest) REFERENCES image_refs(project_id, digest) ON DELETE CASCADE
  );
  CREATE INDEX image_tags_ref ON image_tags(project_id, digest);
  CREATE INDEX image_tags_name ON image_tags(name);

  CREATE TABLE containers (
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
  CREATE UNIQUE INDEX containers_project_name ON containers(project_id, name);
  CREATE INDEX containers_image ON containers(image_digest);

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
    saved_at TEXT,
    agent TEXT NOT NULL DEFAULT 'local'
  );

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

  CREATE TABLE disk_images (
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    format TEXT NOT NULL,
    size INT64 NOT NULL,
    virtual_size INT64 NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
  );
  CREATE INDEX disk_images_digest ON disk_images(digest);

  CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    token TEXT NOT NULL,
    registered_at TEXT NOT NULL
  );

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

  CREATE TABLE quota_ledger (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE TABLE quota_instances (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL
  );
  CREATE TABLE quota_audit (
    seq INT64 PRIMARY KEY,
    project TEXT NOT NULL,
    entry TEXT NOT NULL
  );
  CREATE INDEX quota_audit_by_project ON quota_audit (project, seq);
`;

/** Changes after the baseline, in order (portable DDL, through ddl()). */
export const MIGRATIONS: readonly string[] = [
  // the quota ledger shared by several control-plane processes: a replica compares the state's
  // version with the one it holds, and reads only the instance rows written after it (no index on
  // it: that would cost every embedded admission ~10% for a scan only replicas catching up make)
  `ALTER TABLE quota_ledger ADD COLUMN version INT64 NOT NULL DEFAULT 0;
   ALTER TABLE quota_instances ADD COLUMN version INT64 NOT NULL DEFAULT 0;`,
  // agents' one-time join tokens (the secret's hash only), redeemable by any control-plane process
  `CREATE TABLE agent_join_tokens (
     id TEXT PRIMARY KEY,
     hash TEXT NOT NULL,
     created_at TEXT NOT NULL,
     expires_at INT64 NOT NULL,
     used_at INT64,
     used_by TEXT
   );`,
  // Instance names, one per project across containers and VMs: the repositories write the
  // name's row in the transaction that inserts the instance and delete it with the instance,
  // so two instances of one project cannot share a name (the services' own check can race).
  // VM names become unique per project instead of host-wide (a tenant could not use a name
  // another project had, and learnt that it had it).
  // Existing instances: a container and a VM of one project sharing a name (a race of the
  // services' check) stays as it is, rows untouched; the older one (created_at, then id)
  // holds the name, the other keeps it as its name but does not reserve it: the name is
  // free once the older one is removed, as far as the other kind is concerned.
  `CREATE TABLE instance_names (
     project_id TEXT NOT NULL REFERENCES projects(id),
     name TEXT NOT NULL,
     kind TEXT NOT NULL CHECK (kind IN ('container', 'vm')),
     instance_id TEXT NOT NULL,
     PRIMARY KEY (project_id, name)
   );
   CREATE UNIQUE INDEX instance_names_instance ON instance_names(instance_id);
   WITH instances AS (
     SELECT project_id, name, 'container' AS kind, id, created_at FROM containers
     UNION ALL
     SELECT project_id, name, 'vm' AS kind, id, created_at FROM vms
   )
   INSERT INTO instance_names (project_id, name, kind, instance_id)
     SELECT i.project_id, i.name, i.kind, i.id FROM instances i
     WHERE NOT EXISTS (
       SELECT 1 FROM instances o WHERE o.project_id = i.project_id AND o.name = i.name
         AND (o.created_at < i.created_at OR (o.created_at = i.created_at AND o.id < i.id))
     );
   --@postgres
   ALTER TABLE vms DROP CONSTRAINT vms_name_key;
   --@end
   --@sqlite
   CREATE TABLE vms_new (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     project_id TEXT NOT NULL REFERENCES projects(id),
     config TEXT NOT NULL,
     status TEXT NOT NULL,
     pid INTEGER,
     exit_code INTEGER,
     created_at TEXT NOT NULL,
     started_at TEXT,
     finished_at TEXT,
     saved_at TEXT,
     agent TEXT NOT NULL DEFAULT 'local'
   );
   INSERT INTO vms_new (id, name, project_id, config, status, pid, exit_code, created_at, started_at, finished_at, saved_at, agent)
     SELECT id, name, project_id, config, status, pid, exit_code, created_at, started_at, finished_at, saved_at, agent FROM vms;
   DROP TABLE vms;
   ALTER TABLE vms_new RENAME TO vms;
   --@end
   CREATE UNIQUE INDEX vms_project_name ON vms(project_id, name);`,
  // ---- hosts: zone, labels, enabled, facts of each agent
  // labels, allocation ratio overrides and facts are JSON (read whole, never queried by field);
  // disabled_at set = disabled; the embedded agent gets a row (url 'embedded:') when the daemon opens
  `ALTER TABLE agents ADD COLUMN zone TEXT NOT NULL DEFAULT 'default';
   ALTER TABLE agents ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
   ALTER TABLE agents ADD COLUMN disabled_reason TEXT;
   ALTER TABLE agents ADD COLUMN disabled_at TEXT;
   ALTER TABLE agents ADD COLUMN disabled_by TEXT;
   ALTER TABLE agents ADD COLUMN allocation_ratios TEXT NOT NULL DEFAULT '{}';
   ALTER TABLE agents ADD COLUMN facts TEXT;`,
  // ---- instances name their host: containers, networks and images per host
  // what exists was made on the embedded agent, named 'local' as vms.agent defaults to
  `ALTER TABLE containers ADD COLUMN host TEXT NOT NULL DEFAULT 'local';
   CREATE INDEX containers_host ON containers(host);
   CREATE TABLE network_hosts (
     network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
     host TEXT NOT NULL,
     created_at TEXT NOT NULL,
     PRIMARY KEY (network_id, host)
   );
   CREATE INDEX network_hosts_host ON network_hosts(host);
   INSERT INTO network_hosts (network_id, host, created_at) SELECT id, 'local', created_at FROM networks;
   CREATE TABLE image_hosts (
     chain_id TEXT NOT NULL,
     host TEXT NOT NULL,
     created_at TEXT NOT NULL,
     PRIMARY KEY (chain_id, host)
   );
   CREATE INDEX image_hosts_host ON image_hosts(host);
   INSERT INTO image_hosts (chain_id, host, created_at) SELECT chain_id, 'local', MIN(created_at) FROM images GROUP BY chain_id;`,
  // ---- placement: claims per host with a generation, server groups (docs/scheduler.md)
  // usage is kept beside the allocations and changed with them in one statement or transaction;
  // a claim is a conditional UPDATE of its host's row (that row's lock orders claims on a host)
  `CREATE TABLE server_groups (
     id TEXT PRIMARY KEY,
     project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
     name TEXT NOT NULL,
     policy TEXT NOT NULL CHECK (policy IN ('affinity', 'anti-affinity', 'soft-affinity', 'soft-anti-affinity')),
     generation INT64 NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL
   );
   CREATE UNIQUE INDEX server_groups_project_name ON server_groups(project_id, name);
   CREATE TABLE placement_hosts (
     host TEXT PRIMARY KEY,
     used_millicpus INT64 NOT NULL DEFAULT 0,
     used_memory_bytes INT64 NOT NULL DEFAULT 0,
     used_disk_bytes INT64 NOT NULL DEFAULT 0,
     instances INT64 NOT NULL DEFAULT 0,
     generation INT64 NOT NULL DEFAULT 0
   );
   CREATE TABLE placement_allocations (
     consumer_id TEXT PRIMARY KEY,
     host TEXT NOT NULL REFERENCES placement_hosts(host),
     project_id TEXT NOT NULL,
     group_id TEXT REFERENCES server_groups(id),
     millicpus INT64 NOT NULL,
     memory_bytes INT64 NOT NULL,
     disk_bytes INT64 NOT NULL,
     created_at TEXT NOT NULL
   );
   CREATE INDEX placement_allocations_host ON placement_allocations(host);
   CREATE INDEX placement_allocations_project ON placement_allocations(project_id, host);
   CREATE INDEX placement_allocations_group ON placement_allocations(group_id, host);`,
  // replicas: the control-plane processes sharing the store (a row while each runs, a heartbeat
  // in last_seen) and the replica running each operation, so the leader fails only the
  // operations of replicas that are gone (docs/replicas.md); the partial index keeps that
  // periodic scan to the unfinished operations
  `CREATE TABLE replicas (
     id TEXT PRIMARY KEY,
     hostname TEXT NOT NULL,
     pid INTEGER NOT NULL,
     started_at INT64 NOT NULL,
     last_seen INT64 NOT NULL,
     api_url TEXT
   );
   ALTER TABLE operations ADD COLUMN replica TEXT;
   CREATE INDEX operations_unfinished ON operations(replica) WHERE status IN ('pending', 'running');`,
  // facts every control-plane process sharing the store must agree on (the agent CA's
  // fingerprint: a replica with another CA could not reach the hosts that joined the first)
  `CREATE TABLE control_plane_settings (
     key TEXT PRIMARY KEY,
     value TEXT NOT NULL
   );`,
  // named volumes (docs/volumes.md): per project, on the host that holds their image file; the
  // unique index keeps two creates of one name in a project from both succeeding
  `CREATE TABLE volumes (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     project_id TEXT NOT NULL REFERENCES projects(id),
     host TEXT NOT NULL,
     driver TEXT NOT NULL,
     size_bytes INT64 NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'removing')),
     labels TEXT NOT NULL DEFAULT '{}',
     created_at TEXT NOT NULL
   );
   CREATE UNIQUE INDEX volumes_project_name ON volumes(project_id, name);
   CREATE INDEX volumes_host ON volumes(host);`,
  // usage metering (docs/metering.md): what each instance used per hour and size, and each
  // instance's cursor, moved compare-and-set with the usage it adds (never counted twice); no
  // foreign keys: usage outlives its instances and projects
  `CREATE TABLE usage_records (
     instance_id TEXT NOT NULL,
     period_start INT64 NOT NULL,
     millicpus INT64 NOT NULL,
     memory_bytes INT64 NOT NULL,
     project_id TEXT NOT NULL,
     kind TEXT NOT NULL CHECK (kind IN ('container', 'vm', 'secure')),
     name TEXT NOT NULL,
     active_ms INT64 NOT NULL,
     cpu_ns INT64,
     memory_mib_ms INT64 NOT NULL,
     disk_mib_ms INT64,
     net_rx_bytes INT64,
     net_tx_bytes INT64,
     PRIMARY KEY (instance_id, period_start, millicpus, memory_bytes)
   );
   CREATE INDEX usage_records_project ON usage_records(project_id, period_start);
   CREATE INDEX usage_records_period ON usage_records(period_start);
   CREATE TABLE usage_cursors (
     instance_id TEXT PRIMARY KEY,
     project_id TEXT NOT NULL,
     kind TEXT NOT NULL,
     name TEXT NOT NULL,
     accounted_until INT64 NOT NULL,
     active INTEGER NOT NULL,
     cpu_ns INT64,
     cpu_run TEXT,
     millicpus INT64 NOT NULL,
     memory_bytes INT64 NOT NULL,
     held_memory_bytes INT64 NOT NULL,
     disk_bytes INT64,
     closed INTEGER NOT NULL DEFAULT 0
   );`,
  // a network's VXLAN id (docs/overlay.md), given once when it first spans hosts and kept: unique
  // among the networks that have one, so two replicas cannot hand out the same
  `ALTER TABLE networks ADD COLUMN vni INT64;
   CREATE UNIQUE INDEX networks_vni ON networks(vni) WHERE vni IS NOT NULL;`,
  // a volume's driver options as its creator gave them (docker volume create --opt size=2g keeps
  // "2g"): Docker's inspect answers them back, and compose compares them with its file's
  `ALTER TABLE volumes ADD COLUMN driver_options TEXT NOT NULL DEFAULT '{}';`,
  // a container's health while it has a healthcheck (JSON: status, failing streak, last probes)
  `ALTER TABLE containers ADD COLUMN health TEXT;`,
  // block volumes for VMs (docs/volumes.md "Block volumes"): a volume's type (filesystem for
  // containers, block for VMs: a qcow2 file), whether it may be attached read-write to several
  // VMs at once, and the snapshot it was cloned from; snapshots of block volumes, per project
  // (names unique in it), on their volume's host. Attachments live in the VMs' configs.
  `ALTER TABLE volumes ADD COLUMN type TEXT NOT NULL DEFAULT 'filesystem';
   ALTER TABLE volumes ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE volumes ADD COLUMN source_snapshot TEXT;
   CREATE TABLE volume_snapshots (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     project_id TEXT NOT NULL REFERENCES projects(id),
     volume_id TEXT NOT NULL,
     host TEXT NOT NULL,
     size_bytes INT64 NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'removing')),
     created_at TEXT NOT NULL
   );
   CREATE UNIQUE INDEX volume_snapshots_project_name ON volume_snapshots(project_id, name);
   CREATE INDEX volume_snapshots_volume ON volume_snapshots(volume_id);`,
  // registry credentials per project (docker login, nimbus registry login): the password only
  // sealed with the control plane's key (control/registries/sealed-secret.ts), never in clear;
  // they go with their project
  `CREATE TABLE registry_credentials (
     project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
     server TEXT NOT NULL,
     username TEXT NOT NULL,
     sealed_password TEXT NOT NULL,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL,
     updated_by TEXT NOT NULL,
     PRIMARY KEY (project_id, server)
   );`,
  // the network counters an instance's cursor was accounted at (JSON: per endpoint, bytes in and
  // out), committed with the cursor: a restarted service or a new leader measures the next span
  // from them instead of leaving its bytes unmeasured (docs/metering.md)
  `ALTER TABLE usage_cursors ADD COLUMN net_base TEXT;`,
  // failed logins and agent registrations, counted by every control-plane process together
  // (repos/failed-attempts.ts): a row per failure (its own id: two in one millisecond are two),
  // gone when it leaves its window
  `CREATE TABLE failed_attempts (
     id TEXT PRIMARY KEY,
     scope TEXT NOT NULL,
     key TEXT NOT NULL,
     at INT64 NOT NULL
   );
   CREATE INDEX failed_attempts_lookup ON failed_attempts(scope, key, at);
   CREATE INDEX failed_attempts_expiry ON failed_attempts(scope, at);`,
  // the quota ledger's projects, one row each (as its instances): an admission writes the few
  // projects it touched, not the whole tree (9 MB of JSON a create with 10,000 projects before)
  `CREATE TABLE quota_projects (
     id TEXT PRIMARY KEY,
     state TEXT NOT NULL,
     version INT64 NOT NULL DEFAULT 0
   );`,
  // operations accumulate (every pull, build, move and migration is one, kept as their history):
  // the newest, of one kind or of some projects, read from an index instead of sorting them all
  // (132 ms for the newest 1,000 of 100,000 here)
  `CREATE INDEX operations_newest ON operations(created_at, id);
   CREATE INDEX operations_kind_newest ON operations(kind, created_at, id);
   CREATE INDEX operations_project_newest ON operations(project_id, created_at, id);`,
  // the latest run each usage cursor saw: a start stored after a pass read the record (its time
  // is the host's, taken earlier) is charged from that start, not from the pass (metering/accounting.ts);
  // NULL on the cursors kept from before: unknown, accounted as before
  `ALTER TABLE usage_cursors ADD COLUMN seen_run TEXT;`,
];

export const SCHEMA_VERSION = BASELINE_VERSION + MIGRATIONS.length;

/** A section for one dialect (see the header): `--@sqlite` or `--@postgres` on its own line, up to `--@end`. */
const DIALECT_SECTION = /^[ \t]*--@(sqlite|postgres)[ \t]*\n([\s\S]*?)^[ \t]*--@end[ \t]*$/gm;

/** Portable DDL in a dialect's spelling (see the header). */
export function ddl(dialect: Dialect, sql: string): string {
  const common = sql.replace(DIALECT_SECTION, (_all, only: string, body: string) => (only === dialect ? body : ''));
  // a misspelt marker would otherwise be a comment, and its section would run on both dialects
  if (common.includes('--@')) throw new Error(`schema: a dialect section marker is malformed or unclosed near "${common.slice(common.indexOf('--@'), common.indexOf('--@') + 40)}"`);
  if (dialect === 'sqlite') return common.replace(/\bINT64\b/g, 'INTEGER');
  return common.replace(/\bINT64\b/g, 'BIGINT').replace(/\bTEXT\b/g, 'TEXT COLLATE "C"');
}

export function newerThanCode(version: number): Error {
  return new Error(`store schema version ${version} is newer than this nimbusd (${SCHEMA_VERSION}); refusing to start`);
}
