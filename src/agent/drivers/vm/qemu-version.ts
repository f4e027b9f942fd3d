/**
 * What the QEMU binary's version says about its command line. QEMU 9.1 moved `-runas` and
 * `-chroot` under `-run-with user=…,chroot=…`, and 10.0 removed the old options (Debian
 * bookworm ships 7.2, bookworm-backports 10.0); `qemuArgv` writes whichever the binary takes.
 */
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** "QEMU emulator version 10.0.2 (Debian …)" → 10.0.2; undefined for anything else. */
export function parseQemuVersion(text: string): QemuVersion | undefined {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0) } : undefined;
}

/** `-run-with user=` exists from 9.1 on. */
export function takesRunWithUser(v: QemuVersion | undefined): boolean {
  return v !== undefined && (v.major > 9 || (v.major === 9 && v.minor >= 1));
}

const known = new Map<string, boolean>();

/**
 * The file `binary` names now (a bare name through PATH, as exec finds it) and its identity: an
 * upgraded QEMU is a new file (a new inode, or a new mtime and size), so it is asked again.
 */
function identity(binary: string): string {
  const dirs = binary.includes('/') ? [''] : (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const dir of dirs) {
    const file = dir ? path.join(dir, binary) : binary;
    const st = statSync(file, { throwIfNoEntry: false });
    if (st?.isFile()) return `${file}\0${st.dev}:${st.ino}:${st.mtimeMs}:${st.size}`;
  }
  return binary;
}

/**
 * Whether `binary` drops to its user with `-run-with`: asked once per binary file (`-version` takes
 * ~15 ms; a stat per launch tells an upgraded binary from the one asked). A binary that cannot say
 * is taken for an old one: its launch then fails with its own words.
 */
export function qemuTakesRunWith(binary: string): boolean {
  const key = identity(binary);
  let v = known.get(key);
  if (v === undefined) {
    try {
      v = takesRunWithUser(parseQemuVersion(execFileSync(binary, ['-version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] })));
    } catch {
      v = false;
    }
    known.set(key, v);
  }
  return v;
}
