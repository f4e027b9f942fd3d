// VmService.reconcile across agents, against stub agents: what the control plane decides when
// the hosts and the store disagree after a crash in the middle of a migration. (The real
// migration, QEMU and agent processes, is test/migrate.e2e.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { AgentDirectory } from '../agents/agent-directory.js';
import { VmService } from './vm-service.js';
import type { Agent } from '../../agent/agent.js';

/** A host with some VMs, each running or left by a migration in QEMU's postmigrate state. */
function host(name: string, vms: Record<string, 'running' | 'postmigrate'>) {
  const removed: string[] = [];
  const a = {
    info: async () => ({ name, hostname: name, cpus: 2, memoryBytes: 1 << 30 }),
    reconcileVms: async () => ({ killed: [], removed: [] }),
    listVms: async () => Object.keys(vms),
    vmState: async (id: string) => ({ status: 'running', pid: 100, lifecycle: vms[id] ? 'running' : 'stopped' }),
    inspectVm: async (id: string) => ({ id, lifecycle: 'running', qemuPid: 100, runState: vms[id] }),
    removeVm: async (id: string) => {
      removed.push(id);
      delete vms[id];
    },
    onVmExit: () => undefined,
    close: async () => undefined,
  };
  return { agent: a as unknown as Agent & { close(): Promise<void> }, removed };
}

function setup(t: { after(fn: () => void): void }, local: ReturnType<typeof host>, b: ReturnType<typeof host>) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-vmsvc-'));
  const store = new SqliteStore(join(dir, 'nimbus.db'));
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  store.agents.put({ name: 'b', url: 'http://127.0.0.1:1', token: 't'.repeat(32), registeredAt: new Date().toISOString() });
  const events = new EventBus();
  const quota = new QuotaService(store);
  quota.ensureProject('p1', null);
  const agents = new AgentDirectory(store, local.agent, 'local', () => b.agent);
  const vms = new VmService(store, agents, events, quota, new OperationService(store, events));
  const record = (id: string, agent: string) => {
    quota.admitVm(id, 'p1', { cpus: 1, memoryMiB: 128 });
    store.vms.insert({
      id, name: `vm-${id}`, projectId: 'p1', config: { cpus: 1, memoryMiB: 128, kernel: '/boot/k' }, status: 'running', pid: 100, exitCode: null,
      createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, savedAt: null, agent,
    });
  };
  return { store, vms, record };
}

test('reconcile: a VM on two agents follows the copy that runs; the postmigrate source is removed', async (t) => {
  // the control plane died after the guest resumed on b, before the record said so
  const local = host('local', { a1: 'postmigrate' });
  const b = host('b', { a1: 'running' });
  const { store, vms, record } = setup(t, local, b);
  record('a1', 'local');
  const r = await vms.reconcile();
  assert.equal(store.vms.get('a1')?.agent, 'b');
  assert.equal(store.vms.get('a1')?.status, 'running');
  assert.deepEqual(local.removed, ['a1'], 'the source\'s paused leftover goes');
  assert.deepEqual(b.removed, []);
  assert.equal(r.orphansRemoved, 1);
});

test('reconcile: a VM on two agents whose recorded copy still runs keeps it; the half-arrived one is removed', async (t) => {
  // the control plane died during the pre-copy: the guest never left the source
  const local = host('local', { a2: 'running' });
  const b = host('b', { a2: 'running' });
  b.agent.inspectVm = async (id: string) => ({ id, lifecycle: 'running', qemuPid: 100, runState: 'inmigrate' }) as never;
  const { store, vms, record } = setup(t, local, b);
  record('a2', 'local');
  await vms.reconcile();
  assert.equal(store.vms.get('a2')?.agent, 'local');
  assert.deepEqual(b.removed, ['a2']);
  assert.deepEqual(local.removed, []);
});

test('reconcile: a VM only on another agent than recorded is followed; an agent that is down keeps its VMs\' records', async (t) => {
  const local = host('local', {});
  const b = host('b', { a3: 'running' });
  const { store, vms, record } = setup(t, local, b);
  record('a3', 'local');
  await vms.reconcile();
  assert.equal(store.vms.get('a3')?.agent, 'b');

  const down = host('b', {});
  down.agent.reconcileVms = async () => {
    throw Object.assign(new Error('agent b: connect ECONNREFUSED'), { code: 'Unavailable' });
  };
  const again = setup(t, host('local', {}), down);
  again.record('a4', 'b');
  const r = await again.vms.reconcile();
  assert.deepEqual(r.agentsDown, ['b']);
  assert.equal(again.store.vms.get('a4')?.status, 'running', 'not "lost" because its agent is down');
});

/** A host whose guests ignore the ACPI power button: a graceful stop lasts until a SIGKILL. */
function deafHost() {
  const base = host('local', { v1: 'running', v2: 'running' });
  const kills: string[] = [];
  const waiting = new Map<string, () => void>();
  const a = base.agent as unknown as Record<string, unknown>;
  const dead = new Set<string>();
  const stopped = { status: 'stopped', pid: null, exitCode: 137, lifecycle: 'stopped' };
  // QEMU already gone (killed before the stop reached it): the stop returns at once
  a.stopVm = (id: string) => (dead.has(id) ? Promise.resolve(stopped) : new Promise((ok) => waiting.set(id, () => ok(stopped))));
  a.killVm = async (id: string, signal: string) => {
    kills.push(`${id}:${signal}`);
    dead.add(id);
    waiting.get(id)?.();
  };
  a.vmState = async () => ({ status: 'stopped', pid: null, exitCode: 137, lifecycle: 'stopped' });
  return { ...base, kills };
}

test('kill and rm -f cut a graceful stop short; a stop timeout has a maximum (issue 13, finding 2)', async (t) => {
  const local = deafHost();
  const { vms, record, store } = setup(t, local, host('b', {}));
  record('v1', 'local');
  record('v2', 'local');
  const stop = vms.stop('v1', 3600);
  const t0 = Date.now();
  const killed = await vms.kill('v1');
  assert.ok(Date.now() - t0 < 1000, `kill waited ${Date.now() - t0} ms behind the stop`);
  assert.equal(killed.status, 'stopped');
  assert.equal((await stop).status, 'stopped', 'the stop ends with the kill');
  assert.deepEqual(local.kills, ['v1:SIGKILL']);

  const stop2 = vms.stop('v2', 3600);
  const t1 = Date.now();
  await vms.remove('v2', true);
  assert.ok(Date.now() - t1 < 1000, `rm -f waited ${Date.now() - t1} ms behind the stop`);
  await stop2;
  assert.equal(store.vms.get('v2'), undefined);

  assert.throws(() => vms.stop('v1', 3601), { code: 'InvalidArgument', message: /0 to 3600 seconds/ });
  assert.throws(() => vms.stop('v1', 1e9), { code: 'InvalidArgument' });
});

test('create: host paths only with hostPaths (system administrators); images by name otherwise', async (t) => {
  const { vms } = setup(t, host('local', {}), host('b', {}));
  for (const input of [{ kernel: '/boot/vmlinuz' }, { kernel: 'k', initrd: '/etc/shadow' }, { disk: '/etc/shadow' }]) {
    await assert.rejects(vms.create(input, 'p1'), { code: 'PermissionDenied', message: /host paths are for system administrators/ });
  }
  await assert.rejects(vms.create({ disk: 'relative.qcow2' }, 'p1', { hostPaths: true }), { code: 'InvalidArgument', message: /absolute host path/ });
  // images are refused on other agents (their blobs are in the embedded agent's content store)
  await assert.rejects(vms.create({ kernel: 'vmlinuz', agent: 'b' }, 'p1'), { code: 'InvalidArgument', message: /embedded agent/ });
});
