/**
 * The HTTP edge: limits and the parsing of what a client sends before any route sees it.
 * A client's mistake here is always a 4xx (never a 500, a reset or a hang).
 */
import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:https';
import type { ServerTls } from '../core/server-tls.js';
import type { Duplex } from 'node:stream';
import type { TSchema } from '@sinclair/typebox';
import { HeadersTooLarge, InvalidArgument, PayloadTooLarge } from '../core/errors.js';

export interface EdgeLimits {
  /** JSON request bodies; a route may declare its own (Route.maxBodyBytes). */
  maxBodyBytes: number;
  /** Request line plus headers (Node's maxHeaderSize): 431 beyond it. */
  maxHeaderBytes: number;
  /** Path plus query string: 431 beyond it. */
  maxUrlBytes: number;
  /** A request's line and headers must arrive within this (408 and close); a JSON body may not stall longer (400 and close). */
  headersTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. Responses in progress (streams) are exempt. */
  idleTimeoutMs: number;
  /** Requests in flight before new ones get 503 + Retry-After; a stream stops counting once it has started. */
  maxInFlight: number;
  /** The listen backlog: connections the kernel queues while the event loop is busy. */
  backlog: number;
  /** How often an open stream's caller is checked again: a revoked one's stream ends within this (open-streams.ts). */
  accessRecheckMs: number;
}

export const DEFAULT_EDGE_LIMITS: Readonly<EdgeLimits> = {
  maxBodyBytes: 4 * 1024 * 1024,
  maxHeaderBytes: 16 * 1024,
  maxUrlBytes: 8 * 1024,
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  maxInFlight: 512,
  backlog: 4096,
  accessRecheckMs: 5_000,
};

/**
 * requestTimeout stays 0: a console session's body (the keyboard) or an image upload lasts as
 * long as it lasts, and Node 20 would cut either at 300 s. Slow clients are bounded by the header
 * timeout (checked by Node's one per-server interval, no timer per request) and the idle timeout.
 */
export function serverOptions(l: EdgeLimits): ServerOptions {
  return {
    requestTimeout: 0,
    headersTimeout: l.headersTimeoutMs,
    keepAliveTimeout: l.idleTimeoutMs,
    maxHeaderSize: l.maxHeaderBytes,
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(l.headersTimeoutMs / 4))),
  };
}

/**
 * The certificate the HTTPS listeners serve (nimbusd --tls-cert), and the listeners serving it,
 * whichever API they belong to: a renewed one goes to all of them at once (SIGHUP).
 */
export class ServedCertificate {
  private readonly servers: TlsServer[] = [];

  constructor(private tls: ServerTls) {}

  /** An HTTPS server of these limits serving the certificate. */
  server(l: EdgeLimits, handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
    const server = createTlsServer({ ...serverOptions(l), cert: this.tls.cert, key: this.tls.key, minVersion: 'TLSv1.2' }, handler);
    this.servers.push(server);
    return server as unknown as Server;
  }

  /** A renewed certificate: connections from now on get it, open ones keep theirs. Returns how many listeners took it. */
  replace(tls: ServerTls): number {
    this.tls = tls;
    for (const server of this.servers) server.setSecureContext({ cert: tls.cert, key: tls.key });
    return this.servers.length;
  }
}

/**
 * A TCP listener's server: HTTPS with `tls`, else HTTP; the same handler, limits and upgrade
 * events either way (an HTTPS server is an HTTP server behind its handshake).
 */
export function createEdgeServer(l: EdgeLimits, handler: (req: IncomingMessage, res: ServerResponse) => void, tls?: ServedCertificate): Server {
  return tls ? tls.server(l, handler) : createServer(serverOptions(l), handler);
}

const REASON: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };

/**
 * Errors Node's parser raises before a request exists (oversized headers, garbage, header
 * timeout): answer them in the API's error format and close, instead of resetting the connection.
 * Node reports a socket more than once; only the first, still writable, gets an answer.
 */
export function onClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (socket.writableEnded) return; // answered already; the close is under way
  if (!socket.writable || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const [status, code, message] =
    err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'HeadersTooLarge', 'request line and headers are larger than the server accepts']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'InvalidArgument', 'request headers not received in time']
        : [400, 'InvalidArgument', `malformed HTTP request (${err.code ?? 'parse error'})`];
  const body = JSON.stringify({ error: { code, message } });
  socket.end(
    `HTTP/1.1 ${status} ${REASON[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
  // Closed once the client has read the answer, or soon: it may still be writing what overflowed.
  socket.resume();
  setTimeout(() => socket.destroy(), 2000).unref();
}

export interface Target {
  /** Still percent-encoded: routes match on it; parameters are decoded after. */
  path: string;
  /** The raw query string, decoded by parseQuery once the caller is known. */
  search: string;
}

/** Only visible ASCII may appear in a request target; anything else must be percent-encoded. */
const NOT_URL_CHAR = /[^\x21-\x7e]/;

/** The request target as path and query string; an oversized one is a 431, a malformed one a 400. */
export function parseTarget(raw: string | undefined, maxUrlBytes: number): Target {
  let target = raw ?? '/';
  if (target.length > maxUrlBytes) throw new HeadersTooLarge(`request path and query are longer than ${maxUrlBytes} bytes`);
  if (NOT_URL_CHAR.test(target)) throw new InvalidArgument('request target has characters that must be percent-encoded');
  if (!target.startsWith('/')) {
    const absolute = /^https?:\/\/[^/?#]*/i.exec(target); // absolute-form, as a proxy sends
    if (!absolute) throw new InvalidArgument('request target must be a path');
    target = target.slice(absolute[0].length) || '/';
  }
  const hash = target.indexOf('#');
  if (hash >= 0) target = target.slice(0, hash);
  const q = target.indexOf('?');
  const rawPath = q >= 0 ? target.slice(0, q) : target;
  if (/\/\.\.?(?:\/|$)/.test(rawPath)) throw new InvalidArgument('request path must not contain "." or ".." segments');
  return { path: rawPath.replace(/\/+$/, '') || '/', search: q >= 0 ? target.slice(q + 1) : '' };
}

/** Malformed percent-encoding or UTF-8 is a 400 naming where it is (decodeURIComponent's URIError was a 500). */
export function decodeComponent(s: string, what: string): string {
  if (!s.includes('%') && !s.includes('+')) return s;
  try {
    return decodeURIComponent(s);
  } catch {
    throw new InvalidArgument(`${what} is not valid percent-encoded UTF-8`);
  }
}

export function parseQuery(qs: string): Record<string, string | string[]> {
  const out = new Map<string, string | string[]>();
  for (const pair of qs.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const rawKey = (eq >= 0 ? pair.slice(0, eq) : pair).replace(/\+/g, ' ');
    const key = decodeComponent(rawKey, 'a query parameter name');
    const value = decodeComponent((eq >= 0 ? pair.slice(eq + 1) : '').replace(/\+/g, ' '), `query parameter "${key.slice(0, 64)}"`);
    const prev = out.get(key);
    out.set(key, prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value]);
  }
  // fromEntries defines own properties: "__proto__" is a key like any other
  return Object.fromEntries(out);
}

/** Whether the request announces a body the server has not read (an early answer must then close). */
export function hasUnreadBody(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const len = req.headers['content-length'];
  return (len !== undefined && len !== '0') || req.headers['transfer-encoding'] !== undefined;
}

/** A body over `limit` by its Content-Length: refused before a byte of it is read. */
export function checkDeclaredLength(req: IncomingMessage, limit: number): void {
  const len = req.headers['content-length'];
  if (len !== undefined && Number(len) > limit) throw new PayloadTooLarge(`request body is larger than ${limit} bytes`);
}

/**
 * An absent or null body where the route has a body schema: {} (then defaults) if every field
 * it requires has a default, else a 400.
 */
export function presentBody(schema: TSchema | undefined, raw: unknown): unknown {
  if (!schema || (raw !== undefined && raw !== null)) return raw;
  const required = Array.isArray(schema.required) ? (schema.required as string[]) : [];
  const props = (schema.properties ?? {}) as Record<string, TSchema>;
  if (required.some((k) => props[k]?.default === undefined)) throw new InvalidArgument('request body required');
  return {};
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A JSON body of at most `limit` bytes: undefined when empty. Past the limit the read stops
 * (the request is paused, not destroyed, so the 413 can still be written) and the caller's
 * answer closes the connection. A body that stalls for `stallMs` is refused the same way: it
 * would otherwise hold an admission slot forever (the socket's own inactivity timer, no new one).
 */
export function readJsonBody(req: IncomingMessage, limit: number, stallMs: number): Promise<unknown> {
  checkDeclaredLength(req, limit);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
      req.socket.setTimeout(0); // the server's own (no timeout while a request is served)
      req.off('timeout', onStall);
    };
    const onStall = () => {
      done();
      req.pause();
      reject(new InvalidArgument(`request body stalled: nothing received for ${stallMs} ms`));
    };
    // On the request, not the socket: without a request listener Node destroys the socket unanswered.
    req.setTimeout(stallMs, onStall);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) {
        chunks.push(chunk);
        return;
      }
      done();
      req.pause();
      reject(new PayloadTooLarge(`request body is larger than ${limit} bytes`));
    };
    const onEnd = () => {
      done();
      try {
        resolve(size === 0 ? undefined : parseJson(Buffer.concat(chunks, size)));
      } catch (e) {
        reject(e);
      }
    };
    const onError = () => {
      done();
      reject(new InvalidArgument('request body was not received whole'));
    };
    const onClose = () => {
      if (!req.complete) onError();
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

function parseJson(bytes: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new InvalidArgument('request body is not valid UTF-8');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new InvalidArgument('request body is not valid JSON');
  }
}
