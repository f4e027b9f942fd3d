/**
 * Import images from an archive for offline hosts:
 *  - an OCI image-layout tar (oci-layout, index.json, blobs/sha256/…), which
 *    is also what `docker save` writes since Docker 25 (it adds manifest.json);
 *  - an older `docker save` tar (manifest.json, <config>.json, <id>/layer.tar,
 *    with symlinks for repeated layers): digests are computed, checked against
 *    the config's diff_ids and the file names that carry digests, and an OCI
 *    manifest is synthesised and stored.
 * Every blob goes through ContentStore.ingest, so every digest is verified and
 * nothing unverified becomes visible; a blob the store already holds (another
 * tenant's, maybe) counts only when the archive's member hashes to it. Indexes are resolved to one platform
 * (linux/amd64 unless told otherwise).
 *
 * Errors name the archive's entries, never host paths (the archive is a tenant's upload, kept in
 * a host temp dir). With a RoomCheck an image is refused before its layers are stored when the
 * disk cannot hold them, as a pull is.
 */
import { createReadStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { processTempDir } from '../../core/temp-dirs.js';
import tar from 'tar-stream';
import { DataLoss, Internal, InvalidArgument, NimbusError, ResourceExhausted } from '../../core/errors.js';
import { digestFile } from '../../core/stream-digest.js';
import { isDigest } from '../../core/image-reference.js';
import type { ContentInfo, ContentStore } from '../content/content-store.js';
import type { RoomCheck } from '../content/disk-space.js';
import {
  MT,
  isIndex,
  ociLayerType,
  platformMatches,
  platformString,
  sniffCompression,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
} from './media-types.js';
import { digestOf, fileBytes } from '../content/content-store.js';

export interface ImportedImage {
  /** From io.containerd.image.name / org.opencontainers.image.ref.name (OCI layout) or RepoTags (docker save). */
  name?: string;
  manifestDigest: string;
  manifest: ImageManifest;
  configDigest: string;
  config: ImageConfig & { rootfs?: { type: string; diff_ids: string[] } };
  layers: Descriptor[];
}

export interface ImportOptions {
  platform?: { os: string; architecture: string; variant?: string };
  /** Refuse an image before its blobs are stored when the disk cannot hold them. */
  room?: RoomCheck;
}

const MAX_MEMBER_JSON = 4 * 1024 * 1024;
/** Images (names) one archive may hold: `docker save` of a whole host is far below it. */
export const MAX_ARCHIVE_IMAGES = 1000;
const MAX_LINK_HOPS = 16;
async function* once(b: Buffer) {
  yield b;
}

interface Member {
  file: string;
  size: number;
}

const clean = (name: string) => posix.normalize(name).replace(/^(\.\/)+/, '').replace(/\/$/, '');

/**
 * What a tenant may see of a failure: system errors carry the host paths of the upload and of
 * its temp copies, so they become a typed error naming the step and the errno code only.
 */
function importFailure(e: unknown, step: string): NimbusError {
  if (e instanceof NimbusError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new ResourceExhausted(`no space left on the host while ${step}`, undefined, { cause: e });
  if (typeof (e as NodeJS.ErrnoException).syscall === 'string') {
    return new Internal(`image import failed while ${step} (${code ?? 'system error'})`, undefined, { cause: e });
  }
  // the archive's own malformation (a tar-stream parse error, a wrong type in a JSON document): no path in it
  return new InvalidArgument(`the image archive is malformed (${step}): ${e instanceof Error ? e.message : String(e)}`, undefined, { cause: e });
}

/**
 * Extract regular-file members into a private temp dir, each under a counter
 * (never under the member's own path). Symlinks and hard links between
 * members are resolved to the file they name, inside the archive only.
 */
async function unpackMembers(tarPath: string, dir: string): Promise<Map<string, Member>> {
  const files = new Map<string, Member>();
  const links = new Map<string, { target: string; hard: boolean }>();
  const extract = tar.extract();
  let n = 0;
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const name = clean(header.name);
      const skip = () => {
        stream.on('end', () => next());
        stream.resume();
      };
      if (name.startsWith('..') || name.startsWith('/')) return skip();
      if ((header.type === 'symlink' || header.type === 'link') && header.linkname) {
        links.set(name, { target: header.linkname, hard: header.type === 'link' });
        return skip();
      }
      if (header.type !== 'file' && header.type !== 'contiguous-file') return skip();
      const file = join(dir, String(n++));
      void (async () => {
        const fh = await open(file, 'w', 0o600);
        let size = 0;
        try {
          for await (const chunk of stream as AsyncIterable<Buffer>) {
            size += chunk.length;
            await fh.write(chunk);
          }
        } finally {
          await fh.close();
        }
        files.set(name, { file, size });
        next();
      })().catch((e: unknown) => {
        extract.destroy(e as Error);
        reject(e);
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  const input = createReadStream(tarPath);
  input.on('error', (e) => extract.destroy(e));
  input.pipe(extract as unknown as NodeJS.WritableStream);
  try {
    await done;
  } catch (e) {
    throw importFailure(e, 'reading the image archive');
  }
  for (const [name, link] of links) {
    let target = name;
    let l: { target: string; hard: boolean } | undefined = link;
    for (let hop = 0; l && hop < MAX_LINK_HOPS; hop++) {
      // Hard link names are archive paths; symlink targets are relative to the link's directory.
      target = clean(l.hard ? l.target : posix.join(posix.dirname(target), l.target));
      l = links.get(target);
    }
    const f = !target.startsWith('..') && !target.startsWith('/') ? files.get(target) : undefined;
    if (f && !files.has(name)) files.set(name, f);
  }
  return files;
}

function checkDescriptor(d: unknown, what: string): asserts d is Descriptor {
  const x = d as Partial<Descriptor> | null;
  if (!x || typeof x !== 'object' || !isDigest(x.digest)) {
    throw new InvalidArgument(`${what}: malformed or unsupported digest ${JSON.stringify(x?.digest)}`);
  }
  if (typeof x.size !== 'number' || !Number.isSafeInteger(x.size) || x.size < 0) throw new DataLoss(`${what}: descriptor ${x.digest} has no valid size`);
}

export async function importImageArchive(tarPath: string, store: ContentStore, opts: ImportOptions = {}): Promise<ImportedImage[]> {
  const dir = await processTempDir('import').catch((e: unknown) => {
    throw importFailure(e, 'preparing the import');
  });
  try {
    return await importMembers(tarPath, dir, store, opts);
  } catch (e) {
    throw importFailure(e, 'storing the image');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function importMembers(tarPath: string, dir: string, store: ContentStore, opts: ImportOptions): Promise<ImportedImage[]> {
  const want = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const members = await unpackMembers(tarPath, dir);
  // An archive may name one document or blob any number of times (an index listing one manifest thousands of
  // times, a manifest one layer): each is read, hashed and stored once, not once per mention.
  const parsed = new Map<string, Promise<unknown>>();
  const readJson = <T>(name: string): Promise<T> => {
    let p = parsed.get(name);
    if (!p) parsed.set(name, (p = parseMember(name)));
    return p as Promise<T>;
  };
  const parseMember = async (name: string): Promise<unknown> => {
    const m = members.get(name);
    if (!m) throw new DataLoss(`image archive has no ${name}`);
    if (m.size > MAX_MEMBER_JSON) throw new InvalidArgument(`${name} in the image archive is larger than ${MAX_MEMBER_JSON} bytes`);
    const fh = await open(m.file, 'r');
    try {
      return JSON.parse((await fh.readFile()).toString('utf8')) as unknown;
    } catch (e) {
      if (e instanceof SyntaxError) throw new DataLoss(`${name} in the image archive is not valid JSON`);
      throw e;
    } finally {
      await fh.close();
    }
  };
  const hashed = new Map<Member, Promise<{ digest: string; head: Buffer }>>();
  const hashFile = (m: Member): Promise<{ digest: string; head: Buffer }> => {
    let p = hashed.get(m);
    if (!p) hashed.set(m, (p = hashMember(m)));
    return p;
  };
  const hashMember = async (m: Member): Promise<{ digest: string; head: Buffer }> => {
    let head: Buffer | undefined;
    const { digest } = await digestFile(m.file, (first: Buffer) => (head = Buffer.from(first.subarray(0, 8))));
    return { digest, head: head ?? Buffer.alloc(0) };
  };
  /**
   * A member whose digest nothing promises, stored under the one its bytes hash to as they are
   * copied (read once; its first bytes kept to tell its compression). `check` sees the digest
   * and those bytes before anything is stored: what it throws leaves nothing. Once per member;
   * a later use only checks.
   */
  const computed = new Map<Member, Promise<{ info: ContentInfo; head: Buffer }>>();
  const storeComputed = async (m: Member, check: (digest: string, head: Buffer) => void): Promise<{ info: ContentInfo; head: Buffer }> => {
    const known = computed.get(m);
    if (known) {
      const done = await known;
      check(done.info.digest, done.head);
      return done;
    }
    let head: Buffer | undefined;
    async function* bytes() {
      for await (const chunk of fileBytes(m.file)) {
        head ??= Buffer.from(chunk.subarray(0, 8));
        yield chunk;
      }
    }
    const p = store.ingestComputed(bytes(), { size: m.size, check: (d) => check(d, head ?? Buffer.alloc(0)) }).then((info) => ({ info, head: head ?? Buffer.alloc(0) }));
    computed.set(m, p);
    return p;
  };
  /** Refuse an image whose blobs (those not stored yet) and unpacked layers cannot fit. */
  const ensureRoom = async (config: { digest?: string; size: number }, layers: { digest?: string; size: number }[], what: string) => {
    if (!opts.room) return;
    const need = { content: 0, snapshots: 0 };
    const seen = new Set<string>();
    for (const [i, d] of [config, ...layers].entries()) {
      if (d.digest !== undefined && (seen.has(d.digest) || (await store.info(d.digest)))) continue;
      if (d.digest !== undefined) seen.add(d.digest);
      need.content += d.size;
      if (i > 0) need.snapshots += d.size;
    }
    await opts.room.ensureRoom(need, what);
  };
  /** What this import stored or found stored, by member and the digest it was taken as: each once. */
  const ingested = new Map<string, ContentInfo>();
  /**
   * Ingest a member; with an expected digest (and size) the store verifies it, otherwise the digest is computed.
   * A blob already in the store is not read again by it, and proves nothing of this archive (it may be another
   * tenant's): the member is then hashed, or naming a digest would be enough to take that image's content.
   */
  const ingestFile = async (name: string, expect?: { digest: string; size?: number }) => {
    const m = members.get(name);
    if (!m) throw new DataLoss(`image archive is missing ${name}${expect ? ` (${expect.digest})` : ''}`);
    if (!expect) return (await storeComputed(m, () => undefined)).info;
    const { digest } = expect;
    const size = expect.size ?? m.size;
    const key = `${digest} ${name}`;
    const known = ingested.get(key);
    if (known?.size === size) return known;
    let read = false;
    async function* bytes() {
      yield* fileBytes(m!.file);
      read = true;
    }
    const proven = async () => {
      const got = (await hashFile(m)).digest;
      if (got !== digest) throw new DataLoss(`${name} in the image archive: digest mismatch: expected ${digest}, got ${got}`);
    };
    let info: ContentInfo;
    try {
      info = await store.ingest({ digest, size }, bytes());
    } catch (e) {
      if (!(e instanceof DataLoss)) throw e;
      // what the store says of a blob it holds (its size) is not told about a member that is not that blob
      if (!read) await proven();
      throw new DataLoss(`${name} in the image archive: ${e.message}`, undefined, { cause: e });
    }
    if (!read) await proven();
    ingested.set(key, info);
    return info;
  };

  const out: ImportedImage[] = [];
  const add = (img: ImportedImage) => {
    if (out.length >= MAX_ARCHIVE_IMAGES) throw new InvalidArgument(`the image archive names more than ${MAX_ARCHIVE_IMAGES} images`);
    out.push(img);
  };

  if (members.has('index.json') && (members.has('oci-layout') || !members.has('manifest.json'))) {
    const blobName = (d: string) => `blobs/${d.replace(':', '/')}`;
    const index = await readJson<ImageIndex>('index.json');
    if (!Array.isArray(index.manifests)) throw new DataLoss('index.json in the image archive has no manifests list');
    type Resolved = Omit<ImportedImage, 'name'>;
    const resolved = new Map<string, Promise<Resolved>>();
    /** The image a descriptor leads to, once per digest. */
    const resolve = (desc: Descriptor, name: string | undefined, depth: number): Promise<Resolved> => {
      let p = resolved.get(desc.digest);
      if (!p) resolved.set(desc.digest, (p = visit(desc, name, depth)));
      return p;
    };
    const visit = async (desc: Descriptor, name: string | undefined, depth: number): Promise<Resolved> => {
      await ingestFile(blobName(desc.digest), desc);
      const doc = await readJson<ImageIndex | ImageManifest>(blobName(desc.digest));
      if (isIndex(desc.mediaType, doc)) {
        if (depth > 2) throw new InvalidArgument(`image archive: indexes nested too deep at ${desc.digest}`);
        const idx = doc as ImageIndex;
        const match = (idx.manifests ?? []).find((m) => platformMatches(m.platform, want));
        if (!match) {
          const avail = (idx.manifests ?? []).map((m) => platformString(m.platform)).join(', ');
          throw new InvalidArgument(`image archive index ${desc.digest} has no ${platformString(want)} image (available: ${avail || 'none'})`);
        }
        checkDescriptor(match, `image archive index ${desc.digest}`);
        return resolve(match, name, depth + 1);
      }
      const manifest = doc as ImageManifest;
      if (!manifest.config || !Array.isArray(manifest.layers)) throw new DataLoss(`image archive manifest ${desc.digest} has no config or layers`);
      checkDescriptor(manifest.config, `image archive manifest ${desc.digest} config`);
      manifest.layers.forEach((l, i) => checkDescriptor(l, `image archive manifest ${desc.digest} layer ${i}`));
      await ensureRoom(manifest.config, manifest.layers, `importing image ${name ?? desc.digest}`);
      await ingestFile(blobName(manifest.config.digest), manifest.config);
      for (const l of manifest.layers) await ingestFile(blobName(l.digest), l);
      const config = await readJson<ImportedImage['config']>(blobName(manifest.config.digest));
      const diffIds = config.rootfs?.diff_ids;
      if (Array.isArray(diffIds) && diffIds.length !== manifest.layers.length) {
        throw new DataLoss(`image archive manifest ${desc.digest}: config lists ${diffIds.length} diff_ids for ${manifest.layers.length} layers`);
      }
      return { manifestDigest: desc.digest, manifest, configDigest: manifest.config.digest, config, layers: manifest.layers };
    };
    for (const [i, m] of index.manifests.entries()) {
      checkDescriptor(m, `index.json entry ${i}`);
      // A top-level entry for another platform is not this host's image.
      if (m.platform && !platformMatches(m.platform, want)) continue;
      const name = m.annotations?.['io.containerd.image.name'] ?? m.annotations?.['org.opencontainers.image.ref.name'];
      add({ ...(name ? { name } : {}), ...(await resolve(m, name, 0)) });
    }
    if (!out.length) throw new InvalidArgument(`image archive has no ${platformString(want)} image`);
    return out;
  }

  if (members.has('manifest.json')) {
    type SaveEntry = { Config: string; RepoTags?: string[] | null; Layers: string[] };
    const entries = await readJson<SaveEntry[]>('manifest.json');
    if (!Array.isArray(entries) || !entries.length) throw new DataLoss('manifest.json in the image archive lists no images');
    /** The digest a member's name promises: blobs/sha256/<hex> or <hex>.json (docker save's config naming). */
    const digestFromName = (name: string): string | undefined => {
      const m = /^(?:blobs\/sha256\/([0-9a-f]{64})|([0-9a-f]{64})\.json)$/.exec(name);
      const hex = m?.[1] ?? m?.[2];
      return hex ? `sha256:${hex}` : undefined;
    };
    for (const e of entries) {
      if (typeof e?.Config !== 'string' || !Array.isArray(e.Layers)) throw new DataLoss('manifest.json entry has no Config or Layers');
      const cfgMember = members.get(clean(e.Config));
      if (!cfgMember) throw new DataLoss(`image archive is missing ${e.Config}`);
      const named = digestFromName(clean(e.Config));
      const cfg = await ingestFile(clean(e.Config), named ? { digest: named, size: cfgMember.size } : undefined);
      const config = await readJson<ImportedImage['config']>(clean(e.Config));
      const diffIds = config.rootfs?.diff_ids;
      if (Array.isArray(diffIds) && diffIds.length !== e.Layers.length) {
        throw new DataLoss(`image archive: config ${e.Config} lists ${diffIds.length} diff_ids for ${e.Layers.length} layers`);
      }
      // digests are computed below: every listed layer counts (members shared by name count once)
      const layerMembers = [...new Set(e.Layers.map((l) => members.get(clean(l))).filter((m): m is Member => m !== undefined))];
      await ensureRoom({ size: 0 }, layerMembers, `importing image ${e.RepoTags?.[0] ?? e.Config}`);
      const layers: Descriptor[] = [];
      for (const [i, l] of e.Layers.entries()) {
        const name = clean(l);
        const m = members.get(name);
        if (!m) throw new DataLoss(`image archive is missing layer ${l}`);
        // what its name and the config promise is checked before it is stored
        const promised = digestFromName(name);
        const diffId = diffIds?.[i];
        const { info, head } = await storeComputed(m, (digest, first) => {
          if (promised && promised !== digest) throw new DataLoss(`${l} in the image archive: digest mismatch: expected ${promised}, got ${digest}`);
          if (sniffCompression(first) === 'none' && diffId !== undefined && diffId !== digest) {
            throw new DataLoss(`${l} in the image archive: digest mismatch: config diff_id is ${diffId}, layer is ${digest}`);
          }
        });
        layers.push({ mediaType: ociLayerType(sniffCompression(head)), digest: info.digest, size: info.size });
      }
      const manifest: ImageManifest = {
        schemaVersion: 2,
        mediaType: MT.ociManifest,
        config: { mediaType: MT.ociConfig, digest: cfg.digest, size: cfg.size },
        layers,
      };
      const body = Buffer.from(JSON.stringify(manifest));
      const manifestDigest = digestOf(body);
      await store.ingest({ digest: manifestDigest, size: body.length }, once(body));
      const tags = e.RepoTags?.length ? e.RepoTags : [undefined];
      for (const name of tags) {
        add({ ...(name ? { name } : {}), manifestDigest, manifest, configDigest: cfg.digest, config, layers });
      }
    }
    return out;
  }
  throw new InvalidArgument('not an image archive: expected an OCI image layout (oci-layout, index.json) or a docker save tar (manifest.json)');
}
