/**
 * The agent protocol over HTTP: what agent-server.ts serves and remote-agent.ts calls.
 * Unary methods are `POST /agent/v1/call/<method>` with `{"args":[...]}` (checked against
 * agent-schemas.ts before dispatch); the streaming ones (logs, pull, console, exec, exit
 * events) have routes of their own. Every request but the hello carries the protocol version
 * the two sides agreed on (PROTOCOL_HEADER). Errors travel as `{"error":{code,message,details?,adminMessage?}}`
 * and come out of the client as the same NimbusError (encodeError, decodeError).
 */
import { Conflict, ERROR_CODES, NimbusError, toNimbusError, wholeForAdmins, type ErrorCode } from '../../core/errors.js';
import { redactAbsolutePaths, redactHostPaths, redactHostPathsIn, redactStringsIn } from '../../core/redaction.js';
import type { Agent } from '../agent.js';

/** The URL layout's prefix (kept across protocol versions: the version travels in a header). */
export const AGENT_PATH_PREFIX = '/agent/v1';

/**
 * Protocol versions. 1: the first, without a version. 2: the version header on every call,
 * argument schemas, the hello, TLS for TCP agents. 3: content carried between hosts (blobs
 * read and written by digest, images adopted from them). 4: networks across hosts (overlay peers
 * pushed to a host, its underlay address asked). 5: named volumes (created, removed, measured and
 * reconciled on a host; containers' mounts); VMs that live-migrate with a local disk (the
 * destination's NBD export) and NICs (re-created at the destination); vmStats (QEMU's CPU time,
 * NIC counters; stats answers gained an optional `network`, which older peers leave out). 6: see
 * the entries of METHOD_SINCE and the fields marked 6 (each addition names itself there). 7: block
 * volumes for VMs (created, cloned, snapshotted, attached to and detached from VMs). 8: a container's
 * main process on a terminal and with stdin (createContainer's process.terminal and stdin,
 * attachContainer, resizeContainer); files copied into and out of containers (containerPathStat,
 * readContainerArchive, writeContainerArchive: docker cp); a moved container's log
 * (exportContainerLogs, importContainerLogs); routed networks across hosts
 * (setRoutedPeers); createContainer's ports with hostPort 0, the host choosing a free one and
 * answering it in `ports` (-P, -p PORT); buildImage's noCache (build --no-cache); live migrations over TLS (VmMigrationSpec.tls, the
 * destination's answer's `tls`, migrateVmOut's opts.tls: an older peer leaves them out and the
 * move goes plain). 9: commitContainer (docker commit, COMMIT_SINCE below), the port ranges'
 * hostPortEnd and volume copy-up (PROTOCOL_9 below), and live container moves (LIVE_MOVE_METHODS
 * below: checkpointContainer, exportCheckpoint, importCheckpoint, restoreContainer; the move
 * route's 'checkpoint'; info's `liveMove`). 10: an error's `message` is for anyone and its
 * `adminMessage` for administrators and the log (host paths, runtime paths, addresses:
 * ERRORS_SPLIT_SINCE below). 11: a live migration's own certificates, minted by the control plane
 * (VmMigrationSpec.credentials, migrateVmOut's opts.credentials: MIGRATION_CREDENTIALS_SINCE; an
 * older agent is sent neither and uses its own). 12: a container's writable layer of a size of its
 * own (ContainerCreateRequest.storageBytes, importContainerLayer's opts in LAYER_SIZE_HEADER:
 * STORAGE_LIMITS_SINCE; an older agent would ignore them, so a sized container is never placed on
 * or moved to one). 13: containerLayerUsage (containers' writable layers measured: docker ps -s,
 * system df). 14: a live migration's stream token (VmMigrationSpec.streamToken, the
 * destination's answer's checksStreamToken, migrateVmOut's opts.streamToken: STREAM_TOKEN_SINCE;
 * an older destination answers no checksStreamToken and the source sends none; a destination
 * called at an older version drops the spec's, FIELDS_SINCE). Bump the current one for any change a peer of the
 * previous version would misread; raise the minimum when support for an old one goes.
 */
export const AGENT_PROTOCOL_VERSION = 14;
/** Live migrations take certificates minted for them (agent.ts: VmMigrationSpec.credentials). */
export const MIGRATION_CREDENTIALS_SINCE = 11;
/** A container's writable layer may be sized (agent.ts: ContainerCreateRequest.storageBytes). */
export const STORAGE_LIMITS_SINCE = 12;
/** A live migration's stream opens with a one-time token (agent.ts: VmMigrationSpec.streamToken). */
export const STREAM_TOKEN_SINCE = 14;
/**
 * Argument fields a caller of an older version cannot have meant, dropped from its requests: a
 * control plane of protocol 13 passes a source's spec on whole, streamToken included, but would
 * not tell the source to send it, and a destination waiting for it would fail every move.
 */
export const FIELDS_SINCE: Partial<Record<keyof Agent, ReadonlyArray<{ arg: number; field: string; since: number }>>> = {
  prepareVmIncoming: [{ arg: 0, field: 'streamToken', since: STREAM_TOKEN_SINCE }],
};
export const MIN_AGENT_PROTOCOL_VERSION = 2;
/** The negotiated version, on every request but the hello. */
export const PROTOCOL_HEADER = 'x-nimbus-agent-protocol';

/** The versions one side speaks, both ends included. */
export interface ProtocolRange {
  min: number;
  max: number;
}
export const SPOKEN_PROTOCOL: ProtocolRange = { min: MIN_AGENT_PROTOCOL_VERSION, max: AGENT_PROTOCOL_VERSION };

/** The subject CN of the control plane's client certificate: the one caller a TLS agent takes (never an agent's name). */
export const CONTROL_PLANE_CERT_NAME = 'nimbus-control-plane';
/** What a live migration's own certificate for agent X is named: this, then X (never an agent's name itself). */
export const MIGRATION_CERT_PREFIX = 'migration.';

/** Marks the errors a version disagreement makes (a client drops what it negotiated on seeing one). */
export const PROTOCOL_ERROR_REASON = 'agent-protocol';

export const describeRange = (r: ProtocolRange) => (r.min === r.max ? `${r.min}` : `${r.min}..${r.max}`);

/** The highest version both speak; Conflict naming both ranges when there is none. */
export function negotiateProtocol(ours: ProtocolRange, theirs: ProtocolRange, who: { ours: string; theirs: string }): number {
  const v = Math.min(ours.max, theirs.max);
  if (v < Math.max(ours.min, theirs.min) || theirs.min > theirs.max) {
    throw new Conflict(`${who.theirs} speaks agent protocol ${describeRange(theirs)}, ${who.ours} speaks ${describeRange(ours)}: no version in common`, {
      reason: PROTOCOL_ERROR_REASON,
      ours,
      theirs,
    });
  }
  return v;
}

/** Every Agent method whose arguments and answer are plain JSON: carried as one request each. */
export const UNARY_METHODS = [
  'info',
  'importImages',
  'garbageCollect',
  'importDiskImage',
  'createContainer',
  'startContainer',
  'stopContainer',
  'killContainer',
  'pauseContainer',
  'unpauseContainer',
  'containerState',
  'containerStats',
  'containerTop',
  'removeContainer',
  'listContainers',
  'containerLayerUsage',
  'ensureNetwork',
  'removeNetwork',
  'foreignSubnets',
  'connectContainer',
  'disconnectContainer',
  'renameContainer',
  'reconcileNetworks',
  'setOverlayPeers',
  'underlayAddress',
  'setRoutedPeers',
  'createVm',
  'createVmFromTemplate',
  'startVm',
  'stopVm',
  'killVm',
  'pauseVm',
  'unpauseVm',
  'resizeVm',
  'saveVm',
  'restoreVm',
  'vmState',
  'inspectVm',
  'vmStats',
  'removeVm',
  'listVms',
  'vmMigrationSpec',
  'prepareVmIncoming',
  'migrateVmOut',
  'finishVmIncoming',
  'abandonVmIncoming',
  'endVmMigration',
  'reconcileVms',
  'missingBlobs',
  'adoptImage',
  'adoptDiskImage',
  'createVolume',
  'removeVolume',
  'volumeUsage',
  'reconcileVolumes',
  'containerRequest',
  'createBlockVolume',
  'removeBlockVolume',
  'blockVolumeInfo',
  'snapshotBlockVolume',
  'removeBlockSnapshot',
  'reconcileBlockVolumes',
  'attachVmVolume',
  'detachVmVolume',
  'resizeContainer',
  'containerPathStat',
  // protocol 9, docker commit
  'commitContainer',
  // protocol 9: live container moves
  'checkpointContainer',
  'restoreContainer',
] as const satisfies readonly (keyof Agent)[];
export type UnaryMethod = (typeof UNARY_METHODS)[number];

/** Carried by routes of their own (streams, callbacks). */
export const STREAM_METHODS = ['pullImage', 'containerLogs', 'vmLogs', 'openVmConsole', 'execInContainer', 'onVmExit', 'onContainerExit', 'readBlob', 'writeBlob',
  'exportContainerLayer', 'importContainerLayer', 'exportVolume', 'importVolume', 'buildImage', 'attachContainer',
  'readContainerArchive', 'writeContainerArchive', 'exportContainerLogs', 'importContainerLogs',
  // protocol 9: live container moves
  'exportCheckpoint', 'importCheckpoint'] as const satisfies readonly (keyof Agent)[];

/** Protocol 9, live container moves (ContainerLiveMoveHost): kept apart from the rest of METHOD_SINCE. */
export const LIVE_MOVE_PROTOCOL = 9;
export const LIVE_MOVE_METHODS = ['checkpointContainer', 'exportCheckpoint', 'importCheckpoint', 'restoreContainer'] as const satisfies readonly (keyof Agent)[];
function LIVE_MOVE_SINCE(): Partial<Record<keyof Agent, number>> {
  return Object.fromEntries(LIVE_MOVE_METHODS.map((m) => [m, LIVE_MOVE_PROTOCOL]));
}

/** Methods a peer speaks only from some version on: a connection that agreed on an earlier one refuses them (Conflict), never sends them. */
export const METHOD_SINCE: Partial<Record<keyof Agent, number>> = {
  missingBlobs: 3,
  readBlob: 3,
  writeBlob: 3,
  adoptImage: 3,
  adoptDiskImage: 3,
  setOverlayPeers: 4,
  underlayAddress: 4,
  createVolume: 5,
  removeVolume: 5,
  volumeUsage: 5,
  reconcileVolumes: 5,
  vmStats: 5,
  buildImage: 6,
  containerRequest: 6,
  exportContainerLayer: 6,
  importContainerLayer: 6,
  exportVolume: 6,
  importVolume: 6,
  renameContainer: 6,
  containerTop: 6,
  createBlockVolume: 7,
  removeBlockVolume: 7,
  blockVolumeInfo: 7,
  snapshotBlockVolume: 7,
  removeBlockSnapshot: 7,
  reconcileBlockVolumes: 7,
  attachVmVolume: 7,
  detachVmVolume: 7,
  attachContainer: 8,
  resizeContainer: 8,
  containerPathStat: 8,
  readContainerArchive: 8,
  writeContainerArchive: 8,
  exportContainerLogs: 8,
  importContainerLogs: 8,
  setRoutedPeers: 8,
  // protocol 9, docker commit (kept apart: other protocol 9 additions merge beside it)
  commitContainer: 9,
  ...LIVE_MOVE_SINCE(),
  containerLayerUsage: 13,
};

/** docker commit on the container's host (commitContainer): agents of 8 and older refuse it with a Conflict naming the protocol. */
export const COMMIT_SINCE = 9;

/** What a method an older agent lacks is for, in the refusal. */
const WHAT_NEEDS_IT: Partial<Record<keyof Agent, string>> = {
  setOverlayPeers: 'carry networks across hosts',
  underlayAddress: 'carry networks across hosts',
  setRoutedPeers: 'route a routed network between hosts',
  createVolume: 'hold volumes',
  removeVolume: 'hold volumes',
  volumeUsage: 'hold volumes',
  reconcileVolumes: 'hold volumes',
  vmStats: "report a VM's CPU time and network counters",
  buildImage: 'build images',
  containerRequest: 'move containers between hosts',
  exportContainerLayer: 'move containers between hosts',
  importContainerLayer: 'move containers between hosts',
  exportVolume: 'move containers between hosts',
  importVolume: 'move containers between hosts',
  renameContainer: 'rename a container',
  containerTop: "list a container's processes",
  createBlockVolume: 'hold block volumes for VMs',
  removeBlockVolume: 'hold block volumes for VMs',
  blockVolumeInfo: 'hold block volumes for VMs',
  snapshotBlockVolume: 'hold block volumes for VMs',
  removeBlockSnapshot: 'hold block volumes for VMs',
  reconcileBlockVolumes: 'hold block volumes for VMs',
  attachVmVolume: 'hold block volumes for VMs',
  detachVmVolume: 'hold block volumes for VMs',
  attachContainer: "attach to a container's main process",
  resizeContainer: "resize a container's terminal",
  containerPathStat: 'copy files into and out of containers',
  readContainerArchive: 'copy files into and out of containers',
  writeContainerArchive: 'copy files into and out of containers',
  exportContainerLogs: "carry a container's log when it moves",
  importContainerLogs: "carry a container's log when it moves",
  commitContainer: 'commit a container to an image (docker commit)',
  containerLayerUsage: "measure containers' writable layers (docker ps -s, system df)",
  checkpointContainer: 'move containers live',
  exportCheckpoint: 'move containers live',
  importCheckpoint: 'move containers live',
  restoreContainer: 'move containers live',
};

/** createContainer's `mounts` from this version on: an older agent would pass over them and run the container without. */
export const CONTAINER_MOUNTS_SINCE = 5;

/** Conflict when a connection at `version` cannot carry a container's mounts; undefined when it can. */
export function tooOldForMounts(version: number, host: string): NimbusError | undefined {
  if (version >= CONTAINER_MOUNTS_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot mount volumes, host paths or tmpfs into a container (needs protocol ${CONTAINER_MOUNTS_SINCE}); upgrade it`, {
    host,
    method: 'createContainer',
    protocol: version,
    needs: CONTAINER_MOUNTS_SINCE,
  });
}

/** createContainer's ports with hostPort 0 (the host chooses one: -P, -p PORT) from this version on. */
export const CHOSEN_PORTS_SINCE = 8;

/** Conflict when a connection at `version` cannot choose a container's host ports; undefined when it can. */
export function tooOldForChosenPorts(version: number, host: string): NimbusError | undefined {
  if (version >= CHOSEN_PORTS_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot choose a published port (-P, -p PORT need protocol ${CHOSEN_PORTS_SINCE}); give HOST:PORT or upgrade it`, {
    method: 'createContainer',
    protocol: version,
    needs: CHOSEN_PORTS_SINCE,
  });
}

/** createContainer's process.terminal and process.stdin from this version on: an older agent would run the process without them. */
export const CONTAINER_STDIO_SINCE = 8;

/** Conflict when a connection at `version` cannot give a container's main process a terminal or stdin; undefined when it can. */
export function tooOldForStdio(version: number, host: string): NimbusError | undefined {
  if (version >= CONTAINER_STDIO_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot give a container's main process a terminal or stdin (-t, -i need protocol ${CONTAINER_STDIO_SINCE}); upgrade it`, {
    host,
    method: 'createContainer',
    protocol: version,
    needs: CONTAINER_STDIO_SINCE,
  });
}

/** Protocol 12: a writable layer of a size of its own, which an older agent would ignore (the container's layer unbounded). */
export function tooOldForStorageLimits(version: number, host: string, method: 'createContainer' | 'restoreContainer' | 'importContainerLayer'): NimbusError | undefined {
  if (version >= STORAGE_LIMITS_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot bound a container's writable layer (a storage size needs protocol ${STORAGE_LIMITS_SINCE}); upgrade it`, {
    host, method, protocol: version, needs: STORAGE_LIMITS_SINCE,
  });
}

/** Protocol 5: a live migration that carries a disk or NICs (fields a peer of 4 would refuse or ignore). */
export const MIGRATION_WITH_STORAGE_SINCE = 5;

/** What a connection at `version` cannot do, or undefined when it can (`host`: whose agent, in the message). */
export function tooOldFor(method: keyof Agent, version: number, host: string): NimbusError | undefined {
  const since = METHOD_SINCE[method];
  if (since === undefined || version >= since) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot ${WHAT_NEEDS_IT[method] ?? 'receive images'} (${method} needs protocol ${since}); upgrade it`, {
    host,
    method,
    protocol: version,
    needs: since,
  });
}
/** Not carried: synchronous (answered by the client itself) or the connection's own. */
export const LOCAL_METHODS = ['claimWarmContainer', 'diskImagePath', 'setAddressProvider', 'close'] as const satisfies readonly (keyof Agent)[];

// A method added to Agent must be placed in one of the lists above: this names it when it is not.
type CarriedMethod = UnaryMethod | (typeof STREAM_METHODS)[number] | (typeof LOCAL_METHODS)[number];
const everyAgentMethodIsPlaced: Record<Exclude<keyof Agent, CarriedMethod>, never> = {};
void everyAgentMethodIsPlaced;
// ...and a unary one must answer with a Promise.
type AsyncMethod = { [K in keyof Agent]: Agent[K] extends (...args: never[]) => Promise<unknown> ? K : never }[keyof Agent];
const unaryMethodsAreAsync: Record<Exclude<UnaryMethod, AsyncMethod>, never> = {};
void unaryMethodsAreAsync;

const UNARY = new Set<string>(UNARY_METHODS);
export function isUnaryMethod(name: string): name is UnaryMethod {
  return UNARY.has(name);
}

export const PATHS = {
  /** Which versions the agent speaks: the one request without a version. */
  hello: `${AGENT_PATH_PREFIX}/hello`,
  call: (method: string) => `${AGENT_PATH_PREFIX}/call/${encodeURIComponent(method)}`,
  logs: (kind: 'vm' | 'container') => `${AGENT_PATH_PREFIX}/logs/${kind}`,
  pull: `${AGENT_PATH_PREFIX}/pull`,
  console: (vmId: string) => `${AGENT_PATH_PREFIX}/console/${encodeURIComponent(vmId)}`,
  exec: (containerId: string) => `${AGENT_PATH_PREFIX}/exec/${encodeURIComponent(containerId)}`,
  /** Protocol 8: the body is the main process's stdin, the answer exec's frames ({o}, {e}, then {exit: 0} when the stream ends). */
  attach: (containerId: string) => `${AGENT_PATH_PREFIX}/attach/${encodeURIComponent(containerId)}`,
  events: `${AGENT_PATH_PREFIX}/events`,
  /** Protocol 8 (docker cp): GET the path (COPY_HEADER) as a tar, its stat in COPY_STAT_HEADER; PUT the body extracted under it. */
  copy: (containerId: string) => `${AGENT_PATH_PREFIX}/copy/${encodeURIComponent(containerId)}`,
  /** GET: the blob's bytes; PUT: the request body into the content store (BLOB_SIZE_HEADER says how many). */
  blob: (digest: string) => `${AGENT_PATH_PREFIX}/blob/${encodeURIComponent(digest)}`,
  /** GET: a stopped container's writable layer or a volume's data as a tar; PUT: the body imported (protocol 6; a container's log, 'log': 8). */
  move: (what: 'layer' | 'volume' | 'log' | 'checkpoint', id: string) => `${AGENT_PATH_PREFIX}/move/${what}/${encodeURIComponent(id)}`,
} as const;

/** Request header of a layer import: the image's chain id the writable layer goes on. */
export const IMAGE_CHAIN_HEADER = 'x-nimbus-image-chain';
/** A moved writable layer's size at its destination, in bytes (protocol 12; absent: unbounded). */
export const LAYER_SIZE_HEADER = 'x-nimbus-layer-size';

/** POST: an image build; the request body is the context tar, BUILD_HEADER the request; the answer NDJSON progress then the image (protocol 6). */
export const BUILD_PATH = `${AGENT_PATH_PREFIX}/build`;
/** Request header of a build: the BuildRequest (base64 of its JSON). */
export const BUILD_HEADER = 'x-nimbus-build';

/** Request header of a copy: base64 of `{path}` (GET) or `{path, noOverwriteDirNonDir?, copyUIDGID?}` (PUT). */
export const COPY_HEADER = 'x-nimbus-copy';
/** Response header of a copy's GET: base64 of the path's ContainerPathStat. */
export const COPY_STAT_HEADER = 'x-nimbus-copy-stat';

/** Request header of a blob write: its size in bytes (the body streams, chunked). */
export const BLOB_SIZE_HEADER = 'x-nimbus-blob-size';

/** Request header carrying the ExecRequest (base64 of its JSON): the body is the process's stdin. */
export const EXEC_HEADER = 'x-nimbus-exec';
/** Request header of an attach: base64 of the AttachRequest's JSON. */
export const ATTACH_HEADER = 'x-nimbus-attach';
/** Response header: "1" when the session has a stdin (the request body feeds it), else "0". */
export const EXEC_STDIN_HEADER = 'x-nimbus-exec-stdin';
/**
 * Protocol 6: an exec's `tty` (ExecRequest). With one, the request body is NDJSON ExecInputFrames
 * (input bytes and resizes) instead of raw stdin; a peer of 5 would run the command without a
 * terminal, so a connection that agreed on 5 refuses it (tooOldForTty).
 */
export const EXEC_TTY_SINCE = 6;

/** One line of a TTY exec's request body: input bytes (base64) or the terminal's new size. */
export type ExecInputFrame = { i: string } | { resize: { rows: number; cols: number } };

/** Conflict when a connection at `version` cannot give an exec a terminal; undefined when it can. */
export function tooOldForTty(version: number, host: string): NimbusError | undefined {
  if (version >= EXEC_TTY_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot run an exec on a terminal (a TTY exec needs protocol ${EXEC_TTY_SINCE}); upgrade it, or exec without -t`, {
    host,
    method: 'execInContainer',
    protocol: version,
    needs: EXEC_TTY_SINCE,
  });
}

/** Unary and stream-opening request bodies (a migration's console history can be MBs). */
export const MAX_BODY_BYTES = 64 * 1024 * 1024;
/**
 * The events stream's keep-alive: a client that hears nothing for 3 of these reconnects, and
 * calls the host down meanwhile (a host cut off is seen within ~6 s: issue 15's bound is 10 s).
 * Agents of protocol 4 and older ping every LEGACY_PING_INTERVAL_MS.
 */
export const PING_INTERVAL_MS = 2_000;
export const LEGACY_PING_INTERVAL_MS = 10_000;
/** The protocol from which agents ping every PING_INTERVAL_MS. */
export const FAST_PING_SINCE = 5;

export const NDJSON = 'application/x-ndjson';

export interface WireError {
  /** `message` and `details` are for anyone; `adminMessage` (protocol 10) is the whole, for administrators and the log. */
  error: { code: ErrorCode; message: string; details?: Record<string, unknown>; adminMessage?: string };
}

export type AgentEvent = { kind: 'vm-exit'; id: string } | { kind: 'container-exit'; id: string } | { kind: 'ping' };

/** One line of an exec response: stdout bytes, stderr bytes (base64), then the exit status or an error. */
export type ExecFrame = { o: string } | { e: string } | { exit: number } | WireError;

/**
 * An error as it leaves the agent. Its message and details pass this host's net (what a member
 * may read: no path under its roots, which the control plane does not know); the whole goes as
 * `adminMessage`, which a control plane of protocol 9 or older leaves unread.
 */
export function encodeError(e: unknown): WireError {
  const err = toNimbusError(e);
  const message = redactHostPaths(err.message);
  const adminMessage = err.adminMessage ?? (message === err.message ? undefined : err.message);
  return {
    error: {
      code: err.code, message,
      ...(err.details ? { details: redactHostPathsIn(err.details) } : {}),
      ...(adminMessage !== undefined ? { adminMessage } : {}),
    },
  };
}

export function isWireError(v: unknown): v is WireError {
  return typeof v === 'object' && v !== null && 'error' in v && typeof (v as { error: unknown }).error === 'object';
}

const CODES = new Set<string>(ERROR_CODES);

/** From this version an agent's error message is for anyone, and what only administrators may read travels as `adminMessage`. */
export const ERRORS_SPLIT_SINCE = 10;

/**
 * A wire error body back into a NimbusError; `fallback` (from the HTTP status) when the body is
 * not one. `version`: the one agreed with the agent that sent it (default: the current one). An
 * agent of protocol 9 or older has one message for everyone, naming its host's paths as they
 * come: the whole for administrators, and for the rest every absolute path out of it.
 */
export function decodeError(body: unknown, fallback: ErrorCode = 'Internal', version: number = AGENT_PROTOCOL_VERSION): NimbusError {
  const split = version >= ERRORS_SPLIT_SINCE;
  if (!isWireError(body) || body.error === null) {
    const text = typeof body === 'string' && body ? body : 'agent request failed';
    const safe = split ? text : redactAbsolutePaths(text);
    return new NimbusError(fallback, safe, undefined, wholeForAdmins(safe, text));
  }
  const { code, message, details, adminMessage } = body.error as { code?: unknown; message?: unknown; details?: unknown; adminMessage?: unknown };
  const known: ErrorCode = typeof code === 'string' && CODES.has(code) ? (code as ErrorCode) : 'Internal';
  const detailsObj = typeof details === 'object' && details !== null && !Array.isArray(details) ? (details as Record<string, unknown>) : undefined;
  const text = typeof message === 'string' ? message : 'agent request failed';
  if (!split) {
    const safe = redactAbsolutePaths(text);
    return new NimbusError(known, safe, detailsObj && redactStringsIn(detailsObj, redactAbsolutePaths), wholeForAdmins(safe, text));
  }
  return new NimbusError(known, text, detailsObj, typeof adminMessage === 'string' ? { adminMessage } : {});
}

/**
 * Arguments onto the wire: JSON has no undefined, so trailing ones are dropped and inner
 * ones travel as null (decodeArgs turns top-level nulls back; no Agent method takes null).
 */
export function encodeArgs(args: readonly unknown[]): unknown[] {
  let n = args.length;
  while (n > 0 && args[n - 1] === undefined) n--;
  return args.slice(0, n).map((a) => (a === undefined ? null : a));
}

export function decodeArgs(args: readonly unknown[]): unknown[] {
  return args.map((a) => (a === null ? undefined : a));
}

export function ndjsonLine(value: unknown): string {
  return JSON.stringify(value) + '\n';
}

/**
 * The parsed records of an NDJSON body. A body that ends inside a record was cut short
 * (the server terminates every record), which is reported rather than parsed.
 */
export async function* ndjsonRecords(body: AsyncIterable<Buffer | string>): AsyncGenerator<unknown> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of body) {
    buf += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n', start)) {
      const line = buf.slice(start, nl);
      start = nl + 1;
      if (line.trim()) yield JSON.parse(line) as unknown;
    }
    buf = buf.slice(start);
  }
  buf += decoder.decode();
  if (buf.trim()) throw new Error('stream ended inside a record');
}


// ------------------------------------------------------------------ protocol 9
// PROTOCOL_9: createContainer's ports with hostPortEnd (-p FIRST-LAST:PORT: the host chooses one
// free port of the range and answers it in `ports`); createContainer's volume mounts with
// copyUp (an image's files copied into a new empty volume before the process starts).

/** createContainer's ports with a host range to choose from (hostPortEnd) from this version on: an older agent refuses the field. */
export const PORT_RANGES_SINCE = 9;

/** Conflict when a connection at `version` cannot choose a published port from a range; undefined when it can. */
export function tooOldForPortRanges(version: number, host: string): NimbusError | undefined {
  if (version >= PORT_RANGES_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot choose a published port from a range (-p FIRST-LAST:PORT needs protocol ${PORT_RANGES_SINCE}); give one host port or upgrade it`, {
    method: 'createContainer',
    protocol: version,
    needs: PORT_RANGES_SINCE,
  });
}

/** createContainer's volume mounts with copyUp from this version on: an older agent refuses the field. */
export const VOLUME_COPY_UP_SINCE = 9;

/** Conflict when a connection at `version` cannot fill a new volume with the image's files; undefined when it can. */
export function tooOldForCopyUp(version: number, host: string): NimbusError | undefined {
  if (version >= VOLUME_COPY_UP_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot copy an image's files into a new volume (needs protocol ${VOLUME_COPY_UP_SINCE}); mount it with nocopy or upgrade the agent`, {
    method: 'createContainer',
    protocol: version,
    needs: VOLUME_COPY_UP_SINCE,
  });
}

/** A live migration that carries the VM's block volumes (nbdVolumes) from this version on: an older agent knows nothing of them. */
export const VM_VOLUMES_MOVE_SINCE = 9;

/** Refused before anything is touched when either end is older (undefined: it can). */
export function tooOldForVolumeMigration(version: number, host: string): NimbusError | undefined {
  if (version >= VM_VOLUMES_MOVE_SINCE) return undefined;
  return new Conflict(`host ${host}'s agent speaks protocol ${version} and cannot carry a VM's block volumes in a live migration (needs protocol ${VM_VOLUMES_MOVE_SINCE}); detach them or upgrade it`, {
    host,
    method: 'migrateVmOut',
    protocol: version,
    needs: VM_VOLUMES_MOVE_SINCE,
  });
}

/** The protocol a host's agent speaks: a remote agent's, agreed at registration; undefined for the embedded agent (this process's own, always current). */
export async function spokenProtocol(agent: Agent): Promise<number | undefined> {
  return (agent as Partial<{ protocolVersion(): Promise<number> }>).protocolVersion?.();
}
