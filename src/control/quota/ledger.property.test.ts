import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isNimbusError } from '../../core/errors.js';
import { checkInvariants } from './invariants.js';
import { Ledger } from './ledger.js';
import type { PartialVec } from './resources.js';

const small = fc.integer({ min: 0, max: 12 });
const vecArb: fc.Arbitrary<PartialVec> = fc.record({ instances: small, cpus: small, memory: fc.integer({ min: 0, max: 40 }) }, { requiredKeys: [] });
const demandArb: fc.Arbitrary<PartialVec> = fc.record(
  { instances: fc.integer({ min: 1, max: 3 }), cpus: fc.integer({ min: 0, max: 4 }), memory: fc.integer({ min: 0, max: 12 }) },
  { requiredKeys: ['cpus'] },
);

interface NodeSpec {
  pick: number;
  hardPct: number;
  lendPct: number;
  borrow: number;
  poolPct: number;
  weight: number;
  grace: number;
}
const nodeArb: fc.Arbitrary<NodeSpec> = fc.record({
  pick: fc.nat(),
  hardPct: fc.integer({ min: 0, max: 70 }),
  lendPct: fc.integer({ min: 0, max: 100 }),
  borrow: fc.integer({ min: 0, max: 10 }),
  poolPct: fc.integer({ min: 0, max: 80 }),
  weight: fc.integer({ min: 0, max: 3 }),
  grace: fc.integer({ min: 0, max: 30 }),
});

/**
 * A random tree of depth ≤ 5 (node i > 0 hangs under an earlier node of depth < 4),
 * each child given a random share of its parent's free, random lending/borrowing
 * limits, and, for some parents, a pool over the children with a non-zero weight.
 */
function buildTree(l: Ledger, rootHard: number, nodes: NodeSpec[]): string[] {
  const ids = ['p0'];
  const depth = [0];
  l.createProject('p0', null, { hard: { instances: rootHard, cpus: rootHard, memory: rootHard * 4 } });
  nodes.forEach((n, k) => {
    const eligible = depth.map((d, i) => [d, i] as const).filter(([d]) => d < 4);
    const [d, pi] = eligible[n.pick % eligible.length] ?? [0, 0];
    const parent = ids[pi] ?? 'p0';
    const pf = l.show(parent).resources;
    const id = `p${k + 1}`;
    const hard = { instances: Math.floor((pf.instances.free * n.hardPct) / 100), cpus: Math.floor((pf.cpus.free * n.hardPct) / 100), memory: Math.floor((pf.memory.free * n.hardPct) / 100) };
    const pct = (x: number) => Math.floor((x * n.lendPct) / 100);
    l.createProject(id, parent, {
      hard,
      lendingLimit: { instances: pct(hard.instances), cpus: pct(hard.cpus), memory: pct(hard.memory) },
      borrowingLimit: { instances: n.borrow, cpus: n.borrow * 2, memory: n.borrow * 4 },
      gracePeriodMs: n.grace,
    });
    ids.push(id);
    depth.push(d + 1);
  });
  ids.forEach((id, i) => {
    const spec = i === 0 ? nodes[0] : nodes[i - 1];
    if (spec === undefined || spec.poolPct < 20) return;
    const v = l.show(id);
    const weights: Record<string, number> = {};
    for (const c of v.children) {
      const w = nodes[Number(c.slice(1)) - 1]?.weight ?? 0;
      if (w > 0) weights[c] = w;
    }
    if (Object.keys(weights).length === 0) return;
    const f = v.resources;
    const cut = (x: number) => Math.floor((x * spec.poolPct) / 100);
    l.createPool(`pool-${id}`, id, { instances: cut(f.instances.free), cpus: cut(f.cpus.free), memory: cut(f.memory.free) }, weights);
  });
  return ids;
}

type Cmd =
  | { t: 'limits'; p: number; hard: PartialVec; reserved: PartialVec; lend: PartialVec; borrow: PartialVec; grace: number }
  | { t: 'pool'; p: number; cap: PartialVec; weights: number[] }
  | { t: 'poolcap'; p: number; cap: PartialVec }
  | { t: 'admit'; p: number; d: PartialVec; prio: number; vm: boolean }
  | { t: 'reclaim'; p: number; d: PartialVec; prio: number; vm: boolean }
  | { t: 'release'; i: number }
  | { t: 'tick'; dt: number; evict: boolean }
  | { t: 'cancel'; i: number }
  | { t: 'project'; p: number; hard: PartialVec }
  | { t: 'unproject'; p: number };

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ t: fc.constant('limits' as const), p: fc.nat(), hard: vecArb, reserved: fc.record({ instances: fc.integer({ min: 0, max: 2 }) }, { requiredKeys: [] }), lend: vecArb, borrow: vecArb, grace: fc.integer({ min: 0, max: 50 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('pool' as const), p: fc.nat(), cap: vecArb, weights: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 5 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('poolcap' as const), p: fc.nat(), cap: vecArb }) },
  { weight: 12, arbitrary: fc.record({ t: fc.constant('admit' as const), p: fc.nat(), d: demandArb, prio: fc.integer({ min: 0, max: 3 }), vm: fc.boolean() }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('reclaim' as const), p: fc.nat(), d: demandArb, prio: fc.integer({ min: 0, max: 3 }), vm: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('release' as const), i: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('tick' as const), dt: fc.integer({ min: 0, max: 60 }), evict: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('cancel' as const), i: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('project' as const), p: fc.nat(), hard: vecArb }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('unproject' as const), p: fc.nat() }) },
);

const EXPECTED = new Set(['InvalidArgument', 'NotFound', 'Conflict', 'QuotaExceeded']);

/** The state with its projects and instances in id order (rows come back in any order). */
function sortedRows(s: ReturnType<Ledger['snapshot']>): unknown {
  const sorted = <T>(o: Record<string, T>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
  return { ...s, projects: sorted(s.projects), instances: sorted(s.instances) };
}

/** The state less its audit, read in place: a snapshot() clones the audit too, which grows with every step (most of this test's time). */
function withoutAudit(l: Ledger): string {
  return JSON.stringify({ ...l.raw, audit: [], seq: 0 });
}

test('random trees and request sequences keep every ledger invariant after every step', () => {
  fc.assert(
    fc.property(fc.array(nodeArb, { minLength: 2, maxLength: 14, size: 'max' }), fc.integer({ min: 20, max: 200 }), fc.array(cmdArb, { minLength: 30, maxLength: 120, size: 'max' }), (nodes, rootHard, cmds) => {
      const l = new Ledger();
      const ids = buildTree(l, rootHard, nodes);
      assert.deepEqual(checkInvariants(l.snapshot()), []);
      const pick = (n: number) => ids[n % ids.length] ?? 'p0';
      let now = 0;
      let seq = 0;
      const ops: string[] = [];
      const pools: string[] = Object.keys(l.raw.pools);
      // what a store keeping projects and instances as rows holds, written from changes() after every step
      const rows = new Map<string, string>();
      const projectRows = new Map<string, string>();
      let core = '';
      const persist = () => {
        const ch = l.changes();
        core = ch.core;
        for (const [into, changed] of [[rows, ch.instances], [projectRows, ch.projects]] as const) {
          for (const r of changed) {
            if (r.json === null) into.delete(r.id);
            else into.set(r.id, r.json);
          }
        }
        l.markPersisted();
      };
      let made = 0;
      persist();
      for (const c of cmds) {
        const before = withoutAudit(l);
        try {
          switch (c.t) {
            case 'limits':
              l.setLimits(pick(c.p), { hard: c.hard, reserved: c.reserved, lendingLimit: c.lend, borrowingLimit: c.borrow, gracePeriodMs: c.grace }, now);
              break;
            case 'pool': {
              const owner = pick(c.p);
              const kids = l.show(owner).children;
              const weights: Record<string, number> = {};
              kids.forEach((k, i) => {
                const w = c.weights[i % c.weights.length] ?? 0;
                if (w > 0) weights[k] = w;
              });
              const id = `pool${pools.length}`;
              l.createPool(id, owner, c.cap, weights, now);
              pools.push(id);
              break;
            }
            case 'poolcap':
              if (pools.length > 0) l.updatePool(pools[c.p % pools.length] ?? '', { capacity: c.cap }, now);
              break;
            case 'admit': {
              const req = { instanceId: `i${seq++}`, project: pick(c.p), resources: c.d, priority: c.prio, kind: c.vm ? ('vm' as const) : ('container' as const) };
              const ex = l.explain(req, now);
              assert.equal(withoutAudit(l), before, 'explain must not change anything');
              const d = l.admit(req, now);
              assert.equal(d.admitted, ex.admitted);
              assert.deepEqual(d.loans, ex.loans);
              assert.deepEqual(d.poolCharges, ex.poolCharges);
              if (!d.admitted) assert.equal(withoutAudit(l), before, 'a rejection changes nothing but the audit');
              break;
            }
            case 'reclaim': {
              const r = l.admitOrReclaim({ instanceId: `i${seq++}`, project: pick(c.p), resources: c.d, priority: c.prio, kind: c.vm ? 'vm' : 'container' }, now);
              if (r.operation) ops.push(r.operation.id);
              break;
            }
            case 'release': {
              const live = Object.keys(l.raw.instances);
              if (live.length > 0) l.release(live[c.i % live.length] ?? '', now);
              break;
            }
            case 'tick':
              now += c.dt;
              if (c.evict) for (const v of l.dueEvictions(now)) if (l.instance(v.instance)) l.release(v.instance, now, 'evicted');
              break;
            case 'cancel':
              if (ops.length > 0) l.cancelReclaim(ops[c.i % ops.length] ?? '', now);
              break;
            case 'project': {
              const id = `q${made++}`;
              l.createProject(id, pick(c.p), { hard: c.hard }, now);
              ids.push(id);
              break;
            }
            case 'unproject': {
              const id = pick(c.p);
              if (id === 'p0') break;
              l.deleteProject(id, now); // refused (Conflict) while it holds anything
              ids.splice(ids.indexOf(id), 1);
              break;
            }
          }
        } catch (e) {
          if (!isNimbusError(e) || !EXPECTED.has(e.code)) throw e;
          assert.equal(withoutAudit(l), before, `failed ${c.t} must leave the state unchanged (${e.message})`);
        }
        const errs = checkInvariants(l.raw);
        assert.deepEqual(errs, [], `after ${JSON.stringify(c)}`);
        persist();
        const stored = JSON.parse(core) as ReturnType<Ledger['snapshot']>;
        assert.deepEqual(stored.projects, {}, 'projects are rows of their own, not in the core');
        for (const [id, json] of rows) stored.instances[id] = JSON.parse(json) as (typeof stored.instances)[string];
        for (const [id, json] of projectRows) stored.projects[id] = JSON.parse(json) as (typeof stored.projects)[string];
        assert.deepEqual(sortedRows(stored), sortedRows({ ...l.raw, audit: [] }), `the saved rows miss a change after ${JSON.stringify(c)}`);
        // every pending reclaim still has a live victim or is waiting on capacity the plan promised
        for (const op of Object.values(l.raw.operations)) if (op.status !== 'pending') assert.ok(op.completedAt !== undefined);
      }
    }),
    { numRuns: Number(process.env.QUOTA_PROPERTY_RUNS ?? 150) },
  );
});
