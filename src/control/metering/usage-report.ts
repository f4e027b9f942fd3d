/**
 * Usage as reported (GET /usage, nimbus usage): the stored rows summed per instance and per
 * project, each project's total including its descendants', with instance-seconds by kind and
 * size, and optionally a series per period.
 */
import type { ProjectRecord } from '../../store/records.js';
import type { UsageKind, UsageRow } from '../../store/repos/usage.js';
import type { Store } from '../../store/store.js';
import { USAGE_PERIOD_MS } from './accounting.js';
import { ProjectTree } from '../identity/project-tree.js';

const MiB_MS_PER_GiB_HOUR = 1024 * 3_600_000;

export interface UsageTotals {
  instanceSeconds: number;
  /** CPU time the counters measured (cgroups; QEMU's process for VMs); null when nothing in scope had a counter. */
  cpuSeconds: number | null;
  memoryGiBHours: number;
  /** null when no size was known. */
  diskGiBHours: number | null;
  /** Bytes the instances received and sent on their endpoints; null: not measured (no endpoint of their own, an agent too old, or only spans after a metering restart). */
  networkRxBytes: number | null;
  networkTxBytes: number | null;
}

export interface SizeUsage {
  kind: UsageKind;
  /** CPUs and memory (bytes) of the size; 0: no limit. */
  cpus: number;
  memoryBytes: number;
  instanceSeconds: number;
}

export interface ProjectUsage {
  id: string;
  name: string;
  parentId: string | null;
  /** The project's own instances. */
  own: UsageTotals;
  /** Its own and its descendants'. */
  total: UsageTotals;
  /** total's instance-seconds by kind and size. */
  bySize: SizeUsage[];
}

export interface InstanceUsage extends UsageTotals {
  id: string;
  name: string;
  projectId: string;
  kind: UsageKind;
  bySize: SizeUsage[];
}

export interface PeriodUsage extends UsageTotals {
  /** ISO start of the period (an hour). */
  start: string;
  projectId: string;
}

export interface UsageReport {
  /** The bounds asked for, rounded down to the period (records are kept per hour). */
  since: string | null;
  until: string | null;
  periodSeconds: number;
  projects: ProjectUsage[];
  instances: InstanceUsage[];
  /** Per project (its own instances) and period, when asked for. */
  series?: PeriodUsage[];
}

const zero = (): UsageTotals => ({ instanceSeconds: 0, cpuSeconds: null, memoryGiBHours: 0, diskGiBHours: null, networkRxBytes: null, networkTxBytes: null });

const plusNullable = (a: number | null, b: number | null): number | null => (a === null ? b : b === null ? a : a + b);

function add(into: UsageTotals, t: UsageTotals): void {
  into.instanceSeconds += t.instanceSeconds;
  into.cpuSeconds = plusNullable(into.cpuSeconds, t.cpuSeconds);
  into.memoryGiBHours += t.memoryGiBHours;
  into.diskGiBHours = plusNullable(into.diskGiBHours, t.diskGiBHours);
  into.networkRxBytes = plusNullable(into.networkRxBytes, t.networkRxBytes);
  into.networkTxBytes = plusNullable(into.networkTxBytes, t.networkTxBytes);
}

function totalsOf(r: UsageRow): UsageTotals {
  return {
    instanceSeconds: r.activeMs / 1000,
    cpuSeconds: r.cpuNs === null ? null : r.cpuNs / 1e9,
    memoryGiBHours: r.memoryMibMs / MiB_MS_PER_GiB_HOUR,
    diskGiBHours: r.diskMibMs === null ? null : r.diskMibMs / MiB_MS_PER_GiB_HOUR,
    networkRxBytes: r.netRxBytes,
    networkTxBytes: r.netTxBytes,
  };
}

function addSize(into: SizeUsage[], kind: UsageKind, millicpus: number, memoryBytes: number, seconds: number): void {
  const cpus = millicpus / 1000;
  const found = into.find((s) => s.kind === kind && s.cpus === cpus && s.memoryBytes === memoryBytes);
  if (found) found.instanceSeconds += seconds;
  else into.push({ kind, cpus, memoryBytes, instanceSeconds: seconds });
}

const bySizeOrder = (a: SizeUsage, b: SizeUsage) => a.kind.localeCompare(b.kind) || a.cpus - b.cpus || a.memoryBytes - b.memoryBytes;

/** floor to the period (records are per hour). */
export const periodFloor = (at: number): number => Math.floor(at / USAGE_PERIOD_MS) * USAGE_PERIOD_MS;

/** `roots` and every project under them (each once), parents before children. */
export function subtree(all: readonly ProjectRecord[], roots: readonly string[]): ProjectRecord[] {
  const byId = new Map(all.map((p) => [p.id, p]));
  return new ProjectTree(new Map(all.map((p) => [p.id, p.parentId]))).subtrees(roots).map((id) => byId.get(id)!);
}

/**
 * The report over `projects` (each with its whole subtree in the list: see subtree()), between
 * since and until (epoch ms, rounded down to the hour), with a series per hour when asked.
 */
export async function usageReport(store: Store, projects: readonly ProjectRecord[], opts: { since?: number; until?: number; series?: boolean } = {}): Promise<UsageReport> {
  const since = opts.since === undefined ? undefined : periodFloor(opts.since);
  const until = opts.until === undefined ? undefined : periodFloor(opts.until);
  const filter = { projectIds: projects.map((p) => p.id), ...(since !== undefined ? { since } : {}), ...(until !== undefined ? { until } : {}) };
  const rows = await store.usage.query(filter);
  const own = new Map<string, UsageTotals>(projects.map((p) => [p.id, zero()]));
  const ownSizes = new Map<string, SizeUsage[]>(projects.map((p) => [p.id, []]));
  const instances = new Map<string, InstanceUsage>();
  for (const r of rows) {
    const t = totalsOf(r);
    add(own.get(r.projectId)!, t);
    addSize(ownSizes.get(r.projectId)!, r.kind, r.millicpus, r.memoryBytes, t.instanceSeconds);
    let i = instances.get(r.instanceId);
    if (!i) instances.set(r.instanceId, (i = { id: r.instanceId, name: r.name, projectId: r.projectId, kind: r.kind, ...zero(), bySize: [] }));
    add(i, t);
    addSize(i.bySize, r.kind, r.millicpus, r.memoryBytes, t.instanceSeconds);
  }
  // children before parents, so each total is complete when its parent adds it
  const inScope = new Set(projects.map((p) => p.id));
  const total = new Map<string, UsageTotals>();
  const sizes = new Map<string, SizeUsage[]>();
  for (const p of [...projects].reverse()) {
    const t = zero();
    add(t, own.get(p.id)!);
    total.set(p.id, t);
    sizes.set(p.id, ownSizes.get(p.id)!.map((s) => ({ ...s })));
  }
  for (const p of [...projects].reverse()) {
    if (p.parentId === null || !inScope.has(p.parentId)) continue;
    add(total.get(p.parentId)!, total.get(p.id)!);
    for (const s of sizes.get(p.id)!) addSize(sizes.get(p.parentId)!, s.kind, s.cpus * 1000, s.memoryBytes, s.instanceSeconds);
  }
  const report: UsageReport = {
    since: since === undefined ? null : new Date(since).toISOString(),
    until: until === undefined ? null : new Date(until).toISOString(),
    periodSeconds: USAGE_PERIOD_MS / 1000,
    projects: projects.map((p) => ({ id: p.id, name: p.name, parentId: p.parentId, own: own.get(p.id)!, total: total.get(p.id)!, bySize: sizes.get(p.id)!.sort(bySizeOrder) })),
    instances: [...instances.values()].map((i) => ({ ...i, bySize: i.bySize.sort(bySizeOrder) })),
  };
  if (opts.series) {
    const series = new Map<string, PeriodUsage>();
    for (const r of await store.usage.query({ ...filter, byPeriod: true })) {
      const key = `${r.projectId} ${r.periodStart}`;
      let s = series.get(key);
      if (!s) series.set(key, (s = { start: new Date(r.periodStart ?? 0).toISOString(), projectId: r.projectId, ...zero() }));
      add(s, totalsOf(r));
    }
    report.series = [...series.values()].sort((a, b) => a.start.localeCompare(b.start) || a.projectId.localeCompare(b.projectId));
  }
  return report;
}
