import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exchange } from './http-exchange.js';

/** A loopback server: /small answers 401 with a short body, /big streams 8 MiB slowly, /json a document. */
async function server() {
  let connections = 0;
  const srv = createServer((req, res) => {
    if (req.url === '/small') {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-type': 'text/plain', 'content-length': 12 });
      res.end('unauthorized');
    } else if (req.url === '/big') {
      res.writeHead(200, { 'content-length': String(8 << 20) });
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const more = () => {
        while (sent < 8 << 20) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    } else {
      const body = JSON.stringify({ token: 't' });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length, 'x-two': ['a', 'b'] });
      res.end(req.method === 'HEAD' ? undefined : body);
    }
  });
  srv.on('connection', () => connections++);
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  return { base, connections: () => connections, close: () => new Promise<void>((ok) => (srv.closeAllConnections(), srv.close(() => ok()))) };
}

test('exchange: status, headers, text and json; HEAD has no body; short answers cancelled keep the connection', async (t) => {
  const s = await server();
  t.after(() => s.close());
  const a = await exchange(`${s.base}/doc`, { method: 'GET', headers: {} });
  assert.equal(a.status, 200);
  assert.ok(a.ok);
  assert.equal(a.headers.get('Content-Type'), 'application/json');
  assert.equal(a.headers.get('x-two'), 'a, b');
  assert.equal(a.headers.get('missing'), null);
  assert.deepEqual(await a.json(), { token: 't' });

  const head = await exchange(`${s.base}/doc`, { method: 'HEAD', headers: {} });
  assert.equal(head.body, null);
  assert.equal(head.headers.get('content-length'), '13');

  const refused = await exchange(`${s.base}/small`, { method: 'GET', headers: {} });
  assert.equal(refused.status, 401);
  assert.equal(refused.ok, false);
  await refused.body!.cancel();
  const again = await exchange(`${s.base}/doc`, { method: 'GET', headers: {} });
  assert.equal(await again.text(), '{"token":"t"}');
  assert.equal(s.connections(), 1, 'one kept-alive connection for all of them');
});

test('exchange: a blob cancelled mid-way is cut; an abort mid-body fails its reader; a refused connection names its cause', async (t) => {
  const s = await server();
  t.after(() => s.close());
  const big = await exchange(`${s.base}/big`, { method: 'GET', headers: {} });
  for await (const chunk of big.body!) {
    assert.ok(chunk.length > 0);
    break; // the iterator's return destroys the rest
  }
  const cut = await exchange(`${s.base}/big`, { method: 'GET', headers: {} });
  await cut.body!.cancel();

  const ac = new AbortController();
  const aborted = await exchange(`${s.base}/big`, { method: 'GET', headers: {}, signal: ac.signal });
  let got = 0;
  await assert.rejects(
    (async () => {
      for await (const chunk of aborted.body!) {
        got += chunk.length;
        if (got > 1 << 20) ac.abort();
      }
    })(),
    (e: Error) => e instanceof Error, // the body's own error ('aborted'); the client maps it by its signal
  );
  assert.ok(got < 8 << 20, 'stopped before the end');

  const port = (await s.close(), Number(new URL(s.base).port));
  await assert.rejects(exchange(`http://127.0.0.1:${port}/doc`, { method: 'GET', headers: {} }), (e: Error) => (e.cause as { code?: string }).code === 'ECONNREFUSED');
});
