/**
 * Container paths for `docker cp`, resolved from the host without leaving the container's rootfs.
 *
 * The path is the caller's and the tree is the tenant's: both are hostile. Every component is
 * resolved by rootfs-lookup.ts's resolveInRoot (symlinks followed as the container sees them: an
 * absolute target from the rootfs' root, '..' stopping there; never against the host's tree), and
 * a path that reaches a mount of the container (a volume, a tmpfs, /proc, the /etc files Nimbus
 * bind-mounts) is refused: the host's view of the rootfs shows what lies under a mount, not the
 * mount. The semantics are dockerd's (daemon/archive.go): for a stat and a read the parent is
 * resolved and the last component is not followed unless the path ends in '/' or '/.'; an
 * extraction point is followed to the end.
 *
 * The walk is safe only while nothing in the container changes the tree under it: the caller
 * holds the container frozen (or it has no process) for as long as it uses the answer.
 */
import { lstatSync, readlinkSync, type Stats } from 'node:fs';
import path from 'node:path';
import { Internal, InvalidArgument, NotFound, isNimbusError } from '../../core/errors.js';
import { resolveInRoot } from '../drivers/container/rootfs-lookup.js';
import type { ContainerPathStat } from '../agent.js';

export type { ContainerPathStat };

/** Longest path a caller may name (PATH_MAX). */
export const MAX_CONTAINER_PATH = 4096;

export interface ResolvedPath {
  /** Where it is on the host (inside the rootfs). */
  hostPath: string;
  /** The same, as a container path. */
  containerPath: string;
  /** The name dockerd gives it in a tar and a stat: the last component of the path asked for ('/' for the root). */
  name: string;
  /** lstat of hostPath; undefined when nothing is there. */
  stat: Stats | undefined;
}

const shown = (p: string) => JSON.stringify(p.length > 200 ? `${p.slice(0, 200)}…` : p);

/** The path as dockerd takes it: absolute, cleaned, and whether it ended in '/' or '/.' (then the last symlink is followed). */
export function cleanContainerPath(p: string): { abs: string; trailing: boolean } {
  if (p === '') throw new InvalidArgument('no path given');
  if (p.includes('\0')) throw new InvalidArgument('the path contains a NUL byte');
  if (Buffer.byteLength(p) > MAX_CONTAINER_PATH) throw new InvalidArgument(`the path is longer than ${MAX_CONTAINER_PATH} bytes`);
  const joined = path.posix.join('/', p);
  const abs = joined.length > 1 && joined.endsWith('/') ? joined.slice(0, -1) : joined;
  return { abs, trailing: p.endsWith('/') || p.endsWith('/.') || p === '.' };
}

/** A container path is on one of its mounts (or is one). */
export function onMount(mountPoints: readonly string[], containerPath: string): string | undefined {
  return mountPoints.find((d) => d !== '/' && (containerPath === d || containerPath.startsWith(`${d}/`)));
}

function toContainerPath(root: string, hostPath: string): string {
  const rel = path.relative(root, hostPath);
  return rel === '' ? '/' : `/${rel.split(path.sep).join('/')}`;
}

function refuseMount(asked: string, mount: string): never {
  throw new InvalidArgument(`${shown(asked)} is on the mount ${shown(mount)} of the container (a volume, tmpfs or a file Nimbus provides): copies do not reach into mounts on Nimbus; copy through the rootfs, or exec in the container`, { path: asked, mount });
}

/**
 * A system call's error on the way, without the host path it names (the caller is a tenant): a name
 * longer than 255 bytes, or a path under the rootfs' own longer than PATH_MAX, is theirs to fix.
 */
function withoutHostPath(p: string, e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (isNimbusError(e) || typeof code !== 'string') return e;
  if (code === 'ENAMETOOLONG') return new InvalidArgument(`${shown(p)}: a name in it, or the path under the container's root, is too long`, { path: p });
  return new Internal(`resolving ${shown(p)} in the container failed (${code})`, { path: p });
}

/**
 * Resolve p in root (see the file comment). followLast: an extraction point (every symlink
 * followed); otherwise only a trailing '/' or '/.' follows the last one. NotFound when a
 * component is missing, InvalidArgument when one is not a directory or the path is on a mount.
 */
export function resolveContainerPath(root: string, p: string, opts: { followLast: boolean; mountPoints: readonly string[] }): ResolvedPath {
  try {
    return resolveIn(root, p, opts);
  } catch (e) {
    throw withoutHostPath(p, e);
  }
}

function resolveIn(root: string, p: string, opts: { followLast: boolean; mountPoints: readonly string[] }): ResolvedPath {
  const { abs, trailing } = cleanContainerPath(p);
  const mounts = opts.mountPoints.map((m) => path.posix.join('/', m));
  let met: string | undefined;
  const opaque = (cp: string) => (met = onMount(mounts, cp)) !== undefined;
  const name = abs === '/' ? '/' : path.posix.basename(abs);
  const walk = (target: string) => {
    const r = resolveInRoot(root, target, '/', opaque);
    if (r.found === 'unknown') {
      // the first mount the walk met: named for the caller (it is a container path)
      refuseMount(p, met ?? target);
    }
    if (!r.found) {
      if (r.reason === 'no such file') throw new NotFound(`no such file or directory: ${shown(p)}`, { path: p });
      throw new InvalidArgument(`${shown(p)}: ${r.reason}`, { path: p });
    }
    return r;
  };
  if (opts.followLast || trailing || abs === '/') {
    let r;
    try {
      r = walk(abs);
    } catch (e) {
      if (!(e instanceof NotFound)) throw e;
      // the container path it would have had: a missing extraction point or a dangling link's target
      return { hostPath: '', containerPath: abs, name, stat: undefined };
    }
    // a mount reached through a symlink is refused by the walk; the end of one is checked here
    const containerPath = toContainerPath(root, r.hostPath);
    const mount = onMount(mounts, containerPath);
    if (mount) refuseMount(p, mount);
    if (trailing && !r.isDirectory) throw new InvalidArgument(`${shown(p)}: not a directory`, { path: p });
    return { hostPath: r.hostPath, containerPath, name, stat: lstatSync(r.hostPath) };
  }
  const dir = walk(path.posix.dirname(abs));
  if (!dir.isDirectory) throw new InvalidArgument(`${shown(p)}: not a directory`, { path: p });
  const base = path.posix.basename(abs);
  const containerPath = path.posix.join(toContainerPath(root, dir.hostPath), base);
  const mount = onMount(mounts, containerPath);
  if (mount) refuseMount(p, mount);
  const hostPath = path.join(dir.hostPath, base);
  return { hostPath, containerPath, name, stat: lstatSync(hostPath, { throwIfNoEntry: false }) };
}

/** dockerd's stat of a resolved path: a symlink's target resolved in the container (without leaving it). */
export function pathStat(root: string, r: ResolvedPath, mountPoints: readonly string[]): ContainerPathStat {
  const st = r.stat;
  if (!st) throw new NotFound(`no such file or directory: ${shown(r.containerPath)}`, { path: r.containerPath });
  let linkTarget = '';
  if (st.isSymbolicLink()) {
    let t: ResolvedPath | undefined;
    try {
      t = resolveContainerPath(root, r.containerPath, { followLast: true, mountPoints });
    } catch {
      t = undefined; // a loop, or a target on a mount: what the link says is still the answer
    }
    // a dangling link: where it points, as the container would look for it
    const readlink = () => {
      try {
        return readlinkSync(r.hostPath);
      } catch (e) {
        throw withoutHostPath(r.containerPath, e);
      }
    };
    linkTarget = t?.stat ? t.containerPath : path.posix.resolve(path.posix.dirname(r.containerPath), readlink());
  }
  return { name: r.name, size: st.size, mode: st.mode, mtime: st.mtime.toISOString(), linkTarget };
}
