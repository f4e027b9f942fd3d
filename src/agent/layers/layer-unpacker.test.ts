/**
 * LayerUnpacker / PullUnpack with a real content store and real snapshotters (root: overlay
 * mounts): layers streamed as they "download" and unpacked apart are committed in order on their
 * parents, a layer is never committed before its blob is verified, and failures leave nothing.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { makeTar, sha256Digest, type TarEntry } from '../../../scripts/fixtures/images.js';
import { DataLoss, hasCode } from '../../core/errors.js';
import { LocalContentStore } from '../content/local-content-store.js';
import { chainIds } from '../images/image-host.js';
import { mountAll, mountsUnder, unmountAll } from '../snapshots/mount.js';
import { NativeSnapshotter } from '../snapshots/native.js';
import { OverlaySnapshotter } from '../snapshots/overlayfs.js';
import type { Snapshotter } from '../snapshots/snapshotter.js';
import { LayerUnpacker } from './layer-unpacker.js';
import { ImageBudget } from './unpack-limits.js';

const GZ = 'application/vnd.oci.image.layer.v1.tar+gzip';
const noRoom = { snapshotRoom: async () => Number.MAX_SAFE_INTEGER };

interface Layer {
  blob: Buffer;
  digest: string;
  diffId: string;
  desc: { digest: string; mediaType: string; size: number };
}
async function layer(entries: TarEntry[]): Promise<Layer> {
  const tar = await makeTar(entries);
  const blob = gzipSync(tar);
  const digest = sha256Digest(blob);
  return { blob, digest, diffId: sha256Digest(tar), desc: { digest, mediaType: GZ, size: blob.length } };
}

let base: string;
before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-unpacker-'));
});
after(async () => {
  assert.deepEqual(await mountsUnder(base), []);
  await rm(base, { recursive: true, force: true });
});

async function setup(kind: 'overlay' | 'native') {
  const dir = await mkdtemp(path.join(base, `${kind}-`));
  const content = new LocalContentStore(path.join(dir, 'content'));
  const sn: Snapshotter = kind === 'overlay' ? new OverlaySnapshotter(path.join(dir, 'snap')) : new NativeSnapshotter(path.join(dir, 'snap'));
  return { dir, content, sn, unpacker: new LayerUnpacker({ content, snapshotter: sn, room: () => noRoom }) };
}

/** The merged tree of committed snapshot `key`, read through a view mount. */
async function tree(dir: string, sn: Snapshotter, key: string): Promise<Record<string, string>> {
  const target = path.join(dir, `view-${Math.random().toString(36).slice(2)}`);
  await mkdir(target);
  await sn.view(`v-${path.basename(target)}`, key);
  await mountAll(await sn.mounts(`v-${path.basename(target)}`), target);
  try {
    const out: Record<string, string> = {};
    const walk = async (rel: string) => {
      for (const e of await readdir(path.join(target, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(r);
        else out[r] = await readFile(path.join(target, r), 'utf8');
      }
    };
    await walk('');
    return out;
  } finally {
    await unmountAll(target);
  }
}

const feed = (tee: NodeJS.WritableStream, b: Buffer) => {
  tee.write(b.subarray(0, 100));
  tee.end(b.subarray(100));
};
async function* once(b: Buffer) {
  yield b;
}
const tick = () => new Promise((r) => setTimeout(r, 50));

describe('LayerUnpacker', () => {
  it('overlay: layers unpacked apart, the last one first, are committed in order on their parents; whiteouts and opaque dirs hold', async () => {
    const { dir, content, sn, unpacker } = await setup('overlay');
    const ls = [
      await layer([{ name: 'etc/', type: 'directory' }, { name: 'etc/a', type: 'file', content: 'a0' }, { name: 'etc/gone', type: 'file', content: 'x' }, { name: 'd/', type: 'directory' }, { name: 'd/old', type: 'file', content: 'o' }]),
      await layer([{ name: 'etc/.wh.gone', type: 'file', content: '' }, { name: 'etc/b', type: 'file', content: 'b1' }]),
      await layer([{ name: 'etc/a', type: 'file', content: 'a2' }, { name: 'd/.wh..wh..opq', type: 'file', content: '' }, { name: 'd/new', type: 'file', content: 'n' }]),
    ];
    const chains = chainIds(ls.map((l) => l.diffId));
    const unpack = unpacker.forPull(new ImageBudget());
    const done = unpack.start(ls.map((l) => l.diffId), chains, ls.map((l) => l.desc));
    // the last layer streams first (one at a time); the others come from the content store
    const tee = unpack.stream(2);
    assert.ok(tee, 'the first download to start is streamed');
    assert.equal(unpack.stream(1), undefined, 'one streamed layer at a time');
    feed(tee, ls[2]!.blob);
    for (const i of [1, 0]) {
      await content.ingest({ digest: ls[i]!.digest, size: ls[i]!.blob.length }, once(ls[i]!.blob));
      unpack.ready(i);
    }
    await tick();
    assert.equal((await sn.list()).filter((s) => s.kind === 'committed' && s.key === chains[2]).length, 0, 'not committed before its blob is verified');
    await content.ingest({ digest: ls[2]!.digest, size: ls[2]!.blob.length }, once(ls[2]!.blob));
    unpack.ready(2);
    await done;
    await unpack.settled();
    const snaps = await sn.list();
    assert.deepEqual(snaps.map((s) => `${s.key}<${s.parent ?? ''}`).sort(), [`${chains[0]}<`, `${chains[1]}<${chains[0]}`, `${chains[2]}<${chains[1]}`].sort());
    assert.deepEqual(await tree(dir, sn, chains[2]!), { 'etc/a': 'a2', 'etc/b': 'b1', 'd/new': 'n' });
  });

  it('overlay: a streamed layer whose blob is never verified (digest mismatch) is never committed, and nothing is left', async () => {
    const { sn, unpacker } = await setup('overlay');
    const ls = [await layer([{ name: 'f', type: 'file', content: 'one' }]), await layer([{ name: 'g', type: 'file', content: 'two' }])];
    const chains = chainIds(ls.map((l) => l.diffId));
    const unpack = unpacker.forPull(new ImageBudget());
    const done = unpack.start(ls.map((l) => l.diffId), chains, ls.map((l) => l.desc));
    const tee = unpack.stream(0)!;
    feed(tee, ls[0]!.blob); // its content is even its diff id: only the blob check can refuse it
    await tick();
    const mismatch = new DataLoss('digest mismatch: expected …, got …');
    unpack.abort(mismatch);
    await assert.rejects(done, (e: unknown) => e === mismatch);
    await unpack.settled();
    assert.deepEqual(await sn.list(), [], 'no committed and no extract snapshot left');
  });

  it('overlay: a download that fails before its unpack reads a byte fails the pull, not the process', async () => {
    const { sn, unpacker } = await setup('overlay');
    const l = await layer([{ name: 'f', type: 'file', content: 'one' }]);
    const unpack = unpacker.forPull(new ImageBudget());
    const done = unpack.start([l.diffId], [l.diffId], [l.desc]);
    const mismatch = new DataLoss('digest mismatch: expected …, got …');
    unpack.stream(0)!.destroy(mismatch); // as pullBlob does: an 'error' nobody listens to yet
    unpack.abort(mismatch);
    await assert.rejects(done, (e: unknown) => e === mismatch);
    await unpack.settled();
    await tick();
    assert.deepEqual(await sn.list(), []);
  });

  it('overlay: a layer whose content is not its diff id fails the pull, and the later layers are not committed either', async () => {
    const { content, sn, unpacker } = await setup('overlay');
    const ls = [await layer([{ name: 'f', type: 'file', content: 'one' }]), await layer([{ name: 'g', type: 'file', content: 'two' }])];
    const diffIds = [sha256Digest(Buffer.from('not the layer')), ls[1]!.diffId];
    const chains = chainIds(diffIds);
    const unpack = unpacker.forPull(new ImageBudget());
    const done = unpack.start(diffIds, chains, ls.map((l) => l.desc));
    for (const i of [1, 0]) {
      await content.ingest({ digest: ls[i]!.digest }, once(ls[i]!.blob));
      unpack.ready(i);
    }
    await assert.rejects(done, (e: unknown) => hasCode(e, 'DataLoss') && /does not match the config's diff id/.test((e as Error).message));
    await unpack.settled();
    assert.deepEqual(await sn.list(), []);
  });

  it('native: nothing is streamed; layers are unpacked in order from the content store', async () => {
    const { dir, content, sn, unpacker } = await setup('native');
    const ls = [await layer([{ name: 'f', type: 'file', content: 'one' }, { name: 'gone', type: 'file', content: 'x' }]), await layer([{ name: '.wh.gone', type: 'file', content: '' }, { name: 'g', type: 'file', content: 'two' }])];
    const chains = chainIds(ls.map((l) => l.diffId));
    const unpack = unpacker.forPull(new ImageBudget());
    const done = unpack.start(ls.map((l) => l.diffId), chains, ls.map((l) => l.desc));
    assert.equal(unpack.stream(0), undefined);
    for (const i of [1, 0]) {
      await content.ingest({ digest: ls[i]!.digest }, once(ls[i]!.blob));
      unpack.ready(i);
    }
    await done;
    assert.deepEqual((await sn.list()).map((s) => `${s.key}<${s.parent ?? ''}`).sort(), [`${chains[0]}<`, `${chains[1]}<${chains[0]}`].sort());
    assert.deepEqual(await tree(dir, sn, chains[1]!), { f: 'one', g: 'two' });
  });
});
