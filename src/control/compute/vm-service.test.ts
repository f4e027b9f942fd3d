// VmService.reconcile across agents, against stub agents: what the control plane decides when
// the hosts and the store disagree after a crash in the middle of a migration. (The real
// migration, QEMU and agent processes, is test/migrate.e2e.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
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
    createVm: async () => undefined,
    removeVm: async (id: string) => {
      removed.push(id);
      delete vms[id];
    },
    onVmExit: () => undefined,
    close: async () => undefined,
  };
  return { agent: a as unknown as Agent & { close(): Promise<void> }, removed };
}

async function setup(t: { after(fn: () => Promise<void>): void }, local: ReturnType<typeof host>, b: ReturnType<typeof host>) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-vmsvc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  await store.projects.insert({ id: 'p2', name: 'tenant', parentId: null, createdAt: new Date().toISOString() });
  await store.agents.put({ name: 'b', url: 'http://127.0.0.1:1', token: 't'.repeat(32), registeredAt: new Date().toISOString() });
  const events = new EventBus();
  const quota = await QuotaService.open(store);
  await quota.ensureProject('p1', null);
  await quota.ensureProject('p2', null);
  const agents = await AgentDirectory.open(store, local.agent, 'local', () => b.agent);
  const vms = new VmService(store, agents, events, quota, new OperationService(store, events));
  const record = async (id: string, agent: string) => {
    await quota.admitVm(id, 'p1', { cpus: 1, memoryMiB: 128 });
    await store.vms.insert({
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
  const { store, vms, record } = await setup(t, local, b);
  await record('a1', 'local');
  const r = await vms.reconcile();
  assert.equal((await store.vms.get('a1'))?.agent, 'b');
  assert.equal((await store.vms.get('a1'))?.status, 'running');
  assert.deepEqual(local.removed, ['a1'], 'the source\'s paused leftover goes');
  assert.deepEqual(b.removed, []);
  assert.equal(r.orphansRemoved, 1);
});

test('reconcile: a VM on two agents whose recorded copy still runs keeps it; the half-arrived one is removed', async (t) => {
  // the control plane died during the pre-copy: the guest never left the source
  const local = host('local', { a2: 'running' });
  const b = host('b', { a2: 'running' });
  b.agent.inspectVm = async (id: string) => ({ id, lifecycle: 'running', qemuPid: 100, runState: 'inmigrate' }) as never;
  const { store, vms, record } = await setup(t, local, b);
  await record('a2', 'local');
  await vms.reconcile();
  assert.equal((await store.vms.get('a2'))?.agent, 'local');
  assert.deepEqual(b.removed, ['a2']);
  assert.deepEqual(local.removed, []);
});

test('reconcile: a VM only on another agent than recorded is followed; an agent that is down keeps its VMs\' records', async (t) => {
  const local = host('local', {});
  const b = host('b', { a3: 'running' });
  const { store, vms, record } = await setup(t, local, b);
  await record('a3', 'local');
  await vms.reconcile();
  assert.equal((await store.vms.get('a3'))?.agent, 'b');

  const down = host('b', {});
  down.agent.reconcileVms = async () => {
    throw Object.assign(new Error('agent b: connect ECONNREFUSED'), { code: 'Unavailable' });
  };
  const again = await setup(t, host('local', {}), down);
  await again.record('a4', 'b');
  const r = await again.vms.reconcile();
  assert.deepEqual(r.agentsDown, ['b']);
  assert.equal((await again.store.vms.get('a4'))?.status, 'running', 'not "lost" because its agent is down');
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
  const { vms, record, store } = await setup(t, local, host('b', {}));
  await record('v1', 'local');
  await record('v2', 'local');
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
  assert.equal(await store.vms.get('v2'), undefined);

  await assert.rejects(vms.stop('v1', 3601), { code: 'InvalidArgument', message: /0 to 3600 seconds/ });
  await assert.rejects(vms.stop('v1', 1e9), { code: 'InvalidArgument' });
});

test('create: host paths only with hostPaths (system administrators); images by name otherwise', async (t) => {
  const { vms } = await setup(t, host('local', {}), host('b', {}));
  for (const input of [{ kernel: '/boot/vmlinuz' }, { kernel: 'k', initrd: '/etc/shadow' }, { disk: '/etc/shadow' }]) {
    await assert.rejects(vms.create(input, 'p1'), { code: 'PermissionDenied', message: /host paths are for system administrators/ });
  }
  await assert.rejects(vms.create({ disk: 'relative.qcow2' }, 'p1', { hostPaths: true }), { code: 'InvalidArgument', message: /absolute host path/ });
  // images are refused on other agents (their blobs are in the embedded agent's content store)
  await assert.rejects(vms.create({ kernel: 'vmlinuz', agent: 'b' }, 'p1'), { code: 'InvalidArgument', message: /embedded agent/ });
});

test('names: unique per project across VMs and containers, free in other projects; lookups stay in the caller\'s scope', async (t) => {
  const { store, vms } = await setup(t, host('local', {}), host('b', {}));
  const boot = { kernel: '/boot/vmlinuz' };
  const mine = await vms.create({ ...boot, name: 'web' }, 'p1', { hostPaths: true });
  // another tenant uses the name (once refused: VM names were unique host-wide, and the refusal told p2 that p1 had one)
  const theirs = await vms.create({ ...boot, name: 'web' }, 'p2', { hostPaths: true });
  await assert.rejects(vms.create({ ...boot, name: 'web' }, 'p1', { hostPaths: true }), { code: 'Conflict', message: 'the name "web" is already in use by an instance' });
  await store.containers.insert({
    id: 'c'.repeat(64), name: 'db', projectId: 'p1', imageDigest: 'sha256:x', config: { image: 'x', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} },
    status: 'created', runtime: 'runc', pid: null, exitCode: null, oomKilled: false, restartCount: 0, stoppedByUser: false,
    createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, warnings: [],
  });
  await assert.rejects(vms.create({ ...boot, name: 'db' }, 'p1', { hostPaths: true }), { code: 'Conflict' }, 'a container of the project has the name');
  await vms.create({ ...boot, name: 'db' }, 'p2', { hostPaths: true });
  // a name means the VM of the scope's project; across several readable projects, the preferred one or a request to name the project
  assert.equal((await vms.get('web', { projectId: 'p2' })).id, theirs.id);
  assert.equal((await vms.get('web', { canRead: (p) => p === 'p1' })).id, mine.id, 'p2\'s VM is not in the scope: no ambiguity');
  assert.equal((await vms.get('web', { canRead: () => true, preferProjectId: 'p2' })).id, theirs.id);
  await assert.rejects(vms.get('web', { canRead: () => true }), { code: 'InvalidArgument', message: /different projects you can read; name the project/ });
  await assert.rejects(vms.get('web', { projectId: 'nope' }), { code: 'NotFound', message: 'no such vm: web' });
  // ids and their prefixes: only in scope
  await assert.rejects(vms.get(mine.id, { projectId: 'p2' }), { code: 'NotFound' });
  assert.equal((await vms.get(mine.id.slice(0, 12), { projectId: 'p1' })).id, mine.id);
  await assert.rejects(vms.get(mine.id.slice(0, 12), { projectId: 'p2' }), { code: 'NotFound' });
  assert.equal((await vms.get(mine.id)).id, mine.id, 'internal callers: everywhere');
  await assert.rejects(vms.get(''), { code: 'InvalidArgument' });
  // the name is free again once the VM is removed
  await vms.remove(mine.id, true);
  assert.equal((await vms.create({ ...boot, name: 'web' }, 'p1', { hostPaths: true })).projectId, 'p1');
});
