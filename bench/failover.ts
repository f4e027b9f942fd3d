/**
 * Failover: the time from a SIGKILL of the leading control-plane replica to (1) the other
 * replica leading (GET /replicas) and (2) the next create through it that was admitted,
 * placed by the scheduler, claimed and made on the host. Goal ≤ 5 s for both.
 *
 * Two `nimbusd --store postgres://… --no-agent` replicas on a throwaway PostgreSQL
 * (scripts/fixtures/postgres.ts) and one real `nimbusd agent` on loopback TCP, joined through
 * the first (test/helpers/replica-cluster.ts; the second replica runs on a copy of the first's
 * agent CA). Each round: a load of creates over both replicas (BENCH_FAILOVER_CONCURRENCY
 * workers, default 4, alternating replicas), then the leader is SIGKILLed; a probe sends creates
 * back to back to the survivor from the kill on. The killed replica comes back as a follower
 * (a new replica) for the next round, the round's containers are removed.
 *   node dist/bench/run.js failover        BENCH_FAILOVER_ROUNDS (default 3)
 */
import { startPostgres } from '../scripts/fixtures/postgres.js';
import { agentProcess, clusterNetworkEnv, leaderOf, startReplica, type Replica } from '../test/helpers/replica-cluster.js';
import { cleanup } from './lib/cleanup.js';
import { summarize } from './lib/stats.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';

const BENCH = 'failover';
const GOAL_MS = 5_000;

interface Round {
  killed: string;
  /** SIGKILL → GET /replicas on the survivor names it the leader */
  leaderMs: number;
  /** SIGKILL → the first create sent to the survivor after the kill answered 201 */
  createMs: number;
  /** that create's own latency (admission, placement, claim, the host's create) */
  createLatencyMs: number;
  /** creates of the load that succeeded / failed over the round (failures: the killed replica's in-flight ones) */
  loadOk: number;
  loadFailed: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function failover(env: BenchEnv): Promise<BenchOutcome> {
  const rounds = Number(process.env.BENCH_FAILOVER_ROUNDS ?? 3);
  const concurrency = Number(process.env.BENCH_FAILOVER_CONCURRENCY ?? 4);
  const pg = await startPostgres();
  cleanup.add('failover: PostgreSQL', () => pg.stop());
  const db = await pg.freshDatabase();
  const netEnv = clusterNetworkEnv();
  // cleanup runs last-added first: the replicas remove their containers while the agent is still up
  let agent: ReturnType<typeof agentProcess> | undefined;
  cleanup.add('failover: agent', () => agent?.destroy());
  const a = await startReplica('A', db.url, netEnv);
  cleanup.add('failover: replica A', () => a.destroy());
  const b = await startReplica('B', db.url, netEnv, a);
  cleanup.add('failover: replica B', () => b.destroy());
  const joinToken = await a.cli(['agent', 'join-token', '--ttl', '5m']);
  if (joinToken.code !== 0) throw new Error(`join-token: ${joinToken.stderr}`);
  agent = agentProcess('bench-host', a.socket, joinToken.stdout.trim(), netEnv);
  await agent.start();
  const pulled = await a.cli(['pull', env.busybox]);
  if (pulled.code !== 0) throw new Error(`pull: ${pulled.stderr}`);

  const replicas = [a, b];
  let seq = 0;
  const create = (r: Replica) => r.api<{ id: string }>('POST', '/containers', { image: env.busybox, name: `fo-${++seq}`, cmd: ['sleep', '600'], network: 'none', stopSignal: 'SIGKILL', start: true });
  const results: Round[] = [];
  for (let round = 0; round < rounds; round++) {
    const leader = await leaderOf(a, replicas);
    if (!leader) throw new Error('no leader before the round');
    const survivor = replicas.find((r) => r !== leader)!;
    let stop = false;
    let loadOk = 0;
    let loadFailed = 0;
    const workers = Array.from({ length: concurrency }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const via = replicas[(w + i) % 2]!;
        if (via.child().exitCode !== null || via.child().signalCode !== null) continue;
        await create(via).then((r) => (r.status === 201 ? loadOk++ : loadFailed++), () => loadFailed++);
      }
    });
    await sleep(2_000);
    const killedAt = Date.now();
    await leader.kill('SIGKILL');
    // the probe: creates to the survivor back to back from the kill on
    const probe = (async () => {
      for (;;) {
        const sent = Date.now();
        const r = await create(survivor).catch(() => undefined);
        if (r?.status === 201) return { createMs: Date.now() - killedAt, createLatencyMs: Date.now() - sent };
        if (Date.now() - killedAt > 60_000) throw new Error(`no create succeeded through ${survivor.name} within 60 s of the kill: ${JSON.stringify(r)}`);
      }
    })();
    let leaderMs: number | undefined;
    while (leaderMs === undefined) {
      if ((await leaderOf(survivor, replicas)) === survivor) leaderMs = Date.now() - killedAt;
      else if (Date.now() - killedAt > 60_000) throw new Error(`${survivor.name} did not lead within 60 s of the kill`);
      else await sleep(25);
    }
    const { createMs, createLatencyMs } = await probe;
    stop = true;
    await Promise.all(workers);
    results.push({ killed: leader.name, leaderMs, createMs, createLatencyMs, loadOk, loadFailed });
    note(BENCH, `round ${round + 1}: killed leader ${leader.name}; ${survivor.name} led after ${leaderMs} ms, next create after ${createMs} ms (its latency ${createLatencyMs} ms); load ${loadOk} ok / ${loadFailed} failed`);
    // the killed replica back as a follower; the round's containers gone
    await leader.restart();
    const list = await survivor.api<Array<{ id: string }>>('GET', '/containers?all=true&project=*');
    for (const c of list.body) await survivor.api('DELETE', `/containers/${c.id}?force=true`);
  }
  await db.drop();

  const leaderStats = summarize(results.map((r) => r.leaderMs));
  const createStats = summarize(results.map((r) => r.createMs));
  const worstLeader = Math.max(...results.map((r) => r.leaderMs));
  const worstCreate = Math.max(...results.map((r) => r.createMs));
  return {
    record: makeRecord(BENCH, { results: { rounds: results, leaderMs: leaderStats, nextCreateMs: createStats, goalMs: GOAL_MS, concurrency } }),
    summary: [
      { bench: BENCH, figure: 'SIGKILL of the leader → the other replica leads (worst round)', unit: 'ms', nimbus: worstLeader, peers: {}, ratio: null, goal: `≤ ${GOAL_MS} ms`, met: worstLeader <= GOAL_MS, note: `rounds ${results.map((r) => r.leaderMs).join(' / ')} ms` },
      { bench: BENCH, figure: 'SIGKILL of the leader → next create admitted, placed, claimed (worst round)', unit: 'ms', nimbus: worstCreate, peers: {}, ratio: null, goal: `≤ ${GOAL_MS} ms`, met: worstCreate <= GOAL_MS, note: `rounds ${results.map((r) => r.createMs).join(' / ')} ms` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(BENCH, failover);
