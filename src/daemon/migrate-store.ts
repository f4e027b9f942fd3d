/**
 * `nimbusd migrate-store`: copies an installation's store to another database (the embedded
 * SQLite store to PostgreSQL), table by table through the SQL executor layer, checked and
 * resumable. See MIGRATE_STORE_HELP and docs/store.md ("Moving an embedded installation to
 * PostgreSQL").
 *
 * The copier knows no table by name. The tables are those of the schema this nimbusd defines
 * (read from a scratch in-memory store migrated to SCHEMA_VERSION), and the source's and the
 * target's catalogs must hold exactly those, with the same columns: a table the copier would
 * not copy is a refusal, never a silent skip. Tables are copied parents first (an order
 * derived from the foreign keys both catalogs declare); a table referencing itself (projects)
 * is copied parents-first row by row. Rows are read by primary key in batches and written
 * with `ON CONFLICT (key) DO NOTHING`, each batch one statement (atomic on its own), so an
 * interrupted copy leaves whole batches and `--resume` continues it, first checking that the
 * rows it finds equal the source's.
 *
 * The source is read inside one transaction (a consistent view; on SQLite it also keeps any
 * writer out) and never written: a source at an older schema is refused with the instruction
 * to start nimbusd on it once.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { describeStore } from '../core/config.js';
import { Conflict, DataLoss, InvalidArgument, Unavailable, isNimbusError } from '../core/errors.js';
import { processAlive } from '../core/proc.js';
import { isPostgresLocation } from '../store/open.js';
import { SCHEMA_VERSION } from '../store/schema.js';
import { migrateSqlite } from '../store/sqlite-history.js';
import { SqlStore } from '../store/sql-store.js';
import type { Row, SqlExecutor, SqlValue } from '../store/sql/executor.js';
import { SqliteExecutor, openSqliteDatabase } from '../store/sql/sqlite-executor.js';
import type { Store } from '../store/store.js';
import { checkInvariants } from '../control/quota/invariants.js';
import { QuotaService } from '../control/quota/quota-service.js';
import type { LedgerState } from '../control/quota/state.js';

export const MIGRATE_STORE_HELP = `Usage: nimbusd migrate-store --to postgres://… [--home DIR | --from LOCATION] [--resume]

Copies an installation's store (its records: projects, users, tokens, roles, images,
containers, VMs, networks and leases, disk images, agents, operations, the quota ledger and
its audit, and every other table of this nimbusd's schema) from the embedded SQLite store to
PostgreSQL, then checks the copy: rows per table equal, and the quota ledger loads from the
target, its invariants hold and it equals the source's.

Options:
  --to LOCATION        where to copy to: postgres://USER@HOST/DB (a unix socket:
                       postgres://USER@/DB?host=/run/postgresql); the database must exist.
                       Its schema is created on first use, as nimbusd --store would.
  --home DIR           the installation's state directory [NIMBUS_HOME] (default /var/lib/nimbus)
  --from LOCATION      the store to copy (default HOME/nimbus.db; sqlite:PATH or a path)
  --resume             continue a copy that was interrupted: rows already in the target are
                       checked to equal the source's and the rest are copied. Without it, a
                       target holding any rows is refused.
  --batch-rows N       rows per statement (default 1000)
  -h, --help           show this help

Before you start:
  Stop nimbusd: migrate-store refuses to run while a nimbusd uses HOME (HOME/nimbusd.pid),
  and holds the source's write lock while it copies. The source is never written; if it is
  at an older schema version, start this nimbusd on it once (it upgrades the store), stop
  it, and run migrate-store again.

What is not copied (it stays in HOME, which the installation keeps using):
  the content store (image blobs), snapshots, containers' and VMs' directories and VM
  disks, the agent CA (HOME/agent-ca) and the key registry passwords are sealed with
  (HOME/secrets.key): other control-plane processes sharing the new store need a copy of
  both. The SQLite file is left as it was; do not start nimbusd on it
  again, or the two stores diverge.

Afterwards:
  nimbusd --home HOME --store postgres://…   (or NIMBUS_STORE=postgres://…)

Progress per table goes to stderr; a summary (table, rows, time) to stdout. Exit status 0
when the copy is complete and checked, 1 when refused or failed (a failed copy can be
continued with --resume), 2 on a usage error.
`;

/** Rows per INSERT statement by default. */
const DEFAULT_BATCH_ROWS = 1000;
/** Placeholders per statement: under SQLite's 32,766 and PostgreSQL's 65,535. */
const MAX_PARAMS = 30_000;
/** Progress lines for a long table at most this often. */
const PROGRESS_EVERY_MS = 2000;
/** PostgreSQL's bookkeeping (SQLite keeps the version in PRAGMA user_version): not a record table. */
const BOOKKEEPING_TABLES = new Set(['schema_version']);

export interface MigrateStoreOptions {
  /** The store to copy (sqlite:PATH, a path, or postgres://…). */
  from: string;
  /** Where to copy to (postgres://…; an SQLite path works too). */
  to: string;
  /** State directories whose nimbusd.pid must not name a live process. */
  homes?: readonly string[];
  /** Continue an interrupted copy (rows found in the target must equal the source's). */
  resume?: boolean;
  batchRows?: number;
  /** Progress lines (stderr by the command). */
  progress?: (line: string) => void;
  /** Test hook: called after each batch is written; throwing interrupts the copy there. */
  afterBatch?: (table: string, rowsWritten: number) => void;
  /** Called once the checks passed and the target is about to be written. */
  onCopyStart?: () => void;
}

export interface TableReport {
  table: string;
  /** Rows in the source (and, checked, in the target). */
  rows: number;
  /** Rows this run wrote (fewer than rows when resuming). */
  copied: number;
  ms: number;
}

export interface MigrateStoreReport {
  tables: TableReport[];
  rows: number;
  copied: number;
  ms: number;
  ledger: { projects: number; instances: number; loans: number; pools: number; version: number };
}

type ColumnKind = 'integer' | 'text';

interface ForeignKey {
  columns: string[];
  parent: string;
  parentColumns: string[];
}

interface TableShape {
  name: string;
  columns: { name: string; kind: ColumnKind | undefined; declared: string }[];
  primaryKey: string[];
  foreignKeys: ForeignKey[];
}

type Catalog = Map<string, TableShape>;

const IDENTIFIER = /^[a-z_][a-z0-9_]*$/;
const quote = (name: string): string => `"${name}"`;

/** The integer/text class of a declared type (SQLite's affinity words, PostgreSQL's data_type); undefined for anything else. */
function columnKind(declared: string): ColumnKind | undefined {
  const t = declared.toLowerCase();
  if (/int/.test(t)) return 'integer';
  if (/^(text|character varying|varchar|character|char|clob)\b/.test(t)) return 'text';
  return undefined;
}

/** The tables of a database, from its own catalog. */
async function readCatalog(db: SqlExecutor): Promise<Catalog> {
  const catalog: Catalog = new Map();
  if (db.dialect === 'sqlite') {
    const tables = await db.all(`SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name`);
    for (const t of tables) {
      const name = String(t.name);
      const columns = await db.all('SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid', [name]);
      const keys = await db.all('SELECT id, "table" AS parent, "from" AS col, "to" AS parent_col FROM pragma_foreign_key_list(?) ORDER BY id, seq', [name]);
      const primaryKey = columns.filter((c) => Number(c.pk) > 0).sort((a, b) => Number(a.pk) - Number(b.pk)).map((c) => String(c.name));
      const byId = new Map<number, ForeignKey>();
      for (const k of keys) {
        const fk = byId.get(Number(k.id)) ?? { columns: [], parent: String(k.parent), parentColumns: [] };
        fk.columns.push(String(k.col));
        fk.parentColumns.push(k.parent_col === null ? '' : String(k.parent_col)); // '' = the parent's primary key, filled in below
        byId.set(Number(k.id), fk);
      }
      catalog.set(name, {
        name,
        columns: columns.map((c) => ({ name: String(c.name), kind: columnKind(String(c.type)), declared: String(c.type) })),
        primaryKey,
        foreignKeys: [...byId.values()],
      });
    }
    // `REFERENCES parent` without columns means the parent's primary key
    for (const shape of catalog.values()) {
      for (const fk of shape.foreignKeys) {
        if (fk.parentColumns.some((c) => c === '')) fk.parentColumns = catalog.get(fk.parent)?.primaryKey ?? fk.parentColumns;
      }
    }
    return catalog;
  }
  const tables = await db.all(`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`);
  for (const t of tables) {
    const name = String(t.name);
    if (BOOKKEEPING_TABLES.has(name)) continue;
    const columns = await db.all(
      'SELECT column_name AS name, data_type AS type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position',
      [name],
    );
    const primaryKey = await db.all(
      `SELECT k.column_name AS name FROM information_schema.table_constraints c
         JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name AND k.table_name = c.table_name
       WHERE c.table_schema = current_schema() AND c.table_name = ? AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position`,
      [name],
    );
    const keys = await db.all(
      `SELECT pa.relname AS parent,
         (SELECT string_agg(a.attname, ',' ORDER BY k.i) FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n) AS cols,
         (SELECT string_agg(a.attname, ',' ORDER BY k.i) FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n) AS parent_cols
       FROM pg_constraint c JOIN pg_class ch ON ch.oid = c.conrelid JOIN pg_class pa ON pa.oid = c.confrelid JOIN pg_namespace n ON n.oid = ch.relnamespace
       WHERE c.contype = 'f' AND n.nspname = current_schema() AND ch.relname = ? ORDER BY c.conname`,
      [name],
    );
    catalog.set(name, {
      name,
      columns: columns.map((c) => ({ name: String(c.name), kind: columnKind(String(c.type)), declared: String(c.type) })),
      primaryKey: primaryKey.map((k) => String(k.name)),
      foreignKeys: keys.map((k) => ({ parent: String(k.parent), columns: String(k.cols).split(','), parentColumns: String(k.parent_cols).split(',') })),
    });
  }
  return catalog;
}

/** What migrating an empty database gives: the tables this nimbusd knows, and the rows its migrations put there by themselves. */
async function schemaOfThisNimbusd(): Promise<{ catalog: Catalog; seededRows: Map<string, number> }> {
  const db = openSqliteDatabase(':memory:');
  const scratch = new SqliteExecutor(db);
  try {
    migrateSqlite(db);
    const catalog = await readCatalog(scratch);
    const seededRows = new Map<string, number>();
    for (const name of catalog.keys()) seededRows.set(name, await countRows(scratch, name));
    return { catalog, seededRows };
  } finally {
    await scratch.close();
  }
}

async function countRows(db: SqlExecutor, table: string): Promise<number> {
  return Number((await db.get(`SELECT COUNT(*) AS n FROM ${quote(table)}`))?.n ?? 0);
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Refuses unless the source's and target's catalogs both hold exactly the tables of this
 * nimbusd's schema, with the same columns (and class of type) and primary keys, every column
 * of a type the copier moves and every table with a primary key.
 */
function checkShapes(schema: Catalog, source: Catalog, target: Catalog): void {
  const known = [...schema.keys()].sort();
  for (const [side, catalog] of [['source', source], ['target', target]] as const) {
    const unknown = [...catalog.keys()].filter((t) => !schema.has(t)).sort();
    if (unknown.length > 0) {
      throw new Conflict(`the ${side} has table(s) ${unknown.join(', ')} that are not part of this nimbusd's schema (version ${SCHEMA_VERSION}): migrate-store copies only the tables it knows, and refuses rather than leave any behind`, { side, tables: unknown });
    }
    const missing = known.filter((t) => !catalog.has(t));
    if (missing.length > 0) throw new Conflict(`the ${side} lacks table(s) ${missing.join(', ')} of this nimbusd's schema (version ${SCHEMA_VERSION})`, { side, tables: missing });
  }
  for (const name of known) {
    const s = source.get(name)!;
    const t = target.get(name)!;
    if (!IDENTIFIER.test(name)) throw new Conflict(`table name "${name}" is not a plain identifier: the copier refuses it`);
    const describe = (shape: TableShape) => shape.columns.map((c) => `${c.name}:${c.kind ?? c.declared}`).sort().join(', ');
    if (describe(s) !== describe(t) || describe(s) !== describe(schema.get(name)!)) {
      throw new Conflict(`table ${name} has different columns in the source (${describe(s)}) and the target (${describe(t)}) or this nimbusd's schema`, { table: name });
    }
    for (const c of s.columns) {
      if (!IDENTIFIER.test(c.name)) throw new Conflict(`column ${name}.${c.name} is not a plain identifier: the copier refuses it`);
      if (c.kind === undefined) throw new Conflict(`column ${name}.${c.name} has type ${c.declared}, which the copier does not know how to move (integers and text only)`, { table: name });
    }
    if (s.primaryKey.length === 0) throw new Conflict(`table ${name} has no primary key: the copier reads and resumes by key, so it refuses it`, { table: name });
    if (!sameList(s.primaryKey, t.primaryKey)) throw new Conflict(`table ${name}'s primary key differs: (${s.primaryKey.join(', ')}) in the source, (${t.primaryKey.join(', ')}) in the target`, { table: name });
  }
}

/** Tables parents first (by the foreign keys of both catalogs; ties alphabetical); a cycle through several tables is refused. */
export function parentsFirstOrder(tables: readonly string[], foreignKeys: readonly { child: string; parent: string }[]): string[] {
  const parents = new Map<string, Set<string>>(tables.map((t) => [t, new Set<string>()]));
  for (const { child, parent } of foreignKeys) if (child !== parent && parents.has(parent)) parents.get(child)?.add(parent);
  const order: string[] = [];
  const placed = new Set<string>();
  while (order.length < tables.length) {
    const ready = tables.filter((t) => !placed.has(t) && [...parents.get(t)!].every((p) => placed.has(p))).sort();
    if (ready.length === 0) {
      const stuck = tables.filter((t) => !placed.has(t)).sort();
      throw new Conflict(`tables ${stuck.join(', ')} reference each other in a cycle: the copier cannot order them`, { tables: stuck });
    }
    for (const t of ready) {
      order.push(t);
      placed.add(t);
    }
  }
  return order;
}

/** A value as both drivers compare it (PostgreSQL int8 already arrives as a number). */
const normalise = (v: unknown): unknown => (v === undefined ? null : typeof v === 'bigint' ? Number(v) : v);
const keyOf = (row: Row, columns: readonly string[]): string => JSON.stringify(columns.map((c) => normalise(row[c])));

/**
 * Rows of a table referencing itself, each after the row it references (projects under their
 * parent). In memory: such tables are small (a project tree).
 */
function selfReferencesFirst(rows: Row[], selfKeys: readonly ForeignKey[], table: string): Row[] {
  const byKey = selfKeys.map((fk) => new Map(rows.map((r) => [keyOf(r, fk.parentColumns), r])));
  const out: Row[] = [];
  const state = new Map<Row, 'visiting' | 'done'>();
  const visit = (row: Row) => {
    const s = state.get(row);
    if (s === 'done') return;
    if (s === 'visiting') throw new Conflict(`rows of ${table} reference each other in a cycle: the copier cannot order them`, { table });
    state.set(row, 'visiting');
    selfKeys.forEach((fk, i) => {
      if (fk.columns.some((c) => row[c] === null || row[c] === undefined)) return;
      const parent = byKey[i]!.get(keyOf(row, fk.columns));
      if (parent && parent !== row) visit(parent);
    });
    state.set(row, 'done');
    out.push(row);
  };
  for (const r of rows) visit(r);
  return out;
}

/** A copy in progress: the two executors and what the table copies share. */
interface CopyContext {
  source: SqlExecutor;
  target: SqlExecutor;
  batchRows: number;
  progress: (line: string) => void;
  afterBatch: ((table: string, rowsWritten: number) => void) | undefined;
}

/** The source's rows in batches, by primary key (keyset: no OFFSET), or parents first for a table referencing itself. */
async function* sourceBatches(ctx: CopyContext, shape: TableShape, selfKeys: readonly ForeignKey[], batchRows: number): AsyncGenerator<Row[]> {
  const columns = shape.columns.map((c) => quote(c.name)).join(', ');
  const key = shape.primaryKey.map(quote).join(', ');
  if (selfKeys.length > 0) {
    const rows = selfReferencesFirst(await ctx.source.all(`SELECT ${columns} FROM ${quote(shape.name)} ORDER BY ${key}`), selfKeys, shape.name);
    for (let i = 0; i < rows.length; i += batchRows) yield rows.slice(i, i + batchRows);
    return;
  }
  const keyTuple = shape.primaryKey.length === 1 ? key : `(${key})`;
  const after = shape.primaryKey.length === 1 ? '?' : `(${shape.primaryKey.map(() => '?').join(', ')})`;
  let last: Row | undefined;
  for (;;) {
    const rows: Row[] = last === undefined
      ? await ctx.source.all(`SELECT ${columns} FROM ${quote(shape.name)} ORDER BY ${key} LIMIT ?`, [batchRows])
      : await ctx.source.all(`SELECT ${columns} FROM ${quote(shape.name)} WHERE ${keyTuple} > ${after} ORDER BY ${key} LIMIT ?`, [
          ...shape.primaryKey.map((k) => last![k] as SqlValue),
          batchRows,
        ]);
    if (rows.length > 0) yield rows;
    if (rows.length < batchRows) return;
    last = rows[rows.length - 1];
  }
}

/** The target's rows with these keys (to compare when resuming). */
async function targetRowsByKey(ctx: CopyContext, shape: TableShape, rows: readonly Row[]): Promise<Map<string, Row>> {
  const columns = shape.columns.map((c) => quote(c.name)).join(', ');
  const pk = shape.primaryKey;
  const where = pk.length === 1
    ? `${quote(pk[0]!)} IN (${rows.map(() => '?').join(', ')})`
    : `(${pk.map(quote).join(', ')}) IN (VALUES ${rows.map(() => `(${pk.map(() => '?').join(', ')})`).join(', ')})`;
  const found = await ctx.target.all(`SELECT ${columns} FROM ${quote(shape.name)} WHERE ${where}`, rows.flatMap((r) => pk.map((k) => r[k] as SqlValue)));
  return new Map(found.map((r) => [keyOf(r, pk), r]));
}

/** Copies one table; when resuming, the rows already in the target must equal the source's. */
async function copyTable(ctx: CopyContext, shape: TableShape, selfKeys: readonly ForeignKey[], resume: boolean): Promise<TableReport> {
  const started = performance.now();
  const total = await countRows(ctx.source, shape.name);
  const names = shape.columns.map((c) => c.name);
  const batchRows = Math.max(1, Math.min(ctx.batchRows, Math.floor(MAX_PARAMS / names.length)));
  const compare = resume && (await countRows(ctx.target, shape.name)) > 0;
  const insertHead = `INSERT INTO ${quote(shape.name)} (${names.map(quote).join(', ')}) VALUES `;
  const onConflict = ` ON CONFLICT (${shape.primaryKey.map(quote).join(', ')}) DO NOTHING`;
  const rowPlaceholders = `(${names.map(() => '?').join(', ')})`;
  let seen = 0;
  let copied = 0;
  let lastProgress = started;
  for await (const batch of sourceBatches(ctx, shape, selfKeys, batchRows)) {
    let missing = batch;
    if (compare) {
      const present = await targetRowsByKey(ctx, shape, batch);
      missing = [];
      for (const row of batch) {
        const there = present.get(keyOf(row, shape.primaryKey));
        if (!there) missing.push(row);
        else if (keyOf(there, names) !== keyOf(row, names)) {
          throw new Conflict(
            `the target's row of ${shape.name} with key ${keyOf(row, shape.primaryKey)} differs from the source's: it was not copied from this source as it is now (the source changed since the interrupted copy, or the target holds other data); drop and re-create the target database, then run migrate-store without --resume`,
            { table: shape.name, key: shape.primaryKey.map((k) => normalise(row[k])) },
          );
        }
      }
    }
    if (missing.length > 0) {
      const sql = insertHead + missing.map(() => rowPlaceholders).join(', ') + onConflict;
      const { changes } = await ctx.target.run(sql, missing.flatMap((r) => names.map((n) => r[n] as SqlValue)));
      if (changes !== missing.length) {
        throw new Conflict(`${missing.length - changes} row(s) of ${shape.name} appeared in the target while they were being copied: is something else writing to it?`, { table: shape.name });
      }
      copied += changes;
    }
    seen += batch.length;
    ctx.afterBatch?.(shape.name, seen);
    const now = performance.now();
    if (now - lastProgress >= PROGRESS_EVERY_MS) {
      lastProgress = now;
      ctx.progress(`migrate-store: ${shape.name}: ${seen}/${total} rows (${formatMs(now - started)})`);
    }
  }
  const inTarget = await countRows(ctx.target, shape.name);
  if (seen !== total || inTarget !== total) {
    throw new Conflict(
      `table ${shape.name}: the source has ${total} rows (${seen} read), the target ${inTarget} after the copy${inTarget > total ? ': the target holds rows that are not the source\'s; drop and re-create it, then run migrate-store without --resume' : ''}`,
      { table: shape.name, source: total, target: inTarget },
    );
  }
  const ms = performance.now() - started;
  if (total > 0) ctx.progress(`migrate-store: ${shape.name}: ${total} rows${copied !== total ? ` (${copied} copied now)` : ''} in ${formatMs(ms)}`);
  return { table: shape.name, rows: total, copied, ms };
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** The pid of a live nimbusd using home (its pid lock, as takePidLock in daemon.ts writes it), read only. */
export function nimbusdUsing(home: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(path.join(home, 'nimbusd.pid'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid) ? pid : undefined;
}

/** An executor on a location: the source as it is (SQLite never migrated), the target migrated as nimbusd would. */
async function openExecutor(location: string, role: 'source' | 'target'): Promise<SqlExecutor> {
  if (isPostgresLocation(location)) {
    // a PostgreSQL source is upgraded in place like a normal start would (only the SQLite source is opened as it is)
    const { openPostgresExecutor } = await import('../store/sql/postgres-executor.js');
    return openPostgresExecutor(location);
  }
  const file = location.replace(/^sqlite:/, '');
  if (role === 'source' && !existsSync(file)) throw new InvalidArgument(`there is no store at ${file} (give --home or --from)`);
  const db = openSqliteDatabase(file);
  try {
    if (role === 'target') migrateSqlite(db);
    else {
      const version = Number(db.pragma('user_version', { simple: true }));
      if (version > SCHEMA_VERSION) throw new Conflict(`the store at ${file} is at schema version ${version}, newer than this nimbusd's (${SCHEMA_VERSION}): use the nimbusd that wrote it`);
      if (version < SCHEMA_VERSION) {
        throw new Conflict(`the store at ${file} is at schema version ${version}, this nimbusd's is ${SCHEMA_VERSION}: start this nimbusd on it once (it upgrades the store), stop it, then run migrate-store again`);
      }
    }
  } catch (e) {
    db.close();
    throw e;
  }
  return new SqliteExecutor(db);
}

/** Keys sorted at every level: two ledgers loaded from different databases compare by content. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

/** The ledger as a QuotaService on this store loads it, and its invariants' violations. */
async function loadLedger(store: Store): Promise<{ state: LedgerState; version: number; violations: string[] }> {
  const quota = await QuotaService.open(store, { refreshMs: 0 });
  try {
    const state = quota.ledger.snapshot();
    return { state, version: await store.quotaLedgerVersion(), violations: checkInvariants(state) };
  } finally {
    quota.close();
  }
}

/** The copy itself: see the header. Throws typed errors (Conflict, Unavailable, DataLoss, InvalidArgument) when it refuses or fails. */
export async function migrateStore(options: MigrateStoreOptions): Promise<MigrateStoreReport> {
  const started = performance.now();
  const progress = options.progress ?? (() => {});
  if (options.from.replace(/^sqlite:/, '') === options.to.replace(/^sqlite:/, '')) throw new InvalidArgument('--from and --to name the same store');
  for (const home of options.homes ?? []) {
    const pid = nimbusdUsing(home);
    if (pid !== undefined) throw new Unavailable(`a nimbusd (pid ${pid}) is using ${home}: stop it before migrating its store`, { pid, home });
  }
  const schema = await schemaOfThisNimbusd();
  const source = await openExecutor(options.from, 'source');
  let target: SqlExecutor | undefined;
  try {
    target = await openExecutor(options.to, 'target');
    const ctx: CopyContext = {
      source,
      target,
      batchRows: options.batchRows ?? DEFAULT_BATCH_ROWS,
      progress,
      afterBatch: options.afterBatch,
    };
    if (!Number.isInteger(ctx.batchRows) || ctx.batchRows < 1) throw new InvalidArgument(`--batch-rows must be a positive integer, got ${ctx.batchRows}`);
    const sourceStore = new SqlStore(source);
    const targetStore = new SqlStore(target);
    const into = target;
    const run = async (): Promise<MigrateStoreReport> => {
      const sourceCatalog = await readCatalog(source);
      const targetCatalog = await readCatalog(into);
      checkShapes(schema.catalog, sourceCatalog, targetCatalog);
      const tables = [...schema.catalog.keys()];
      const references = [sourceCatalog, targetCatalog].flatMap((c) => [...c.values()].flatMap((s) => s.foreignKeys.map((fk) => ({ child: s.name, parent: fk.parent }))));
      const order = parentsFirstOrder(tables, references);

      // the source's ledger first: nothing is copied from a source whose ledger is broken or in a layout of before
      const stored = await sourceStore.loadQuotaState();
      if (stored !== undefined) {
        const raw = JSON.parse(stored) as Partial<LedgerState>;
        if ((raw.audit?.length ?? 0) > 0 || Object.keys(raw.instances ?? {}).length > 0 || Object.keys(raw.projects ?? {}).length > 0) {
          throw new Conflict('the source\'s quota ledger is in a layout of before: start this nimbusd on the installation once (it moves it), stop it, then run migrate-store again');
        }
      }
      const sourceLedger = await loadLedger(sourceStore);
      if (sourceLedger.violations.length > 0) {
        throw new DataLoss(`the source's quota ledger violates its invariants (${sourceLedger.violations.length}): ${sourceLedger.violations.slice(0, 5).join('; ')}; nothing was copied`, { violations: sourceLedger.violations });
      }

      const found = new Map<string, number>();
      for (const t of order) found.set(t, await countRows(into, t));
      const foreign = order.filter((t) => found.get(t)! > (schema.seededRows.get(t) ?? 0));
      if (foreign.length > 0 && !options.resume) {
        throw new Conflict(
          `the target already has rows (${foreign.map((t) => `${t}: ${found.get(t)}`).join(', ')}): give --resume to continue an interrupted copy into it, or use an empty database`,
          { tables: Object.fromEntries(foreign.map((t) => [t, found.get(t)])) },
        );
      }
      options.onCopyStart?.();
      if (foreign.length === 0 && !options.resume) {
        // a fresh target: rows its migrations put there by themselves give way to the source's (children first)
        for (const t of [...order].reverse()) if (found.get(t)! > 0) await into.run(`DELETE FROM ${quote(t)}`);
      }

      const reports: TableReport[] = [];
      for (const t of order) {
        const shape = sourceCatalog.get(t)!;
        const selfKeys = [...shape.foreignKeys, ...targetCatalog.get(t)!.foreignKeys].filter((fk) => fk.parent === t);
        reports.push(await copyTable(ctx, shape, selfKeys, options.resume === true));
      }

      const targetLedger = await loadLedger(targetStore);
      if (targetLedger.violations.length > 0) {
        throw new DataLoss(`the copied quota ledger violates its invariants (${targetLedger.violations.length}): ${targetLedger.violations.slice(0, 5).join('; ')}`, { violations: targetLedger.violations });
      }
      if (canonicalJson(targetLedger.state) !== canonicalJson(sourceLedger.state) || targetLedger.version !== sourceLedger.version) {
        throw new DataLoss(`the quota ledger loaded from the target (version ${targetLedger.version}) differs from the source's (version ${sourceLedger.version})`);
      }
      const s = targetLedger.state;
      return {
        tables: reports,
        rows: reports.reduce((n, r) => n + r.rows, 0),
        copied: reports.reduce((n, r) => n + r.copied, 0),
        ms: performance.now() - started,
        ledger: {
          projects: Object.keys(s.projects).length,
          instances: Object.keys(s.instances).length,
          loans: Object.keys(s.loans).length,
          pools: Object.keys(s.pools).length,
          version: targetLedger.version,
        },
      };
    };
    try {
      // one transaction on the source: a consistent view of every table, and no writer beside the copy
      return await source.transaction(run);
    } catch (e) {
      if (e instanceof Error && 'code' in e && (e as { code: unknown }).code === 'SQLITE_BUSY') {
        throw new Unavailable(`the source store ${describeStore(options.from)} is busy: is a nimbusd using it (with another --home)? Stop it first`, undefined, { cause: e });
      }
      throw e;
    }
  } finally {
    await target?.close();
    await source.close();
  }
}

/** The summary on stdout: one line per table, then the totals and the ledger. */
export function formatReport(report: MigrateStoreReport): string {
  const width = Math.max(5, ...report.tables.map((t) => t.table.length));
  const line = (a: string, b: string, c: string, d: string) => `${a.padEnd(width)}  ${b.padStart(10)}  ${c.padStart(10)}  ${d.padStart(9)}\n`;
  let out = line('TABLE', 'ROWS', 'COPIED', 'TIME');
  for (const t of report.tables) out += line(t.table, String(t.rows), String(t.copied), formatMs(t.ms));
  out += line('total', String(report.rows), String(report.copied), formatMs(report.ms));
  const rate = report.ms > 0 ? Math.round((report.copied * 1000) / report.ms) : 0;
  const l = report.ledger;
  out += `${report.copied} rows copied (${rate} rows/s); rows per table equal in source and target\n`;
  out += `quota ledger: ${l.projects} projects, ${l.instances} instances, ${l.loans} loans, ${l.pools} pools, version ${l.version}: invariants hold, equal to the source's\n`;
  return out;
}

export interface CommandIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

/** `nimbusd migrate-store ARGS`: the exit status (0 done and checked, 1 refused or failed, 2 usage). */
export async function migrateStoreCommand(
  argv: string[],
  io: CommandIo = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) },
  hooks: Pick<MigrateStoreOptions, 'afterBatch'> = {},
): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        from: { type: 'string' },
        to: { type: 'string' },
        home: { type: 'string' },
        resume: { type: 'boolean' },
        'batch-rows': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    io.err(`nimbusd migrate-store: ${e instanceof Error ? e.message : String(e)} (see nimbusd migrate-store --help)\n`);
    return 2;
  }
  if (values.help) {
    io.out(MIGRATE_STORE_HELP);
    return 0;
  }
  if (!values.to) {
    io.err('nimbusd migrate-store: --to postgres://… is required (see nimbusd migrate-store --help)\n');
    return 2;
  }
  const batchRows = values['batch-rows'] === undefined ? DEFAULT_BATCH_ROWS : Number(values['batch-rows']);
  if (!Number.isInteger(batchRows) || batchRows < 1) {
    io.err(`nimbusd migrate-store: --batch-rows must be a positive integer, got "${values['batch-rows']}"\n`);
    return 2;
  }
  const home = values.home ?? process.env.NIMBUS_HOME ?? (values.from ? undefined : '/var/lib/nimbus');
  const from = values.from ?? `${home}/nimbus.db`;
  // the pid lock lives in the home; a store file given alone most likely sits in its home
  const homes = new Set<string>();
  if (home) homes.add(home);
  if (!isPostgresLocation(from)) homes.add(path.dirname(path.resolve(from.replace(/^sqlite:/, ''))));
  io.err(`nimbusd migrate-store: ${describeStore(from)} → ${describeStore(values.to)}${values.resume ? ' (resuming)' : ''}\n`);
  let copying = false;
  try {
    const report = await migrateStore({
      from,
      to: values.to,
      homes: [...homes],
      resume: values.resume === true,
      batchRows,
      progress: (line) => io.err(`${line}\n`),
      ...(hooks.afterBatch ? { afterBatch: hooks.afterBatch } : {}),
      onCopyStart: () => (copying = true),
    });
    io.out(formatReport(report));
    const homeFlag = home ?? (isPostgresLocation(from) ? undefined : path.dirname(path.resolve(from.replace(/^sqlite:/, ''))));
    io.err(`nimbusd migrate-store: done; start nimbusd with ${homeFlag ? `--home ${homeFlag} ` : ''}--store ${describeStore(values.to)}\n`);
    return 0;
  } catch (e) {
    io.err(`nimbusd migrate-store: ${isNimbusError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? `${e.name}: ${e.message}` : String(e)}\n`);
    if (copying && !isNimbusError(e)) {
      io.err('nimbusd migrate-store: what was copied stays in the target; fix the cause and run again with --resume\n');
    }
    return 1;
  }
}
