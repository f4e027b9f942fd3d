/**
 * The quota ledger shared by several control-plane processes ("replicas": QuotaService instances,
 * each with its own store and so its own connections and in-memory ledger) on one database.
 * PostgreSQL: one throwaway cluster for the file, a fresh database per test. SQLite: replicas
 * share one store object (two connections to one file in one process would block each other's
 * event loop on the file lock), which still gives each its own memory to keep fresh.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { clusterForTests } from '../../../scripts/fixtures/postgres.js';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { QuotaService } from './quota-service.js';
import { checkInvariants } from './invariants.js';
import { settleGoneReplicas } from '../leader/gone-replicas.js';

const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };

const theCluster = clusterForTests('the replica tests');

/** A fresh database, and a way to open stores (replicas) on it; all closed and dropped after the test. */
async function postgresDatabase(t: TestContext): Promise<{ url: string; open: () => Promise<Store> }> {
  const db = await theCluster().freshDatabase();
  const stores: Store[] = [];
  t.after(async () => {
    for (const s of stores) await s.close();
    await db.drop();
  });
  return {
    url: db.url,
    open: async () => {
      const s = await openStore(db.url);
      stores.push(s);
      return s;
    },
  };
}

/** Replicas never poll in these tests unless asked: what they see must come from the mutation path itself. */
async function replica(t: TestContext, store: Store, refreshMs = 0): Promise<QuotaService> {
  const q = await QuotaService.open(store, { refreshMs });
  t.after(() => q.close());
  return q;
}

/** n concurrent admissions spread round-robin over the replicas; the wall time and which were admitted. */
async function admitConcurrently(replicas: QuotaService[], n: number): Promise<{ ms: number; admitted: string[] }> {
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => replicas[i % replicas.length]!.admitContainer(`c${i}`, 'p', cfg)));
  const ms = performance.now() - t0;
  for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'QuotaExceeded', String(r.reason));
  return { ms, admitted: results.flatMap((r, i) => (r.status === 'fulfilled' ? [`c${i}`] : [])) };
}

/** The admission contest: 1,000 concurrent against a hard limit of 100, then a fresh replica checks what is stored. */
async function contest(t: TestContext, replicas: QuotaService[], third: () => Promise<QuotaService>): Promise<number> {
  await replicas[0]!.ensureProject('p', null);
  await replicas[replicas.length - 1]!.setLimits('p', { hard: { instances: 100 } });
  const { ms, admitted } = await admitConcurrently(replicas, 1000);
  assert.equal(admitted.length, 100, 'exactly the limit is admitted over all replicas');

  const fresh = await third();
  assert.equal(fresh.show('p').resources.instances.used, 100, 'the stored aggregate agrees');
  assert.deepEqual(Object.keys(fresh.ledger.snapshot().instances).sort(), admitted.sort(), 'the stored instances are the admitted ones');
  assert.deepEqual(checkInvariants(fresh.ledger.snapshot()), []);
  const audit = await fresh.audit({ limit: 100_000 });
  const seqs = audit.map((e) => e.seq);
  assert.equal(new Set(seqs).size, seqs.length, 'audit seq numbers are unique');
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'and increasing in commit order');
  assert.equal(audit.filter((e) => e.kind === 'admit').length, 100, 'every admission is audited once');
  assert.equal(audit.filter((e) => e.kind === 'reject').length, 900, 'every rejection is audited once');
  for (const q of replicas) await assert.rejects(q.admitContainer('one-more', 'p', cfg), { code: 'QuotaExceeded' });
  t.diagnostic(`${replicas.length} replica(s): 1,000 concurrent admissions in ${Math.round(ms)} ms`);
  return ms;
}

test('postgres, one replica: 1,000 concurrent admissions against a limit of 100 admit exactly 100', async (t) => {
  const db = await postgresDatabase(t);
  await contest(t, [await replica(t, await db.open())], async () => replica(t, await db.open()));
});

test('postgres, two replicas: 1,000 concurrent admissions spread over both against a limit of 100 admit exactly 100 in total', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  const b = await replica(t, await db.open());
  await contest(t, [a, b], async () => replica(t, await db.open()));
});

test('postgres, two replicas: a release on one is seen by the other\'s next admission; limits set on one bind the other', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  const b = await replica(t, await db.open());
  await a.ensureProject('p', null);
  await b.setLimits('p', { hard: { instances: 2 } }); // b catches up on the project a created
  await a.admitContainer('x1', 'p', cfg);
  await b.admitContainer('x2', 'p', cfg);
  await assert.rejects(a.admitContainer('x3', 'p', cfg), { code: 'QuotaExceeded' }, 'a sees b\'s admission');
  await b.release('x1', 'removed'); // b releases what a admitted
  await a.admitContainer('x3', 'p', cfg); // a sees the room b made
  assert.equal(a.show('p').resources.instances.used, 2);

  await a.setLimits('p', { hard: { instances: 5 } });
  await b.admitContainer('x4', 'p', cfg);
  await b.admitContainer('x5', 'p', cfg);
  await b.admitContainer('x6', 'p', cfg);
  await assert.rejects(b.admitContainer('x7', 'p', cfg), { code: 'QuotaExceeded' }, 'b honours the limit a raised');
  await b.release('x6', 'removed');
  await a.setLimits('p', { hard: { instances: 4 } });
  await assert.rejects(b.admitContainer('x8', 'p', cfg), { code: 'QuotaExceeded' }, 'and the limit a lowered');
  await assert.rejects(a.setLimits('p', { hard: { instances: 3 } }), { code: 'Conflict' }, 'a cannot lower below what b admitted');
  assert.equal(b.holds('x1'), false);
  assert.equal(b.holds('x3'), true);
  // (the in-memory audit tails differ: each replica keeps the entries it wrote)
  assert.deepEqual({ ...a.ledger.snapshot(), audit: [] }, { ...b.ledger.snapshot(), audit: [] }, 'after their last mutations both hold the stored ledger');
});

test('postgres, two replicas: "admit unless held" decides on the stored ledger, not on stale memory', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  const b = await replica(t, await db.open());
  await a.ensureProject('p', null);
  await a.setLimits('p', { hard: { instances: 2 } });
  await a.admitContainer('x1', 'p', cfg);
  assert.equal(b.holds('x1'), false, 'b\'s memory is stale (no poll)');
  await b.admitContainerUnlessHeld('x1', 'p', cfg); // held already: nothing happens (not a Conflict)
  await a.release('x1', 'reclaimed');
  assert.equal(b.holds('x1'), true, 'b\'s memory is stale again');
  await b.admitVmUnlessHeld('x1', 'p', { cpus: 1, memoryMiB: 1 }); // released on a: admitted again through b
  await b.admitContainerUnlessHeld('x2', 'p', cfg);
  await assert.rejects(a.admitContainerUnlessHeld('x3', 'p', cfg), { code: 'QuotaExceeded' });
  const fresh = await replica(t, await db.open());
  assert.deepEqual(Object.keys(fresh.ledger.snapshot().instances).sort(), ['x1', 'x2']);
  assert.equal(fresh.ledger.instance('x1')?.kind, 'vm');
});

test('postgres, two replicas: reads catch up with refresh() and with the poll', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  const b = await replica(t, await db.open(), 50);
  await a.ensureProject('p', null);
  await a.admitContainer('x1', 'p', cfg);
  const c = await replica(t, await db.open());
  await a.admitContainer('x2', 'p', cfg);
  assert.equal(c.holds('x2'), false, 'without a poll, memory is as of c\'s last look');
  assert.equal(await c.refresh(), true);
  assert.equal(c.holds('x2'), true);
  assert.equal(await c.refresh(), false, 'nothing new: nothing read');
  const deadline = Date.now() + 5000;
  while (!b.holds('x2') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(b.holds('x2'), true, 'the poll caught b up');
  await a.release('x1', 'removed');
  while (b.holds('x1') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(b.holds('x1'), false, 'a release is seen too (a row that is gone)');
  assert.equal(b.show('p').resources.instances.used, 1);
});

test('postgres, two replicas: a create waiting for a reclaim on one is admitted when the victim is released on the other', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  const b = await replica(t, await db.open());
  await a.ensureProjects([{ id: 'org', parentId: null }, { id: 'lender', parentId: 'org' }, { id: 'borrower', parentId: 'org' }]);
  await a.setLimits('lender', { hard: { instances: 1 }, lendingLimit: { instances: 1 } });
  await a.setLimits('borrower', { borrowingLimit: { instances: 1 }, gracePeriodMs: 60_000 });
  await b.admitContainer('b1', 'borrower', cfg); // borrowed from lender, through b
  const r = await a.admitContainerOrPlanReclaim('l1', 'lender', cfg);
  assert.ok('reclaim' in r, 'a plans a reclaim of b1');
  let kicked = 0;
  b.onReclaimPlanned = () => kicked++;
  await b.refresh();
  assert.equal(kicked, 1, 'b learns of the eviction a planned (its reclaimer re-arms)');
  assert.deepEqual(b.ledger.evictions().map((v) => v.instance), ['b1']);
  const t0 = Date.now();
  await b.release('b1', 'evicted'); // the operation completes in b's step: only the stored ledger tells a
  const d = await r.done;
  assert.equal(d.admitted, true);
  assert.ok(Date.now() - t0 < 2000, `a's waiter noticed within its poll (${Date.now() - t0} ms)`);
  assert.equal(a.holds('l1'), true);
  assert.equal(a.ledger.operation(r.reclaim.id).status, 'done');
});

test('postgres: a write based on stale memory never commits (compare-and-set), even when the freshness check is fooled', async (t) => {
  const db = await postgresDatabase(t);
  const a = await replica(t, await db.open());
  await a.ensureProject('p', null);
  await a.setLimits('p', { hard: { instances: 1 } });
  // b's store lies once about the stored version, as if the lock and the check had gone
  const real = await db.open();
  let lie: number | undefined;
  const lying = new Proxy(real, {
    get(target, key) {
      const v = Reflect.get(target, key, target) as unknown;
      if (key === 'quotaLedgerVersion') {
        return async () => {
          const told = lie;
          lie = undefined;
          return told ?? (await target.quotaLedgerVersion());
        };
      }
      return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
    },
  });
  const b = await replica(t, lying);
  lie = await real.quotaLedgerVersion();
  await a.admitContainer('x1', 'p', cfg); // b's memory does not have it, and b's next look is told nothing changed
  await assert.rejects(b.admitContainer('x2', 'p', cfg), { code: 'QuotaExceeded' }, 'b retried on the stored state and was refused');
  assert.equal(b.holds('x2'), false);
  const fresh = await replica(t, await db.open());
  assert.equal(fresh.show('p').resources.instances.used, 1, 'the limit held in the store');
  assert.deepEqual(Object.keys(fresh.ledger.snapshot().instances), ['x1']);
});

test('postgres store: the ledger\'s version, compare-and-set and the instance rows written since', async (t) => {
  const db = await postgresDatabase(t);
  await storeRows(await db.open());
});

test('sqlite store: the ledger\'s version, compare-and-set and the instance rows written since', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = await openStore(join(dir, 'n.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await storeRows(store);
});

async function storeRows(s: Store): Promise<void> {
  assert.equal(await s.quotaLedgerVersion(), 0);
  assert.equal(await s.saveQuotaStateIfVersion('{"v":1}', 1), false, 'nothing stored: only version 0 is current');
  assert.equal(await s.saveQuotaStateIfVersion('{"v":1}', 0), true);
  assert.equal(await s.quotaLedgerVersion(), 1);
  assert.equal(await s.saveQuotaStateIfVersion('{"v":2}', 0), false, 'a stale version loses');
  assert.equal(await s.loadQuotaState(), '{"v":1}');
  await s.saveQuotaInstances([{ id: 'i1', json: '{"id":"i1"}' }, { id: 'i2', json: '{"id":"i2"}' }]);
  await s.transaction(async () => {
    await s.lockQuotaLedger();
    assert.equal(await s.saveQuotaStateIfVersion('{"v":2}', 1), true);
    await s.saveQuotaInstances([{ id: 'i2', json: '{"id":"i2","n":2}' }, { id: 'i3', json: '{"id":"i3"}' }, { id: 'i1', json: null }]);
  });
  const since = await s.loadQuotaInstancesSince(1);
  assert.deepEqual({ ...since, changed: since.changed.sort() }, { changed: ['{"id":"i2","n":2}', '{"id":"i3"}'], count: 2 }, 'rows carry the version of the state written before them');
  assert.deepEqual(await s.loadQuotaInstancesSince(2), { changed: [], count: 2 });
  assert.deepEqual((await s.quotaInstanceIds()).sort(), ['i2', 'i3']);
  // project rows: the same contract
  await s.saveQuotaProjects([{ id: 'p1', json: '{"id":"p1"}' }, { id: 'p2', json: '{"id":"p2"}' }]);
  await s.transaction(async () => {
    await s.lockQuotaLedger();
    assert.equal(await s.saveQuotaStateIfVersion('{"v":2.5}', 2), true);
    await s.saveQuotaProjects([{ id: 'p2', json: '{"id":"p2","n":2}' }, { id: 'p3', json: '{"id":"p3"}' }, { id: 'p1', json: null }]);
  });
  const projectsSince = await s.loadQuotaProjectsSince(2);
  assert.deepEqual({ ...projectsSince, changed: projectsSince.changed.sort() }, { changed: ['{"id":"p2","n":2}', '{"id":"p3"}'], count: 2 });
  assert.deepEqual(await s.loadQuotaProjectsSince(3), { changed: [], count: 2 });
  assert.deepEqual((await s.quotaProjectIds()).sort(), ['p2', 'p3']);
  assert.deepEqual(await s.loadQuotaProjects(), ['{"id":"p2","n":2}', '{"id":"p3"}'], 'in id order');
  await s.saveQuotaState('{"v":3}');
  assert.equal(await s.quotaLedgerVersion(), 4, 'an unconditional save counts a version too');
  await assert.rejects(s.transaction(async () => {
    assert.equal(await s.saveQuotaStateIfVersion('{"v":4}', 4), true);
    throw new Error('roll back');
  }), /roll back/);
  assert.equal(await s.quotaLedgerVersion(), 4, 'a rolled back write is no version');
}

test('sqlite, two replicas on one store: 1,000 concurrent admissions spread over both admit exactly 100; releases and limits are seen across', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = await openStore(join(dir, 'n.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const a = await replica(t, store);
  const b = await replica(t, store);
  await contest(t, [a, b], () => replica(t, store));
  await a.release('c0', 'removed');
  await b.admitContainer('late', 'p', cfg);
  await b.setLimits('p', { hard: { instances: 101 } });
  await a.admitContainer('later', 'p', cfg);
  await assert.rejects(b.admitContainer('too-late', 'p', cfg), { code: 'QuotaExceeded' });
});

test('a new leader\'s reconcile leaves what another live replica admitted (a create in flight has no record yet) and releases what its own, a gone one or no replica admitted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = await openStore(join(dir, 'n.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = async (replicaId: string | undefined) => {
    const q = await QuotaService.open(store, { refreshMs: 0, ...(replicaId ? { replicaId } : {}) });
    t.after(() => q.close());
    return q;
  };
  const leader = await open('leader');
  const other = await open('other');
  const gone = await open('gone');
  const embedded = await open(undefined);
  await leader.ensureProject('p', null);
  for (const q of [other, gone, embedded]) await q.refresh();
  await other.admitContainer('in-flight', 'p', cfg);
  await gone.admitContainer('left-by-gone', 'p', cfg);
  await leader.admitContainer('left-by-leader', 'p', cfg);
  await embedded.admitContainer('left-before-replicas', 'p', cfg);
  await leader.admitContainer('has-a-record', 'p', cfg);
  await leader.refresh();
  // none of the four but has-a-record has a record; "other" is alive, "gone" is not
  assert.equal(await leader.reconcile(new Set(['has-a-record']), new Set(['other'])), 3);
  await other.refresh();
  assert.equal(other.holds('in-flight'), true, "another live replica's create keeps its charge");
  for (const id of ['left-by-gone', 'left-by-leader', 'left-before-replicas']) assert.equal(other.holds(id), false, `${id} is released`);
  assert.equal(other.holds('has-a-record'), true);
  // once that replica is gone too, the next pass releases it
  assert.equal(await leader.reconcile(new Set(['has-a-record'])), 1);
});

test('sqlite, one replica: 1,000 concurrent admissions against a limit of 100 (the embedded path\'s time)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = await openStore(join(dir, 'n.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await contest(t, [await replica(t, store)], () => replica(t, store));
});

test('sqlite, two processes on one file: 1,000 concurrent admissions split between them admit exactly 100 in total', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const file = join(dir, 'n.db');
  const store = await openStore(file);
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const here = await replica(t, store);
  await here.ensureProject('p', null);
  await here.setLimits('p', { hard: { instances: 100 } });
  const helper = fileURLToPath(new URL('./test-helpers/replica-process.js', import.meta.url));
  const child = spawn(process.execPath, [helper, file, '500', '1000'], { stdio: ['pipe', 'pipe', 'inherit'], timeout: 60_000 });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => (out += d));
  let gone = false;
  const exited = once(child, 'exit').finally(() => (gone = true));
  while (!out.includes('ready\n') && !gone) await Promise.race([once(child.stdout, 'data'), exited]);
  assert.ok(out.includes('ready\n'), `the other process opened the ledger (${out})`);
  const t0 = performance.now();
  child.stdin.write('go\n'); // both start together: the other process's memory goes stale at once
  const mine = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => here.admitContainer(`c${i}`, 'p', cfg)));
  const [code] = (await exited) as [number | null];
  const ms = performance.now() - t0;
  assert.equal(code, 0, 'the other process finished');
  const theirs = JSON.parse(out.slice(out.indexOf('result ') + 7)) as { admitted: string[]; failures: string[] };
  assert.deepEqual(theirs.failures, [], 'the other process met only QuotaExceeded');
  for (const r of mine) if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'QuotaExceeded', String(r.reason));
  const ours = mine.flatMap((r, i) => (r.status === 'fulfilled' ? [`c${i}`] : []));
  assert.equal(ours.length + theirs.admitted.length, 100, `exactly the limit in total (here ${ours.length}, there ${theirs.admitted.length})`);
  const fresh = await replica(t, store);
  assert.deepEqual(Object.keys(fresh.ledger.snapshot().instances).sort(), [...ours, ...theirs.admitted].sort());
  assert.deepEqual(checkInvariants(fresh.ledger.snapshot()), []);
  const seqs = (await fresh.audit({ limit: 100_000 })).map((e) => e.seq);
  assert.equal(new Set(seqs).size, seqs.length, 'audit seq numbers are unique');
  const counts: Record<string, number> = {};
  for (const e of await fresh.audit({ limit: 100_000 })) counts[e.kind] = (counts[e.kind] ?? 0) + 1;
  assert.deepEqual([counts.admit, counts.reject], [100, 900], 'one admit or reject per request, each once');
  t.diagnostic(`2 processes: 1,000 concurrent admissions in ${Math.round(ms)} ms (here ${ours.length}, there ${theirs.admitted.length})`);
});

test('postgres, two processes: 1,000 concurrent admissions against a limit of 100, the other process SIGKILLed in the middle: never over the limit, the leader\'s sweep frees what the dead one held, the limit then fills exactly', async (t) => {
  const db = await postgresDatabase(t);
  const store = await db.open();
  const here = await QuotaService.open(store, { refreshMs: 0, replicaId: 'here' });
  t.after(() => here.close());
  await here.ensureProject('p', null);
  await here.setLimits('p', { hard: { instances: 100 } });
  const helper = fileURLToPath(new URL('./test-helpers/replica-process.js', import.meta.url));
  const child = spawn(process.execPath, [helper, db.url, '500', '1000', 'there'], { stdio: ['pipe', 'pipe', 'inherit'], timeout: 60_000 });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.setEncoding('utf8');
  const exited = once(child, 'exit');
  let killedAfter = -1;
  child.stdout.on('data', (d: string) => {
    out += d;
    // the first admission it reports: the others it sent are in flight, in its memory or in PostgreSQL
    if (killedAfter < 0 && out.includes('\n+')) {
      killedAfter = out.split('\n').filter((l) => l.startsWith('+')).length;
      child.kill('SIGKILL');
    }
  });
  while (!out.includes('ready\n') && child.exitCode === null) await Promise.race([once(child.stdout, 'data'), exited]);
  assert.ok(out.includes('ready\n'), `the other process opened the ledger (${out})`);
  child.stdin.write('go\n');
  const mine = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => here.admitContainer(`c${i}`, 'p', cfg)));
  const [, signal] = (await exited) as [number | null, string | null];
  assert.equal(signal, 'SIGKILL', `the other process was killed in the middle (it printed: ${out.slice(-200)})`);
  assert.ok(!out.includes('result '), 'it did not finish its admissions');
  for (const r of mine) if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'QuotaExceeded', String(r.reason));
  const ours = mine.flatMap((r, i) => (r.status === 'fulfilled' ? [`c${i}`] : []));
  const reported = out.split('\n').filter((l) => l.startsWith('+')).map((l) => l.slice(1));

  // what is stored: never over the limit, whatever the dead process had in flight
  const after = await replica(t, await db.open());
  const stored = after.ledger.snapshot();
  const theirs = Object.values(stored.instances).filter((i) => i.replica === 'there').map((i) => i.id);
  assert.ok(ours.length + theirs.length <= 100, `at most the limit: here ${ours.length}, there ${theirs.length}`);
  assert.equal(after.show('p').resources.instances.used, ours.length + theirs.length);
  for (const id of reported) assert.ok(theirs.includes(id), `${id}, reported admitted before the kill, is stored`);
  assert.deepEqual(checkInvariants(stored), []);

  // the leader's sweep: the dead replica's admissions have no instance record, so they are released; ours stay
  const swept = await settleGoneReplicas({
    store, quota: here, self: 'here',
    registry: { list: async () => [{ id: 'here', hostname: 'h', pid: process.pid, startedAt: 0, lastSeen: Date.now(), apiUrl: null, live: true }] },
    scheduler: { release: async () => undefined },
    settleUncreated: async () => false,
  });
  assert.equal(swept.chargesReleased, theirs.length, 'every charge of the dead replica is released');
  assert.equal(here.show('p').resources.instances.used, ours.length, 'what this replica admitted is kept');

  // the freed units are admitted again, exactly up to the limit
  const refill = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => here.admitContainer(`r${i}`, 'p', cfg)));
  const refilled = refill.filter((r) => r.status === 'fulfilled').length;
  assert.equal(ours.length + refilled, 100, 'the limit fills exactly after the sweep');
  const final = await replica(t, await db.open());
  assert.equal(final.show('p').resources.instances.used, 100);
  assert.deepEqual(checkInvariants(final.ledger.snapshot()), []);
  t.diagnostic(`killed after its first reported admission (${killedAfter} reported); stored: here ${ours.length}, there ${theirs.length}; swept ${swept.chargesReleased}; refilled ${refilled}`);
});
