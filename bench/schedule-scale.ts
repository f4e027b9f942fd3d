/**
 * Scheduling at scale (issue 14): 1,000 SIMULATED hosts (bench/lib/sim-host.ts: in-memory
 * agents behind the real agent protocol server, on unix sockets) registered through the agent
 * protocol, 10,000 projects, 1,000 server groups, then 20,000 placements from 1,000 concurrent
 * clients through TWO control-plane replicas on one PostgreSQL (started here, thrown away after).
 *
 * A "placement" is one FilterScheduler.place() call in a replica process: candidates from that
 * replica's AgentDirectory (which reached the hosts over the agent protocol), every filter,
 * every weigher, and the atomic claim in PostgreSQL. Each replica is its own node process with
 * its own store pool, directory and scheduler, driven by 500 concurrent callers (in-process
 * calls, not HTTP: the API's quota, images and agent calls are other benchmarks). Its decision
 * latency is the place() call's wall time, queueing behind the other 499 callers included.
 *
 * At the end the store is read back to prove: no host's claims exceed capacity × allocation
 * ratio, every host's usage row equals the sum of its claims, every hard anti-affinity group
 * has at most one member per host, and every hard affinity group sits on one host.
 *
 *   node dist/bench/schedule-scale.js [--quick]     (or: node dist/bench/run.js schedule-scale)
 * Environment: BENCH_SCHED_QUICK=1 (200 hosts, 2,000 projects, 4,000 placements, 200 clients),
 * BENCH_SCHED_POOL (store connections per replica, default the store's 10),
 * BENCH_SCHED_CPU_PROF=DIR (a --cpu-prof of replica 0 into DIR),
 * BENCH_SCHED_CACHE_CANDIDATES=1 (an EXPERIMENT, labelled in the record: each replica reuses the
 * directory's candidate list for up to 1 s instead of building it per placement, to show what
 * that product change would be worth; not the default figure).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { toNimbusError } from '../src/core/errors.js';
import { setLogLevel } from '../src/core/log.js';
import { SPOKEN_PROTOCOL } from '../src/agent/remote/agent-protocol.js';
import { AgentDirectory } from '../src/control/agents/agent-directory.js';
import { remoteAgentConnector } from '../src/control/agents/agent-connections.js';
import { effectiveRatios } from '../src/control/agents/host-settings.js';
import { FilterScheduler, limitsOf } from '../src/control/scheduler/filter-scheduler.js';
import { ServerGroupService } from '../src/control/scheduler/groups.js';
import type { HostCandidate, PlacementRequest } from '../src/control/scheduler/types.js';
import { FakeAgent } from '../src/control/testing/fake-agent.js';
import type { ServerGroupPolicy } from '../src/store/repos/placement.js';
import { openStore } from '../src/store/open.js';
import type { Store } from '../src/store/store.js';
import { startPostgres } from '../scripts/fixtures/postgres.js';
import { seeded } from '../scripts/fixtures/seeded.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runBenchmarks, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { defaultSimSpecs, startSimHosts, type SimHost } from './lib/sim-host.js';
import { postmasterPid, treeCpuMs } from './lib/proc-cpu.js';
import { percentile, round } from './lib/stats.js';

const BENCH = 'schedule-scale';
const GOAL_PER_SEC = 2000;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const REPLICAS = 2;

interface Size {
  hosts: number;
  /** Hosts labelled pool=hot: the requests that ask for them overflow them on purpose. */
  hotHosts: number;
  projects: number;
  groups: number;
  /** Hard anti-affinity groups that get half of all group members (so they contend on the group lock). */
  bigGroups: number;
  placements: number;
  clients: number;
}

const FULL: Size = { hosts: 1000, hotHosts: 10, projects: 10_000, groups: 1000, bigGroups: 20, placements: 20_000, clients: 1000 };
const QUICK: Size = { hosts: 200, hotHosts: 4, projects: 2000, groups: 200, bigGroups: 8, placements: 4000, clients: 200 };

interface GroupSpec {
  id: string;
  projectId: string;
  policy: ServerGroupPolicy;
}

type ToReplica =
  | { type: 'start'; index: number; url: string; register: SimHost[]; expectHosts: number; groups: GroupSpec[]; size: Size }
  | { type: 'go' }
  | { type: 'stop' };

interface ReplicaResult {
  index: number;
  /** Epoch ms (performance.timeOrigin based) of the first call and the last answer. */
  startedAt: number;
  endedAt: number;
  /** place() wall time per request, ms; outcome 'placed' or the error's code. */
  latencies: number[];
  outcomes: string[];
  failureSample: Record<string, string>;
  registerMs: number;
  /** Where the work went: claims sent to the store and refused by it, HostSource.candidates() calls. */
  counters: { claims: number; refusedCapacity: number; refusedGroup: number; candidateCalls: number; refusedWithHostsDown: number; mostHostsDown: number };
  /** CPU time (user + system) the replica process used while placing: independent of what else runs on the machine. */
  cpuMs: number;
}

type FromReplica =
  | { type: 'ready'; index: number; registerMs: number; hostsSeen: number }
  | ({ type: 'done' } & ReplicaResult)
  | { type: 'error'; index: number; message: string };


const projectId = (k: number) => `bench-p${k}`;

/**
 * Request i of the run (the same in both replicas): 3% ask for the hot pool (4 CPUs, 8 GiB, so
 * those few hosts fill up and the rest are refused), 10% join a server group (half of those one
 * of the big hard anti-affinity groups), the rest plain, 30% of them pinned to a zone and 10%
 * to ssd hosts.
 */
export function requestFor(i: number, size: Size, groups: readonly GroupSpec[]): PlacementRequest {
  const r = seeded(0x5eed0000 + i); // the same requests every run, in either process
  const base = { consumerId: `bench-${i}`, kind: 'container' as const };
  const roll = r();
  if (roll < 0.03) {
    return { ...base, projectId: projectId(Math.floor(r() * size.projects)), vcpus: 4, memoryBytes: 8 * GiB, diskBytes: 40 * GiB, constraints: { pool: 'hot' } };
  }
  if (roll < 0.13 && groups.length) {
    const g = r() < 0.5 ? groups[Math.floor(r() * size.bigGroups)]! : groups[Math.floor(r() * groups.length)]!;
    return { ...base, projectId: g.projectId, vcpus: 1, memoryBytes: GiB, diskBytes: 10 * GiB, group: g.id };
  }
  const [vcpus, memoryBytes] = ([[0.5, 512 * MiB], [1, GiB], [2, 4 * GiB], [4, 8 * GiB]] as const)[Math.floor(r() * 4)]!;
  const diskBytes = [10, 20, 40][Math.floor(r() * 3)]! * GiB;
  const zone = r() < 0.3 ? `z${1 + Math.floor(r() * 4)}` : undefined;
  const ssd = r() < 0.1;
  return {
    ...base, projectId: projectId(Math.floor(r() * size.projects)), vcpus, memoryBytes, diskBytes,
    ...(zone ? { zone } : {}), ...(ssd ? { constraints: { disk: 'ssd' } } : {}),
  };
}

function cacheCandidates(): boolean {
  return process.env.BENCH_SCHED_CACHE_CANDIDATES === '1';
}

function quickMode(): boolean {
  return process.argv.includes('--quick') || process.env.BENCH_SCHED_QUICK === '1';
}

const epochNow = () => performance.timeOrigin + performance.now();

// ------------------------------------------------------------------ the replica process

function nextMessage<T extends ToReplica['type']>(type: T): Promise<Extract<ToReplica, { type: T }>> {
  return new Promise((resolve) => {
    const on = (m: ToReplica) => {
      if (m.type !== type) return;
      process.off('message', on);
      resolve(m as Extract<ToReplica, { type: T }>);
    };
    process.on('message', on);
  });
}

function tell(m: FromReplica): Promise<void> {
  return new Promise((resolve, reject) => process.send!(m, undefined, {}, (e) => (e ? reject(e) : resolve())));
}

/** n at a time over items. */
async function inParallel<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

/** One control-plane replica: its own store pool, agent directory and scheduler, as `nimbusd --store postgres://… --no-agent` wires them. */
async function replicaMain(): Promise<void> {
  setLogLevel('warn');
  // the driver gone (killed, crashed): nothing will tell this replica to stop, so it stops itself
  process.on('disconnect', () => process.exit(1));
  const start = await nextMessage('start');
  const { index, size } = start;
  const store = await openStore(start.url);
  const name = `control-plane-${index}`;
  // --no-agent: the directory's embedded slot holds a stand-in that is never a host
  const directory = await AgentDirectory.open(store, new FakeAgent({ name }), name, remoteAgentConnector(undefined), undefined, { embedded: false });
  const counters = { claims: 0, refusedCapacity: 0, refusedGroup: 0, candidateCalls: 0, refusedWithHostsDown: 0, mostHostsDown: 0 };
  // counted from outside: the claims the scheduler sends (a refused one means another choice and another claim)
  const repo = store.placement;
  const claim = repo.claim.bind(repo);
  repo.claim = async (c, limits) => {
    counters.claims++;
    const o = await claim(c, limits);
    if (!o.claimed && o.reason === 'capacity') counters.refusedCapacity++;
    else if (!o.claimed) counters.refusedGroup++;
    return o;
  };
  const cached = { at: -Infinity, list: undefined as Promise<HostCandidate[]> | undefined };
  const hostSource = {
    candidates: (): Promise<HostCandidate[]> => {
      counters.candidateCalls++;
      if (!cacheCandidates()) return directory.candidates();
      if (!cached.list || performance.now() - cached.at > 1000) {
        cached.at = performance.now();
        cached.list = directory.candidates();
      }
      return cached.list;
    },
  };
  const scheduler = new FilterScheduler(store, hostSource);
  try {
    // what POST /agents does for a unix-socket agent (the directory probes it over the agent
    // protocol before storing it), then the operator's `nimbus host set --zone --label`
    const t0 = performance.now();
    await inParallel(start.register, 16, async (h) => {
      await directory.register({ name: h.name, url: h.url, token: h.token, protocol: SPOKEN_PROTOCOL });
      await directory.updateSettings(h.name, { zone: h.zone, labels: h.labels });
    });
    // the other replica's hosts show once this directory has read their rows and connected
    let seen: HostCandidate[] = [];
    for (const deadline = Date.now() + 120_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 250))) {
      seen = (await directory.candidates()).filter((c) => c.state === 'up' && c.cpus > 0 && c.zone !== 'default');
      if (seen.length >= start.expectHosts) break;
    }
    if (seen.length < start.expectHosts) throw new Error(`${name} sees ${seen.length} of ${start.expectHosts} hosts up after 120 s`);
    await tell({ type: 'ready', index, registerMs: performance.now() - t0, hostsSeen: seen.length });

    await nextMessage('go');
    const mine = Array.from({ length: size.placements }, (_, i) => i).filter((i) => i % REPLICAS === index);
    const latencies = new Array<number>(mine.length).fill(0);
    const outcomes = new Array<string>(mine.length).fill('');
    const failureSample: Record<string, string> = {};
    let next = 0;
    const startedAt = epochNow();
    const cpu0 = process.cpuUsage();
    await Promise.all(Array.from({ length: Math.floor(size.clients / REPLICAS) }, async () => {
      while (next < mine.length) {
        const k = next++;
        const req = requestFor(mine[k]!, size, start.groups);
        const t = performance.now();
        try {
          await scheduler.place(req);
          outcomes[k] = 'placed';
        } catch (e) {
          const err = toNimbusError(e);
          outcomes[k] = err.code;
          failureSample[err.code] ??= err.message.slice(0, 300);
          // a refusal because this replica thought hosts were down (its refresh timed out) is not a full cloud
          const down = (err.details?.rejected as Record<string, number> | undefined)?.up ?? 0;
          if (down > 0) {
            counters.refusedWithHostsDown++;
            counters.mostHostsDown = Math.max(counters.mostHostsDown, down);
            failureSample['hosts down'] ??= err.message.slice(0, 300);
          }
        }
        latencies[k] = performance.now() - t;
      }
    }));
    const endedAt = epochNow();
    const cpu = process.cpuUsage(cpu0);
    await tell({ type: 'done', index, startedAt, endedAt, latencies, outcomes, failureSample, registerMs: 0, counters, cpuMs: (cpu.user + cpu.system) / 1000 });
    await nextMessage('stop');
  } finally {
    await directory.close();
    await store.close();
  }
}

// ------------------------------------------------------------------ the driver

interface Replica {
  child: ChildProcess;
  messages: FromReplica[];
  waiters: Array<() => void>;
}

function startReplica(index: number): Replica {
  const prof = process.env.BENCH_SCHED_CPU_PROF;
  const child = fork(fileURLToPath(import.meta.url), ['--replica'], {
    execArgv: ['--enable-source-maps', ...(prof && index === 0 ? ['--cpu-prof', '--cpu-prof-dir', prof] : [])],
    env: { ...process.env, NIMBUS_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const rep: Replica = { child, messages: [], waiters: [] };
  const wake = () => rep.waiters.splice(0).forEach((w) => w());
  child.on('message', (m: FromReplica) => {
    rep.messages.push(m);
    wake();
  });
  child.on('exit', wake);
  return rep;
}

/** The replica's next message of this type; its error message or its death is thrown. */
async function expectFrom<T extends FromReplica['type']>(rep: Replica, type: T, timeoutMs: number): Promise<Extract<FromReplica, { type: T }>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = rep.messages.findIndex((m) => m.type === type || m.type === 'error');
    if (i >= 0) {
      const m = rep.messages.splice(i, 1)[0]!;
      if (m.type === 'error') throw new Error(`replica ${m.index}: ${m.message}`);
      return m as Extract<FromReplica, { type: T }>;
    }
    if (rep.child.exitCode !== null || rep.child.signalCode !== null) throw new Error(`a replica exited (${rep.child.exitCode ?? rep.child.signalCode}) before '${type}'`);
    if (Date.now() > deadline) throw new Error(`no '${type}' from a replica within ${timeoutMs / 1000} s`);
    await new Promise<void>((r) => {
      const t = setTimeout(r, 1000);
      rep.waiters.push(() => {
        clearTimeout(t);
        r();
      });
    });
  }
}

function stopReplica(rep: Replica): Promise<void> {
  if (rep.child.exitCode !== null || rep.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => rep.child.kill('SIGKILL'), 10_000);
    rep.child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    if (rep.child.connected) rep.child.send({ type: 'stop' } satisfies ToReplica);
    else rep.child.kill('SIGTERM');
  });
}

interface Proof {
  hostsChecked: number;
  claims: number;
  overCommittedHosts: string[];
  usageMismatchHosts: string[];
  antiAffinityViolations: string[];
  affinityViolations: string[];
  /** The most any host holds of its limit, per resource (1 = full). */
  fullest: { cpu: number; memory: number; disk: number };
  /** Hot hosts at their memory limit (the contention the hot requests aimed for). */
  hotHostsFull: number;
}

/** Reads the claims back from PostgreSQL and checks them against each host's capacity × ratio and the group policies. */
async function prove(store: Store, hosts: readonly SimHost[], groups: readonly GroupSpec[]): Promise<Proof> {
  const [claims, usage, rows] = await Promise.all([store.placement.allocations(), store.placement.usage(), store.agents.list()]);
  const ratios = new Map(rows.map((r) => [r.name, effectiveRatios(r.allocationRatios)]));
  const usageOf = new Map(usage.map((u) => [u.host, u]));
  const sums = new Map<string, { m: number; mem: number; d: number; n: number }>();
  for (const c of claims) {
    const s = sums.get(c.host) ?? { m: 0, mem: 0, d: 0, n: 0 };
    s.m += c.millicpus;
    s.mem += c.memoryBytes;
    s.d += c.diskBytes;
    s.n++;
    sums.set(c.host, s);
  }
  const proof: Proof = {
    hostsChecked: 0, claims: claims.length, overCommittedHosts: [], usageMismatchHosts: [], antiAffinityViolations: [], affinityViolations: [],
    fullest: { cpu: 0, memory: 0, disk: 0 }, hotHostsFull: 0,
  };
  const known = new Set(hosts.map((h) => h.name));
  for (const h of hosts) {
    proof.hostsChecked++;
    const limits = limitsOf({
      name: h.name, state: 'up', disabled: false, zone: h.zone, labels: h.labels, cpus: h.cpus, memoryBytes: h.memoryBytes, diskBytes: h.diskBytes,
      runtimes: [], architecture: 'amd64', allocationRatios: ratios.get(h.name) ?? effectiveRatios({}),
    });
    const s = sums.get(h.name) ?? { m: 0, mem: 0, d: 0, n: 0 };
    if (s.m > limits.millicpus || s.mem > limits.memoryBytes || s.d > limits.diskBytes) {
      proof.overCommittedHosts.push(`${h.name}: ${s.m}/${limits.millicpus} millicpus, ${s.mem}/${limits.memoryBytes} memory, ${s.d}/${limits.diskBytes} disk`);
    }
    const u = usageOf.get(h.name);
    const rowSays = [u?.millicpus ?? 0, u?.memoryBytes ?? 0, u?.diskBytes ?? 0, u?.instances ?? 0];
    if (rowSays.join() !== [s.m, s.mem, s.d, s.n].join()) proof.usageMismatchHosts.push(`${h.name}: usage row ${rowSays.join('/')}, claims ${[s.m, s.mem, s.d, s.n].join('/')}`);
    proof.fullest.cpu = Math.max(proof.fullest.cpu, s.m / limits.millicpus);
    proof.fullest.memory = Math.max(proof.fullest.memory, s.mem / limits.memoryBytes);
    proof.fullest.disk = Math.max(proof.fullest.disk, s.d / limits.diskBytes);
    // full: not even one more hot request (8 GiB) fits
    if (h.labels.pool === 'hot' && limits.memoryBytes - s.mem < 8 * GiB) proof.hotHostsFull++;
  }
  for (const c of claims) if (!known.has(c.host)) proof.overCommittedHosts.push(`claim ${c.consumerId} on unknown host ${c.host}`);
  const byGroup = new Map<string, string[]>();
  for (const c of claims) if (c.groupId) byGroup.set(c.groupId, [...(byGroup.get(c.groupId) ?? []), c.host]);
  for (const g of groups) {
    const on = byGroup.get(g.id) ?? [];
    if (g.policy === 'anti-affinity' && new Set(on).size !== on.length) proof.antiAffinityViolations.push(`${g.id}: ${on.length} members on ${new Set(on).size} hosts`);
    if (g.policy === 'affinity' && new Set(on).size > 1) proof.affinityViolations.push(`${g.id}: members on ${[...new Set(on)].join(', ')}`);
  }
  return proof;
}

export async function scheduleScale(_env?: BenchEnv): Promise<BenchOutcome> {
  const quick = quickMode();
  const size = quick ? QUICK : FULL;
  setLogLevel('warn');
  note(BENCH, `${quick ? 'QUICK' : 'full'} size: ${size.hosts} SIMULATED hosts, ${size.projects} projects, ${size.groups} server groups, ${size.placements} placements from ${size.clients} concurrent clients through ${REPLICAS} replicas on PostgreSQL`);
  note(BENCH, 'a placement = FilterScheduler.place() in a replica process (its own AgentDirectory over the agent protocol, filters, weighers, atomic claim in PostgreSQL); in-process calls, not HTTP');

  const t0 = performance.now();
  const pg = await startPostgres();
  const stopPg = cleanup.add('PostgreSQL cluster', () => pg.stop());
  const pool = process.env.BENCH_SCHED_POOL;
  const url = pool ? `${pg.url}&max=${pool}` : pg.url;
  const store = await openStore(url);
  const closeStore = cleanup.add('driver store pool', () => store.close());

  // projects and groups, as the API would make them (rows in the store; the scheduler only reads them)
  const tProjects = performance.now();
  const createdAt = new Date().toISOString();
  for (let k = 0; k < size.projects; k += 1000) {
    await store.transaction(async () => {
      for (let j = k; j < Math.min(size.projects, k + 1000); j++) await store.projects.insert({ id: projectId(j), name: projectId(j), parentId: null, createdAt });
    });
  }
  const groupService = new ServerGroupService(store);
  const policies: ServerGroupPolicy[] = ['anti-affinity', 'affinity', 'soft-anti-affinity', 'soft-affinity'];
  const groups: GroupSpec[] = [];
  for (let k = 0; k < size.groups; k++) {
    const policy = k < size.bigGroups ? 'anti-affinity' : policies[k % 4]!;
    // one group per project, spread over the projects
    const g = await groupService.create(projectId((k * 7) % size.projects), { name: `g${k}`, policy });
    groups.push({ id: g.id, projectId: g.projectId, policy });
  }
  const projectsMs = performance.now() - tProjects;
  note(BENCH, `${size.projects} projects and ${size.groups} server groups in ${(projectsMs / 1000).toFixed(1)} s`);

  const fleet = await startSimHosts(defaultSimSpecs(size.hosts, size.hotHosts));
  const closeFleet = cleanup.add('simulated hosts', () => fleet.close());
  note(BENCH, `${size.hosts} SIMULATED hosts serving the agent protocol on unix sockets in ${fleet.dir}`);

  const replicas = Array.from({ length: REPLICAS }, (_, i) => startReplica(i));
  const stopReplicas = cleanup.add('replica processes', () => Promise.all(replicas.map(stopReplica)));
  try {
    const tReg = performance.now();
    replicas.forEach((rep, index) => {
      const msg: ToReplica = { type: 'start', index, url, register: fleet.hosts.filter((_, i) => i % REPLICAS === index), expectHosts: size.hosts, groups, size };
      rep.child.send(msg);
    });
    const ready = await Promise.all(replicas.map((r) => expectFrom(r, 'ready', 300_000)));
    const registerMs = performance.now() - tReg;
    note(BENCH, `hosts registered through the agent protocol (each replica half) and seen up by both replicas in ${(registerMs / 1000).toFixed(1)} s: ${ready.map((r) => `replica ${r.index} sees ${r.hostsSeen}`).join(', ')}`);

    // what the rest of the machine spends while placing: PostgreSQL, and this process (the simulated hosts)
    const postmaster = postmasterPid(pg.url);
    const pgCpu0 = postmaster ? treeCpuMs(postmaster) : NaN;
    const driverCpu0 = process.cpuUsage();
    replicas.forEach((r) => r.child.send({ type: 'go' } satisfies ToReplica));
    const done = await Promise.all(replicas.map((r) => expectFrom(r, 'done', 900_000)));
    const pgCpuMs = postmaster ? treeCpuMs(postmaster) - pgCpu0 : NaN;
    const driverCpu = process.cpuUsage(driverCpu0);
    const simHostsCpuMs = (driverCpu.user + driverCpu.system) / 1000;
    const wallMs = Math.max(...done.map((d) => d.endedAt)) - Math.min(...done.map((d) => d.startedAt));
    await Promise.all(replicas.map(stopReplica));
    await stopReplicas();

    const latencies = done.flatMap((d) => d.latencies);
    const outcomes = done.flatMap((d) => d.outcomes);
    const placedLatencies = latencies.filter((_, i) => outcomes[i] === 'placed');
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1;
    const placed = counts.placed ?? 0;
    const placementsPerSec = Math.round(placed / (wallMs / 1000));
    const decisionsPerSec = Math.round(outcomes.length / (wallMs / 1000));
    const perReplica = done.map((d) => ({
      replica: d.index, decisions: d.outcomes.length, placed: d.outcomes.filter((o) => o === 'placed').length,
      wallMs: round(d.endedAt - d.startedAt), cpuMs: round(d.cpuMs), cpuMsPerDecision: round(d.cpuMs / d.outcomes.length, 2), perSec: Math.round(d.outcomes.filter((o) => o === 'placed').length / ((d.endedAt - d.startedAt) / 1000)),
    }));
    const failureSample = Object.assign({}, ...done.map((d) => d.failureSample)) as Record<string, string>;
    const counters = { claims: 0, refusedCapacity: 0, refusedGroup: 0, candidateCalls: 0, refusedWithHostsDown: 0, mostHostsDown: 0 };
    for (const d of done) for (const k of Object.keys(counters) as Array<keyof typeof counters>) counters[k] += d.counters[k];
    counters.mostHostsDown = Math.max(...done.map((d) => d.counters.mostHostsDown));

    const proof = await prove(store, fleet.hosts, groups);
    const placedMatches = proof.claims === placed;
    const violations = proof.overCommittedHosts.length + proof.usageMismatchHosts.length + (placedMatches ? 0 : 1);
    const groupViolations = proof.antiAffinityViolations.length + proof.affinityViolations.length;
    const infoCalls = fleet.infoCalls();

    await closeStore();
    await closeFleet();
    await stopPg();

    const lat = { p50: round(percentile(latencies, 50)), p99: round(percentile(latencies, 99)), max: round(Math.max(...latencies)) };
    const latPlaced = { p50: round(percentile(placedLatencies, 50)), p99: round(percentile(placedLatencies, 99)) };
    note(BENCH, `${placed} placed + ${outcomes.length - placed} refused (${JSON.stringify(counts)}) in ${(wallMs / 1000).toFixed(2)} s: ${placementsPerSec} placements/s (goal ≥ ${GOAL_PER_SEC}), ${decisionsPerSec} decisions/s`);
    note(BENCH, `decision latency (place() wall time, queueing behind ${size.clients / REPLICAS - 1} other callers in the replica included): p50 ${lat.p50} ms, p99 ${lat.p99} ms, max ${lat.max} ms; placed only p50 ${latPlaced.p50}, p99 ${latPlaced.p99}`);
    note(BENCH, `per replica: ${perReplica.map((r) => `#${r.replica} ${r.placed}/${r.decisions} placed in ${(r.wallMs / 1000).toFixed(2)} s (${r.perSec}/s), ${r.cpuMsPerDecision} ms of its CPU per decision`).join('; ')}`);
    const cpuPerDecision = { postgres: round(pgCpuMs / outcomes.length, 2), simulatedHosts: round(simHostsCpuMs / outcomes.length, 2) };
    note(BENCH, `the rest of the machine per decision while placing: PostgreSQL ${cpuPerDecision.postgres} ms of CPU (its processes, /proc), the driver with the simulated hosts ${cpuPerDecision.simulatedHosts} ms; 2 cores are ${round(2000 / (outcomes.length / (wallMs / 1000)), 2)} ms per decision at this rate`);
    note(BENCH, `work: ${counters.claims} claims sent for ${placed} placed (${counters.refusedCapacity} refused for capacity, ${counters.refusedGroup} for a group policy: each a new choice), ${counters.candidateCalls} candidate lists; ${counters.refusedWithHostsDown} refusals while the replica counted hosts down (at most ${counters.mostHostsDown} of ${size.hosts}: its refresh's 3 s answer timeout, on a busy event loop)${cacheCandidates() ? ' (EXPERIMENT: candidate list reused up to 1 s)' : ''}`);
    for (const [code, msg] of Object.entries(failureSample)) note(BENCH, `a ${code}: ${msg}`);
    note(BENCH, `proof: ${proof.hostsChecked} hosts, ${proof.claims} claims (${placedMatches ? '=' : '≠'} ${placed} placed): over-committed hosts ${proof.overCommittedHosts.length}, usage rows ≠ claims ${proof.usageMismatchHosts.length}, hard anti-affinity violations ${proof.antiAffinityViolations.length}, hard affinity violations ${proof.affinityViolations.length}; fullest host cpu ${round(proof.fullest.cpu, 3)} memory ${round(proof.fullest.memory, 3)} disk ${round(proof.fullest.disk, 3)} of capacity × ratio; ${proof.hotHostsFull}/${size.hotHosts} hot hosts full`);
    for (const v of [...proof.overCommittedHosts, ...proof.usageMismatchHosts, ...proof.antiAffinityViolations, ...proof.affinityViolations].slice(0, 10)) note(BENCH, `VIOLATION ${v}`);

    const results = {
      quick, placement: 'FilterScheduler.place() in each of 2 replica processes (own AgentDirectory over the agent protocol, own FilterScheduler, own store pool), filters + weighers + atomic claim in PostgreSQL; in-process callers, not HTTP',
      simulatedHosts: size.hosts, hostTransport: 'agent protocol over unix sockets (plain HTTP + bearer token), all simulated hosts in one process',
      projects: size.projects, serverGroups: size.groups, bigAntiAffinityGroups: size.bigGroups, hotHosts: size.hotHosts,
      placements: size.placements, concurrentClients: size.clients, replicas: REPLICAS, storePoolPerReplica: pool ? Number(pool) : 10,
      placed, outcomes: counts, wallMs: round(wallMs), placementsPerSec, decisionsPerSec, goalPlacementsPerSec: GOAL_PER_SEC,
      decisionLatencyMs: lat, placedLatencyMs: latPlaced, perReplica, otherCpuMsPerDecision: cpuPerDecision,
      proof: { ...proof, overCommittedHosts: proof.overCommittedHosts.slice(0, 20), usageMismatchHosts: proof.usageMismatchHosts.slice(0, 20), antiAffinityViolations: proof.antiAffinityViolations.slice(0, 20), affinityViolations: proof.affinityViolations.slice(0, 20), placedMatchesClaims: placedMatches },
      setupMs: { projectsAndGroups: round(projectsMs), registerAndSee: round(registerMs), total: round(performance.now() - t0) },
      hostInfoCalls: infoCalls, failureSample, counters,
      ...(cacheCandidates() ? { experiment: 'BENCH_SCHED_CACHE_CANDIDATES=1: each replica reused the candidate list up to 1 s (not what the product does today)' } : {}),
    };
    if (violations || groupViolations) throw new Error(`the claims broke a promise: ${violations} capacity/usage violations, ${groupViolations} group-policy violations (see the VIOLATION lines)`);
    return {
      record: makeRecord(BENCH, { results }),
      summary: [
        { bench: BENCH, figure: `placements/s, ${size.hosts} simulated hosts, ${size.clients} clients, 2 replicas, PostgreSQL${quick ? ' (QUICK size)' : ''}${cacheCandidates() ? ' (EXPERIMENT: cached candidates)' : ''}`, unit: '/s', nimbus: placementsPerSec, peers: {}, ratio: null, goal: `≥ ${GOAL_PER_SEC}/s`, met: placementsPerSec >= GOAL_PER_SEC, note: `${placed} placed, ${outcomes.length - placed} refused; ${decisionsPerSec} decisions/s; replica CPU ${perReplica.map((r) => r.cpuMsPerDecision).join(' / ')} ms per decision; ${counters.refusedWithHostsDown} refused with hosts seen down` },
        { bench: BENCH, figure: 'decision latency p50 (queueing included)', unit: 'ms', nimbus: lat.p50, peers: {}, ratio: null, note: `p99 ${lat.p99} ms; ${size.clients / REPLICAS} callers per replica` },
        { bench: BENCH, figure: 'over-committed hosts / usage ≠ claims / group-policy violations', unit: '', nimbus: proof.overCommittedHosts.length + proof.usageMismatchHosts.length + groupViolations, peers: {}, ratio: null, goal: '0', met: violations === 0 && groupViolations === 0, note: `${proof.claims} claims on ${proof.hostsChecked} hosts checked; ${proof.hotHostsFull}/${size.hotHosts} hot hosts full` },
      ],
    };
  } finally {
    await stopReplicas();
  }
}

if (process.argv.includes('--replica')) {
  replicaMain().then(
    () => process.exit(0),
    async (e: unknown) => {
      const message = e instanceof Error ? (e.stack ?? e.message) : String(e);
      await tell({ type: 'error', index: -1, message }).catch(() => undefined);
      process.exit(1);
    },
  );
} else if (isMain(import.meta.url)) {
  const { printSummary } = await import('./lib/summary.js');
  const { rows, failed } = await runBenchmarks([{ name: BENCH, fn: scheduleScale, needsEnv: false }]);
  printSummary(rows);
  process.exitCode = failed.length ? 1 : 0;
}
