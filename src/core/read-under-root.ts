/**
 * A file read from a tree someone else writes (a container's rootfs, which its workload and its
 * image own; a secure container's, whose guest makes real symlinks on the host): every component
 * below `root` is opened without following a symlink, each directory through the descriptor of
 * the one before (`/proc/self/fd/N/name`), so a symlink anywhere on the way, or one swapped in
 * meanwhile, never leads the reader into the host's tree. Only a regular file is read (a FIFO or
 * a device would block or never end), and only up to a bound.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { InvalidArgument } from './errors.js';

/**
 * fn with the path of `rel`'s last component through the descriptor of its directory, every
 * directory from `root` down opened O_NOFOLLOW (`/proc/self/fd/N/name`); undefined when a
 * directory on the way is not there, is a symlink or is not a directory (nor is fn's own such
 * failure an error). The opens are made in the caller's turn: a few µs each, where each through
 * libuv's thread pool costs ~50 µs of CPU on a small host (a create reads /etc/passwd and
 * /etc/group this way: 16 round trips before).
 */
async function atUnderRoot<T>(root: string, rel: string, fn: (path: string) => T | undefined | Promise<T | undefined>): Promise<T | undefined> {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.includes('..')) throw new InvalidArgument(`not a path below the root: ${JSON.stringify(rel)}`);
  let dir: number;
  try {
    dir = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch {
    return undefined;
  }
  try {
    for (const p of parts.slice(0, -1)) {
      const next = openSync(`/proc/self/fd/${dir}/${p}`, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      closeSync(dir);
      dir = next;
    }
    return await fn(`/proc/self/fd/${dir}/${parts.at(-1)!}`);
  } catch (e) {
    // not there, a symlink (ELOOP), not a directory on the way
    if (['ENOENT', 'ELOOP', 'ENOTDIR', 'EACCES'].includes((e as NodeJS.ErrnoException).code ?? '')) return undefined;
    throw e;
  } finally {
    closeSync(dir);
  }
}

/** What the file holds, or undefined when there is no regular file there reachable without a symlink, or it is larger than maxBytes. */
export function readUnderRoot(root: string, rel: string, maxBytes: number): Promise<Buffer | undefined> {
  return atUnderRoot(root, rel, (file) => {
    // O_NONBLOCK: a FIFO planted there must not block the open (it is then refused as not a file)
    const f = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const st = fstatSync(f);
      if (!st.isFile() || st.size > maxBytes) return undefined;
      const buf = Buffer.alloc(Math.min(st.size, maxBytes));
      let at = 0;
      while (at < buf.length) {
        const bytesRead = readSync(f, buf, at, buf.length - at, at);
        if (bytesRead === 0) break;
        at += bytesRead;
      }
      return buf.subarray(0, at);
    } finally {
      closeSync(f);
    }
  });
}

/** Remove the name itself (a symlink is removed, never what it points to), reached as readUnderRoot reaches it; nothing there is no error. */
export async function removeUnderRoot(root: string, rel: string): Promise<void> {
  await atUnderRoot(root, rel, (name) => rm(name, { force: true }));
}
