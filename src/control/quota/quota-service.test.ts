import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { QuotaService } from './quota-service.js';

const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };

/** A store file in a temporary directory removed after the test. */
function storeFile(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'nimbus.db');
}

test('quota service: the audit goes to its own table, the saved state does not grow with history, both survive a reopen', (t) => {
  const file = storeFile(t);
  let store = new SqliteStore(file);
  let q = new QuotaService(store);
  q.ensureProject('p', null);
  q.setLimits('p', { hard: { instances: 3 } });
  const sizes: number[] = [];
  for (let i = 0; i < 300; i++) {
    q.admitContainer(`c${i}`, 'p', cfg);
    q.release(`c${i}`, 'removed');
    sizes.push(store.loadQuotaState()!.length);
  }
  assert.ok(sizes[299]! - sizes[10]! < 8, `state size is independent of the number of past admissions (${sizes[10]} → ${sizes[299]} bytes)`);
  assert.throws(() => {
    for (let i = 0; i < 4; i++) q.admitContainer(`x${i}`, 'p', cfg);
  }, { code: 'QuotaExceeded' });
  const all = q.audit({});
  assert.ok(all.length >= 604, `every admit, release and reject is audited (${all.length})`);
  assert.ok(all.some((e) => e.kind === 'reject' && e.instance === 'x3'));
  assert.deepEqual(all.map((e) => e.seq), [...all.map((e) => e.seq)].sort((a, b) => a - b), 'oldest first');
  store.close();

  store = new SqliteStore(file);
  q = new QuotaService(store);
  assert.equal(q.audit({}).length, all.length, 'the audit survives a restart');
  assert.equal(q.audit({ limit: 5 }).at(-1)!.seq, all.at(-1)!.seq, 'limit keeps the newest');
  assert.equal(q.audit({ sinceSeq: all.at(-3)!.seq }).length, 2);
  assert.equal(q.show('p').resources.instances?.used, 3, 'the ledger state survived too');
  store.close();
});

test('quota service: instances are saved as rows (the core does not grow with them), survive a reopen, and a state saved whole is moved into rows', (t) => {
  const file = storeFile(t);
  let store = new SqliteStore(file);
  let q = new QuotaService(store);
  q.ensureProject('p', null);
  const coreSizes: number[] = [];
  for (let i = 0; i < 200; i++) {
    q.admitContainer(`c${i}`, 'p', { ...cfg, cpus: 1 });
    coreSizes.push(store.loadQuotaState()!.length);
  }
  assert.ok(coreSizes[199]! - coreSizes[9]! < 16, `the core does not grow with instances (${coreSizes[9]} → ${coreSizes[199]} bytes; only counters get longer)`);
  assert.equal(store.loadQuotaInstances().length, 200);
  q.release('c7', 'removed');
  assert.equal(store.loadQuotaInstances().length, 199, 'a release removes its row');
  store.close();

  store = new SqliteStore(file);
  q = new QuotaService(store);
  assert.equal(q.holds('c8'), true);
  assert.equal(q.holds('c7'), false);
  assert.equal(q.show('p').resources.cpus?.used, 199, 'aggregates and rows agree after a reopen');
  // a state written whole, as before the rows: its instances move into rows on the next start
  const whole = JSON.parse(store.loadQuotaState()!) as { instances: Record<string, unknown> };
  for (const r of store.loadQuotaInstances()) {
    const inst = JSON.parse(r) as { id: string };
    whole.instances[inst.id] = inst;
  }
  store.saveQuotaInstances(Object.keys(whole.instances).map((id) => ({ id, json: null })));
  store.saveQuotaState(JSON.stringify(whole));
  store.close();

  store = new SqliteStore(file);
  q = new QuotaService(store);
  assert.equal(q.holds('c8'), true, 'the instances of a state saved whole are kept');
  assert.equal(store.loadQuotaInstances().length, 199, '...as rows');
  assert.deepEqual((JSON.parse(store.loadQuotaState()!) as { instances: object }).instances, {}, '...and no longer in the core');
  assert.equal(q.show('p').resources.cpus?.used, 199);
  store.close();
});

test('quota service: a create needing a reclaim gets the plan at once and is admitted when the victim is released; a restart cancels one still pending', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = new SqliteStore(join(dir, 'nimbus.db'));
  t.after(() => { store.close(); rmSync(dir, { recursive: true, force: true }); });
  const q = new QuotaService(store);
  q.ensureProject('org', null);
  q.ensureProject('lender', 'org');
  q.ensureProject('borrower', 'org');
  q.setLimits('lender', { hard: { instances: 1 }, lendingLimit: { instances: 1 } });
  q.setLimits('borrower', { borrowingLimit: { instances: 1 }, gracePeriodMs: 1000 });
  q.admitContainer('b1', 'borrower', cfg);
  const r = q.admitContainerOrPlanReclaim('l1', 'lender', cfg);
  assert.ok('reclaim' in r, 'a reclaim is planned, not awaited');
  assert.deepEqual(r.reclaim.plan.map((v) => [v.instance, v.project]), [['b1', 'borrower']]);
  q.release('b1', 'evicted');
  assert.equal((await r.done).admitted, true);
  assert.equal(q.holds('l1'), true);

  q.release('l1', 'removed');
  q.admitContainer('b2', 'borrower', cfg);
  const pending = q.admitContainerOrPlanReclaim('l2', 'lender', cfg);
  assert.ok('reclaim' in pending);
  q.reconcile(new Set(['b2'])); // as after a restart: l2 was never created
  assert.equal(q.ledger.operation(pending.reclaim.id).status, 'cancelled');
  assert.deepEqual(q.ledger.evictions(), [], 'b2 is spared');
  await assert.rejects(pending.done, { code: 'QuotaExceeded' });
});
