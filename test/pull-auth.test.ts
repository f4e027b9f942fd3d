/**
 * Registry authentication against the real docker-registry behind a loopback
 * auth front: Bearer-token challenges (as Docker Hub's token service) and Basic.
 * Pulls go through the agent's real client into a real content store.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalContentStore } from '../src/agent/content/local-content-store.js';
import { pullImage } from '../src/agent/images/pull.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';

const USER = 'alice';
const PASS = 's3cret';
const TOKEN = 'token-for-alice';

interface AuthFront {
  host: string;
  scopes: string[];
  close(): Promise<void>;
}

/** Forwards to the registry only requests carrying the right credentials; answers challenges otherwise. */
async function authFront(registryHost: string, mode: 'bearer' | 'basic'): Promise<AuthFront> {
  const scopes: string[] = [];
  let self = '';
  const basicOk = (req: IncomingMessage) => req.headers.authorization === `Basic ${Buffer.from(`${USER}:${PASS}`).toString('base64')}`;
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
      const repo = /^\/v2\/(.+?)\/(manifests|blobs)\//.exec(url.pathname)?.[1] ?? '';
      res.writeHead(401, {
        'www-authenticate': mode === 'bearer'
          ? `Bearer realm="http://${self}/token",service="nimbus-test",scope="repository:${repo}:pull"`
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
  return { host: self, scopes, close: () => new Promise((r) => server.close(() => r())) };
}

describe('registry authentication', () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startTestRegistryWithImages();
  });
  after(async () => {
    await registry?.stop();
  });

  for (const mode of ['bearer', 'basic'] as const) {
    test(`${mode}: refused without credentials, pulled with them`, async (t) => {
      const front = await authFront(registry.host, mode);
      const dir = mkdtempSync(join(tmpdir(), 'nimbus-auth-'));
      t.after(async () => {
        await front.close();
        rmSync(dir, { recursive: true, force: true });
      });
      const store = new LocalContentStore(dir);
      const ref = `${front.host}/nimbus-test/busybox:latest`;
      await assert.rejects(pullImage(ref, { store }), { code: 'Unauthenticated' });
      await assert.rejects(pullImage(ref, { store, credentials: { username: USER, password: 'wrong' } }), { code: 'Unauthenticated' });
      const img = await pullImage(ref, { store, credentials: { username: USER, password: PASS } });
      assert.equal(img.layers.length, 3);
      for (const l of img.layers) assert.ok(await store.info(l.digest), `layer ${l.digest} stored`);
      if (mode === 'bearer') assert.ok(front.scopes.includes('repository:nimbus-test/busybox:pull'), `token asked for the pull scope: ${front.scopes.join(', ')}`);
    });
  }

  test('a tag that does not exist is NotFound naming the reference; an index without the platform says which it has', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'nimbus-auth-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const store = new LocalContentStore(dir);
    await assert.rejects(pullImage(`${registry.host}/nimbus-test/busybox:nope`, { store }), { code: 'NotFound', message: /nimbus-test\/busybox nope/ });
    await assert.rejects(pullImage(`${registry.host}/nimbus-test/busybox:latest`, { store, platform: { os: 'linux', architecture: 's390x' } }), {
      code: 'NotFound', message: /available: linux\/arm64, linux\/amd64/,
    });
    await assert.rejects(pullImage(`127.0.0.1:1/nothing/here:latest`, { store }), { code: 'Unavailable' });
  });
});
