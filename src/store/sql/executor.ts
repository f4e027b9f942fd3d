/**
 * The SQL executor seam: what the repositories (src/store/repos) need of a database, and all
 * they know of it. SQL is written once with `?` placeholders in the subset both SQLite and
 * PostgreSQL speak; each driver (sqlite-executor.ts, postgres-executor.ts) runs it, keeps
 * transactions in the caller's async context, and turns constraint errors into the typed
 * ones below so that the repositories map them to AlreadyExists the same way on both.
 */

export type Dialect = 'sqlite' | 'postgres';
/** What a placeholder binds: booleans are stored as INTEGER 0/1, JSON as TEXT (the repositories convert). */
export type SqlValue = string | number | null | undefined;
export type Row = Record<string, unknown>;

export interface SqlExecutor {
  readonly dialect: Dialect;
  all(sql: string, params?: readonly SqlValue[]): Promise<Row[]>;
  /** The first row, if any (also for `… RETURNING`). */
  get(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined>;
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
  /**
   * Runs fn atomically: every call made in fn's async context joins it, a nested call joins
   * the outer one, a throw rolls back. Calls from other contexts never run inside it.
   */
  transaction<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * Runs fn atomically like transaction(), but takes no store-wide lock: on PostgreSQL it is
   * neither queued behind this process's transactions nor behind other processes' (no advisory
   * lock), so such transactions run side by side. fn's statements must make themselves safe
   * against concurrent writers: conditional UPDATEs, row locks taken by an UPDATE before the
   * rows they guard are read, unique keys. No savepoints either: a refused statement aborts the
   * transaction and fn must let the error through. Joins a transaction already running in the
   * caller's context, and a transaction() called inside fn joins it (without the store-wide
   * lock): fn calls only code written for it. SQLite has one writer: the same as transaction().
   */
  rowLockTransaction<T>(fn: () => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** A constraint the database refused a write for; `columns` are the constrained columns when the driver names them. */
export class ConstraintViolation extends Error {
  constructor(
    readonly kind: 'unique' | 'foreign-key' | 'check' | 'not-null',
    message: string,
    readonly table: string | undefined,
    readonly columns: readonly string[],
    /** The index or constraint's name, when the driver tells it. */
    readonly constraint: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ConstraintViolation';
  }
  /** Whether the violated key involves this column (or an index/constraint named after it). */
  involves(column: string): boolean {
    return this.columns.includes(column) || (this.constraint !== undefined && new RegExp(`(^|_)${column}(_|$)`).test(this.constraint));
  }
}

export function isUniqueViolation(e: unknown): e is ConstraintViolation {
  return e instanceof ConstraintViolation && e.kind === 'unique';
}

/** Row value readers: both drivers hand back strings and numbers (PostgreSQL's int8 parsed to number). */
export const str = (v: unknown): string => String(v);
export const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
export const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/** `?` placeholders to PostgreSQL's `$1…`, skipping quoted literals and identifiers. */
export function toNumberedPlaceholders(sql: string): string {
  let out = '';
  let n = 0;
  let quote: string | null = null;
  for (const ch of sql) {
    if (quote) {
      if (ch === quote) quote = null;
      out += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      out += ch;
    } else if (ch === '?') {
      out += `$${++n}`;
    } else {
      out += ch;
    }
  }
  return out;
}
