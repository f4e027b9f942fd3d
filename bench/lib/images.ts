/**
 * Bench-only images (the shared fixtures in scripts/fixtures stay as they are):
 * pullBenchImage() is the fixtures' busybox base layer plus extra layers of
 * deterministic pseudo-random data (incompressible, a few MiB each) and one
 * layer of many small files, so pull+unpack has real bytes and real file
 * counts to handle. Same bytes, same digests every run.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { BUSYBOX_APPLETS, MEDIA, blobOf, makeTar, pushImage, sha256Digest, type Blob, type TarEntry } from '../../scripts/fixtures/images.js';

export interface BenchImage {
  config: Blob;
  layers: Blob[];
  manifest: Blob;
  /** bytes of all layers, compressed (what is downloaded) and uncompressed (what is unpacked) */
  compressedBytes: number;
  unpackedBytes: number;
  entries: number;
}

const MTIME = '2026-01-01T00:00:00Z';

/** Deterministic incompressible bytes: AES-128-CTR keyed by the seed's SHA-256 (fast enough for 200 MiB images). */
export function deterministicBytes(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

export interface PullImageOptions {
  /** layers of pseudo-random data (default 4, env BENCH_PULL_LAYERS) */
  dataLayers?: number;
  /** MiB per data layer (default 4, env BENCH_PULL_LAYER_MIB) */
  layerMiB?: number;
  /** small files in the many-files layer (default 2000) */
  smallFiles?: number;
}

export async function pullBenchImage(opts: PullImageOptions = {}): Promise<BenchImage> {
  const dataLayers = opts.dataLayers ?? Number(process.env.BENCH_PULL_LAYERS ?? 4);
  const mib = opts.layerMiB ?? Number(process.env.BENCH_PULL_LAYER_MIB ?? 4);
  const small = opts.smallFiles ?? 2000;
  const sets: TarEntry[][] = [];
  sets.push([
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', type: 'file', content: readFileSync('/bin/busybox'), mode: 0o755 },
    ...BUSYBOX_APPLETS.map((a): TarEntry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', type: 'file', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { name: 'etc/group', type: 'file', content: 'root:x:0:\nnogroup:x:65534:\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'root/', type: 'directory', mode: 0o700 },
  ]);
  for (let l = 0; l < dataLayers; l++) {
    const total = Math.floor(mib * 1024 * 1024);
    const half = Math.floor(total / 2);
    const quarter = Math.floor(total / 4);
    const parts = [half, quarter, total - half - quarter];
    sets.push([{ name: `data${l}/`, type: 'directory' }, ...parts.map((sz, k): TarEntry => ({ name: `data${l}/blob${k}.bin`, type: 'file', content: deterministicBytes(`nimbus-bench-${l}-${k}`, sz) }))]);
  }
  if (small > 0) {
    const entries: TarEntry[] = [{ name: 'many/', type: 'directory' }];
    for (let i = 0; i < small; i++) {
      if (i % 100 === 0) entries.push({ name: `many/d${i / 100}/`, type: 'directory' });
      const n = 512 + ((i * 37) % 3584);
      entries.push({ name: `many/d${Math.floor(i / 100)}/f${i}.txt`, type: 'file', content: deterministicBytes(`small-${i}`, n).toString('base64').slice(0, n) });
    }
    sets.push(entries);
  }
  const raw: Buffer[] = [];
  for (const s of sets) raw.push(await makeTar(s));
  const layers = raw.map((t) => blobOf(gzipSync(t, { level: 6 }), MEDIA.layerGzip));
  const config = blobOf(
    Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', created: MTIME,
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: raw.map(sha256Digest) },
    })),
    MEDIA.config,
  );
  const manifest = blobOf(
    Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MEDIA.manifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    })),
    MEDIA.manifest,
  );
  return {
    config, layers, manifest,
    compressedBytes: layers.reduce((a, l) => a + l.size, 0),
    unpackedBytes: raw.reduce((a, t) => a + t.length, 0),
    entries: sets.reduce((a, s) => a + s.length, 0),
  };
}

/** Push a bench image as host/repo:tag and return the reference. */
export async function pushBenchImage(host: string, repo: string, tag: string, img: BenchImage): Promise<string> {
  await pushImage(host, repo, tag, { manifest: img.manifest, blobs: [img.config, ...img.layers] });
  return `${host}/${repo}:${tag}`;
}
