import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FailureThrottle } from './failure-throttle.js';

test('FailureThrottle: refuses a key at its limit until its oldest failure leaves the window; a success clears it; keys are apart', () => {
  let now = 1_000_000;
  const th = new FailureThrottle({ limit: 3, windowMs: 60_000 }, () => now);
  for (let i = 0; i < 3; i++) {
    th.check('a', 'login');
    th.fail('a');
    now += 10_000;
  }
  // failures at 0 s, 10 s, 20 s; now 30 s: the first leaves the window at 60 s
  assert.throws(() => th.check('a', 'login as a'), (e: Error & { code?: string; details?: { retryAfterSeconds?: number } }) => {
    assert.equal(e.code, 'TooManyRequests');
    assert.equal(e.details?.retryAfterSeconds, 30);
    assert.match(e.message, /^login as a: too many failed attempts; try again in 30 s$/);
    return true;
  });
  th.check('b', 'login'); // another key is not held
  now += 30_001;
  th.check('a', 'login'); // one failure left the window
  th.fail('a');
  assert.throws(() => th.check('a', 'login'), { code: 'TooManyRequests' });
  th.succeed('a');
  th.check('a', 'login');
});
