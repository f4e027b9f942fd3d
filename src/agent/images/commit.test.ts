/**
 * docker commit's layer and image (commit.ts): an overlayfs upper directory becomes a gzip layer
 * whose whiteouts are OCI's (a 0/0 char device → `.wh.NAME`, trusted.overlay.opaque=y →
 * `.wh..wh..opq`), with both digests right; the image's config and manifest stack it on the
 * parent's. Runs as root (whiteouts are device nodes, the opaque xattr is trusted.*).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { run } from '../../core/exec.js';
import { hasCode } from '../../core/errors.js';
import { DiskSpace } from '../content/disk-space.js';
import { LocalContentStore } from '../content/local-content-store.js';
import type { Snapshotter } from '../snapshots/snapshotter.js';
import { exportTree } from '../move/tree-tar.js';
import { committedConfig, storeCommittedImage, writeLayerBlob } from './commit.js';
import { LocalImageHost } from './image-host.js';
import { MT, type ImageManifest } from './media-types.js';

const root = process.getuid?.() === 0;
let base: string;
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function entries(tarBytes: Buffer): Promise<Map<string, { type: string; body: string }>> {
  const out = new Map<string, { type: string; body: string }>();
  const ex = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => { chunks.push(c as Buffer); });
      stream.on('end', () => {
        out.set(h.name, { type: h.type ?? 'file', body: Buffer.concat(chunks).toString() });
        next();
      });
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  Readable.from([tarBytes]).pipe(ex);
  await done;
  return out;
}

describe('a container\'s writable layer as an image layer', { skip: !root && 'needs root (whiteouts are device nodes)' }, () => {
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'nimbus-commit-'));
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  test('overlay whiteouts and opaque directories become OCI whiteouts; the digests are the gzip\'s and the tar\'s', async () => {
    const upper = join(base, 'upper');
    mkdirSync(join(upper, 'etc'), { recursive: true });
    writeFileSync(join(upper, 'added.txt'), 'added\n');
    writeFileSync(join(upper, 'etc', 'group'), 'root:x:0:\n');
    // rm /etc/motd in the container: overlayfs leaves a 0/0 character device
    assert.equal((await run('mknod', [join(upper, 'etc', 'motd'), 'c', '0', '0'])).code, 0);
    // rm -rf /home && mkdir /home: an opaque directory
    mkdirSync(join(upper, 'home'));
    writeFileSync(join(upper, 'home', 'only.txt'), 'fresh\n');
    assert.equal((await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(upper, 'home')])).code, 0);

    const file = join(base, 'layer.tar.gz');
    const layer = await writeLayerBlob(exportTree(upper, { kind: 'overlay' }), file);
    const gz = readFileSync(file);
    assert.equal(layer.digest, sha(gz));
    assert.equal(layer.size, gz.length);
    const raw = gunzipSync(gz);
    assert.equal(layer.diffId, sha(raw));
    const got = await entries(raw);
    const names = [...got.keys()].map((n) => n.replace(/^\.\//, ''));
    assert.ok(names.includes('etc/.wh.motd'), names.join(' '));
    assert.ok(names.includes('home/.wh..wh..opq'), names.join(' '));
    assert.ok(!names.includes('etc/motd'), 'the device itself does not travel');
    assert.equal(got.get('added.txt')?.body ?? got.get('./added.txt')?.body, 'added\n');
    assert.equal((got.get('home/only.txt') ?? got.get('./home/only.txt'))?.body, 'fresh\n');
  });

  test('the image: the parent\'s layers and one more, the config\'s diff_ids, history, author and runtime config; a Docker parent gives a Docker manifest', async () => {
    const content = new LocalContentStore(join(base, 'content'));
    const file = join(base, 'layer2.tar.gz');
    const upper = join(base, 'upper2');
    mkdirSync(upper);
    writeFileSync(join(upper, 'x'), 'x');
    const layer = await writeLayerBlob(exportTree(upper, { kind: 'overlay' }), file);
    const parentLayer = { mediaType: MT.dockerLayerGzip, digest: `sha256:${'1'.repeat(64)}`, size: 5 };
    const parentManifest: ImageManifest = { schemaVersion: 2, mediaType: MT.dockerManifest, config: { mediaType: MT.dockerConfig, digest: `sha256:${'2'.repeat(64)}`, size: 9 }, layers: [parentLayer] };
    const parentConfig = {
      architecture: 'amd64', os: 'linux', author: 'someone else', config: { Cmd: ['sh'] },
      rootfs: { type: 'layers', diff_ids: [`sha256:${'3'.repeat(64)}`] }, history: [{ created_by: 'ADD rootfs' }], container_config: { Cmd: ['old'] },
    };
    const req = { parentManifest: `sha256:${'4'.repeat(64)}`, config: { Cmd: ['cat', '/x'], Env: ['A=1'] }, author: 'Tess', comment: 'msg', createdBy: 'sleep 600', pause: true };
    const now = new Date('2026-12-04T12:00:00Z');
    const { manifestDigest, configDigest } = await storeCommittedImage(content, parentManifest, parentConfig, layer, req, now);
    const manifest = JSON.parse((await content.readBlob(manifestDigest)).toString()) as ImageManifest;
    assert.equal(manifest.mediaType, MT.dockerManifest);
    assert.equal(manifest.config.mediaType, MT.dockerConfig);
    assert.deepEqual(manifest.layers, [parentLayer, { mediaType: MT.dockerLayerGzip, digest: layer.digest, size: layer.size }]);
    assert.equal(manifest.config.digest, configDigest);
    const config = JSON.parse((await content.readBlob(configDigest)).toString()) as Record<string, unknown> & { rootfs: { diff_ids: string[] }; history: unknown[] };
    assert.deepEqual(config.rootfs.diff_ids, [`sha256:${'3'.repeat(64)}`, layer.diffId]);
    assert.deepEqual(config.history, [{ created_by: 'ADD rootfs' }, { created: now.toISOString(), author: 'Tess', created_by: 'sleep 600', comment: 'msg' }]);
    assert.deepEqual(config.config, { Cmd: ['cat', '/x'], Env: ['A=1'] });
    assert.equal(config.author, 'Tess');
    assert.equal(config.comment, 'msg');
    assert.equal(config.container_config, undefined, 'the parent\'s build record is not this image\'s');
    assert.ok(await content.info(layer.digest), 'the layer is in the store');
    // an OCI parent (or one without a media type) gives an OCI manifest
    const oci = committedConfig({ config: {} }, layer.diffId, { ...req, author: undefined as never, comment: undefined as never }, now);
    assert.equal(oci.author, undefined);
    const { manifestDigest: ociDigest } = await storeCommittedImage(content, { ...parentManifest, mediaType: MT.ociManifest }, parentConfig, layer, req, now);
    const ociManifest = JSON.parse((await content.readBlob(ociDigest)).toString()) as ImageManifest;
    assert.equal(ociManifest.layers[1]!.mediaType, MT.ociLayerGzip);
    assert.equal(ociManifest.config.mediaType, MT.ociConfig);
  });

  // a sparse file costs the tenant no disk (truncate -s 16T), and the tar writes out all of it: a
  // commit read it whole (hours of gzip, a blob on the host's disk) before the layer limit said no
  test('a writable layer past the host\'s layer limit is refused while it is read, not after', async () => {
    const dir = join(base, 'limit');
    const upper = join(dir, 'upper');
    mkdirSync(upper, { recursive: true });
    const sparse = await open(join(upper, 'sparse'), 'w');
    await sparse.truncate(4 * 1024 ** 3);
    await sparse.close();
    const content = new LocalContentStore(join(dir, 'content'));
    const put = async (doc: unknown) => {
      const b = Buffer.from(JSON.stringify(doc));
      await content.ingest({ digest: sha(b) as never, size: b.length }, Readable.from([b]));
      return { digest: sha(b), size: b.length };
    };
    const config = await put({ architecture: process.arch === 'x64' ? 'amd64' : process.arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} });
    const manifest = await put({ schemaVersion: 2, mediaType: MT.ociManifest, config: { mediaType: MT.ociConfig, ...config }, layers: [] });
    const host = new LocalImageHost({
      options: { agentName: 'local', home: dir, tmpDir: dir, containersDir: dir, imageMaxBytes: 1 << 30, layerMaxBytes: 64 << 20, allowedRegistries: [] },
      content,
      snapshotter: { name: 'overlayfs' } as Snapshotter,
      room: () => new DiskSpace({ content: dir, snapshots: dir }),
      releaseLayers: async () => undefined,
      withWritableLayer: (_id, _pause, fn) => fn(upper),
    }, { warmUp: false });
    const started = Date.now();
    await assert.rejects(host.commitContainer('c1', { parentManifest: manifest.digest, config: {}, pause: false }),
      (e: unknown) => hasCode(e, 'ResourceExhausted') && /64 MiB/.test(String(e)));
    assert.ok(Date.now() - started < 5000, `refused after ${Date.now() - started} ms: the layer was read past the limit`);
    assert.deepEqual(readdirSync(join(dir, 'commit')), [], 'no blob left behind');
  });
});
