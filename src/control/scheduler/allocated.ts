/** What the scheduler's claims hold on a host, as `nimbus host ls` shows it (HostCounts.allocatedOn in the agent directory). */
import type { Store } from '../../store/store.js';

export interface HostAllocated {
  vcpus: number;
  memoryBytes: number;
  diskBytes: number;
  instances: number;
}

/** undefined when nothing was ever claimed on the host. */
export async function allocatedOn(store: Store, host: string): Promise<HostAllocated | undefined> {
  const [u] = await store.placement.usage(host);
  return u && { vcpus: u.millicpus / 1000, memoryBytes: u.memoryBytes, diskBytes: u.diskBytes, instances: u.instances };
}
