/**
 * The IPAM: addresses leased in the store, one per instance and network, never two for one
 * address (the store's key). Warm containers hold leases too, without an instance record:
 * they are not shown as a network's users and are released when they go.
 */
import { Conflict, InvalidArgument, hasCode } from '../../core/errors.js';
import type { AddressProvider } from '../../agent/agent.js';
import { intToIp, ipToInt, parseCidr } from '../../agent/network/network-driver.js';
import type { Store } from '../../store/store.js';
import type { NetworkLeaseRecord, NetworkRecord } from '../../store/records.js';

export class AddressLeases {
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
    // the addresses only: with 10,000 leases on a network, reading them as records (sorted) took
    // 37 ms a lease here, inside the write transaction every other write waits for
    const taken = new Set(await this.store.networks.leasedAddresses(n.id));
    taken.add(n.gateway);
    for (let a = c.network + 1; a < c.network + c.size - 1; a++) {
      const address = intToIp(a);
      if (taken.has(address)) continue;
      const l = { networkId: n.id, address, instanceId, ifIndex, createdAt };
      await this.store.networks.lease(l);
      return l;
    }
    throw new Conflict(`network ${n.name} (${n.subnet}) has no free address left`);
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
