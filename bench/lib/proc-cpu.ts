/**
 * CPU time of other processes, read from /proc: what a benchmark's peers (a PostgreSQL cluster,
 * a child process tree) spent, beside what the measured process reports of itself.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** Linux's USER_HZ: /proc/PID/stat counts CPU time in these ticks (100 on every common build). */
const TICKS_PER_SEC = 100;

function stat(pid: number): { ppid: number; ticks: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name may hold spaces and parentheses: the fields after its last ')' are fixed
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return undefined; // gone meanwhile
  }
}

/** User + system CPU milliseconds of a process and its live descendants (exited ones are not counted). */
export function treeCpuMs(rootPid: number): number {
  const all = new Map<number, { ppid: number; ticks: number }>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const s = stat(pid);
    if (s) all.set(pid, s);
  }
  const children = new Map<number, number[]>();
  for (const [pid, s] of all) children.set(s.ppid, [...(children.get(s.ppid) ?? []), pid]);
  let ticks = 0;
  const stack = [rootPid];
  while (stack.length) {
    const pid = stack.pop()!;
    ticks += all.get(pid)?.ticks ?? 0;
    stack.push(...(children.get(pid) ?? []));
  }
  return (ticks * 1000) / TICKS_PER_SEC;
}

/** The postmaster of a fixture cluster from its URL's socket directory (the data directory beside it), or undefined. */
export function postmasterPid(url: string): number | undefined {
  // a unix-socket URL has no host part (postgres://user@/db?host=/dir/socket): WHATWG URL refuses it
  const m = /[?&]host=([^&]+)/.exec(url);
  if (!m) return undefined;
  const host = decodeURIComponent(m[1]!);
  try {
    return Number(readFileSync(path.join(path.dirname(host), 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
}

/**
 * The whole host's softirq ticks from /proc/stat (every core): where packets crossing veth pairs,
 * bridges and tunnels are handled, whichever process was on the core.
 */
export function hostSoftirqTicks(): number {
  return Number(readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/)[7] ?? NaN);
}

/**
 * User + system ticks of the kernel's ksoftirqd threads: the softirq work that did not run in the
 * context of the task that raised it (past the softirq loop's budget). Softirqs that did run there
 * are in that task's own time already.
 */
export function ksoftirqdTicks(): number {
  let ticks = 0;
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    try {
      if (!readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('ksoftirqd/')) continue;
    } catch {
      continue;
    }
    ticks += stat(pid)?.ticks ?? 0;
  }
  return ticks;
}

/** Ticks to seconds. */
export const ticksToSec = (ticks: number): number => ticks / TICKS_PER_SEC;
