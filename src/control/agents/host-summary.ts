/**
 * A host as it is shown, from its stored row (settings and facts) and its state as this process
 * finds it: to users (`GET /hosts`, `GET /agents`) and to the scheduler (a HostCandidate).
 */
import type { AgentRecord, AllocationRatios } from '../../store/records.js';
import { EMBEDDED_AGENT_URL } from '../../store/repos/agents.js';
import type { HostCandidate } from '../scheduler/types.js';
import { hostArchitecture } from './host-facts.js';
import type { HostState, HostStateNow } from './host-reach.js';
import { effectiveRatios } from './host-settings.js';

/** A host as `GET /hosts` (and `GET /agents`) shows it (never its token; its URL to system administrators only). */
export interface AgentSummary {
  name: string;
  /** The embedded agent, in the control plane's own process. */
  local: boolean;
  /** How the control plane reaches it: shown to system administrators only (an internal address). */
  url?: string;
  registeredAt?: string;
  /** Reachability: up (answered the last ask), down (did not: reason), unknown (not asked yet, no recent facts). */
  state: HostState;
  /** Why it is down or unknown. */
  reason?: string;
  zone: string;
  labels: Record<string, string>;
  /** An administrator's flag beside the state: no new placements. */
  disabled: boolean;
  disabledReason?: string;
  disabledAt?: string;
  disabledBy?: string;
  /** In effect (the defaults where none was set). */
  allocationRatios: AllocationRatios;
  /** The last facts (absent: never heard from). */
  hostname?: string;
  kernel?: string;
  architecture?: string;
  cpus?: number;
  memoryBytes?: number;
  diskBytes?: number;
  accelerator?: string;
  runtimes?: string[];
  /** Whether containers move live to or from it (CRIU), and why not (docs/overlay.md, "Moving containers live"). */
  liveMove?: { usable: boolean; reason?: string; version?: string };
  /** When those facts were reported. */
  lastSeenAt?: string;
  vms: number;
  /** Containers recorded on it (absent where the caller did not count them). */
  containers?: number;
  /** Resources claimed by placements on it (the scheduler's claims; absent until it reports them). */
  allocated?: HostAllocation;
}
export type HostSummary = AgentSummary;

export interface HostAllocation {
  vcpus: number;
  memoryBytes: number;
  diskBytes: number;
  instances: number;
}

/** Counts that make a listing: by the caller, since what a user may see of them depends on who asks. */
export interface HostCounts {
  vmsOn: (host: string) => number | Promise<number>;
  containersOn?: (host: string) => number | Promise<number>;
  /** The scheduler's claims per host (the seam for `nimbus host ls` ALLOCATED columns). */
  allocatedOn?: (host: string) => HostAllocation | undefined | Promise<HostAllocation | undefined>;
}

/** Who a listing is for: a system administrator (`admin`) sees how each host is reached; anyone else, by default, does not. */
export interface HostViewer { admin?: boolean }

/** What an administrator's own route (disable, enable, settings) is answered as. */
export const ADMIN_VIEWER: HostViewer = { admin: true };

/** What a listing counts on one host. */
export interface HostTally { vms: number; containers?: number; allocated?: HostAllocation }

/** The caller's counts for one host, those it does not count left out. */
export async function tallyOn(counts: HostCounts, name: string): Promise<HostTally> {
  const [vms, containers, allocated] = await Promise.all([counts.vmsOn(name), counts.containersOn?.(name), counts.allocatedOn?.(name)]);
  return { vms, ...(containers !== undefined ? { containers } : {}), ...(allocated ? { allocated } : {}) };
}

/**
 * The host as a listing shows it; `rec` absent: a host without a row yet. How it is reached (its
 * URL, the transport's own words when it is down) only when `admin`: to anyone else an agent's
 * address is internal.
 */
export function hostSummary(name: string, rec: AgentRecord | undefined, o: { local: boolean; state: HostStateNow; tally: HostTally; admin: boolean }): AgentSummary {
  const f = rec?.facts;
  const remote = rec && rec.url !== EMBEDDED_AGENT_URL;
  const { tally } = o;
  const reason = (o.admin ? o.state.adminReason : undefined) ?? o.state.reason;
  return {
    name, local: o.local,
    ...(remote ? { ...(o.admin ? { url: rec.url } : {}), registeredAt: rec.registeredAt } : {}),
    state: o.state.state,
    ...(reason !== undefined ? { reason } : {}),
    zone: rec?.zone ?? 'default', labels: rec?.labels ?? {},
    disabled: !!rec?.disabled,
    ...(rec?.disabled ? { disabledReason: rec.disabled.reason, disabledAt: rec.disabled.at, disabledBy: rec.disabled.by } : {}),
    allocationRatios: effectiveRatios(rec?.allocationRatios ?? {}),
    ...(f
      ? {
          hostname: f.hostname, kernel: f.kernel, architecture: f.architecture, cpus: f.cpus, memoryBytes: f.memoryBytes, diskBytes: f.diskBytes,
          ...(f.accelerator !== undefined ? { accelerator: f.accelerator } : {}), runtimes: f.runtimes, ...(f.liveMove ? { liveMove: f.liveMove } : {}), lastSeenAt: new Date(f.seenAt).toISOString(),
        }
      : {}),
    vms: tally.vms,
    ...(tally.containers !== undefined ? { containers: tally.containers } : {}),
    ...(tally.allocated ? { allocated: tally.allocated } : {}),
  };
}

/** The host as the scheduler sees it (a host never heard from has no capacity). */
export function hostCandidate(name: string, rec: AgentRecord | undefined, state: HostState): HostCandidate {
  const f = rec?.facts;
  return {
    name, state, disabled: !!rec?.disabled, zone: rec?.zone ?? 'default', labels: rec?.labels ?? {},
    cpus: f?.cpus ?? 0, memoryBytes: f?.memoryBytes ?? 0, diskBytes: f?.diskBytes ?? 0,
    ...(f?.accelerator !== undefined ? { accelerator: f.accelerator } : {}),
    runtimes: f?.runtimes ?? [], architecture: f?.architecture ?? hostArchitecture(),
    allocationRatios: effectiveRatios(rec?.allocationRatios ?? {}),
  };
}
