/**
 * The agent's small state files (metadata, saved requests, a container's /etc files and start
 * script: a few KB each).
 *
 * Asynchronous on purpose. Written synchronously they cost less CPU when the disk is idle
 * (~130 µs for a write, rename and read here, against ~390 µs of CPU across threads through
 * fs.promises), but under a 200-container burst this host's ext4 took its journal's time over
 * every open(O_TRUNC) and rename: a profile had 45 % of the daemon's event loop blocked in them.
 * In the thread pool the same waits hold up a pool thread, not every request.
 *
 * Measured again on 2026-12-05, after the agent's directories were spread over ext4's block
 * groups (spread-directories.ts): through fs.promises a `stat` costs ~30 µs of CPU, a small read
 * ~140 µs; done directly, 3 and 6 µs. Every file operation of the daemon made synchronous took
 * ~7 % off a back-to-back `run --rm` and 8–13 % off a cold first burst of 200, and added ~8 % to a
 * warm repeated burst, whose event loop is its bottleneck. Only the reads, stats and removals made
 * synchronous (a container's ~230 operations through the pool down to ~60): no change measured
 * in either. The gain is the request path's writes, and so is the cost: kept asynchronous (bench log).
 */
import { rename, rm, unlink, writeFile } from 'node:fs/promises';

/** Replace a file's contents in place (truncated, not replaced: a bind mount of it keeps its inode). */
export async function writeStateFile(file: string, data: string, mode = 0o644): Promise<void> {
  await writeFile(file, data, { mode });
}

/** Replace a file atomically: readers see the old contents or the new, never a part. */
export async function replaceStateFile(file: string, data: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Remove a file if it is there. An unlink, not `rm(..., { force: true })`: fs.promises.rm goes
 * through rimraf, an lstat and a Stats object first (~0.2 ms of the event loop each in a
 * 200-container burst, for a file known not to be a directory).
 */
export async function removeStateFile(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
