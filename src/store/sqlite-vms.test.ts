import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from './sqlite.js';
import type { VmRecord } from './records.js';

function vm(id: string, name: string): VmRecord {
  return {
    id, name, projectId: 'p1', config: { cpus: 2, memoryMiB: 192, kernel: '/boot/vmlinuz', pin: [0, 1] },
    status: 'created', pid: null, exitCode: null, createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, savedAt: null, agent: 'local',
  };
}

test('sqlite store: VMs round-trip, survive reopen, resolve by prefix and name, names unique', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-vms-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  let s = new SqliteStore(file);
  s.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  s.vms.insert(vm('abc1' + '0'.repeat(28), 'web'));
  s.vms.insert(vm('abd2' + '0'.repeat(28), 'db'));
  assert.throws(() => s.vms.insert(vm('ffff' + '0'.repeat(28), 'web')), { code: 'AlreadyExists' });
  s.vms.update('abc1' + '0'.repeat(28), { status: 'saved', savedAt: '2026-01-01T00:00:00.000Z' });
  s.close();
  s = new SqliteStore(file);
  t.after(() => s.close());
  const web = s.vms.resolve('abc');
  assert.equal(web.name, 'web');
  assert.equal(web.status, 'saved');
  assert.deepEqual(web.config.pin, [0, 1]);
  assert.equal(s.vms.resolve('db').id, 'abd2' + '0'.repeat(28));
  assert.throws(() => s.vms.resolve('ab'), { code: 'InvalidArgument' });
  assert.throws(() => s.vms.resolve('nope'), { code: 'NotFound' });
  assert.deepEqual(s.vms.list({ status: ['saved'] }).map((v) => v.name), ['web']);
  s.vms.delete(web.id);
  assert.equal(s.vms.list().length, 1);
});

test('sqlite store: agents are registered again in place, and a VM keeps the agent it moved to', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-store-agents-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  let s = new SqliteStore(file);
  s.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  s.agents.put({ name: 'b', url: 'http://127.0.0.1:1', token: 't1', registeredAt: '2026-01-01T00:00:00.000Z' });
  s.agents.put({ name: 'a', url: 'unix:/run/a.sock', token: 't0', registeredAt: '2026-01-01T00:00:00.000Z' });
  s.agents.put({ name: 'b', url: 'http://127.0.0.1:2', token: 't2', registeredAt: '2026-01-02T00:00:00.000Z' });
  const id = 'abc1' + '0'.repeat(28);
  s.vms.insert(vm(id, 'web'));
  assert.equal(s.vms.get(id)?.agent, 'local');
  s.vms.update(id, { agent: 'b' });
  s.close();
  s = new SqliteStore(file);
  t.after(() => s.close());
  assert.deepEqual(s.agents.list().map((a) => [a.name, a.url, a.token]), [['a', 'unix:/run/a.sock', 't0'], ['b', 'http://127.0.0.1:2', 't2']]);
  assert.equal(s.vms.get(id)?.agent, 'b');
  s.agents.delete('a');
  assert.equal(s.agents.get('a'), undefined);
});
