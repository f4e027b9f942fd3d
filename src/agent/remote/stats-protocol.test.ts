// Stats over the agent protocol: the network counters travel in containerStats' and vmStats'
// answers, an answer without them (what a protocol-4 agent sends) still comes back whole, and
// vmStats (protocol 5) is refused to a connection that agreed on 4 rather than sent.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../core/errors.js';
import type { Agent } from '../agent.js';
import type { InstanceStats } from '../drivers/instance-driver.js';
import { startAgentServer } from './agent-server.js';
import { RemoteAgent } from './remote-agent.js';

const TOKEN = 'stats-test-token-0123456789';

const withNetwork: InstanceStats = {
  cpuUsageNs: 5e9, memoryBytes: 1 << 20, pids: 1, time: '2026-01-01T00:00:00.000Z',
  network: { rxBytes: 10, txBytes: 20, rxPackets: 1, txPackets: 2, endpoints: [{ hostIf: 'vifabcdef01.0', ifindex: 42, rxBytes: 10, txBytes: 20, rxPackets: 1, txPackets: 2 }] },
};
const without: InstanceStats = { cpuUsageNs: 1e9, memoryBytes: 1 << 20, pids: 3, time: '2026-01-01T00:00:00.000Z' };

async function pair(t: TestContext, protocol?: { min: number; max: number }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-stats-rpc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const calls: string[] = [];
  // only what these calls reach; anything else would be a test bug
  const agent = {
    vmStats: async (id: string) => (calls.push(`vmStats ${id}`), withNetwork),
    containerStats: async (id: string) => (calls.push(`containerStats ${id}`), without),
    onVmExit: () => () => undefined, // the server's event hub subscribes
    onContainerExit: () => () => undefined,
  } as unknown as Agent;
  const server = await startAgentServer(agent, { token: TOKEN, socketPath: path.join(dir, 'agent.sock') });
  t.after(() => server.close());
  const client = new RemoteAgent({ name: 'test', url: server.url, token: TOKEN, ...(protocol ? { protocol } : {}) });
  t.after(() => client.close());
  return { client, calls };
}

test('vmStats carries the network counters; containerStats without them parses as it is', async (t) => {
  const { client, calls } = await pair(t);
  assert.deepEqual(await client.vmStats('v1'), withNetwork);
  assert.deepEqual(await client.containerStats('c1'), without);
  assert.deepEqual(calls, ['vmStats v1', 'containerStats c1']);
});

test('vmStats is protocol 5: a connection on 4 refuses it before sending', async (t) => {
  const { client, calls } = await pair(t, { min: 2, max: 4 });
  await assert.rejects(client.vmStats('v1'), (e) => hasCode(e, 'Conflict') && /vmStats needs protocol 5/.test((e as Error).message));
  assert.deepEqual(await client.containerStats('c1'), without, 'the older call still answers');
  assert.deepEqual(calls, ['containerStats c1']);
});
