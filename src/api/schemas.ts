/** Shared TypeBox schemas: they validate requests and generate /openapi.json. */
import { Type, type TSchema } from '@sinclair/typebox';
import type { ContainerConfig, ImageConfigDoc } from '../store/records.js';

export const ErrorBody = Type.Object(
  { error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }) },
  { $id: 'Error' },
);

export const IdParam = Type.Object({ id: Type.String({ minLength: 1, description: 'Full id, unique id prefix, or name' }) });

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

export const RestartPolicy = Type.Object({
  name: Type.Union([Type.Literal('no'), Type.Literal('on-failure'), Type.Literal('always'), Type.Literal('unless-stopped')], { default: 'no' }),
  maxRetries: Type.Optional(Type.Integer({ minimum: 0 })),
});

const IPV4 = '^(\\d{1,3}\\.){3}\\d{1,3}$';

export const PortSpec = Type.Object(
  {
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' }),
    hostIp: Type.Optional(Type.String({ pattern: IPV4, description: 'Default: every host address, loopback included' })),
    hostPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    containerPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  },
  { additionalProperties: false },
);

export const ContainerCreate = Type.Object(
  {
    image: Type.String({ minLength: 1, description: 'Image reference, digest or id' }),
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    cmd: Type.Optional(Type.Array(Type.String())),
    entrypoint: Type.Optional(Type.Array(Type.String())),
    env: Type.Array(Type.String(), { default: [] }),
    workdir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    hostname: Type.Optional(Type.String({ maxLength: 63 })),
    memoryBytes: Type.Optional(Type.Integer({ minimum: 1 })),
    cpus: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1024 })),
    pidsLimit: Type.Optional(Type.Integer({ minimum: 1 })),
    restart: Type.Optional(RestartPolicy),
    autoRemove: Type.Boolean({ default: false }),
    runtime: Type.Optional(Type.Union([Type.Literal('runc'), Type.Literal('crun'), Type.Literal('vm')], { description: 'runc or crun; vm runs the container in a microVM (secure container)' })),
    labels: Type.Record(Type.String(), Type.String(), { default: {} }),
    stopSignal: Type.Optional(Type.String()),
    stopTimeout: Type.Optional(Type.Integer({ minimum: 0 })),
    network: Type.Optional(Type.String({ minLength: 1, description: 'bridge (default: the project\'s default network), none, host, container:<id or name>, or a network\'s name or id' })),
    ports: Type.Optional(Type.Array(PortSpec, { maxItems: 256 })),
    ip: Type.Optional(Type.String({ pattern: IPV4, description: 'Fixed address on the network' })),
    dns: Type.Optional(Type.Array(Type.String({ pattern: IPV4 }), { maxItems: 3, description: 'Nameservers instead of the network\'s embedded DNS' })),
    extraHosts: Type.Optional(Type.Array(Type.String({ pattern: '^[^:\\s][^:]*:[0-9a-fA-F.:]+$' }), { description: 'NAME:IP lines for /etc/hosts' })),
    links: Type.Optional(Type.Array(Type.Object({ container: Type.String({ minLength: 1 }), alias: Type.String({ minLength: 1, pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$' }) }), { description: 'Docker links: environment and a hosts entry for each running container named' })),
    aliases: Type.Optional(Type.Array(Type.String({ minLength: 1, pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$' }), { description: 'More names the network\'s DNS answers with this container\'s address' })),
    start: Type.Boolean({
      default: false,
      description: 'Start it too, in this request (nimbus run -d). A failed start leaves the container created (removed if autoRemove); the error names it in details.container',
    }),
  },
  { $id: 'ContainerCreate', additionalProperties: false },
);

export const NetworkCreate = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 64 }),
    driver: Type.Union([Type.Literal('bridge'), Type.Literal('route')], { default: 'bridge', description: 'bridge: a Linux bridge with NAT out; route: no bridge, no NAT, a host route per container (Xen route mode)' }),
    subnet: Type.Optional(Type.String({ pattern: '^\\d+\\.\\d+\\.\\d+\\.\\d+/\\d+$', description: 'IPv4 CIDR; default: a free /24 of the subnet pool' })),
    gateway: Type.Optional(Type.String({ pattern: IPV4, description: 'Default: the first address of the subnet' })),
    internal: Type.Boolean({ default: false, description: 'No route out of the network' }),
    labels: Type.Record(Type.String(), Type.String(), { default: {} }),
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
    network: Type.Optional(Type.Object({
      mode: Type.String(),
      endpoints: Type.Array(Type.Object({ network: Type.String(), networkId: Type.String(), address: Type.String(), gateway: Type.String(), prefix: Type.Integer(), mac: Type.String(), ifName: Type.String() })),
      ports: Type.Array(PortSpec),
    }, { description: 'Network settings (inspect only)' })),
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

export const Stats = Type.Object({
  id: Type.String(),
  name: Type.String(),
  cpuUsageNs: Type.Number(),
  memoryBytes: Type.Number(),
  memoryLimitBytes: Type.Optional(Type.Number()),
  pids: Type.Integer(),
  pidsLimit: Type.Optional(Type.Number()),
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
