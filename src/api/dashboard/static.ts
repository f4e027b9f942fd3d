/**
 * The web dashboard's files (web/, built into dist/web/ by `npm run build`) under /ui/ on the
 * API's TCP listeners: same origin as the API, so the app needs no CORS and holds no more than
 * its bearer token. Read-only and path-checked: only files under the build directory are ever
 * answered; anything else under /ui/ without an extension is a deep link and gets index.html.
 */
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';

export const DASHBOARD_PREFIX = '/ui';

/** dist/src/api/dashboard → dist/web */
const DEFAULT_ROOT = path.resolve(import.meta.dirname, '../../../web');

/**
 * No inline script, nothing from elsewhere: the app is its own files and the same origin's API
 * ('self' covers same-origin WebSockets too). One concession, for styles only: xterm.js writes
 * its theme and cell sizes into <style> elements and some cell colours into style attributes, so
 * inline styles are allowed (scripts never are). data: for the empty favicon.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'", "script-src 'self'", "style-src 'self'", "style-src-elem 'self' 'unsafe-inline'", "style-src-attr 'unsafe-inline'",
  "img-src 'self' data:", "font-src 'self'",
  "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'",
].join('; ');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

const SECURITY_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
};

/** Whether a request target is the dashboard's (/ui or below), before the API's routing. */
export function isDashboardPath(url: string | undefined): boolean {
  if (!url) return false;
  const p = url.split('?', 1)[0]!;
  return p === DASHBOARD_PREFIX || p.startsWith(`${DASHBOARD_PREFIX}/`);
}

function plain(res: ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...extra });
  res.end(text);
}

export class DashboardFiles {
  private rootReal: string | undefined;

  constructor(private readonly root = process.env.NIMBUS_DASHBOARD_DIR || DEFAULT_ROOT) {}

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'method not allowed\n', { allow: 'GET, HEAD' });
    const raw = (req.url ?? '/').split('?', 1)[0]!;
    if (raw === DASHBOARD_PREFIX) return plain(res, 308, '', { location: `${DASHBOARD_PREFIX}/` });
    let rel: string;
    try {
      rel = decodeURIComponent(raw.slice(DASHBOARD_PREFIX.length + 1));
    } catch {
      return plain(res, 400, 'bad path\n');
    }
    // NUL and backslashes have no business in a file name here; ".." segments are refused, not resolved
    if (rel.includes('\0') || rel.includes('\\') || rel.split('/').some((s) => s === '..' || s === '.')) return plain(res, 400, 'bad path\n');
    const root = await this.realRoot();
    if (!root) return plain(res, 503, 'the dashboard is not built: run npm run build\n');
    const file = await this.existingFile(root, rel);
    if (file) return this.send(req, res, file, rel.startsWith('assets/'));
    // a file name that is not there is a 404; any other path is the app's own route
    if (path.posix.extname(rel) !== '') return plain(res, 404, 'not found\n');
    const index = await this.existingFile(root, 'index.html');
    if (!index) return plain(res, 503, 'the dashboard is not built: run npm run build\n');
    return this.send(req, res, index, false);
  }

  private async realRoot(): Promise<string | undefined> {
    if (this.rootReal) return this.rootReal;
    try {
      this.rootReal = await realpath(this.root);
      return this.rootReal;
    } catch {
      return undefined; // not built yet: asked again next time
    }
  }

  /** The file's real path if it is a regular file inside the root (symbolic links out are refused). */
  private async existingFile(root: string, rel: string): Promise<{ path: string; size: number; mtime: Date } | undefined> {
    if (rel === '' || rel.endsWith('/')) return undefined;
    try {
      const real = await realpath(path.join(root, rel));
      if (!real.startsWith(root + path.sep)) return undefined;
      const st = await stat(real);
      return st.isFile() ? { path: real, size: st.size, mtime: st.mtime } : undefined;
    } catch {
      return undefined;
    }
  }

  private send(req: IncomingMessage, res: ServerResponse, file: { path: string; size: number; mtime: Date }, hashed: boolean): void {
    const type = CONTENT_TYPES[path.extname(file.path).toLowerCase()] ?? 'application/octet-stream';
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': type,
      'content-length': file.size,
      'last-modified': file.mtime.toUTCString(),
      // Vite names assets by their content hash: they never change under a name. index.html does.
      'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const stream = createReadStream(file.path);
    stream.on('error', () => res.destroy());
    stream.pipe(res);
  }
}
