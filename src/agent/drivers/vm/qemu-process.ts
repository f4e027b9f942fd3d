/**
 * QEMU as its own supervised process, independent of the daemon (the VM
 * counterpart of conmon): a detached `sh` in its own session runs QEMU, waits
 * for it and writes its exit status to a file. A daemon SIGKILL leaves both
 * running; a new daemon finds QEMU by its pid file, talks to it over the QMP
 * socket and reads the exit status once it has gone. (QEMU's -daemonize would
 * survive too, but nobody would be left to collect its exit status.)
 *
 * The driver holds no QMP connection between operations: QEMU serves one QMP
 * client at a time, and a short session per operation (≈ 2 ms) lets an old and
 * a new driver instance, or a CLI tool, take turns.
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { openSync, closeSync, existsSync } from 'node:fs';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Internal } from '../../../core/errors.js';
import { jailedCommand, type LaunchJail } from './jailer.js';
import { fdMonitorSocket } from './qemu.js';
import { QmpClient } from './qmp.js';
import { processAlive } from '../../../core/proc.js';

export interface InstancePaths {
  dir: string;
  qmpSocket: string;
  /** Its second QMP monitor, where descriptors are handed over (qemu.ts fdMonitorSocket). */
  fdQmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  pidFile: string;
  supervisorPidFile: string;
  exitStatusFile: string;
  /** QEMU's own stderr (startup errors, warnings). */
  qemuLog: string;
  overlay: string;
  savedState: string;
  record: string;
}

export function instancePaths(dir: string): InstancePaths {
  return {
    dir,
    qmpSocket: path.join(dir, 'qmp.sock'),
    fdQmpSocket: fdMonitorSocket(path.join(dir, 'qmp.sock')),
    consoleSocket: path.join(dir, 'console.sock'),
    consoleLog: path.join(dir, 'console.log'),
    pidFile: path.join(dir, 'qemu.pid'),
    supervisorPidFile: path.join(dir, 'supervisor.pid'),
    exitStatusFile: path.join(dir, 'exit-status'),
    qemuLog: path.join(dir, 'qemu.log'),
    overlay: path.join(dir, 'root.qcow2'),
    savedState: path.join(dir, 'saved.state'),
    record: path.join(dir, 'vm.json'),
  };
}

/**
 * A VM's directory is root's alone (0700): its QEMU, once it has dropped to a user of its own,
 * opens nothing there (what it needs later comes as descriptors: qmp-fds.ts), and no other user
 * reads its disks, saved state or console log. Directories made before this was so are closed at
 * their next launch.
 */
export async function closeToOthers(dir: string): Promise<void> {
  await chmod(dir, 0o700);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function readPid(file: string): Promise<number | undefined> {
  try {
    const n = Number((await readFile(file, 'utf8')).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** QEMU's raw exit status as the supervisor recorded it, if it has exited. */
export async function readExitStatus(p: InstancePaths): Promise<number | undefined> {
  try {
    const n = Number((await readFile(p.exitStatusFile, 'utf8')).trim());
    return Number.isInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Remove what one QEMU run leaves behind (sockets, pid and status files); keeps disk, console log and record. */
export async function removeRunFiles(p: InstancePaths, opts: { keepExitStatus?: boolean } = {}): Promise<void> {
  const files = [p.qmpSocket, p.fdQmpSocket, p.consoleSocket, p.pidFile, p.supervisorPidFile];
  if (!opts.keepExitStatus) files.push(p.exitStatusFile, `${p.exitStatusFile}.tmp`);
  for (const f of files) await rm(f, { force: true });
}

export interface Launched {
  qemuPid: number;
  supervisorPid: number;
}

// QEMU in the background so that the shell can let go of the input (a saved state, unlinked once
// restored: held open here, its blocks would stay allocated for the VM's life), then waited for
const SUPERVISOR = '"$0" "$@" & exec 3<&-; wait $!; s=$?; echo $s > exit-status.tmp && mv exit-status.tmp exit-status';

/** The descriptor QEMU reads a restore's saved state from (`-incoming fd:3`): launchQemu's `input`. */
export const INPUT_FD = 3;

/**
 * Start QEMU under its supervisor, through its jailer (jailer.ts: its taps, its namespaces, a share
 * jail), and wait until its QMP socket answers. `input`: a file opened here (as root) for QEMU to
 * read as its fd 3 (a saved state: QEMU may have dropped to a user of its own by the time it
 * reads). On failure nothing is left running and the error carries QEMU's stderr.
 */
export async function launchQemu(qemu: string, qemuArgs: string[], p: InstancePaths, launch: LaunchJail, opts: { timeoutMs?: number; input?: string } = {}): Promise<Launched> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  // the jailer, then QEMU: the same process, exec after exec
  const { binary, argv } = jailedCommand(qemu, qemuArgs, launch);
  await removeRunFiles(p);
  const logFd = openSync(p.qemuLog, 'w');
  let inputFd: number | undefined;
  let supervisorPid: number;
  try {
    if (opts.input !== undefined) inputFd = openSync(opts.input, 'r');
    const stdio: StdioOptions = ['ignore', logFd, logFd, ...(inputFd !== undefined ? [inputFd] : [])];
    const child = spawn('/bin/sh', ['-c', SUPERVISOR, binary, ...argv], { cwd: p.dir, detached: true, stdio });
    child.unref();
    if (!child.pid) throw new Internal(`cannot start ${binary}`);
    supervisorPid = child.pid;
  } finally {
    closeSync(logFd);
    if (inputFd !== undefined) closeSync(inputFd);
  }
  const deadline = Date.now() + timeoutMs;
  const fail = async (why: string): Promise<never> => {
    const qemuPid = await readPid(p.pidFile);
    if (processAlive(qemuPid, p.qmpSocket)) process.kill(qemuPid!, 'SIGKILL');
    for (let i = 0; i < 100 && processAlive(supervisorPid); i++) await sleep(20);
    const log = existsSync(p.qemuLog) ? (await readFile(p.qemuLog, 'utf8')).trim() : '';
    await removeRunFiles(p);
    throw new Internal(`QEMU did not start: ${why}${log ? `: ${log.split('\n').slice(-3).join(' | ')}` : ''}`, { argv });
  };
  for (;;) {
    if ((await readExitStatus(p)) !== undefined || !processAlive(supervisorPid)) return fail('it exited');
    if (existsSync(p.qmpSocket)) {
      try {
        const c = await QmpClient.connect(p.qmpSocket, { timeoutMs: 2000 });
        c.close();
        const qemuPid = await readPid(p.pidFile);
        if (qemuPid) {
          await writeFile(p.supervisorPidFile, `${supervisorPid}\n`);
          return { qemuPid, supervisorPid };
        }
      } catch {
        /* not listening yet */
      }
    }
    if (Date.now() > deadline) return fail(`no QMP socket within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** One short QMP session. */
export async function withQmp<T>(p: InstancePaths, fn: (c: QmpClient) => Promise<T>, timeoutMs = 5000): Promise<T> {
  const c = await QmpClient.connect(p.qmpSocket, { timeoutMs });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}
