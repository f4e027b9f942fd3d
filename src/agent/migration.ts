/**
 * One live migration's report, from the two sides' figures (each side runs on its own agent;
 * the control plane, or VmDriver.migrateTo in one process, puts them together).
 */
import type { OutgoingMigration } from './agent.js';

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
  /** The limit QEMU planned the last pass against, as it reported it back (the request's when it did not). */
  maxDowntimeMs: number;
}

export function migrationReport(id: string, out: OutgoingMigration, resumedAt: number, maxDowntimeMs: number, totalMs: number): MigrationReport {
  return {
    id,
    totalMs: Math.round(totalMs),
    downtimeMs: out.stoppedAt !== undefined ? Math.round((resumedAt - out.stoppedAt) * 10) / 10 : out.qemuDowntimeMs,
    qemuDowntimeMs: out.qemuDowntimeMs,
    bytes: out.bytes,
    iterations: out.iterations,
    maxDowntimeMs: out.downtimeLimitMs ?? maxDowntimeMs,
  };
}
