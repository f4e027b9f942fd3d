import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_TCG_MIGRATION_SETTLE_MS, migrationSettleWaitMs, tcgMigrationSettleMs } from './migration-settle.js';

const at = (iso: string) => Date.parse(iso);
const started = '2026-12-06T10:00:00.000Z';

test('a TCG guest waits out the rest of the settle since its boot here; an older one, one that arrived by migration, a KVM one or a setting of 0 does not', () => {
  const tcg = { startedAt: started, config: { accel: 'tcg' as const } };
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T10:00:00.800Z'), 5_000), 4_200);
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T10:00:04.999Z'), 5_000), 1);
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T10:00:05.000Z'), 5_000), 0);
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T11:00:00.000Z'), 5_000), 0);
  // a clock that went back: never more than the settle itself
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T09:00:00.000Z'), 5_000), 5_000);
  assert.equal(migrationSettleWaitMs(tcg, at('2026-12-06T10:00:00.800Z'), 0), 0);
  assert.equal(migrationSettleWaitMs({ startedAt: started, config: { accel: 'kvm' } }, at('2026-12-06T10:00:00.100Z'), 5_000), 0);
  assert.equal(migrationSettleWaitMs({ config: { accel: 'tcg' } }, at(started), 5_000), 0);
  // arrived by migration a moment ago: its source waited out its boot
  assert.equal(migrationSettleWaitMs({ startedAt: started, arrivedAt: started, config: { accel: 'tcg' } }, at('2026-12-06T10:00:00.300Z'), 5_000), 0);
  // arrived, then started again here (a fresh boot): it waits
  assert.equal(migrationSettleWaitMs({ startedAt: '2026-12-06T10:00:00.000Z', arrivedAt: '2026-12-06T09:59:00.000Z', config: { accel: 'tcg' } }, at('2026-12-06T10:00:01.000Z'), 5_000), 4_000);
  assert.equal(migrationSettleWaitMs({ startedAt: 'not a time', config: { accel: 'tcg' } }, at(started), 5_000), 0);
});

test('NIMBUS_TCG_MIGRATION_SETTLE_MS: the default, 0 to turn it off, and a clear error for anything else', () => {
  assert.equal(tcgMigrationSettleMs({}), DEFAULT_TCG_MIGRATION_SETTLE_MS);
  assert.equal(tcgMigrationSettleMs({ NIMBUS_TCG_MIGRATION_SETTLE_MS: '' }), DEFAULT_TCG_MIGRATION_SETTLE_MS);
  assert.equal(tcgMigrationSettleMs({ NIMBUS_TCG_MIGRATION_SETTLE_MS: '0' }), 0);
  assert.equal(tcgMigrationSettleMs({ NIMBUS_TCG_MIGRATION_SETTLE_MS: '2500' }), 2500);
  for (const bad of ['-1', '1.5', 'five', '600001']) {
    assert.throws(() => tcgMigrationSettleMs({ NIMBUS_TCG_MIGRATION_SETTLE_MS: bad }), (e: Error & { code?: string }) => e.code === 'InvalidArgument' && e.message.includes('NIMBUS_TCG_MIGRATION_SETTLE_MS'));
  }
});
