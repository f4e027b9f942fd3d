/**
 * Opens the store a location names: a file path or `sqlite:PATH` for the embedded SQLite
 * store, `postgres://…` / `postgresql://…` for PostgreSQL (`?max=N`: the connection pool's
 * size, default 10). Migrates the schema on open and refuses a store newer than the code.
 */
import { migrateSqlite } from './sqlite-history.js';
import { SqlStore } from './sql-store.js';
import { SqliteExecutor, openSqliteDatabase } from './sql/sqlite-executor.js';
import type { Store } from './store.js';

export const isPostgresLocation = (location: string): boolean => /^postgres(ql)?:\/\//.test(location);

export async function openStore(location: string): Promise<Store> {
  if (isPostgresLocation(location)) {
    // loaded only when asked for: an embedded installation never needs the pg driver
    const { openPostgresExecutor } = await import('./sql/postgres-executor.js');
    return new SqlStore(await openPostgresExecutor(location));
  }
  const db = openSqliteDatabase(location.replace(/^sqlite:/, ''));
  try {
    migrateSqlite(db);
  } catch (e) {
    db.close();
    throw e;
  }
  return new SqlStore(new SqliteExecutor(db));
}
