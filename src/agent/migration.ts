/**
 * One live migration driven from outside its two sides: the five steps in order, the failure
 * protocol, and the report from the two sides' figures. The control plane runs it over two
 * agents (VmService.migrate), VmDriver.migrateTo over two drivers in one process.
 */
import type { IncomingMigrationTarget, MigrateOutOptions, OutgoingMigration, VmMigrationSpec } from './agent.js';
import { logger } from '../core/log.js';

const log = logger('migration');

export interface MigrationReport {
  id: string;
  /** From the request to the guest running at the destination. */
  totalMs: number;
  /**
   * Guest-visible: the source's STOP event to the destination's RESUME event (QMP timestamps;
   * exact on one host, and across hosts as good as their clocks agree).
   */
  downtimeMs: number;
  /** QEMU's own figure (source side: stop to end of the last pass). */
  qemuDowntimeMs: number;
  bytes: number;
  /** RAM passes (dirty-sync-count). */
  iterations: number;
  /** Disk bytes mirrored to the destination (a VM with a local disk; 0 otherwise). */
  diskBytes: number;
  /** Bytes mirrored per attached block volume (absent without volumes). */
  volumeBytes?: Record<string, number>;
  /** The limit QEMU planned the last pass against, as it reported it back (the request's when it did not). */
  maxDowntimeMs: number;
  /** RAM and disk went over TLS (agents with certificates from the agent CA); false: in clear. */
  tls: boolean;
}

export function migrationReport(id: string, out: OutgoingMigration, resumedAt: number, maxDowntimeMs: number, totalMs: number): MigrationReport {
  return {
    id,
    totalMs: Math.round(totalMs),
    downtimeMs: out.stoppedAt !== undefined ? Math.round((resumedAt - out.stoppedAt) * 10) / 10 : out.qemuDowntimeMs,
    qemuDowntimeMs: out.qemuDowntimeMs,
    bytes: out.bytes,
    iterations: out.iterations,
    diskBytes: out.diskBytes ?? 0,
    ...(out.volumeBytes ? { volumeBytes: out.volumeBytes } : {}),
    maxDowntimeMs: out.downtimeLimitMs ?? maxDowntimeMs,
    tls: out.tls ?? false,
  };
}

/** The source's half, as the Agent interface (or a driver) offers it for one VM. */
export interface MigrationSource {
  spec(): Promise<VmMigrationSpec>;
  send(uri: string, opts: MigrateOutOptions): Promise<OutgoingMigration>;
  end(outcome: 'moved' | 'resume'): Promise<void>;
}

/** The destination's half; `finish` answers at least when the guest resumed there. */
export interface MigrationDestination<F extends { resumedAt: number }> {
  /** The stream's URI, the NBD export the disk is mirrored into when the VM has a local disk, and whether both are TLS. */
  prepare(spec: VmMigrationSpec): Promise<IncomingMigrationTarget>;
  finish(consoleHistory: string): Promise<F>;
  abandon(): Promise<void>;
}

/**
 * source spec → destination prepare → source send → destination finish → (arrived) → source
 * end('moved'). A failure while sending or finishing abandons the destination and lets the
 * guest go on at the source (a failure of that cleanup is logged; the first error is thrown).
 * `arrived` runs once the guest runs at the destination and before the source lets go: the
 * control plane records the move there, so a crash after it leaves the record with the guest.
 */
export async function migrateLive<F extends { resumedAt: number }>(
  id: string,
  source: MigrationSource,
  destination: MigrationDestination<F>,
  opts: { maxDowntimeMs?: number; maxBandwidthBytes?: number; arrived?: (finished: F) => void; failed?: (e: unknown) => void } = {},
): Promise<{ report: MigrationReport; finished: F }> {
  const t0 = performance.now();
  const maxDowntimeMs = opts.maxDowntimeMs ?? 300;
  const spec = await source.spec();
  const { uri, nbd, nbdVolumes, tls, checksStreamToken } = await destination.prepare(spec);
  // the source proves the move is its own only to a destination that checks (an older one would hand the token to QEMU)
  const streamToken = checksStreamToken ? spec.streamToken : undefined;
  let out: OutgoingMigration;
  let finished: F;
  try {
    out = await source.send(uri, { maxDowntimeMs, ...(opts.maxBandwidthBytes !== undefined ? { maxBandwidthBytes: opts.maxBandwidthBytes } : {}), ...(nbd ? { nbd } : {}), ...(nbdVolumes ? { nbdVolumes } : {}), ...(tls ? { tls } : {}), ...(streamToken ? { streamToken } : {}) });
    finished = await destination.finish(out.consoleHistory);
  } catch (e) {
    await destination.abandon().catch((x: unknown) => log.warn('cleaning up a failed incoming migration failed', { id, error: String(x) }));
    await source.end('resume').catch((x: unknown) => log.warn('resuming a VM after a failed migration failed', { id, error: String(x) }));
    opts.failed?.(e);
    throw e;
  }
  opts.arrived?.(finished);
  await source.end('moved');
  return { report: migrationReport(id, out, finished.resumedAt, maxDowntimeMs, performance.now() - t0), finished };
}
