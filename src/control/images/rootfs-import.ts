/**
 * `docker import`: a rootfs tarball (plain or gzip) made into a one-layer image. The tarball is
 * not trusted here and not unpacked here: it is wrapped, as it is, in a `docker save` archive (the
 * layer, a config, manifest.json) that the image import then takes as any archive (agent
 * images/import.ts: digests checked; the layer unpacked by the hardened unpacker, which refuses
 * paths out of the root, device nodes, links out of the tree and oversize layers).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { InvalidArgument } from '../../core/errors.js';
import { digestPass } from '../../core/stream-digest.js';
import type { RuntimeConfig } from './changes.js';

export interface RootfsImageOptions {
  config: RuntimeConfig;
  /** The history entry's comment (docker import's --message; dockerd's "Imported from -" when none). */
  comment: string;
  architecture: string;
  now?: Date;
}

/** What the first bytes say the tarball is; the compressions docker import takes but Nimbus does not are refused by name. */
export async function sniffTarball(file: string): Promise<'gzip' | 'tar'> {
  const fh = await open(file, 'r');
  let head: Buffer;
  try {
    const b = Buffer.alloc(512);
    const { bytesRead } = await fh.read(b, 0, 512, 0);
    head = b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  if (head.length === 0) throw new InvalidArgument('the tarball is empty');
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  const other: Array<[string, number[]]> = [['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]], ['bzip2', [0x42, 0x5a, 0x68]], ['zstd', [0x28, 0xb5, 0x2f, 0xfd]]];
  for (const [name, magic] of other) {
    if (magic.every((m, i) => head[i] === m)) throw new InvalidArgument(`the tarball is ${name}-compressed: Nimbus imports plain or gzip tarballs (decompress it first)`);
  }
  if (head.length < 512 || head.subarray(257, 262).toString('latin1') !== 'ustar') throw new InvalidArgument('not a tar archive (plain or gzip-compressed) of a root filesystem');
  return 'tar';
}

/** The image config of a one-layer image. */
export function rootfsConfig(diffId: string, opts: RootfsImageOptions): Record<string, unknown> {
  const created = (opts.now ?? new Date()).toISOString();
  return {
    architecture: opts.architecture,
    os: 'linux',
    created,
    comment: opts.comment,
    config: opts.config,
    rootfs: { type: 'layers', diff_ids: [diffId] },
    history: [{ created, comment: opts.comment }],
  };
}

/**
 * The tarball at `upload` as a docker save archive at `out` (its layer uncompressed, so the
 * layer's digest is its diff_id). A gzip that does not decompress is InvalidArgument.
 */
export async function rootfsArchive(upload: string, out: string, opts: RootfsImageOptions): Promise<void> {
  const kind = await sniffTarball(upload);
  const layerFile = `${out}.layer`;
  try {
    const hash = digestPass(); // the diff id, on the digest thread: a rootfs is often gigabytes
    try {
      const sink = createWriteStream(layerFile, { mode: 0o600 });
      if (kind === 'gzip') await pipeline(createReadStream(upload), createGunzip(), hash, sink);
      else await pipeline(createReadStream(upload), hash, sink);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new InvalidArgument(`the tarball's gzip stream is broken: ${(e as Error).message}`);
      throw e;
    }
    const diffHex = (await hash.digest()).slice('sha256:'.length);
    const config = Buffer.from(JSON.stringify(rootfsConfig(`sha256:${diffHex}`, opts)));
    const cfgHex = createHash('sha256').update(config).digest('hex');
    const manifest = Buffer.from(JSON.stringify([{ Config: `${cfgHex}.json`, RepoTags: null, Layers: [`${diffHex}/layer.tar`] }]));
    const pack = tar.pack();
    const written = pipeline(pack, createWriteStream(out, { mode: 0o600 }));
    const add = (name: string, size: number, body: NodeJS.ReadableStream | Buffer) => new Promise<void>((resolve, reject) => {
      if (Buffer.isBuffer(body)) {
        pack.entry({ name, size, mode: 0o644 }, body, (e) => (e ? reject(e) : resolve()));
        return;
      }
      const entry = pack.entry({ name, size, mode: 0o644 }, (e) => (e ? reject(e) : resolve()));
      pipeline(body, entry).catch(reject);
    });
    await add(`${diffHex}/layer.tar`, (await stat(layerFile)).size, createReadStream(layerFile));
    await add(`${cfgHex}.json`, config.length, config);
    await add('manifest.json', manifest.length, manifest);
    pack.finalize();
    await written;
  } finally {
    await rm(layerFile, { force: true });
  }
}
