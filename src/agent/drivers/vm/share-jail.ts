/**
 * The jail of a QEMU that must stay root: a VM with 9p shares in passthrough mode (a secure
 * container's rootfs) keeps the files' owners, which takes root's file capabilities, so such a
 * QEMU cannot drop to a user of its own (qemu-user.ts). It is confined the way Firecracker's jailer
 * confines a VMM, short of the user:
 *
 * - a mount namespace of its own whose root is an empty tmpfs (read-only once set up) holding only
 *   what QEMU opens: the host's programs and libraries read-only (/usr, and /bin, /lib... as this
 *   host has them), its kernel and initrd read-only, its shares and the VM's own directory (QMP
 *   socket, pid file, console) writable, a handful of device nodes, and of /proc only its own
 *   /proc/self/fd (9p's xattr and chmod calls go through it). Every path but the device nodes is
 *   nodev and nosuid: with mknod it can make a node (9p makes the guest's), but one of a disk's
 *   numbers would not open. pivot_root, then the old root
 *   detached: no path leads back to the host's other files, the agent's home, other VMs, other
 *   containers' layers or other processes;
 * - a capability bounding set of the file capabilities 9p passthrough uses (chown, dac_override,
 *   fowner, fsetid, mknod) and nothing else: no dac_read_search (open_by_handle_at reaches past
 *   the mount namespace), no sys_admin (no mount, no namespace of its own to escape through), no
 *   sys_chroot, no sys_ptrace, no net_admin, no sys_module;
 * - no_new_privs, and QEMU's own seccomp filter as before (-sandbox, elevateprivileges=deny).
 *
 * The jailer is one short python3 program (JAILER) that execs QEMU, so QEMU keeps the supervisor's
 * child's pid and its descriptors (a restore's state on fd 3).
 */
import { existsSync, lstatSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import type { QemuConfig } from './qemu.js';
import { python3 } from './qmp-fds.js';

/** What the jail holds: paths bound at the same place inside it. */
export interface ShareJail {
  /** The (empty) directory its tmpfs root is mounted on, in the namespace only. */
  root: string;
  readonly: string[];
  writable: string[];
  devices: string[];
}

/**
 * The capabilities 9p passthrough needs of a root QEMU: virtfs-proxy-helper's set less three.
 * dac_read_search: dac_override passes every permission check it would, and alone it grants
 * open_by_handle_at, with which a file of the same filesystem opens from any descriptor on it,
 * past the mount namespace (Docker's "shocker" escape): the jail would not hold. setuid and
 * setgid: QEMU's -sandbox (elevateprivileges=deny) kills it at any such call anyway.
 */
export const SHARE_JAIL_CAPS = ['chown', 'dac_override', 'fowner', 'fsetid', 'mknod'] as const;

/** The host's top-level program and library directories (merged /usr: symlinks, made again inside). */
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];

/**
 * The jail of a VM's QEMU: what its config names (kernel, initrd, disks, shares), its own
 * directory, and the devices its accelerator and NICs use.
 */
export function shareJailOf(c: Pick<QemuConfig, 'accel' | 'kernel' | 'initrd' | 'rootDisk' | 'blockVolumes' | 'shares' | 'nics'>, vmDir: string, root: string): ShareJail {
  const readonly = [
    ...SYSTEM_DIRS.filter((d) => existsSync(d) && !lstatSync(d).isSymbolicLink()),
    ...[c.kernel, c.initrd].filter((p): p is string => p !== undefined),
  ];
  // disks by their directory: a qcow2's backing files are opened by the paths in its header
  const disks = [...(c.rootDisk ? [c.rootDisk.path] : []), ...(c.blockVolumes ?? []).map((b) => b.path)].map((p) => path.dirname(p));
  const writable = [vmDir, ...(c.shares ?? []).map((s) => s.path), ...disks];
  const devices = ['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', ...(c.accel === 'kvm' ? ['/dev/kvm'] : []), ...(c.nics.length ? ['/dev/net/tun'] : [])];
  return { root, readonly: [...new Set(readonly)], writable: [...new Set(writable.map((p) => path.resolve(p)))], devices: devices.filter((d) => existsSync(d)) };
}

/** Linux's capability numbers of SHARE_JAIL_CAPS (linux/capability.h). */
const CAP_NUMBERS: Record<(typeof SHARE_JAIL_CAPS)[number], number> = { chown: 0, dac_override: 1, fowner: 3, fsetid: 4, mknod: 27 };

/**
 * The jailer: one python3 process (-I -S, as qmp-fds.ts runs one) that makes the jail with the
 * syscalls themselves, then execs the program, so QEMU keeps its pid and descriptors. argv: the
 * capability numbers kept (comma-separated), the root, then KIND:PATH specs (ro, rw, dev; ln:LINK=TARGET for a symlinked top-level directory) up
 * to "--", then the program and its arguments. A first version ran util-linux's unshare, a shell
 * script and setpriv: ~45 processes, +40 ms a secure start here; this is one.
 */
const JAILER = String.raw`
import ctypes, errno, os, platform, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def ok(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ': ' + os.strerror(e))
def b(s):
    return None if s is None else s.encode()
def mount(src, tgt, fs, flags, data=None):
    ok(libc.mount(b(src), b(tgt), b(fs), flags, b(data)), 'mount ' + tgt)
RDONLY, NOSUID, NODEV, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
args = sys.argv[1:]
keep = set(int(c) for c in args.pop(0).split(','))
root = args.pop(0)
sep = args.index('--')
specs, prog = args[:sep], args[sep + 1:]
ok(libc.unshare(0x20000), 'unshare')
mount(None, '/', None, REC | PRIVATE)
mount('nimbus-jail', root, 'tmpfs', NOSUID | NODEV, 'mode=0755,size=1m')
for spec in specs:
    kind, _, p = spec.partition(':')
    if kind == 'ln':
        link, _, target = p.partition('=')
        os.symlink(target, root + link)
        continue
    t = root + p
    # a path already there (under /usr, bound before it: a kernel in /usr/lib) is mounted over as it is
    if not os.path.lexists(t):
        if os.path.isdir(p):
            os.makedirs(t)
        else:
            os.makedirs(os.path.dirname(t), exist_ok=True)
            open(t, 'a').close()
    mount(p, t, None, BIND)
    # nodev on all but the device nodes it is given: with CAP_MKNOD (9p makes the guest's nodes)
    # a node it made where it writes, a disk's numbers, would open the host's disk
    if kind == 'ro':
        mount(None, t, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
    elif kind == 'rw':
        mount(None, t, None, REMOUNT | BIND | NOSUID | NODEV)
# of /proc, this process's own fd directory (its pid is QEMU's: exec keeps it): 9p goes through it
os.makedirs(root + '/proc/self/fd')
mount('/proc/%d/fd' % os.getpid(), root + '/proc/self/fd', None, BIND)
os.mkdir(root + '/.old')
ok(libc.syscall({'x86_64': 155, 'aarch64': 41}[platform.machine()], b(root), b(root + '/.old')), 'pivot_root')
os.chdir('/')
ok(libc.umount2(b'/.old', 2), 'umount /.old')
os.rmdir('/.old')
mount(None, '/', None, REMOUNT | RDONLY | NOSUID | NODEV, 'mode=0755,size=1m')
for cap in range(64):
    if cap not in keep and libc.prctl(24, cap, 0, 0, 0) != 0:
        if ctypes.get_errno() == errno.EINVAL:
            break
        ok(-1, 'drop capability %d' % cap)
ok(libc.prctl(38, 1, 0, 0, 0), 'no_new_privs')
os.execvp(prog[0], prog)
`;

/** The command a launch runs: `binary argv` itself, or in the jail when there is one (the jailer, then QEMU: one process, exec'd). */
export function jailedCommand(binary: string, argv: readonly string[], jail: ShareJail | undefined): { binary: string; argv: string[] } {
  if (!jail) return { binary, argv: [...argv] };
  const links = SYSTEM_DIRS.filter((d) => existsSync(d) && lstatSync(d).isSymbolicLink()).map((d) => `ln:${d}=${readlinkSync(d)}`);
  const specs = [...links, ...jail.readonly.map((p) => `ro:${p}`), ...jail.writable.map((p) => `rw:${p}`), ...jail.devices.map((p) => `dev:${p}`)];
  return {
    binary: python3(),
    argv: ['-I', '-S', '-c', JAILER, SHARE_JAIL_CAPS.map((c) => CAP_NUMBERS[c]).join(','), jail.root, ...specs, '--', binary, ...argv],
  };
}
