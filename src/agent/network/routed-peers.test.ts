/**
 * A routed network's peer routes for real, in a namespace "host" of their own: made exactly as
 * pushed (a moved peer's next hop changed in place, a stale one removed, a repeat changes
 * nothing); a local endpoint's route wins over a peer's for the same address and the peer's
 * takes over when it goes; an unreachable next hop is an error; nothing left. Then a
 * NetworkHost (this namespace is its host): pushed routes kept on disk and in its table's rules,
 * laid out again at a restart's reconcile, stray ones removed, gone with the push, the network,
 * or a reconcile after the network went. End to end (two hosts, isolation, DNS):
 * test/overlay.e2e.test.ts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { run } from '../../core/exec.js';
import { NetworkHost } from './network-host.js';
import type { NetworkSpec } from './network-driver.js';
import { freeTestSubnet, gatewayOf, nthAddress, testDevice } from './network-test-env.js';
import { readPeerRoutes, setPeerRoutes } from './routed-peers.js';

const ns = `nimbus-rpt-${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const subnet = '10.123.0.0/24';

async function ip(args: string[]): Promise<string> {
  const r = await run('ip', ['-n', ns, ...args]);
  assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
/** The way the kernel routes an address: its device and next hop. */
const routeTo = async (addr: string) => (await ip(['route', 'get', addr])).split('\n')[0]!.replace(/ src .*/, '').trim();

before(async () => {
  assert.equal((await run('ip', ['netns', 'add', ns])).code, 0);
  // an underlay with two other hosts on it, and a local endpoint's host end
  await ip(['link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', 'ul1']);
  await ip(['addr', 'add', '192.0.2.1/24', 'dev', 'ul0']);
  await ip(['link', 'add', 'ep0', 'type', 'veth', 'peer', 'name', 'ep1']);
  for (const l of ['ul0', 'ul1', 'ep0', 'ep1']) await ip(['link', 'set', l, 'up']);
});
after(async () => {
  await run('ip', ['netns', 'del', ns]);
});

test('peer routes: made as pushed, moved in place, stale ones removed, a repeat changes nothing, nothing left', async () => {
  assert.deepEqual(await setPeerRoutes(subnet, [{ ip: '10.123.0.2', underlayIp: '192.0.2.2' }, { ip: '10.123.0.3', underlayIp: '192.0.2.2' }], ns), { added: 2, removed: 0 });
  assert.deepEqual([...(await readPeerRoutes(subnet, ns))].sort(), [['10.123.0.2', '192.0.2.2'], ['10.123.0.3', '192.0.2.2']]);
  assert.equal(await routeTo('10.123.0.2'), '10.123.0.2 via 192.0.2.2 dev ul0');
  assert.deepEqual(await setPeerRoutes(subnet, [{ ip: '10.123.0.2', underlayIp: '192.0.2.2' }, { ip: '10.123.0.3', underlayIp: '192.0.2.2' }], ns), { added: 0, removed: 0 }, 'a repeat changes nothing');
  // .2 moved to the third host, .3 went
  assert.deepEqual(await setPeerRoutes(subnet, [{ ip: '10.123.0.2', underlayIp: '192.0.2.3' }], ns), { added: 1, removed: 1 });
  assert.deepEqual([...(await readPeerRoutes(subnet, ns))], [['10.123.0.2', '192.0.2.3']]);
  assert.match((await run('ip', ['-n', ns, 'route', 'get', '10.123.0.3'])).stderr, /unreachable/, 'no route left to the gone peer');
  // routes the host has itself in the subnet are not the peers': never read, never removed
  await ip(['route', 'add', '10.123.0.9/32', 'via', '192.0.2.4']);
  await setPeerRoutes(subnet, [], ns);
  assert.equal(await routeTo('10.123.0.9'), '10.123.0.9 via 192.0.2.4 dev ul0', 'a route of another protocol is left alone');
  assert.equal((await ip(['route', 'show', 'proto', '78'])).trim(), '', 'no peer route left');
});

test('an address that is also a local endpoint here: the endpoint\'s route wins, and the peer\'s takes over when it goes', async () => {
  await ip(['route', 'replace', '10.123.0.5/32', 'dev', 'ep0']); // what the route driver makes for an endpoint
  await setPeerRoutes(subnet, [{ ip: '10.123.0.5', underlayIp: '192.0.2.2' }], ns);
  assert.equal(await routeTo('10.123.0.5'), '10.123.0.5 dev ep0', 'the local endpoint first');
  await ip(['link', 'del', 'ep0']);
  assert.equal(await routeTo('10.123.0.5'), '10.123.0.5 via 192.0.2.2 dev ul0', 'then the peer');
  await setPeerRoutes(subnet, [], ns);
});

test('a next hop that is not on this host\'s link is refused with the kernel\'s reason', async () => {
  await assert.rejects(setPeerRoutes(subnet, [{ ip: '10.123.0.6', underlayIp: '198.51.100.1' }], ns), /routing the network's peers failed: .*(invalid gateway|unreachable)/i);
  assert.equal((await readPeerRoutes(subnet, ns)).size, 0);
});

describe('routed peers: a NetworkHost', () => {
  const tag = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`.slice(-7);
  const table = `nimbus_rp${tag}`;
  const peerNs = `nimbus-rph-${tag}`;
  const ulIf = `rpu${tag}`.slice(0, 15);
  let base: string;
  let host: NetworkHost;
  let net: NetworkSpec;
  let u: { a: string; b: string };
  const routesHere = async () => [...(await readPeerRoutes(net.subnet))].map(([ip, via]) => `${ip}@${via}`).sort();
  const rules = async () => (await run('nft', ['list', 'table', 'inet', table])).stdout;
  const restart = async () => {
    await host.close();
    host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
  };

  before(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'nimbus-routed-'));
    const subnet = freeTestSubnet(24);
    net = { id: `rpnet${tag}${randomBytes(4).toString('hex')}`, name: 'routed', driver: 'route', subnet, gateway: gatewayOf(subnet), internal: false, device: testDevice('r') };
    host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
    // the other host: a namespace on a veth underlay (a /30), so next hops are on-link
    const ul = freeTestSubnet(30);
    u = { a: nthAddress(ul, 1), b: nthAddress(ul, 2) };
    assert.equal((await run('ip', ['netns', 'add', peerNs])).code, 0);
    for (const args of [['link', 'add', ulIf, 'type', 'veth', 'peer', 'name', 'ul0', 'netns', peerNs], ['addr', 'add', `${u.a}/30`, 'dev', ulIf], ['link', 'set', ulIf, 'up'],
      ['-n', peerNs, 'addr', 'add', `${u.b}/30`, 'dev', 'ul0'], ['-n', peerNs, 'link', 'set', 'ul0', 'up']]) {
      const r = await run('ip', args);
      assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
    }
  });

  after(async () => {
    await host.removeNetwork(net.id).catch(() => undefined);
    await host.close();
    await run('ip', ['route', 'flush', 'root', net.subnet, 'proto', '78']);
    await run('nft', ['delete', 'table', 'inet', table]);
    await run('ip', ['link', 'del', net.device]);
    await run('ip', ['netns', 'del', peerNs]);
    await run('ip', ['link', 'del', ulIf]);
    await rm(base, { recursive: true, force: true });
  });

  test('pushed routes: on disk and in the rules; laid out again at a restart; strays removed; gone with the push, the network, or a reconcile', async () => {
    const far = nthAddress(net.subnet, 20), stray = nthAddress(net.subnet, 30);
    const file = path.join(base, 'state', 'routes', `${net.id}.json`);
    await assert.rejects(host.setRoutedPeers(net.id, []), /not on this host/);
    await host.ensureNetwork(net);
    await host.setRoutedPeers(net.id, [{ ip: far, underlayIp: u.b, names: ['far'] }]);
    assert.deepEqual(await routesHere(), [`${far}@${u.b}`]);
    assert.ok(existsSync(file));
    assert.deepEqual(host.routedPeersOf(net.id), [{ ip: far, underlayIp: u.b, names: ['far'] }]);
    // no endpoint here yet: nothing may be forwarded toward the peer
    assert.match(await rules(), new RegExp(`ip daddr ${far.replaceAll('.', '\\.')} drop comment "routed: to other hosts only from its endpoints here"`));
    await assert.rejects(host.setRoutedPeers(net.id, [{ ip: '192.0.2.9', underlayIp: u.b }]), /outside the network's subnet/);

    // a rebooted host: the kernel lost the route, the record has it; a stray route of ours in the subnet goes
    await restart();
    await run('ip', ['route', 'del', `${far}/32`, 'proto', '78', 'metric', '4078']);
    assert.equal((await run('ip', ['route', 'add', `${stray}/32`, 'via', u.b, 'proto', '78', 'metric', '4078'])).code, 0);
    await host.reconcile(new Set(), new Set([net.id]));
    assert.deepEqual(await routesHere(), [`${far}@${u.b}`], 'laid out again, the stray removed');

    // no peers: the routes and the rules go
    await host.setRoutedPeers(net.id, []);
    assert.deepEqual(await routesHere(), []);
    assert.equal(existsSync(file), false);
    assert.doesNotMatch(await rules(), /other hosts/);

    // the network goes with its routes
    await host.setRoutedPeers(net.id, [{ ip: far, underlayIp: u.b }]);
    await host.removeNetwork(net.id);
    assert.deepEqual(await routesHere(), [], 'removing the network removes its routes');
    assert.equal(existsSync(file), false);

    // a host restarted after its network was removed elsewhere: reconcile drops the routes
    await host.ensureNetwork(net);
    await host.setRoutedPeers(net.id, [{ ip: far, underlayIp: u.b }]);
    await restart();
    await host.reconcile(new Set(), new Set());
    assert.deepEqual(await routesHere(), [], 'reconcile removes the routes of a network the host no longer has');
    assert.equal(existsSync(file), false);
    assert.equal((await run('ip', ['link', 'show', 'dev', net.device])).code, 1, 'and the network');
  });
});
