/**
 * NetworkDriver: how one kind of network is laid out in the host's kernel
 * (Xen's bridge and route modes; CNI's bridge plugin). A driver is pure: it
 * returns plans (iproute2 commands, nftables fragments) and the NetworkHost
 * applies them, so the logic is unit-tested without root and the effect is
 * tested for real by the conformance suite.
 */
import { Registry } from '../../core/registry.js';
import { InvalidArgument } from '../../core/errors.js';

export type NetworkDriverName = 'bridge' | 'route';

/** A network as the host needs to know it (the control plane owns the record and the leases). */
export interface NetworkSpec {
  id: string;
  name: string;
  driver: NetworkDriverName;
  /** IPv4 CIDR, e.g. "10.88.0.0/16". */
  subnet: string;
  /** The host's address on the network: the containers' default route and DNS server. */
  gateway: string;
  /** No route out: neither NAT nor forwarding beyond the network. */
  internal: boolean;
  /** The host interface that carries it: the bridge (bridge) or the anchor holding the gateway (route). ≤ 15 characters. */
  device: string;
  /** Interfaces' MTU on the network (absent: the kernel's 1500); lowered for a network that may span hosts (overlay.ts). */
  mtu?: number;
}

/** One container's interface on one network. */
export interface EndpointSpec {
  networkId: string;
  containerId: string;
  /** Named network namespace (under /run/netns) of the container. */
  netns: string;
  /** Interface name inside the container ("eth0", "eth1", ...). */
  ifName: string;
  /** Host end of the veth pair (≤ 15 characters). */
  hostIf: string;
  address: string;
  mac: string;
  /** Whether this endpoint carries the container's default route (its first network). */
  defaultRoute: boolean;
  /** Names the network's DNS answers with this address (container name, aliases). */
  dnsNames: string[];
}

/** A published port: traffic to hostIp:hostPort (any local address when hostIp is absent) goes to address:containerPort. */
export interface PortMapping {
  protocol: 'tcp' | 'udp';
  hostIp?: string;
  hostPort: number;
  /** In a request (protocol 9): one free port of hostPort..hostPortEnd, chosen by the host (-p 8000-8010:80). */
  hostPortEnd?: number;
  containerPort: number;
}

/** Two published ports that cannot both be had: same protocol and port, and an address in common (none given = every address). A port the host chooses (0, or a range) clashes with none. */
export function portsClash(a: PortMapping, b: PortMapping): boolean {
  return a.protocol === b.protocol && a.hostPort === b.hostPort && a.hostPort !== 0 && a.hostPortEnd === undefined && b.hostPortEnd === undefined
    && (!a.hostIp || !b.hostIp || a.hostIp === b.hostIp);
}

/** iproute2 commands: `host` lines run in the host's namespace, `inNetns` ones in the container's. */
export interface IpPlan {
  host: string[][];
  inNetns?: { netns: string; lines: string[][] };
  /** sysctl files (under /proc/sys) to write before the commands. */
  sysctls?: Record<string, string>;
}

export interface NetworkDriver {
  readonly name: NetworkDriverName;
  /** Host plumbing for a network that does not exist yet on this host. */
  createPlan(n: NetworkSpec): IpPlan;
  /** Remove the network's host plumbing (its endpoints are gone). */
  removePlan(n: NetworkSpec): IpPlan;
  /** Plumb one endpoint into an existing namespace. */
  attachPlan(n: NetworkSpec, e: EndpointSpec): IpPlan;
  /** attachPlan split for warm containers: the interface without an address, ahead of demand... */
  prewirePlan(n: NetworkSpec, e: EndpointSpec): IpPlan;
  /** ...and, when one is claimed, what is left: the address, MAC and routes (inside the namespace only). */
  addressPlan(n: NetworkSpec, e: EndpointSpec): IpPlan;
  /** A VM's NIC: a tap device (e.hostIf) QEMU attaches to, joined to the network; the guest holds the address. */
  tapPlan(n: NetworkSpec, e: EndpointSpec): IpPlan;
  /** Undo attachPlan (deleting the host end removes the pair). */
  detachPlan(n: NetworkSpec, e: EndpointSpec): IpPlan;
  /** Whether traffic leaving the network is masqueraded behind the host (bridge: unless internal; route: never). */
  masquerades(n: NetworkSpec): boolean;
  /** Interfaces whose traffic belongs to this network (for isolation rules): exact names or nft wildcards. */
  interfaces(n: NetworkSpec, endpoints: EndpointSpec[]): string[];
}

export const networkDrivers = new Registry<NetworkDriver, Record<string, never>>('NetworkDriver');

// ------------------------------------------------------------------ IPv4 helpers shared by drivers and IPAM

export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4) throw new InvalidArgument(`not an IPv4 address: ${ip}`);
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) throw new InvalidArgument(`not an IPv4 address: ${ip}`);
    n = n * 256 + Number(p);
  }
  return n;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Cidr {
  network: number;
  prefix: number;
  /** Number of addresses, network and broadcast included. */
  size: number;
}

/** Parse "a.b.c.d/n"; the address must be the network address. */
export function parseCidr(cidr: string): Cidr {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new InvalidArgument(`not an IPv4 CIDR: ${cidr}`);
  const prefix = Number(m[2]);
  if (prefix > 32) throw new InvalidArgument(`prefix /${prefix} out of range: ${cidr}`);
  const addr = ipToInt(m[1]!);
  const size = 2 ** (32 - prefix);
  if (addr % size !== 0) throw new InvalidArgument(`${cidr} is not a network address (did you mean ${intToIp(addr - (addr % size))}/${prefix}?)`);
  return { network: addr, prefix, size };
}

/** A subnet a network can have: /8 to /30 (room for a gateway and at least one container). */
export function parseNetworkSubnet(cidr: string): Cidr {
  const c = parseCidr(cidr);
  if (c.prefix > 30 || c.prefix < 8) throw new InvalidArgument(`prefix /${c.prefix} out of range for a network (8-30): ${cidr}`);
  return c;
}

export function cidrContains(c: Cidr, ip: string): boolean {
  const n = ipToInt(ip);
  return n >= c.network && n < c.network + c.size;
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.network < b.network + b.size && b.network < a.network + a.size;
}

/** A stable locally-administered MAC for an address (as Docker derives 02:42:<ip>). */
export function macFor(ip: string): string {
  const n = ipToInt(ip);
  return ['02', '42', n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].map((x) => (typeof x === 'string' ? x : x.toString(16).padStart(2, '0'))).join(':');
}
