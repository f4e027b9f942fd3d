/**
 * The host routes over a real API server (TCP, bearer tokens for an administrator and a member
 * of one project), a real agent directory on a SQLite store, fake agents as the hosts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer } from '../server.js';
import { hostRoutes } from './hosts.js';
import { agentRoutes } from './agents.js';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import type { Services } from '../../control/services.js';
import { adminAndAlice } from '../testing/principals.js';
import { bearerCall } from '../testing/bearer-call.js';
import { AgentDirectory } from '../../control/agents/agent-directory.js';
import { SPOKEN_PROTOCOL } from '../../agent/remote/agent-protocol.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { container, vm } from '../../store/conformance.js';
import { HostFence } from '../../control/compute/host-fence.js';
import { NotFound } from '../../core/errors.js';
import type { ContainerCreateRequest, VmCreateRequest, VmHostState } from '../../agent/agent.js';
import type { RuntimeState } from '../../agent/drivers/instance-driver.js';


export async function hostApi(t: { after(fn: () => Promise<void>): void }, opts: { fence?: { waits: () => boolean; down: Set<string>; published: unknown[] } } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-host-api-'));
  const stores: Store[] = [];
  let server: ApiServer | undefined;
  let agents: AgentDirectory | undefined;
  t.after(async () => {
    await server?.close();
    await agents?.close();
    for (const s of stores) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const store = await openStore(join(dir, 'nimbus.db'));
  stores.push(store);
  const now = new Date().toISOString();
  for (const id of ['p1', 'p2']) await store.projects.insert({ id, name: id, parentId: null, createdAt: now });
  const hosts = { b: new FakeAgent({ name: 'b', cpus: 32, memoryBytes: 64 * 1024 ** 3, runtimes: ['runc', 'crun'], accelerator: 'kvm' }) };
  agents = await AgentDirectory.open(store, new FakeAgent({ name: 'local' }), 'local', (rec) => hosts[rec.name as 'b'], undefined, { refreshIntervalMs: 0 });
  await agents.register({ name: 'b', url: 'unix:/run/b.sock', token: 't'.repeat(32), protocol: SPOKEN_PROTOCOL });
  const services = {
    store, agents, defaultProjectId: 'p1',
    vms: { countOn: async (n: string) => (await store.vms.list()).filter((v) => v.agent === n).length },
    ...adminAndAlice,
  } as unknown as Services;
  if (opts.fence) {
    const f = opts.fence;
    services.hosts = { localName: 'local', names: () => agents!.names(), has: (n) => agents!.names().includes(n), isDown: (n) => f.down.has(n), get: (n) => agents!.get(n) };
    services.fence = new HostFence({
      store, locked: (_id, fn) => fn(), bounded: (_id, _op, p) => p, fenceWaits: async () => f.waits(), vms: { lockedVm: (_id, fn) => fn() },
    }, { publish: (e) => (f.published.push(e), { ...e, seq: 0, time: '' }) });
  }
  server = new ApiServer([...agentRoutes, ...hostRoutes], services);
  const port = await server.listenTcp('127.0.0.1', 0);
  const sock = join(dir, 'api.sock');
  await server.listenUnix(sock);
  const call = bearerCall(port);
  return { store, agents, hosts, call, sock };
}

test('host routes: listing for anyone (a member counts only its projects\' instances), mutations for administrators', async (t) => {
  const { store, call } = await hostApi(t);
  await store.containers.insert(container('c'.repeat(64), 'web', { projectId: 'p1', host: 'b' }));
  await store.containers.insert(container('d'.repeat(64), 'db', { projectId: 'p2', host: 'b' }));
  await store.vms.insert(vm('e'.repeat(32), 'v1', { projectId: 'p2', agent: 'b' }));

  let r = await call('admin', 'GET', '/hosts');
  assert.equal(r.status, 200);
  const b = r.body.find((h: { name: string }) => h.name === 'b');
  assert.deepEqual(
    [b.state, b.zone, b.disabled, b.cpus, b.accelerator, b.runtimes, b.containers, b.vms, b.allocationRatios],
    ['up', 'default', false, 32, 'kvm', ['runc', 'crun'], 2, 1, { cpu: 4, memory: 1, disk: 1 }],
  );
  assert.ok(!JSON.stringify(r.body).includes('t'.repeat(32)), 'the token is never served');
  assert.deepEqual(r.body.map((h: { name: string; local: boolean }) => [h.name, h.local]), [['local', true], ['b', false]]);
  r = await call('alice', 'GET', '/hosts');
  const mine = r.body.find((h: { name: string }) => h.name === 'b');
  assert.deepEqual([mine.containers, mine.vms], [1, 0], 'a member sees its own project\'s instances only');
  r = await call('alice', 'GET', '/agents');
  assert.deepEqual([r.status, r.body.find((h: { name: string }) => h.name === 'b').vms], [200, 0], 'GET /agents is the same listing');

  for (const [method, path, body] of [['POST', '/hosts/b/disable', {}], ['POST', '/hosts/b/enable', {}], ['PUT', '/hosts/b', { zone: 'z' }], ['DELETE', '/hosts/b', undefined]] as const) {
    r = await call('alice', method, path, body);
    assert.equal(r.status, 403, `${method} ${path} by a member`);
  }

  r = await call('admin', 'POST', '/hosts/b/disable', { reason: 'disk swap' });
  assert.deepEqual([r.status, r.body.disabled, r.body.disabledReason, r.body.disabledBy], [200, true, 'disk swap', 'root']);
  r = await call('admin', 'PUT', '/hosts/b', { zone: 'eu-1a', labels: { ssd: 'true', rack: 'r1' }, allocationRatios: { cpu: 8 } });
  assert.deepEqual([r.status, r.body.zone, r.body.labels, r.body.allocationRatios.cpu], [200, 'eu-1a', { ssd: 'true', rack: 'r1' }, 8]);
  r = await call('admin', 'PUT', '/hosts/b', { unsetLabels: ['rack'], allocationRatios: { cpu: null } });
  assert.deepEqual([r.body.zone, r.body.labels, r.body.allocationRatios.cpu], ['eu-1a', { ssd: 'true' }, 4], 'absent fields kept, null back to the default');
  r = await call('admin', 'GET', '/hosts/b');
  assert.deepEqual([r.status, r.body.disabled, r.body.zone], [200, true, 'eu-1a']);
  r = await call('admin', 'POST', '/hosts/b/enable', {});
  assert.equal(r.body.disabled, false);

  // schemas on every body
  for (const body of [{ zone: 'z', extra: 1 }, { allocationRatios: { cpu: 0 } }, { allocationRatios: { gpu: 2 } }, { labels: { k: 5 } }, { zone: '' }]) {
    r = await call('admin', 'PUT', '/hosts/b', body);
    assert.equal(r.status, 400, JSON.stringify(body));
  }
  r = await call('admin', 'PUT', '/hosts/b', { zone: 'has space' });
  assert.deepEqual([r.status, r.body.error.code], [400, 'InvalidArgument']);
  r = await call('admin', 'POST', '/hosts/b/disable', { reason: 'x'.repeat(300) });
  assert.equal(r.status, 400);
  r = await call('admin', 'POST', '/hosts/nope/disable', {});
  assert.equal(r.status, 404);

  // removal: refused while instances are recorded on it, naming them; never the embedded host
  r = await call('admin', 'DELETE', '/hosts/b');
  assert.equal(r.status, 409);
  assert.match(r.body.error.message, /host b has 2 container\(s\) and 1 VM\(s\)/);
  r = await call('admin', 'DELETE', '/agents/b');
  assert.equal(r.status, 409, 'DELETE /agents refuses the same way');
  r = await call('admin', 'DELETE', '/hosts/local');
  assert.deepEqual([r.status, r.body.error.message], [409, 'the embedded agent cannot be removed']);
  r = await call('admin', 'DELETE', '/agents/local');
  assert.equal(r.status, 409);
  for (const id of ['c'.repeat(64), 'd'.repeat(64)]) await store.containers.delete(id);
  await store.vms.delete('e'.repeat(32));
  r = await call('admin', 'DELETE', '/hosts/b');
  assert.equal(r.status, 204);
  r = await call('admin', 'GET', '/hosts');
  assert.deepEqual(r.body.map((h: { name: string }) => h.name), ['local']);
  assert.equal(await store.agents.get('b'), undefined, 'its row and settings are gone');
});

/** A running container on the fake host that no record names there (what a move or a rebuild can leave). */
function holdStaleContainer(host: FakeAgent, id: string): void {
  host.containers.set(id, { req: { id } as ContainerCreateRequest, state: { status: 'running' } as RuntimeState, logs: [], endpoints: new Map() });
}

test('forgetting a host that answers removes its stale copies first (a migration\'s source its agent never ended); one with a move in flight is refused; one that does not answer is forgotten as it is', async (t) => {
  const fence = { waits: () => false, down: new Set<string>(), published: [] as unknown[] };
  const { store, hosts, call, agents } = await hostApi(t, { fence });
  const b = hosts.b;
  // b holds a VM recorded on the embedded host (it migrated there; b's agent was killed before it
  // removed its stopped copy) and a container no record names at all
  await store.vms.insert(vm('e'.repeat(32), 'moved', { projectId: 'p1', agent: 'local' }));
  b.vms.set('e'.repeat(32), { req: { id: 'e'.repeat(32) } as VmCreateRequest, state: { lifecycle: 'stopped' } as VmHostState });
  holdStaleContainer(b, 'f'.repeat(64));

  // a move in flight: its copies may be the move's own, so nothing is judged and the host stays
  fence.waits = () => true;
  let r = await call('admin', 'DELETE', '/agents/b');
  assert.equal(r.status, 409);
  assert.match(r.body.error.message, /host b still holds copies of instances that live elsewhere now/);
  assert.ok(agents.names().includes('b'), 'still registered');
  assert.ok(b.vms.has('e'.repeat(32)) && b.containers.has('f'.repeat(64)), 'nothing removed while a move is in flight');

  fence.waits = () => false;
  r = await call('admin', 'DELETE', '/agents/b');
  assert.equal(r.status, 204);
  assert.deepEqual([b.vms.size, b.containers.size], [0, 0], 'the stale copies are gone from the host');
  assert.ok(!agents.names().includes('b'), 'and then the host is forgotten');
  assert.deepEqual(fence.published.map((e) => (e as { action: string; attributes: unknown }).attributes), [{ containers: ['f'.repeat(64)], vms: ['e'.repeat(32)] }]);
  assert.ok((await store.vms.get('e'.repeat(32))) !== undefined, 'the VM itself (on the embedded host) untouched');
});

test('a stale copy another fence removed first (the healer\'s, racing a forget) counts as removed', async (t) => {
  const fence = { waits: () => false, down: new Set<string>(), published: [] as unknown[] };
  const { hosts, call, agents } = await hostApi(t, { fence });
  holdStaleContainer(hosts.b, 'f'.repeat(64));
  hosts.b.failNext('removeContainer', new NotFound('no such container'));
  const r = await call('admin', 'DELETE', '/agents/b');
  assert.equal(r.status, 204, JSON.stringify(r.body));
  assert.ok(!agents.names().includes('b'));
});

test('forgetting a host that does not answer does not wait for it: its copies are fenced if its agent registers again', async (t) => {
  const fence = { waits: () => false, down: new Set<string>(['b']), published: [] as unknown[] };
  const { hosts, call, agents } = await hostApi(t, { fence });
  holdStaleContainer(hosts.b, 'f'.repeat(64));
  const r = await call('admin', 'DELETE', '/hosts/b');
  assert.equal(r.status, 204);
  assert.ok(!agents.names().includes('b'));
  assert.equal(hosts.b.calls('listContainers').length, 0, 'the host was not asked');
});
