/**
 * The crash campaign's own guard: its checker sees what a killed daemon leaves (so it can
 * fail) on the daemon's home and on a second agent's, its sweep removes it, and a short campaign (3 rounds: creates, removals, network
 * changes) runs clean against a real nimbusd, runc and registry.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startTestRegistryWithImages } from './helpers/registry-images.js';
import { waitOperation } from '../bench/lib/daemon.js';
import { createChaosDaemon, sweepHome } from '../scripts/chaos-daemon.js';
import { findLeaks, homeFileLeaks, idsInHome, snapshotHost, type HomeIdentity } from '../scripts/chaos-host.js';
import { buildTestGuest, GUEST_CACHE_DIR, GUEST_HOST_DIRS_ENV } from '../scripts/fixtures/guest.js';
import { runCampaign } from '../scripts/chaos.js';
import { freePort } from '../src/agent/network/network-test-env.js';

test('the checker finds what a SIGKILLed daemon left running, and the sweep removes it', { timeout: 120_000 }, async () => {
  const reg = await startTestRegistryWithImages();
  const before = await snapshotHost();
  const d = createChaosDaemon({ NIMBUS_WARM_POOL: '0' });
  const ids = new Set<string>();
  try {
    await d.start();
    const image = `${reg.host}/nimbus-test/busybox:latest`;
    const op = await d.client.json<{ id: string }>('POST', '/images/pull', { reference: image });
    assert.equal((await waitOperation(d.client, op.id, 60)).status, 'succeeded');
    const ports = [{ hostIp: '127.0.0.1', hostPort: await freePort(), containerPort: 80 }];
    const c = await d.client.json<{ id: string }>('POST', '/containers', { image, cmd: ['sleep', '1000'], ports, start: true });
    ids.add(c.id);
    // killed and never restarted: the container, its monitor, mounts, cgroup, namespace and port rule stay
    await d.kill();
    idsInHome(d.home).forEach((x) => ids.add(x));
    const me: HomeIdentity = { home: d.home, table: d.net.NIMBUS_NFT_TABLE!, bridge: d.net.NIMBUS_BRIDGE!, ids };
    const kinds = new Set((await findLeaks(me, before, new Set())).map((l) => l.kind));
    for (const k of ['mount', 'cgroup', 'netns', 'link', 'nft', 'process'] as const) assert.ok(kinds.has(k), `a ${k} leak is reported (got ${[...kinds].join(', ')})`);
  } finally {
    await d.kill();
    await sweepHome(d.home, ids);
    await reg.stop();
  }
  assert.equal(existsSync(d.home), false);
  const me: HomeIdentity = { home: d.home, table: d.net.NIMBUS_NFT_TABLE!, bridge: d.net.NIMBUS_BRIDGE!, ids };
  assert.deepEqual(await findLeaks(me, before, new Set()), [], 'the sweep left nothing');
});

test('the checker also sees a killed second agent\'s home: its QEMU and the VM\'s state directory; the sweep removes them', { timeout: 120_000 }, async () => {
  const guest = await buildTestGuest(GUEST_CACHE_DIR);
  const before = await snapshotHost();
  const env = { ...GUEST_HOST_DIRS_ENV, NIMBUS_VM_ACCEL: process.env.NIMBUS_VM_ACCEL || 'tcg' };
  const d = createChaosDaemon(env);
  const agent = createChaosDaemon(env, { name: 'chaos-b', controlPlane: d.socket });
  const ids = new Set<string>();
  try {
    await d.start();
    await agent.start();
    const vm = await d.client.json<{ id: string }>('POST', '/vms', { name: 'v', memoryMiB: 128, agent: 'chaos-b', kernel: guest.kernel, initrd: guest.initrd, append: guest.append });
    ids.add(vm.id);
    await d.client.json('POST', `/vms/${vm.id}/start`);
    // both killed, never restarted: the QEMU (it outlives its agent) and the state stay on the agent's home
    await Promise.all([d.kill(), agent.kill()]);
    const me: HomeIdentity = { home: agent.home, table: agent.net.NIMBUS_NFT_TABLE!, bridge: agent.net.NIMBUS_BRIDGE!, ids };
    const leaks = [...(await findLeaks(me, before, new Set())), ...homeFileLeaks(agent.home)];
    assert.ok(leaks.some((l) => l.kind === 'process' && l.what.includes('qemu')), `the agent's QEMU is reported: ${JSON.stringify(leaks)}`);
    assert.ok(leaks.some((l) => l.kind === 'file' && l.what.includes(join('vms', 'instances', vm.id))), `the VM's state directory is reported: ${JSON.stringify(leaks)}`);
  } finally {
    await Promise.all([d.kill(), agent.kill()]);
    await sweepHome(agent.home, ids);
    await sweepHome(d.home, ids);
  }
  assert.equal(existsSync(agent.home), false);
  const me: HomeIdentity = { home: agent.home, table: agent.net.NIMBUS_NFT_TABLE!, bridge: agent.net.NIMBUS_BRIDGE!, ids };
  assert.deepEqual(await findLeaks(me, before, new Set()), [], 'the sweep left nothing');
});

test('a short campaign: 3 rounds of kill -9 during creates, removals and network changes leak nothing', { timeout: 180_000 }, async () => {
  const lines: string[] = [];
  const r = await runCampaign({ rounds: 3, seed: 13, kinds: ['create', 'remove', 'network'], killAfterMs: [300, 1500], log: (l) => lines.push(l) });
  assert.equal(r.rounds.length, 3);
  assert.equal(r.kills, 3, lines.join('\n'));
  assert.equal(r.leaks, 0, lines.join('\n'));
  assert.match(lines.at(-1)!, /^chaos: 3 rounds, 3 kills, 0 leaks/);
});
