import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WarmDemand } from './warm-demand.js';

const clock = () => {
  let t = 0;
  return { now: () => t, at: (ms: number) => (t = ms) };
};

test('the peak is the number of requests in flight at once, not how many came', () => {
  const c = clock();
  const d = new WarmDemand({ now: c.now });
  for (let i = 0; i < 10; i++) {
    d.begin('seq');
    d.end('seq');
  }
  assert.equal(d.peak('seq'), 1, 'ten one after another: one at a time');
  for (let i = 0; i < 3; i++) d.begin('burst');
  for (let i = 0; i < 3; i++) d.end('burst');
  d.begin('burst');
  assert.equal(d.peak('burst'), 3);
  assert.equal(d.peak('never'), 0);
  d.end('never'); // an end without a begin is ignored
  assert.equal(d.peak('never'), 0);
});

test('the peak is held while requests come and for holdMs after, then halves every halfLifeMs', () => {
  const c = clock();
  const d = new WarmDemand({ now: c.now, holdMs: 1000, halfLifeMs: 500 });
  for (let i = 0; i < 8; i++) d.begin('a');
  for (let i = 0; i < 8; i++) d.end('a');
  c.at(900);
  d.begin('a'); // a request renews the hold
  d.end('a');
  c.at(1800);
  assert.equal(d.peak('a'), 8, 'held');
  c.at(2400);
  assert.equal(d.peak('a'), 4, 'one half-life past the hold');
  c.at(2900);
  assert.equal(d.peak('a'), 2);
  assert.ok(d.anyAbove(1));
  c.at(2900 + 500 * 12);
  assert.equal(d.peak('a'), 1);
  assert.ok(!d.anyAbove(1));
});

test('a request whose create never reports back stops counting after staleMs', () => {
  const c = clock();
  const d = new WarmDemand({ now: c.now, holdMs: 0, halfLifeMs: 1, staleMs: 50 });
  for (let i = 0; i < 5; i++) d.begin('a');
  assert.equal(d.peak('a'), 5);
  c.at(100);
  d.begin('a');
  assert.equal(d.peak('a'), 1, 'the five never ended but are stale: not six in flight');
});
