/**
 * The control plane's side of networking against a real SQLite store: records, default
 * networks, subnet choice and the IPAM. The host is a recording stand-in here (it only
 * answers which subnets the host routes and notes what it was asked to lay out); the real
 * kernel side is the conformance suite's and the e2e test's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { openStore } from '../../store/open.js';
import { EventBus } from '../events/event-bus.js';
import { NetworkService, type NetworkQuota } from './network-service.js';
import { FakeAgent } from '../testing/fake-agent.js';
import type { ContainerRecord } from '../../store/records.js';
import { ipToInt, parseCidr } from '../../agent/network/network-driver.js';

/** `more`: what a test needs of the host beyond the subnet and layout answers. */
async function setup(t: { after: (fn: () => Promise<void>) => void }, foreign: string[] = [], fallback = false, more: (host: FakeAgent) => void = () => undefined) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-net-svc-'));
  const opening = openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await (await opening.catch(() => undefined))?.close(); // the directory goes even when the open failed
    rmSync(dir, { recursive: true, force: true });
  });
  const store = await opening;
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'pdef', name: 'default', parentId: null, createdAt: now });
  await store.projects.insert({ id: 'pother', name: 'other', parentId: null, createdAt: now });
  const laidOut: string[] = [];
  const host = new FakeAgent().override('ensureNetwork', async (n) => void laidOut.push(n.name));
  host.foreign = foreign;
  more(host);
  const charged: string[] = [];
  const quota: NetworkQuota = { admitNetwork: (id) => void charged.push(id), release: (id) => void charged.splice(charged.indexOf(id), 1) };
  const svc = new NetworkService(store, host, new EventBus(), quota, { defaultProjectId: 'pdef', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', bridgeSubnetFallback: fallback, subnetPool: '10.89.0.0/22' });
  return { store, svc, laidOut, charged };
}

test('default networks: one per project, made on first use, the default project\'s is nimbus0; not charged to quota', async (t) => {
  const { svc, laidOut, charged } = await setup(t);
  const a = await svc.defaultNetwork('pdef');
  assert.deepEqual([a.name, a.device, a.subnet, a.gateway, a.builtin], ['bridge', 'nimbus0', '10.88.0.0/16', '10.88.0.1', true]);
  assert.equal((await svc.defaultNetwork('pdef')).id, a.id, 'made once');
  const [b, b2] = await Promise.all([svc.defaultNetwork('pother'), svc.defaultNetwork('pother')]);
  assert.equal(b.id, b2.id, 'concurrent first uses make one');
  assert.equal(b.subnet, '10.89.0.0/24');
  assert.match(b.device, /^nb-[0-9a-f]{12}$/);
  assert.deepEqual(laidOut, ['bridge', 'bridge']);
  assert.deepEqual(charged, []);
});

test('the default subnet: taken by the host (podman\'s cni-podman0 is 10.88.0.0/16 too) → a free /16 below it, unless the operator chose it', async (t) => {
  const defaulted = await setup(t, ['10.88.0.0/16', '10.87.0.0/16'], true);
  assert.equal((await defaulted.svc.defaultNetwork('pdef')).subnet, '10.86.0.0/16');
  const chosen = await setup(t, ['10.88.0.0/16'], false);
  await assert.rejects(chosen.svc.defaultNetwork('pdef'), /overlaps the host's route to 10\.88\.0\.0\/16 \(set NIMBUS_BRIDGE_SUBNET/);
});

test('create: reserved names, per-project names, overlaps with networks and host routes, the pool skips what is taken', async (t) => {
  const { svc, charged } = await setup(t, ['10.89.1.0/24', '192.0.2.0/24']);
  await assert.rejects(svc.create({ name: 'host' }, 'pdef'), /reserved/);
  await assert.rejects(svc.create({ name: 'bad name' }, 'pdef'), /invalid network name/);
  const front = await svc.create({ name: 'front' }, 'pdef');
  assert.equal(front.subnet, '10.89.0.0/24');
  const back = await svc.create({ name: 'back' }, 'pdef');
  assert.equal(back.subnet, '10.89.2.0/24', '10.89.1.0/24 is routed by the host: skipped');
  await assert.rejects(svc.create({ name: 'front' }, 'pdef'), { code: 'AlreadyExists' });
  assert.equal((await svc.create({ name: 'front' }, 'pother')).projectId, 'pother', 'names are per project');
  await assert.rejects(svc.create({ name: 'x', subnet: '10.89.0.128/25' }, 'pdef'), /overlaps network front/);
  await assert.rejects(svc.create({ name: 'y', subnet: '192.0.2.0/25' }, 'pdef'), /overlaps the host's route/);
  await assert.rejects(svc.create({ name: 'z', subnet: '10.99.0.0/24', gateway: '10.98.0.1' }, 'pdef'), /not a host address/);
  await assert.rejects(svc.create({ name: 'w', subnet: '10.99.0.1/24' }, 'pdef'), /not a network address/);
  const routed = await svc.create({ name: 'r', driver: 'route', subnet: '10.99.0.0/24', internal: true }, 'pdef');
  assert.match(routed.device, /^nr-/);
  assert.equal(charged.length, 4, 'user networks are charged to the networks quota');
  // the pool (a /22 here) runs out: a clear refusal naming the way out
  await assert.rejects(svc.create({ name: 'full' }, 'pdef'), /no free \/24 left in the subnet pool 10\.89\.0\.0\/22; give --subnet/);
  await svc.remove('front', { projectId: 'pdef' });
  assert.equal(charged.length, 3, 'removal gives the quota back');
});

test('IPAM: random leases and releases never hand out an address twice, nor the gateway, network or broadcast address', async (t) => {
  const { store, svc } = await setup(t);
  const net = await svc.create({ name: 'small', subnet: '10.77.0.0/28' }, 'pdef'); // 14 hosts, 13 without the gateway
  const c = parseCidr(net.subnet);
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 19 })), { minLength: 1, maxLength: 60 }), async (ops) => {
      for (const l of await store.networks.leases({ networkId: net.id })) await store.networks.release(l.instanceId);
      const held = new Set<string>();
      for (const [take, n] of ops) {
        const id = `vm${n}`;
        if (take && !held.has(id)) {
          if (held.size === 13) {
            await assert.rejects(svc.leaseVm(id, id, [net]), /no free address left/);
            continue;
          }
          await svc.leaseVm(id, id, [net]);
          held.add(id);
        } else if (!take) {
          await store.networks.release(id);
          held.delete(id);
        }
        const addrs = (await store.networks.leases({ networkId: net.id })).map((l) => l.address);
        assert.equal(new Set(addrs).size, addrs.length, `an address leased twice: ${addrs.join(', ')}`);
        assert.equal(addrs.length, held.size);
        for (const a of addrs) {
          const x = ipToInt(a);
          assert.ok(x > c.network && x < c.network + c.size - 1 && a !== net.gateway, `${a} is not assignable`);
        }
      }
    }),
    { numRuns: 60 },
  );
});

test('IPAM: addresses go in turn (a released one waits for the turn to come back), wrapping at the subnet\'s end', async (t) => {
  const { store, svc } = await setup(t);
  const net = await svc.create({ name: 'turns', subnet: '10.78.0.0/26' }, 'pdef'); // .1 the gateway, .2-.62 usable
  const addr = async (id: string) => (await svc.leaseVm(id, id, [net]))[0]!.address;
  assert.deepEqual([await addr('a'), await addr('b'), await addr('c')], ['10.78.0.2', '10.78.0.3', '10.78.0.4']);
  await store.networks.release('a');
  assert.equal(await addr('d'), '10.78.0.5', 'not the address just released');
  for (let i = 6; i <= 62; i++) await addr(`f${i}`); // to the subnet's last host address
  assert.equal(await addr('e'), '10.78.0.2', 'the turn wraps to the one released');
  await store.networks.release('c');
  await store.networks.release('f40');
  assert.equal(await addr('g'), '10.78.0.4', 'the next free one from the turn on');
  assert.equal(await addr('h'), '10.78.0.40', 'past a full stretch (the whole network read once)');
  await assert.rejects(addr('i'), /no free address left/);
});

test('remove: refused while an instance holds an address; a warm container\'s lease neither blocks nor outlives it', async (t) => {
  const { store, svc } = await setup(t);
  const net = await svc.create({ name: 'front', subnet: '10.66.0.0/24' }, 'pdef');
  const now = new Date().toISOString();
  await store.vms.insert({ id: 'a'.repeat(32), name: 'vm1', projectId: 'pdef', config: { cpus: 1, memoryMiB: 64 }, status: 'created', pid: null, exitCode: null, createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent: 'local' });
  await svc.leaseVm('a'.repeat(32), 'vm1', [net]);
  // a warm container's address, leased ahead of demand through the agent's provider
  const warm = await svc.addressProvider().lease(net.id, 'f'.repeat(64));
  assert.equal(warm, '10.66.0.3');
  assert.equal(await svc.addressProvider().lease('no-such-network', 'e'.repeat(64)), undefined, 'no network, no lease');
  assert.deepEqual((await svc.view(net)).containers.map((c) => c.name), ['vm1'], 'warm leases are not shown');
  await assert.rejects(svc.remove('front', { projectId: 'pdef' }), /in use by 1 instance\(s\): vm1/);
  await svc.addressProvider().release('a'.repeat(32)); // an instance's lease is not the provider's to release
  assert.equal((await store.networks.leases({ instanceId: 'a'.repeat(32) })).length, 1);
  await store.vms.delete('a'.repeat(32));
  assert.deepEqual(await store.networks.leases({ instanceId: 'a'.repeat(32) }), [], 'an instance\'s leases go with its record');
  await svc.remove('front', { projectId: 'pdef' });
  assert.deepEqual(await store.networks.leases({}), [], 'the warm lease went with the network');
});

test('IPAM under concurrency: leases asked for at once (VMs, warm containers) get distinct addresses, and only the surplus is refused', async (t) => {
  const { store, svc } = await setup(t);
  const net = await svc.create({ name: 'small', subnet: '10.77.0.0/28' }, 'pdef'); // 13 assignable addresses
  const provider = svc.addressProvider();
  const asks = Array.from({ length: 16 }, (_, i) =>
    i % 2 ? svc.leaseVm(`vm${i}`, `vm${i}`, [net]).then((e) => e[0]!.address) : provider.lease(net.id, `warm${i}`));
  const settled = await Promise.allSettled(asks);
  const got = settled.flatMap((r) => (r.status === 'fulfilled' && r.value ? [r.value] : []));
  assert.equal(got.length, 13, 'every free address is handed out');
  assert.equal(new Set(got).size, 13, `an address handed out twice: ${got.join(', ')}`);
  for (const r of settled) if (r.status === 'rejected') assert.match(String(r.reason), /no free address left/);
  assert.equal((await store.networks.leases({ networkId: net.id })).length, 13);
  await Promise.all([provider.release('warm0'), provider.release('warm2')]);
  assert.equal((await store.networks.leases({ networkId: net.id })).length, 11, 'releases at once, each done');
});

test('connect and disconnect: interface indexes, the already-connected refusal, and a failed connect leaves no lease', async (t) => {
  const connected: string[] = [];
  let failNext = false;
  const { store, svc } = await setup(t, [], false, (host) => host
    // the container is a record only here: the host answers for it anyway
    .override('connectContainer', async (id, e) => {
      if (failNext) throw new Error('host said no');
      connected.push(e.network.name);
      return { networkId: e.network.id, containerId: id, netns: 'ns', ifName: 'eth1', hostIf: 'nv1', address: e.address, mac: '02:42:00:00:00:01', defaultRoute: false, dnsNames: e.dnsNames };
    })
    .override('disconnectContainer', async () => undefined));
  const a = await svc.create({ name: 'a', subnet: '10.61.0.0/24' }, 'pdef');
  const b = await svc.create({ name: 'b', subnet: '10.62.0.0/24' }, 'pdef');
  const now = new Date().toISOString();
  const c = { id: 'c'.repeat(64), name: 'web', projectId: 'pdef', imageDigest: 'sha256:x', config: { image: 'x', cmd: [], env: [], network: 'a' }, status: 'running', createdAt: now, host: 'local' } as unknown as ContainerRecord;
  await store.networks.lease({ networkId: a.id, address: '10.61.0.2', instanceId: c.id, ifIndex: 0, createdAt: now });
  await assert.rejects(svc.connect('a', c), /already on a/);
  failNext = true;
  await assert.rejects(svc.connect('b', c), /host said no/);
  assert.equal((await store.networks.leases({ instanceId: c.id, networkId: b.id })).length, 0, 'the lease of a failed connect is released');
  failNext = false;
  await svc.connect('b', c, { ip: '10.62.0.9' });
  assert.deepEqual((await svc.endpointsOf(c.id)).map((e) => `${e.network} ${e.ifName} ${e.address}`).sort(), ['a eth0 10.61.0.2', 'b eth1 10.62.0.9']);
  assert.deepEqual(connected, ['b']);
  await svc.disconnect('b', c);
  await assert.rejects(svc.disconnect('b', c), /not on b/);
  assert.deepEqual((await svc.endpointsOf(c.id)).map((e) => e.network), ['a']);
});

test('a layout on a host waits for the host\'s reconcile in flight, which would otherwise remove it (it read the host\'s networks before)', async (t) => {
  const { store, svc } = await setup(t);
  const order: string[] = [];
  let finishReconcile!: () => void;
  const reconciling = new Promise<void>((resolve) => { finishReconcile = resolve; });
  const b = new FakeAgent({ name: 'b' })
    .override('ensureNetwork', async (n) => void order.push(`ensure ${n.name}`))
    .override('reconcileNetworks', async (_containers, networks) => {
      order.push(`reconcile keeps [${networks.join(',')}]`);
      await reconciling;
      return { endpointsRemoved: 0, networksRemoved: 0, netnsRemoved: 0 };
    });
  const local = new FakeAgent({ name: 'local' });
  svc.useHosts({ localName: 'local', names: () => ['local', 'b'], has: (n) => n === 'local' || n === 'b', get: (n) => (n === 'b' ? b : local) });
  const n = await svc.create({ name: 'span' }, 'pdef');
  const reconcile = svc.reconcileHost('b');
  await new Promise((r) => setTimeout(r, 20)); // the reconcile has read b's networks (none) and asked b
  const layout = svc.ensureOnHost([n], 'b');
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(order, ['reconcile keeps []'], 'the layout waits');
  finishReconcile();
  await Promise.all([reconcile, layout]);
  assert.deepEqual(order, ['reconcile keeps []', 'ensure span']);
  assert.ok((await store.networks.hosts(n.id)).includes('b'), 'recorded on b');
});
