/**
 * The CLI's only way to Nimbus: HTTP to nimbusd over its unix socket (default
 * /run/nimbus/nimbus.sock, NIMBUS_SOCKET or --socket) or TCP (NIMBUS_HOST or
 * --host tcp://127.0.0.1:PORT). Error bodies {"error":{code,message}} become ApiError.
 *
 * Several control-plane replicas: NIMBUS_HOST / --host take endpoints separated by commas.
 * A request goes to the endpoint that answered last in this run (the first one to begin
 * with), then to the next ones: a request that never reached a server (connection refused,
 * unreachable, not connected within connectTimeoutMs) moves on whatever its method; one whose
 * connection broke after it was sent moves on only for GET and HEAD (a create is never sent
 * twice blindly). An HTTP answer, errors included, is an answer: it does not move on.
 */
import { readFileSync } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { rootCertificates } from 'node:tls';
import type { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import type { WebSocket } from 'ws';
import { readStoredToken } from './credentials.js';

/**
 * `ws` takes ~45 ms to load here, half of what the whole CLI's modules took: loaded by the
 * commands that open a WebSocket (an interactive exec or attach), not by every `nimbus` run.
 */
const requireCjs = createRequire(import.meta.url);
let ws: typeof import('ws') | undefined;
const loadWs = (): typeof import('ws') => (ws ??= requireCjs('ws') as typeof import('ws'));

export const DEFAULT_SOCKET = '/run/nimbus/nimbus.sock';

export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    /** HTTP status; 0 when the daemon could not be reached. */
    readonly status: number,
    /** The typed error code (NotFound, Conflict, ...). */
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

async function readText(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

/** The body cut at each separator (NDJSON records, SSE blocks); a trailing unterminated record is yielded too. */
export async function* splitRecords(body: AsyncIterable<Buffer | string>, separator: RegExp): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const c of body) {
    buf += typeof c === 'string' ? c : decoder.decode(c, { stream: true });
    let m: RegExpExecArray | null;
    while ((m = separator.exec(buf))) {
      yield buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
    }
  }
  buf += decoder.decode();
  if (buf.trim()) yield buf;
}

/** The data of one SSE block ("data:" lines joined by newlines), or undefined for comments/keep-alives. */
export function sseData(block: string): string | undefined {
  const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, ''));
  return data.length ? data.join('\n') : undefined;
}

/** A unix socket, or TCP (HTTPS when `tls`; `ca`: the system's CAs and the one given, absent: the system's alone). */
type Target = { socketPath: string } | { host: string; port: number; tls?: { ca?: string[] } };

export interface ClientOptions {
  socket?: string;
  /** One endpoint or several separated by commas (replicas): tcp://HOST:PORT, HOST:PORT or unix:///path. */
  host?: string;
  /** Sent as ?project= with every request that names none (routes that take no project ignore it). */
  project?: string;
  env?: NodeJS.ProcessEnv;
  /** With several endpoints, a TCP connection not made within this moves on (default 3,000 ms). */
  connectTimeoutMs?: number;
  /** A CA file (PEM) https:// hosts' certificates may chain to, beside the system's (--tls-ca; env NIMBUS_TLS_CA). */
  tlsCa?: string;
}

/** The request never reached a server: safe to send elsewhere, whatever the method. */
class NotDelivered extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

/** The connection broke after the request went out: the server may have acted on it. */
class MaybeDelivered extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

/** Per list of endpoints, the one that answered last in this process (every client of a CLI run shares it). */
const lastAnswered = new Map<string, number>();

function parseEndpoint(host: string, ca: string[] | undefined): Target {
  if (host.startsWith('unix://')) return { socketPath: host.slice('unix://'.length) };
  let u: URL;
  try {
    u = new URL(/^[a-z]+:\/\//.test(host) ? host.replace(/^tcp:/, 'http:') : `http://${host}`);
  } catch {
    throw new ApiError(0, 'InvalidArgument', `invalid host "${host}": use tcp://HOST:PORT, https://HOST:PORT or unix:///path`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ApiError(0, 'InvalidArgument', `invalid host "${host}": use tcp://HOST:PORT, https://HOST:PORT or unix:///path`);
  const secure = u.protocol === 'https:';
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (secure ? 443 : 80)), ...(secure ? { tls: ca ? { ca } : {} } : {}) };
}

const describeTarget = (t: Target): string => ('socketPath' in t ? t.socketPath : `${t.tls ? 'https' : 'tcp'}://${t.host}:${t.port}`);

/** The CAs an https:// host may chain to: the system's and the file's (read once); an unreadable file is a usage error naming it. */
function readCa(file: string | undefined): string[] | undefined {
  if (!file) return undefined;
  try {
    return [...rootCertificates, readFileSync(file, 'utf8')];
  } catch (e) {
    throw new ApiError(0, 'InvalidArgument', `cannot read the CA file ${file} (--tls-ca, NIMBUS_TLS_CA): ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** TLS errors that mean the server's certificate is not trusted or not for this name (not that the server is down). */
const CERTIFICATE_ERRORS = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_UNTRUSTED', 'CERT_REJECTED']);

export class ApiClient {
  private readonly targets: Target[];
  private readonly token: string | undefined;
  private readonly project: string | undefined;
  private readonly connectTimeoutMs: number;
  private readonly endpointsKey: string;

  constructor(opts: ClientOptions = {}) {
    const env = opts.env ?? process.env;
    this.token = env.NIMBUS_TOKEN || readStoredToken(env);
    this.project = opts.project || env.NIMBUS_PROJECT || undefined;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3_000;
    // Precedence: --socket, --host, NIMBUS_SOCKET, NIMBUS_HOST, the default socket.
    const host = opts.socket ? undefined : (opts.host ?? (env.NIMBUS_SOCKET ? undefined : env.NIMBUS_HOST));
    const hosts = (host ?? '').split(',').map((h) => h.trim()).filter(Boolean);
    const ca = hosts.some((h) => h.startsWith('https://')) ? readCa(opts.tlsCa ?? (env.NIMBUS_TLS_CA || undefined)) : undefined;
    this.targets = hosts.length ? hosts.map((h) => parseEndpoint(h, ca)) : [{ socketPath: opts.socket ?? env.NIMBUS_SOCKET ?? DEFAULT_SOCKET }];
    this.endpointsKey = this.targets.map(describeTarget).join(',');
  }

  /** Where requests go: "/run/nimbus/nimbus.sock" or "tcp://127.0.0.1:8080" (the one tried first when there are several). */
  describe(): string {
    return describeTarget(this.targets[lastAnswered.get(this.endpointsKey) ?? 0]!);
  }

  /** Every endpoint, in the order given. */
  endpoints(): string[] {
    return this.targets.map(describeTarget);
  }

  /**
   * Send a request; resolves with the response once its headers arrive, whatever the status.
   * Moves on to the next endpoint as the header says.
   */
  private async send(method: string, path: string, body?: unknown, raw?: { stream: Readable; contentType: string }, signal?: AbortSignal): Promise<IncomingMessage> {
    const first = lastAnswered.get(this.endpointsKey) ?? 0;
    const several = this.targets.length > 1;
    const tried: string[] = [];
    for (let i = 0; i < this.targets.length; i++) {
      const index = (first + i) % this.targets.length;
      const target = this.targets[index]!;
      try {
        const res = await this.sendTo(target, method, path, body, raw, signal, several);
        lastAnswered.set(this.endpointsKey, index);
        return res;
      } catch (e) {
        if (e instanceof NotDelivered || (e instanceof MaybeDelivered && (method === 'GET' || method === 'HEAD') && !raw)) {
          tried.push(`${describeTarget(target)} (${e.code})`);
          continue;
        }
        if (e instanceof MaybeDelivered) {
          throw new ApiError(0, 'Unavailable', `the connection to nimbusd at ${describeTarget(target)} broke after the request was sent (${e.code}): it may have been done; a ${method} is not sent again elsewhere, check before retrying`);
        }
        throw e;
      }
    }
    if (!several) throw new ApiError(0, 'Unavailable', `cannot reach nimbusd at ${tried[0]}: is it running? (npm start)`);
    throw new ApiError(0, 'Unavailable', `cannot reach nimbusd at any of its endpoints: ${tried.join(', ')}`);
  }

  /** One attempt at one endpoint; NotDelivered / MaybeDelivered say whether the request may have reached it. */
  private sendTo(target: Target, method: string, path: string, body: unknown, raw: { stream: Readable; contentType: string } | undefined, signal: AbortSignal | undefined, several: boolean): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers: Record<string, string | number> = { accept: 'application/json' };
      if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
      if (raw) headers['content-type'] = raw.contentType;
      if (this.token) headers.authorization = `Bearer ${this.token}`;
      if (this.project && !/[?&]project=/.test(path)) path += `${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(this.project)}`;
      let connected = false;
      let connectTimer: NodeJS.Timeout | undefined;
      const onStreamError = (e: Error) => req.destroy(e);
      const onResponse = (res: IncomingMessage) => {
        clearTimeout(connectTimer);
        resolve(res);
      };
      const where = 'socketPath' in target ? { socketPath: target.socketPath } : { host: target.host, port: target.port };
      const req = 'tls' in target && target.tls
        ? httpsRequest({ ...where, ...(target.tls.ca ? { ca: target.tls.ca } : {}), method, path, headers, ...(signal ? { signal } : {}) }, onResponse)
        : request({ ...where, method, path, headers, ...(signal ? { signal } : {}) }, onResponse);
      const sendBody = () => {
        if (raw) {
          raw.stream.once('error', onStreamError);
          raw.stream.pipe(req);
        } else req.end(payload);
      };
      req.on('socket', (socket) => {
        if (!socket.connecting) {
          connected = true; // a kept-alive connection
          sendBody();
          return;
        }
        if (several && 'host' in target) {
          connectTimer = setTimeout(() => req.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })), this.connectTimeoutMs);
        }
        socket.once('connect', () => {
          clearTimeout(connectTimer);
          connected = true;
          // the body only once connected: a refused connection has consumed none of a raw stream
          sendBody();
        });
      });
      req.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(connectTimer);
        raw?.stream.off('error', onStreamError);
        if (signal?.aborted) reject(e);
        else if (CERTIFICATE_ERRORS.has(e.code ?? '')) {
          // not a server that is down: trying another would not help, and the message must say why
          reject(new ApiError(0, 'Unavailable', `nimbusd at ${describeTarget(target)} presented a certificate this client does not trust (${e.code}: ${e.message}): give the CA that signed it with --tls-ca FILE or NIMBUS_TLS_CA`));
        }
        else if (!connected) reject(new NotDelivered(e.code ?? e.message));
        else if (['ECONNRESET', 'EPIPE'].includes(e.code ?? '') || e.message === 'socket hang up') reject(new MaybeDelivered(e.code ?? e.message));
        else reject(e);
      });
      // headers now, not with the first chunk: a console's input may wait for its output
      if (raw) req.flushHeaders();
    });
  }

  private async fail(res: IncomingMessage): Promise<never> {
    const status = res.statusCode ?? 0;
    const text = await readText(res);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new ApiError(status, status >= 500 ? 'Internal' : 'InvalidArgument', text.trim() || `HTTP ${status} ${res.statusMessage ?? ''}`.trim());
    }
    const e = (parsed as { error?: { code?: unknown; message?: unknown; details?: Record<string, unknown> } }).error;
    throw new ApiError(status, typeof e?.code === 'string' ? e.code : 'Internal', typeof e?.message === 'string' ? e.message : text, e?.details);
  }

  private async ok(res: IncomingMessage): Promise<IncomingMessage> {
    return (res.statusCode ?? 500) >= 400 ? this.fail(res) : res;
  }

  /** A JSON request; resolves with the parsed body (undefined for 204). */
  async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.ok(await this.send(method, path, body, undefined, signal));
    const text = await readText(res);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** POST a raw stream (e.g. a tar with application/x-tar); resolves with the JSON answer. */
  async upload<T>(path: string, stream: Readable, contentType: string): Promise<T> {
    const res = await this.ok(await this.send('POST', path, undefined, { stream, contentType }));
    const text = await readText(res);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /**
   * Open a newline-delimited JSON stream. Resolves once the daemon has answered
   * (so it has registered the stream); an error status rejects with ApiError.
   * An in-band {"error":…} record (a failure mid-stream) is thrown as ApiError.
   */
  async openNdjson<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<AsyncIterable<T>> {
    const res = await this.ok(await this.send(method, path, body, undefined, signal));
    return (async function* () {
      for await (const line of splitRecords(res, /\r?\n/)) {
        if (!line.trim()) continue;
        yield inBand<T>(JSON.parse(line), res.statusCode ?? 200);
      }
    })();
  }

  /**
   * A two-way stream over one request: `input` goes up as the request body while
   * the answer streams down as NDJSON (the VM serial console).
   */
  async openDuplexNdjson<T>(path: string, input: Readable, contentType: string, signal?: AbortSignal): Promise<AsyncIterable<T>> {
    const res = await this.ok(await this.send('POST', path, undefined, { stream: input, contentType }, signal));
    return (async function* () {
      for await (const line of splitRecords(res, /\r?\n/)) {
        if (!line.trim()) continue;
        yield inBand<T>(JSON.parse(line), res.statusCode ?? 200);
      }
    })();
  }

  /**
   * A WebSocket to the daemon's endpoint answered last (or the first): ws+unix:// for the socket,
   * ws:// for TCP, with the token and project every request carries. The caller waits for 'open'.
   */
  webSocket(path: string, protocol: string): WebSocket {
    const { WebSocket } = loadWs();
    const target = this.targets[lastAnswered.get(this.endpointsKey) ?? 0]!;
    if (this.project && !/[?&]project=/.test(path)) path += `${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(this.project)}`;
    const url = 'socketPath' in target ? `ws+unix://${target.socketPath}:${path}` : `${target.tls ? 'wss' : 'ws'}://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}${path}`;
    const ca = 'tls' in target && target.tls?.ca ? { ca: target.tls.ca } : {};
    return new WebSocket(url, protocol, { headers: this.token ? { authorization: `Bearer ${this.token}` } : {}, handshakeTimeout: 10_000, ...ca });
  }

  async *ndjson<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): AsyncGenerator<T> {
    yield* await this.openNdjson<T>(method, path, body, signal);
  }

  /** Open a server-sent event stream; each item is one event's parsed data. Aborting the signal ends it quietly. */
  async openSse<T>(path: string, signal?: AbortSignal): Promise<AsyncIterable<T>> {
    const res = await this.ok(await this.send('GET', path, undefined, undefined, signal));
    const onAbort = () => res.destroy();
    signal?.addEventListener('abort', onAbort, { once: true });
    return (async function* () {
      try {
        for await (const block of splitRecords(res, /\r?\n\r?\n/)) {
          const data = sseData(block);
          if (data !== undefined) yield inBand<T>(JSON.parse(data), res.statusCode ?? 200);
        }
      } catch (e) {
        if (!signal?.aborted) throw e;
      } finally {
        signal?.removeEventListener('abort', onAbort);
        res.destroy();
      }
    })();
  }

  async *sse<T>(path: string, signal?: AbortSignal): AsyncGenerator<T> {
    try {
      yield* await this.openSse<T>(path, signal);
    } catch (e) {
      if (!signal?.aborted) throw e;
    }
  }
}

function inBand<T>(v: unknown, status: number): T {
  if (v && typeof v === 'object' && 'error' in v) {
    const e = (v as { error?: { code?: string; message?: string } }).error;
    if (e && typeof e === 'object') throw new ApiError(status >= 400 ? status : 500, e.code ?? 'Internal', e.message ?? 'stream failed');
  }
  return v as T;
}
