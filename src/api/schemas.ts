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
  },
  { $id: 'ContainerCreate', additionalProperties: false },
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
