/**
 * Per-instance network counters, read from the host end of each endpoint (a container's veth,
 * a VM's tap) in /sys/class/net/<dev>/statistics. The host end sees the instance's traffic
 * mirrored: what the host end receives the instance sent. Counters are cumulative for the
 * device's life; a re-created endpoint (restart, migration, reconnect) has a new ifindex and
 * starts again from 0, which is why each endpoint is reported with its ifindex.
 */
import { readPseudoFile } from '../cgroups/cgroups.js';
import type { EndpointCounters, NetworkCounters } from '../drivers/instance-driver.js';

const SYS_NET = '/sys/class/net';

function readNum(dev: string, file: string): number | undefined {
  const text = readPseudoFile(`${SYS_NET}/${dev}/${file}`); // sysfs: read synchronously (cgroups.ts, readPseudoFile)
  if (text === undefined) return undefined;
  const n = Number(text.trim());
  if (!Number.isFinite(n)) throw new Error(`${SYS_NET}/${dev}/${file}: not a number`);
  return n;
}

/** One host-side device's counters from the instance's side; undefined when the device is gone (or not made yet). */
export async function readEndpointCounters(hostIf: string): Promise<EndpointCounters | undefined> {
  const ifindex = readNum(hostIf, 'ifindex');
  const hostRxBytes = readNum(hostIf, 'statistics/rx_bytes');
  const hostTxBytes = readNum(hostIf, 'statistics/tx_bytes');
  const hostRxPackets = readNum(hostIf, 'statistics/rx_packets');
  const hostTxPackets = readNum(hostIf, 'statistics/tx_packets');
  if (ifindex === undefined || hostRxBytes === undefined || hostTxBytes === undefined || hostRxPackets === undefined || hostTxPackets === undefined) return undefined;
  return { hostIf, ifindex, rxBytes: hostTxBytes, txBytes: hostRxBytes, rxPackets: hostTxPackets, txPackets: hostRxPackets };
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
