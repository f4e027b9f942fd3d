/**
 * Where a registry connection may go. A registry is any host a tenant names, and so is every
 * redirect and token realm it answers with: without a guard, a pull makes nimbusd send GETs to
 * this host's own services (the API, an agent, PostgreSQL, anything on loopback), to a cloud's
 * metadata service (169.254.169.254) or to any port of the host's addresses, and a refusal's text
 * comes back in the error. So every connection a registry client opens is checked against the
 * address it actually connects to (after DNS, so a name that resolves or re-resolves to loopback
 * is caught): loopback, unspecified, link-local, multicast and broadcast addresses and this host's
 * own interface addresses are refused, unless an administrator named the registry
 * (`--allow-registry`, or `--insecure-registry`). OpenStack Glance's web-download filters its
 * URLs the same way (`[import_filtering_opts]`); Docker does not, as it serves one user.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { PermissionDenied, type NimbusError } from '../../core/errors.js';

const refused = (() => {
  const b = new BlockList();
  b.addSubnet('0.0.0.0', 8, 'ipv4'); // "this network", 0.0.0.0 reaches this host
  b.addSubnet('127.0.0.0', 8, 'ipv4');
  b.addSubnet('169.254.0.0', 16, 'ipv4'); // link-local: cloud metadata services
  b.addSubnet('224.0.0.0', 4, 'ipv4');
  b.addAddress('255.255.255.255', 'ipv4');
  b.addAddress('::', 'ipv6');
  b.addAddress('::1', 'ipv6');
  b.addSubnet('fe80::', 10, 'ipv6');
  b.addSubnet('ff00::', 8, 'ipv6');
  return b;
})();

/** Why a registry connection may not go to this address (an IP literal), or undefined. */
export function refusedAddress(address: string): string | undefined {
  const family = isIP(address);
  if (family === 0) return 'not an address';
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (refused.check(address, type)) return 'a loopback, link-local, multicast or unspecified address';
  const own = Object.values(networkInterfaces())
    .flat()
    .some((i) => i !== undefined && (i.address === address || (type === 'ipv6' && address.toLowerCase() === `::ffff:${i.address}`)));
  return own ? 'an address of this host' : undefined;
}

/** A connection the guard refused: the registry client says it as PermissionDenied. */
export class EgressRefused extends Error {
  constructor(
    readonly host: string,
    readonly address: string,
    readonly reason: string,
  ) {
    super(`${host} resolves to ${reason}`);
  }
}

/** Refuse an IP literal before any request (a connection to one asks no lookup). */
export function checkLiteralHost(hostname: string): void {
  const bare = hostname.replace(/^\[|\]$/g, '');
  if (isIP(bare) === 0) return;
  const why = refusedAddress(bare);
  if (why) throw new EgressRefused(hostname, bare, why);
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * dns.lookup for a guarded connection (an http(s) Agent's `lookup`): the addresses it gives
 * were checked, so the socket connects only where the guard allows (no second resolution).
 */
export function guardedLookup(hostname: string, options: LookupOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err, options.all ? [] : '');
    for (const a of addresses) {
      const why = refusedAddress(a.address);
      if (why) return callback(new EgressRefused(hostname, a.address, why), options.all ? [] : '');
    }
    if (options.all) return callback(null, addresses);
    const first = addresses[0];
    if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '');
    callback(null, first.address, first.family);
  });
}

/**
 * The refusal as the error a caller gets, naming `target` (the URL's host[:port]: the registry, a
 * redirect's or a token realm's); the address it resolved to is for administrators.
 */
export function egressDenied(registry: string, target: string, e: EgressRefused): NimbusError {
  return new PermissionDenied(
    `registry ${registry}: ${target} resolves to ${e.reason === 'an address of this host' ? e.reason : 'a loopback, link-local or other non-routable address'}; ` +
      `registries there are reached only when an administrator names them (nimbusd --allow-registry ${target})`,
    { registry },
    { adminMessage: `registry ${registry}: ${target} resolves to ${e.address}, ${e.reason}: refused (nimbusd --allow-registry ${target} allows it)` },
  );
}
