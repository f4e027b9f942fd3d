import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { TSchema } from '@sinclair/typebox';
import { InvalidArgument, logMessage, messageFor, NotFound, toNimbusError, Unauthenticated } from '../core/errors.js';
import { logger } from '../core/log.js';
import { redactHostPathsIn } from '../core/redaction.js';
import type { Services } from '../control/services.js';
import { HTTP_STATUS } from '../core/http-status.js';
import { isStreamBody, type Route, type RouteResult } from './route.js';
import { jsonPayload } from './compression.js';
import { authenticate, authorize, needsBody, type Transport } from './authz.js';
import type { Principal } from '../control/identity/access.js';
import {
  checkDeclaredLength, decodeComponent, DEFAULT_EDGE_LIMITS, hasUnreadBody, onClientError, parseQuery, parseTarget, presentBody,
  readJsonBody, createEdgeServer, type EdgeLimits, type ServedCertificate,
} from './edge.js';
import { refuseHostPaths } from './host-paths.js';
import { writeLines } from '../core/streams.js';
import { checkOrThrow, prepareCheck } from './validate.js';
import { runAsActor, SYSTEM_ACTOR } from '../control/events/actor.js';
import { isTextBody } from './routes/metrics.js';
import { DashboardFiles, isDashboardPath } from './dashboard/static.js';
import { consoleUpgrade, refuse, type ConsoleUpgrades } from './dashboard/console-ws.js';
import type { Duplex } from 'node:stream';
import { execUpgrade, type ExecUpgrades } from './dashboard/exec-ws.js';
import { OpenStreams } from './open-streams.js';

const log = logger('api');

interface CompiledRoute {
  route: Route;
  pattern: RegExp;
  paramNames: string[];
  /** The query parameters it takes: its schema's and `project` (read by the edge's authorisation). */
  queryNames: Set<string>;
  params?: TypeCheck<TSchema>;
  query?: TypeCheck<TSchema>;
  body?: TypeCheck<TSchema>;
}

function compilePath(path: string): { pattern: RegExp; paramNames: string[] } {
  const paramNames: string[] = [];
  const re = path.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\\?\{(\w+)\\?\}|\{(\w+)\}/g, (_m, a?: string, b?: string) => {
    paramNames.push((a ?? b)!);
    return '([^/]+)';
  });
  return { pattern: new RegExp(`^${re}$`), paramNames };
}

/**
 * The typed error as HTTP, mapped once. Its words as the caller may read them: what only a
 * system administrator may see (an agent's address, a host path: NimbusError.adminMessage) goes
 * to `admin` callers and the log, never to anyone else, whose message and details also pass the
 * host-path net (core/redaction.ts).
 */
export function sendError(res: ServerResponse, e: unknown, o: { sse?: boolean; admin?: boolean } = {}): void {
  const err = toNimbusError(e);
  const status = HTTP_STATUS[err.code];
  if (status >= 500) log.error('request failed', { code: err.code, error: logMessage(err) });
  const message = messageFor(err, o.admin === true);
  if (res.headersSent) {
    if (res.writableEnded) return; // the answer went out whole; nothing to take back
    // The status line is gone: say why in band, then abort the response so the client sees it
    // incomplete (no last chunk), never a clean 200 ending in an error.
    const line = JSON.stringify({ error: { code: err.code, message } });
    res.write(o.sse ? `event: error\ndata: ${line}\n\n` : line + '\n', () => res.destroy());
    return;
  }
  // Answered before the body was read: close rather than read (or drain) what may be gigabytes.
  const close = hasUnreadBody(res.req);
  const retryAfter = err.code === 'TooManyRequests' ? err.details?.retryAfterSeconds : undefined;
  res.writeHead(status, { 'content-type': 'application/json', ...(close ? { connection: 'close' } : {}), ...(typeof retryAfter === 'number' ? { 'retry-after': String(retryAfter) } : {}) });
  // details are the thrower's data (a mount's arguments, a directory): under the same net as the message
  const details = err.details && (o.admin === true ? err.details : redactHostPathsIn(err.details));
  res.end(JSON.stringify({ error: { code: err.code, message, ...(details ? { details } : {}) } }));
}


async function writeStream(res: ServerResponse, kind: 'ndjson' | 'sse', source: AsyncIterable<unknown>, signal: AbortSignal, admin: boolean) {
  res.writeHead(200, {
    'content-type': kind === 'sse' ? 'text/event-stream' : 'application/x-ndjson',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  res.flushHeaders();
  const format = kind === 'sse' ? (item: unknown) => `data: ${JSON.stringify(item)}\n\n` : (item: unknown) => JSON.stringify(item) + '\n';
  try {
    await writeLines(res, source[Symbol.asyncIterator](), format, { signal });
    res.end();
  } catch (e) {
    sendError(res, e, { sse: kind === 'sse', admin });
  }
}

const BUSY = JSON.stringify({ error: { code: 'Unavailable', message: 'server busy: too many requests in flight, retry shortly' } });

/** Overload's answer: cheap and not logged per request (that would add to the load). */
function sendBusy(res: ServerResponse): void {
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': BUSY.length, 'retry-after': 1 };
  if (hasUnreadBody(res.req)) headers.connection = 'close';
  res.writeHead(HTTP_STATUS.Unavailable, headers);
  res.end(BUSY);
}

export class ApiServer {
  private readonly compiled: CompiledRoute[];
  private readonly servers: Server[] = [];
  private readonly limits: EdgeLimits;
  /** Requests admitted and not yet answered (streams leave once started). */
  private inFlight = 0;
  private readonly dashboard = new DashboardFiles();
  /** WebSocket upgrades on TCP: the VM console for browsers (src/api/dashboard/console-ws.ts). */
  private readonly upgrades: ConsoleUpgrades;
  /** A container exec on a terminal (src/api/dashboard/exec-ws.ts), on TCP and on the unix socket (nimbus exec -it). */
  private readonly execTcp: ExecUpgrades;
  private readonly execUnix: ExecUpgrades;
  /** Every stream and WebSocket open, held to its caller's access while it lasts. */
  private readonly streams: OpenStreams;

  constructor(routes: Route[], private readonly services: Services, limits: Partial<EdgeLimits> = {}) {
    this.limits = { ...DEFAULT_EDGE_LIMITS, ...limits };
    this.streams = new OpenStreams(services, this.limits.accessRecheckMs);
    this.upgrades = consoleUpgrade(routes, services, this.streams);
    this.execTcp = execUpgrade(routes, services, 'tcp', this.streams);
    this.execUnix = execUpgrade(routes, services, 'unix', this.streams);
    this.compiled = routes.map((route) => ({
      route,
      ...compilePath(route.path),
      queryNames: new Set(['project', ...Object.keys((route.query as { properties?: object } | undefined)?.properties ?? {})]),
      ...(route.params ? { params: TypeCompiler.Compile(route.params) } : {}),
      ...(route.query ? { query: TypeCompiler.Compile(route.query) } : {}),
      ...(route.body ? { body: TypeCompiler.Compile(route.body) } : {}),
    }));
    this.prepareChecks();
  }

  /**
   * The routes' patterns and hardened checks compiled before the server listens (validate.ts prepareCheck):
   * ~15 ms of start-up here for 142 checks. Compiled after it listened, a few per turn of the
   * event loop, they took that CPU from the first requests a client sent as soon as it could.
   */
  private prepareChecks(): void {
    for (const c of this.compiled) {
      // every request tests every route's pattern: V8 compiles a RegExp at its first use and to
      // machine code at its second, ~1.5 ms for the lot that the first requests paid
      c.pattern.test('/');
      c.pattern.test('/');
      if (c.params) prepareCheck(c.params, 'path parameter');
      if (c.query) prepareCheck(c.query, 'query parameter');
      if (c.body) prepareCheck(c.body, 'request body');
    }
  }

  /** Requests from the unix socket (a caller without a token is the local administrator). */
  handle = (req: IncomingMessage, res: ServerResponse): Promise<void> => this.serve(req, res, 'unix');
  /** Requests from TCP: every route but the public ones needs a token. */
  handleTcp = (req: IncomingMessage, res: ServerResponse): Promise<void> => this.serve(req, res, 'tcp');

  private async serve(req: IncomingMessage, res: ServerResponse, transport: Transport): Promise<void> {
    // the web dashboard's files, on the listeners a browser reaches (src/api/dashboard)
    if (transport === 'tcp' && isDashboardPath(req.url)) return this.dashboard.handle(req, res).catch((e: unknown) => sendError(res, e));
    // Overload is answered, not queued: a client told to retry beats one whose connect fails.
    if (this.inFlight >= this.limits.maxInFlight) {
      sendBusy(res);
      return;
    }
    this.inFlight++;
    let admitted = true;
    const release = () => {
      if (admitted) {
        admitted = false;
        this.inFlight--;
      }
    };
    // Made only for a handler that asks (waits, follows, streams): most requests never need one,
    // and making and aborting one per request was ~4 % of the event loop in a 200-container burst.
    let ac: AbortController | undefined;
    let closed = false;
    const signal = () => {
      ac ??= new AbortController();
      if (closed) ac.abort();
      return ac.signal;
    };
    res.on('close', () => {
      closed = true;
      ac?.abort();
      release();
    });
    // request metrics by the route's template, never the raw URL (bounded label values)
    let template: Route | undefined;
    // who is calling, once known: an administrator's errors say everything (sendError)
    let principal: Principal | undefined;
    const metrics = this.services.metrics;
    if (metrics) {
      const started = performance.now();
      res.once('close', () => metrics.observeRequest(req.method ?? '', template?.path ?? 'unmatched', res.statusCode, (performance.now() - started) / 1000, template?.streams !== undefined));
    }
    try {
      const { path, search } = parseTarget(req.url, this.limits.maxUrlBytes);
      const candidates = this.compiled.filter((c) => c.pattern.test(path));
      const match = candidates.find((c) => c.route.method === req.method);
      template = match?.route;
      if (!match) {
        if (candidates.length) {
          res.setHeader('allow', candidates.map((c) => c.route.method).join(', '));
          throw new InvalidArgument(`method ${req.method} not allowed on ${path}`);
        }
        throw new NotFound(`no route for ${req.method} ${path}`);
      }
      // Who is calling before anything they sent is judged: without a token, a 401, never a 400.
      const isPublic = !!match.route.auth && 'public' in match.route.auth;
      try {
        principal = await authenticate(req, transport, this.services);
      } catch (e) {
        if (!isPublic) throw e;
      }
      if (!principal && !isPublic) throw new Unauthenticated('authentication required: log in (nimbus login) or send an API key as a bearer token');
      const m = match.pattern.exec(path)!;
      const rawParams = Object.fromEntries(match.paramNames.map((n, i) => [n, decodeComponent(m[i + 1] ?? '', `path parameter "${n}"`)]));
      const rawQuery = parseQuery(search);
      // unknown parameters are refused as unknown body fields are: a misspelt ?forse=true must not pass unnoticed
      for (const k of Object.keys(rawQuery)) if (!match.queryNames.has(k)) throw new InvalidArgument(`unknown query parameter "${k.slice(0, 64)}"`);
      const params = checkOrThrow(match.params, rawParams, 'path parameter');
      const query = checkOrThrow(match.query, rawQuery, 'query parameter');
      // Whether they may: before the body is read, unless the project is named in it.
      const late = needsBody(match.route);
      let auth = late ? undefined : await authorize(match.route, principal, this.services, { params: rawParams, rawQuery, body: undefined });
      let rawBody: unknown;
      if (match.route.rawBody) {
        if (match.route.maxBodyBytes !== undefined) checkDeclaredLength(req, match.route.maxBodyBytes);
      } else if (req.method !== 'GET' && req.method !== 'DELETE') {
        rawBody = await readJsonBody(req, match.route.maxBodyBytes ?? this.limits.maxBodyBytes, this.limits.headersTimeoutMs);
      }
      const body = checkOrThrow(match.body, presentBody(match.route.body, rawBody), 'request body');
      auth ??= await authorize(match.route, principal, this.services, { params: rawParams, rawQuery, body });
      refuseHostPaths(match.route, { params, query, body }, principal);
      // The edge resolved a name in the caller's scope: the handler gets the resource's global id.
      if (auth.resource) (params as Record<string, string>)[auth.resource.param] = auth.resource.id;
      // events the handler causes carry its caller as their actor (control/events/actor.ts)
      const out = await runAsActor(principal?.name ?? SYSTEM_ACTOR, () => match.route.handler({
        params, query, body, services: this.services, req, auth,
        get signal() {
          return signal();
        },
      } as never));
      const result: RouteResult<unknown> =
        out !== null && typeof out === 'object' && ('body' in out || 'status' in out) && Object.keys(out).every((k) => k === 'body' || k === 'status' || k === 'headers')
          ? (out as RouteResult<unknown>)
          : { body: out };
      if (result.body instanceof Error) throw result.body; // an error is never a 2xx body
      if (isStreamBody(result.body)) {
        release(); // a follow or console lasts as long as it lasts: it does not hold an admission slot
        const sse = result.body.kind === 'sse';
        const admin = principal?.systemAdmin === true;
        // ...and only while its caller may: revoked, it ends with the reason in band
        const letGo = this.streams.hold(auth, (reason) => sendError(res, reason, { sse, admin }));
        try {
          await writeStream(res, result.body.kind, result.body.source, signal(), admin);
        } finally {
          letGo();
        }
        return;
      }
      const status = result.status ?? match.route.status ?? 200;
      if (result.body === undefined || status === 204) {
        res.writeHead(status === 200 ? 204 : status, hasUnreadBody(req) ? { connection: 'close' } : {});
        res.end();
        return;
      }
      if (isTextBody(result.body)) {
        res.writeHead(status, { 'content-type': result.body.contentType, 'content-length': Buffer.byteLength(result.body.text) });
        res.end(result.body.text);
        return;
      }
      const payload = await jsonPayload(req, result.body);
      // A body nobody read (a GET's): close instead of letting Node drain it, however large.
      res.writeHead(status, {
        ...result.headers, 'content-type': 'application/json', 'content-length': payload.bytes.length, ...payload.headers,
        ...(hasUnreadBody(req) ? { connection: 'close' } : {}),
      });
      res.end(payload.bytes);
    } catch (e) {
      sendError(res, e, { admin: principal?.systemAdmin === true });
    }
  }

  private createServer(handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>, tls?: ServedCertificate): Server {
    const server = createEdgeServer(this.limits, handler, tls);
    server.on('clientError', onClientError);
    return server;
  }

  async listenUnix(socketPath: string): Promise<void> {
    mkdirSync(dirname(socketPath), { recursive: true });
    rmSync(socketPath, { force: true });
    const server = this.createServer(this.handle);
    // the only WebSocket here: the exec on a terminal of nimbus exec -it
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.execUnix.matches(req)) this.execUnix.handle(req, socket, head);
      else refuse(socket, 404, 'no WebSocket here but /containers/{id}/exec');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: socketPath, backlog: this.limits.backlog }, () => resolve());
    });
    chmodSync(socketPath, 0o660);
    this.servers.push(server);
  }

  /** The API (and the dashboard) on TCP; HTTPS with `tls`. Returns the port it got. */
  async listenTcp(host: string, port: number, tls?: ServedCertificate): Promise<number> {
    const server = this.createServer(this.handleTcp, tls);
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => (this.execTcp.matches(req) ? this.execTcp : this.upgrades).handle(req, socket, head));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host, backlog: this.limits.backlog }, () => resolve());
    });
    this.servers.push(server);
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  async close(): Promise<void> {
    this.streams.close();
    this.upgrades.close();
    this.execTcp.close();
    this.execUnix.close();
    await Promise.all(
      this.servers.map(
        (s) =>
          new Promise<void>((r) => {
            s.close(() => r());
            s.closeAllConnections();
          }),
      ),
    );
  }
}
