/**
 * A dedicated PostgreSQL connection for what a pool cannot do: session advisory locks (held
 * as long as this one connection lives: leadership) and LISTEN/NOTIFY (notifications reach
 * the connection that listens: the event relay). Opened from the store's location; one
 * pg.Client, never the executor's pool.
 *
 * A session is lost when its connection fails (the server ended it, the network broke, a
 * query passed its timeout): `lost` turns true and the onLost callbacks run once. It is not
 * reconnected: the owner opens another (a lost session has lost its locks and its LISTENs).
 */
import pg from 'pg';
import { logger } from '../../core/log.js';
import { parsePostgresLocation } from './postgres-executor.js';

const log = logger('store.postgres-session');

/** Advisory lock keys are (LOCK_SPACE, key); see postgres-executor.ts for keys 1 and 2. */
export const LOCK_SPACE = 0x4e494d42;
/** Key 3: the control plane's leader. */
export const LEADER_LOCK = 3;

export interface SessionOptions {
  /** Shown in pg_stat_activity (who holds a lock is found through it). */
  applicationName?: string;
  /** A query not answered within this is a lost session (default 2,000 ms). */
  queryTimeoutMs?: number;
}

export class PostgresSession {
  private lostReason: Error | undefined;
  private readonly lostCallbacks: ((e: Error) => void)[] = [];
  private readonly listeners = new Map<string, (payload: string) => void>();
  private closed = false;

  private constructor(private readonly client: pg.Client, private readonly queryTimeoutMs: number) {
    // 'error' (the server ended the backend, a socket error) and 'end' both mean the locks are gone
    client.on('error', (e) => this.markLost(e));
    client.on('end', () => this.markLost(new Error('the connection ended')));
    client.on('notification', (m) => {
      if (m.payload !== undefined) this.listeners.get(m.channel)?.(m.payload);
    });
  }

  static async open(location: string, options: SessionOptions = {}): Promise<PostgresSession> {
    const { connectionString } = parsePostgresLocation(location);
    const client = new pg.Client({
      connectionString,
      keepAlive: true,
      keepAliveInitialDelayMillis: 1_000,
      connectionTimeoutMillis: options.queryTimeoutMs ?? 2_000,
      ...(options.applicationName ? { application_name: options.applicationName } : {}),
    });
    // before connect: a failed connect emits 'error' too, which must not go unhandled
    const session = new PostgresSession(client, options.queryTimeoutMs ?? 2_000);
    try {
      await client.connect();
      // Over TCP the server notices a vanished client within ~11 s (5 + 2 x 3) instead of the
      // OS default of hours: what bounds how long a partitioned leader's lock outlives it
      // (ignored on unix sockets, where the kernel tells the server at once).
      await client.query('SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3');
    } catch (e) {
      session.closed = true;
      await client.end().catch(() => undefined);
      throw e;
    }
    return session;
  }

  /** The server process of this connection (pg_terminate_backend takes it). */
  get backendPid(): number {
    return (this.client as unknown as { processID: number }).processID;
  }

  get lost(): boolean {
    return this.lostReason !== undefined;
  }

  /** Runs once when the session is lost (at once when it already is); not on close(). */
  onLost(cb: (e: Error) => void): void {
    if (this.lostReason) cb(this.lostReason);
    else this.lostCallbacks.push(cb);
  }

  private markLost(e: Error): void {
    if (this.lostReason || this.closed) return;
    this.lostReason = e;
    log.warn('session lost', { error: e.message });
    for (const cb of this.lostCallbacks.splice(0)) cb(e);
    // a session that timed out may still be connected: end it, so its locks do not outlive it
    this.client.end().catch(() => undefined);
  }

  /** A query with `$n` placeholders; one not answered in time loses the session. */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    if (this.lostReason) throw this.lostReason;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const e = new Error(`the session's query did not answer within ${this.queryTimeoutMs} ms`);
        this.markLost(e);
        reject(e);
      }, this.queryTimeoutMs);
    });
    try {
      return (await Promise.race([this.client.query<R>(sql, params), late])).rows;
    } catch (e) {
      if (!this.closed && !(e instanceof pg.DatabaseError)) this.markLost(e instanceof Error ? e : new Error(String(e)));
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Session advisory lock (LOCK_SPACE, key) without waiting: true when this session holds it now. */
  async tryLock(key: number): Promise<boolean> {
    const [row] = await this.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [LOCK_SPACE, key]);
    return row?.ok === true;
  }

  async unlock(key: number): Promise<void> {
    await this.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_SPACE, key]);
  }

  /** Notifications on channel go to onPayload, in the order the server sends them. */
  async listen(channel: string, onPayload: (payload: string) => void): Promise<void> {
    this.listeners.set(channel, onPayload);
    await this.query(`LISTEN ${quoteIdentifier(channel)}`);
  }

  /** One NOTIFY (payload below 8,000 bytes); notifications of one session arrive in the order sent. */
  async notify(channel: string, payload: string): Promise<void> {
    await this.query('SELECT pg_notify($1, $2)', [channel, payload]);
  }

  /** Ends the connection (its session locks and LISTENs with it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client.end().catch(() => undefined);
  }
}

/** The application_name of the session holding advisory lock (LOCK_SPACE, key), if any. */
export async function lockHolder(session: PostgresSession, key: number): Promise<{ applicationName: string; backendPid: number } | undefined> {
  const [row] = await session.query<{ application_name: string; pid: number }>(
    `SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2 AND l.granted`,
    [LOCK_SPACE, key],
  );
  return row ? { applicationName: row.application_name, backendPid: row.pid } : undefined;
}

function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
