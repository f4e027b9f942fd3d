/**
 * Overlays for real: VXLAN devices, FDB and neighbour entries, traffic through them.
 * 1. Two "hosts" as network namespaces joined by a veth underlay, each with a bridge, a VXLAN
 *    device and an endpoint namespace: the endpoints reach each other only while the peers are
 *    pushed; stale peers are removed; nothing is left.
 * 2. A NetworkHost (this namespace is its host) and a namespace host: a container of the
 *    NetworkHost reaches the other host's endpoint; the overlay survives a restart's reconcile,
 *    goes when the network goes, and a reconcile removes what a removed network left.
 * Skipped where the kernel has no VXLAN.
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
import { macFor, type NetworkSpec } from './network-driver.js';
import { OVERLAY_MTU, ensureVxlan, readPeers, readVxlan, removeVxlan, setPeers, vxlanDeviceName, type OverlayPeer } from './overlay.js';
import { freeTestSubnet, gatewayOf, inNetns, nthAddress, spawnInNewNetns, testDevice, vxlanMissing, type NetnsProcess } from './network-test-env.js';

const tag = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`.slice(-7);

async function ip(args: string[]): Promise<void> {
  const r = await run('ip', args);
  assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
}

const skip = await vxlanMissing(tag);

const ping = async (netnsPath: string, to: string) => (await inNetns(netnsPath, ['ping', '-c', '1', '-W', '2', to], 8000)).code === 0;

/** Ping until it answers (the first ARP round trip) or `tries` run out. */
async function reaches(netnsPath: string, to: string, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await ping(netnsPath, to)) return true;
  return false;
}

/** A namespace "host" with an underlay veth toward `peerNs` (or this namespace), a bridge on `subnet`, and one endpoint namespace. */
async function nsHost(name: string, bridge: string, subnet: string, endpointIndex: number) {
  await ip(['netns', 'add', name]);
  await ip(['-n', name, 'link', 'set', 'lo', 'up']);
  await ip(['-n', name, 'link', 'add', bridge, 'mtu', String(OVERLAY_MTU), 'type', 'bridge']);
  await ip(['-n', name, 'addr', 'add', `${gatewayOf(subnet)}/${subnet.split('/')[1]}`, 'dev', bridge]);
  await ip(['-n', name, 'link', 'set', bridge, 'up']);
  const ep = `${name}-ep`;
  const address = nthAddress(subnet, endpointIndex);
  await ip(['netns', 'add', ep]);
  await ip(['-n', name, 'link', 'add', 'vep', 'mtu', String(OVERLAY_MTU), 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', String(OVERLAY_MTU), 'netns', ep]);
  await ip(['-n', name, 'link', 'set', 'vep', 'master', bridge, 'up']);
  await ip(['-n', ep, 'addr', 'add', `${address}/${subnet.split('/')[1]}`, 'dev', 'eth0']);
  await ip(['-n', ep, 'link', 'set', 'eth0', 'address', macFor(address), 'up']);
  await ip(['-n', ep, 'link', 'set', 'lo', 'up']);
  return { ns: name, ep, epPath: `/run/netns/${ep}`, address, mac: macFor(address) };
}

/** Two ends of an underlay veth on a free /30: `a` in namespace aNs (undefined: this one), `b` in bNs. */
async function underlay(aNs: string | undefined, aIf: string, bNs: string): Promise<{ a: string; b: string }> {
  const base = freeTestSubnet(30).split('/')[0]!;
  const a = nthAddress(`${base}/30`, 1), b = nthAddress(`${base}/30`, 2);
  const inA = aNs ? ['-n', aNs] : [];
  await ip([...inA, 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', 'ul0', 'netns', bNs]);
  await ip([...inA, 'addr', 'add', `${a}/30`, 'dev', aIf]);
  await ip([...inA, 'link', 'set', aIf, 'up']);
  await ip(['-n', bNs, 'addr', 'add', `${b}/30`, 'dev', 'ul0']);
  await ip(['-n', bNs, 'link', 'set', 'ul0', 'up']);
  return { a, b };
}

describe('overlay: two namespace hosts over a veth underlay', { skip }, () => {
  const nsA = `ova-${tag}`, nsB = `ovb-${tag}`;
  const subnet = freeTestSubnet(24);
  const dev = vxlanDeviceName(`net${tag}`);
  const vni = 100_000 + (process.pid % 100_000);
  let A: Awaited<ReturnType<typeof nsHost>>, B: Awaited<ReturnType<typeof nsHost>>;
  let u: { a: string; b: string };

  after(async () => {
    for (const n of [nsA, nsB, `${nsA}-ep`, `${nsB}-ep`]) await run('ip', ['netns', 'del', n]);
  });

  test('peers pushed carry traffic; stale ones go; a repeated push changes nothing; nothing left', async () => {
    A = await nsHost(nsA, 'br0', subnet, 10);
    B = await nsHost(nsB, 'br0', subnet, 20);
    u = await underlay(nsA, 'ul0', nsB);
    await ensureVxlan({ netns: nsA, device: dev, vni, local: u.a, bridge: 'br0' });
    await ensureVxlan({ netns: nsB, device: dev, vni, local: u.b, bridge: 'br0' });
    await ensureVxlan({ netns: nsA, device: dev, vni, local: u.a, bridge: 'br0' }); // idempotent
    const made = await readVxlan(dev, nsA);
    assert.deepEqual(made, { vni, local: u.a, master: 'br0' });
    const mtu = JSON.parse((await run('ip', ['-n', nsA, '-j', 'link', 'show', 'dev', dev])).stdout) as Array<{ mtu: number }>;
    assert.equal(mtu[0]!.mtu, OVERLAY_MTU, 'the VXLAN device leaves room for its headers');

    // no entries: no flooding, so nothing crosses (ARP is not answered)
    assert.equal(await ping(A.epPath, B.address), false, 'without pushed peers nothing crosses');

    const toB: OverlayPeer = { ip: B.address, mac: B.mac, underlayIp: u.b };
    const toA: OverlayPeer = { ip: A.address, mac: A.mac, underlayIp: u.a };
    const stale: OverlayPeer = { ip: nthAddress(subnet, 99), mac: macFor(nthAddress(subnet, 99)), underlayIp: u.b };
    assert.deepEqual(await setPeers(dev, [toB, stale], nsA), { added: 4, removed: 0 });
    await setPeers(dev, [toA], nsB);
    assert.ok(await reaches(A.epPath, B.address), 'A reaches B across the overlay');
    assert.ok(await reaches(B.epPath, A.address), 'B reaches A across the overlay');
    // a full-size frame of the overlay MTU crosses (1450 - 28 bytes of IP and ICMP headers)
    const big = await inNetns(A.epPath, ['ping', '-c', '1', '-W', '2', '-s', String(OVERLAY_MTU - 28), B.address], 8000);
    assert.equal(big.code, 0, `a ${OVERLAY_MTU}-byte packet crosses: ${big.stdout}${big.stderr}`);

    // the stale peer goes; the live one stays; pushing the same set again changes nothing
    assert.deepEqual(await setPeers(dev, [toB], nsA), { added: 0, removed: 2 });
    assert.deepEqual(await setPeers(dev, [toB], nsA), { added: 0, removed: 0 });
    const left = await readPeers(dev, nsA);
    assert.deepEqual(left.fdb, [{ mac: B.mac, dst: u.b }]);
    assert.deepEqual(left.neigh, [{ ip: B.address, mac: B.mac }]);
    // a peer that moved to another VTEP: the old entry replaced, not kept beside the new
    await setPeers(dev, [{ ...toB, underlayIp: u.a }], nsA);
    assert.deepEqual((await readPeers(dev, nsA)).fdb, [{ mac: B.mac, dst: u.a }]);
    await setPeers(dev, [toB], nsA);

    // peers emptied: traffic stops (after the endpoint's ARP cache forgets B)
    await setPeers(dev, [], nsA);
    await run('ip', ['-n', A.ep, 'neigh', 'flush', 'dev', 'eth0']);
    assert.equal(await ping(A.epPath, B.address), false, 'emptied peers carry nothing');
    assert.deepEqual(await readPeers(dev, nsA), { fdb: [], neigh: [] });

    for (const n of [nsA, nsB]) await removeVxlan(dev, n);
    for (const n of [nsA, nsB]) assert.equal(await readVxlan(dev, n), undefined, `no VXLAN left in ${n}`);
    await removeVxlan(dev, nsA); // idempotent
  });
});

describe('overlay: a NetworkHost to a namespace host', { skip }, () => {
  let base: string;
  let host: NetworkHost;
  const table = `nimbus_ov${tag}`;
  const nsB = `ovh-${tag}`;
  const ulIf = `ovu${tag}`.slice(0, 15);
  let net: NetworkSpec;
  let B: Awaited<ReturnType<typeof nsHost>>;
  let u: { a: string; b: string };
  const procs: NetnsProcess[] = [];
  const cid = `${tag}ov`.padEnd(12, '0') + 'e'.repeat(52);

  before(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'nimbus-overlay-'));
    const subnet = freeTestSubnet(24);
    net = { id: `ovnet${tag}${randomBytes(4).toString('hex')}`, name: 'span', driver: 'bridge', subnet, gateway: gatewayOf(subnet), internal: false, device: testDevice('o'), mtu: OVERLAY_MTU };
    host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
  });

  after(async () => {
    for (const p of procs) await p.kill();
    await host.detach(cid).catch(() => undefined);
    await host.removeNetwork(net.id).catch(() => undefined);
    await host.close();
    await removeVxlan(vxlanDeviceName(net.id)).catch(() => undefined);
    await run('nft', ['delete', 'table', 'inet', table]);
    for (const n of [nsB, `${nsB}-ep`]) await run('ip', ['netns', 'del', n]);
    await run('ip', ['link', 'del', ulIf]);
    await rm(base, { recursive: true, force: true });
  });

  test('a container reaches the other host; restart reconciles; removal and reconcile leave nothing', async () => {
    const dev = vxlanDeviceName(net.id);
    B = await nsHost(nsB, 'br0', net.subnet, 20);
    u = await underlay(undefined, ulIf, nsB);
    await host.ensureNetwork(net);
    const p = await spawnInNewNetns();
    procs.push(p);
    const a = await host.attach({ containerId: cid, pid: p.pid, endpoints: [{ network: net, address: nthAddress(net.subnet, 10), dnsNames: ['a'] }], ports: [] });
    const eth0 = JSON.parse((await run('nsenter', [`--net=${a.netns}`, 'ip', '-j', 'link', 'show', 'dev', 'eth0'])).stdout) as Array<{ mtu: number }>;
    assert.equal(eth0[0]!.mtu, OVERLAY_MTU, 'the container is told the overlay MTU');

    // the other host's underlay address is found from the route toward it
    assert.equal(await host.underlayAddress(u.b), u.a);
    const vni = 200_000 + (process.pid % 100_000);
    await host.setOverlayPeers(net.id, vni, u.a, [{ ip: B.address, mac: B.mac, underlayIp: u.b }]);
    await ensureVxlan({ netns: nsB, device: dev, vni, local: u.b, bridge: 'br0' });
    await setPeers(dev, [{ ip: nthAddress(net.subnet, 10), mac: macFor(nthAddress(net.subnet, 10)), underlayIp: u.a }], nsB);
    assert.ok(await reaches(a.netns, B.address), 'the container reaches the other host\'s endpoint');
    assert.ok(await reaches(B.epPath, nthAddress(net.subnet, 10)), 'and back');
    assert.ok(existsSync(path.join(base, 'state', 'overlays', `${net.id}.json`)));
    // instances may not send VXLAN to the host (another VNI's frames): the table says so
    assert.match((await run('nft', ['list', 'table', 'inet', table])).stdout, /udp dport 4789 drop/);

    // a restarted host keeps the overlay and makes it again if the kernel lost it
    await host.close();
    host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
    await removeVxlan(dev);
    await host.reconcile(new Set([cid]), new Set([net.id]));
    assert.equal((await readVxlan(dev))?.vni, vni, 'made again at reconcile');
    assert.deepEqual((await readPeers(dev)).neigh, [{ ip: B.address, mac: B.mac }]);
    assert.ok(await reaches(a.netns, B.address), 'traffic crosses again');

    // a stray VXLAN port on one of the host's bridges (no record) is removed by reconcile
    const stray = `vs${tag}`.slice(0, 15);
    await ip(['link', 'add', stray, 'type', 'vxlan', 'id', String(vni + 1), 'local', u.a, 'dstport', '4789', 'nolearning']);
    await ip(['link', 'set', stray, 'master', net.device]);
    await host.reconcile(new Set([cid]), new Set([net.id]));
    assert.equal(await readVxlan(stray), undefined, 'the stray VXLAN port is gone');

    // no peers: the device goes
    await host.setOverlayPeers(net.id, vni, u.a, []);
    assert.equal(await readVxlan(dev), undefined);
    assert.doesNotMatch((await run('nft', ['list', 'table', 'inet', table])).stdout, /4789/, 'no overlay, no VXLAN rule');

    // the network goes with its overlay
    await host.setOverlayPeers(net.id, vni, u.a, [{ ip: B.address, mac: B.mac, underlayIp: u.b }]);
    await host.detach(cid);
    await host.removeNetwork(net.id);
    assert.equal(await readVxlan(dev), undefined, 'removing the network removes its VXLAN device');
    assert.equal(existsSync(path.join(base, 'state', 'overlays', `${net.id}.json`)), false);

    // a host restarted after its network was removed elsewhere: reconcile drops the overlay
    await host.ensureNetwork(net);
    await host.setOverlayPeers(net.id, vni, u.a, [{ ip: B.address, mac: B.mac, underlayIp: u.b }]);
    await host.close();
    host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
    await host.reconcile(new Set(), new Set());
    assert.equal(await readVxlan(dev), undefined, 'reconcile removes the overlay of a network the host no longer has');
    assert.equal(existsSync(path.join(base, 'state', 'overlays', `${net.id}.json`)), false);
    assert.equal((await run('ip', ['link', 'show', 'dev', net.device])).code, 1, 'and the bridge');
  });
});
