/**
 * What /proc says of a process: one place for the liveness checks the daemon, the container
 * monitor and the VM supervisor make. Synchronous: procfs answers from memory, never the disk.
 */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  /** R, S, D, Z (zombie), X (dead), T, t, ... */
  state: string;
  ppid: number;
}

/** The state and parent of a process, from /proc/PID/stat; undefined once it is gone. */
export function procStat(pid: number): ProcStat | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name may hold spaces and parentheses: fields start after the last ')'
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: f[0] ?? '', ppid: Number(f[1]) };
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
