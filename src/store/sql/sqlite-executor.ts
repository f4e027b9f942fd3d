/**
 * The SQLite driver: one better-sqlite3 connection (synchronous underneath), its statements
 * prepared once and kept. Transactions: the database has one connection, so a transaction
 * owns it while it runs. Calls made in the transaction's async context run in it; calls from
 * anywhere else wait until it has ended (they must not land inside someone else's BEGIN…COMMIT);
 * transactions run one after the other, in the order they were asked for.
 */
import { ContextSlot } from '../../core/async-context.js';
import Database from 'better-sqlite3';
import { chmodSync, closeSync, openSync, statSync } from 'node:fs';
import { ConstraintViolation, type Row, type SqlExecutor, type SqlValue } from './executor.js';

interface TxContext {
  /** Cleared when the transaction ends: work it left behind then runs as an outside call. */
  active: boolean;
}

/** Opens the file with the pragmas the store relies on (WAL: readers in other processes do not block the writer). */
export function openSqliteDatabase(file: string): Database.Database {
  const onDisk = file !== ':memory:' && file !== '';
  // the system of record (password and key hashes, sealed secrets, every tenant's records) is
  // root's alone: made 0600 before SQLite opens it (its -wal and -shm then take that mode), and
  // closed when an older daemon left it readable
  if (onDisk) closeCurrentFiles(file);
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  return db;
}

/** The database file (made if missing) and its -wal and -shm if present: 0600. */
function closeCurrentFiles(file: string): void {
  closeSync(openSync(file, 'a', 0o600));
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      if (statSync(f).mode & 0o077) chmodSync(f, 0o600);
    } catch {
      /* not there */
    }
  }
}

export class SqliteExecutor implements SqlExecutor {
  readonly dialect = 'sqlite' as const;
  private readonly context = new ContextSlot<TxContext>('SQL transaction');
  /** Preparing a statement costs more than running a small query: keep them (bounded; the SQL texts are few). */
  private readonly statements = new Map<string, Database.Statement>();
  /** Settles when the running transaction ends; null when none runs. */
  private running: Promise<void> | null = null;
  /** The tail of the transactions' queue: each one starts when the one before it has ended. */
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly db: Database.Database, private readonly maxStatements = 512) {}

  private statement(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      if (this.statements.size >= this.maxStatements) this.statements.clear();
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  /** Waits while a transaction this call is not part of holds the connection. */
  private async turn(): Promise<void> {
    if (this.context.get()?.active) return;
    while (this.running !== null) await this.running;
  }

  async all(sql: string, params: readonly SqlValue[] = []): Promise<Row[]> {
    await this.turn();
    return mapErrors(() => this.statement(sql).all(...bind(params)) as Row[]);
  }

  async get(sql: string, params: readonly SqlValue[] = []): Promise<Row | undefined> {
    await this.turn();
    return mapErrors(() => this.statement(sql).get(...bind(params)) as Row | undefined);
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    await this.turn();
    return mapErrors(() => ({ changes: this.statement(sql).run(...bind(params)).changes }));
  }

  async transaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.context.get()?.active) return fn();
    const before = this.queue;
    let leave!: () => void;
    this.queue = new Promise((ok) => (leave = ok));
    await before;
    let ended!: () => void;
    this.running = new Promise((ok) => (ended = ok));
    const tx: TxContext = { active: true };
    try {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const out = await this.context.run(tx, fn);
        this.db.exec('COMMIT');
        return out;
      } catch (e) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw e;
      }
    } finally {
      tx.active = false;
      // outside calls waiting on `running` resume before the next transaction takes the connection
      this.running = null;
      ended();
      leave();
    }
  }

  /** One writer already orders everything: a row lock would add nothing. */
  rowLockTransaction<T>(fn: () => Promise<T>): Promise<T> {
    return this.transaction(fn);
  }

  /** After the transactions already asked for. */
  async close(): Promise<void> {
    await this.queue;
    this.db.close();
  }
}

/** better-sqlite3 refuses undefined; the store means NULL by it. */
function bind(params: readonly SqlValue[]): (string | number | null)[] {
  return params.map((p) => (p === undefined ? null : p));
}

function mapErrors<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toConstraintViolation(e) ?? e;
  }
}

/** SQLite names the columns ("UNIQUE constraint failed: networks.subnet") or, for an expression index, the index. */
function toConstraintViolation(e: unknown): ConstraintViolation | undefined {
  if (!(e instanceof Error) || !('code' in e)) return undefined;
  const code = String((e as { code: unknown }).code);
  const kind =
    code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ? 'unique'
    : code === 'SQLITE_CONSTRAINT_FOREIGNKEY' ? 'foreign-key'
    : code === 'SQLITE_CONSTRAINT_CHECK' ? 'check'
    : code === 'SQLITE_CONSTRAINT_NOTNULL' ? 'not-null'
    : undefined;
  if (!kind) return undefined;
  const failed = /constraint failed: (.*)$/.exec(e.message)?.[1] ?? '';
  const index = /^index '([^']+)'/.exec(failed)?.[1];
  const qualified = index ? [] : failed.split(',').map((s) => s.trim()).filter((s) => /^\w+\.\w+$/.test(s));
  const table = qualified[0]?.split('.')[0];
  return new ConstraintViolation(kind, e.message, table, qualified.map((s) => s.split('.')[1]!), index, { cause: e });
}
