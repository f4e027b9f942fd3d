/**
 * Claims under concurrency, from several schedulers ("replicas"): 1,000 placements at once onto
 * a few small hosts never over-commit one, hard anti-affinity holds, and how many placements a
 * second each backend takes. PostgreSQL: one throwaway cluster for the file, a fresh database
 * per test, two stores (two pools, as two control-plane processes have). SQLite: the replicas
 * share one store (one process), each with its own scheduler and so its own cached view.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clusterForTests } from '../../../scripts/fixtures/postgres.js';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { FilterScheduler, limitsOf } from './filter-scheduler.js';
import { ServerGroupService } from './groups.js';
import type { HostCandidate, PlacementRequest } from './types.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

const theCluster = clusterForTests('the scheduler replica tests');

type Backend = 'postgres' | 'sqlite';

/** Two stores on one fresh database (PostgreSQL), or one store twice (SQLite); closed and removed after the test. */
async function replicaStores(t: TestContext, backend: Backend): Promise<[Store, Store]> {
  if (backend === 'postgres') {
    const db = await theCluster().freshDatabase();
    const a = await openStore(db.url);
    const b = await openStore(db.url);
    t.after(async () => {
      await a.close();
      await b.close();
      await db.drop();
    });
    return [a, b];
  }
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-sched-replicas-'));
  const s = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return [s, s];
}

function host(name: string, over: Partial<HostCandidate> = {}): HostCandidate {
  return {
    name, state: 'up', disabled: false, zone: 'z1', labels: {}, cpus: 4, memoryBytes: 4 * GiB, diskBytes: 0, runtimes: ['runc'], architecture: 'amd64',
    allocationRatios: { cpu: 2, memory: 1.5, disk: 1 }, ...over,
  };
}

async function projects(s: Store, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await s.projects.insert({ id: `p${i}`, name: `p${i}`, parentId: null, createdAt: 'then' });
}

/** n placements at once, round-robin over the schedulers; the wall time and the outcomes (failures must be ResourceExhausted). */
async function placeConcurrently(schedulers: FilterScheduler[], reqs: PlacementRequest[]): Promise<{ ms: number; placed: Map<string, string> }> {
  const t0 = performance.now();
  const results = await Promise.allSettled(reqs.map((r, i) => schedulers[i % schedulers.length]!.place(r)));
  const ms = performance.now() - t0;
  const placed = new Map<string, string>();
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') placed.set(reqs[i]!.consumerId, r.value.host);
    else assert.equal((r.reason as { code?: string }).code, 'ResourceExhausted', String(r.reason));
  });
  return { ms, placed };
}

/** Every host's claims add up to its usage row and stay within capacity × ratio. */
async function assertNoOverCommit(s: Store, hosts: HostCandidate[]): Promise<void> {
  for (const h of hosts) {
    const claims = await s.placement.allocations({ host: h.name });
    const sum = claims.reduce((a, c) => ({ m: a.m + c.millicpus, mem: a.mem + c.memoryBytes, d: a.d + c.diskBytes }), { m: 0, mem: 0, d: 0 });
    const limits = limitsOf(h);
    assert.ok(sum.m <= limits.millicpus, `${h.name}: ${sum.m} millicpus claimed of ${limits.millicpus}`);
    assert.ok(sum.mem <= limits.memoryBytes, `${h.name}: ${sum.mem} bytes of memory claimed of ${limits.memoryBytes}`);
    assert.ok(sum.d <= limits.diskBytes, `${h.name}: ${sum.d} bytes of disk claimed of ${limits.diskBytes}`);
    const [u] = await s.placement.usage(h.name);
    assert.deepEqual([u?.millicpus ?? 0, u?.memoryBytes ?? 0, u?.diskBytes ?? 0, u?.instances ?? 0], [sum.m, sum.mem, sum.d, claims.length], `${h.name}: usage row = its claims`);
  }
}

for (const backend of ['postgres', 'sqlite'] as const) {
  test(`${backend}: 1,000 concurrent placements through two schedulers onto 4 small hosts: exactly what fits, no host over-committed`, async (t) => {
    const stores = await replicaStores(t, backend);
    await projects(stores[0], 10);
    // 4 CPUs × 2.0 and 4 GiB × 1.5 per host; each request 0.5 CPU and 256 MiB: 16 per host by CPU (memory would take 24)
    const hosts = ['h1', 'h2', 'h3', 'h4'].map((n) => host(n));
    // a view a minute old: the schedulers choose on stale usage and only the claims stand between them and over-commit
    const schedulers = stores.map((s) => new FilterScheduler(s, { candidates: async () => hosts }, { usageMaxAgeMs: 60_000 }));
    const reqs = Array.from({ length: 1000 }, (_, i): PlacementRequest => ({
      consumerId: `c${i}`, projectId: `p${i % 10}`, kind: 'container', vcpus: 0.5, memoryBytes: 256 * MiB, diskBytes: 0,
    }));
    const { ms, placed } = await placeConcurrently(schedulers, reqs);
    t.diagnostic(`${backend}: 1,000 concurrent placements (${placed.size} placed) in ${ms.toFixed(0)} ms`);
    assert.equal(placed.size, 64, 'everything that fits is placed');
    await assertNoOverCommit(stores[0], hosts);
    assert.equal((await stores[1].placement.consumers()).length, 64);
  });

  test(`${backend}: hard anti-affinity across concurrent placements from two schedulers: one member per host`, async (t) => {
    const stores = await replicaStores(t, backend);
    await projects(stores[0], 1);
    const hosts = ['h1', 'h2', 'h3', 'h4', 'h5'].map((n) => host(n));
    const g = await new ServerGroupService(stores[0]).create('p0', { name: 'web', policy: 'anti-affinity' });
    const schedulers = stores.map((s) => new FilterScheduler(s, { candidates: async () => hosts }, { usageMaxAgeMs: 60_000 }));
    const reqs = Array.from({ length: 200 }, (_, i): PlacementRequest => ({
      consumerId: `w${i}`, projectId: 'p0', kind: 'container', vcpus: 0.1, memoryBytes: MiB, diskBytes: 0, group: g.id,
    }));
    const { placed } = await placeConcurrently(schedulers, reqs);
    assert.equal(placed.size, 5);
    assert.deepEqual([...placed.values()].sort(), ['h1', 'h2', 'h3', 'h4', 'h5']);
    assert.deepEqual((await stores[1].placement.allocations({ groupId: g.id })).map((a) => a.host).sort(), ['h1', 'h2', 'h3', 'h4', 'h5']);
    // and hard affinity: every member lands where the first did
    const a = await new ServerGroupService(stores[0]).create('p0', { name: 'db', policy: 'affinity' });
    const together = await placeConcurrently(schedulers, Array.from({ length: 50 }, (_, i): PlacementRequest => ({
      consumerId: `d${i}`, projectId: 'p0', kind: 'container', vcpus: 0, memoryBytes: MiB, diskBytes: 0, group: a.id,
    })));
    assert.equal(together.placed.size, 50);
    assert.equal(new Set(together.placed.values()).size, 1);
  });

  test(`${backend}: placements per second: 1,000 concurrent placements that all fit, through two schedulers`, async (t) => {
    const stores = await replicaStores(t, backend);
    await projects(stores[0], 100);
    const hosts = Array.from({ length: 50 }, (_, i) => host(`h${String(i).padStart(2, '0')}`, { cpus: 64, memoryBytes: 256 * GiB }));
    const schedulers = stores.map((s) => new FilterScheduler(s, { candidates: async () => hosts }));
    const reqs = (prefix: string, n: number) => Array.from({ length: n }, (_, i): PlacementRequest => ({
      consumerId: `${prefix}${i}`, projectId: `p${i % 100}`, kind: 'container', vcpus: 0.25, memoryBytes: 256 * MiB, diskBytes: 0,
    }));
    // cold: the pools connect, every host's usage row is made, each project's counts are read
    const cold = await placeConcurrently(schedulers, reqs('cold', 1000));
    // warm: a running control plane's steady state
    const warm = await placeConcurrently(schedulers, reqs('warm', 1000));
    const rate = (ms: number) => Math.round(1000 / (ms / 1000));
    t.diagnostic(`${backend}: 1,000 concurrent placements, cold ${cold.ms.toFixed(0)} ms (${rate(cold.ms)}/s), warm ${warm.ms.toFixed(0)} ms (${rate(warm.ms)}/s)`);
    assert.equal(cold.placed.size, 1000);
    assert.equal(warm.placed.size, 1000);
    await assertNoOverCommit(stores[0], hosts);
    // spread: 50 hosts, 2,000 placements, none left empty and none holding more than twice its share
    const perHost = new Map<string, number>();
    for (const h of [...cold.placed.values(), ...warm.placed.values()]) perHost.set(h, (perHost.get(h) ?? 0) + 1);
    assert.equal(perHost.size, 50);
    assert.ok(Math.max(...perHost.values()) <= 80, `the busiest host holds ${Math.max(...perHost.values())}`);
  });
}
