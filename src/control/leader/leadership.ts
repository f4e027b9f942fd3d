/**
 * Which control-plane process does the work that must happen once (reclaimer, quota
 * reconcile, failing interrupted operations, restart policies): the leader.
 *
 * SQLite: one process per home (the pid lock), so it always leads. PostgreSQL: the leader is
 * the process whose dedicated session holds the advisory lock (LOCK_SPACE, LEADER_LOCK).
 * Followers try to take it every second; the leader checks its session every second and steps
 * down the moment the check fails. A killed process's backend ends and frees the lock, so a
 * follower leads within about a second. Timings and the partition window: docs/replicas.md.
 */
import { newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { PostgresSession } from '../../store/sql/postgres-session.js';

const log = logger('leader');

export interface Leadership {
  readonly isLeader: boolean;
  /** Called on every change; close() awaits what the callbacks return when it steps down. */
  onChange(cb: (leader: boolean) => void | Promise<void>): void;
  /** Steps down (callbacks first, then the lock goes) and stops trying. */
  close(): Promise<void>;
  readonly replicaId: string;
  /** The replica leading now as the database sees it (for listings), if any. */
  currentLeader(): Promise<string | undefined>;
}

/** A replica id: new on every start, so a restarted process is another replica. */
export function newReplicaId(): string {
  return newId().slice(0, 16);
}

abstract class BaseLeadership implements Leadership {
  private leading = false;
  private readonly callbacks: ((leader: boolean) => void | Promise<void>)[] = [];
  constructor(readonly replicaId: string) {}

  get isLeader(): boolean {
    return this.leading;
  }

  onChange(cb: (leader: boolean) => void | Promise<void>): void {
    this.callbacks.push(cb);
  }

  /** Tells every callback; resolves when what they returned has settled. */
  protected async change(leader: boolean): Promise<void> {
    if (this.leading === leader) return;
    this.leading = leader;
    log.info(leader ? 'leading' : 'stepped down', { replica: this.replicaId });
    const pending: Promise<void>[] = [];
    for (const cb of this.callbacks) {
      try {
        // a callback may return anything (a `void` type lets it); only a promise is waited for
        const out: unknown = cb(leader);
        if (out instanceof Promise) pending.push(out.catch((e: unknown) => log.error('a leadership callback failed', { leader, error: String(e) })));
      } catch (e) {
        log.error('a leadership callback failed', { leader, error: String(e) });
      }
    }
    await Promise.all(pending);
  }

  abstract close(): Promise<void>;
  abstract currentLeader(): Promise<string | undefined>;
}

/** The embedded store: the only process, always the leader. */
export class SoleLeadership extends BaseLeadership {
  constructor(replicaId: string) {
    super(replicaId);
    void this.change(true);
  }
  async close(): Promise<void> {
    await this.change(false);
  }
  async currentLeader(): Promise<string | undefined> {
    return this.isLeader ? this.replicaId : undefined;
  }
}

export interface PostgresLeadershipOptions {
  /** How often a follower tries the lock and the leader checks its session (default 1,000 ms). */
  tickMs?: number;
  /** A check not answered within this steps the leader down (default 2,000 ms). */
  checkTimeoutMs?: number;
}

export class PostgresLeadership extends BaseLeadership {
  private session: PostgresSession | undefined;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> = Promise.resolve();
  /** After losing its session a replica lets the others try first until then (epoch ms): its own connection is the suspect one. */
  private holdOffUntil = 0;
  private closed = false;
  private readonly tickMs: number;
  private readonly checkTimeoutMs: number;

  constructor(private readonly location: string, replicaId: string, options: PostgresLeadershipOptions = {}) {
    super(replicaId);
    this.tickMs = options.tickMs ?? 1_000;
    this.checkTimeoutMs = options.checkTimeoutMs ?? 2_000;
  }

  /** The name its session shows in pg_stat_activity: who leads is found through it. */
  static applicationName(replicaId: string): string {
    return `nimbus-leader:${replicaId}`;
  }

  /** The first try is made before this resolves: a process alone leads as soon as it is open. */
  async start(): Promise<void> {
    await this.tick();
    this.schedule();
  }

  /** Whose session holds the lock (through pg_stat_activity's application_name); undefined while this replica has no session. */
  async currentLeader(): Promise<string | undefined> {
    if (!this.session) return undefined;
    const { lockHolder } = await import('../../store/sql/postgres-session.js');
    const holder = await lockHolder(this.session, LEADER_LOCK_KEY);
    const prefix = PostgresLeadership.applicationName('');
    return holder?.applicationName.startsWith(prefix) ? holder.applicationName.slice(prefix.length) : undefined;
  }

  /** The leader's session's backend (tests terminate it), when there is a session. */
  get backendPid(): number | undefined {
    return this.session?.backendPid;
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.ticking = this.tick().finally(() => this.schedule());
    }, this.tickMs);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    try {
      const session = this.session ?? (await this.openSession());
      if (this.closed) return;
      if (this.isLeader) {
        await session.query('SELECT 1');
      } else if (Date.now() >= this.holdOffUntil && (await session.tryLock(LEADER_LOCK_KEY))) {
        if (this.closed || session.lost) return;
        await this.change(true);
      }
    } catch (e) {
      // the session is lost (its onLost stepped down) or could not be opened: try again next tick
      log.debug('leadership tick failed', { replica: this.replicaId, error: String(e) });
    }
  }

  private async openSession(): Promise<PostgresSession> {
    const { PostgresSession: Session } = await import('../../store/sql/postgres-session.js');
    const session = await Session.open(this.location, { applicationName: PostgresLeadership.applicationName(this.replicaId), queryTimeoutMs: this.checkTimeoutMs });
    this.session = session;
    session.onLost(() => {
      if (this.session === session) this.session = undefined;
      if (this.isLeader) this.holdOffUntil = Date.now() + 2 * this.tickMs;
      // the lock went with the session: stop at once, not at the next tick
      void this.change(false);
    });
    return session;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.ticking.catch(() => undefined);
    // the gated work stops before the lock goes, so the next leader never overlaps it
    await this.change(false);
    const session = this.session;
    this.session = undefined;
    await session?.close();
  }
}

/** Mirrors LEADER_LOCK in postgres-session.ts (kept here so SQLite never loads the pg driver). */
const LEADER_LOCK_KEY = 3;

/** The leadership for a store location: PostgreSQL's advisory lock, or always the leader on SQLite. */
export async function openLeadership(storeLocation: string, replicaId: string, options: PostgresLeadershipOptions = {}): Promise<Leadership> {
  // the test of open.ts's isPostgresLocation, not imported: that would load the whole store
  if (!/^postgres(ql)?:\/\//.test(storeLocation)) return new SoleLeadership(replicaId);
  const leadership = new PostgresLeadership(storeLocation, replicaId, options);
  await leadership.start();
  return leadership;
}
