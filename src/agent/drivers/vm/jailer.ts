/**
 * The jailer every VM's QEMU is launched through: one short python3 program that sets up what
 * QEMU cannot do for itself and then execs it, so QEMU keeps the supervisor's child's pid and its
 * descriptors (a restore's state on fd 3).
 *
 * For every VM:
 * - its NICs' taps opened here, as root in the host's network namespace, and given to QEMU as
 *   descriptors (`-netdev tap,fd=N`, qemu.ts TAP_FD_BASE), as libvirt hands them;
 * - then a network namespace of its own (a loopback, down) and System V IPC of its own. QEMU
 *   reaches no service on the host's loopback or abstract sockets, nor any network the host is on:
 *   a guest that took QEMU over gets only its taps, behind the same rules as the guest. What QEMU
 *   used to connect to itself (a migration's stream, a mirror's NBD export) the agent connects
 *   and hands over (qemu-peer-sockets.ts);
 * - no_new_privs.
 *
 * For a VM that keeps file capabilities (9p shares): its share jail too (share-jail.ts): the run
 * files made here before it leaves the host's tree, a mount namespace whose root holds only what
 * QEMU opens, a capability bounding set of 9p's capabilities, a user of its own holding them as
 * ambient ones. Other VMs' QEMUs drop to their own user and chroot themselves (-runas, -chroot).
 *
 * A first version of the share jail ran util-linux's unshare, a shell script and setpriv: ~45
 * processes, +40 ms a secure start here; this is one.
 */
import { existsSync, lstatSync, readlinkSync } from 'node:fs';
import { assertTapName, fdMonitorSocket, TAP_FD_BASE } from './qemu.js';
import { python3 } from '../../../core/python3.js';
import { RUN_FDS, SHARE_JAIL_CAPS, SYSTEM_DIRS, type ShareJail } from './share-jail.js';

/** What a launch sets up around QEMU: its NICs' taps (by name, in the order of its -netdev), and a share jail. */
export interface LaunchJail {
  taps: readonly string[];
  share?: ShareJail;
  /**
   * QEMU drops to a user of its own itself (-runas / -run-with, qemu-user.ts): its bounding set is
   * then cut to what that drop takes (DROP_CAPS), so that as root, before it, it holds nothing else.
   */
  dropsToUser?: boolean;
}

/**
 * What a QEMU that drops to its own user needs as root before the drop: setgid and setgroups,
 * setuid, chroot (CAP_SETGID 6, CAP_SETUID 7, CAP_SYS_CHROOT 18). It opens what its command line
 * names as root, all of it root's own (the VM's directory, its jail) or world-readable (a kernel),
 * so it needs no DAC override; its taps come as descriptors. After the drop it holds none.
 */
export const DROP_CAPS = [6, 7, 18] as const;

/** Linux's capability numbers of SHARE_JAIL_CAPS (linux/capability.h). */
const CAP_NUMBERS: Record<(typeof SHARE_JAIL_CAPS)[number], number> = { chown: 0, dac_override: 1, fowner: 3, fsetid: 4, mknod: 27 };

/**
 * argv: the capability numbers kept (comma-separated; "-": the bounding set untouched), the share
 * jail's root ("-": none), then KIND:PATH specs up to "--", then the program and its arguments.
 * Specs: tap:FD:NAME (a tap opened onto FD); for a share jail listen:FD:PATH, append:FD:PATH and
 * pid:PATH (its run files, made first, in the host's tree), user:UID:GID (the user it execs the
 * program as), ro, rw, dev (bound into it) and ln:LINK=TARGET (a symlinked top-level directory).
 */
const JAILER = String.raw`
# socket and platform are not imported: ~13 ms of a VM's start here (socket only for a share jail's run files)
import ctypes, errno, fcntl, os, struct, sys
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
TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454ca, 0x0002, 0x1000, 0x4000
args = sys.argv[1:]
caps = args.pop(0)
keep = None if caps == '-' else set(int(c) for c in caps.split(','))
root = args.pop(0)
sep = args.index('--')
specs, prog = args[:sep], args[sep + 1:]
# in the host's tree and network: the taps, and a share jail's run files (the VM's directory is
# root's alone, and the jail does not hold it); the user
keep_open = []
user = None
for spec in specs:
    kind, _, p = spec.partition(':')
    if kind == 'tap':
        fd, _, name = p.partition(':')
        # the networking layer made it: TUNSETIFF would make a missing one, on no bridge
        if libc.if_nametoindex(name.encode()) == 0:
            raise OSError(errno.ENODEV, 'tap ' + name + ': no such device')
        t = os.open('/dev/net/tun', os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(t, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        except OSError as e:
            raise OSError(e.errno, 'tap ' + name + ': ' + os.strerror(e.errno))
        os.dup2(t, int(fd))
        os.close(t)
    elif kind == 'listen':
        fd, _, p = p.partition(':')
        import socket
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
# System V IPC and a network of their own (only a loopback, down: no service of the host's is one
# connect away, the taps are descriptors); with a share jail, mounts too
flags = 0x08000000 | 0x40000000
if root != '-':
    flags |= 0x20000
ok(libc.unshare(flags), 'unshare')
if root != '-':
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
    ok(libc.syscall({'x86_64': 155, 'aarch64': 41}[os.uname().machine], b(root), b(root + '/.old')), 'pivot_root')
    os.chdir('/')
    ok(libc.umount2(b'/.old', 2), 'umount /.old')
    os.rmdir('/.old')
    mount(None, '/', None, REMOUNT | RDONLY | NOSUID | NODEV, 'mode=0755,size=1m')
if keep is not None:
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
    mask = sum(1 << c for c in keep or ())
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, mask, 0, 0, 0)
    ok(libc.syscall({'x86_64': 126, 'aarch64': 91}[os.uname().machine], header, data), 'capset')
    for c in keep or ():
        ok(libc.prctl(47, 2, c, 0, 0), 'ambient capability %d' % c)
ok(libc.prctl(38, 1, 0, 0, 0), 'no_new_privs')
os.execvp(prog[0], prog)
`;

/** The command a launch runs: the jailer (-I -S, as qmp-fds.ts runs python3), then `binary argv`, one process exec'd. */
export function jailedCommand(binary: string, argv: readonly string[], launch: LaunchJail): { binary: string; argv: string[] } {
  const taps = launch.taps.map((name, i) => {
    assertTapName(name);
    return `tap:${TAP_FD_BASE + i}:${name}`;
  });
  const jail = launch.share;
  // a share jail: 9p's capabilities; a QEMU that drops to its user: what the drop takes; else the
  // bounding set untouched ("-"). No root of its own ("-") without a share jail
  const caps = jail ? SHARE_JAIL_CAPS.map((c) => CAP_NUMBERS[c]).join(',') : launch.dropsToUser ? DROP_CAPS.join(',') : '-';
  const specs = [...taps, ...(jail ? shareJailSpecs(jail) : [])];
  return { binary: python3(), argv: ['-I', '-S', '-c', JAILER, caps, jail?.root ?? '-', ...specs, '--', binary, ...argv] };
}

/** A share jail's specs: its run files and user, then what it binds. */
function shareJailSpecs(jail: ShareJail): string[] {
  const links = SYSTEM_DIRS.filter((d) => existsSync(d) && lstatSync(d).isSymbolicLink()).map((d) => `ln:${d}=${readlinkSync(d)}`);
  const run = jail.runFiles;
  const made = [
    `listen:${RUN_FDS.qmp}:${run.qmpSocket}`, `listen:${RUN_FDS.fdQmp}:${fdMonitorSocket(run.qmpSocket)}`, `listen:${RUN_FDS.console}:${run.consoleSocket}`,
    `append:${RUN_FDS.consoleLog}:${run.consoleLog}`, `pid:${run.pidFile}`,
  ];
  if (jail.user) made.push(`user:${jail.user.uid}:${jail.user.gid}`);
  return [...made, ...links, ...jail.readonly.map((p) => `ro:${p}`), ...jail.writable.map((p) => `rw:${p}`), ...jail.devices.map((p) => `dev:${p}`)];
}
