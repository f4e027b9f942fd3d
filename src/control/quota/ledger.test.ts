import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AdmissionService } from './async.js';
import { checkInvariants } from './invariants.js';
import { Ledger, type AdmitRequest } from './ledger.js';

const one = (project: string, id: string, extra: Partial<AdmitRequest> = {}): AdmitRequest => ({ instanceId: id, project, resources: {}, ...extra });
const ok = (l: Ledger) => assert.deepEqual(checkInvariants(l.snapshot()), []);

function twoTeams(opts: { lend?: boolean; grace?: number } = {}): Ledger {
  const l = new Ledger();
  l.createProject('P', null, { hard: { instances: 16 } });
  const lim = opts.lend ? { lendingLimit: { instances: 8 }, borrowingLimit: { instances: 8 } } : {};
  l.createProject('T1', 'P', { hard: { instances: 8 }, gracePeriodMs: opts.grace ?? 0, ...lim });
  l.createProject('T2', 'P', { hard: { instances: 8 }, gracePeriodMs: opts.grace ?? 0, ...lim });
  return l;
}

test('article ORG example: hard 1000, used 100, reserved 100, children 300+400 → allocated 700, free 100', () => {
  const l = new Ledger();
  l.createProject('ORG', null, { hard: { instances: 1000 }, reserved: { instances: 100 } });
  l.createProject('Dept-1', 'ORG', { hard: { instances: 300 } });
  l.createProject('Dept-2', 'ORG', { hard: { instances: 400 } });
  for (let i = 0; i < 100; i++) assert.ok(l.admit(one('ORG', `org-${i}`)).admitted);
  const f = l.show('ORG').resources.instances;
  assert.deepEqual([f.hard, f.used, f.reserved, f.allocated, f.free], [1000, 100, 100, 700, 100]);
  // the 101st own instance does not fit: free is 100 → 0 after 100 more, then rejected by ORG's free line
  for (let i = 100; i < 200; i++) assert.ok(l.admit(one('ORG', `org-${i}`)).admitted);
  const d = l.admit(one('ORG', 'org-200'));
  assert.equal(d.admitted, false);
  assert.deepEqual(d.decidedBy, { project: 'ORG', resource: 'instances', line: 'free' });
  for (let i = 100; i < 200; i++) l.release(`org-${i}`);
  // a child's hard limit can only be raised within the parent's free (100)
  assert.throws(() => l.setLimits('Dept-1', { hard: { instances: 401 } }), { code: 'QuotaExceeded', message: /parent ORG's free 100/ });
  l.setLimits('Dept-1', { hard: { instances: 400 } });
  assert.equal(l.show('ORG').resources.instances.free, 0);
  assert.equal(l.show('ORG').resources.instances.allocated, 800);
  // a child's usage is charged to the child only
  assert.ok(l.admit(one('Dept-1', 'd1-a')).admitted);
  assert.equal(l.show('ORG').resources.instances.used, 100);
  assert.equal(l.show('Dept-1').resources.instances.free, 399);
  ok(l);
});

test('article exclusive mode: T1 and T2 own 8 of 16; T1 gets 4, T2 gets only 8 of 12', () => {
  const l = twoTeams();
  for (let i = 0; i < 4; i++) assert.ok(l.admit(one('T1', `t1-${i}`)).admitted);
  const got = Array.from({ length: 12 }, (_, i) => l.admit(one('T2', `t2-${i}`)));
  assert.equal(got.filter((d) => d.admitted).length, 8);
  const rej = got.find((d) => !d.admitted);
  assert.ok(rej);
  assert.deepEqual(rej.decidedBy, { project: 'T2', resource: 'instances', line: 'free' });
  assert.match(rej.reason, /need 1, free 0 \(hard 8 − used 8/);
  assert.equal(l.show('T1').resources.instances.free, 4); // idle and wasted
  assert.equal(l.loans().length, 0);
  ok(l);
});

test('article borrowing mode: T2 borrows T1’s idle 4 and gets all 12; T1 later reclaims them', () => {
  const l = twoTeams({ lend: true, grace: 30_000 });
  for (let i = 0; i < 4; i++) assert.ok(l.admit(one('T1', `t1-${i}`), 1).admitted);
  for (let i = 0; i < 12; i++) {
    const d = l.admit(one('T2', `t2-${i}`, { kind: i === 11 ? 'vm' : 'container' }), 10 + i);
    assert.ok(d.admitted, d.reason);
    if (i >= 8) assert.deepEqual(d.loans, [{ lender: 'T1', borrower: 'T2', resource: 'instances', amount: 1 }]);
  }
  const loans = l.loans({ lender: 'T1' });
  assert.equal(loans.length, 4);
  assert.deepEqual(loans.map((x) => x.instance).sort(), ['t2-10', 't2-11', 't2-8', 't2-9']);
  assert.equal(loans[0]?.at, 18);
  let t1 = l.show('T1').resources.instances;
  assert.deepEqual([t1.used, t1.lent, t1.free], [4, 4, 0]);
  assert.equal(l.show('T2').resources.instances.borrowed, 4);
  ok(l);

  // T1 wants its capacity back (T1 itself does not borrow); explain shows the plan first, changing nothing
  l.setLimits('T1', { borrowingLimit: { instances: 0 } }, 50);
  const before = JSON.stringify(l.snapshot());
  const ex = l.explain(one('T1', 't1-4'), 100);
  assert.equal(ex.admitted, false);
  assert.deepEqual(ex.decidedBy, { project: 'T1', resource: 'instances', line: 'free' });
  assert.match(ex.reason, /free 0 \(hard 8 − used 4 − reserved 0 − allocated 0 − lent 4\)/);
  assert.deepEqual(ex.reclaim?.victims.map((v) => v.instance), ['t2-11']); // newest first
  assert.equal(JSON.stringify(l.snapshot()), before);

  const ops = [4, 5, 6, 7].map((i) => l.admitOrReclaim(one('T1', `t1-${i}`), 100));
  for (const o of ops) assert.equal(o.operation?.status, 'pending');
  assert.deepEqual(ops.map((o) => o.operation?.plan[0]?.instance), ['t2-11', 't2-10', 't2-9', 't2-8']);
  assert.equal(l.evictions().length, 4);
  assert.equal(l.dueEvictions(100 + 29_999).length, 0); // grace period of the borrower
  const due = l.dueEvictions(100 + 30_000);
  assert.equal(due.length, 4);
  assert.equal(due.find((v) => v.instance === 't2-11')?.action, 'save'); // the VM is saved, not killed
  assert.equal(due.find((v) => v.instance === 't2-8')?.action, 'stop');
  // while the reclaim is pending T1 lends nothing new
  l.release('t2-0', 30_050);
  assert.equal(l.admit(one('T2', 't2-x'), 30_060).admitted, true); // own free again
  assert.equal(l.admit(one('T2', 't2-y'), 30_060).admitted, false); // T1 is fenced
  for (const v of due) l.release(v.instance, 30_100, 'evicted');
  for (const o of ops) assert.equal(l.operation(o.operation?.id ?? '').status, 'done');
  t1 = l.show('T1').resources.instances;
  assert.deepEqual([t1.used, t1.lent, t1.free], [8, 0, 0]);
  assert.equal(l.show('T2').resources.instances.used, 8);
  assert.equal(l.loans().length, 0);
  const kinds = new Set(l.auditLog().map((e) => e.kind));
  for (const k of ['admit', 'reject', 'loan', 'return', 'reclaim-planned', 'reclaim-evicted', 'reclaim-done'] as const) assert.ok(kinds.has(k), k);
  assert.ok(l.auditLog().every((e) => e.reason.length > 0));
  ok(l);
  // finished operations leave the state ten minutes after they completed (the audit keeps them)
  l.release('t2-x', 30_100 + 599_999);
  for (const o of ops) assert.equal(l.operation(o.operation?.id ?? '').status, 'done', 'still read within the retention');
  l.release('t2-1', 30_100 + 600_001);
  for (const o of ops) assert.throws(() => l.operation(o.operation?.id ?? ''), { code: 'NotFound' });
  assert.deepEqual(l.raw.operations, {});
  assert.ok(l.auditLog().some((e) => e.kind === 'reclaim-done' && e.operation === ops[0]!.operation!.id), 'the audit keeps their entries');
  ok(l);
});

test('reclaim evicts lowest priority first, then newest', () => {
  const l = twoTeams({ lend: true });
  for (let i = 0; i < 8; i++) l.admit(one('T2', `own-${i}`), i);
  l.admit(one('T2', 'b-hi-old', { priority: 5 }), 10);
  l.admit(one('T2', 'b-lo-old', { priority: 1 }), 11);
  l.admit(one('T2', 'b-lo-new', { priority: 1 }), 12);
  l.admit(one('T2', 'b-hi-new', { priority: 5 }), 13);
  for (let i = 0; i < 4; i++) l.admit(one('T1', `t1-${i}`), 20);
  const ex = l.explain(one('T1', 'x', { resources: { instances: 3 } }), 30);
  assert.deepEqual(ex.reclaim?.victims.map((v) => v.instance), ['b-lo-new', 'b-lo-old', 'b-hi-new']);
  assert.equal(ex.reclaim?.sufficient, true);
  // more than was ever lent cannot be reclaimed: plain reject with the plan shown
  const r = l.admitOrReclaim(one('T1', 'y', { resources: { instances: 5 } }), 30);
  assert.equal(r.operation, undefined);
  assert.equal(r.decision.reclaim?.sufficient, false);
  ok(l);
});

test('article shared pool 1:1: T1 takes 4, T2 takes 8 deserved + 4 idle, T1 gets its deserved share back', () => {
  const l = new Ledger();
  l.createProject('P', null, { hard: { instances: 16 } });
  l.createProject('T1', 'P', { gracePeriodMs: 5_000 });
  l.createProject('T2', 'P', { gracePeriodMs: 5_000 });
  l.createPool('share', 'P', { instances: 16 }, { T1: 1, T2: 1 });
  const p = l.show('P');
  assert.deepEqual(p.pools[0]?.members.map((m) => m.deserved.instances), [8, 8]);
  assert.equal(p.resources.instances.allocated, 16);
  for (let i = 0; i < 4; i++) assert.equal(l.admit(one('T1', `t1-${i}`), i).poolCharges[0]?.amount, 1);
  for (let i = 0; i < 12; i++) assert.ok(l.admit(one('T2', `t2-${i}`), 10 + i).admitted);
  assert.equal(l.show('T2').resources.instances.pool, 12);
  const rej = l.admit(one('T2', 't2-12'), 30);
  assert.deepEqual(rej.decidedBy, { project: 'T2', resource: 'instances', line: 'pool' });
  // T1 asks for 4 more (within its deserved 8): T2 is over its share, its newest 4 go
  const r = l.admitOrReclaim(one('T1', 't1-more', { resources: { instances: 4 } }), 40);
  assert.deepEqual(r.operation?.plan.map((v) => v.instance), ['t2-11', 't2-10', 't2-9', 't2-8']);
  assert.ok(r.operation?.plan.every((v) => v.via.kind === 'pool' && v.deadline === 5_040));
  // while pending, T2 cannot grow beyond its deserved share even if something frees up
  l.release('t2-11', 5_040);
  assert.equal(l.admit(one('T2', 't2-sneak'), 5_041).admitted, false);
  for (const v of l.dueEvictions(5_040)) l.release(v.instance, 5_050);
  assert.equal(l.operation(r.operation?.id ?? '').status, 'done');
  assert.equal(l.show('T1').resources.instances.used, 8);
  assert.equal(l.show('T2').resources.instances.used, 8);
  // a member at its deserved share is never a victim
  const again = l.explain(one('T1', 't1-over'), 60);
  assert.equal(again.reclaim?.sufficient, false);
  ok(l);
});

test('exclusive and shared capacity mixed in one tree; T1 uses its own first, then the pool, then loans', () => {
  const l = new Ledger();
  l.createProject('P', null, { hard: { instances: 16, cpus: 64 } });
  l.createProject('T1', 'P', { hard: { instances: 4, cpus: 16 }, borrowingLimit: { instances: 2, cpus: 8 } });
  l.createProject('T2', 'P', { hard: { instances: 4, cpus: 16 }, lendingLimit: { instances: 2, cpus: 8 } });
  l.createPool('pool', 'P', { instances: 8, cpus: 32 }, { T1: 1, T2: 3 });
  assert.equal(l.show('P').resources.instances.free, 0);
  const d = l.admit(one('T1', 'big', { resources: { instances: 14, cpus: 56 } }));
  assert.ok(d.admitted, d.reason);
  assert.deepEqual(d.own, { instances: 4, cpus: 16 });
  assert.deepEqual(d.poolCharges, [
    { pool: 'pool', resource: 'instances', amount: 8 },
    { pool: 'pool', resource: 'cpus', amount: 32 },
  ]);
  assert.deepEqual(d.loans.map((x) => [x.lender, x.resource, x.amount]), [
    ['T2', 'instances', 2],
    ['T2', 'cpus', 8],
  ]);
  assert.equal(d.decidedBy.line, 'loan');
  const no = l.admit(one('T1', 'more', { resources: { cpus: 1 } }));
  assert.equal(no.decidedBy.line, 'borrowingLimit');
  ok(l);
});

test('pool reclaim uses dominant-resource shares to pick between equally ranked members', () => {
  const l = new Ledger();
  l.createProject('P', null, { hard: { instances: 30, cpus: 16, memory: 16384 } });
  for (const t of ['A', 'B', 'C']) l.createProject(t, 'P');
  l.createPool('pool', 'P', { instances: 30, cpus: 16, memory: 16384 }, { A: 1, B: 1, C: 1 });
  assert.ok(l.admit(one('A', 'a', { resources: { cpus: 8 } }), 1).admitted); // dominant 0.5 → weighted 1.5
  assert.ok(l.admit(one('B', 'b', { resources: { cpus: 6, memory: 12000 } }), 1).admitted); // dominant 0.73 → 2.2
  const ex = l.explain(one('C', 'c', { resources: { cpus: 4 } }), 2);
  assert.deepEqual(ex.reclaim?.victims.map((v) => v.instance), ['b']);
  ok(l);
});

test('validation: typed errors and no change on failure', () => {
  const l = twoTeams({ lend: true });
  for (let i = 0; i < 10; i++) l.admit(one('T2', `t2-${i}`));
  const snap = JSON.stringify(l.snapshot());
  assert.throws(() => l.setLimits('T2', { hard: { instances: 7 } }), { code: 'Conflict' });
  assert.throws(() => l.setLimits('T1', { lendingLimit: { instances: 1 } }), { code: 'Conflict' });
  assert.throws(() => l.setLimits('T1', { hard: { instances: 1 } }), { code: 'Conflict' }); // 2 of it are lent
  assert.throws(() => l.setLimits('T1', { reserved: { instances: 7 } }), { code: 'QuotaExceeded' });
  assert.throws(() => l.setLimits('T1', { hard: { instances: -1 } }), { code: 'InvalidArgument' });
  assert.throws(() => l.setLimits('nope', {}), { code: 'NotFound' });
  assert.throws(() => l.admit(one('T2', 't2-0')), { code: 'Conflict' });
  assert.throws(() => l.admit({ instanceId: 'z', project: 'T2', resources: { gpus: 1 } as never }), { code: 'InvalidArgument' });
  assert.throws(() => l.release('ghost'), { code: 'NotFound' });
  assert.throws(() => l.createPool('p', 'P', { instances: 1 }, { T1: 1 }), { code: 'QuotaExceeded' });
  assert.throws(() => l.admitOrThrow(one('T2', 'overflow', { resources: { instances: 20 } })), { code: 'QuotaExceeded' });
  const after = l.snapshot();
  after.audit = JSON.parse(snap).audit; // the rejection above is audited; nothing else moved
  after.seq = JSON.parse(snap).seq;
  assert.equal(JSON.stringify(after), snap);
  ok(l);
});

test('state is plain JSON: a ledger rebuilt from its serialised state behaves the same', () => {
  const l = twoTeams({ lend: true });
  for (let i = 0; i < 10; i++) l.admit(one('T2', `t2-${i}`));
  const copy = new Ledger(JSON.parse(JSON.stringify(l.snapshot())));
  assert.deepEqual(copy.show('T2'), l.show('T2'));
  copy.release('t2-9');
  assert.equal(copy.show('T1').resources.instances.lent, 1);
  ok(copy);
});

test('1,000 concurrent creates through the async API never oversubscribe', async () => {
  const l = new Ledger();
  l.createProject('root', null, { hard: { instances: 400, cpus: 800 } });
  const teams = ['a', 'b', 'c', 'd'];
  for (const t of teams) l.createProject(t, 'root', { hard: { instances: 100, cpus: 200 }, lendingLimit: { instances: 50, cpus: 100 }, borrowingLimit: { instances: 50, cpus: 100 } });
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  let clock = 0;
  const svc = new AdmissionService(l, {
    clock: () => ++clock,
    before: async () => {
      for (let k = Math.floor(rnd() * 5); k > 0; k--) await new Promise((res) => setImmediate(res));
    },
  });
  const results = await Promise.all(
    Array.from({ length: 1000 }, (_, i) =>
      svc.create({ instanceId: `i${i}`, project: teams[i % 4] ?? 'a', resources: { cpus: 1 + Math.floor(rnd() * 3) } }).then(async (d) => {
        assert.deepEqual(checkInvariants(l.snapshot()).slice(0, 3), []);
        if (d.admitted && rnd() < 0.2) await svc.release(d.instance);
        return d;
      }),
    ),
  );
  assert.ok(results.filter((d) => d.admitted).length > 300);
  assert.ok(results.some((d) => !d.admitted));
  for (const t of teams) {
    const f = l.show(t).resources;
    assert.ok(f.instances.used <= 150 && f.cpus.used <= 300);
  }
  assert.ok(l.show('root').resources.cpus.allocated === 800);
  ok(l);
});
