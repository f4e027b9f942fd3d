/**
 * Serves one Agent over the agent protocol (agent-protocol.ts) so a control plane in another
 * process or on another host can drive it through a RemoteAgent. Every request carries the
 * agent's bearer token; over TCP the server speaks only TLS and requires a client certificate
 * from the control plane's CA naming the control plane (mutual TLS); a unix socket is plain
 * HTTP (its file mode is the fence). The control plane is the only client and may do everything.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { PassThrough, finished, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Conflict, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable, toNimbusError } from '../../core/errors.js';
import { isDigest } from '../../core/image-reference.js';
import { logger } from '../../core/log.js';
import { HTTP_STATUS } from '../../core/http-status.js';
import { drainedOrClosed, writeLines } from '../../core/streams.js';
import type { Agent, PullOptions } from '../agent.js';
import type { ExecRequest, ExecSession, LogRecord } from '../drivers/instance-driver.js';
import {
  AGENT_PATH_PREFIX,
  BLOB_SIZE_HEADER,
  ATTACH_HEADER,
  EXEC_HEADER,
  EXEC_STDIN_HEADER,
  EXEC_TTY_SINCE,
  FIELDS_SINCE,
  MAX_BODY_BYTES,
  NDJSON,
  PING_INTERVAL_MS,
  PROTOCOL_ERROR_REASON,
  PROTOCOL_HEADER,
  SPOKEN_PROTOCOL,
  decodeArgs,
  describeRange,
  encodeError,
  isUnaryMethod,
  METHOD_SINCE,
  ndjsonLine,
  ndjsonRecords,
  type AgentEvent,
  type ExecFrame,
  type ProtocolRange,
} from './agent-protocol.js';
import { checkArgs, checkAttachRequest, checkExecInputFrame, checkExecRequest } from './agent-schemas.js';
import { MOVE_METHODS, serveMove } from './move-routes.js';
import { serveCopy } from './copy-routes.js';
import { serveBuild } from './build-route.js';

const log = logger('agent-server');

/** An events subscriber this far behind is cut off (it reconnects and re-checks every VM). */
const MAX_EVENT_BACKLOG = 1024 * 1024;
/** Registries an administrator named (insecure or allowed), as the control plane passes them. */
const MAX_REGISTRY_NAMES = 256;
/** A pull's reusable blobs: a project's configs and layers (a generous bound on a hostile list). */
const MAX_REUSABLE = 100_000;

/** Mutual TLS for a TCP listener: PEM texts. */
export interface AgentServerTls {
  /** This agent's key and certificate (signed by the CA, naming the agent). */
  key: string;
  cert: string;
  /** The control plane's CA: clients must present a certificate it signed... */
  ca: string;
  /** ...whose subject CN is this (the control plane's identity, not another agent's). */
  clientName: string;
}

export interface AgentServerOptions {
  token: string;
  /** TCP host (default 127.0.0.1) and port (default 0: any free one); needs tls. Ignored with socketPath. */
  host?: string;
  port?: number;
  socketPath?: string;
  /** Required for TCP: plain HTTP is served on unix sockets only. */
  tls?: AgentServerTls;
  /** How often the events stream says it is alive (default 10 s). */
  pingIntervalMs?: number;
  /** The versions it speaks (default SPOKEN_PROTOCOL; tests play older or newer agents). */
  protocol?: ProtocolRange;
}

export interface AgentServer {
  /** https://HOST:PORT (the bound port) or unix:/PATH. */
  url: string;
  close(): Promise<void>;
}

const noop = () => undefined;

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Digests first: timingSafeEqual needs equal lengths, and the token's length must not leak either. */
function tokenMatches(expected: Buffer, header: string | undefined): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? '');
  return timingSafeEqual(expected, sha256(m?.[1] ?? ''));
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  let tooBig = false;
  // Past the cap the rest is read and dropped, so the answer arrives instead of a reset.
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) tooBig = true;
    else chunks.push(chunk);
  }
  if (tooBig) throw new InvalidArgument(`request body larger than ${MAX_BODY_BYTES} bytes`);
  if (size === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new InvalidArgument('request body is not valid JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgument('request body must be a JSON object');
  return v as Record<string, unknown>;
}

function sendError(res: ServerResponse, e: unknown, route: string): void {
  const body = encodeError(e);
  const status = HTTP_STATUS[body.error.code];
  if (status >= 500) log.error('agent request failed', { route, code: body.error.code, error: body.error.adminMessage ?? body.error.message });
  if (res.headersSent) {
    // mid-stream: in band, as the last record (a console's raw bytes have no band: it just ends)
    if (String(res.getHeader('content-type')) === NDJSON) send(res, body);
    if (!res.writableEnded) res.end();
    return;
  }
  const payload = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

function sendJson(res: ServerResponse, value: unknown): void {
  const payload = JSON.stringify(value);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

/** Write one NDJSON record unless the client is gone; false when it should be given time to drain. */
function send(res: ServerResponse, value: unknown): boolean {
  if (res.writableEnded || res.destroyed) return true;
  return res.write(ndjsonLine(value));
}

function startNdjson(res: ServerResponse, headers: Record<string, string> = {}): void {
  res.on('error', noop); // a client gone mid-write is handled by 'close'
  // setHeader, not writeHead's argument: sendError reads the content type back to answer in band
  for (const [k, v] of Object.entries({ 'content-type': NDJSON, 'cache-control': 'no-cache', ...headers })) res.setHeader(k, v);
  res.writeHead(200);
  res.flushHeaders();
}

/** A signal that fires when the client goes away (or the answer is done: harmless then). */
function clientGone(res: ServerResponse): AbortSignal {
  const ac = new AbortController();
  res.once('close', () => ac.abort());
  return ac.signal;
}

/** Exit events fanned out to every connected subscriber, with a periodic ping. */
class EventHub {
  private readonly subscribers = new Set<ServerResponse>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(agent: Agent, pingMs: number) {
    // once per server: Agent has no way to remove a listener, so a closed hub just ignores them
    agent.onVmExit((id) => this.publish({ kind: 'vm-exit', id }));
    agent.onContainerExit((id) => this.publish({ kind: 'container-exit', id }));
    this.timer = setInterval(() => this.publish({ kind: 'ping' }), pingMs);
    this.timer.unref();
  }

  subscribe(res: ServerResponse): void {
    startNdjson(res);
    this.subscribers.add(res);
    res.once('close', () => this.subscribers.delete(res));
  }

  private publish(ev: AgentEvent): void {
    if (this.closed) return;
    const line = ndjsonLine(ev);
    for (const res of this.subscribers) {
      if (res.writableLength > MAX_EVENT_BACKLOG) {
        log.warn('events subscriber not reading; disconnecting it');
        res.destroy();
        continue;
      }
      if (!res.writableEnded && !res.destroyed) res.write(line);
    }
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const res of this.subscribers) if (!res.writableEnded) res.end();
    this.subscribers.clear();
  }
}

/** Refuses a method the request's version does not have (its caller agreed on an older one and should not have sent it). */
function checkSince(method: keyof Agent, version: number, req: IncomingMessage): void {
  const since = METHOD_SINCE[method];
  if (since === undefined || version >= since) return;
  req.resume();
  throw new Conflict(`${method} is part of agent protocol ${since}; the request speaks ${version}`, { method, protocol: version, needs: since });
}

async function serveCall(agent: Agent, method: string, version: number, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (!isUnaryMethod(method)) {
    req.resume();
    throw new NotFound(`no such agent method: ${method}`);
  }
  checkSince(method, version, req);
  const body = await readJson(req);
  const wire = body.args ?? [];
  if (!Array.isArray(wire)) throw new InvalidArgument('"args" must be an array');
  const args = decodeArgs(wire);
  // a malformed call stops here: the driver only ever sees arguments of the declared types
  checkArgs(method, args);
  for (const f of FIELDS_SINCE[method] ?? []) {
    const a = args[f.arg];
    if (version < f.since && typeof a === 'object' && a !== null) delete (a as Record<string, unknown>)[f.field];
  }
  const fn = agent[method] as ((...a: unknown[]) => Promise<unknown>) | undefined;
  if (typeof fn !== 'function') throw new NotFound(`this agent does not implement ${method}`);
  // answers are not checked: they come from the agent itself
  const result = await fn.apply(agent, args);
  const payload = JSON.stringify(result === undefined ? {} : { result });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

function logOpts(v: unknown): { follow?: boolean; tail?: number } {
  const o = (typeof v === 'object' && v !== null ? v : {}) as { follow?: unknown; tail?: unknown };
  if (o.follow !== undefined && typeof o.follow !== 'boolean') throw new InvalidArgument('"opts.follow" must be a boolean');
  if (o.tail !== undefined && (typeof o.tail !== 'number' || !Number.isInteger(o.tail) || o.tail < 0)) throw new InvalidArgument('"opts.tail" must be a non-negative integer');
  return { ...(o.follow !== undefined ? { follow: o.follow } : {}), ...(o.tail !== undefined ? { tail: o.tail } : {}) };
}

function stringField(body: Record<string, unknown>, name: string): string {
  const v = body[name];
  if (typeof v !== 'string' || !v) throw new InvalidArgument(`"${name}" must be a non-empty string`);
  return v;
}

async function serveLogs(agent: Agent, kind: 'vm' | 'container', req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readJson(req);
  const id = stringField(body, 'id');
  const signal = clientGone(res);
  const opts = { ...logOpts(body.opts), signal };
  const source = kind === 'vm' ? agent.vmLogs(id, opts) : agent.containerLogs(id, opts);
  const it = source[Symbol.asyncIterator]();
  // The status waits for the first record, so that an unknown id is an error status, not an empty 200.
  let next: IteratorResult<LogRecord> = await it.next();
  if (signal.aborted) {
    await it.return?.(undefined);
    return;
  }
  startNdjson(res);
  await writeLines(res, it, ndjsonLine, { signal, first: next });
  if (!res.writableEnded) res.end();
}

async function servePull(agent: Agent, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readJson(req);
  const ref = stringField(body, 'ref');
  const opts = (typeof body.opts === 'object' && body.opts !== null ? body.opts : {}) as PullOptions;
  const reusable: unknown = opts.reusable;
  if (reusable !== undefined && !(Array.isArray(reusable) && reusable.length <= MAX_REUSABLE && reusable.every(isDigest))) {
    throw new InvalidArgument(`pull: reusable must be a list of at most ${MAX_REUSABLE} sha256 digests`);
  }
  for (const k of ['insecureRegistries', 'allowedRegistries'] as const) {
    const list: unknown = opts[k];
    if (list !== undefined && !(Array.isArray(list) && list.length <= MAX_REGISTRY_NAMES && list.every((r) => typeof r === 'string' && r.length <= 255))) {
      throw new InvalidArgument(`pull: ${k} must be a list of at most ${MAX_REGISTRY_NAMES} registry names`);
    }
  }
  const signal = clientGone(res);
  startNdjson(res);
  // errors from here on are in band: sendError writes the {"error":...} line
  const image = await agent.pullImage(ref, { ...opts, signal }, (progress) => send(res, { progress }));
  send(res, { result: image });
  res.end();
}

/** A blob's bytes as the body (content-length: its size); a reader that goes stops the read. */
async function serveReadBlob(agent: Agent, digest: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  req.resume();
  const blob = await agent.readBlob(digest);
  res.on('error', noop);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.size });
  // a failure mid-body cuts the answer short: the writer's digest check refuses what arrived
  await pipeline(blob.bytes, res).catch((e: unknown) => log.debug('blob read ended early', { digest, error: String(e) }));
}

/**
 * The request body into the agent's content store, never held whole. The body goes through a
 * PassThrough so that a write that stops reading early (the blob is there already) leaves the
 * request to be drained by the server rather than destroying the connection the answer needs.
 */
async function serveWriteBlob(agent: Agent, digest: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const header = req.headers[BLOB_SIZE_HEADER];
  const size = typeof header === 'string' && /^[0-9]{1,16}$/.test(header) ? Number(header) : NaN;
  if (!Number.isSafeInteger(size)) {
    req.resume();
    throw new InvalidArgument(`${BLOB_SIZE_HEADER} must be the blob's size in bytes, got "${String(header)}"`);
  }
  const body = new PassThrough();
  const gone = () => new Unavailable(`the sender of blob ${digest} went away before its end`);
  req.on('error', () => body.destroy(gone()));
  req.once('close', () => {
    if (!req.complete) body.destroy(gone());
  });
  req.pipe(body);
  try {
    sendJson(res, { result: await agent.writeBlob(digest, size, body) });
  } finally {
    body.destroy();
    req.unpipe(body);
    if (!req.complete) req.resume();
  }
}

/**
 * The serial line both ways. The request body ending is not a hang-up (a script sends a
 * command, ends its input and reads the answer): the line closes when the VM's side ends
 * or the client goes.
 */
async function serveConsole(agent: Agent, id: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const line = await agent.openVmConsole(id);
  res.on('error', noop);
  req.on('error', noop);
  line.on('error', (e: Error) => log.debug('console line failed', { id, error: e.message }));
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  req.pipe(line, { end: false });
  line.pipe(res);
  // destroyed without an 'end' (an error, QEMU gone): pipe() would leave the answer open
  line.once('close', () => {
    if (!res.writableEnded) res.end();
  });
  res.once('close', () => {
    req.unpipe(line);
    line.destroy();
  });
}

function decodeExecRequest(header: string | string[] | undefined): ExecRequest {
  if (typeof header !== 'string' || !header) throw new InvalidArgument(`missing ${EXEC_HEADER} header`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
  } catch {
    throw new InvalidArgument(`${EXEC_HEADER} is not base64 JSON`);
  }
  return checkExecRequest(v);
}

/** A TTY exec's request body: input frames to the terminal, resizes to the session (a bad frame ends the input). */
async function feedTerminal(req: IncomingMessage, session: ExecSession): Promise<void> {
  for await (const v of ndjsonRecords(req)) {
    const f = checkExecInputFrame(v);
    if ('i' in f) {
      if (session.stdin && !session.stdin.write(Buffer.from(f.i, 'base64'))) await drainedOrClosed(session.stdin);
    } else session.resize?.(f.resize.rows, f.resize.cols);
  }
}

async function serveExec(agent: Agent, id: string, version: number, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const spec = decodeExecRequest(req.headers[EXEC_HEADER]);
  // a peer that agreed on 5 does not send one; if it did, the command must not run without its terminal
  if (spec.tty && version < EXEC_TTY_SINCE) {
    req.resume();
    throw new Conflict(`an exec with a TTY is part of agent protocol ${EXEC_TTY_SINCE}; the request speaks ${version}`, { method: 'execInContainer', protocol: version, needs: EXEC_TTY_SINCE });
  }
  const session = await agent.execInContainer(id, spec);
  startNdjson(res, { [EXEC_STDIN_HEADER]: session.stdin ? '1' : '0' });
  req.on('error', noop);
  session.stdin?.on('error', noop); // EPIPE once the process has exited
  if (spec.tty) {
    feedTerminal(req, session).catch((e: unknown) => log.debug('exec input ended', { id, error: String(e) }));
  } else if (session.stdin) {
    req.pipe(session.stdin); // here the body's end is the process's end of input
  } else req.resume();
  streamSession(session, res);
}

/** An attach (protocol 8): the body is the main process's stdin (its end, the end of input), the answer exec's frames. */
async function serveAttach(agent: Agent, id: string, version: number, req: IncomingMessage, res: ServerResponse): Promise<void> {
  checkSince('attachContainer', version, req);
  const header = req.headers[ATTACH_HEADER];
  if (typeof header !== 'string' || !header) throw new InvalidArgument(`missing ${ATTACH_HEADER} header`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
  } catch {
    throw new InvalidArgument(`${ATTACH_HEADER} is not base64 JSON`);
  }
  const session = await agent.attachContainer(id, checkAttachRequest(v));
  startNdjson(res, { [EXEC_STDIN_HEADER]: session.stdin ? '1' : '0' });
  req.on('error', noop);
  session.stdin?.on('error', noop);
  if (session.stdin) req.pipe(session.stdin);
  else req.resume();
  streamSession(session, res);
}

/** A session's output as exec frames, the exit frame last; a client gone ends the session (a hang-up, a detach). */
function streamSession(session: ExecSession, res: ServerResponse): void {
  const outputs: Array<[Readable, 'o' | 'e']> = [[session.stdout, 'o'], [session.stderr, 'e']];
  let paused = false;
  const resume = () => {
    paused = false;
    for (const [s] of outputs) s.resume();
  };
  let open = outputs.length;
  for (const [s, key] of outputs) {
    s.on('data', (b: Buffer) => {
      const frame: ExecFrame = key === 'o' ? { o: b.toString('base64') } : { e: b.toString('base64') };
      if (!send(res, frame) && !paused) {
        paused = true;
        for (const [o] of outputs) o.pause();
        res.once('drain', resume);
      }
    });
    // the exit frame goes last, after every output byte
    finished(s, () => {
      if (--open > 0) return;
      session.exit.then(
        (code) => send(res, { exit: code } satisfies ExecFrame),
        (e: unknown) => send(res, encodeError(e)),
      ).finally(() => {
        if (!res.writableEnded) res.end();
      });
    });
  }
  // A client gone mid-session hangs up on the process, as a closed terminal would.
  res.once('close', () => {
    if (res.writableFinished) return;
    session.stdin?.destroy();
    session.stdout.destroy();
    session.stderr.destroy();
  });
}

/** The version a request says it speaks, checked against ours (a request without one is from a version 1 peer). */
function checkVersion(header: string | string[] | undefined, spoken: ProtocolRange): number {
  const details = { reason: PROTOCOL_ERROR_REASON, spoken };
  if (header === undefined) {
    throw new InvalidArgument(`the request carries no ${PROTOCOL_HEADER} header (a control plane of protocol 1?); this agent speaks agent protocol ${describeRange(spoken)}`, details);
  }
  const v = typeof header === 'string' && /^[0-9]{1,6}$/.test(header) ? Number(header) : NaN;
  if (Number.isNaN(v)) throw new InvalidArgument(`${PROTOCOL_HEADER} must be a version number, got "${String(header)}"`, details);
  if (v < spoken.min || v > spoken.max) {
    throw new Conflict(`the request speaks agent protocol ${v}; this agent speaks ${describeRange(spoken)}`, { ...details, requested: v });
  }
  return v;
}

/** Over TLS: the peer's certificate (already verified against the CA) must name the control plane. */
function checkClient(req: IncomingMessage, clientName: string | undefined): void {
  if (clientName === undefined) return;
  const cert = (req.socket as TLSSocket).getPeerCertificate?.();
  const cn = cert?.subject?.CN;
  if (cn !== clientName) throw new PermissionDenied(`this agent takes calls from "${clientName}" only, not from "${String(cn ?? 'nobody')}"`);
}

async function route(agent: Agent, hub: EventHub, expected: Buffer, spoken: ProtocolRange, clientName: string | undefined, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let name = 'unknown';
  try {
    try {
      checkClient(req, clientName);
      if (!tokenMatches(expected, req.headers.authorization)) throw new Unauthenticated('missing or wrong agent token');
    } catch (e) {
      req.resume(); // the body is not read: drained, so the answer is not held up behind it
      throw e;
    }
    const path = new URL(req.url ?? '/', 'http://agent').pathname;
    const rest = path.startsWith(AGENT_PATH_PREFIX + '/') ? path.slice(AGENT_PATH_PREFIX.length + 1).split('/') : [];
    const [kind, arg, ...extra] = rest;
    name = `${req.method} ${rest.join('/')}`;
    if (req.method === 'GET' && kind === 'hello' && arg === undefined) return sendJson(res, { protocol: spoken });
    let version: number;
    try {
      version = checkVersion(req.headers[PROTOCOL_HEADER], spoken);
    } catch (e) {
      req.resume();
      throw e;
    }
    let param: string | undefined;
    try {
      param = arg !== undefined && extra.length === 0 ? decodeURIComponent(arg) : undefined;
    } catch {
      throw new InvalidArgument(`malformed path ${path}`);
    }
    if (req.method === 'POST' && kind === 'call' && param) return await serveCall(agent, param, version, req, res);
    if ((req.method === 'GET' || req.method === 'PUT') && kind === 'blob' && param) {
      checkSince(req.method === 'GET' ? 'readBlob' : 'writeBlob', version, req);
      return await (req.method === 'GET' ? serveReadBlob(agent, param, req, res) : serveWriteBlob(agent, param, req, res));
    }
    if ((req.method === 'GET' || req.method === 'PUT') && kind === 'move' && (arg === 'layer' || arg === 'volume' || arg === 'log' || arg === 'checkpoint') && extra.length === 1) {
      checkSince(MOVE_METHODS[arg][req.method], version, req);
      return await serveMove(agent, req.method, arg, extra[0]!, req, res);
    }
    if ((req.method === 'GET' || req.method === 'PUT') && kind === 'copy' && param) {
      checkSince(req.method === 'GET' ? 'readContainerArchive' : 'writeContainerArchive', version, req);
      return await serveCopy(agent, req.method, arg!, req, res);
    }
    if (req.method === 'POST' && kind === 'logs' && (param === 'vm' || param === 'container')) return await serveLogs(agent, param, req, res);
    if (req.method === 'POST' && kind === 'pull' && arg === undefined) return await servePull(agent, req, res);
    if (req.method === 'POST' && kind === 'build' && arg === undefined) {
      checkSince('buildImage', version, req);
      return await serveBuild(agent, req, res);
    }
    if (req.method === 'POST' && kind === 'console' && param) return await serveConsole(agent, param, req, res);
    if (req.method === 'POST' && kind === 'exec' && param) return await serveExec(agent, param, version, req, res);
    if (req.method === 'POST' && kind === 'attach' && param) return await serveAttach(agent, param, version, req, res);
    if (req.method === 'GET' && kind === 'events' && arg === undefined) return hub.subscribe(res);
    req.resume();
    throw new NotFound(`no agent route for ${req.method} ${path}`);
  } catch (e) {
    sendError(res, toNimbusError(e), name);
  }
}

export async function startAgentServer(agent: Agent, opts: AgentServerOptions): Promise<AgentServer> {
  if (!opts.token) throw new InvalidArgument('the agent server needs a token');
  if (!opts.socketPath && !opts.tls) throw new InvalidArgument('an agent listening on TCP needs TLS (a certificate from the control plane: nimbusd agent --join-token); plain HTTP is for unix sockets only');
  const expected = sha256(opts.token);
  const spoken = opts.protocol ?? SPOKEN_PROTOCOL;
  const hub = new EventHub(agent, opts.pingIntervalMs ?? PING_INTERVAL_MS);
  const tls = opts.socketPath ? undefined : opts.tls;
  const handler = (req: IncomingMessage, res: ServerResponse) => void route(agent, hub, expected, spoken, tls?.clientName, req, res);
  // requestTimeout 0: a console's or exec's request body legitimately streams for hours
  const httpOptions = { requestTimeout: 0, maxHeaderSize: 256 * 1024 };
  const server: Server = tls
    ? // a client without a certificate the CA signed is refused in the handshake
      createTlsServer({ ...httpOptions, key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, handler)
    : createServer(httpOptions, handler);
  // longer than the client's idle keep-alive, so it is always the client that drops an idle socket
  server.keepAliveTimeout = 65_000;

  let url: string;
  try {
    if (opts.socketPath) {
      const socketPath = opts.socketPath;
      mkdirSync(dirname(socketPath), { recursive: true });
      rmSync(socketPath, { force: true });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => resolve());
      });
      chmodSync(socketPath, 0o660);
      url = `unix:${socketPath}`;
    } else {
      const host = opts.host ?? '127.0.0.1';
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.port ?? 0, host, () => resolve());
      });
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 0);
      url = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
    }
  } catch (e) {
    hub.close();
    throw e;
  }
  server.on('error', (e) => log.error('agent server error', { error: e.message }));
  // a refused handshake (no certificate, or one the CA did not sign) is someone else knocking
  if (tls) server.on('tlsClientError', (e: Error) => log.warn('agent TLS handshake refused', { error: e.message }));
  log.debug('agent server listening', { url });

  let closing: Promise<void> | undefined;
  return {
    url,
    close() {
      closing ??= new Promise<void>((resolve) => {
        hub.close();
        server.close(() => {
          if (opts.socketPath) rmSync(opts.socketPath, { force: true });
          resolve();
        });
        // streams in flight see their client go: their agent-side work is aborted
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
