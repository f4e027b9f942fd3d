/**
 * The control plane's side of images against a real SQLite store: per-project references and
 * tags to shared content, how a reference resolves, removal, prune and what garbage collection
 * tells the agent to keep. The agent is a recording stand-in (the bytes are its business).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { EventBus } from '../events/event-bus.js';
import type { OperationService } from '../operations/operations.js';
import type { AgentImage } from '../../agent/agent.js';
import { FakeAgent } from '../testing/fake-agent.js';
import type { ContainerRecord, VmRecord } from '../../store/records.js';
import { ImageService } from './image-service.js';

const hex = (c: string) => c.repeat(64);

function agentImage(c: string, reference?: string, indexDigest?: string): AgentImage {
  return {
    ...(reference ? { reference } : {}),
    ...(indexDigest ? { indexDigest } : {}),
    manifestDigest: `sha256:${hex(c)}`,
    configDigest: `sha256:${hex('c')}`,
    config: { architecture: 'amd64', os: 'linux' },
    layers: [{ digest: `sha256:${hex('d')}`, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 10, diffId: `sha256:${hex('e')}` }],
    chainId: `chain-${c}`,
    size: 10,
  };
}

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-img-svc-'));
  const opening = openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await (await opening.catch(() => undefined))?.close(); // the directory goes even when the open failed
    rmSync(dir, { recursive: true, force: true });
  });
  const store = await opening;
  const now = new Date().toISOString();
  for (const id of ['p1', 'p2']) await store.projects.insert({ id, name: id, parentId: null, createdAt: now });
  let archive: AgentImage[] = [];
  const collected: Array<{ manifestDigests: string[]; indexDigests: string[]; chainIds: string[]; blobs?: string[] }> = [];
  const agent = new FakeAgent()
    .override('importImages', async () => archive)
    .override('pullImage', async (name) => agentImage('b', name))
    .override('garbageCollect', async (keep) => {
      collected.push(keep);
      return { blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 7 };
    });
  // operations run at once here; `finished` is what a test awaits
  const finished: Promise<unknown>[] = [];
  const operations = {
    start: (kind: string, target: string, projectId: string, work: (op: { id: string; progress(): void }) => Promise<unknown>) => {
      finished.push(work({ id: 'op1', progress: () => undefined }));
      return { id: 'op1', kind, target, projectId };
    },
  } as unknown as OperationService;
  const svc = new ImageService(store, agent, new EventBus(), operations);
  const load = async (imgs: AgentImage[], projectId: string) => {
    archive = imgs;
    return svc.importArchive('/archive.tar', projectId);
  };
  const container = async (id: string, projectId: string, imageDigest: string) => {
    const c: ContainerRecord = {
      id, name: `c-${id.slice(0, 4)}`, projectId, imageDigest, config: { image: 'x', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} }, status: 'created', runtime: 'runc',
      pid: null, exitCode: null, oomKilled: false, restartCount: 0, stoppedByUser: false, createdAt: now, startedAt: null, finishedAt: null, warnings: [], host: 'local',
    };
    await store.containers.insert(c);
  };
  return { store, svc, load, container, collected, finished, agent };
}

test('import: references and tags per project; resolve by tag, digest, prefix and repo@index-digest, never across projects', async (t) => {
  const { svc, load, container } = await setup(t);
  const imported = await load([agentImage('a', 'alpine:3', `sha256:${hex('9')}`), agentImage('b')], 'p1');
  assert.deepEqual(imported.map((i) => [i.name, i.image.tags]), [['docker.io/library/alpine:3', ['docker.io/library/alpine:3']], [null, []]]);
  await load([agentImage('a', 'mine:latest')], 'p2');
  const a = `sha256:${hex('a')}`;
  assert.equal((await svc.resolve('alpine:3', { projectId: 'p1' })).digest, a);
  await assert.rejects(svc.resolve('alpine:3', { projectId: 'p2' }), { code: 'NotFound' }, 'another project\'s tag does not match');
  assert.equal((await svc.resolve(a, { projectId: 'p2' })).projectId, 'p2');
  assert.equal((await svc.resolve('aaaaaa', { projectId: 'p1' })).digest, a, 'a unique hex prefix');
  assert.equal((await svc.resolve(`alpine@sha256:${hex('9')}`, { projectId: 'p1' })).digest, a, 'the index it was pulled through');
  await assert.rejects(svc.resolve('', { projectId: 'p1' }), { code: 'InvalidArgument' });
  await container(hex('1'), 'p1', a);
  const views = await svc.list('p1');
  assert.deepEqual(views.map((v) => [v.id, v.tags.length, v.containers]).sort(), [[a, 1, 1], [`sha256:${hex('b')}`, 0, 0]]);
  const seenByP2 = await svc.inspect('mine', 'p2');
  assert.deepEqual([seenByP2.tags, seenByP2.containers], [['docker.io/library/mine:latest'], 0], 'p2 sees its own tags and containers only');
  assert.equal((await svc.list()).length, 3, 'every project\'s references');
});

test('pull: the operation records the image and its tag; by digest, no tag', async (t) => {
  const { svc, finished } = await setup(t);
  await svc.pull('busybox', 'p1');
  await svc.pull(`busybox@sha256:${hex('b')}`, 'p2');
  assert.deepEqual(await Promise.all(finished), [
    { id: `sha256:${hex('b')}`, digest: `sha256:${hex('b')}`, reference: 'docker.io/library/busybox:latest', size: 10, layers: 1 },
    { id: `sha256:${hex('b')}`, digest: `sha256:${hex('b')}`, reference: `docker.io/library/busybox@sha256:${hex('b')}`, size: 10, layers: 1 },
  ]);
  assert.deepEqual((await svc.inspect('busybox', 'p1')).tags, ['docker.io/library/busybox:latest']);
  assert.deepEqual((await svc.inspect(`sha256:${hex('b')}`, 'p2')).tags, []);
});

test('pull: the agent may reuse only the configs and layers of the pulling project\'s own images (another project\'s are fetched and checked)', async (t) => {
  const { svc, finished, agent } = await setup(t);
  for (const project of ['p1', 'p1', 'p2']) {
    await svc.pull('busybox', project);
    await finished.at(-1);
  }
  const reusable = agent.calls('pullImage').map((c) => (c[1] as { reusable?: string[] }).reusable);
  const held = [`sha256:${hex('c')}`, `sha256:${hex('d')}`];
  assert.deepEqual(reusable, [[], held, []], 'p1 holds nothing, then its image\'s blobs; p2 holds nothing of it');
});

test('remove: untag first, refused while in use or ambiguous, the content goes with its last reference; GC keeps what is used', async (t) => {
  const { store, svc, load, container, collected } = await setup(t);
  const a = `sha256:${hex('a')}`;
  await load([agentImage('a', 'one:1'), agentImage('a', 'two:1')], 'p1');
  await load([agentImage('a', 'one:1')], 'p2');
  assert.deepEqual(await svc.remove('one:1', 'p1', false), { untagged: ['docker.io/library/one:1'], deleted: [] }, 'another tag is left: untag only');
  assert.equal(collected.length, 0, 'an untag collects nothing');
  await load([agentImage('a', 'one:1')], 'p1');
  await assert.rejects(svc.remove(a, 'p1', false), /several tags .*--force/);
  await container(hex('1'), 'p1', a);
  await assert.rejects(svc.remove(a, 'p1', true), /used by 1 container/);
  assert.equal((await store.images.tags({ projectId: 'p1' })).length, 2, 'a refusal changes nothing');
  await store.containers.delete(hex('1'));
  assert.deepEqual(await svc.remove(a, 'p1', true), { untagged: ['docker.io/library/one:1', 'docker.io/library/two:1'], deleted: [a] });
  assert.ok(await store.images.get(a), 'p2 still references the content');
  assert.deepEqual(collected.at(-1)!.manifestDigests, [a]);
  await assert.rejects(svc.resolve('one:1', { projectId: 'p1' }), { code: 'NotFound' });
  // p2's container keeps the content after p2's reference goes (a project's last reference is not the content's)
  await container(hex('2'), 'p2', a);
  await store.images.deleteRef('p2', a);
  await svc.collectGarbage();
  assert.ok(await store.images.get(a), 'a container of it keeps the content');
  await store.containers.delete(hex('2'));
  await svc.collectGarbage();
  assert.equal(await store.images.get(a), undefined, 'nothing keeps it: gone');
  assert.deepEqual(collected.at(-1)!.manifestDigests, []);
});

test('prune: dangling references only, or every unused one with all; GC keeps disk images\' and VMs\' blobs', async (t) => {
  const { store, svc, load, container, collected } = await setup(t);
  await load([agentImage('a', 'kept:1'), agentImage('b'), agentImage('f')], 'p1');
  await container(hex('1'), 'p1', `sha256:${hex('f')}`);
  const now = new Date().toISOString();
  await store.disks.insert({ projectId: 'p2', name: 'root', digest: `sha256:${hex('7')}`, format: 'qcow2', size: 1, virtualSize: 1, createdAt: now });
  const vm: VmRecord = {
    id: hex('8').slice(0, 32), name: 'vm1', projectId: 'p2', status: 'created', pid: null, exitCode: null, createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent: 'local',
    config: { cpus: 1, memoryMiB: 64, kernelImage: { name: 'gone', digest: `sha256:${hex('6')}` } },
  };
  await store.vms.insert(vm);
  assert.deepEqual(await svc.prune(false, 'p1'), { deleted: [`sha256:${hex('b')}`], bytesFreed: 7 });
  const keep = collected.at(-1)!;
  assert.deepEqual(keep.manifestDigests.sort(), [`sha256:${hex('a')}`, `sha256:${hex('f')}`]);
  assert.deepEqual(keep.chainIds.sort(), ['chain-a', 'chain-f']);
  assert.deepEqual(keep.blobs?.sort(), [`sha256:${hex('6')}`, `sha256:${hex('7')}`]);
  assert.deepEqual((await svc.prune(true, 'p1')).deleted, [`sha256:${hex('a')}`], 'all: the tagged one too, not the one in use');
  assert.deepEqual((await svc.list('p1')).map((i) => i.digest), [`sha256:${hex('f')}`]);
});

test('garbage collection reaches every host that answers with the same keep list; their image_hosts rows of what goes are dropped; a down or failing host is left for the next', async (t) => {
  const { store, svc, load, collected } = await setup(t);
  const seen: Record<string, number> = { b: 0, c: 0, d: 0 };
  const gcOn = (name: string, fails = false) => new FakeAgent({ name }).override('garbageCollect', async (keep) => {
    seen[name]!++;
    assert.deepEqual(keep, collected.at(-1), `${name} is told to keep what the embedded agent keeps`);
    if (fails) throw new Error(`${name}'s disk is read-only`);
    return { blobsRemoved: 1, snapshotsRemoved: 1, bytesFreed: 100 };
  });
  const others: Record<string, FakeAgent> = { b: gcOn('b'), c: gcOn('c', true), d: gcOn('d') };
  svc.useHosts({
    localName: 'local', names: () => ['local', 'b', 'c', 'd'], has: (n) => n === 'local' || n in others,
    get: (n) => others[n]!, isDown: (n) => n === 'd',
  });
  const a = `sha256:${hex('a')}`;
  await load([agentImage('a', 'one:1')], 'p1');
  await load([agentImage('f', 'two:1')], 'p1');
  for (const h of ['b', 'c', 'd']) await store.images.addHost('chain-a', h);
  await store.images.addHost('chain-f', 'b');
  await svc.remove('one:1', 'p1', false);
  assert.deepEqual(seen, { b: 1, c: 1, d: 0 }, 'b and c asked (c failed: logged, not thrown), d is down');
  assert.deepEqual(collected.at(-1)!.manifestDigests, [`sha256:${hex('f')}`], 'a is no longer kept');
  assert.deepEqual(await store.images.hosts('chain-a'), [], 'no host is recorded as holding what went');
  assert.deepEqual((await store.images.hosts('chain-f')).sort(), ['b', 'local'], 'what stays stays recorded');
  assert.equal(await store.images.get(a), undefined);
  const gc = await svc.collectGarbage();
  assert.equal(gc.bytesFreed, 7 + 100, 'the embedded agent\'s and b\'s figures are summed');
});
