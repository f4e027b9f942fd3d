import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import type { RuntimeState } from '../drivers/instance-driver.js';
import { ResourceExhausted, hasCode } from '../../core/errors.js';
import { CopyHost, type CopyHostParts } from './container-copy.js';

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo'; linkname?: string; body?: string | Buffer; size?: number; mode?: number; uid?: number; gid?: number };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const { body, ...h } of entries) pack.entry(h, body ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function entriesOf(bytes: Readable): Promise<Array<{ name: string; type: string; body: string }>> {
  const ex = tar.extract();
  const out: Array<{ name: string; type: string; body: string }> = [];
  const fed = pipeline(bytes, ex);
  for await (const e of ex) {
    const chunks: Buffer[] = [];
    for await (const c of e as AsyncIterable<Buffer>) chunks.push(c);
    out.push({ name: e.header.name, type: e.header.type ?? 'file', body: Buffer.concat(chunks).toString() });
  }
  await fed;
  return out;
}

/** A host whose container rootfs is a temp dir, beside a "host" directory an escape would reach. */
function fixture(status: RuntimeState['status'] = 'running', over: Partial<CopyHostParts> = {}) {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-cp-'));
  const root = path.join(base, 'rootfs');
  const outside = path.join(base, 'outside');
  mkdirSync(path.join(root, 'data', 'dir'), { recursive: true });
  mkdirSync(path.join(root, 'etc'), { recursive: true });
  mkdirSync(outside);
  writeFileSync(path.join(root, 'data', 'file'), 'inside\n');
  symlinkSync(outside, path.join(root, 'data', 'hostlink')); // what a host-side resolution would follow out
  symlinkSync('/', path.join(root, 'data', 'rootlink'));
  const calls: string[] = [];
  const host = new CopyHost({
    agentName: 'test',
    isSecure: (id) => id === 'secure',
    view: async () => ({ rootfs: root, mountPoints: ['/proc', '/vol'], user: { uid: 1234, gid: 5678 } }),
    state: async () => ({ status }),
    freeze: async () => void calls.push('freeze'),
    thaw: async () => void calls.push('thaw'),
    snapshotMounts: async () => [],
    saved: async () => ({ mountPoints: [] }),
    scratchDir: path.join(base, 'scratch'),
    room: () => ({ snapshotRoom: async () => 1024 ** 3 }),
    maxBytes: 1024 * 1024,
    ...over,
  });
  return { base, root, outside, host, calls, done: () => rmSync(base, { recursive: true, force: true }) };
}

const put = async (f: ReturnType<typeof fixture>, dir: string, entries: Entry[], opts = {}) => f.host.write('c1', dir, opts, Readable.from([await tarOf(entries)]));

test('a tar is extracted under the directory, in the rootfs; a running container is frozen meanwhile and thawed after', async () => {
  const f = fixture();
  try {
    const r = await put(f, '/data', [{ name: 'new/', type: 'directory' }, { name: 'new/a', body: 'a\n', mode: 0o4755 }, { name: '/abs', body: 'abs\n' }]);
    assert.equal(r.entries, 3);
    assert.equal(readFileSync(path.join(f.root, 'data', 'new', 'a'), 'utf8'), 'a\n');
    assert.equal(statSync(path.join(f.root, 'data', 'new', 'a')).mode & 0o7777, 0o4755, 'setuid kept, as dockerd keeps it');
    assert.equal(readFileSync(path.join(f.root, 'data', 'abs'), 'utf8'), 'abs\n', 'an absolute entry is relative to the extraction point');
    assert.deepEqual(f.calls, ['freeze', 'thaw']);
  } finally {
    f.done();
  }
});

test('hostile tars are refused and write nothing outside: ../, entries through links (the container\'s or the tar\'s own), hard links out, devices, huge files', async () => {
  const f = fixture();
  try {
    const cases: Array<[string, Entry[], RegExp]> = [
      ['dot-dot', [{ name: '../../outside/x', body: 'x' }], /escapes/],
      ['through the container\'s link', [{ name: 'hostlink/x', body: 'x' }], /is a symlink; refusing to follow it/],
      ['through a link to /', [{ name: 'rootlink/etc/x', body: 'x' }], /is a symlink; refusing to follow it/],
      ['through its own link', [{ name: 'esc', type: 'symlink', linkname: f.outside }, { name: 'esc/x', body: 'x' }], /is a symlink; refusing to follow it/],
      ['hard link out', [{ name: 'h', type: 'link', linkname: '../../../outside/y' }], /escapes/],
      ['char device', [{ name: 'null', type: 'character-device' }], /character-device entries are not allowed/],
      ['block device', [{ name: 'sda', type: 'block-device' }], /block-device entries are not allowed/],
      ['huge file', [{ name: 'big', body: Buffer.alloc(2 * 1024 * 1024) }], /exceeds|more than/],
    ];
    for (const [what, entries, why] of cases) {
      await assert.rejects(put(f, '/data', entries), why, what);
      assert.deepEqual(f.calls.slice(-2), ['freeze', 'thaw'], `${what}: thawed after a refusal too`);
    }
    assert.deepEqual(readdirSafe(f.outside), [], 'nothing written outside the rootfs');
    assert.equal(existsSync(path.join(f.root, 'etc', 'x')), false);
    assert.equal(existsSync(path.join(f.root, 'data', 'big')), false);
  } finally {
    f.done();
  }
});

const readdirSafe = (d: string) => (existsSync(d) ? readdirSync(d).sort() : []);

test('the extraction point: followed to the end inside the rootfs, a directory, not a mount', async () => {
  const f = fixture();
  try {
    await assert.rejects(put(f, '/nope', [{ name: 'x', body: 'x' }]), (e: Error & { code?: string }) => e.code === 'NotFound');
    await assert.rejects(put(f, '/data/file', [{ name: 'x', body: 'x' }]), /extraction point is not a directory/);
    await assert.rejects(put(f, '/vol', [{ name: 'x', body: 'x' }]), /is on the mount "\/vol"/);
    // the container's link to / is its root, never the host's
    await put(f, '/data/rootlink/etc', [{ name: 'written', body: 'w\n' }]);
    assert.equal(readFileSync(path.join(f.root, 'etc', 'written'), 'utf8'), 'w\n');
    await assert.rejects(f.host.write('secure', '/', {}, Readable.from([await tarOf([])])), /microVM/);
  } finally {
    f.done();
  }
});

test('noOverwriteDirNonDir, copyUIDGID, and .wh. names kept as names (a docker cp tar has no whiteouts)', async () => {
  const f = fixture('created');
  try {
    await assert.rejects(put(f, '/', [{ name: 'data', body: 'x' }], { noOverwriteDirNonDir: true }), /cannot overwrite a directory with a non-directory/);
    await assert.rejects(put(f, '/data', [{ name: 'file/', type: 'directory' }], { noOverwriteDirNonDir: true }), /cannot overwrite a non-directory with a directory/);
    assert.equal(readFileSync(path.join(f.root, 'data', 'file'), 'utf8'), 'inside\n');
    await put(f, '/data', [{ name: '.wh.file', body: '' }, { name: 'owned', body: 'o', uid: 1, gid: 2 }], { copyUIDGID: true });
    assert.equal(readFileSync(path.join(f.root, 'data', 'file'), 'utf8'), 'inside\n', 'not whited out');
    assert.ok(lstatSync(path.join(f.root, 'data', '.wh.file')).isFile());
    if (process.getuid?.() === 0) assert.deepEqual([statSync(path.join(f.root, 'data', 'owned')).uid, statSync(path.join(f.root, 'data', 'owned')).gid], [1234, 5678]);
    assert.deepEqual(f.calls, [], 'a created container is not frozen');
  } finally {
    f.done();
  }
});

test('read: a file or a directory as dockerd names it, its stat beside; the container is let go before the caller reads (a reader that stops reading holds nothing)', async () => {
  const f = fixture();
  try {
    const one = await f.host.read('c1', '/data/file');
    assert.equal(one.stat.name, 'file');
    assert.deepEqual(await entriesOf(one.bytes), [{ name: 'file', type: 'file', body: 'inside\n' }]);
    const dir = await f.host.read('c1', '/data/');
    assert.equal(dir.stat.name, 'data');
    // nothing read yet: the container is thawed already, and a start does not wait for the caller
    assert.deepEqual(f.calls, ['freeze', 'thaw', 'freeze', 'thaw']);
    let started = false;
    await f.host.lifecycle('c1', async () => {
      started = true;
    });
    assert.equal(started, true);
    assert.deepEqual(readdirSync(path.join(f.base, 'scratch')), [], 'the spool is unlinked while it is read');
    const names = (await entriesOf(dir.bytes)).map((e) => `${e.name} ${e.type}`);
    assert.deepEqual(names.sort(), ['data/ directory', 'data/dir/ directory', 'data/file file', 'data/hostlink symlink', 'data/rootlink symlink']);
    // the link itself, never what it points to on the host
    const link = await f.host.read('c1', '/data/hostlink');
    assert.deepEqual((await entriesOf(link.bytes)).map((e) => e.type), ['symlink']);
    assert.equal(f.calls.filter((c) => c === 'freeze').length, f.calls.filter((c) => c === 'thaw').length);
    await assert.rejects(f.host.stat('c1', '/proc/1/environ'), /is on the mount/);
  } finally {
    f.done();
  }
});

test('read: the spool stops at the disk\'s reserve, and the container is thawed', async () => {
  const f = fixture('running', {
    room: () => ({
      snapshotRoom: async () => {
        throw new ResourceExhausted('disk space for images fell to its reserve');
      },
    }),
  });
  try {
    await assert.rejects(f.host.read('c1', '/data/'), (e: unknown) => hasCode(e, 'ResourceExhausted'));
    assert.deepEqual(f.calls, ['freeze', 'thaw']);
  } finally {
    f.done();
  }
});

test('a stopped container whose rootfs is not mounted here: its snapshot is mounted aside for the copy, and gone after', { skip: process.getuid?.() === 0 ? false : 'mounting needs root' }, async () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-cp-aside-'));
  const layer = path.join(base, 'layer');
  const scratch = path.join(base, 'scratch');
  mkdirSync(path.join(layer, 'etc'), { recursive: true });
  writeFileSync(path.join(layer, 'etc', 'motd'), 'hello\n');
  const host = new CopyHost({
    agentName: 'test', isSecure: () => false,
    view: async () => undefined,
    state: async () => { throw new Error('not asked: the driver holds nothing'); },
    freeze: async () => assert.fail('a stopped container is not frozen'), thaw: async () => assert.fail('nor thawed'),
    snapshotMounts: async () => [{ type: 'bind', source: layer, options: ['rbind', 'rw'] }],
    saved: async () => ({ mountPoints: ['/vol'] }),
    scratchDir: scratch, room: () => ({ snapshotRoom: async () => 1024 ** 3 }),
  });
  try {
    await host.write('c1', '/etc', {}, Readable.from([await tarOf([{ name: 'added', body: 'added\n' }])]));
    assert.equal(readFileSync(path.join(layer, 'etc', 'added'), 'utf8'), 'added\n', 'written through the snapshot');
    const out = await host.read('c1', '/etc/motd');
    assert.deepEqual((await entriesOf(out.bytes)).map((e) => e.body), ['hello\n']);
    await assert.rejects(host.stat('c1', '/vol/x'), /is on the mount "\/vol"/, 'the saved request\'s mounts are refused too');
    await assert.rejects(host.stat('c1', '/proc/1/environ'), /is on the mount "\/proc"/);
    assert.deepEqual(readdirSync(scratch), [], 'unmounted and removed after each copy');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(scratch), 'nothing left mounted');
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});

// ---- docker commit's hold of a writable layer (withWritableLayer) ---------------------------------

function commitFixture(status: RuntimeState['status'], mounts: Array<{ type: string; source: string; options: string[] }> = [{ type: 'overlay', source: 'overlay', options: ['lowerdir=/l', 'upperdir=/snap/1/fs', 'workdir=/snap/1/work'] }]) {
  const calls: string[] = [];
  const host = new CopyHost({
    agentName: 'test',
    isSecure: (id) => id === 'secure',
    view: async () => ({ rootfs: '/unused', mountPoints: [], user: { uid: 0, gid: 0 } }),
    state: async () => ({ status }),
    freeze: async () => void calls.push('freeze'),
    thaw: async () => void calls.push('thaw'),
    snapshotMounts: async () => mounts,
    saved: async () => ({ mountPoints: [] }),
    scratchDir: '/nonexistent',
    room: () => ({ snapshotRoom: async () => 1024 ** 3 }),
  });
  return { host, calls };
}

test('commit: a running container is frozen while its upper directory is read and thawed after, on failure too; --pause=false and a paused one are not touched', async () => {
  const running = commitFixture('running');
  assert.equal(await running.host.withWritableLayer('c1', true, async (upper) => {
    running.calls.push(`read ${upper}`);
    return 'layer';
  }), 'layer');
  assert.deepEqual(running.calls, ['freeze', 'read /snap/1/fs', 'thaw']);

  const failing = commitFixture('running');
  await assert.rejects(failing.host.withWritableLayer('c1', true, async () => {
    throw new Error('disk full');
  }), /disk full/);
  assert.deepEqual(failing.calls, ['freeze', 'thaw'], 'thawed after a failed read');

  const live = commitFixture('running');
  await live.host.withWritableLayer('c1', false, async () => void live.calls.push('read'));
  assert.deepEqual(live.calls, ['read'], '--pause=false reads it as it runs');

  const paused = commitFixture('paused');
  await paused.host.withWritableLayer('c1', true, async () => void paused.calls.push('read'));
  assert.deepEqual(paused.calls, ['read'], 'a paused container stays paused (not thawed by the commit)');
});

test('commit: lifecycle calls wait for the layer to be read; secure containers and native snapshots are refused', async () => {
  const f = commitFixture('running');
  let release!: () => void;
  const reading = f.host.withWritableLayer('c1', true, () => new Promise<void>((r) => {
    f.calls.push('reading');
    release = r;
  }));
  await new Promise((r) => setImmediate(r));
  const stop = f.host.lifecycle('c1', async () => void f.calls.push('stop'));
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(f.calls, ['freeze', 'reading'], 'the stop waits');
  release();
  await reading;
  await stop;
  assert.deepEqual(f.calls, ['freeze', 'reading', 'thaw', 'stop']);

  await assert.rejects(f.host.withWritableLayer('secure', true, async () => undefined), /microVM/);
  const native = commitFixture('exited' as RuntimeState['status'], [{ type: 'bind', source: '/snap/2/fs', options: ['rbind'] }]);
  await assert.rejects(native.host.withWritableLayer('c1', true, async () => undefined), /native snapshotter/);
  assert.deepEqual(native.calls, []);
});
