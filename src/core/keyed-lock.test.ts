import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedLock } from './keyed-lock.js';

const tick = () => new Promise((r) => setTimeout(r, 5));

test('calls for one key run one at a time, in order, a failure not stopping the next; other keys run alongside; settled keys are forgotten', async () => {
  const lock = new KeyedLock();
  const log: string[] = [];
  const step = (key: string, name: string, fail = false) => lock.run(key, async () => {
    log.push(`${name} start`);
    await tick();
    log.push(`${name} end`);
    if (fail) throw new Error(name);
    return name;
  });
  const a1 = step('a', 'a1', true);
  const a2 = step('a', 'a2');
  const b1 = step('b', 'b1');
  assert.equal(lock.size, 2);
  await assert.rejects(a1, /a1/);
  assert.equal(await a2, 'a2');
  assert.equal(await b1, 'b1');
  // a2 started only after a1 ended; b1 started before a1 ended
  assert.ok(log.indexOf('a2 start') > log.indexOf('a1 end'), log.join(', '));
  assert.ok(log.indexOf('b1 start') < log.indexOf('a1 end'), log.join(', '));
  await tick();
  assert.equal(lock.size, 0, 'nothing kept once settled');
});
