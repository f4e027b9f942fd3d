/**
 * The QEMU command line as a pure function of a VM's configuration: no I/O,
 * so every flag is unit-tested and the bench can replay the exact argv bare.
 */
import { InvalidArgument } from '../../../core/errors.js';
import path from 'node:path';
import { CONSOLE_LOG_FDSET, RUN_FDS, type ShareJail } from './share-jail.js';

export type Accelerator = 'kvm' | 'tcg';

/**
 * The descriptor of a VM's first NIC's tap; the next ones follow. The jailer opens the taps (QEMU,
 * in a network namespace of its own, could not find them by name: jailer.ts).
 */
export const TAP_FD_BASE = 20;
/** The most NICs a VM has (their descriptors stay below the jailer's own). */
export const MAX_NICS = 16;

/**
 * A QEMU's second QMP monitor, beside its QMP socket: descriptors are handed over on it, and the
 * command that takes one runs in the same session (qmp-fds.ts), while an operation may hold the
 * first for minutes (a migration). A descriptor handed over is the monitor's own.
 */
export const fdMonitorSocket = (qmpSocket: string) => path.join(path.dirname(qmpSocket), 'qmp-fds.sock');

/**
 * A tap's name as Linux takes one (≤ 15 characters, no whitespace, '/' or ':') and as the argv and
 * the jailer's specs carry it (no ','): checked where QEMU's command line is made and where the
 * jailer is told to open it.
 */
export function assertTapName(tap: string): void {
  if (!tap || tap.length > 15 || /[\s,/:]/.test(tap)) throw new InvalidArgument(`bad tap device name "${tap}"`);
}

/** One virtio-net NIC on a tap device. The networking layer creates the tap; the jailer opens it (jailer.ts). */
export interface NicConfig {
  /** Tap device name (≤ 15 chars), e.g. "vif3.0". */
  tap: string;
  /** Locally administered MAC, e.g. "52:54:00:12:34:56". */
  mac: string;
  /** The network's MTU when lower than Ethernet's (an overlay): told to the guest through virtio-net's MTU feature. */
  mtu?: number;
}

export interface DiskConfig {
  path: string;
  format: 'qcow2' | 'raw';
}

export interface QemuPaths {
  qmpSocket: string;
  consoleSocket: string;
  /** The serial console's output, appended by QEMU itself so it survives a daemon restart. */
  consoleLog: string;
  pidFile: string;
}

export interface QemuConfig {
  name: string;
  accel: Accelerator;
  cpus: number;
  memoryMiB: number;
  kernel?: string;
  initrd?: string;
  append?: string;
  rootDisk?: DiskConfig;
  nics: NicConfig[];
  paths: QemuPaths;
  /** -S: vCPUs do not run until QMP cont (lets the driver pin vCPU threads first). */
  startPaused: boolean;
  /** Restore: a migration stream source, "fd:3" (the saved state, opened for QEMU: launchQemu's input) or "defer". */
  incoming?: string;
  /** isa-debug-exit at port 0xf4: the guest's way to report an exit status. */
  debugExit: boolean;
  /** Host directories shared into the guest over virtio-9p (mounted there by tag). */
  shares?: ShareConfig[];
  /** A virtio-balloon device: the guest's memory can be shrunk below -m and grown back while it runs (resize). */
  balloon?: boolean;
  /** vCPU hot-plug: -smp cpus=<cpus>,maxcpus=<maxCpus>; absent, the VM has exactly `cpus` (and none can be plugged). */
  maxCpus?: number;
  /**
   * vCPUs plugged while it ran (QMP device_add), replayed as -device so that a restore or an
   * incoming migration has the same CPUs as the state it loads. Folded into `cpus` at a cold boot.
   */
  hotplugCpus?: HotplugCpu[];
  /** Block volumes attached (docs/volumes.md "Block volumes"): -blockdev + virtio-blk, named so they can be unplugged. */
  blockVolumes?: BlockVolumeConfig[];
  /**
   * The user QEMU drops to once it has opened what this names (-runas; qemu-user.ts). Absent for a
   * VM with 9p shares in passthrough mode: its jailer sets its user with the capabilities it keeps
   * (`jail`). Chosen at each launch, never recorded.
   */
  runAs?: { uid: number; gid: number };
  /**
   * With runAs: the empty directory QEMU chroots into as it drops (-chroot), so that it reaches no
   * file of the host at all, world-readable ones included (Firecracker's jailer does the same).
   */
  chroot?: string;
  /**
   * The binary takes `-run-with user=…,chroot=…` (QEMU 9.1 and later; 10.0 removed `-runas` and
   * `-chroot`): set with runAs by the confinement (qemu-user.ts confinementOf).
   */
  runWith?: boolean;
  /**
   * Launched in a share jail (share-jail.ts), which does not hold the VM's directory: the QMP and
   * console sockets and the console log come as descriptors the jailer made (RUN_FDS), and the
   * jailer writes the pid file.
   */
  jail?: ShareJail;
}

/** One block volume as a virtio-blk disk (block-volumes.ts plugs and unplugs them while the VM runs). */
export interface BlockVolumeConfig {
  volumeId: string;
  /** Its qcow2 file on this host. */
  path: string;
  readonly?: boolean;
  /** The disk the VM boots from (bootindex 0 without -kernel). */
  boot?: boolean;
  /** Default qcow2; a shared volume is raw. */
  format?: 'qcow2' | 'raw';
  /** Several VMs may write it (share-rw: QEMU's image locking lets the others open it too). */
  shared?: boolean;
}

/** QEMU's names for a block volume: its block node, its device, and the serial the guest sees (/sys/block/vdX/serial). */
export function blockVolumeNames(volumeId: string): { node: string; device: string; serial: string } {
  if (!/^[0-9a-f]{16,64}$/.test(volumeId)) throw new InvalidArgument(`bad volume id "${volumeId.slice(0, 80)}"`);
  return { node: `bv-${volumeId.slice(0, 24)}`, device: `bvd-${volumeId.slice(0, 24)}`, serial: volumeId.slice(0, 20) };
}

/** The -blockdev and -device arguments of one block volume. */
export function blockVolumeArgs(b: BlockVolumeConfig, kernelBoot: boolean): string[] {
  const n = blockVolumeNames(b.volumeId);
  return [
    '-blockdev', `driver=${b.format ?? 'qcow2'},node-name=${n.node},read-only=${b.readonly ? 'on' : 'off'},file.driver=file,file.filename=${q(b.path)}`,
    '-device', `virtio-blk-pci,id=${n.device},drive=${n.node},serial=${n.serial}${b.shared ? ',share-rw=on' : ''}${b.boot && !kernelBoot ? ',bootindex=0' : ''}`,
  ];
}

export interface HotplugCpu {
  /** The CPU model's QOM type, e.g. "max-x86_64-cpu" (from query-hotpluggable-cpus). */
  driver: string;
  id: string;
  /** socket-id, core-id, thread-id (and die-id where the machine has one). */
  props: Record<string, number>;
}

export interface ShareConfig {
  /** The guest mounts it with `mount -t 9p -o trans=virtio TAG /dir`. */
  tag: string;
  path: string;
  readonly?: boolean;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

/** QEMU's -opt value syntax: a comma inside a value is written twice. */
const q = (v: string) => v.replace(/,/g, ',,');

/** QEMU's trace events of a shutdown request (with its cause) and of a power button press. */
// runstate_set too: under -no-reboot a guest's reset (a triple fault, a panic with panic=-1)
// ends QEMU (exit 0) with no shutdown request to trace, only its run state going to shutdown
const SHUTDOWN_TRACE = 'trace:qemu_system_shutdown_request,trace:qemu_system_powerdown_request,trace:runstate_set';

/** QEMU's ShutdownCause (qapi/run-state.json), in its order: the number its trace line gives. */
const SHUTDOWN_CAUSES = ['none', 'host-error', 'host-qmp-quit', 'host-qmp-system-reset', 'host-signal', 'host-ui', 'guest-shutdown', 'guest-reset', 'guest-panic', 'subsystem-reset', 'snapshot-load'] as const;
export type ShutdownCause = (typeof SHUTDOWN_CAUSES)[number] | `cause ${number}`;

/**
 * Why QEMU ended, from its stderr: the last shutdown request's cause (a signal's is not traced:
 * QEMU's own "terminating on signal" line says it); a run state gone to shutdown without a
 * request is a guest's reset (under -no-reboot: a triple fault, or a kernel panic that reboots);
 * undefined when there is neither (it crashed or was SIGKILLed).
 */
export function shutdownCauseIn(stderr: string): ShutdownCause | undefined {
  if (/: terminating on signal \d+/.test(stderr)) return 'host-signal';
  const m = [...stderr.matchAll(/^qemu_system_shutdown_request reason=(\d+)$/gm)].at(-1);
  if (!m) return /^runstate_set .* new_state \d+ \(shutdown\)$/m.test(stderr) ? 'guest-reset' : undefined;
  const n = Number(m[1]);
  return SHUTDOWN_CAUSES[n] ?? `cause ${n}`;
}

/**
 * `-sandbox`'s setting, QEMU's own seccomp filter: no obsolete syscalls, no spawning (saves and
 * restores take descriptors, not `exec:`), no changes of scheduling or memory policy. A QEMU that
 * drops to a user of its own must change its uid once (elevateprivileges=deny would kill it at
 * the change); after it there are no privileges to take (no capabilities, no_new_privs). One in a
 * share jail, whose jailer set its user before the exec, may not change users at all.
 */
export function qemuSandbox(dropsToUser: boolean): string {
  return `on,obsolete=deny,elevateprivileges=${dropsToUser ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`;
}

/** QMP, the serial console and its log, the pid file: by path, or in a jail as the jailer's descriptors. */
function runFileArgs(c: QemuConfig): string[] {
  if (!c.jail) {
    return [
      '-chardev', `socket,id=qmp,path=${q(c.paths.qmpSocket)},server=on,wait=off`,
      '-mon', 'chardev=qmp,mode=control',
      '-chardev', `socket,id=qmpfds,path=${q(fdMonitorSocket(c.paths.qmpSocket))},server=on,wait=off`,
      '-mon', 'chardev=qmpfds,mode=control',
      '-chardev', `socket,id=console,path=${q(c.paths.consoleSocket)},server=on,wait=off,logfile=${q(c.paths.consoleLog)},logappend=on`,
      '-serial', 'chardev:console',
      '-pidfile', c.paths.pidFile,
    ];
  }
  return [
    // the fd set's opaque names the QMP socket: every liveness check looks for it in QEMU's
    // command line (core/proc.ts processAlive), which a socket given as a descriptor does not carry
    '-add-fd', `fd=${RUN_FDS.consoleLog},set=${CONSOLE_LOG_FDSET},opaque=${q(c.paths.qmpSocket)}`,
    '-chardev', `socket,id=qmp,fd=${RUN_FDS.qmp},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', `socket,id=qmpfds,fd=${RUN_FDS.fdQmp},server=on,wait=off`,
    '-mon', 'chardev=qmpfds,mode=control',
    '-chardev', `socket,id=console,fd=${RUN_FDS.console},server=on,wait=off,logfile=/dev/fdset/${CONSOLE_LOG_FDSET},logappend=on`,
    '-serial', 'chardev:console',
  ];
}

export function qemuArgv(c: QemuConfig): string[] {
  if (!Number.isInteger(c.cpus) || c.cpus < 1) throw new InvalidArgument(`cpus must be a positive integer, got ${c.cpus}`);
  if (!Number.isInteger(c.memoryMiB) || c.memoryMiB < 16) throw new InvalidArgument(`memory must be at least 16 MiB, got ${c.memoryMiB}`);
  if (!c.kernel && !c.rootDisk && !c.blockVolumes?.some((b) => b.boot)) throw new InvalidArgument('a VM needs a kernel, a root disk or a boot volume');
  if (c.maxCpus !== undefined && (!Number.isInteger(c.maxCpus) || c.maxCpus < c.cpus + (c.hotplugCpus?.length ?? 0) || c.maxCpus > 64)) {
    throw new InvalidArgument(`max cpus must be an integer from cpus (${c.cpus}) to 64, got ${c.maxCpus}`);
  }
  if ((c.initrd || c.append) && !c.kernel) throw new InvalidArgument('initrd and append need a kernel');
  const a: string[] = [
    '-name', `guest=${q(c.name)}`,
    // pc (i440fx): ACPI power button and an ISA bus for isa-debug-exit; boots faster than q35 under TCG.
    '-machine', `pc,accel=${c.accel}`,
    '-cpu', c.accel === 'kvm' ? 'host' : 'max',
    '-smp', c.maxCpus !== undefined ? `cpus=${c.cpus},maxcpus=${c.maxCpus}` : String(c.cpus),
    '-m', `${c.memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none',
    // a guest reboot ends the instance (restart policy belongs to the caller)
    '-no-reboot',
    // QEMU says on its stderr (qemu.log) why it is ending and when a power button was pressed:
    // the record keeps the cause (a guest's poweroff, reset or panic, or a host's quit or signal)
    '-d', SHUTDOWN_TRACE,
    ...runFileArgs(c),
    '-sandbox', qemuSandbox(c.runAs !== undefined),
  ];
  if (c.runAs) {
    const { uid, gid } = c.runAs;
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid <= 0 || gid <= 0) throw new InvalidArgument(`QEMU's user must be a uid:gid other than root's, got ${uid}:${gid}`);
    if (c.shares?.length) throw new InvalidArgument("a VM with shared directories keeps QEMU as root (9p passthrough keeps the files' owners)");
    if (c.runWith) a.push('-run-with', `user=${uid}:${gid}${c.chroot !== undefined ? `,chroot=${q(c.chroot)}` : ''}`);
    else {
      a.push('-runas', `${uid}:${gid}`);
      if (c.chroot !== undefined) a.push('-chroot', c.chroot);
    }
  } else if (c.chroot !== undefined) {
    throw new InvalidArgument('a chroot goes with a user of its own (runAs): root leaves a chroot at will');
  }
  if (c.debugExit) a.push('-device', 'isa-debug-exit,iobase=0xf4,iosize=0x01');
  if (c.balloon) a.push('-device', 'virtio-balloon-pci,id=balloon0');
  if (c.kernel) a.push('-kernel', c.kernel);
  if (c.initrd) a.push('-initrd', c.initrd);
  if (c.append) a.push('-append', c.append);
  if (c.rootDisk) {
    // file.auto-read-only=off: opened read-write at once, also under -incoming (where -drive would
    // open it read-only and reopen it by path when the guest or an export writes: QEMU, by then
    // its own user, may not; qemu-user.ts)
    a.push('-drive', `if=none,id=root,file=${q(c.rootDisk.path)},format=${c.rootDisk.format},cache=writeback,file.auto-read-only=off`);
    // with -kernel the kernel loader owns boot index 0; the disk boots only without one
    a.push('-device', `virtio-blk-pci,drive=root${c.kernel ? '' : ',bootindex=0'}`);
  }
  for (const b of c.blockVolumes ?? []) a.push(...blockVolumeArgs(b, c.kernel !== undefined || c.rootDisk !== undefined));
  if (c.nics.length > MAX_NICS) throw new InvalidArgument(`a VM has at most ${MAX_NICS} NICs, got ${c.nics.length}`);
  c.nics.forEach((n, i) => {
    if (!MAC.test(n.mac)) throw new InvalidArgument(`bad MAC "${n.mac}"`);
    assertTapName(n.tap);
    // the jailer's descriptor: QEMU has no network in which to find the tap by name
    a.push('-netdev', `tap,id=net${i},fd=${TAP_FD_BASE + i}`);
    if (n.mtu !== undefined && (!Number.isInteger(n.mtu) || n.mtu < 576 || n.mtu > 65535)) throw new InvalidArgument(`bad NIC MTU ${n.mtu}`);
    a.push('-device', `virtio-net-pci,netdev=net${i},mac=${n.mac}${n.mtu !== undefined ? `,host_mtu=${n.mtu}` : ''}`);
  });
  (c.shares ?? []).forEach((sh, i) => {
    if (!/^[A-Za-z0-9_]{1,31}$/.test(sh.tag)) throw new InvalidArgument(`bad share tag "${sh.tag}"`);
    // passthrough: files keep the guest's owners and modes (the share is a container's rootfs)
    a.push('-fsdev', `local,id=fs${i},path=${q(sh.path)},security_model=passthrough${sh.readonly ? ',readonly=on' : ''}`);
    a.push('-device', `virtio-9p-pci,fsdev=fs${i},mount_tag=${sh.tag}`);
  });
  for (const cpu of c.hotplugCpus ?? []) {
    if (!/^[a-z0-9_-]+$/i.test(cpu.driver) || !/^[a-z0-9_-]+$/i.test(cpu.id)) throw new InvalidArgument(`bad hot-plugged CPU ${JSON.stringify(cpu)}`);
    a.push('-device', [cpu.driver, `id=${cpu.id}`, ...Object.entries(cpu.props).map(([k, v]) => `${k}=${Number(v)}`)].join(','));
  }
  if (c.startPaused) a.push('-S');
  if (c.incoming) a.push('-incoming', c.incoming);
  return a;
}

/**
 * What the supervisor recorded as QEMU's exit status, in instance terms.
 * isa-debug-exit makes QEMU exit with (code << 1) | 1; the test guest reports
 * codes 1..63 that way (so the status stays below 128) and powers off for 0.
 * 128+n is a signal; 1 is QEMU's own failure.
 */
export function decodeExitStatus(status: number, debugExit: boolean): number {
  if (status === 0 || status === 1 || status >= 128) return status;
  if (debugExit && status % 2 === 1) return (status - 1) / 2;
  return status;
}

/** Parse a CPU list like "0-2,5" into [0,1,2,5]. */
export function parseCpuList(list: string): number[] {
  const out: number[] = [];
  for (const part of list.split(',').map((s) => s.trim())) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new InvalidArgument(`bad CPU list "${list}"`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw new InvalidArgument(`bad CPU range "${part}"`);
    for (let i = lo; i <= hi; i++) out.push(i);
  }
  return [...new Set(out)];
}
