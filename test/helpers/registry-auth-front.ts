/**
 * A loopback auth front for the registry fixture: forwards to the registry only requests that
 * carry the right credentials and answers a challenge otherwise: Bearer (a token service at
 * /token, as Docker Hub's) or Basic (as an htpasswd registry). Shared by test/pull-auth.test.ts
 * and the docker CLI's login test.
 */
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { allowForDaemons } from '../../scripts/fixtures/registry.js';

export const FRONT_USER = 'alice';
export const FRONT_PASS = 's3cret';
const TOKEN = 'token-for-alice';

export interface AuthFront {
  host: string;
  /** The scopes the token service was asked for (a login asks for none: ''). */
  scopes: string[];
  close(): Promise<void>;
}

export async function authFront(registryHost: string, mode: 'bearer' | 'basic', user = FRONT_USER, pass = FRONT_PASS): Promise<AuthFront> {
  const scopes: string[] = [];
  let self = '';
  const basicOk = (req: IncomingMessage) => req.headers.authorization === `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', `http://${self}`);
    if (url.pathname === '/token') {
      if (!basicOk(req)) return void res.writeHead(401).end();
      scopes.push(url.searchParams.get('scope') ?? '');
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ token: TOKEN }));
    }
    const authorised = mode === 'bearer' ? req.headers.authorization === `Bearer ${TOKEN}` : basicOk(req);
    if (!authorised) {
      const repo = /^\/v2\/(.+?)\/(manifests|blobs)\//.exec(url.pathname)?.[1];
      res.writeHead(401, {
        'www-authenticate': mode === 'bearer'
          ? `Bearer realm="http://${self}/token",service="nimbus-test"${repo ? `,scope="repository:${repo}:pull"` : ''}`
          : 'Basic realm="nimbus-test"',
      });
      return void res.end();
    }
    const fwd = request({ host: '127.0.0.1', port: Number(registryHost.split(':')[1]), path: req.url, method: req.method, headers: { ...req.headers, host: registryHost } }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    fwd.on('error', () => res.writeHead(502).end());
    req.pipe(fwd);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  self = `127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  allowForDaemons(self); // a registry's stand-in, named as the registry is
  return {
    host: self, scopes,
    close: () => new Promise((r) => {
      server.close(() => r());
      server.closeAllConnections();
    }),
  };
}
