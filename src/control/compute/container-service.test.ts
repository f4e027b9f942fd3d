// ContainerService's create-and-start (POST /containers with start: true), against a stub agent
// whose start can be made to fail: what is left behind, and what the error says. (The real
// runtime path is test/engine.e2e.test.ts and test/warm-start.e2e.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { ImageService } from '../images/image-service.js';
import { NetworkService } from '../networks/network-service.js';
import { ContainerService } from './container-service.js';
import { Internal, isNimbusError } from '../../core/errors.js';
import type { Agent } from '../../agent/agent.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

function setup(t: { after(fn: () => void): void }, startFails: boolean) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-'));
  const store = new SqliteStore(join(dir, 'nimbus.db'));
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const calls: string[] = [];
  const agent = {
    claimWarmContainer: () => undefined,
    createContainer: async (req: { id: string }) => {
      calls.push(`create ${req.id}`);
      return { status: 'created', warnings: ['nofile clamped'], runtime: 'runc' };
    },
    startContainer: async (id: string) => {
      calls.push(`start ${id}`);
      if (startFails) throw new Internal('runc start: the init process is gone');
      return { status: 'running', pid: 4242 };
    },
    removeContainer: async (id: string) => {
      calls.push(`remove ${id}`);
    },
    stopContainer: async () => ({ status: 'stopped' }),
    containerState: async () => ({ status: 'created' }),
    onContainerExit: () => undefined,
  } as unknown as Agent;
  store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const events = new EventBus();
  const quota = new QuotaService(store);
  quota.ensureProject('p1', null);
  const operations = new OperationService(store, events);
  const images = new ImageService(store, agent, events, operations, []);
  const networks = new NetworkService(store, agent, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/16' });
  const containers = new ContainerService(store, agent, images, events, quota, operations, networks);
  const now = new Date().toISOString();
  store.images.upsert({ digest: DIGEST, projectId: 'p1', indexDigest: null, configDigest: DIGEST, config: { config: { Cmd: ['sh'] } }, layers: [], chainId: DIGEST, size: 1, createdAt: now });
  store.images.setTag({ projectId: 'p1', name: 'example.test/busybox:latest', digest: DIGEST, updatedAt: now });
  const input = (extra: Record<string, unknown> = {}) =>
    ({ image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  return { store, containers, calls, input };
}

test('create with start: one call creates and starts it, and records it running', async (t) => {
  const { containers, calls, input } = setup(t, false);
  const c = await containers.create(input({ name: 'one' }), 'p1', { projectId: 'p1' }, { start: true });
  assert.equal(c.status, 'running');
  assert.equal(c.pid, 4242);
  assert.deepEqual(calls, [`create ${c.id}`, `start ${c.id}`]);
  assert.equal(containers.get('one').status, 'running');
  assert.equal(containers.get('one').runtime, 'runc', 'the runtime the agent chose, written with the start');
  assert.deepEqual(containers.get('one').warnings, ['nofile clamped']);
  const plain = await containers.create(input({ name: 'two' }), 'p1', { projectId: 'p1' });
  assert.deepEqual([plain.status, containers.get('two').runtime, containers.get('two').warnings], ['created', 'runc', ['nofile clamped']], 'a create alone writes them at once');
});

test('create with start: a failed start leaves the container created, and the error names it', async (t) => {
  const { containers, calls, input } = setup(t, true);
  const err = await containers.create(input({ name: 'kept' }), 'p1', { projectId: 'p1' }, { start: true }).then(
    () => assert.fail('the start should have failed'),
    (e: unknown) => e,
  );
  assert.ok(isNimbusError(err));
  assert.equal(err.code, 'Internal');
  assert.match(err.message, /init process is gone/);
  const c = containers.get('kept');
  assert.equal(c.status, 'created', 'created, not started');
  assert.deepEqual([c.runtime, c.warnings], ['runc', ['nofile clamped']], 'what the create learnt is kept');
  assert.deepEqual(err.details, { container: c.id, removed: false });
  assert.ok(!calls.some((x) => x.startsWith('remove')), 'nothing removed');
});

test('create with start: a failed start of an autoRemove container removes it', async (t) => {
  const { store, containers, calls, input } = setup(t, true);
  const err = await containers.create(input({ name: 'gone', autoRemove: true }), 'p1', { projectId: 'p1' }, { start: true }).then(
    () => assert.fail('the start should have failed'),
    (e: unknown) => e,
  );
  assert.ok(isNimbusError(err));
  const id = String(err.details?.container);
  assert.equal(err.details?.removed, true);
  assert.equal(store.containers.get(id), undefined, 'its record is gone');
  assert.ok(calls.includes(`remove ${id}`), 'and its agent state');
});
