import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DetachMatcher, parseDetachKeys } from './attach.js';

test('detach keys as Docker spells them', () => {
  assert.deepEqual([...parseDetachKeys('ctrl-p,ctrl-q')], [16, 17]);
  assert.deepEqual([...parseDetachKeys('a,ctrl-@,ctrl-[')], [97, 0, 27]);
  assert.throws(() => parseDetachKeys('ctrl-1'), /invalid detach keys/);
  assert.throws(() => parseDetachKeys('meta-x'), /invalid detach keys/);
});

test('the detach sequence is held back, a broken one passes in order, split across chunks', () => {
  const m = new DetachMatcher(parseDetachKeys('ctrl-p,ctrl-q'));
  assert.deepEqual(m.feed(Buffer.from('ls\r')), { pass: Buffer.from('ls\r'), detach: false });
  assert.deepEqual(m.feed(Buffer.from([16])), { pass: Buffer.alloc(0), detach: false }, 'a prefix waits');
  assert.deepEqual(m.feed(Buffer.from('x')), { pass: Buffer.from([16, 120]), detach: false }, 'broken: both go on');
  assert.deepEqual(m.feed(Buffer.from([16, 16])), { pass: Buffer.from([16]), detach: false }, 'the second ^P may begin it again');
  const r = m.feed(Buffer.from([17, 97]));
  assert.equal(r.detach, true);
  assert.equal(r.pass.length, 0, 'the sequence itself never reaches the process');
});
