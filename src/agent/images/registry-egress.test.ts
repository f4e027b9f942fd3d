import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { networkInterfaces } from 'node:os';
import { messageFor } from '../../core/errors.js';
import { RegistryClient, TokenCache } from './registry-client.js';
import { refusedAddress } from './registry-egress.js';

/** A loopback HTTP server counting what reaches it. */
async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void = (_q, s) => void s.writeHead(200).end('{}')) {
  let hits = 0;
  const server = createServer((req, res) => {
    hits++;
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  const port = typeof a === 'object' && a ? a.port : 0;
  return {
    host: `127.0.0.1:${port}`,
    port,
    hits: () => hits,
    close: () => new Promise<void>((r) => (server.close(() => r()), server.closeAllConnections())),
  };
}

test('refusedAddress: loopback, unspecified, link-local (metadata), multicast, broadcast and this host\'s own addresses; others pass', () => {
  for (const a of ['127.0.0.1', '127.9.9.9', '0.0.0.0', '169.254.169.254', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1', '::ffff:169.254.169.254']) {
    assert.ok(refusedAddress(a), `${a} refused`);
  }
  for (const a of ['8.8.8.8', '192.0.2.10', '2001:db8::1']) assert.equal(refusedAddress(a), undefined, `${a} allowed`);
  const own = Object.values(networkInterfaces()).flat().find((i) => i && !i.internal && i.family === 'IPv4');
  if (own) assert.equal(refusedAddress(own.address), 'an address of this host');
});

test('a registry on loopback that no administrator named is refused before any request, by address or by a name that resolves there', async (t) => {
  const srv = await serve();
  t.after(() => srv.close());
  for (const registry of [srv.host, `localhost:${srv.port}`, `[::ffff:127.0.0.1]:${srv.port}`]) {
    await assert.rejects(new RegistryClient(registry, 'a/b').getManifest('latest'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'PermissionDenied', `${registry}: ${e.message}`);
      assert.match(e.message, /resolves to a loopback, link-local or other non-routable address; .*--allow-registry/);
      assert.doesNotMatch(e.message, /resolves to [\d:]/, 'the resolved address is not in the member\'s message');
      assert.match(messageFor(e as never, true), /resolves to (127\.0\.0\.1|::ffff:7f00:1), /, 'the administrator\'s message names it');
      return true;
    });
  }
  assert.equal(srv.hits(), 0, 'nothing reached the loopback server');
  // named by an administrator (allowed or insecure): reached
  await new RegistryClient(srv.host, 'a/b', { allowedRegistries: [srv.host] }).getManifest('latest');
  await new RegistryClient(srv.host, 'a/b', { insecureRegistries: [srv.host] }).getManifest('latest');
  assert.equal(srv.hits(), 2);
});

test('a named registry cannot send the client to loopback: a redirect or a token realm there is refused, and nothing reaches it', async (t) => {
  const inner = await serve((_q, s) => void s.writeHead(403).end('secret from an internal service'));
  const registry = await serve((req, res) => {
    if (req.url!.includes('/blobs/')) return void res.writeHead(307, { location: `http://${inner.host}/admin/drop-everything` }).end();
    if (req.headers.authorization) return void res.writeHead(200).end('{}');
    res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${inner.host}/token",service="r"` }).end();
  });
  t.after(async () => {
    await registry.close();
    await inner.close();
  });
  const client = new RegistryClient(registry.host, 'a/b', { allowedRegistries: [registry.host], tokenCache: new TokenCache() });
  await assert.rejects(client.getManifest('latest'), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'PermissionDenied', e.message);
    assert.match(e.message, new RegExp(`${inner.host.replace(/\./g, '\\.')} resolves to`));
    assert.doesNotMatch(e.message, /secret/);
    return true;
  });
  await assert.rejects(client.getBlob('sha256:' + 'a'.repeat(64)), { code: 'PermissionDenied' });
  assert.equal(inner.hits(), 0, 'the internal service got no request');
});
