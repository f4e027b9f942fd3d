/**
 * Failed attempts counted per key in a sliding window (fail2ban's maxretry/findtime): once a key
 * has `limit` failures within `windowMs`, checks on it are refused with TooManyRequests until
 * the oldest of them leaves the window. A success clears the key. Throttling, not lockout (as
 * Keystone's `lockout_failure_attempts` does): a guesser elsewhere cannot lock a user out, it only
 * slows itself down.
 *
 * Held in memory, per process: each control-plane replica counts what it answered. That bounds
 * a guesser to `limit` tries per window per replica, which is what it is for; a restart forgets.
 */
import { TooManyRequests } from './errors.js';

export interface ThrottleRule {
  limit: number;
  windowMs: number;
}

/** Keys remembered at most (the oldest forgotten first): a spray of sources cannot grow it without bound. */
const MAX_KEYS = 100_000;

export class FailureThrottle {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly rule: ThrottleRule,
    private readonly now: () => number = Date.now,
  ) {}

  /** TooManyRequests (`what` says what is refused) when `key` has used up its failures. */
  check(key: string, what: string): void {
    const recent = this.recent(key);
    if (recent.length < this.rule.limit) return;
    const retryAfterSeconds = Math.max(1, Math.ceil((recent[0]! + this.rule.windowMs - this.now()) / 1000));
    throw new TooManyRequests(`${what}: too many failed attempts; try again in ${retryAfterSeconds} s`, { retryAfterSeconds });
  }

  fail(key: string): void {
    const recent = this.recent(key);
    recent.push(this.now());
    this.failures.delete(key); // re-inserted: the map's order is the keys' last failure
    this.failures.set(key, recent);
    if (this.failures.size > MAX_KEYS) this.failures.delete(this.failures.keys().next().value!);
  }

  succeed(key: string): void {
    this.failures.delete(key);
  }

  private recent(key: string): number[] {
    const since = this.now() - this.rule.windowMs;
    const kept = (this.failures.get(key) ?? []).filter((t) => t > since);
    if (kept.length) this.failures.set(key, kept);
    else this.failures.delete(key);
    return kept;
  }
}
