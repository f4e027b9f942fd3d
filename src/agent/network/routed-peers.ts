/**
 * A routed network across hosts on one host (docs/overlay.md, "Routed networks"): no
 * encapsulation, as Calico routes between hosts. The control plane pushes the network's
 * endpoints on the other hosts; each becomes a host route `ADDR/32 via UNDERLAY_IP`, marked
 * with a protocol of its own (so the agent finds exactly its routes again) and a metric above
 * the local endpoints' (metric 0): an address this host also has as an endpoint (a move or a
 * migration in flight, a fenced copy) stays on the local endpoint until that goes, and then the
 * peer's route takes over by itself. Every function takes an optional named network namespace,
 * so tests lay out several "hosts" on one machine.
 */
import { writeFile } from 'node:fs/promises';
import { run } from '../../core/exec.js';
import { Internal, InvalidArgument } from '../../core/errors.js';
import { cidrContains, ipToInt, parseCidr } from './network-driver.js';

/** The routes' protocol (iproute2's `proto`): not one of /etc/iproute2/rt_protos. */
export const ROUTED_PEER_PROTO = 78;
/** Above a local endpoint's route (0), which wins while both exist. */
export const ROUTED_PEER_METRIC = 4078;

/** One endpoint of a routed network on another host. */
export interface RoutedPeer {
  ip: string;
  /** The underlay address of the host the endpoint is on (the route's next hop). */
  underlayIp: string;
  /** Names the network's DNS answers with its address on every host (instance name, aliases). */
  names?: string[];
}

/** Each peer's address in the network's subnet, once; next hops outside it (a next hop inside would route the network through itself). */
export function checkRoutedPeers(subnet: string, peers: readonly RoutedPeer[]): void {
  const c = parseCidr(subnet);
  const seen = new Set<string>();
  for (const p of peers) {
    ipToInt(p.ip);
    ipToInt(p.underlayIp);
    if (!cidrContains(c, p.ip)) throw new InvalidArgument(`peer ${p.ip} is outside the network's subnet ${subnet}`);
    if (cidrContains(c, p.underlayIp)) throw new InvalidArgument(`next hop ${p.underlayIp} is inside the network's subnet ${subnet}`);
    if (seen.has(p.ip)) throw new InvalidArgument(`peer ${p.ip} is given twice`);
    seen.add(p.ip);
  }
}

const nsArgs = (netns?: string) => (netns ? ['-n', netns] : []);

/** The peer routes in the subnet as the kernel has them: address → next hop. */
export async function readPeerRoutes(subnet: string, netns?: string): Promise<Map<string, string>> {
  const r = await run('ip', [...nsArgs(netns), '-j', 'route', 'show', 'proto', String(ROUTED_PEER_PROTO), 'root', subnet], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Internal(`ip route show failed: ${r.stderr.trim()}`);
  const routes = (r.stdout.trim() ? JSON.parse(r.stdout) : []) as Array<{ dst: string; gateway?: string; metric?: number }>;
  const out = new Map<string, string>();
  for (const x of routes) if (x.gateway && x.metric === ROUTED_PEER_METRIC) out.set(x.dst.replace(/\/32$/, ''), x.gateway);
  return out;
}

const route = (verb: 'replace' | 'del', ip: string, via: string) => ['route', verb, `${ip}/32`, 'via', via, 'proto', String(ROUTED_PEER_PROTO), 'metric', String(ROUTED_PEER_METRIC)];

/**
 * The subnet's peer routes made exactly `peers`: stale ones removed (only ours: the next hop,
 * protocol and metric must match), missing or moved ones replaced (a route's key is its
 * address and metric: a moved peer's next hop is changed in place). Idempotent: the control plane
 * pushes the whole set after any change. Returns what changed.
 */
export async function setPeerRoutes(subnet: string, peers: readonly RoutedPeer[], netns?: string): Promise<{ added: number; removed: number }> {
  const have = await readPeerRoutes(subnet, netns);
  const want = new Map(peers.map((p) => [p.ip, p.underlayIp]));
  const del = [...have].filter(([ip]) => !want.has(ip)).map(([ip, via]) => route('del', ip, via));
  const add = peers.filter((p) => have.get(p.ip) !== p.underlayIp).map((p) => route('replace', p.ip, p.underlayIp));
  if (del.length) await run('ip', [...nsArgs(netns), '-force', '-batch', '-'], { input: del.map((l) => l.join(' ')).join('\n') + '\n', timeoutMs: 30_000 });
  if (add.length) {
    const r = await run('ip', [...nsArgs(netns), '-batch', '-'], { input: add.map((l) => l.join(' ')).join('\n') + '\n', timeoutMs: 30_000 });
    // "Nexthop has invalid gateway": the peer's host is not on this host's link (no encapsulation: the hosts share a segment)
    if (r.code !== 0) throw new Internal(`routing the network's peers failed: ${r.stderr.trim() || r.stdout.trim()}`, { routes: add.map((l) => l.join(' ')) });
  }
  return { added: add.length, removed: del.length };
}

/** Forwarding on: packets of the network cross this host between its endpoints and the underlay. */
export async function enableForwarding(netns?: string): Promise<void> {
  if (netns) {
    const r = await run('ip', ['netns', 'exec', netns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new Internal(`ip_forward in ${netns}: ${r.stderr.trim()}`);
    return;
  }
  await writeFile('/proc/sys/net/ipv4/ip_forward', '1');
}
