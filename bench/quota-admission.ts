/**
 * Quota admission benchmark.
 *  1. Throughput: 10,000 projects in a depth-5 tree (leaves may lend/borrow,
 *     level-3 parents share their slack through pools), 1,000 concurrent async
 *     requesters issuing admit/release; prints admission decisions per second.
 *  2. Utilisation: one seeded random bursty workload of 4 teams on 64 units
 *     under exclusive-only, borrowing (with reclaim) and shared-pool (with reclaim).
 * Run: npx tsx bench/quota-admission.ts   (ends with one JSON line)
 */
import { AdmissionService } from '../src/control/quota/async.js';
import { checkInvariants } from '../src/control/quota/invariants.js';
import { Ledger } from '../src/control/quota/ledger.js';
import { seeded } from '../scripts/fixtures/seeded.js';

// ------------------------------------------------------------------ 1. throughput

const PROJECTS = Number(process.env.QUOTA_BENCH_PROJECTS ?? 10_000);
const REQUESTERS = 1_000;
const DECISIONS = Number(process.env.QUOTA_BENCH_DECISIONS ?? 200_000);

interface Node {
  id: string;
  parent: number | null;
  depth: number;
  children: number[];
  hard: { instances: number; cpus: number; memory: number };
}

function buildBigTree(): { ledger: Ledger; leaves: string[]; buildMs: number; pools: number } {
  const nodes: Node[] = [{ id: 'root', parent: null, depth: 0, children: [], hard: { instances: 0, cpus: 0, memory: 0 } }];
  // breadth first, fan-out 10 down to depth 3, then the remaining projects spread over depth-3 nodes (levels 0..4 = depth 5)
  for (let i = 0; nodes.length < PROJECTS; i++) {
    const p = nodes[i];
    if (p === undefined) break;
    const fan = p.depth < 3 ? 10 : Math.ceil((PROJECTS - 1111) / 1000);
    if (p.depth >= 4) break;
    for (let k = 0; k < fan && nodes.length < PROJECTS; k++) {
      const n: Node = { id: `${p.id}.${k}`, parent: i, depth: p.depth + 1, children: [], hard: { instances: 0, cpus: 0, memory: 0 } };
      p.children.push(nodes.length);
      nodes.push(n);
    }
  }
  // bottom-up hard limits: leaves 20 instances / 40 cpus / 80 GiB; parents Σ children + 10% slack
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i];
    if (n === undefined) continue;
    if (n.children.length === 0) n.hard = { instances: 20, cpus: 40, memory: 80 * 1024 };
    else {
      const s = { instances: 0, cpus: 0, memory: 0 };
      for (const c of n.children) {
        const ch = nodes[c]?.hard;
        if (ch) (s.instances += ch.instances), (s.cpus += ch.cpus), (s.memory += ch.memory);
      }
      n.hard = { instances: Math.ceil(s.instances * 1.1), cpus: Math.ceil(s.cpus * 1.1), memory: Math.ceil(s.memory * 1.1) };
    }
  }
  const t0 = performance.now();
  const ledger = new Ledger(undefined, { auditLimit: 20_000 });
  const leaves: string[] = [];
  for (const n of nodes) {
    const parent = n.parent === null ? null : (nodes[n.parent]?.id ?? null);
    const leaf = n.children.length === 0;
    ledger.createProject(n.id, parent, {
      hard: n.hard,
      lendingLimit: leaf ? { instances: 10, cpus: 20, memory: 40 * 1024 } : {},
      borrowingLimit: leaf ? { instances: 10, cpus: 20, memory: 40 * 1024 } : {},
      gracePeriodMs: 30_000,
    });
    if (leaf) leaves.push(n.id);
  }
  let pools = 0;
  for (const n of nodes) {
    if (n.depth !== 3 || n.children.length === 0) continue;
    const f = ledger.show(n.id).resources;
    const weights: Record<string, number> = {};
    n.children.forEach((c, k) => {
      const id = nodes[c]?.id;
      if (id) weights[id] = 1 + (k % 3);
    });
    ledger.createPool(`pool:${n.id}`, n.id, { instances: f.instances.free, cpus: f.cpus.free, memory: f.memory.free }, weights);
    pools++;
  }
  return { ledger, leaves, buildMs: performance.now() - t0, pools };
}

async function throughput() {
  const { ledger, leaves, buildMs, pools } = buildBigTree();
  let clock = 1_000_000;
  const svc = new AdmissionService(ledger, { clock: () => clock++ });
  const held = new Map<string, string[]>();
  let decisions = 0;
  let admitted = 0;
  let withLoans = 0;
  let withPool = 0;
  let releases = 0;
  let seq = 0;
  const HOT = 300;
  const hotStride = Math.floor(leaves.length / HOT);
  const t0 = performance.now();
  const worker = async (w: number) => {
    const rnd = seeded(1000 + w);
    while (decisions < DECISIONS) {
      // 80% of requests hit 300 hot leaves, so they fill up and borrow, draw on pools, or get rejected
      const leaf = (rnd() < 0.8 ? leaves[hotStride * Math.floor(rnd() * HOT)] : leaves[Math.floor(rnd() * leaves.length)]) ?? 'root';
      const mine = held.get(leaf) ?? [];
      if (mine.length > 0 && rnd() < 0.4) {
        const id = mine.splice(Math.floor(rnd() * mine.length), 1)[0];
        if (id !== undefined) {
          await svc.release(id);
          releases++;
        }
      } else {
        const d = await svc.create({
          instanceId: `b${seq++}`,
          project: leaf,
          resources: { cpus: 1 + Math.floor(rnd() * 4), memory: 512 * (1 + Math.floor(rnd() * 8)), networks: 0 },
          kind: rnd() < 0.3 ? 'vm' : 'container',
          priority: Math.floor(rnd() * 3),
        });
        decisions++;
        if (d.admitted) {
          admitted++;
          if (d.loans.length > 0) withLoans++;
          if (d.poolCharges.length > 0) withPool++;
          mine.push(d.instance);
          held.set(leaf, mine);
        }
      }
      if ((decisions & 63) === 0) await new Promise((r) => setImmediate(r));
    }
  };
  await Promise.all(Array.from({ length: REQUESTERS }, (_, w) => worker(w)));
  const secs = (performance.now() - t0) / 1000;
  const tc = performance.now();
  const violations = checkInvariants(ledger.snapshot()).length;
  const checkMs = performance.now() - tc;
  return {
    projects: Object.keys(ledger.raw.projects).length,
    pools,
    buildMs: Math.round(buildMs),
    requesters: REQUESTERS,
    decisions,
    releases,
    admitted,
    admittedWithLoans: withLoans,
    admittedWithPool: withPool,
    seconds: Number(secs.toFixed(2)),
    decisionsPerSec: Math.round(decisions / secs),
    opsPerSec: Math.round((decisions + releases) / secs),
    liveInstances: Object.keys(ledger.raw.instances).length,
    liveLoans: Object.keys(ledger.raw.loans).length,
    invariantViolations: violations,
    invariantCheckMs: Math.round(checkMs),
  };
}

// ------------------------------------------------------------------ 2. utilisation

type Mode = 'exclusive' | 'borrowing' | 'shared-pool';
const CAP = 64;
const TEAMS = 4;
const STEPS = 2_000;

function workload(): number[][] {
  // per team a bursty demand: idle-ish baseline, bursts up to 2× its 1/4 share, changing every ~40 steps
  const rnd = seeded(42);
  const out: number[][] = [];
  for (let t = 0; t < TEAMS; t++) {
    const d: number[] = [];
    let cur = 0;
    for (let s = 0; s < STEPS; s++) {
      if (s === 0 || rnd() < 1 / 40) cur = rnd() < 0.5 ? Math.floor(rnd() * 8) : 8 + Math.floor(rnd() * 25);
      d.push(cur);
    }
    out.push(d);
  }
  return out;
}

function utilisation(mode: Mode, demand: number[][]) {
  const l = new Ledger(undefined, { auditLimit: 5_000 });
  const share = CAP / TEAMS;
  l.createProject('org', null, { hard: { instances: CAP } });
  const teams = Array.from({ length: TEAMS }, (_, i) => `team${i}`);
  for (const t of teams) {
    if (mode === 'exclusive') l.createProject(t, 'org', { hard: { instances: share } });
    if (mode === 'borrowing') l.createProject(t, 'org', { hard: { instances: share }, lendingLimit: { instances: share }, borrowingLimit: { instances: CAP - share } });
    if (mode === 'shared-pool') l.createProject(t, 'org', {});
  }
  if (mode === 'shared-pool') l.createPool('pool', 'org', { instances: CAP }, Object.fromEntries(teams.map((t) => [t, 1])));
  const held: string[][] = teams.map(() => []);
  const pendingOp: (string | undefined)[] = teams.map(() => undefined);
  let usedSum = 0;
  let served = 0;
  let wanted = 0;
  let decisions = 0;
  let reclaims = 0;
  let evictions = 0;
  let seq = 0;
  const t0 = performance.now();
  for (let s = 0; s < STEPS; s++) {
    const now = s * 1000;
    for (const v of l.dueEvictions(now)) {
      l.release(v.instance, now, 'evicted');
      evictions++;
      for (const h of held) {
        const k = h.indexOf(v.instance);
        if (k >= 0) h.splice(k, 1);
      }
    }
    for (let t = 0; t < TEAMS; t++) {
      const team = teams[t] ?? '';
      const h = held[t] ?? [];
      const want = demand[t]?.[s] ?? 0;
      const op = pendingOp[t];
      if (op !== undefined) {
        const o = l.operation(op);
        if (o.status === 'done') h.push(o.request.instanceId);
        if (o.status !== 'pending') pendingOp[t] = undefined;
      }
      while (h.length > want) {
        const id = h.pop();
        if (id !== undefined) l.release(id, now);
      }
      while (h.length < want && pendingOp[t] === undefined) {
        const req = { instanceId: `u${seq++}`, project: team, resources: { instances: 1 } };
        decisions++;
        if (mode === 'exclusive') {
          if (l.admit(req, now).admitted) h.push(req.instanceId);
          else break;
        } else {
          const r = l.admitOrReclaim(req, now);
          if (r.decision.admitted) h.push(req.instanceId);
          else if (r.operation) {
            pendingOp[t] = r.operation.id;
            reclaims++;
          } else break;
        }
      }
    }
    for (let t = 0; t < TEAMS; t++) {
      const u = held[t]?.length ?? 0;
      const w = demand[t]?.[s] ?? 0;
      usedSum += u;
      served += Math.min(u, w);
      wanted += w;
    }
  }
  const violations = checkInvariants(l.snapshot()).length;
  return {
    mode,
    utilisation: Number((usedSum / (CAP * STEPS)).toFixed(3)),
    demandServed: Number((served / wanted).toFixed(3)),
    decisions,
    reclaims,
    evictions,
    ms: Math.round(performance.now() - t0),
    invariantViolations: violations,
  };
}

const tp = await throughput();
console.log(`quota-admission: ${tp.projects} projects (depth 5, ${tp.pools} pools) built in ${tp.buildMs} ms`);
console.log(`quota-admission: ${tp.requesters} concurrent requesters, ${tp.decisions} decisions + ${tp.releases} releases in ${tp.seconds} s`);
console.log(`quota-admission: ${tp.decisionsPerSec} admission decisions/s (${tp.opsPerSec} ops/s incl. releases); admitted ${tp.admitted}, rejected ${tp.decisions - tp.admitted} (${tp.admittedWithLoans} with loans, ${tp.admittedWithPool} from pools); invariant violations ${tp.invariantViolations}`);
const demand = workload();
const totalDemand = demand.reduce((a, d) => a + d.reduce((x, y) => x + y, 0), 0);
console.log(`quota-admission: workload ${TEAMS} teams × ${STEPS} steps on ${CAP} units, mean demand ${(totalDemand / (STEPS * CAP)).toFixed(3)} of capacity`);
const util = (['exclusive', 'borrowing', 'shared-pool'] as const).map((m) => utilisation(m, demand));
for (const u of util) console.log(`quota-admission: ${u.mode.padEnd(11)} utilisation ${u.utilisation}  demand served ${u.demandServed}  reclaims ${u.reclaims}  evictions ${u.evictions}  violations ${u.invariantViolations}`);
console.log(
  JSON.stringify({
    bench: 'quota-admission',
    projects: tp.projects,
    depth: 5,
    requesters: tp.requesters,
    decisions: tp.decisions,
    decisionsPerSec: tp.decisionsPerSec,
    admitted: tp.admitted,
    admittedWithLoans: tp.admittedWithLoans,
    admittedWithPool: tp.admittedWithPool,
    opsPerSec: tp.opsPerSec,
    goalDecisionsPerSec: 2000,
    meetsGoal: tp.decisionsPerSec >= 2000,
    invariantViolations: tp.invariantViolations + util.reduce((a, u) => a + u.invariantViolations, 0),
    meanDemand: Number((totalDemand / (STEPS * CAP)).toFixed(3)),
    utilisation: Object.fromEntries(util.map((u) => [u.mode, u.utilisation])),
    demandServed: Object.fromEntries(util.map((u) => [u.mode, u.demandServed])),
    reclaims: Object.fromEntries(util.map((u) => [u.mode, u.reclaims])),
  }),
);
