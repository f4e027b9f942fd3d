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
  /** Why the host cannot take the request; undefined when it can. */
  reject(host: HostState, input: FilterInput): string | undefined;
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
export const pinnedHostFilter: HostFilter = {
  name: 'host',
  reject: (h, { req }) => (req.host !== undefined && h.candidate.name !== req.host ? `not the requested host ${req.host}` : undefined),
};

/** Disabled hosts take no new instances; an administrator's pin overrides that. */
export const enabledFilter: HostFilter = {
  name: 'enabled',
  reject: (h, { req }) => (h.candidate.disabled && req.host === undefined ? 'disabled' : undefined),
};

export const upFilter: HostFilter = {
  name: 'up',
  reject: (h) => (h.candidate.state === 'up' ? undefined : h.candidate.state === 'down' ? 'down (not answering)' : 'state unknown (not heard from yet)'),
};

export const zoneFilter: HostFilter = {
  name: 'zone',
  reject: (h, { req }) => (req.zone !== undefined && h.candidate.zone !== req.zone ? `zone is ${h.candidate.zone}, not ${req.zone}` : undefined),
};

export const constraintsFilter: HostFilter = {
  name: 'constraints',
  reject: (h, { req }) => {
    for (const [k, v] of Object.entries(req.constraints ?? {})) {
      const has = h.candidate.labels[k];
      if (has === undefined) return `no label ${k} (${k}=${v} required)`;
      if (has !== v) return `label ${k} is ${has}, not ${v}`;
    }
    return undefined;
  },
};

export const architectureFilter: HostFilter = {
  name: 'architecture',
  reject: (h, { req }) =>
    req.architecture !== undefined && h.candidate.architecture !== req.architecture ? `architecture is ${h.candidate.architecture}, not ${req.architecture}` : undefined,
};

export const runtimeFilter: HostFilter = {
  name: 'runtime',
  reject: (h, { req }) => {
    if (req.runtime === undefined || h.candidate.runtimes.includes(req.runtime)) return undefined;
    return `no runtime ${req.runtime} (has ${h.candidate.runtimes.length ? h.candidate.runtimes.join(', ') : 'none'})`;
  },
};

/** VMs need a hypervisor accelerator (kvm or tcg); a request may ask for one. */
export const acceleratorFilter: HostFilter = {
  name: 'accelerator',
  reject: (h, { req }) => {
    const has = h.candidate.accelerator;
    if (req.kind === 'vm' && has === undefined) return 'runs no VMs (no kvm or tcg)';
    if (req.accelerator !== undefined && has !== req.accelerator) return has === undefined ? `no accelerator (${req.accelerator} required)` : `accelerator is ${has}, not ${req.accelerator}`;
    return undefined;
  },
};

export const instancesFilter: HostFilter = {
  name: 'instances',
  reject: (h) => {
    const max = h.limits.instances;
    return max !== undefined && h.usage.instances + 1 > max ? `instances: holds ${h.usage.instances} of at most ${max}` : undefined;
  },
};

export const cpuFilter: HostFilter = {
  name: 'cpu',
  reject: (h, { need }) => {
    const free = h.limits.millicpus - h.usage.millicpus;
    return need.millicpus > free ? `cpu ${formatCpus(free)} vCPUs free of ${formatCpus(need.millicpus, 'up')} needed` : undefined;
  },
};

export const memoryFilter: HostFilter = {
  name: 'memory',
  reject: (h, { need }) => {
    const free = h.limits.memoryBytes - h.usage.memoryBytes;
    return need.memoryBytes > free ? `memory ${shortfall(free, need.memoryBytes)}` : undefined;
  },
};

export const diskFilter: HostFilter = {
  name: 'disk',
  reject: (h, { need }) => {
    const free = h.limits.diskBytes - h.usage.diskBytes;
    return need.diskBytes > free ? `disk ${shortfall(free, need.diskBytes)}` : undefined;
  },
};

/** Hard policies only (soft ones weigh): anti-affinity keeps members on distinct hosts, affinity on one. */
export const serverGroupFilter: HostFilter = {
  name: 'server-group',
  reject: (h, { group, groupHosts }) => {
    if (!group) return undefined;
    if (group.policy === 'anti-affinity' && groupHosts.has(h.candidate.name)) return `holds a member of server group ${group.name} (anti-affinity)`;
    if (group.policy === 'affinity' && groupHosts.size > 0 && !groupHosts.has(h.candidate.name)) {
      return `server group ${group.name}'s members are on ${[...groupHosts].sort().join(', ')} (affinity)`;
    }
    return undefined;
  },
};

/** In order: the first that rejects a host is the one named. */
export const DEFAULT_FILTERS: readonly HostFilter[] = [
  pinnedHostFilter, enabledFilter, upFilter, zoneFilter, constraintsFilter, architectureFilter, runtimeFilter, acceleratorFilter,
  serverGroupFilter, instancesFilter, cpuFilter, memoryFilter, diskFilter,
];

/** The first filter that rejects the host, or undefined. */
export function firstRejection(filters: readonly HostFilter[], host: HostState, input: FilterInput): { filter: string; reason: string } | undefined {
  for (const f of filters) {
    const reason = f.reject(host, input);
    if (reason !== undefined) return { filter: f.name, reason };
  }
  return undefined;
}
