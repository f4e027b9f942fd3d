/**
 * Test fixture: a real docker-registry (the OCI distribution reference server)
 * on loopback, holding busybox-static test images built here with no internet:
 *   nimbus-test/busybox:latest  → an image index (linux/amd64 + a linux/arm64 entry)
 *   nimbus-test/busybox:single  → the amd64 manifest itself
 * The image has three gzip layers: busybox + users; files to delete; a whiteout,
 * an opaque directory and an absolute symlink.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

export interface Blob {
  digest: string;
  size: number;
  data: Buffer;
  mediaType: string;
}

export interface TestImage {
  config: Blob;
  layers: Blob[];
  manifest: Blob;
  index: Blob;
}

export interface TestRegistry {
  host: string;
  image: TestImage;
  dataDir: string;
  stop(): Promise<void>;
}

const MTIME = new Date('2026-01-01T00:00:00Z');
const blob = (data: Buffer, mediaType: string): Blob => ({
  digest: `sha256:${createHash('sha256').update(data).digest('hex')}`,
  size: data.length,
  data,
  mediaType,
});

type Entry =
  | { name: string; type: 'file'; content: string | Buffer; mode?: number; uid?: number; gid?: number }
  | { name: string; type: 'directory'; mode?: number }
  | { name: string; type: 'symlink'; linkname: string };

async function makeTar(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c: unknown) => {
      chunks.push(c as Buffer);
    });
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    if (e.type === 'file') {
      const content = typeof e.content === 'string' ? Buffer.from(e.content) : e.content;
      pack.entry({ name: e.name, type: 'file', mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: MTIME, size: content.length }, content);
    } else if (e.type === 'directory') {
      pack.entry({ name: e.name, type: 'directory', mode: e.mode ?? 0o755, mtime: MTIME });
    } else {
      pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname, mtime: MTIME });
    }
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export const BUSYBOX_APPLETS = ['sh', 'true', 'false', 'sleep', 'echo', 'cat', 'env', 'ls', 'id', 'head', 'tr', 'test', 'hostname', 'ps', 'kill', 'yes', 'wc', 'touch', 'mkdir', 'rm', 'grep', 'dd', 'seq'];

export async function buildTestImage(): Promise<TestImage> {
  const layer1 = await makeTar([
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', type: 'file', content: readFileSync('/bin/busybox'), mode: 0o755 },
    ...BUSYBOX_APPLETS.map((a): Entry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', type: 'file', content: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { name: 'etc/group', type: 'file', content: 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'root/', type: 'directory', mode: 0o700 },
  ]);
  const layer2 = await makeTar([
    { name: 'etc/nimbus-release', type: 'file', content: 'nimbus test image 1\n' },
    { name: 'data/', type: 'directory' },
    { name: 'data/removed.txt', type: 'file', content: 'this file is deleted by the next layer\n' },
    { name: 'data/opaque/', type: 'directory' },
    { name: 'data/opaque/old.txt', type: 'file', content: 'hidden by an opaque marker\n' },
  ]);
  const layer3 = await makeTar([
    { name: 'data/', type: 'directory' },
    { name: 'data/.wh.removed.txt', type: 'file', content: '' },
    { name: 'data/opaque/', type: 'directory' },
    { name: 'data/opaque/.wh..wh..opq', type: 'file', content: '' },
    { name: 'data/opaque/new.txt', type: 'file', content: 'only this is visible\n' },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/bin/', type: 'directory' },
    { name: 'usr/bin/busybox-link', type: 'symlink', linkname: '/bin/busybox' },
  ]);
  const raw = [layer1, layer2, layer3];
  const layers = raw.map((t) => blob(gzipSync(t, { level: 6 }), 'application/vnd.oci.image.layer.v1.tar+gzip'));
  const diffIds = raw.map((t) => `sha256:${createHash('sha256').update(t).digest('hex')}`);
  const config = blob(
    Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', created: MTIME.toISOString(),
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: diffIds },
    })),
    'application/vnd.oci.image.config.v1+json',
  );
  const manifest = blob(
    Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    })),
    'application/vnd.oci.image.manifest.v1+json',
  );
  const index = blob(
    Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.size, platform: { architecture: 'arm64', os: 'linux' } },
        { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.size, platform: { architecture: 'amd64', os: 'linux' } },
      ],
    })),
    'application/vnd.oci.image.index.v1+json',
  );
  return { config, layers, manifest, index };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export async function pushBlob(host: string, repo: string, b: Blob): Promise<void> {
  const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (start.status !== 202) throw new Error(`upload start ${start.status}`);
  const loc = new URL(start.headers.get('location')!, `http://${host}`);
  loc.searchParams.set('digest', b.digest);
  const put = await fetch(loc, { method: 'PUT', body: b.data, headers: { 'content-type': 'application/octet-stream' } });
  if (put.status !== 201) throw new Error(`blob upload ${put.status}: ${await put.text()}`);
}

export async function pushManifest(host: string, repo: string, ref: string, b: Blob): Promise<void> {
  const r = await fetch(`http://${host}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: b.data, headers: { 'content-type': b.mediaType } });
  if (r.status !== 201) throw new Error(`manifest push ${r.status}: ${await r.text()}`);
}

export async function pushTestImage(host: string, repo: string, img: TestImage): Promise<void> {
  for (const b of [img.config, ...img.layers]) await pushBlob(host, repo, b);
  await pushManifest(host, repo, 'single', img.manifest);
  await pushManifest(host, repo, 'latest', img.index);
}

export async function startTestRegistryWithImages(): Promise<TestRegistry> {
  const dataDir = mkdtempSync(join(tmpdir(), 'nimbus-registry-'));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  writeFileSync(join(dataDir, 'config.yml'), [
    'version: 0.1',
    'log: {level: error}',
    'storage:',
    `  filesystem: {rootdirectory: ${join(dataDir, 'data')}}`,
    '  delete: {enabled: true}',
    'http:',
    `  addr: ${host}`,
    '',
  ].join('\n'));
  let child: ChildProcess | undefined = spawn('/usr/bin/docker-registry', ['serve', join(dataDir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const stop = async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    child = undefined;
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const ok = await fetch(`http://${host}/v2/`).then((r) => r.ok, () => false);
      if (ok) break;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`docker-registry did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const image = await buildTestImage();
    await pushTestImage(host, 'nimbus-test/busybox', image);
    return { host, image, dataDir, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** A one-layer image whose layer is corrupted in the registry's storage after the push (same size, one byte flipped). */
export async function pushTamperedImage(reg: TestRegistry, repo = 'nimbus-test/tampered'): Promise<void> {
  const { randomBytes } = await import('node:crypto');
  const raw = await makeTar([{ name: 'payload.bin', type: 'file', content: randomBytes(4096) }]);
  const layer = blob(gzipSync(raw), 'application/vnd.oci.image.layer.v1.tar+gzip');
  const config = blob(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Cmd: ['true'] },
    rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(raw).digest('hex')}`] },
  })), 'application/vnd.oci.image.config.v1+json');
  const manifest = blob(Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size }],
  })), 'application/vnd.oci.image.manifest.v1+json');
  await pushBlob(reg.host, repo, config);
  await pushBlob(reg.host, repo, layer);
  await pushManifest(reg.host, repo, 'latest', manifest);
  const hex = layer.digest.slice(7);
  const file = join(reg.dataDir, 'data/docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
  const bytes = readFileSync(file);
  bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff;
  writeFileSync(file, bytes);
}

/** The test image as an OCI image-layout tar and as a `docker save` tar (uncompressed layers). */
export async function imageArchives(img: TestImage, dir: string): Promise<{ ociLayout: string; dockerSave: string }> {
  const { gunzipSync } = await import('node:zlib');
  const blobEntry = (b: Blob): Entry => ({ name: `blobs/sha256/${b.digest.slice(7)}`, type: 'file', content: b.data });
  const index = {
    schemaVersion: 2,
    manifests: [{
      mediaType: img.manifest.mediaType, digest: img.manifest.digest, size: img.manifest.size,
      annotations: { 'io.containerd.image.name': 'docker.io/imported/busybox:oci', 'org.opencontainers.image.ref.name': 'oci' },
    }],
  };
  const oci = await makeTar([
    { name: 'oci-layout', type: 'file', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', type: 'file', content: JSON.stringify(index) },
    ...[img.config, img.manifest, ...img.layers].map(blobEntry),
  ]);
  const raw = img.layers.map((l) => gunzipSync(l.data));
  const save = await makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: 'config.json', RepoTags: ['imported/saved:v1'], Layers: raw.map((_, i) => `l${i}/layer.tar`) }]) },
    { name: 'config.json', type: 'file', content: img.config.data },
    ...raw.map((r, i): Entry => ({ name: `l${i}/layer.tar`, type: 'file', content: r })),
  ]);
  const ociLayout = join(dir, 'oci-layout.tar');
  const dockerSave = join(dir, 'docker-save.tar');
  writeFileSync(ociLayout, oci);
  writeFileSync(dockerSave, save);
  return { ociLayout, dockerSave };
}
