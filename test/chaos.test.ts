/**
 * The crash campaign's own guard: its checker sees what a killed daemon leaves (so it can
 * fail), its sweep removes it, and a short campaign (3 rounds: creates, removals, network
 * changes) runs clean against a real nimbusd, runc and registry.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { startTestRegistryWithImages } from './helpers/registry-images.js';
import { waitOperation } from '../bench/lib/daemon.js';
import { createChaosDaemon, sweepHome } from '../scripts/chaos-daemon.js';
import { findLeaks, idsInHome, snapshotHost, type HomeIdentity } from '../scripts/chaos-host.js';
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

test('a short campaign: 3 rounds of kill -9 during creates, removals and network changes leak nothing', { timeout: 180_000 }, async () => {
  const lines: string[] = [];
  const r = await runCampaign({ rounds: 3, seed: 13, kinds: ['create', 'remove', 'network'], killAfterMs: [300, 1500], log: (l) => lines.push(l) });
  assert.equal(r.rounds.length, 3);
  assert.equal(r.kills, 3, lines.join('\n'));
  assert.equal(r.leaks, 0, lines.join('\n'));
  assert.match(lines.at(-1)!, /^chaos: 3 rounds, 3 kills, 0 leaks/);
});
