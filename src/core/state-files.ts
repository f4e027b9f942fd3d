/**
 * The agent's small state files (metadata, saved requests, a container's /etc files and start
 * script: a few KB each), written on a thread of their own (file-thread.ts).
 *
 * History, measured on this host (bench log):
 * - Written synchronously on the event loop they cost less CPU when the disk was idle (~130 µs
 *   for a write, rename and read, against ~390 µs across threads through fs.promises), but under
 *   a 200-container burst an ext4 with a journal held every open(O_TRUNC) and rename: a profile
 *   had 45 % of the event loop blocked in them. Through fs.promises such waits hold a pool thread,
 *   not every request; so they went asynchronous.
 * - 2026-12-05: every file operation of the daemon made synchronous took ~7 % off a back-to-back
 *   `run --rm` and 8–13 % off a cold first burst, and added ~8 % to a warm repeated burst.
 * - 2026-12-07 (thirty-first session): this host's ext4 (no journal, mounted `discard`) makes a
 *   file's blocks and inodes dear: overwriting a 2 KB file with O_TRUNC costs ~130 µs of CPU,
 *   writing it in place ~20, creating a file ~480, a write and rename ~360. And each fs.promises
 *   call is a hop through libuv's pool (a write was three: open, write, close), 130–220 µs of the
 *   event loop for a write and rename with 50 writers at once. Now every operation here is one
 *   request to a state-file thread, batched per turn of the event loop (8–65 µs of the event
 *   loop for the same), and writeStateFile writes in place.
 *
 * Before its thread runs (its start, ~50 ms) a call waits for it rather than doing the work itself:
 * two writes of one file must not pass each other (a file's operations all go to one thread, in
 * order). If it cannot start, fs.promises does the work.
 */
import { rename, rm, unlink, writeFile } from 'node:fs/promises';
import { FileThread, type FileOp } from './file-thread.js';

/**
 * Two threads, a file always on the same one (by its path): one thread's queue was on a burst's
 * path. A repeated burst of 200 warm claims, six runs alternating: median 887 ms with two, 1,112
 * with one (each thread ~8 MiB of resident memory).
 */
const threads = [new FileThread('state file'), new FileThread('state file')];

function threadFor(file: string): FileThread {
  let h = 0;
  for (let i = 0; i < file.length; i++) h = (h * 31 + file.charCodeAt(i)) | 0;
  return threads[(h >>> 0) % threads.length]!;
}

/** Start the state-file threads now (the agent at its start; otherwise the first write starts one and waits). */
export async function startStateFileThread(): Promise<void> {
  await Promise.all(threads.map((t) => t.whenRunning()));
}

/** true: done on the file's thread; false: the thread could not run it (the caller does). */
async function onThread(op: Exclude<FileOp, { op: 'removeTree' }>): Promise<boolean> {
  const thread = threadFor(op.file);
  if (!thread.running) {
    try {
      await thread.whenRunning();
    } catch {
      return false;
    }
  }
  const asked = thread.ask(op);
  if (!asked) return false;
  await asked;
  return true;
}

/**
 * Replace a file's contents in place: written over from its start, then cut to the new length
 * (not truncated first, not replaced: a bind mount of it keeps its inode). Not atomic: a reader
 * at the same moment may see part of the new contents over the old.
 */
export async function writeStateFile(file: string, data: string, mode = 0o644): Promise<void> {
  if (await onThread({ op: 'write', file, data, mode })) return;
  await writeFile(file, data, { mode });
}

/** Replace a file atomically: readers see the old contents or the new, never a part. */
export async function replaceStateFile(file: string, data: string): Promise<void> {
  if (await onThread({ op: 'replace', file, data, mode: 0o666 })) return;
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Remove a file if it is there (an unlink: no lstat and Stats first, as fs.promises.rm makes). */
export async function removeStateFile(file: string): Promise<void> {
  if (await onThread({ op: 'unlink', file })) return;
  try {
    await unlink(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
