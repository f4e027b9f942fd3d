/**
 * Failed attempts counted per key in a sliding window (fail2ban's maxretry/findtime): once a key
 * has `limit` failures within `windowMs`, checks on it are refused with TooManyRequests until
 * the oldest of them leaves the window. A success clears the key. Throttling, not lockout (as
 * Keystone's `lockout_failure_attempts` does): a guesser elsewhere cannot lock a user out, it only
 * slows itself down.
 *
 * Where the failures are counted is a FailureLog: in this process (MemoryFailureLog), or in the
 * store every control-plane replica shares (control/identity/shared-failure-log.ts), so that a
 * guesser spreading its tries over the replicas gets `limit` in all, not `limit` per replica.
 * Keys reach the log hashed: a user name typed wrong may be a password typed in the wrong field.
 */
import { createHash } from 'node:crypto';
import { TooManyRequests } from './errors.js';

export interface ThrottleRule {
  limit: number;
  windowMs: number;
}

/** Where failures are counted (keys are the throttle's hashes; times epoch ms). */
export interface FailureLog {
  /** One failure of key at `at`; failures at or before `forgetBefore` may go with it. */
  add(key: string, at: number, forgetBefore: number): Promise<void>;
  /** When key's failures after `since` happened, oldest first, at most `limit`. */
  since(key: string, since: number, limit: number): Promise<number[]>;
  clear(key: string): Promise<void>;
}

/** Keys remembered at most (the oldest forgotten first): a spray of sources cannot grow it without bound. */
const MAX_KEYS = 100_000;

/** Failures counted in this process alone (what a single process, or an agent, needs). */
export class MemoryFailureLog implements FailureLog {
  private readonly failures = new Map<string, number[]>();

  async add(key: string, at: number, forgetBefore: number): Promise<void> {
    const kept = (this.failures.get(key) ?? []).filter((t) => t > forgetBefore);
    kept.push(at);
    this.failures.delete(key); // re-inserted: the map's order is the keys' last failure
    this.failures.set(key, kept);
    if (this.failures.size > MAX_KEYS) this.failures.delete(this.failures.keys().next().value!);
  }

  async since(key: string, since: number, limit: number): Promise<number[]> {
    const kept = (this.failures.get(key) ?? []).filter((t) => t > since);
    if (kept.length) this.failures.set(key, kept);
    else this.failures.delete(key);
    return kept.slice(0, limit);
  }

  async clear(key: string): Promise<void> {
    this.failures.delete(key);
  }
}

export class FailureThrottle {
  constructor(
    private readonly rule: ThrottleRule,
    private readonly log: FailureLog = new MemoryFailureLog(),
    private readonly now: () => number = Date.now,
  ) {}

  /** TooManyRequests (`what` says what is refused) when `key` has used up its failures. */
  async check(key: string, what: string): Promise<void> {
    const recent = await this.log.since(hashed(key), this.now() - this.rule.windowMs, this.rule.limit);
    if (recent.length < this.rule.limit) return;
    const retryAfterSeconds = Math.max(1, Math.ceil((recent[0]! + this.rule.windowMs - this.now()) / 1000));
    throw new TooManyRequests(`${what}: too many failed attempts; try again in ${retryAfterSeconds} s`, { retryAfterSeconds });
  }

  async fail(key: string): Promise<void> {
    const now = this.now();
    await this.log.add(hashed(key), now, now - this.rule.windowMs);
  }

  async succeed(key: string): Promise<void> {
    await this.log.clear(hashed(key));
  }
}

const hashed = (key: string): string => createHash('sha256').update(key).digest('base64url');
