/**
 * InstanceDriver: the narrow contract every kind of instance implements
 * (container today; vm and secure later). Modelled on Incus' instance drivers
 * and Nova's virt drivers. The agent calls it; the control plane never does.
 */
import type { Readable, Writable } from 'node:stream';
import { InvalidArgument } from '../../core/errors.js';
import type { MountSpec } from '../snapshots/snapshotter.js';

export interface ProcessSpec {
  args: string[];
  env: string[]; // "K=V"
  cwd: string;
  user: string; // "uid[:gid]" or a name resolved against the rootfs' /etc/passwd
  /** The main process on a terminal (Docker's Tty): attach gives its raw bytes, resize its size. */
  terminal?: boolean;
  /** Stdin open to attach (Docker's OpenStdin): 'once' ends it when the first attached client leaves (StdinOnce). Protocol 8. */
  stdin?: 'open' | 'once';
}

export interface ResourceLimits {
  memoryBytes?: number;
  /** Fractional CPUs, e.g. 0.5 → quota 50000 per 100000 period. */
  cpus?: number;
  pidsLimit?: number;
}

/** What a VM needs beyond the common spec (the vm driver ignores rootfs and process). */
export interface VmSpec {
  /** Direct kernel boot: kernel image, initrd and command line. */
  kernel?: string;
  initrd?: string;
  append?: string;
  /** Base disk image (raw or qcow2); the VM's root disk is a qcow2 overlay backed by it. */
  disk?: string;
  /** Host CPUs for the vCPU threads: vCPU i runs on pin[i % pin.length]. */
  pin?: number[];
  /** virtio-net NICs on tap devices the network layer made (the seam for VM networking). */
  nics?: Array<{ tap: string; mac: string; mtu?: number }>;
  /** The guest reports its exit status through isa-debug-exit (the test guest does). */
  debugExit?: boolean;
  /** Host directories shared over virtio-9p (a secure container's rootfs). */
  shares?: Array<{ tag: string; path: string; readonly?: boolean }>;
  /** "kvm" | "tcg" for this VM; default: the driver's. */
  accel?: 'kvm' | 'tcg';
  /** A virtio-balloon device (live memory resize). Default: true, except for VMs with shares (secure containers' microVMs). */
  balloon?: boolean;
  /** vCPUs it may grow to while running (hot-plug); default: no hot-plug. */
  maxCpus?: number;
  /** Block volumes attached from the start (a boot volume): their qcow2 files on this host. */
  blockVolumes?: Array<{ volumeId: string; path: string; readonly?: boolean; boot?: boolean; format?: 'qcow2' | 'raw'; shared?: boolean }>;
}

export interface InstanceSpec {
  id: string;
  name: string;
  /** The writable root filesystem (from the snapshotter). */
  rootfs: MountSpec[];
  process: ProcessSpec;
  resources: ResourceLimits;
  hostname?: string;
  /** "runc" | "crun" for containers. */
  runtime?: string;
  /** Network namespace path to join; undefined = a new empty one. */
  netnsPath?: string;
  /** Share the host's network namespace (Docker's --network host). */
  hostNetwork?: boolean;
  /** Contents of the container's /etc/hosts and /etc/resolv.conf (bind-mounted from its directory); defaults when absent. */
  etc?: EtcFiles;
  labels?: Record<string, string>;
  /** VM instances only. */
  vm?: VmSpec;
  /** Container log rotation (Docker's max-size / max-file); absent fields: the driver's defaults. */
  log?: LogLimits;
}

export interface LogLimits {
  /** A log file is rotated before it would pass this size. */
  maxSizeBytes?: number;
  /** Files kept, the one being written included. */
  maxFiles?: number;
}

export interface EtcFiles {
  hosts: string;
  resolvConf: string;
}

export type RuntimeStatus = 'created' | 'running' | 'paused' | 'stopped' | 'unknown';

export interface RuntimeState {
  status: RuntimeStatus;
  pid?: number;
  exitCode?: number;
  oomKilled?: boolean;
  startedAt?: string;
  finishedAt?: string;
}

export interface LogRecord {
  time: string;
  stream: 'stdout' | 'stderr';
  /** One line without its trailing newline, or a partial line. */
  line: string;
  partial?: boolean;
}

/** A terminal's size in character cells. */
export interface TerminalSize {
  rows: number;
  cols: number;
}

/** The largest rows or cols a terminal may have (the kernel's winsize fields are 16-bit). */
export const MAX_TERMINAL_CELLS = 65535;

export interface ExecRequest {
  args: string[];
  env?: string[];
  cwd?: string;
  user?: string;
  /** Run the command on a terminal of this size: its stdout carries the terminal's output, stderr stays empty. */
  tty?: TerminalSize;
}

export interface ExecSession {
  stdout: Readable;
  stderr: Readable;
  /** With a TTY: the terminal's input (its end is not an end-of-file: a terminal has none; ^D is). */
  stdin?: Writable;
  exit: Promise<number>;
  /** With a TTY: the terminal's new size (the command gets SIGWINCH). */
  resize?(rows: number, cols: number): void;
}

/**
 * Attached to a container's main process (conmon's attach socket): its output from now on and,
 * when asked and the container has one open, its stdin. With a terminal `stdout` carries the
 * terminal's bytes and `stderr` stays empty. Ending `stdin` is the process's end of input when
 * the container's stdin is 'once' (without a terminal); destroying `stdout` detaches. `exit`
 * settles when the stream ends (the process exited, or the attach was ended): 0, attach knows
 * no exit code (the container's record does).
 */
export type AttachSession = ExecSession;

export interface AttachRequest {
  /** Carry input to the container's stdin (refused when the container has none open). */
  stdin: boolean;
}

/** InvalidArgument-worthy text when a terminal size is not one, else undefined. */
export function badTerminalSize(rows: unknown, cols: unknown): string | undefined {
  const ok = (n: unknown) => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= MAX_TERMINAL_CELLS;
  return ok(rows) && ok(cols) ? undefined : `a terminal's rows and cols are integers from 1 to ${MAX_TERMINAL_CELLS} (got ${String(rows)}x${String(cols)})`;
}

/** An exec session's `resize`: the size checked (InvalidArgument), then handed to `apply`. */
export function checkedResize(apply: (rows: number, cols: number) => void): (rows: number, cols: number) => void {
  return (rows, cols) => {
    const bad = badTerminalSize(rows, cols);
    if (bad) throw new InvalidArgument(bad);
    apply(rows, cols);
  };
}

/** One network endpoint's counters, from the instance's side (its host end's rx is the instance's tx). */
export interface EndpointCounters {
  /** The host end (veth or tap) and its ifindex: a re-created endpoint has a new ifindex and counters from 0. */
  hostIf: string;
  ifindex: number;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

/** Summed over an instance's endpoints; cumulative per endpoint, reset when an endpoint is re-created. */
export interface NetworkCounters {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  endpoints: EndpointCounters[];
}

export interface InstanceStats {
  cpuUsageNs: number;
  memoryBytes: number;
  memoryLimitBytes?: number;
  pids: number;
  pidsLimit?: number;
  /** Absent: the instance has no endpoint of its own (host network, shared namespace) or an older agent answered. */
  network?: NetworkCounters;
  time: string;
}

export interface InstanceDriver {
  readonly type: 'container' | 'vm';
  /** Prepare everything so start() is as cheap as possible. */
  create(spec: InstanceSpec): Promise<RuntimeState>;
  start(id: string): Promise<RuntimeState>;
  kill(id: string, signal: string): Promise<void>;
  /** The stop signal (default SIGTERM), wait up to timeoutSec, then SIGKILL. Resolves when stopped. */
  stop(id: string, timeoutSec: number, signal?: string): Promise<RuntimeState>;
  pause(id: string): Promise<void>;
  unpause(id: string): Promise<void>;
  state(id: string): Promise<RuntimeState>;
  exec(id: string, req: ExecRequest): Promise<ExecSession>;
  logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord>;
  stats(id: string): Promise<InstanceStats>;
  /** Remove the runtime state, monitor, bundle. The rootfs belongs to the caller. */
  delete(id: string): Promise<void>;
  /** Ids this driver has state for on this host (for reconciliation). */
  list(): Promise<string[]>;
  /** Called with the id whenever an instance's process exits. */
  onExit(listener: (id: string) => void): void;
}
