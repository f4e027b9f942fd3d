/** The usage part of the store conformance suite: cursors moved compare-and-set with the usage they add, sums, filters, big counters. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { ConformanceTarget } from './conformance.js';
import type { UsageCursor, UsageSlice } from './repos/usage.js';
import type { Store } from './store.js';

const HOUR = 3_600_000;
const T0 = Date.UTC(2026, 0, 1);
const GiB = 1024 ** 3;

const cursorOf = (over: Partial<UsageCursor> = {}): UsageCursor => ({
  instanceId: 'i1', projectId: 'p1', kind: 'container', name: 'web', accountedUntil: T0, active: true, cpuNs: null, cpuRun: null, seenRun: 'run-1',
  millicpus: 1000, memoryBytes: GiB, heldMemoryBytes: GiB, diskBytes: null, closed: false, netBase: null, ...over,
});

const sliceOf = (over: Partial<UsageSlice> = {}): UsageSlice => ({
  instanceId: 'i1', projectId: 'p1', kind: 'container', name: 'web', periodStart: T0, millicpus: 1000, memoryBytes: GiB,
  activeMs: 1000, cpuNs: null, memoryMibMs: 1024 * 1000, diskMibMs: null, netRxBytes: null, netTxBytes: null, ...over,
});

export function usageConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  async function setup(t: TestContext): Promise<{ s: Store; target: ConformanceTarget }> {
    const target = await open();
    t.after(() => target.cleanup());
    return { s: target.store, target };
  }

  test(`${name}: usage: a cursor moves only from where it was read, and its usage is added with it or not at all`, async (t) => {
    const { s } = await setup(t);
    const u = s.usage;
    assert.equal(await u.cursor('i1'), undefined);
    assert.ok(await u.commit(null, cursorOf(), []), 'the first cursor is made');
    assert.equal(await u.commit(null, cursorOf({ accountedUntil: T0 + 5 }), [sliceOf()]), false, 'a second first cursor loses, adding nothing');
    assert.deepEqual(await u.query(), []);
    assert.ok(await u.commit(T0, cursorOf({ accountedUntil: T0 + 1000, cpuNs: 5e8, cpuRun: 'run-1' }), [sliceOf({ cpuNs: 5e8 })]));
    // a pass that read the cursor at T0 too (an old leader finishing) loses: the span is counted once
    assert.equal(await u.commit(T0, cursorOf({ accountedUntil: T0 + 1000 }), [sliceOf({ cpuNs: 5e8 })]), false);
    assert.deepEqual(await u.cursor('i1'), cursorOf({ accountedUntil: T0 + 1000, cpuNs: 5e8, cpuRun: 'run-1' }));
    assert.ok(await u.commit(T0 + 1000, cursorOf({ accountedUntil: T0 + 1000, memoryBytes: 0, heldMemoryBytes: 3 * 1024 * GiB, diskBytes: 20 * GiB }), []));
    assert.deepEqual(await u.cursor('i1'), cursorOf({ accountedUntil: T0 + 1000, memoryBytes: 0, heldMemoryBytes: 3 * 1024 * GiB, diskBytes: 20 * GiB }), 'sizes round-trip, terabytes exact');
    // the network baseline goes with the cursor (per endpoint, byte counters past 2^32 exact)
    const netBase = { 'local/nva#5': { rxBytes: 5 * GiB + 1, txBytes: 0 }, 'host-b/nvb#7': { rxBytes: 1, txBytes: 2 } };
    assert.ok(await u.commit(T0 + 1000, cursorOf({ accountedUntil: T0 + 1000, memoryBytes: 0, heldMemoryBytes: 3 * 1024 * GiB, diskBytes: 20 * GiB, netBase }), []));
    assert.deepEqual((await u.cursor('i1'))?.netBase, netBase);
    assert.ok(await u.commit(T0 + 1000, cursorOf({ accountedUntil: T0 + 1000, memoryBytes: 0, heldMemoryBytes: 3 * 1024 * GiB, diskBytes: 20 * GiB }), []));
    assert.equal((await u.cursor('i1'))?.netBase, null, 'an unknown baseline is null');
    // the run it saw goes with it: none yet ('') and unknown (null) are kept apart
    for (const seenRun of ['', null, 'run-1']) {
      assert.ok(await u.commit(T0 + 1000, cursorOf({ accountedUntil: T0 + 1000, memoryBytes: 0, heldMemoryBytes: 3 * 1024 * GiB, diskBytes: 20 * GiB, seenRun }), []));
      assert.equal((await u.cursor('i1'))?.seenRun, seenRun);
    }
    const [row] = await u.query();
    assert.equal(row?.activeMs, 1000);
    assert.equal(row?.cpuNs, 5e8);
    // the same hour and size adds up; nulls stay null until something is measured
    assert.ok(await u.commit(T0 + 1000, cursorOf({ accountedUntil: T0 + 3000 }), [sliceOf({ activeMs: 2000, memoryMibMs: 2048 * 1000, diskMibMs: 7, netRxBytes: 10 })]));
    const [sum] = await u.query();
    assert.deepEqual({ ...sum }, {
      instanceId: 'i1', projectId: 'p1', kind: 'container', name: 'web', periodStart: null, millicpus: 1000, memoryBytes: GiB,
      activeMs: 3000, cpuNs: 5e8, memoryMibMs: 3 * 1024 * 1000, diskMibMs: 7, netRxBytes: 10, netTxBytes: null,
    });
    // a closed cursor takes nothing more, and goes when deleted
    assert.ok(await u.commit(T0 + 3000, cursorOf({ accountedUntil: T0 + 4000, closed: true, active: false }), []));
    assert.equal(await u.commit(T0 + 4000, cursorOf({ accountedUntil: T0 + 5000 }), [sliceOf()]), false);
    assert.equal((await u.query())[0]?.activeMs, 3000);
    assert.deepEqual((await u.cursors()).map((c) => [c.instanceId, c.closed]), [['i1', true]]);
    // a pass walks the open ones; closed ones go once they are old enough
    assert.ok(await u.commit(null, cursorOf({ instanceId: 'i2', accountedUntil: T0 }), []));
    assert.deepEqual((await u.openCursors()).map((c) => c.instanceId), ['i2']);
    assert.equal(await u.deleteClosedBefore(T0 + 4000), 0, 'accounted until T0 + 4000: not before it');
    assert.equal(await u.deleteClosedBefore(T0 + 4001), 1);
    assert.deepEqual((await u.cursors()).map((c) => c.instanceId), ['i2'], 'the open one stays');
    await u.deleteCursor('i2');
    assert.deepEqual(await u.cursors(), []);
  });

  test(`${name}: usage: sums by instance and size, or by period; filters by project, instance and period; big counters stay exact`, async (t) => {
    const { s, target } = await setup(t);
    const u = s.usage;
    const big = 2 ** 52; // ns of CPU a large host accrues in ~52 days: beyond 32 bits, exact in a double
    assert.ok(await u.commit(null, cursorOf({ accountedUntil: T0 + 2 * HOUR }), [
      sliceOf({ periodStart: T0, activeMs: HOUR, cpuNs: big }),
      sliceOf({ periodStart: T0 + HOUR, activeMs: 10, cpuNs: 1 }),
      sliceOf({ periodStart: T0 + HOUR, millicpus: 2000, activeMs: 20 }), // resized in that hour: a row of its own
    ]));
    assert.ok(await u.commit(null, cursorOf({ instanceId: 'v1', projectId: 'p2', kind: 'vm', name: 'db' }), [
      sliceOf({ instanceId: 'v1', projectId: 'p2', kind: 'vm', name: 'db', periodStart: T0 + HOUR, activeMs: 500 }),
    ]));
    const all = await u.query();
    assert.deepEqual(all.map((r) => [r.instanceId, r.millicpus, r.activeMs, r.cpuNs]), [['i1', 1000, HOUR + 10, big + 1], ['i1', 2000, 20, null], ['v1', 1000, 500, null]]);
    const series = await u.query({ byPeriod: true, projectIds: ['p1'] });
    assert.deepEqual(series.map((r) => [r.periodStart, r.millicpus, r.activeMs]), [[T0, 1000, HOUR], [T0 + HOUR, 1000, 10], [T0 + HOUR, 2000, 20]]);
    assert.deepEqual((await u.query({ since: T0 + HOUR })).map((r) => [r.instanceId, r.activeMs]), [['i1', 10], ['i1', 20], ['v1', 500]]);
    assert.deepEqual((await u.query({ until: T0 + HOUR })).map((r) => [r.instanceId, r.activeMs]), [['i1', HOUR]]);
    assert.deepEqual((await u.query({ instanceId: 'v1' })).map((r) => r.kind), ['vm']);
    assert.deepEqual(await u.query({ projectIds: [] }), []);
    assert.deepEqual((await u.query({ projectIds: ['p2', 'nope'] })).map((r) => r.instanceId), ['v1']);
    // what was committed survives the store being opened again
    if (target.reopen) {
      const again = await target.reopen();
      assert.deepEqual(await again.usage.query(), all);
      assert.equal((await again.usage.cursor('i1'))?.accountedUntil, T0 + 2 * HOUR);
    }
  });

  test(`${name}: usage: concurrent commits from one cursor position: exactly one wins`, async (t) => {
    const { s } = await setup(t);
    const u = s.usage;
    assert.ok(await u.commit(null, cursorOf(), []));
    const outcomes = await Promise.all(Array.from({ length: 8 }, (_, i) => u.commit(T0, cursorOf({ accountedUntil: T0 + 1000 + i }), [sliceOf()])));
    assert.equal(outcomes.filter(Boolean).length, 1);
    assert.equal((await u.query())[0]?.activeMs, 1000);
  });
}
