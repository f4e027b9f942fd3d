/**
 * The file operations a file thread does (file-thread.ts), as plain synchronous functions: the
 * thread runs each of a batch with runFileOp, and state-files.ts runs one in the caller's turn
 * when that is cheaper than the hop to the thread (see there).
 */
import { closeSync, constants, ftruncateSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { distinctMountsUnderSync } from './mount-table.js';
import type { FileOp, FileOpReply } from './file-thread.js';

/** The whole of `data` from offset 0, then the file cut to its length. */
function writeAll(fd: number, data: string): void {
  const buf = Buffer.from(data);
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off, off);
  ftruncateSync(fd, buf.length);
}

function writeFileAt(file: string, data: string, flags: number, mode: number): void {
  const fd = openSync(file, flags, mode);
  try {
    writeAll(fd, data);
  } finally {
    closeSync(fd);
  }
}

let tmpSeq = 0;

/** Do one operation here and now (the file thread does each of its batch with this; state-files.ts inline). */
export function runFileOp(op: FileOp): FileOpReply {
  switch (op.op) {
    case 'removeTree': {
      const mounted = op.unlessMounted ? distinctMountsUnderSync(op.dir) : [];
      if (mounted.length === 0) rmSync(op.dir, { recursive: true, force: true });
      return mounted.length ? { mounted } : {};
    }
    case 'write':
      // in place, not O_TRUNC: truncating frees the file's blocks and the write allocates them
      // again (~130 µs of CPU for a 2 KB file on this host's ext4, ~20 in place)
      writeFileAt(op.file, op.data, constants.O_WRONLY | constants.O_CREAT, op.mode);
      return {};
    case 'replace': {
      // the pid (interrupted-writes.ts removes a dead process's at the agent's start), a count and a few random characters: never an existing file
      const tmp = `${op.file}.${process.pid}.${(tmpSeq++).toString(36)}${Math.random().toString(36).slice(2, 6)}.tmp`;
      try {
        writeFileAt(tmp, op.data, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, op.mode);
        renameSync(tmp, op.file);
      } catch (e) {
        rmSync(tmp, { force: true });
        throw e;
      }
      return {};
    }
    case 'unlink':
      try {
        unlinkSync(op.file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      return {};
  }
}
