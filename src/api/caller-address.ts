/**
 * The address a request came from, for what is counted per caller (failed logins, unproven agent
 * registrations: core/failure-throttle.ts). The socket's peer, unless that peer is a proxy the
 * administrator trusts (`--trusted-proxy`): then the nearest address in X-Forwarded-For that is not
 * one of those proxies, as nginx's realip module picks it. Without that, every client behind a
 * proxy is the proxy's one address, and one guesser would hold back everyone's logins.
 */
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';

/** IPv4-mapped IPv6 (::ffff:a.b.c.d, as a dual-stack listener reports IPv4 peers) as the IPv4 it is. */
const plain = (a: string) => a.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');

export function callerAddress(req: IncomingMessage, trustedProxies: readonly string[]): string {
  const peer = req.socket.remoteAddress;
  if (peer === undefined) return 'local'; // the unix socket
  const trusted = new Set(trustedProxies.map(plain));
  if (!trusted.has(plain(peer))) return plain(peer);
  const header = req.headers['x-forwarded-for'];
  const hops = (Array.isArray(header) ? header.join(',') : header ?? '').split(',').map((h) => plain(h.trim())).filter(Boolean);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i]!;
    if (isIP(hop) === 0) break; // a hop that is not an address: nothing left of it is believed
    if (!trusted.has(hop)) return hop;
  }
  return plain(peer);
}
