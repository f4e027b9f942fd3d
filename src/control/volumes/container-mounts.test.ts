// A container's mounts through ContainerService: its volumes pin it to their host (the scheduler is
// told), the agent gets the mounts resolved, and what is refused leaves nothing behind.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Agent, ContainerCreateRequest, HostVolumeInfo } from '../../agent/agent.js';
import { NotFound } from '../../core/errors.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { ImageService } from '../images/image-service.js';
import { NetworkService } from '../networks/network-service.js';
import { ContainerService } from '../compute/container-service.js';
import { RecordingScheduler } from '../compute/test-scheduler.js';
import type { HostAgents } from '../compute/hosts.js';
import { FakeAgent } from '../testing/fake-agent.js';
import { VolumeService, mountsOf } from './volume-service.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;
const MiB = 1024 * 1024;

/** A fake host that also holds volumes (in a set) and records the create requests it gets. */
function host(name: string): { agent: Agent; created: ContainerCreateRequest[]; volumes: Set<string> } {
  const created: ContainerCreateRequest[] = [];
  const volumes = new Set<string>();
  const fake = new FakeAgent({ name }).override('createContainer', async (req) => {
    created.push(req);
    return { status: 'created', warnings: [], runtime: 'runc' };
  });
  const agent = Object.assign(fake, {
    createVolume: async (id: string, sizeBytes: number): Promise<HostVolumeInfo> => {
      volumes.add(id);
      return { id, sizeBytes, path: `/${name}/${id}`, mounted: true };
    },
    removeVolume: async (id: string) => void volumes.delete(id),
    volumeUsage: async (id: string) => {
      if (!volumes.has(id)) throw new NotFound(`volume ${id} is not on this host`);
      return { id, sizeBytes: 0, path: `/${name}/${id}`, mounted: true, usedBytes: 0 };
    },
    reconcileVolumes: async () => ({ mounted: 0, removed: [], missing: [] }),
  }) as unknown as Agent;
  return { agent, created, volumes };
}

async function setup(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-volmounts-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const quota = await QuotaService.open(store);
  t.after(async () => {
    quota.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: now });
  await quota.ensureProject('p1', null);
  const a = host('a');
  const b = host('b');
  const byName: Record<string, Agent> = { a: a.agent, b: b.agent };
  const hosts: HostAgents = {
    localName: 'a',
    names: () => ['a', 'b'],
    has: (n) => n in byName,
    get: (n) => {
      const x = byName[n];
      if (!x) throw new NotFound(`no such host: ${n}`);
      return x;
    },
  };
  const events = new EventBus();
  const operations = new OperationService(store, events);
  const scheduler = new RecordingScheduler(hosts);
  const images = new ImageService(store, a.agent, events, operations);
  images.useHosts(hosts);
  const networks = new NetworkService(store, a.agent, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/16' });
  networks.useHosts(hosts);
  const containers = new ContainerService(store, hosts, scheduler, images, events, quota, operations, networks);
  const volumes = new VolumeService(store, hosts, scheduler, quota, events);
  containers.useVolumes(volumes);
  await store.images.upsert({ digest: DIGEST, projectId: 'p1', indexDigest: null, configDigest: DIGEST, config: { config: { Cmd: ['sh'] } }, layers: [], chainId: DIGEST, size: 1, createdAt: now });
  await store.images.setTag({ projectId: 'p1', name: 'example.test/busybox:latest', digest: DIGEST, updatedAt: now });
  for (const h of ['a', 'b']) await store.images.addHost(DIGEST, h);
  const input = (extra: Record<string, unknown> = {}) =>
    ({ image: 'example.test/busybox:latest', cmd: ['true'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  return { store, quota, containers, volumes, scheduler, a, b, input };
}

test('a container runs on its volume\'s host: the scheduler is pinned there and the agent gets the mounts', async (t) => {
  const { store, containers, volumes, scheduler, a, b, input } = await setup(t);
  const data = await volumes.create({ name: 'data', sizeBytes: 16 * MiB, host: 'b' }, 'p1');
  const c = await containers.create(input({ name: 'uses-b', mounts: [{ type: 'volume', source: 'data', target: '/data', readonly: true }, { type: 'tmpfs', target: '/tmp', sizeBytes: MiB }] }), 'p1');
  assert.equal(c.host, 'b');
  assert.equal(scheduler.asked.at(-1)?.host, 'b', 'placement pinned to the volume\'s host');
  assert.equal(a.created.length, 0);
  assert.deepEqual(b.created[0]?.mounts, [{ type: 'volume', volumeId: data.id, target: '/data', readonly: true }, { type: 'tmpfs', target: '/tmp', sizeBytes: MiB }]);
  assert.deepEqual(mountsOf((await store.containers.get(c.id))!), [{ type: 'volume', volumeId: data.id, name: 'data', target: '/data', readonly: true }, { type: 'tmpfs', target: '/tmp', sizeBytes: MiB }]);
});

test('refused mounts leave nothing: a pin elsewhere, a member\'s host path, a forbidden one', async (t) => {
  const { store, quota, containers, volumes, input } = await setup(t);
  await volumes.create({ name: 'data', sizeBytes: 16 * MiB, host: 'b' }, 'p1');
  const used = () => quota.show('p1').resources.instances.used;
  await assert.rejects(containers.create(input({ mounts: [{ type: 'volume', source: 'data', target: '/d' }] }), 'p1', { projectId: 'p1' }, { placement: { host: 'a' } }), { code: 'Conflict', message: /volume data is on host b, and this container must run on a/ });
  await assert.rejects(containers.create(input({ mounts: [{ type: 'bind', source: '/srv', target: '/s' }] }), 'p1'), { code: 'PermissionDenied', message: /only a system administrator/ });
  await assert.rejects(containers.create(input({ mounts: [{ type: 'bind', source: '/proc', target: '/p' }] }), 'p1', { projectId: 'p1' }, { mayBindHostPaths: true }), { code: 'PermissionDenied', message: /host path \/proc cannot be bound/ });
  await assert.rejects(containers.create(input({ runtime: 'vm', mounts: [{ type: 'tmpfs', target: '/t' }] }), 'p1'), { code: 'InvalidArgument', message: /secure containers/ });
  assert.deepEqual(await store.containers.list(), []);
  assert.equal(used(), 0, 'no container was charged');
  // an administrator's host path goes through as given (the host resolves and checks it)
  const ok = await containers.create(input({ mounts: [{ type: 'bind', source: '/srv/www', target: '/www' }] }), 'p1', { projectId: 'p1' }, { mayBindHostPaths: true });
  assert.deepEqual(mountsOf(ok), [{ type: 'bind', source: '/srv/www', target: '/www' }]);
});

test('anonymous volumes go with rm -v and autoRemove, never named ones; a create that fails after making one takes it with it', async (t) => {
  const { store, quota, containers, a, input } = await setup(t);
  const anonOf = (c: { config: { mounts?: unknown } }) => mountsOf(c as never).flatMap((m) => (m.type === 'volume' && m.anonymous ? [m.volumeId] : []));
  const mk = (extra: Record<string, unknown> = {}) => containers.create(input({ mounts: [{ type: 'volume', target: '/data' }, { type: 'volume', source: 'named', target: '/n' }], ...extra }), 'p1');
  const kept = await mk();
  assert.equal(anonOf(kept).length, 1);
  await containers.remove(kept.id, true);
  assert.ok(await store.volumes.get(anonOf(kept)[0]!), 'rm without -v keeps it, as docker rm does');
  const c = await mk();
  await containers.remove(c.id, true, { volumes: true });
  assert.equal(await store.volumes.get(anonOf(c)[0]!), undefined, 'rm -v removes its anonymous volume');
  assert.ok(await store.volumes.byName('p1', 'named'), 'never a named one');
  assert.ok(await store.volumes.get(anonOf(kept)[0]!), 'nor another container\'s');
  const auto = await mk({ autoRemove: true });
  await containers.remove(auto.id, true);
  assert.equal(await store.volumes.get(anonOf(auto)[0]!), undefined, 'an autoRemove container\'s go with it (run --rm)');
  assert.equal(a.volumes.size, 2, 'the host removed them too');
  // refused by the container's own quota after its anonymous volume was made: nothing of it stays
  const before = (await store.volumes.list()).length;
  await quota.setLimits('p1', { hard: { instances: quota.show('p1').resources.instances.used } });
  await assert.rejects(mk(), { code: 'QuotaExceeded' });
  assert.equal((await store.volumes.list()).length, before);
});
