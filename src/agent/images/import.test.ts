import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { hasCode, type ErrorCode } from '../../core/errors.js';
import { DiskSpace } from '../content/disk-space.js';
import { LocalContentStore } from '../content/local-content-store.js';
import { importImageArchive } from './import.js';
import { MT } from './media-types.js';
import { buildTestImages, makeTar, sha256Digest, writeDockerSaveTar, writeOciLayoutTar } from '../../../scripts/fixtures/images.js';

function tmp(t: { after(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-import-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** An OCI layout archive at path: index.json naming `manifests`, each blob under its digest. */
async function writeOciLayout(path: string, manifests: object[], blobs: Array<[string, Buffer]>): Promise<void> {
  writeFileSync(path, await makeTar([
    { name: 'oci-layout', type: 'file', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', type: 'file', content: JSON.stringify({ schemaVersion: 2, manifests }) },
    ...blobs.map(([digest, b]) => ({ name: `blobs/sha256/${digest.slice(7)}`, type: 'file' as const, content: b })),
  ]));
}

/** A one-file layer and a manifest (with its config) naming it `repeats` times, as a hostile archive may. */
async function repeatedLayerImage(repeats: number) {
  const layer = await makeTar([{ name: 'a', type: 'file', content: 'x' }]);
  const layerDigest = sha256Digest(layer);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: Array(repeats).fill(layerDigest) } }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.length },
    layers: Array(repeats).fill({ mediaType: MT.ociLayer, digest: layerDigest, size: layer.length }),
  }));
  const blobs = [manifest, config, layer].map((b): [string, Buffer] => [sha256Digest(b), b]);
  return { layer, config, manifest, blobs };
}

test('OCI image-layout tar: index resolved to linux/amd64, every blob stored, name from annotations', async (t) => {
  const dir = tmp(t);
  const images = await buildTestImages();
  const tarPath = join(dir, 'oci.tar');
  await writeOciLayoutTar(images, tarPath, 'docker.io/nimbus-test/busybox:imported');
  const store = new LocalContentStore(join(dir, 'content'));
  const out = await importImageArchive(tarPath, store);
  assert.equal(out.length, 1);
  const img = out[0]!;
  assert.equal(img.name, 'docker.io/nimbus-test/busybox:imported');
  assert.equal(img.manifestDigest, images.amd64.manifest.digest);
  assert.equal(img.configDigest, images.amd64.config.digest);
  assert.deepEqual(img.layers.map((l) => l.mediaType), [MT.ociLayerGzip, MT.ociLayer, MT.ociLayerGzip]);
  assert.deepEqual(img.config.rootfs?.diff_ids, images.amd64.diffIds);
  for (const b of [images.index, images.amd64.manifest, images.amd64.config, ...images.amd64.layers]) {
    assert.deepEqual(await store.readBlob(b.digest), b.data, b.digest);
  }
  assert.equal(await store.info(images.arm64.layers[0]!.digest), undefined, 'arm64 layers not imported');
  const arm = await importImageArchive(tarPath, new LocalContentStore(join(dir, 'content-arm')), { platform: { os: 'linux', architecture: 'arm64' } });
  assert.equal(arm[0]!.manifestDigest, images.arm64.manifest.digest);
  await assert.rejects(importImageArchive(tarPath, store, { platform: { os: 'linux', architecture: 'riscv64' } }), {
    code: 'InvalidArgument', message: /available: linux\/arm64, linux\/amd64/,
  });
});

test('docker save tar: digests computed and checked against diff_ids, symlinked layers followed, manifest synthesised', async (t) => {
  const dir = tmp(t);
  const images = await buildTestImages();
  const tarPath = join(dir, 'save.tar');
  await writeDockerSaveTar(images, tarPath, { repoTags: ['nimbus-test/busybox:saved', 'nimbus-test/busybox:also'], copyTags: ['nimbus-test/copy:v1'] });
  const store = new LocalContentStore(join(dir, 'content'));
  const out = await importImageArchive(tarPath, store);
  assert.deepEqual(out.map((i) => i.name), ['nimbus-test/busybox:saved', 'nimbus-test/busybox:also', 'nimbus-test/copy:v1']);
  const img = out[0]!;
  assert.equal(img.configDigest, images.amd64.config.digest);
  assert.deepEqual(img.layers.map((l) => l.digest), images.amd64.diffIds, 'uncompressed layers: digest = diff_id');
  assert.deepEqual(img.layers.map((l) => l.mediaType), [MT.ociLayer, MT.ociLayer, MT.ociLayer]);
  assert.deepEqual(out[2]!.layers, img.layers, 'symlinked layer.tar resolves to the same blob');
  const manifestBody = await store.readBlob(img.manifestDigest);
  assert.equal(sha256Digest(manifestBody), img.manifestDigest);
  assert.deepEqual(JSON.parse(manifestBody.toString()), img.manifest);
  for (const l of img.layers) assert.ok(await store.info(l.digest));
});

test('corrupt archives are refused: DataLoss, nothing of the bad blob stored; non-archives are InvalidArgument', async (t) => {
  const dir = tmp(t);
  const images = await buildTestImages();
  // An OCI layout whose layer blob does not hash to its name.
  const layer = images.amd64.layers[1]!;
  const bad = Buffer.from(layer.data);
  bad[100] = bad[100]! ^ 1;
  const entries = [images.index, images.amd64.manifest, images.arm64.manifest, ...images.blobs].map((b) => ({
    name: `blobs/sha256/${b.digest.slice(7)}`, type: 'file' as const, content: b.digest === layer.digest ? bad : b.data,
  }));
  const ociBad = join(dir, 'oci-bad.tar');
  writeFileSync(ociBad, await makeTar([
    { name: 'oci-layout', type: 'file', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', type: 'file', content: JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MT.ociIndex, digest: images.index.digest, size: images.index.size }] }) },
    ...entries,
  ]));
  const store = new LocalContentStore(join(dir, 'content'));
  await assert.rejects(importImageArchive(ociBad, store), { code: 'DataLoss', message: /digest mismatch/ });
  assert.equal(await store.info(layer.digest), undefined);
  assert.deepEqual(readdirSync(join(dir, 'content', 'ingest')), []);

  // A docker save whose layer.tar does not match the config's diff_id.
  const cfg = images.amd64.config;
  const saveBad = join(dir, 'save-bad.tar');
  writeFileSync(saveBad, await makeTar([
    { name: `${cfg.digest.slice(7)}.json`, type: 'file', content: cfg.data },
    ...images.amd64.rawLayers.map((r, i) => ({ name: `l${i}/layer.tar`, type: 'file' as const, content: i === 2 ? Buffer.concat([r, Buffer.alloc(512)]) : r })),
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: `${cfg.digest.slice(7)}.json`, RepoTags: ['x:y'], Layers: ['l0/layer.tar', 'l1/layer.tar', 'l2/layer.tar'] }]) },
  ]));
  await assert.rejects(importImageArchive(saveBad, store), { code: 'DataLoss', message: /diff_id/ });
  assert.equal(await store.info(sha256Digest(Buffer.concat([images.amd64.rawLayers[2]!, Buffer.alloc(512)]))), undefined, 'the layer that broke its promise is not stored');
  assert.deepEqual(readdirSync(join(dir, 'content', 'ingest')), []);
  // a layer whose bytes are not what its blobs/sha256/<hex> name says
  const nameBad = join(dir, 'name-bad.tar');
  writeFileSync(nameBad, await makeTar([
    { name: `${cfg.digest.slice(7)}.json`, type: 'file', content: cfg.data },
    { name: `blobs/sha256/${'b'.repeat(64)}`, type: 'file', content: images.amd64.rawLayers[0]! },
    ...images.amd64.rawLayers.slice(1).map((r, i) => ({ name: `l${i + 1}/layer.tar`, type: 'file' as const, content: r })),
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: `${cfg.digest.slice(7)}.json`, Layers: [`blobs/sha256/${'b'.repeat(64)}`, 'l1/layer.tar', 'l2/layer.tar'] }]) },
  ]));
  const fresh = new LocalContentStore(join(dir, 'content-fresh'));
  await assert.rejects(importImageArchive(nameBad, fresh), { code: 'DataLoss', message: /digest mismatch: expected sha256:b{64}/ });
  assert.equal(await fresh.info(images.amd64.diffIds[0]!), undefined, 'nothing of it stored');

  // A config whose content does not match its <hex>.json name.
  const cfgBad = join(dir, 'cfg-bad.tar');
  writeFileSync(cfgBad, await makeTar([
    { name: `${'a'.repeat(64)}.json`, type: 'file', content: cfg.data },
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: `${'a'.repeat(64)}.json`, Layers: [] }]) },
  ]));
  await assert.rejects(importImageArchive(cfgBad, store), { code: 'DataLoss' });
  assert.equal(await store.info(`sha256:${'a'.repeat(64)}`), undefined);

  const junk = join(dir, 'junk.tar');
  writeFileSync(junk, await makeTar([{ name: 'hello.txt', type: 'file', content: 'hi' }]));
  await assert.rejects(importImageArchive(junk, store), { code: 'InvalidArgument', message: /not an image archive/ });
  const notTar = join(dir, 'not.tar');
  writeFileSync(notTar, gzipSync(Buffer.from('not a tar at all'.repeat(100))));
  await assert.rejects(importImageArchive(notTar, store), { code: 'InvalidArgument' });
});

test('import errors name the archive and its entries, never a host path', async (t) => {
  const dir = tmp(t);
  const store = new LocalContentStore(join(dir, 'content'));
  const noPath = (code: ErrorCode) => (e: unknown) => {
    assert.ok(hasCode(e, code), `expected ${code}, got ${String(e)}`);
    assert.doesNotMatch((e as Error).message, /\/(tmp|var|work|root)\b|nimbus-import/, `a host path in: ${(e as Error).message}`);
    return true;
  };
  // the upload gone: the system error's path stays out of the message
  await assert.rejects(importImageArchive(join(dir, 'uploads', 'import-1234.tar'), store), noPath('Internal'));
  // a truncated archive
  const images = await buildTestImages();
  const oci = join(dir, 'oci.tar');
  await writeOciLayoutTar(images, oci);
  const cut = join(dir, 'cut.tar');
  writeFileSync(cut, readFileSync(oci).subarray(0, 3000));
  await assert.rejects(importImageArchive(cut, store), noPath('InvalidArgument'));
  // a docker save manifest with a wrong type where a layer name belongs: the archive's fault, 400
  const wrong = join(dir, 'wrong.tar');
  const cfg = images.amd64.config;
  writeFileSync(wrong, await makeTar([
    { name: `${cfg.digest.slice(7)}.json`, type: 'file', content: cfg.data },
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: `${cfg.digest.slice(7)}.json`, Layers: [1, 2, 3] }]) },
  ]));
  await assert.rejects(importImageArchive(wrong, store), noPath('InvalidArgument'));
});

test('an image the disk cannot hold is refused before its layers are stored (both archive kinds)', async (t) => {
  const dir = tmp(t);
  const images = await buildTestImages();
  const oci = join(dir, 'oci.tar');
  const save = join(dir, 'save.tar');
  await writeOciLayoutTar(images, oci);
  await writeDockerSaveTar(images, save);
  const layerBytes = images.amd64.layers.reduce((a, l) => a + l.size, 0);
  // room for the layers' blobs but not for unpacking them as well (one filesystem)
  const fs = { id: 'one', availBytes: 1024 ** 3 + layerBytes + 100_000, totalBytes: 100 * 1024 ** 3 };
  const room = new DiskSpace({ content: 'c', snapshots: 's' }, { probe: () => Promise.resolve(fs) });
  for (const archive of [oci, save]) {
    const store = new LocalContentStore(join(dir, `content-${archive === oci ? 'oci' : 'save'}`));
    await assert.rejects(importImageArchive(archive, store, { room }), (e: unknown) => {
      assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
      assert.match((e as Error).message, /^not enough disk space for importing image /);
      return true;
    });
    for (const l of [...images.amd64.layers, ...images.amd64.rawLayers.map((r) => ({ digest: sha256Digest(r) }))]) {
      assert.equal(await store.info(l.digest), undefined, `layer ${l.digest} not stored`);
    }
  }
  // with room for both it imports
  const roomy = new DiskSpace({ content: 'c', snapshots: 's' }, { probe: () => Promise.resolve({ ...fs, availBytes: 1024 ** 3 + 3 * layerBytes }) });
  const [img] = await importImageArchive(oci, new LocalContentStore(join(dir, 'content-ok')), { room: roomy });
  assert.equal(img!.manifestDigest, images.amd64.manifest.digest);
});

test('a docker save layer is read once into the store: hashed as it is copied, not hashed first and copied after', async (t) => {
  const dir = tmp(t);
  const layer = randomBytes(24 << 20);
  const digest = sha256Digest(layer);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [digest] } }));
  const cfgName = `${sha256Digest(config).slice(7)}.json`;
  const tarPath = join(dir, 'big.tar');
  writeFileSync(tarPath, await makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: cfgName, RepoTags: ['x/big:1'], Layers: ['l/layer.tar'] }]) },
    { name: cfgName, type: 'file', content: config },
    { name: 'l/layer.tar', type: 'file', content: layer },
  ]));
  const store = new LocalContentStore(join(dir, 'content'));
  const readBytes = () => Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))?.[1]);
  const before = readBytes();
  const [img] = await importImageArchive(tarPath, store);
  const read = readBytes() - before;
  t.diagnostic(`read ${read} bytes for a ${layer.length}-byte layer`);
  assert.equal(img!.layers[0]!.digest, digest);
  assert.deepEqual(await store.readBlob(digest), layer);
  // the archive once (its members taken out), then each member once: ~2× the layer (the code before: ~3×)
  assert.ok(read < 2.5 * layer.length, `read ${read} bytes for a ${layer.length}-byte layer`);
});

test('blobs already stored are not opened: an archive naming one layer many times, or imported again, leaves no file open', async (t) => {
  const dir = tmp(t);
  const { manifest, blobs } = await repeatedLayerImage(200);
  const tarPath = join(dir, 'many.tar');
  await writeOciLayout(tarPath, [{ mediaType: MT.ociManifest, digest: sha256Digest(manifest), size: manifest.length }], blobs);
  const store = new LocalContentStore(join(dir, 'content'));
  const open = () => readdirSync('/proc/self/fd').length;
  const before = open();
  await importImageArchive(tarPath, store);
  await importImageArchive(tarPath, store);
  await new Promise((r) => setTimeout(r, 100)); // a stream's close is asynchronous
  assert.ok(open() <= before + 2, `${open() - before} more descriptors open after the imports (the code before kept one per blob found stored)`);
});

test('an archive naming one manifest or one layer many times costs one image\'s work; more than 1000 images are refused', async (t) => {
  const dir = tmp(t);
  const L = 200;
  const { layer, config, manifest, blobs } = await repeatedLayerImage(L);
  const entry = (i: number) => ({ mediaType: MT.ociManifest, digest: sha256Digest(manifest), size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': `x/many:${i}` } });
  const layout = (path: string, entries: number) => writeOciLayout(path, Array.from({ length: entries }, (_, i) => entry(i)), blobs);
  const inner = new LocalContentStore(join(dir, 'content'));
  let ingests = 0;
  const store = Object.assign(Object.create(inner) as LocalContentStore, {
    ingest: (...a: Parameters<LocalContentStore['ingest']>) => {
      ingests++;
      return inner.ingest(...a);
    },
    ingestComputed: (...a: Parameters<LocalContentStore['ingestComputed']>) => {
      ingests++;
      return inner.ingestComputed(...a);
    },
  });
  await layout(join(dir, 'oci.tar'), 100);
  const out = await importImageArchive(join(dir, 'oci.tar'), store);
  assert.equal(out.length, 100);
  assert.equal(out[99]!.name, 'x/many:99');
  assert.equal(out[99]!.layers.length, L);
  assert.equal(ingests, 3, 'manifest, config and layer stored once each (the code before: once per mention)');

  // docker save: one entry naming one layer L times
  ingests = 0;
  const cfgName = `${sha256Digest(config).slice(7)}.json`;
  writeFileSync(join(dir, 'save.tar'), await makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: cfgName, RepoTags: ['x/save:1'], Layers: Array(L).fill('l/layer.tar') }]) },
    { name: cfgName, type: 'file', content: config },
    { name: 'l/layer.tar', type: 'file', content: layer },
  ]));
  const saved = await importImageArchive(join(dir, 'save.tar'), store);
  assert.equal(saved[0]!.layers.length, L);
  assert.equal(ingests, 3, 'config, layer and the synthesised manifest stored once each');

  await layout(join(dir, 'lots.tar'), 1001);
  await assert.rejects(importImageArchive(join(dir, 'lots.tar'), store), { code: 'InvalidArgument', message: /more than 1000 images/ });
});

test('a blob already stored (another tenant\'s) is not taken by naming its digest: the archive\'s member must be its bytes', async (t) => {
  const dir = tmp(t);
  const images = await buildTestImages();
  const store = new LocalContentStore(join(dir, 'content'));
  await writeOciLayoutTar(images, join(dir, 'victim.tar'), 'docker.io/victim/private:1');
  await importImageArchive(join(dir, 'victim.tar'), store);
  const victim = images.amd64;

  // the attacker's own one-layer image, its manifest padded to the victim's manifest's size and named by its digest
  const layer = await makeTar([{ name: 'mine', type: 'file', content: 'x' }]);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256Digest(layer)] } }));
  const own = JSON.stringify({
    schemaVersion: 2, mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config), size: config.length },
    layers: [{ mediaType: MT.ociLayer, digest: sha256Digest(layer), size: layer.length }],
  });
  assert.ok(own.length <= victim.manifest.size);
  const forged = Buffer.from(own.padEnd(victim.manifest.size, ' '));
  const archive = (path: string, desc: { digest: string; size: number }, blobs: [string, Buffer][]) => writeOciLayout(path, [{ mediaType: MT.ociManifest, ...desc }], blobs);
  await archive(join(dir, 'manifest.tar'), { digest: victim.manifest.digest, size: victim.manifest.size }, [
    [victim.manifest.digest, forged], [sha256Digest(config), config], [sha256Digest(layer), layer],
  ]);
  await assert.rejects(importImageArchive(join(dir, 'manifest.tar'), store), (e: unknown) => {
    assert.ok(hasCode(e, 'DataLoss'), `the victim's image was taken by its digest: ${String(e)}`);
    assert.match((e as Error).message, /digest mismatch/);
    return true;
  });

  // a layer of the victim's named in the attacker's manifest, with other bytes of its size: the unpack would read the victim's
  const theirs = victim.layers[0]!;
  const config2 = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [victim.diffIds[0]] } }));
  const manifest2 = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: sha256Digest(config2), size: config2.length },
    layers: [{ mediaType: theirs.mediaType, digest: theirs.digest, size: theirs.size }],
  }));
  await archive(join(dir, 'layer.tar'), { digest: sha256Digest(manifest2), size: manifest2.length }, [
    [sha256Digest(manifest2), manifest2], [sha256Digest(config2), config2], [theirs.digest, Buffer.alloc(theirs.size, 0x20)],
  ]);
  await assert.rejects(importImageArchive(join(dir, 'layer.tar'), store), (e: unknown) => {
    assert.ok(hasCode(e, 'DataLoss'), `the victim's layer was taken by its digest: ${String(e)}`);
    assert.doesNotMatch((e as Error).message, /stored/, 'nothing told of the stored blob');
    return true;
  });
  // a wrong size claimed for it: the store's size is not told either
  await archive(join(dir, 'size.tar'), { digest: victim.manifest.digest, size: victim.manifest.size + 1 }, [[victim.manifest.digest, Buffer.alloc(victim.manifest.size + 1, 0x20)]]);
  await assert.rejects(importImageArchive(join(dir, 'size.tar'), store), (e: unknown) => {
    assert.ok(hasCode(e, 'DataLoss'), String(e));
    assert.doesNotMatch((e as Error).message, new RegExp(`stored ${victim.manifest.size}`));
    return true;
  });
});
