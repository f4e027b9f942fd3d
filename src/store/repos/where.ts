import type { Dialect, SqlValue } from '../sql/executor.js';

/**
 * A WHERE clause of the equality conditions given (undefined ones left out). Built rather than
 * written as "(? IS NULL OR col = ?)": that form scans instead of using an index, and
 * PostgreSQL cannot type a parameter compared only with NULL.
 */
export function where(conditions: readonly (readonly [column: string, value: SqlValue])[]): { sql: string; params: SqlValue[] } {
  const parts: string[] = [];
  const params: SqlValue[] = [];
  for (const [column, value] of conditions) {
    if (value === undefined) continue;
    parts.push(`${column} = ?`);
    params.push(value);
  }
  return { sql: parts.length ? `WHERE ${parts.join(' AND ')}` : '', params };
}

/**
 * `column` is one of `ids`, as one bound parameter whatever their number (a member may read
 * thousands of projects): PostgreSQL's `= ANY(array)`, SQLite's `IN (json_each(array))`; both use
 * the column's index.
 */
export function oneOf(dialect: Dialect, column: string, ids: readonly string[]): { sql: string; params: SqlValue[] } {
  return dialect === 'postgres'
    ? { sql: `${column} = ANY(?)`, params: [[...ids] as unknown as SqlValue] }
    : { sql: `${column} IN (SELECT value FROM json_each(?))`, params: [JSON.stringify(ids)] };
}
