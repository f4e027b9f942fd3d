import type { Writable } from 'node:stream';

/**
 * Resolves when a stream that refused a write can take more, or has gone (its reader gave up);
 * at once when it is already destroyed (its 'close' may have come and gone). One pair of
 * listeners, removed after.
 */
export function drainedOrClosed(dest: Writable): Promise<void> {
  if (dest.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      dest.off('drain', done);
      dest.off('close', done);
      resolve();
    };
    dest.once('drain', done);
    dest.once('close', done);
  });
}
