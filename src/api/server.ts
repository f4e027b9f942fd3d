import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { Value } from '@sinclair/typebox/value';
import type { TSchema } from '@sinclair/typebox';
import { InvalidArgument, NotFound, toNimbusError } from '../core/errors.js';
import { logger } from '../core/log.js';
import type { Services } from '../control/services.js';
import { HTTP_STATUS } from './http-errors.js';
import { isStreamBody, type Route, type RouteResult } from './route.js';
import { authenticate, authorize, needsBody, type Transport } from './authz.js';

const log = logger('api');
const MAX_BODY = 4 * 1024 * 1024;

interface CompiledRoute {
  route: Route;
  pattern: RegExp;
  paramNames: string[];
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

function checkOrThrow(check: TypeCheck<TSchema> | undefined, value: unknown, where: string): unknown {
  if (!check) return value;
  const converted = Value.Convert(check.Schema(), Value.Default(check.Schema(), value));
  if (check.Check(converted)) return converted;
  const first = check.Errors(converted).First();
  const path = first?.path ? first.path.replace(/^\//, '').replace(/\//g, '.') : '';
  throw new InvalidArgument(`invalid ${where}${path ? ` field "${path}"` : ''}: ${first?.message ?? 'does not match schema'}`);
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new InvalidArgument(`request body larger than ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new InvalidArgument('request body is not valid JSON');
  }
}

export function sendError(res: ServerResponse, e: unknown): void {
  const err = toNimbusError(e);
  const status = HTTP_STATUS[err.code];
  if (status >= 500) log.error('request failed', { code: err.code, error: err.message });
  if (res.headersSent) {
    // Mid-stream: report in-band and close; the status line is already gone.
    res.end(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) } }));
}

async function writeStream(res: ServerResponse, kind: 'ndjson' | 'sse', source: AsyncIterable<unknown>, signal: AbortSignal) {
  res.writeHead(200, {
    'content-type': kind === 'sse' ? 'text/event-stream' : 'application/x-ndjson',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  res.flushHeaders();
  try {
    for await (const item of source) {
      if (signal.aborted) break;
      const line = kind === 'sse' ? `data: ${JSON.stringify(item)}\n\n` : JSON.stringify(item) + '\n';
      if (!res.write(line)) await new Promise<void>((r) => { res.once('drain', r); res.once('close', r); });
    }
    res.end();
  } catch (e) {
    sendError(res, e);
  }
}

/**
 * No bound on a whole request: a console session's body (the keyboard) and a large image
 * upload last as long as they last; Node 20 would cut either at 300 s. Headers still have to
 * arrive within headersTimeout (60 s), which is what keeps idle half-open requests out.
 */
const SERVER_OPTIONS = { requestTimeout: 0 } as const;

export class ApiServer {
  private readonly compiled: CompiledRoute[];
  private readonly servers: Server[] = [];

  constructor(routes: Route[], private readonly services: Services) {
    this.compiled = routes.map((route) => ({
      route,
      ...compilePath(route.path),
      ...(route.params ? { params: TypeCompiler.Compile(route.params) } : {}),
      ...(route.query ? { query: TypeCompiler.Compile(route.query) } : {}),
      ...(route.body ? { body: TypeCompiler.Compile(route.body) } : {}),
    }));
  }

  /** Requests from the unix socket (a caller without a token is the local administrator). */
  handle = (req: IncomingMessage, res: ServerResponse): Promise<void> => this.serve(req, res, 'unix');
  /** Requests from TCP: every route but the public ones needs a token. */
  handleTcp = (req: IncomingMessage, res: ServerResponse): Promise<void> => this.serve(req, res, 'tcp');

  private async serve(req: IncomingMessage, res: ServerResponse, transport: Transport): Promise<void> {
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
    });
    try {
      const url = new URL(req.url ?? '/', 'http://nimbus');
      const path = url.pathname.replace(/\/+$/, '') || '/';
      const candidates = this.compiled.filter((c) => c.pattern.test(path));
      const match = candidates.find((c) => c.route.method === req.method);
      if (!match) {
        if (candidates.length) {
          res.setHeader('allow', candidates.map((c) => c.route.method).join(', '));
          throw new InvalidArgument(`method ${req.method} not allowed on ${path}`);
        }
        throw new NotFound(`no route for ${req.method} ${path}`);
      }
      const m = match.pattern.exec(path)!;
      const rawParams = Object.fromEntries(match.paramNames.map((n, i) => [n, decodeURIComponent(m[i + 1] ?? '')]));
      const rawQuery: Record<string, string | string[]> = {};
      for (const key of new Set(url.searchParams.keys())) {
        const all = url.searchParams.getAll(key);
        rawQuery[key] = all.length > 1 ? all : all[0]!;
      }
      // Who is calling, then whether they may: before the body is read, unless the project is named in it.
      let principal;
      try {
        principal = authenticate(req, transport, this.services);
      } catch (e) {
        if (!(match.route.auth && 'public' in match.route.auth)) throw e;
      }
      const params = checkOrThrow(match.params, rawParams, 'path parameter');
      const query = checkOrThrow(match.query, rawQuery, 'query parameter');
      const late = needsBody(match.route);
      let auth = late ? undefined : authorize(match.route, principal, this.services, { params: rawParams, rawQuery, body: undefined });
      const rawBody = req.method === 'GET' || req.method === 'DELETE' || match.route.rawBody ? undefined : await readBody(req);
      const body = checkOrThrow(match.body, rawBody ?? (match.body ? {} : undefined), 'request body');
      auth ??= authorize(match.route, principal, this.services, { params: rawParams, rawQuery, body });
      // The edge resolved a name in the caller's scope: the handler gets the resource's global id.
      if (auth.resource) (params as Record<string, string>)[auth.resource.param] = auth.resource.id;
      const out = await match.route.handler({
        params, query, body, services: this.services, req, auth,
        get signal() {
          return signal();
        },
      } as never);
      const result: RouteResult<unknown> =
        out !== null && typeof out === 'object' && ('body' in out || 'status' in out) && Object.keys(out).every((k) => k === 'body' || k === 'status')
          ? (out as RouteResult<unknown>)
          : { body: out };
      if (isStreamBody(result.body)) {
        await writeStream(res, result.body.kind, result.body.source, signal());
        return;
      }
      const status = result.status ?? match.route.status ?? 200;
      if (result.body === undefined || status === 204) {
        res.writeHead(status === 200 ? 204 : status);
        res.end();
        return;
      }
      const payload = JSON.stringify(result.body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
      res.end(payload);
    } catch (e) {
      sendError(res, e);
    }
  }

  async listenUnix(socketPath: string): Promise<void> {
    mkdirSync(dirname(socketPath), { recursive: true });
    rmSync(socketPath, { force: true });
    const server = createServer(SERVER_OPTIONS, this.handle);
    server.keepAliveTimeout = 60_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    chmodSync(socketPath, 0o660);
    this.servers.push(server);
  }

  async listenTcp(host: string, port: number): Promise<number> {
    const server = createServer(SERVER_OPTIONS, this.handleTcp);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.servers.push(server);
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  async close(): Promise<void> {
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
