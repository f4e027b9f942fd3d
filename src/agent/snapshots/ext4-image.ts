/**
 * A filesystem of a fixed size in a sparse file: what bounds a named volume (volumes/volume-store.ts)
 * and a sized writable layer (overlayfs.ts). Writes past the size fail with ENOSPC, inodes are
 * bounded with it, and the file takes no host disk until written.
 */
import { open, readdir, readFile, realpath } from 'node:fs/promises';
import { Internal } from '../../core/errors.js';
import { run } from '../../core/exec.js';
import { logger } from '../../core/log.js';
import { hostCommand, mountFailure, readMountInfo } from './mount.js';

const log = logger('agent.ext4-image');

/** A host tool run on tenants' images: its words reach the tenant without host paths, administrators whole (mountFailure). */
async function hostTool(program: 'mount' | 'losetup' | 'mkfs.ext4', args: string[]): Promise<string> {
  const r = await hostCommand(program, args);
  if (r.code !== 0) throw mountFailure(`${program} ${args.join(' ')} failed (exit ${r.code}): ${r.output.trim()}`);
  return r.output;
}

/**
 * A new image of sizeBytes at `file` (which must not exist): ftruncate allocates nothing, mkfs
 * writes only its metadata. No discard (it would write the whole image on some loop setups), no
 * reserved blocks (the size is all its users', root or not), metadata initialised lazily (a
 * create stays ~4 ms whatever the size).
 */
export async function makeExt4Image(file: string, sizeBytes: number, label: string): Promise<void> {
  const f = await open(file, 'wx', 0o600);
  try {
    await f.truncate(sizeBytes);
  } finally {
    await f.close();
  }
  await hostTool('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', '-L', label.slice(0, 16), file]);
}

/**
 * Mount the image at mnt (callers check that nothing is mounted there). nodev, nosuid: a tenant's
 * files on it are never devices or setuid programs to the host. The loop device reads and writes
 * the image with O_DIRECT: buffered, each block sat in the page cache twice (the image's filesystem
 * and the host's) and sequential writes were 1.5x slower (docs/volumes.md). It is attached with
 * direct I/O from the start (switching it on once mounted froze the device's queue: 22 ms a mount
 * against 6) and then let go (`losetup -d` of a mounted device marks it autoclear, as `mount -o
 * loop` does): it goes with the last unmount. A host filesystem without O_DIRECT (tmpfs) keeps it
 * buffered. The programs run from the host shell mounts use (no fork of the daemon).
 */
export async function mountExt4Image(file: string, mnt: string): Promise<void> {
  let dev: string;
  try {
    dev = await attach(file, ['--direct-io=on']);
  } catch (e) {
    // most often a host filesystem without O_DIRECT (tmpfs); anything else, the buffered attach says again
    log.info('a loop device with direct I/O could not be attached: trying a buffered one', { mnt, error: String(e) });
    dev = await attach(file, []);
  }
  try {
    await hostTool('mount', ['-t', 'ext4', '-o', 'nodev,nosuid', '--', dev, mnt]);
  } finally {
    // mounted: autoclear from now on; not mounted: detached at once
    const r = await hostCommand('losetup', ['-d', dev]);
    if (r.code !== 0) log.warn('a loop device could not be let go', { dev, error: r.output.trim() });
  }
}

/** The first free loop device attached to file. */
async function attach(file: string, opts: string[]): Promise<string> {
  const out = await hostTool('losetup', ['-f', '--show', ...opts, '--', file]);
  const dev = /\/dev\/loop\d+/.exec(out)?.[0];
  if (!dev) throw new Internal('losetup named no loop device', undefined, { adminMessage: `losetup -f --show ${file} said: ${out.trim()}` });
  return dev;
}

/**
 * Loop devices attached to an image under dir and mounted nowhere: what a process killed inside
 * mount(8), between its losetup and its mount, leaves (the device holds the image, unlinked or not).
 */
export async function detachStrayLoops(dir: string): Promise<string[]> {
  // the kernel names a backing file by its real path
  const real = await realpath(dir).catch(() => undefined);
  if (real === undefined) return [];
  const prefix = `${real}/`;
  const mounted = new Set((await readMountInfo()).map((m) => m.source));
  const detached: string[] = [];
  for (const dev of (await readdir('/sys/block').catch(() => [] as string[])).filter((n) => n.startsWith('loop'))) {
    const backing = (await readFile(`/sys/block/${dev}/loop/backing_file`, 'utf8').catch(() => '')).trim();
    if (!backing.startsWith(prefix) || mounted.has(`/dev/${dev}`)) continue;
    const r = await run('losetup', ['-d', `/dev/${dev}`], { timeoutMs: 30_000 });
    if (r.code === 0) detached.push(`/dev/${dev}`);
    else log.warn('a stray loop device could not be detached', { dev, backing, error: r.stderr.trim() });
  }
  return detached;
}
