import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ApiClient, ApiError, splitRecords, sseData } from './client.js';

/** A tiny canned server: this tests the transport, not the daemon. */
let server: Server;
let dir: string;
let socket: string;
const seen: { method: string; url: string; headers: IncomingMessage['headers']; body: string }[] = [];

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks).toString();
}

const handlers: Record<string, (req: IncomingMessage, res: ServerResponse, body: string) => void> = {
  'GET /ok': (_q, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ hello: 'world' })),
  'POST /echo': (_q, res, b) => res.writeHead(201, { 'content-type': 'application/json' }).end(b),
  'DELETE /nothing': (_q, res) => res.writeHead(204).end(),
  'GET /missing': (_q, res) => res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NotFound', message: 'no such container: x' } })),
  'GET /garbage': (_q, res) => res.writeHead(502).end('bad gateway'),
  'GET /ndjson': (_q, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.flushHeaders();
    // Records split across writes, several per write, a blank line, and a last one without a newline.
    res.write('{"n":1}\n{"n"');
    setTimeout(() => {
      res.write(':2}\n\n{"n":3,"s":"caf\u00e9');
      setTimeout(() => res.end('"}'), 10);
    }, 10);
  },
  'GET /ndjson-fails': (_q, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.end('{"n":1}\n{"error":{"code":"Internal","message":"disk on fire"}}\n');
  },
  'GET /sse': (_q, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(': keep-alive\n\n');
    res.write('data: {"seq":1,"type":"operation","action":"progress","attributes":{"progress":{"phase":"downloading"}}}\n\n');
    res.write('event: x\ndata: {"seq":2,\ndata: "action":"done"}\n\n');
    res.end();
  },
  'GET /sse-forever': (_q, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"seq":1}\n\n');
    // Never ends: the client aborts.
  },
  'POST /upload': (req, res, b) => res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ type: req.headers['content-type'], size: b.length, text: b })),
};

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nimbus-cli-client-'));
  socket = join(dir, 'api.sock');
  server = createServer((req, res) => {
    void body(req).then((b) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: b });
      const h = handlers[`${req.method} ${req.url}`];
      if (h) h(req, res, b);
      else res.writeHead(404).end(JSON.stringify({ error: { code: 'NotFound', message: `no route ${req.method} ${req.url}` } }));
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

const client = () => new ApiClient({ socket, env: { NIMBUS_TOKEN: 't0k' } });

test('json: bodies both ways, 204 is undefined, a bearer token is sent', async () => {
  assert.deepEqual(await client().json('GET', '/ok'), { hello: 'world' });
  assert.deepEqual(await client().json('POST', '/echo', { a: [1, 2] }), { a: [1, 2] });
  const last = seen.at(-1)!;
  assert.equal(last.headers['content-type'], 'application/json');
  assert.equal(last.headers.authorization, 'Bearer t0k');
  assert.equal(await client().json('DELETE', '/nothing'), undefined);
});

test('json errors become ApiError with code, status and message', async () => {
  await assert.rejects(client().json('GET', '/missing'), (e: unknown) =>
    e instanceof ApiError && e.status === 404 && e.code === 'NotFound' && e.message === 'no such container: x');
  await assert.rejects(client().json('GET', '/garbage'), (e: unknown) => e instanceof ApiError && e.status === 502 && e.code === 'Internal' && e.message === 'bad gateway');
  await assert.rejects(client().openNdjson('GET', '/missing'), (e: unknown) => e instanceof ApiError && e.code === 'NotFound', 'streams check the status too');
});

test('ndjson: records are reassembled across chunks, blank lines skipped, a final unterminated record kept', async () => {
  const got: unknown[] = [];
  for await (const r of client().ndjson('GET', '/ndjson')) got.push(r);
  assert.deepEqual(got, [{ n: 1 }, { n: 2 }, { n: 3, s: 'café' }]);
});

test('ndjson: an in-band error record is thrown as ApiError after the records before it', async () => {
  const got: unknown[] = [];
  await assert.rejects(async () => {
    for await (const r of client().ndjson('GET', '/ndjson-fails')) got.push(r);
  }, (e: unknown) => e instanceof ApiError && e.code === 'Internal' && e.message === 'disk on fire');
  assert.deepEqual(got, [{ n: 1 }]);
});

test('sse: data payloads parsed, comments skipped, multi-line data joined', async () => {
  const got: unknown[] = [];
  for await (const e of client().sse('/sse')) got.push(e);
  assert.deepEqual(got, [{ seq: 1, type: 'operation', action: 'progress', attributes: { progress: { phase: 'downloading' } } }, { seq: 2, action: 'done' }]);
});

test('sse: aborting ends an endless stream quietly', async () => {
  const ac = new AbortController();
  const got: unknown[] = [];
  for await (const e of client().sse('/sse-forever', ac.signal)) {
    got.push(e);
    ac.abort();
  }
  assert.deepEqual(got, [{ seq: 1 }]);
});

test('upload streams a raw body with its content type', async () => {
  const r = await client().upload<{ type: string; size: number; text: string }>('/upload', Readable.from([Buffer.from('tar'), Buffer.from('ball')]), 'application/x-tar');
  assert.deepEqual(r, { type: 'application/x-tar', size: 7, text: 'tarball' });
});

test('an unreachable daemon is reported clearly', async () => {
  const c = new ApiClient({ socket: join(dir, 'nobody-home.sock'), env: {} });
  await assert.rejects(c.json('GET', '/_ping'), (e: unknown) =>
    e instanceof ApiError && e.status === 0 && e.code === 'Unavailable' && /cannot reach nimbusd at .*nobody-home\.sock.*is it running\? \(npm start\)/.test(e.message));
  const tcp = new ApiClient({ host: 'tcp://127.0.0.1:1', env: {} });
  assert.equal(tcp.describe(), 'tcp://127.0.0.1:1');
  await assert.rejects(tcp.json('GET', '/_ping'), /cannot reach nimbusd at tcp:\/\/127\.0\.0\.1:1/);
});

test('where requests go: flags, then NIMBUS_SOCKET, then NIMBUS_HOST, then the default socket', () => {
  assert.equal(new ApiClient({ env: {} }).describe(), '/run/nimbus/nimbus.sock');
  assert.equal(new ApiClient({ env: { NIMBUS_SOCKET: '/tmp/a.sock' } }).describe(), '/tmp/a.sock');
  assert.equal(new ApiClient({ env: { NIMBUS_HOST: 'tcp://127.0.0.1:9000' } }).describe(), 'tcp://127.0.0.1:9000');
  assert.equal(new ApiClient({ env: { NIMBUS_HOST: 'unix:///tmp/b.sock' } }).describe(), '/tmp/b.sock');
  assert.equal(new ApiClient({ host: 'tcp://[::1]:8' , env: { NIMBUS_SOCKET: '/x' } }).describe(), 'tcp://::1:8');
  assert.equal(new ApiClient({ socket: '/s', host: 'tcp://h:1', env: {} }).describe(), '/s');
});

test('record splitting and SSE blocks', async () => {
  const out: string[] = [];
  for await (const r of splitRecords(Readable.from(['a\r\nb', '\nc']), /\r?\n/)) out.push(r);
  assert.deepEqual(out, ['a', 'b', 'c']);
  assert.equal(sseData('id: 3\ndata: x'), 'x');
  assert.equal(sseData(': ping'), undefined);
});

test('several endpoints: a refused or missing one is skipped for every method, and the one that answered is tried first afterwards', async () => {
  const hosts = `unix://${join(dir, 'down.sock')},tcp://127.0.0.1:1,unix://${socket}`;
  const c = new ApiClient({ host: hosts, env: {} });
  assert.deepEqual(c.endpoints(), [join(dir, 'down.sock'), 'tcp://127.0.0.1:1', socket]);
  assert.equal(c.describe(), join(dir, 'down.sock'));
  const before = seen.length;
  assert.deepEqual(await c.json('POST', '/echo', { n: 1 }), { n: 1 }, 'a create that never reached a server moves on');
  assert.equal(seen.length, before + 1, 'sent once');
  assert.equal(c.describe(), socket, 'remembered');
  assert.equal(new ApiClient({ env: { NIMBUS_HOST: hosts } }).describe(), socket, 'by every client of this run');
  const r = await c.upload<{ text: string }>('/upload', Readable.from([Buffer.from('tar')]), 'application/x-tar');
  assert.equal(r.text, 'tar', 'a raw body is not consumed by a refused connection');
  // an HTTP error is an answer: not retried elsewhere
  await assert.rejects(c.json('GET', '/missing'), (e: unknown) => e instanceof ApiError && e.status === 404);
});

test('several endpoints: a connection reset after the request was sent moves on for GET only; all down names each', async (t) => {
  const resetSock = join(dir, 'reset.sock');
  let resets = 0;
  const resetter = createServer((req) => {
    resets++;
    req.socket.destroy(); // the request arrived; the answer never comes
  });
  await new Promise<void>((r) => resetter.listen(resetSock, r));
  t.after(() => new Promise<void>((r) => resetter.close(() => r())));
  const hosts = `unix://${resetSock},unix://${socket}`;
  // a fresh list each time: what answered last is remembered per list
  const c = new ApiClient({ host: hosts, env: {} });
  const before = seen.length;
  await assert.rejects(c.json('POST', '/echo', { n: 2 }), (e: unknown) =>
    e instanceof ApiError && e.code === 'Unavailable' && /broke after the request was sent.*may have been done/.test(e.message));
  assert.equal(seen.length, before, 'the create was not sent again to the next endpoint');
  assert.equal(resets, 1);
  assert.deepEqual(await c.json('GET', '/ok'), { hello: 'world' }, 'a GET moves on');
  assert.equal(resets, 2);
  assert.equal(c.describe(), socket);
  const none = new ApiClient({ host: `unix://${join(dir, 'a.sock')},tcp://127.0.0.1:1`, env: {} });
  await assert.rejects(none.json('GET', '/ok'), (e: unknown) =>
    e instanceof ApiError && e.status === 0 && /any of its endpoints: .*a\.sock \(ENOENT\), tcp:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\)/.test(e.message));
});
