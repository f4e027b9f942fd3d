/**
 * A newc cpio writer (the initramfs format), so guest images are built here
 * without a cpio binary.
 */
export interface CpioEntry {
  name: string;
  /** Including the type bits (0o040000 dir, 0o100000 file, 0o120000 symlink). */
  mode: number;
  data?: Buffer;
}

export const CPIO_DIR = 0o040755;
export const CPIO_FILE = 0o100644;
export const CPIO_EXEC = 0o100755;
export const CPIO_LINK = 0o120777;

function cpioHeader(ino: number, e: CpioEntry, size: number): Buffer {
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  const name = Buffer.from(`${e.name}\0`);
  const fields = ['070701', hex(ino), hex(e.mode), hex(0), hex(0), hex(1), hex(0), hex(size), hex(0), hex(0), hex(0), hex(0), hex(name.length), hex(0)];
  const head = Buffer.concat([Buffer.from(fields.join('')), name]);
  return Buffer.concat([head, Buffer.alloc((4 - (head.length % 4)) % 4)]);
}

export function makeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }]) {
    const data = e.data ?? Buffer.alloc(0);
    parts.push(cpioHeader(ino++, e, data.length), data, Buffer.alloc((4 - (data.length % 4)) % 4));
  }
  return Buffer.concat(parts);
}
