import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { DataLoss } from '../../core/errors.js';
import { StreamDigest } from '../../core/stream-digest.js';

/** "sha256:<64 hex>" — the only algorithm accepted for now. */
export type Digest = string;

/** The digest of bytes held in memory (a manifest, a config, a small blob). */
export function digestOf(b: Buffer): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/**
 * A file's bytes for ingest, opened at the first read. An ingest of a blob already stored stops its source
 * unread, and a stream's iterator stopped before its first read does not close the stream: every such ingest
 * of a createReadStream kept a file open (an import naming one layer thousands of times ran the agent out of
 * descriptors, and the stream's EMFILE, with no listener, ended the process).
 */
export async function* fileBytes(path: string): AsyncGenerator<Buffer> {
  yield* createReadStream(path) as AsyncIterable<Buffer>;
}

export interface ContentInfo {
  digest: Digest;
  size: number;
}

export interface ContentReader {
  /** undefined when absent. */
  info(digest: Digest): Promise<ContentInfo | undefined>;
  readBlob(digest: Digest): Promise<Buffer>;
  openRead(digest: Digest): Readable;
  /** Path of the blob on disk (blobs are immutable once committed). */
  blobPath(digest: Digest): string;
}

export interface ContentIngester {
  /**
   * Stream bytes in; the digest (and size, when given) is verified before the
   * blob becomes visible. On mismatch nothing is stored and DataLoss is thrown.
   */
  ingest(expected: { digest: Digest; size?: number }, source: AsyncIterable<Uint8Array>): Promise<ContentInfo>;
}

/**
 * An ingester that keeps nothing: it reads the whole source and checks its size and digest
 * (DataLoss otherwise). What a pull uses to make a registry prove it holds a blob the host already
 * has, before the caller may use it (pull.ts, mayReuse).
 */
export const possessionCheck: ContentIngester = {
  async ingest(expected, source) {
    const hash = new StreamDigest(expected.size); // on the digest thread past a megabyte
    let size = 0;
    let digest: Digest;
    try {
      for await (const chunk of source) {
        size += chunk.length;
        if (expected.size !== undefined && size > expected.size) throw new DataLoss(`blob ${expected.digest}: more than the ${expected.size} bytes expected`);
        hash.update(chunk);
        if (hash.pending) await hash.drained();
      }
      digest = (await hash.digest()) as Digest;
    } finally {
      hash.dispose();
    }
    if (expected.size !== undefined && size !== expected.size) throw new DataLoss(`blob ${expected.digest}: ${size} bytes, ${expected.size} expected`);
    if (digest !== expected.digest) throw new DataLoss(`blob ${expected.digest}: content digest is ${digest}`);
    return { digest, size };
  },
};

export interface ContentStore extends ContentReader, ContentIngester {
  /**
   * Stream bytes in whose digest is not known yet (a local file being imported): stored under the
   * digest they hash to, read once. An existing blob of that digest is kept and the copy dropped.
   * With `size`, another length is DataLoss and nothing is stored; `check` sees the digest before
   * anything is stored, and what it throws leaves nothing stored either (an archive's promise of a
   * digest the bytes do not keep).
   */
  ingestComputed(source: AsyncIterable<Uint8Array>, expected?: { size?: number; check?: (digest: Digest) => void }): Promise<ContentInfo>;
  delete(digest: Digest): Promise<void>;
  list(): Promise<ContentInfo[]>;
}
