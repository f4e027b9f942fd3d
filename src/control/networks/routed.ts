/**
 * Routed networks across hosts, the control plane's side (docs/overlay.md, "Routed networks"):
 * no encapsulation, as Calico and Neutron's routed networks do it. Each host with endpoints on
 * the network gets a host route to every endpoint on the other hosts via that host's underlay
 * address (`Agent.setRoutedPeers`); the push itself (when, to whom, the whole set every time)
 * is the overlay's (overlay.ts, NetworkOverlay), which serves both kinds of network.
 */
import type { RoutedPeer } from '../../agent/network/routed-peers.js';
import type { NetworkRecord } from '../../store/records.js';

/** Networks that span hosts by routing, not bridging. */
export const isRouted = (n: Pick<NetworkRecord, 'driver'>): boolean => n.driver === 'route';

/** Where an endpoint is, as routing needs it. */
export interface RoutedEndpoint {
  ip: string;
  host: string;
  names: string[];
}

/**
 * The routes each host of the network gets: the endpoints on the other hosts, each via its
 * host's underlay address. Hosts without an underlay address are left out (neither routed to
 * nor given routes); a host alone on the network gets none.
 */
export function routedPeersByHost(endpoints: readonly RoutedEndpoint[], underlay: ReadonlyMap<string, string>): Map<string, RoutedPeer[]> {
  const hosts = new Set(endpoints.map((e) => e.host).filter((h) => underlay.has(h)));
  const out = new Map<string, RoutedPeer[]>();
  if (hosts.size < 2) return out;
  for (const h of hosts) {
    out.set(h, endpoints.filter((e) => e.host !== h && underlay.has(e.host)).map((e) => ({ ip: e.ip, underlayIp: underlay.get(e.host)!, names: e.names })));
  }
  return out;
}
