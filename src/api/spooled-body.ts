/**
 * A request body written to a file of its own before it is used (an image archive, a rootfs
 * tarball, a disk image: the services read files, and a client that stops half-way must not
 * leave half a file in use), removed afterwards whatever happens. Mode 0600 in the daemon's
 * temporary directory.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { newId } from '../core/ids.js';

/** fn(file) with the body in `<tmpDir>/<stem>-<random><ext>`; the file is gone when it settles. */
export async function withSpooledBody<T>(body: Readable, tmpDir: string, stem: string, ext: string, fn: (file: string) => Promise<T>): Promise<T> {
  await mkdir(tmpDir, { recursive: true });
  const file = join(tmpDir, `${stem}-${newId().slice(0, 16)}${ext}`);
  try {
    await pipeline(body, createWriteStream(file, { mode: 0o600 }));
    return await fn(file);
  } finally {
    await rm(file, { force: true });
  }
}
