import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bridgeDriver } from './bridge-driver.js';
import { routeDriver } from './route-driver.js';
import { cidrContains, cidrsOverlap, intToIp, ipToInt, macFor, parseCidr, parseNetworkSubnet, type EndpointSpec, type NetworkSpec } from './network-driver.js';
import { portElementsScript, renderRuleset, type PublishedPort } from './nftables.js';
import { hostsFile, resolvConf } from './etc-files.js';

const net = (over: Partial<NetworkSpec> = {}): NetworkSpec => ({
  id: 'n1', name: 'front', driver: 'bridge', subnet: '10.88.0.0/16', gateway: '10.88.0.1', internal: false, device: 'nimbus0', ...over,
});
const ep = (over: Partial<EndpointSpec> = {}): EndpointSpec => ({
  networkId: 'n1', containerId: 'c'.repeat(64), netns: 'nimbus-c', ifName: 'eth0', hostIf: 'nvcccccccccccc0', address: '10.88.0.5',
  mac: macFor('10.88.0.5'), defaultRoute: true, dnsNames: ['web'], ...over,
});
const lines = (p: string[][]) => p.map((l) => l.join(' '));

test('IPv4 helpers: parse, contain, overlap, refuse what is not a network', () => {
  assert.equal(intToIp(ipToInt('10.88.3.4')), '10.88.3.4');
  assert.deepEqual(parseCidr('10.88.0.0/16'), { network: ipToInt('10.88.0.0'), prefix: 16, size: 65536 });
  assert.throws(() => parseCidr('10.88.0.1/16'), /not a network address .*10\.88\.0\.0\/16/);
  assert.throws(() => parseNetworkSubnet('10.88.0.0/31'), /out of range for a network/);
  assert.equal(parseCidr('10.88.0.7/32').size, 1);
  assert.throws(() => parseCidr('300.1.1.0/24'), /not an IPv4/);
  assert.ok(cidrContains(parseCidr('10.88.0.0/16'), '10.88.255.254'));
  assert.ok(!cidrContains(parseCidr('10.88.0.0/16'), '10.89.0.1'));
  assert.ok(cidrsOverlap(parseCidr('10.0.0.0/8'), parseCidr('10.88.1.0/24')));
  assert.ok(!cidrsOverlap(parseCidr('10.88.0.0/24'), parseCidr('10.88.1.0/24')));
  assert.equal(macFor('10.88.0.5'), '02:42:0a:58:00:05');
});

test('bridge plans: a bridge with the gateway; a veth pair made straight into the namespace; default route unless internal', () => {
  assert.deepEqual(lines(bridgeDriver.createPlan(net()).host), ['link add nimbus0 address 02:42:0a:58:00:01 type bridge', 'addr replace 10.88.0.1/16 dev nimbus0', 'link set nimbus0 up']);
  assert.equal(bridgeDriver.createPlan(net()).sysctls?.['net/ipv4/ip_forward'], '1');
  const a = bridgeDriver.attachPlan(net(), ep());
  assert.deepEqual(lines(a.host), ['link add nvcccccccccccc0 type veth peer name eth0 netns nimbus-c', 'link set nvcccccccccccc0 master nimbus0 up']);
  assert.ok(lines(a.inNetns!.lines).includes('route replace default via 10.88.0.1 dev eth0'));
  assert.ok(lines(a.inNetns!.lines).includes('addr add 10.88.0.5/16 dev eth0'));
  const internal = bridgeDriver.attachPlan(net({ internal: true }), ep());
  assert.ok(!lines(internal.inNetns!.lines).some((l) => l.startsWith('route replace default')));
  assert.equal(bridgeDriver.masquerades(net({ internal: true })), false);
});

test('route plans: /32 inside, an on-link gateway, a host /32 route; never NAT', () => {
  const n = net({ driver: 'route', device: 'nr-front' });
  const a = routeDriver.attachPlan(n, ep({ hostIf: 'nrcccccccccccc0' }));
  assert.ok(lines(a.host).includes('route replace 10.88.0.5/32 dev nrcccccccccccc0 src 10.88.0.1'));
  assert.deepEqual(lines(a.inNetns!.lines).slice(0, 1), ['addr add 10.88.0.5/32 dev eth0']);
  assert.ok(lines(a.inNetns!.lines).includes('route replace 10.88.0.1 dev eth0 scope link'));
  assert.equal(routeDriver.masquerades(n), false);
  assert.deepEqual(routeDriver.interfaces(n, [ep({ hostIf: 'nrx' })]), ['nrx']);
});

test('nftables: DNAT per published port (map elements, added and deleted one transaction at a time), masquerade for NAT networks only, isolation between networks and for internal ones', () => {
  const front = net();
  const back = net({ id: 'n2', name: 'back', subnet: '10.89.1.0/24', gateway: '10.89.1.1', device: 'nb-back', internal: true });
  const routed = net({ id: 'n3', name: 'routed', driver: 'route', subnet: '10.89.2.0/24', gateway: '10.89.2.1', device: 'nr-routed' });
  const ports: PublishedPort[] = [
    { protocol: 'tcp', hostPort: 8080, containerPort: 80, containerId: 'c'.repeat(64), address: '10.88.0.5', networkId: 'n1' },
    { protocol: 'udp', hostIp: '127.0.0.1', hostPort: 5353, containerPort: 53, containerId: 'c'.repeat(64), address: '10.88.0.5', networkId: 'n1' },
  ];
  const text = renderRuleset({
    networks: [
      { spec: front, driver: bridgeDriver, endpoints: [ep()] },
      { spec: back, driver: bridgeDriver, endpoints: [] },
      { spec: routed, driver: routeDriver, endpoints: [ep({ networkId: 'n3', hostIf: 'nrc0', address: '10.89.2.5' })] },
    ],
    ports,
  }, 'nimbus_test');
  assert.match(text, /^table inet nimbus_test \{/);
  // published ports are elements of two maps (any address / one), looked up by the ports chain
  assert.match(text, /map ports_any \{\n\t\ttype inet_proto \. inet_service : ipv4_addr \. inet_service\n\t\telements = \{ tcp \. 8080 comment "c{12}" : 10\.88\.0\.5 \. 80 \}/);
  assert.match(text, /map ports_addr \{\n\t\ttype ipv4_addr \. inet_proto \. inet_service : ipv4_addr \. inet_service\n\t\telements = \{ 127\.0\.0\.1 \. udp \. 5353 comment "c{12}" : 10\.88\.0\.5 \. 53 \}/);
  assert.match(text, /chain ports \{\n\t\tmeta nfproto ipv4 dnat ip to ip daddr \. meta l4proto \. th dport map @ports_addr\n\t\tmeta nfproto ipv4 dnat ip to meta l4proto \. th dport map @ports_any\n/);
  assert.equal(portElementsScript('add', ports, 'nimbus_test'),
    'add element inet nimbus_test ports_any { tcp . 8080 comment "cccccccccccc" : 10.88.0.5 . 80 }\n' +
    'add element inet nimbus_test ports_addr { 127.0.0.1 . udp . 5353 comment "cccccccccccc" : 10.88.0.5 . 53 }\n');
  assert.equal(portElementsScript('delete', ports, 'nimbus_test'),
    'delete element inet nimbus_test ports_any { tcp . 8080 }\ndelete element inet nimbus_test ports_addr { 127.0.0.1 . udp . 5353 }\n');
  // no ports: the maps are declared empty (an element list cannot be)
  assert.doesNotMatch(renderRuleset({ networks: [{ spec: front, driver: bridgeDriver, endpoints: [] }], ports: [] }), /elements/);
  assert.match(text, /ip saddr 10\.88\.0\.0\/16 ip daddr != 10\.88\.0\.0\/16 masquerade/);
  assert.doesNotMatch(text, /ip saddr 10\.89\.1\.0\/24 ip daddr != 10\.89\.1\.0\/24 masquerade/, 'internal: no NAT');
  assert.doesNotMatch(text, /ip saddr 10\.89\.2\.0\/24 ip daddr != 10\.89\.2\.0\/24 masquerade/, 'route: no NAT');
  assert.match(text, /ip saddr 10\.88\.0\.0\/16 ip daddr \{ 10\.89\.1\.0\/24, 10\.89\.2\.0\/24 \} drop/);
  assert.match(text, /ip saddr 10\.89\.1\.0\/24 ip daddr != 10\.89\.1\.0\/24 drop/);
  assert.match(text, /iifname "nrc0" ip saddr != 10\.89\.2\.0\/24 drop/);
  // established traffic is accepted before any drop
  const forward = text.slice(text.indexOf('chain forward'));
  assert.ok(forward.indexOf('ct state established,related accept') < forward.indexOf(' drop'));
});

test('/etc/hosts and resolv.conf: own address, extra hosts, the embedded DNS or --dns, the host resolvers otherwise', () => {
  const base = { hostname: 'web', addresses: ['10.88.0.5'], extraHosts: ['db:10.88.0.9', 'cache alias:10.88.0.10'], dns: [], hostResolvConf: 'nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\n' };
  assert.equal(hostsFile(base), '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.5\tweb\n10.88.0.9\tdb\n10.88.0.10\tcache alias\n');
  assert.throws(() => hostsFile({ ...base, extraHosts: ['nocolon'] }), /NAME:IP/);
  assert.equal(resolvConf({ ...base, embeddedDns: '10.88.0.1' }), 'nameserver 10.88.0.1\noptions ndots:0\n');
  assert.equal(resolvConf({ ...base, embeddedDns: '10.88.0.1', dns: ['192.0.2.1'] }), 'nameserver 192.0.2.1\n');
  // no network: the host's resolvers, without loopback ones (unreachable from a namespace)
  assert.equal(resolvConf({ ...base, addresses: [] }), 'nameserver 192.0.2.53\nsearch example.test\n');
});

test('overlays: the MTU on the bridge, both veth ends and taps; VXLAN from instances dropped before any accept, only while the host has an overlay', () => {
  const spanning = net({ mtu: 1450 });
  assert.deepEqual(lines(bridgeDriver.createPlan(spanning).host)[0], 'link add nimbus0 mtu 1450 address 02:42:0a:58:00:01 type bridge');
  assert.deepEqual(lines(bridgeDriver.attachPlan(spanning, ep()).host)[0], 'link add nvcccccccccccc0 mtu 1450 type veth peer name eth0 mtu 1450 netns nimbus-c');
  assert.ok(lines(bridgeDriver.tapPlan(spanning, ep()).host).includes('link set nvcccccccccccc0 mtu 1450 master nimbus0 up'));
  const input = { networks: [{ spec: spanning, driver: bridgeDriver, endpoints: [ep()] }], ports: [] };
  const plain = renderRuleset(input);
  assert.doesNotMatch(plain, /4789/, 'no overlay: no rule');
  const text = renderRuleset({ ...input, overlay: true });
  assert.match(text, /chain input \{\n\t\ttype filter hook input priority filter; policy accept;\n.*\n\t\tip saddr 10\.88\.0\.0\/16 udp dport 4789 drop/);
  assert.ok(text.indexOf('udp dport 4789 drop', text.indexOf('chain forward')) < text.indexOf('ct state established,related accept'), 'before the established accept');
});

test('a routed network across hosts: from outside the host only its remote endpoints get in (a published port aside), and only its endpoints here go out to them', () => {
  const routed = net({ id: 'n3', name: 'routed', driver: 'route', subnet: '10.89.2.0/24', gateway: '10.89.2.1', device: 'nr-n3' });
  const here = [ep({ networkId: 'n3', hostIf: 'nrc0', address: '10.89.2.5' }), ep({ networkId: 'n3', hostIf: 'nrd0', address: '10.89.2.6' })];
  const text = renderRuleset({ networks: [{ spec: routed, driver: routeDriver, endpoints: here, routedPeers: ['10.89.2.7', '10.89.2.8'] }], ports: [] });
  assert.match(text, /oifname \{ "nrc0", "nrd0" \} iifname != \{ "nrc0", "nrd0" \} ct status & dnat == 0 ip saddr != \{ 10\.89\.2\.7, 10\.89\.2\.8 \} drop comment "routed: from other hosts only its endpoints"/);
  assert.match(text, /iifname != \{ "nrc0", "nrd0" \} ip daddr \{ 10\.89\.2\.7, 10\.89\.2\.8 \} drop comment "routed: to other hosts only from its endpoints here"/);
  assert.ok(text.indexOf('ct state established,related accept') < text.indexOf('from other hosts'), 'replies to the endpoints\' own connections come in first');
  // no endpoint left here (its last one went before the push): nothing is forwarded to the peers
  assert.match(renderRuleset({ networks: [{ spec: routed, driver: routeDriver, endpoints: [], routedPeers: ['10.89.2.7'] }], ports: [] }), /\t\tip daddr 10\.89\.2\.7 drop comment "routed: to other hosts/);
  // a routed network on one host only is as before
  assert.doesNotMatch(renderRuleset({ networks: [{ spec: routed, driver: routeDriver, endpoints: here }], ports: [] }), /other hosts/);
});

test('input: a packet for the host\'s loopback that comes in on any other interface is dropped unless it belongs to a DNATed flow (route_localnet, CVE-2020-8558); no network, no rule', () => {
  const text = renderRuleset({ networks: [{ spec: net(), driver: bridgeDriver, endpoints: [ep()] }], ports: [] });
  assert.match(text, /chain input \{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname != "lo" ip daddr 127\.0\.0\.0\/8 ct status & dnat == 0 drop comment "instances do not reach the host's loopback"\n/);
  assert.doesNotMatch(renderRuleset({ networks: [], ports: [] }), /chain input/);
});
