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
 * Secure containers' microVMs stay root: their 9p share (security_model=passthrough) keeps the
 * container's owners and modes, which takes root (docs/security.md).
 */
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';

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

/** The users of one driver's VMs: each VM keeps one while the driver runs, no two VMs share one. */
export class QemuUsers {
  private readonly uidOf = new Map<string, number>();
  private readonly holder = new Map<number, string>();

  /** VM id's user: the same at every launch; derived from its id, the next free one when another VM here holds that. */
  claim(id: string): QemuUser {
    let uid = this.uidOf.get(id);
    if (uid === undefined) {
      const start = createHash('sha256').update(id).digest().readUInt32BE(0) % QEMU_UID_COUNT;
      for (let i = 0; ; i++) {
        uid = QEMU_UID_BASE + ((start + i) % QEMU_UID_COUNT);
        if (!this.holder.has(uid)) break;
      }
      this.hold(id, uid);
    }
    return { uid, gid: uid };
  }

  /** A QEMU found running at the driver's start keeps the user it runs as. */
  adopt(id: string, uid: number): void {
    if (!isQemuUid(uid) || this.uidOf.get(id) === uid) return;
    this.release(id);
    this.hold(id, uid);
  }

  /** The VM is gone: its user may serve another. */
  release(id: string): void {
    const uid = this.uidOf.get(id);
    if (uid === undefined) return;
    this.uidOf.delete(id);
    if (this.holder.get(uid) === id) this.holder.delete(uid);
  }

  private hold(id: string, uid: number): void {
    this.uidOf.set(id, uid);
    this.holder.set(uid, id);
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
}

/** The empty directory a VM's QEMU chroots into (in the VM's directory, which only root passes: QEMU enters it as root). */
export const jailDir = (vmDir: string) => path.join(vmDir, 'jail');

/** A VM's confinement: a user of its own and its jail, unless it shares directories over 9p (root keeps their owners: none). */
export function confinementOf(users: QemuUsers, r: { id: string; config: { shares?: readonly unknown[] } }, vmDir: string): QemuConfinement {
  return r.config.shares?.length ? {} : { runAs: users.claim(r.id), chroot: jailDir(vmDir) };
}

/**
 * Make the jail before a launch: empty (what a crashed migration left in it, credentials
 * included, goes), root's, passable (QEMU's user must reach its own "/"), not listable.
 */
export async function prepareJail(c: QemuConfinement): Promise<void> {
  if (c.chroot === undefined) return;
  await rm(c.chroot, { recursive: true, force: true });
  await mkdir(c.chroot, { recursive: true, mode: 0o711 });
  await chmod(c.chroot, 0o711);
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
