import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type Server } from 'node:http';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DashboardFiles, isDashboardPath } from './static.js';

let dir: string;
let server: Server;
let port: number;

function get(target: string, method = 'GET'): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((ok, fail) => {
    const req = request({ host: '127.0.0.1', port, path: target, method }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => ok({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', fail);
    req.end();
  });
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'nimbus-dashboard-'));
  const root = path.join(dir, 'web');
  mkdirSync(path.join(root, 'assets'), { recursive: true });
  writeFileSync(path.join(root, 'index.html'), '<!doctype html><title>app</title>');
  writeFileSync(path.join(root, 'assets', 'index-abc123.js'), 'export {};');
  writeFileSync(path.join(root, 'assets', 'index-abc123.css'), 'body{}');
  writeFileSync(path.join(dir, 'secret.txt'), 'outside');
  symlinkSync(path.join(dir, 'secret.txt'), path.join(root, 'assets', 'link.txt'));
  const files = new DashboardFiles(root);
  const missing = new DashboardFiles(path.join(dir, 'not-built'));
  server = createServer((req, res) => {
    const which = req.headers['x-missing'] ? missing : files;
    void which.handle(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});

after(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

test('isDashboardPath: /ui and below only', () => {
  assert.equal(isDashboardPath('/ui'), true);
  assert.equal(isDashboardPath('/ui/assets/x.js?v=1'), true);
  assert.equal(isDashboardPath('/uix'), false);
  assert.equal(isDashboardPath('/containers'), false);
  assert.equal(isDashboardPath(undefined), false);
});

test('index and deep links: the app, not cached, with the security headers', async () => {
  for (const target of ['/ui/', '/ui/instances/container/abc', '/ui/quota']) {
    const r = await get(target);
    assert.equal(r.status, 200, target);
    assert.equal(r.body, '<!doctype html><title>app</title>');
    assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal(r.headers['cache-control'], 'no-cache');
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.match(String(r.headers['content-security-policy']), /default-src 'self'.*script-src 'self'.*frame-ancestors 'none'/);
  }
  const bare = await get('/ui');
  assert.equal(bare.status, 308);
  assert.equal(bare.headers.location, '/ui/');
});

test('hashed assets: their content type and immutable', async () => {
  const js = await get('/ui/assets/index-abc123.js');
  assert.equal(js.status, 200);
  assert.equal(js.headers['content-type'], 'text/javascript; charset=utf-8');
  assert.equal(js.headers['cache-control'], 'public, max-age=31536000, immutable');
  assert.equal((await get('/ui/assets/index-abc123.css')).headers['content-type'], 'text/css; charset=utf-8');
  const head = await get('/ui/assets/index-abc123.js', 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
  assert.equal((await get('/ui/assets/index-gone.js')).status, 404);
});

test('nothing outside the build directory: dot segments, encoded or not, and symbolic links out', async () => {
  for (const target of ['/ui/../secret.txt', '/ui/%2e%2e/secret.txt', '/ui/assets/..%2f..%2fsecret.txt', '/ui/./index.html', '/ui/a%5c..%5csecret.txt', '/ui/%00', '/ui/%zz']) {
    const r = await get(target);
    assert.equal(r.status, 400, `${target} → ${r.status}`);
    assert.notEqual(r.body, 'outside');
  }
  const link = await get('/ui/assets/link.txt');
  assert.equal(link.status, 404);
  assert.notEqual(link.body, 'outside');
});

test('only GET and HEAD; a missing build says so', async () => {
  const post = await get('/ui/', 'POST');
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
  const r = await new Promise<number>((ok, fail) => {
    const req = request({ host: '127.0.0.1', port, path: '/ui/', headers: { 'x-missing': '1' } }, (res) => {
      res.resume();
      ok(res.statusCode ?? 0);
    });
    req.on('error', fail);
    req.end();
  });
  assert.equal(r, 503);
});
