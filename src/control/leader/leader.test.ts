// Leadership on the embedded store, the runner of leader-only tasks, and the replicas' rows
// (PostgreSQL's leadership, relay and failover: test/replicas.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore } from '../../store/open.js';
import { openLeadership, type Leadership } from './leadership.js';
import { every, runWhileLeader } from './run-while-leader.js';
import { REPLICA_STALE_MS, ReplicaRegistry, forgetGoneReplicas } from './replicas.js';
import { Replica } from './replica.js';

/** A leadership the test flips by hand. */
class Flip implements Leadership {
  isLeader = false;
  readonly replicaId = 'flip';
  private readonly cbs: ((l: boolean) => void | Promise<void>)[] = [];
  onChange(cb: (l: boolean) => void | Promise<void>) {
    this.cbs.push(cb);
  }
  async set(l: boolean) {
    this.isLeader = l;
    await Promise.all(this.cbs.map((cb) => cb(l)));
  }
  async close() {
    await this.set(false);
  }
  async currentLeader() {
    return this.isLeader ? this.replicaId : undefined;
  }
}

test('leader: on SQLite the process leads from the start; a task runs while it leads', async () => {
  const l = await openLeadership('/tmp/some-home/nimbus.db', 'r1');
  assert.equal(l.isLeader, true);
  const seen: string[] = [];
  const stop = runWhileLeader(l, 't', () => {
    seen.push('start');
    return () => void seen.push('stop');
  });
  assert.deepEqual(seen, ['start']);
  await stop();
  assert.deepEqual(seen, ['start', 'stop']);
  await l.close();
  assert.deepEqual(seen, ['start', 'stop'], 'a stopped runner does not stop twice');
});

test('leader: runWhileLeader starts on each rise and stops on each fall; every() runs passes one at a time and waits for the one in flight', async () => {
  const l = new Flip();
  let passes = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const stop = runWhileLeader(l, 'count', every('count', 10, async () => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await sleep(15);
    passes++;
    inFlight--;
  }));
  await sleep(50);
  assert.equal(passes, 0, 'not while a follower');
  await l.set(true);
  await sleep(120);
  await l.set(false);
  const afterFall = passes;
  assert.ok(afterFall >= 3, `passes while leading: ${afterFall}`);
  assert.equal(inFlight, 0, 'the stopper waited for the pass in flight');
  await sleep(60);
  assert.equal(passes, afterFall, 'none after stepping down');
  assert.equal(maxInFlight, 1);
  await l.set(true);
  await sleep(40);
  assert.ok(passes > afterFall, 'started again');
  await stop();
  const final = passes;
  await l.set(true);
  await sleep(40);
  assert.equal(passes, final, 'a stopped runner never starts again');
});

test('replicas: registered with a heartbeat, listed live or gone, deleted on close; on SQLite the rows of earlier processes go at start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-replicas-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const earlier = await ReplicaRegistry.start(store, { replicaId: 'earlier', heartbeatMs: 20 });
  // killed: no heartbeat, no goodbye
  (earlier as unknown as { closed: boolean }).closed = true;
  clearTimeout((earlier as unknown as { timer: NodeJS.Timeout }).timer);
  const me = await ReplicaRegistry.start(store, { replicaId: 'me', heartbeatMs: 20, apiUrl: 'https://h:8443' });
  const [row] = await me.list();
  assert.deepEqual([row?.id, row?.live, row?.apiUrl, row?.pid], ['me', true, 'https://h:8443', process.pid], 'the killed one\'s row went');
  const seen = row!.lastSeen;
  await sleep(80);
  assert.ok((await me.list())[0]!.lastSeen > seen, 'heartbeat');
  assert.equal((await me.list(Date.now() + REPLICA_STALE_MS + 1))[0]!.live, false, 'not seen for the staleness delay: gone');
  // pruned behind its back (a partition longer than the forget delay): it registers again
  assert.equal(await forgetGoneReplicas(store, Date.now() + 24 * 3600_000), 1);
  await sleep(80);
  assert.deepEqual((await me.list()).map((r) => r.id), ['me']);
  await me.close();
  assert.deepEqual(await me.list(), []);
});

test('replica: one piece for the daemon on SQLite: leads, lists itself as leader, runs leader tasks, closes in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-replica-'));
  const location = join(dir, 'nimbus.db');
  const store = await openStore(location);
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const replica = await Replica.open(store, location);
  const order: string[] = [];
  replica.whileLeader('task', () => {
    order.push('task started');
    return () => void order.push('task stopped');
  });
  assert.equal(replica.leadership.isLeader, true);
  await replica.registry.setApiUrl('tcp://127.0.0.1:8443');
  const listing = await replica.list();
  assert.equal(listing.self, replica.replicaId);
  assert.equal(listing.leader, replica.replicaId);
  assert.deepEqual(listing.replicas.map((r) => [r.id, r.leader, r.live, r.apiUrl]), [[replica.replicaId, true, true, 'tcp://127.0.0.1:8443']]);
  const seen: string[] = [];
  replica.events.on((e) => seen.push(e.id));
  replica.events.publish({ type: 'x', action: 'y', id: 'in-process' });
  assert.deepEqual(seen, ['in-process']);
  await replica.close();
  assert.deepEqual(order, ['task started', 'task stopped']);
  assert.equal(replica.leadership.isLeader, false);
  assert.deepEqual(await store.operations.listReplicas(), [], 'its row went');
});
