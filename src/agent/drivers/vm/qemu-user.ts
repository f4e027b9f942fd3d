/**
 * Each VM's QEMU runs as a user of its own, as Xen's dm_restrict runs each domain's device model
 * under a uid of its own. QEMU opens everything its command line names as root, then drops to that
 * user (`-runas uid:gid`) before the guest runs: no capabilities, no_new_privs, its own seccomp
 * filter, and, having changed its uid, not dumpable (no other process of the user can ptrace it).
 * What it needs later comes as descriptors over QMP (qmp-fds.ts), never by a path: the VM's
 * directory is root's alone. A guest that escapes into its QEMU holds that user and nothing else:
 * no host file it could not already read, no other VM's disk, memory or process.
 *
 * It also chroots into an empty directory as it drops (`-chroot`, the VM's `jail`), as
 * Firecracker's jailer does: no file of the host is left to it, world-readable ones included.
 *
 * Secure containers' microVMs keep five file capabilities: their 9p share (security_model=
 * passthrough) keeps the container's owners and modes. They run as their own user too, in a
 * mount namespace of their own, the capabilities ambient (share-jail.ts; docs/security.md).
 */
import { qemuTakesRunWith } from './qemu-version.js';
import { shareJailOf, type ShareJail } from './share-jail.js';
import type { LaunchJail } from './jailer.js';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Unavailable } from '../../../core/errors.js';

/**
 * The users: 2,000,000,000 and the 2^24 after it, below 2^31 and above what hosts give people,
 * systemd's dynamic users (61184–65519) and subordinate-id ranges (100,000 + 65,536 × n).
 */
export const QEMU_UID_BASE = 2_000_000_000;
export const QEMU_UID_COUNT = 1 << 24;

export interface QemuUser {
  uid: number;
  gid: number;
}

export const isQemuUid = (uid: number) => Number.isInteger(uid) && uid >= QEMU_UID_BASE && uid < QEMU_UID_BASE + QEMU_UID_COUNT;

/** Where the agents of a host note which VM holds which QEMU user (a tmpfs: gone at a reboot, as the QEMUs are). */
export const QEMU_USERS_DIR = '/run/nimbus/qemu-users';

export interface QemuUsersOptions {
  /** The host-wide reservations (default QEMU_USERS_DIR); tests use their own. */
  dir?: string;
  /** The first user a VM tries, as an offset in the range (default: from its id's hash); tests force collisions with it. */
  preferred?: (id: string) => number;
}

const fromId = (id: string) => createHash('sha256').update(id).digest().readUInt32BE(0) % QEMU_UID_COUNT;

/** The uids processes run as now (/proc/PID is owned by its process's effective uid). */
function uidsInUse(): Set<number> {
  const out = new Set<number>();
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      out.add(statSync(`/proc/${p}`).uid);
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * The users of one driver's VMs: a VM keeps its user while it may run, and no two VMs on the host
 * hold one, whichever agent runs them: each user is reserved by a file in a host-wide directory
 * (O_EXCL), taken over only when no process runs as it.
 */
export class QemuUsers {
  private readonly uidOf = new Map<string, number>();
  private readonly holder = new Map<number, string>();
  private readonly dir: string;
  private readonly preferred: (id: string) => number;

  constructor(o: QemuUsersOptions = {}) {
    this.dir = o.dir ?? QEMU_USERS_DIR;
    this.preferred = o.preferred ?? fromId;
  }

  /** VM id's user, checked at each launch: the one it had while still its own, else the first free one from its id's. */
  claim(id: string): QemuUser {
    // /proc is read once a claim, and only if a reservation is found taken
    let live: Set<number> | undefined;
    const inUse = (uid: number) => (live ??= uidsInUse()).has(uid);
    const had = this.uidOf.get(id);
    if (had !== undefined && this.reserve(had, id, inUse)) return { uid: had, gid: had };
    if (had !== undefined) this.forget(id);
    const start = this.preferred(id);
    for (let i = 0; i < QEMU_UID_COUNT; i++) {
      const uid = QEMU_UID_BASE + ((start + i) % QEMU_UID_COUNT);
      if (this.holder.has(uid) || !this.reserve(uid, id, inUse)) continue;
      this.hold(id, uid);
      return { uid, gid: uid };
    }
    throw new Unavailable('every QEMU user of this host is taken');
  }

  /** The user VM id has, or would try first, without reserving anything (what inspect shows). */
  peek(id: string): QemuUser {
    const uid = this.uidOf.get(id) ?? QEMU_UID_BASE + this.preferred(id);
    return { uid, gid: uid };
  }

  /** A QEMU found running at the driver's start keeps the user it runs as (its reservation written again). */
  adopt(id: string, uid: number): void {
    if (!isQemuUid(uid)) return;
    if (this.uidOf.get(id) !== uid) {
      this.forget(id);
      this.hold(id, uid);
    }
    this.write(uid, id, 'w');
  }

  /** The VM is gone, or runs no QEMU (saved): its user may serve another. */
  release(id: string): void {
    // a VM this instance never claimed (started by the driver before a restart, or another one's
    // of this host) is found by its reservation: its id's first choice, else any that names it
    const uid = this.uidOf.get(id) ?? this.reservedFor(id);
    if (uid === undefined) return;
    this.forget(id);
    if (this.holderOnDisk(uid) === id) rmSync(this.file(uid), { force: true });
  }

  private reservedFor(id: string): number | undefined {
    const first = QEMU_UID_BASE + this.preferred(id);
    if (this.holderOnDisk(first) === id) return first;
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return undefined;
    }
    return names.map(Number).find((uid) => isQemuUid(uid) && this.holderOnDisk(uid) === id);
  }

  /** At the agent's start: reservations no process runs as and no VM of this driver holds go (a crash's, a test's). */
  sweep(): number {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return 0;
    }
    const live = uidsInUse();
    let removed = 0;
    for (const n of names) {
      const uid = Number(n);
      if (!isQemuUid(uid) || live.has(uid) || this.holder.has(uid)) continue;
      rmSync(this.file(uid), { force: true });
      removed++;
    }
    return removed;
  }

  private file(uid: number): string {
    return path.join(this.dir, String(uid));
  }

  private holderOnDisk(uid: number): string | undefined {
    try {
      return readFileSync(this.file(uid), 'utf8');
    } catch {
      return undefined;
    }
  }

  private write(uid: number, id: string, flag: 'wx' | 'w'): boolean {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    try {
      writeFileSync(this.file(uid), id, { flag, mode: 0o600 });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  }

  /** Whether `uid` is VM id's now: free and taken, already its own, or left by a VM that no process runs as (taken over). */
  private reserve(uid: number, id: string, inUse: (uid: number) => boolean): boolean {
    if (this.write(uid, id, 'wx')) return true;
    const holder = this.holderOnDisk(uid);
    // its own (an earlier run of this driver, or the same VM on another agent of this host: a move between them)
    if (holder === id) return true;
    if (inUse(uid)) return false;
    // left behind (its VM gone, or not running now: it takes another at its next launch)
    rmSync(this.file(uid), { force: true });
    return this.write(uid, id, 'wx');
  }

  private hold(id: string, uid: number): void {
    this.uidOf.set(id, uid);
    this.holder.set(uid, id);
  }

  private forget(id: string): void {
    const uid = this.uidOf.get(id);
    this.uidOf.delete(id);
    if (uid !== undefined && this.holder.get(uid) === id) this.holder.delete(uid);
  }
}

/** The user a process runs as (its real uid and gid), undefined when it is gone. */
export function processUser(pid: number | undefined): QemuUser | undefined {
  if (pid === undefined) return undefined;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    const gid = /^Gid:\s+(\d+)/m.exec(status)?.[1];
    return uid === undefined || gid === undefined ? undefined : { uid: Number(uid), gid: Number(gid) };
  } catch {
    return undefined;
  }
}

/** How a VM's QEMU is confined at a launch: its own user and an empty root. */
export interface QemuConfinement {
  runAs?: QemuUser;
  chroot?: string;
  /** With runAs: the binary drops with `-run-with` (qemu-version.ts), not `-runas`/`-chroot`. */
  runWith?: boolean;
  /** A QEMU that keeps file capabilities (9p shares): its mount namespace, its user and capabilities (share-jail.ts). */
  jail?: ShareJail;
}

/** The empty directory a VM's QEMU chroots into (in the VM's directory, which only root passes: QEMU enters it as root). */
export const jailDir = (vmDir: string) => path.join(vmDir, 'jail');

/**
 * A VM's confinement: a user of its own and its jail, unless it shares directories over 9p (root
 * keeps their owners): then a mount namespace and a capability bounding set of their own
 * (share-jail.ts). For a launch its user is reserved; to show it, only looked up. `qemu`, the
 * binary, says how QEMU is told to drop.
 */
export function confinementOf(users: QemuUsers, r: { id: string; config: Parameters<typeof shareJailOf>[0] }, vmDir: string, qemu: string, use: 'launch' | 'show' = 'launch'): QemuConfinement {
  const user = use === 'launch' ? users.claim(r.id) : users.peek(r.id);
  if (r.config.shares?.length) return { jail: shareJailOf(r.config, vmDir, jailDir(vmDir), user) };
  return { runAs: user, chroot: jailDir(vmDir), runWith: qemuTakesRunWith(qemu) };
}

/** What the jailer sets up around a VM's QEMU (jailer.ts): its taps, and its share jail if it has one. */
export function launchJailOf(config: { nics: ReadonlyArray<{ tap: string }> }, c: QemuConfinement): LaunchJail {
  return { taps: config.nics.map((n) => n.tap), ...(c.jail ? { share: c.jail } : {}), ...(c.runAs ? { dropsToUser: true } : {}) };
}

/**
 * Make the jail before a launch: empty (what a crashed migration left in it, credentials
 * included, goes), root's, passable (QEMU's user must reach its own "/"), not listable.
 */
export async function prepareJail(c: QemuConfinement): Promise<void> {
  const dir = c.chroot ?? c.jail?.root;
  if (dir === undefined) return;
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o711 });
  await chmod(dir, 0o711);
}

/** Where a running process's "/" is (its chroot; "/" when none), undefined when it is gone. */
export function processRoot(pid: number | undefined): string | undefined {
  if (pid === undefined) return undefined;
  try {
    return readlinkSync(`/proc/${pid}/root`);
  } catch {
    return undefined;
  }
}

/** Where a running QEMU reads files from: its user and its root (migration-tls.ts). */
export function qemuView(pid: number | undefined): { owner?: QemuUser; root?: string } {
  const owner = processUser(pid);
  const root = processRoot(pid);
  return { ...(owner ? { owner } : {}), ...(root ? { root } : {}) };
}
