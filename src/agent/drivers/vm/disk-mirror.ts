/**
 * Local disks moving with their VM (live migration without shared storage: its root disk and its
 * attached block volumes), the way libvirt does it with QEMU, each disk on its own: the
 * destination QEMU exports its fresh image over NBD, the source mirrors the disk into that export
 * (blockdev-mirror, write-blocking: once in sync every guest write reaches both sides before it
 * completes), RAM is migrated with pause-before-switchover, and in that pause (guest stopped)
 * each mirror is ended at a point-in-time copy before the switch-over. The
 * destination's guest therefore never runs on a disk the source still writes. Between agents with
 * certificates the NBD connection is TLS (migration-tls.ts: the same credentials object as the
 * RAM stream; the export then refuses plain clients).
 */
import { Conflict, NimbusError } from '../../../core/errors.js';
import type { QmpClient } from './qmp.js';
import { TLS_AUTHZ_ID, TLS_CREDS_ID } from './migration-tls.js';
import { connectForQemu, listenForQemu } from './qemu-peer-sockets.js';

/** The block backend's name in qemuArgv (-drive id=root). */
const ROOT_DRIVE = 'root';

type Qmp = Pick<QmpClient, 'execute'>;

interface BlockInfo {
  device: string;
  inserted?: { 'node-name'?: string };
}

interface BlockJob {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready?: boolean;
  status?: string;
  error?: string;
}

/**
 * One disk that moves with its VM: the root disk (the -drive backend "root") or a block volume
 * (its blockdev node, docs/volumes.md). Each has its own export at the destination, its own
 * mirror job and NBD client node at the source.
 */
export interface MovingDisk {
  /** "root", or the block volume's id. */
  key: string;
  /** What QMP names it by at either end: the root's backend, a volume's node. */
  device: string;
  /** A volume's node is its own name; the root's node is looked up (block-export-add names nodes). */
  node?: string;
}

export const ROOT_DISK: MovingDisk = { key: 'root', device: ROOT_DRIVE };
export const volumeDisk = (volumeId: string, node: string): MovingDisk => ({ key: volumeId, device: node, node });

// QEMU's node names are at most 31 characters: a volume's are from the first 24 of its id (as its node's)
const short = (d: MovingDisk) => d.key.slice(0, 24);
const exportId = (d: MovingDisk) => (d.key === 'root' ? 'migrate-root' : `mx-${short(d)}`);
const exportName = (d: MovingDisk) => (d.key === 'root' ? 'root' : `vol-${short(d)}`);
const jobId = exportId;
const targetNode = (d: MovingDisk) => (d.key === 'root' ? 'migrate-target' : `mt-${short(d)}`);

/** The name the NBD server's listening socket is handed over under. */
const NBD_LISTENER = 'nbd-listener';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The node a disk sits on (block-export-add names nodes, not backends). */
async function nodeOf(c: Qmp, d: MovingDisk): Promise<string> {
  if (d.node) return d.node;
  const node = (await c.execute<BlockInfo[]>('query-block')).find((b) => b.device === d.device)?.inserted?.['node-name'];
  if (!node) throw new NimbusError('Internal', `the incoming VM has no ${d.key} disk to export`);
  return node;
}

/**
 * Destination, while QEMU waits for the RAM stream: each disk exported writable over NBD on host
 * (QEMU activates an image it exports, so the incoming side may be written before the
 * switch-over). Returns the URI the source mirrors into, per disk key. `tls`: the credentials
 * object is in QEMU (migration-tls.ts) and the server takes TLS clients only.
 */
export async function exportDisksForMigration(c: Qmp, qmpSocket: string, host: string, disks: readonly MovingDisk[], tls = false, pinned = false): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (!disks.length) return out;
  // `pinned`: only the source the migration takes (acceptOnlyFrom's list) may connect. The
  // listening socket is the agent's, handed over: QEMU has no network of its own (jailer.ts)
  const port = await listenForQemu(qmpSocket, host, NBD_LISTENER, {
    execute: 'nbd-server-start',
    arguments: { addr: { type: 'fd', data: { str: NBD_LISTENER } }, ...(tls ? { 'tls-creds': TLS_CREDS_ID, ...(pinned ? { 'tls-authz': TLS_AUTHZ_ID } : {}) } : {}) },
  });
  for (const d of disks) {
    await c.execute('block-export-add', { type: 'nbd', id: exportId(d), 'node-name': await nodeOf(c, d), name: exportName(d), writable: true });
    out[d.key] = `nbd://${host.includes(':') ? `[${host}]` : host}:${port}/${exportName(d)}`;
  }
  return out;
}

/** Destination, once the guest runs here: the exports and their server go (nobody else may write these disks). */
export async function endDiskExports(c: Qmp, disks: readonly MovingDisk[]): Promise<void> {
  if (!disks.length) return;
  for (const d of disks) await c.execute('block-export-del', { id: exportId(d) }).catch(() => undefined);
  await c.execute('nbd-server-stop').catch(() => undefined);
}

async function jobOf(c: Qmp, d: MovingDisk): Promise<BlockJob | undefined> {
  return (await c.execute<BlockJob[]>('query-block-jobs')).find((j) => j.device === jobId(d));
}

/** A disk to mirror: where to (the destination's export) and whether every cluster goes. */
export interface MirrorTarget {
  disk: MovingDisk;
  nbd: string;
  /** The destination has no copy of the backing image (a template's clone, a volume): sync=full; otherwise only the overlay's own clusters (sync=top). */
  wholeDisk: boolean;
}

/**
 * Source, before RAM moves: mirror each disk into its export at the destination and wait until
 * all are in sync. Pauses the outgoing migration before its switch-over, so that finishMirrors
 * runs with the guest stopped. `tlsPeer`: the NBD connections are TLS with the credentials object
 * in QEMU, the server's certificate checked for that name.
 */
export async function startMirrors(c: Qmp, targets: readonly MirrorTarget[], opts: { deadline: number; tlsPeer?: string; connectFor?: string }): Promise<void> {
  if (!targets.length) return;
  await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }] });
  for (const t of targets) {
    // the target as a node of its own (drive-mirror's URI target has no place for TLS)
    const u = new URL(t.nbd);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const node = {
      driver: 'nbd', 'node-name': targetNode(t.disk), export: decodeURIComponent(u.pathname.replace(/^\//, '')),
      ...(opts.tlsPeer ? { 'tls-creds': TLS_CREDS_ID, 'tls-hostname': opts.tlsPeer } : {}),
    };
    // `connectFor`: the QEMU (its QMP socket) takes the connection as a descriptor, made here (qemu-peer-sockets.ts)
    if (opts.connectFor) {
      const name = `nbd-${targetNode(t.disk)}`;
      await connectForQemu(opts.connectFor, host, Number(u.port), name, { execute: 'blockdev-add', arguments: { ...node, server: { type: 'fd', str: name } } });
    } else {
      await c.execute('blockdev-add', { ...node, server: { type: 'inet', host, port: u.port } });
    }
    await c.execute('blockdev-mirror', {
      device: t.disk.device, 'job-id': jobId(t.disk), target: targetNode(t.disk),
      sync: t.wholeDisk ? 'full' : 'top', 'copy-mode': 'write-blocking',
    });
  }
  for (const t of targets) {
    for (;;) {
      const job = await jobOf(c, t.disk);
      if (!job) throw new NimbusError('Internal', `the ${t.disk.key} disk's mirror ended before it was in sync (the destination went away?)`);
      if (job.error) throw new NimbusError('Internal', `the ${t.disk.key} disk's mirror failed: ${job.error}`);
      if (job.ready) break;
      if (Date.now() > opts.deadline) throw new NimbusError('Unavailable', `the ${t.disk.key} disk's mirror was not in sync in time (${job.offset} of ${job.len} bytes)`);
      await sleep(10);
    }
  }
}

/**
 * Source, in the pause before the switch-over (guest stopped): each mirror ends at a
 * point-in-time copy (block-job-cancel on a ready mirror completes it without pivoting), then the
 * migration goes on. Returns the bytes the mirrors wrote, per disk key.
 */
export async function finishMirrors(c: Qmp, disks: readonly MovingDisk[], deadline: number): Promise<Record<string, number>> {
  const bytes: Record<string, number> = {};
  for (const d of disks) {
    const job = await jobOf(c, d);
    if (!job) throw new NimbusError('Internal', `the ${d.key} disk's mirror is gone before the switch-over`);
    if (!job.ready) throw new Conflict(`the ${d.key} disk's mirror fell out of sync before the switch-over`);
    bytes[d.key] = job.offset;
    await c.execute('block-job-cancel', { device: jobId(d) });
  }
  for (const d of disks) {
    while (await jobOf(c, d)) {
      if (Date.now() > deadline) throw new NimbusError('Unavailable', `the ${d.key} disk's mirror did not end in time`);
      await sleep(2);
    }
  }
  await c.execute('migrate-continue', { state: 'pre-switchover' });
  return bytes;
}

/** Source, after a failure or a success alike: no mirror left running, and later migrations (a save) do not pause. */
export async function clearMirrors(c: Qmp, disks: readonly MovingDisk[]): Promise<void> {
  if (!disks.length) return;
  for (const d of disks) {
    if (await jobOf(c, d).catch(() => undefined)) await c.execute('block-job-cancel', { device: jobId(d), force: true }).catch(() => undefined);
  }
  for (const d of disks) {
    for (let i = 0; i < 500 && (await jobOf(c, d).catch(() => undefined)); i++) await sleep(10);
    await c.execute('blockdev-del', { 'node-name': targetNode(d) }).catch(() => undefined);
  }
  await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: false }] }).catch(() => undefined);
}
