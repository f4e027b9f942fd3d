// VolumeService over a real store and quota ledger, with a host that records what it is asked
// (the host side, sparse ext4 images, is src/agent/volumes/volume-store.test.ts; the whole path
// with the docker CLI is test/volumes.e2e.test.ts).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import type { Agent, HostVolumeInfo } from '../../agent/agent.js';
import { Internal, NotFound } from '../../core/errors.js';
import { EventBus } from '../events/event-bus.js';
import { QuotaService, UNLIMITED } from '../quota/quota-service.js';
import { settleGoneReplicas } from '../leader/gone-replicas.js';
import { RecordingScheduler } from '../compute/test-scheduler.js';
import type { HostAgents } from '../compute/hosts.js';
import { DEFAULT_VOLUME_BYTES, VolumeService, agentMounts } from './volume-service.js';

const MiB = 1024 * 1024;

/** A host that holds volumes in a map; `failCreate` makes its next create fail. */
class VolumeHostStub {
  readonly volumes = new Map<string, number>();
  readonly calls: string[] = [];
  failCreate = false;
  reconciledWith: string[] | undefined;
  async createVolume(id: string, sizeBytes: number): Promise<HostVolumeInfo> {
    this.calls.push(`create ${sizeBytes / MiB}`);
    if (this.failCreate) throw new Internal('mkfs.ext4 failed');
    this.volumes.set(id, sizeBytes);
    return { id, sizeBytes, path: `/v/${id}/mnt/_data`, mounted: true };
  }
  async removeVolume(id: string): Promise<void> {
    this.calls.push('remove');
    this.volumes.delete(id);
  }
  async volumeUsage(id: string) {
    const size = this.volumes.get(id);
    if (size === undefined) throw new NotFound(`volume ${id} is not on this host`);
    return { id, sizeBytes: size, path: `/v/${id}/mnt/_data`, mounted: true, usedBytes: 4096 };
  }
  async reconcileVolumes(live: string[]) {
    this.reconciledWith = live;
    const removed = [...this.volumes.keys()].filter((id) => !live.includes(id));
    for (const id of removed) this.volumes.delete(id);
    return { mounted: live.length, removed, missing: live.filter((id) => !this.volumes.has(id)) };
  }
}

async function setup(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-volsvc-'));
  const store: Store = await openStore(join(dir, 'nimbus.db'));
  const quota = await QuotaService.open(store);
  t.after(async () => {
    quota.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'root', name: 'org', parentId: null, createdAt: now });
  await quota.ensureProject('root', null);
  for (const c of ['team', 'other']) {
    await store.projects.insert({ id: c, name: c, parentId: 'root', createdAt: now });
    await quota.ensureProject(c, 'root');
  }
  const hostA = new VolumeHostStub();
  const hostB = new VolumeHostStub();
  const agents: Record<string, VolumeHostStub> = { a: hostA, b: hostB };
  const hosts: HostAgents = {
    localName: 'a',
    names: () => ['a', 'b'],
    has: (n) => n in agents,
    get: (n) => {
      const a = agents[n];
      if (!a) throw new NotFound(`no such host: ${n}`);
      return a as unknown as Agent;
    },
  };
  const scheduler = new RecordingScheduler(hosts);
  const volumes = new VolumeService(store, hosts, scheduler, quota, new EventBus());
  return { store, quota, volumes, scheduler, hostA, hostB, agents };
}

test('a volume is charged to volumes and disk (MiB) through the ledger: limits hold, siblings lend, removal gives it back', async (t) => {
  const { store, quota, volumes, scheduler, hostA } = await setup(t);
  // the root is unlimited in disk too; a child gets what its parent hands down
  assert.equal(quota.show('root').resources.disk.hard, UNLIMITED);
  await quota.setLimits('team', { hard: { volumes: 10, disk: 100 }, borrowingLimit: { disk: 64 } });
  await quota.setLimits('other', { hard: { volumes: 10, disk: 200 }, lendingLimit: { disk: 64 } });

  const first = await volumes.create({ name: 'data', sizeBytes: 64 * MiB }, 'team');
  assert.equal(first.status, 'ready');
  assert.equal(first.host, 'a');
  assert.equal(quota.show('team').resources.disk.used, 64);
  assert.equal(quota.show('team').resources.volumes.used, 1);
  assert.equal(scheduler.asked.at(-1)?.diskBytes, 64 * MiB, 'the host\'s disk is claimed too');
  assert.equal(scheduler.asked.at(-1)?.kind, 'volume');

  // 36 MiB of its own left: 96 more borrows 60 from its sibling
  await volumes.create({ name: 'more', sizeBytes: 96 * MiB }, 'team');
  assert.equal(quota.show('team').resources.disk.borrowed, 60);
  assert.equal(quota.show('other').resources.disk.lent, 60);
  // now nothing fits: refused, and nothing of it stays
  await assert.rejects(volumes.create({ name: 'toomuch', sizeBytes: 16 * MiB }, 'team'), (e: unknown) => {
    assert.equal((e as { code?: string }).code, 'QuotaExceeded');
    assert.match((e as Error).message, /disk/);
    return true;
  });
  assert.equal(await store.volumes.byName('team', 'toomuch'), undefined);
  assert.deepEqual(hostA.calls, ['create 64', 'create 96']);
  assert.equal(scheduler.claims.size, 2);

  // the name is taken in the project, not elsewhere
  await assert.rejects(volumes.create({ name: 'data', sizeBytes: 16 * MiB }, 'team'), { code: 'Conflict' });
  // removed: the loan returns, the disk is free again
  await volumes.remove('more', { projectId: 'team' });
  assert.equal(quota.show('team').resources.disk.used, 64);
  assert.equal(quota.show('other').resources.disk.lent, 0);
  await volumes.remove('data', { projectId: 'team' });
  assert.equal(quota.show('team').resources.disk.used, 0);
  assert.equal(quota.show('team').resources.volumes.used, 0);
  assert.equal(scheduler.claims.size, 0);
  assert.deepEqual([...hostA.volumes.keys()], []);
  await assert.rejects(volumes.remove('data', { projectId: 'team' }), { code: 'NotFound' });
  assert.equal(await volumes.remove('data', { projectId: 'team' }, { force: true }), undefined);

  // sizes are whole MiB from 16 MiB; the default is 1 GiB
  await assert.rejects(volumes.create({ name: 'odd', sizeBytes: 16 * MiB + 1 }, 'root'), { code: 'InvalidArgument' });
  await assert.rejects(volumes.create({ name: 'tiny', sizeBytes: MiB }, 'root'), { code: 'InvalidArgument' });
  await assert.rejects(volumes.create({ name: 'x', driver: 'nfs' }, 'root'), { code: 'InvalidArgument' });
  assert.equal((await volumes.create({ name: 'default-size' }, 'root')).sizeBytes, DEFAULT_VOLUME_BYTES);
});

test('a create the host fails leaves nothing: no row, no claim, no quota', async (t) => {
  const { store, quota, volumes, scheduler, hostA } = await setup(t);
  hostA.failCreate = true;
  await assert.rejects(volumes.create({ name: 'data', sizeBytes: 32 * MiB }, 'root'), /mkfs.ext4 failed/);
  assert.deepEqual(await store.volumes.list(), []);
  assert.equal(scheduler.claims.size, 0);
  assert.equal(quota.show('root').resources.disk.used, 0);
  assert.equal(quota.show('root').resources.volumes.used, 0);
  assert.deepEqual(hostA.calls, ['create 32', 'remove']);
});

test('mounts: volumes by name (made when missing, on one host), host paths for administrators only, never the kernel\'s; in use, no removal', async (t) => {
  const { store, volumes, hostB } = await setup(t);
  const made = await volumes.resolveMounts([{ type: 'volume', source: 'auto', target: '/data/' }, { type: 'tmpfs', target: '/t', sizeBytes: MiB }], 'root', { mayBindHostPaths: false });
  const auto = await store.volumes.byName('root', 'auto');
  assert.equal(auto?.sizeBytes, DEFAULT_VOLUME_BYTES);
  // copyUp: the volume this call made is filled with the image's files at its target (Docker's copy-up)
  assert.deepEqual(made, { host: 'a', mounts: [{ type: 'volume', volumeId: auto!.id, name: 'auto', target: '/data' }, { type: 'tmpfs', target: '/t', sizeBytes: MiB }], copyUp: ['/data'] });
  const again = await volumes.resolveMounts([{ type: 'volume', source: 'auto', target: '/data' }, { type: 'volume', source: 'fresh-empty', target: '/e', nocopy: true }, { type: 'volume', target: '/anon' }], 'root', { mayBindHostPaths: false });
  assert.deepEqual(again.copyUp, ['/anon'], 'a volume that existed is not filled, nor a nocopy one; an anonymous one made now is');
  assert.deepEqual(agentMounts(again.mounts, again.copyUp).map((m) => [m.target, m.type === 'volume' && m.copyUp === true]), [['/data', false], ['/e', false], ['/anon', true]]);
  for (const m of again.mounts.slice(1)) if (m.type === 'volume') await volumes.remove(m.volumeId, { projectId: 'root' }); // the rest of the test counts volumes

  await assert.rejects(volumes.resolveMounts([{ type: 'bind', source: '/srv', target: '/s' }], 'root', { mayBindHostPaths: false }), { code: 'PermissionDenied', message: /only a system administrator may bind a host path/ });
  assert.deepEqual((await volumes.resolveMounts([{ type: 'bind', source: '/srv', target: '/s', readonly: true }], 'root', { mayBindHostPaths: true })).mounts, [{ type: 'bind', source: '/srv', target: '/s', readonly: true }]);
  for (const source of ['/', '/proc', '/proc/1/root', '/sys/', '/dev', '/run', '/var/run', '/var/run/docker.sock', '/etc/../proc']) {
    await assert.rejects(volumes.resolveMounts([{ type: 'bind', source, target: '/s' }], 'root', { mayBindHostPaths: true }), { code: 'PermissionDenied' }, source);
  }
  await assert.rejects(volumes.resolveMounts([{ type: 'tmpfs', target: '/proc/x' }], 'root', { mayBindHostPaths: true }), { code: 'InvalidArgument' });
  await assert.rejects(volumes.resolveMounts([{ type: 'tmpfs', target: '/a' }, { type: 'tmpfs', target: '/a/' }], 'root', { mayBindHostPaths: true }), /two mounts at \/a/);
  await assert.rejects(volumes.resolveMounts([{ type: 'volume', source: '../x', target: '/a' }], 'root', { mayBindHostPaths: true }), { code: 'InvalidArgument' });

  // volumes on two hosts: the container cannot run next to both; pinned elsewhere: refused too
  await volumes.create({ name: 'on-b', sizeBytes: 16 * MiB, host: 'b' }, 'root');
  assert.equal(hostB.volumes.size, 1);
  await assert.rejects(volumes.resolveMounts([{ type: 'volume', source: 'auto', target: '/a' }, { type: 'volume', source: 'on-b', target: '/b' }], 'root', { mayBindHostPaths: false }), { code: 'Conflict', message: /volume on-b is on host b/ });
  await assert.rejects(volumes.resolveMounts([{ type: 'volume', source: 'auto', target: '/a' }], 'root', { mayBindHostPaths: false, pinnedHost: 'b' }), { code: 'Conflict' });
  assert.equal((await volumes.resolveMounts([{ type: 'volume', source: 'on-b', target: '/b' }], 'root', { mayBindHostPaths: false })).host, 'b');

  // a container's record that names it holds it, whatever its state
  const now = new Date().toISOString();
  await store.containers.insert({
    id: 'c'.repeat(64), name: 'holder', projectId: 'root', imageDigest: 'sha256:x',
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {}, mounts: made.mounts } as never,
    status: 'exited', runtime: 'runc', pid: null, exitCode: 0, oomKilled: false, restartCount: 0, stoppedByUser: false, createdAt: now, startedAt: null, finishedAt: null, warnings: [], host: 'a',
  });
  await assert.rejects(volumes.remove('auto', { projectId: 'root' }), { code: 'Conflict', message: /in use by container holder: remove it first/ });
  await assert.rejects(volumes.remove('auto', { projectId: 'root' }, { force: true }), { code: 'Conflict' });
  assert.deepEqual((await volumes.inspect((await store.volumes.byName('root', 'auto'))!)).usedBy, ['holder']);
  // prune leaves it, removes the unused one
  assert.deepEqual((await volumes.prune('root')).map((v) => v.name), ['on-b']);
  await store.containers.delete('c'.repeat(64));
  assert.equal((await volumes.remove('auto', { projectId: 'root' }))?.name, 'auto');
});

test('anonymous volumes: a random 64-hex name with dockerd\'s label, charged; one a later mount fails takes with it; removeAnonymous keeps what another uses', async (t) => {
  const { store, quota, volumes, hostA } = await setup(t);
  await quota.setLimits('team', { hard: { volumes: 10, disk: 4096 } });
  const r = await volumes.resolveMounts([{ type: 'volume', target: '/data' }, { type: 'volume', source: 'named', target: '/named' }], 'team', { mayBindHostPaths: false });
  const [anon, named] = r.mounts as Array<Extract<(typeof r.mounts)[number], { type: 'volume' }>>;
  assert.match(anon!.name, /^[0-9a-f]{64}$/);
  assert.equal(anon!.anonymous, true);
  assert.equal(named!.anonymous, undefined, 'a named volume is never anonymous');
  assert.deepEqual((await store.volumes.get(anon!.volumeId))?.labels, { 'com.docker.volume.anonymous': '' });
  assert.equal(quota.show('team').resources.disk.used, 2048, 'charged as a named volume (1 GiB each)');
  // --volumes-from names it with anonymous: it is the same volume, not a new one
  const again = await volumes.resolveMounts([{ type: 'volume', source: anon!.name, target: '/d', anonymous: true }], 'team', { mayBindHostPaths: false });
  assert.deepEqual(again.mounts, [{ type: 'volume', volumeId: anon!.volumeId, name: anon!.name, target: '/d', anonymous: true }]);
  // a request whose later mount is refused leaves no anonymous volume behind
  await assert.rejects(volumes.resolveMounts([{ type: 'volume', target: '/x' }, { type: 'bind', source: '/srv', target: '/srv' }], 'team', { mayBindHostPaths: false }), { code: 'PermissionDenied' });
  assert.equal((await store.volumes.list({ projectId: 'team' })).length, 2);
  assert.equal(quota.show('team').resources.disk.used, 2048);
  // removeAnonymous: gone with its quota (NotFound and in-use are no error)
  await volumes.removeAnonymous([anon!.volumeId, 'no-such-id'], 'team');
  assert.equal(await store.volumes.get(anon!.volumeId), undefined);
  assert.equal(quota.show('team').resources.disk.used, 1024);
  assert.equal(hostA.volumes.size, 1);
});

test('reconcile: a create cut short is undone, a removal cut short finished, each host told what it holds', async (t) => {
  const { store, quota, volumes, scheduler, hostA, agents } = await setup(t);
  const kept = await volumes.create({ name: 'kept', sizeBytes: 16 * MiB }, 'root');
  const leaving = await volumes.create({ name: 'leaving', sizeBytes: 16 * MiB }, 'root');
  await store.volumes.setStatus(leaving.id, 'removing');
  // a row left creating long ago (the process died before the host answered)
  const old = new Date(Date.now() - 3600_000).toISOString();
  await quota.admitVolume('d'.repeat(64), 'root', 16);
  await store.volumes.insert({ id: 'd'.repeat(64), name: 'cut-short', projectId: 'root', host: 'a', driver: 'local', sizeBytes: 16 * MiB, status: 'creating', labels: {}, driverOptions: {}, createdAt: old });
  // and a create in flight now (another replica's): left alone
  await store.volumes.insert({ id: 'e'.repeat(64), name: 'in-flight', projectId: 'root', host: 'a', driver: 'local', sizeBytes: 16 * MiB, status: 'creating', labels: {}, driverOptions: {}, createdAt: new Date().toISOString() });
  hostA.volumes.set('f'.repeat(64), 16 * MiB); // a stray on the host

  const r = await volumes.reconcile();
  assert.equal(r.undone, 1);
  assert.equal(r.removed, 1);
  assert.deepEqual(r.missing, ['e'.repeat(64)]);
  assert.deepEqual(hostA.reconciledWith?.sort(), [kept.id, 'e'.repeat(64)].sort());
  assert.ok(!hostA.volumes.has('f'.repeat(64)));
  assert.deepEqual((await store.volumes.list()).map((v) => v.name).sort(), ['in-flight', 'kept']);
  assert.equal(quota.show('root').resources.disk.used, 16, 'only the kept one is charged');
  assert.ok(!scheduler.claims.has(leaving.id));

  // a host that registers again (a new connection) is told its volumes too; the others are not asked again
  const again = new VolumeHostStub();
  again.volumes.set('9'.repeat(64), 16 * MiB);
  agents.b = again;
  hostA.reconciledWith = undefined;
  volumes.watchHosts(10);
  t.after(() => volumes.stopWatchingHosts());
  for (let i = 0; i < 200 && again.reconciledWith === undefined; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(again.reconciledWith, []);
  assert.equal(again.volumes.size, 0);
  assert.equal(hostA.reconciledWith, undefined);
});

test('a ledger stored before disk existed: roots get it unlimited, children none, arithmetic stays whole', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-volsvc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const first = await QuotaService.open(store);
  await first.ensureProject('r', null);
  await first.ensureProject('c', 'r');
  await first.setLimits('c', { hard: { instances: 2, volumes: 1 } });
  first.close();
  // take disk out of every vector, as a store written by the nimbusd before disk has them (its
  // projects inside the state, as before they had rows)
  const whole = JSON.parse((await store.loadQuotaState())!) as { projects: Record<string, { id: string }> };
  for (const json of await store.loadQuotaProjects()) {
    const p = JSON.parse(json) as { id: string };
    whole.projects[p.id] = p;
  }
  const strip = (json: string) => JSON.stringify(JSON.parse(json, (k, v: unknown) => (k === 'disk' ? undefined : v)));
  await store.saveQuotaProjects(Object.keys(whole.projects).map((id) => ({ id, json: null })));
  await store.saveQuotaState(strip(JSON.stringify(whole)));
  assert.doesNotMatch((await store.loadQuotaState())!, /"disk"/);

  const q = await QuotaService.open(store);
  t.after(() => q.close());
  assert.equal(q.show('r').resources.disk.hard, UNLIMITED);
  assert.equal(q.show('c').resources.disk.hard, 0);
  assert.equal(q.show('c').resources.volumes.hard, 1);
  assert.equal(q.explain('r', { disk: 1024 }).admitted, true);
  assert.equal(q.explain('c', { disk: 1 }).admitted, false);
  await q.admitVolume('v1', 'r', 2048);
  assert.equal(q.show('r').resources.disk.used, 2048);
  const rootRow = (await store.loadQuotaProjects()).find((j) => (JSON.parse(j) as { id: string }).id === 'r');
  assert.match(rootRow ?? '', /"disk"/, 'its row written back whole');
});

test('a dead replica\'s volumes: the charge of one with a record stays, of one it never recorded is released by the leader\'s sweep', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-volsvc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const q = await QuotaService.open(store, { replicaId: 'replica-that-will-stop' });
  t.after(async () => {
    q.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'r', name: 'r', parentId: null, createdAt: now });
  await q.ensureProject('r', null);
  const kept = 'k'.repeat(64), halfMade = 'h'.repeat(64);
  await q.admitVolume(kept, 'r', 64);
  await store.volumes.insert({ id: kept, name: 'kept', projectId: 'r', host: 'local', driver: 'local', sizeBytes: 64 * MiB, status: 'ready', labels: {}, driverOptions: {}, createdAt: now });
  await q.admitVolume(halfMade, 'r', 32);
  // the replica that admitted both is gone: the sweep judges volumes as it judges other records
  assert.deepEqual((await q.admittedByGoneReplicas(new Set())).sort(), [halfMade, kept].sort());
  const swept = await settleGoneReplicas({
    store, quota: q, scheduler: { release: async () => undefined }, registry: { list: async () => [] }, self: 'the-leader', settleUncreated: async () => false,
  });
  assert.equal(swept.chargesReleased, 1);
  assert.equal(q.holds(kept), true, 'a volume that exists keeps its charge');
  assert.equal(q.holds(halfMade), false, 'a half-made one is released');
  assert.equal(q.show('r').resources.disk.used, 64);
});
