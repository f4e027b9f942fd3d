import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';

/** "sha256:<64 hex>" — the only algorithm accepted for now. */
export type Digest = string;

/** The digest of bytes held in memory (a manifest, a config, a small blob). */
export function digestOf(b: Buffer): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
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

export interface ContentStore extends ContentReader, ContentIngester {
  delete(digest: Digest): Promise<void>;
  list(): Promise<ContentInfo[]>;
}
