/**
 * vCPU threads bound to host CPUs (taskset), by the VM's pin list: at start before the guest
 * runs, after a vCPU hot-plug, and at the destination of a live migration.
 */
import { runOk } from '../../../core/exec.js';

export interface VcpuPinning {
  vcpu: number;
  threadId: number;
  hostCpus: number[];
}

/** Bind each vCPU thread (ids from QMP query-cpus-fast) to its host CPU. */
export async function pinVcpus(c: { execute<T>(cmd: string): Promise<T> }, pin: number[]): Promise<VcpuPinning[]> {
  const cpus = await c.execute<Array<{ 'cpu-index': number; 'thread-id': number }>>('query-cpus-fast');
  const out: VcpuPinning[] = [];
  for (const cpu of cpus) {
    const host = pin[cpu['cpu-index'] % pin.length]!;
    await runOk('taskset', ['-pc', String(host), String(cpu['thread-id'])]);
    out.push({ vcpu: cpu['cpu-index'], threadId: cpu['thread-id'], hostCpus: [host] });
  }
  return out;
}
