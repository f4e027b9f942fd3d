/**
 * Failed attempts (logins, agent registrations) in a sliding window, kept where every control-plane
 * process counts them together: a guesser spreading its tries over the replicas (the CLI moves to
 * the next endpoint by itself) gets the limit once, not once per replica. Keys are what the
 * throttle gives (a hash: a user name typed wrong may be a password typed in the wrong field).
 */
import { randomBytes } from 'node:crypto';
import type { SqlExecutor } from '../sql/executor.js';

export interface FailedAttemptRepo {
  /** One failure of key in scope at `at` (epoch ms); the scope's failures at or before `forgetBefore` go with it. */
  add(scope: string, key: string, at: number, forgetBefore: number): Promise<void>;
  /** When key's failures in scope after `since` happened, oldest first, at most `limit`. */
  since(scope: string, key: string, since: number, limit: number): Promise<number[]>;
  /** Every failure of key in scope goes (it succeeded). */
  clear(scope: string, key: string): Promise<void>;
}

export class SqlFailedAttemptRepo implements FailedAttemptRepo {
  constructor(private readonly db: SqlExecutor) {}

  async add(scope: string, key: string, at: number, forgetBefore: number): Promise<void> {
    await this.db.run('INSERT INTO failed_attempts (id, scope, key, at) VALUES (?, ?, ?, ?)', [randomBytes(12).toString('hex'), scope, key, at]);
    await this.db.run('DELETE FROM failed_attempts WHERE scope = ? AND at <= ?', [scope, forgetBefore]);
  }

  async since(scope: string, key: string, since: number, limit: number): Promise<number[]> {
    const rows = await this.db.all('SELECT at FROM failed_attempts WHERE scope = ? AND key = ? AND at > ? ORDER BY at LIMIT ?', [scope, key, since, limit]);
    return rows.map((r) => Number(r.at));
  }

  async clear(scope: string, key: string): Promise<void> {
    await this.db.run('DELETE FROM failed_attempts WHERE scope = ? AND key = ?', [scope, key]);
  }
}
