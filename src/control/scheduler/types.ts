/**
 * The scheduler's contract (Nova's filter/weigher model, claims as in Placement): the compute
 * services ask it for a host for one instance; it filters the hosts, weighs the survivors and
 * claims the resources on the winner atomically (concurrent placements from several replicas
 * never over-commit a host). The hosts it sees come from a HostSource (the agent directory).
 */

/** What a host offers to placement, as the agent directory and the store know it now. */
export interface HostCandidate {
  name: string;
  /** up: answering; down: not answering; unknown: never heard from since this process started. */
  state: 'up' | 'down' | 'unknown';
  /** No new placements (nimbus host disable); its instances stay. */
  disabled: boolean;
  zone: string;
  labels: Record<string, string>;
  /** Capacity as the host reported it (0 when never reported). */
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** The hypervisor accelerator new VMs would get (kvm, tcg) or undefined when the host runs no VMs. */
  accelerator?: string;
  /** OCI runtimes usable on the host (runc, crun, runsc-kata…). */
  runtimes: string[];
  /** CPU architecture in OCI spelling (amd64, arm64). */
  architecture: string;
  /** Over-commit allowed per resource (Nova's allocation ratios); absent: 1.0 each. */
  allocationRatios?: { cpu: number; memory: number; disk: number };
  /** At most this many instances (Nova's max_instances_per_host); absent: no limit. */
  maxInstances?: number;
}

export interface HostSource {
  candidates(): Promise<HostCandidate[]>;
}

/** The hosts that hold an image's layers already (image locality; the placement change records them). */
export type ImageLocality = (imageChainId: string) => Promise<ReadonlySet<string>>;

/** A named volume is placed too: its disk is claimed on the host that will hold it (docs/volumes.md). */
export type InstanceKind = 'container' | 'vm' | 'secure-container' | 'volume';

export interface PlacementRequest {
  /** The instance id: the claim's key (released with it). */
  consumerId: string;
  projectId: string;
  kind: InstanceKind;
  vcpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** Pinned by an administrator (--host): only this host is considered, its filters still apply except enabled. */
  host?: string;
  zone?: string;
  /** Host labels that must match (--constraint k=v). */
  constraints?: Record<string, string>;
  runtime?: string;
  accelerator?: string;
  architecture?: string;
  imageChainId?: string;
  /** Server group id (the caller resolved the name in its project). */
  group?: string;
}

export interface Placement {
  host: string;
}

/** Why each host was or was not chosen (nimbus scheduler explain; the NoValidHost error's details). */
export interface HostVerdict {
  host: string;
  /** The first filter that rejected the host, and why; absent: it passed every filter. */
  rejectedBy?: { filter: string; reason: string };
  /** Weighed score of hosts that passed (higher wins). */
  weight?: number;
  /** The weight's parts: each weigher's normalised value × its multiplier. */
  weighers?: Record<string, number>;
}

export interface Explanation {
  chosen?: string;
  hosts: HostVerdict[];
}

export interface Scheduler {
  /** Choose a host and claim the request's resources on it; NoValidHost (typed) names each host and the filter that rejected it. */
  place(req: PlacementRequest): Promise<Placement>;
  /** The same decision without claiming anything. */
  explain(req: PlacementRequest): Promise<Explanation>;
  /** Give back the instance's claim (idempotent). */
  release(consumerId: string): Promise<void>;
  /** Move an instance's claim to another host (migration), atomically with the destination's capacity check. */
  moveClaim(consumerId: string, toHost: string): Promise<void>;
}
