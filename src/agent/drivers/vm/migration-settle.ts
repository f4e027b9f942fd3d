/**
 * The wait before a live migration under TCG.
 *
 * Under TCG, QEMU 7.2 loses pages of a guest live-migrated in its first seconds: the guest
 * panics on arrival (docs/vms.md, "Left"; scripts/tcg-migration-repro.ts, bare QEMU: 4 dead
 * guests in 54 moves begun within a second of the start, none in 60 begun 5 s after). A TCG VM
 * that booted here less than this ago waits out the rest before its migration begins (one that
 * arrived by migration has waited at its source already).
 * NIMBUS_TCG_MIGRATION_SETTLE_MS: 0 turns the wait off. KVM guests never wait.
 */
import { InvalidArgument } from '../../../core/errors.js';
import type { VmRecord } from './vm-record.js';

/** How long after its boot a TCG guest may begin a live migration. */
export const DEFAULT_TCG_MIGRATION_SETTLE_MS = 5_000;

/** NIMBUS_TCG_MIGRATION_SETTLE_MS, or the default; InvalidArgument for anything but 0..600000. */
export function tcgMigrationSettleMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.NIMBUS_TCG_MIGRATION_SETTLE_MS;
  if (raw === undefined || raw === '') return DEFAULT_TCG_MIGRATION_SETTLE_MS;
  const ms = Number(raw);
  if (!Number.isInteger(ms) || ms < 0 || ms > 600_000) throw new InvalidArgument(`NIMBUS_TCG_MIGRATION_SETTLE_MS must be a whole number of milliseconds from 0 to 600000, got "${raw}"`);
  return ms;
}

/** How long a VM waits before its live migration begins (see DEFAULT_TCG_MIGRATION_SETTLE_MS). */
export function migrationSettleWaitMs(r: Pick<VmRecord, 'startedAt' | 'arrivedAt'> & { config: Pick<VmRecord['config'], 'accel'> }, now: number, settleMs: number): number {
  if (r.config.accel !== 'tcg' || !r.startedAt || settleMs <= 0) return 0;
  if (r.arrivedAt === r.startedAt) return 0; // it booted elsewhere, at least the settle ago
  const age = now - Date.parse(r.startedAt);
  return Number.isFinite(age) ? Math.min(settleMs, Math.max(0, settleMs - age)) : 0;
}

