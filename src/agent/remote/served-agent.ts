/**
 * For the protocol tests: an agent served on a unix socket of a temporary home and a RemoteAgent
 * speaking to it, both gone with the test. `protocol`: the range the server speaks (an older
 * agent's, to see what the control plane's side refuses).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { Agent } from '../agent.js';
import { startAgentServer } from './agent-server.js';
import { RemoteAgent } from './remote-agent.js';

export async function servedAgent(t: TestContext, agent: Agent & { host: { name: string } }, token: string, protocol?: { min: number; max: number }): Promise<{ remote: RemoteAgent; socket: string }> {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-agent-proto-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  const socket = join(home, 'agent.sock');
  const server = await startAgentServer(agent, { token, socketPath: socket, ...(protocol ? { protocol } : {}) });
  t.after(() => server.close());
  const remote = new RemoteAgent({ name: agent.host.name, url: server.url, token });
  t.after(() => remote.close());
  return { remote, socket };
}
