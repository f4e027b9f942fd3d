/**
 * Removing a directory tree in one hop to a worker thread (issue 18: back-to-back starts).
 *
 * `fs.promises.rm(dir, { recursive: true })` walks the tree in JavaScript on the main thread and
 * hands each lstat, readdir, unlink and rmdir to libuv's pool: a container's directory and its
 * snapshot took ~100 pool jobs per removal here, each a wake-up of a pool thread and another of
 * the main thread. The thread here removes a whole tree with `rmSync` for one message each way
 * (with the mount table's reads cut beside it, the daemon's CPU per back-to-back request fell
 * from 63.2 to 57.9 ms; bench log, twenty-seventh session).
 *
 * A FileThread of its own (file-thread.ts): trees removed in the order asked, so a large tree
 * (an image's layer) delays the ones behind it by its own time, but no state file's write. The thread ends after a quiet minute (it holds a V8 isolate); while
 * it is not running, a removal goes through `fs.promises.rm` as before and starts it for the
 * next ones, so no caller waits for a thread to start.
 */
import { rm } from 'node:fs/promises';
import { FileThread } from './file-thread.js';
import { mountsUnder } from './mount-table.js';

/** The thread ends after this long with nothing asked of it. */
const IDLE_EXIT_MS = 60_000;

const thread = new FileThread('tree removal', IDLE_EXIT_MS);

/** Start the removal thread ahead of the first removal (tests; otherwise the first removal starts it); resolves once it runs. */
export function startRemovalThread(): Promise<void> {
  return thread.whenRunning();
}

/** Remove a tree (absent is fine), on the removal thread when it runs. */
export async function removeTree(dir: string): Promise<void> {
  const asked = thread.ask({ op: 'removeTree', dir, unlessMounted: false });
  if (asked) await asked;
  else await rm(dir, { recursive: true, force: true });
}

/**
 * Remove a tree unless something is mounted at or below it: then nothing is removed and the
 * mount points are returned (deepest first). Removing through a mount would delete what it shows.
 */
export async function removeTreeUnlessMounted(dir: string): Promise<string[]> {
  const asked = thread.ask({ op: 'removeTree', dir, unlessMounted: true });
  if (asked) return (await asked).mounted ?? [];
  const left = await mountsUnder(dir);
  if (left.length === 0) await rm(dir, { recursive: true, force: true });
  return left;
}
