import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildTestGuest, READY_MARKER } from '../../../../scripts/fixtures/guest.js';
import { chooseAccelerator } from './accel.js';
import { GUEST_CACHE } from './vm-test-env.js';

const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-accel-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('accelerator: probed once, says why, cached for this host boot', async () => {
  // a KVM that works boots the test guest in well under a second; one that hangs (PVM here) is
  // waited out: 8 s in this test, the daemon's 20 s default being for loaded hosts
  const g = await buildTestGuest(GUEST_CACHE);
  const cacheFile = path.join(dir, 'accel.json');
  const first = await chooseAccelerator({ guest: { ...g, readyMarker: READY_MARKER }, cacheFile, probeTimeoutMs: 8_000 });
  assert.ok(first.accel === 'kvm' || first.accel === 'tcg');
  // KVM is chosen only on a successful probe boot, and the reason says which way it went
  if (first.accel === 'kvm') assert.match(first.reason, /reached guest readiness/);
  else assert.match(first.reason, /KVM probe failed|\/dev\/kvm absent/);
  assert.equal(first.bootId, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
  const second = await chooseAccelerator({ guest: { ...g, readyMarker: READY_MARKER }, cacheFile });
  assert.equal(second.accel, first.accel);
  assert.match(second.reason, /\(cached for this host boot\)$/);
  assert.equal(second.decidedAt, first.decidedAt);
  const forced = await chooseAccelerator({ guest: { ...g, readyMarker: READY_MARKER }, cacheFile, force: 'tcg' });
  assert.deepEqual([forced.accel, forced.reason], ['tcg', 'forced (NIMBUS_VM_ACCEL=tcg)']);
});
