/**
 * The overlay's calls over the agent protocol (version 4): carried with their arguments
 * checked, and refused with a Conflict (never sent) to an agent of protocol 3 or older.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NimbusError } from '../../core/errors.js';
import { startAgentServer } from '../remote/agent-server.js';
import { RemoteAgent } from '../remote/remote-agent.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';

const TOKEN = 'overlay-protocol-test-token-0123456789';

async function hostSpeaking(t: { after: (fn: () => Promise<void> | void) => void }, protocol?: { min: number; max: number }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-overlay-proto-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const agent = new FakeAgent();
  agent.underlay = '192.0.2.7';
  const server = await startAgentServer(agent, { token: TOKEN, socketPath: join(dir, 'agent.sock'), ...(protocol ? { protocol } : {}) });
  t.after(() => server.close());
  const remote = new RemoteAgent({ name: 'b', url: server.url, token: TOKEN });
  t.after(() => remote.close());
  return { agent, remote };
}

const isConflict = (re: RegExp) => (e: unknown) => e instanceof NimbusError && e.code === 'Conflict' && re.test(e.message);

test('protocol 4: peers and the underlay address are carried; bad arguments are refused before the agent', async (t) => {
  const { agent, remote } = await hostSpeaking(t);
  await remote.ensureNetwork({ id: 'n1', name: 'span', driver: 'bridge', subnet: '10.70.0.0/24', gateway: '10.70.0.1', internal: false, device: 'nb-n1', mtu: 1450 });
  assert.equal(agent.networks.get('n1')?.mtu, 1450, 'the MTU travels with the spec');
  const peers = [{ ip: '10.70.0.2', mac: '02:42:0a:46:00:02', underlayIp: '192.0.2.1' }];
  await remote.setOverlayPeers('n1', 4242, '192.0.2.7', peers);
  assert.deepEqual(agent.overlays.get('n1'), { vni: 4242, local: '192.0.2.7', peers });
  assert.equal(await remote.underlayAddress(), '192.0.2.7');
  await assert.rejects(remote.setOverlayPeers('n1', 0, '192.0.2.7', peers), /argument 2 \("vni"\)/);
  await assert.rejects(remote.setOverlayPeers('n1', 1, '192.0.2.7', [{ ip: '10.70.0.2' } as never]), /argument 4 \("peers"\)/);
});

test('protocol 3: the overlay calls fail with a Conflict naming the host, and are never sent', async (t) => {
  const { agent, remote } = await hostSpeaking(t, { min: 2, max: 3 });
  assert.equal(await remote.protocolVersion(), 3);
  const upgrade = /host b's agent speaks protocol 3 and cannot carry networks across hosts \((setOverlayPeers|underlayAddress) needs protocol 4\); upgrade it/;
  await assert.rejects(remote.setOverlayPeers('n1', 1, '192.0.2.7', []), isConflict(upgrade));
  await assert.rejects(remote.underlayAddress(), isConflict(upgrade));
  assert.equal(agent.calls('setOverlayPeers').length + agent.calls('underlayAddress').length, 0, 'nothing reached the agent');
  assert.equal((await remote.info()).name.length > 0, true, 'the rest works at 3');
});

test('protocol 8: a routed network\'s peers are carried, checked before the agent; refused with a Conflict at 7', async (t) => {
  const { agent, remote } = await hostSpeaking(t);
  await remote.ensureNetwork({ id: 'n2', name: 'routed', driver: 'route', subnet: '10.71.0.0/24', gateway: '10.71.0.1', internal: false, device: 'nr-n2' });
  const peers = [{ ip: '10.71.0.2', underlayIp: '192.0.2.1', names: ['a'] }];
  await remote.setRoutedPeers('n2', peers);
  assert.deepEqual(agent.routedPeers.get('n2'), peers);
  await assert.rejects(remote.setRoutedPeers('n2', [{ ip: '10.71.0.2' } as never]), /argument 2 \("peers"\)/);
  const old = await hostSpeaking(t, { min: 2, max: 7 });
  await assert.rejects(old.remote.setRoutedPeers('n2', peers), isConflict(/speaks protocol 7 and cannot route a routed network between hosts \(setRoutedPeers needs protocol 8\)/));
  assert.equal(old.agent.calls('setRoutedPeers').length, 0, 'never sent');
});
