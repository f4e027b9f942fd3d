/** The placement part of the store conformance suite: claims, usage and generations, moves, server groups. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { ConformanceTarget } from './conformance.js';
import type { ClaimRequest, HostLimits, ServerGroupRecord } from './repos/placement.js';
import type { Store } from './store.js';

const NOW = '2026-01-01T00:00:00.000Z';
const GiB = 1024 ** 3;
const LIMITS: HostLimits = { millicpus: 4000, memoryBytes: 4 * GiB, diskBytes: 10 * GiB };

const claimOf = (consumerId: string, host: string, over: Partial<ClaimRequest> = {}): ClaimRequest => ({
  consumerId, host, projectId: 'p1', millicpus: 1000, memoryBytes: GiB, diskBytes: 0, createdAt: NOW, ...over,
});

const groupOf = (id: string, name: string, policy: ServerGroupRecord['policy'], projectId = 'p1'): ServerGroupRecord => ({ id, projectId, name, policy, createdAt: NOW });

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal((e as { code?: unknown }).code, code, `expected ${code}, got ${String(e)}`);
    if (message) assert.match((e as Error).message, message);
    return true;
  });
}

export function placementConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  async function setup(t: TestContext): Promise<Store> {
    const target = await open();
    t.after(() => target.cleanup());
    const s = target.store;
    await s.projects.insert({ id: 'p1', name: 'a', parentId: null, createdAt: NOW });
    await s.projects.insert({ id: 'p2', name: 'b', parentId: null, createdAt: NOW });
    return s;
  }

  test(`${name}: placement: a claim fits or is refused with the usage, usage and generation follow, release is idempotent`, async (t) => {
    const s = await setup(t);
    const p = s.placement;
    assert.deepEqual(await p.usage('h1'), []);
    const first = await p.claim(claimOf('c1', 'h1'), LIMITS); // the host's usage row is made on first use
    assert.ok(first.claimed);
    const second = await p.claim(claimOf('c2', 'h1', { millicpus: 2500, memoryBytes: 2 * GiB, diskBytes: 5 * GiB }), LIMITS);
    assert.ok(second.claimed && second.generation > first.generation, 'the generation goes up with each claim');
    assert.deepEqual((await p.usage('h1')).map(({ generation: _, ...u }) => u), [{ host: 'h1', millicpus: 3500, memoryBytes: 3 * GiB, diskBytes: 5 * GiB, instances: 2 }]);
    // 0.5 CPU is left: a whole one does not fit, half does
    const refused = await p.claim(claimOf('c3', 'h1'), LIMITS);
    assert.equal(refused.claimed, false);
    assert.ok(!refused.claimed && refused.reason === 'capacity' && refused.usage.millicpus === 3500);
    assert.ok((await p.claim(claimOf('c3', 'h1', { millicpus: 500, memoryBytes: GiB }), LIMITS)).claimed);
    // exactly at the limit; then the instance count limit
    assert.equal((await p.claim(claimOf('c4', 'h1', { millicpus: 0, memoryBytes: 0 }), { ...LIMITS, instances: 3 })).claimed, false);
    assert.ok((await p.claim(claimOf('c4', 'h1', { millicpus: 0, memoryBytes: 0 }), { ...LIMITS, instances: 4 })).claimed);
    // big byte counts stay exact
    assert.ok((await p.claim(claimOf('big', 'h2', { memoryBytes: 3 * 1024 * GiB }), { ...LIMITS, memoryBytes: 4 * 1024 * GiB })).claimed);
    assert.equal((await p.usage('h2'))[0]?.memoryBytes, 3 * 1024 * GiB);
    // one claim per consumer
    await rejectsWith(p.claim(claimOf('c1', 'h3'), LIMITS), 'Conflict', /c1 already holds a claim on host h1/);
    assert.ok((await p.usage('h3')).every((u) => u.instances === 0), 'the refused duplicate changed no usage');

    assert.deepEqual(await p.consumers(), ['big', 'c1', 'c2', 'c3', 'c4']);
    assert.deepEqual((await p.allocations({ host: 'h1' })).map((a) => a.consumerId), ['c1', 'c2', 'c3', 'c4']);
    assert.deepEqual(await p.allocation('c2'), { consumerId: 'c2', host: 'h1', projectId: 'p1', groupId: null, millicpus: 2500, memoryBytes: 2 * GiB, diskBytes: 5 * GiB, createdAt: NOW });
    assert.ok((await p.claim(claimOf('q1', 'h2', { projectId: 'p2' }), { ...LIMITS, memoryBytes: 4 * 1024 * GiB })).claimed);
    assert.deepEqual([...(await p.countsByHost({ projectId: 'p1' }))], [['h1', 4], ['h2', 1]]);
    assert.deepEqual([...(await p.countsByHost({ projectId: 'p2' }))], [['h2', 1]]);

    const gen = (await p.usage('h1'))[0]!.generation;
    assert.equal((await p.release('c2'))?.host, 'h1');
    assert.equal(await p.release('c2'), undefined, 'a second release finds nothing');
    assert.equal(await p.release('never'), undefined);
    const after = (await p.usage('h1'))[0]!;
    assert.deepEqual([after.millicpus, after.memoryBytes, after.diskBytes, after.instances], [1500, 2 * GiB, 0, 3]);
    assert.equal(after.generation, gen + 1);
    assert.equal(await p.recomputeUsage('h1'), false, 'usage agrees with the claims');
    assert.equal(await p.recomputeUsage('nowhere'), false);
  });

  test(`${name}: placement: concurrent claims on one host never pass its limits`, async (t) => {
    const s = await setup(t);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) =>
      s.placement.claim(claimOf(`c${i}`, 'h1', { millicpus: 300, memoryBytes: 0 }), { ...LIMITS, millicpus: 15_000 })));
    assert.equal(results.filter((r) => r.claimed).length, 50);
    const [u] = await s.placement.usage('h1');
    assert.equal(u?.millicpus, 15_000);
    assert.equal(u?.instances, 50);
    assert.equal((await s.placement.allocations({ host: 'h1' })).length, 50);
    // releases racing each other give each claim back once
    await Promise.all((await s.placement.consumers()).flatMap((id) => [s.placement.release(id), s.placement.release(id)]));
    assert.deepEqual((await s.placement.usage('h1')).map((x) => [x.millicpus, x.instances]), [[0, 0]]);
  });

  test(`${name}: placement: concurrent claims over several hosts (batched together on PostgreSQL): each host within its limits, each claim its own answer`, async (t) => {
    const s = await setup(t);
    const hosts = ['h1', 'h2', 'h3', 'h4'];
    await s.placement.ensureHosts(hosts.slice(0, 3)); // h4's row is made by its first claim
    const limits = { ...LIMITS, millicpus: 3000 };
    await s.placement.claim(claimOf('dup', 'h1', { millicpus: 0 }), limits);
    const claims = Array.from({ length: 400 }, (_, i) => claimOf(`c${i}`, hosts[i % 4]!, { millicpus: 100, memoryBytes: 0 }));
    const results = await Promise.allSettled([
      ...claims.map((c) => s.placement.claim(c, limits)),
      s.placement.claim(claimOf('dup', 'h2', { millicpus: 0 }), limits), // one consumer twice: a Conflict of its own
      s.placement.claim(claimOf('x', 'h3', { millicpus: 0, group: { id: 'missing', policy: 'soft-affinity' } }), limits),
    ]);
    const outcomes = results.slice(0, 400).map((r) => (r.status === 'fulfilled' ? r.value : assert.fail(String(r.reason))));
    assert.equal(outcomes.filter((o) => o.claimed).length, 120, '30 per host');
    for (const o of outcomes) if (!o.claimed) assert.ok(o.reason === 'capacity' && o.usage.millicpus === 3000, JSON.stringify(o));
    assert.equal(results[400]?.status === 'rejected' && (results[400].reason as { code?: string }).code, 'Conflict');
    assert.equal(results[401]?.status === 'rejected' && (results[401].reason as { code?: string }).code, 'NotFound');
    for (const h of hosts) {
      const [u] = await s.placement.usage(h);
      const claimed = await s.placement.allocations({ host: h });
      assert.equal(u?.millicpus, 3000, h);
      assert.equal(u?.instances, claimed.length, h);
      assert.equal(claimed.reduce((n, a) => n + a.millicpus, 0), 3000, h);
    }
  });

  test(`${name}: placement: a move is checked against the destination and changes both hosts at once`, async (t) => {
    const s = await setup(t);
    const p = s.placement;
    await p.claim(claimOf('c1', 'a', { millicpus: 3000 }), LIMITS);
    await p.claim(claimOf('c2', 'b', { millicpus: 2000 }), LIMITS);
    await rejectsWith(p.move('c1', 'b', LIMITS), 'ResourceExhausted', /host b cannot take instance c1's claim/);
    assert.deepEqual((await p.usage()).map((u) => [u.host, u.millicpus, u.instances]), [['a', 3000, 1], ['b', 2000, 1]], 'a refused move changes nothing');
    const moved = await p.move('c1', 'c', LIMITS);
    assert.equal(moved.host, 'c');
    assert.equal((await p.allocation('c1'))?.host, 'c');
    assert.deepEqual((await p.usage()).map((u) => [u.host, u.millicpus, u.instances]), [['a', 0, 0], ['b', 2000, 1], ['c', 3000, 1]]);
    assert.equal((await p.move('c1', 'c', LIMITS)).host, 'c', 'moving where it is changes nothing');
    await rejectsWith(p.move('nobody', 'c', LIMITS), 'NotFound');
    // two moves in opposite directions at once: both land, no deadlock
    const roomy = { ...LIMITS, millicpus: 8000 };
    await Promise.all([p.move('c1', 'b', roomy), p.move('c2', 'c', roomy)]);
    assert.deepEqual((await p.usage()).map((u) => [u.host, u.millicpus]), [['a', 0], ['b', 3000], ['c', 2000]]);
    assert.deepEqual((await p.allocations()).map((a) => [a.consumerId, a.host]), [['c1', 'b'], ['c2', 'c']]);
  });

  test(`${name}: placement: server groups: names per project, hard policies checked with the claim, no delete while members remain`, async (t) => {
    const s = await setup(t);
    const p = s.placement;
    await p.insertGroup(groupOf('g1', 'web', 'anti-affinity'));
    await p.insertGroup(groupOf('g2', 'db', 'affinity'));
    await p.insertGroup(groupOf('g3', 'web', 'soft-affinity', 'p2'));
    await rejectsWith(p.insertGroup(groupOf('g4', 'web', 'affinity')), 'AlreadyExists', /server group "web" already exists in this project/);
    await assert.rejects(p.insertGroup({ ...groupOf('g5', 'x', 'affinity'), policy: 'sideways' as ServerGroupRecord['policy'] }));
    assert.deepEqual((await p.groups()).map((g) => g.id), ['g2', 'g1', 'g3']);
    assert.deepEqual((await p.groups({ projectId: 'p1' })).map((g) => g.name), ['db', 'web']);
    assert.deepEqual((await p.groups({ name: 'web' })).map((g) => g.id), ['g1', 'g3']);
    assert.equal((await p.groupByName('p2', 'web'))?.policy, 'soft-affinity');
    assert.equal((await p.group('g1'))?.name, 'web');

    const anti = { id: 'g1', policy: 'anti-affinity' as const };
    assert.ok((await p.claim(claimOf('w1', 'h1', { group: anti }), LIMITS)).claimed);
    assert.deepEqual(await p.claim(claimOf('w2', 'h1', { group: anti }), LIMITS), { claimed: false, reason: 'group', memberHosts: ['h1'] });
    assert.ok((await p.claim(claimOf('w2', 'h2', { group: anti }), LIMITS)).claimed);
    assert.deepEqual([...(await p.countsByHost({ groupId: 'g1' }))], [['h1', 1], ['h2', 1]]);
    const aff = { id: 'g2', policy: 'affinity' as const };
    assert.ok((await p.claim(claimOf('d1', 'h3', { group: aff }), LIMITS)).claimed);
    assert.deepEqual(await p.claim(claimOf('d2', 'h1', { group: aff }), LIMITS), { claimed: false, reason: 'group', memberHosts: ['h3'] });
    assert.ok((await p.claim(claimOf('d2', 'h3', { group: aff }), LIMITS)).claimed);
    // a hard policy holds for moves too
    await rejectsWith(p.move('w2', 'h1', LIMITS), 'Conflict', /breaks server group web's anti-affinity policy/);
    await rejectsWith(p.move('d2', 'h1', LIMITS), 'Conflict', /affinity/);
    await rejectsWith(p.claim(claimOf('x1', 'h1', { group: { id: 'nope', policy: 'anti-affinity' } }), LIMITS), 'NotFound', /server group nope/);
    await rejectsWith(p.claim(claimOf('x2', 'h1', { group: { id: 'nope', policy: 'soft-affinity' } }), LIMITS), 'NotFound', /server group nope/);
    assert.deepEqual((await p.usage('h1')).map((u) => u.instances), [1], 'refused claims left no usage');

    await rejectsWith(p.deleteGroup('g1'), 'Conflict', /still has 2 member\(s\): w1, w2/);
    await p.release('w1');
    await p.release('w2');
    assert.equal(await p.deleteGroup('g1'), true);
    assert.equal(await p.deleteGroup('g1'), false);
    assert.equal(await p.group('g1'), undefined);
  });

  test(`${name}: placement: claims, moves and releases do not wait for the store's transactions (no store-wide lock)`, async (t) => {
    const s = await setup(t);
    if (s.kind === 'sqlite') return; // one writer: there, everything waits its turn
    await s.placement.insertGroup(groupOf('g1', 'web', 'anti-affinity'));
    let leave!: () => void;
    const held = new Promise<void>((ok) => (leave = ok));
    let entered!: () => void;
    const inside = new Promise<void>((ok) => (entered = ok));
    // a long store transaction holds the cluster-wide transaction lock meanwhile
    const long = s.transaction(async () => {
      await s.projects.get('p1');
      entered();
      await held;
    });
    await inside;
    try {
      const work = (async () => {
        assert.ok((await s.placement.claim(claimOf('c1', 'h1'), LIMITS)).claimed);
        assert.ok((await s.placement.claim(claimOf('c2', 'h1', { group: { id: 'g1', policy: 'anti-affinity' } }), LIMITS)).claimed);
        await s.placement.move('c2', 'h2', LIMITS);
        await s.placement.release('c1');
        return s.placement.recomputeUsage('h1');
      })();
      const late = new Promise<'late'>((ok) => setTimeout(() => ok('late'), 5000).unref());
      assert.equal(await Promise.race([work, late]), false, 'placement work finished while the store transaction ran');
    } finally {
      leave();
      await long;
    }
  });

  test(`${name}: placement: hard anti-affinity holds under concurrent claims of one group`, async (t) => {
    const s = await setup(t);
    await s.placement.insertGroup(groupOf('g1', 'web', 'anti-affinity'));
    const hosts = ['h1', 'h2', 'h3'];
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) =>
      s.placement.claim(claimOf(`w${i}`, hosts[i % 3]!, { group: { id: 'g1', policy: 'anti-affinity' } }), LIMITS)));
    assert.equal(results.filter((r) => r.claimed).length, 3);
    assert.deepEqual((await s.placement.allocations({ groupId: 'g1' })).map((a) => a.host).sort(), hosts);
  });

  test(`${name}: placement: claims of several hard groups, soft groups and none at once: each policy holds, refusals name the members, a missing group fails alone`, async (t) => {
    const s = await setup(t);
    await s.placement.insertGroup(groupOf('anti', 'spread', 'anti-affinity'));
    await s.placement.insertGroup(groupOf('aff', 'together', 'affinity'));
    await s.placement.insertGroup(groupOf('soft', 'loose', 'soft-anti-affinity'));
    const hosts = ['h1', 'h2', 'h3', 'h4'];
    const small = { millicpus: 100, memoryBytes: 64 * 1024 * 1024 };
    const asks = Array.from({ length: 40 }, (_, i) => {
      const host = hosts[i % 4]!;
      const group = i % 5 === 0 ? { id: 'anti', policy: 'anti-affinity' as const } : i % 5 === 1 ? { id: 'aff', policy: 'affinity' as const }
        : i % 5 === 2 ? { id: 'soft', policy: 'soft-anti-affinity' as const } : undefined;
      return claimOf(`m${i}`, host, { ...small, ...(group ? { group } : {}) });
    });
    const missing = rejectsWith(s.placement.claim(claimOf('lost', 'h1', { ...small, group: { id: 'gone', policy: 'anti-affinity' } }), LIMITS), 'NotFound', /server group gone/);
    const results = await Promise.all(asks.map((c) => s.placement.claim(c, LIMITS)));
    await missing;
    const anti = await s.placement.allocations({ groupId: 'anti' });
    assert.equal(new Set(anti.map((a) => a.host)).size, anti.length, 'anti-affinity: one member per host');
    assert.equal(anti.length, 4, 'and every host that could take one did');
    const aff = await s.placement.allocations({ groupId: 'aff' });
    assert.equal(new Set(aff.map((a) => a.host)).size, 1, 'affinity: one host');
    assert.equal(aff.length, 2, 'the members asked for on that host (every 4th of the group\'s asks)');
    assert.equal((await s.placement.allocations({ groupId: 'soft' })).length, 8, 'soft: never refused');
    for (const [i, r] of results.entries()) {
      if (r.claimed) continue;
      assert.equal(r.reason, 'group', `m${i} refused for its group only`);
      // the members when it was refused: some of those at the end, and the reason among them
      const g = asks[i]!.group!.id;
      const final = new Set((g === 'anti' ? anti : aff).map((a) => a.host));
      assert.ok(r.memberHosts.length > 0 && r.memberHosts.every((h) => final.has(h)), `m${i}'s refusal names members' hosts: ${r.memberHosts}`);
      assert.deepEqual(r.memberHosts, [...r.memberHosts].sort());
      if (g === 'anti') assert.ok(r.memberHosts.includes(asks[i]!.host), `m${i}: its host holds a member`);
      else assert.ok(!r.memberHosts.includes(asks[i]!.host), `m${i}: the members are elsewhere`);
    }
    assert.equal(results.filter((r) => r.claimed).length, 4 + 2 + 8 + 16);
    for (const u of await s.placement.usage()) {
      const mine = (await s.placement.allocations({})).filter((a) => a.host === u.host);
      assert.equal(u.instances, mine.length, `${u.host}'s usage row counts its claims`);
    }
  });
}
