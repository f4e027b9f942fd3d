/** Shared TypeBox schemas: they validate requests and generate /openapi.json. */
import { Type, type TSchema } from '@sinclair/typebox';
import { MAX_TERMINAL_CELLS } from '../agent/drivers/instance-driver.js';
import type { ContainerConfig, ImageConfigDoc } from '../store/records.js';
import {
  MAX_ARG_LENGTH, MAX_MEMORY_BYTES, MAX_PIDS_LIMIT, MAX_STORAGE_BYTES, MIN_STORAGE_BYTES, MAX_RESTART_RETRIES, MAX_STOP_TIMEOUT_SEC, MAX_UID, MIN_MEMORY_BYTES,
} from '../core/limits.js';
import { MAX_SIGNAL_LENGTH } from '../core/signals.js';
import { MAX_PUBLISHED_PORTS } from '../core/port-ranges.js';
import { HOST_PATH } from './host-paths.js';
import { LOG_LIMIT_RANGE } from '../agent/drivers/container/container-logs.js';

export const ErrorBody = Type.Object(
  { error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }) },
  { $id: 'Error' },
);

export const Operation = Type.Object(
  {
    id: Type.String(),
    kind: Type.String(),
    projectId: Type.String(),
    status: Type.Union([Type.Literal('pending'), Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled')]),
    target: Type.String(),
    progress: Type.Record(Type.String(), Type.Unknown()),
    result: Type.Unknown(),
    error: Type.Union([Type.Null(), Type.Object({ code: Type.String(), message: Type.String() })]),
    createdAt: Type.String(),
    updatedAt: Type.String(),
    replica: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'The control-plane replica that runs it (null: from before replicas)' })),
  },
  { $id: 'Operation' },
);

export const Layer = Type.Object({ digest: Type.String(), mediaType: Type.String(), size: Type.Integer(), diffId: Type.String() });

export const Image = Type.Object(
  {
    id: Type.String(),
    digest: Type.String(),
    projectId: Type.String(),
    indexDigest: Type.Union([Type.String(), Type.Null()]),
    configDigest: Type.String(),
    config: Type.Unsafe<ImageConfigDoc>(Type.Object({}, { additionalProperties: true, description: 'OCI image config' })),
    layers: Type.Array(Layer),
    chainId: Type.String(),
    size: Type.Integer(),
    createdAt: Type.String(),
    tags: Type.Array(Type.String()),
    containers: Type.Integer(),
  },
  { $id: 'Image' },
);

/**
 * Names of containers, networks, users, projects, API keys, pools: what core/ids.ts's isValidName
 * accepts (validate.test.ts keeps the two in step), so a bad name is a 400 at the edge.
 */
export const NAME_PATTERN = '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$';
const NAME_HINT = "must be a name: letters, digits, '_', '.', '-', starting with a letter or digit, at most 128";
export const Name = (opts: { maxLength?: number; description?: string } = {}) =>
  Type.String({ minLength: 1, maxLength: opts.maxLength ?? 128, pattern: NAME_PATTERN, 'x-error': NAME_HINT, ...(opts.description ? { description: opts.description } : {}) });
/** A reference to a resource: id, unique id prefix or name (never empty: "" would mean "none" somewhere). */
export const Ref = (description: string, maxLength = 256) => Type.String({ minLength: 1, maxLength, description });
/** A project: id, path (org/team) or name. */
export const ProjectRef = (description = 'Project id, path (org/team) or name') => Ref(description, 1024);

export const IdParam = Type.Object({ id: Ref('Full id, unique id prefix, or name') });

/** Labels: at most 256, keys 1-128 characters, values up to 4096; neither with control characters (validate.ts). */
export const Labels = Type.Record(Type.String({ pattern: '^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$' }), Type.String({ maxLength: 4096 }), { default: {}, maxProperties: 256 });

export const RestartPolicy = Type.Object({
  name: Type.Union([Type.Literal('no'), Type.Literal('on-failure'), Type.Literal('always'), Type.Literal('unless-stopped')], { default: 'no' }),
  maxRetries: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_RESTART_RETRIES })),
});

const Ipv4 = (description?: string) => Type.String({ format: 'ipv4', maxLength: 15, ...(description ? { description } : {}) });

export const PortSpec = Type.Object(
  {
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
    hostIp: Type.Optional(Ipv4('Default: every host address, loopback included')),
    hostPort: Type.Integer({ minimum: 0, maximum: 65535, description: '0: a free port of 49153-65535 chosen by the container\'s host (-p PORT); the container\'s record shows the one chosen' }),
    hostPortEnd: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'With hostPort: one free port of hostPort-hostPortEnd chosen by the container\'s host (-p 8000-8010:80); the record shows the one chosen. A range of container ports is one entry per port' })),
    containerPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  },
  { additionalProperties: false },
);

/** One argument: scripts are text (tab and newline allowed), NUL never; the kernel's MAX_ARG_STRLEN. */
export const Arg = Type.String({ maxLength: MAX_ARG_LENGTH, 'x-text': 'multiline' });
export const Argv = (description?: string, minItems = 0) =>
  Type.Array(Arg, { maxItems: 4096, ...(minItems ? { minItems } : {}), ...(description ? { description } : {}) });
/** NAME=VALUE entries; values may span lines (certificates), never hold NUL. */
export const EnvList = (opts: { default?: string[] } = {}) =>
  Type.Array(Type.String({ minLength: 1, maxLength: 32 * 1024, 'x-text': 'multiline' }), { maxItems: 1024, ...opts });
/** A DNS name for a container on a network (alias, link alias). */
export const Alias = Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$', 'x-error': "must be a DNS name: letters, digits, '_', '.', '-'" });
export const UserSpec = Type.String({ minLength: 1, maxLength: 513, format: 'user', description: `user[:group] by name or id (ids 0-${MAX_UID})` });
/** A path inside the container: absolute (runc refuses a relative cwd), PATH_MAX at most. */
export const ContainerPath = Type.String({ minLength: 1, maxLength: 4096, pattern: '^/', 'x-error': 'must be an absolute path' });
export const SignalSpec = (opts: { default?: string; description?: string } = {}) =>
  Type.String({ format: 'signal', maxLength: MAX_SIGNAL_LENGTH, ...opts });
export const StopTimeout = (description: string) => Type.Integer({ minimum: 0, maximum: MAX_STOP_TIMEOUT_SEC, description });

/** A container path a mount goes at: absolute, without control characters (the service and the host check the rest). */
const MountTarget = Type.String({ minLength: 1, maxLength: 4096, pattern: '^/[^\\x00-\\x1f]*$', description: 'Absolute path in the container' });

/** One mount of a container (docs/volumes.md): a named volume, a host path (system administrators only), or tmpfs. */
export const MountSpec = Type.Union([
  Type.Object({
    type: Type.Literal('volume'),
    source: Type.Optional(Name({ description: 'Volume name in the project (made with the default size when missing); absent: an anonymous volume (a random name), removed with the container by rm -v and autoRemove' })),
    target: MountTarget,
    readonly: Type.Optional(Type.Boolean()),
    nocopy: Type.Optional(Type.Boolean({ description: 'A volume this create makes starts empty; without it, the image\'s files at the target are copied in first (Docker\'s copy-up; -v vol:/p:nocopy)' })),
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('bind'),
    // declared a host path: the edge refuses it to everyone but system administrators (host-paths.ts)
    source: Type.String({ minLength: 1, maxLength: 4096, pattern: '^/[^\\x00-\\x1f]*$', [HOST_PATH]: true, description: 'Host path (system administrators only; never /, /proc, /sys, /dev, /run, /var/run)' }),
    target: MountTarget,
    readonly: Type.Optional(Type.Boolean()),
  }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('tmpfs'),
    target: MountTarget,
    sizeBytes: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 * 1024 ** 3 })),
    mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
  }, { additionalProperties: false }),
]);

export const VolumeCreate = Type.Object(
  {
    name: Name(),
    sizeBytes: Type.Optional(Type.Integer({ minimum: 16 * 1024 * 1024, maximum: 16 * 1024 ** 4, multipleOf: 1024 * 1024, description: 'Bytes, a whole number of MiB (16 MiB to 16 TiB); default 1 GiB' })),
    driver: Type.Optional(Type.Literal('local')),
    labels: Labels,
    host: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'Host to make it on (system administrators only); default: the scheduler\'s choice' })),
    type: Type.Optional(Type.Union([Type.Literal('filesystem'), Type.Literal('block')], { description: 'filesystem (default): an ext4 image containers mount; block: a qcow2 disk VMs attach (virtio-blk)' })),
    shared: Type.Optional(Type.Boolean({ description: 'Block only: may be attached read-write to several VMs at once (a raw disk: no snapshots or clones); default: one writer at a time' })),
    fromSnapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Block only: a clone of this snapshot of the project (name or id), on its host; the size defaults to the snapshot\'s and may be larger' })),
  },
  { $id: 'VolumeCreate', additionalProperties: false },
);

export const Volume = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    projectId: Type.String(),
    host: Type.String({ description: 'The host that holds it: containers using it run there' }),
    driver: Type.String(),
    sizeBytes: Type.Integer(),
    status: Type.String(),
    labels: Type.Record(Type.String(), Type.String()),
    createdAt: Type.String(),
    mountpoint: Type.Optional(Type.String({ description: 'Where its data is on its host (inspect)' })),
    usedBytes: Type.Optional(Type.Integer({ description: 'Bytes its files take (inspect)' })),
    usedBy: Type.Optional(Type.Array(Type.String(), { description: 'Containers whose mounts name it, or VMs that hold a block volume (inspect)' })),
    type: Type.Optional(Type.Union([Type.Literal('filesystem'), Type.Literal('block')], { description: 'block: a disk for VMs; absent: a filesystem volume (containers)' })),
    shared: Type.Optional(Type.Boolean({ description: 'Attachable read-write to several VMs at once' })),
    sourceSnapshot: Type.Optional(Type.String({ description: 'The snapshot it was cloned from (id)' })),
    attachedTo: Type.Optional(Type.Array(Type.Object({ vm: Type.String(), readonly: Type.Boolean(), boot: Type.Boolean() }), { description: 'Block volumes: the VMs that hold it (inspect)' })),
    snapshots: Type.Optional(Type.Array(Type.String(), { description: 'Block volumes: its snapshots\' names (inspect)' })),
  },
  { $id: 'Volume' },
);

export const VolumeSnapshot = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    projectId: Type.String(),
    volumeId: Type.String(),
    host: Type.String(),
    sizeBytes: Type.Integer({ description: 'Its volume\'s size when taken (what the quota\'s disk is charged)' }),
    status: Type.String(),
    createdAt: Type.String(),
  },
  { $id: 'VolumeSnapshot' },
);

/** Docker's HEALTHCHECK as a create takes it (--health-cmd and friends). */
export const Healthcheck = Type.Object({
  test: Type.Array(Type.String({ maxLength: 4096 }), {
    minItems: 1, maxItems: 256,
    description: '["CMD-SHELL", "command"] (run by /bin/sh -c), ["CMD", "arg0", …], or ["NONE"] (no check)',
  }),
  intervalMs: Type.Optional(Type.Integer({ minimum: 100, maximum: 86_400_000, description: 'Between probes; default 30 s' })),
  timeoutMs: Type.Optional(Type.Integer({ minimum: 100, maximum: 86_400_000, description: 'A probe running longer fails; default 30 s' })),
  retries: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'Failures in a row that make it unhealthy; default 3' })),
  startPeriodMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000, description: 'Failures this soon after a start do not count; default 0' })),
}, { additionalProperties: false, description: 'A command probed in the container while it runs: its health (starting, healthy, unhealthy) is in the container\'s health' });

export const ContainerCreate = Type.Object(
  {
    image: Ref('Image reference, digest or id', 1024),
    name: Type.Optional(Name()),
    cmd: Type.Optional(Argv()),
    entrypoint: Type.Optional(Argv()),
    env: EnvList({ default: [] }),
    workdir: Type.Optional(ContainerPath),
    user: Type.Optional(UserSpec),
    hostname: Type.Optional(Type.String({ maxLength: 63, format: 'hostname' })),
    memoryBytes: Type.Optional(Type.Integer({ minimum: MIN_MEMORY_BYTES, maximum: MAX_MEMORY_BYTES })),
    cpus: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1024 })),
    pidsLimit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PIDS_LIMIT })),
    storageBytes: Type.Optional(Type.Integer({
      minimum: MIN_STORAGE_BYTES, maximum: MAX_STORAGE_BYTES,
      description: 'What the writable layer may hold (rounded up to whole MiB; charged to the disk quota): writes past it fail with "No space left on device". Absent: the daemon\'s default in a project whose disk quota is limited, else unbounded',
    })),
    restart: Type.Optional(RestartPolicy),
    autoRemove: Type.Boolean({ default: false }),
    runtime: Type.Optional(Type.Union([Type.Literal('runc'), Type.Literal('crun'), Type.Literal('vm')], { description: 'runc or crun; vm runs the container in a microVM (secure container)' })),
    labels: Labels,
    stopSignal: Type.Optional(SignalSpec()),
    stopTimeout: Type.Optional(StopTimeout('Seconds between the stop signal and SIGKILL')),
    network: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'bridge (default: the project\'s default network), none, host, container:<id or name>, or a network\'s name or id' })),
    ports: Type.Optional(Type.Array(PortSpec, { maxItems: MAX_PUBLISHED_PORTS })),
    publishAll: Type.Optional(Type.Boolean({ description: '-P: each port the image exposes and ports does not name, published on a free host port' })),
    ip: Type.Optional(Ipv4('Fixed address on the network')),
    dns: Type.Optional(Type.Array(Ipv4(), { maxItems: 3, description: 'Nameservers instead of the network\'s embedded DNS' })),
    extraHosts: Type.Optional(Type.Array(Type.String({ format: 'host-entry', maxLength: 270 }), { maxItems: 256, description: 'NAME:IPV4 lines for /etc/hosts' })),
    links: Type.Optional(Type.Array(Type.Object({ container: Ref('Container name or id'), alias: Alias }), { maxItems: 64, description: 'Docker links: environment and a hosts entry for each running container named' })),
    aliases: Type.Optional(Type.Array(Alias, { maxItems: 64, description: 'More names the network\'s DNS answers with this container\'s address' })),
    log: Type.Optional(Type.Object({
      maxSizeBytes: Type.Optional(Type.Integer({ minimum: LOG_LIMIT_RANGE.maxSizeBytes.min, maximum: LOG_LIMIT_RANGE.maxSizeBytes.max, description: 'Rotate the log before a file passes this size (--log-opt max-size); default 10 MiB' })),
      maxFiles: Type.Optional(Type.Integer({ minimum: LOG_LIMIT_RANGE.maxFiles.min, maximum: LOG_LIMIT_RANGE.maxFiles.max, description: 'Log files kept, the current one included (--log-opt max-file); default 3' })),
    }, { additionalProperties: false, description: 'Log rotation, Docker\'s max-size / max-file' })),
    mounts: Type.Optional(Type.Array(MountSpec, { maxItems: 64, description: 'Volumes, host paths and tmpfs (-v, --mount, --tmpfs)' })),
    healthcheck: Type.Optional(Healthcheck),
    tty: Type.Optional(Type.Boolean({ description: 'The main process on a terminal (docker run -t): attach carries its raw bytes' })),
    openStdin: Type.Optional(Type.Boolean({ description: 'Its stdin open to attach (docker run -i)' })),
    stdinOnce: Type.Optional(Type.Boolean({ description: 'With openStdin: stdin ends when the first attached client leaves' })),
    start: Type.Boolean({
      default: false,
      description: 'Start it too, in this request (nimbus run -d). A failed start leaves the container created (removed if autoRemove); the error names it in details.container',
    }),
  },
  { $id: 'ContainerCreate', additionalProperties: false },
);

export const NetworkCreate = Type.Object(
  {
    name: Name({ maxLength: 64 }),
    driver: Type.Union([Type.Literal('bridge'), Type.Literal('route')], { default: 'bridge', description: 'bridge: a Linux bridge with NAT out; route: no bridge, no NAT, a host route per container (Xen route mode)' }),
    subnet: Type.Optional(Type.String({ format: 'ipv4-cidr', maxLength: 18, description: 'IPv4 CIDR; default: a free /24 of the subnet pool' })),
    gateway: Type.Optional(Ipv4('Default: the first address of the subnet')),
    internal: Type.Boolean({ default: false, description: 'No route out of the network' }),
    labels: Labels,
  },
  { $id: 'NetworkCreate', additionalProperties: false },
);

export const Network = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    projectId: Type.String(),
    driver: Type.String(),
    subnet: Type.String(),
    gateway: Type.String(),
    internal: Type.Boolean(),
    device: Type.String({ description: 'Host interface (the bridge)' }),
    builtin: Type.Boolean({ description: 'The project\'s default network, made on first use' }),
    labels: Type.Record(Type.String(), Type.String()),
    createdAt: Type.String(),
    containers: Type.Optional(Type.Array(Type.Object({ id: Type.String(), name: Type.String(), address: Type.String(), ifName: Type.String() }))),
  },
  { $id: 'Network' },
);

export const Container = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    projectId: Type.String(),
    imageDigest: Type.String(),
    config: Type.Unsafe<ContainerConfig>(Type.Object({}, { additionalProperties: true, description: 'The create request as stored' })),
    status: Type.String(),
    runtime: Type.String(),
    pid: Type.Union([Type.Integer(), Type.Null()]),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    oomKilled: Type.Boolean(),
    restartCount: Type.Integer(),
    stoppedByUser: Type.Boolean(),
    createdAt: Type.String(),
    startedAt: Type.Union([Type.String(), Type.Null()]),
    finishedAt: Type.Union([Type.String(), Type.Null()]),
    warnings: Type.Array(Type.String()),
    health: Type.Optional(Type.Union([Type.Null(), Type.Object({
      status: Type.String({ description: 'starting, healthy or unhealthy' }),
      failingStreak: Type.Integer(),
      log: Type.Array(Type.Object({ start: Type.String(), end: Type.String(), exitCode: Type.Integer(), output: Type.String() })),
    })], { description: 'While it has a healthcheck; the last run\'s when stopped' })),
    network: Type.Optional(Type.Object({
      mode: Type.String(),
      endpoints: Type.Array(Type.Object({ network: Type.String(), networkId: Type.String(), address: Type.String(), gateway: Type.String(), prefix: Type.Integer(), mac: Type.String(), ifName: Type.String() })),
      ports: Type.Array(PortSpec),
    }, { description: 'Network settings (inspect only)' })),
    sizeRw: Type.Optional(Type.Integer({ description: "Bytes its writable layer holds on its host, as du counts them (listings with size=true; absent: its host did not answer)" })),
  },
  { $id: 'Container' },
);

export const LogLine = Type.Object({
  time: Type.String(),
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
  line: Type.String(),
  partial: Type.Optional(Type.Boolean()),
});

export const ExecFrame = Type.Object({
  stream: Type.Optional(Type.Union([Type.Literal('stdout'), Type.Literal('stderr')])),
  data: Type.Optional(Type.String({ description: 'base64' })),
  exitCode: Type.Optional(Type.Integer()),
});

/** A terminal's size in character cells (the kernel's winsize fields are 16-bit). */
export const TerminalCells = (description: string, dflt?: number) => Type.Integer({ minimum: 1, maximum: MAX_TERMINAL_CELLS, description, ...(dflt !== undefined ? { default: dflt } : {}) });
export const TerminalSize = Type.Object({
  rows: TerminalCells('Lines'),
  cols: TerminalCells('Columns'),
}, { additionalProperties: false, description: 'Run the command on a terminal of this size: its output (stdout and stderr alike) comes as stdout frames' });

export const Stats = Type.Object({
  id: Type.String(),
  name: Type.String(),
  cpuUsageNs: Type.Number(),
  memoryBytes: Type.Number(),
  memoryLimitBytes: Type.Optional(Type.Number()),
  pids: Type.Integer(),
  pidsLimit: Type.Optional(Type.Number()),
  network: Type.Optional(Type.Object({
    rxBytes: Type.Number(),
    txBytes: Type.Number(),
    rxPackets: Type.Number(),
    txPackets: Type.Number(),
    endpoints: Type.Array(Type.Object({
      hostIf: Type.String(),
      ifindex: Type.Integer(),
      rxBytes: Type.Number(),
      txBytes: Type.Number(),
      rxPackets: Type.Number(),
      txPackets: Type.Number(),
    })),
  }, { description: "The instance's endpoints' counters, its point of view (rx: what it received), each from the endpoint's creation; absent without an endpoint of its own" })),
  time: Type.String(),
});

export const Event = Type.Object({
  seq: Type.Integer(),
  time: Type.String(),
  type: Type.String(),
  action: Type.String(),
  id: Type.String(),
  projectId: Type.Optional(Type.String()),
  attributes: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});

export const Empty = Type.Null({ description: 'No content (204)' });

export const Any = (description: string): TSchema => Type.Unknown({ description });
