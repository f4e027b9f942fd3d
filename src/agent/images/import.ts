/**
 * Import images from an archive for offline hosts: an OCI image-layout tar
 * (oci-layout, index.json, blobs/sha256/…) or a `docker save` tar
 * (manifest.json, <config>.json, <layer>/layer.tar). Every blob is verified.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { tmpdir } from 'node:os';
import tar from 'tar-stream';
import { DataLoss, InvalidArgument } from '../../core/errors.js';
import type { ContentStore } from '../content/content-store.js';
import { MT, isIndex, type Descriptor, type ImageIndex, type ImageManifest } from './media-types.js';

export interface ImportedImage {
  name?: string;
  manifestDigest: string;
  manifest: ImageManifest;
  configDigest: string;
  config: Record<string, unknown> & { rootfs?: { type: string; diff_ids: string[] } };
  layers: Descriptor[];
}

const MAX_MEMBER_JSON = 4 * 1024 * 1024;
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
async function* once(b: Buffer) {
  yield b;
}

/** Extract tar members to a private temp dir by normalised name (never by the member's own path). */
async function unpackMembers(tarPath: string, dir: string): Promise<Map<string, { file: string; size: number }>> {
  const members = new Map<string, { file: string; size: number }>();
  const extract = tar.extract();
  let n = 0;
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const name = posix.normalize(header.name).replace(/^(\.\/)+/, '').replace(/\/$/, '');
      if (header.type !== 'file' || name.startsWith('..') || name.startsWith('/')) {
        stream.resume();
        stream.on('end', next);
        return;
      }
      const file = join(dir, String(n++));
      void (async () => {
        const fh = await open(file, 'w', 0o600);
        try {
          for await (const chunk of stream as AsyncIterable<Buffer>) await fh.write(chunk);
        } finally {
          await fh.close();
        }
        members.set(name, { file, size: header.size ?? 0 });
        next();
      })().catch(reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  createReadStream(tarPath).on('error', (e) => extract.destroy(e)).pipe(extract as unknown as NodeJS.WritableStream);
  await done;
  return members;
}

export async function importImageArchive(tarPath: string, store: ContentStore): Promise<ImportedImage[]> {
  const dir = await mkdtemp(join(tmpdir(), 'nimbus-import-'));
  try {
    const members = await unpackMembers(tarPath, dir);
    const readJson = async <T>(name: string): Promise<T> => {
      const m = members.get(name);
      if (!m) throw new InvalidArgument(`archive has no ${name}`);
      if (m.size > MAX_MEMBER_JSON) throw new InvalidArgument(`${name} is larger than ${MAX_MEMBER_JSON} bytes`);
      const fh = await open(m.file, 'r');
      try {
        return JSON.parse((await fh.readFile()).toString('utf8')) as T;
      } finally {
        await fh.close();
      }
    };
    const ingestFile = async (name: string, expectDigest?: string): Promise<{ digest: string; size: number }> => {
      const m = members.get(name);
      if (!m) throw new DataLoss(`archive is missing ${name}`);
      let digest = expectDigest;
      if (!digest) {
        const h = createHash('sha256');
        for await (const c of createReadStream(m.file) as AsyncIterable<Buffer>) h.update(c);
        digest = `sha256:${h.digest('hex')}`;
      }
      return store.ingest({ digest, size: m.size }, createReadStream(m.file) as AsyncIterable<Buffer>);
    };

    if (members.has('oci-layout') && members.has('index.json')) {
      const blobName = (d: string) => `blobs/${d.replace(':', '/')}`;
      const out: ImportedImage[] = [];
      const index = await readJson<ImageIndex>('index.json');
      const visit = async (desc: Descriptor, name: string | undefined): Promise<void> => {
        await ingestFile(blobName(desc.digest), desc.digest);
        const doc = await readJson<ImageIndex | ImageManifest>(blobName(desc.digest));
        if (isIndex(desc.mediaType, doc)) {
          const idx = doc as ImageIndex;
          const amd64 = idx.manifests.find((m) => !m.platform || (m.platform.os === 'linux' && m.platform.architecture === 'amd64'));
          if (!amd64) throw new InvalidArgument(`archive index ${desc.digest} has no linux/amd64 image`);
          return visit(amd64, name);
        }
        const manifest = doc as ImageManifest;
        await ingestFile(blobName(manifest.config.digest), manifest.config.digest);
        for (const l of manifest.layers) await ingestFile(blobName(l.digest), l.digest);
        const config = await readJson<ImportedImage['config']>(blobName(manifest.config.digest));
        out.push({ ...(name ? { name } : {}), manifestDigest: desc.digest, manifest, configDigest: manifest.config.digest, config, layers: manifest.layers });
      };
      for (const m of index.manifests) await visit(m, m.annotations?.['io.containerd.image.name'] ?? m.annotations?.['org.opencontainers.image.ref.name']);
      return out;
    }

    if (members.has('manifest.json')) {
      const entries = await readJson<{ Config: string; RepoTags?: string[] | null; Layers: string[] }[]>('manifest.json');
      const out: ImportedImage[] = [];
      for (const e of entries) {
        const cfg = await ingestFile(e.Config);
        const config = await readJson<ImportedImage['config']>(e.Config);
        const layers: Descriptor[] = [];
        for (const l of e.Layers) {
          const info = await ingestFile(l);
          layers.push({ mediaType: MT.ociLayer, digest: info.digest, size: info.size });
        }
        const manifest: ImageManifest = {
          schemaVersion: 2,
          mediaType: MT.ociManifest,
          config: { mediaType: MT.ociConfig, digest: cfg.digest, size: cfg.size },
          layers,
        };
        const body = Buffer.from(JSON.stringify(manifest));
        const manifestDigest = sha256(body);
        await store.ingest({ digest: manifestDigest, size: body.length }, once(body));
        const tags = e.RepoTags?.length ? e.RepoTags : [undefined];
        for (const name of tags) {
          out.push({ ...(name ? { name } : {}), manifestDigest, manifest, configDigest: cfg.digest, config, layers });
        }
      }
      return out;
    }
    throw new InvalidArgument('not an image archive: expected an OCI image layout (oci-layout, index.json) or a docker save tar (manifest.json)');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
