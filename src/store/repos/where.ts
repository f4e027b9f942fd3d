import type { SqlValue } from '../sql/executor.js';

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
