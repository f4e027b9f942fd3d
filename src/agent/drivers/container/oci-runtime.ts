/**
 * A thin wrapper over the runc/crun command lines. Each runtime gets its own
 * `--root` under Nimbus' state dir, so Nimbus' containers are separate from any
 * other user of runc on the host. Errors are mapped to typed errors once, here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { IPty } from 'node-pty';
import { closeSync, constants as fsConstants, openSync, readFileSync, readSync, unlinkSync, writeSync } from 'node:fs';
import net from 'node:net';
import { access, constants, copyFile, mkdir, open, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { processTempDir } from '../../../core/temp-dirs.js';
import { isValidName } from '../../../core/ids.js';
import path from 'node:path';
import { run } from '../../../core/exec.js';
import { AlreadyExists, Conflict, Internal, InvalidArgument, NotFound, Unavailable, hasCode, wholeForAdmins, type NimbusError } from '../../../core/errors.js';
import { redactAbsolutePaths, redactHostPaths } from '../../../core/redaction.js';
import { cgroupPaths, detectCgroupLayout, hybridCgroup2Controllers, removeCgroup, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { buildOciSpec, readHardLimits } from './oci-spec.js';
import { processAlive } from '../../../core/proc.js';
import { CommandRunner } from '../../command-runner.js';
import { removeStateFile } from '../../../core/state-files.js';
import { removeTree } from '../../../core/tree-removal.js';

export type RuntimeName = 'runc' | 'crun';
/**
 * In the order `auto` tries them: runc first. crun is ~15 ms of CPU cheaper per container here
 * (docs/warm-start.md) and is used when asked (`--runtime crun`, `nimbusd --runtime crun`) or
 * where runc is not usable, but Debian builds it without CRIU (only runc containers move live),
 * and crun sets a TTY exec's terminal size only after the command has started (a command asking
 * at once can see 0x0; docs/exec.md). Its TTY execs go through conmon's exec mode (conmon-exec.ts).
 */
export const RUNTIME_NAMES: readonly RuntimeName[] = ['runc', 'crun'];

export type OciStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

export interface OciState {
  ociVersion?: string;
  id: string;
  status: OciStatus;
  pid: number;
  bundle: string;
  created?: string;
}

const SEARCH_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/**
 * Where each program was found, by name and PATH: the search was an access() per PATH entry on
 * every container create (~0.6 ms of the event loop with a long PATH). Only found programs are
 * remembered: one installed later is found on its next lookup.
 */
const found = new Map<string, string>();

/** Absolute path of an executable found in PATH plus the sbin dirs, or undefined. */
export async function findBinary(name: string): Promise<string | undefined> {
  const key = `${name}\0${process.env.PATH ?? ''}`;
  const known = found.get(key);
  if (known !== undefined) return known;
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SEARCH_PATH];
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      await access(p, constants.X_OK);
      found.set(key, p);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Extract the human message from runc's logrus line or crun's "crun: ..." line. */
export function runtimeMessage(stderr: string): string {
  const lines = stderr.trim().split('\n').filter(Boolean);
  const msgs = lines.map((l) => {
    const m = /msg="((?:[^"\\]|\\.)*)"/.exec(l);
    if (m?.[1] !== undefined) return m[1].replace(/\\"/g, '"');
    return l.replace(/^(crun|runc): /, '');
  });
  return msgs.join('; ') || stderr.trim();
}

/** Map a runtime failure to a typed error: its words without this host's paths, all of them for administrators. */
export function mapRuntimeError(runtime: string, op: string, id: string, stderr: string, code: number): NimbusError {
  const msg = runtimeMessage(stderr);
  const details = { runtime, op, id, exitCode: code };
  const whole = `${runtime} ${op} ${id}: ${msg}`;
  const text = redactHostPaths(whole);
  const options = wholeForAdmins(text, whole);
  // crun's start of a container started already: its exec fifo is gone (runc says "cannot start")
  if (op === 'start' && /exec\.fifo`?: No such file/i.test(msg)) return new Conflict(`${runtime} start ${id}: the container is not in the created state`, details, { adminMessage: whole });
  if (/does not exist|not found|no such file or directory/i.test(msg) && !/exec:|executable file/i.test(msg)) {
    return new NotFound(text, details, options);
  }
  if (/already exists|with id exists|exists already/i.test(msg)) return new AlreadyExists(text, details, options);
  if (/not running|not paused|that has stopped|is not stopped|not stopped|cannot (start|pause|resume|kill|delete)|in state|is paused|already running|container is running|is already/i.test(msg)) {
    return new Conflict(text, details, options);
  }
  return new Internal(text, details, options);
}

/**
 * What a runtime says when a create fails because of the container's own settings (its program,
 * user, working directory, arguments, hostname) rather than the host: runc's init reports these
 * before the container exists ("exec: ...", "chdir to cwd ...", "setresuid ...").
 */
const REQUEST_FAULT = /exec: "|executable file not found|exec format error|argument list too long|chdir to cwd|setresuid|setresgid|setgroups|sethostname|unable to find (user|group)|cannot set (uid|gid)|invalid (uid|gid|user)/i;

/** A runtime's create failure caused by the request, as InvalidArgument with the runtime's message; undefined for the rest. */
export function requestFault(e: unknown): NimbusError | undefined {
  if (!hasCode(e, 'Internal')) return undefined;
  const { message, details, adminMessage } = e as NimbusError;
  if (!REQUEST_FAULT.test(message)) return undefined;
  return new InvalidArgument(message.replace(/^(?:\S*\/)?(runc|crun) create \S+ failed: /, '$1: '), { ...details }, { cause: e, ...(adminMessage !== undefined ? { adminMessage } : {}) });
}

export interface ExecOptions {
  /** Path of a process.json (OCI process) for `exec --process`. */
  processFile: string;
  /** Pid file for the exec'd process. */
  pidFile?: string;
}

/**
 * The runtimes' verbs that answer only with their status (delete, kill, pause, resume) go through
 * host shells of their own (command-runner.ts), two at a time as the reaper works: a process
 * spawned from nimbusd is a fork of it (its page tables, 150+ MiB), ~12 ms of its event loop per
 * `runc kill` when 200 containers were removed at once.
 */
let shells: CommandRunner | undefined;
const runtimeShells = () => (shells ??= new CommandRunner(2));

export class OciRuntime {
  constructor(
    readonly name: RuntimeName,
    readonly binary: string,
    /** Passed as --root: where this runtime keeps Nimbus' container state. */
    readonly root: string,
  ) {}

  /** The global arguments every invocation starts with. */
  globalArgs(): string[] {
    return ['--root', this.root];
  }

  private async call(op: string, id: string, args: string[], timeoutMs = 30_000): Promise<string> {
    const r = await run(this.binary, [...this.globalArgs(), ...args], { timeoutMs });
    if (r.code !== 0) throw mapRuntimeError(this.name, op, id, r.stderr || r.stdout, r.code);
    return r.stdout;
  }

  /**
   * `create` without a monitor. The container inherits the runtime's stdio, so
   * (unlike the other verbs) its stdout/stderr cannot be pipes we wait on: stdin
   * and stdout are /dev/null and stderr is a file we read the runtime's error from
   * (the container keeps it as its stderr). The driver uses conmon instead.
   */
  async create(id: string, bundle: string, pidFile: string): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    const errFile = path.join(this.root, `.create-${id}-${process.pid}.err`);
    const fh = await open(errFile, 'w+');
    try {
      const child = spawn(this.binary, [...this.globalArgs(), 'create', '--bundle', bundle, '--pid-file', pidFile, id], {
        stdio: ['ignore', 'ignore', fh.fd],
      });
      const code = await new Promise<number>((resolve, reject) => {
        child.on('error', reject);
        child.on('exit', (c, sig) => resolve(c ?? 128 + (sig ? 9 : 0)));
      });
      if (code !== 0) throw mapRuntimeError(this.name, 'create', id, await readFile(errFile, 'utf8'), code);
    } finally {
      await fh.close();
      await removeStateFile(errFile);
    }
  }
  /** initPid: the container's `runc init`, if known; the in-process start then waits for it as long as it lives. */
  async start(id: string, initPid?: number): Promise<void> {
    if (this.name === 'runc' && (await releaseThroughExecFifo(path.join(this.root, id, EXEC_FIFO), initPid === undefined ? {} : { initPid }))) return;
    if (this.name === 'crun' && writeExecFifo(path.join(this.root, id, EXEC_FIFO))) return;
    await this.call('start', id, ['start', id]);
  }
  async state(id: string): Promise<OciState> {
    const out = await this.call('state', id, ['state', id]);
    try {
      return JSON.parse(out) as OciState;
    } catch (e) {
      throw new Internal(`${this.name} state ${id}: unparsable output`, { out }, { cause: e });
    }
  }
  /** A verb whose output is only its status, from a host shell (no fork of nimbusd). */
  private async callFromShell(op: string, id: string, args: string[]): Promise<void> {
    const r = await runtimeShells().runOrSpawn(this.binary, [...this.globalArgs(), ...args], undefined, { timeoutMs: 30_000 });
    if (r.code !== 0) throw mapRuntimeError(this.name, op, id, r.output, r.code);
  }
  async kill(id: string, signal: string, all = false): Promise<void> {
    await this.callFromShell('kill', id, ['kill', ...(all ? ['--all'] : []), id, signal]);
  }
  async pause(id: string): Promise<void> {
    await this.callFromShell('pause', id, ['pause', id]);
  }
  async resume(id: string): Promise<void> {
    await this.callFromShell('resume', id, ['resume', id]);
  }
  /**
   * Change a container's memory/cpu/pids limits (LinuxResources JSON). Passed as a file in the
   * runtime's own state directory of the container (its delete removes it): crun reads `-` by
   * opening /dev/stdin, which fails on the socket pair Node gives a child as its stdin.
   */
  async update(id: string, resources: Record<string, unknown>): Promise<void> {
    const file = path.join(this.root, id, 'nimbus-update.json');
    try {
      await writeFile(file, JSON.stringify(resources));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`container ${id} not found`, { id });
      throw e;
    }
    try {
      const r = await run(this.binary, [...this.globalArgs(), 'update', '--resources', file, id], { timeoutMs: 30_000 });
      if (r.code !== 0) throw mapRuntimeError(this.name, 'update', id, r.stderr || r.stdout, r.code);
    } finally {
      await rm(file, { force: true });
    }
  }
  /**
   * What `runc delete` does for a container whose processes are all gone, without a runc
   * process (~8.7 ms of CPU each here, every container's removal): runc 1.1's destroy() kills
   * what is left in the container's cgroups, removes them, removes its state directory and runs
   * poststop hooks. The caller has seen every process gone (its cgroups empty; the container's
   * own pid namespace: its init's death ended the rest) and removes the cgroups itself, and the
   * driver's specs have no hooks (oci-spec.ts), so the state directory is what is left: removed
   * here once its state.json names this container and its init is not alive. false: not runc,
   * or not that state (the caller runs `runc delete`, which ends what runs and says what is
   * wrong). crun's delete is a C process of ~2 ms and keeps its own.
   */
  async forgetStopped(id: string): Promise<boolean> {
    if (this.name !== 'runc' || !isValidName(id)) return false;
    const dir = path.join(this.root, id);
    try {
      const state = await readRuncStateHead(path.join(dir, 'state.json'));
      if (state.id !== id) return false;
      // its init still there (a pid reused since is taken for it too): `runc delete --force` ends it
      if (typeof state.init_process_pid === 'number' && state.init_process_pid > 0 && processAlive(state.init_process_pid)) return false;
    } catch {
      return false;
    }
    await removeTree(dir);
    return true;
  }

  /** Through a long-lived host shell (no fork of nimbusd: ~1.6 ms of its event loop per delete here). */
  async delete(id: string, force = false): Promise<void> {
    await this.callFromShell('delete', id, ['delete', ...(force ? ['--force'] : []), id]);
  }
  async list(): Promise<OciState[]> {
    try {
      await access(this.root);
    } catch {
      return [];
    }
    const out = await this.call('list', '-', ['list', '--format', 'json']);
    const parsed = JSON.parse(out.trim() || 'null') as OciState[] | null;
    return parsed ?? [];
  }
  /** Start `exec --process` with pipes; the caller owns the child. */
  exec(id: string, opts: ExecOptions): ChildProcess {
    const args = [...this.globalArgs(), 'exec', '--process', opts.processFile];
    if (opts.pidFile) args.push('--pid-file', opts.pidFile);
    args.push(id);
    return spawn(this.binary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  }
  /**
   * `exec --process` (with `terminal: true` in it) in the foreground on a pty of ours: the
   * runtime makes the container's pty, copies between it and its own stdio (our pty) and
   * turns the SIGWINCH a resize of ours sends it into a resize of the container's
   * (docs/exec.md says why not a console socket).
   */
  async execTerminal(id: string, opts: ExecOptions, size: { rows: number; cols: number }): Promise<IPty> {
    const args = [...this.globalArgs(), 'exec', '--process', opts.processFile];
    if (opts.pidFile) args.push('--pid-file', opts.pidFile);
    args.push(id);
    const pty = await loadNodePty();
    try {
      // encoding null: bytes both ways (the terminal's output need not be UTF-8 cut at chunk ends)
      // Our pty is made raw before the runtime runs: input written before the runtime makes it
      // raw itself would otherwise be echoed and held for a newline by our line discipline.
      return pty.spawn('/bin/sh', ['-c', 'stty raw -echo && exec "$0" "$@"', this.binary, ...args], {
        name: 'xterm', cols: size.cols, rows: size.rows, cwd: '/', env: process.env as Record<string, string>, encoding: null,
      });
    } catch (e) {
      const message = `${this.name} exec ${id} on a terminal: ${redactAbsolutePaths((e as Error).message)}`;
      throw new Internal(message, { id }, { cause: e, ...wholeForAdmins(message, `${this.name} exec ${id} on a terminal: ${(e as Error).message}`) });
    }
  }
}

let nodePty: Promise<typeof import('node-pty')> | undefined;
/** Loaded on first use: an agent whose native module failed to build still does everything but TTY execs. */
function loadNodePty(): Promise<typeof import('node-pty')> {
  nodePty ??= import('node-pty').catch((e: unknown) => {
    nodePty = undefined;
    // the module's words name where Nimbus is installed: administrators read them
    const why = 'exec with a TTY needs the node-pty module, which does not load here (npm ci builds it): ';
    const message = why + redactAbsolutePaths((e as Error).message);
    throw new Internal(message, {}, { cause: e, ...wholeForAdmins(message, why + (e as Error).message) });
  });
  return nodePty;
}

// ------------------------------------------------------------------ start without a runc process

/** runc's "created" container waits in `runc init`, blocked opening this fifo for writing; crun's, reading it. */
const EXEC_FIFO = 'exec.fifo';

/**
 * Do what `runc start` does (runc 1.1, libcontainer/container_linux.go `exec()` and
 * `handleFifoResult()`): open the exec fifo for reading, which lets the waiting init write
 * "0" and exec the container's process, check the "0", remove the fifo. Doing it in-process
 * saves spawning runc (~10 ms) on every start.
 *
 * The fifo is opened read-write, so it never reads as end-of-file while init has not opened
 * its end yet (a container created a moment ago), and a dead init cannot block the open;
 * the descriptor is then read as a libuv pipe, woken by epoll when init writes: no polling,
 * and no thread-pool read per try (200 concurrent starts polling every millisecond filled
 * Node's four pool threads and held every other file operation up). Anything unexpected
 * returns false, and the caller falls back to `runc start`, which reports the real error.
 *
 * Once the fifo is open, init may write and exec at any moment: giving up then would leave a
 * started container for `runc start` to fail on (under load, a full test run once saw a 2 s
 * wait run out). So with `initPid` it waits as long as that process lives (up to
 * `timeoutMs`, default 60 s); without, `timeoutMs` defaults to 2 s.
 */
export async function releaseThroughExecFifo(fifo: string, opts: { initPid?: number; timeoutMs?: number } = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? (opts.initPid === undefined ? 2000 : 60_000);
  let fd: number;
  try {
    fd = openSync(fifo, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  } catch {
    return false; // no fifo: not a created runc container (or another runtime)
  }
  const pipe = new net.Socket({ fd, readable: true, writable: false });
  try {
    const got = await new Promise<string | undefined>((resolve) => {
      const done = (v: string | undefined) => {
        clearTimeout(timer);
        clearInterval(alive);
        resolve(v);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      // init dead (or a zombie) before it wrote: it never will (runc start then says why)
      const initPid = opts.initPid;
      const alive = initPid === undefined ? undefined : setInterval(() => {
        if (!processAlive(initPid)) done(undefined);
      }, 100);
      pipe.once('data', (b: Buffer) => done(b.toString()));
      pipe.once('error', () => done(undefined));
    });
    if (got === undefined) return false;
    if (got !== '0') throw new Internal(`runc init reported "${got}" through its exec fifo`, undefined, { adminMessage: `runc init reported "${got}" through ${fifo}` });
    await removeStateFile(fifo);
    return true;
  } finally {
    pipe.destroy();
  }
}

/**
 * Do what `crun start` does (crun 1.8, src/libcrun/status.c `libcrun_status_write_exec_fifo`): a
 * created crun container's init waits reading its exec fifo; open the fifo for writing, remove it,
 * write one byte. `crun start` then runs poststart hooks and waits on a notify socket, neither of
 * which the driver configures. The open is non-blocking, so it succeeds only while init holds the
 * other end (ENXIO once init is gone); anything unexpected returns false and the caller runs
 * `crun start`, which reports the real error. Saves a crun process per start (~3 ms of the event
 * loop for its spawn and ~4 ms of CPU for crun here).
 */
export function writeExecFifo(fifo: string): boolean {
  let fd: number;
  try {
    fd = openSync(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
  } catch {
    return false; // no fifo (not created, or started already) or no init reading it
  }
  try {
    unlinkSync(fifo);
    writeSync(fd, Buffer.from([0]));
    return true;
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

// ------------------------------------------------------------------ probes

export interface ProbeOptions {
  /** A static busybox to build the probe rootfs from. */
  busybox?: string;
}

const probeCache = new Map<string, Promise<string | undefined>>();

/**
 * Whether a runtime is usable here: undefined, or the reason why not. Actually
 * runs `true` in a throw-away busybox container (e.g. crun 1.8.1 refuses this
 * host's hybrid cgroup layout only when it runs one). Cached per process.
 */
export function probeRuntime(name: RuntimeName, opts: ProbeOptions = {}): Promise<string | undefined> {
  const key = `${name}:${opts.busybox ?? ''}`;
  let p = probeCache.get(key);
  if (!p) {
    p = probeUncached(name, opts);
    probeCache.set(key, p);
  }
  return p;
}

async function probeUncached(name: RuntimeName, opts: ProbeOptions): Promise<string | undefined> {
  const binary = await findBinary(name);
  if (!binary) return `${name} is not installed`;
  if (process.getuid?.() !== 0) return `${name}: Nimbus runs containers as root only (rootless is not supported)`;
  const busybox = opts.busybox ?? (await findBinary('busybox'));
  if (!busybox) return `${name}: cannot probe without a busybox binary (install busybox-static)`;
  const dir = await processTempDir(`probe-${name}`);
  const id = `nimbus-probe-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const parent = `/${id}`;
  const layout = await detectCgroupLayout();
  const rt = new OciRuntime(name, binary, path.join(dir, 'state'));
  try {
    const rootfs = path.join(dir, 'rootfs');
    await mkdir(path.join(rootfs, 'bin'), { recursive: true });
    await copyFile(busybox, path.join(rootfs, 'bin/busybox'));
    await symlink('busybox', path.join(rootfs, 'bin/true'));
    const { config } = buildOciSpec(
      { id, name: id, rootfs: [], process: { args: ['/bin/true'], env: [], cwd: '/', user: '0:0' }, resources: {} },
      { hardLimits: await readHardLimits(), cgroupsPath: `${parent}/c`, userDb: { passwd: [], group: [] } },
    );
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
    const r = await run(binary, [...rt.globalArgs(), 'run', '--bundle', dir, id], { timeoutMs: 20_000 });
    if (r.code !== 0) {
      const offered = hybridCgroup2Controllers(layout);
      const hint = offered.length ? ` (cgroup2 offers ${offered.join(', ')} here: scripts/cgroup-hybrid mounts them as v1 hierarchies, as systemd's hybrid layout does)` : '';
      return `${name} cannot run a container here: ${runtimeMessage(r.stderr || r.stdout)}${hint}`;
    }
    return undefined;
  } catch (e) {
    return `${name} probe failed: ${(e as Error).message}`;
  } finally {
    await run(binary, [...rt.globalArgs(), 'delete', '--force', id]).catch(() => undefined);
    await removeCgroup(cgroupPaths(layout, `${parent}/c`)).catch(() => undefined);
    await removeCgroupParentIfEmpty(layout, parent);
    await rm(dir, { recursive: true, force: true });
  }
}

/** The runtime to use: `preferred` if given (must be usable), else the first of RUNTIME_NAMES that works here. */
export async function chooseRuntime(preferred?: RuntimeName | 'auto', opts: ProbeOptions = {}): Promise<RuntimeName> {
  if (preferred && preferred !== 'auto') {
    const reason = await probeRuntime(preferred, opts);
    // the caller asked for a runtime this host cannot run: their choice to change (400), not an outage
    if (reason) throw new InvalidArgument(`runtime ${preferred} is not usable on this host (nimbus info lists the usable ones): ${reason}`, { runtime: preferred });
    return preferred;
  }
  const reasons: string[] = [];
  for (const n of RUNTIME_NAMES) {
    const reason = await probeRuntime(n, opts);
    if (reason === undefined) return n;
    reasons.push(reason);
  }
  throw new Unavailable(`no usable OCI runtime: ${reasons.join('; ')}`);
}

/**
 * The two fields forgetStopped needs from runc's state.json. The file is ~34 KB (the whole
 * libcontainer config, seccomp rules included: 0.33 ms to parse here, each removal); runc writes
 * its State with these two first (Go's field order), so its first bytes say them. Anything else
 * at the start is parsed whole.
 */
export async function readRuncStateHead(file: string): Promise<{ id?: unknown; init_process_pid?: unknown }> {
  // read in the caller's turn: a few µs, where each of the open, read and close through the
  // thread pool costs ~50 µs of CPU here
  const fd = openSync(file, 'r');
  try {
    const head = Buffer.alloc(256);
    const bytesRead = readSync(fd, head, 0, head.length, 0);
    const m = /^\{"id":"([0-9A-Za-z_.+-]+)","init_process_pid":(\d+),/.exec(head.toString('latin1', 0, bytesRead));
    if (m) return { id: m[1], init_process_pid: Number(m[2]) };
    return JSON.parse(readFileSync(fd, 'utf8')) as { id?: unknown; init_process_pid?: unknown };
  } finally {
    closeSync(fd);
  }
}
