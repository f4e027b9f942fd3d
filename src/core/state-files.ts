/**
 * The agent's small state files (metadata, saved requests, a container's /etc files and start
 * script: a few KB each), written synchronously.
 *
 * Why not fs.promises: each promise-based call costs ~100 µs of event-loop time in promise and
 * thread-pool machinery, several times what the syscalls themselves cost for a file this small
 * on a local disk (~10-40 µs here), and a warm container's create and start write about ten of
 * them (a profile of a 200-container burst had ~12 % of the daemon's main thread in them).
 * Not for large files, or for storage that can stall: those stay asynchronous.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';

/** Replace a file's contents in place (truncated, not replaced: a bind mount of it keeps its inode). */
export function writeStateFile(file: string, data: string, mode = 0o644): void {
  writeFileSync(file, data, { mode });
}

/** Replace a file atomically: readers see the old contents or the new, never a part. */
export function replaceStateFile(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
