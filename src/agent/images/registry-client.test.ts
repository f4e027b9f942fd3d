import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { RegistryClient, TokenCache, isPlainHttpRegistry, parseChallenge, parseChallenges } from './registry-client.js';

async function serve(handler: (req: IncomingMessage, res: ServerResponse, host: string) => void): Promise<{ host: string; close(): Promise<void> }> {
  let host = '';
  const server: Server = createServer((req, res) => handler(req, res, host));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  host = `127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  return {
    host,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

test('WWW-Authenticate parsing: quoted values with commas, bare values, several challenges', () => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull,push' },
  });
  assert.deepEqual(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'basic', params: { realm: 'Registry Realm' } });
  assert.deepEqual(parseChallenge('Bearer realm=http://x/token, service=svc'), { scheme: 'bearer', params: { realm: 'http://x/token', service: 'svc' } });
  assert.deepEqual(parseChallenge('Bearer realm="a\\"b"'), { scheme: 'bearer', params: { realm: 'a"b' } });
  const many = parseChallenges('Basic realm="r", Bearer realm="http://t/token",service="s"');
  assert.deepEqual(many.map((c) => c.scheme), ['basic', 'bearer']);
  assert.equal(many[1]!.params.service, 's');
  assert.equal(parseChallenge(''), undefined);
});

test('plain HTTP only for loopback and listed insecure registries', () => {
  assert.ok(isPlainHttpRegistry('localhost:5000'));
  assert.ok(isPlainHttpRegistry('127.0.0.5:80'));
  assert.ok(isPlainHttpRegistry('[::1]:5000'));
  assert.ok(!isPlainHttpRegistry('10.1.2.3:5000'));
  assert.ok(isPlainHttpRegistry('10.1.2.3:5000', ['10.1.2.3:5000']));
  assert.equal(new RegistryClient('quay.io', 'a/b').base, 'https://quay.io/v2/a/b');
  assert.equal(new RegistryClient('docker.io', 'library/busybox').base, 'https://registry-1.docker.io/v2/library/busybox');
  assert.equal(new RegistryClient('localhost:5000', 'x').base, 'http://localhost:5000/v2/x');
  assert.equal(new RegistryClient('reg.lan:5000', 'x', { insecureRegistries: ['reg.lan:5000'] }).base, 'http://reg.lan:5000/v2/x');
});

test('token cache expires entries', async () => {
  const c = new TokenCache();
  c.set('k', 't', 1); // renewed early: at most 1 s
  assert.equal(c.get('k'), 't');
  c.set('k2', 't2', 300);
  assert.equal(c.get('k2'), 't2');
  c.delete('k2');
  assert.equal(c.get('k2'), undefined);
});

test('bearer: token fetched once per scope and reused by later clients; credentials go to the realm', async (t) => {
  const tokenRequests: { scope: string | null; auth: string | undefined }[] = [];
  const srv = await serve((req, res, host) => {
    const url = new URL(req.url!, `http://${host}`);
    if (url.pathname === '/token') {
      tokenRequests.push({ scope: url.searchParams.get('scope'), auth: req.headers.authorization });
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ access_token: `tok-${url.searchParams.get('scope')}`, expires_in: 300 }));
    }
    const repo = /^\/v2\/(.+?)\/manifests\//.exec(url.pathname)?.[1];
    if (req.headers.authorization !== `Bearer tok-repository:${repo}:pull`) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="svc",scope="repository:${repo}:pull"` });
      return void res.end();
    }
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': 'sha256:' + '0'.repeat(64) });
    res.end('{"schemaVersion":2}');
  });
  t.after(() => srv.close());
  const cache = new TokenCache();
  const credentials = { username: 'u', password: 'p' };
  const a = new RegistryClient(srv.host, 'one/repo', { allowedRegistries: [srv.host], tokenCache: cache, credentials });
  assert.equal((await a.getManifest('latest')).body.toString(), '{"schemaVersion":2}');
  await a.getManifest('latest');
  await new RegistryClient(srv.host, 'one/repo', { allowedRegistries: [srv.host], tokenCache: cache, credentials }).getManifest('v2');
  assert.equal(tokenRequests.length, 1, 'one token for one scope');
  assert.equal(tokenRequests[0]!.auth, `Basic ${Buffer.from('u:p').toString('base64')}`);
  await new RegistryClient(srv.host, 'other/repo', { allowedRegistries: [srv.host], tokenCache: cache, credentials }).getManifest('latest');
  assert.deepEqual(tokenRequests.map((r) => r.scope), ['repository:one/repo:pull', 'repository:other/repo:pull']);
  // Different credentials never reuse another user's token.
  await new RegistryClient(srv.host, 'one/repo', { allowedRegistries: [srv.host], tokenCache: cache, credentials: { username: 'v', password: 'q' } }).getManifest('latest');
  assert.equal(tokenRequests.length, 3);
  const head = await a.headManifest('latest');
  assert.equal(head.digest, 'sha256:' + '0'.repeat(64));
  assert.equal(head.mediaType, 'application/vnd.oci.image.manifest.v1+json');
});

test('basic: no credentials → Unauthenticated naming the registry; wrong ones → Unauthenticated after one retry', async (t) => {
  let seen = 0;
  const srv = await serve((req, res) => {
    seen++;
    if (req.headers.authorization === `Basic ${Buffer.from('u:p').toString('base64')}`) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
      return void res.end('{}');
    }
    res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' });
    res.end();
  });
  t.after(() => srv.close());
  await assert.rejects(new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host] }).getManifest('latest'), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'Unauthenticated');
    assert.match(e.message, new RegExp(`${srv.host.replace(/\./g, '\\.')}.*a/b latest`));
    return true;
  });
  seen = 0;
  await assert.rejects(new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host], credentials: { username: 'u', password: 'x' } }).getManifest('latest'), { code: 'Unauthenticated' });
  assert.equal(seen, 2);
  assert.equal((await new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host], credentials: { username: 'u', password: 'p' } }).getManifest('latest')).body.toString(), '{}');
});

test('errors: 404 kinds, 5xx, 429, connection refused, oversized manifest; redirects drop credentials across origins', async (t) => {
  const other = await serve((req, res) => {
    res.writeHead(200, { 'x-saw-auth': req.headers.authorization ? 'yes' : 'no' });
    res.end('blob-bytes');
  });
  const srv = await serve((req, res) => {
    const p = req.url!;
    if (p.includes('/manifests/missing')) {
      res.writeHead(404, { 'content-type': 'application/json' });
      return void res.end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
    }
    if (p.startsWith('/v2/nosuch/')) {
      res.writeHead(404, { 'content-type': 'application/json' });
      return void res.end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
    }
    if (p.includes('/manifests/boom')) return void res.writeHead(503).end('down');
    if (p.includes('/manifests/slow')) return void res.writeHead(429).end('');
    if (p.includes('/manifests/huge')) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }); // chunked: no content-length
      res.write(Buffer.alloc(3000, 32));
      return void res.end(Buffer.alloc(3000, 32));
    }
    if (p.includes('/blobs/')) {
      res.writeHead(307, { location: `http://${other.host}/storage/blob` });
      return void res.end();
    }
    res.writeHead(400).end();
  });
  t.after(async () => {
    await srv.close();
    await other.close();
  });
  const c = new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host] });
  await assert.rejects(c.getManifest('missing'), { code: 'NotFound', message: /a\/b missing.*manifest unknown/ });
  await assert.rejects(new RegistryClient(srv.host, 'nosuch', { allowedRegistries: [srv.host] }).getManifest('latest'), { code: 'NotFound', message: /unknown repository/ });
  await assert.rejects(c.getManifest('boom'), { code: 'Unavailable', message: /503/ });
  await assert.rejects(c.getManifest('slow'), { code: 'Unavailable', message: /429/ });
  await assert.rejects(c.getManifest('huge', undefined, 4096), { code: 'InvalidArgument', message: /larger than 4096/ });
  await assert.rejects(new RegistryClient('127.0.0.1:1', 'x/y', { allowedRegistries: ['127.0.0.1:1'] }).getManifest('latest'), { code: 'Unavailable', message: /127\.0\.0\.1:1.*x\/y latest/ });

  const withCreds = new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host, other.host], credentials: { username: 'u', password: 'p' } });
  (withCreds as unknown as { basic: boolean }).basic = true; // as after a Basic challenge
  const res = await withCreds.getBlob('sha256:' + 'a'.repeat(64));
  assert.equal(await res.text(), 'blob-bytes');
  assert.equal(res.headers.get('x-saw-auth'), 'no', 'Authorization not sent to another origin');
});

test('a registry that never answers, or stalls mid-blob, fails the request with Unavailable instead of hanging', async (t) => {
  const held: ServerResponse[] = [];
  const srv = await serve((req, res) => {
    if (req.url?.includes('/manifests/')) return void held.push(res); // accept, never answer
    res.writeHead(200, { 'content-length': '1000', 'content-type': 'application/octet-stream' });
    res.write(Buffer.alloc(100)); // then nothing
    held.push(res);
  });
  t.after(() => srv.close());
  const c = new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host], responseTimeoutMs: 200, stallTimeoutMs: 200 });
  await assert.rejects(c.getManifest('latest'), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'Unavailable');
    assert.match(e.message, /did not answer .* within 200 ms/);
    return true;
  });
  const ingested: number[] = [];
  const store = {
    async ingest(_d: unknown, data: AsyncIterable<Uint8Array>) {
      for await (const chunk of data) ingested.push(chunk.length);
      throw new Error('unreachable: the stream must fail');
    },
  } as unknown as Parameters<RegistryClient['pullBlob']>[1];
  await assert.rejects(c.pullBlob({ digest: `sha256:${'0'.repeat(64)}`, size: 1000 }, store), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'Unavailable');
    assert.match(e.message, /stalled/);
    return true;
  });
  assert.deepEqual(ingested, [100], 'the bytes that came were passed on');
});

test('a registry\'s small bodies are bounded: an endless error or token body, a manifest that never ends, fail fast without filling memory', async (t) => {
  const held: ServerResponse[] = [];
  const timers: NodeJS.Timeout[] = [];
  /** 64 KiB every 2 ms for as long as the connection lasts. */
  const endless = (res: ServerResponse) => {
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    const timer = setInterval(() => (res.destroyed ? clearInterval(timer) : res.write(chunk)), 2);
    timers.push(timer);
  };
  const srv = await serve((req, res, host) => {
    const p = req.url!;
    if (p.startsWith('/token')) return void (res.writeHead(200, { 'content-type': 'application/json' }), endless(res));
    if (p.includes('/manifests/need-token')) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="s"` });
      return void res.end();
    }
    if (p.includes('/manifests/endless-404')) return void (res.writeHead(404, { 'content-type': 'application/json' }), endless(res));
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
    res.write('{"schemaVersion":');
    held.push(res); // then nothing, ever
  });
  t.after(async () => {
    for (const x of timers) clearInterval(x);
    await srv.close();
  });
  const c = new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host], stallTimeoutMs: 500, tokenCache: new TokenCache() });
  /** Settles within `ms`, or fails the test (the code before read these bodies to their end: never). */
  const within = <T>(p: Promise<T>, ms = 5_000) => Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`still reading after ${ms} ms`)), ms).unref())]);
  await assert.rejects(within(c.getManifest('endless-404')), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'NotFound', String(e));
    return true;
  });
  await assert.rejects(within(c.getManifest('need-token')), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'InvalidArgument', String(e));
    assert.match(e.message, /token service's answer .* is larger than 1048576 bytes/);
    return true;
  });
  await assert.rejects(within(c.getManifest('stalls')), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'Unavailable', String(e));
    assert.match(e.message, /manifest .*a\/b stalls did not arrive within 500 ms/);
    return true;
  });
});
