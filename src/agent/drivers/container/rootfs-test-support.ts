/** Test support: a rootfs of the host's static busybox, for the tests that run real containers. */
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** /bin/busybox with a symlink per applet, and a root user in /etc/passwd and /etc/group. */
export async function makeBusyboxRootfs(rootfs: string, applets: readonly string[]): Promise<void> {
  await mkdir(path.join(rootfs, 'bin'), { recursive: true });
  await mkdir(path.join(rootfs, 'etc'), { recursive: true });
  await copyFile('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  for (const a of applets) await symlink('busybox', path.join(rootfs, 'bin', a));
  await writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
}
