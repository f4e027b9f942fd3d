/**
 * Host files a VM is booted from (kernel, initrd, base disk): the only place the agent
 * turns a path it was given into a file QEMU will read.
 *
 * A path is accepted only when, with every symlink resolved, it is a regular file inside one
 * of the allowed roots: the agent's own content store (images of the image service) and the
 * directories the operator allow-listed (--vm-host-dir). The resolved path is what QEMU gets,
 * so a symlink swapped in later cannot redirect it outside a root (the roots themselves must be
 * writable only by the host's administrator: docs/security.md). The refusal is the same whether
 * the file is missing, unreadable or outside the roots: it tells the caller nothing about the host.
 */
import { constants as fsConstants } from 'node:fs';
import { open, realpath } from 'node:fs/promises';
import { sep } from 'node:path';
import { InvalidArgument } from '../../../core/errors.js';

export type HostFileRole = 'kernel' | 'initrd' | 'disk';

/** Whether resolved lies inside (or is) the resolved root. */
function inside(resolved: string, root: string): boolean {
  return resolved === root || resolved.startsWith(root.endsWith(sep) ? root : root + sep);
}

export class HostFileResolver {
  private roots: Promise<string[]> | undefined;

  constructor(private readonly allowedRoots: () => readonly string[]) {}

  /** The roots with their own symlinks resolved; a root that does not exist allows nothing. */
  private resolvedRoots(): Promise<string[]> {
    this.roots ??= Promise.all(this.allowedRoots().map((r) => realpath(r).catch(() => undefined))).then((rs) =>
      rs.filter((r): r is string => r !== undefined && r !== '/'),
    );
    return this.roots;
  }

  /** The file's real path, or one InvalidArgument whatever the reason. */
  async resolve(role: HostFileRole, path: string): Promise<string> {
    const refuse = () =>
      new InvalidArgument(
        `${role}: "${path}" is not a file this host may boot VMs from: use an image of the image service (nimbus image import-disk), ` +
          'or, as a system administrator, a file in a directory the operator allowed (nimbusd --vm-host-dir)',
      );
    if (!path.startsWith('/') || path.includes('\0')) throw refuse();
    const resolved = await realpath(path).catch(() => undefined);
    if (resolved === undefined) throw refuse();
    const roots = await this.resolvedRoots();
    if (!roots.some((r) => inside(resolved, r))) throw refuse();
    // the resolved path has no symlink left; O_NOFOLLOW refuses one swapped in since
    const fh = await open(resolved, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK).catch(() => undefined);
    if (!fh) throw refuse();
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw refuse();
    } finally {
      await fh.close();
    }
    return resolved;
  }
}
