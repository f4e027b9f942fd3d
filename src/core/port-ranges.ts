/**
 * Published ports as Docker spells them, ranges included (pure; port-ranges.test.ts): `-p`'s
 * `[IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/tcp|udp]` and the Engine API's HostPort ("8000",
 * "8000-8010", ""). A container range is expanded to one mapping per port (pairwise with a host
 * range of the same length); a host range beside one container port stays a range: the
 * container's host publishes one free port of it (`hostPortEnd`), as dockerd does.
 */
import { InvalidArgument } from './errors.js';

/**
 * Mappings one container may publish: each is an element of its host's nftables map, a check
 * of the host's ports on every start and an entry of the container's record; past this a range
 * is a mistake or a way to hold a host's ports, not a service.
 */
export const MAX_PUBLISHED_PORTS = 256;

export interface PublishedPortSpec {
  protocol: 'tcp' | 'udp';
  hostIp?: string;
  /** 0: a free port of the ephemeral range chosen by the host; with hostPortEnd: the first of the range to choose from. */
  hostPort: number;
  /** With hostPort: one free port of hostPort..hostPortEnd, chosen by the container's host. */
  hostPortEnd?: number;
  containerPort: number;
}

/** "80" or "80-90": both ends 1-65535, first ≤ last. */
export function parsePortRange(text: string, what: string): { first: number; last: number } {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (!m) throw new InvalidArgument(`invalid ${what} "${text}": expected PORT or FIRST-LAST`);
  const first = Number(m[1]);
  const last = m[2] === undefined ? first : Number(m[2]);
  if (first < 1 || last > 65535) throw new InvalidArgument(`invalid ${what} "${text}": ports are 1-65535`);
  if (last < first) throw new InvalidArgument(`invalid ${what} "${text}": the range ends before it starts`);
  return { first, last };
}

/** A refusal when `count` mappings would pass MAX_PUBLISHED_PORTS. */
export function assertPublishCount(count: number, spec: string): void {
  if (count > MAX_PUBLISHED_PORTS) {
    throw new InvalidArgument(`${spec} publishes ${count} ports; a container publishes at most ${MAX_PUBLISHED_PORTS} (each is a rule on its host and an entry of its record)`);
  }
}

/**
 * One container port's host side (the Engine API's HostPort, or -p's HOST): "" or "0" the host
 * chooses from the ephemeral range, "8000" that port, "8000-8010" one free port of the range.
 */
export function hostPortOf(text: string | undefined): Pick<PublishedPortSpec, 'hostPort' | 'hostPortEnd'> {
  if (!text || text === '0') return { hostPort: 0 };
  const { first, last } = parsePortRange(text, 'host port');
  return last === first ? { hostPort: first } : { hostPort: first, hostPortEnd: last };
}

/** `-p` as docker takes it, expanded (Docker's nat.ParsePortSpec): one entry per container port. */
export function parsePublishSpec(spec: string): PublishedPortSpec[] {
  const m = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(?:([\d-]*):)?([\d-]+)(?:\/(tcp|udp))?$/.exec(spec);
  if (!m || (m[1] && m[2] === undefined)) throw new InvalidArgument(`invalid -p "${spec}": expected [IP:][HOSTPORT[-END]:]CONTAINERPORT[-END][/tcp|udp]`);
  const protocol = (m[4] as 'tcp' | 'udp' | undefined) ?? 'tcp';
  const hostIp = m[1] && m[1] !== '0.0.0.0' ? { hostIp: m[1] } : {};
  const container = parsePortRange(m[3]!, 'container port');
  const host = m[2] ? parsePortRange(m[2], 'host port') : undefined;
  const count = container.last - container.first + 1;
  assertPublishCount(count, `-p ${spec}`);
  if (host && count > 1 && host.last - host.first + 1 !== count) {
    throw new InvalidArgument(`invalid -p "${spec}": the host and container ranges differ in length`);
  }
  const out: PublishedPortSpec[] = [];
  for (let i = 0; i < count; i++) {
    const hostSide = !host ? { hostPort: 0 }
      : count === 1 ? hostPortOf(m[2]) // one container port: a host range is a range to choose from
        : { hostPort: host.first + i };
    out.push({ protocol, ...hostIp, ...hostSide, containerPort: container.first + i });
  }
  return out;
}

/** Whether the host chooses this mapping's port (from the ephemeral range, or from the mapping's range). */
export function hostChoosesPort(p: Pick<PublishedPortSpec, 'hostPort' | 'hostPortEnd'>): boolean {
  return p.hostPort === 0 || p.hostPortEnd !== undefined;
}
