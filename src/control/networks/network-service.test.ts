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
import { SqliteStore } from '../../store/sqlite.js';
import { EventBus } from '../events/event-bus.js';
import { NetworkService, type NetworkQuota } from './network-service.js';
import type { Agent } from '../../agent/agent.js';
import { ipToInt, parseCidr } from '../../agent/network/network-driver.js';

function setup(t: { after: (fn: () => void) => void }, foreign: string[] = [], fallback = false) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-net-svc-'));
  const store = new SqliteStore(join(dir, 'nimbus.db'));
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = new Date().toISOString();
  store.projects.insert({ id: 'pdef', name: 'default', parentId: null, createdAt: now });
  store.projects.insert({ id: 'pother', name: 'other', parentId: null, createdAt: now });
  const laidOut: string[] = [];
  const host = {
    foreignSubnets: async () => foreign,
    ensureNetwork: async (n: { name: string }) => void laidOut.push(n.name),
    removeNetwork: async () => undefined,
  } as unknown as Agent;
  const charged: string[] = [];
  const quota: NetworkQuota = { admitNetwork: (id) => void charged.push(id), release: (id) => void charged.splice(charged.indexOf(id), 1) };
  const svc = new NetworkService(store, host, new EventBus(), quota, { defaultProjectId: 'pdef', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', bridgeSubnetFallback: fallback, subnetPool: '10.89.0.0/22' });
  return { store, svc, laidOut, charged };
}

test('default networks: one per project, made on first use, the default project\'s is nimbus0; not charged to quota', async (t) => {
  const { svc, laidOut, charged } = setup(t);
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
  const defaulted = setup(t, ['10.88.0.0/16', '10.87.0.0/16'], true);
  assert.equal((await defaulted.svc.defaultNetwork('pdef')).subnet, '10.86.0.0/16');
  const chosen = setup(t, ['10.88.0.0/16'], false);
  await assert.rejects(chosen.svc.defaultNetwork('pdef'), /overlaps the host's route to 10\.88\.0\.0\/16 \(set NIMBUS_BRIDGE_SUBNET/);
});

test('create: reserved names, per-project names, overlaps with networks and host routes, the pool skips what is taken', async (t) => {
  const { svc, charged } = setup(t, ['10.89.1.0/24', '192.0.2.0/24']);
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
  const { store, svc } = setup(t);
  const net = await svc.create({ name: 'small', subnet: '10.77.0.0/28' }, 'pdef'); // 14 hosts, 13 without the gateway
  const c = parseCidr(net.subnet);
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 19 })), { minLength: 1, maxLength: 60 }), async (ops) => {
      for (const l of store.networks.leases({ networkId: net.id })) store.networks.release(l.instanceId);
      const held = new Set<string>();
      for (const [take, n] of ops) {
        const id = `vm${n}`;
        if (take && !held.has(id)) {
          if (held.size === 13) {
            assert.throws(() => svc.leaseVm(id, id, [net]), /no free address left/);
            continue;
          }
          svc.leaseVm(id, id, [net]);
          held.add(id);
        } else if (!take) {
          store.networks.release(id);
          held.delete(id);
        }
        const addrs = store.networks.leases({ networkId: net.id }).map((l) => l.address);
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

test('remove: refused while an instance holds an address; a warm container\'s lease neither blocks nor outlives it', async (t) => {
  const { store, svc } = setup(t);
  const net = await svc.create({ name: 'front', subnet: '10.66.0.0/24' }, 'pdef');
  const now = new Date().toISOString();
  store.vms.insert({ id: 'a'.repeat(32), name: 'vm1', projectId: 'pdef', config: { cpus: 1, memoryMiB: 64 }, status: 'created', pid: null, exitCode: null, createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent: 'local' });
  svc.leaseVm('a'.repeat(32), 'vm1', [net]);
  // a warm container's address, leased ahead of demand through the agent's provider
  const warm = svc.addressProvider().lease(net.id, 'f'.repeat(64));
  assert.equal(warm, '10.66.0.3');
  assert.deepEqual(svc.view(net).containers.map((c) => c.name), ['vm1'], 'warm leases are not shown');
  await assert.rejects(svc.remove('front', { projectId: 'pdef' }), /in use by 1 instance\(s\): vm1/);
  svc.addressProvider().release('a'.repeat(32)); // an instance's lease is not the provider's to release
  assert.equal(store.networks.leases({ instanceId: 'a'.repeat(32) }).length, 1);
  store.vms.delete('a'.repeat(32));
  assert.deepEqual(store.networks.leases({ instanceId: 'a'.repeat(32) }), [], 'an instance\'s leases go with its record');
  await svc.remove('front', { projectId: 'pdef' });
  assert.deepEqual(store.networks.leases({}), [], 'the warm lease went with the network');
});
