/**
 * The state directories of nimbusd and of `nimbusd agent`, made and closed to other users at each
 * start. The data directories (content, snapshots, containers, VMs, networks, temporary files) are
 * root's alone: image layers, containers' writable layers, VM disks and saved states live there,
 * and a local user (a VM's QEMU runs as one: agent/drivers/vm/qemu-user.ts) must not read them.
 * This is the class of Docker's CVE-2021-41091 (its data directories could be traversed); the home
 * itself may be passed through (sockets may live there) but not listed.
 */
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import type { CompiledOptions } from '../core/config.js';
import { logger } from '../core/log.js';
import { sweepDeadProcessTempDirs } from '../core/temp-dirs.js';

const log = logger('nimbusd');

/** Make `dir` if missing, and take from it every permission `closed` names (existing ones included). */
function closedDirectory(dir: string, closed: number): void {
  mkdirSync(dir, { recursive: true, mode: 0o777 & ~closed });
  const mode = statSync(dir).mode & 0o7777;
  if (mode & closed) chmodSync(dir, mode & ~closed);
}

/** The home (others may pass through, not list or write) and, unless nothing runs here, its data directories (root's alone). */
export function prepareStateDirectories(options: Pick<CompiledOptions, 'home' | 'contentDir' | 'snapshotsDir' | 'containersDir' | 'vmsDir' | 'networkDir' | 'tmpDir'>, opts: { runsInstances: boolean }): void {
  closedDirectory(options.home, 0o066);
  const data = opts.runsInstances ? [options.contentDir, options.snapshotsDir, options.containersDir, options.vmsDir, options.networkDir, options.tmpDir] : [options.tmpDir];
  for (const d of data) closedDirectory(d, 0o077);
}

/** What processes SIGKILLed inside their work left in the system's temporary directory (core/temp-dirs.ts). */
export async function sweepTempDirs(): Promise<void> {
  const removed = await sweepDeadProcessTempDirs().catch((e: unknown) => {
    log.warn('removing what dead processes left in the temporary directory failed', { error: String(e) });
    return [];
  });
  if (removed.length) log.info('removed what dead processes left in the temporary directory', { removed });
}
