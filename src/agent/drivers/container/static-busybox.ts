/**
 * The host's statically linked busybox (Debian busybox-static), which runs inside
 * any image's rootfs because it needs no loader or libraries from it.
 */
import { open } from 'node:fs/promises';

const CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

/** Whether an ELF file has no PT_INTERP program header (no dynamic loader needed). */
export async function isStaticElf(file: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(file, 'r');
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return false; // ELF64, little endian
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const table = Buffer.alloc(phentsize * phnum);
    await fh.read(table, 0, table.length, phoff);
    for (let i = 0; i < phnum; i++) if (table.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

let found: Promise<string | undefined> | undefined;

/** Path of a static busybox on this host, or undefined (looked up once per process). */
export function findStaticBusybox(): Promise<string | undefined> {
  found ??= (async () => {
    for (const c of CANDIDATES) if (await isStaticElf(c)) return c;
    return undefined;
  })();
  return found;
}
