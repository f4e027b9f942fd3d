/**
 * A filesystem of a fixed size in a sparse file: what bounds a named volume (volumes/volume-store.ts)
 * and a sized writable layer (overlayfs.ts). Writes past the size fail with ENOSPC, inodes are
 * bounded with it, and the file takes no host disk until written.
 */
import { open, realpath } from 'node:fs/promises';
import { Internal, wholeForAdmins } from '../../core/errors.js';
import { redactAbsolutePaths } from '../../core/redaction.js';
import { run } from '../../core/exec.js';
import { logger } from '../../core/log.js';
import { readMountInfo } from './mount.js';

const log = logger('agent.ext4-image');

/** A host tool run on tenants' images: its words reach the tenant without host paths, administrators whole. */
async function hostTool(file: string, args: string[]): Promise<void> {
  const r = await run(file, args, { timeoutMs: 120_000 });
  if (r.code !== 0) {
    const whole = `${file} ${args.join(' ')} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim()}`;
    const message = redactAbsolutePaths(whole);
    throw new Internal(message, undefined, wholeForAdmins(message, whole));
  }
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
 * files on it are never devices or setuid programs to the host. The loop device then reads and
 * writes the image with O_DIRECT: buffered, each block sat in the page cache twice (the image's
 * filesystem and the host's) and sequential writes were 1.5x slower (docs/volumes.md). A host
 * filesystem without O_DIRECT (tmpfs) keeps it buffered.
 */
export async function mountExt4Image(file: string, mnt: string): Promise<void> {
  await hostTool('mount', ['-t', 'ext4', '-o', 'loop,nodev,nosuid', '--', file, mnt]);
  const real = await realpath(mnt);
  const dev = (await readMountInfo()).find((m) => m.mountPoint === real)?.source;
  if (!dev?.startsWith('/dev/loop')) return;
  const r = await run('losetup', ['--direct-io=on', dev], { timeoutMs: 30_000 });
  if (r.code !== 0) log.info('image stays buffered (no direct I/O on this host filesystem)', { mnt, error: r.stderr.trim() });
}
