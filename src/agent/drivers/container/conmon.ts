/**
 * conmon (containers/conmon 2.x) as the per-container monitor: it runs
 * `<runtime> create`, holds the container's stdio, writes the k8s-file log,
 * reaps the container and writes its exit code to `<exit-dir>/<id>`. It
 * double-forks, so it outlives the Nimbus process (daemon restarts are safe).
 *
 * Protocol (as podman's libpod/oci_conmon_linux.go uses it): fd 3 is the sync
 * pipe (`_OCI_SYNCPIPE`), fd 4 the start pipe (`_OCI_STARTPIPE`). conmon waits
 * for one byte on the start pipe, runs `runtime create`, then writes
 * `{"data": <pid>}` (or a negative data + "message" on failure) to the sync pipe.
 */
import { spawn } from 'node:child_process';
import { closeSync, constants as fsConstants, fstatSync, openSync, readFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Internal, wholeForAdmins } from '../../../core/errors.js';
import { redactAbsolutePaths, redactHostPaths, systemErrorWithoutHostNames } from '../../../core/redaction.js';
import { removeStateFile } from '../../../core/state-files.js';
import { CommandRunner, launchable, type LaunchOptions } from '../../command-runner.js';
import type { LogRecord } from '../instance-driver.js';

export interface ConmonOptions {
  conmonPath: string;
  id: string;
  name: string;
  runtimePath: string;
  /** e.g. ['--root=/var/lib/nimbus/runtime/runc'] */
  runtimeArgs: string[];
  bundle: string;
  containerPidFile: string;
  conmonPidFile: string;
  logPath: string;
  /** conmon rotates the log before it would pass this many bytes (container-logs.ts keeps the old files). */
  logSizeMax?: number;
  exitDir: string;
  socketDir: string;
  /** Directory (must exist) where conmon also writes `exit` and `oom` files. */
  persistDir?: string;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** conmon's own stderr goes here (appended). */
  stderrPath?: string;
  timeoutMs?: number;
  /** The main process on a terminal (`-t`): conmon takes the runtime's console socket; config.json needs process.terminal. */
  terminal?: boolean;
  /**
   * The main process's stdin through the attach socket (`-i`): 'once' closes it when the first
   * attached client leaves (Docker's StdinOnce), 'open' keeps it for the next (`--leave-stdin-open`).
   */
  stdin?: 'open' | 'once';
  /** A checkpoint's images: conmon runs `<runtime> restore --detach --image-path` instead of create (a live move's destination). */
  restore?: string;
  /**
   * Makes a FIFO at the given path (the driver's stock, fifo-stock.ts). With it, conmon is started
   * from a long-lived host shell and reports through that FIFO (launchFromShell); without it, or
   * with arguments the shell does not take, nimbusd spawns conmon itself with pipes.
   */
  placeFifo?: (dest: string) => Promise<void>;
}

/** conmon's command line (without the binary). */
export function conmonArgs(o: ConmonOptions): string[] {
  const args = [
    '--api-version', '1',
    '-c', o.id,
    '-u', o.id,
    '-n', o.name,
    '-r', o.runtimePath,
    '-b', o.bundle,
    '-p', o.containerPidFile,
    '-P', o.conmonPidFile,
    '-l', `k8s-file:${o.logPath}`,
    '--exit-dir', o.exitDir,
    '--socket-dir-path', o.socketDir,
    '--log-level', o.logLevel ?? 'error',
  ];
  if (o.logSizeMax !== undefined) args.push('--log-size-max', String(o.logSizeMax));
  if (o.persistDir) args.push('--persist-dir', o.persistDir);
  if (o.terminal) args.push('--terminal');
  if (o.stdin) args.push('--stdin');
  if (o.stdin === 'open') args.push('--leave-stdin-open');
  for (const a of o.runtimeArgs) args.push('--runtime-arg', a);
  if (o.restore) args.push('--restore', o.restore);
  return args;
}

export interface ConmonLaunched {
  /** The container's init pid (container is in `created` state). */
  pid: number;
  /** The monitor's pid (from the conmon pidfile). */
  conmonPid: number;
}

/** Parse one sync-pipe message. */
export function parseSyncMessage(text: string): { data: number; message?: string } {
  const obj = JSON.parse(text) as { data?: unknown; message?: unknown };
  if (typeof obj.data !== 'number') throw new Error(`bad conmon sync message ${JSON.stringify(text)}`);
  const out: { data: number; message?: string } = { data: obj.data };
  if (typeof obj.message === 'string') out.message = obj.message;
  return out;
}

/** Launch conmon, let it run `runtime create`, and wait for the container pid. */
export async function launchConmon(o: ConmonOptions): Promise<ConmonLaunched> {
  const args = conmonArgs(o);
  const { placeFifo, stderrPath } = o;
  const shell = placeFifo && stderrPath ? shellLaunch(o, stderrPath) : undefined;
  const result = placeFifo && shell && launchable(o.conmonPath, args, shell) ? await launchFromShell(o, args, shell, placeFifo) : await launchFromDaemon(o, args);
  if (result.data < 0) {
    // the container's owner reads it: the runtime by name and its words without this host's paths; all of it for administrators
    const failed = `${o.restore ? 'restore' : 'create'} ${o.id} failed: `;
    const said = (result.message ?? '').trim() || 'unknown error';
    const message = `${path.basename(o.runtimePath)} ${failed}${redactHostPaths(said)}`;
    throw new Internal(message, { id: o.id }, wholeForAdmins(message, `${o.runtimePath} ${failed}${said}`));
  }
  const conmonPid = await readPidFile(o.conmonPidFile);
  return { pid: result.data, conmonPid: conmonPid ?? -1 };
}

/**
 * conmon's starts go through their own host shells, two at a time (creates run side by side). An
 * idle shell does not hold nimbusd up, and one whose nimbusd is gone reads end-of-file and exits.
 */
let shells: CommandRunner | undefined;
const conmonShells = () => (shells ??= new CommandRunner(2));

/** How the shell starts conmon: where it runs, its sync pipe a FIFO beside its other files. */
function shellLaunch(o: ConmonOptions, stderrPath: string): LaunchOptions {
  const cwd = o.persistDir ?? o.bundle;
  return { cwd, env: { _OCI_SYNCPIPE: '3' }, stderrFile: stderrPath, fd3: path.join(cwd, 'conmon-sync'), timeoutMs: o.timeoutMs ?? 30_000 };
}

/**
 * conmon started by a host shell (CommandRunner.launch), its sync pipe a FIFO: opened here for
 * reading first (non-blocking: the shell's open for writing then succeeds at once), read through
 * libuv (epoll reports nothing before a writer has opened it, and end-of-file once every writer
 * has closed it: conmon died without a word). No start pipe: conmon goes on at once.
 */
async function launchFromShell(o: ConmonOptions, args: string[], shell: LaunchOptions, placeFifo: (dest: string) => Promise<void>): Promise<{ data: number; message?: string }> {
  const fifo = shell.fd3;
  await placeFifo(fifo);
  let pipe: net.Socket | undefined;
  try {
    pipe = new net.Socket({ fd: openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK), readable: true, writable: false });
    const message = readSyncMessage(pipe, o);
    message.catch(() => undefined); // awaited below, after the shell's answer
    const launched = await conmonShells().launch(o.conmonPath, args, shell);
    if (launched.code !== 0) {
      const said = (await readFile(shell.stderrFile, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join('; ');
      const whole = `cannot run conmon for ${o.id}: exit ${launched.code}${launched.output.trim() ? `: ${launched.output.trim()}` : ''}${said ? ` (${said})` : ''}`;
      // conmon's and the shell's words are about this host: every path in them is one of its own
      const message = redactAbsolutePaths(whole);
      throw new Internal(message, { id: o.id }, wholeForAdmins(message, whole));
    }
    return await message;
  } finally {
    // conmon ignores SIGPIPE: a later write to its end (an exit status) fails harmlessly
    pipe?.destroy();
    await removeStateFile(fifo);
  }
}

/** The first line conmon writes to its sync pipe, parsed; rejects on end-of-file or the timeout. */
function readSyncMessage(sync: NodeJS.ReadableStream, o: ConmonOptions, exited?: () => number | null | undefined): Promise<{ data: number; message?: string }> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      done();
      reject(new Internal(`conmon for ${o.id} did not report a pid within ${o.timeoutMs ?? 30000} ms`));
    }, o.timeoutMs ?? 30_000);
    const done = () => {
      clearTimeout(timer);
      sync.removeAllListeners('data');
      sync.removeAllListeners('end');
      sync.removeAllListeners('close');
    };
    sync.on('data', (b: Buffer) => {
      buf += b.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      done();
      try {
        resolve(parseSyncMessage(buf.slice(0, nl)));
      } catch (e) {
        reject(e);
      }
    });
    sync.on('end', () => {
      done();
      reject(new Internal(`conmon for ${o.id} closed the sync pipe without a pid${exited ? ` (exit ${String(exited())})` : ''}`));
    });
    // our end closed first (the launch failed): nothing more will come, and the timer must not hold the process
    sync.on('close', () => {
      done();
      reject(new Internal(`the sync pipe of conmon for ${o.id} was closed before it reported`));
    });
    sync.on('error', () => undefined);
  });
}

/** conmon spawned by nimbusd with pipes for its sync (fd 3) and start (fd 4) messages. */
async function launchFromDaemon(o: ConmonOptions, args: string[]): Promise<{ data: number; message?: string }> {
  const errFd = o.stderrPath ? await open(o.stderrPath, 'a') : undefined;
  try {
    const child = spawn(o.conmonPath, args, {
      stdio: ['ignore', 'ignore', errFd ? errFd.fd : 'ignore', 'pipe', 'pipe'],
      detached: true,
      // conmon writes its `oom` marker into its working directory (as podman runs it, from the
      // container's own directory); without this it lands in the daemon's cwd.
      cwd: o.persistDir ?? o.bundle,
      env: { ...process.env, _OCI_SYNCPIPE: '3', _OCI_STARTPIPE: '4' },
    });
    const sync = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
    const start = child.stdio[4] as NodeJS.WritableStream & { destroy(): void };
    let exited: number | null | undefined;
    child.on('exit', (code) => {
      exited = code;
    });
    start.on('error', () => undefined);
    try {
      const message = readSyncMessage(sync, o, () => exited);
      const failed = new Promise<never>((_, reject) => child.on('error', (e) => {
        const message = `cannot run conmon: ${systemErrorWithoutHostNames(e)}`;
        reject(new Internal(message, undefined, { cause: e, ...wholeForAdmins(message, `cannot run conmon: ${e.message}`) }));
      }));
      start.write(Buffer.from([0]));
      return await Promise.race([message, failed]);
    } finally {
      // Close our ends: conmon ignores SIGPIPE, so later writes (the exit status) fail harmlessly.
      sync.destroy();
      start.destroy();
      child.unref();
    }
  } finally {
    await errFd?.close();
  }
}

// The small reads below are synchronous: a few µs each, where a thread-pool round trip costs ~50 µs
// of CPU on a small host (docs/warm-start.md, "Small file operations in turn").
export async function readPidFile(file: string): Promise<number | undefined> {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Exit code written by conmon (`<exit-dir>/<id>`), undefined while none. */
export async function readExitFile(file: string): Promise<{ code: number; time: string } | undefined> {
  try {
    const fd = openSync(file, 'r');
    let text: string;
    let mtime: Date;
    try {
      mtime = fstatSync(fd).mtime;
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
    const t = text.trim();
    if (t === '') return undefined;
    const code = Number(t);
    if (!Number.isInteger(code)) return undefined;
    return { code, time: mtime.toISOString() };
  } catch {
    return undefined;
  }
}

/** True when pid runs conmon for container id (guards against pid reuse). */
export async function isConmonFor(pid: number, id: string): Promise<boolean> {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return (argv[0] ?? '').endsWith('conmon') && argv.includes(id);
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ k8s-file logs

/** `<RFC3339Nano> stdout|stderr F|P <text>` → record, or undefined for junk. */
export function parseK8sLogLine(line: string): LogRecord | undefined {
  const a = line.indexOf(' ');
  if (a < 0) return undefined;
  const b = line.indexOf(' ', a + 1);
  if (b < 0) return undefined;
  const stream = line.slice(a + 1, b);
  if (stream !== 'stdout' && stream !== 'stderr') return undefined;
  const c = line.indexOf(' ', b + 1);
  const tag = c < 0 ? line.slice(b + 1) : line.slice(b + 1, c);
  // conmon writes a bare F or P (no split for those); other writers may add flags after a colon
  const flags = tag === 'F' || tag === 'P' ? [tag] : tag.split(':');
  const partial = flags.includes('P');
  if (!partial && !flags.includes('F')) return undefined;
  const rec: LogRecord = { time: line.slice(0, a), stream, line: c < 0 ? '' : line.slice(c + 1) };
  if (partial) rec.partial = true;
  return rec;
}

/** Parse many lines (a trailing incomplete line is ignored). */
export function parseK8sLog(text: string): LogRecord[] {
  const out: LogRecord[] = [];
  const lines = text.split('\n');
  lines.pop(); // the part after the last newline is not complete yet
  for (const l of lines) {
    const r = parseK8sLogLine(l);
    if (r) out.push(r);
  }
  return out;
}
