import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from './sqlite.js';
import type { ContainerRecord } from './records.js';

function container(id: string, name: string): ContainerRecord {
  return {
    id, name, projectId: 'p1', imageDigest: 'sha256:' + 'a'.repeat(64),
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} },
    status: 'created', runtime: 'runc', pid: null, exitCode: null, oomKilled: false, restartCount: 0,
    stoppedByUser: false, createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, warnings: [],
  };
}

test('sqlite store: containers round-trip, survive reopen, resolve by prefix and name', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  let s = new SqliteStore(file);
  s.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  s.containers.insert(container('abc123' + '0'.repeat(58), 'web'));
  s.containers.insert(container('abd456' + '0'.repeat(58), 'db'));
  assert.throws(() => s.containers.insert(container('ffff' + '0'.repeat(60), 'web')), { code: 'AlreadyExists' });
  s.containers.update('abc123' + '0'.repeat(58), { status: 'running', pid: 42, oomKilled: true });
  s.close();

  s = new SqliteStore(file);
  t.after(() => s.close());
  const web = s.containers.resolve('web');
  assert.equal(web.status, 'running');
  assert.equal(web.pid, 42);
  assert.equal(web.oomKilled, true);
  assert.equal(s.containers.resolve('abc').name, 'web');
  assert.throws(() => s.containers.resolve('ab'), { code: 'InvalidArgument' });
  assert.throws(() => s.containers.resolve('nope'), { code: 'NotFound' });
  assert.deepEqual(s.containers.list({ status: ['running'] }).map((c) => c.name), ['web']);
});

test('sqlite store: transactions roll back on error', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-'));
  const s = new SqliteStore(join(dir, 'db'));
  t.after(() => { s.close(); rmSync(dir, { recursive: true, force: true }); });
  assert.throws(() =>
    s.transaction(() => {
      s.projects.insert({ id: 'x', name: 'x', parentId: null, createdAt: 'now' });
      throw new Error('boom');
    }),
  );
  assert.equal(s.projects.get('x'), undefined);
});
