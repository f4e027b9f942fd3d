/**
 * Content carried between two real agents (each its own data dir, content store and snapshots),
 * each served by the real agent server on a unix socket and reached through a RemoteAgent, as the
 * control plane reaches them: blobs streamed from one host's readBlob into the other's writeBlob
 * (carryBlobs, what the image services use), verified there, then adopted with an import's checks.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalAgent } from '../local-agent.js';
import { compileOptions, type CompiledOptions } from '../../core/config.js';
import { NimbusError } from '../../core/errors.js';
import { startAgentServer } from './agent-server.js';
import { RemoteAgent } from './remote-agent.js';
import { BLOB_SIZE_HEADER, PATHS, PROTOCOL_HEADER } from './agent-protocol.js';
import { carryBlobs } from '../../control/images/carry.js';
import { MEDIA, blobOf, buildTestImages, makeTar, manifestOf, writeOciLayoutTar, type TestImages } from '../../../scripts/fixtures/images.js';
import { readSnapshotMetadataSync } from '../snapshots/metadata-journal.js';

const TOKEN = 'blob-transfer-token-0123456789';
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let built: Promise<TestImages> | undefined;
const testImages = () => (built ??= buildTestImages());

interface Host {
  name: string;
  local: LocalAgent;
  remote: RemoteAgent;
  options: CompiledOptions;
  socket: string;
}

async function hostNamed(t: TestContext, name: string, protocol?: { min: number; max: number }): Promise<Host> {
  const home = mkdtempSync(join(tmpdir(), `nimbus-carry-${name}-`));
  // one hook, in the reverse order of making (after-hooks run in the order they were added): the
  // agent's background work (its pull warm-up writes under home/tmp) ends before its home goes
  let local: LocalAgent | undefined;
  let server: Awaited<ReturnType<typeof startAgentServer>> | undefined;
  let remote: RemoteAgent | undefined;
  t.after(async () => {
    await remote?.close();
    await server?.close();
    await local?.close();
    rmSync(home, { recursive: true, force: true });
  });
  const options = compileOptions({ home, agentName: name, warmPerImage: 0, snapshotter: 'native' }, {});
  local = await LocalAgent.create(options);
  const socket = join(home, 'agent.sock');
  server = await startAgentServer(local, { token: TOKEN, socketPath: socket, ...(protocol ? { protocol } : {}) });
  remote = new RemoteAgent({ name, url: server.url, token: TOKEN });
  return { name, local, remote, options, socket };
}

/** What a host keeps of content in flight: nothing once a write has ended either way. */
function ingestLeft(h: Host): string[] {
  const dir = join(h.options.contentDir, 'ingest');
  return existsSync(dir) ? readdirSync(dir) : [];
}

function snapshotKeys(h: Host): string[] {
  return Object.keys(readSnapshotMetadataSync(join(h.options.snapshotsDir, 'native')).snapshots).sort();
}

async function* chunksOf(b: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof NimbusError, `expected a NimbusError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

test('an image imported on host a is carried to host b blob by blob and adopted there with the same layers', async (t) => {
  const images = await testImages();
  const [a, b] = [await hostNamed(t, 'a'), await hostNamed(t, 'b')];
  const archive = join(a.options.tmpDir, 'busybox.tar');
  await writeOciLayoutTar(images, archive);
  const [imported] = await a.local.importImages(archive);
  assert.ok(imported);
  const digests = [imported.manifestDigest, imported.configDigest, ...imported.layers.map((l) => l.digest)];

  assert.deepEqual(await b.remote.missingBlobs(digests), digests, 'b has none of it');
  assert.deepEqual(await a.remote.missingBlobs(digests), [], 'a has all of it');
  const sent = await carryBlobs(a.remote, b.remote, await b.remote.missingBlobs(digests));
  assert.equal(sent.blobs, digests.length);
  assert.equal(sent.bytes, [images.amd64.manifest, images.amd64.config, ...images.amd64.layers].reduce((n, x) => n + x.size, 0));
  assert.deepEqual(await b.remote.missingBlobs(digests), [], 'every blob there now');
  for (const x of [images.amd64.manifest, images.amd64.config, ...images.amd64.layers]) {
    assert.deepEqual(readFileSync(b.local.diskImagePath(x.digest)), x.data, `${x.digest} intact on b`);
  }
  assert.deepEqual(ingestLeft(b), []);

  const adopted = await b.remote.adoptImage(imported.manifestDigest);
  assert.equal(adopted.chainId, imported.chainId);
  assert.deepEqual(adopted.layers, imported.layers);
  assert.deepEqual(adopted.config, imported.config);
  assert.deepEqual(snapshotKeys(b), snapshotKeys(a), 'the same snapshot chain on both');
  // adopting again is a no-op; a blob already there is not sent again (and its bytes are not read)
  assert.equal((await b.remote.adoptImage(imported.manifestDigest)).chainId, imported.chainId);
  let pulled = 0;
  async function* endless() {
    for (;;) {
      pulled++;
      yield Buffer.alloc(64 * 1024);
    }
  }
  const layer = images.amd64.layers[0]!;
  assert.deepEqual(await b.remote.writeBlob(layer.digest, layer.size, endless()), { digest: layer.digest, size: layer.size });
  assert.ok(pulled < 64, `the sender stopped (${pulled} chunks read)`);
  // reading: the bytes and the size; an absent blob is NotFound
  const read = await b.remote.readBlob(layer.digest);
  const got: Buffer[] = [];
  for await (const c of read.bytes) got.push(c as Buffer);
  assert.deepEqual([read.size, Buffer.concat(got)], [layer.size, layer.data]);
  await rejectsWith(b.remote.readBlob(digestOf(Buffer.from('nothing'))), 'NotFound', /not in the content store of host b/);
});

test('writes are verified: a wrong digest or size, a sender that goes away, an absurd size: refused, nothing left', async (t) => {
  const b = await hostNamed(t, 'b');
  const data = Buffer.alloc(300_000, 7);
  for (let i = 0; i < data.length; i += 997) data[i] = i % 251;
  const digest = digestOf(data);
  const tampered = Buffer.from(data);
  tampered.writeUInt8(tampered.readUInt8(12345) ^ 0xff, 12345);

  await rejectsWith(b.remote.writeBlob(digest, data.length, chunksOf(tampered)), 'DataLoss', /digest mismatch/);
  await rejectsWith(b.remote.writeBlob(digest, data.length - 1, chunksOf(data)), 'DataLoss', /more than the expected|size mismatch/);
  await rejectsWith(b.remote.writeBlob(digest, data.length + 1, chunksOf(data)), 'DataLoss', /size mismatch/);
  await rejectsWith(b.remote.writeBlob('sha256:../../etc/passwd', 1, chunksOf(data)), 'InvalidArgument', /invalid digest/);
  assert.deepEqual(await b.remote.missingBlobs([digest]), [digest], 'nothing stored');
  assert.deepEqual(ingestLeft(b), [], 'no partial blob');

  // the sender breaks off mid-blob: the agent drops what it had
  async function* breaksOff() {
    yield data.subarray(0, 100_000);
    await sleep(50);
    throw new Error('the holder went away');
  }
  await assert.rejects(b.remote.writeBlob(digest, data.length, breaksOff()));
  for (let i = 0; i < 100 && ingestLeft(b).length; i++) await sleep(20);
  assert.deepEqual(ingestLeft(b), [], 'no partial blob after a broken upload');
  assert.deepEqual(await b.remote.missingBlobs([digest]), [digest]);

  // more than any host takes: refused before a byte is read, and the sender stops
  let pulled = 0;
  async function* endless() {
    for (;;) {
      pulled++;
      yield Buffer.alloc(64 * 1024);
    }
  }
  await rejectsWith(b.remote.writeBlob(digest, 2 * 1024 ** 4, endless()), 'ResourceExhausted', /at most/);
  await rejectsWith(b.remote.writeBlob(digest, 900 * 1024 ** 3, endless()), 'ResourceExhausted', /not enough disk space/);
  assert.ok(pulled < 200, `the sender stopped (${pulled} chunks read)`);
  assert.deepEqual(ingestLeft(b), []);

  // and the right bytes are taken
  assert.deepEqual(await b.remote.writeBlob(digest, data.length, chunksOf(data)), { digest, size: data.length });
  assert.deepEqual(await b.remote.missingBlobs([digest]), []);
});

test('garbage collection leaves a blob being written and one received but not adopted yet', async (t) => {
  const b = await hostNamed(t, 'b');
  const data = Buffer.alloc(200_000, 3);
  const digest = digestOf(data);
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  async function* slow() {
    yield data.subarray(0, 1000);
    await held;
    yield data.subarray(1000);
  }
  const writing = b.remote.writeBlob(digest, data.length, slow());
  for (let i = 0; i < 100 && !ingestLeft(b).length; i++) await sleep(10);
  const nothingKept = { manifestDigests: [], indexDigests: [], chainIds: [] };
  assert.equal((await b.remote.garbageCollect(nothingKept)).blobsRemoved, 0);
  release();
  await writing;
  assert.equal((await b.remote.garbageCollect(nothingKept)).blobsRemoved, 0, 'received, not adopted yet: kept');
  assert.deepEqual(await b.remote.missingBlobs([digest]), []);
});

test('adopt applies an import\'s checks: a layer whose content is not its diff id is refused and leaves no snapshot', async (t) => {
  const b = await hostNamed(t, 'b');
  const good = blobOf(await makeTar([{ name: 'a.txt', type: 'file', content: 'first layer\n' }]), MEDIA.layer);
  const bad = blobOf(await makeTar([{ name: 'b.txt', type: 'file', content: 'second layer\n' }]), MEDIA.layer);
  // the config promises other content for the second layer
  const config = blobOf(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [good.digest, digestOf(Buffer.from('something else'))] } })), MEDIA.config);
  const manifest = manifestOf(config, [good, bad]);
  for (const x of [manifest, config, good, bad]) await b.remote.writeBlob(x.digest, x.size, chunksOf(x.data));
  await rejectsWith(b.remote.adoptImage(manifest.digest), 'DataLoss', /does not match the config's diff id/);
  assert.deepEqual(snapshotKeys(b), [], 'the first layer\'s snapshot is removed too');
  // a manifest whose blobs are not all there is NotFound, naming the blob
  const lonely = manifestOf(config, [good, blobOf(Buffer.from('never sent'), MEDIA.layer)]);
  await b.remote.writeBlob(lonely.digest, lonely.size, chunksOf(lonely.data));
  await rejectsWith(b.remote.adoptImage(lonely.digest), 'NotFound', /is not in the content store of host b/);
  // not a manifest at all
  await rejectsWith(b.remote.adoptImage(good.digest), 'DataLoss', /not valid JSON/);
});

test('VM images: a raw disk is adopted with its path on that host; a qcow2 with a backing file or a kernel that is none is refused and dropped', { skip: spawnSync('qemu-img', ['--version']).status !== 0 && 'no qemu-img' }, async (t) => {
  const [a, b] = [await hostNamed(t, 'a'), await hostNamed(t, 'b')];
  const work = mkdtempSync(join(tmpdir(), 'nimbus-carry-disks-'));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const raw = join(work, 'root.raw');
  writeFileSync(raw, Buffer.alloc(1024 * 1024));
  const imported = await a.local.importDiskImage(raw, 'disk');
  await carryBlobs(a.remote, b.remote, await b.remote.missingBlobs([imported.digest]));
  const adopted = await b.remote.adoptDiskImage(imported.digest, 'disk');
  assert.deepEqual({ ...adopted, path: undefined }, { ...imported, path: undefined });
  assert.equal(adopted.path, b.local.diskImagePath(imported.digest), 'b\'s own path');
  assert.ok(adopted.path.startsWith(b.options.contentDir));

  const hostile = join(work, 'hostile.qcow2');
  assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', raw, '-F', 'raw', hostile]).status, 0);
  const bytes = readFileSync(hostile);
  const digest = digestOf(bytes);
  await b.remote.writeBlob(digest, bytes.length, chunksOf(bytes));
  await rejectsWith(b.remote.adoptDiskImage(digest, 'disk'), 'InvalidArgument', /backing file/);
  assert.deepEqual(await b.remote.missingBlobs([digest]), [digest], 'a refused blob that just arrived is not kept');
  const notKernel = Buffer.from('not a kernel at all, just text\n'.repeat(40));
  await b.remote.writeBlob(digestOf(notKernel), notKernel.length, chunksOf(notKernel));
  await rejectsWith(b.remote.adoptDiskImage(digestOf(notKernel), 'kernel'), 'InvalidArgument', /not a kernel/);
  // one imported on the host itself stays, whatever kind it was asked as
  await rejectsWith(b.remote.adoptDiskImage(imported.digest, 'kernel'), 'InvalidArgument', /not a kernel/);
  assert.deepEqual(await b.remote.missingBlobs([imported.digest]), []);
});

test('a VM image imported on a host is read once (hashed as it is copied in), and importing it again keeps the stored blob', { skip: spawnSync('qemu-img', ['--version']).status !== 0 && 'no qemu-img' }, async (t) => {
  const a = await hostNamed(t, 'a');
  const work = mkdtempSync(join(tmpdir(), 'nimbus-import-once-'));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const raw = join(work, 'root.raw');
  const size = 64 * 1024 * 1024;
  writeFileSync(raw, randomBytes(size));
  // bytes this process read (all its threads; qemu-img's own read of the header is another process's)
  const readBytes = () => Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))?.[1]);
  const before = readBytes();
  const imported = await a.local.importDiskImage(raw, 'disk');
  const read = readBytes() - before;
  assert.equal(imported.size, size);
  assert.equal(imported.digest, digestOf(readFileSync(raw)));
  assert.ok(read < 1.5 * size, `the import read ${read} bytes of a ${size}-byte file`);
  const inode = statSync(a.local.diskImagePath(imported.digest)).ino;
  assert.deepEqual(await a.local.importDiskImage(raw, 'disk'), imported);
  assert.equal(statSync(a.local.diskImagePath(imported.digest)).ino, inode, 'the stored blob is kept');
  assert.deepEqual(ingestLeft(a), []);
});

test('protocol 2: the new methods fail with a Conflict naming the host and the versions, and are never sent', async (t) => {
  const old = await hostNamed(t, 'b', { min: 2, max: 2 });
  const digest = digestOf(Buffer.from('x'));
  const upgrade = /host b's agent speaks protocol 2 and cannot receive images \((missingBlobs|readBlob|writeBlob|adoptImage|adoptDiskImage) needs protocol 3\); upgrade it/;
  assert.equal(await old.remote.protocolVersion(), 2);
  await rejectsWith(old.remote.missingBlobs([digest]), 'Conflict', upgrade);
  await rejectsWith(old.remote.readBlob(digest), 'Conflict', upgrade);
  await rejectsWith(old.remote.writeBlob(digest, 1, chunksOf(Buffer.from('x'))), 'Conflict', upgrade);
  await rejectsWith(old.remote.adoptImage(digest), 'Conflict', upgrade);
  await rejectsWith(old.remote.adoptDiskImage(digest, 'disk'), 'Conflict', upgrade);
  assert.equal((await old.remote.info()).name, 'b', 'the rest works at 2');
  // a control plane that speaks only 2, against an agent of 3: the same, from its side
  const current = await hostNamed(t, 'c');
  const oldClient = new RemoteAgent({ name: 'c', url: `unix:${current.socket}`, token: TOKEN, protocol: { min: 2, max: 2 } });
  t.after(() => oldClient.close());
  await rejectsWith(oldClient.missingBlobs([digest]), 'Conflict', /host c's agent speaks protocol 2/);
  // and the agent refuses a request at 2 for them (a peer that sent one anyway), not a 404
  for (const [method, path] of [['PUT', PATHS.blob(digest)], ['GET', PATHS.blob(digest)], ['POST', PATHS.call('missingBlobs')]] as const) {
    const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({ socketPath: current.socket, method, path, headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '2', [BLOB_SIZE_HEADER]: '1', 'content-type': 'application/json' } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end(method === 'POST' ? JSON.stringify({ args: [[digest]] }) : method === 'PUT' ? 'x' : undefined);
    });
    assert.equal(r.status, 409, `${method} ${path}: ${r.body}`);
    assert.match(r.body, /is part of agent protocol 3; the request speaks 2/);
  }
});
