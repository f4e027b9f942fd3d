/**
 * The guest the daemon's KVM probe boots: the host's own Debian kernel with an
 * empty initramfs. It cannot reach userspace, but reaching "Kernel panic ...
 * Unable to mount root fs" means the whole kernel booted under the
 * accelerator, which is what the probe must know (a PVM /dev/kvm makes QEMU
 * abort or the kernel hang long before that). No test fixture is needed.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ProbeGuest } from './accel.js';

/** The newest /boot/vmlinuz-*, or undefined. */
export function newestHostKernel(bootDir = '/boot'): string | undefined {
  if (!existsSync(bootDir)) return undefined;
  const kernels = readdirSync(bootDir).filter((f) => f.startsWith('vmlinuz-')).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const last = kernels[kernels.length - 1];
  return last ? path.join(bootDir, last) : undefined;
}

export async function hostProbeGuest(workDir: string): Promise<ProbeGuest | undefined> {
  const kernel = newestHostKernel();
  if (!kernel) return undefined;
  await mkdir(workDir, { recursive: true });
  const initrd = path.join(workDir, 'probe-empty.initrd');
  await writeFile(initrd, '');
  return { kernel, initrd, append: 'console=ttyS0 panic=-1', readyMarker: 'Kernel panic' };
}
