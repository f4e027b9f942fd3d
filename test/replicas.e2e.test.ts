/**
 * Two control-plane replicas end to end: a real PostgreSQL (clusterForTests), two
 * `nimbusd --store postgres://… --no-agent --tcp 127.0.0.1:0` (A and B, homes and sockets of
 * their own) and one `nimbusd agent` on TCP on this host's loopback, joined once through A
 * (test/helpers/replica-cluster.ts). B runs on A's agent CA, copied into its home before its
 * first start: each home makes its own CA, and an agent joined through A accepts A's only; a
 * third replica on a CA of its own is refused at start.
 * Checked: both replicas see the host and the same single leader; a container made through A
 * is inspected, logged and removed through B; a pull started on A is waited on through B; B's
 * event stream carries A's create; the CLI given both endpoints fails over when A is SIGKILLed;
 * a SIGKILL of the leader (then of the follower) during a burst of creates over both replicas
 * leaves every create whole or gone (records, quota ledger, scheduler claims and the agent's
 * state agree) and the other replica leading within seconds.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import pg from 'pg';
import { clusterForTests } from '../scripts/fixtures/postgres.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { ADMIN_PASSWORD, agentProcess, clusterNetworkEnv, leaderOf, loginToken, startReplica, type AgentProcess, type Replica } from './helpers/replica-cluster.js';
import { waitFor } from './helpers/wait.js';
import { call } from './helpers/http.js';

const HOST = 'host-r';
const BURST = 40;

interface Container { id: string; name: string; status: string; host: string }

let registry: TestRegistry | undefined;
let db: { url: string; drop(): Promise<void> } | undefined;
let A: Replica | undefined;
let B: Replica | undefined;
let agent: AgentProcess | undefined;
let IMAGE: string;
let token: string;
let netEnv: Record<string, string>;

// registered before the cluster's own hooks: after hooks run in that order, so the database is dropped before the cluster stops
after(async () => {
  // containers go through a replica still up (the agent too), then the agent, then the rest
  const errors: unknown[] = [];
  const step = async (fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (e) {
      errors.push(e);
    }
  };
  for (const r of [A, B]) if (r) await step(() => r.destroy());
  let leftMounts: string[] = [];
  if (agent) await step(async () => (leftMounts = await agent!.destroy()));
  if (db) await step(() => db!.drop());
  if (registry) await step(() => registry!.stop());
  if (errors.length) throw errors[0];
  assert.deepEqual(leftMounts, [], 'no mounts left on the agent');
});

const cluster = clusterForTests('the replicas end-to-end test');

async function sql<T extends Record<string, unknown>>(text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: db!.url });
  await c.connect();
  try {
    return (await c.query(text, params)).rows as T[];
  } finally {
    await c.end();
  }
}

/** B's server-sent events, collected as they come; close() ends the stream. */
function eventStream(socketPath: string) {
  const events: Array<{ type: string; action: string; id: string }> = [];
  let buffer = '';
  let connected!: () => void;
  const ready = new Promise<void>((r) => (connected = r));
  const req = request({ socketPath, path: '/events?type=container', method: 'GET' }, (res) => {
    connected();
    res.on('data', (b: Buffer) => {
      buffer += b.toString();
      let i: number;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        for (const line of frame.split('\n')) if (line.startsWith('data: ')) events.push(JSON.parse(line.slice(6)) as { type: string; action: string; id: string });
      }
    });
    res.on('error', () => undefined);
  });
  req.on('error', () => undefined);
  req.end();
  return { events, ready, close: () => req.destroy() };
}

before(async () => {
  registry = await startTestRegistryWithImages();
  IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
  db = await cluster().freshDatabase();
  netEnv = clusterNetworkEnv();
  A = await startReplica('A', db.url, netEnv);
  // every home makes its own agent CA: B starts on a copy of A's (see the header)
  B = await startReplica('B', db.url, netEnv, A);
  const joinToken = await A.cli(['agent', 'join-token', '--ttl', '5m']);
  assert.equal(joinToken.code, 0, joinToken.stderr);
  agent = agentProcess(HOST, A.socket, joinToken.stdout.trim(), netEnv);
  await agent.start();
  token = await loginToken(A);
});

describe('two nimbusd replicas on one PostgreSQL, one agent', { concurrency: false }, () => {
  test('both list the host; both see two live replicas and the same single leader', async () => {
    for (const r of [A!, B!]) {
      const hosts = await r.api<Array<{ name: string }>>('GET', '/agents');
      assert.equal(hosts.status, 200, JSON.stringify(hosts.body));
      assert.deepEqual(hosts.body.map((h) => h.name), [HOST], `${r.name} lists the host`);
    }
    const [la, lb] = [await A!.replicas(), await B!.replicas()];
    assert.notEqual(la.self, lb.self);
    assert.ok(la.leader, 'a leader');
    assert.equal(la.leader, lb.leader, 'the same leader seen from both');
    for (const l of [la, lb]) {
      const live = l.replicas.filter((r) => r.live);
      assert.deepEqual(live.map((r) => r.pid).sort(), [A!.pid(), B!.pid()].sort(), JSON.stringify(l.replicas));
      assert.deepEqual(l.replicas.filter((r) => r.leader).map((r) => r.id), [l.leader]);
      assert.ok(live.every((r) => r.apiUrl?.startsWith('tcp://127.0.0.1:')), 'each records its TCP endpoint');
    }
  });

  test('a third replica on an agent CA of its own is refused at start, saying which directory to copy', async () => {
    await assert.rejects(startReplica('C', db!.url, netEnv), (e: Error) => {
      assert.match(e.message, /exited with 1 before ready/, e.message);
      assert.match(e.message, /agent CA .*agent-ca/, e.message);
      return true;
    });
    assert.deepEqual((await A!.replicas()).replicas.filter((r) => r.live).map((r) => r.pid).sort(), [A!.pid(), B!.pid()].sort(), 'it left no replica row');
  });

  test('failed logins count on both replicas together: five spread over A and B, and the sixth is refused (429) on either, before its password is checked', async () => {
    const login = (r: Replica, password: string) => call({ port: r.port() }, 'POST', '/auth/login', { body: { user: 'admin', password } });
    for (const r of [A!, B!, A!, B!, A!]) assert.equal((await login(r, 'wrong-password')).status, 401, `a wrong password on ${r.name}`);
    for (const r of [B!, A!]) {
      const refused = await login(r, ADMIN_PASSWORD);
      assert.equal(refused.status, 429, `${r.name}: ${refused.status} ${refused.text}`);
      assert.match(refused.text, /login as admin: too many failed attempts/);
    }
    // the store's rows: hashes of the keys, never the name or the address
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const rows = await c.query<{ scope: string; key: string }>('SELECT scope, key FROM failed_attempts');
      assert.deepEqual([...new Set(rows.rows.map((r) => r.scope))].sort(), ['login-source', 'login-user']);
      assert.equal(rows.rows.filter((r) => r.scope === 'login-user').length, 5);
      assert.ok(rows.rows.every((r) => !/admin|127\.0\.0\.1/.test(r.key)), JSON.stringify(rows.rows));
      // the next tests log in as admin again: the throttle is not what they test
      await c.query('DELETE FROM failed_attempts');
    } finally {
      await c.end();
    }
  });

  test('a pull started on A is waited on through B; a container made through A is seen by B\'s events, inspected, logged and removed through B', async () => {
    const pull = await A!.api<{ id: string; status: string }>('POST', '/images/pull', { reference: IMAGE });
    assert.equal(pull.status, 202, JSON.stringify(pull.body));
    const waited = await B!.api<{ id: string; status: string; replica?: string }>('GET', `/operations/${pull.body.id}/wait?timeout=120`);
    assert.equal(waited.status, 200, JSON.stringify(waited.body));
    assert.equal(waited.body.status, 'succeeded', JSON.stringify(waited.body));
    assert.equal(waited.body.replica, (await A!.replicas()).self, 'run by A');

    const stream = eventStream(B!.socket);
    try {
      await stream.ready;
      const made = await A!.api<Container>('POST', '/containers', { image: IMAGE, name: 'via-a', cmd: ['sh', '-c', 'echo hello-from-a; exec sleep 600'], network: 'none', stopSignal: 'SIGKILL', start: true });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      assert.deepEqual([made.body.status, made.body.host], ['running', HOST]);
      const id = made.body.id;
      await waitFor('B\'s event stream to carry A\'s create', async () => (stream.events.some((e) => e.id === id && e.action === 'create') ? true : undefined), 10_000);

      const seen = await B!.api<Container>('GET', `/containers/${id}`);
      assert.deepEqual([seen.status, seen.body.name, seen.body.status, seen.body.host], [200, 'via-a', 'running', HOST]);
      const listed = await B!.api<Container[]>('GET', '/containers');
      assert.ok(listed.body.some((c) => c.id === id), 'B lists it');
      const inspected = await B!.cli(['inspect', 'via-a']);
      assert.equal(inspected.code, 0, inspected.stderr);
      assert.equal((JSON.parse(inspected.stdout) as Container[])[0]!.id, id);
      await waitFor('its logs through B', async () => ((await B!.cli(['logs', 'via-a'])).stdout.includes('hello-from-a') ? true : undefined));
      assert.ok(agent!.containerIds().includes(id), 'its state is on the agent');
      const removed = await B!.api('DELETE', `/containers/${id}?force=true`);
      assert.equal(removed.status, 204, JSON.stringify(removed.body));
      assert.equal((await A!.api('GET', `/containers/${id}`)).status, 404, 'gone for A too');
      await waitFor('the agent to destroy its state', async () => (!agent!.containerIds().includes(id) ? true : undefined), 30_000);
    } finally {
      stream.close();
    }
  });

  test('the CLI given both endpoints works while A is up and after A is SIGKILLed', async () => {
    const cli = (args: string[]) => B!.cli(args, { NIMBUS_SOCKET: '', NIMBUS_HOST: `${A!.url()},${B!.url()}`, NIMBUS_TOKEN: token });
    const ok = async (args: string[]) => {
      const r = await cli(args);
      assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const first = (await ok(['run', '-d', '--name', 'cli-1', '--network', 'none', IMAGE, 'sleep', '600'])).trim();
    assert.match(await ok(['ps']), /cli-1/);
    await A!.kill('SIGKILL');
    const t0 = Date.now();
    assert.match(await ok(['ps']), /cli-1/, 'listed through B');
    const failoverMs = Date.now() - t0;
    const second = (await ok(['run', '-d', '--name', 'cli-2', '--network', 'none', IMAGE, 'sleep', '600'])).trim();
    const both = await ok(['ps', '-q']);
    for (const id of [first, second]) assert.ok(both.includes(id.slice(0, 12)), `${id} in ${both}`);
    await ok(['rm', '-f', 'cli-1', 'cli-2']);
    process.stderr.write(`[replicas] CLI after SIGKILL of A: first command answered in ${failoverMs} ms\n`);
    // B leads now; A comes back as a new replica, a follower
    await waitFor('B to lead', async () => ((await leaderOf(B!, [A!, B!])) === B ? true : undefined), 10_000);
    await A!.restart();
  });

  test(`SIGKILL of the leader during ${BURST} creates over both replicas: every create whole or gone, the follower leads within 5 s`, async () => {
    await burstWithKill('leader', 'burst');
    // the killed replica comes back (a new replica, a follower) for the next test
    const dead = [A!, B!].find((r) => r.child().exitCode !== null || r.child().signalCode !== null)!;
    await dead.restart();
  });

  // what the killed follower half-made is settled by the leader once the follower is seen gone
  // (src/control/leader/gone-replicas.ts; about 15 s to be gone, then a 5 s pass)
  test(`SIGKILL of the follower during ${BURST} creates over both replicas: every create whole or gone, the leader stays`, async () => {
    await burstWithKill('follower', 'fburst');
  });
});

/**
 * BURST creates with start, alternating over A and B (their unix sockets), the chosen replica
 * SIGKILLed once a few have finished; then every success runs on the agent, and records, quota
 * ledger, scheduler claims and the agent's state name the same containers.
 */
async function burstWithKill(which: 'leader' | 'follower', prefix: string): Promise<void> {
  const replicas = [A!, B!];
  const leader = await leaderOf(A!, replicas);
  assert.ok(leader, 'a leader');
  const killed = which === 'leader' ? leader : replicas.find((r) => r !== leader)!;
  const survivor = replicas.find((r) => r !== killed)!;
  const results: Array<{ via: string; status: number | 'error'; id?: string; error?: string }> = [];
  let settled = 0;
  const creates = Array.from({ length: BURST }, (_, i) => {
    const via = replicas[i % 2]!;
    return via.api<Container & { error?: { message: string } }>('POST', '/containers', { image: IMAGE, name: `${prefix}-${i}`, cmd: ['sleep', '600'], network: 'none', stopSignal: 'SIGKILL', start: true })
      .then((r) => (results[i] = { via: via.name, status: r.status, ...(r.status === 201 ? { id: r.body.id } : { error: JSON.stringify(r.body) }) }),
        (e: unknown) => (results[i] = { via: via.name, status: 'error', error: String(e) }))
      .finally(() => settled++);
  });
  // kill once the burst is under way: some done, most in flight on both replicas
  await waitFor('the first creates to finish', async () => (settled >= 4 ? true : undefined), 60_000, 10);
  const killedAt = Date.now();
  const settledAtKill = settled;
  await killed.kill('SIGKILL');
  const leadsMs = await waitFor(`${survivor.name} to lead`, async () => ((await leaderOf(survivor, replicas)) === survivor ? Date.now() - killedAt : undefined), 15_000, 50);
  await Promise.all(creates);
  const ok = results.filter((r) => r.status === 201);
  const failed = results.filter((r) => r.status !== 201);
  process.stderr.write(`[replicas] ${which} ${killed.name} SIGKILLed after ${settledAtKill} of ${BURST} creates settled; ${survivor.name} ${which === 'leader' ? 'led' : 'still leads'} ${leadsMs} ms later; ` +
    `created ${ok.length}, failed ${failed.length} (${[...new Set(failed.map((f) => `${f.via}:${f.status}`))].join(', ')})\n`);
  assert.ok(leadsMs < 5_000, `${survivor.name} led ${leadsMs} ms after the kill`);
  assert.ok(ok.length > 0, 'some creates succeeded');
  for (const f of failed) assert.ok(f.via === killed.name, `only the killed replica's requests failed: ${JSON.stringify(f)}`);

  // every success: the container exists and runs on the agent
  for (const r of ok) {
    const c = await survivor.api<Container>('GET', `/containers/${r.id}`);
    assert.deepEqual([c.status, c.body.status, c.body.host], [200, 'running', HOST], `${r.id} made through ${r.via}`);
    assert.ok(agent!.containerIds().includes(r.id!), `${r.id} on the agent`);
  }
  // what the killed replica left half-made is settled (by the new leader's reconcile, if it led): records, ledger, claims and agent agree
  const settledAt = Date.now();
  let last = '';
  await waitFor('records, quota ledger, claims and the agent to agree', async () => {
    const records = (await survivor.api<Container[]>('GET', '/containers?all=true&project=*')).body;
    const ids = records.map((c) => c.id).sort();
    const networks = new Set((await sql<{ id: string }>('SELECT id FROM networks')).map((r) => r.id));
    const charged = (await sql<{ id: string }>('SELECT id FROM quota_instances')).map((r) => r.id).filter((id) => !networks.has(id)).sort();
    const claims = (await sql<{ consumer_id: string }>('SELECT consumer_id FROM placement_allocations')).map((r) => r.consumer_id).sort();
    const onAgent = agent!.containerIds().filter((id) => !id.startsWith('.')).sort();
    const statuses = records.map((c) => c.status);
    // the differences, named (a record by name and status), as the evidence if they never agree
    const named = (id: string) => {
      const c = records.find((r) => r.id === id);
      return c ? `${c.name}=${c.status}` : id.slice(0, 12);
    };
    const minus = (a: string[], b: string[]) => a.filter((x) => !b.includes(x)).map(named);
    last = JSON.stringify({
      records: ids.length, statuses: Object.fromEntries([...new Set(statuses)].map((st) => [st, statuses.filter((x) => x === st).length])),
      chargedWithoutRecord: minus(charged, ids), recordNotCharged: minus(ids, charged), claimWithoutRecord: minus(claims, ids), recordNotClaimed: minus(ids, claims),
      onAgentWithoutRecord: minus(onAgent, ids), recordNotOnAgent: minus(ids, onAgent),
    });
    const same = (a: string[]) => a.length === ids.length && a.every((x, i) => x === ids[i]);
    return same(charged) && same(claims) && same(onAgent) && statuses.every((st) => st === 'running' || st === 'created' || st === 'exited') ? records : undefined;
  }, 60_000, 500).catch((e: unknown) => {
    throw new Error(`${String(e)}: ${last}`);
  });
  const records = (await survivor.api<Container[]>('GET', '/containers?all=true&project=*')).body.filter((c) => c.name.startsWith(`${prefix}-`));
  const failedButKept = records.filter((c) => !ok.some((r) => r.id === c.id));
  process.stderr.write(`[replicas] consistent ${Date.now() - settledAt} ms after the burst; ${records.length} records ` +
    `(${failedButKept.length} from creates whose client saw an error: ${failedButKept.map((c) => `${c.name}=${c.status}`).join(', ') || 'none'})\n`);
  for (const c of failedButKept) assert.ok(c.status === 'created' || c.status === 'running', `${c.name}: ${c.status}`);
  // the survivor serves on: one more create
  const next = await survivor.api<Container>('POST', '/containers', { image: IMAGE, name: `${prefix}-after`, cmd: ['sleep', '600'], network: 'none', stopSignal: 'SIGKILL', start: true });
  assert.equal(next.status, 201, JSON.stringify(next.body));
}
