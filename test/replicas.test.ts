/**
 * Control-plane replicas on a real PostgreSQL (a cluster of this file's own): leadership is
 * exclusive and moves within seconds when the leader is SIGKILLed or its connection ends,
 * events published on one replica reach the others once each and in order, an operation is
 * waited on from another replica, and only the operations of replicas that are gone are failed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { clusterForTests } from '../scripts/fixtures/postgres.js';
import { openStore } from '../src/store/open.js';
import type { Store } from '../src/store/store.js';
import { PostgresLeadership, newReplicaId, openLeadership, type Leadership } from '../src/control/leader/leadership.js';
import { every, runWhileLeader } from '../src/control/leader/run-while-leader.js';
import { ReplicaRegistry } from '../src/control/leader/replicas.js';
import { Replica } from '../src/control/leader/replica.js';
import { EventBus, type NimbusEvent } from '../src/control/events/event-bus.js';
import { MAX_PAYLOAD_BYTES, type PostgresEventRelay } from '../src/control/events/postgres-relay.js';
import { LEADER_LOCK, LOCK_SPACE, PostgresSession, lockHolder } from '../src/store/sql/postgres-session.js';
import { OperationService } from '../src/control/operations/operations.js';

const theCluster = clusterForTests('the replica tests');
const LEADER_MAIN = join(resolve(import.meta.dirname, '..'), 'test/helpers/leader-process.js'); // dist/test → dist/test/helpers
/** The issue's goal: SIGKILL of the leader → the next leader acts within 5 s. */
const FAILOVER_GOAL_MS = 5_000;

interface Cleanup {
  /** Run after the test, last registered first, before the database is dropped (a drop ends every session). */
  after(fn: () => unknown): void;
}

async function freshDb(t: { after(fn: () => Promise<void>): void }): Promise<{ url: string; cleanup: Cleanup }> {
  const db = await theCluster().freshDatabase();
  // a first open migrates; the tests' stores and sessions open it again
  await (await openStore(db.url)).close();
  const stack: (() => unknown)[] = [];
  t.after(async () => {
    for (const fn of stack.reverse()) await fn();
    await db.drop();
  });
  return { url: db.url, cleanup: { after: (fn) => void stack.push(fn) } };
}

/** Resolves when cond() holds, polling every 20 ms; fails after ms. */
async function until(cond: () => boolean, ms: number, what: string): Promise<number> {
  const started = Date.now();
  while (!cond()) {
    if (Date.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
  return Date.now() - started;
}

/** Samples who leads every 25 ms while fn runs: more than one at once fails the test. */
function neverTwo(contenders: () => Leadership[]): { stop(): void } {
  const timer = setInterval(() => {
    const leaders = contenders().filter((l) => l.isLeader).map((l) => l.replicaId);
    assert.ok(leaders.length <= 1, `two leaders at once: ${leaders.join(', ')}`);
  }, 25);
  return { stop: () => clearInterval(timer) };
}

test('leadership: exactly one of two, then of three contenders leads; the task it gates runs on the leader only and moves when it closes', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const contenders: PostgresLeadership[] = [];
  const runs: string[] = [];
  const stoppers: (() => void | Promise<void>)[] = [];
  const add = async () => {
    const l = new PostgresLeadership(url, newReplicaId(), { tickMs: 200 });
    contenders.push(l);
    stoppers.push(runWhileLeader(l, 'test.task', () => {
      runs.push(`start ${l.replicaId}`);
      return () => void runs.push(`stop ${l.replicaId}`);
    }));
    await l.start();
    return l;
  };
  cleanup.after(async () => {
    for (const s of stoppers) await s();
    for (const l of contenders) await l.close();
  });
  const watch = neverTwo(() => contenders);
  try {
    const first = await add();
    assert.equal(first.isLeader, true, 'alone, it leads as soon as it is open');
    await add();
    await sleep(600); // three tries of the second
    assert.deepEqual(contenders.map((l) => l.isLeader), [true, false]);
    await add();
    await sleep(600);
    assert.deepEqual(contenders.map((l) => l.isLeader), [true, false, false]);
    assert.deepEqual(runs, [`start ${first.replicaId}`]);
    // who holds the lock is the leader's session, found through pg_stat_activity
    assert.deepEqual(await Promise.all(contenders.map((l) => l.currentLeader())), [first.replicaId, first.replicaId, first.replicaId]);
    const probe = await PostgresSession.open(url);
    try {
      assert.equal((await lockHolder(probe, LEADER_LOCK))?.applicationName, PostgresLeadership.applicationName(first.replicaId));
    } finally {
      await probe.close();
    }
    // the leader leaves: its task stops before the lock goes, one of the others takes over
    await first.close();
    assert.deepEqual(runs, [`start ${first.replicaId}`, `stop ${first.replicaId}`]);
    const handover = await until(() => contenders.some((l) => l.isLeader), 2_000, 'a new leader');
    t.diagnostic(`clean handover (tick 200 ms): ${handover} ms`);
    const next = contenders.find((l) => l.isLeader)!;
    assert.deepEqual(runs.slice(2), [`start ${next.replicaId}`]);
  } finally {
    watch.stop();
  }
});

interface Child {
  child: ChildProcess;
  lines: Record<string, unknown>[];
}

function startContender(url: string, replicaId: string, t: Cleanup): Child {
  const child = spawn(process.execPath, [LEADER_MAIN, url, replicaId], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      buf = buf.slice(i + 1);
    }
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, lines };
}

test('leadership: the leading process SIGKILLed, another process leads within the goal (measured, 3 runs)', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const figures: number[] = [];
  for (let run = 0; run < 3; run++) {
    const leader = startContender(url, `killed-${run}`, cleanup);
    await until(() => leader.lines.some((l) => l.leader === true), 10_000, 'the child leads');
    // two followers in other processes, with the production tick (1 s)
    const followers = [startContender(url, `follower-${run}-a`, cleanup), startContender(url, `follower-${run}-b`, cleanup)];
    await until(() => followers.every((f) => f.lines.some((l) => l.ready)), 10_000, 'the followers are up');
    assert.ok(followers.every((f) => !f.lines.some((l) => l.leader === true)), 'followers while the child lives');
    const killedAt = Date.now();
    leader.child.kill('SIGKILL');
    await until(() => followers.some((f) => f.lines.some((l) => l.leader === true)), FAILOVER_GOAL_MS, 'a follower leads after the SIGKILL');
    const leads = followers.filter((f) => f.lines.some((l) => l.leader === true));
    assert.equal(leads.length, 1, 'one follower leads');
    await sleep(1_500);
    assert.equal(followers.filter((f) => f.lines.some((l) => l.leader === true)).length, 1, 'still one, three tries later');
    const at = leads[0]!.lines.find((l) => l.leader === true)!.at as number;
    figures.push(at - killedAt);
    for (const f of followers) f.child.kill('SIGKILL');
    await Promise.all(followers.map((f) => new Promise((r) => (f.child.exitCode !== null || f.child.signalCode !== null ? r(undefined) : f.child.once('exit', r)))));
  }
  t.diagnostic(`SIGKILL of the leader → next leader: ${figures.map((f) => `${f} ms`).join(', ')} (tick 1 s, goal ≤ ${FAILOVER_GOAL_MS} ms)`);
  assert.ok(figures.every((f) => f < FAILOVER_GOAL_MS));
});

test('leadership: the leader\'s connection terminated, it steps down at once and another takes over; it comes back as a follower', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const a = new PostgresLeadership(url, 'replica-a');
  const b = new PostgresLeadership(url, 'replica-b');
  cleanup.after(async () => {
    await a.close();
    await b.close();
  });
  const changes: string[] = [];
  a.onChange((leader) => void changes.push(`a ${leader}`));
  b.onChange((leader) => void changes.push(`b ${leader}`));
  await a.start();
  await b.start();
  assert.equal(a.isLeader, true);
  const watch = neverTwo(() => [a, b]);
  try {
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const terminatedAt = Date.now();
      await admin.query('SELECT pg_terminate_backend($1)', [a.backendPid]);
      const stepDown = await until(() => !a.isLeader, 2_000, 'a steps down');
      const takeover = await until(() => b.isLeader, FAILOVER_GOAL_MS, 'b leads');
      t.diagnostic(`backend terminated → old leader stepped down ${stepDown} ms, new leader ${Date.now() - terminatedAt} ms (${takeover} ms after)`);
    } finally {
      await admin.end();
    }
    await sleep(2_500); // a reconnects and tries
    assert.equal(a.isLeader, false);
    assert.equal(b.isLeader, true);
    assert.deepEqual(changes, ['a true', 'a false', 'b true']);
  } finally {
    watch.stop();
  }
});

test('leadership: on SQLite the process always leads', async () => {
  const l = await openLeadership('/tmp/nowhere.db', 'sole');
  const seen: boolean[] = [];
  const stop = runWhileLeader(l, 'test', () => {
    seen.push(true);
    return () => void seen.push(false);
  });
  assert.equal(l.isLeader, true);
  assert.deepEqual(seen, [true]);
  await l.close();
  assert.deepEqual(seen, [true, false]);
  await stop();
});

async function connectedBus(url: string, replicaId: string, t: Cleanup): Promise<EventBus> {
  const bus = await EventBus.connect({ storeLocation: url, replicaId });
  t.after(() => bus.close());
  return bus;
}

function collect(bus: EventBus): NimbusEvent[] {
  const got: NimbusEvent[] = [];
  bus.on((e) => got.push(e));
  return got;
}

test('events: 1,000 events published on replica A reach B and C once each, in order; A\'s own subscribers see each once; a large one arrives truncated', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const a = await connectedBus(url, 'replica-a', cleanup);
  const b = await connectedBus(url, 'replica-b', cleanup);
  const c = await connectedBus(url, 'replica-c', cleanup);
  const [onA, onB, onC] = [collect(a), collect(b), collect(c)];
  const started = Date.now();
  for (let i = 0; i < 1_000; i++) a.publish({ type: 'container', action: 'start', id: `c${i}`, projectId: 'p1', attributes: { n: i } });
  await until(() => onB.length >= 1_000 && onC.length >= 1_000, 20_000, '1,000 events on B and C');
  t.diagnostic(`1,000 events A → B and C: ${Date.now() - started} ms`);
  await sleep(300); // nothing more comes (no duplicates, no echo)
  for (const [name, got] of [['A', onA], ['B', onB], ['C', onC]] as const) {
    assert.equal(got.length, 1_000, `${name}: each once`);
    assert.deepEqual(got.map((e) => e.attributes?.n), Array.from({ length: 1_000 }, (_, i) => i), `${name}: in publish order`);
  }
  assert.deepEqual(onB.map((e) => e.seq), Array.from({ length: 1_000 }, (_, i) => i + 1), 'B numbers them itself (what since replays by)');
  assert.equal(onB[7]!.time, onA[7]!.time, 'the publishing replica\'s time');
  // B's relayed events replay by B's numbering
  const replayed: NimbusEvent[] = [];
  const ac = new AbortController();
  for await (const e of b.subscribe({ since: 998 }, ac.signal)) {
    replayed.push(e);
    if (replayed.length === 2) ac.abort();
  }
  assert.deepEqual(replayed.map((e) => e.id), ['c998', 'c999']);
  // both ways, interleaved: each replica's events in its order
  onA.length = 0;
  onB.length = 0;
  for (let i = 0; i < 50; i++) {
    a.publish({ type: 'x', action: 'a', id: `a${i}` });
    b.publish({ type: 'x', action: 'b', id: `b${i}` });
  }
  await until(() => onA.length >= 100 && onB.length >= 100, 10_000, 'both ways');
  for (const got of [onA, onB]) {
    assert.deepEqual(got.filter((e) => e.action === 'a').map((e) => e.id), Array.from({ length: 50 }, (_, i) => `a${i}`));
    assert.deepEqual(got.filter((e) => e.action === 'b').map((e) => e.id), Array.from({ length: 50 }, (_, i) => `b${i}`));
  }
  // larger than a NOTIFY payload: whole on A, without its attributes (flagged) elsewhere
  onA.length = 0;
  onB.length = 0;
  const big = 'x'.repeat(MAX_PAYLOAD_BYTES);
  a.publish({ type: 'image', action: 'pull', id: 'big', projectId: 'p1', attributes: { blob: big } });
  a.publish({ type: 'image', action: 'pull', id: 'after', projectId: 'p1' });
  await until(() => onB.length >= 2, 5_000, 'the large event');
  assert.deepEqual(onB.map((e) => [e.id, e.projectId, e.attributes]), [['big', 'p1', { truncated: true }], ['after', 'p1', undefined]]);
  assert.equal(onA[0]!.attributes?.blob, big);
  assert.equal(((a as unknown as { relay: PostgresEventRelay }).relay).dropped, 0);
});

test('events: a relay\'s connection terminated, it reconnects: what its replica published meanwhile is sent after, what others published meanwhile is missed', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const a = await connectedBus(url, 'replica-a', cleanup);
  const b = await connectedBus(url, 'replica-b', cleanup);
  const onB = collect(b);
  const terminate = async (replicaId: string) => {
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const r = await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, [`nimbus-events:${replicaId}`]);
      assert.equal(r.rowCount, 1);
    } finally {
      await admin.end();
    }
  };
  // the publisher's session goes: its events wait in the outbox, in order
  await terminate('replica-a');
  await sleep(50);
  for (let i = 0; i < 3; i++) a.publish({ type: 'x', action: 'y', id: `while-a-down-${i}` });
  await until(() => onB.length >= 3, 5_000, 'sent once A\'s session is back');
  // the receiver's session goes: it misses what is published until it listens again (at most once)
  await terminate('replica-b');
  await sleep(50);
  a.publish({ type: 'x', action: 'y', id: 'while-b-down' });
  await sleep(2_000);
  a.publish({ type: 'x', action: 'y', id: 'after' });
  await until(() => onB.some((e) => e.id === 'after'), 5_000, 'relayed after B\'s reconnect');
  assert.deepEqual(onB.map((e) => e.id), ['while-a-down-0', 'while-a-down-1', 'while-a-down-2', 'after']);
});

async function openStores(url: string, n: number, t: Cleanup): Promise<Store[]> {
  const stores = await Promise.all(Array.from({ length: n }, () => openStore(url)));
  t.after(async () => {
    for (const s of stores) await s.close();
  });
  return stores;
}

test('operations: started on replica A, waited on from replica B, finishing on A; B is woken by the relayed event', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const [storeA, storeB] = await openStores(url, 2, cleanup);
  const a = new OperationService(storeA!, await connectedBus(url, 'replica-a', cleanup), { replicaId: 'replica-a' });
  // a 60 s poll: only the relayed event can end B's wait in time
  const b = new OperationService(storeB!, await connectedBus(url, 'replica-b', cleanup), { replicaId: 'replica-b', waitPollMs: 60_000 });
  let release!: () => void;
  const op = await a.start('test.work', 'target', 'p1', async (h) => {
    h.progress({ phase: 'one' });
    await new Promise<void>((r) => (release = r));
    return { answer: 42 };
  });
  assert.equal((await b.get(op.id)).replica, 'replica-a');
  assert.equal((await b.wait(op.id, 100)).status, 'running', 'a wait that times out answers the record');
  const waited = b.wait(op.id, 30_000);
  await sleep(200);
  const released = Date.now();
  release();
  const done = await waited;
  t.diagnostic(`end on A → B's wait returned: ${Date.now() - released} ms`);
  assert.equal(done.status, 'succeeded');
  assert.deepEqual(done.result, { answer: 42 });
  assert.ok(Date.now() - released < 5_000);
});

test('operations: the leader fails the operations of a replica that is gone, never those of a live one', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const [storeA, storeB, storeL] = await openStores(url, 3, cleanup);
  const leaderBus = await connectedBus(url, 'replica-l', cleanup);
  const busB = await connectedBus(url, 'replica-b', cleanup);
  const regA = await ReplicaRegistry.start(storeA!, { replicaId: 'replica-a', heartbeatMs: 200 });
  const regB = await ReplicaRegistry.start(storeB!, { replicaId: 'replica-b', heartbeatMs: 200, apiUrl: 'https://b:8443' });
  const regL = await ReplicaRegistry.start(storeL!, { replicaId: 'replica-l', heartbeatMs: 200 });
  cleanup.after(async () => {
    await regB.close();
    await regL.close();
  });
  const a = new OperationService(storeA!, new EventBus(), { replicaId: 'replica-a' });
  const b = new OperationService(storeB!, busB, { replicaId: 'replica-b', waitPollMs: 60_000 });
  // the leader's pass every 200 ms, with a 1 s staleness instead of 15 s
  const leader = new OperationService(storeL!, leaderBus, { replicaId: 'replica-l', replicaStaleMs: 1_000 });
  const leadership = await openLeadership(url, 'replica-l');
  cleanup.after(() => leadership.close());
  const stopReaper = runWhileLeader(leadership, 'operations.failInterrupted', every('operations.failInterrupted', 200, () => leader.failInterrupted()));
  cleanup.after(async () => stopReaper());
  const never = () => new Promise<never>(() => undefined);
  const onA = await a.start('test.work', 'a-target', 'p1', never);
  const onB = await b.start('test.work', 'b-target', 'p1', never);
  await sleep(2_000); // ten passes
  assert.equal((await b.get(onA.id)).status, 'running', 'A is alive: its operation stays running');
  assert.equal((await b.get(onB.id)).status, 'running');
  assert.deepEqual((await regL.list()).map((r) => [r.id, r.live, r.apiUrl]).sort(), [['replica-a', true, null], ['replica-b', true, 'https://b:8443'], ['replica-l', true, null]]);
  // A dies without a word (its heartbeat stops, its row stays): failed once its row is stale
  const waited = b.wait(onA.id, 30_000);
  const died = Date.now();
  (regA as unknown as { closed: boolean }).closed = true;
  clearTimeout((regA as unknown as { timer: NodeJS.Timeout }).timer);
  const failed = await waited;
  t.diagnostic(`replica A gone → its operation failed and B's wait woken: ${Date.now() - died} ms (staleness 1 s, pass 200 ms)`);
  assert.equal(failed.status, 'failed');
  assert.equal(failed.error?.code, 'Unavailable');
  assert.equal((await b.get(onB.id)).status, 'running', 'B is alive: its operation stays running');
});

test('replica: two composed replicas on PostgreSQL list each other and the leader; the leader closes cleanly, its interrupted operation fails at once on the other', async (t) => {
  const { url, cleanup } = await freshDb(t);
  const [storeA, storeB] = await openStores(url, 2, cleanup);
  const a = await Replica.open(storeA!, url, { apiUrl: 'tcp://10.0.0.1:8443' });
  cleanup.after(() => a.close());
  const b = await Replica.open(storeB!, url, { apiUrl: 'tcp://10.0.0.2:8443' });
  cleanup.after(() => b.close());
  const opsA = new OperationService(storeA!, a.events, { replicaId: a.replicaId });
  const opsB = new OperationService(storeB!, b.events, { replicaId: b.replicaId, waitPollMs: 60_000 });
  // as the daemon wires it: the reaper on whichever replica leads
  for (const [r, ops] of [[a, opsA], [b, opsB]] as const) r.whileLeader('operations.failInterrupted', every('operations.failInterrupted', 200, () => ops.failInterrupted()));
  assert.equal(a.leadership.isLeader, true);
  const listing = await b.list();
  assert.equal(listing.self, b.replicaId);
  assert.equal(listing.leader, a.replicaId);
  assert.deepEqual(listing.replicas.map((r) => [r.id, r.leader, r.live, r.apiUrl]), [[a.replicaId, true, true, 'tcp://10.0.0.1:8443'], [b.replicaId, false, true, 'tcp://10.0.0.2:8443']]);
  const op = await opsA.start('test.work', 'target', 'p1', () => new Promise(() => undefined));
  const waited = opsB.wait(op.id, 30_000);
  const closed = Date.now();
  await a.close();
  const failed = await waited;
  t.diagnostic(`leader closed → B leads and has failed A's operation: ${Date.now() - closed} ms`);
  assert.equal(failed.status, 'failed');
  assert.equal(b.leadership.isLeader, true);
  assert.equal((await b.list()).leader, b.replicaId);
});

test('postgres-session: the leader lock key is the one leadership takes', () => {
  assert.equal(LEADER_LOCK, 3);
  assert.equal(LOCK_SPACE, 0x4e494d42);
});
