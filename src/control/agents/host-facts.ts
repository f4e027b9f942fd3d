/**
 * A host's facts: what it says of itself (capacity, runtimes, architecture...), kept on its row
 * so that placement answers from memory, and when they are worth writing again.
 */
import type { AgentInfo } from '../../agent/agent.js';
import type { HostFacts } from '../../store/records.js';

/** Unchanged facts are stored again at most this often (their time tells other replicas the host answers). */
const FACTS_STORE_EVERY_MS = 30_000;

/** This host's CPU architecture in OCI spelling. */
export function hostArchitecture(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}

/** The facts worth keeping from what a host says of itself. */
export function factsOf(info: AgentInfo, seenAt: number): HostFacts {
  // answers are not schema-checked on the wire: a missing field is "not reported", never a crash
  const count = (n: unknown) => (typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : 0);
  return {
    cpus: count(info.cpus), memoryBytes: count(info.memoryBytes), diskBytes: count(info.diskBytes),
    ...(typeof info.vm?.accelerator === 'string' ? { accelerator: info.vm.accelerator } : {}),
    runtimes: Array.isArray(info.runtimes) ? info.runtimes.filter((r) => r?.usable).map((r) => String(r.name)) : [],
    ...(info.liveMove && typeof info.liveMove.usable === 'boolean'
      ? { liveMove: { usable: info.liveMove.usable, ...(info.liveMove.reason ? { reason: String(info.liveMove.reason) } : {}), ...(info.liveMove.version ? { version: String(info.liveMove.version) } : {}) } }
      : {}),
    // an agent from before it reported its architecture: assume this host's (a mixed cloud upgrades its agents)
    architecture: info.architecture ?? hostArchitecture(),
    hostname: String(info.hostname ?? ''), kernel: String(info.kernel ?? ''), seenAt,
  };
}

function sameFacts(a: HostFacts | null | undefined, b: HostFacts): boolean {
  return !!a && JSON.stringify({ ...a, seenAt: 0 }) === JSON.stringify({ ...b, seenAt: 0 });
}

/** Whether facts just heard should be written: they changed, or the stored ones are old enough to make the host look silent. */
export function factsWorthStoring(stored: HostFacts | null | undefined, heard: HostFacts): boolean {
  return !(stored && sameFacts(stored, heard) && heard.seenAt - stored.seenAt < FACTS_STORE_EVERY_MS);
}
