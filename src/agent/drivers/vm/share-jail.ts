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
 * - System V IPC of its own, and, without a NIC, a network namespace of its own (a loopback, down):
 *   no service listening on the host's loopback or abstract sockets is one connect away;
 * - a user of its own (as every VM's QEMU: qemu-user.ts) holding those capabilities as ambient
 *   ones, which the exec keeps effective: not root, so it signals no root process (kill(-1)
 *   reached every one of them while it was uid 0) and owns no file of the host;
 * - no_new_privs, and QEMU's own seccomp filter as before (-sandbox, elevateprivileges=deny).
 *
 * The jailer is one short python3 program (JAILER) that execs QEMU, so QEMU keeps the supervisor's
 * child's pid and its descriptors (a restore's state on fd 3).
 */
import { existsSync, lstatSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgument } from '../../../core/errors.js';
import type { QemuConfig } from './qemu.js';
import { python3 } from './qmp-fds.js';

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
 * `logfile=/dev/fdset/N`). Above 3, a restore's saved state.
 */
export const RUN_FDS = { qmp: 10, console: 11, consoleLog: 12 } as const;
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
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];

/**
 * The jail of a VM's QEMU: what its config names (kernel, initrd, disks, shares) and the devices
 * its accelerator and NICs use, not its own directory (where the jailer makes its run files).
 */
export function shareJailOf(c: Pick<QemuConfig, 'accel' | 'kernel' | 'initrd' | 'rootDisk' | 'blockVolumes' | 'shares' | 'nics' | 'paths'>, vmDir: string, root: string, user?: { uid: number; gid: number }): ShareJail {
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
  const devices = ['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', ...(c.accel === 'kvm' ? ['/dev/kvm'] : []), ...(c.nics.length ? ['/dev/net/tun'] : [])];
  const leaked = writable.find((p) => own === p || own.startsWith(`${p}/`));
  if (leaked) throw new InvalidArgument(`a jailed VM may not share ${leaked}: it holds the VM's own directory`);
  return {
    root, readonly: [...new Set(readonly)], writable, devices: devices.filter((d) => existsSync(d)),
    runFiles: { qmpSocket: c.paths.qmpSocket, consoleSocket: c.paths.consoleSocket, consoleLog: c.paths.consoleLog, pidFile: c.paths.pidFile },
    ...(user ? { user } : {}),
  };
}

/** Linux's capability numbers of SHARE_JAIL_CAPS (linux/capability.h). */
const CAP_NUMBERS: Record<(typeof SHARE_JAIL_CAPS)[number], number> = { chown: 0, dac_override: 1, fowner: 3, fsetid: 4, mknod: 27 };

/**
 * The jailer: one python3 process (-I -S, as qmp-fds.ts runs one) that makes the jail with the
 * syscalls themselves, then execs the program, so QEMU keeps its pid and descriptors. argv: the
 * capability numbers kept (comma-separated), the root, then KIND:PATH specs (ro, rw, dev;
 * ln:LINK=TARGET for a symlinked top-level directory; listen:FD:PATH, append:FD:PATH and pid:PATH
 * for the run files, made first, in the host's tree; user:UID:GID, the user it execs the program
 * as) up to "--", then the program and its arguments. A first version ran util-linux's unshare, a
 * shell script and setpriv: ~45 processes, +40 ms a secure start here; this is one.
 */
const JAILER = String.raw`
import ctypes, errno, os, platform, socket, sys
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
# the run files, in the host's tree before it is left (the VM's directory is root's alone); the user
keep_open = []
user = None
for spec in specs:
    kind, _, p = spec.partition(':')
    if kind == 'listen':
        fd, _, p = p.partition(':')
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        s.bind(p)
        s.listen(16)
        os.dup2(s.fileno(), int(fd))
        keep_open.append(s)
    elif kind == 'append':
        fd, _, p = p.partition(':')
        f = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.dup2(f, int(fd))
        os.close(f)
    elif kind == 'pid':
        f = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.write(f, b'%d\n' % os.getpid())
        os.close(f)
    elif kind == 'user':
        u, _, g = p.partition(':')
        user = (int(u), int(g))
specs = [s for s in specs if s.partition(':')[0] in ('ro', 'rw', 'dev', 'ln')]
# mounts and System V IPC of its own; and with no NIC (no tap to reach), a network of its own:
# only a loopback, down, so no service of the host's is one connect away
flags = 0x20000 | 0x08000000
if 'dev:/dev/net/tun' not in specs:
    flags |= 0x40000000
ok(libc.unshare(flags), 'unshare')
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
# a user of its own, the kept capabilities ambient (they survive the exec as its effective set):
# root it is not, so it signals no root process (kill(-1) included) and owns nothing of the host's
if user:
    uid, gid = user
    ok(libc.prctl(8, 1, 0, 0, 0), 'keepcaps')
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    mask = sum(1 << c for c in keep)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, mask, 0, 0, 0)
    ok(libc.syscall({'x86_64': 126, 'aarch64': 91}[platform.machine()], header, data), 'capset')
    for c in keep:
        ok(libc.prctl(47, 2, c, 0, 0), 'ambient capability %d' % c)
ok(libc.prctl(38, 1, 0, 0, 0), 'no_new_privs')
os.execvp(prog[0], prog)
`;

/** The command a launch runs: `binary argv` itself, or in the jail when there is one (the jailer, then QEMU: one process, exec'd). */
export function jailedCommand(binary: string, argv: readonly string[], jail: ShareJail | undefined): { binary: string; argv: string[] } {
  if (!jail) return { binary, argv: [...argv] };
  const links = SYSTEM_DIRS.filter((d) => existsSync(d) && lstatSync(d).isSymbolicLink()).map((d) => `ln:${d}=${readlinkSync(d)}`);
  const run = jail.runFiles;
  const made = [`listen:${RUN_FDS.qmp}:${run.qmpSocket}`, `listen:${RUN_FDS.console}:${run.consoleSocket}`, `append:${RUN_FDS.consoleLog}:${run.consoleLog}`, `pid:${run.pidFile}`];
  if (jail.user) made.push(`user:${jail.user.uid}:${jail.user.gid}`);
  const specs = [...made, ...links, ...jail.readonly.map((p) => `ro:${p}`), ...jail.writable.map((p) => `rw:${p}`), ...jail.devices.map((p) => `dev:${p}`)];
  return {
    binary: python3(),
    argv: ['-I', '-S', '-c', JAILER, SHARE_JAIL_CAPS.map((c) => CAP_NUMBERS[c]).join(','), jail.root, ...specs, '--', binary, ...argv],
  };
}
