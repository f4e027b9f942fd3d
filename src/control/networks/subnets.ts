/**
 * Which subnet a network gets: a /24 of the pool, a checked --subnet, or the default project's
 * own. None overlaps another network or a route of the embedded agent's host.
 */
import { Conflict, InvalidArgument } from '../../core/errors.js';
import { cidrsOverlap, intToIp, parseCidr, parseNetworkSubnet } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';

export interface SubnetDeps {
  store: Store;
  /** Subnets the embedded agent's host routes. */
  foreignSubnets(): Promise<string[]>;
}

/** Every network's subnet and the host's routes. */
async function takenSubnets(d: SubnetDeps): Promise<Array<ReturnType<typeof parseCidr>>> {
  return [...(await d.store.networks.list()).map((n) => n.subnet), ...(await d.foreignSubnets())].map((s) => parseCidr(s));
}

/** A /24 of the pool that overlaps neither another network nor a host route. */
export async function pickSubnet(d: SubnetDeps, subnetPool: string): Promise<string> {
  const pool = parseCidr(subnetPool);
  const taken = await takenSubnets(d);
  for (let a = pool.network; a + 256 <= pool.network + pool.size; a += 256) {
    const c = parseCidr(`${intToIp(a)}/24`);
    if (!taken.some((t) => cidrsOverlap(t, c))) return `${intToIp(a)}/24`;
  }
  throw new Conflict(`no free /24 left in the subnet pool ${subnetPool}; give --subnet`);
}

export async function checkSubnet(d: SubnetDeps, subnet: string): Promise<void> {
  let c;
  try {
    c = parseNetworkSubnet(subnet);
  } catch (e) {
    throw new InvalidArgument(e instanceof Error ? e.message : String(e));
  }
  const clash = (await d.store.networks.list()).find((n) => cidrsOverlap(parseCidr(n.subnet), c));
  if (clash) throw new Conflict(`subnet ${subnet} overlaps network ${clash.name} (${clash.subnet})`);
  const foreign = (await d.foreignSubnets()).find((s) => cidrsOverlap(parseCidr(s), c));
  if (foreign) throw new Conflict(`subnet ${subnet} overlaps the host's route to ${foreign}`);
}

/** The default project's subnet: the configured one, or, when defaulted and taken (podman's 10.88/16), a free /16 below it. */
export async function defaultSubnet(d: SubnetDeps, o: { bridgeSubnet: string; bridgeSubnetFallback?: boolean }): Promise<string> {
  if (!o.bridgeSubnetFallback) return o.bridgeSubnet;
  const taken = await takenSubnets(d);
  const free = (c: string) => !taken.some((t) => cidrsOverlap(t, parseCidr(c)));
  if (free(o.bridgeSubnet)) return o.bridgeSubnet;
  for (let b = 87; b >= 80; b--) if (free(`10.${b}.0.0/16`)) return `10.${b}.0.0/16`;
  return o.bridgeSubnet; // the create then says what overlaps and which setting to change
}
