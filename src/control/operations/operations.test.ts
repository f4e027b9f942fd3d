// OperationService over the asynchronous store: progress writes land in the order they were
// reported (even when the store answers out of order), the outcome is written after them, a
// failed progress write is logged without failing the operation, and reads see what was reported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Conflict } from '../../core/errors.js';
import { openStore } from '../../store/open.js';
import type { OperationRepo, Store } from '../../store/store.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from './operations.js';

/** A store whose operation updates go through `update` (to delay, record or fail them). */
async function setup(t: { after(fn: () => Promise<void>): void }, update?: (real: OperationRepo['update'], ...a: Parameters<OperationRepo['update']>) => ReturnType<OperationRepo['update']>) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ops-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const real = store.operations;
  const operations: OperationRepo = update
    ? Object.assign(Object.create(real) as OperationRepo, { update: (id: string, patch: Parameters<OperationRepo['update']>[1]) => update((i, p) => real.update(i, p), id, patch) })
    : real;
  const wrapped = Object.assign(Object.create(store) as Store, { operations });
  const events = new EventBus();
  return { store, events, ops: new OperationService(wrapped, events) };
}

test('operations: progress reported before the work\'s first await is in the record start returns; the outcome is stored and waited for', async (t) => {
  const { ops } = await setup(t);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const op = await ops.start('test.work', 'target', 'p1', async (h) => {
    h.progress({ phase: 'one' });
    await gate;
    return { answer: 42 };
  });
  assert.equal(op.status, 'running');
  assert.deepEqual(op.progress, { phase: 'one' });
  assert.equal((await ops.wait(op.id, 50)).status, 'running', 'a wait that times out answers the current record');
  release();
  const done = await ops.wait(op.id, 5000);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.result, { answer: 42 });
  assert.deepEqual((await ops.get(op.id)).result, { answer: 42 });
  await assert.rejects(ops.get('nope'), { code: 'NotFound' });
});

test('operations: progress writes land in the order reported even when the store answers out of order, and the outcome after them', async (t) => {
  const landed: unknown[] = [];
  // the first write is the slowest: unordered writes would land last-first
  const delays = [300, 100, 0];
  const { ops, store } = await setup(t, async (real, id, patch) => {
    await sleep(delays.shift() ?? 0);
    landed.push(patch.status ?? patch.progress);
    return real(id, patch);
  });
  const op = await ops.start('test.work', 'target', 'p1', async (h) => {
    h.progress({ step: 1 });
    await sleep(120); // more than the publishing interval: each report is written
    h.progress({ step: 2 });
    return 'ok';
  });
  const done = await ops.wait(op.id, 5000);
  assert.deepEqual(landed, [{ step: 1 }, { step: 2 }, 'succeeded']);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.progress, { step: 2 });
  assert.deepEqual((await store.operations.get(op.id))?.progress, { step: 2 }, 'stored, not only returned');
});

test('operations: a read waits for the progress reported before it', async (t) => {
  const { ops } = await setup(t, async (real, id, patch) => {
    await sleep(200);
    return real(id, patch);
  });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let report!: (p: Record<string, unknown>) => void;
  const op = await ops.start('test.work', 'target', 'p1', async (h) => {
    report = (p) => h.progress(p);
    await gate;
  });
  await sleep(120);
  report({ step: 'late' });
  assert.deepEqual((await ops.get(op.id)).progress, { step: 'late' }, 'the slow write was waited for');
  release();
  assert.equal((await ops.wait(op.id, 5000)).status, 'succeeded');
});

test('operations: a failed progress write is logged, and neither fails the work nor keeps the outcome from being stored', async (t) => {
  let failNext = true;
  const { ops } = await setup(t, async (real, id, patch) => {
    if (failNext && patch.progress && !patch.status) {
      failNext = false;
      throw new Error('disk full');
    }
    return real(id, patch);
  });
  const op = await ops.start('test.work', 'target', 'p1', async (h) => {
    h.progress({ step: 1 });
    await sleep(10);
    throw Object.assign(new Error('the work failed'), { code: 'Internal' });
  });
  const done = await ops.wait(op.id, 5000);
  assert.equal(done.status, 'failed');
  assert.match(done.error?.message ?? '', /the work failed/, 'the work\'s error, not the write\'s');
  assert.deepEqual(done.progress, { step: 1 }, 'the outcome carries the last progress');
});

test('operations: after a restart, operations left running are failed', async (t) => {
  const { ops, store, events } = await setup(t);
  const op = await ops.start('test.work', 'target', 'p1', () => new Promise(() => undefined));
  const after = new OperationService(store, events);
  assert.equal(await after.failInterrupted(), 1);
  const rec = await after.get(op.id);
  assert.equal(rec.status, 'failed');
  assert.equal(rec.error?.code, 'Unavailable');
  assert.equal((await after.wait(op.id, 10)).status, 'failed');
  assert.equal(await after.failInterrupted(), 0);
  assert.deepEqual((await after.list()).map((o) => o.id), [op.id]);
});

test('operations: failInterrupted leaves a live replica\'s operation running and fails a gone one\'s, publishing the failure', async (t) => {
  const { store, events } = await setup(t);
  const a = new OperationService(store, events, { replicaId: 'replica-a' });
  const b = new OperationService(store, events, { replicaId: 'replica-b' });
  const now = Date.now();
  await store.operations.registerReplica({ id: 'replica-a', hostname: 'h', pid: 1, startedAt: now, lastSeen: now, apiUrl: null });
  const op = await a.start('test.work', 'target', 'p1', () => new Promise(() => undefined));
  assert.equal(op.replica, 'replica-a');
  assert.equal(await b.failInterrupted(), 0, 'replica-a is alive');
  assert.equal((await b.get(op.id)).status, 'running');
  // replica-a's heartbeat stops: 20 s later it is gone
  await store.operations.touchReplica('replica-a', now - 20_000);
  const seen: string[] = [];
  events.on((e) => seen.push(`${e.id}:${e.action}`));
  assert.equal(await b.failInterrupted(), 1);
  assert.equal((await b.get(op.id)).status, 'failed');
  assert.deepEqual(seen, [`${op.id}:failed`], 'waiters on other replicas hear of it');
});

test('operations: a wait on another replica\'s operation wakes on its end event, and without events by polling the store', async (t) => {
  const { store, events } = await setup(t);
  const a = new OperationService(store, events, { replicaId: 'replica-a' });
  // b shares a's events (as the relay makes it) but not its work
  const b = new OperationService(store, events, { replicaId: 'replica-b', waitPollMs: 60_000 });
  let release!: () => void;
  const op = await a.start('test.work', 'target', 'p1', () => new Promise<string>((r) => (release = () => r('done'))));
  const waited = b.wait(op.id, 30_000);
  await sleep(50);
  const started = Date.now();
  release();
  const done = await waited;
  assert.equal(done.status, 'succeeded');
  assert.ok(Date.now() - started < 5_000, `woken by the event, not the 60 s poll (${Date.now() - started} ms)`);
  // no events at all (a relay that lost them): the poll finds the end
  const deaf = new OperationService(store, new EventBus(), { replicaId: 'replica-c', waitPollMs: 100 });
  const op2 = await a.start('test.work', 'target', 'p1', () => new Promise<string>((r) => (release = () => r('done'))));
  const waited2 = deaf.wait(op2.id, 30_000);
  await sleep(50);
  release();
  assert.equal((await waited2).status, 'succeeded');
  // a wait that times out answers the current record; an aborted one returns at once
  const op3 = await a.start('test.work', 'target', 'p1', () => new Promise(() => undefined));
  assert.equal((await b.wait(op3.id, 50)).status, 'running');
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const t0 = Date.now();
  assert.equal((await b.wait(op3.id, 30_000, ac.signal)).status, 'running');
  assert.ok(Date.now() - t0 < 1_000);
});

test('operations: a failed operation\'s record (its project\'s members read it) names no host path; the error thrown keeps it for administrators', async (t) => {
  const { ops } = await setup(t);
  const missing = '/var/lib/nimbus-ops-test/images/upload-1/layer.tar';
  // Node's own error through an agent call, and a typed error whose whole text is the administrators'
  const op = await ops.start('test.work', 'target', 'p1', async () => readFile(missing));
  const done = await ops.wait(op.id, 5000);
  assert.equal(done.status, 'failed');
  assert.equal(done.error?.message, "ENOENT: no such file or directory, open '<host path>'");
  const op2 = await ops.start('test.work', 'target', 'p1', async () => {
    throw new Conflict('refusing to remove container c1: still mounted', { id: 'c1' }, { adminMessage: 'refusing to remove /var/lib/nimbus/containers/c1: still mounted: /var/lib/nimbus/containers/c1/rootfs' });
  });
  assert.deepEqual((await ops.wait(op2.id, 5000)).error, { code: 'Conflict', message: 'refusing to remove container c1: still mounted' });
});
