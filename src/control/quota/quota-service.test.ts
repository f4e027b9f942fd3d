import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { QuotaService } from './quota-service.js';
import { checkInvariants } from './invariants.js';
import { Reclaimer } from './reclaimer.js';

const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };

/** A store file in a temporary directory removed after the test. */
function storeFile(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'nimbus.db');
}

test('quota service: the audit goes to its own table, the saved state does not grow with history, both survive a reopen', async (t) => {
  const file = storeFile(t);
  let store = await openStore(file);
  let q = await QuotaService.open(store);
  await q.ensureProject('p', null);
  await q.setLimits('p', { hard: { instances: 3 } });
  const sizes: number[] = [];
  for (let i = 0; i < 300; i++) {
    await q.admitContainer(`c${i}`, 'p', cfg);
    await q.release(`c${i}`, 'removed');
    sizes.push((await store.loadQuotaState())!.length);
  }
  assert.ok(sizes[299]! - sizes[10]! < 8, `state size is independent of the number of past admissions (${sizes[10]} → ${sizes[299]} bytes)`);
  await assert.rejects(async () => {
    for (let i = 0; i < 4; i++) await q.admitContainer(`x${i}`, 'p', cfg);
  }, { code: 'QuotaExceeded' });
  const all = await q.audit({});
  assert.ok(all.length >= 604, `every admit, release and reject is audited (${all.length})`);
  assert.ok(all.some((e) => e.kind === 'reject' && e.instance === 'x3'), 'a rejection is persisted though it throws');
  assert.deepEqual(all.map((e) => e.seq), [...all.map((e) => e.seq)].sort((a, b) => a - b), 'oldest first');
  await store.close();

  store = await openStore(file);
  q = await QuotaService.open(store);
  assert.equal((await q.audit({})).length, all.length, 'the audit survives a restart');
  assert.equal((await q.audit({ limit: 5 })).at(-1)!.seq, all.at(-1)!.seq, 'limit keeps the newest');
  assert.equal((await q.audit({ sinceSeq: all.at(-3)!.seq })).length, 2);
  assert.equal(q.show('p').resources.instances?.used, 3, 'the ledger state survived too');
  await store.close();
});

test('quota service: instances are saved as rows (the core does not grow with them), survive a reopen, and a state saved whole is moved into rows', async (t) => {
  const file = storeFile(t);
  let store = await openStore(file);
  let q = await QuotaService.open(store);
  await q.ensureProject('p', null);
  const coreSizes: number[] = [];
  for (let i = 0; i < 200; i++) {
    await q.admitContainer(`c${i}`, 'p', { ...cfg, cpus: 1 });
    coreSizes.push((await store.loadQuotaState())!.length);
  }
  assert.ok(coreSizes[199]! - coreSizes[9]! < 16, `the core does not grow with instances (${coreSizes[9]} → ${coreSizes[199]} bytes; only counters get longer)`);
  assert.equal((await store.loadQuotaInstances()).length, 200);
  await q.release('c7', 'removed');
  assert.equal((await store.loadQuotaInstances()).length, 199, 'a release removes its row');
  await store.close();

  store = await openStore(file);
  q = await QuotaService.open(store);
  assert.equal(q.holds('c8'), true);
  assert.equal(q.holds('c7'), false);
  assert.equal(q.show('p').resources.cpus?.used, 199, 'aggregates and rows agree after a reopen');
  // a state written whole, as before the rows: its instances move into rows on the next start
  const whole = JSON.parse((await store.loadQuotaState())!) as { instances: Record<string, unknown> };
  for (const r of await store.loadQuotaInstances()) {
    const inst = JSON.parse(r) as { id: string };
    whole.instances[inst.id] = inst;
  }
  await store.saveQuotaInstances(Object.keys(whole.instances).map((id) => ({ id, json: null })));
  await store.saveQuotaState(JSON.stringify(whole));
  await store.close();

  store = await openStore(file);
  q = await QuotaService.open(store);
  assert.equal(q.holds('c8'), true, 'the instances of a state saved whole are kept');
  assert.equal((await store.loadQuotaInstances()).length, 199, '...as rows');
  assert.deepEqual((JSON.parse((await store.loadQuotaState())!) as { instances: object }).instances, {}, '...and no longer in the core');
  assert.equal(q.show('p').resources.cpus?.used, 199);
  await store.close();
});

test('quota service: a ledger saved whole (audit, projects and instances in the state, as before their tables) is moved into its tables on open', async (t) => {
  const old = await openStore(storeFile(t));
  t.after(() => old.close());
  const q0 = await QuotaService.open(old);
  await q0.ensureProject('p', null);
  await q0.admitContainer('c1', 'p', cfg);
  await q0.admitContainer('c2', 'p', cfg);
  await q0.release('c2', 'removed');
  const whole = q0.ledger.snapshot(); // the whole state, as it was saved before: audit and instances inside
  assert.ok(whole.audit.length >= 4 && Object.keys(whole.instances).length === 1);

  const store = await openStore(storeFile(t));
  t.after(() => store.close());
  await store.saveQuotaState(JSON.stringify(whole));
  const q = await QuotaService.open(store);
  assert.deepEqual((await q.audit({})).map((e) => e.seq), whole.audit.map((e) => e.seq), 'the audit entries are in their table');
  assert.equal((await store.loadQuotaInstances()).length, 1, 'the instance is a row');
  assert.deepEqual((await store.loadQuotaProjects()).map((j) => (JSON.parse(j) as { id: string }).id), ['p'], 'the project is a row');
  const core = JSON.parse((await store.loadQuotaState())!) as { audit: unknown[]; instances: object; projects: object };
  assert.deepEqual([core.audit, core.instances, core.projects], [[], {}, {}], 'none is left in the state');
  assert.equal(q.holds('c1'), true);
  assert.equal(q.show('p').resources.instances.used, 1);
  await q.admitContainer('c3', 'p', cfg);
  assert.ok((await q.audit({})).at(-1)!.seq > whole.audit.at(-1)!.seq, 'new entries follow the moved ones');
});

test('quota service: projects are rows too: with 1,000 projects an admission writes the few it touched, and the core stays small', async (t) => {
  const file = storeFile(t);
  const base = await openStore(file);
  t.after(() => base.close());
  const written: string[] = [];
  const store = new Proxy(base, {
    get(target, key) {
      const v = Reflect.get(target, key, target) as unknown;
      if (key !== 'saveQuotaProjects' || typeof v !== 'function') return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      return (rows: { id: string }[]) => {
        written.push(...rows.map((r) => r.id));
        return (v as (r: unknown) => Promise<void>).call(target, rows);
      };
    },
  });
  const q = await QuotaService.open(store);
  // a tree: a root and 1,000 projects under it, each given a share
  await q.ensureProjects([{ id: 'root', parentId: null }, ...Array.from({ length: 1000 }, (_, i) => ({ id: `p${i}`, parentId: 'root' }))]);
  assert.equal(written.length, 1001, 'the projects made are written once each');
  await q.setLimits('p500', { hard: { instances: 2, cpus: 2, memory: 2 ** 30 } });
  written.length = 0;
  await q.admitContainer('c1', 'p500', { ...cfg, cpus: 1 });
  assert.ok(written.includes('p500') && written.length <= 2, `an admission writes the projects it touched: ${written.join(', ')}`);
  const core = (await base.loadQuotaState())!;
  assert.ok(core.length < 4096, `the core holds no project (${core.length} bytes)`);
  written.length = 0;
  await q.release('c1', 'removed');
  assert.ok(written.includes('p500') && written.length <= 2, `a release too: ${written.join(', ')}`);
  const reopened = await QuotaService.open(base);
  assert.equal(reopened.show('p500').resources.cpus?.used, 0);
  assert.equal(Object.keys(reopened.ledger.snapshot().projects).length, 1001, 'every project read back from its row');
  assert.deepEqual(checkInvariants(reopened.ledger.snapshot()), []);
});

test('quota service: the audit of some projects is the newest of theirs, not of everyone\'s, oldest first', async (t) => {
  const store = await openStore(storeFile(t));
  t.after(() => store.close());
  const q = await QuotaService.open(store);
  await q.ensureProject('mine', null);
  await q.ensureProject('busy', null);
  for (let i = 0; i < 3; i++) await q.admitContainer(`m${i}`, 'mine', cfg);
  for (let i = 0; i < 20; i++) await q.admitContainer(`b${i}`, 'busy', cfg);
  assert.deepEqual((await q.audit({ limit: 5 })).map((e) => e.project), Array(5).fill('busy'), 'everyone\'s newest are busy\'s');
  const mine = await q.audit({ projects: ['mine'], limit: 2 });
  assert.deepEqual(mine.map((e) => e.instance), ['m1', 'm2'], 'the newest two of mine, oldest first');
  const both = await q.audit({ projects: ['mine', 'busy', ...Array.from({ length: 700 }, (_, i) => `none${i}`)], limit: 3 });
  assert.deepEqual(both.map((e) => e.instance), ['b17', 'b18', 'b19'], 'past one IN list, merged by seq');
  assert.deepEqual(await q.audit({ projects: [], limit: 3 }), []);
});

test('quota service: 200 concurrent admissions against a limit of 100 admit exactly 100, and the store agrees after a reopen', async (t) => {
  const file = storeFile(t);
  let store = await openStore(file);
  let q = await QuotaService.open(store);
  await q.ensureProject('p', null);
  await q.setLimits('p', { hard: { instances: 100 } });
  const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => q.admitContainer(`c${i}`, 'p', cfg)));
  const admitted = results.filter((r) => r.status === 'fulfilled').length;
  assert.equal(admitted, 100, 'exactly the limit is admitted');
  for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'QuotaExceeded');
  assert.equal(q.show('p').resources.instances.used, 100);
  const held = results.flatMap((r, i) => (r.status === 'fulfilled' ? [`c${i}`] : []));
  assert.deepEqual(checkInvariants(q.ledger.snapshot()), []);
  const audit = await q.audit({});
  assert.equal(audit.filter((e) => e.kind === 'admit').length, 100);
  assert.equal(audit.filter((e) => e.kind === 'reject').length, 100);
  await store.close();

  store = await openStore(file);
  q = await QuotaService.open(store);
  assert.equal(q.show('p').resources.instances.used, 100, 'the persisted aggregate agrees');
  assert.equal((await store.loadQuotaInstances()).length, 100, 'one row per admitted instance');
  assert.deepEqual(Object.keys(q.ledger.snapshot().instances).sort(), held.sort(), 'the same instances');
  assert.deepEqual(checkInvariants(q.ledger.snapshot()), []);
  await assert.rejects(q.admitContainer('one-more', 'p', cfg), { code: 'QuotaExceeded' });
  await store.close();
});

type QuotaWrite = 'saveQuotaStateIfVersion' | 'saveQuotaProjects' | 'saveQuotaInstances' | 'appendQuotaAudit';

/** The store, but the next write of a kind given to fail() throws (inside the transaction: it rolls back). */
function flaky(store: Store): { store: Store; fail: (write: QuotaWrite) => void } {
  const failing = new Set<QuotaWrite>();
  const wrapped = new Proxy(store, {
    get(target, key) {
      const v = Reflect.get(target, key, target) as unknown;
      if (typeof v !== 'function') return v;
      const fn = v as (...a: unknown[]) => unknown;
      return (...args: unknown[]) => {
        if (failing.delete(key as QuotaWrite)) return Promise.reject(new Error(`disk full (${String(key)})`));
        return fn.apply(target, args);
      };
    },
  });
  return { store: wrapped, fail: (write) => failing.add(write) };
}

test('quota service: a write that fails leaves the ledger (memory and store) as before, and the next change goes through', async (t) => {
  const file = storeFile(t);
  const base = await openStore(file);
  t.after(() => base.close());
  const { store, fail } = flaky(base);
  const q = await QuotaService.open(store);
  await q.ensureProject('p', null);
  await q.setLimits('p', { hard: { instances: 2 } });
  await q.admitContainer('c1', 'p', cfg);
  const before = q.ledger.snapshot();
  const auditBefore = (await q.audit({})).length;

  fail('appendQuotaAudit'); // the last write: the state and the instance row were written, and must be rolled back
  await assert.rejects(q.admitContainer('c2', 'p', cfg), /disk full/);
  assert.equal(q.holds('c2'), false, 'the admission is not kept in memory');
  assert.deepEqual({ ...q.ledger.snapshot(), audit: [] }, { ...before, audit: [] }, 'the in-memory ledger is as before');
  assert.equal((await store.loadQuotaInstances()).length, 1, 'nor in the store');
  assert.equal((await q.audit({})).length, auditBefore, 'nor its audit entries');

  fail('saveQuotaStateIfVersion'); // the state is written compare-and-set on its version
  await assert.rejects(q.setLimits('p', { hard: { instances: 5 } }), /disk full/);
  assert.equal(q.show('p').resources.instances.hard, 2, 'a limit change that was not stored is undone');
  fail('saveQuotaInstances');
  await assert.rejects(q.release('c1', 'removed'), /disk full/);
  assert.equal(q.holds('c1'), true, 'a release that was not stored is undone');
  fail('saveQuotaProjects'); // the project's row holds the aggregates the admission changed
  await assert.rejects(q.admitContainer('c2', 'p', cfg), /disk full/);
  assert.equal(q.holds('c2'), false, 'an admission whose project row was not stored is undone');
  assert.equal(q.show('p').resources.instances.used, 1);

  // what was lost is lost whole: c2 and a third still fit exactly the limit
  await q.admitContainer('c2', 'p', cfg);
  await assert.rejects(q.admitContainer('c3', 'p', cfg), { code: 'QuotaExceeded' });
  const reopened = await QuotaService.open(base);
  assert.deepEqual(reopened.ledger.snapshot().instances, q.ledger.snapshot().instances, 'memory and store agree');
  assert.equal(reopened.show('p').resources.instances.used, 2);
  assert.deepEqual(checkInvariants(reopened.ledger.snapshot()), []);
});

test('quota service: the ledger cannot be changed behind the service (the change would not be stored)', async (t) => {
  const store = await openStore(storeFile(t));
  t.after(() => store.close());
  const q = await QuotaService.open(store);
  await q.ensureProject('p', null);
  assert.throws(() => q.ledger.setLimits('p', { hard: { instances: 1 } }, Date.now()), /only through QuotaService/);
  assert.equal(q.show('p').resources.instances.hard > 1, true);
});

test('quota service: store work given to a ledger change commits with it or not at all', async (t) => {
  const store = await openStore(storeFile(t));
  t.after(() => store.close());
  const q = await QuotaService.open(store);
  const project = (id: string, parentId: string | null) => ({ id, name: id, parentId, createdAt: new Date().toISOString() });
  await q.ensureProject('org', null, () => store.projects.insert(project('org', null)));
  assert.ok(q.ledger.hasProject('org'));
  assert.ok(await store.projects.get('org'));
  // the store refuses (a sibling of that name exists): the ledger does not get the project either
  await assert.rejects(q.ensureProject('org2', null, () => store.projects.insert({ ...project('org2', null), name: 'org' })), { code: 'AlreadyExists' });
  assert.equal(q.ledger.hasProject('org2'), false);
  // the ledger refuses (the project still holds an instance): the row stays
  await q.ensureProject('team', 'org', () => store.projects.insert(project('team', 'org')));
  await q.setLimits('team', { hard: { instances: 1 } }); // a child starts with nothing
  await q.admitContainer('c1', 'team', cfg);
  await assert.rejects(q.deleteProject('team', () => store.projects.delete('team')), { code: 'Conflict' });
  assert.ok(await store.projects.get('team'), 'the row is not deleted');
  assert.ok(q.ledger.hasProject('team'));
  await q.release('c1', 'removed');
  await q.deleteProject('team', () => store.projects.delete('team'));
  assert.equal(q.ledger.hasProject('team'), false);
  assert.equal(await store.projects.get('team'), undefined);
});

test('quota service: a create needing a reclaim gets the plan at once and is admitted when the victim is released; a restart cancels one still pending', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => { await store.close(); rmSync(dir, { recursive: true, force: true }); });
  const q = await QuotaService.open(store);
  await q.ensureProjects([{ id: 'org', parentId: null }, { id: 'lender', parentId: 'org' }, { id: 'borrower', parentId: 'org' }]);
  await q.ensureProjects([{ id: 'org', parentId: null }]); // known ones are left as they are
  assert.deepEqual(q.show('org').children, ['lender', 'borrower']);
  await q.setLimits('lender', { hard: { instances: 1 }, lendingLimit: { instances: 1 } });
  await q.setLimits('borrower', { borrowingLimit: { instances: 1 }, gracePeriodMs: 1000 });
  await q.admitContainer('b1', 'borrower', cfg);
  let kicked = 0;
  q.onReclaimPlanned = () => kicked++;
  const r = await q.admitContainerOrPlanReclaim('l1', 'lender', cfg);
  assert.ok('reclaim' in r, 'a reclaim is planned, not awaited');
  assert.equal(kicked, 1, 'the reclaimer is re-armed');
  assert.deepEqual(r.reclaim.plan.map((v) => [v.instance, v.project]), [['b1', 'borrower']]);
  await q.release('b1', 'evicted');
  assert.equal((await r.done).admitted, true);
  assert.equal(q.holds('l1'), true);

  await q.release('l1', 'removed');
  await q.admitContainer('b2', 'borrower', cfg);
  const pending = await q.admitContainerOrPlanReclaim('l2', 'lender', cfg);
  assert.ok('reclaim' in pending);
  assert.equal(await q.reconcile(new Set(['b2'])), 0); // as after a restart: l2 was never created
  assert.equal(q.ledger.operation(pending.reclaim.id).status, 'cancelled');
  assert.deepEqual(q.ledger.evictions(), [], 'b2 is spared');
  await assert.rejects(pending.done, { code: 'QuotaExceeded' });
  assert.equal(await q.reconcile(new Set()), 1, 'b2 is released once it no longer exists');
  assert.equal(q.holds('b2'), false);
});

test('reclaimer: a due eviction is carried out, its quota released, and the waiting create admitted', async (t) => {
  const store = await openStore(storeFile(t));
  t.after(() => store.close());
  const q = await QuotaService.open(store);
  await q.ensureProjects([{ id: 'org', parentId: null }, { id: 'lender', parentId: 'org' }, { id: 'borrower', parentId: 'org' }]);
  await q.setLimits('lender', { hard: { instances: 1 }, lendingLimit: { instances: 1 } });
  await q.setLimits('borrower', { borrowingLimit: { instances: 1 }, gracePeriodMs: 0 });
  await q.admitContainer('b1', 'borrower', cfg);
  const evicted: string[] = [];
  const reclaimer = new Reclaimer(q, async (id, action) => {
    evicted.push(`${id}:${action}`);
  });
  t.after(() => reclaimer.stop());
  q.onReclaimPlanned = () => reclaimer.kick();
  const r = await q.admitContainerOrPlanReclaim('l1', 'lender', cfg);
  assert.ok('reclaim' in r);
  assert.equal((await r.done).admitted, true);
  assert.deepEqual(evicted, ['b1:stop']);
  assert.equal(q.holds('b1'), false);
  assert.equal(q.holds('l1'), true);
  const reopened = await QuotaService.open(store);
  assert.equal(reopened.ledger.operation(r.reclaim.id).status, 'done', 'the completion is stored');
});
