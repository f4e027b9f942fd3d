/**
 * The parts of a container's bundle besides what buildOciSpec makes (oci-spec.ts), written at
 * create and again at a warm container's claim: its own /etc files and their mounts, the CRIU
 * configuration's annotation, and the check that its program is in the rootfs.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { writeStateFile } from '../../../core/state-files.js';
import type { InstanceSpec } from '../instance-driver.js';
import { CRIU_CONFIG_ANNOTATION } from './checkpoint.js';
import type { OciMount, OciSpec } from './oci-spec.js';
import { checkExecutable } from './rootfs-lookup.js';

/** /etc/hosts, /etc/resolv.conf and /etc/hostname are the container's own files (in its directory, dir), bind-mounted (as Docker does). */
export function etcMounts(dir: string): OciMount[] {
  const etc = path.join(dir, 'etc');
  const rw = ['rbind', 'rprivate', 'nosuid', 'nodev', 'noexec'];
  return ['hosts', 'resolv.conf', 'hostname'].map((f) => ({ destination: `/etc/${f}`, type: 'bind', source: path.join(etc, f), options: rw }));
}

/**
 * Written in place (truncated, not replaced): a bind mount holds the inode. At a claim the
 * directory is there and the hostname is the one written at warm create (a claim keeps the default).
 */
export async function writeEtc(dir: string, spec: InstanceSpec, opts: { claim?: boolean } = {}): Promise<void> {
  const etcDir = path.join(dir, 'etc');
  if (!opts.claim) await mkdir(etcDir, { recursive: true });
  const hostname = spec.hostname ?? spec.id.slice(0, 12);
  const etc = spec.etc ?? { hosts: `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n`, resolvConf: '' };
  await Promise.all([
    writeStateFile(path.join(etcDir, 'hosts'), etc.hosts),
    writeStateFile(path.join(etcDir, 'resolv.conf'), etc.resolvConf),
    opts.claim && spec.hostname === undefined ? undefined : writeStateFile(path.join(etcDir, 'hostname'), `${hostname}\n`),
  ]);
}

/** runc hands CRIU the container's own configuration file (criu.conf in its directory, dir) at a checkpoint (absent: ignored); see checkpoint.ts. */
export function withCriuConfig(dir: string, runtimeName: string, config: OciSpec): void {
  if (runtimeName === 'runc') config.annotations = { ...config.annotations, [CRIU_CONFIG_ANNOTATION]: path.join(dir, 'criu.conf') };
}

/** The process's program must be in the rootfs (rootfs-lookup.ts); mounts over it are not looked into. */
export function checkProgram(rootfs: string, config: OciSpec): void {
  const over = config.mounts.map((m) => m.destination.replace(/\/+$/, ''));
  checkExecutable(rootfs, config.process, (p) => over.some((d) => p === d || p.startsWith(`${d}/`)));
}
