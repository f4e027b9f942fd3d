// Block volumes in the control plane over a real store and quota ledger, with fake agents (the
// qcow2 side is src/agent/volumes/block-volume-store.test.ts; hot-plug seen from a real guest is
// test/vm.e2e.test.ts): quota, snapshots and clones, the one-writer rule, tenancy, hosts, boot
// volumes, what a VM's removal and moves do to its volumes.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { AgentDirectory } from '../agents/agent-directory.js';
import { VmService } from '../compute/vm-service.js';
import { RecordingScheduler } from '../compute/test-scheduler.js';
import { FakeAgent } from '../testing/fake-agent.js';
import { VolumeService } from './volume-service.js';
import { tooOldFor } from '../../agent/remote/agent-protocol.js';

const MiB = 1024 * 1024;
const code = (c: string, message?: RegExp) => (e: unknown) => {
  assert.equal((e as { code?: string }).code, c, String(e));
  if (message) assert.match((e as Error).message, message);
  return true;
};

async function setup(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-blkvol-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const quota = await QuotaService.open(store);
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: now });
  await store.projects.insert({ id: 'p2', name: 'tenant', parentId: null, createdAt: now });
  await quota.ensureProject('p1', null);
  await quota.ensureProject('p2', null);
  await store.agents.put({ name: 'b', url: 'http://127.0.0.1:1', token: 't'.repeat(32), registeredAt: now });
  const local = new FakeAgent({ name: 'local' });
  const b = new FakeAgent({ name: 'b' });
  const agents = await AgentDirectory.open(store, local, 'local', () => b);
  t.after(async () => {
    await agents.close();
    quota.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const events = new EventBus();
  const scheduler = new RecordingScheduler(agents);
  const volumes = new VolumeService(store, agents, scheduler, quota, events);
  const vms = new VmService(store, agents, events, quota, new OperationService(store, events), scheduler);
  vms.bootVolumes = volumes.block;
  volumes.block.vmLock = (id, fn) => vms.lockedVm(id, fn);
  const vm = (name: string, projectId = 'p1', host = 'local') => vms.create({ name, kernel: '/boot/k', memoryMiB: 64, host }, projectId, { hostPaths: true });
  return { store, quota, volumes, vms, local, b, vm, scheduler };
}

test('block volumes: charged like filesystem volumes; snapshots charge disk too; clones start from a snapshot on its host', async (t) => {
  const { store, quota, volumes, local } = await setup(t);
  await quota.setLimits('p1', { hard: { volumes: 3, disk: 150 } });
  const v = await volumes.create({ name: 'disk', sizeBytes: 64 * MiB, type: 'block' }, 'p1');
  assert.equal(v.type, 'block');
  assert.equal(v.status, 'ready');
  assert.deepEqual(local.calls('createBlockVolume'), [[v.id, 64 * MiB, {}]]);
  assert.equal(local.calls('createVolume').length, 0, 'no ext4 image for a block volume');
  assert.equal(quota.show('p1').resources.disk.used, 64);
  assert.equal(quota.show('p1').resources.volumes.used, 1);

  // snapshot: charged the volume's size in disk (Cinder counts snapshots in gigabytes)
  const s = await volumes.block.createSnapshot(v, 'before');
  assert.equal(s.status, 'ready');
  assert.equal(quota.show('p1').resources.disk.used, 128);
  await assert.rejects(volumes.block.createSnapshot(v, 'before'), code('Conflict', /already exists/));
  // over the disk quota: refused, nothing left
  await assert.rejects(volumes.block.createSnapshot(v, 'more'), code('QuotaExceeded'));
  await volumes.block.createSnapshot(v, 'too-much').catch(() => undefined);
  assert.deepEqual((await store.volumes.listSnapshots()).map((x) => x.name), ['before']);

  // a clone: of the snapshot's size by default, made on the snapshot's host
  await quota.setLimits('p1', { hard: { volumes: 2, disk: 1000 } });
  const c = await volumes.create({ name: 'clone', fromSnapshot: 'before' }, 'p1');
  assert.deepEqual([c.type, c.sizeBytes, c.sourceSnapshot, c.host], ['block', 64 * MiB, s.id, 'local']);
  assert.deepEqual(local.calls('createBlockVolume').at(-1), [c.id, 64 * MiB, { fromSnapshot: s.id }]);
  await assert.rejects(volumes.create({ name: 'small', fromSnapshot: 'before', sizeBytes: 32 * MiB }, 'p1'), code('InvalidArgument', /at least its snapshot's size/));
  await assert.rejects(volumes.create({ name: 'elsewhere', fromSnapshot: 'before', host: 'b' }, 'p1'), code('Conflict', /on host local/));
  // another project's snapshot is not there (tenancy)
  await assert.rejects(volumes.create({ name: 'theirs', fromSnapshot: 'before' }, 'p2'), code('NotFound'));
  // type mix-ups are usage errors
  await assert.rejects(volumes.create({ name: 'x', shared: true }, 'p1'), code('InvalidArgument', /--shared is for block volumes/));
  await assert.rejects(volumes.create({ name: 'x', type: 'filesystem', fromSnapshot: 'before' }, 'p1'), code('InvalidArgument'));
  await assert.rejects(volumes.create({ name: 'x', type: 'block', shared: true, fromSnapshot: 'before' }, 'p1'), code('InvalidArgument', /raw disk/));
  const shared = await volumes.create({ name: 'shared', type: 'block', shared: true, sizeBytes: 16 * MiB }, 'p1').catch((e: unknown) => e);
  assert.equal((shared as { code?: string }).code, 'QuotaExceeded', 'volumes: 2 is the limit');

  // the volume with a snapshot cannot go; the snapshot goes, then the volume; quota all back
  await assert.rejects(volumes.remove('disk', { canRead: () => true }), code('Conflict', /has snapshot before/));
  await volumes.block.removeSnapshot(s);
  assert.deepEqual(local.calls('removeBlockSnapshot'), [[s.id]]);
  await volumes.remove('disk', { canRead: () => true });
  await volumes.remove('clone', { canRead: () => true });
  assert.deepEqual(local.calls('removeBlockVolume').map((a) => a[0]), [v.id, c.id]);
  assert.equal(quota.show('p1').resources.disk.used, 0);
  assert.equal(quota.show('p1').resources.volumes.used, 0);
});

test('attach: one read-write holder unless shared, readers only without a writer; same project and host; conflicts name the holder', async (t) => {
  const { volumes, vms, local, vm } = await setup(t);
  const v = await volumes.create({ name: 'data', sizeBytes: 32 * MiB, type: 'block' }, 'p1');
  const a = await vm('a');
  const b = await vm('b');
  const r = await volumes.block.attach(a, 'data');
  assert.equal(r.live, false, 'a created VM gets it at its start');
  assert.deepEqual(local.calls('attachVmVolume'), [[a.id, { volumeId: v.id }]]);
  assert.deepEqual((await vms.get('a')).config.volumes, [{ volumeId: v.id }]);
  await assert.rejects(volumes.block.attach(a, 'data'), code('Conflict', /already/));
  await assert.rejects(volumes.block.attach(b, 'data'), code('Conflict', /attached read-write to VM a/));
  await assert.rejects(volumes.block.attach(b, 'data', { readonly: true }), code('Conflict', /VM a/));
  assert.equal(local.calls('attachVmVolume').length, 1, 'refusals never reach the host');
  // a running VM: hot-plugged (the host says live)
  await vms.start('b');
  await volumes.block.detach(a, 'data');
  assert.deepEqual((await vms.get('a')).config.volumes, []);
  assert.equal((await volumes.block.attach(b, 'data')).live, true);
  // a running holder: no snapshot (Cinder refuses in-use volumes), no removal
  await assert.rejects(volumes.block.createSnapshot(v, 'snap'), code('Conflict', /in use by running VM b/));
  await assert.rejects(volumes.remove('data', { canRead: () => true }), code('Conflict', /attached to VM b/));
  assert.deepEqual((await volumes.inspect(v)).attachedTo, [{ vm: 'b', readonly: false, boot: false }]);
  // a running holder: its volume is carried by the move (the move itself: the next test)
  await volumes.block.detach(b, 'data');
  // readers share a volume nobody writes; then no writer may join
  await volumes.block.attach(a, 'data', { readonly: true });
  await volumes.block.attach(b, 'data', { readonly: true });
  const c = await vm('c');
  await assert.rejects(volumes.block.attach(c, 'data'), code('Conflict', /attached read-only to VM a, b/));
  // shared: several writers
  await volumes.create({ name: 'shared', sizeBytes: 32 * MiB, type: 'block', shared: true }, 'p1');
  await volumes.block.attach(a, 'shared');
  await volumes.block.attach(c, 'shared');
  await assert.rejects(volumes.block.createSnapshot(await volumes.get('shared'), 'x'), code('InvalidArgument', /shared/));
  // filesystem volumes are for containers; containers do not mount block volumes
  await volumes.create({ name: 'files', sizeBytes: 32 * MiB }, 'p1');
  await assert.rejects(volumes.block.attach(a, 'files'), code('InvalidArgument', /filesystem volume/));
  await assert.rejects(volumes.resolveMounts([{ type: 'volume', source: 'data', target: '/d' }], 'p1', { mayBindHostPaths: false }), code('InvalidArgument', /block volume/));
  // prune is Docker's: block volumes stay
  assert.deepEqual((await volumes.prune('p1')).map((x) => x.name), ['files']);
  // tenancy: another project's VM does not see the volume
  const theirs = await vm('theirs', 'p2');
  await assert.rejects(volumes.block.attach(theirs, 'data'), code('NotFound'));
  await assert.rejects(volumes.block.attach(theirs, v.id), code('NotFound'), 'not by id either');
  // another host: refused, naming both
  const far = await volumes.create({ name: 'far', sizeBytes: 32 * MiB, type: 'block', host: 'b' }, 'p1');
  assert.equal(far.host, 'b');
  await assert.rejects(volumes.block.attach(a, 'far'), code('Conflict', /on host b and VM a runs on local/));
  // removing a VM detaches, never deletes
  await vms.remove('a', true);
  await vms.remove('b', true);
  await vms.remove('c', true);
  assert.deepEqual((await volumes.inspect(v)).attachedTo, []);
  assert.equal(local.calls('removeBlockVolume').length, 0);
  await volumes.remove('data', { canRead: () => true });
  await volumes.remove('shared', { canRead: () => true });
});

test('boot from a volume: the VM runs on its host, the volume is its boot disk, stays attached while it lives and stays after it', async (t) => {
  const { store, volumes, vms, b } = await setup(t);
  const v = await volumes.create({ name: 'root', sizeBytes: 32 * MiB, type: 'block', host: 'b' }, 'p1');
  await assert.rejects(vms.create({ name: 'pinned', memoryMiB: 64, bootVolume: 'root', host: 'local' }, 'p1'), code('Conflict', /on host b/));
  const made = await vms.create({ name: 'from-vol', memoryMiB: 64, bootVolume: 'root' }, 'p1');
  assert.equal(made.agent, 'b', 'placed on the volume\'s host');
  assert.deepEqual(made.config.volumes, [{ volumeId: v.id, boot: true }]);
  assert.deepEqual(b.calls('createVm')[0]![0].volumes, [{ volumeId: v.id, boot: true }], 'the host gets it at create');
  assert.deepEqual(b.calls('blockVolumeInfo'), [[v.id]], 'asked first (an older agent refuses that clearly)');
  await assert.rejects(vms.create({ name: 'twice', memoryMiB: 64, bootVolume: 'root' }, 'p1'), code('Conflict', /read-write to VM from-vol/));
  await assert.rejects(vms.create({ name: 'theirs', memoryMiB: 64, bootVolume: 'root' }, 'p2'), code('NotFound'));
  await assert.rejects(volumes.block.detach(made, 'root'), code('Conflict', /boot volume/));
  await vms.remove('from-vol', true);
  assert.equal((await store.volumes.get(v.id))?.status, 'ready', 'the volume outlives the VM');
  assert.deepEqual(await store.vms.list(), []);
});

test('an agent before protocol 7 is refused the block volume calls, clearly', () => {
  for (const m of ['createBlockVolume', 'attachVmVolume', 'detachVmVolume', 'snapshotBlockVolume', 'blockVolumeInfo'] as const) {
    const e = tooOldFor(m, 6, 'old-host');
    assert.ok(e, m);
    assert.equal(e.code, 'Conflict');
    assert.match(e.message, /host old-host's agent speaks protocol 6 and cannot hold block volumes for VMs \(.+ needs protocol 7\); upgrade it/);
  }
  assert.equal(tooOldFor('attachVmVolume', 7, 'new-host'), undefined);
});

test('a live migration carries the VM\'s block volumes: made at the destination, the record moved, the source\'s gone; shared volumes and volumes with snapshots refused with the reason', async (t) => {
  const { store, volumes, vms, local, b, vm, scheduler } = await setup(t);
  const v = await volumes.create({ name: 'data', sizeBytes: 32 * MiB, type: 'block' }, 'p1');
  const w = await vm('w');
  await vms.start('w');
  await volumes.block.attach(w, 'data');
  // a snapshot stays on its host with the clones made from it: the move is refused, nothing made
  await vms.stop('w');
  const snap = await volumes.block.createSnapshot(v, 'before');
  await vms.start('w');
  await assert.rejects(vms.startMigrate('w', 'b'), code('Conflict', /volume data has 1 snapshot\(s\), which stay on host local/));
  assert.equal(b.calls('createBlockVolume').length, 0, 'nothing made at the destination');
  await volumes.block.removeSnapshot(snap);
  // a shared volume: other VMs may hold it where it is
  await volumes.create({ name: 'shared', sizeBytes: 32 * MiB, type: 'block', shared: true }, 'p1');
  await volumes.block.attach(w, 'shared');
  await assert.rejects(vms.startMigrate('w', 'b'), code('Conflict', /volume shared is shared/));
  await volumes.block.detach(w, 'shared');
  // carried: made empty of its size at the destination first, the record's host moved with the
  // VM's, the source's file removed once the guest runs there
  const report = await vms.migrate('w', 'b');
  assert.equal(report.to, 'b');
  assert.deepEqual(b.calls('createBlockVolume'), [[v.id, 32 * MiB, {}]]);
  assert.equal((await store.volumes.get(v.id))?.host, 'b', 'the volume is host b\'s now');
  assert.deepEqual([scheduler.claims.get(w.id), scheduler.claims.get(v.id)], ['b', 'b'], 'the VM\'s claim and its volume\'s moved');
  assert.deepEqual(local.calls('removeBlockVolume').map((a) => a[0]), [v.id], 'the source\'s copy goes');
  assert.equal((await vms.get('w')).agent, 'b');
  // a move that fails at the destination leaves the volume where it was and removes what it made
  local.failNext('prepareVmIncoming', new Error('no room'));
  const back = await vms.migrate('w', 'local').catch((e: unknown) => e);
  assert.ok(back instanceof Error, 'the move failed');
  assert.equal((await store.volumes.get(v.id))?.host, 'b', 'the record stays');
  assert.deepEqual([scheduler.claims.get(w.id), scheduler.claims.get(v.id)], ['b', 'b'], 'the claims are back where the VM runs');
  assert.deepEqual(local.calls('createBlockVolume').at(-1), [v.id, 32 * MiB, {}]);
  assert.deepEqual(local.calls('removeBlockVolume').map((a) => a[0]), [v.id, v.id], 'what the failed move made is gone');
});

test('a live migration gets certificates of its own, one per side, named for this move: neither agent hands QEMU its own key, and the destination takes exactly the source\'s', async (t) => {
  const { vms, local, b, vm } = await setup(t);
  await vm('m');
  await vms.start('m');
  const minted: string[] = [];
  vms.migrationCredentials = async (agent) => {
    minted.push(agent);
    return { name: `migration.${agent}.${minted.length}`, ca: 'CA', cert: `CERT ${agent}`, key: `KEY ${agent}` };
  };
  // a source with no certificate of its own that says nothing of minted ones (older than protocol
  // 14) sends in clear as before: nothing is minted for it
  await vms.migrate('m', 'b');
  assert.deepEqual(minted, []);
  assert.equal(b.calls('prepareVmIncoming').at(-1)?.[0].credentials, undefined);
  // a source that can send over TLS: each side gets its own
  const config = (b.calls('prepareVmIncoming').at(-1)![0] as { config: Record<string, unknown> }).config;
  b.override('vmMigrationSpec', async (id) => ({ id, name: 'm', createdAt: new Date().toISOString(), config, tls: 'b' }));
  await vms.migrate('m', 'local');
  assert.deepEqual(minted, ['b', 'local']);
  const prepared = local.calls('prepareVmIncoming').at(-1)![0];
  assert.equal(prepared.credentials?.name, 'migration.local.2', "the destination's");
  assert.equal(prepared.tls, 'migration.b.1', 'the destination is told to take the source\'s certificate of this move, not the agent\'s name');
  const out = b.calls('migrateVmOut').at(-1)!;
  assert.equal(out[2].tls, 'migration.local.2', 'the source checks the name the destination answered');
  assert.equal(out[2].credentials?.name, 'migration.b.1', "the source's own");
  // a source with no certificate that takes a minted one (protocol 14: an agent on a unix socket):
  // each side gets its own, and the move is TLS where it was in clear
  local.override('vmMigrationSpec', async (id) => ({ id, name: 'm', createdAt: new Date().toISOString(), config, takesMintedCredentials: true }));
  await vms.migrate('m', 'b');
  assert.deepEqual(minted, ['b', 'local', 'local', 'b']);
  const preparedB = b.calls('prepareVmIncoming').at(-1)![0];
  assert.equal(preparedB.credentials?.name, 'migration.b.4');
  assert.equal(preparedB.tls, 'migration.local.3');
  const outLocal = local.calls('migrateVmOut').at(-1)!;
  assert.equal(outLocal[2].tls, 'migration.b.4');
  assert.equal(outLocal[2].credentials?.name, 'migration.local.3');
});
