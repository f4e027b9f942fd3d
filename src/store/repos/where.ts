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

/** Ids per IN list: well under SQLite's 32,766 bound parameters and PostgreSQL's 65,535. */
const IN_CHUNK = 500;

/**
 * The rows of `ids` (a column's values, e.g. the projects a caller may read), newest first, at
 * most `limit`: one query per chunk of ids, each already ordered and limited, merged. `query`
 * gets the IN list's placeholders and its parameters; `newer` orders two rows newest first.
 */
export async function newestAmong<R>(
  ids: readonly string[],
  limit: number,
  query: (placeholders: string, chunk: string[]) => Promise<R[]>,
  newer: (a: R, b: R) => number,
): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < ids.length; i += IN_CHUNK) {
    const chunk = ids.slice(i, i + IN_CHUNK);
    out.push(...(await query(chunk.map(() => '?').join(', '), chunk)));
  }
  return out.sort(newer).slice(0, limit);
}
