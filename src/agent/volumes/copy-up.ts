/**
 * Docker's copy-up: a volume made for a container (named or anonymous, not `nocopy`) mounted
 * where the image has files (typically an image `VOLUME`) gets those files first, owners, modes,
 * xattrs and times kept, as dockerd does, before the container's process exists.
 *
 * The image is hostile (a tenant's layers). The container's snapshot is mounted aside, read-only,
 * with nothing running in it (no one can swap a path while it is walked); the path is resolved
 * inside that root (container-paths.ts: symlinks as the container would see them, never out of
 * it); the tree is written out by tree-tar.ts (a symlink is copied as a symlink, never followed)
 * and unpacked into the volume by apply-layer.ts (entries kept under the volume's directory, no
 * parent that is a symlink, O_NOFOLLOW|O_EXCL, hard links inside it, device nodes passed over,
 * size limits and the disk's reserve), the volume's filesystem bounding it too (ENOSPC). Only an
 * empty volume is filled: one that has files already keeps them (Docker's rule).
 *
 * The volume is made by this create, but another of the project's containers may mount it by name
 * meanwhile and be running: its process could replace a directory the copy made with a symlink to
 * a host path while the copy still writes under it (apply-layer checks a path, then uses it). So
 * the copy is unpacked beside the volume's directory, in its filesystem's root, which no container
 * mounts (volume-store.ts: containers get mnt/_data), and each top-level entry goes into place
 * whole by one rename, after which nothing here touches it.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readdir, rename, rm, rmdir, utimes } from 'node:fs/promises';
import path from 'node:path';
import { hasCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { UnpackRoom } from '../content/disk-space.js';
import { resolveContainerPath } from '../copy/container-paths.js';
import { applyLayer } from '../layers/apply-layer.js';
import { DEFAULT_LAYER_MAX_BYTES } from '../layers/unpack-limits.js';
import { exportTree } from '../move/tree-tar.js';
import { mountAll, unmountAll } from '../snapshots/mount.js';
import type { MountSpec } from '../snapshots/snapshotter.js';

const log = logger('agent.copy-up');

export interface CopyUpParts {
  /** Where the snapshot is mounted aside (a directory of its own per call). */
  scratchDir: string;
  room(): UnpackRoom;
  /** Most bytes of files one volume takes from the image; absent: the per-layer unpack limit. */
  maxBytes?: number;
}

/**
 * Mount points a crashed agent left in the scratch directory: unmounted and removed (rmdir only:
 * were an unmount to fail, the image's files beneath stay untouched). Run once per process,
 * before its first copy-up (LocalContainerHost), so it never takes a mount from under one of its own.
 */
export async function sweepCopyUpLeftovers(scratchDir: string): Promise<void> {
  const left = await readdir(scratchDir).catch(() => [] as string[]);
  for (const d of left) {
    const dir = path.join(scratchDir, d);
    await unmountAll(dir).then(() => rmdir(dir)).catch((e: unknown) => log.warn('a copy-up mount point left by an earlier run stays', { dir, error: String(e) }));
  }
}

/** Fill each volume (its directory on this host) with the image's files at its target, where it is empty. */
export async function copyUpIntoVolumes(rootfs: readonly MountSpec[], volumes: ReadonlyArray<{ target: string; dir: string }>, parts: CopyUpParts): Promise<void> {
  const empty: Array<{ target: string; dir: string }> = [];
  for (const v of volumes) if ((await readdir(v.dir)).length === 0) empty.push(v);
  if (!empty.length) return;
  await mkdir(parts.scratchDir, { recursive: true, mode: 0o700 });
  const root = path.join(parts.scratchDir, `copy-up-${randomBytes(6).toString('hex')}`);
  await mkdir(root, { mode: 0o700 });
  try {
    // read-only: the walk can write nothing into the container's layer, whatever goes wrong
    await mountAll(rootfs.map((m) => ({ ...m, options: [...m.options.filter((o) => o !== 'rw'), 'ro'] })), root);
    try {
      for (const v of empty) await copyOne(root, v, parts);
    } finally {
      await unmountAll(root);
    }
  } finally {
    // rmdir, never a recursive rm: were the unmount to fail, the image's files stay untouched
    await rmdir(root).catch((e: unknown) => log.warn('a copy-up mount point stays', { dir: root, error: String(e) }));
  }
}

async function copyOne(root: string, v: { target: string; dir: string }, parts: CopyUpParts): Promise<void> {
  let source: string;
  try {
    // followLast: a VOLUME path that is a symlink in the image is its target, resolved inside the root
    const r = resolveContainerPath(root, v.target, { followLast: true, mountPoints: [] });
    if (!r.stat?.isDirectory()) return; // nothing there, or not a directory: the volume starts empty (dockerd too)
    source = r.hostPath;
  } catch (e) {
    if (hasCode(e, 'NotFound') || hasCode(e, 'InvalidArgument')) return; // a component missing or not a directory: nothing to copy
    throw e;
  }
  const max = parts.maxBytes ?? DEFAULT_LAYER_MAX_BYTES;
  // beside the volume's directory, on its filesystem (a rename moves it), where no container looks (see the file comment)
  const staging = path.join(path.dirname(v.dir), `.copy-up-${randomBytes(6).toString('hex')}`);
  await mkdir(staging, { mode: 0o700 });
  try {
    const out = await applyLayer(staging, exportTree(source, { kind: 'plain', rootName: '.', whiteoutNames: 'keep' }), {
      mediaType: 'application/x-tar',
      mode: 'native',
      whiteouts: 'literal',
      // the image's own files: its setuid programs are as the image made them (dockerd copies them too)
      allowSetuid: true,
      devices: 'skip', // a volume is mounted nodev: a device node there would be of no use
      fifos: 'allow',
      xattrs: true,
      digest: `the image's files at ${v.target.slice(0, 200)}`,
      limits: { maxUnpackedBytes: max, maxEntryBytes: max },
      room: parts.room(),
    });
    const top = await lstat(staging);
    // rename(2) does not follow the name it replaces; the volume's directory itself is not a container's to replace
    for (const name of await readdir(staging)) await rename(path.join(staging, name), path.join(v.dir, name));
    // the volume's root takes the directory's owner, mode and times (dockerd's copyOwnership)
    await chown(v.dir, top.uid, top.gid);
    await chmod(v.dir, top.mode & 0o7777);
    await utimes(v.dir, top.atime, top.mtime);
    log.debug('volume filled from the image', { target: v.target, entries: out.entries, bytes: out.unpackedBytes });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
