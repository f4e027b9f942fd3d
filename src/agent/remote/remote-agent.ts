/**
 * An Agent in another process or on another host, reached over the agent protocol
 * (agent-protocol.ts, served by agent-server.ts). Transport failures become Unavailable
 * naming the agent; errors the agent itself threw come out with their own code.
 *
 * TCP agents are reached over mutual TLS only (https://): the agent's certificate must chain
 * to the control plane's CA and name the agent; this side presents the control plane's own.
 * A unix-socket agent is plain HTTP. The protocol version is agreed on through the agent's
 * hello before the first call and sent with every request.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { Duplex, PassThrough, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Conflict, InvalidArgument, NimbusError, type ErrorCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { codeForStatus } from '../../core/http-status.js';
import { drainedOrClosed } from '../../core/streams.js';
import type { AddressProvider, Agent, AgentImage, BlobStream, PullOptions, PullProgress, TreeImportResult } from '../agent.js';
import type { BuildProgress, BuildRequest } from '../agent.js';
import type { ContainerArchiveResult, ContainerPathStat } from '../agent.js';
import { checkedResize, type AttachRequest, type AttachSession, type ExecRequest, type ExecSession, type LogRecord } from '../drivers/instance-driver.js';
import {
  BLOB_SIZE_HEADER,
  BUILD_HEADER,
  BUILD_PATH,
  IMAGE_CHAIN_HEADER,
  ATTACH_HEADER,
  AGENT_PROTOCOL_VERSION,
  COPY_HEADER,
  COPY_STAT_HEADER,
  EXEC_HEADER,
  EXEC_STDIN_HEADER,
  NDJSON,
  PATHS,
  PING_INTERVAL_MS,
  LEGACY_PING_INTERVAL_MS,
  FAST_PING_SINCE,
  PROTOCOL_ERROR_REASON,
  PROTOCOL_HEADER,
  SPOKEN_PROTOCOL,
  decodeError,
  describeRange,
  encodeArgs,
  isWireError,
  ndjsonRecords,
  negotiateProtocol,
  ndjsonLine,
  tooOldFor,
  tooOldForTty,
  MIGRATION_CREDENTIALS_SINCE,
  STREAM_TOKEN_SINCE,
  LAYER_SIZE_HEADER,
  tooOldForStorageLimits,
  MIGRATION_WITH_STORAGE_SINCE,
  tooOldForMounts,
  tooOldForStdio, tooOldForChosenPorts, tooOldForPortRanges, tooOldForCopyUp,
  type AgentEvent,
  type ExecFrame,
  type ExecInputFrame,
  type ProtocolRange,
  type UnaryMethod,
} from './agent-protocol.js';

const log = logger('remote-agent');

/**
 * The longest a unary call may go without an answer. Generous: saveVm, migrateVmOut and
 * stops answer only when done; liveness is what ping() and the events stream are for.
 */
const DEFAULT_TIMEOUT_MS = 30 * 60_000;
/** A TCP connect that takes longer than this is a host that is not there. */
const CONNECT_TIMEOUT_MS = 10_000;
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 5_000;
/** Three missed pings: the events connection is dead even if TCP has not noticed. */
const eventsIdleMs = (protocol: number) => 3 * (protocol >= FAST_PING_SINCE ? PING_INTERVAL_MS : LEGACY_PING_INTERVAL_MS);

/** This side of mutual TLS: PEM texts. */
export interface RemoteAgentTls {
  /** The CA the agent's certificate must chain to. */
  ca: string;
  /** The control plane's client certificate and key (signed by the same CA). */
  cert: string;
  key: string;
}

export interface RemoteAgentOptions {
  /** The agent's name: in error messages, and what its certificate must name. */
  name: string;
  /** https://HOST:PORT or unix:/PATH. */
  url: string;
  token: string;
  /** Required for https:// agents. */
  tls?: RemoteAgentTls;
  /** The versions this side speaks (default SPOKEN_PROTOCOL). */
  protocol?: ProtocolRange;
  /** The longest a unary call may wait for its answer (default 30 min). */
  timeoutMs?: number;
}

type Target = { socketPath: string } | { host: string; port: number };

interface OpenOptions {
  /** A JSON body, sent whole. */
  json?: unknown;
  /** The body streams (console input, stdin): headers go at once and the request stays open. */
  streaming?: boolean;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Unary calls: how long the answer may take. Streams have only the connect timeout. */
  timeoutMs?: number;
}

interface Opened {
  req: ClientRequest;
  /** The answer with a 2xx status; an error status rejects with the decoded error (and ends the request). */
  response: Promise<IncomingMessage>;
}

function parseUrl(url: string): { target: Target; secure: boolean } {
  if (url.startsWith('unix:')) {
    const socketPath = url.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    if (!socketPath.startsWith('/')) throw new InvalidArgument(`agent url "${url}": a unix socket path must be absolute`);
    return { target: { socketPath }, secure: false };
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgument(`agent url must be https://HOST:PORT or unix:/PATH, got "${url}"`);
  }
  // plain HTTP would carry the token and every call in the clear: TCP agents speak TLS
  if (u.protocol === 'http:') throw new InvalidArgument(`agent url "${url}": TCP agents are reached over TLS only (https://); plain HTTP is for unix sockets`);
  if (u.protocol !== 'https:') throw new InvalidArgument(`agent url must be https://HOST:PORT or unix:/PATH, got "${url}"`);
  return { target: { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 443) }, secure: true };
}

/**
 * A transport failure in words that name no address. Node's own errors do ("connect
 * ECONNREFUSED 10.0.0.5:7001", "getaddrinfo ENOTFOUND agent-3.internal", a unix socket's path,
 * a certificate's names): those are told by their system call and code alone; this file's own
 * reasons (timeouts, a closed connection, an answer that is not JSON) name none and pass as they are.
 */
function withoutAddress(e: unknown): string {
  if (!(e instanceof Error)) return 'the connection failed';
  const { code, syscall } = e as NodeJS.ErrnoException;
  if (typeof code !== 'string') return e.message;
  return typeof syscall === 'string' ? `${syscall} ${code}` : code;
}

/** The agent's certificate must name the agent (its CN), whatever address it was reached at. */
function namesAgent(name: string): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) =>
    cert.subject?.CN === name ? undefined : new Error(`the agent's certificate names "${String(cert.subject?.CN ?? 'nobody')}", not "${name}"`);
}

async function readAll(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

/** Write with backpressure; a destroyed destination (its reader gave up) drops the data. */
function writeTo(dest: Writable, chunk: Buffer): Promise<void> | undefined {
  if (dest.destroyed || dest.writableEnded) return undefined;
  if (dest.write(chunk)) return undefined;
  return drainedOrClosed(dest);
}

/** The console line: writes are the request body, reads the response body. */
class ConsoleStream extends Duplex {
  constructor(
    private readonly req: ClientRequest,
    private readonly res: IncomingMessage,
  ) {
    // not half-open: the line's far end closing finishes this side too, so 'close' follows
    super({ allowHalfOpen: false });
    res.on('data', (c: Buffer) => {
      if (!this.push(c)) res.pause();
    });
    res.once('end', () => this.push(null));
    // connection lost: closed quietly, as a socket whose peer went would be
    res.once('close', () => {
      if (!res.complete) this.destroy();
    });
  }

  override _read(): void {
    this.res.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const wait = writeTo(this.req, chunk);
    if (wait) void wait.then(() => cb());
    else cb();
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (!this.req.writableEnded) this.req.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    // after a complete answer the request is just ended (its socket can be reused)
    if (this.res.complete) {
      if (!this.req.writableEnded) this.req.end();
    } else {
      this.req.destroy();
      this.res.destroy();
    }
    cb(err);
  }
}

export class RemoteAgent implements Agent {
  readonly name: string;
  readonly url: string;
  private readonly token: string;
  private readonly timeoutMs: number;
  private readonly target: Target;
  private readonly transport: typeof http | typeof https;
  private readonly pool: http.Agent;
  private readonly tlsOptions: Record<string, unknown>;
  private readonly protocol: ProtocolRange;
  /** The version agreed with the agent (asked once; forgotten when the agent says it no longer speaks it). */
  private negotiated: Promise<number> | undefined;
  /** The last version agreed, for the errors its answers carry (decodeError); before any: the current one. */
  private agreed = AGENT_PROTOCOL_VERSION;

  private readonly vmExitListeners: Array<(id: string) => void> = [];
  private readonly containerExitListeners: Array<(id: string) => void> = [];
  private readonly linkListeners: Array<(up: boolean, reason?: string, adminReason?: string) => void> = [];
  /** What the link listeners were last told (each change is told once). */
  private linkUp: boolean | undefined;
  private eventsLoop: Promise<void> | undefined;
  private eventsReq: ClientRequest | undefined;
  private wakeBackoff: (() => void) | undefined;
  private closed = false;

  constructor(opts: RemoteAgentOptions) {
    this.name = opts.name;
    this.url = opts.url;
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.protocol = opts.protocol ?? SPOKEN_PROTOCOL;
    const { target, secure } = parseUrl(opts.url);
    if (secure && !opts.tls) throw new InvalidArgument(`agent ${opts.name} at ${opts.url}: an https agent needs the control plane's CA and client certificate`);
    this.target = target;
    this.transport = secure ? https : http;
    this.tlsOptions = secure && opts.tls
      ? { ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, rejectUnauthorized: true, checkServerIdentity: namesAgent(opts.name), minVersion: 'TLSv1.2' }
      : {};
    // idle sockets dropped after 30 s, before the server's 65 s, so a reused one is never half-closed
    this.pool = new this.transport.Agent({ keepAlive: true, timeout: 30_000 });
  }

  // ---------------------------------------------------------------- transport

  /**
   * A transport failure, named after the agent (errors the agent sent pass through). Tenants see
   * it (their instance's host does not answer): its message names the host, never its address;
   * the URL and the transport's own words are for administrators and the log (adminMessage).
   */
  private unavailable(e: unknown): NimbusError {
    if (e instanceof NimbusError) return e;
    const reason = e instanceof Error ? e.message : String(e);
    return new NimbusError('Unavailable', `agent ${this.name}: ${withoutAddress(e)}`, undefined, { cause: e, adminMessage: `agent ${this.name} at ${this.url}: ${reason}` });
  }

  /** The protocol version to speak: the highest both sides speak, from the agent's hello. */
  async protocolVersion(): Promise<number> {
    this.negotiated ??= this.hello().catch((e: unknown) => {
      this.negotiated = undefined; // asked again next time (the agent may be down, or upgraded)
      throw e;
    });
    return this.negotiated;
  }

  private async hello(): Promise<number> {
    let res: IncomingMessage;
    try {
      res = await this.openWith(undefined, 'GET', PATHS.hello, { timeoutMs: CONNECT_TIMEOUT_MS }).response;
    } catch (e) {
      // an agent from before versions has no hello: it speaks protocol 1
      if (e instanceof NimbusError && e.code === 'NotFound') {
        throw new Conflict(`agent ${this.name} speaks agent protocol 1 (it has no hello), this control plane speaks ${describeRange(this.protocol)}: upgrade the agent`, {
          reason: PROTOCOL_ERROR_REASON,
          ours: this.protocol,
          theirs: { min: 1, max: 1 },
        });
      }
      throw e;
    }
    let body: { protocol?: Partial<ProtocolRange> };
    try {
      body = JSON.parse(await readAll(res)) as typeof body;
    } catch (e) {
      throw this.unavailable(new Error(`hello: the answer is not JSON (${String(e)})`));
    }
    const theirs = body.protocol;
    if (!theirs || !Number.isInteger(theirs.min) || !Number.isInteger(theirs.max)) throw this.unavailable(new Error('hello: the answer names no protocol versions'));
    this.agreed = negotiateProtocol(this.protocol, theirs as ProtocolRange, { ours: 'this control plane', theirs: `agent ${this.name}` });
    return this.agreed;
  }

  /** An error the agent sent, as the NimbusError it was, read at the version agreed (its adminMessage from protocol 10 on). */
  private agentError(body: unknown, fallback?: ErrorCode): NimbusError {
    return decodeError(body, fallback, this.agreed);
  }

  /** A request at the agreed version (agreed first if need be). */
  private async open(method: 'GET' | 'POST' | 'PUT', path: string, o: OpenOptions = {}): Promise<Opened> {
    if (this.closed) throw this.unavailable(new Error('connection closed'));
    return this.openWith(await this.protocolVersion(), method, path, o);
  }

  private openWith(version: number | undefined, method: 'GET' | 'POST' | 'PUT', path: string, o: OpenOptions = {}): Opened {
    if (this.closed) throw this.unavailable(new Error('connection closed'));
    const payload = o.json === undefined ? undefined : Buffer.from(JSON.stringify(o.json));
    const headers: Record<string, string | number> = { authorization: `Bearer ${this.token}`, ...o.headers };
    if (version !== undefined) headers[PROTOCOL_HEADER] = String(version);
    if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
    const req = this.transport.request({ ...this.target, ...this.tlsOptions, agent: this.pool, method, path, headers, ...(o.signal ? { signal: o.signal } : {}) });
    const response = new Promise<IncomingMessage>((resolve, reject) => {
      let answered = false;
      req.on('error', (e: Error) => {
        if (answered) return; // the response stream reports it
        reject(o.signal?.aborted ? (o.signal.reason ?? e) : this.unavailable(e));
      });
      req.on('socket', (sock) => {
        if (!sock.connecting) return;
        const timer = setTimeout(() => req.destroy(new Error(`connect timed out after ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
        sock.once('connect', () => clearTimeout(timer));
        sock.once('close', () => clearTimeout(timer));
      });
      if (o.timeoutMs) {
        const ms = o.timeoutMs;
        req.setTimeout(ms, () => req.destroy(new Error(`no answer within ${ms} ms`)));
      }
      req.on('response', (res) => {
        answered = true;
        const status = res.statusCode ?? 500;
        if (status < 400) return resolve(res);
        readAll(res).then(
          (text) => {
            let body: unknown = text.trim();
            try {
              body = JSON.parse(text);
            } catch {
              // not ours (a proxy?): the status and text are all there is
            }
            const err = this.agentError(body, codeForStatus(status));
            // the agent was replaced by one of another version: agree again on the next request
            if (err.details?.reason === PROTOCOL_ERROR_REASON) this.negotiated = undefined;
            reject(err);
          },
          (e: unknown) => reject(this.unavailable(e)),
        ).finally(() => {
          if (!req.writableEnded) req.destroy();
        });
      });
    });
    if (o.streaming) req.flushHeaders(); // now, not with the first chunk: input may wait for output
    else req.end(payload);
    return { req, response };
  }

  /** Conflict naming this host when the agreed version is older than `since` (a feature carried in fields, not a method). */
  private async requireProtocol(since: number, what: string): Promise<void> {
    const version = await this.protocolVersion();
    if (version < since) throw new Conflict(`host ${this.name}'s agent speaks protocol ${version} and cannot ${what} (needs protocol ${since}); upgrade it`, { host: this.name, protocol: version, needs: since });
  }

  /** Conflict naming this host and the versions when the agreed version lacks the method: it is never sent. */
  private async requireVersionFor(method: keyof Agent): Promise<void> {
    const refusal = tooOldFor(method, await this.protocolVersion(), this.name);
    if (refusal) throw refusal;
  }

  /** Typed by the property it backs (Promise<never> fits every Agent method's answer). */
  private async call(method: UnaryMethod, args: unknown[], timeoutMs = this.timeoutMs): Promise<never> {
    await this.requireVersionFor(method);
    const res = await (await this.open('POST', PATHS.call(method), { json: { args: encodeArgs(args) }, timeoutMs })).response;
    let text: string;
    try {
      text = await readAll(res);
    } catch (e) {
      throw this.unavailable(e);
    }
    let body: { result?: unknown };
    try {
      body = JSON.parse(text) as { result?: unknown };
    } catch {
      throw this.unavailable(new Error(`${method}: the answer is not JSON`));
    }
    return body.result as never;
  }

  /** Whether the agent answers info() within timeoutMs. A wrong token is thrown, not false: waiting will not fix it. */
  async ping(timeoutMs = 3000): Promise<boolean> {
    try {
      await this.call('info', [], timeoutMs);
      return true;
    } catch (e) {
      if (e instanceof NimbusError && e.code === 'Unavailable') return false;
      throw e;
    }
  }

  // ---------------------------------------------------------------- unary calls

  info: Agent['info'] = (...a) => this.call('info', a);
  importImages: Agent['importImages'] = (...a) => this.call('importImages', a);
  garbageCollect: Agent['garbageCollect'] = (...a) => this.call('garbageCollect', a);
  importDiskImage: Agent['importDiskImage'] = (...a) => this.call('importDiskImage', a);
  createContainer: Agent['createContainer'] = async (req) => {
    // an agent before protocol 5 would pass over the mounts and run the container without them
    if (req.mounts?.length) {
      const refusal = tooOldForMounts(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    // before 8 the agent would try to publish port 0 rather than choose one
    if (req.network?.mode === 'networks' && req.network.ports.some((p) => p.hostPort === 0)) {
      const refusal = tooOldForChosenPorts(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    // before 9 the agent refuses a volume's copyUp (the image's files copied into a new volume)
    if (req.mounts?.some((m) => m.type === 'volume' && m.copyUp)) {
      const refusal = tooOldForCopyUp(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    // before 9 the agent refuses hostPortEnd (a host range to choose from)
    if (req.network?.mode === 'networks' && req.network.ports.some((p) => p.hostPortEnd !== undefined)) {
      const refusal = tooOldForPortRanges(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    // before 8 the agent would run the main process without its terminal or stdin
    if (req.process.terminal || req.process.stdin) {
      const refusal = tooOldForStdio(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    await this.refuseUnboundedLayer(req.storageBytes, 'createContainer');
    return this.call('createContainer', [req]);
  };

  /** Before 12 the agent would pass over a writable layer's size and make it unbounded. */
  private async refuseUnboundedLayer(storageBytes: number | undefined, method: 'createContainer' | 'restoreContainer' | 'importContainerLayer'): Promise<void> {
    if (storageBytes === undefined) return;
    const refusal = tooOldForStorageLimits(await this.protocolVersion(), this.name, method);
    if (refusal) throw refusal;
  }
  startContainer: Agent['startContainer'] = (...a) => this.call('startContainer', a);
  stopContainer: Agent['stopContainer'] = (...a) => this.call('stopContainer', a);
  killContainer: Agent['killContainer'] = (...a) => this.call('killContainer', a);
  pauseContainer: Agent['pauseContainer'] = (...a) => this.call('pauseContainer', a);
  unpauseContainer: Agent['unpauseContainer'] = (...a) => this.call('unpauseContainer', a);
  containerState: Agent['containerState'] = (...a) => this.call('containerState', a);
  containerStats: Agent['containerStats'] = (...a) => this.call('containerStats', a);
  containerTop: Agent['containerTop'] = (...a) => this.call('containerTop', a);
  removeContainer: Agent['removeContainer'] = (...a) => this.call('removeContainer', a);
  listContainers: Agent['listContainers'] = (...a) => this.call('listContainers', a);
  containerLayerUsage: Agent['containerLayerUsage'] = (...a) => this.call('containerLayerUsage', a);
  ensureNetwork: Agent['ensureNetwork'] = (...a) => this.call('ensureNetwork', a);
  removeNetwork: Agent['removeNetwork'] = (...a) => this.call('removeNetwork', a);
  foreignSubnets: Agent['foreignSubnets'] = (...a) => this.call('foreignSubnets', a);
  connectContainer: Agent['connectContainer'] = (...a) => this.call('connectContainer', a);
  disconnectContainer: Agent['disconnectContainer'] = (...a) => this.call('disconnectContainer', a);
  renameContainer: Agent['renameContainer'] = (...a) => this.call('renameContainer', a);
  reconcileNetworks: Agent['reconcileNetworks'] = (...a) => this.call('reconcileNetworks', a);
  setOverlayPeers: Agent['setOverlayPeers'] = (...a) => this.call('setOverlayPeers', a);
  underlayAddress: Agent['underlayAddress'] = (...a) => this.call('underlayAddress', a);
  setRoutedPeers: Agent['setRoutedPeers'] = (...a) => this.call('setRoutedPeers', a);
  createVolume: Agent['createVolume'] = (...a) => this.call('createVolume', a);
  removeVolume: Agent['removeVolume'] = (...a) => this.call('removeVolume', a);
  volumeUsage: Agent['volumeUsage'] = (...a) => this.call('volumeUsage', a);
  reconcileVolumes: Agent['reconcileVolumes'] = (...a) => this.call('reconcileVolumes', a);
  createBlockVolume: Agent['createBlockVolume'] = (...a) => this.call('createBlockVolume', a);
  removeBlockVolume: Agent['removeBlockVolume'] = (...a) => this.call('removeBlockVolume', a);
  blockVolumeInfo: Agent['blockVolumeInfo'] = (...a) => this.call('blockVolumeInfo', a);
  snapshotBlockVolume: Agent['snapshotBlockVolume'] = (...a) => this.call('snapshotBlockVolume', a);
  removeBlockSnapshot: Agent['removeBlockSnapshot'] = (...a) => this.call('removeBlockSnapshot', a);
  reconcileBlockVolumes: Agent['reconcileBlockVolumes'] = (...a) => this.call('reconcileBlockVolumes', a);
  attachVmVolume: Agent['attachVmVolume'] = (...a) => this.call('attachVmVolume', a);
  detachVmVolume: Agent['detachVmVolume'] = (...a) => this.call('detachVmVolume', a);
  createVm: Agent['createVm'] = (...a) => this.call('createVm', a);
  createVmFromTemplate: Agent['createVmFromTemplate'] = (...a) => this.call('createVmFromTemplate', a);
  startVm: Agent['startVm'] = (...a) => this.call('startVm', a);
  stopVm: Agent['stopVm'] = (...a) => this.call('stopVm', a);
  killVm: Agent['killVm'] = (...a) => this.call('killVm', a);
  pauseVm: Agent['pauseVm'] = (...a) => this.call('pauseVm', a);
  unpauseVm: Agent['unpauseVm'] = (...a) => this.call('unpauseVm', a);
  resizeVm: Agent['resizeVm'] = (...a) => this.call('resizeVm', a);
  saveVm: Agent['saveVm'] = (...a) => this.call('saveVm', a);
  restoreVm: Agent['restoreVm'] = (...a) => this.call('restoreVm', a);
  vmState: Agent['vmState'] = (...a) => this.call('vmState', a);
  inspectVm: Agent['inspectVm'] = (...a) => this.call('inspectVm', a);
  vmStats: Agent['vmStats'] = (...a) => this.call('vmStats', a);
  removeVm: Agent['removeVm'] = (...a) => this.call('removeVm', a);
  listVms: Agent['listVms'] = (...a) => this.call('listVms', a);
  vmMigrationSpec: Agent['vmMigrationSpec'] = (...a) => this.call('vmMigrationSpec', a);
  prepareVmIncoming: Agent['prepareVmIncoming'] = async (spec) => {
    if (spec.storage || spec.nics?.length) await this.requireProtocol(MIGRATION_WITH_STORAGE_SINCE, 'take a live-migrating VM with a local disk or NICs');
    return this.call('prepareVmIncoming', [await this.secretsIfTaken(spec)]);
  };
  migrateVmOut: Agent['migrateVmOut'] = async (id, uri, opts) => {
    if (opts.nbd) await this.requireProtocol(MIGRATION_WITH_STORAGE_SINCE, 'send a VM\'s local disk in a live migration');
    return this.call('migrateVmOut', [id, uri, await this.secretsIfTaken(opts)]);
  };

  /**
   * A migration's argument as the agent takes it: one from before minted certificates is sent
   * none (it uses its own, as it did), one from before stream tokens no token (it would not check
   * it, and says so by not answering checksStreamToken).
   */
  private async secretsIfTaken<T extends { credentials?: unknown; streamToken?: string }>(arg: T): Promise<Partial<T>> {
    const version = await this.protocolVersion();
    const { credentials, streamToken, ...rest } = arg;
    return {
      ...rest,
      ...(credentials && version >= MIGRATION_CREDENTIALS_SINCE ? { credentials } : {}),
      ...(streamToken && version >= STREAM_TOKEN_SINCE ? { streamToken } : {}),
    } as Partial<T>;
  }
  finishVmIncoming: Agent['finishVmIncoming'] = (...a) => this.call('finishVmIncoming', a);
  abandonVmIncoming: Agent['abandonVmIncoming'] = (...a) => this.call('abandonVmIncoming', a);
  endVmMigration: Agent['endVmMigration'] = (...a) => this.call('endVmMigration', a);
  reconcileVms: Agent['reconcileVms'] = (...a) => this.call('reconcileVms', a);
  missingBlobs: Agent['missingBlobs'] = (...a) => this.call('missingBlobs', a);
  adoptImage: Agent['adoptImage'] = (...a) => this.call('adoptImage', a);
  adoptDiskImage: Agent['adoptDiskImage'] = (...a) => this.call('adoptDiskImage', a);

  // ---------------------------------------------------------------- not carried

  /** A remote agent keeps no claimable warm pool (its warm containers would need addresses from here). */
  claimWarmContainer(): string | undefined {
    return undefined;
  }

  diskImagePath(): string {
    throw new InvalidArgument("disk images are served by the control plane host's agent only");
  }

  /** Nothing to keep: a remote agent runs without a warm pool, so it never asks for addresses. */
  setAddressProvider(_p: AddressProvider): void {}

  // ---------------------------------------------------------------- streams

  vmLogs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return this.logs('vm', id, opts);
  }

  containerLogs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return this.logs('container', id, opts);
  }

  private async *logs(kind: 'vm' | 'container', id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncGenerator<LogRecord> {
    const { signal, ...wire } = opts;
    if (signal?.aborted) return;
    let res: IncomingMessage;
    try {
      res = await (await this.open('POST', PATHS.logs(kind), { json: { id, opts: wire }, ...(signal ? { signal } : {}) })).response;
    } catch (e) {
      if (signal?.aborted) return;
      throw e;
    }
    try {
      for await (const v of ndjsonRecords(res)) {
        if (isWireError(v)) throw this.agentError(v);
        yield v as LogRecord;
      }
    } catch (e) {
      if (signal?.aborted) return; // an abort ends the records quietly, as in-process
      throw this.unavailable(e);
    } finally {
      // the consumer stopped early: the server sees the client go and aborts its side
      if (!res.complete) res.destroy();
    }
  }

  async pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void): Promise<AgentImage> {
    const { signal, ...wire } = opts;
    const res = await (await this.open('POST', PATHS.pull, { json: { ref, opts: wire }, ...(signal ? { signal } : {}) })).response;
    try {
      return await this.progressThenResult<PullProgress, AgentImage>(res, progress, 'pull', signal);
    } finally {
      if (!res.complete) res.destroy();
    }
  }

  /**
   * A streamed answer of progress lines and then its result (pull, build): the agent's error as
   * the same NimbusError, a stream cut short as Unavailable, an abort as its reason.
   */
  private async progressThenResult<P, R>(res: IncomingMessage, progress: (p: P) => void, what: string, signal: AbortSignal | undefined): Promise<R> {
    try {
      for await (const v of ndjsonRecords(res)) {
        if (isWireError(v)) throw this.agentError(v);
        const line = v as { progress?: P; result?: R };
        if (line.progress) progress(line.progress);
        else if (line.result) return line.result;
      }
      throw new Error(`the ${what} stream ended without a result`);
    } catch (e) {
      if (signal?.aborted) throw signal.reason ?? e;
      throw this.unavailable(e);
    }
  }

  /** The blob's bytes as the answer streams them (the caller consumes or destroys them). */
  async readBlob(digest: string): Promise<BlobStream> {
    await this.requireVersionFor('readBlob');
    const res = await (await this.open('GET', PATHS.blob(digest))).response;
    const size = Number(res.headers['content-length']);
    if (!Number.isSafeInteger(size) || size < 0) {
      res.destroy();
      throw this.unavailable(new Error(`readBlob ${digest}: the answer carries no size`));
    }
    return { size, bytes: res };
  }

  /** The bytes streamed as the request body (never held whole); the agent verifies them before they count. */
  async writeBlob(digest: string, size: number, bytes: AsyncIterable<Uint8Array>): Promise<{ digest: string; size: number }> {
    await this.requireVersionFor('writeBlob');
    const { req, response } = await this.open('PUT', PATHS.blob(digest), {
      streaming: true,
      headers: { 'content-type': 'application/octet-stream', [BLOB_SIZE_HEADER]: String(size) },
    });
    // settles either way: the answer says more than a broken upload does
    const sent = pipeline(bytes, req).then(() => undefined, (e: unknown) => e);
    let text: string;
    try {
      const res = await response;
      text = await readAll(res);
    } catch (e) {
      req.destroy();
      await sent;
      throw this.unavailable(e);
    }
    // answered before the body was all sent (the blob was there already): stop sending
    if (!req.writableFinished) req.destroy();
    await sent;
    try {
      return (JSON.parse(text) as { result: { digest: string; size: number } }).result;
    } catch {
      throw this.unavailable(new Error(`writeBlob ${digest}: the answer is not JSON`));
    }
  }

  // ------------------------------------------- docker cp (protocol 8)

  containerPathStat: Agent['containerPathStat'] = (...a) => this.call('containerPathStat', a);
  /** Protocol 9. */
  commitContainer: Agent['commitContainer'] = (...a) => this.call('commitContainer', a);

  /** The tar as the answer streams it (chunked; cut short, it errors), the stat in a header. */
  readContainerArchive: Agent['readContainerArchive'] = async (id, path) => {
    await this.requireVersionFor('readContainerArchive');
    const res = await (await this.open('GET', PATHS.copy(id), { headers: { [COPY_HEADER]: Buffer.from(JSON.stringify({ path })).toString('base64') } })).response;
    const header = res.headers[COPY_STAT_HEADER];
    try {
      const stat = JSON.parse(Buffer.from(typeof header === 'string' ? header : '', 'base64').toString('utf8')) as ContainerPathStat;
      return { stat, bytes: res };
    } catch (e) {
      res.destroy();
      throw this.unavailable(new Error(`readContainerArchive ${id}: no stat in the answer (${String(e)})`));
    }
  };

  /** The tar streamed as the request body (as treeIn sends); the answer says what was written. */
  writeContainerArchive: Agent['writeContainerArchive'] = async (id, path, opts, bytes) => {
    await this.requireVersionFor('writeContainerArchive');
    const spec = Buffer.from(JSON.stringify({ path, ...opts })).toString('base64');
    return this.putTar<ContainerArchiveResult>(`writeContainerArchive ${id}`, PATHS.copy(id), bytes, { [COPY_HEADER]: spec });
  };

  // ------------------------------------------- a cold container move's trees (protocol 6)

  containerRequest: Agent['containerRequest'] = (...a) => this.call('containerRequest', a);
  exportContainerLayer: Agent['exportContainerLayer'] = (id) => this.treeOut('exportContainerLayer', 'layer', id);
  exportVolume: Agent['exportVolume'] = (id) => this.treeOut('exportVolume', 'volume', id);
  importContainerLayer: Agent['importContainerLayer'] = async (id, imageChainId, bytes, opts = {}) => {
    await this.refuseUnboundedLayer(opts.storageBytes, 'importContainerLayer');
    const headers: Record<string, string> = { [IMAGE_CHAIN_HEADER]: imageChainId };
    if (opts.storageBytes !== undefined) headers[LAYER_SIZE_HEADER] = String(opts.storageBytes);
    return this.treeIn('importContainerLayer', 'layer', id, bytes, headers);
  };
  importVolume: Agent['importVolume'] = (id, bytes) => this.treeIn('importVolume', 'volume', id, bytes);
  exportContainerLogs: Agent['exportContainerLogs'] = (id) => this.treeOut('exportContainerLogs', 'log', id);
  importContainerLogs: Agent['importContainerLogs'] = (id, bytes) => this.treeIn('importContainerLogs', 'log', id, bytes);

  // ------------------------------------------- a live container move (protocol 9)

  checkpointContainer: Agent['checkpointContainer'] = (...a) => this.call('checkpointContainer', a);
  restoreContainer: Agent['restoreContainer'] = async (req) => {
    await this.refuseUnboundedLayer(req.storageBytes, 'restoreContainer');
    return this.call('restoreContainer', [req]);
  };
  exportCheckpoint: Agent['exportCheckpoint'] = (id) => this.treeOut('exportCheckpoint', 'checkpoint', id);
  importCheckpoint: Agent['importCheckpoint'] = (id, bytes) => this.treeIn('importCheckpoint', 'checkpoint', id, bytes);

  /** The tar as the answer streams it (chunked; cut short, it errors). */
  private async treeOut(method: 'exportContainerLayer' | 'exportVolume' | 'exportContainerLogs' | 'exportCheckpoint', what: 'layer' | 'volume' | 'log' | 'checkpoint', id: string): Promise<IncomingMessage> {
    await this.requireVersionFor(method);
    return (await this.open('GET', PATHS.move(what, id))).response;
  }

  /** The tar streamed as the request body (as writeBlob sends); the answer says what was imported. */
  private async treeIn(method: 'importContainerLayer' | 'importVolume' | 'importContainerLogs' | 'importCheckpoint', what: 'layer' | 'volume' | 'log' | 'checkpoint', id: string, bytes: AsyncIterable<Uint8Array>, headers: Record<string, string> = {}): Promise<TreeImportResult> {
    await this.requireVersionFor(method);
    return this.putTar<TreeImportResult>(`${method} ${id}`, PATHS.move(what, id), bytes, headers);
  }

  /** A tar PUT as a streamed request body; the answer's JSON `result`. A transfer cut short is Unavailable. */
  private async putTar<T>(what: string, url: string, bytes: AsyncIterable<Uint8Array>, headers: Record<string, string>): Promise<T> {
    const { req, response } = await this.open('PUT', url, { streaming: true, headers: { 'content-type': 'application/x-tar', ...headers } });
    const sent = pipeline(bytes, req).then(() => undefined, (e: unknown) => e);
    let text: string;
    try {
      text = await readAll(await response);
    } catch (e) {
      req.destroy();
      await sent;
      throw this.unavailable(e);
    }
    if (!req.writableFinished) req.destroy();
    await sent;
    try {
      return (JSON.parse(text) as { result: T }).result;
    } catch {
      throw this.unavailable(new Error(`${what}: the answer is not JSON`));
    }
  }


  /** The context streams up as the request body; the builder's lines and then the image come down as NDJSON (protocol 6). */
  async buildImage(spec: BuildRequest, context: AsyncIterable<Uint8Array>, progress: (p: BuildProgress) => void, signal?: AbortSignal): Promise<AgentImage> {
    await this.requireVersionFor('buildImage');
    // before 8 the agent's schema refuses the field (additionalProperties): say why instead
    if (spec.noCache && (await this.protocolVersion()) < 8) {
      throw new Conflict(`host ${this.name}'s agent speaks protocol ${await this.protocolVersion()} and cannot build without its cache (--no-cache needs protocol 8); upgrade it`, { method: 'buildImage', needs: 8 });
    }
    const { req, response } = await this.open('POST', BUILD_PATH, {
      streaming: true,
      headers: { 'content-type': 'application/x-tar', [BUILD_HEADER]: Buffer.from(JSON.stringify(spec)).toString('base64') },
      ...(signal ? { signal } : {}),
    });
    // settles either way: the answer (an early refusal, say) says more than a broken upload does
    const sent = pipeline(context, req).then(() => undefined, (e: unknown) => e);
    let res: IncomingMessage;
    try {
      res = await response;
    } catch (e) {
      req.destroy();
      await sent;
      throw signal?.aborted ? (signal.reason ?? e) : this.unavailable(e);
    }
    try {
      return await this.progressThenResult<BuildProgress, AgentImage>(res, progress, 'build', signal);
    } finally {
      if (!res.complete) res.destroy();
      if (!req.writableFinished) req.destroy();
      await sent;
    }
  }

  async openVmConsole(id: string): Promise<Duplex> {
    const { req, response } = await this.open('POST', PATHS.console(id), { streaming: true, headers: { 'content-type': 'application/octet-stream' } });
    return new ConsoleStream(req, await response);
  }

  async execInContainer(id: string, spec: ExecRequest): Promise<ExecSession> {
    if (spec.tty) {
      // an agent of 5 would run the command without its terminal
      const refusal = tooOldForTty(await this.protocolVersion(), this.name);
      if (refusal) throw refusal;
    }
    const { req, response } = await this.open('POST', PATHS.exec(id), {
      streaming: true,
      headers: { 'content-type': spec.tty ? NDJSON : 'application/octet-stream', [EXEC_HEADER]: Buffer.from(JSON.stringify(spec)).toString('base64') },
    });
    return this.session(req, await response, spec.tty !== undefined);
  }

  /** Protocol 8: the main process's output as exec frames, its stdin as the request body. */
  async attachContainer(id: string, spec: AttachRequest): Promise<AttachSession> {
    await this.requireVersionFor('attachContainer');
    const { req, response } = await this.open('POST', PATHS.attach(id), {
      streaming: true,
      headers: { 'content-type': 'application/octet-stream', [ATTACH_HEADER]: Buffer.from(JSON.stringify(spec)).toString('base64') },
    });
    const session = this.session(req, await response, false);
    // the reader gone is a detach: the agent sees the request go and lets go of the container
    session.stdout.once('close', () => {
      if (!req.destroyed) req.destroy();
    });
    return session;
  }

  resizeContainer: Agent['resizeContainer'] = (...a) => this.call('resizeContainer', a);

  /** An exec's or attach's answer as an ExecSession (with `tty`, input travels as ExecInputFrames beside resizes). */
  private session(req: ClientRequest, res: IncomingMessage, tty: boolean): ExecSession {
    const spec = { tty };
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let stdin: Writable | undefined;
    // with a TTY the body is input frames (ExecInputFrame), so resizes can travel beside the bytes
    const onWire = (chunk: Buffer): Buffer => (spec.tty ? Buffer.from(ndjsonLine({ i: chunk.toString('base64') } satisfies ExecInputFrame)) : chunk);
    // a terminal's reader gone is a hang-up, as in-process: the agent sees the request go and hangs up on the command
    if (spec.tty) {
      stdout.once('close', () => {
        if (!res.complete) {
          req.destroy();
          res.destroy();
        }
      });
    }
    if (res.headers[EXEC_STDIN_HEADER] === '1') {
      stdin = new Writable({
        write: (chunk: Buffer, _enc, cb) => {
          const wait = writeTo(req, onWire(chunk));
          if (wait) void wait.then(() => cb());
          else cb();
        },
        final: (cb) => {
          if (!req.writableEnded) req.end();
          cb();
        },
        // the end of input, not of the session: the output still comes
        destroy: (err, cb) => {
          if (!req.writableEnded && !req.destroyed) req.end();
          cb(err);
        },
      });
    } else req.end();

    const exit = (async () => {
      try {
        for await (const v of ndjsonRecords(res)) {
          const f = v as ExecFrame;
          if ('o' in f) await writeTo(stdout, Buffer.from(f.o, 'base64'));
          else if ('e' in f) await writeTo(stderr, Buffer.from(f.e, 'base64'));
          else if ('exit' in f) return f.exit;
          else if (isWireError(f)) throw this.agentError(f);
        }
        throw new Error('the exec stream ended without an exit status');
      } catch (e) {
        throw this.unavailable(e);
      } finally {
        // every way out ends both outputs (readers wait for 'end') and the request body
        stdout.end();
        stderr.end();
        if (!res.complete) {
          req.destroy();
          res.destroy();
        } else if (!req.writableEnded) req.end();
      }
    })();
    exit.catch(() => undefined); // a caller reading only the outputs must not get an unhandled rejection
    const resize = checkedResize((rows, cols) => {
      if (!req.writableEnded && !req.destroyed) req.write(ndjsonLine({ resize: { rows, cols } } satisfies ExecInputFrame));
    });
    return { stdout, stderr, ...(stdin ? { stdin } : {}), exit, ...(spec.tty ? { resize } : {}) };
  }

  // ---------------------------------------------------------------- exit events

  onVmExit(listener: (id: string) => void): void {
    this.vmExitListeners.push(listener);
    this.startEvents();
  }

  onContainerExit(listener: (id: string) => void): void {
    this.containerExitListeners.push(listener);
    this.startEvents();
  }

  onLinkChange(listener: (up: boolean, reason?: string, adminReason?: string) => void): void {
    this.linkListeners.push(listener);
    this.startEvents();
  }

  private link(up: boolean, reason?: string, adminReason?: string): void {
    if (this.linkUp === up || this.closed) return;
    this.linkUp = up;
    for (const l of this.linkListeners) {
      try {
        l(up, reason, adminReason);
      } catch (e) {
        log.warn('link listener failed', { agent: this.name, error: String(e) });
      }
    }
  }

  private startEvents(): void {
    if (this.eventsLoop || this.closed) return;
    this.eventsLoop = this.runEvents();
  }

  private emit(listeners: Array<(id: string) => void>, id: string): void {
    for (const l of listeners) {
      try {
        l(id);
      } catch (e) {
        log.warn('exit listener failed', { agent: this.name, id, error: String(e) });
      }
    }
  }

  /** GET /events until close(), reconnecting with backoff; after a gap every instance is reported as a possible exit. */
  private async runEvents(): Promise<void> {
    let delay = BACKOFF_MIN_MS;
    let attempts = 0;
    let connected = false;
    while (!this.closed) {
      const firstAttempt = attempts++ === 0;
      try {
        const { req, response } = await this.open('GET', PATHS.events);
        this.eventsReq = req;
        const res = await response;
        if (!firstAttempt) log.info('agent events stream back', { agent: this.name });
        connected = true;
        this.link(true);
        delay = BACKOFF_MIN_MS;
        // after the stream is up, so an exit is either in the listing or on the stream
        if (!firstAttempt) void this.resync();
        await this.readEvents(res, eventsIdleMs(await this.protocolVersion()));
      } catch (e) {
        if (this.closed) break;
        const lost = this.unavailable(e);
        this.link(false, e instanceof NimbusError ? e.message : withoutAddress(e), lost.adminMessage);
        if (connected) log.warn('agent events stream lost; reconnecting', { agent: this.name, error: String(e) });
        else log.debug('agent events stream unavailable', { agent: this.name, error: String(e) });
      } finally {
        this.eventsReq = undefined;
      }
      connected = false;
      if (this.closed) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        timer.unref();
        this.wakeBackoff = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeBackoff = undefined;
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  private async readEvents(res: IncomingMessage, idleMs: number): Promise<void> {
    const idle = setTimeout(() => res.destroy(new Error(`no ping for ${idleMs} ms`)), idleMs);
    idle.unref();
    try {
      for await (const v of ndjsonRecords(res)) {
        idle.refresh();
        const ev = v as AgentEvent;
        if (ev.kind === 'vm-exit') this.emit(this.vmExitListeners, ev.id);
        else if (ev.kind === 'container-exit') this.emit(this.containerExitListeners, ev.id);
      }
      throw new Error('the events stream ended');
    } finally {
      clearTimeout(idle);
      if (!res.complete) res.destroy();
    }
  }

  /** Exits are hints (listeners re-check the state): one per instance covers any missed while disconnected. */
  private async resync(): Promise<void> {
    try {
      if (this.vmExitListeners.length) for (const id of await this.listVms()) this.emit(this.vmExitListeners, id);
      if (this.containerExitListeners.length) for (const id of await this.listContainers()) this.emit(this.containerExitListeners, id);
    } catch (e) {
      // the next reconnect resyncs again
      log.warn('re-checking instances after a reconnect failed', { agent: this.name, error: String(e) });
    }
  }

  /** The connection only (the agent goes on running): events stream ended, idle sockets closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wakeBackoff?.();
    this.eventsReq?.destroy();
    await this.eventsLoop?.catch(() => undefined);
    this.pool.destroy();
  }
}
