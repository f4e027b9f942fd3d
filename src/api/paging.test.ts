/**
 * Paged lists and compressed responses at the API's edge: a route returning `paged(...)` walked
 * page by page over a real socket, with items created and removed between pages; gzip when the
 * client accepts it and the body is large enough, never otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Type } from '@sinclair/typebox';
import { ApiServer } from './server.js';
import { route } from './route.js';
import type { Services } from '../control/services.js';
import { decodeCursor, encodeCursor, paged, PageQuery } from './paging.js';
import { acceptsGzip, COMPRESS_MIN_BYTES } from './compression.js';

interface Item { id: string; createdAt: string; blob: string }
let items: Item[] = [];

const routes = [
  route({
    method: 'GET', path: '/items', operationId: 'listItems', tag: 't', access: 'read', summary: 'list',
    query: Type.Object({ pad: Type.Integer({ default: 0 }), ...PageQuery }),
    response: Type.Array(Type.Object({ id: Type.String() })),
    handler: ({ query, req }) => paged(items, (i) => [i.createdAt, i.id], query, req, (i) => ({ id: i.id, blob: 'x'.repeat(query.pad) })),
  }),
];

interface Reply { status: number; headers: Record<string, string | string[] | undefined>; bytes: Buffer }
function get(socketPath: string, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((ok, fail) => {
    const req = request({ socketPath, method: 'GET', path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, bytes: Buffer.concat(chunks) }));
    });
    req.on('error', fail);
    req.end();
  });
}

async function edge(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-paging-'));
  const sock = join(dir, 'api.sock');
  const server = new ApiServer(routes, {} as Services);
  await server.listenUnix(sock);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return sock;
}

const at = (n: number) => new Date(Date.UTC(2026, 11, 1, 0, 0, n)).toISOString();
const nextOf = (r: Reply): string | undefined => /^<([^>]+)>; rel="next"$/.exec(String(r.headers.link ?? ''))?.[1];

test('a list walked page by page: every item once, oldest first, while items are made and removed between pages', async (t) => {
  const sock = await edge(t);
  // two items share a creation time: the id breaks the tie
  items = Array.from({ length: 25 }, (_, i) => ({ id: `c${String(i).padStart(2, '0')}`, createdAt: at(i === 7 ? 6 : i), blob: '' })).reverse();
  const unpaged = await get(sock, '/items');
  assert.deepEqual(JSON.parse(unpaged.bytes.toString()).map((i: Item) => i.id), items.map((i) => i.id), 'no page asked: every item, in the order it had');
  assert.equal(unpaged.headers['x-total-count'], '25');
  assert.equal(unpaged.headers.link, undefined);

  const seen: string[] = [];
  let path: string | undefined = '/items?limit=10&pad=1';
  let pages = 0;
  while (path) {
    const r = await get(sock, path);
    assert.equal(r.status, 200, r.bytes.toString());
    const page = JSON.parse(r.bytes.toString()) as Item[];
    assert.ok(page.length <= 10);
    seen.push(...page.map((i) => i.id));
    path = nextOf(r);
    if (path) assert.match(path, /^\/items\?limit=10&pad=1&after=[A-Za-z0-9_-]+$/, 'the next URL keeps the other parameters');
    if (++pages === 1) {
      // between pages: one already seen goes, one not yet seen goes, a new one comes (newest: at the end)
      items = items.filter((i) => i.id !== 'c03' && i.id !== 'c15');
      items.push({ id: 'c99', createdAt: at(99), blob: '' });
    }
  }
  assert.equal(pages, 3);
  const expected = [...Array.from({ length: 25 }, (_, i) => `c${String(i).padStart(2, '0')}`).filter((id) => id !== 'c15'), 'c99'];
  // c06 and c07 share a time: c06 sorts first by id; c03 was seen before it went
  assert.deepEqual(seen, expected, 'each item once, none skipped, oldest first');
});

test('a bad cursor is a 400 that says where cursors come from; limits are checked', async (t) => {
  const sock = await edge(t);
  items = [{ id: 'a', createdAt: at(1), blob: '' }];
  for (const bad of ['bm90LWpzb24', encodeCursor([]).slice(0, 2), Buffer.from('{"a":1}').toString('base64url'), 'has+plus']) {
    const r = await get(sock, `/items?after=${bad}`);
    assert.equal(r.status, 400, `${bad}: ${r.bytes.toString()}`);
  }
  assert.match((await get(sock, '/items?after=bm90LWpzb24')).bytes.toString(), /Link header/);
  assert.equal((await get(sock, '/items?limit=0')).status, 400);
  assert.equal((await get(sock, '/items?limit=1001')).status, 400);
  assert.deepEqual(decodeCursor(encodeCursor(['2026-12-01T00:00:00.000Z', 'id'])), ['2026-12-01T00:00:00.000Z', 'id']);
  // a cursor past the end: an empty page, no next
  const end = await get(sock, `/items?limit=5&after=${encodeCursor(['9999'])}`);
  assert.deepEqual(JSON.parse(end.bytes.toString()), []);
  assert.equal(end.headers.link, undefined);
});

test('large JSON bodies are gzip-compressed for clients that accept it; small ones and others go as they are', async (t) => {
  const sock = await edge(t);
  items = Array.from({ length: 200 }, (_, i) => ({ id: `i${i}`, createdAt: at(i), blob: '' }));
  const plain = await get(sock, '/items?pad=100');
  assert.ok(plain.bytes.length > COMPRESS_MIN_BYTES);
  assert.equal(plain.headers['content-encoding'], undefined, 'no Accept-Encoding: not compressed');
  assert.equal(plain.headers.vary, 'accept-encoding');
  const zipped = await get(sock, '/items?pad=100', { 'accept-encoding': 'gzip, deflate, br' });
  assert.equal(zipped.headers['content-encoding'], 'gzip');
  assert.equal(Number(zipped.headers['content-length']), zipped.bytes.length);
  assert.ok(zipped.bytes.length * 10 < plain.bytes.length, `${zipped.bytes.length} compressed of ${plain.bytes.length}`);
  assert.deepEqual(gunzipSync(zipped.bytes), plain.bytes);
  assert.equal((await get(sock, '/items?pad=100', { 'accept-encoding': 'gzip;q=0, identity' })).headers['content-encoding'], undefined, 'q=0 refuses gzip');
  const small = await get(sock, '/items?limit=2', { 'accept-encoding': 'gzip' });
  assert.equal(small.headers['content-encoding'], undefined, 'a small body is not worth it');
  assert.equal(JSON.parse(small.bytes.toString()).length, 2);
});

test('Accept-Encoding parsing', () => {
  const req = (v: string | undefined) => ({ headers: v === undefined ? {} : { 'accept-encoding': v } }) as never;
  assert.equal(acceptsGzip(req(undefined)), false);
  assert.equal(acceptsGzip(req('gzip')), true);
  assert.equal(acceptsGzip(req('br, GZIP;q=0.5')), true);
  assert.equal(acceptsGzip(req('gzip;q=0')), false);
  assert.equal(acceptsGzip(req('deflate, *')), true);
  assert.equal(acceptsGzip(req('identity')), false);
});

test('newest first: the walk goes from the largest key down', () => {
  const req = (url: string) => ({ url }) as never;
  const list = Array.from({ length: 5 }, (_, i) => ({ id: `o${i}`, createdAt: at(i) }));
  const first = paged(list, (o) => [o.createdAt, o.id], { limit: 2 }, req('/operations?limit=2'), (o) => o.id, 'descending');
  assert.deepEqual(first.body, ['o4', 'o3']);
  const after = /after=([A-Za-z0-9_-]+)/.exec(first.headers?.link ?? '')?.[1];
  assert.ok(after, first.headers?.link);
  const second = paged(list, (o) => [o.createdAt, o.id], { limit: 2, after }, req(`/operations?limit=2&after=${after}`), (o) => o.id, 'descending');
  assert.deepEqual(second.body, ['o2', 'o1']);
});
