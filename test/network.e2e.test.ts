/**
 * Container networking end to end through a real nimbusd and the CLI, with real
 * traffic: a published port fetched from the host over loopback, names resolved
 * by the network's embedded DNS, isolation between networks, routed mode without
 * NAT, links, host and container: modes, and nothing left behind (interfaces,
 * namespaces, nftables rules, leases), also after a kill -9 of the daemon.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { run } from '../src/core/exec.js';
import { buildTestGuest, GUEST_CACHE_DIR, NET_MARKER } from '../scripts/fixtures/guest.js';
import { freePort } from '../src/agent/network/network-test-env.js';
import { waitFor } from './helpers/wait.js';
import { qemuUnder } from './helpers/qemu.js';

let registry: TestRegistry;
let d: DaemonProcess;
let IMAGE: string;

/** busybox httpd serving "$1" at / on port 8080 (the test image has busybox, not every applet linked). */
const SERVE = (text: string) => ['sh', '-c', `mkdir -p /www && echo ${text} > /www/index.html && echo serving && exec busybox httpd -f -p 8080 -h /www`];
/** An HTTP GET with nc, printing the body; "unreachable" when the connection fails. */
const FETCH = (host: string, port = 8080) => ['sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${host} ${port} > /tmp/r || { echo unreachable; exit 0; }; tail -n 1 /tmp/r`];

async function httpGet(url: string): Promise<string> {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  return (await r.text()).trim();
}

/** python3 ARGV: IFACE GATEWAY_MAC DST PORT: one IPv4/UDP frame saying "crafted", sent raw (AF_PACKET) from the interface's own MAC and address. */
const CRAFTED_UDP = `
import fcntl, socket, struct, sys
iface, mac, dst, port = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', '')), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
src_mac = s.getsockname()[4]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
src = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack('256s', iface.encode()))[20:24]
payload = b'crafted'
udp = struct.pack('!HHHH', 40000, port, 8 + len(payload), 0) + payload
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, socket.inet_aton(dst))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
s.send(mac + src_mac + b'\\x08\\x00' + ip + udp)
`;

interface Inspect {
  id: string;
  name: string;
  network: { mode: string; endpoints: Array<{ network: string; address: string; gateway: string; ifName: string }>; ports: unknown[] };
}

/** What this daemon's containers have on the host: veths (n[vr]<id12>N), named namespaces, DNAT rules. */
async function footprint(ids: string[]): Promise<{ links: number; netns: number; dnat: number }> {
  const links = (await run('ip', ['-o', 'link', 'show'])).stdout;
  const netns = (await run('ip', ['netns', 'list'])).stdout;
  const table = (await run('nft', ['list', 'table', 'inet', d.network.NIMBUS_NFT_TABLE!])).stdout;
  return {
    links: ids.filter((id) => links.includes(`nv${id.slice(0, 12)}`) || links.includes(`nr${id.slice(0, 12)}`)).length,
    netns: ids.filter((id) => netns.includes(`${d.network.NIMBUS_NFT_TABLE!}-${id}`)).length,
    // published ports are elements of the table's port maps, commented with their container's id
    dnat: ids.filter((id) => table.includes(`comment "${id.slice(0, 12)}" :`)).length,
  };
}

/** Veths and named namespaces of this daemon that belong to no container and no warm container: leaks. */
async function leaked(): Promise<string[]> {
  const live = new Set((await d.api<Array<{ id: string }>>('GET', '/containers?all=true&project=*')).body.map((c) => c.id.slice(0, 12)));
  const dir = join(d.home, 'containers/containers');
  for (const id of existsSync(dir) ? readdirSync(dir) : []) live.add(id.slice(0, 12)); // warm ones (not instances) included
  // this daemon's veths only (other test files' daemons run beside it): the ports of its bridges
  const bridges = (await d.api<Array<{ device: string; driver: string }>>('GET', '/networks?project=*')).body.filter((n) => n.driver === 'bridge').map((n) => n.device);
  const links: string[] = [];
  for (const b of bridges) links.push(...((await run('ip', ['-o', 'link', 'show', 'master', b])).stdout.match(/ n[vr][0-9a-f]{12}\d/g) ?? []));
  const prefix = `${d.network.NIMBUS_NFT_TABLE!}-`;
  const names = (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => n.startsWith(prefix));
  return [...links.map((l) => l.trim()).filter((l) => !live.has(l.slice(2, 14))), ...names.filter((n) => !live.has(n.slice(prefix.length, prefix.length + 12)))];
}

describe('container networking end to end', { concurrency: false }, () => {
  const made: string[] = [];
  let hostPort: number;

  before(async () => {
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    assert.equal((await d.cli(['image', 'pull', '-q', IMAGE])).code, 0);
  });
  after(async () => {
    await d?.destroy();
    await registry?.stop();
  });

  const runD = async (args: string[]) => {
    const r = await d.cli(['run', '-d', ...args]);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    made.push(id);
    return id;
  };
  const ok = async (args: string[]) => {
    const r = await d.cli(args);
    assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const inspect = async (name: string) => (await d.api<Inspect>('GET', `/containers/${name}`)).body;
  const waitServing = (name: string) => waitFor(`${name} serving`, async () => ((await d.cli(['logs', name])).stdout.includes('serving') ? true : undefined));

  test('the default network: an address, a published port on loopback, outbound NAT rules', async () => {
    hostPort = await freePort();
    await runD(['--name', 'web', '-p', `127.0.0.1:${hostPort}:8080`, IMAGE, ...SERVE('hello-web')]);
    await waitServing('web');
    const web = await inspect('web');
    assert.equal(web.network.mode, 'bridge');
    assert.equal(web.network.endpoints.length, 1);
    assert.equal(web.network.endpoints[0]!.ifName, 'eth0');
    // the port answers on the host's loopback (DNAT in the output chain)
    assert.equal(await httpGet(`http://127.0.0.1:${hostPort}/`), 'hello-web');
    // and the host reaches the container's own address on the bridge
    assert.equal(await httpGet(`http://${web.network.endpoints[0]!.address}:8080/`), 'hello-web');
    const ls = await d.cli(['network', 'ls']);
    assert.match(ls.stdout, new RegExp(`bridge\\s+bridge\\s+${d.network.NIMBUS_BRIDGE_SUBNET!.replaceAll('.', '\\.')}`));
    // the same host port twice is refused, and the refused container leaves nothing
    const dup = await d.cli(['run', '-d', '-p', `127.0.0.1:${hostPort}:80`, IMAGE, 'sleep', '60']);
    assert.equal(dup.code, 125);
    assert.match(dup.stderr, /already published by web/);
    // a port a host process listens on is refused too (no silent shadowing)
    const busy: Server = createServer();
    const busyPort = await new Promise<number>((r) => busy.listen(0, '127.0.0.1', () => r((busy.address() as { port: number }).port)));
    try {
      const shadow = await d.cli(['run', '-d', '--name', 'shadow', '-p', `127.0.0.1:${busyPort}:80`, IMAGE, 'sleep', '60']);
      assert.equal(shadow.code, 125);
      assert.match(shadow.stderr, /already in use on the host/);
      assert.equal((await d.api('GET', '/containers/shadow')).status, 404, 'a failed create leaves no container');
      // nor an interface or a namespace: every one left belongs to a container or a warm container (the reaper may take a moment)
      await waitFor('the failed create torn down', async () => ((await leaked()).length === 0 ? true : undefined), 90_000);
    } finally {
      busy.close();
    }
  });

  test('an instance cannot reach the host\'s loopback with a crafted packet (route_localnet, CVE-2020-8558); the same packet to the gateway does arrive', async (t) => {
    const id = await runD(['--name', 'prober', IMAGE, 'sleep', '300']);
    const netns = `/run/netns/${d.network.NIMBUS_NFT_TABLE!}-${id}`;
    const gateway = (await inspect('prober')).network.endpoints[0]!.gateway;
    const gatewayMac = (await run('cat', [`/sys/class/net/${d.network.NIMBUS_BRIDGE!}/address`])).stdout.trim();
    // what a container with CAP_NET_RAW (the default, as Docker's) can do: an IPv4/UDP frame of its own making, to the gateway's MAC
    const craftAndSend = (dst: string, port: number) =>
      run('nsenter', [`--net=${netns}`, 'python3', '-c', CRAFTED_UDP, 'eth0', gatewayMac, dst, String(port)]);
    const received: string[] = [];
    const listen = async (address: string) => {
      const sock = createSocket('udp4');
      sock.on('message', (m) => received.push(`${address}: ${m.toString()}`));
      await new Promise<void>((r) => sock.bind(0, address, r));
      t.after(() => sock.close());
      return sock.address().port;
    };
    const loopbackPort = await listen('127.0.0.1');
    const gatewayPort = await listen(gateway);
    for (const [dst, port] of [['127.0.0.1', loopbackPort], [gateway, gatewayPort]] as const) {
      const sent = await craftAndSend(dst, port);
      assert.equal(sent.code, 0, sent.stderr);
    }
    await waitFor('the gateway\'s datagram', async () => (received.some((r) => r.startsWith(gateway)) ? true : undefined), 5_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(received, [`${gateway}: crafted`], 'the crafted packet reaches the gateway, never the host\'s loopback');
  });

  test('a user network: neighbours by name, strangers on another network cannot reach it', async () => {
    await ok(['network', 'create', 'front']);
    await ok(['network', 'create', 'back']);
    await runD(['--name', 'api', '--network', 'front', '--network-alias', 'service', IMAGE, ...SERVE('hello-api')]);
    await waitServing('api');
    const api = await inspect('api');
    const addr = api.network.endpoints[0]!.address;
    // the embedded DNS answers the name and the alias, with the container's address
    let r = await d.cli(['run', '--rm', '--network', 'front', IMAGE, 'sh', '-c', 'busybox nslookup api; busybox nslookup service']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split(addr).length - 1 >= 2, true, r.stdout);
    r = await d.cli(['run', '--rm', '--network', 'front', IMAGE, ...FETCH(addr)]);
    assert.equal(r.stdout.trim(), 'hello-api');
    // another network neither resolves it nor reaches it
    r = await d.cli(['run', '--rm', '--network', 'back', IMAGE, 'sh', '-c', 'busybox nslookup api || echo no-such-name']);
    assert.match(r.stdout, /no-such-name|NXDOMAIN|can't find/);
    assert.doesNotMatch(r.stdout, new RegExp(`Address:\\s+${addr.replaceAll('.', '\\.')}$`, 'm'));
    r = await d.cli(['run', '--rm', '--network', 'back', IMAGE, ...FETCH(addr)]);
    assert.equal(r.stdout.trim(), 'unreachable');
    // nor does the default network
    r = await d.cli(['run', '--rm', IMAGE, ...FETCH(addr)]);
    assert.equal(r.stdout.trim(), 'unreachable');
    // a network in use is not removed
    const rm = await d.cli(['network', 'rm', 'front']);
    assert.equal(rm.code, 1);
    assert.match(rm.stderr, /in use by 1 instance\(s\): api/);
  });

  test('--link, --add-host, --dns, --hostname, --ip', async () => {
    const front = (await d.api<{ subnet: string }>('GET', '/networks/front')).body;
    const fixed = front.subnet.replace(/\.0\/\d+$/, '.200');
    const r = await d.cli(['run', '--rm', '--network', 'front', '--link', 'api:backend', '--add-host', 'db.local:192.0.2.10', '--hostname', 'worker',
      '--ip', fixed, IMAGE, 'sh', '-c', 'env | grep ^BACKEND_ | sort; cat /etc/hosts; hostname; ip -o -4 addr show dev eth0']);
    assert.equal(r.code, 0, r.stderr);
    const api = await inspect('api');
    assert.match(r.stdout, /^BACKEND_NAME=\/.+\/backend$/m);
    assert.match(r.stdout, new RegExp(`^${api.network.endpoints[0]!.address.replaceAll('.', '\\.')}\\tbackend api$`, 'm'));
    assert.match(r.stdout, /^192\.0\.2\.10\tdb\.local$/m);
    assert.match(r.stdout, /^worker$/m);
    assert.match(r.stdout, new RegExp(`inet ${fixed.replaceAll('.', '\\.')}/`));
    // an address is never handed out twice: a second container asking for a held one is refused
    const holder = await d.cli(['run', '-d', '--name', 'holder', '--network', 'front', '--ip', fixed, IMAGE, 'sleep', '60']);
    assert.equal(holder.code, 0, holder.stderr);
    const twice = await d.cli(['run', '--rm', '--network', 'front', '--ip', fixed, IMAGE, 'true']);
    assert.equal(twice.code, 125);
    assert.match(twice.stderr, new RegExp(`address ${fixed.replaceAll('.', '\\.')} is already in use on front`));
    assert.equal((await d.cli(['rm', '-f', 'holder'])).code, 0);
    const dns = await d.cli(['run', '--rm', '--network', 'front', '--dns', '192.0.2.53', IMAGE, 'cat', '/etc/resolv.conf']);
    assert.equal(dns.stdout, 'nameserver 192.0.2.53\n');
    const def = await d.cli(['run', '--rm', '--network', 'front', IMAGE, 'cat', '/etc/resolv.conf']);
    assert.match(def.stdout, new RegExp(`^nameserver ${(await d.api<{ gateway: string }>('GET', '/networks/front')).body.gateway.replaceAll('.', '\\.')}$`, 'm'));
    // bad input is a usage error or a clear refusal
    // (`-p 80` alone is valid now: a free host port is chosen)
    assert.equal((await d.cli(['run', '--rm', '-p', '80:70000', IMAGE, 'true'])).code, 2);
    const outside = await d.cli(['run', '--rm', '--network', 'front', '--ip', '192.0.2.7', IMAGE, 'true']);
    assert.equal(outside.code, 125);
    assert.match(outside.stderr, /outside front/);
    const nope = await d.cli(['run', '--rm', '--network', 'nosuch', IMAGE, 'true']);
    assert.match(nope.stderr, /no such network: nosuch/);
  });

  test('routed mode: no NAT, the host reaches the container through its own route', async () => {
    await ok(['network', 'create', '--driver', 'route', 'routed']);
    await runD(['--name', 'routed-web', '--network', 'routed', IMAGE, ...SERVE('hello-routed')]);
    await waitServing('routed-web');
    const c = await inspect('routed-web');
    const addr = c.network.endpoints[0]!.address;
    const route = (await run('ip', ['route', 'show', `${addr}/32`])).stdout;
    assert.match(route, new RegExp(`${addr.replaceAll('.', '\\.')} dev nr${c.id.slice(0, 12)}0`), route);
    assert.equal(await httpGet(`http://${addr}:8080/`), 'hello-routed');
    const table = (await run('nft', ['list', 'table', 'inet', d.network.NIMBUS_NFT_TABLE!])).stdout;
    const routed = (await d.api<{ subnet: string }>('GET', '/networks/routed')).body;
    assert.ok(!table.includes(`ip saddr ${routed.subnet} ip daddr != ${routed.subnet} masquerade`), 'no NAT for a routed network');
  });

  test('host and container: modes, and an internal network with no way out', async () => {
    let r = await d.cli(['run', '--rm', '--network', 'host', IMAGE, 'ip', '-o', 'link', 'show']);
    assert.match(r.stdout, new RegExp(d.network.NIMBUS_BRIDGE!), 'host mode sees the host interfaces');
    r = await d.cli(['run', '--rm', '--network', 'container:web', IMAGE, ...FETCH('127.0.0.1')]);
    assert.equal(r.stdout.trim(), 'hello-web', "container: shares web's namespace (its loopback)");
    await ok(['network', 'create', '--internal', 'vault']);
    r = await d.cli(['run', '--rm', '--network', 'vault', IMAGE, 'ip', 'route']);
    assert.doesNotMatch(r.stdout, /default/);
    r = await d.cli(['run', '--rm', '--network', 'vault', '-p', '18080:80', IMAGE, 'true']);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /internal/);
  });

  test('network connect and disconnect a running container', async () => {
    await ok(['network', 'connect', 'back', 'api']);
    const api = await inspect('api');
    const onBack = api.network.endpoints.find((e) => e.network === 'back');
    assert.ok(onBack, JSON.stringify(api.network));
    assert.equal(onBack.ifName, 'eth1');
    let r = await d.cli(['run', '--rm', '--network', 'back', IMAGE, ...FETCH(onBack.address)]);
    assert.equal(r.stdout.trim(), 'hello-api', 'reachable from back once connected');
    r = await d.cli(['run', '--rm', '--network', 'back', IMAGE, 'sh', '-c', 'busybox nslookup api']);
    assert.match(r.stdout, new RegExp(onBack.address.replaceAll('.', '\\.')), "back's DNS knows it now");
    assert.match((await d.cli(['network', 'connect', 'back', 'api'])).stderr, /already on back/);
    await ok(['network', 'disconnect', 'back', 'api']);
    assert.equal((await inspect('api')).network.endpoints.length, 1);
    r = await d.cli(['run', '--rm', '--network', 'back', IMAGE, ...FETCH(onBack.address)]);
    assert.equal(r.stdout.trim(), 'unreachable', 'gone with the disconnect');
    assert.match((await d.cli(['network', 'connect', 'back', 'web-nope'])).stderr, /no such container/);
  });

  test('a VM and a container on one network reach each other; a second NIC on a routed network; the VM\'s taps go with it', async () => {
    const guest = await buildTestGuest(GUEST_CACHE_DIR);
    await ok(['vm', 'run', '--name', 'netvm', '--memory', '192m', '--network', 'front', '--network', 'routed', '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', guest.append]);
    const vm = (await d.api<{ id: string; network: { endpoints: Array<{ address: string; network: string; mac: string }> } }>('GET', '/vms/netvm')).body;
    const nic = vm.network.endpoints[0];
    assert.ok(nic && nic.network === 'front', JSON.stringify(vm.network));
    const routedNic = vm.network.endpoints[1];
    assert.ok(routedNic && routedNic.network === 'routed', JSON.stringify(vm.network));
    const routedTap = `vif${vm.id.slice(0, 8)}.1`;
    assert.doesNotMatch((await run('ip', ['-o', 'link', 'show', 'dev', routedTap])).stdout, / master /, 'a routed tap is on no bridge');
    assert.match((await run('ip', ['route', 'show', `${routedNic.address}/32`])).stdout, new RegExp(`dev ${routedTap.replace('.', '\\.')}`), 'the host routes the VM\'s routed address to its tap');
    const tap = `vif${vm.id.slice(0, 8)}.0`;
    const link = (await run('ip', ['-o', 'link', 'show', 'dev', tap])).stdout;
    const bridge = (await d.api<{ device: string }>('GET', '/networks/front')).body.device;
    assert.match(link, new RegExp(`master ${bridge}`), `the tap is on front's bridge: ${link}`);
    // TCG boots in seconds; the guest prints its address once its NIC is up
    await waitFor('the guest configured its NIC', async () => ((await d.cli(['logs', 'netvm'])).stdout.includes(`${NET_MARKER} eth0 ${nic.address}/`) ? true : undefined), 120_000);
    const r = await d.cli(['run', '--rm', '--network', 'front', IMAGE, 'sh', '-c', `busybox nslookup netvm; ${FETCH(nic.address, 80)[2]}`]);
    assert.match(r.stdout, new RegExp(nic.address.replaceAll('.', '\\.')), 'the network DNS knows the VM');
    assert.match(r.stdout, /hello from the vm$/m, r.stdout + r.stderr);
    // which its QEMU serves through the taps alone: a network namespace of its own holding only a
    // loopback (jailer.ts), not the host's, where it could reach the host's services
    const qemuPid = String(qemuUnder(`/${vm.id}/`)[0]);
    assert.match(qemuPid, /^\d+$/, 'the QEMU of this VM');
    assert.notEqual(readlinkSync(`/proc/${qemuPid}/ns/net`), readlinkSync('/proc/self/ns/net'), 'its own network namespace');
    assert.deepEqual((await run('nsenter', ['-t', qemuPid, '-n', 'ip', '-o', 'link'])).stdout.trim().split('\n').map((l) => l.split(':')[1]?.trim()), ['lo'], 'no link but a loopback');
    // route mode: no bridge, no NAT; the host reaches the guest through the /32 route on its tap
    await waitFor('the guest configured its routed NIC', async () => ((await d.cli(['logs', 'netvm'])).stdout.includes(`${NET_MARKER} eth1 ${routedNic.address}/`) ? true : undefined), 60_000);
    assert.equal(await httpGet(`http://${routedNic.address}/`), 'hello from the vm');
    await ok(['rm', '-f', 'netvm']);
    assert.equal((await run('ip', ['link', 'show', 'dev', tap])).code !== 0, true, 'the tap is gone with the VM');
    assert.equal((await run('ip', ['link', 'show', 'dev', routedTap])).code !== 0, true, 'the routed tap too');
    assert.deepEqual((await d.api<{ containers: Array<{ name: string }> }>('GET', '/networks/front')).body.containers.map((c) => c.name), ['api'], 'its lease is released');
  });

  test('kill -9 of nimbusd: published ports keep answering; then rm leaves no interface, namespace, rule or lease', async () => {
    await d.kill('SIGKILL');
    await d.restart();
    assert.equal(await httpGet(`http://127.0.0.1:${hostPort}/`), 'hello-web');
    const r = await d.cli(['run', '--rm', '--network', 'front', IMAGE, 'sh', '-c', 'busybox nslookup api']);
    assert.match(r.stdout, new RegExp((await inspect('api')).network.endpoints[0]!.address.replaceAll('.', '\\.')), 'DNS is back after the restart');
    const before = await footprint(made);
    assert.ok(before.links >= 3 && before.netns >= 3 && before.dnat >= 1, JSON.stringify(before));
    for (const id of made) assert.equal((await d.cli(['rm', '-f', id])).code, 0);
    // published ports are free once rm answered, their map elements deleted just behind it;
    // interfaces and namespaces go with the background reaper
    await waitFor('no published port left', async () => ((await footprint(made)).dnat === 0 ? true : undefined), 5_000);
    await waitFor('interfaces and namespaces torn down', async () => {
      const f = await footprint(made);
      return f.links === 0 && f.netns === 0 ? f : undefined;
    }, 60_000);
    const devices: string[] = [];
    for (const n of ['front', 'back', 'routed', 'vault']) {
      const net = (await d.api<{ containers: unknown[]; device: string }>('GET', `/networks/${n}`)).body;
      assert.deepEqual(net.containers, [], `no lease left on ${n}`);
      devices.push(net.device);
      assert.equal((await d.cli(['network', 'rm', n])).code, 0);
    }
    await assert.rejects(httpGet(`http://127.0.0.1:${hostPort}/`));
    const links = (await run('ip', ['-o', 'link', 'show'])).stdout;
    for (const dev of devices) assert.ok(!links.includes(`${dev}:`), `${dev} removed with its network`);
  });
});
