/**
 * Content-addressed blobs on local disk (containerd core/content):
 *   <root>/blobs/sha256/<hex>   committed, immutable
 *   <root>/ingest/<random>      in flight; renamed into place only after the digest matched
 *
 * Concurrent ingests of the same digest are safe: each writes its own temp
 * file, and rename(2) atomically replaces one verified copy with another
 * identical one, so readers never see a partial blob.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { DataLoss, InvalidArgument, NotFound, ResourceExhausted } from '../../core/errors.js';
import { isDigest } from '../../core/image-reference.js';
import { StreamDigest } from '../../core/stream-digest.js';
import type { ContentInfo, ContentStore, Digest } from './content-store.js';

const WRITE_BATCH_BYTES = 1024 ** 2;

export function assertDigest(d: string): void {
  if (!isDigest(d)) throw new InvalidArgument(`invalid digest "${d}": expected sha256:<64 lowercase hex>`);
}

/** fsync a directory so a rename into it survives a crash (best effort: some filesystems refuse). */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r').catch(() => undefined);
  if (!fh) return;
  try {
    await fh.sync().catch(() => undefined);
  } finally {
    await fh.close();
  }
}

/** A full disk is the host's condition, not a bug: a typed error naming the blob, never the store's path. */
function noSpace(e: unknown, digest: Digest): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return e;
  return new ResourceExhausted(`no space left in the content store for blob ${digest}`, { digest }, { cause: e });
}

/**
 * A blob is read back (a layer unpacked from the store, a blob sent to another host) in 1 MiB
 * reads, not createReadStream's 64 KiB: each read is a thread-pool round trip and a callback on
 * the event loop.
 */
const READ_CHUNK_BYTES = 1024 * 1024;

export class LocalContentStore implements ContentStore {
  constructor(private readonly root: string) {}

  blobPath(digest: Digest): string {
    assertDigest(digest);
    return join(this.root, 'blobs', 'sha256', digest.slice(7));
  }

  async info(digest: Digest): Promise<ContentInfo | undefined> {
    try {
      const st = await stat(this.blobPath(digest));
      return { digest, size: st.size };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  async readBlob(digest: Digest): Promise<Buffer> {
    try {
      return await readFile(this.blobPath(digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`blob ${digest} not in the content store`);
      throw e;
    }
  }

  openRead(digest: Digest): Readable {
    const p = this.blobPath(digest);
    if (!existsSync(p)) throw new NotFound(`blob ${digest} not in the content store`);
    return createReadStream(p, { highWaterMark: READ_CHUNK_BYTES });
  }

  async ingest(expected: { digest: Digest; size?: number }, source: AsyncIterable<Uint8Array>): Promise<ContentInfo> {
    assertDigest(expected.digest);
    const existing = await this.info(expected.digest);
    if (existing) {
      if (expected.size !== undefined && existing.size !== expected.size) {
        throw new DataLoss(`blob ${expected.digest}: size mismatch: expected ${expected.size}, stored ${existing.size}`);
      }
      // Already committed: stop the source instead of reading it to the end (it may be a network body).
      await source[Symbol.asyncIterator]().return?.();
      return existing;
    }
    return this.write(source, expected);
  }

  async ingestComputed(source: AsyncIterable<Uint8Array>, expected: { size?: number; check?: (digest: Digest) => void } = {}): Promise<ContentInfo> {
    return this.write(source, expected);
  }

  /**
   * Into a temp file while hashing, then checked against what was expected, synced and renamed to
   * the digest's path. Without an expected digest the blob takes the one computed.
   */
  private async write(source: AsyncIterable<Uint8Array>, expected: { digest?: Digest; size?: number; check?: (digest: Digest) => void }): Promise<ContentInfo> {
    const { digest, size, check } = expected;
    const what = digest ?? 'being imported';
    const ingestDir = join(this.root, 'ingest');
    await mkdir(ingestDir, { recursive: true });
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    const tmp = join(ingestDir, randomBytes(12).toString('hex'));
    const fh = await open(tmp, 'wx', 0o644).catch((e: unknown) => {
      throw noSpace(e, what);
    });
    // hashed off the main thread once past a megabyte (core/stream-digest.ts)
    const hash = new StreamDigest(size);
    let total = 0;
    // chunks are gathered into one write of WRITE_BATCH_BYTES: a thread-pool round trip per 64 KiB
    // network chunk cost more of the event loop than the hashing
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      const batch = pending;
      pending = [];
      pendingBytes = 0;
      let written = 0;
      const sum = batch.reduce((a, c) => a + c.length, 0);
      while (written < sum) {
        const r = await fh.writev(written === 0 ? batch : [Buffer.concat(batch).subarray(written)]);
        written += r.bytesWritten;
      }
    };
    try {
      for await (const chunk of source) {
        total += chunk.length;
        if (size !== undefined && total > size) throw new DataLoss(`blob ${what}: more than the expected ${size} bytes`);
        hash.update(chunk);
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= WRITE_BATCH_BYTES) await flush();
        if (hash.pending) await hash.drained();
      }
      await flush();
      const actual = (await hash.digest()) as Digest;
      if (digest !== undefined && actual !== digest) throw new DataLoss(`digest mismatch: expected ${digest}, got ${actual}`);
      if (size !== undefined && total !== size) throw new DataLoss(`blob ${digest ?? actual}: size mismatch: expected ${size}, got ${total}`);
      check?.(actual);
      if (digest === undefined && (await this.info(actual))) {
        // an import of content already here: the stored blob stays (blobs never change)
        await fh.close();
        await rm(tmp, { force: true });
        return { digest: actual, size: total };
      }
      await fh.sync();
      await fh.close();
      await rename(tmp, this.blobPath(actual));
      await syncDir(join(this.root, 'blobs', 'sha256'));
      return { digest: actual, size: total };
    } catch (e) {
      hash.dispose();
      await fh.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw noSpace(e, what);
    }
  }

  async delete(digest: Digest): Promise<void> {
    await rm(this.blobPath(digest), { force: true });
  }

  async list(): Promise<ContentInfo[]> {
    const dir = join(this.root, 'blobs', 'sha256');
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: ContentInfo[] = [];
    for (const n of names) {
      if (!/^[0-9a-f]{64}$/.test(n)) continue;
      const st = await stat(join(dir, n)).catch(() => undefined);
      if (st) out.push({ digest: `sha256:${n}`, size: st.size });
    }
    return out;
  }

  /** Remove ingests left by a crash (called on start). */
  async cleanIngest(): Promise<void> {
    await rm(join(this.root, 'ingest'), { recursive: true, force: true });
  }
}
