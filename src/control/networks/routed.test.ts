/**
 * Routed networks across hosts, the control plane's side, against a real SQLite store and
 * recording hosts: which host gets a route to which endpoint, via which underlay address, as
 * endpoints appear, move and go; no VXLAN, VNI or lower MTU for them. The kernel side and the
 * isolation are end to end in test/overlay.e2e.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { container } from '../../store/conformance.js';
import { EventBus } from '../events/event-bus.js';
import { NetworkService, type NetworkQuota } from './network-service.js';
import { FakeAgent } from '../testing/fake-agent.js';
import type { HostAgents } from '../compute/hosts.js';
import { routedPeersByHost } from './routed.js';
import { checkRoutedPeers } from '../../agent/network/routed-peers.js';

test('routedPeersByHost: each host gets the other hosts\' endpoints via their underlay; a host alone or without an underlay address gets none', () => {
  const underlay = new Map([['a', '192.0.2.1'], ['b', '192.0.2.2'], ['c', '192.0.2.3']]);
  const e = (ip: string, host: string) => ({ ip, host, names: [`n${ip.split('.')[3]}`] });
  const got = routedPeersByHost([e('10.9.0.2', 'a'), e('10.9.0.3', 'a'), e('10.9.0.4', 'b'), e('10.9.0.5', 'c'), e('10.9.0.6', 'x')], underlay);
  const show = (h: string) => got.get(h)?.map((p) => `${p.ip}@${p.underlayIp}`).sort();
  assert.deepEqual(show('a'), ['10.9.0.4@192.0.2.2', '10.9.0.5@192.0.2.3']);
  assert.deepEqual(show('b'), ['10.9.0.2@192.0.2.1', '10.9.0.3@192.0.2.1', '10.9.0.5@192.0.2.3']);
  assert.deepEqual(show('c'), ['10.9.0.2@192.0.2.1', '10.9.0.3@192.0.2.1', '10.9.0.4@192.0.2.2']);
  assert.equal(got.get('x'), undefined, 'a host with no underlay address is neither routed to nor given routes');
  assert.deepEqual(got.get('b')!.find((p) => p.ip === '10.9.0.2')!.names, ['n2'], 'names travel for the other hosts\' DNS');
  assert.equal(routedPeersByHost([e('10.9.0.2', 'a'), e('10.9.0.3', 'a')], underlay).size, 0, 'one host: no routes');
  assert.equal(routedPeersByHost([], underlay).size, 0);
});

test('checkRoutedPeers: addresses in the subnet and once, next hops outside it', () => {
  checkRoutedPeers('10.9.0.0/24', [{ ip: '10.9.0.2', underlayIp: '192.0.2.1' }]);
  assert.throws(() => checkRoutedPeers('10.9.0.0/24', [{ ip: '10.8.0.2', underlayIp: '192.0.2.1' }]), /outside/);
  assert.throws(() => checkRoutedPeers('10.9.0.0/24', [{ ip: '10.9.0.2', underlayIp: '10.9.0.9' }]), /inside/);
  assert.throws(() => checkRoutedPeers('10.9.0.0/24', [{ ip: '10.9.0.2', underlayIp: '192.0.2.1' }, { ip: '10.9.0.2', underlayIp: '192.0.2.2' }]), /twice/);
  assert.throws(() => checkRoutedPeers('10.9.0.0/24', [{ ip: '10.9.0.2', underlayIp: 'nope' }]), /IPv4/);
});

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-routed-svc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'p1', name: 'p1', parentId: null, createdAt: new Date().toISOString() });
  const agents = new Map<string, FakeAgent>();
  for (const [name, underlay] of [['local', undefined], ['b', '192.0.2.2'], ['c', '192.0.2.3']] as const) {
    const a = new FakeAgent();
    a.underlay = underlay;
    agents.set(name, a);
  }
  agents.get('local')!.override('underlayAddress', async (toward) => (toward ? '192.0.2.1' : undefined));
  const hosts: HostAgents = { localName: 'local', names: () => [...agents.keys()], has: (n) => agents.has(n), get: (n) => agents.get(n)! };
  const quota: NetworkQuota = { admitNetwork: () => undefined, release: () => undefined };
  const events = new EventBus();
  const svc = new NetworkService(store, agents.get('local')!, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/20' });
  svc.useHosts(hosts);
  const run = async (id: string, host: string, net: string) => {
    const n = await svc.get(net);
    await svc.ensureOnHost([n], host);
    const rec = container(id.padEnd(64, '0'), id, { projectId: 'p1', host, config: { ...container('x', 'x').config, network: net } });
    await store.containers.insert(rec);
    const req = await svc.lease(rec, { mode: 'networks', networks: [n] });
    return { rec, address: req.mode === 'networks' ? req.endpoints[0]!.address : '' };
  };
  const remove = async (id: string) => {
    const rec = (await store.containers.get(id.padEnd(64, '0')))!;
    await store.containers.delete(rec.id);
    events.publish({ type: 'container', action: 'destroy', id: rec.id, projectId: rec.projectId });
    await new Promise((r) => setImmediate(r));
    await svc.overlay.settled();
  };
  const routesOn = (host: string, networkId: string) => agents.get(host)!.routedPeers.get(networkId)?.map((p) => `${p.ip}@${p.underlayIp}`).sort();
  return { store, svc, agents, run, remove, routesOn };
}

test('a routed network: routes pushed both ways as endpoints appear, move and go; no VXLAN, VNI or overlay MTU; another network untouched', async (t) => {
  const { store, svc, agents, run, remove, routesOn } = await setup(t);
  const net = await svc.create({ name: 'routed', driver: 'route', subnet: '10.70.0.0/24' }, 'p1');
  const other = await svc.create({ name: 'other', driver: 'route', subnet: '10.71.0.0/24' }, 'p1');
  const a = await run('a', 'local', 'routed');
  assert.equal(agents.get('local')!.calls('setRoutedPeers').length, 0, 'one host: nothing pushed, nothing scanned');
  const b = await run('b', 'b', 'routed');
  assert.deepEqual(routesOn('local', net.id), [`${b.address}@192.0.2.2`]);
  assert.deepEqual(routesOn('b', net.id), [`${a.address}@192.0.2.1`], 'the embedded host routed to by its address toward the other host');
  assert.deepEqual(agents.get('b')!.routedPeers.get(net.id)![0]!.names, ['a'], 'names for the other host\'s DNS');
  for (const h of agents.values()) assert.equal(h.calls('setOverlayPeers').length, 0, 'no VXLAN for a routed network');
  assert.equal((await store.networks.get(net.id))!.vni, undefined, 'no VNI given');
  for (const h of agents.values()) for (const [spec] of h.calls('ensureNetwork')) assert.equal(spec.mtu, undefined, 'routed networks keep the full MTU (no encapsulation)');

  await run('o1', 'c', 'other');
  await run('o2', 'b', 'other');
  const c = await run('c', 'c', 'routed');
  assert.deepEqual(routesOn('local', net.id), [`${b.address}@192.0.2.2`, `${c.address}@192.0.2.3`].sort());
  assert.deepEqual(routesOn('c', net.id), [`${a.address}@192.0.2.1`, `${b.address}@192.0.2.2`].sort());
  assert.ok(!routesOn('local', net.id)!.some((r) => r.startsWith('10.71.')), 'no route of another network\'s endpoint');

  // b's container moves to c (a cold move, a heal rebuild, a migration: the record changes host)
  await store.containers.update(b.rec.id, { host: 'c' });
  svc.endpointsMoved(b.rec.id);
  await new Promise((r) => setImmediate(r));
  await svc.overlay.settled();
  assert.deepEqual(routesOn('local', net.id), [`${b.address}@192.0.2.3`, `${c.address}@192.0.2.3`].sort(), 'the moved endpoint is routed via its new host');
  assert.equal(routesOn('b', net.id), undefined, 'the host left without endpoints has its routes removed');
  assert.deepEqual(routesOn('c', net.id), [`${a.address}@192.0.2.1`]);

  await remove('b');
  await remove('c');
  assert.equal(routesOn('local', net.id), undefined, 'a host alone on the network has no routes left');
  assert.equal(routesOn('c', net.id), undefined);
  assert.equal(routesOn('c', other.id)?.length, 1, 'the other network\'s routes were not touched');
});

test('a routed network: a host that restarted is pushed its routes whole at reconcile; an older agent refusing does not stop the others', async (t) => {
  const { svc, agents, run, routesOn } = await setup(t);
  const net = await svc.create({ name: 'routed', driver: 'route', subnet: '10.72.0.0/24' }, 'p1');
  const a = await run('a', 'local', 'routed');
  agents.get('c')!.override('setRoutedPeers', async () => {
    throw new Error('agent protocol 7');
  });
  const b = await run('b', 'b', 'routed');
  await run('c', 'c', 'routed');
  assert.equal(routesOn('b', net.id)!.length, 2, 'b has both others even though c refused');
  agents.get('b')!.routedPeers.clear();
  await svc.reconcileHost('b');
  assert.ok(routesOn('b', net.id)!.includes(`${a.address}@192.0.2.1`), 'pushed again at its reconcile');
  assert.ok(routesOn('local', net.id)!.includes(`${b.address}@192.0.2.2`));
});
