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
