/**
 * The file thread (file-thread.ts): each batch's operations done synchronously, in the order
 * asked, and answered in one reply.
 */
import { closeSync, constants, ftruncateSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { distinctMountsUnderSync } from './mount-table.js';
import type { FileOp, FileOpReply, FileThreadReply, FileThreadRequest } from './file-thread.js';

const port = parentPort;
if (!port) throw new Error('file-thread-worker runs as a worker thread');

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

function run(op: FileOp): FileOpReply {
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

port.on('message', (batch: FileThreadRequest) => {
  const replies: FileThreadReply = batch.map(({ id, ...op }) => {
    try {
      return { id, ...run(op as FileOp) };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return { id, error: { message: err.message ?? String(e), ...(err.code ? { code: err.code } : {}) } };
    }
  });
  port.postMessage(replies);
});
port.postMessage('ready' satisfies FileThreadReply);
