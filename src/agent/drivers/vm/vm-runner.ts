/**
 * A VM's QEMU from launch to exit: launched paused under its supervisor, vCPUs pinned, then
 * let run (launch); its exit noticed by polling, with the console log's size check alongside
 * (watch, unwatch, onExit); waited for (waitExit) or forced (hardKill). What it sees goes
 * into the VM's record (vm-record.ts).
 */
import { processAlive } from '../../../core/proc.js';
import { NimbusError } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { watchConsoleLog, type ConsoleLogLimits } from './console-log.js';
import { qemuArgv, type QemuConfig } from './qemu.js';
import { INPUT_FD, closeToOthers, launchQemu, removeRunFiles, sleep, withQmp } from './qemu-process.js';
import { confinementOf, launchJailOf, prepareJail, type QemuUsers } from './qemu-user.js';
import { pinVcpus } from './vcpu-pinning.js';
import type { VmRecord, VmRecords } from './vm-record.js';

// the driver's name: its log lines read as they did before the runner had a file of its own
const log = logger('vm-driver');

export interface VmRunnerOptions {
  /** The QEMU binary. */
  readonly qemu: string;
  readonly consoleLimits: ConsoleLogLimits;
  /** The driver's options, read at each watch: exitPollMs, consoleCheckMs (VmDriverOptions). */
  readonly settings: { readonly exitPollMs?: number; readonly consoleCheckMs?: number };
  /** The users VMs' QEMUs drop to (qemu-user.ts). */
  readonly users: QemuUsers;
}

export class VmRunner {
  private readonly exitListeners: Array<(id: string) => void> = [];
  private readonly watchers = new Map<string, NodeJS.Timeout>();
  /** VMs whose watcher's look is in flight. */
  private readonly looking = new Set<string>();
  /** Per running VM: stops its console log's size check. */
  private readonly consoleWatchers = new Map<string, () => void>();

  constructor(
    private readonly records: Pick<VmRecords, 'paths' | 'load' | 'save' | 'outsideOperations'>,
    private readonly o: VmRunnerOptions,
  ) {}

  onExit(listener: (id: string) => void): void {
    this.exitListeners.push(listener);
  }

  /** Launch QEMU paused, pin vCPUs, then let them run (after loading `restoreFrom`, a saved state, when restoring). */
  async launch(r: VmRecord, restoreFrom?: string): Promise<void> {
    const p = this.records.paths(r.id);
    const incoming = restoreFrom !== undefined;
    const confined = confinementOf(this.o.users, r, p.dir, this.o.qemu);
    const cfg: QemuConfig = { ...r.config, startPaused: true, ...confined, ...(incoming ? { incoming: `fd:${INPUT_FD}` } : {}) };
    const argv = qemuArgv(cfg);
    const t0 = Date.now();
    await closeToOthers(p.dir);
    await prepareJail(confined);
    const launched = await launchQemu(this.o.qemu, argv, p, launchJailOf(r.config, confined), incoming ? { input: restoreFrom } : {});
    try {
      await withQmp(p, async (c) => {
        if (incoming) {
          // the VM stays paused (-S) after the incoming stream is loaded
          for (;;) {
            const m = await c.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
            if (m.status === 'completed') break;
            if (m.status === 'failed' || m.status === 'cancelled') throw new NimbusError('DataLoss', `restore of ${r.id} failed: ${m['error-desc'] ?? m.status}`);
            const st = await c.execute<{ status: string }>('query-status');
            if (st.status !== 'inmigrate' && st.status !== 'prelaunch' && m.status === undefined) break;
            await sleep(20);
          }
        }
        r.pinning = r.pin?.length ? await pinVcpus(c, r.pin) : [];
        await c.execute('cont');
      }, 30_000);
    } catch (e) {
      if (processAlive(launched.qemuPid, p.qmpSocket)) process.kill(launched.qemuPid, 'SIGKILL');
      for (let i = 0; i < 200 && processAlive(launched.supervisorPid); i++) await sleep(10);
      await removeRunFiles(p);
      throw e;
    }
    r.lifecycle = 'running';
    r.qemuPid = launched.qemuPid;
    r.supervisorPid = launched.supervisorPid;
    r.startedAt = new Date().toISOString();
    delete r.finishedAt;
    delete r.exitCode;
    delete r.killedBy;
    await this.records.save(r);
    this.watch(r.id);
    log.debug('vm started', { id: r.id, ms: Date.now() - t0, accel: r.config.accel, incoming: !!incoming });
  }

  /** Notice the VM's exit (its record polled, so exits of VMs another driver started too) and cap its console log while it runs. */
  watch(id: string): void {
    if (this.watchers.has(id)) return;
    // an observer, not part of the operation that launched the VM (start, restore): its writes
    // take the VM's lock even while that operation still holds it
    const t = this.records.outsideOperations(() => setInterval(() => {
      // one look at a time: a look that finds QEMU gone waits for its exit status (up to 5 s) and
      // then for the VM's lock (an operation's length), and ticks do not pile up behind it
      if (this.looking.has(id)) return;
      this.looking.add(id);
      void this.records.load(id)
        .then((r) => {
          if (r.lifecycle === 'running' || r.lifecycle === 'paused') return;
          this.unwatch(id);
          if (r.lifecycle === 'stopped') for (const l of this.exitListeners) l(id);
        })
        .catch(() => this.unwatch(id))
        .finally(() => this.looking.delete(id));
    }, this.o.settings.exitPollMs ?? 100));
    t.unref();
    this.watchers.set(id, t);
    const consoleLog = this.records.paths(id).consoleLog;
    this.consoleWatchers.set(id, watchConsoleLog(consoleLog, this.o.consoleLimits, this.o.settings.consoleCheckMs ?? 250, (e) => log.warn('console log rotation failed', { id, error: e })));
  }

  /** Stop both: the VM ended, or goes without its exit being a stop (saved, migrated away, deleted). */
  unwatch(id: string): void {
    const t = this.watchers.get(id);
    if (t) clearInterval(t);
    this.watchers.delete(id);
    this.consoleWatchers.get(id)?.();
    this.consoleWatchers.delete(id);
  }

  /** The record once QEMU has gone, or as it is when `ms` have passed. */
  async waitExit(id: string, ms: number): Promise<VmRecord> {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await this.records.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') return r;
      if (Date.now() > deadline) return r;
      await sleep(25);
    }
  }

  /** SIGKILL to QEMU, recorded first so that its exit code says so (137). */
  async hardKill(r: VmRecord): Promise<VmRecord> {
    r.killedBy = 'SIGKILL';
    await this.records.save(r);
    if (processAlive(r.qemuPid, this.records.paths(r.id).qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
    return this.waitExit(r.id, 10_000);
  }
}
