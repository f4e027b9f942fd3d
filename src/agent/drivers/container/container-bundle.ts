/**
 * The parts of a container's bundle besides what buildOciSpec makes (oci-spec.ts), written at
 * create and again at a warm container's claim: its own /etc files and their mounts, the CRIU
 * configuration's annotation, and the check that its program is in the rootfs.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { writeStateFile } from '../../../core/state-files.js';
import type { InstanceSpec } from '../instance-driver.js';
import type { MountSpec } from '../../snapshots/snapshotter.js';
import { CRIU_CONFIG_ANNOTATION } from './checkpoint.js';
import type { OciMount, OciSpec } from './oci-spec.js';
import { checkExecutable, pathOf } from './rootfs-lookup.js';

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
  if (!opts.claim) mkdirSync(etcDir, { recursive: true }); // in this turn: no thread-pool round trip
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

/**
 * The process's program must be in the rootfs (rootfs-lookup.ts); mounts over it are not looked into.
 *
 * `layers`, given only where the rootfs' own upper layer holds nothing but what runc made for its
 * mount points (a warm container's at its claim; not a cold create, whose upper may be a moved
 * container's): a lookup found good is then remembered by what decides it, the image's layers
 * (the lowerdir chain), the program, PATH, the working directory and the mount points. Through
 * overlayfs a PATH search is ~0.25 ms of the event loop: 5–6 % of a repeated burst of 200 warm
 * claims of one image (bench log). Snapshot directories are numbered once per home and layers
 * never change, so a chain's key is not reused for other content; a refusal is not remembered.
 */
export function checkProgram(rootfs: string, config: OciSpec, layers?: MountSpec[]): void {
  const over = config.mounts.map((m) => m.destination.replace(/\/+$/, ''));
  const lower = layers && lowerChainOf(layers);
  const key = lower && JSON.stringify([lower, config.process.args[0], pathOf(config.process.env), config.process.cwd, over]);
  if (key && foundPrograms.has(key)) return;
  checkExecutable(rootfs, config.process, (p) => over.some((d) => p === d || p.startsWith(`${d}/`)));
  if (!key) return;
  if (foundPrograms.size >= FOUND_PROGRAMS_MAX) foundPrograms.clear();
  foundPrograms.add(key);
}

const FOUND_PROGRAMS_MAX = 1024;
const foundPrograms = new Set<string>();

/** The read-only layers of a rootfs that is one overlay with a fresh upper layer; undefined for any other. */
function lowerChainOf(rootfs: MountSpec[]): string | undefined {
  const [only, ...rest] = rootfs;
  if (!only || rest.length || only.type !== 'overlay' || !only.options.some((o) => o.startsWith('upperdir='))) return undefined;
  return only.options.find((o) => o.startsWith('lowerdir='));
}
