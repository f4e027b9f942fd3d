/**
 * The Docker Engine API bodies this server reads, as TypeBox schemas. Docker clients send every
 * field of their structs (mostly zero values), so unknown fields are let through here and the
 * ones that would change behaviour are refused by mapping.ts with the flag's name.
 */
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { InvalidArgument } from '../../core/errors.js';

const Str = (maxLength = 4096) => Type.String({ maxLength });
// nulls are dropped before the check (Docker's zero value), so no field needs a Null branch (and errors name the field, not a union)
const StrList = (maxItems = 4096, maxLength = 128 * 1024) => Type.Array(Type.String({ maxLength }), { maxItems });
const StrMap = Type.Record(Type.String({ maxLength: 4096 }), Type.String({ maxLength: 4096 }), { maxProperties: 1024 });
const Int = Type.Integer();

export const PortBinding = Type.Object({ HostIp: Type.Optional(Str(64)), HostPort: Type.Optional(Str(16)) });

export const DockerHostConfig = Type.Object({
  Memory: Type.Optional(Int),
  NanoCpus: Type.Optional(Int),
  PidsLimit: Type.Optional(Int),
  RestartPolicy: Type.Optional(Type.Object({ Name: Type.Optional(Str(32)), MaximumRetryCount: Type.Optional(Int) })),
  AutoRemove: Type.Optional(Type.Boolean()),
  // a container range arrives one key per port (-p 1-65535): toPorts refuses past MAX_PUBLISHED_PORTS, saying why
  PortBindings: Type.Optional(Type.Record(Type.String({ maxLength: 32 }), Type.Array(PortBinding, { maxItems: 64 }), { maxProperties: 65536 })),
  NetworkMode: Type.Optional(Str(256)),
  Dns: Type.Optional(StrList(3, 64)),
  ExtraHosts: Type.Optional(StrList(256, 270)),
  Links: Type.Optional(StrList(64, 512)),
  PublishAllPorts: Type.Optional(Type.Boolean()),
  // CONTAINER[:ro|rw]
  VolumesFrom: Type.Optional(StrList(64, 300)),
  // --storage-opt size=10G: the writable layer's size (other keys are refused by toStorageBytes)
  StorageOpt: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 64 }), { maxProperties: 16 })),
}, { additionalProperties: true });

export const DockerContainerCreate = Type.Object({
  Image: Type.String({ minLength: 1, maxLength: 1024 }),
  Cmd: Type.Optional(StrList()),
  Entrypoint: Type.Optional(StrList()),
  Env: Type.Optional(StrList(1024, 32 * 1024)),
  WorkingDir: Type.Optional(Str()),
  User: Type.Optional(Str(513)),
  Hostname: Type.Optional(Str(63)),
  Labels: Type.Optional(StrMap),
  StopSignal: Type.Optional(Str(32)),
  StopTimeout: Type.Optional(Int),
  Tty: Type.Optional(Type.Boolean()),
  OpenStdin: Type.Optional(Type.Boolean()),
  AttachStdin: Type.Optional(Type.Boolean()),
  HostConfig: Type.Optional(DockerHostConfig),
  // {"80/tcp": {}}: --expose and -p's container ports (what -P publishes, with the image's)
  // -p FIRST-LAST exposes each port of the range too: the ports it publishes are what is capped (toPorts)
  ExposedPorts: Type.Optional(Type.Record(Type.String({ maxLength: 32 }), Type.Unknown(), { maxProperties: 65536 })),
  // {"/path": {}}: -v /path (an anonymous volume unless a mount covers it)
  Volumes: Type.Optional(Type.Record(Type.String({ maxLength: 4096 }), Type.Unknown(), { maxProperties: 64 })),
  NetworkingConfig: Type.Optional(Type.Object({
    EndpointsConfig: Type.Optional(Type.Record(Type.String({ maxLength: 256 }), Type.Object({ Aliases: Type.Optional(StrList(64, 253)) }, { additionalProperties: true }))),
  }, { additionalProperties: true })),
}, { additionalProperties: true });
export type DockerContainerCreate = Static<typeof DockerContainerCreate>;

export const DockerNetworkCreate = Type.Object({
  Name: Type.String({ minLength: 1, maxLength: 64 }),
  Driver: Type.Optional(Str(64)),
  Internal: Type.Optional(Type.Boolean()),
  Labels: Type.Optional(StrMap),
  CheckDuplicate: Type.Optional(Type.Boolean()),
  IPAM: Type.Optional(Type.Object({
    Driver: Type.Optional(Str(64)),
    Config: Type.Optional(Type.Array(Type.Object({ Subnet: Type.Optional(Str(64)), Gateway: Type.Optional(Str(64)), IPRange: Type.Optional(Str(64)) }, { additionalProperties: true }), { maxItems: 4 })),
    Options: Type.Optional(StrMap),
  }, { additionalProperties: true })),
  Options: Type.Optional(StrMap),
  EnableIPv6: Type.Optional(Type.Boolean()),
  Attachable: Type.Optional(Type.Boolean()),
}, { additionalProperties: true });
export type DockerNetworkCreate = Static<typeof DockerNetworkCreate>;

const compiled = {
  container: TypeCompiler.Compile(DockerContainerCreate),
  network: TypeCompiler.Compile(DockerNetworkCreate),
};

/** The body as the schema says, or a 400 naming the first field that is wrong. */
export function checkBody(kind: 'container', body: unknown): DockerContainerCreate;
export function checkBody(kind: 'network', body: unknown): DockerNetworkCreate;
export function checkBody(kind: keyof typeof compiled, raw: unknown): unknown {
  const check = compiled[kind];
  const body = withoutNulls(raw, 0);
  if (check.Check(body)) return body;
  const first = [...check.Errors(body)][0];
  throw new InvalidArgument(`invalid request body: ${first ? `${first.path || '/'} ${first.message}` : 'not an object'}`);
}

/** Deepest nesting a body may have (Docker's are a few levels deep; a hostile one could be thousands). */
const MAX_DEPTH = 32;

/** A copy without null-valued properties: Docker clients send null for "not set". */
function withoutNulls(v: unknown, depth: number): unknown {
  if (depth > MAX_DEPTH) throw new InvalidArgument(`invalid request body: nested deeper than ${MAX_DEPTH} levels`);
  if (Array.isArray(v)) return v.map((x) => withoutNulls(x, depth + 1));
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  // defineProperty: a "__proto__" key stays a key, never the copy's prototype
  for (const [k, x] of Object.entries(v)) if (x !== null) Object.defineProperty(out, k, { value: withoutNulls(x, depth + 1), enumerable: true, writable: true, configurable: true });
  return out;
}
