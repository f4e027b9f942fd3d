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
import { DiskImageService } from '../images/disk-image-service.js';
import { RecordingScheduler } from './test-scheduler.js';
import type { VmHostState } from '../../agent/agent.js';
import type { VmInspect } from '../../agent/drivers/vm/vm-driver.js';
import { FakeAgent } from '../testing/fake-agent.js';
import { InvalidArgument, Unavailable } from '../../core/errors.js';

/** A host with some VMs, each running or left by a migration in QEMU's postmigrate state. */
function host(name: string, vms: Record<string, 'running' | 'postmigrate'>) {
  const removed: string[] = [];
  const agent = new FakeAgent({ name })
    .override('reconcileVms', async () => ({ killed: [], removed: [] }))
    .override('listVms', async () => Object.keys(vms))
    .override('vmState', async (id) => ({ status: 'running', pid: 100, lifecycle: vms[id] ? 'running' : 'stopped' }))
    // the fields reconcile reads; the rest of a real inspection does not matter here
    .override('inspectVm', async (id) => ({ id, lifecycle: 'running', qemuPid: 100, ...(vms[id] ? { runState: vms[id] } : {}) }) as VmInspect)
    .override('removeVm', async (id) => {
      removed.push(id);
      delete vms[id];
    });
  return { agent, removed };
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
  t.after(() => agents.close());
  const scheduler = new RecordingScheduler(agents);
  const disks = new DiskImageService(store, local.agent, events, async () => undefined);
  const vms = new VmService(store, agents, events, quota, new OperationService(store, events), scheduler, undefined, disks);
  const record = async (id: string, agent: string) => {
    await quota.admitVm(id, 'p1', { cpus: 1, memoryMiB: 128 });
    await store.vms.insert({
      id, name: `vm-${id}`, projectId: 'p1', config: { cpus: 1, memoryMiB: 128, kernel: '/boot/k' }, status: 'running', pid: 100, exitCode: null,
      createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, savedAt: null, agent,
    });
  };
  return { store, vms, record, scheduler, agents, disks, quota };
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
  down.agent.override('reconcileVms', async () => {
    throw new Unavailable('agent b: connect ECONNREFUSED');
  });
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
  const dead = new Set<string>();
  const stopped: VmHostState = { status: 'stopped', exitCode: 137, lifecycle: 'stopped' };
  // QEMU already gone (killed before the stop reached it): the stop returns at once
  base.agent
    .override('stopVm', (id) => (dead.has(id) ? Promise.resolve(stopped) : new Promise((ok) => waiting.set(id, () => ok(stopped)))))
    .override('killVm', async (id, signal) => {
      kills.push(`${id}:${signal}`);
      dead.add(id);
      waiting.get(id)?.();
    })
    .override('vmState', async () => stopped);
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
  await assert.rejects(vms.create({ kernel: 'vmlinuz', agent: 'b' }, 'p1'), { code: 'NotFound', message: /no such disk image: vmlinuz/ }, 'names are images of the image service');
});

test('names: 80 creates at once without names all succeed with names of their own', async (t) => {
  const { vms } = await setup(t, host('local', {}), host('b', {}));
  const made = await Promise.allSettled(Array.from({ length: 80 }, () => vms.create({ kernel: '/boot/vmlinuz' }, 'p1', { hostPaths: true })));
  assert.deepEqual(made.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), []);
  assert.equal(new Set(made.map((r) => (r as PromiseFulfilledResult<{ name: string }>).value.name)).size, 80);
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
    createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, warnings: [], host: 'local',
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

test('placement: the scheduler chooses the host (--host and its older name --agent pin it), the claim is released with the VM', async (t) => {
  const { vms, scheduler } = await setup(t, host('local', {}), host('b', {}));
  const boot = { kernel: '/boot/vmlinuz' };
  const anywhere = await vms.create({ ...boot, name: 'any', cpus: 2, memoryMiB: 256 }, 'p1', { hostPaths: true });
  assert.equal(anywhere.agent, 'local', 'the scheduler\'s choice');
  const asked = scheduler.asked.at(-1)!;
  assert.deepEqual([asked.consumerId, asked.kind, asked.vcpus, asked.memoryBytes, asked.host], [anywhere.id, 'vm', 2, 256 * 1024 * 1024, undefined]);
  const pinned = await vms.create({ ...boot, name: 'pinned', host: 'b', zone: 'z1', constraints: { gpu: 'no' } }, 'p1', { hostPaths: true });
  assert.deepEqual([pinned.agent, scheduler.claims.get(pinned.id), scheduler.asked.at(-1)!.zone, scheduler.asked.at(-1)!.constraints], ['b', 'b', 'z1', { gpu: 'no' }]);
  const old = await vms.create({ ...boot, name: 'old', agent: 'b' }, 'p1', { hostPaths: true });
  assert.equal(old.agent, 'b', '--agent still pins');
  await assert.rejects(vms.create({ ...boot, name: 'two', agent: 'b', host: 'local' }, 'p1', { hostPaths: true }), { code: 'InvalidArgument', message: /name two hosts/ });
  await vms.remove(pinned.id, true);
  assert.equal(scheduler.claims.has(pinned.id), false, 'released with the VM');
  assert.equal(scheduler.claims.get(anywhere.id), 'local');
});

test('a VM on a host the directory finds down shows "unknown" (the stored status kept) until the host answers again', async (t) => {
  const local = host('local', { l1: 'running' });
  const b = host('b', { f1: 'running' });
  const { store, vms, record, agents } = await setup(t, local, b);
  await record('l1', 'local');
  await record('f1', 'b');
  await agents.refresh();
  const shown = async () => (await vms.list()).map((v) => [v.id, vms.view(v).status]).sort();
  assert.deepEqual(await shown(), [['f1', 'running'], ['l1', 'running']]);
  b.agent.failNext('info', new Unavailable('connect ECONNREFUSED'));
  await agents.refresh(['b']);
  assert.deepEqual(await shown(), [['f1', 'unknown'], ['l1', 'running']]);
  assert.equal((await store.vms.get('f1'))?.status, 'running', 'the record is kept as it was');
  await agents.refresh(['b']);
  assert.deepEqual(await shown(), [['f1', 'running'], ['l1', 'running']]);
});

test('images: a VM from image-service images placed on host b gets them carried there and boots from b\'s paths; a failed carry leaves nothing', async (t) => {
  const local = host('local', {});
  const b = host('b', {});
  const { store, vms, disks, scheduler, quota } = await setup(t, local, b);
  const root = await disks.import('root.qcow2', 'root', 'p1');
  const kernel = await disks.import('vmlinuz-6.1', 'vmlinuz', 'p1', 'kernel');

  const far = await vms.create({ name: 'far', image: 'root', kernel: 'vmlinuz', append: 'console=ttyS0', host: 'b' }, 'p1');
  assert.equal(far.agent, 'b');
  const req = b.agent.calls('createVm')[0]![0];
  assert.deepEqual([req.disk, req.kernel], [`/fake/b/blobs/${root.digest}`, `/fake/b/blobs/${kernel.digest}`], 'the paths are b\'s, from its adopt');
  assert.deepEqual([(await store.vms.get(far.id))?.config.disk, (await store.vms.get(far.id))?.config.kernel], [req.disk, req.kernel], 'and recorded');
  assert.deepEqual((await store.vms.get(far.id))?.config.diskImage, { name: 'root', digest: root.digest });
  assert.deepEqual(b.agent.calls('writeBlob').map(([d]) => d).sort(), [root.digest, kernel.digest].sort(), 'each blob carried once');
  assert.deepEqual(b.agent.calls('adoptDiskImage').map(([d, kind]) => `${kind} ${d}`).sort(), [`disk ${root.digest}`, `kernel ${kernel.digest}`].sort());
  assert.deepEqual(local.agent.calls('readBlob').map(([d]) => d).sort(), [root.digest, kernel.digest].sort(), 'from the embedded agent');
  assert.deepEqual(local.agent.calls('createVm'), []);

  // a second VM there: nothing carried again, checked there again
  await vms.create({ name: 'far2', image: 'root', kernel: 'vmlinuz', host: 'b' }, 'p1');
  assert.equal(b.agent.calls('writeBlob').length, 2);
  // on the embedded agent the path is its own, nothing carried
  const near = await vms.create({ name: 'near', image: 'root', kernel: 'vmlinuz', host: 'local' }, 'p1');
  assert.equal(near.config.disk, `/fake/local/blobs/${root.digest}`);
  assert.equal(local.agent.calls('writeBlob').length, 0);

  // the holder fails mid-way: the create fails naming the image and both hosts, and leaves nothing
  const other = await disks.import('other.qcow2', 'other', 'p1');
  local.agent.failNext('readBlob', new Unavailable('agent local: connection reset'));
  const before = (await store.vms.list({})).length;
  await assert.rejects(vms.create({ name: 'broken', image: 'other', kernel: 'vmlinuz', host: 'b' }, 'p1'),
    { code: 'Unavailable', message: /carrying VM image other from host local to host b: agent local: connection reset/ });
  assert.equal((await store.vms.list({})).length, before, 'no record');
  assert.equal([...scheduler.claims.keys()].length, 3, 'no claim beyond the three VMs');
  assert.equal((await store.vms.byName('p1', 'broken')), undefined);
  assert.equal(b.agent.blobs.has(other.digest), false);
  // the target refuses the image (what an import refuses): no other holder is tried, the refusal is the answer
  b.agent.failNext('adoptDiskImage', new InvalidArgument('refusing a qcow2 with a backing file (/etc/passwd): it would reach another file on the host'));
  await assert.rejects(vms.create({ name: 'hostile', image: 'other', kernel: 'vmlinuz', host: 'b' }, 'p1'), { code: 'InvalidArgument', message: /backing file/ });
  const hostileId = scheduler.asked.at(-1)!.consumerId;
  assert.deepEqual([quota.holds(hostileId), scheduler.claims.has(hostileId), await store.vms.get(hostileId)], [false, false, undefined], 'no quota, claim or record');
  assert.deepEqual(b.agent.calls('createVm').map(([r]) => r.name), ['far', 'far2'], 'nothing made on b for the failed creates');
});

test('a VM exit reported by a host the VM is not recorded on (a migration\'s source) changes nothing; its own host\'s is recorded', async (t) => {
  const asked: string[] = [];
  const local = host('local', {});
  const b = host('b', { m1: 'running' });
  // each host answers for its own copy: local's is gone (the source after the move), b's runs until it stops
  local.agent.override('vmState', async (id) => {
    asked.push(`local/${id}`);
    return { status: 'stopped', lifecycle: 'stopped' };
  });
  let bRuns = true;
  b.agent.override('vmState', async (id) => {
    asked.push(`b/${id}`);
    return bRuns ? { status: 'running', pid: 100, lifecycle: 'running' } : { status: 'stopped', lifecycle: 'stopped' };
  });
  const { store, vms, record } = await setup(t, local, b);
  await record('m1', 'b');
  await vms.handleExit('m1', 'local');
  assert.equal((await store.vms.get('m1'))?.status, 'running', 'the source\'s exit is not the VM\'s');
  assert.deepEqual(asked, [], 'and no host is asked about it');
  bRuns = false;
  await vms.handleExit('m1', 'b');
  assert.equal((await store.vms.get('m1'))?.status, 'stopped', 'its own host\'s exit is recorded');
  assert.deepEqual(asked, ['b/m1']);
});
