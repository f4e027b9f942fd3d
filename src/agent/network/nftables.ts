/**
 * The whole `inet nimbus` nftables table, rendered from what this host has
 * (networks, endpoints, published ports) and swapped in atomically by one
 * `nft -f` transaction: nothing is patched rule by rule, so a crash can never
 * leave half a change, and reconciliation is "render again".
 *
 *   prerouting/output (nat): published ports → DNAT to the container, looked up in two maps
 *                      (any address / one host address): publishing or withdrawing a port is an
 *                      element add or delete in one small nft transaction (portElementsScript),
 *                      not a render of the table; a render writes the maps' elements whole
 *   postrouting (nat): masquerade what leaves a NAT network; loopback clients of a
 *                      published port appear as the gateway (so replies come back)
 *   input (filter):   nothing from an instance to the host's loopback (below), no VXLAN from
 *                     instances while the host carries overlays
 *   forward (filter): isolation — no traffic between two networks, none out of an
 *                     internal one, no source address a network does not own; a routed
 *                     network that spans hosts takes in from outside only its endpoints on
 *                     the other hosts, and forwards toward them only its endpoints here
 */
import type { EndpointSpec, NetworkDriver, NetworkSpec, PortMapping } from './network-driver.js';
import { VXLAN_PORT } from './overlay.js';

/** The table's default name (a second daemon on one host, as in tests, names its own). */
export const NFT_TABLE = 'nimbus';

export interface PublishedPort extends PortMapping {
  containerId: string;
  address: string;
  networkId: string;
}

export interface RulesetInput {
  /** routedPeers: a routed network's endpoints on other hosts (routed-peers.ts), when it spans hosts. */
  networks: Array<{ spec: NetworkSpec; driver: NetworkDriver; endpoints: EndpointSpec[]; routedPeers?: string[] }>;
  ports: PublishedPort[];
  /** The host carries overlays (VXLAN): instances must not send VXLAN to any host, or they could inject frames into another network's VNI. */
  overlay?: boolean;
}

const q = (s: string) => JSON.stringify(s);
const set = (xs: string[]) => (xs.length === 1 ? xs[0]! : `{ ${xs.join(', ')} }`);

/** The maps published ports live in: on any host address, or on one. */
export const PORT_MAPS = { any: 'ports_any', addr: 'ports_addr' } as const;
const mapOf = (p: PortMapping) => (p.hostIp ? PORT_MAPS.addr : PORT_MAPS.any);
/** A port's key in its map: [host address .] protocol . port. */
const portKey = (p: PortMapping) => `${p.hostIp ? `${p.hostIp} . ` : ''}${p.protocol} . ${p.hostPort}`;
/** key comment "container" : address . port */
const portElement = (p: PublishedPort) => `${portKey(p)} comment ${q(p.containerId.slice(0, 12))} : ${p.address} . ${p.containerPort}`;

/**
 * One nft transaction that adds or deletes these ports' elements (all or none). An add of a key
 * already there with other data, or a delete of a key that is not there, fails the whole
 * transaction: the caller's state and the kernel's have diverged, and a render puts them right.
 */
export function portElementsScript(op: 'add' | 'delete', ports: readonly PublishedPort[], table = NFT_TABLE): string {
  return ports.map((p) => `${op} element inet ${table} ${mapOf(p)} { ${op === 'add' ? portElement(p) : portKey(p)} }\n`).join('');
}

export function renderRuleset(input: RulesetInput, table = NFT_TABLE): string {
  const byMap = (m: string) => [...input.ports].filter((p) => mapOf(p) === m).sort((a, b) => a.hostPort - b.hostPort || a.protocol.localeCompare(b.protocol));
  const map = (name: string, key: string) => {
    const elements = byMap(name).map(portElement);
    return [`\tmap ${name} {`, `\t\ttype ${key} : ipv4_addr . inet_service`, ...(elements.length ? [`\t\telements = { ${elements.join(', ')} }`] : []), '\t}'];
  };
  const post: string[] = [];
  const fwd: string[] = ['\t\tct state established,related accept'];
  const allSubnets = input.networks.map((n) => n.spec.subnet);
  const inputRules: string[] = [];
  // route_localnet is on for every bridge and routed tap (a loopback client of a published port is
  // DNATed out through them), and so the kernel would take a packet for 127.0.0.0/8 that an
  // instance crafts (CAP_NET_RAW, a VM's root) as the host's own: UDP and TCP to services bound to
  // loopback only (an agent, a migration's QEMU and NBD, a database). Kubernetes' CVE-2020-8558,
  // closed as kube-proxy closed it: only the DNATed flows of those loopback clients come back in.
  if (input.networks.length) {
    inputRules.push(`\t\tiifname != "lo" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop comment "instances do not reach the host's loopback"`);
  }
  if (input.overlay && allSubnets.length) {
    const vxlan = `ip saddr ${set(allSubnets)} udp dport ${VXLAN_PORT} drop comment "overlay: no VXLAN from instances"`;
    fwd.unshift(`\t\t${vxlan}`); // before the established accept: no state lets it through
    inputRules.push(`\t\t${vxlan}`);
  }
  for (const { spec: n, driver, endpoints, routedPeers } of input.networks) {
    const ifs = driver.interfaces(n, endpoints).map(q);
    if (driver.masquerades(n)) post.push(`\t\tip saddr ${n.subnet} ip daddr != ${n.subnet} masquerade`);
    // a loopback client DNATed to a container: source it from the gateway
    if (!n.internal) post.push(`\t\tip saddr 127.0.0.0/8 ip daddr ${n.subnet} snat ip to ${n.gateway}`);
    if (ifs.length) fwd.push(`\t\tiifname ${set(ifs)} ip saddr != ${n.subnet} drop comment ${q(`${n.name}: spoofed source`)}`);
    if (routedPeers?.length) {
      // the peers' routes are not an open door: from outside this host (the underlay, another
      // host's own traffic, a spoofed source) only the network's remote endpoints get in (a
      // published port's DNAT aside), and only its endpoints here are forwarded to them
      const peers = set(routedPeers);
      if (ifs.length) fwd.push(`\t\toifname ${set(ifs)} iifname != ${set(ifs)} ct status & dnat == 0 ip saddr != ${peers} drop comment ${q(`${n.name}: from other hosts only its endpoints`)}`);
      fwd.push(`\t\t${ifs.length ? `iifname != ${set(ifs)} ` : ''}ip daddr ${peers} drop comment ${q(`${n.name}: to other hosts only from its endpoints here`)}`);
    }
    const others = allSubnets.filter((s) => s !== n.subnet);
    if (n.internal) {
      fwd.push(`\t\tip saddr ${n.subnet} ip daddr != ${n.subnet} drop comment ${q(`${n.name}: internal`)}`);
      fwd.push(`\t\tip daddr ${n.subnet} ip saddr != ${n.subnet} drop comment ${q(`${n.name}: internal`)}`);
    } else if (others.length) {
      fwd.push(`\t\tip saddr ${n.subnet} ip daddr ${set(others)} drop comment ${q(`${n.name}: isolated`)}`);
    }
  }
  return [
    `table inet ${table} {`,
    ...map(PORT_MAPS.addr, 'ipv4_addr . inet_proto . inet_service'),
    ...map(PORT_MAPS.any, 'inet_proto . inet_service'),
    '\tchain ports {',
    `\t\tmeta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @${PORT_MAPS.addr}`,
    `\t\tmeta nfproto ipv4 dnat ip to meta l4proto . th dport map @${PORT_MAPS.any}`,
    '\t}',
    '\tchain prerouting {',
    '\t\ttype nat hook prerouting priority dstnat; policy accept;',
    '\t\tfib daddr type local jump ports',
    '\t}',
    '\tchain output {',
    '\t\ttype nat hook output priority -100; policy accept;',
    '\t\tfib daddr type local jump ports',
    '\t}',
    '\tchain postrouting {',
    '\t\ttype nat hook postrouting priority srcnat; policy accept;',
    ...post,
    '\t}',
    ...(inputRules.length ? ['\tchain input {', '\t\ttype filter hook input priority filter; policy accept;', ...inputRules, '\t}'] : []),
    '\tchain forward {',
    '\t\ttype filter hook forward priority filter; policy accept;',
    ...fwd,
    '\t}',
    '}',
    '',
  ].join('\n');
}

/** An `nft -f` script that replaces the table in one transaction (creating it first so the delete cannot fail). */
export function replaceTableScript(ruleset: string, table = NFT_TABLE): string {
  return `table inet ${table}\ndelete table inet ${table}\n${ruleset}`;
}

export function deleteTableScript(table = NFT_TABLE): string {
  return `table inet ${table}\ndelete table inet ${table}\n`;
}
