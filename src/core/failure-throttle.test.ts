import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FailureThrottle, MemoryFailureLog, type FailureLog } from './failure-throttle.js';

test('FailureThrottle: refuses a key at its limit until its oldest failure leaves the window; a success clears it; keys are apart', async () => {
  let now = 1_000_000;
  const th = new FailureThrottle({ limit: 3, windowMs: 60_000 }, new MemoryFailureLog(), () => now);
  for (let i = 0; i < 3; i++) {
    await th.check('a', 'login');
    await th.fail('a');
    now += 10_000;
  }
  // failures at 0 s, 10 s, 20 s; now 30 s: the first leaves the window at 60 s
  await assert.rejects(th.check('a', 'login as a'), (e: Error & { code?: string; details?: { retryAfterSeconds?: number } }) => {
    assert.equal(e.code, 'TooManyRequests');
    assert.equal(e.details?.retryAfterSeconds, 30);
    assert.match(e.message, /^login as a: too many failed attempts; try again in 30 s$/);
    return true;
  });
  await th.check('b', 'login'); // another key is not held
  now += 30_001;
  await th.check('a', 'login'); // one failure left the window
  await th.fail('a');
  await assert.rejects(th.check('a', 'login'), { code: 'TooManyRequests' });
  await th.succeed('a');
  await th.check('a', 'login');
});

test('FailureThrottle: two throttles over one log (two replicas over one store) count against one limit; the log sees keys hashed only', async () => {
  const seen: string[] = [];
  const memory = new MemoryFailureLog();
  const log: FailureLog = {
    add: (k, at, before) => (seen.push(k), memory.add(k, at, before)),
    since: (k, since, limit) => (seen.push(k), memory.since(k, since, limit)),
    clear: (k) => (seen.push(k), memory.clear(k)),
  };
  const [a, b] = [new FailureThrottle({ limit: 4, windowMs: 60_000 }, log), new FailureThrottle({ limit: 4, windowMs: 60_000 }, log)];
  for (const th of [a, b, a, b]) {
    await th.check('hunter2 from 127.0.0.1', 'login');
    await th.fail('hunter2 from 127.0.0.1');
  }
  await assert.rejects(a.check('hunter2 from 127.0.0.1', 'login'), { code: 'TooManyRequests' });
  await assert.rejects(b.check('hunter2 from 127.0.0.1', 'login'), { code: 'TooManyRequests' }, 'the other replica refuses too');
  assert.ok(seen.length > 0 && seen.every((k) => !k.includes('hunter2') && /^[A-Za-z0-9_-]{43}$/.test(k)), `keys as the log saw them: ${[...new Set(seen)].join(' ')}`);
});
