/**
 * Image pull against the real docker-registry (scripts/fixtures/registry.ts)
 * holding the busybox test images (scripts/fixtures/images.ts): tag → index →
 * linux/amd64, digest pulls, missing tags, tampered blobs (in the registry's
 * storage and on the wire), htpasswd Basic auth, a Bearer token service, and
 * import of the same image from OCI-layout and docker-save tars.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { LocalContentStore } from '../src/agent/content/local-content-store.js';
import { LocalAgent } from '../src/agent/local-agent.js';
import { HTTP_STATUS } from '../src/core/http-status.js';
import { compileOptions, type CompiledOptions } from '../src/core/config.js';
import { hasCode, type NimbusError } from '../src/core/errors.js';
import { importImageArchive } from '../src/agent/images/import.js';
import { pullImage, type LayerProgress } from '../src/agent/images/pull.js';
import { TokenCache } from '../src/agent/images/registry-client.js';
import { readSnapshotMetadataSync } from '../src/agent/snapshots/metadata-journal.js';
import {
  MEDIA, blobOf, buildTestImages, makeTar, manifestOf, pushImage, pushTestImages, writeDockerSaveTar, writeOciLayoutTar, type TestImages,
} from '../scripts/fixtures/images.js';
import { allowedForDaemons, startRegistry, startTamperingProxy, startTokenAuthProxy, type RegistryFixture } from '../scripts/fixtures/registry.js';

const REPO = 'nimbus-test/busybox';

function tempStore(t: { after(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-pull-it-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, store: new LocalContentStore(dir) };
}

describe('pull from a real registry', () => {
  let reg: RegistryFixture | undefined;
  let images: TestImages;
  before(async () => {
    images = await buildTestImages();
    reg = await startRegistry();
    await pushTestImages(reg.host, images);
  });
  after(async () => {
    await reg?.stop();
  });

  test('by tag: the index resolves to linux/amd64; index, manifest, config and layers are stored', async (t) => {
    const { store } = tempStore(t);
    const events: LayerProgress[] = [];
    const ready: number[] = [];
    const img = await pullImage(`${reg!.host}/${REPO}:latest`, { ...allowedForDaemons(), store, onProgress: (e) => events.push(e), onLayerReady: (i) => ready.push(i) });
    assert.equal(img.reference, `${reg!.host}/${REPO}:latest`);
    assert.equal(img.indexDigest, images.index.digest);
    assert.equal(img.manifestDigest, images.amd64.manifest.digest);
    assert.equal(img.configDigest, images.amd64.config.digest);
    assert.deepEqual(img.config.config?.Cmd, ['sh']);
    assert.equal(img.config.config?.Entrypoint, undefined);
    assert.deepEqual(img.layers.map((l) => l.mediaType), [MEDIA.layerGzip, MEDIA.layer, MEDIA.layerGzip]);
    assert.deepEqual(ready.sort(), [0, 1, 2]);
    for (const b of [images.index, images.amd64.manifest, images.amd64.config, ...images.amd64.layers]) {
      assert.deepEqual(await store.readBlob(b.digest), b.data, `${b.digest} stored intact`);
    }
    for (const l of images.amd64.layers) assert.equal(events.filter((e) => e.digest === l.digest).at(-1)?.status, 'done');

    const single = await pullImage(`${reg!.host}/${REPO}:single`, { ...allowedForDaemons(), store, onProgress: (e) => events.push(e) });
    assert.equal(single.indexDigest, undefined);
    assert.equal(single.manifestDigest, images.amd64.manifest.digest);
    assert.equal(events.at(-1)?.status, 'exists');
  });

  test('by digest (manifest and index); arm64 by platform', async (t) => {
    const { store } = tempStore(t);
    const byManifest = await pullImage(`${reg!.host}/${REPO}@${images.amd64.manifest.digest}`, { ...allowedForDaemons(), store });
    assert.equal(byManifest.manifestDigest, images.amd64.manifest.digest);
    const byIndex = await pullImage(`${reg!.host}/${REPO}@${images.index.digest}`, { ...allowedForDaemons(), store });
    assert.equal(byIndex.indexDigest, images.index.digest);
    const arm = await pullImage(`${reg!.host}/${REPO}:latest`, { ...allowedForDaemons(), store, platform: { os: 'linux', architecture: 'arm64' } });
    assert.equal(arm.manifestDigest, images.arm64.manifest.digest);
  });

  test('missing tag, repository and digest are NotFound naming registry and reference; unreachable is Unavailable', async (t) => {
    const { store } = tempStore(t);
    await assert.rejects(pullImage(`${reg!.host}/${REPO}:nope`, { ...allowedForDaemons(), store }), { code: 'NotFound', message: new RegExp(`${reg!.host}/${REPO} nope`) });
    await assert.rejects(pullImage(`${reg!.host}/no/such-repo:latest`, { ...allowedForDaemons(), store }), { code: 'NotFound', message: /no\/such-repo latest/ });
    await assert.rejects(pullImage(`${reg!.host}/${REPO}@sha256:${'0'.repeat(64)}`, { ...allowedForDaemons(), store }), { code: 'NotFound' });
    await assert.rejects(pullImage(`${reg!.host}/${REPO}:latest`, { ...allowedForDaemons(), store, platform: { os: 'linux', architecture: 's390x' } }), {
      code: 'NotFound', message: /available: linux\/arm64, linux\/amd64/,
    });
    await assert.rejects(pullImage('127.0.0.1:1/nothing/here:latest', { allowedRegistries: ['127.0.0.1:1'], store }), { code: 'Unavailable', message: /127\.0\.0\.1:1/ });
  });

  test('a blob corrupted in the registry storage is refused with DataLoss and leaves nothing behind', async (t) => {
    const { dir, store } = tempStore(t);
    const raw = await makeTar([{ name: 'payload.bin', type: 'file', content: Buffer.alloc(8192, 0x5a) }]);
    const layer = blobOf(gzipSync(raw), MEDIA.layerGzip);
    const config = blobOf(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['true'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(raw).digest('hex')}`] } })), MEDIA.config);
    const manifest = manifestOf(config, [layer]);
    await pushImage(reg!.host, 'nimbus-test/tampered', 'latest', { manifest, blobs: [config, layer] });
    const file = reg!.blobDataPath(layer.digest);
    const bytes = readFileSync(file);
    bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff;
    writeFileSync(file, bytes);

    await assert.rejects(pullImage(`${reg!.host}/nimbus-test/tampered:latest`, { ...allowedForDaemons(), store }), { code: 'DataLoss', message: new RegExp(`digest mismatch.*${layer.digest}`) });
    assert.equal(await store.info(layer.digest), undefined);
    assert.deepEqual(readdirSync(join(dir, 'ingest')), []);
  });

  test('a blob altered on the wire (tampering proxy) is refused with DataLoss; the good layers stay verified', async (t) => {
    const { dir, store } = tempStore(t);
    const target = images.amd64.layers[2]!.digest;
    const proxy = await startTamperingProxy(reg!.host, { digests: [target] });
    t.after(() => proxy.stop());
    await assert.rejects(pullImage(`${proxy.host}/${REPO}:latest`, { ...allowedForDaemons(), store }), { code: 'DataLoss', message: new RegExp(target) });
    assert.deepEqual(proxy.tampered, [target]);
    assert.equal(await store.info(target), undefined);
    assert.deepEqual(readdirSync(join(dir, 'ingest')), []);
    for (const b of (await store.list())) assert.equal(`sha256:${createHash('sha256').update(await store.readBlob(b.digest)).digest('hex')}`, b.digest);
  });

  test('import: OCI layout and docker save tars give the same image as the pull', async (t) => {
    const { dir, store } = tempStore(t);
    const oci = join(dir, 'oci.tar');
    const save = join(dir, 'save.tar');
    await writeOciLayoutTar(images, oci);
    await writeDockerSaveTar(images, save);
    const pulled = await pullImage(`${reg!.host}/${REPO}:latest`, { ...allowedForDaemons(), store: new LocalContentStore(join(dir, 'pulled')) });
    const [fromOci] = await importImageArchive(oci, store);
    assert.equal(fromOci!.manifestDigest, pulled.manifestDigest);
    assert.equal(fromOci!.name, `docker.io/${REPO}:latest`);
    const [fromSave] = await importImageArchive(save, store);
    assert.equal(fromSave!.name, `${REPO}:saved`);
    assert.equal(fromSave!.configDigest, pulled.configDigest, 'same config');
    assert.deepEqual(fromSave!.config.rootfs?.diff_ids, pulled.config.rootfs?.diff_ids);
  });
});

describe('registry authentication (real htpasswd registry, token service in front)', () => {
  let reg: RegistryFixture | undefined;
  before(async () => {
    reg = await startRegistry({ auth: 'basic', username: 'alice' });
    await pushTestImages(reg.host, await buildTestImages(), REPO, { credentials: reg.credentials! });
  });
  after(async () => {
    await reg?.stop();
  });

  test('basic: refused without or with wrong credentials (Unauthenticated), pulled with the right ones', async (t) => {
    const { store } = tempStore(t);
    const ref = `${reg!.host}/${REPO}:latest`;
    await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store }), { code: 'Unauthenticated', message: new RegExp(reg!.host) });
    await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store, credentials: { username: 'alice', password: 'wrong' } }), { code: 'Unauthenticated', message: /alice/ });
    const img = await pullImage(ref, { ...allowedForDaemons(), store, credentials: reg!.credentials! });
    assert.equal(img.layers.length, 3);
    for (const l of img.layers) assert.ok(await store.info(l.digest));
  });

  test('bearer: token asked for the pull scope with Basic credentials, cached and reused', async (t) => {
    const { store } = tempStore(t);
    const proxy = await startTokenAuthProxy(reg!, { users: { bob: 'hunter2' } });
    t.after(() => proxy.stop());
    const ref = `${proxy.host}/${REPO}:latest`;
    const tokenCache = new TokenCache();
    await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store, tokenCache }), { code: 'Unauthenticated', message: /anonymous/ });
    await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store, tokenCache, credentials: { username: 'bob', password: 'nope' } }), { code: 'Unauthenticated' });
    const img = await pullImage(ref, { ...allowedForDaemons(), store, tokenCache, credentials: { username: 'bob', password: 'hunter2' } });
    assert.equal(img.layers.length, 3);
    const granted = proxy.tokenRequests.filter((r) => r.granted);
    assert.deepEqual(granted, [{ scope: `repository:${REPO}:pull`, user: 'bob', granted: true }]);
    await pullImage(`${proxy.host}/${REPO}:single`, { ...allowedForDaemons(), store, tokenCache, credentials: { username: 'bob', password: 'hunter2' } });
    assert.equal(proxy.tokenRequests.filter((r) => r.granted).length, 1, 'token reused from the cache');
  });

  test('bearer: anonymous tokens when the service allows them', async (t) => {
    const { store } = tempStore(t);
    const proxy = await startTokenAuthProxy(reg!, { allowAnonymous: true });
    t.after(() => proxy.stop());
    const img = await pullImage(`${proxy.host}/${REPO}:single`, { ...allowedForDaemons(), store, tokenCache: new TokenCache() });
    assert.equal(img.layers.length, 3);
    assert.deepEqual(proxy.tokenRequests, [{ scope: `repository:${REPO}:pull`, granted: true }]);
  });
});

describe('hostile layers, unpack limits and disk space through the agent (real registry, LocalAgent, overlay snapshots)', () => {
  const MiB = 1024 ** 2;
  let reg: RegistryFixture | undefined;
  before(async () => {
    reg = await startRegistry();
  });
  after(async () => {
    await reg?.stop();
  });

  /** An image of gzip layers (each a few KB of zeros expanding to its files' sizes), pushed as repo:latest. */
  async function pushLayers(repo: string, layers: { name: string; size: number }[][]) {
    return pushTars(repo, await Promise.all(layers.map((files) => makeTar(files.map((f) => ({ name: f.name, type: 'file' as const, content: Buffer.alloc(f.size) }))))));
  }

  /** An image of these layer tars (gzip), pushed as repo:latest. */
  async function pushTars(repo: string, raws: Buffer[]) {
    const blobs = raws.map((r) => blobOf(gzipSync(r, { level: 9 }), MEDIA.layerGzip));
    for (const b of blobs) assert.ok(b.size < 256 * 1024, `a small layer (${b.size} bytes)`);
    const config = blobOf(Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', config: { Cmd: ['true'] },
      rootfs: { type: 'layers', diff_ids: raws.map((r) => `sha256:${createHash('sha256').update(r).digest('hex')}`) },
    })), MEDIA.config);
    const manifest = manifestOf(config, blobs);
    await pushImage(reg!.host, repo, 'latest', { manifest, blobs: [config, ...blobs] });
    return { manifest, config, layers: blobs };
  }

  /**
   * Cleanups run last-added first, in one after-hook (node:test runs after-hooks in the order they
   * were added): an agent is closed before its home goes (its pull warm-up writes there).
   */
  function cleanups(t: { after(fn: () => unknown): void }): (fn: () => unknown) => void {
    const fns: Array<() => unknown> = [];
    t.after(async () => {
      for (const fn of fns.reverse()) await fn();
    });
    return (fn) => void fns.push(fn);
  }

  async function agentIn(defer: (fn: () => unknown) => void, home: string, o: { layerMaxBytes?: number; imageMaxBytes?: number } = {}) {
    const options = compileOptions({ home, warmPerImage: 0, snapshotter: 'overlayfs', ...o }, {});
    const agent = await LocalAgent.create(options);
    defer(() => agent.close());
    return { agent, options };
  }

  /** Nothing of a refused pull on disk: no snapshot (committed or half-written), no ingest in flight. */
  function assertNothingLeft(options: CompiledOptions) {
    const snaps = join(options.snapshotsDir, 'overlayfs', 'snapshots');
    assert.deepEqual(existsSync(snaps) ? readdirSync(snaps) : [], [], 'no snapshot directory left');
    assert.deepEqual(readSnapshotMetadataSync(join(options.snapshotsDir, 'overlayfs')).snapshots, {}, 'no snapshot record left');
    const ingest = join(options.contentDir, 'ingest');
    assert.deepEqual(existsSync(ingest) ? readdirSync(ingest) : [], [], 'no half-stored blob');
  }

  test('a layer that replaces a directory by a symlink to a host path, after queuing the directory\'s mode and a whiteout in it, pulls without touching that path', async (t) => {
    const defer = cleanups(t);
    const home = mkdtempSync(join(tmpdir(), 'nimbus-hostile-'));
    defer(() => rmSync(home, { recursive: true, force: true }));
    const victim = mkdtempSync(join(tmpdir(), 'nimbus-victim-'));
    defer(() => rmSync(victim, { recursive: true, force: true }));
    chmodSync(victim, 0o700);
    writeFileSync(join(victim, 'keep'), 'host');
    const before = statSync(victim);
    const { agent } = await agentIn(defer, home);
    await pushTars('nimbus-test/swap', [await makeTar([
      { name: 'd/', type: 'directory', mode: 0o777 }, // its mode and mtime are set once the layer is unpacked
      { name: 'd/.wh.planted', type: 'file', content: '' }, // an overlay whiteout: a device node made then too
      { name: 'd', type: 'symlink', linkname: victim },
    ])]);
    await agent.pullImage(`${reg!.host}/nimbus-test/swap:latest`, allowedForDaemons(), () => undefined);
    const after = statSync(victim);
    assert.equal(after.mode & 0o7777, 0o700, 'the host directory keeps its mode');
    assert.equal(after.mtimeMs, before.mtimeMs, 'and its mtime');
    assert.deepEqual(readdirSync(victim), ['keep'], 'no node made in it');
  });

  test('a config naming the diff ids of another image, with layers of its own, does not get that image\'s snapshots', async (t) => {
    const defer = cleanups(t);
    const home = mkdtempSync(join(tmpdir(), 'nimbus-diffids-'));
    defer(() => rmSync(home, { recursive: true, force: true }));
    const { agent } = await agentIn(defer, home);
    const secret = await makeTar([{ name: 'secret.txt', type: 'file', content: 'the victim\'s data' }]);
    await pushTars('nimbus-test/victim', [secret]);
    await agent.pullImage(`${reg!.host}/nimbus-test/victim:latest`, allowedForDaemons(), () => undefined);
    // the attacker's image: its own layer (any bytes), its own config claiming the victim's diff id
    const mine = blobOf(gzipSync(await makeTar([{ name: 'nothing', type: 'file', content: '' }])), MEDIA.layerGzip);
    const config = blobOf(Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', config: { Cmd: ['cat', '/secret.txt'] },
      rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(secret).digest('hex')}`] },
    })), MEDIA.config);
    const manifest = manifestOf(config, [mine]);
    await pushImage(reg!.host, 'nimbus-test/claim', 'latest', { manifest, blobs: [config, mine] });
    await assert.rejects(agent.pullImage(`${reg!.host}/nimbus-test/claim:latest`, allowedForDaemons(), () => undefined), (e: unknown) => {
      assert.ok(hasCode(e, 'DataLoss'), String(e));
      assert.match((e as Error).message, /does not match the config's diff id/);
      return true;
    });
  });

  test('a gzip bomb over the per-layer limit fails the pull (400, naming the layer and the limit) and leaves no snapshot; import too', async (t) => {
    const defer = cleanups(t);
    const home = mkdtempSync(join(tmpdir(), 'nimbus-limits-'));
    defer(() => rmSync(home, { recursive: true, force: true }));
    const { agent, options } = await agentIn(defer, home, { layerMaxBytes: 4 * MiB });
    const img = await pushLayers('nimbus-test/bomb', [Array.from({ length: 12 }, (_, i) => ({ name: `z/${i}`, size: MiB }))]);
    const layer = img.layers[0]!.digest;
    const limitError = (e: unknown) => {
      assert.ok(hasCode(e, 'InvalidArgument'), String(e));
      assert.equal(HTTP_STATUS[(e as NimbusError).code], 400);
      assert.match((e as Error).message, new RegExp(`layer ${layer}: unpacks to more than the per-layer limit of 4 MiB`));
      return true;
    };
    await assert.rejects(agent.pullImage(`${reg!.host}/nimbus-test/bomb:latest`, allowedForDaemons(), () => undefined), limitError);
    assertNothingLeft(options);

    // the same image as an OCI layout tar, imported into a fresh agent
    const home2 = mkdtempSync(join(tmpdir(), 'nimbus-limits-'));
    defer(() => rmSync(home2, { recursive: true, force: true }));
    const second = await agentIn(defer, home2, { layerMaxBytes: 4 * MiB });
    const archive = join(home2, 'bomb.tar');
    writeFileSync(archive, await makeTar([
      { name: 'oci-layout', type: 'file', content: '{"imageLayoutVersion":"1.0.0"}' },
      { name: 'index.json', type: 'file', content: JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MEDIA.manifest, digest: img.manifest.digest, size: img.manifest.size }] }) },
      ...[img.manifest, img.config, ...img.layers].map((b) => ({ name: `blobs/sha256/${b.digest.slice(7)}`, type: 'file' as const, content: b.data })),
    ]));
    await assert.rejects(second.agent.importImages(archive), limitError);
    assertNothingLeft(second.options);
  });

  test('the per-image limit counts every layer of the image: the layer that crosses it is refused and removed', async (t) => {
    const defer = cleanups(t);
    const home = mkdtempSync(join(tmpdir(), 'nimbus-limits-'));
    defer(() => rmSync(home, { recursive: true, force: true }));
    const { agent, options } = await agentIn(defer, home, { layerMaxBytes: 4 * MiB, imageMaxBytes: 5 * MiB });
    const img = await pushLayers('nimbus-test/two', [[{ name: 'a', size: 3 * MiB }], [{ name: 'b', size: 3 * MiB }]]);
    await assert.rejects(agent.pullImage(`${reg!.host}/nimbus-test/two:latest`, allowedForDaemons(), () => undefined), (e: unknown) => {
      assert.ok(hasCode(e, 'InvalidArgument'), String(e));
      // layers unpack in parallel (docs/image-transfer.md): whichever of the two crosses the limit first is refused
      assert.match((e as Error).message, new RegExp(`layer (${img.layers[0]!.digest}|${img.layers[1]!.digest}): the image unpacks to more than the per-image limit of 5 MiB`));
      return true;
    });
    // at most the first layer stays (a committed chain other images may share, if it won the
    // race); nothing half-made: no extraction snapshot, no second layer
    const snaps = readdirSync(join(options.snapshotsDir, 'overlayfs', 'snapshots'));
    assert.ok(snaps.length <= 1, `at most one committed snapshot: ${snaps.join(', ')}`);
    const meta = readSnapshotMetadataSync(join(options.snapshotsDir, 'overlayfs'));
    assert.deepEqual(Object.values(meta.snapshots).map((s) => s.kind), snaps.map(() => 'committed'));
    // within the limit the same image pulls
    const home2 = mkdtempSync(join(tmpdir(), 'nimbus-limits-'));
    defer(() => rmSync(home2, { recursive: true, force: true }));
    const roomy = await agentIn(defer, home2, { layerMaxBytes: 4 * MiB, imageMaxBytes: 6 * MiB });
    const pulled = await roomy.agent.pullImage(`${reg!.host}/nimbus-test/two:latest`, allowedForDaemons(), () => undefined);
    assert.equal(pulled.manifestDigest, img.manifest.digest);
  });

  test('on a small disk (a 48 MiB tmpfs home) a bomb within the limits stops at the free-space reserve, not at a full disk', async (t) => {
    const defer = cleanups(t);
    const home = mkdtempSync(join(tmpdir(), 'nimbus-limits-tmpfs-'));
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'nimbus-test', home]);
    defer(() => {
      spawnSync('umount', ['-l', home]);
      rmSync(home, { recursive: true, force: true });
    });
    assert.equal(m.status, 0, `mount tmpfs: ${m.stderr}`);
    const { agent, options } = await agentIn(defer, home);
    const img = await pushLayers('nimbus-test/filler', [[...Array.from({ length: 30 }, (_, i) => ({ name: `s/${i}`, size: 512 * 1024 })), { name: 'big', size: 80 * MiB }]]);
    const free = () => {
      const s = statfsSync(home);
      return s.bavail * s.bsize;
    };
    await assert.rejects(agent.pullImage(`${reg!.host}/nimbus-test/filler:latest`, allowedForDaemons(), () => undefined), (e: unknown) => {
      assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
      assert.equal(HTTP_STATUS[(e as NimbusError).code], 507);
      assert.match((e as Error).message, new RegExp(`reserve while unpacking layer ${img.layers[0]!.digest}`));
      assert.doesNotMatch((e as Error).message, new RegExp(home));
      return true;
    });
    assertNothingLeft(options);
    assert.ok(free() > 40 * MiB, `the half-written snapshot is gone: ${free()} bytes free`);

    // a layer that cannot even be stored: refused before anything is downloaded
    const noise = blobOf(randomBytes(30 * MiB), MEDIA.layer);
    const config = blobOf(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [noise.digest] } })), MEDIA.config);
    const manifest = manifestOf(config, [noise]);
    await pushImage(reg!.host, 'nimbus-test/noise', 'latest', { manifest, blobs: [config, noise] });
    await assert.rejects(agent.pullImage(`${reg!.host}/nimbus-test/noise:latest`, allowedForDaemons(), () => undefined), (e: unknown) => {
      assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
      assert.match((e as Error).message, /^not enough disk space for pulling .*nimbus-test\/noise:latest: needs at least 60 MiB/);
      return true;
    });
    const content = new LocalContentStore(options.contentDir);
    assert.equal(await content.info(config.digest), undefined, 'not even the config fetched');
    assert.equal(await content.info(noise.digest), undefined);
    assertNothingLeft(options);
  });
});
