/** One HTTP request to a daemon (TCP port or unix socket), with an optional token and JSON or raw body. */
import { request, type IncomingHttpHeaders } from 'node:http';

export interface Reply { status: number; body: unknown; text: string; headers: IncomingHttpHeaders }

export function call(target: { port: number } | { socketPath: string }, method: string, path: string, opts: { token?: string; body?: unknown; raw?: Buffer; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((ok, fail) => {
    const payload = opts.raw ?? (opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body)));
    const headers: Record<string, string | number> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (payload) {
      headers['content-type'] = opts.raw ? 'application/x-tar' : 'application/json';
      headers['content-length'] = payload.length;
    }
    const where = 'port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath };
    const req = request({ ...where, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let body: unknown;
        try {
          body = text ? JSON.parse(text) : undefined;
        } catch {
          body = text;
        }
        ok({ status: res.statusCode ?? 0, body, text, headers: res.headers });
      });
    });
    req.on('error', fail);
    req.end(payload);
  });
}

