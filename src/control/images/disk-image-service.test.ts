/**
 * VM disk images against a real SQLite store: names per project over shared content, how a
 * name resolves across the projects a scope can read, and removal while VMs are backed by it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { EventBus } from '../events/event-bus.js';
import type { VmImageKind } from '../../agent/agent.js';
import { FakeAgent } from '../testing/fake-agent.js';
import type { VmRecord } from '../../store/records.js';
import { DiskImageService, kindOf } from './disk-image-service.js';
import type { HostAgents } from '../compute/hosts.js';

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-disk-svc-'));
  const opening = openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await (await opening.catch(() => undefined))?.close(); // the directory goes even when the open failed
    rmSync(dir, { recursive: true, force: true });
  });
  const store = await opening;
  const now = new Date().toISOString();
  for (const id of ['p1', 'p2']) await store.projects.insert({ id, name: id, parentId: null, createdAt: now });
  const agent = new FakeAgent()
    // the file's name is its content here: one digest per name
    .override('importDiskImage', async (file: string, kind: VmImageKind = 'disk') => ({ digest: `sha256:${file}`, size: 1, format: kind === 'disk' ? 'qcow2' : kind, virtualSize: 2 }))
    .override('diskImagePath', (digest) => `/blobs/${digest}`);
  let collections = 0;
  const svc = new DiskImageService(store, agent, new EventBus(), async () => void collections++);
  const vm = async (name: string, projectId: string, disk: string) => {
    const v: VmRecord = {
      id: name.padEnd(32, '0'), name, projectId, status: 'created', pid: null, exitCode: null, createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent: 'local',
      config: { cpus: 1, memoryMiB: 64, diskImage: { name: 'root', digest: `sha256:${disk}` } },
    };
    await store.vms.insert(v);
  };
  return { store, svc, vm, collections: () => collections };
}

test('import and resolve: names per project, a readable project\'s image by name, kinds kept apart', async (t) => {
  const { store, svc } = await setup(t);
  await assert.rejects(svc.import('f1', 'bad name', 'p1'), /invalid disk image name/);
  const root = await svc.import('f1', 'root', 'p1');
  assert.deepEqual([root.digest, root.format], ['sha256:f1', 'qcow2']);
  await assert.rejects(svc.import('f2', 'root', 'p1'), /already exists in this project/);
  await svc.import('f1', 'root', 'p2');
  await svc.import('k1', 'vmlinuz', 'p2', 'kernel');
  assert.deepEqual((await svc.list('p2')).map((d) => d.name).sort(), ['root', 'vmlinuz']);
  assert.equal((await svc.list()).length, 3);
  assert.equal((await svc.resolve('root', 'p1')).projectId, 'p1', 'the project\'s own first');
  assert.equal((await svc.resolve('vmlinuz', 'p1', { canRead: () => true })).projectId, 'p2', 'else one the scope can read');
  await assert.rejects(svc.resolve('vmlinuz', 'p1'), { code: 'NotFound' }, 'not one it cannot read');
  await assert.rejects(svc.resolve('vmlinuz', 'p2', { projectId: 'p2' }, 'disk'), /is a kernel, not a disk/);
  await svc.remove('root', 'p1');
  assert.equal((await svc.resolve('root', 'p1', { canRead: () => true }, 'disk')).projectId, 'p2', 'gone from p1: p2\'s, which the scope reads');
  await store.projects.insert({ id: 'p3', name: 'p3', parentId: null, createdAt: new Date().toISOString() });
  await svc.import('f3', 'root', 'p3');
  await assert.rejects(svc.resolve('root', 'p1', { canRead: () => true }), /names disk images in several projects/);
  assert.equal(svc.path(root), '/blobs/sha256:f1');
});

test('remove: refused while the project\'s VM is backed by it, or another project\'s when it is the content\'s last name', async (t) => {
  const { store, svc, vm, collections } = await setup(t);
  await svc.import('f1', 'root', 'p1');
  await svc.import('f1', 'base', 'p2');
  await vm('vm1', 'p1', 'f1');
  await vm('vm2', 'p2', 'f1');
  await assert.rejects(svc.remove('root', 'p1'), /backs the disk of 1 VM\(s\): vm1/, 'p2\'s VM keeps p2\'s name, not p1\'s');
  await store.vms.delete('vm1'.padEnd(32, '0'));
  await svc.remove('root', 'p1');
  assert.equal(collections(), 1, 'the collector runs after a removal');
  await assert.rejects(svc.remove('root', 'p1'), { code: 'NotFound' });
  // base is the content's last name now: p1's VM on it counts too
  await vm('vm3', 'p1', 'f1');
  await assert.rejects(svc.remove('base', 'p2'), (e: Error) => /backs the disk of 2 VM/.test(e.message) && /vm2/.test(e.message) && /vm3/.test(e.message));
  assert.equal((await svc.list('p2')).length, 1, 'a refusal changes nothing');
  assert.equal(collections(), 1);
});

test('hosts: without an embedded agent an import streams to a registered host that answers; a VM\'s host gets it carried from whoever holds it', async (t) => {
  const { svc } = await setup(t);
  const b = new FakeAgent({ name: 'b' });
  const c = new FakeAgent({ name: 'c' });
  const d = new FakeAgent({ name: 'd' });
  const agents: Record<string, FakeAgent> = { b, c, d };
  const down = new Set<string>(['b']);
  const hosts: HostAgents = {
    localName: undefined,
    names: () => Object.keys(agents),
    has: (n) => n in agents,
    get: (n) => agents[n]!,
    isDown: (n) => down.has(n),
  };
  svc.useHosts(hosts);
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-disk-upload-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'upload');
  const content = Buffer.from('a raw disk, as the API wrote the upload to its own temp file');
  writeFileSync(file, content);
  const digest = `sha256:${createHash('sha256').update(content).digest('hex')}`;

  const rec = await svc.import(file, 'root', 'p1');
  assert.equal(rec.digest, digest);
  assert.deepEqual(c.calls('writeBlob').map(([dg, size]) => [dg, size]), [[digest, content.length]], 'to c: b does not answer');
  assert.deepEqual(c.calls('adoptDiskImage'), [[digest, 'disk']], 'and checked there');
  assert.deepEqual(b.calls('writeBlob'), []);

  // d gets it from c; concurrent asks share one transfer; c's path for c
  const [p1, p2] = await Promise.all([svc.ensureOnHost({ ...rec, kind: kindOf(rec) }, 'd'), svc.ensureOnHost({ ...rec, kind: kindOf(rec) }, 'd')]);
  assert.deepEqual([p1, p2], [`/fake/d/blobs/${digest}`, `/fake/d/blobs/${digest}`]);
  assert.equal(d.calls('writeBlob').length, 1);
  assert.deepEqual(b.calls('missingBlobs'), [], 'the host that is down is not asked');
  assert.equal(await svc.ensureOnHost({ ...rec, kind: kindOf(rec) }, 'c'), `/fake/c/blobs/${digest}`);
  assert.equal(c.calls('writeBlob').length, 1, 'nothing carried to a host that has it');

  // nobody that answers has it: Unavailable naming the image, the target and the hosts
  const lone = { ...rec, name: 'lone', digest: `sha256:${'e'.repeat(64)}` };
  b.blobs.set(lone.digest, Buffer.from('only on b'));
  await assert.rejects(svc.ensureOnHost({ ...lone, kind: kindOf(lone) }, 'd'), { code: 'Unavailable', message: /VM image lone cannot be carried to host d: no host that answers holds it \(asked c\); b does not answer/ });
  down.clear();
  assert.equal(await svc.ensureOnHost({ ...lone, kind: kindOf(lone) }, 'd'), `/fake/d/blobs/${lone.digest}`, 'once b answers it gives it');
});
