/**
 * A worker thread of the small-file writer (file-writer.ts): creates the files of a batch one
 * after another with synchronous calls, exactly as the extractor did on its main thread, and
 * answers with the first error (the rest of that batch is not written).
 */
import { closeSync, constants as FS, fchmodSync, fchownSync, futimesSync, openSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { FileBatch, FileBatchReply } from './file-writer.js';

function writeBatch(batch: FileBatch): FileBatchReply {
  const data = Buffer.from(batch.data);
  for (let i = 0; i < batch.files.length; i++) {
    const f = batch.files[i]!;
    try {
      // O_EXCL|O_NOFOLLOW: the extractor cleared the path and checked its parents; a name that
      // appeared since (or a symlink put there) fails here instead of being written through
      const fd = openSync(f.path, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
      try {
        const end = f.offset + f.length;
        let off = f.offset;
        while (off < end) off += writeSync(fd, data, off, end - off);
        if (f.uid >= 0) fchownSync(fd, f.uid, f.gid); // before chmod: chown clears setuid bits
        fchmodSync(fd, f.mode);
        if (f.mtimeMs !== null) futimesSync(fd, f.mtimeMs / 1000, f.mtimeMs / 1000);
      } finally {
        closeSync(fd);
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return { id: batch.id, error: { index: i, code: err.code ?? 'EIO', message: err.message } };
    }
  }
  return { id: batch.id };
}

parentPort?.on('message', (batch: FileBatch) => {
  parentPort!.postMessage(writeBatch(batch));
});
