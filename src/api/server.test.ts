import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Type } from '@sinclair/typebox';
import { ApiServer } from './server.js';
import { route, stream } from './route.js';
import { Conflict, NotFound } from '../core/errors.js';
import type { Services } from '../control/services.js';
import { buildOpenApi } from './openapi.js';
import { allRoutes } from './routes/index.js';
import { HTTP_STATUS } from '../core/http-status.js';
import { ERROR_CODES } from '../core/errors.js';

// The edge alone: a small route table exercising validation, errors and streams.
const routes = [
  route({
    method: 'POST', path: '/things', operationId: 'createThing', tag: 't', access: 'write', summary: 'create', status: 201,
    body: Type.Object({ name: Type.String({ minLength: 1 }), size: Type.Integer({ minimum: 1, default: 1 }) }, { additionalProperties: false }),
    response: Type.Object({ name: Type.String(), size: Type.Integer() }),
    handler: ({ body }) => ({ status: 201, body }),
  }),
  route({
    method: 'GET', path: '/things/{id}', operationId: 'getThing', tag: 't', access: 'read', summary: 'get',
    params: Type.Object({ id: Type.String() }), query: Type.Object({ n: Type.Integer({ default: 0 }) }),
    response: Type.Object({ id: Type.String(), n: Type.Integer() }),
    handler: ({ params, query }) => {
      if (params.id === 'missing') throw new NotFound('no such thing: missing');
      if (params.id === 'busy') throw new Conflict('thing is busy');
      if (params.id === 'crash') throw new Error('unexpected');
      return { id: params.id, n: query.n };
    },
  }),
  route({
    method: 'GET', path: '/stream', operationId: 'stream', tag: 't', access: 'read', summary: 'stream', streams: 'ndjson',
    response: Type.Object({ i: Type.Integer() }),
    handler: () => stream('ndjson', (async function* () { for (let i = 0; i < 3; i++) yield { i }; })()),
  }),
];

function call(socketPath: string, method: string, path: string, body?: unknown) {
  return new Promise<{ status: number; text: string; type: string | undefined }>((ok, fail) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = request({ socketPath, method, path, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => ok({ status: res.statusCode ?? 0, text, type: res.headers['content-type'] }));
    });
    req.on('error', fail);
    req.end(payload);
  });
}

test('api edge: validation, defaults, typed errors mapped once, streams', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-api-'));
  const sock = join(dir, 'api.sock');
  const server = new ApiServer(routes, {} as Services);
  await server.listenUnix(sock);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let r = await call(sock, 'POST', '/things', { name: 'a' });
  assert.equal(r.status, 201);
  assert.deepEqual(JSON.parse(r.text), { name: 'a', size: 1 }, 'schema default applied');

  r = await call(sock, 'POST', '/things', { name: 'a', size: 0 });
  assert.equal(r.status, 400);
  const err = JSON.parse(r.text) as { error: { code: string; message: string } };
  assert.equal(err.error.code, 'InvalidArgument');
  assert.match(err.error.message, /size/);

  r = await call(sock, 'POST', '/things', { name: 'a', extra: true });
  assert.equal(r.status, 400, 'unknown fields are refused');
  r = await call(sock, 'POST', '/things', '{not json');
  assert.equal(r.status, 400);
  assert.match(r.text, /not valid JSON/);

  r = await call(sock, 'GET', '/things/x?n=5');
  assert.deepEqual(JSON.parse(r.text), { id: 'x', n: 5 }, 'query strings are converted to the schema type');
  r = await call(sock, 'GET', '/things/x?n=five');
  assert.equal(r.status, 400);
  r = await call(sock, 'GET', '/things/missing');
  assert.equal(r.status, 404);
  assert.deepEqual(JSON.parse(r.text), { error: { code: 'NotFound', message: 'no such thing: missing' } });
  r = await call(sock, 'GET', '/things/busy');
  assert.equal(r.status, 409);
  r = await call(sock, 'GET', '/things/crash');
  assert.equal(r.status, 500);
  assert.equal((JSON.parse(r.text) as { error: { code: string } }).error.code, 'Internal');
  r = await call(sock, 'GET', '/nowhere');
  assert.equal(r.status, 404);
  r = await call(sock, 'DELETE', '/things/x');
  assert.equal(r.status, 400, 'wrong method on a known path');

  r = await call(sock, 'GET', '/stream');
  assert.equal(r.type, 'application/x-ndjson');
  assert.deepEqual(r.text.trim().split('\n').map((l) => JSON.parse(l) as unknown), [{ i: 0 }, { i: 1 }, { i: 2 }]);
});

test('api edge: a handler that asks for the signal sees it abort when the client goes away', { timeout: 10_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-api-'));
  const sock = join(dir, 'api.sock');
  let aborted!: () => void;
  const sawAbort = new Promise<void>((r) => (aborted = r));
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => (entered = r));
  const waiting = route({
    method: 'GET', path: '/wait', operationId: 'waitThing', tag: 't', access: 'read', summary: 'wait', response: Type.Object({}),
    handler: ({ signal }) => new Promise<Record<string, never>>((resolve) => {
      signal.addEventListener('abort', () => {
        aborted();
        resolve({});
      });
      entered();
    }),
  });
  const server = new ApiServer([...routes, waiting], {} as Services);
  await server.listenUnix(sock);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const req = request({ socketPath: sock, method: 'GET', path: '/wait' });
  req.on('error', () => undefined);
  req.end();
  await inHandler;
  req.destroy();
  await sawAbort; // never settles (the test times out) if the disconnect does not abort the signal
  // and requests whose handler never asks still answer
  const r = await call(sock, 'GET', '/things/x');
  assert.equal(r.status, 200);
});

test('every typed error code has an HTTP status', () => {
  for (const code of ERROR_CODES) assert.ok(HTTP_STATUS[code] >= 400, code);
});

test('openapi document covers every route with unique operation ids and declared access', () => {
  const table = allRoutes();
  const doc = buildOpenApi(table, 'test') as { openapi: string; paths: Record<string, Record<string, { operationId: string; 'x-nimbus-access': string }>> };
  assert.equal(doc.openapi, '3.0.3');
  const ids = new Set<string>();
  for (const r of table) {
    const op = doc.paths[r.path]?.[r.method.toLowerCase()];
    assert.ok(op, `${r.method} ${r.path} is in the document`);
    assert.ok(!ids.has(op.operationId), `operationId ${op.operationId} is unique`);
    ids.add(op.operationId);
    assert.ok(['public', 'read', 'write'].includes(op['x-nimbus-access']));
    for (const name of r.path.match(/\{(\w+)\}/g) ?? []) {
      assert.ok(JSON.stringify(op).includes(`"name":"${name.slice(1, -1)}"`), `path parameter ${name} documented`);
    }
  }
});
