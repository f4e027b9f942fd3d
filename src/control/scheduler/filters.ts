/**
 * Nova's filters: each looks at one host and the request and either lets the host through or
 * says, in words an operator reads, why not. The first filter that rejects a host is the one
 * an explanation names, so the cheap and obvious ones come first.
 */
import type { HostLimits, HostUsageRecord, ServerGroupRecord } from '../../store/repos/placement.js';
import type { HostCandidate, PlacementRequest } from './types.js';

/** A request's resources in claim units (CPUs in thousandths). */
export interface Need {
  millicpus: number;
  memoryBytes: number;
  diskBytes: number;
}

/** A host as placement sees it: what it offers, what its claims hold, who of the request's project and group is there. */
export interface HostState {
  candidate: HostCandidate;
  limits: HostLimits;
  usage: HostUsageRecord;
  /** Claims of the request's project on the host. */
  projectInstances: number;
  /** Claims of the request's server group on the host. */
  groupMembers: number;
}

export interface FilterInput {
  req: PlacementRequest;
  need: Need;
  group?: ServerGroupRecord;
  /** Hosts holding the group's other members. */
  groupHosts: ReadonlySet<string>;
}

export interface HostFilter {
  readonly name: string;
  /**
   * Reads only the candidate and the request's static fields (staticKey()): never usage, counts
   * or the group. The scheduler keeps such a filter's answers per candidate list and key.
   */
  readonly static?: boolean;
  /** Whether the host can take the request: the scheduler's hot path, which builds no words. */
  passes(host: HostState, input: FilterInput): boolean;
  /** Why the host cannot take the request; undefined when it can (explanations and errors). */
  reject(host: HostState, input: FilterInput): string | undefined;
}

/** A filter from its test and its words (asked for only when the test fails). */
function filter(name: string, passes: HostFilter['passes'], why: (host: HostState, input: FilterInput) => string, isStatic = false): HostFilter {
  return { name, passes, reject: (h, i) => (passes(h, i) ? undefined : why(h, i)), ...(isStatic ? { static: true } : {}) };
}

/** The request fields static filters may read, as one string: requests with equal keys pass the same static filters on the same hosts. */
export function staticKey(req: PlacementRequest): string {
  return JSON.stringify([req.kind, req.host, req.zone, req.constraints, req.runtime, req.accelerator, req.architecture]);
}

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const KiB = 1024;

/**
 * Bytes in the largest unit that keeps them ≥ 1, with `decimals`; free space rounded down
 * (ignoring a few bytes: 3.8999999 GiB reads 3.9), what is needed rounded up.
 */
export function formatBytes(bytes: number, round: 'down' | 'up' = 'down', decimals = 1): string {
  const b = Math.max(0, bytes);
  const [unit, size] = b >= GiB ? ['GiB', GiB] : b >= MiB ? ['MiB', MiB] : b >= KiB ? ['KiB', KiB] : ['B', 1];
  if (size === 1) return `${Math.round(b)} B`;
  const scale = 10 ** decimals;
  const x = (b / size) * scale;
  return `${(round === 'down' ? Math.floor(Math.round(x * 100) / 100) : Math.ceil(x - 1e-9)) / scale} ${unit}`;
}

/** "3.9 GiB free of 4 GiB needed", more precise where rounding would make the two read the same. */
function shortfall(free: number, need: number): string {
  for (let decimals = 1; decimals <= 3; decimals++) {
    const [f, n] = [formatBytes(free, 'down', decimals), formatBytes(need, 'up', decimals)];
    if (f !== n) return `${f} free of ${n} needed`;
  }
  return `${Math.max(0, free)} B free of ${need} B needed`;
}

export function formatCpus(millicpus: number, round: 'down' | 'up' = 'down'): string {
  const m = Math.max(0, millicpus);
  const hundredths = (round === 'down' ? Math.floor : Math.ceil)(m / 10) / 100;
  return `${hundredths}`;
}

/** An administrator pinned the request (--host): every other host is out. */
export const pinnedHostFilter = filter('host', (h, { req }) => req.host === undefined || h.candidate.name === req.host, (_h, { req }) => `not the requested host ${req.host}`, true);

/** Disabled hosts take no new instances; an administrator's pin overrides that. */
export const enabledFilter = filter('enabled', (h, { req }) => !h.candidate.disabled || req.host !== undefined, () => 'disabled', true);

export const upFilter = filter('up', (h) => h.candidate.state === 'up', (h) => (h.candidate.state === 'down' ? 'down (not answering)' : 'state unknown (not heard from yet)'), true);

export const zoneFilter = filter('zone', (h, { req }) => req.zone === undefined || h.candidate.zone === req.zone, (h, { req }) => `zone is ${h.candidate.zone}, not ${req.zone}`, true);

export const constraintsFilter = filter(
  'constraints',
  (h, { req }) => {
    const c = req.constraints;
    if (c === undefined) return true;
    for (const k in c) if (h.candidate.labels[k] !== c[k]) return false;
    return true;
  },
  (h, { req }) => {
    for (const [k, v] of Object.entries(req.constraints ?? {})) {
      const has = h.candidate.labels[k];
      if (has === undefined) return `no label ${k} (${k}=${v} required)`;
      if (has !== v) return `label ${k} is ${has}, not ${v}`;
    }
    return '';
  },
  true,
);

export const architectureFilter = filter(
  'architecture',
  (h, { req }) => req.architecture === undefined || h.candidate.architecture === req.architecture,
  (h, { req }) => `architecture is ${h.candidate.architecture}, not ${req.architecture}`,
  true,
);

export const runtimeFilter = filter(
  'runtime',
  (h, { req }) => req.runtime === undefined || h.candidate.runtimes.includes(req.runtime),
  (h, { req }) => `no runtime ${req.runtime} (has ${h.candidate.runtimes.length ? h.candidate.runtimes.join(', ') : 'none'})`,
  true,
);

/** VMs need a hypervisor accelerator (kvm or tcg); a request may ask for one. */
export const acceleratorFilter = filter(
  'accelerator',
  (h, { req }) => !(req.kind === 'vm' && h.candidate.accelerator === undefined) && (req.accelerator === undefined || h.candidate.accelerator === req.accelerator),
  (h, { req }) => {
    const has = h.candidate.accelerator;
    if (req.kind === 'vm' && has === undefined) return 'runs no VMs (no kvm or tcg)';
    return has === undefined ? `no accelerator (${req.accelerator} required)` : `accelerator is ${has}, not ${req.accelerator}`;
  },
  true,
);

export const instancesFilter = filter(
  'instances',
  (h) => h.limits.instances === undefined || h.usage.instances + 1 <= h.limits.instances,
  (h) => `instances: holds ${h.usage.instances} of at most ${h.limits.instances}`,
);

/** Whether the request is more than the host holds in all, empty (its whole limits): no load or state would let it in. */
export function beyondCapacity(need: Need, limits: HostLimits): boolean {
  return need.millicpus > limits.millicpus || need.memoryBytes > limits.memoryBytes || need.diskBytes > limits.diskBytes;
}

export const cpuFilter = filter(
  'cpu',
  (h, { need }) => need.millicpus <= h.limits.millicpus - h.usage.millicpus,
  (h, { need }) => `cpu ${formatCpus(h.limits.millicpus - h.usage.millicpus)} vCPUs free of ${formatCpus(need.millicpus, 'up')} needed`,
);

export const memoryFilter = filter(
  'memory',
  (h, { need }) => need.memoryBytes <= h.limits.memoryBytes - h.usage.memoryBytes,
  (h, { need }) => `memory ${shortfall(h.limits.memoryBytes - h.usage.memoryBytes, need.memoryBytes)}`,
);

export const diskFilter = filter(
  'disk',
  (h, { need }) => need.diskBytes <= h.limits.diskBytes - h.usage.diskBytes,
  (h, { need }) => `disk ${shortfall(h.limits.diskBytes - h.usage.diskBytes, need.diskBytes)}`,
);

/** Hard policies only (soft ones weigh): anti-affinity keeps members on distinct hosts, affinity on one. */
export const serverGroupFilter = filter(
  'server-group',
  (h, { group, groupHosts }) => {
    if (!group) return true;
    if (group.policy === 'anti-affinity') return !groupHosts.has(h.candidate.name);
    if (group.policy === 'affinity') return groupHosts.size === 0 || groupHosts.has(h.candidate.name);
    return true;
  },
  (_h, { group, groupHosts }) =>
    group!.policy === 'anti-affinity'
      ? `holds a member of server group ${group!.name} (anti-affinity)`
      : `server group ${group!.name}'s members are on ${[...groupHosts].sort().join(', ')} (affinity)`,
);

/** In order: the first that rejects a host is the one named. */
export const DEFAULT_FILTERS: readonly HostFilter[] = [
  pinnedHostFilter, enabledFilter, upFilter, zoneFilter, constraintsFilter, architectureFilter, runtimeFilter, acceleratorFilter,
  serverGroupFilter, instancesFilter, cpuFilter, memoryFilter, diskFilter,
];

/** The first filter that rejects the host, or undefined. */
export function firstRejection(filters: readonly HostFilter[], host: HostState, input: FilterInput): { filter: string; reason: string } | undefined {
  for (const f of filters) {
    const reason = f.reject(host, input); // one test: reject() builds the words only for a host that fails
    if (reason !== undefined) return { filter: f.name, reason };
  }
  return undefined;
}

/** Whether every filter lets the host through (no words built: the scheduler's choice). */
export function passesAll(filters: readonly HostFilter[], host: HostState, input: FilterInput): boolean {
  for (const f of filters) if (!f.passes(host, input)) return false;
  return true;
}
