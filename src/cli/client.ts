/**
 * The CLI's only way to Nimbus: HTTP to nimbusd over its unix socket (default
 * /run/nimbus/nimbus.sock, NIMBUS_SOCKET or --socket) or TCP (NIMBUS_HOST or
 * --host tcp://127.0.0.1:PORT). Error bodies {"error":{code,message}} become ApiError.
 */
import { request, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import { readStoredToken } from './credentials.js';

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

type Target = { socketPath: string } | { host: string; port: number };

export interface ClientOptions {
  socket?: string;
  host?: string;
  /** Sent as ?project= with every request that names none (routes that take no project ignore it). */
  project?: string;
  env?: NodeJS.ProcessEnv;
}

export class ApiClient {
  private readonly target: Target;
  private readonly token: string | undefined;
  private readonly project: string | undefined;

  constructor(opts: ClientOptions = {}) {
    const env = opts.env ?? process.env;
    this.token = env.NIMBUS_TOKEN || readStoredToken(env);
    this.project = opts.project || env.NIMBUS_PROJECT || undefined;
    // Precedence: --socket, --host, NIMBUS_SOCKET, NIMBUS_HOST, the default socket.
    const host = opts.socket ? undefined : (opts.host ?? (env.NIMBUS_SOCKET ? undefined : env.NIMBUS_HOST));
    if (host && !host.startsWith('unix://')) {
      let u: URL;
      try {
        u = new URL(/^[a-z]+:\/\//.test(host) ? host.replace(/^tcp:/, 'http:') : `http://${host}`);
      } catch {
        throw new ApiError(0, 'InvalidArgument', `invalid host "${host}": use tcp://HOST:PORT or unix:///path`);
      }
      this.target = { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 80) };
    } else {
      this.target = { socketPath: host ? host.slice('unix://'.length) : (opts.socket ?? env.NIMBUS_SOCKET ?? DEFAULT_SOCKET) };
    }
  }

  /** Where requests go: "/run/nimbus/nimbus.sock" or "tcp://127.0.0.1:8080". */
  describe(): string {
    return 'socketPath' in this.target ? this.target.socketPath : `tcp://${this.target.host}:${this.target.port}`;
  }

  /** Send a request; resolves with the response once its headers arrive, whatever the status. */
  private send(method: string, path: string, body?: unknown, raw?: { stream: Readable; contentType: string }, signal?: AbortSignal): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers: Record<string, string | number> = { accept: 'application/json' };
      if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
      if (raw) headers['content-type'] = raw.contentType;
      if (this.token) headers.authorization = `Bearer ${this.token}`;
      if (this.project && !/[?&]project=/.test(path)) path += `${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(this.project)}`;
      const req = request({ ...this.target, method, path, headers, ...(signal ? { signal } : {}) }, resolve);
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (['ENOENT', 'ECONNREFUSED', 'EACCES', 'ENOTSOCK', 'EHOSTUNREACH', 'ENOTFOUND', 'ETIMEDOUT'].includes(e.code ?? '')) {
          reject(new ApiError(0, 'Unavailable', `cannot reach nimbusd at ${this.describe()} (${e.code}): is it running? (npm start)`));
        } else reject(e);
      });
      if (raw) {
        // headers now, not with the first chunk: a console's input may wait for its output
        req.flushHeaders();
        raw.stream.once('error', (e) => req.destroy(e));
        raw.stream.pipe(req);
      } else req.end(payload);
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
