// An agent killed during the destination half of a live migration (found by the crash
// campaign, npm run chaos --kinds migrate): the half-arrived VM's directory stayed on its
// home for good. On restart, reconcile kills its QEMU and removes the directory; a VM
// that was only created stays, and the source guest is untouched. Real QEMU.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { freshId } from '../instance-driver-conformance.js';
import { makeVmEnv, qemuPidsUnder, type VmEnv } from './vm-test-env.js';
import { VmDriver } from './vm-driver.js';

let env: VmEnv;
before(async () => {
  env = await makeVmEnv('rinc');
});
after(async () => {
  const left = env ? await env.qemuPids() : [];
  await env?.teardown();
  assert.deepEqual(left, [], 'no QEMU outlives the tests');
});

test('reconcile after a kill mid incoming migration: the half-arrived VM goes, a created one stays', async () => {
  const source = env.driver;
  const destDir = path.join(env.base, 'agent-b');
  await mkdir(destDir, { recursive: true });
  const dest = new VmDriver({ stateDir: destDir, accel: env.accel.accel });
  const id = freshId('vm');
  const idle = freshId('vm');
  try {
    await source.create(env.makeSpec(id, ['sh', '-c', 'sleep 1000'], { resources: { memoryBytes: 128 << 20 } }));
    await source.start(id);
    // the destination's half as the control plane starts it; then its agent "dies" (no finish, no abandon)
    await dest.prepareIncoming(await source.migrationSpec(id), '127.0.0.1');
    await dest.create(env.makeSpec(idle, ['true']));
    const incoming = await qemuPidsUnder(destDir);
    assert.equal(incoming.length, 1, 'an incoming QEMU waits at the destination');

    const restarted = new VmDriver({ stateDir: destDir, accel: env.accel.accel });
    const r = await restarted.reconcile();
    assert.deepEqual(r.killed, incoming, 'its QEMU is killed');
    assert.deepEqual(r.removed, [id], 'its directory is removed');
    assert.ok(!existsSync(path.join(destDir, id)));
    assert.deepEqual(await restarted.list(), [idle], 'a VM that was only created stays');
    assert.deepEqual(await qemuPidsUnder(destDir), []);
    assert.equal((await source.state(id)).status, 'running', 'the source guest goes on');
  } finally {
    await dest.abandonIncoming(id).catch(() => undefined);
    await dest.delete(idle).catch(() => undefined);
    await source.delete(id).catch(() => undefined);
  }
});

test('an abandon while finishIncoming waits for the guest to resume ends the wait and removes the half-arrived VM', { timeout: 120_000 }, async () => {
  const source = env.driver;
  const destDir = path.join(env.base, 'agent-c');
  await mkdir(destDir, { recursive: true });
  const dest = new VmDriver({ stateDir: destDir, accel: env.accel.accel });
  const id = freshId('vm');
  try {
    await source.create(env.makeSpec(id, ['sh', '-c', 'sleep 1000'], { resources: { memoryBytes: 128 << 20 } }));
    await source.start(id);
    await dest.prepareIncoming(await source.migrationSpec(id), '127.0.0.1');
    // no stream ever comes: the finish waits for a resume that will not happen
    const finishing = dest.finishIncoming(id, '');
    const outcome = finishing.then(() => 'finished', (e: unknown) => `refused: ${(e as Error).message}`);
    await new Promise((r) => setTimeout(r, 200));
    await dest.abandonIncoming(id);
    let timer: NodeJS.Timeout | undefined;
    const settled = await Promise.race([outcome, new Promise((r) => (timer = setTimeout(() => r('still waiting'), 10_000)))]);
    clearTimeout(timer); // else the file waits it out after its last test
    assert.match(String(settled), /^refused/, 'the finish ends with the abandon');
    assert.ok(!existsSync(path.join(destDir, id)), 'its directory is gone');
    assert.deepEqual(await qemuPidsUnder(destDir), [], 'its QEMU is gone');
    await assert.rejects(dest.finishIncoming(id, ''), /no incoming migration/);
    assert.equal((await source.state(id)).status, 'running', 'the source guest goes on');
  } finally {
    await dest.abandonIncoming(id).catch(() => undefined);
    await source.delete(id).catch(() => undefined);
  }
});
