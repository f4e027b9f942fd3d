/**
 * The file thread (file-thread.ts): each batch's operations done synchronously, in the order
 * asked, and answered in one reply.
 */
import { parentPort } from 'node:worker_threads';
import { runFileOp } from './file-ops.js';
import type { FileOp, FileThreadReply, FileThreadRequest } from './file-thread.js';

const port = parentPort;
if (!port) throw new Error('file-thread-worker runs as a worker thread');

port.on('message', (batch: FileThreadRequest) => {
  const replies: FileThreadReply = batch.map(({ id, ...op }) => {
    try {
      return { id, ...runFileOp(op as FileOp) };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return { id, error: { message: err.message ?? String(e), ...(err.code ? { code: err.code } : {}) } };
    }
  });
  port.postMessage(replies);
});
port.postMessage('ready' satisfies FileThreadReply);
