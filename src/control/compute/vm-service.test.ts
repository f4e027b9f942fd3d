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
