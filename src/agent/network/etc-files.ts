/**
 * The /etc/hosts and /etc/resolv.conf a container sees (bind-mounted from its
 * directory, as Docker does), made from its endpoints, links and options.
 */
import { InvalidArgument } from '../../core/errors.js';

/** Nameservers of a resolv.conf text. */
export function resolvConfNameservers(text: string): string[] {
  return text.split('\n').map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1]).filter((x): x is string => !!x);
}

export interface EtcInput {
  hostname: string;
  /** The container's own addresses (first = primary). */
  addresses: string[];
  /** "name:ip" (or "name1 name2:ip" for aliases), from --add-host and --link. */
  extraHosts: string[];
  /** --dns; empty = the first network's embedded DNS, else the host's resolvers. */
  dns: string[];
  /** The embedded DNS of the container's first network, if any. */
  embeddedDns?: string;
  /** The host's resolv.conf text (what a container without a network gets). */
  hostResolvConf: string;
}

export function hostsFile(i: EtcInput): string {
  const lines = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback'];
  if (i.addresses[0]) lines.push(`${i.addresses[0]}\t${i.hostname}`);
  for (const h of i.extraHosts) {
    const at = h.lastIndexOf(':');
    const names = h.slice(0, at).trim();
    const ip = h.slice(at + 1).trim();
    if (at <= 0 || !ip || !/^[0-9a-fA-F.:]+$/.test(ip)) throw new InvalidArgument(`invalid host entry "${h}": expected NAME:IP`);
    lines.push(`${ip}\t${names}`);
  }
  return lines.join('\n') + '\n';
}

export function resolvConf(i: EtcInput): string {
  const servers = i.dns.length ? i.dns : i.embeddedDns ? [i.embeddedDns] : resolvConfNameservers(i.hostResolvConf).filter((s) => !s.startsWith('127.'));
  const lines = servers.map((s) => `nameserver ${s}`);
  // keep the host's search domains only when its resolvers are used
  if (!i.dns.length && !i.embeddedDns) lines.push(...i.hostResolvConf.split('\n').filter((l) => /^\s*(search|domain)\s/.test(l)));
  if (i.embeddedDns && !i.dns.length) lines.push('options ndots:0');
  return lines.join('\n') + '\n';
}
