/**
 * An agent's address is for system administrators: a member whose VM lives on a host that does
 * not answer reads the host's name and why, never the URL it is reached at (nor the address or
 * socket path the transport names). Over a real API server (TCP, bearer tokens), a real agent
 * directory and VM service on a SQLite store, and a real RemoteAgent for host b at a unix socket
 * nobody serves.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { hostRoutes } from './hosts.js';
import { agentRoutes } from './agents.js';
import { vmRoutes } from './vms.js';
import { AgentDirectory } from '../../control/agents/agent-directory.js';
import { vmRouteFixture } from '../testing/vm-route-fixture.js';
import { RemoteAgent } from '../../agent/remote/remote-agent.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { dockerError } from '../docker/errors.js';


test('an agent that does not answer: a member reads its host\'s name, never its address; an administrator reads both', async (t) => {
  // the agent's address as the control plane knows it: a unix socket path here (an https://HOST:PORT on TCP)
  let socketPath = '';
  let url = '';
  const { call, agents } = await vmRouteFixture(t, {
    prefix: 'nimbus-agent-address-', agent: 'b', routes: [...agentRoutes, ...hostRoutes, ...vmRoutes],
    prepare: async (store, dir, now) => {
      socketPath = join(dir, 'agent-b-internal.sock');
      url = `unix:${socketPath}`;
      await store.agents.put({ name: 'b', url, token: 't'.repeat(32), registeredAt: now });
    },
    openAgents: (store) => AgentDirectory.open(store, new FakeAgent({ name: 'local' }), 'local', (rec) => new RemoteAgent({ name: rec.name, url: rec.url, token: rec.token }), undefined, { refreshIntervalMs: 0 }),
  });
  /** Anything that gives the agent's address away: its URL, the socket's path or name. */
  const leaks = (text: string) => text.includes(socketPath) || text.includes('agent-b-internal') || /unix:|https?:\/\//.test(text);

  // the VM's inspect: the record, no host view, and why
  let r = await call('alice', 'GET', '/vms/web');
  assert.equal(r.status, 200, r.text);
  assert.match(JSON.parse(r.text).hostError, /^agent b: connect ENOENT$/, r.text);
  assert.ok(!leaks(r.text), `a member's inspect: ${r.text}`);
  r = await call('admin', 'GET', '/vms/web');
  assert.ok(JSON.parse(r.text).hostError.includes(url), `an administrator's inspect names the URL: ${r.text}`);

  // an action on it: 503 naming the host
  r = await call('alice', 'POST', '/vms/web/start');
  assert.equal(r.status, 503, r.text);
  assert.match(JSON.parse(r.text).error.message, /agent b/);
  assert.ok(!leaks(r.text), `a member's error: ${r.text}`);
  r = await call('admin', 'POST', '/vms/web/start');
  assert.equal(r.status, 503, r.text);
  assert.ok(r.text.includes(url), `an administrator's error names the URL: ${r.text}`);

  // the hosts listing (GET /hosts, GET /hosts/b, GET /agents): its state and why, no URL
  for (const path of ['/hosts', '/hosts/b', '/agents']) {
    r = await call('alice', 'GET', path);
    assert.equal(r.status, 200, r.text);
    const b = [JSON.parse(r.text)].flat().find((h: { name: string }) => h.name === 'b');
    assert.equal(b.state, 'down', r.text);
    assert.ok(!leaks(r.text), `a member's ${path}: ${r.text}`);
    r = await call('admin', 'GET', path);
    const seen = [JSON.parse(r.text)].flat().find((h: { name: string }) => h.name === 'b');
    assert.equal(seen.url, url, `an administrator's ${path}: ${r.text}`);
    assert.ok(seen.reason.includes(socketPath), `an administrator reads the transport's own words: ${r.text}`);
  }

  // the Docker API's error body is the same words
  const refused = await agents.get('b').info().catch((e: unknown) => e);
  assert.ok(!leaks(dockerError(refused).body.message), dockerError(refused).body.message);
});
