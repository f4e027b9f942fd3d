/**
 * The jail of a QEMU that keeps file capabilities: a VM with 9p shares in passthrough mode (a
 * secure container's rootfs) keeps the files' owners and modes, which takes root's file
 * capabilities, so such a QEMU cannot drop to a plain user with -runas (qemu-user.ts). It is
 * confined the way Firecracker's jailer confines a VMM:
 *
 * - a mount namespace of its own whose root is an empty tmpfs (read-only once set up) holding only
 *   what QEMU opens: the host's programs and libraries read-only (/usr, and /bin, /lib... as this
 *   host has them), its kernel and initrd read-only, its shares writable, a handful of device
 *   nodes, and of /proc only its own /proc/self/fd (9p's xattr and chmod calls go through it).
 *   Not the VM's own directory: the agent and the supervisor use its files by path (the record,
 *   the exit status, QEMU's log, the sockets), and root there could replace any of them with a
 *   symlink to a host file or another VM's socket. The jailer makes what QEMU would have made in
 *   it (the QMP and console sockets, listening; the console log, appended; the pid file) before
 *   it leaves the host's tree, and QEMU gets the first three as descriptors (RUN_FDS), as libvirt
 *   hands QEMU its monitor socket. Every path but the device nodes is
 *   nodev and nosuid: with mknod it can make a node (9p makes the guest's), but one of a disk's
 *   numbers would not open. pivot_root, then the old root
 *   detached: no path leads back to the host's other files, the agent's home, other VMs, other
 *   containers' layers or other processes;
 * - a capability bounding set of the file capabilities 9p passthrough uses (chown, dac_override,
 *   fowner, fsetid, mknod) and nothing else: no dac_read_search (open_by_handle_at reaches past
 *   the mount namespace), no sys_admin (no mount, no namespace of its own to escape through), no
 *   sys_chroot, no sys_ptrace, no net_admin, no sys_module;
 * - System V IPC and a network namespace of its own, as every VM's QEMU (jailer.ts);
 * - a user of its own (as every VM's QEMU: qemu-user.ts) holding those capabilities as ambient
 *   ones, which the exec keeps effective: not root, so it signals no root process (kill(-1)
 *   reached every one of them while it was uid 0) and owns no file of the host;
 * - no_new_privs, and QEMU's own seccomp filter as before (-sandbox, elevateprivileges=deny).
 *
 * The jailer (jailer.ts) makes it, as it makes every VM's network and IPC namespaces, and execs QEMU.
 */
import { existsSync, lstatSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgument } from '../../../core/errors.js';
import type { QemuConfig } from './qemu.js';

/** What the jail holds: paths bound at the same place inside it; and the run files made for QEMU outside it. */
export interface ShareJail {
  /** The (empty) directory its tmpfs root is mounted on, in the namespace only. */
  root: string;
  readonly: string[];
  writable: string[];
  devices: string[];
  /** Made by the jailer in the VM's directory, which the jail does not hold (RUN_FDS). */
  runFiles: QemuConfig['paths'];
  /** The user QEMU runs as, with the jail's capabilities ambient (qemu-user.ts); absent: root. */
  user?: { uid: number; gid: number };
}

/**
 * The descriptors a jailed QEMU gets its run files on: the QMP and console sockets, listening
 * (`-chardev socket,fd=N,server=on`), and the console log, appended (an fd set,
 * `logfile=/dev/fdset/N`), and the monitor descriptors are handed over on (qmp-fds.ts). Above 3, a
 * restore's saved state; below the taps' (qemu.ts TAP_FD_BASE).
 */
export const RUN_FDS = { qmp: 10, console: 11, consoleLog: 12, fdQmp: 13 } as const;
/** The fd set the console log's descriptor is added to (`-add-fd`). */
export const CONSOLE_LOG_FDSET = 1;

/**
 * The capabilities 9p passthrough needs of a root QEMU: virtfs-proxy-helper's set less three.
 * dac_read_search: dac_override passes every permission check it would, and alone it grants
 * open_by_handle_at, with which a file of the same filesystem opens from any descriptor on it,
 * past the mount namespace (Docker's "shocker" escape): the jail would not hold. setuid and
 * setgid: QEMU's -sandbox (elevateprivileges=deny) kills it at any such call anyway.
 */
export const SHARE_JAIL_CAPS = ['chown', 'dac_override', 'fowner', 'fsetid', 'mknod'] as const;

/** The host's top-level program and library directories (merged /usr: symlinks, made again inside). */
export const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];

/**
 * The jail of a VM's QEMU: what its config names (kernel, initrd, disks, shares) and the devices
 * its accelerator and NICs use, not its own directory (where the jailer makes its run files).
 */
export function shareJailOf(c: Pick<QemuConfig, 'accel' | 'kernel' | 'initrd' | 'rootDisk' | 'blockVolumes' | 'shares' | 'paths'>, vmDir: string, root: string, user?: { uid: number; gid: number }): ShareJail {
  const readonly = [
    ...SYSTEM_DIRS.filter((d) => existsSync(d) && !lstatSync(d).isSymbolicLink()),
    ...[c.kernel, c.initrd].filter((p): p is string => p !== undefined),
  ];
  // disks by their directory (a qcow2's backing files are opened by the paths in its header),
  // but one in the VM's own directory by itself: the directory stays out (above)
  const own = path.resolve(vmDir);
  const disks = [...(c.rootDisk ? [c.rootDisk.path] : []), ...(c.blockVolumes ?? []).map((b) => b.path)]
    .map((p) => path.resolve(p))
    .map((p) => (path.dirname(p) === own ? p : path.dirname(p)));
  const writable = [...new Set([...(c.shares ?? []).map((s) => path.resolve(s.path)), ...disks])];
  const devices = ['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', ...(c.accel === 'kvm' ? ['/dev/kvm'] : [])];
  const leaked = writable.find((p) => own === p || own.startsWith(`${p}/`));
  if (leaked) throw new InvalidArgument(`a jailed VM may not share ${leaked}: it holds the VM's own directory`);
  return {
    root, readonly: [...new Set(readonly)], writable, devices: devices.filter((d) => existsSync(d)),
    runFiles: { qmpSocket: c.paths.qmpSocket, consoleSocket: c.paths.consoleSocket, consoleLog: c.paths.consoleLog, pidFile: c.paths.pidFile },
    ...(user ? { user } : {}),
  };
}
