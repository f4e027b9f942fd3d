/**
 * An instance's published ports as an attach asks for them: checked against what this host
 * publishes, the ports the host chooses (-P, -p PORT, -p FIRST-LAST:PORT) picked and reserved
 * synchronously, and then every port checked to be free of host processes. Their nftables map
 * elements are the table's job (host-table.ts).
 */
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { Conflict, InvalidArgument, ResourceExhausted } from '../../core/errors.js';
import { portsClash, type EndpointSpec, type PortMapping } from './network-driver.js';
import type { PublishedPort } from './nftables.js';

/** dockerd's range for ports it chooses (-P, -p PORT): the kernel's default ephemeral range starts at 32768, this above most. */
export const EPHEMERAL_PORTS = { first: 49153, last: 65535 };
/** How many chosen ports a host process may turn down before a publish gives up. */
const CHOSEN_PORT_TRIES = 32;
/** ...and of a range asked for (-p FIRST-LAST:PORT), how many of its ports are tried at most. */
const CHOSEN_RANGE_TRIES = 256;

/** Every port this host publishes or is reserving (attaches in flight). */
export type PublishedPortsView = () => PublishedPort[];

/** A port asked for that this host publishes already is refused. */
export function assertNotPublished(asked: readonly PortMapping[], published: PublishedPortsView): void {
  for (const p of asked) {
    const clash = published().find((q) => portsClash(p, q));
    if (clash) throw new Conflict(`port ${p.hostIp ?? '0.0.0.0'}:${p.hostPort}/${p.protocol} is already in use by container ${clash.containerId.slice(0, 12)}`);
  }
}

/** The ports as an attach returns them (what was asked, with the host ports chosen). */
export function asMappings(ports: readonly PublishedPort[]): PortMapping[] {
  return ports.map(({ protocol, hostIp, hostPort, containerPort }) => ({ protocol, ...(hostIp ? { hostIp } : {}), hostPort, containerPort }));
}

/**
 * The ports of one attach, published on its first endpoint's address. Made synchronously with
 * the attach's other checks, so concurrent attaches see each other's ports: hostPort 0 (-P,
 * -p PORT) or a range (-p FIRST-LAST:PORT) gets a port of the ephemeral range or of the range
 * that no published port holds (0 until chosen, which clashes with none).
 */
export class PortReservation {
  /** The caller's record holds this very array: the ports chosen again by confirmFree() land in it. */
  readonly ports: PublishedPort[];
  /** The indexes of the ports this host chooses. */
  private readonly chosen: number[];
  /** Per chosen port: those a host process turned down. */
  private readonly passedOver = new Map<number, Set<number>>();

  constructor(
    private readonly published: PublishedPortsView,
    containerId: string,
    private readonly asked: readonly PortMapping[],
    first: { endpoint: EndpointSpec; internal: boolean | undefined } | undefined,
  ) {
    if (asked.length && !first) throw new InvalidArgument('published ports need a network (not none or host)');
    if (first && asked.length && first.internal) throw new InvalidArgument('ports cannot be published from an internal network');
    this.chosen = asked.flatMap((p, i) => (p.hostPort === 0 || p.hostPortEnd !== undefined ? [i] : []));
    for (const p of asked) {
      if (p.hostPortEnd !== undefined && !(p.hostPort >= 1 && p.hostPortEnd >= p.hostPort && p.hostPortEnd <= 65535)) throw new InvalidArgument(`host port range ${p.hostPort}-${p.hostPortEnd} is not a range of ports 1-65535`);
    }
    this.ports = !first ? [] : asked.map(({ hostPortEnd: _range, ...p }, i) => ({
      ...p, ...(this.chosen.includes(i) ? { hostPort: 0 } : {}), containerId, address: first.endpoint.address, networkId: first.endpoint.networkId,
    }));
    for (const i of this.chosen) this.choose(i);
  }

  private choose(i: number): void {
    this.ports[i] = { ...this.ports[i]!, hostPort: 0 };
    this.ports[i] = { ...this.ports[i]!, hostPort: this.freeHostPort(this.ports[i]!, this.asked[i]!, this.passedOver.get(i)) };
  }

  /**
   * Every port free on the host, or refused: a chosen port a host process holds is passed over
   * for another (bounded: the ephemeral range is large; a range asked for is tried whole, up to
   * CHOSEN_RANGE_TRIES ports); one asked for by number must be free.
   */
  confirmFree(): Promise<unknown> {
    return Promise.all(this.ports.map(async (p, i) => {
      const range = this.asked[i]!.hostPortEnd;
      const limit = range === undefined ? CHOSEN_PORT_TRIES : Math.min(range - p.hostPort + 1, CHOSEN_RANGE_TRIES);
      for (let tries = 1; this.chosen.includes(i); tries++) {
        if (await portFreeOnHost(this.ports[i]!)) return;
        if (tries >= limit) {
          throw new ResourceExhausted(range === undefined ? `no free host port for ${p.containerPort}/${p.protocol} after ${CHOSEN_PORT_TRIES} tries`
            : `no free host port in ${this.asked[i]!.hostPort}-${range}/${p.protocol} for ${p.containerPort}/${p.protocol}: host processes hold the ${tries} tried`);
        }
        const held = this.passedOver.get(i) ?? new Set<number>();
        this.passedOver.set(i, held.add(this.ports[i]!.hostPort));
        this.choose(i);
      }
      await assertPortFree(p);
    }));
  }

  /**
   * A port that neither this host's published ports nor this reservation's own hold, nor
   * `skip` lists: of the ephemeral range from a random start, as dockerd, or of the range asked
   * (`asked.hostPortEnd`) from its first port.
   */
  private freeHostPort(p: PortMapping, asked: PortMapping, skip?: ReadonlySet<number>): number {
    const held = [...this.published(), ...this.ports];
    const ranged = asked.hostPortEnd !== undefined;
    const { first, last } = ranged ? { first: asked.hostPort, last: asked.hostPortEnd! } : EPHEMERAL_PORTS;
    const span = last - first + 1;
    const start = ranged ? 0 : randomInt(span);
    for (let k = 0; k < span; k++) {
      const hostPort = first + ((start + k) % span);
      if (!skip?.has(hostPort) && !held.some((q) => q !== p && portsClash({ ...p, hostPort }, q))) return hostPort;
    }
    throw new ResourceExhausted(ranged ? `no free host port in ${first}-${last}/${p.protocol}: each is published, or held by a host process`
      : `every host port of ${first}-${last}/${p.protocol} is published`);
  }
}

/** A published port must not shadow something already listening on the host. */
async function assertPortFree(p: PortMapping): Promise<void> {
  if (!(await portFreeOnHost(p))) throw new Conflict(`port ${p.hostIp ?? '0.0.0.0'}:${p.hostPort}/${p.protocol} is already in use on the host`);
}

/** Whether the port can be bound on the host now (bound for an instant, then let go). */
async function portFreeOnHost(p: PortMapping): Promise<boolean> {
  const host = p.hostIp ?? '0.0.0.0';
  const taken = await new Promise<boolean>((resolve) => {
    if (p.protocol === 'udp') {
      const s = createSocket('udp4');
      s.once('error', () => resolve(true));
      s.bind(p.hostPort, host, () => s.close(() => resolve(false)));
      return;
    }
    const s = createServer();
    s.once('error', () => resolve(true));
    s.listen(p.hostPort, host, () => s.close(() => resolve(false)));
  });
  return !taken;
}
