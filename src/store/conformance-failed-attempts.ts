/** The failed attempts part of the store conformance suite: per scope and key, in time order, forgotten out of their window, cleared by a success. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ConformanceTarget } from './conformance.js';

export function failedAttemptConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  test(`${name}: failed attempts: per scope and key, oldest first and at most the limit asked, forgotten out of their window, cleared by a success`, async (t) => {
    const target = await open();
    t.after(() => target.cleanup());
    const r = target.store.failedAttempts;
    const T = 1_800_000_000_000; // epoch ms beyond 32 bits
    await r.add('login-user', 'k1', T + 30, T - 1);
    await r.add('login-user', 'k1', T + 10, T - 1);
    await r.add('login-user', 'k1', T + 20, T - 1);
    await r.add('login-user', 'k2', T + 15, T - 1);
    await r.add('login-source', 'k1', T + 5, T - 1);
    await r.add('login-source', 'k1', T + 5, T - 1); // two in one millisecond are two
    assert.deepEqual(await r.since('login-user', 'k1', T, 10), [T + 10, T + 20, T + 30], 'oldest first');
    assert.deepEqual(await r.since('login-user', 'k1', T, 2), [T + 10, T + 20], 'at most the limit asked');
    assert.deepEqual(await r.since('login-user', 'k1', T + 10, 10), [T + 20, T + 30], 'after `since`, not at it');
    assert.deepEqual(await r.since('login-source', 'k1', T, 10), [T + 5, T + 5], 'scopes are apart');
    // a later failure forgets the scope's failures at or before its window's start, every key's
    await r.add('login-user', 'k3', T + 100, T + 20);
    assert.deepEqual(await r.since('login-user', 'k1', 0, 10), [T + 30]);
    assert.deepEqual(await r.since('login-user', 'k2', 0, 10), []);
    assert.deepEqual(await r.since('login-source', 'k1', 0, 10), [T + 5, T + 5], "another scope's stay");
    await r.clear('login-user', 'k1');
    assert.deepEqual(await r.since('login-user', 'k1', 0, 10), []);
    assert.deepEqual(await r.since('login-user', 'k3', 0, 10), [T + 100], "another key's stay");
  });
}
