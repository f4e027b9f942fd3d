/**
 * Content carried between hosts by the control plane (containerd's content Reader/Writer by
 * digest, over the agent protocol): each blob is streamed from one host's readBlob into
 * another's writeBlob, never held whole here and never touching either host's files. The
 * target verifies size and digest before a blob counts (docs/image-transfer.md).
 */
import { eachLimited } from '../../core/each-limited.js';
import type { ImageHost } from '../../agent/agent.js';
import type { HostAgents } from '../compute/hosts.js';

/** Blobs in flight at once: layers stream in parallel, a few at a time. */
const CARRY_CONCURRENCY = 3;

/** The candidate holders other than the target, known to the directory, split by whether they answer (order kept, first preferred). */
export function sourcesFor(hosts: HostAgents, candidates: readonly string[], target: string): { up: string[]; down: string[] } {
  const up: string[] = [];
  const down: string[] = [];
  for (const name of new Set(candidates)) {
    if (name === target || !hosts.has(name)) continue;
    (hosts.isDown?.(name) ? down : up).push(name);
  }
  return { up, down };
}

/**
 * Each digest from source to target (the ones the target lacks: the caller asks it first). The
 * first failure stops new transfers and is thrown once those in flight have settled; whatever
 * the target was writing is dropped by it (a short or broken body fails its digest check).
 */
export async function carryBlobs(source: Pick<ImageHost, 'readBlob'>, target: Pick<ImageHost, 'writeBlob'>, digests: readonly string[]): Promise<{ blobs: number; bytes: number }> {
  let bytes = 0;
  await eachLimited([...digests], CARRY_CONCURRENCY, async (d) => {
    const blob = await source.readBlob(d);
    try {
      const written = await target.writeBlob(d, blob.size, blob.bytes);
      bytes += written.size;
    } finally {
      blob.bytes.destroy(); // a refused write leaves the source's stream unread: let go of it
    }
  });
  return { blobs: digests.length, bytes };
}
