/**
 * The KVM probe (drivers/vm/accel.ts) boots a QEMU whose console is a pipe to nimbusd. When
 * nimbusd is SIGKILLed mid-probe the QEMU is orphaned and never exits: its guest blocks writing
 * to the dead console (the crash campaign found one 256 MiB QEMU per kill during a home's first
 * VM create). A probe that is not our own child at start is such an orphan.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { procStat } from '../core/proc.js';

/** SIGKILL QEMUs booting `initrd` (a path only probes use) that are not children of this process; returns their pids. */
export function killOrphanProbes(initrd: string): number[] {
  const killed: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!(argv[0] ?? '').includes('qemu-system') || !argv.includes(initrd)) continue;
      if (procStat(pid)?.ppid === process.pid) continue; // a probe of ours, in progress
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    } catch {
      /* gone meanwhile */
    }
  }
  return killed;
}
