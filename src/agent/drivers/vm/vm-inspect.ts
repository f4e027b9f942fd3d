/**
 * What a VM looks like now: inspect (its record, paths, argv, and QEMU's own run state while it
 * runs) and stats (QEMU's CPU time and resident memory from /proc).
 */
import { jailedCommand } from './jailer.js';
import { readFile } from 'node:fs/promises';
import { Conflict } from '../../../core/errors.js';
import type { InstanceStats } from '../instance-driver.js';
import { qemuArgv, type Accelerator } from './qemu.js';
import { withQmp } from './qemu-process.js';
import type { VcpuPinning } from './vcpu-pinning.js';
import { vcpuCount, type VmLifecycle, type VmRecord, type VmRecords } from './vm-record.js';
import { launchJailOf, processUser, type QemuConfinement } from './qemu-user.js';

export interface VmInspect {
  id: string;
  lifecycle: VmLifecycle;
  accel: Accelerator;
  /** vCPUs it has now (booted + hot-plugged). */
  cpus: number;
  /** What it may grow to while running (absent: no hot-plug). */
  maxCpus?: number;
  memoryMiB: number;
  /** Balloon target while running, when resize set one (the guest then has this much). */
  balloonMiB?: number;
  qemuPid?: number;
  /** QEMU's run state (QMP query-status: running, paused, postmigrate, inmigrate, ...) while it runs, when QMP answered. */
  runState?: string;
  qmpSocket: string;
  consoleSocket: string;
  consoleLog: string;
  rootDisk?: string;
  pinning: VcpuPinning[];
  savedState?: string;
  /** Once it ended: QEMU's own word on why (guest-shutdown, guest-reset, host-signal, ...; vm-record.ts). */
  endCause?: string;
  argv: string[];
  /** The user its running QEMU runs as (qemu-user.ts; 0 for root). */
  qemuUid?: number;
}

const CLK_TCK = 100; // Linux USER_HZ on x86-64

export class VmInspector {
  constructor(
    private readonly records: Pick<VmRecords, 'paths' | 'load'>,
    /** The QEMU binary, first in the argv inspect shows. */
    private readonly qemu: string,
    /** How its QEMU is confined at a launch (qemu-user.ts), in the argv too. */
    private readonly confinementOf: (r: VmRecord) => QemuConfinement,
  ) {}

  async inspect(id: string): Promise<VmInspect> {
    const r = await this.records.load(id);
    const p = this.records.paths(id);
    const out: VmInspect = {
      id,
      lifecycle: r.lifecycle,
      accel: r.config.accel,
      cpus: vcpuCount(r),
      ...(r.config.maxCpus !== undefined ? { maxCpus: r.config.maxCpus } : {}),
      memoryMiB: r.config.memoryMiB,
      qmpSocket: p.qmpSocket,
      consoleSocket: p.consoleSocket,
      consoleLog: p.consoleLog,
      pinning: r.lifecycle === 'running' || r.lifecycle === 'paused' ? (r.pinning ?? []) : [],
      argv: launchArgv(this.qemu, r, this.confinementOf(r)),
    };
    if (r.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
      out.qemuPid = r.qemuPid;
      const user = processUser(r.qemuPid);
      if (user) out.qemuUid = user.uid;
    }
    if (r.config.rootDisk) out.rootDisk = r.config.rootDisk.path;
    if (r.lifecycle === 'saved') out.savedState = p.savedState;
    if (r.lifecycle === 'stopped' && r.endCause) out.endCause = r.endCause;
    if (r.balloonMiB !== undefined && (r.lifecycle === 'running' || r.lifecycle === 'paused')) out.balloonMiB = r.balloonMiB;
    if (out.qemuPid !== undefined) {
      // QEMU's own word: "postmigrate" is a source whose guest went elsewhere (reconcile uses it)
      const st = await withQmp(p, (c) => c.execute<{ status: string }>('query-status'), 2000).catch(() => undefined);
      if (st) out.runState = st.status;
    }
    return out;
  }

  async stats(id: string): Promise<InstanceStats> {
    const r = await this.records.load(id);
    if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is not running`, { id });
    const statLine = await readFile(`/proc/${r.qemuPid}/stat`, 'utf8');
    const f = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(f[11]) + Number(f[12]); // utime + stime (fields 14 and 15)
    const status = await readFile(`/proc/${r.qemuPid}/status`, 'utf8');
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    return {
      cpuUsageNs: Math.round((ticks / CLK_TCK) * 1e9),
      memoryBytes: rssKiB * 1024,
      memoryLimitBytes: r.config.memoryMiB * (1 << 20),
      pids: 1,
      time: new Date().toISOString(),
    };
  }
}

/** The command line a launch runs: the jailer's, then QEMU's (jailer.ts). */
function launchArgv(qemu: string, r: VmRecord, confined: QemuConfinement): string[] {
  const { binary, argv } = jailedCommand(qemu, qemuArgv({ ...r.config, startPaused: true, ...confined }), launchJailOf(r.config, confined));
  return [binary, ...argv];
}
