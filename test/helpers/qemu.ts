import { readdirSync, readFileSync } from 'node:fs';

/** QEMU processes whose command line mentions dir (a daemon's or an agent's home). */
export function qemuUnder(dir: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(dir))) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * The process a QEMU runs under, its supervisor (qemu-process.ts): in the host's network
 * namespace, where QEMU itself is not (it has one of its own: jailer.ts).
 */
export function supervisorOf(qemuPid: number): number {
  const stat = readFileSync(`/proc/${qemuPid}/stat`, 'utf8');
  // pid (comm) state ppid …: comm may hold spaces and parentheses, so read after the last ')'
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}
