/**
 * A FailureLog in the store (core/failure-throttle.ts): the failures of one scope (logins by
 * user, logins by address, agent registrations) counted by every control-plane replica together.
 */
import type { FailureLog } from '../../core/failure-throttle.js';
import type { Store } from '../../store/store.js';

export function sharedFailureLog(store: Pick<Store, 'failedAttempts'>, scope: string): FailureLog {
  return {
    add: (key, at, forgetBefore) => store.failedAttempts.add(scope, key, at, forgetBefore),
    since: (key, since, limit) => store.failedAttempts.since(scope, key, since, limit),
    clear: (key) => store.failedAttempts.clear(scope, key),
  };
}
