/** The CLI's only way to Nimbus: HTTP to nimbusd over its unix socket (or TCP). */
import { request, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';

async function readText(res: IncomingMessage): Promise<string> {
  let text = '';
  for await (const c of res as AsyncIterable<Buffer>) text += c.toString();
  return text;
}

/** The body cut at each separator (records of NDJSON, blocks of SSE). */
async function* records(res: IncomingMessage, separator: string): AsyncGenerator<string> {
  let buf = '';
  for await (const c of res as AsyncIterable<Buffer>) {
    buf += c.toString();
    let at: number;
    while ((at = buf.indexOf(separator)) !== -1) {
      yield buf.slice(0, at);
      buf = buf.slice(at + separator.length);
    }
  }
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export class ApiClient {
  private readonly target: { socketPath: string } | { host: string; port: number };

  constructor(opts: { socket?: string; host?: string }) {
    const host = opts.host ?? process.env.NIMBUS_HOST;
    if (host) {
      const u = new URL(host.replace(/^tcp:/, 'http:'));
      this.target = { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 80) };
    } else {
      this.target = { socketPath: opts.socket ?? process.env.NIMBUS_SOCKET ?? '/run/nimbus/nimbus.sock' };
    }
  }

  describe(): string {
    return 'socketPath' in this.target ? `unix:${this.target.socketPath}` : `tcp://${this.target.host}:${this.target.port}`;
  }

  private send(method: string, path: string, body?: unknown, raw?: { stream: Readable; contentType: string }): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers: Record<string, string | number> = {};
      if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
      if (raw) headers['content-type'] = raw.contentType;
      const token = process.env.NIMBUS_TOKEN;
      if (token) headers.authorization = `Bearer ${token}`;
      const req = request({ ...this.target, method, path, headers }, resolve);
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (['ENOENT', 'ECONNREFUSED', 'EACCES'].includes(e.code ?? '')) {
          reject(new ApiError(0, 'Unavailable', `cannot reach nimbusd at ${this.describe()} (${e.code}): is it running? (npm start)`));
        } else reject(e);
      });
      if (raw) raw.stream.pipe(req);
      else req.end(payload);
    });
  }

  private async fail(res: IncomingMessage): Promise<never> {
    const text = await readText(res);
    try {
      const e = (JSON.parse(text) as { error: { code: string; message: string } }).error;
      throw new ApiError(res.statusCode ?? 0, e.code, e.message);
    } catch (e) {
      if (e instanceof ApiError) throw e;
      throw new ApiError(res.statusCode ?? 0, 'Internal', text || `HTTP ${res.statusCode}`);
    }
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    if ((res.statusCode ?? 500) >= 400) return this.fail(res);
    const text = await readText(res);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async upload<T>(path: string, stream: Readable, contentType: string): Promise<T> {
    const res = await this.send('POST', path, undefined, { stream, contentType });
    if ((res.statusCode ?? 500) >= 400) return this.fail(res);
    return JSON.parse(await readText(res)) as T;
  }

  /** Newline-delimited JSON stream; an in-band {"error":…} line becomes an ApiError. */
  async *ndjson<T>(method: string, path: string, body?: unknown): AsyncGenerator<T> {
    const res = await this.send(method, path, body);
    if ((res.statusCode ?? 500) >= 400) await this.fail(res);
    for await (const line of records(res, '\n')) {
      if (!line.trim()) continue;
      const v = JSON.parse(line) as T & { error?: { code: string; message: string } };
      if (v && typeof v === 'object' && 'error' in v && v.error) throw new ApiError(500, v.error.code, v.error.message);
      yield v as Awaited<T>;
    }
  }

  /** Server-sent events: yields each data payload. */
  async *sse<T>(path: string, signal?: AbortSignal): AsyncGenerator<T> {
    const res = await this.send('GET', path);
    if ((res.statusCode ?? 500) >= 400) await this.fail(res);
    signal?.addEventListener('abort', () => res.destroy());
    try {
      for await (const block of records(res, '\n\n')) {
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data) yield JSON.parse(data) as Awaited<T>;
      }
    } catch (e) {
      if (!signal?.aborted) throw e;
    }
  }
}
