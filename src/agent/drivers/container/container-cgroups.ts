/**
 * A container's cgroup as the driver reads it: its directories (the host's layout, detected
 * once), the pids in it and its usage. conmon and the runtime make and fill it; delete removes it.
 */
import path from 'node:path';
import { cgroupPaths, detectCgroupLayout, readCgroupStats, readPseudoFile, type CgroupLayout, type CgroupPaths } from '../../cgroups/cgroups.js';
import type { InstanceStats } from '../instance-driver.js';
import type { ContainerMeta, ContainerStore } from './container-store.js';

export class ContainerCgroups {
  private layoutP: Promise<CgroupLayout> | undefined;

  constructor(private readonly store: Pick<ContainerStore, 'meta'>) {}

  private layout(): Promise<CgroupLayout> {
    this.layoutP ??= detectCgroupLayout();
    return this.layoutP;
  }

  /** The container's cgroup directories. */
  async of(meta: Pick<ContainerMeta, 'cgroupsPath'>): Promise<CgroupPaths> {
    return cgroupPaths(await this.layout(), meta.cgroupsPath);
  }

  /** The host pids of the container's processes (its cgroup's), for `top`. */
  async processIds(id: string): Promise<number[]> {
    const cg = await this.of(await this.store.meta(id));
    for (const dir of [cg.v1['pids'], cg.v1['memory'], cg.unified].filter((d): d is string => d !== undefined)) {
      const procs = readPseudoFile(path.join(dir, 'cgroup.procs'));
      if (procs !== undefined) return procs.split('\n').filter(Boolean).map(Number);
      // not in this hierarchy: the next
    }
    return [];
  }

  async stats(id: string): Promise<InstanceStats> {
    const meta = await this.store.meta(id);
    const s = await readCgroupStats(await this.of(meta));
    const out: InstanceStats = { cpuUsageNs: s.cpuUsageNs, memoryBytes: s.memoryBytes, pids: s.pids, time: new Date().toISOString() };
    if (s.memoryLimitBytes !== undefined) out.memoryLimitBytes = s.memoryLimitBytes;
    if (s.pidsLimit !== undefined) out.pidsLimit = s.pidsLimit;
    return out;
  }
}
