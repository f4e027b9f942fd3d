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
import type { Agent } from '../agent.js';
import { UNARY_METHODS, type UnaryMethod } from './agent-protocol.js';

export interface ArgSpec<S extends TSchema = TSchema> {
  name: string;
  schema: S;
  /** May be absent (undefined on the caller's side, dropped or null on the wire). */
  optional?: true;
}

const arg = <S extends TSchema>(name: string, schema: S) => ({ name, schema }) as const;
const opt = <S extends TSchema>(name: string, schema: S) => ({ name, schema, optional: true }) as const;

const Id = Type.String({ minLength: 1 });
const Str = Type.String();
const Strings = Type.Array(Type.String());
const Int = Type.Integer();
const Num = Type.Number();
const Bool = Type.Boolean();
const Obj = <P extends Record<string, TSchema>>(props: P) => Type.Object(props, { additionalProperties: true });

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
  Obj({ type: Type.Literal('volume'), volumeId: Id, target: Str, readonly: Type.Optional(Bool) }),
  Obj({ type: Type.Literal('bind'), source: Str, target: Str, readonly: Type.Optional(Bool) }),
  Obj({ type: Type.Literal('tmpfs'), target: Str, sizeBytes: Type.Optional(Num), mode: Type.Optional(Num) }),
]);
const ProcessSpec = Obj({ args: Strings, env: Strings, cwd: Str, user: Str, terminal: Type.Optional(Bool) });
const ResourceLimits = Obj({ memoryBytes: Type.Optional(Num), cpus: Type.Optional(Num), pidsLimit: Type.Optional(Num) });
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
});
const VmMigrationSpec = Obj({
  id: Id,
  name: Str,
  createdAt: Str,
  config: Type.Record(Type.String(), Type.Unknown()),
  pin: Type.Optional(Type.Array(Int)),
  storage: Type.Optional(Obj({ virtualSize: Int, backing: Type.Optional(Str), backingFormat: Type.Optional(Type.Union([Type.Literal('raw'), Type.Literal('qcow2')])) })),
  nics: Type.Optional(Type.Array(Attachment)),
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
  removeContainer: [arg('id', Id)],
  listContainers: [],
  ensureNetwork: [arg('spec', NetworkSpec)],
  removeNetwork: [arg('id', Id)],
  foreignSubnets: [],
  connectContainer: [arg('id', Id), arg('endpoint', Attachment)],
  disconnectContainer: [arg('id', Id), arg('networkId', Id)],
  reconcileNetworks: [arg('liveContainers', Strings), arg('liveNetworks', Strings)],
  setOverlayPeers: [arg('networkId', Id), arg('vni', Type.Integer({ minimum: 1, maximum: 0xffffff })), arg('localUnderlayIp', Str), arg('peers', Type.Array(Obj({ ip: Str, mac: Str, underlayIp: Str, names: Type.Optional(Strings) }), { maxItems: 65536 }))],
  underlayAddress: [opt('toward', Str)],
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
  migrateVmOut: [arg('id', Id), arg('uri', Str), arg('opts', Obj({ maxDowntimeMs: Num, maxBandwidthBytes: Type.Optional(Num), nbd: Type.Optional(Str) }))],
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
  const specs = compiled.get(method) ?? [];
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
