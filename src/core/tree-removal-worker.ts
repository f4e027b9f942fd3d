/**
 * The tree removal thread (tree-removal.ts): each request is one synchronous `rmSync`, after a
 * look at the mount table when asked, and one reply.
 */
import { rmSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { distinctMountsUnderSync } from './mount-table.js';
import type { RemovalReply, RemovalRequest } from './tree-removal.js';

const port = parentPort;
if (!port) throw new Error('tree-removal-worker runs as a worker thread');

port.on('message', (req: RemovalRequest) => {
  let reply: RemovalReply;
  try {
    const mounted = req.unlessMounted ? distinctMountsUnderSync(req.dir) : [];
    if (mounted.length === 0) rmSync(req.dir, { recursive: true, force: true });
    reply = { id: req.id, ...(mounted.length ? { mounted } : {}) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    reply = { id: req.id, error: { message: err.message ?? String(e), ...(err.code ? { code: err.code } : {}) } };
  }
  port.postMessage(reply);
});
port.postMessage('ready');
