/**
 * The PostgreSQL driver: a pg.Pool. Calls outside a transaction take any pooled connection;
 * a transaction takes one connection for itself, found again through the async context by
 * every call made inside it.
 *
 * Transactions are serialised: one at a time in this process (a queue, so waiting ones hold
 * no connection) and across processes (a transaction-level advisory lock taken after BEGIN).
 * That is what keeps a read-then-write inside transaction() from losing updates under READ
 * COMMITTED, as SQLite's single writer does; writes outside transactions run beside them.
 * rowLockTransaction() is the exception, for statements that guard themselves with row locks
 * and conditional writes (the scheduler's claims): neither queued nor advisory-locked.
 * Inside a transaction, each write runs under a savepoint: a statement PostgreSQL refuses (a
 * unique violation the caller catches and answers, as IPAM does) rolls back alone instead of
 * aborting the whole transaction, as in SQLite.
 */
import { ContextSlot } from '../../core/async-context.js';
import pg from 'pg';
import { logger } from '../../core/log.js';
import { BASELINE, BASELINE_VERSION, MIGRATIONS, SCHEMA_VERSION, ddl, newerThanCode } from '../schema.js';
import { ConstraintViolation, toNumberedPlaceholders, type Row, type SqlExecutor, type SqlValue } from './executor.js';

const log = logger('store.postgres');

/** Advisory lock keys (first: "NIMB"): the schema migration, and the transactions' turn. */
const LOCK_SPACE = 0x4e494d42;
const MIGRATION_LOCK = 1;
const TRANSACTION_LOCK = 2;

/** Bound of the converted SQL texts kept (the store's are a few dozen). */
const MAX_TEXTS = 1024;
const INT8 = 20;
const NUMERIC = 1700;

/** int8 (COUNT, BIGINT columns) and numeric as JS numbers: the store's values stay below 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === INT8 || oid === NUMERIC) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format);
  }) as pg.CustomTypesConfig['getTypeParser'],
};

interface TxContext {
  client: pg.PoolClient;
  active: boolean;
  /** Statements of one transaction run one at a time (each write under its own savepoint, when `savepoints`). */
  tail: Promise<unknown>;
  /** false in rowLockTransaction: a refused statement aborts it (two round trips fewer per write). */
  savepoints: boolean;
}

export interface PostgresOptions {
  /** Pool size (URL ?max=N; default 10). */
  max?: number;
}

/** The URL without our own parameters, and those parameters. */
export function parsePostgresLocation(location: string): { connectionString: string; max: number } {
  const q = location.indexOf('?');
  if (q < 0) return { connectionString: location, max: 10 };
  const params = new URLSearchParams(location.slice(q + 1));
  const maxText = params.get('max');
  params.delete('max');
  const max = maxText === null ? 10 : Number(maxText);
  if (!Number.isInteger(max) || max < 2) throw new Error(`postgres store: max must be an integer of at least 2, got "${maxText}"`);
  const rest = params.toString();
  return { connectionString: location.slice(0, q) + (rest ? `?${rest}` : ''), max };
}

export async function openPostgresExecutor(location: string): Promise<PostgresExecutor> {
  const { connectionString, max } = parsePostgresLocation(location);
  const pool = new pg.Pool({ connectionString, max, types });
  // an idle connection the server dropped: the pool discards it; without a listener the process would die
  pool.on('error', (e) => log.warn('idle connection failed', { error: e.message }));
  try {
    await migratePostgres(pool);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return new PostgresExecutor(pool);
}

/** Brings the database to SCHEMA_VERSION in one transaction, under an advisory lock: processes starting together migrate once. */
export async function migratePostgres(pool: pg.Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    try {
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_SPACE, MIGRATION_LOCK]);
      await client.query('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
      const r = await client.query<{ version: number }>('SELECT version FROM schema_version');
      let version = r.rows[0]?.version ?? 0;
      if (version > SCHEMA_VERSION) throw newerThanCode(version);
      if (version === 0) {
        await client.query(ddl('postgres', BASELINE));
        await client.query('INSERT INTO schema_version (version) VALUES ($1)', [BASELINE_VERSION]);
        version = BASELINE_VERSION;
      }
      for (; version < SCHEMA_VERSION; version++) {
        await client.query(ddl('postgres', MIGRATIONS[version - BASELINE_VERSION]!));
        await client.query('UPDATE schema_version SET version = $1', [version + 1]);
      }
      await client.query('COMMIT');
    } catch (e) {
      await client.query('ROLLBACK');
      throw e;
    }
  } finally {
    client.release();
  }
}

export class PostgresExecutor implements SqlExecutor {
  readonly dialect = 'postgres' as const;
  private readonly context = new ContextSlot<TxContext>('SQL transaction');
  /**
   * `?` SQL to `$n` SQL, converted once per text. Statements stay unnamed (not prepared per
   * connection): a prepared `SELECT *` fails ("cached plan must not change result type") once
   * another process's migration adds a column.
   */
  private readonly texts = new Map<string, string>();
  /** The tail of this process's transactions' queue. */
  private queue: Promise<void> = Promise.resolve();
  /** Row-lock transactions running (not in the queue): close() waits for them too. */
  private readonly unqueued = new Set<Promise<unknown>>();
  private closing: Promise<void> | undefined;

  constructor(private readonly pool: pg.Pool) {}

  private text(sql: string): string {
    let text = this.texts.get(sql);
    if (text === undefined) {
      if (this.texts.size >= MAX_TEXTS) this.texts.clear();
      text = toNumberedPlaceholders(sql);
      this.texts.set(sql, text);
    }
    return text;
  }

  private async query(sql: string, params: readonly SqlValue[]): Promise<pg.QueryResult<Row>> {
    const query = { text: this.text(sql), values: params.map((p) => (p === undefined ? null : p)) };
    const tx = this.context.get();
    try {
      if (!tx?.active) return await this.pool.query<Row>(query);
      const isWrite = /^\s*(INSERT|UPDATE|DELETE)\b/i.test(sql);
      const step = tx.tail.then(async () => {
        if (!isWrite || !tx.savepoints) return tx.client.query<Row>(query);
        await tx.client.query('SAVEPOINT nimbus_statement');
        try {
          const r = await tx.client.query<Row>(query);
          await tx.client.query('RELEASE SAVEPOINT nimbus_statement');
          return r;
        } catch (e) {
          await tx.client.query('ROLLBACK TO SAVEPOINT nimbus_statement');
          throw e;
        }
      });
      tx.tail = step.catch(() => undefined);
      return await step;
    } catch (e) {
      throw toConstraintViolation(e) ?? e;
    }
  }

  async all(sql: string, params: readonly SqlValue[] = []): Promise<Row[]> {
    return (await this.query(sql, params)).rows;
  }

  async get(sql: string, params: readonly SqlValue[] = []): Promise<Row | undefined> {
    return (await this.query(sql, params)).rows[0];
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    return { changes: (await this.query(sql, params)).rowCount ?? 0 };
  }

  async transaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.context.get()?.active) return fn();
    const before = this.queue;
    let leave!: () => void;
    this.queue = new Promise((ok) => (leave = ok));
    try {
      await before;
      const client = await this.pool.connect();
      return await this.runTransaction(client, fn, { storeLock: true });
    } finally {
      leave();
    }
  }

  async rowLockTransaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.context.get()?.active) return fn();
    const running = (async () => this.runTransaction(await this.pool.connect(), fn, { storeLock: false }))();
    this.unqueued.add(running);
    try {
      return await running;
    } finally {
      this.unqueued.delete(running);
    }
  }

  /** BEGIN, fn in its context, COMMIT (ROLLBACK on a throw); storeLock: the cluster-wide advisory lock and savepoints. */
  private async runTransaction<T>(client: pg.PoolClient, fn: () => Promise<T>, { storeLock }: { storeLock: boolean }): Promise<T> {
    const tx: TxContext = { client, active: true, tail: Promise.resolve(), savepoints: storeLock };
    let broken: unknown;
    try {
      try {
        await client.query('BEGIN');
        if (storeLock) await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_SPACE, TRANSACTION_LOCK]);
        const out = await this.context.run(tx, fn);
        await tx.tail; // statements fn started without awaiting them finish inside the transaction
        await client.query('COMMIT');
        return out;
      } catch (e) {
        await client.query('ROLLBACK').catch((rollback: unknown) => (broken = rollback));
        throw e;
      }
    } finally {
      tx.active = false;
      // a connection that failed to roll back is not given to anyone else
      client.release(broken instanceof Error ? broken : undefined);
    }
  }

  /** After the transactions already asked for; a second close is the first one's. */
  close(): Promise<void> {
    this.closing ??= this.queue
      .then(() => Promise.allSettled([...this.unqueued]))
      .then(() => this.pool.end());
    return this.closing;
  }
}

/** SQLSTATE class 23: the constraint and, from the detail "Key (a, b)=(…) already exists.", its columns. */
function toConstraintViolation(e: unknown): ConstraintViolation | undefined {
  if (!(e instanceof pg.DatabaseError)) return undefined;
  const kind =
    e.code === '23505' ? 'unique'
    : e.code === '23503' ? 'foreign-key'
    : e.code === '23514' ? 'check'
    : e.code === '23502' ? 'not-null'
    : undefined;
  if (!kind) return undefined;
  const key = e.detail ? /^Key \((.*?)\)=\(/.exec(e.detail)?.[1] : undefined;
  const columns = key ? key.split(',').map((s) => s.trim()).filter((s) => /^\w+$/.test(s)) : e.column ? [e.column] : [];
  const message = e.detail ? `${e.message} (${e.detail})` : e.message;
  return new ConstraintViolation(kind, message, e.table, columns, e.constraint, { cause: e });
}
