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
 * - 2026-12-07 (thirty-fourth session): in a stream of requests the threads wait idle, and each
 *   post woke one (164 µs of the event loop a post on average, 22 posts a back-to-back request),
 *   then its reply woke the event loop. Up to INLINE_PER_WINDOW operations a window are now done
 *   in the caller's turn while the file's thread has nothing unanswered; a burst's go to the
 *   threads as before. Back to back (six pairs against the commit before): the daemon's CPU
 *   42.1 against 52.8 ms a request, the host's 113.6 against 130.3, p50 64.0 against 74.4 ms; the
 *   repeated burst of 200 the same (slowest rounds 981/895 against 935/887 ms).
 *
 * Before its thread runs (its start, ~50 ms) a call waits for it rather than doing the work itself:
 * two writes of one file must not pass each other (a file's operations all go to one thread, in
 * order). If it cannot start, fs.promises does the work.
 */
import { rename, rm, unlink, writeFile } from 'node:fs/promises';
import { runFileOp } from './file-ops.js';
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

/**
 * At most this many operations a window are done in the caller's turn, and only while the file's
 * thread has nothing unanswered (so none passes one of its own). Handing one to a thread that
 * waits idle costs here what doing it costs: the post wakes the thread and its reply wakes the
 * event loop (a back-to-back `run --rm` posted 22 messages a request, 164 µs of the event loop
 * each on average, measured in the daemon). A burst asks far more than this (a claim writes seven
 * files), and past the budget its operations go to the threads, batched, as before; the budget
 * bounds what the event loop spends on them (~16 × 20-360 µs a 20 ms window).
 */
const INLINE_PER_WINDOW = 16;
const INLINE_WINDOW_MS = 20;
const inline = { windowStart: -Infinity, used: 0 };
/** Callers waiting for a thread to start, whose operation is not yet asked of it (none may be passed). */
const awaitingStart = new Map<FileThread, number>();

function inlineNow(thread: FileThread): boolean {
  if (!thread.running || !thread.idle || (awaitingStart.get(thread) ?? 0) > 0) return false;
  const now = performance.now();
  if (now - inline.windowStart >= INLINE_WINDOW_MS) {
    inline.windowStart = now;
    inline.used = 0;
  }
  if (inline.used >= INLINE_PER_WINDOW) return false;
  inline.used++;
  return true;
}

/** true: done, here or on the file's thread; false: the thread could not run it (the caller does). */
async function onThread(op: Exclude<FileOp, { op: 'removeTree' }>): Promise<boolean> {
  const thread = threadFor(op.file);
  if (inlineNow(thread)) {
    runFileOp(op);
    return true;
  }
  if (!thread.running) {
    awaitingStart.set(thread, (awaitingStart.get(thread) ?? 0) + 1);
    try {
      await thread.whenRunning();
    } catch {
      return false;
    } finally {
      awaitingStart.set(thread, awaitingStart.get(thread)! - 1);
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
