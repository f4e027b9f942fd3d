/**
 * What /proc says of a process: one place for the liveness checks the daemon, the container
 * monitor and the VM supervisor make. Synchronous: procfs answers from memory, never the disk.
 */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  comm: string;
  /** R, S, D, Z (zombie), X (dead), T, t, ... */
  state: string;
  ppid: number;
  /** CPU time used, user + system, in clock ticks. */
  cpuTicks: number;
  /** The CPU it last ran on. */
  processor: number;
  /** Its scheduling policy (0 normal, 1 SCHED_FIFO, 2 SCHED_RR, ...). */
  policy: number;
}

/** The text of a /proc/PID/stat (or /proc/PID/task/TID/stat). */
export function parseProcStat(text: string): ProcStat {
  // the command name may hold spaces and parentheses: fields start after the last ')'
  const close = text.lastIndexOf(')');
  const f = text.slice(close + 2).split(' ');
  // f[0] is field 3 of proc(5): processor is field 39, policy field 41
  return { comm: text.slice(text.indexOf('(') + 1, close), state: f[0] ?? '', ppid: Number(f[1]), cpuTicks: Number(f[11]) + Number(f[12]), processor: Number(f[36]), policy: Number(f[38]) };
}

/** The state and parent of a process, from /proc/PID/stat; undefined once it is gone. */
export function procStat(pid: number): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * True while `pid` runs: not gone, not a zombie waiting for its parent. With `marker`, only if
 * its command line also contains it (a guard against the pid's reuse by another process).
 */
export function processAlive(pid: number | undefined, marker?: string): boolean {
  if (!pid || pid <= 0) return false;
  const st = procStat(pid);
  if (!st || st.state === 'Z' || st.state === 'X') return false;
  if (marker === undefined) return true;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

/** The parent of a process, undefined once it is gone. */
export function parentPid(pid: number): number | undefined {
  return procStat(pid)?.ppid;
}
