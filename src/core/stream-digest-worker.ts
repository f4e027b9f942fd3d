/**
 * The thread of stream-digest.ts: one SHA-256 per open stream, fed the batches in the order they
 * were posted, from a slot of the ring it shares with the main thread (given back once hashed) or
 * from a buffer carried over when the ring was full.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import type { DigestReply, DigestRequest, DigestThreadData } from './stream-digest.js';

const { ring, batchBytes } = workerData as DigestThreadData;
const hashes = new Map<number, Hash>();
const reply = (r: DigestReply) => parentPort!.postMessage(r);

parentPort?.on('message', (m: DigestRequest) => {
  if (m.op === 'update') {
    let h = hashes.get(m.id);
    if (!h) hashes.set(m.id, (h = createHash('sha256')));
    if ('slot' in m) {
      h.update(new Uint8Array(ring, m.slot * batchBytes, m.length));
      reply({ op: 'hashed', slot: m.slot });
    } else h.update(new Uint8Array(m.data, 0, m.length));
  } else if (m.op === 'digest') {
    const h = hashes.get(m.id) ?? createHash('sha256');
    hashes.delete(m.id);
    reply({ op: 'digest', id: m.id, hex: h.digest('hex') });
  } else {
    hashes.delete(m.id);
  }
});
