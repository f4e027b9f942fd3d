// OperationService over the asynchronous store: progress writes land in the order they were
// reported (even when the store answers out of order), the outcome is written after them, a
// failed progress write is logged without failing the operation, and reads see what was reported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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
    ? { get: (id) => real.get(id), list: (n) => real.list(n), insert: (op) => real.insert(op), update: (id, patch) => update((i, p) => real.update(i, p), id, patch) }
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
