/**
 * Per-instance network counters, read from the host end of each endpoint (a container's veth,
 * a VM's tap) in /sys/class/net/<dev>/statistics. The host end sees the instance's traffic
 * mirrored: what the host end receives the instance sent. Counters are cumulative for the
 * device's life; a re-created endpoint (restart, migration, reconnect) has a new ifindex and
 * starts again from 0, which is why each endpoint is reported with its ifindex.
 */
import { readFile } from 'node:fs/promises';
import type { EndpointCounters, NetworkCounters } from '../drivers/instance-driver.js';

const SYS_NET = '/sys/class/net';

async function readNum(dev: string, file: string): Promise<number> {
  const n = Number((await readFile(`${SYS_NET}/${dev}/${file}`, 'utf8')).trim());
  if (!Number.isFinite(n)) throw new Error(`${SYS_NET}/${dev}/${file}: not a number`);
  return n;
}

/** One host-side device's counters from the instance's side; undefined when the device is gone (or not made yet). */
export async function readEndpointCounters(hostIf: string): Promise<EndpointCounters | undefined> {
  try {
    const [ifindex, hostRxBytes, hostTxBytes, hostRxPackets, hostTxPackets] = await Promise.all([
      readNum(hostIf, 'ifindex'),
      readNum(hostIf, 'statistics/rx_bytes'),
      readNum(hostIf, 'statistics/tx_bytes'),
      readNum(hostIf, 'statistics/rx_packets'),
      readNum(hostIf, 'statistics/tx_packets'),
    ]);
    return { hostIf, ifindex, rxBytes: hostTxBytes, txBytes: hostRxBytes, rxPackets: hostTxPackets, txPackets: hostRxPackets };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/**
 * The instance's counters summed over its endpoints' host ends; undefined when it has no
 * endpoint (nothing to measure: host network, another's namespace). Devices that are gone are
 * left out (an endpoint being re-created counts again once it exists).
 */
export async function readInstanceNetwork(hostIfs: readonly string[]): Promise<NetworkCounters | undefined> {
  if (hostIfs.length === 0) return undefined;
  const endpoints = (await Promise.all(hostIfs.map(readEndpointCounters))).filter((e): e is EndpointCounters => e !== undefined);
  const sum = (k: 'rxBytes' | 'txBytes' | 'rxPackets' | 'txPackets') => endpoints.reduce((a, e) => a + e[k], 0);
  return { rxBytes: sum('rxBytes'), txBytes: sum('txBytes'), rxPackets: sum('rxPackets'), txPackets: sum('txPackets'), endpoints };
}
