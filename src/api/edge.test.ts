import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { request, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Type } from '@sinclair/typebox';
import { ApiServer } from './server.js';
import { route, stream } from './route.js';
import type { EdgeLimits } from './edge.js';
import { Unauthenticated } from '../core/errors.js';
import type { Services } from '../control/services.js';
import type { Principal } from '../control/identity/access.js';
import { allRoutes } from './routes/index.js';

// The HTTP edge against a real server on a unix socket and on 127.0.0.1:0, with a small route table.
let handled = 0;
const routes = [
  route({
    method: 'POST', path: '/things', operationId: 'createThing', tag: 't', access: 'write', summary: 'create', status: 201,
    auth: { authenticated: true },
    body: Type.Object({ name: Type.String({ minLength: 1 }), size: Type.Integer({ minimum: 1, default: 1 }) }, { additionalProperties: false }),
    response: Type.Object({ name: Type.String(), size: Type.Integer() }),
    handler: ({ body }) => {
      handled++;
      return { status: 201, body };
    },
  }),
  route({
    method: 'POST', path: '/options', operationId: 'setOptions', tag: 't', access: 'write', summary: 'all fields optional or defaulted',
    body: Type.Object({ size: Type.Integer({ default: 3 }), note: Type.Optional(Type.String()) }, { additionalProperties: false }),
    response: Type.Object({ size: Type.Integer() }),
    handler: ({ body }) => ({ size: body.size }),
  }),
  route({
    method: 'POST', path: '/small', operationId: 'small', tag: 't', access: 'write', summary: 'a route with its own limit', maxBodyBytes: 1024,
    auth: { public: true },
    body: Type.Object({ s: Type.String() }), response: Type.Object({ n: Type.Integer() }),
    handler: ({ body }) => ({ n: body.s.length }),
  }),
  route({
    method: 'GET', path: '/things/{id}', operationId: 'getThing', tag: 't', access: 'read', summary: 'get',
    auth: { authenticated: true },
    params: Type.Object({ id: Type.String() }), query: Type.Object({ n: Type.Integer({ default: 0 }), tag: Type.Optional(Type.String()) }),
    response: Type.Object({ id: Type.String(), n: Type.Integer() }),
    handler: ({ params, query }) => ({ id: params.id, n: query.n, ...(query.tag !== undefined ? { tag: query.tag } : {}) }),
  }),
  route({
    method: 'GET', path: '/public', operationId: 'pub', tag: 't', access: 'public', summary: 'public', auth: { public: true },
    query: Type.Object({ n: Type.Optional(Type.Integer()) }), response: Type.Object({ ok: Type.Boolean() }),
    handler: () => ({ ok: true }),
  }),
  route({
    method: 'GET', path: '/slow', operationId: 'slow', tag: 't', access: 'read', summary: 'answers after 50 ms', auth: { public: true },
    response: Type.Object({ ok: Type.Boolean() }),
    handler: () => new Promise<{ ok: boolean }>((r) => setTimeout(() => r({ ok: true }), 50)),
  }),
  route({
    method: 'GET', path: '/ticks', operationId: 'ticks', tag: 't', access: 'read', summary: 'a stream over ~1.2 s', streams: 'ndjson',
    response: Type.Object({ i: Type.Integer() }),
    handler: () => stream('ndjson', (async function* () {
      for (let i = 0; i < 12; i++) {
        await new Promise((r) => setTimeout(r, 100));
        yield { i };
      }
    })()),
  }),
  route({
    method: 'GET', path: '/broken/{kind}', operationId: 'broken', tag: 't', access: 'read', summary: 'fails after two items',
    params: Type.Object({ kind: Type.Union([Type.Literal('ndjson'), Type.Literal('sse')]) }),
    response: Type.Object({ i: Type.Integer() }),
    handler: ({ params }) => stream(params.kind, (async function* () {
      yield { i: 0 };
      yield { i: 1 };
      throw new Error('the log file vanished');
    })()),
  }),
  route({
    method: 'GET', path: '/returns-error', operationId: 'returnsError', tag: 't', access: 'read', summary: 'a handler returning an Error',
    response: Type.Object({}),
    handler: () => new Error('returned, not thrown') as never,
  }),
  route({
    method: 'POST', path: '/upload', operationId: 'upload', tag: 't', access: 'write', summary: 'raw body, counted',
    rawBody: 'application/octet-stream', response: Type.Object({ bytes: Type.Integer() }),
    handler: async ({ req }) => {
      let bytes = 0;
      for await (const c of req as AsyncIterable<Buffer>) bytes += c.length;
      return { bytes };
    },
  }),
];

const principal: Principal = { userId: 'u1', name: 'alice', systemAdmin: false, defaultProjectId: null, via: 'apikey', tokenId: 't1' };
const services = {
  identity: {
    authenticate: (token: string) => {
      if (token !== 'good') throw new Unauthenticated('invalid token');
      return principal;
    },
    localAdmin: () => undefined, // the socket's built-in local administrator
  },
} as unknown as Services;

type Target = { socketPath: string } | { host: string; port: number };
interface Answer { status: number; text: string; headers: IncomingHttpHeaders; ms: number }

function call(to: Target, method: string, path: string, o: { body?: string | Buffer; headers?: Record<string, string | number>; chunks?: Buffer[] } = {}): Promise<Answer> {
  const t0 = performance.now();
  return new Promise((ok, fail) => {
    const req = request({ ...to, method, path, agent: false, headers: o.headers ?? {} }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => ok({ status: res.statusCode ?? 0, text, headers: res.headers, ms: performance.now() - t0 }));
      res.on('error', fail);
    });
    // The server may answer and close while we still write (413): that write error is expected.
    req.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? undefined : fail(e)));
    if (o.chunks) {
      for (const c of o.chunks) req.write(c);
      req.end();
    } else req.end(o.body);
  });
}

/** Raw bytes over a socket: what came back and when the server closed it (or null if it did not in `waitMs`). */
function raw(to: Target, bytes: string, waitMs: number): Promise<{ text: string; closedAfterMs: number | null }> {
  const t0 = performance.now();
  return new Promise((ok) => {
    const s = 'socketPath' in to ? connect(to.socketPath) : connect(to.port, to.host);
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      ok({ text, closedAfterMs: null });
    }, waitMs);
    s.on('connect', () => (bytes ? s.write(bytes) : undefined));
    s.on('data', (d) => (text += d.toString()));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      ok({ text, closedAfterMs: performance.now() - t0 });
    });
  });
}

const json = (a: Answer) => JSON.parse(a.text) as { error: { code: string; message: string } };

async function start(t: TestContext, limits: Partial<EdgeLimits> = {}): Promise<{ unix: Target; tcp: Target }> {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-edge-'));
  const server = new ApiServer(routes, services, limits);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await server.listenUnix(join(dir, 'api.sock'));
  const port = await server.listenTcp('127.0.0.1', 0);
  return { unix: { socketPath: join(dir, 'api.sock') }, tcp: { host: '127.0.0.1', port } };
}

const AUTH = { authorization: 'Bearer good' };

test('edge: malformed percent-encoding in a path parameter or the query is a 400, not a 500', async (t) => {
  const { unix, tcp } = await start(t);
  for (const path of ['/things/%ff%fe', '/things/%E0%A4%A', '/things/%zz', '/things/x?n=%E0%A4%A', '/things/x?%ff=1', '/things/x?tag=%']) {
    for (const [to, headers] of [[unix, {}], [tcp, AUTH]] as const) {
      const r = await call(to, 'GET', path, { headers });
      assert.equal(r.status, 400, `${path}: ${r.text}`);
      assert.match(json(r).error.message, /(path parameter "id"|query parameter|query parameter name).* not valid percent-encoded UTF-8/, path);
    }
  }
  // well-formed encodings still decode (UTF-8, '+' as space in the query only)
  const r = await call(unix, 'GET', '/things/caf%C3%A9+x?tag=a+b%2Bc');
  assert.deepEqual(JSON.parse(r.text), { id: 'café+x', n: 0, tag: 'a b+c' });
  const dots = await call(unix, 'GET', '/things/../public');
  assert.equal(dots.status, 400, 'dot segments are refused, not resolved');
});

test('edge: a body over the limit is a prompt 413 that closes the connection', { timeout: 30_000 }, async (t) => {
  const { unix, tcp } = await start(t);
  const big = Buffer.alloc(50 * 1024 * 1024, 0x61);
  const before = handled;
  for (const [name, to] of [['unix', unix], ['tcp', tcp]] as const) {
    // announced by Content-Length: refused before reading
    let r = await call(to, 'POST', '/things', { body: big, headers: { ...AUTH, 'content-type': 'application/json', 'content-length': big.length } });
    assert.equal(r.status, 413, `${name}: ${r.text}`);
    assert.equal(json(r).error.code, 'PayloadTooLarge');
    assert.equal(r.headers.connection, 'close');
    assert.ok(r.ms < 3000, `${name}: 413 after ${r.ms.toFixed(0)} ms`);
    // streamed (chunked, no length): refused once past the limit
    const chunks = Array.from({ length: 80 }, () => Buffer.alloc(64 * 1024, 0x61));
    r = await call(to, 'POST', '/things', { chunks, headers: { ...AUTH, 'content-type': 'application/json' } });
    assert.equal(r.status, 413, `${name} chunked: ${r.text}`);
    assert.equal(r.headers.connection, 'close');
    // a route's own limit
    r = await call(to, 'POST', '/small', { body: JSON.stringify({ s: 'x'.repeat(2000) }) });
    assert.equal(r.status, 413, `${name}: route limit`);
    r = await call(to, 'POST', '/small', { body: JSON.stringify({ s: 'x'.repeat(500) }) });
    assert.deepEqual(JSON.parse(r.text), { n: 500 });
  }
  assert.equal(handled, before, 'no handler ran for an oversized body');
  // a raw-body route without a declared limit still streams a large upload
  const r = await call(unix, 'POST', '/upload', { body: big, headers: { 'content-type': 'application/octet-stream' } });
  assert.deepEqual(JSON.parse(r.text), { bytes: big.length });
});

test('edge: an oversized request line, query or header is a 431 and a garbled request a 400, never a reset', async (t) => {
  const { unix, tcp } = await start(t);
  for (const [name, to, headers] of [['unix', unix, {}], ['tcp', tcp, AUTH]] as const) {
    // over the URL cap, under Node's header cap: the router's 431
    let r = await call(to, 'GET', `/things/x?tag=${'q'.repeat(10_000)}`, { headers });
    assert.equal(r.status, 431, `${name}: ${r.text}`);
    assert.equal(json(r).error.code, 'HeadersTooLarge');
    // over Node's header cap: the parser's error, answered
    r = await call(to, 'GET', `/things/x?tag=${'q'.repeat(100_000)}`, { headers });
    assert.equal(r.status, 431, `${name} 100 KB query`);
    assert.equal(json(r).error.code, 'HeadersTooLarge');
    r = await call(to, 'GET', '/public', { headers: { 'x-big': 'h'.repeat(20_000) } });
    assert.equal(r.status, 431, `${name} 20 KB header`);
    const garbage = await raw(to, 'HELLO there\r\n\r\n', 3000);
    assert.match(garbage.text, /^HTTP\/1\.1 400 /, `${name}: ${garbage.text}`);
    assert.notEqual(garbage.closedAfterMs, null, 'closed after the 400');
  }
});

test('edge: half-sent requests and idle connections are closed; streams and slow uploads are not cut', { timeout: 30_000 }, async (t) => {
  const { unix, tcp } = await start(t, { headersTimeoutMs: 300, idleTimeoutMs: 300 });
  const [half, halfBody, silent, idle, ticks, upload] = await Promise.all([
    raw(tcp, 'GET /public HTTP/1.1\r\nHost: x\r\n', 5000),
    raw(unix, 'POST /things HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"name":', 5000),
    raw(unix, '', 5000),
    raw(tcp, 'GET /public HTTP/1.1\r\nHost: x\r\n\r\n', 5000),
    call(unix, 'GET', '/ticks'),
    (async () => {
      // a body trickling in over ~1.5 s, five times the header timeout
      const chunks: Buffer[] = [];
      const t0 = performance.now();
      return new Promise<Answer>((ok, fail) => {
        const req = request({ ...unix, method: 'POST', path: '/upload', agent: false, headers: { 'content-type': 'application/octet-stream' } }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => ok({ status: res.statusCode ?? 0, text, headers: res.headers, ms: performance.now() - t0 }));
        });
        req.on('error', fail);
        let n = 0;
        const tick = setInterval(() => {
          chunks.push(Buffer.alloc(1000));
          req.write(Buffer.alloc(1000));
          if (++n === 15) {
            clearInterval(tick);
            req.end();
          }
        }, 100);
      });
    })(),
  ]);
  assert.match(half.text, /^HTTP\/1\.1 408 /, half.text);
  assert.match(halfBody.text, /^HTTP\/1\.1 400 [^]*connection: close[^]*request body stalled/i, halfBody.text);
  assert.ok(halfBody.closedAfterMs !== null && halfBody.closedAfterMs < 3000, `stalled body closed after ${halfBody.closedAfterMs} ms`);
  assert.ok(half.closedAfterMs !== null && half.closedAfterMs < 3000, `half request closed after ${half.closedAfterMs} ms`);
  assert.ok(silent.closedAfterMs !== null && silent.closedAfterMs < 3000, `silent connection closed after ${silent.closedAfterMs} ms`);
  assert.match(idle.text, /^HTTP\/1\.1 200 /);
  assert.ok(idle.closedAfterMs !== null && idle.closedAfterMs < 4000, `idle keep-alive closed after ${idle.closedAfterMs} ms`);
  assert.equal(ticks.text.trim().split('\n').length, 12, 'a 1.2 s stream runs to its end');
  assert.ok(ticks.ms > 1000);
  assert.deepEqual(JSON.parse(upload.text), { bytes: 15_000 }, 'a 1.5 s upload is not cut');
});

test('edge: a 2,000-request burst on the unix socket is answered (200 or 503 + Retry-After), no connect fails', { timeout: 60_000 }, async (t) => {
  const { unix } = await start(t, { maxInFlight: 100 });
  const statuses = new Map<number | string, number>();
  let retryAfter = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 2000 }, () =>
    call(unix, 'GET', '/slow').then(
      (r) => {
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status === 503 && r.headers['retry-after'] === '1') retryAfter++;
      },
      (e: NodeJS.ErrnoException) => statuses.set(e.code ?? 'error', (statuses.get(e.code ?? 'error') ?? 0) + 1),
    )));
  const ms = performance.now() - t0;
  t.diagnostic(`burst: ${JSON.stringify(Object.fromEntries(statuses))} in ${ms.toFixed(0)} ms`);
  assert.deepEqual([...statuses.keys()].filter((k) => k !== 200 && k !== 503), [], 'only 200s and 503s');
  assert.equal((statuses.get(200) ?? 0) + (statuses.get(503) ?? 0), 2000);
  assert.ok((statuses.get(503) ?? 0) > 0, 'admission turned some away');
  assert.ok((statuses.get(200) ?? 0) >= 100, 'and admitted up to the cap');
  assert.equal(retryAfter, statuses.get(503), 'every 503 says when to retry');
  // and the server is fine afterwards
  assert.equal((await call(unix, 'GET', '/public')).status, 200);
});

test('edge: on TCP a request without a valid token is a 401 before any validation', async (t) => {
  const { tcp } = await start(t);
  for (const [method, path, body] of [
    ['GET', '/things/x?n=five', undefined],
    ['GET', '/things/%ff%fe', undefined],
    ['GET', `/things/x?tag=${'%E0%A4%A'}`, undefined],
    ['POST', '/things', '{not json'],
    ['POST', '/things', ''],
    ['POST', '/things', JSON.stringify({ name: 'a', extra: 1 })],
  ] as const) {
    const r = await call(tcp, method, path, { ...(body !== undefined ? { body } : {}) });
    assert.equal(r.status, 401, `${method} ${path}: ${r.text}`);
    const bad = await call(tcp, method, path, { headers: { authorization: 'Bearer nope' }, ...(body !== undefined ? { body } : {}) });
    assert.equal(bad.status, 401, `bad token ${method} ${path}`);
    const good = await call(tcp, method, path, { headers: AUTH, ...(body !== undefined ? { body } : {}) });
    assert.equal(good.status, 400, `with a token, validation: ${method} ${path}: ${good.text}`);
  }
  assert.equal((await call(tcp, 'GET', '/public?n=1')).status, 200, 'public routes stay public');
  assert.equal((await call(tcp, 'GET', '/public?n=x')).status, 400, 'and are validated');
});

test('edge: every non-public route of the real table answers 401 to hostile input without a token', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-edge-'));
  const server = new ApiServer(allRoutes(), {} as Services);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const tcp = { host: '127.0.0.1', port: await server.listenTcp('127.0.0.1', 0) };
  let checked = 0;
  for (const r of allRoutes()) {
    if (r.auth && 'public' in r.auth) continue;
    const path = r.path.replace(/\{\w+\}/g, '%ff%fe') + '?project=%E0%A4%A&follow=maybe&tail=-1';
    const hasBody = r.method === 'POST' || r.method === 'PUT';
    const a = await call(tcp, r.method, path, hasBody ? { body: '{not json', headers: { 'content-type': r.rawBody ?? 'application/json' } } : {});
    assert.equal(a.status, 401, `${r.method} ${r.path}: ${a.text}`);
    checked++;
  }
  t.diagnostic(`${checked} routes`);
  assert.ok(checked > 30);
});

test('edge: a stream that fails after its 200 ends visibly broken; an Error is never a 200 body', async (t) => {
  const { unix } = await start(t);
  for (const kind of ['ndjson', 'sse'] as const) {
    const seen = await new Promise<{ status: number; text: string; ended: boolean; error: string | undefined }>((ok) => {
      const req = request({ ...unix, method: 'GET', path: `/broken/${kind}`, agent: false }, (res) => {
        let text = '';
        let ended = false;
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => (ended = true));
        let error: string | undefined;
        res.on('error', (e) => (error = e.message));
        res.on('close', () => ok({ status: res.statusCode ?? 0, text, ended, error }));
      });
      req.on('error', () => undefined);
      req.end();
    });
    assert.equal(seen.status, 200);
    assert.equal(seen.ended, false, `${kind}: the response must not end cleanly`);
    assert.equal(seen.error, 'aborted', kind);
    assert.match(seen.text, kind === 'sse' ? /event: error\ndata: \{"error":\{"code":"Internal","message":"the log file vanished"\}\}\n\n$/ : /\{"i":1\}\n\{"error":\{"code":"Internal","message":"the log file vanished"\}\}\n$/, kind);
  }
  const r = await call(unix, 'GET', '/returns-error');
  assert.equal(r.status, 500);
  assert.match(r.text, /returned, not thrown/);
});

test('edge: invalid JSON, non-UTF-8, empty or null bodies are 400s where a body is required', async (t) => {
  const { unix } = await start(t);
  const post = (path: string, body: string | Buffer) => call(unix, 'POST', path, { body, headers: { 'content-type': 'application/json' } });
  let r = await post('/things', '{not json');
  assert.equal(r.status, 400);
  assert.match(r.text, /not valid JSON/);
  r = await post('/things', Buffer.from([0x7b, 0x22, 0x6e, 0x61, 0x6d, 0x65, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])); // {"name":"\xff\xfe"}
  assert.equal(r.status, 400);
  assert.match(r.text, /not valid UTF-8/);
  for (const empty of ['', 'null']) {
    r = await post('/things', empty);
    assert.equal(r.status, 400, `body ${JSON.stringify(empty)}`);
    assert.match(r.text, /request body required/);
  }
  r = await post('/options', '');
  assert.deepEqual(JSON.parse(r.text), { size: 3 }, 'a body whose fields all default may be empty');
  r = await post('/things', JSON.stringify({ name: 'a' }));
  assert.equal(r.status, 201);
});
