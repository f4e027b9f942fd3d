/**
 * What the control plane's per-request store work costs as tenants, leases and history grow
 * (SQLite, the embedded store, in-process; no daemon, no host resources):
 *   quota      an admission and a release through QuotaService (the ledger's persisted step)
 *              with 100, 1,000 and 10,000 projects: goal, 10,000 within 2× of 100 (a write that
 *              does not grow with tenants; before projects had rows of their own each step wrote
 *              every project's state)
 *   access     a member's access for one request (AccessControl.forPrincipal: its grants and
 *              the project tree) with 100 and 10,000 projects: the same goal
 *   lease      one address leased on a network already holding 100 / 2,000 / 10,000 leases
 *              (next fit: one indexed query of the next 32 candidates; the first allocation of
 *              a fresh process on a dense network reads its leased addresses once, untimed warm-up)
 *   operations the newest 1,000 of 100,000 operations, all and a member's (reported)
 * Run alone: node dist/bench/tenant-scale.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../src/store/open.js';
import type { Store } from '../src/store/store.js';
import { QuotaService } from '../src/control/quota/quota-service.js';
import { AccessControl } from '../src/control/identity/access.js';
import { AddressLeases } from '../src/control/networks/address-leases.js';
import { isMain, runBenchmarks, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { mean, measure, ratio, round } from './lib/stats.js';

const NAME = 'tenant-scale';
const GOAL_RATIO = 2;

async function withStore<T>(fn: (store: Store) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-bench-tenants-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  try {
    return await fn(store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Mean ms of `fn` over `runs` calls after `warmup` untimed ones. */
async function meanMs(fn: (i: number) => Promise<unknown>, runs: number, warmup = 10): Promise<number> {
  return round(mean(await measure(runs, fn, { warmup })), 3);
}

const NOW = () => new Date().toISOString();

async function projectsUnderRoot(store: Store, n: number): Promise<void> {
  await store.transaction(async () => {
    await store.projects.insert({ id: 'root', name: 'root', parentId: null, createdAt: NOW() });
    for (let i = 0; i < n; i++) await store.projects.insert({ id: `p${i}`, name: `p${i}`, parentId: 'root', createdAt: NOW() });
  });
}

/** ms per ledger step (an admission or a release) with n projects. */
function quotaStep(n: number): Promise<number> {
  return withStore(async (store) => {
    const q = await QuotaService.open(store);
    try {
      await q.ensureProjects([{ id: 'root', parentId: null }, ...Array.from({ length: n }, (_, i) => ({ id: `p${i}`, parentId: 'root' }))]);
      await q.setLimits('p7', { hard: { instances: 10, cpus: 10, memory: 2 ** 34 } });
      const cfg = { image: 'x', cmd: [], env: [], cpus: 1 } as unknown as Parameters<QuotaService['admitContainer']>[2];
      const pair = await meanMs(async (i) => {
        await q.admitContainer(`c${i}`, 'p7', cfg);
        await q.release(`c${i}`, 'removed');
      }, 200);
      return round(pair / 2, 3);
    } finally {
      q.close();
    }
  });
}

/** ms of a member's access for one request with n projects (a grant on the root: every project inherits it). */
function memberAccess(n: number): Promise<number> {
  return withStore(async (store) => {
    await projectsUnderRoot(store, n);
    await store.users.insert({ id: 'u1', name: 'olga', passwordHash: 'x', systemAdmin: false, defaultProjectId: 'root', createdAt: NOW() });
    await store.roles.grant({ userId: 'u1', projectId: 'root', role: 'reader', createdAt: NOW() });
    const access = new AccessControl(store);
    const principal = { userId: 'u1', name: 'olga', systemAdmin: false, defaultProjectId: 'root', via: 'session' as const, tokenId: null };
    return meanMs(async () => {
      if (!(await access.forPrincipal(principal)).canRead('p7')) throw new Error('the member cannot read p7');
    }, 200);
  });
}

/** ms per lease on a /16 network already holding n leases. */
function leaseOn(n: number): Promise<number> {
  return withStore(async (store) => {
    await store.projects.insert({ id: 'root', name: 'root', parentId: null, createdAt: NOW() });
    await store.networks.insert({ id: 'n1', name: 'big', projectId: 'root', driver: 'bridge', subnet: '10.200.0.0/16', gateway: '10.200.0.1', internal: false, device: 'nb-bench', builtin: false, labels: {}, createdAt: NOW() });
    await store.transaction(async () => {
      for (let i = 0; i < n; i++) await store.networks.lease({ networkId: 'n1', address: `10.200.${Math.floor((i + 2) / 256)}.${(i + 2) % 256}`, instanceId: `i${i}`, ifIndex: 0, createdAt: NOW() });
    });
    const net = (await store.networks.get('n1'))!;
    const leases = new AddressLeases(store);
    return meanMs((i) => store.transaction(() => leases.leaseOne(net, `x${i}`, 0)), 50, 3);
  });
}

/** ms for the newest 1,000 of n operations: all of them, and of two projects of fifty. */
function newestOperations(n: number): Promise<{ all: number; member: number }> {
  return withStore(async (store) => {
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    await store.transaction(async () => {
      for (let i = 0; i < n; i++) {
        const at = new Date(t0 + i * 1000).toISOString();
        await store.operations.insert({ id: `o${i}`, kind: 'image.pull', projectId: `p${i % 50}`, status: 'succeeded', target: 'x', progress: {}, result: null, error: null, createdAt: at, updatedAt: at, replica: null });
      }
    });
    return {
      all: await meanMs(() => store.operations.list(1000), 10, 2),
      member: await meanMs(() => store.operations.list(1000, { projectIds: ['p3', 'p7'] }), 10, 2),
    };
  });
}

export async function tenantScale(_env: BenchEnv): Promise<BenchOutcome> {
  const quota: Record<string, number> = {};
  for (const n of [100, 1_000, 10_000]) {
    quota[n] = await quotaStep(n);
    note(NAME, `quota: ${quota[n]} ms a step with ${n} projects`);
  }
  const access: Record<string, number> = {};
  for (const n of [100, 10_000]) {
    access[n] = await memberAccess(n);
    note(NAME, `access: ${access[n]} ms a member's request with ${n} projects`);
  }
  const lease: Record<string, number> = {};
  for (const n of [100, 2_000, 10_000]) {
    lease[n] = await leaseOn(n);
    note(NAME, `lease: ${lease[n]} ms with ${n} leases on the network`);
  }
  const ops = await newestOperations(100_000);
  note(NAME, `operations: the newest 1,000 of 100,000 in ${ops.all} ms, a member's in ${ops.member} ms`);

  const quotaRatio = ratio(quota[10_000]!, quota[100]!);
  const accessRatio = ratio(access[10_000]!, access[100]!);
  const summary: SummaryRow[] = [
    { bench: NAME, figure: 'quota step (admit or release), 10,000 projects', unit: 'ms', nimbus: quota[10_000]!, peers: { '100 projects': quota[100]!, '1,000': quota[1_000]! }, ratio: quotaRatio, goal: `≤ ${GOAL_RATIO}× at 100 projects`, met: quotaRatio !== null && quotaRatio <= GOAL_RATIO, note: 'SQLite; ratio over 100 projects' },
    { bench: NAME, figure: "a member's access for a request, 10,000 projects", unit: 'ms', nimbus: access[10_000]!, peers: { '100 projects': access[100]! }, ratio: accessRatio, goal: `≤ ${GOAL_RATIO}× at 100 projects`, met: accessRatio !== null && accessRatio <= GOAL_RATIO, note: 'grants + the project tree (listed once per 2 s, or when a project is made or removed here)' },
    { bench: NAME, figure: 'an address leased, 10,000 leases on the network', unit: 'ms', nimbus: lease[10_000]!, peers: { '100 leases': lease[100]!, '2,000': lease[2_000]! }, ratio: ratio(lease[10_000]!, lease[100]!), goal: `≤ ${GOAL_RATIO}× at 100 leases`, met: (ratio(lease[10_000]!, lease[100]!) ?? Infinity) <= GOAL_RATIO, note: 'next fit: the next 32 candidates in one indexed query (first fit read every lease: 13.6 ms at 10,000)' },
    { bench: NAME, figure: 'the newest 1,000 of 100,000 operations', unit: 'ms', nimbus: ops.all, peers: { 'a member\'s': ops.member }, ratio: null, note: 'indexed' },
  ];
  return {
    record: makeRecord(NAME, { results: { quotaStepMs: quota, memberAccessMs: access, leaseMs: lease, newestOperationsMs: ops, goalRatio: GOAL_RATIO }, ratios: { quota10kOver100: quotaRatio, access10kOver100: accessRatio } }),
    summary,
  };
}

if (isMain(import.meta.url)) {
  const { printSummary } = await import('./lib/summary.js');
  const { rows, failed } = await runBenchmarks([{ name: NAME, fn: tenantScale, needsEnv: false }]);
  printSummary(rows);
  process.exitCode = failed.length ? 1 : 0;
}
