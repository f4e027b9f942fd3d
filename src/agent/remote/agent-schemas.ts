/**
 * The agent protocol's argument schemas: one list of named arguments per unary method,
 * checked by the agent server before anything reaches the agent (a malformed call is a 400
 * naming the argument). Objects are open (fields not listed pass through unchecked): a field
 * added to a request type must not break calls before its schema learns it; the compile-time
 * checks at the bottom keep every listed field's type in step with the Agent interface.
 *
 * Answers are NOT checked: they come from the agent the control plane chose to trust.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { InvalidArgument } from '../../core/errors.js';
import { STREAM_TOKEN_PATTERN, type Agent } from '../agent.js';
import { UNARY_METHODS, type ExecInputFrame, type STREAM_METHODS, type UnaryMethod } from './agent-protocol.js';
import { MAX_TERMINAL_CELLS, type AttachRequest, type ExecRequest } from '../drivers/instance-driver.js';
import { MAX_LAYER_SIZE_BYTES, MIN_LAYER_SIZE_BYTES } from '../snapshots/snapshotter.js';

export interface ArgSpec<S extends TSchema = TSchema> {
  name: string;
  schema: S;
  /** May be absent (undefined on the caller's side, dropped or null on the wire). */
  optional?: true;
}

const arg = <S extends TSchema>(name: string, schema: S) => ({ name, schema }) as const;
const opt = <S extends TSchema>(name: string, schema: S) => ({ name, schema, optional: true }) as const;

const Id = Type.String({ minLength: 1 });
/** A container's name or DNS alias as the control plane checked it (names.ts); bounded here too. */
const InstanceName = Type.String({ minLength: 1, maxLength: 255 });
const Str = Type.String();
const Strings = Type.Array(Type.String());
const Int = Type.Integer();
const Num = Type.Number();
const Bool = Type.Boolean();
/** A path in a container (docker cp, protocol 8): resolved inside its rootfs by the agent, never on the host. */
const ContainerFilePath = Type.String({ minLength: 1, maxLength: 4096 });
const Obj = <P extends Record<string, TSchema>>(props: P) => Type.Object(props, { additionalProperties: true });

/** docker commit's request (protocol 9): the image config is the control plane's, checked as an object of the fields it sets. */
const RuntimeConfig = Obj({
  User: Type.Optional(Str),
  Env: Type.Optional(Strings),
  Entrypoint: Type.Optional(Type.Union([Strings, Type.Null()])),
  Cmd: Type.Optional(Type.Union([Strings, Type.Null()])),
  WorkingDir: Type.Optional(Str),
  Labels: Type.Optional(Type.Union([Type.Record(Type.String(), Type.String()), Type.Null()])),
  StopSignal: Type.Optional(Str),
  ExposedPorts: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  Volumes: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])),
});
const CommitRequest = Obj({
  parentManifest: Type.String({ pattern: '^sha256:[0-9a-f]{64}$', default: `sha256:${'0'.repeat(64)}` }),
  config: RuntimeConfig,
  author: Type.Optional(Type.String({ maxLength: 4096 })),
  comment: Type.Optional(Type.String({ maxLength: 65536 })),
  createdBy: Type.Optional(Type.String({ maxLength: 65536 })),
  pause: Bool,
});

const NetworkSpec = Obj({
  id: Id,
  name: Str,
  driver: Type.Union([Type.Literal('bridge'), Type.Literal('route')]),
  subnet: Str,
  gateway: Str,
  internal: Bool,
  device: Str,
  mtu: Type.Optional(Type.Integer({ minimum: 576, maximum: 65535 })),
});
const PortMapping = Obj({
  protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
  hostIp: Type.Optional(Str),
  hostPort: Int,
  hostPortEnd: Type.Optional(Int), // protocol 9
  containerPort: Int,
});
const Attachment = Obj({ network: NetworkSpec, address: Str, dnsNames: Strings });
const ContainerNetworkRequest = Type.Union([
  Obj({ mode: Type.Literal('none') }),
  Obj({ mode: Type.Literal('host') }),
  Obj({ mode: Type.Literal('container'), container: Str }),
  Obj({
    mode: Type.Literal('networks'),
    endpoints: Type.Array(Attachment),
    ports: Type.Array(PortMapping),
    extraHosts: Strings,
    dns: Strings,
  }),
]);
const ContainerMount = Type.Union([
  Obj({ type: Type.Literal('volume'), volumeId: Id, target: Str, readonly: Type.Optional(Bool), copyUp: Type.Optional(Bool) /* protocol 9 */ }),
  Obj({ type: Type.Literal('bind'), source: Str, target: Str, readonly: Type.Optional(Bool) }),
  Obj({ type: Type.Literal('tmpfs'), target: Str, sizeBytes: Type.Optional(Num), mode: Type.Optional(Num) }),
]);
const ProcessSpec = Obj({
  args: Strings, env: Strings, cwd: Str, user: Str, terminal: Type.Optional(Bool),
  /** Protocol 8. */
  stdin: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('once')])),
});
const ResourceLimits = Obj({ memoryBytes: Type.Optional(Num), cpus: Type.Optional(Num), pidsLimit: Type.Optional(Num) });
/** A writable layer's size (protocol 12): whole MiB, as the snapshotter takes it. */
const LayerSize = Type.Integer({ minimum: MIN_LAYER_SIZE_BYTES, maximum: MAX_LAYER_SIZE_BYTES, multipleOf: 1024 * 1024 });
const ContainerCreateRequest = Obj({
  id: Id,
  name: Str,
  network: Type.Optional(ContainerNetworkRequest),
  imageChainId: Str,
  process: ProcessSpec,
  resources: ResourceLimits,
  hostname: Type.Optional(Str),
  runtime: Type.Optional(Str),
  labels: Type.Optional(Type.Record(Type.String(), Type.String())),
  log: Type.Optional(Obj({ maxSizeBytes: Type.Optional(Num), maxFiles: Type.Optional(Num) })),
  mounts: Type.Optional(Type.Array(ContainerMount, { maxItems: 256 })),
  storageBytes: Type.Optional(LayerSize),
});
const VmCreateRequest = Obj({
  id: Id,
  name: Str,
  cpus: Int,
  maxCpus: Type.Optional(Int),
  memoryMiB: Int,
  kernel: Type.Optional(Str),
  initrd: Type.Optional(Str),
  append: Type.Optional(Str),
  disk: Type.Optional(Str),
  pin: Type.Optional(Type.Array(Int)),
  nics: Type.Optional(Type.Array(Attachment)),
  volumes: Type.Optional(Type.Array(Type.Object({ volumeId: Id, readonly: Type.Optional(Bool), boot: Type.Optional(Bool) }, { additionalProperties: false }), { maxItems: 16 })),
});
/** A migration's own certificate, minted by the control plane (protocol 11): PEM texts, the key never logged. */
const MigrationCredentials = Obj({ name: Str, ca: Str, cert: Str, key: Str });
/** A live migration's one-time stream token (protocol 14): 32 bytes as hex, never logged. */
const StreamToken = Type.String({ pattern: STREAM_TOKEN_PATTERN });
const VmMigrationSpec = Obj({
  id: Id,
  name: Str,
  createdAt: Str,
  config: Type.Record(Type.String(), Type.Unknown()),
  pin: Type.Optional(Type.Array(Int)),
  storage: Type.Optional(Obj({ virtualSize: Int, backing: Type.Optional(Str), backingFormat: Type.Optional(Type.Union([Type.Literal('raw'), Type.Literal('qcow2')])) })),
  nics: Type.Optional(Type.Array(Attachment)),
  tls: Type.Optional(Str),
  takesMintedCredentials: Type.Optional(Bool),
  credentials: Type.Optional(MigrationCredentials),
  streamToken: Type.Optional(StreamToken),
});

const VmImageKind = Type.Union([Type.Literal('disk'), Type.Literal('kernel'), Type.Literal('initrd')]);

/** Every unary method's arguments, in order. */
export const ARG_SCHEMAS = {
  info: [],
  importImages: [arg('archivePath', Str)],
  garbageCollect: [arg('keep', Obj({ manifestDigests: Strings, indexDigests: Strings, chainIds: Strings, blobs: Type.Optional(Strings) }))],
  importDiskImage: [arg('file', Str), opt('kind', VmImageKind)],
  createContainer: [arg('req', ContainerCreateRequest)],
  startContainer: [arg('id', Id)],
  stopContainer: [arg('id', Id), arg('timeoutSec', Num), opt('signal', Str)],
  killContainer: [arg('id', Id), arg('signal', Str)],
  pauseContainer: [arg('id', Id)],
  unpauseContainer: [arg('id', Id)],
  containerState: [arg('id', Id)],
  containerStats: [arg('id', Id)],
  containerTop: [arg('id', Id)],
  containerPathStat: [arg('id', Id), arg('path', ContainerFilePath)],
  resizeContainer: [arg('id', Id), arg('rows', Type.Integer({ minimum: 1, maximum: MAX_TERMINAL_CELLS })), arg('cols', Type.Integer({ minimum: 1, maximum: MAX_TERMINAL_CELLS }))],
  removeContainer: [arg('id', Id)],
  listContainers: [],
  containerLayerUsage: [arg('ids', Type.Array(Id, { maxItems: 100_000 }))],
  ensureNetwork: [arg('spec', NetworkSpec)],
  removeNetwork: [arg('id', Id)],
  foreignSubnets: [],
  connectContainer: [arg('id', Id), arg('endpoint', Attachment)],
  disconnectContainer: [arg('id', Id), arg('networkId', Id)],
  renameContainer: [arg('id', Id), arg('from', InstanceName), arg('to', InstanceName)],
  reconcileNetworks: [arg('liveContainers', Strings), arg('liveNetworks', Strings)],
  setOverlayPeers: [arg('networkId', Id), arg('vni', Type.Integer({ minimum: 1, maximum: 0xffffff })), arg('localUnderlayIp', Str), arg('peers', Type.Array(Obj({ ip: Str, mac: Str, underlayIp: Str, names: Type.Optional(Strings) }), { maxItems: 65536 }))],
  underlayAddress: [opt('toward', Str)],
  setRoutedPeers: [arg('networkId', Id), arg('peers', Type.Array(Obj({ ip: Str, underlayIp: Str, names: Type.Optional(Strings) }), { maxItems: 65536 }))],
  createVm: [arg('req', VmCreateRequest)],
  createVmFromTemplate: [arg('templateId', Id), arg('id', Id), arg('name', Str)],
  startVm: [arg('id', Id)],
  stopVm: [arg('id', Id), arg('timeoutSec', Num)],
  killVm: [arg('id', Id), arg('signal', Str)],
  pauseVm: [arg('id', Id)],
  unpauseVm: [arg('id', Id)],
  resizeVm: [arg('id', Id), arg('want', Obj({ cpus: Type.Optional(Int), memoryMiB: Type.Optional(Int) }))],
  saveVm: [arg('id', Id)],
  restoreVm: [arg('id', Id)],
  vmState: [arg('id', Id)],
  inspectVm: [arg('id', Id)],
  vmStats: [arg('id', Id)],
  removeVm: [arg('id', Id)],
  listVms: [],
  vmMigrationSpec: [arg('id', Id)],
  prepareVmIncoming: [arg('spec', VmMigrationSpec)],
  migrateVmOut: [arg('id', Id), arg('uri', Str), arg('opts', Obj({ maxDowntimeMs: Num, maxBandwidthBytes: Type.Optional(Num), nbd: Type.Optional(Str), nbdVolumes: Type.Optional(Type.Record(Str, Str, { maxProperties: 16 })), tls: Type.Optional(Str), credentials: Type.Optional(MigrationCredentials), streamToken: Type.Optional(StreamToken) }))],
  finishVmIncoming: [arg('id', Id), arg('consoleHistory', Str)],
  abandonVmIncoming: [arg('id', Id)],
  endVmMigration: [arg('id', Id), arg('outcome', Type.Union([Type.Literal('moved'), Type.Literal('resume')]))],
  reconcileVms: [],
  missingBlobs: [arg('digests', Type.Array(Str, { maxItems: 4096 }))],
  adoptImage: [arg('manifestDigest', Str)],
  adoptDiskImage: [arg('digest', Str), arg('kind', VmImageKind)],
  createVolume: [arg('id', Id), arg('sizeBytes', Type.Integer({ minimum: 1 }))],
  removeVolume: [arg('id', Id)],
  volumeUsage: [arg('id', Id)],
  reconcileVolumes: [arg('live', Type.Array(Str, { maxItems: 1_000_000 }))],
  containerRequest: [arg('id', Id)],
  // protocol 9: live container moves
  checkpointContainer: [arg('id', Id)],
  restoreContainer: [arg('req', ContainerCreateRequest)],
  createBlockVolume: [arg('id', Id), arg('sizeBytes', Type.Integer({ minimum: 1 })), arg('opts', Type.Object({ fromSnapshot: Type.Optional(Id), shared: Type.Optional(Bool) }, { additionalProperties: false }))],
  removeBlockVolume: [arg('id', Id)],
  blockVolumeInfo: [arg('id', Id)],
  snapshotBlockVolume: [arg('volumeId', Id), arg('snapshotId', Id)],
  removeBlockSnapshot: [arg('snapshotId', Id)],
  reconcileBlockVolumes: [arg('volumes', Type.Array(Str, { maxItems: 1_000_000 })), arg('snapshots', Type.Array(Str, { maxItems: 1_000_000 }))],
  attachVmVolume: [arg('vmId', Id), arg('volume', Type.Object({ volumeId: Id, readonly: Type.Optional(Bool), boot: Type.Optional(Bool) }, { additionalProperties: false }))],
  detachVmVolume: [arg('vmId', Id), arg('volumeId', Id)],
  // protocol 9, docker commit
  commitContainer: [arg('id', Id), arg('req', CommitRequest)],
} as const satisfies Record<UnaryMethod, readonly ArgSpec[]>;

// ---- the table against the Agent interface, at compile time ---------------------------------

type StaticArg<A> = A extends { schema: infer S extends TSchema; optional: true } ? Static<S> | undefined : A extends { schema: infer S extends TSchema } ? Static<S> : never;
type StaticArgs<L extends readonly unknown[]> = { -readonly [K in keyof L]: StaticArg<L[K]> };
type Table = typeof ARG_SCHEMAS;
/** What the schemas accept must be what the method takes (an argument of a wrong type, count or optionality fails here). */
type Accepted = { [M in UnaryMethod]: StaticArgs<Table[M]> extends Parameters<Agent[M]> ? M : never }[UnaryMethod];
/** ...and everything the method takes must pass the schemas (a schema narrower than the type fails here). */
type Covered = { [M in UnaryMethod]: Required<Parameters<Agent[M]>> extends { [K in keyof StaticArgs<Table[M]>]: Exclude<StaticArgs<Table[M]>[K], undefined> } ? M : never }[UnaryMethod];
const schemasAcceptOnlyTheArguments: Record<Exclude<UnaryMethod, Accepted>, never> = {};
const schemasCoverTheArguments: Record<Exclude<UnaryMethod, Covered>, never> = {};
void schemasAcceptOnlyTheArguments;
void schemasCoverTheArguments;

// ---- the check at run time --------------------------------------------------------------------

const compiled = new Map<UnaryMethod, Array<{ spec: ArgSpec; check: TypeCheck<TSchema> }>>(
  UNARY_METHODS.map((m) => [m, (ARG_SCHEMAS[m] as readonly ArgSpec[]).map((spec) => ({ spec, check: TypeCompiler.Compile(spec.schema) }))]),
);

/**
 * The decoded arguments of a call (absent ones undefined) against its method's schema:
 * InvalidArgument naming the first argument (and field) that is wrong.
 */
export function checkArgs(method: UnaryMethod, args: readonly unknown[]): void {
  checkList(method, compiled.get(method) ?? [], args);
}

function checkList(method: string, specs: Array<{ spec: ArgSpec; check: TypeCheck<TSchema> }>, args: readonly unknown[]): void {
  if (args.length > specs.length) throw new InvalidArgument(`${method} takes ${specs.length} argument(s), got ${args.length}`, { method });
  specs.forEach(({ spec, check }, i) => {
    const value = args[i];
    if (value === undefined) {
      if (spec.optional) return;
      throw new InvalidArgument(`${method}: argument ${i + 1} ("${spec.name}") is missing`, { method, argument: spec.name });
    }
    if (check.Check(value)) return;
    const first = check.Errors(value).First();
    const where = first?.path ? `${spec.name}${first.path.replace(/\//g, '.')}` : spec.name;
    throw new InvalidArgument(`${method}: argument ${i + 1} ("${spec.name}") is invalid at "${where}": ${first?.message ?? 'does not match its schema'}`, {
      method,
      argument: spec.name,
      field: where,
    });
  });
}

// ---- streamed methods whose scalar arguments travel in the path and headers (protocol 6) ------

/** docker cp's options (protocol 8). */
const CopyOptions = Obj({ noOverwriteDirNonDir: Type.Optional(Bool), copyUIDGID: Type.Optional(Bool) });

/** An instance or volume id as it appears in a path on the agent (never a path of its own). */
const MoveId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' });
const ChainId = Type.String({ pattern: '^sha256:[0-9a-f]{64}$' });

type StreamMethod = (typeof STREAM_METHODS)[number];
/** The arguments other than the byte stream, in order. */
export const STREAM_ARG_SCHEMAS = {
  exportContainerLayer: [arg('id', MoveId)],
  importContainerLayer: [arg('id', MoveId), arg('imageChainId', ChainId), opt('opts', Obj({ storageBytes: Type.Optional(LayerSize) }))],
  exportVolume: [arg('id', MoveId)],
  importVolume: [arg('id', MoveId)],
  exportContainerLogs: [arg('id', MoveId)],
  importContainerLogs: [arg('id', MoveId)],
  // protocol 9: live container moves
  exportCheckpoint: [arg('id', MoveId)],
  importCheckpoint: [arg('id', MoveId)],
  readContainerArchive: [arg('id', MoveId), arg('path', ContainerFilePath)],
  writeContainerArchive: [arg('id', MoveId), arg('path', ContainerFilePath), arg('opts', CopyOptions)],
} as const satisfies Partial<Record<StreamMethod, readonly ArgSpec[]>>;
export type CheckedStreamMethod = keyof typeof STREAM_ARG_SCHEMAS;
/** A streamed method's arguments but its byte stream (an import's, before its options if it has any). */
type ScalarArgs<P extends unknown[]> = P extends [infer H, ...infer R] ? (H extends AsyncIterable<Uint8Array> ? ScalarArgs<R> : [H, ...ScalarArgs<R>]) : P;
type StreamMatches = { [M in CheckedStreamMethod]: StaticArgs<(typeof STREAM_ARG_SCHEMAS)[M]> extends ScalarArgs<Parameters<Agent[M]>> ? (Required<ScalarArgs<Parameters<Agent[M]>>> extends { [K in keyof StaticArgs<(typeof STREAM_ARG_SCHEMAS)[M]>]: Exclude<StaticArgs<(typeof STREAM_ARG_SCHEMAS)[M]>[K], undefined> } ? M : never) : never }[CheckedStreamMethod];
const streamSchemasMatchTheMethods: Record<Exclude<CheckedStreamMethod, StreamMatches>, never> = {};
void streamSchemasMatchTheMethods;

const compiledStreams = new Map<string, Array<{ spec: ArgSpec; check: TypeCheck<TSchema> }>>(
  Object.entries(STREAM_ARG_SCHEMAS).map(([m, specs]) => [m, (specs as readonly ArgSpec[]).map((spec) => ({ spec, check: TypeCompiler.Compile(spec.schema) }))]),
);

/** A streamed call's scalar arguments against its schema (InvalidArgument naming the first one wrong). */
export function checkStreamArgs(method: CheckedStreamMethod, args: readonly unknown[]): void {
  checkList(method, compiledStreams.get(method) ?? [], args);
}

// ---- a build's request (BUILD_HEADER; the body is the context) ---------------------------------

const BuildId = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' });
const StringMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 64 * 1024 }));
export const BuildRequestSchema = Type.Object({
  id: BuildId,
  projectId: BuildId,
  dockerfile: Type.String({ minLength: 1, maxLength: 4096 }),
  buildArgs: StringMap,
  target: Type.Optional(Type.String({ maxLength: 256 })),
  labels: Type.Optional(StringMap),
  network: Type.Union([Type.Literal('none'), Type.Literal('host')]),
  baseImages: Type.Array(Type.Object({ name: Type.String({ minLength: 1, maxLength: 1024 }), manifestDigest: Type.String({ pattern: '^sha256:[0-9a-f]{64}$' }) }), { maxItems: 64 }),
  resources: Type.Object({ cpus: Type.Number({ exclusiveMinimum: 0, maximum: 1024 }), memoryBytes: Type.Integer({ minimum: 16 * 1024 * 1024 }) }),
  noCache: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
const buildRequestCheck = TypeCompiler.Compile(BuildRequestSchema);
// the schema and the interface say the same
type BuildRequestStatic = Static<typeof BuildRequestSchema>;
const buildSchemaMatches: [BuildRequestStatic] extends [import('../agent.js').BuildRequest] ? ([import('../agent.js').BuildRequest] extends [BuildRequestStatic] ? true : never) : never = true;
void buildSchemaMatches;

/** A build request off the wire, checked: InvalidArgument naming the first wrong field. */
export function checkBuildRequest(v: unknown): import('../agent.js').BuildRequest {
  if (buildRequestCheck.Check(v)) return v;
  const first = buildRequestCheck.Errors(v).First();
  throw new InvalidArgument(`build request is invalid at "${first?.path ?? ''}": ${first?.message ?? 'does not match its schema'}`, { field: first?.path });
}

// ---- an exec's request (EXEC_HEADER) and, with a TTY, its input frames (the request body) -----

const TerminalCells = Type.Integer({ minimum: 1, maximum: MAX_TERMINAL_CELLS });
const TerminalSizeSchema = Type.Object({ rows: TerminalCells, cols: TerminalCells }, { additionalProperties: false });
export const ExecRequestSchema = Obj({
  args: Type.Array(Str, { minItems: 1 }),
  env: Type.Optional(Strings),
  cwd: Type.Optional(Str),
  user: Type.Optional(Str),
  /** Protocol 6. */
  tty: Type.Optional(TerminalSizeSchema),
});
export const ExecInputFrameSchema = Type.Union([
  Type.Object({ i: Type.String() }, { additionalProperties: false }),
  Type.Object({ resize: TerminalSizeSchema }, { additionalProperties: false }),
]);
const execRequestCheck = TypeCompiler.Compile(ExecRequestSchema);
const execInputCheck = TypeCompiler.Compile(ExecInputFrameSchema);
const execSchemaMatches: [Static<typeof ExecRequestSchema>] extends [ExecRequest] ? ([Required<ExecRequest>] extends [Static<typeof ExecRequestSchema>] ? true : never) : never = true;
void execSchemaMatches;

// ---- an attach's request (ATTACH_HEADER); its body is the main process's stdin --------------------
export const AttachRequestSchema = Obj({ stdin: Bool });
const attachRequestCheck = TypeCompiler.Compile(AttachRequestSchema);
const attachSchemaMatches: [Static<typeof AttachRequestSchema>] extends [AttachRequest] ? ([Required<AttachRequest>] extends [Static<typeof AttachRequestSchema>] ? true : never) : never = true;
void attachSchemaMatches;

function checked<T>(check: TypeCheck<TSchema>, what: string, v: unknown): T {
  if (check.Check(v)) return v as T;
  const first = check.Errors(v).First();
  throw new InvalidArgument(`${what} is invalid at "${first?.path ?? ''}": ${first?.message ?? 'does not match its schema'}`, { field: first?.path });
}

/** An exec request off the wire, checked: InvalidArgument naming the first wrong field. */
export const checkExecRequest = (v: unknown): ExecRequest => checked(execRequestCheck, 'exec request', v);
/** An attach request off the wire, checked. */
export const checkAttachRequest = (v: unknown): AttachRequest => checked(attachRequestCheck, 'attach request', v);
/** One input frame of a TTY exec, checked. */
export const checkExecInputFrame = (v: unknown): ExecInputFrame => checked(execInputCheck, 'exec input frame', v);
