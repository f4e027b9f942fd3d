/**
 * The end-to-end tests' registry: the shared fixtures (scripts/fixtures: a real
 * docker-registry on loopback and the busybox-static test images) started and
 * pushed in one call, plus what only these tests need — a tampered image and the
 * test image as import archives.
 *   nimbus-test/busybox:latest  → an image index (linux/arm64 + linux/amd64)
 *   nimbus-test/busybox:single  → the amd64 manifest itself
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { startRegistry, type RegistryFixture } from '../../scripts/fixtures/registry.js';
import {
  MEDIA, blobOf, buildTestImages, makeTar, manifestOf, pushBlob, pushManifest, pushTestImages, sha256Digest, writeDockerSaveTar, writeOciLayoutTar,
  type TestImages,
} from '../../scripts/fixtures/images.js';

export interface TestRegistry {
  host: string;
  images: TestImages;
  registry: RegistryFixture;
  stop(): Promise<void>;
}

export async function startTestRegistryWithImages(): Promise<TestRegistry> {
  const registry = await startRegistry();
  try {
    const images = await buildTestImages();
    await pushTestImages(registry.host, images);
    return { host: registry.host, images, registry, stop: () => registry.stop() };
  } catch (e) {
    await registry.stop();
    throw e;
  }
}

/** A one-layer image whose layer is corrupted in the registry's storage after the push (same size, one byte flipped). */
export async function pushTamperedImage(reg: TestRegistry, repo = 'nimbus-test/tampered'): Promise<void> {
  const raw = await makeTar([{ name: 'payload.bin', type: 'file', content: randomBytes(4096) }]);
  const layer = blobOf(gzipSync(raw), MEDIA.layerGzip);
  const config = blobOf(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Cmd: ['true'] },
    rootfs: { type: 'layers', diff_ids: [sha256Digest(raw)] },
  })), MEDIA.config);
  const manifest = manifestOf(config, [layer]);
  await pushBlob(reg.host, repo, config);
  await pushBlob(reg.host, repo, layer);
  await pushManifest(reg.host, repo, 'latest', manifest);
  const file = reg.registry.blobDataPath(layer.digest);
  const bytes = readFileSync(file);
  bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff;
  writeFileSync(file, bytes);
}

/** The test images as an OCI image-layout tar (index → both platforms) and as a `docker save` tar (amd64). */
export async function imageArchives(images: TestImages, dir: string): Promise<{ ociLayout: string; dockerSave: string }> {
  const ociLayout = join(dir, 'oci-layout.tar');
  const dockerSave = join(dir, 'docker-save.tar');
  await writeOciLayoutTar(images, ociLayout, 'docker.io/imported/busybox:oci');
  await writeDockerSaveTar(images, dockerSave, { repoTags: ['imported/saved:v1'] });
  return { ociLayout, dockerSave };
}

/** The amd64 test image again with every layer compressed by zstd (OCI …tar+zstd), pushed as `repo:latest`. */
export async function pushZstdImage(reg: TestRegistry, repo = 'nimbus-test/zstd'): Promise<void> {
  const img = reg.images.amd64;
  const layers = img.rawLayers.map((raw) => blobOf(execFileSync('zstd', ['-q', '-c', '-3'], { input: raw, maxBuffer: 256 * 1024 * 1024 }), 'application/vnd.oci.image.layer.v1.tar+zstd'));
  const manifest = manifestOf(img.config, layers);
  await pushBlob(reg.host, repo, img.config);
  for (const l of layers) await pushBlob(reg.host, repo, l);
  await pushManifest(reg.host, repo, 'latest', manifest);
}

/** The amd64 test image again with a config of its own (creation time, labels), pushed as `repo:tag`: distinct images sharing layers. */
export async function pushLabelledImage(reg: TestRegistry, repo: string, tag: string, created: string, labels: Record<string, string>, extraConfig: Record<string, unknown> = {}): Promise<void> {
  const img = reg.images.amd64;
  const doc = JSON.parse(img.config.data.toString()) as { created?: string; config?: Record<string, unknown> };
  // extraConfig: more of the image config's `config` (ExposedPorts, Volumes)
  const config = blobOf(Buffer.from(JSON.stringify({ ...doc, created, config: { ...doc.config, Labels: labels, ...extraConfig } })), MEDIA.config);
  await pushBlob(reg.host, repo, config);
  for (const l of img.layers) await pushBlob(reg.host, repo, l);
  await pushManifest(reg.host, repo, tag, manifestOf(config, img.layers));
}

/**
 * The amd64 test image with one more layer and `VOLUME ["/srv", "/evil"]`: files at /srv owned by
 * 1000 with their own modes, a symlink out of the image in it, and /evil a symlink that climbs
 * out of the root to /opt/inner (what a copy-up must resolve inside the image: the host's
 * /opt/inner is not the image's). Pushed as `repo:tag`.
 */
export async function pushVolumeImage(reg: TestRegistry, repo: string, tag: string): Promise<void> {
  const img = reg.images.amd64;
  const raw = await makeTar([
    { name: 'srv/', type: 'directory', mode: 0o750, uid: 1000, gid: 1000 },
    { name: 'srv/index.html', type: 'file', content: 'from the image\n', mode: 0o640, uid: 1000, gid: 1001 },
    { name: 'srv/sub/', type: 'directory' },
    { name: 'srv/sub/deep.txt', type: 'file', content: 'deep\n' },
    { name: 'srv/escape', type: 'symlink', linkname: '/etc/shadow' },
    { name: 'opt/', type: 'directory' },
    { name: 'opt/inner/', type: 'directory' },
    { name: 'opt/inner/inner.txt', type: 'file', content: 'inner\n' },
    { name: 'evil', type: 'symlink', linkname: '../../../../../../../../opt/inner' },
  ]);
  const layer = blobOf(gzipSync(raw), MEDIA.layerGzip);
  const doc = JSON.parse(img.config.data.toString()) as { config?: Record<string, unknown>; rootfs: { diff_ids: string[] } };
  const config = blobOf(Buffer.from(JSON.stringify({
    ...doc, config: { ...doc.config, Volumes: { '/srv': {}, '/evil': {} } }, rootfs: { type: 'layers', diff_ids: [...doc.rootfs.diff_ids, sha256Digest(raw)] },
  })), MEDIA.config);
  const layers = [...img.layers, layer];
  await pushBlob(reg.host, repo, config);
  for (const l of layers) await pushBlob(reg.host, repo, l);
  await pushManifest(reg.host, repo, tag, manifestOf(config, layers));
}
