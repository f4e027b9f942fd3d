/**
 * A user network spanning two hosts, end to end: a real nimbusd (control plane and embedded
 * agent "local") and a second agent (`nimbusd agent` in a network namespace of its own, joined
 * by a veth underlay, as in hosts.e2e.test.ts). A container on each host on one network: they
 * reach each other by address over VXLAN (ping, and a 1 MiB HTTP transfer in full-size
 * segments at the overlay MTU) and by name (each host's DNS answers for the other's); a container of another network cannot reach them; after the
 * containers and the network are removed no VXLAN device and no FDB entry is left on either
 * host. A routed network (no encapsulation) the same way: a host route per remote endpoint via
 * its host's underlay address; another network's container and the hosts' own traffic cannot
 * reach them; after removal no route, rule or address is left. The VXLAN cases are skipped where
 * the kernel has no VXLAN (the routed one needs none).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { httpGetFromNetns, inNetns, serveHttp, vxlanMissing } from '../src/agent/network/network-test-env.js';
import { run } from '../src/core/exec.js';
import { startAgentInNamespace, removeAllInstances, secondHost, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { OVERLAY_MTU, vxlanDeviceName } from '../src/agent/network/overlay.js';
import { ROUTED_PEER_PROTO } from '../src/agent/network/routed-peers.js';

const AGENT = 'host-b';

const skip = await vxlanMissing(`e2e${process.pid}`);


/** A container's named network namespace (either host's: /run/netns is shared by the mount namespace). */
const netnsOf = (id: string) => {
  const name = readdirSync('/run/netns').find((n) => n.endsWith(`-${id}`));
  assert.ok(name, `the network namespace of ${id.slice(0, 12)}`);
  return `/run/netns/${name}`;
};
/** node in a network namespace (for UDP: busybox nc has none). */
const nodeIn = (netnsPath: string, script: string, timeoutMs = 10_000) => run('nsenter', [`--net=${netnsPath}`, process.execPath, '-e', script], { timeoutMs });
const sendUdp = (netnsPath: string, host: string, port: number, data: Buffer) =>
  nodeIn(netnsPath, `require('dgram').createSocket('udp4').send(Buffer.from('${data.toString('hex')}', 'hex'), ${port}, '${host}', (e) => process.exit(e ? 1 : 0))`);
/** Datagrams to `port` in the namespace for `ms`, one per line. */
const receiveUdp = (netnsPath: string, port: number, ms: number) =>
  nodeIn(netnsPath, `const s = require('dgram').createSocket('udp4'); let got = ''; s.on('message', (m) => (got += m.toString() + '\\n')); s.bind(${port}); setTimeout(() => { process.stdout.write(got); process.exit(0); }, ${ms});`, ms + 5000);

const ipBytes = (ip: string) => Buffer.from(ip.split('.').map(Number));
const macBytes = (mac: string) => Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
/** A VXLAN packet's payload (header + inner Ethernet/IPv4/UDP frame), as a tenant would forge one. */
function forgedVxlan(vni: number, dstMac: string, srcIp: string, dstIp: string, dport: number, text: string): Buffer {
  const payload = Buffer.from(text);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(5555, 0);
  udp.writeUInt16BE(dport, 2);
  udp.writeUInt16BE(8 + payload.length, 4); // checksum 0: none, allowed over IPv4
  const ip = Buffer.alloc(20);
  ip.writeUInt8(0x45, 0);
  ip.writeUInt16BE(20 + 8 + payload.length, 2);
  ip.writeUInt8(64, 8);
  ip.writeUInt8(17, 9);
  ipBytes(srcIp).copy(ip, 12);
  ipBytes(dstIp).copy(ip, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ip.writeUInt16BE(~sum & 0xffff, 10);
  const eth = Buffer.concat([macBytes(dstMac), macBytes('02:42:de:ad:be:ef'), Buffer.from([0x08, 0x00])]);
  const vx = Buffer.alloc(8);
  vx.writeUInt8(0x08, 0);
  vx.writeUIntBE(vni, 4, 3);
  return Buffer.concat([vx, eth, ip, udp, payload]);
}

const vxlans = async (ns?: string) => (await run('ip', [...(ns ? ['-n', ns] : []), '-o', 'link', 'show', 'type', 'vxlan'])).stdout;
const fdb = async (ns?: string) => (await run('bridge', [...(ns ? ['-n', ns] : []), 'fdb', 'show'])).stdout;

let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;
let work: string;

const cliOk = (args: string[]): Promise<string> => d!.cliOk(args);
interface Endpoint { address: string; mac: string; gateway: string; networkId: string }
const inspect = async (name: string) => (JSON.parse(await cliOk(['inspect', name])) as Array<{ id: string; host: string; network: { endpoints: Endpoint[] } }>)[0]!;

describe('networks across two hosts: over VXLAN, and routed', { concurrency: false }, () => {
  let image: string;
  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'nimbus-overlay-e2e-'));
    host2 = await secondHost({ ns: 'ovl', link: 'nov' });
    d = await startDaemonProcess();
    b = await startAgentInNamespace(d, host2, { homePrefix: 'nimbus-overlay-agent' });
    const archive = join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cliOk(['image', 'import', archive]))![1]!;
  });
  after(async () => {
    try {
      await removeAllInstances(d);
      for (const n of ['span', 'other', 'routed', 'rother']) await d?.cli(['network', 'rm', n]).catch(() => undefined);
    } finally {
      if (b) {
        await b.destroy();
        await run('ip', ['netns', 'exec', host2!.ns, 'nft', 'delete', 'table', 'inet', b.table]);
      }
      await d?.destroy();
      await host2?.remove();
      rmSync(work, { recursive: true, force: true });
    }
  });

  test('a container on each host reaches the other by address; another network cannot; nothing left after removal', { skip }, async () => {
    const spanId = (await cliOk(['network', 'create', 'span'])).trim();
    await cliOk(['network', 'create', 'other']);
    const dev = vxlanDeviceName(spanId);

    await cliOk(['run', '-d', '--name', 'near', '--host', 'local', '--network', 'span', image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'far', '--host', AGENT, '--network', 'span', image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'stranger', '--host', AGENT, '--network', 'other', image, 'sleep', '600']);
    const near = await inspect('near'), far = await inspect('far'), stranger = await inspect('stranger');
    assert.deepEqual([near.host, far.host, stranger.host], ['local', AGENT, AGENT]);
    const nearNs = netnsOf(near.id), farNs = netnsOf(far.id), strangerNs = netnsOf(stranger.id);
    const nearIp = near.network.endpoints[0]!.address, farIp = far.network.endpoints[0]!.address;

    // the VXLAN device on each host, one VNI, and each host's FDB names the other's endpoint at the other's underlay address
    assert.match(await vxlans(), new RegExp(`${dev}`), 'the embedded host has the network\'s VXLAN device');
    assert.match(await vxlans(host2!.ns), new RegExp(`${dev}`), 'and the second host');
    assert.match(await fdb(), new RegExp(`${far.network.endpoints[0]!.mac} dev ${dev} dst ${host2!.agentAddress}`));
    assert.match(await fdb(host2!.ns), new RegExp(`${near.network.endpoints[0]!.mac} dev ${dev} dst ${host2!.hostAddress}`));
    // the containers are told the overlay's MTU
    assert.match((await inNetns(nearNs, ['ip', 'link', 'show', 'eth0'])).stdout, new RegExp(`mtu ${OVERLAY_MTU}`));

    // by address, both ways (the first ARP is answered by the host's proxy from the pushed entries)
    await waitFor('near to reach far', async () => ((await inNetns(nearNs, ['ping', '-c', '1', '-W', '1', farIp])).code === 0 ? true : undefined), 15_000);
    assert.equal((await inNetns(farNs, ['ping', '-c', '1', '-W', '2', nearIp])).code, 0, 'far reaches near');
    // by name: each host's DNS answers for the other host's endpoints too
    const gw = near.network.endpoints[0]!.gateway;
    assert.match((await inNetns(nearNs, ['nslookup', 'far', gw])).stdout, new RegExp(`Address:? *${farIp.replaceAll('.', '\\.')}`), 'near resolves far');
    assert.match((await inNetns(farNs, ['nslookup', 'near', gw])).stdout, new RegExp(`Address:? *${nearIp.replaceAll('.', '\\.')}`), 'far resolves near');
    assert.doesNotMatch((await inNetns(strangerNs, ['nslookup', 'near', stranger.network.endpoints[0]!.gateway])).stdout, new RegExp(nearIp.replaceAll('.', '\\.')), 'another network does not resolve them');
    // a 1 MiB transfer over TCP: full-size segments cross at the overlay MTU
    const www = join(work, 'www');
    mkdirSync(www, { recursive: true });
    const body = randomBytes(512 * 1024).toString('hex');
    writeFileSync(join(www, 'index.html'), body);
    const stop = await serveHttp(farNs, 8080, www);
    try {
      const got = await waitFor('the transfer', async () => httpGetFromNetns(nearNs, farIp, 8080, 5), 15_000);
      assert.equal(got.length, body.length, 'the whole body crossed');
      assert.ok(got === body, 'byte for byte');
      // another network's container reaches neither (not on its host, not across)
      assert.equal(await httpGetFromNetns(strangerNs, farIp, 8080, 2), undefined, 'another network cannot reach far (same host)');
      assert.notEqual((await inNetns(strangerNs, ['ping', '-c', '1', '-W', '1', nearIp])).code, 0, 'another network cannot reach near (across hosts)');
    } finally {
      await stop();
    }
    assert.doesNotMatch(await fdb(host2!.ns), new RegExp(`${stranger.network.endpoints[0]!.mac} dev ${dev}`), 'no overlay entry of another network\'s endpoint');

    // a tenant of another network forges VXLAN with span's VNI toward either host's VTEP: dropped
    // before it leaves its host (masqueraded, it would look like its host's own overlay traffic)
    const vni = (JSON.parse((await run('ip', ['-d', '-j', 'link', 'show', 'dev', dev])).stdout) as Array<{ linkinfo: { info_data: { id: number } } }>)[0]!.linkinfo.info_data.id;
    const listening = receiveUdp(nearNs, 7777, 2500);
    await new Promise((r) => setTimeout(r, 800));
    assert.equal((await sendUdp(farNs, nearIp, 7777, Buffer.from('LEGIT'))).code, 0);
    const forged = forgedVxlan(vni, near.network.endpoints[0]!.mac, farIp, nearIp, 7777, 'INJECTED');
    for (const vtep of [host2!.hostAddress, host2!.agentAddress]) await sendUdp(strangerNs, vtep, 4789, forged);
    const heard = (await listening).stdout;
    assert.match(heard, /LEGIT/, 'the listener hears its own network');
    assert.doesNotMatch(heard, /INJECTED/, 'no frame injected into another network\'s VNI');
    assert.doesNotMatch(await fdb(), new RegExp(`${stranger.network.endpoints[0]!.mac} dev ${dev}`));

    // while the hosts carry the overlay, their tables drop VXLAN from instances
    const tables = async () => [
      (await run('nft', ['list', 'table', 'inet', d!.network.NIMBUS_NFT_TABLE!])).stdout,
      (await run('ip', ['netns', 'exec', host2!.ns, 'nft', 'list', 'table', 'inet', b!.table])).stdout,
    ];
    for (const t of await tables()) assert.match(t, /udp dport 4789 drop/);

    // the far container goes: the embedded host is alone on the network and drops its device
    await cliOk(['rm', '-f', 'far']);
    await waitFor('the devices to go', async () => (!(await vxlans()).includes(dev) && !(await vxlans(host2!.ns)).includes(dev) ? true : undefined), 15_000);
    await cliOk(['rm', '-f', 'near', 'stranger']);
    await cliOk(['network', 'rm', 'span', 'other']);
    for (const ns of [undefined, host2!.ns]) {
      assert.doesNotMatch(await vxlans(ns), new RegExp(dev), `no VXLAN device left on ${ns ?? 'the embedded host'}`);
      const left = await fdb(ns);
      for (const mac of [near.network.endpoints[0]!.mac, far.network.endpoints[0]!.mac]) assert.doesNotMatch(left, new RegExp(`${mac}.*dst`), `no FDB entry left on ${ns ?? 'the embedded host'}`);
      assert.doesNotMatch((await run('ip', [...(ns ? ['-n', ns] : []), 'neigh', 'show', 'nud', 'permanent'])).stdout, new RegExp(`dev ${dev}`), 'no neighbour entry left');
    }
    for (const t of await tables()) assert.doesNotMatch(t, /4789/, 'no overlay rule left');
  });

  test('the project\'s default network spans the hosts too', { skip }, async () => {
    await cliOk(['run', '-d', '--name', 'def-near', '--host', 'local', image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'def-far', '--host', AGENT, image, 'sleep', '600']);
    const near = await inspect('def-near'), far = await inspect('def-far');
    const nearNs = netnsOf(near.id), farIp = far.network.endpoints[0]!.address;
    assert.match((await inNetns(nearNs, ['ip', 'link', 'show', 'eth0'])).stdout, new RegExp(`mtu ${OVERLAY_MTU}`), 'the overlay MTU on the default network');
    await waitFor('def-near to reach def-far', async () => ((await inNetns(nearNs, ['ping', '-c', '1', '-W', '1', farIp])).code === 0 ? true : undefined), 15_000);
    assert.equal((await inNetns(netnsOf(far.id), ['ping', '-c', '1', '-W', '2', near.network.endpoints[0]!.address])).code, 0, 'and back');
    await cliOk(['rm', '-f', 'def-near', 'def-far']);
    // its own device only: other tests' daemons may hold overlays on this host at the same time
    const dev = vxlanDeviceName(near.network.endpoints[0]!.networkId);
    await waitFor('the default network\'s overlay to go', async () => (!(await vxlans()).includes(dev) && !(await vxlans(host2!.ns)).includes(dev) ? true : undefined), 15_000);
  });

  test('a routed network spans the hosts by routes: each reaches the other by address and name; another network and the hosts themselves cannot; nothing left after removal', async () => {
    const routedId = (await cliOk(['network', 'create', '--driver', 'route', 'routed'])).trim();
    await cliOk(['network', 'create', 'rother']);
    await cliOk(['run', '-d', '--name', 'r-near', '--host', 'local', '--network', 'routed', image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'r-far', '--host', AGENT, '--network', 'routed', image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'r-stranger', '--host', AGENT, '--network', 'rother', image, 'sleep', '600']);
    const near = await inspect('r-near'), far = await inspect('r-far'), stranger = await inspect('r-stranger');
    const nearNs = netnsOf(near.id), farNs = netnsOf(far.id), strangerNs = netnsOf(stranger.id);
    const nearIp = near.network.endpoints[0]!.address, farIp = far.network.endpoints[0]!.address, gw = near.network.endpoints[0]!.gateway;
    const routes = async (ns?: string) => (await run('ip', [...(ns ? ['-n', ns] : []), 'route', 'show', 'proto', String(ROUTED_PEER_PROTO)])).stdout;
    const inHostB = (args: string[]) => run('ip', ['netns', 'exec', host2!.ns, ...args], { timeoutMs: 10_000 });

    // a host route to the other host's endpoint via its underlay address, on each host; no VXLAN, full MTU
    assert.match(await routes(), new RegExp(`^${farIp.replaceAll('.', '\\.')} via ${host2!.agentAddress.replaceAll('.', '\\.')} `, 'm'));
    assert.match(await routes(host2!.ns), new RegExp(`^${nearIp.replaceAll('.', '\\.')} via ${host2!.hostAddress.replaceAll('.', '\\.')} `, 'm'));
    assert.doesNotMatch(await vxlans(), new RegExp(vxlanDeviceName(routedId)), 'no VXLAN for a routed network');
    assert.match((await inNetns(nearNs, ['ip', 'link', 'show', 'eth0'])).stdout, /mtu 1500/);

    // by address both ways, and by name at each host's DNS
    await waitFor('r-near to reach r-far', async () => ((await inNetns(nearNs, ['ping', '-c', '1', '-W', '1', farIp])).code === 0 ? true : undefined), 10_000);
    assert.equal((await inNetns(farNs, ['ping', '-c', '1', '-W', '2', nearIp])).code, 0, 'r-far reaches r-near');
    assert.match((await inNetns(nearNs, ['nslookup', 'r-far', gw])).stdout, new RegExp(`Address:? *${farIp.replaceAll('.', '\\.')}`), 'r-near resolves r-far');
    assert.match((await inNetns(farNs, ['nslookup', 'r-near', gw])).stdout, new RegExp(`Address:? *${nearIp.replaceAll('.', '\\.')}`), 'r-far resolves r-near');

    // another network's container reaches neither (on its host, across) nor resolves them; and the
    // peers' routes are no open door: each host routes to the other's endpoint, yet its own traffic
    // is refused there (the pings wait out their timeouts side by side)
    const [strangerFar, strangerNear, hostBNear, hostAFar, strangerName] = await Promise.all([
      inNetns(strangerNs, ['ping', '-c', '1', '-W', '1', farIp]),
      inNetns(strangerNs, ['ping', '-c', '1', '-W', '1', nearIp]),
      inNetns(`/run/netns/${host2!.ns}`, ['ping', '-c', '1', '-W', '1', nearIp]),
      run('/bin/busybox', ['ping', '-c', '1', '-W', '1', farIp], { timeoutMs: 10_000 }),
      inNetns(strangerNs, ['nslookup', 'r-near', stranger.network.endpoints[0]!.gateway]),
    ]);
    assert.notEqual(strangerFar.code, 0, 'another network cannot reach r-far (same host)');
    assert.notEqual(strangerNear.code, 0, 'another network cannot reach r-near (across hosts)');
    assert.notEqual(hostBNear.code, 0, 'host-b itself cannot reach r-near through its route');
    assert.notEqual(hostAFar.code, 0, 'the embedded host cannot reach r-far through its route');
    assert.doesNotMatch(strangerName.stdout, new RegExp(nearIp.replaceAll('.', '\\.')), 'another network does not resolve them');

    // removal: r-far goes, then the rest; no route, rule or address left on either host
    await cliOk(['rm', '-f', 'r-far']);
    await waitFor('the routes to go', async () => (!(await routes()).includes(farIp) && !(await routes(host2!.ns)).includes(nearIp) ? true : undefined), 10_000);
    await cliOk(['rm', '-f', 'r-near', 'r-stranger']);
    await cliOk(['network', 'rm', 'routed', 'rother']);
    const tables = async () => [
      (await run('nft', ['list', 'table', 'inet', d!.network.NIMBUS_NFT_TABLE!])).stdout,
      (await inHostB(['nft', 'list', 'table', 'inet', b!.table])).stdout,
    ];
    for (const t of await tables()) assert.doesNotMatch(t, /routed:|other hosts/, 'no rule of the routed network left');
    for (const ns of [undefined, host2!.ns]) {
      const where = ns ?? 'the embedded host';
      for (const ip of [nearIp, farIp]) assert.doesNotMatch(await routes(ns), new RegExp(`^${ip.replaceAll('.', '\\.')} `, 'm'), `no route to ${ip} left on ${where}`);
      const all = (await run('ip', [...(ns ? ['-n', ns] : []), '-o', '-4', 'addr', 'show'])).stdout + (await run('ip', [...(ns ? ['-n', ns] : []), 'route', 'show', 'table', 'all'])).stdout;
      for (const ip of [gw, nearIp, farIp]) assert.doesNotMatch(all, new RegExp(`\\b${ip.replaceAll('.', '\\.')}\\b`), `no address or route of ${ip} left on ${where}`);
    }
  });
});
