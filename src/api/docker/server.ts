/**
 * The Docker Engine API (1.41) on a unix socket of its own, for the unmodified docker CLI. It is
 * a second edge over the same control services as the Nimbus API: the caller is authenticated
 * and authorised with the Nimbus edge's functions, and each request acts in ONE project (the
 * caller's default, or X-Nimbus-Project), so a tenant's docker CLI sees its own project only.
 */
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { dirname } from 'node:path';
import { Type } from '@sinclair/typebox';
import { InvalidArgument, logMessage, NotFound, Unauthenticated } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Services } from '../../control/services.js';
import type { Principal } from '../../control/identity/access.js';
import { authenticate, authorize } from '../authz.js';
import type { RequestAuth, Route, RouteAuth } from '../route.js';
import { createEdgeServer, DEFAULT_EDGE_LIMITS, decodeComponent, hasUnreadBody, onClientError, parseTarget, readJsonBody, type ServedCertificate } from '../edge.js';
import { dockerError } from './errors.js';
import { OpenStreams } from '../open-streams.js';

const log = logger('docker-api');

/** The API version advertised; clients asking for a newer one are refused as dockerd refuses them. */
export const DOCKER_API_VERSION = '1.41';
export const DOCKER_MIN_API_VERSION = '1.12';

export interface DockerContext {
  req: IncomingMessage;
  res: ServerResponse;
  /** The pattern's captured groups, decoded. */
  params: string[];
  query: URLSearchParams;
  services: Services;
  auth: RequestAuth;
  /** The one project this request acts in. */
  project: string;
  /** The JSON body (undefined when empty). */
  body(): Promise<unknown>;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
}

/** A handler's answer: JSON with a status, nothing (204), or HANDLED when it wrote the response itself (streams). */
export type DockerResult = { status?: number; json?: unknown; headers?: Record<string, string> } | typeof HANDLED;
export const HANDLED = Symbol('handled');

export interface DockerRoute {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'DELETE';
  /** Matched against the unversioned path, still percent-encoded. */
  pattern: RegExp;
  /** What it is, for errors and the authorisation's messages. */
  name: string;
  /** Who may call it: public, or a role on the request's project. */
  access: 'public' | 'reader' | 'member' | 'authenticated';
  handler(ctx: DockerContext): Promise<DockerResult> | DockerResult;
  /** A hijacked connection (attach): the handler gets the raw socket after the 101. */
  upgrade?: (ctx: DockerContext, socket: Duplex) => Promise<void>;
}

/** How long a hijacked connection the server has ended may wait for the client to close its side. */
const HIJACK_LINGER_MS = 5_000;

const VERSIONED = /^\/v(\d+)\.(\d+)(\/.*)$/;

/** "/v1.41/containers/json" → "/containers/json"; a version above ours is refused with dockerd's message. */
export function unversioned(path: string): string {
  const m = VERSIONED.exec(path);
  if (!m) return path;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  const [ourMajor, ourMinor] = DOCKER_API_VERSION.split('.').map(Number) as [number, number];
  if (major > ourMajor || (major === ourMajor && minor > ourMinor)) {
    throw new InvalidArgument(`client version ${major}.${minor} is too new. Maximum supported API version is ${DOCKER_API_VERSION}`);
  }
  return m[3]!;
}

/** The Nimbus route the edge's authorise() judges a Docker request by (it reads only auth and operationId). */
function asNimbusRoute(r: DockerRoute): Route {
  const auth: RouteAuth = r.access === 'public' ? { public: true } : r.access === 'authenticated' ? { authenticated: true } : { role: r.access, project: 'query' };
  return { method: 'GET', path: '', operationId: `docker ${r.name}`, summary: '', tag: 'docker', access: 'read', auth, response: Type.Unknown(), handler: () => undefined } as Route;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export class DockerApiServer {
  private readonly servers: Server[] = [];
  private readonly limits = DEFAULT_EDGE_LIMITS;
  /** Upgraded connections (attach, exec) still open. */
  private readonly hijacked = new Set<Duplex>();
  /**
   * Every request in progress, held to its caller's access: one that lasts (events, logs -f, stats,
   * an attach or exec) ends with its connection once the caller may no longer (open-streams.ts).
   */
  private readonly streams: OpenStreams;

  constructor(private readonly routes: DockerRoute[], private readonly services: Services) {
    this.streams = new OpenStreams(services, this.limits.accessRecheckMs);
  }

  /**
   * Connections that came in on the unix socket, whose callers without a token are the local
   * administrator; any other (TCP, plain or TLS) is nobody without one. Marked from the unix
   * listener, not the TCP one: behind TLS a request's socket is the TLS socket, not the one
   * 'connection' saw, and a TCP mark missed there made callers over HTTPS the administrator.
   */
  private readonly unixSockets = new WeakSet<object>();

  /** Who calls: X-Nimbus-Token (the docker CLI's HttpHeaders) or a bearer token; without one on the unix socket, the local administrator. */
  private async principal(req: IncomingMessage): Promise<Principal | undefined> {
    const token = header(req, 'x-nimbus-token');
    if (token) return this.services.identity.authenticate(token);
    return authenticate(req, this.unixSockets.has(req.socket) ? 'unix' : 'tcp', this.services);
  }

  private match(req: IncomingMessage): { route: DockerRoute; params: string[]; query: URLSearchParams } {
    const { path, search } = parseTarget(req.url, this.limits.maxUrlBytes);
    const bare = unversioned(path);
    const method = req.method === 'HEAD' ? ['HEAD', 'GET'] : [req.method];
    const candidates = this.routes.filter((r) => r.pattern.test(bare));
    const route = method.map((m) => candidates.find((r) => r.method === m)).find((r) => r !== undefined);
    if (!route) {
      if (candidates.length) throw new InvalidArgument(`method ${req.method} not allowed on ${bare}`);
      throw new NotFound('page not found');
    }
    const m = route.pattern.exec(bare)!;
    const params = m.slice(1).map((p, i) => decodeComponent(p ?? '', `path parameter ${i + 1}`));
    return { route, params, query: new URLSearchParams(search) };
  }

  private async context(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<{ route: DockerRoute; ctx: DockerContext }> {
    const { route, params, query } = this.match(req);
    let principal: Principal | undefined;
    try {
      principal = await this.principal(req);
    } catch (e) {
      if (route.access !== 'public') throw e;
    }
    if (!principal && route.access !== 'public') throw new Unauthenticated('authentication required: send X-Nimbus-Token (nimbus docker-env)');
    const projectRef = header(req, 'x-nimbus-project');
    if (!projectRef && principal && !principal.defaultProjectId && route.access !== 'public' && route.access !== 'authenticated') {
      throw new InvalidArgument('no project: you have no default project, so send X-Nimbus-Project (HttpHeaders in ~/.docker/config.json; nimbus docker-env prints it)');
    }
    const auth = await authorize(asNimbusRoute(route), principal, this.services, { params: {}, rawQuery: projectRef ? { project: projectRef } : {}, body: undefined });
    const project = auth.projectId ?? principal?.defaultProjectId ?? this.services.defaultProjectId;
    let read: Promise<unknown> | undefined;
    const ctx: DockerContext = {
      req, res, params, query, services: this.services, auth, project, signal,
      body: () => (read ??= readJsonBody(req, this.limits.maxBodyBytes, this.limits.headersTimeoutMs)),
    };
    return { route, ctx };
  }

  handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    // an administrator's errors say everything (sendDockerError)
    let admin = false;
    let letGo: (() => void) | undefined;
    try {
      log.debug('request', { method: req.method, url: req.url?.slice(0, 512) });
      res.setHeader('api-version', DOCKER_API_VERSION);
      res.setHeader('server', `Nimbus/${this.services.version} (linux)`);
      const { route, ctx } = await this.context(req, res, ac.signal);
      admin = ctx.auth.principal?.systemAdmin === true;
      letGo = this.streams.hold(ctx.auth, () => res.destroy());
      const out = await route.handler(ctx);
      if (out === HANDLED) return;
      const status = out.status ?? (out.json === undefined ? 204 : 200);
      const close = hasUnreadBody(req) ? { connection: 'close' } : {};
      if (out.json === undefined) {
        res.writeHead(status, { ...out.headers, ...close });
        res.end();
        return;
      }
      const payload = typeof out.json === 'string' ? out.json : JSON.stringify(out.json);
      res.writeHead(status, {
        'content-type': typeof out.json === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
        'content-length': Buffer.byteLength(payload), ...out.headers, ...close,
      });
      res.end(req.method === 'HEAD' ? undefined : payload);
    } catch (e) {
      sendDockerError(res, e, admin);
    } finally {
      letGo?.();
    }
  };

  /** A hijack (POST …/attach with Upgrade: tcp): answered 101, then the handler owns the socket. */
  handleUpgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> => {
    const ac = new AbortController();
    // the HTTP server forgets a socket once it is upgraded: close() must end these itself
    this.hijacked.add(socket);
    socket.on('close', () => {
      this.hijacked.delete(socket);
      ac.abort();
    });
    socket.on('error', () => ac.abort());
    let admin = false;
    let letGo: (() => void) | undefined;
    try {
      if (head.length) socket.unshift(head);
      // a ServerResponse is made only so handlers share one context type; attach never writes through it
      const { route, ctx } = await this.context(req, undefined as unknown as ServerResponse, ac.signal);
      admin = ctx.auth.principal?.systemAdmin === true;
      if (!route.upgrade) throw new InvalidArgument(`${route.name} cannot be upgraded`);
      letGo = this.streams.hold(ctx.auth, () => socket.destroy());
      await route.upgrade(ctx, socket);
      // ended by the handler; a client that never closes its side is not kept for ever
      setTimeout(() => socket.destroy(), HIJACK_LINGER_MS).unref();
    } catch (e) {
      const { status, body } = dockerError(e, admin);
      const payload = JSON.stringify(body);
      if (!socket.destroyed) socket.end(`HTTP/1.1 ${status} Error\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\nconnection: close\r\n\r\n${payload}`);
    } finally {
      letGo?.();
    }
  };

  async listenUnix(socketPath: string): Promise<void> {
    mkdirSync(dirname(socketPath), { recursive: true });
    rmSync(socketPath, { force: true });
    const server = createEdgeServer(this.limits, this.handle);
    server.on('connection', (socket) => this.unixSockets.add(socket));
    server.on('clientError', onClientError);
    server.on('upgrade', this.handleUpgrade);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: socketPath, backlog: this.limits.backlog }, () => resolve());
    });
    chmodSync(socketPath, 0o660); // as the Nimbus socket: whoever can open it is the local administrator
    this.servers.push(server);
    log.info('docker API serving', { socket: socketPath, apiVersion: DOCKER_API_VERSION });
  }

  /** The same API on TCP, every request with a token (as the Nimbus API's TCP listener), HTTPS with `tls`; the port it listens on. */
  async listenTcp(host: string, port: number, tls?: ServedCertificate): Promise<number> {
    const server = createEdgeServer(this.limits, this.handle, tls);
    server.on('clientError', onClientError);
    server.on('upgrade', this.handleUpgrade);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: this.limits.backlog }, () => resolve());
    });
    this.servers.push(server);
    const bound = (server.address() as AddressInfo).port;
    log.info('docker API serving', { tcp: `${host}:${bound}`, tls: !!tls, apiVersion: DOCKER_API_VERSION });
    return bound;
  }

  async close(): Promise<void> {
    this.streams.close();
    for (const socket of this.hijacked) socket.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => {
      s.close(() => r());
      s.closeAllConnections();
    })));
    this.servers.length = 0;
  }
}

/** Docker's error body; once a stream has begun, an error line in Docker's stream format, then the end. */
export function sendDockerError(res: ServerResponse, e: unknown, admin = false): void {
  const { status, body } = dockerError(e, admin);
  if (status >= 500) log.error('docker API request failed', { status, error: logMessage(e) });
  if (res.headersSent) {
    if (!res.writableEnded) res.end(JSON.stringify({ errorDetail: body, error: body.message }) + '\n');
    return;
  }
  const payload = JSON.stringify(body);
  const send = () => {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload), ...(hasUnreadBody(res.req) ? { connection: 'close' } : {}) });
    res.end(payload);
  };
  drainThen(res.req, send);
}

/** How much of a refused request's body is read (and dropped) before the refusal goes out. */
const REFUSED_BODY_DRAIN_BYTES = 64 * 1024 * 1024;
const REFUSED_BODY_DRAIN_MS = 10_000;

/**
 * then() once the request's body is read to its end, or after REFUSED_BODY_DRAIN_BYTES or
 * REFUSED_BODY_DRAIN_MS of it (the connection is then closed with the answer). A client still
 * sending a body (docker import, load, build) when the server refuses the request (a reader's
 * role, a bad parameter) would otherwise see a broken pipe instead of the refusal.
 */
function drainThen(req: IncomingMessage, then: () => void): void {
  if (!hasUnreadBody(req) || req.destroyed) return then();
  let seen = 0;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    req.off('data', onData);
    then();
  };
  const onData = (c: Buffer) => {
    seen += c.length;
    if (seen > REFUSED_BODY_DRAIN_BYTES) finish();
  };
  const timer = setTimeout(finish, REFUSED_BODY_DRAIN_MS);
  timer.unref();
  req.on('data', onData);
  req.once('end', finish);
  req.once('error', finish);
  req.once('close', finish);
  req.resume();
}
