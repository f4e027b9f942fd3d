/** Rows of the system of record, as the control plane sees them (backend-neutral). */

export interface ProjectRecord {
  id: string;
  name: string;
  parentId: string | null;
  createdAt: string;
}

export type Role = 'reader' | 'member' | 'admin';

export interface UserRecord {
  id: string;
  name: string;
  /** "scrypt$N$r$p$salt$hash" (base64); never the password. */
  passwordHash: string;
  /** System-wide administrator (the bootstrap admin): every role on every project and the global routes. */
  systemAdmin: boolean;
  /** The project used when a request names none. */
  defaultProjectId: string | null;
  createdAt: string;
}

export interface TokenRecord {
  id: string;
  userId: string;
  kind: 'session' | 'apikey';
  /** API keys are named per user; sessions have no name. */
  name: string | null;
  /** sha256 of the secret, hex: the secret itself is never stored. */
  hash: string;
  createdAt: string;
  /** Epoch ms; null = never (API keys by default). */
  expiresAt: number | null;
}

export interface RoleGrantRecord {
  userId: string;
  projectId: string;
  role: Role;
  createdAt: string;
}

/** An image as one project sees it: the shared content plus that project's reference. */
export interface ImageRecord {
  /** Manifest digest (the platform manifest, not the index). */
  digest: string;
  /** The referencing project (several projects may reference the same content). */
  projectId: string;
  indexDigest: string | null;
  configDigest: string;
  /** Image config (OCI image-spec "config" object) as stored. */
  config: ImageConfigDoc;
  layers: LayerRecord[];
  /** Snapshot chain id of the top layer: the parent of every container of this image. */
  chainId: string;
  size: number;
  /** When the content was first stored; on a reference, when that project got it. */
  createdAt: string;
}

/** An image's content, shared by every project that references it. */
export type ImageContentRecord = Omit<ImageRecord, 'projectId'>;

export interface LayerRecord {
  digest: string;
  mediaType: string;
  size: number;
  diffId: string;
}

export interface ImageConfigDoc {
  architecture?: string;
  os?: string;
  created?: string;
  config?: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Labels?: Record<string, string> | null;
    StopSignal?: string;
    ExposedPorts?: Record<string, unknown>;
    /** VOLUME paths: the Docker API makes an anonymous volume for each no mount covers. */
    Volumes?: Record<string, unknown> | null;
  };
  rootfs?: { type: string; diff_ids: string[] };
  history?: unknown[];
}

export interface ImageTagRecord {
  /** Fully normalised reference, e.g. "127.0.0.1:5000/nimbus-test/busybox:latest". */
  name: string;
  digest: string;
  projectId: string;
  updatedAt: string;
}

export type RestartPolicyName = 'no' | 'on-failure' | 'always' | 'unless-stopped';

/** A mount as a container's record keeps it: a named volume by id and name, a host path, or tmpfs (docs/volumes.md). */
export type StoredMount =
  // anonymous: made for this container (-v /path, an image's VOLUME), removed with it by rm -v and autoRemove
  | { type: 'volume'; volumeId: string; name: string; target: string; readonly?: boolean; anonymous?: boolean }
  | { type: 'bind'; source: string; target: string; readonly?: boolean }
  | { type: 'tmpfs'; target: string; sizeBytes?: number; mode?: number };

/** Docker's HEALTHCHECK (--health-cmd …): what the health monitor runs in the container, and how often. */
export interface HealthcheckConfig {
  /** ["CMD-SHELL", "cmd"] (run by /bin/sh -c), ["CMD", arg0, …], or ["NONE"] (the image's check turned off). */
  test: string[];
  /** Between the end of one probe and the start of the next (Docker's default 30 s). */
  intervalMs?: number;
  /** A probe running longer fails (default 30 s). */
  timeoutMs?: number;
  /** Failures in a row that make it unhealthy (default 3). */
  retries?: number;
  /** Failures in this long after the start do not count (default 0). */
  startPeriodMs?: number;
}

/** A probe's outcome, as Docker's State.Health.Log keeps it (the last 5). */
export interface HealthProbe {
  start: string;
  end: string;
  exitCode: number;
  /** Its output, at most 4 KiB. */
  output: string;
}

/** Docker's State.Health: starting until the first success (or until the failures count), then healthy or unhealthy. */
export interface ContainerHealth {
  status: 'starting' | 'healthy' | 'unhealthy';
  failingStreak: number;
  log: HealthProbe[];
}

export interface ContainerConfig {
  /** Probed by the health monitor while it runs (docs/docker-api.md, health). */
  healthcheck?: HealthcheckConfig;
  /** Volumes, host paths and tmpfs mounted into it, resolved at create. */
  mounts?: StoredMount[];
  image: string;
  cmd?: string[];
  entrypoint?: string[];
  env: string[];
  workdir?: string;
  user?: string;
  hostname?: string;
  memoryBytes?: number;
  cpus?: number;
  pidsLimit?: number;
  /** What its writable layer may hold (whole MiB; charged to the project's disk); absent: unbounded. */
  storageBytes?: number;
  restart: { name: RestartPolicyName; maxRetries?: number };
  autoRemove: boolean;
  runtime?: string;
  labels: Record<string, string>;
  stopSignal?: string;
  stopTimeout?: number;
  /** "bridge" (the project's default network) | "none" | "host" | "container:<id or name>" | a network's name or id. Absent = "bridge". */
  network?: string;
  /** Published ports (-p). */
  ports?: PortSpec[];
  /** Fixed address on the first network (--ip). */
  ip?: string;
  /** Nameservers instead of the network's embedded DNS (--dns). */
  dns?: string[];
  /** "name:ip" lines for /etc/hosts (--add-host). */
  extraHosts?: string[];
  /** Docker links: environment variables and a hosts entry for each (--link NAME[:ALIAS]). */
  links?: Array<{ container: string; alias: string }>;
  /** More names other containers of its networks resolve it by (--network-alias). */
  aliases?: string[];
  /** Log rotation (--log-opt max-size / max-file); absent: the agent's defaults (10 MiB x 3). */
  log?: { maxSizeBytes?: number; maxFiles?: number };
  /** The main process on a terminal (docker run -t): attach carries its raw bytes, resize its size. */
  tty?: boolean;
  /** Its stdin open to attach (docker run -i). */
  openStdin?: boolean;
  /** With openStdin: stdin ends when the first attached client leaves (docker run -i without -d). */
  stdinOnce?: boolean;
}

export interface PortSpec {
  protocol: 'tcp' | 'udp';
  /** Bind only this host address (default: every address, loopback included). */
  hostIp?: string;
  /** 0 in a request: a free port of the ephemeral range, chosen by the container's host (-P, -p PORT); the record keeps the one chosen. */
  hostPort: number;
  /** In a request, with hostPort: one free port of hostPort..hostPortEnd chosen by the container's host (-p 8000-8010:80); the record keeps the one chosen, without this. */
  hostPortEnd?: number;
  containerPort: number;
}

/** A VM disk image (raw or qcow2) in the image service: content stored once by digest, named per project. */
export interface DiskImageRecord {
  projectId: string;
  name: string;
  /** sha256 of the file as imported: the content store's blob. */
  digest: string;
  format: 'raw' | 'qcow2' | 'kernel' | 'initrd';
  /** Bytes the file takes. */
  size: number;
  /** Bytes the guest sees. */
  virtualSize: number;
  createdAt: string;
}

export type NetworkDriverName = 'bridge' | 'route';

/** A network: its kernel shape is laid out by the agent; addresses are leased here. */
export interface NetworkRecord {
  id: string;
  name: string;
  projectId: string;
  driver: NetworkDriverName;
  subnet: string;
  gateway: string;
  internal: boolean;
  /** Host interface (bridge, or the route network's dummy), ≤ 15 characters. */
  device: string;
  /** The project's default network ("bridge"), made on first use. */
  builtin: boolean;
  labels: Record<string, string>;
  createdAt: string;
  /** Its VXLAN id once it has spanned hosts (given once, kept for its life; docs/overlay.md). */
  vni?: number;
}

/** One address on one network, held by one container (its endpoint). */
export interface NetworkLeaseRecord {
  networkId: string;
  address: string;
  instanceId: string;
  /** The interface index inside the container: eth<ifIndex>. */
  ifIndex: number;
  createdAt: string;
}

export type ContainerStatus = 'created' | 'running' | 'paused' | 'restarting' | 'exited' | 'removing' | 'dead';

export interface ContainerRecord {
  id: string;
  name: string;
  projectId: string;
  imageDigest: string;
  config: ContainerConfig;
  status: ContainerStatus;
  runtime: string;
  pid: number | null;
  exitCode: number | null;
  oomKilled: boolean;
  restartCount: number;
  /** Set when a user stopped it: restart policies must not bring it back. */
  stoppedByUser: boolean;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  warnings: string[];
  /** The host (agent name) it lives on: the embedded agent's name, or a registered agent's. */
  host: string;
  /** Its health while it has a healthcheck (the last run's when stopped); absent or null: none. */
  health?: ContainerHealth | null;
}

export type OperationStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface OperationRecord {
  id: string;
  kind: string;
  projectId: string;
  status: OperationStatus;
  target: string;
  progress: Record<string, unknown>;
  result: unknown;
  error: { code: string; message: string } | null;
  createdAt: string;
  updatedAt: string;
  /** The control-plane process (replica id) running it; null for rows older than replicas. */
  replica: string | null;
}

/** A control-plane process sharing the store (its row lives while it runs; see docs/replicas.md). */
export interface ReplicaRecord {
  /** New on every start: a restarted process is another replica. */
  id: string;
  hostname: string;
  pid: number;
  /** Epoch ms. */
  startedAt: number;
  /** Epoch ms of its last heartbeat. */
  lastSeen: number;
  /** Where its API listens over TCP, when it does. */
  apiUrl: string | null;
}

/** What a VM was created with (the create request as stored). */
export interface VmConfig {
  /** vCPUs it has (hot-plugged ones included). */
  cpus: number;
  /** vCPUs it may grow to while running (hot-plug); absent: none. */
  maxCpus?: number;
  memoryMiB: number;
  /** Direct kernel boot, or a disk image (raw/qcow2) the VM's root overlay is backed by. */
  kernel?: string;
  initrd?: string;
  append?: string;
  disk?: string;
  /** Host CPUs for the vCPU threads (vCPU i on pin[i % len]). */
  pin?: number[];
  /** The saved VM this one was made from (it starts by restore from the template's state). */
  template?: string;
  /** Network ids of its NICs, in order (eth0 first); addresses are its leases. */
  networks?: string[];
  /** The disk image its root disk's overlay is backed by (with `disk`, the blob's path). */
  diskImage?: { name: string; digest: string };
  /** The kernel image it boots (with `kernel`, the blob's path), and its initrd image. */
  kernelImage?: { name: string; digest: string };
  initrdImage?: { name: string; digest: string };
  /** Block volumes on it (docs/volumes.md "Block volumes"), in attach order; `boot`: the one it boots from. Removing the VM detaches them. */
  volumes?: Array<{ volumeId: string; readonly?: boolean; boot?: boolean }>;
  /** Rebuilt on another host, from its images, when its host dies while it runs (docs/overlay.md "Healing"). */
  ha?: boolean;
}

/** The VM state machine's states (src/control/compute/vm-state.ts has the legal transitions). */
export type VmStatus = 'created' | 'running' | 'paused' | 'saved' | 'stopped' | 'removing';

export interface VmRecord {
  id: string;
  /** Unique across containers and VMs: both are instances. */
  name: string;
  projectId: string;
  config: VmConfig;
  status: VmStatus;
  /** The QEMU process while running or paused. */
  pid: number | null;
  exitCode: number | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  savedAt: string | null;
  /** The agent (host) the VM lives on: "local" for the embedded one, else a registered agent's name. */
  agent: string;
}

/**
 * An agent in another process (or on another host) registered with this control plane. The
 * token is the secret the control plane presents to it; it is never logged nor served.
 */
export interface AgentRecord {
  name: string;
  /** How the control plane reaches it: https://HOST:PORT, unix:/PATH, or "embedded:" for the control plane's own agent (a row for its host settings, never connected to). */
  url: string;
  token: string;
  registeredAt: string;
  /** Availability zone (Nova's AZ, Incus' failure domain): "default" unless set. */
  zone: string;
  /** Free-form labels placements can require (--constraint k=v): Nova's aggregates' metadata. */
  labels: Record<string, string>;
  /** No new placements while set (nimbus host disable); its instances stay. */
  disabled: HostDisabled | null;
  /** Over-commit per resource set by an administrator; a resource absent takes the control plane's default. */
  allocationRatios: Partial<AllocationRatios>;
  /** What the host last said of itself (kept, so a restarted control plane can place before it asks again); null: never heard from. */
  facts: HostFacts | null;
}

export interface HostDisabled {
  reason: string;
  /** ISO time, and the user who disabled it. */
  at: string;
  by: string;
}

export interface AllocationRatios {
  cpu: number;
  memory: number;
  disk: number;
}

/** A host's capacity and software as its agent reported it. */
export interface HostFacts {
  cpus: number;
  memoryBytes: number;
  /** Size of the filesystem holding the agent's data (0: the agent does not report it). */
  diskBytes: number;
  /** The VM accelerator (kvm, tcg, undecided); absent: the host runs no VMs. */
  accelerator?: string;
  /** Usable OCI runtimes. */
  runtimes: string[];
  /** Whether containers move live to or from it (a working CRIU), and why not; absent: not reported (an agent before protocol 9). */
  liveMove?: { usable: boolean; reason?: string; version?: string };
  architecture: string;
  hostname: string;
  kernel: string;
  /** Epoch ms of the answer these facts came from. */
  seenAt: number;
}

/** A one-time token an agent joins with (POST /agents/join); only its secret's hash is kept. */
export interface JoinTokenRecord {
  id: string;
  /** sha256 of the secret, hex. */
  hash: string;
  createdAt: string;
  /** Epoch ms. */
  expiresAt: number;
  /** When it was redeemed (epoch ms) and by which agent name; null while unused. */
  usedAt: number | null;
  usedBy: string | null;
}
