/**
 * VM image files checked before a VM is given them (imports and adoptions of disk images,
 * kernels and initrds): what they are, and that they reach no other file on the host.
 */
import { open, stat } from 'node:fs/promises';
import { InvalidArgument } from '../../core/errors.js';
import { run } from '../../core/exec.js';

/**
 * What qemu-img says of a disk image, refusing what a VM must not be given: a format other than
 * raw or qcow2, and a qcow2 whose backing or external data file would reach another file on the
 * host (an image is hostile until checked, like a layer).
 */
export async function inspectDiskImage(file: string): Promise<{ format: 'raw' | 'qcow2'; size: number; virtualSize: number }> {
  const r = await run('qemu-img', ['info', '--output=json', file]);
  // qemu-img names the file: the caller's upload lives in a host path it need not learn
  if (r.code !== 0) throw new InvalidArgument(`not a disk image qemu-img can read: ${(r.stderr.trim().split('\n').pop() ?? '').split(file).join('the image')}`);
  const info = JSON.parse(r.stdout) as { format?: string; 'virtual-size'?: number; 'actual-size'?: number; 'backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string } } };
  if (info.format !== 'raw' && info.format !== 'qcow2') throw new InvalidArgument(`disk image format ${info.format ?? 'unknown'}: raw or qcow2 expected`);
  if (info['backing-filename']) throw new InvalidArgument(`refusing a qcow2 with a backing file (${info['backing-filename']}): it would reach another file on the host`);
  if (info['format-specific']?.data?.['data-file']) throw new InvalidArgument('refusing a qcow2 with an external data file');
  return { format: info.format, size: (await stat(file)).size, virtualSize: info['virtual-size'] ?? 0 };
}

/** Most a kernel or an initrd may take: the kernel loads both into guest RAM. */
const MAX_BOOT_FILE_BYTES = 1024 * 1024 * 1024;

/**
 * A kernel must be a bzImage ("HdrS" at 0x202, the x86 boot protocol) or an ELF image; an initrd a
 * cpio archive, plain or in a compression the kernel unpacks. Checked for a clear error now rather
 * than a guest that never boots; what the file does inside the guest is the guest's business.
 */
export async function inspectBootFile(file: string, kind: 'kernel' | 'initrd'): Promise<{ format: 'kernel' | 'initrd'; size: number; virtualSize: number }> {
  const { size } = await stat(file);
  if (size === 0) throw new InvalidArgument(`the ${kind} is empty`);
  if (size > MAX_BOOT_FILE_BYTES) throw new InvalidArgument(`the ${kind} is larger than ${MAX_BOOT_FILE_BYTES / 1024 / 1024} MiB`);
  const head = Buffer.alloc(0x206);
  const fh = await open(file, 'r');
  try {
    await fh.read(head, 0, head.length, 0);
  } finally {
    await fh.close();
  }
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (kind === 'kernel') {
    const bzImage = head.subarray(0x202, 0x206).toString('latin1') === 'HdrS';
    if (!bzImage && !starts(0x7f, 0x45, 0x4c, 0x46)) throw new InvalidArgument('not a kernel: a bzImage or an ELF image expected');
  } else {
    const cpio = head.subarray(0, 6).toString('latin1');
    const known = cpio === '070701' || cpio === '070702' || cpio === '070707' ||
      starts(0x1f, 0x8b) || starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) || starts(0x28, 0xb5, 0x2f, 0xfd) ||
      starts(0x02, 0x21, 0x4c, 0x18) || starts(0x42, 0x5a, 0x68) || starts(0x5d, 0x00, 0x00) || starts(0x89, 0x4c, 0x5a, 0x4f);
    if (!known) throw new InvalidArgument('not an initrd: a cpio archive (plain, gzip, xz, zstd, lz4, bzip2, lzma or lzo) expected');
  }
  return { format: kind, size, virtualSize: 0 };
}
