/**
 * The control plane's side of overlays against a real SQLite store and recording hosts: which
 * host gets which peers when endpoints appear, move and go; VNIs; MTU; isolation of networks.
 * The kernel side is src/agent/network/overlay.test.ts; end to end, test/overlay.e2e.test.ts.
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
import { OVERLAY_MTU, hashedVni, vniOf } from './overlay.js';
import { macFor, type NetworkSpec } from '../../agent/network/network-driver.js';

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-overlay-svc-'));
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
  // the embedded host has no --underlay-ip: found from its route toward another host's
  agents.get('local')!.override('underlayAddress', async (toward) => (toward ? '192.0.2.1' : undefined));
  const hosts: HostAgents = { localName: 'local', names: () => [...agents.keys()], has: (n) => agents.has(n), get: (n) => agents.get(n)! };
  const quota: NetworkQuota = { admitNetwork: () => undefined, release: () => undefined };
  const events = new EventBus();
  const svc = new NetworkService(store, agents.get('local')!, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/20' });
  svc.useHosts(hosts);
  /** A container of the project on `host`, leased on `net` as the container service does it. */
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
  const peersOn = (host: string, networkId: string) => agents.get(host)!.overlays.get(networkId)?.peers.map((p) => `${p.ip}@${p.underlayIp}`).sort();
  /** Every network spec any host was asked to lay out. */
  const specs = (): NetworkSpec[] => [...agents.values()].flatMap((a) => a.calls('ensureNetwork').map((args) => args[0]));
  return { store, svc, agents, specs, run, remove, peersOn };
}

test('VNIs: stored once, from the id\'s hash in 1..16M, the next free one on a collision, and kept when the network that forced the step goes', async (t) => {
  const v = hashedVni('abc');
  assert.ok(v >= 1 && v <= 0xffffff);
  assert.equal(hashedVni('abc'), v, 'stable');
  const { store, svc } = await setup(t);
  const first = await svc.create({ name: 'first', subnet: '10.72.0.0/24' }, 'p1');
  const second = await svc.create({ name: 'second', subnet: '10.73.0.0/24' }, 'p1');
  // the second network's hash taken by the first (as a collision would): it steps to the next free one
  const collision = hashedVni(second.id);
  assert.equal(await store.networks.setVni(first.id, collision), collision);
  assert.equal(await vniOf(store, (await store.networks.get(second.id))!), (collision % 0xffffff) + 1);
  assert.equal(await store.networks.setVni(first.id, 42), collision, 'given once: a second give changes nothing');
  await svc.remove(first.id, { projectId: 'p1' });
  assert.equal(await vniOf(store, (await store.networks.get(second.id))!), (collision % 0xffffff) + 1, 'kept when the older network goes');
  const many = await Promise.all(Array.from({ length: 20 }, async (_, i) => vniOf(store, await svc.create({ name: `n${i}`, subnet: `10.74.${i}.0/24` }, 'p1'))));
  assert.equal(new Set([...many, (collision % 0xffffff) + 1]).size, 21, 'every network its own VNI');
});

test('the project\'s default network spans hosts as a user network does: the overlay MTU, peers pushed both ways', async (t) => {
  const { svc, specs, run, peersOn } = await setup(t);
  const def = await svc.defaultNetwork('p1');
  const a = await run('a', 'local', def.id);
  const b = await run('b', 'b', def.id);
  assert.ok(specs().filter((s) => s.id === def.id).every((s) => s.mtu === OVERLAY_MTU), 'the default network has the overlay MTU on every host');
  assert.deepEqual(peersOn('local', def.id), [`${b.address}@192.0.2.2`]);
  assert.deepEqual(peersOn('b', def.id), [`${a.address}@192.0.2.1`]);
});

test('endpoints on two hosts: each gets the other\'s; a third host joins; a removal reaches everyone; a lone host drops its device', async (t) => {
  const { svc, specs, run, remove, peersOn, agents } = await setup(t);
  const net = await svc.create({ name: 'span', subnet: '10.70.0.0/24' }, 'p1');
  const other = await svc.create({ name: 'other', subnet: '10.71.0.0/24' }, 'p1');
  assert.ok(specs().filter((s) => s.id === net.id).every((s) => s.mtu === OVERLAY_MTU), 'a user bridge network has the overlay MTU');

  const a = await run('a', 'local', 'span');
  assert.equal(agents.get('local')!.overlays.size, 0, 'one host: no overlay');
  const b = await run('b', 'b', 'span');
  assert.deepEqual(peersOn('local', net.id), [`${b.address}@192.0.2.2`]);
  assert.deepEqual(peersOn('b', net.id), [`${a.address}@192.0.2.1`]);
  assert.equal(agents.get('local')!.overlays.get(net.id)!.local, '192.0.2.1', 'the embedded host\'s underlay from its route');
  assert.equal(agents.get('b')!.overlays.get(net.id)!.peers[0]!.mac, macFor(a.address));
  assert.deepEqual(agents.get('b')!.overlays.get(net.id)!.peers[0]!.names, ['a'], 'names travel for the DNS of the other hosts');
  const vni = agents.get('b')!.overlays.get(net.id)!.vni;
  assert.equal(agents.get('local')!.overlays.get(net.id)!.vni, vni, 'one VNI on every host');

  // a container on another network, on a third host: no entries of it anywhere on span
  const o = await run('o', 'c', 'other');
  await run('o2', 'local', 'other');
  assert.notEqual(agents.get('c')!.overlays.get(other.id)!.vni, vni, 'another network, another VNI');
  assert.ok(!peersOn('b', net.id)!.some((p) => p.startsWith(o.address)));

  const c = await run('c', 'c', 'span');
  assert.deepEqual(peersOn('local', net.id), [`${b.address}@192.0.2.2`, `${c.address}@192.0.2.3`].sort());
  assert.deepEqual(peersOn('c', net.id), [`${a.address}@192.0.2.1`, `${b.address}@192.0.2.2`].sort());

  await remove('b');
  assert.deepEqual(peersOn('local', net.id), [`${c.address}@192.0.2.3`]);
  assert.equal(peersOn('b', net.id), undefined, 'the host without endpoints left drops its device');
  await remove('c');
  assert.equal(peersOn('local', net.id), undefined, 'a host alone on the network drops its device');
  assert.equal(peersOn('c', net.id), undefined);
  // the other network was never touched by span's changes
  assert.ok(agents.get('c')!.overlays.has(other.id));
});

test('a host that restarted is pushed its whole set again at reconcile; a host refusing (older agent) does not stop the others', async (t) => {
  const { svc, run, peersOn, agents } = await setup(t);
  const net = await svc.create({ name: 'span', subnet: '10.72.0.0/24' }, 'p1');
  const a = await run('a', 'local', 'span');
  agents.get('c')!.override('setOverlayPeers', async () => {
    throw new Error('agent protocol 3');
  });
  const b = await run('b', 'b', 'span');
  await run('c', 'c', 'span');
  assert.deepEqual(peersOn('b', net.id)!.length, 2, 'b has both others even though c refused');
  // b loses its state (a new host process): reconcile pushes it again
  agents.get('b')!.overlays.clear();
  await svc.reconcileHost('b');
  assert.deepEqual(peersOn('b', net.id)!.filter((p) => p.startsWith(a.address)), [`${a.address}@192.0.2.1`]);
  assert.ok(peersOn('local', net.id)!.includes(`${b.address}@192.0.2.2`));
});

test('a create that failed after its lease publishes nothing: the follow-up push removes its peers', async (t) => {
  const { store, svc, run, peersOn } = await setup(t);
  const net = await svc.create({ name: 'span', subnet: '10.73.0.0/24' }, 'p1');
  const a = await run('a', 'local', 'span');
  const b = await run('b', 'b', 'span');
  assert.deepEqual(peersOn('local', net.id), [`${b.address}@192.0.2.2`]);
  // b's create failed on its host: its record (and leases) go, no event
  await store.containers.delete('b'.padEnd(64, '0'));
  assert.deepEqual(peersOn('local', net.id), [`${b.address}@192.0.2.2`], 'nothing told yet');
  svc.overlay.syncLater(net.id, 20);
  svc.overlay.syncLater(net.id, 20); // one at a time (the sooner replaces create's 30 s one)
  await new Promise((r) => setTimeout(r, 80));
  await svc.overlay.settled();
  assert.equal(peersOn('local', net.id), undefined, 'the follow-up push mended it');
  assert.equal(peersOn('b', net.id), undefined);
  assert.ok(a.address);
});

test('a host that registers again (a new agent object) gets its networks laid out and its overlay pushed whole; one already reconciled is left alone', async (t) => {
  const { svc, agents, run, peersOn } = await setup(t);
  const net = await svc.create({ name: 'span', subnet: '10.72.0.0/24' }, 'p1');
  await run('ra', 'local', 'span');
  await run('rb', 'b', 'span');
  await svc.overlay.settled();
  const before = agents.get('b')!.calls('ensureNetwork').length;
  svc.watchHosts(20);
  t.after(() => svc.stopWatchingHosts());
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(agents.get('b')!.calls('ensureNetwork').length, before, 'an agent seen at the start is not reconciled again');
  // b's agent restarted: the directory holds a new connection object, which knows nothing yet
  const again = new FakeAgent();
  again.underlay = '192.0.2.2';
  agents.set('b', again);
  for (let i = 0; i < 50 && again.calls('ensureNetwork').length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(again.calls('ensureNetwork').map((a) => a[0].id), [net.id], 'its network laid out again');
  for (let i = 0; i < 50 && peersOn('b', net.id) === undefined; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(peersOn('b', net.id)?.length, 1, 'and the other host\'s endpoint pushed to it');
});

test('a create that failed after its lease: its record goes without an event, endpointsGone withdraws its peers at once', async (t) => {
  const { svc, store, run, peersOn } = await setup(t);
  const net = await svc.create({ name: 'span', subnet: '10.73.0.0/24' }, 'p1');
  await run('fa', 'local', 'span');
  const { rec } = await run('fb', 'b', 'span');
  await svc.overlay.settled();
  assert.equal(peersOn('local', net.id)?.length, 1, 'b\'s endpoint is on local');
  await store.containers.delete(rec.id); // what the container service does when the host's create fails
  svc.endpointsGone(rec.id);
  for (let i = 0; i < 50 && peersOn('local', net.id)?.length; i++) await new Promise((r) => setTimeout(r, 10));
  await svc.overlay.settled();
  assert.ok(!peersOn('local', net.id)?.length, 'withdrawn without waiting for the follow-up push');
});
