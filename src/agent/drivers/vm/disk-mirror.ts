/**
 * A local root disk moving with its VM (live migration without shared storage), the way libvirt
 * does it with QEMU: the destination QEMU exports its fresh overlay over NBD, the source mirrors
 * its disk into that export (drive-mirror, write-blocking: once in sync every guest write reaches
 * both sides before it completes), RAM is migrated with pause-before-switchover, and in that
 * pause (guest stopped) the mirror is ended at a point-in-time copy before the switch-over. The
 * destination's guest therefore never runs on a disk the source still writes. Between agents with
 * certificates the NBD connection is TLS (migration-tls.ts: the same credentials object as the
 * RAM stream; the export then refuses plain clients).
 */
import { Conflict, NimbusError } from '../../../core/errors.js';
import type { QmpClient } from './qmp.js';
import { TLS_CREDS_ID } from './migration-tls.js';

/** The block backend's name in qemuArgv (-drive id=root). */
const ROOT_DRIVE = 'root';
const EXPORT_ID = 'migrate-root';
const EXPORT_NAME = 'root';
const MIRROR_JOB = 'migrate-root';
/** The source's NBD client node (the mirror's target). */
const TARGET_NODE = 'migrate-target';

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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The node a -drive backend sits on (block-export-add names nodes, not backends). */
async function rootNode(c: Qmp): Promise<string> {
  const node = (await c.execute<BlockInfo[]>('query-block')).find((b) => b.device === ROOT_DRIVE)?.inserted?.['node-name'];
  if (!node) throw new NimbusError('Internal', 'the incoming VM has no root disk to export');
  return node;
}

/**
 * Destination, while QEMU waits for the RAM stream: its overlay exported writable over NBD on
 * host (QEMU activates an image it exports, so the incoming side may be written before the
 * switch-over). Returns the URI the source mirrors into. `tls`: the credentials object is in
 * QEMU (migration-tls.ts) and the server takes TLS clients only.
 */
export async function exportDiskForMigration(c: Qmp, host: string, port: number, tls = false): Promise<string> {
  await c.execute('nbd-server-start', { addr: { type: 'inet', data: { host, port: String(port) } }, ...(tls ? { 'tls-creds': TLS_CREDS_ID } : {}) });
  await c.execute('block-export-add', { type: 'nbd', id: EXPORT_ID, 'node-name': await rootNode(c), name: EXPORT_NAME, writable: true });
  return `nbd://${host.includes(':') ? `[${host}]` : host}:${port}/${EXPORT_NAME}`;
}

/** Destination, once the guest runs here: the export and its server go (nobody else may write this disk). */
export async function endDiskExport(c: Qmp): Promise<void> {
  await c.execute('block-export-del', { id: EXPORT_ID }).catch(() => undefined);
  await c.execute('nbd-server-stop').catch(() => undefined);
}

async function mirrorJob(c: Qmp): Promise<BlockJob | undefined> {
  return (await c.execute<BlockJob[]>('query-block-jobs')).find((j) => j.device === MIRROR_JOB);
}

/**
 * Source, before RAM moves: mirror the disk into the destination's export and wait until both
 * are in sync. `wholeDisk`: the destination has no copy of the backing image, so every cluster
 * goes (sync=full); otherwise only the overlay's own (sync=top). Pauses the outgoing migration
 * before its switch-over, so that finishMirror runs with the guest stopped. `tlsPeer`: the NBD
 * connection is TLS with the credentials object in QEMU, the server's certificate checked for
 * that name.
 */
export async function startMirror(c: Qmp, nbd: string, opts: { wholeDisk: boolean; deadline: number; tlsPeer?: string }): Promise<void> {
  await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }] });
  // the target as a node of its own (drive-mirror's URI target has no place for TLS)
  const u = new URL(nbd);
  await c.execute('blockdev-add', {
    driver: 'nbd', 'node-name': TARGET_NODE, export: decodeURIComponent(u.pathname.replace(/^\//, '')),
    server: { type: 'inet', host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port },
    ...(opts.tlsPeer ? { 'tls-creds': TLS_CREDS_ID, 'tls-hostname': opts.tlsPeer } : {}),
  });
  await c.execute('blockdev-mirror', {
    device: ROOT_DRIVE, 'job-id': MIRROR_JOB, target: TARGET_NODE,
    sync: opts.wholeDisk ? 'full' : 'top', 'copy-mode': 'write-blocking',
  });
  for (;;) {
    const job = await mirrorJob(c);
    if (!job) throw new NimbusError('Internal', 'the disk mirror ended before it was in sync (the destination went away?)');
    if (job.error) throw new NimbusError('Internal', `the disk mirror failed: ${job.error}`);
    if (job.ready) return;
    if (Date.now() > opts.deadline) throw new NimbusError('Unavailable', `the disk mirror was not in sync in time (${job.offset} of ${job.len} bytes)`);
    await sleep(10);
  }
}

/**
 * Source, in the pause before the switch-over (guest stopped): the mirror ends at a point-in-time
 * copy (block-job-cancel on a ready mirror completes it without pivoting), then the migration
 * goes on. Returns the bytes the mirror wrote.
 */
export async function finishMirror(c: Qmp, deadline: number): Promise<number> {
  const job = await mirrorJob(c);
  if (!job) throw new NimbusError('Internal', 'the disk mirror is gone before the switch-over');
  if (!job.ready) throw new Conflict('the disk mirror fell out of sync before the switch-over');
  const bytes = job.offset;
  await c.execute('block-job-cancel', { device: MIRROR_JOB });
  while (await mirrorJob(c)) {
    if (Date.now() > deadline) throw new NimbusError('Unavailable', 'the disk mirror did not end in time');
    await sleep(2);
  }
  await c.execute('migrate-continue', { state: 'pre-switchover' });
  return bytes;
}

/** Source, after a failure or a success alike: no mirror left running, and later migrations (a save) do not pause. */
export async function clearMirror(c: Qmp): Promise<void> {
  if (await mirrorJob(c).catch(() => undefined)) await c.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => undefined);
  for (let i = 0; i < 500 && (await mirrorJob(c).catch(() => undefined)); i++) await sleep(10);
  await c.execute('blockdev-del', { 'node-name': TARGET_NODE }).catch(() => undefined);
  await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: false }] }).catch(() => undefined);
}
