/**
 * The IPAM: addresses leased in the store, one per instance and network, never two for one
 * address (the store's key). Warm containers hold leases too, without an instance record:
 * they are not shown as a network's users and are released when they go.
 *
 * Addresses are given out in turn (next fit, as Docker's libnetwork allocates serially): each
 * network's next candidate is kept in memory, the address after the last one leased here, and
 * an allocation asks the store which of the next LEASE_CANDIDATES addresses are free (one
 * indexed query), wrapping at the subnet's end. An address released is so not given again until
 * the turn comes back to it (peers' neighbour caches and connection tracking forget it meanwhile),
 * and an allocation costs the same whatever the network holds: first fit read every lease of the
 * network, inside the write transaction every other write waits for (13.6 ms with 10,000 leases).
 * When every candidate is taken (a full stretch, or a restart's first allocation on a busy
 * network) it falls back to reading the network's leased addresses once. Another replica's
 * allocations are seen by the query; only the turn is per process.
 */
import { Conflict, InvalidArgument, hasCode } from '../../core/errors.js';
import type { AddressProvider } from '../../agent/agent.js';
import { intToIp, ipToInt, parseCidr } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import type { NetworkLeaseRecord, NetworkRecord } from '../../store/records.js';

/** How many addresses an allocation asks the store about at once before it reads the whole network. */
const LEASE_CANDIDATES = 32;
/** Networks whose turn is kept (a turn forgotten starts from the subnet's start again). */
const MAX_TURNS_KEPT = 4096;

export class AddressLeases {
  /** Per network: the next address (as an integer) to offer. */
  private readonly next = new Map<string, number>();

  constructor(private readonly store: Store) {}

  /** A warm container's address leased ahead of demand is the container's now (unless --ip asks for another). */
  async keepOrLease(n: NetworkRecord, instanceId: string, ifIndex: number, wanted?: string): Promise<NetworkLeaseRecord> {
    const held = (await this.store.networks.leases({ instanceId, networkId: n.id }))[0];
    if (held && (!wanted || wanted === held.address)) return held;
    if (held) await this.store.networks.release(instanceId, n.id);
    return this.leaseOne(n, instanceId, ifIndex, wanted);
  }

  /** What the agent leases warm containers' addresses through (see Agent.setAddressProvider). */
  addressProvider(): AddressProvider {
    return {
      lease: async (networkId, instanceId) => {
        try {
          // the network is read in the transaction: one removed meanwhile gets no lease
          return await this.store.transaction(async () => {
            const n = await this.store.networks.get(networkId);
            return n ? (await this.leaseOne(n, instanceId, 0)).address : undefined;
          });
        } catch {
          return undefined; // none free: the warm container gets its address when claimed
        }
      },
      // only a lease without an instance is a warm container's: a container's goes with its record
      // (checked in the transaction, so a container claiming the warm one meanwhile keeps its address)
      release: async (instanceId) => {
        await this.store.transaction(async () => {
          if (!(await this.isInstance(instanceId))) await this.store.networks.release(instanceId);
        });
      },
    };
  }

  /** Leases whose instance is gone (a crash between the two deletes) released; how many. */
  releaseOrphans(): Promise<number> {
    return this.store.transaction(async () => {
      let released = 0;
      for (const l of await this.store.networks.leases({})) {
        if (!(await this.isInstance(l.instanceId))) released += await this.store.networks.release(l.instanceId);
      }
      return released;
    });
  }

  /** Whether the store has a container or VM of this id (a warm container's is neither). */
  private async isInstance(id: string): Promise<boolean> {
    return (await this.store.containers.get(id)) !== undefined || (await this.store.vms.get(id)) !== undefined;
  }

  /** Leases held by an instance the store knows (not by a warm container waiting to be claimed), with its name. */
  async instanceLeases(networkId: string): Promise<(NetworkLeaseRecord & { instanceName: string })[]> {
    const held: (NetworkLeaseRecord & { instanceName: string })[] = [];
    for (const l of await this.store.networks.leases({ networkId })) {
      const instance = (await this.store.containers.get(l.instanceId)) ?? (await this.store.vms.get(l.instanceId));
      if (instance) held.push({ ...l, instanceName: instance.name });
    }
    return held;
  }

  /** Callers run it in a transaction: the free address it picks is still free when it writes the lease. */
  async leaseOne(n: NetworkRecord, instanceId: string, ifIndex: number, wanted?: string): Promise<NetworkLeaseRecord> {
    const c = parseCidr(n.subnet);
    const createdAt = new Date().toISOString();
    if (wanted) {
      if (!isUsableAddress(c, wanted) || wanted === n.gateway) throw new InvalidArgument(`${wanted} is not an assignable address of ${n.name} (${n.subnet})`);
      try {
        const l = { networkId: n.id, address: wanted, instanceId, ifIndex, createdAt };
        await this.store.networks.lease(l);
        return l;
      } catch (e) {
        if (hasCode(e, 'AlreadyExists')) throw new Conflict(`address ${wanted} is already in use on ${n.name}`);
        throw e;
      }
    }
    const first = c.network + 1;
    const usable = c.size - 2; // neither the network's address nor its broadcast
    if (usable < 1) throw new Conflict(`network ${n.name} (${n.subnet}) has no free address left`);
    const from = this.next.get(n.id) ?? first;
    const offset = from >= first && from < first + usable ? from - first : 0;
    /** The i-th usable address from the turn on, wrapping at the subnet's end. */
    const inTurn = (i: number) => intToIp(first + ((offset + i) % usable));
    const candidates: string[] = [];
    for (let i = 0; i < Math.min(LEASE_CANDIDATES, usable); i++) {
      const address = inTurn(i);
      if (address !== n.gateway) candidates.push(address);
    }
    const leased = new Set(await this.store.networks.leasedAmong(n.id, candidates));
    let address = candidates.find((a) => !leased.has(a));
    if (address === undefined) {
      // every candidate taken: the network's addresses once (its primary key's index alone), from the turn on
      const taken = new Set(await this.store.networks.leasedAddresses(n.id));
      taken.add(n.gateway);
      for (let i = 0; i < usable && address === undefined; i++) {
        const a = inTurn(i);
        if (!taken.has(a)) address = a;
      }
      if (address === undefined) throw new Conflict(`network ${n.name} (${n.subnet}) has no free address left`);
    }
    const l = { networkId: n.id, address, instanceId, ifIndex, createdAt };
    await this.store.networks.lease(l);
    // bounded: a removed network's turn is never asked again, and a forgotten one only starts over
    if (this.next.size >= MAX_TURNS_KEPT && !this.next.has(n.id)) this.next.clear();
    this.next.set(n.id, ipToInt(address) + 1);
    return l;
  }
}

/** A host address of the subnet (neither its network nor its broadcast address). */
export function isUsableAddress(c: ReturnType<typeof parseCidr>, ip: string): boolean {
  let n: number;
  try {
    n = ipToInt(ip);
  } catch {
    return false;
  }
  return n > c.network && n < c.network + c.size - 1;
}
