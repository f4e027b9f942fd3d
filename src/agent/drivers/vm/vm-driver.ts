/**
 * The VM InstanceDriver: QEMU driven over QMP, one directory per instance
 * under stateDir holding its record (vm.json), root-disk overlay, sockets,
 * console log and the supervisor's exit status. Everything needed to find a
 * VM again lives there, so a new driver instance (a restarted daemon) picks
 * running VMs up where the old one left them.
 *
 * Mapping of the instance contract onto a VM:
 *   create   → overlay disk + record (no process yet)
 *   start    → QEMU with -S, vCPUs pinned, then QMP cont
 *   stop     → ACPI power button (system_powerdown), SIGKILL after the grace period
 *   kill     → the signal to QEMU (SIGKILL: hard power-off; SIGTERM: QEMU quits cleanly)
 *   pause    → QMP stop / cont
 *   logs     → the serial console, written by QEMU to console.log (one stream: stdout)
 *   exit code→ 0 on power-off, the guest's isa-debug-exit code, 128+n when killed
 *   save     → QMP migrate to a file, then quit; restore → QEMU -incoming from it
 *
 * This file is the facade and the lifecycle operations (create, start, stop, kill, pause,
 * delete, reconcile). The parts, each given only what it needs of the others:
 *   vm-record.ts       the record (vm.json), its store and the lifecycle state machine
 *   vm-runner.ts       QEMU launched, its exit watched, waited for or forced
 *   vm-console.ts      the serial console and the logs
 *   vm-inspect.ts      inspect and stats
 *   vm-hotplug.ts      resize (vCPUs, balloon) and block volume attach/detach
 *   vm-save-restore.ts save/restore and templates
 *   vm-migration.ts    live migration, both sides
 */
import { signalNumber } from '../../../core/signals.js';
import { InFlight } from '../../../core/in-flight.js';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { AlreadyExists, Conflict, InvalidArgument } from '../../../core/errors.js';
import { addHostRoots } from '../../../core/redaction.js';
import { runOk } from '../../../core/exec.js';
import { logger } from '../../../core/log.js';
import type { ExecRequest, ExecSession, InstanceDriver, InstanceSpec, InstanceStats, LogRecord, RuntimeState } from '../instance-driver.js';
import { qemuArgv, type Accelerator, type BlockVolumeConfig, type QemuConfig } from './qemu.js';
import { withVolume } from './block-volumes.js';
import { processAlive } from '../../../core/proc.js';
import { sleep, withQmp } from './qemu-process.js';
import type { IncomingMigrationTarget, MigrateOutOptions, OutgoingMigration } from '../../agent.js';
import type { MigrationTls } from './migration-tls.js';
import { migrateLive, type MigrationReport } from '../../migration.js';
import { checkConsoleLimits, DEFAULT_CONSOLE_LIMITS, forgetConsoleLog, type ConsoleLogLimits } from './console-log.js';
import { assertTransition, foldHotplug, toState, VmRecordStore, type VmRecord } from './vm-record.js';
import { VmRunner } from './vm-runner.js';
import { VmConsole } from './vm-console.js';
import { VmInspector, type VmInspect } from './vm-inspect.js';
import { VmHotplug } from './vm-hotplug.js';
import { VmSaveRestore } from './vm-save-restore.js';
import { VmMigration, type MigrationSpec } from './vm-migration.js';
import { QemuUsers, confinementOf, processUser } from './qemu-user.js';

export type { MigrationReport } from '../../migration.js';
// names importers have always taken from here
export { assertTransition, type VmLifecycle } from './vm-record.js';
export { pinVcpus, type VcpuPinning } from './vcpu-pinning.js';
export type { MigrationSpec } from './vm-migration.js';
export type { VmInspect } from './vm-inspect.js';

const log = logger('vm-driver');

export interface VmDriverOptions {
  /** One directory per instance lives here. */
  stateDir: string;
  /** Accelerator for new launches (see accel.ts: chooseAccelerator). */
  accel: Accelerator;
  /** Default qemu-system-x86_64. */
  qemuBinary?: string;
  /** Guest memory when the spec sets none. Default 256 MiB. */
  defaultMemoryMiB?: number;
  /** How often exits are noticed without a QMP connection. Default 100 ms. */
  exitPollMs?: number;
  /** The serial console log's cap (console-log.ts). Default 1 MiB × 3 files. */
  consoleLog?: Partial<ConsoleLogLimits>;
  /** How often a running VM's console log size is checked. Default 250 ms. */
  consoleCheckMs?: number;
  /**
   * The agent's certificate (from the agent CA): live migrations to and from another agent that
   * has one go over TLS (migration-tls.ts). Without it they go plain.
   */
  tls?: MigrationTls;
}

const SIGKILL = 9;

export class VmDriver implements InstanceDriver {
  readonly type = 'vm' as const;
  private readonly qemu: string;
  private readonly consoleLimits: ConsoleLogLimits;
  /** Graceful stops in flight: a SIGKILL cuts them short instead of waiting behind them (kill). */
  private readonly stopping = new InFlight<RuntimeState>();
  private readonly records: VmRecordStore;
  private readonly runner: VmRunner;
  private readonly console: VmConsole;
  private readonly inspector: VmInspector;
  private readonly hotplug: VmHotplug;
  private readonly saved: VmSaveRestore;
  private readonly migration: VmMigration;
  /** The users its VMs' QEMUs drop to (qemu-user.ts). */
  private readonly users = new QemuUsers();

  constructor(private readonly o: VmDriverOptions) {
    this.qemu = o.qemuBinary ?? 'qemu-system-x86_64';
    // its VMs' sockets, disks and records are the host's: no member reads their paths (core/redaction.ts)
    addHostRoots([o.stateDir]);
    this.consoleLimits = checkConsoleLimits({ ...DEFAULT_CONSOLE_LIMITS, ...o.consoleLog });
    this.records = new VmRecordStore(o.stateDir);
    this.runner = new VmRunner(this.records, { qemu: this.qemu, consoleLimits: this.consoleLimits, settings: o, users: this.users });
    this.console = new VmConsole(this.records, this.consoleLimits);
    this.inspector = new VmInspector(this.records, this.qemu, (r) => confinementOf(this.users, r, this.records.paths(r.id).dir, this.qemu, 'show'));
    this.hotplug = new VmHotplug(this.records);
    this.saved = new VmSaveRestore(this.records, this.runner, this.users);
    this.migration = new VmMigration(this.records, this.runner, { qemu: this.qemu, consoleLimits: this.consoleLimits, settings: o, users: this.users });
    // A new driver over existing state: notice exits of VMs the old one started.
    void this.list()
      .then(async (ids) => {
        for (const id of ids) {
          const r = await this.records.load(id).catch(() => undefined);
          if (r && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
            this.runner.watch(id);
            // a QEMU it finds running keeps its user: no new launch of another VM takes it
            const user = processUser(r.qemuPid);
            if (user) this.users.adopt(id, user.uid);
          }
        }
      })
      .catch(() => undefined);
  }

  /** Under the VM's lock: two creates of one id must not both pass the check for an existing record. */
  create(spec: InstanceSpec): Promise<RuntimeState> {
    return this.records.locked(spec.id, () => this.createNow(spec));
  }

  private async createNow(spec: InstanceSpec): Promise<RuntimeState> {
    const vm = spec.vm ?? {};
    const p = this.records.paths(spec.id);
    if (existsSync(p.record)) throw new AlreadyExists(`VM ${spec.id} exists`, { id: spec.id });
    const memoryMiB = spec.resources.memoryBytes ? Math.ceil(spec.resources.memoryBytes / (1 << 20)) : (this.o.defaultMemoryMiB ?? 256);
    const cpus = Math.max(1, Math.ceil(spec.resources.cpus ?? 1));
    if (vm.pin?.some((c) => !Number.isInteger(c) || c < 0)) throw new InvalidArgument(`bad pin list ${JSON.stringify(vm.pin)}`);
    const config: VmRecord['config'] = {
      name: spec.name,
      accel: vm.accel ?? this.o.accel,
      cpus,
      memoryMiB,
      nics: vm.nics ?? [],
      debugExit: vm.debugExit ?? false,
      paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile },
    };
    if (vm.kernel) config.kernel = vm.kernel;
    if (vm.initrd) config.initrd = vm.initrd;
    if (vm.append) config.append = vm.append;
    if (vm.shares?.length) config.shares = vm.shares;
    if (vm.balloon ?? !vm.shares?.length) config.balloon = true;
    if (vm.maxCpus !== undefined && vm.maxCpus !== cpus) config.maxCpus = vm.maxCpus;
    if (vm.disk) config.rootDisk = { path: p.overlay, format: 'qcow2' };
    if (vm.blockVolumes?.length) config.blockVolumes = vm.blockVolumes.reduce<BlockVolumeConfig[]>((l, b) => withVolume(l, b), []);
    qemuArgv({ ...config, startPaused: true }); // validate now, not at start
    await mkdir(p.dir, { recursive: true, mode: 0o700 });
    try {
      if (vm.disk) {
        const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', vm.disk])) as { format?: string };
        if (info.format !== 'raw' && info.format !== 'qcow2') throw new InvalidArgument(`disk ${vm.disk} is ${info.format}; raw or qcow2 expected`);
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', info.format, '-b', path.resolve(vm.disk), p.overlay]);
      }
      await writeFile(p.consoleLog, '');
      const r: VmRecord = { id: spec.id, name: spec.name, createdAt: new Date().toISOString(), lifecycle: 'created', config };
      if (vm.pin?.length) r.pin = vm.pin;
      await this.records.save(r);
      return toState(r);
    } catch (e) {
      await rm(p.dir, { recursive: true, force: true });
      throw e;
    }
  }

  start(id: string): Promise<RuntimeState> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      assertTransition(id, r.lifecycle, 'running');
      if (r.lifecycle === 'saved') throw new Conflict(`VM ${id} is saved; restore it instead`, { id });
      delete r.balloonMiB; // a fresh boot has all its memory
      foldHotplug(r); // and boots with every vCPU it had
      await this.runner.launch(r);
      return toState(r);
    });
  }

  async kill(id: string, signal: string): Promise<void> {
    const sig = signalNumber(signal);
    if (sig === undefined) throw new InvalidArgument(`unknown signal "${signal}"`, { id });
    // SIGKILL cuts a graceful stop short: it does not queue behind the stop's wait (which holds the
    // VM's lock up to its timeout); the stop sees QEMU end and records it
    const stopping = this.stopping.get(id);
    if (sig === SIGKILL && stopping) {
      const r = await this.records.load(id);
      if (processAlive(r.qemuPid, this.records.paths(id).qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
      await stopping.catch(() => undefined);
      return;
    }
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is not running`, { id });
      if (sig === SIGKILL) {
        await this.runner.hardKill(r);
        return;
      }
      process.kill(r.qemuPid!, sig);
    });
  }

  stop(id: string, timeoutSec: number): Promise<RuntimeState> {
    const done = this.records.locked(id, async () => {
      let r = await this.records.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') return toState(r);
      const p = this.records.paths(id);
      try {
        await withQmp(p, async (c) => {
          if (r.lifecycle === 'paused') await c.execute('cont'); // a paused guest cannot see the button
          await c.execute('system_powerdown');
        });
        if (r.lifecycle === 'paused') {
          r.lifecycle = 'running';
          await this.records.save(r);
        }
        r = await this.runner.waitExit(id, timeoutSec * 1000);
      } catch (e) {
        log.warn('graceful stop failed; killing', { id, error: e });
      }
      if (r.lifecycle === 'running' || r.lifecycle === 'paused') r = await this.runner.hardKill(r);
      return toState(r);
    });
    return this.stopping.track(id, done);
  }

  pause(id: string): Promise<void> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      assertTransition(id, r.lifecycle, 'paused');
      await withQmp(this.records.paths(id), (c) => c.execute('stop'));
      r.lifecycle = 'paused';
      await this.records.save(r);
    });
  }

  unpause(id: string): Promise<void> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      if (r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is ${r.lifecycle}, not paused`, { id });
      await withQmp(this.records.paths(id), (c) => c.execute('cont'));
      r.lifecycle = 'running';
      await this.records.save(r);
    });
  }

  async state(id: string): Promise<RuntimeState> {
    return toState(await this.records.load(id));
  }

  async exec(id: string, _req: ExecRequest): Promise<ExecSession> {
    await this.records.load(id);
    throw new InvalidArgument(`exec is not available for VM ${id}: there is no guest agent yet; use the serial console`, { id });
  }

  logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return this.console.logs(id, opts);
  }

  stats(id: string): Promise<InstanceStats> {
    return this.inspector.stats(id);
  }

  delete(id: string): Promise<void> {
    return this.records.locked(id, async () => {
      const p = this.records.paths(id);
      let r: VmRecord | undefined;
      try {
        r = await this.records.load(id);
      } catch {
        /* no record: remove whatever is there */
      }
      if (r && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
        r = await this.runner.hardKill(r);
        if (r.lifecycle === 'running' || r.lifecycle === 'paused') throw new Conflict(`VM ${id} did not die`, { id });
      }
      // a template's saved state and disk back the VMs made from it
      const children = [];
      for (const other of await this.list()) {
        if (other === id) continue;
        const o = await readFile(this.records.paths(other).record, 'utf8').then((t) => JSON.parse(t) as VmRecord).catch(() => undefined);
        if (o?.template === id) children.push(other);
      }
      if (children.length) throw new Conflict(`VM ${id} is the template of ${children.join(', ')}`, { id, children });
      this.runner.unwatch(id);
      // the supervisor's last write (exit-status) and an exit watcher's record save may still land
      // while the directory goes (ENOTEMPTY, seen once in CI under load): let them finish, then retry
      for (let i = 0; i < 200 && processAlive(r?.supervisorPid); i++) await sleep(10);
      for (let attempt = 0; ; attempt++) {
        try {
          await rm(p.dir, { recursive: true, force: true });
          break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY' || attempt >= 20) throw e;
          await sleep(25);
        }
      }
      forgetConsoleLog(p.consoleLog);
      this.users.release(id);
    });
  }

  list(): Promise<string[]> {
    return this.records.list();
  }

  onExit(listener: (id: string) => void): void {
    this.runner.onExit(listener);
  }

  /**
   * On daemon start: QEMU processes under stateDir that no record owns (a crash
   * between launch and recording it) are killed, directories without a record
   * are removed, and every recorded VM is observed (dead ones become stopped,
   * their sockets go) and watched.
   */
  async reconcile(): Promise<{ killed: number[]; removed: string[] }> {
    const killed: number[] = [];
    const removed: string[] = [];
    const owned = new Set<number>();
    for (const id of await this.list()) {
      const r = await this.records.load(id).catch(() => undefined);
      if (r?.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
        owned.add(r.qemuPid);
        this.runner.watch(id);
      }
    }
    const root = `${path.resolve(this.o.stateDir)}/`;
    for (const pid of await qemuPidsMentioning(root)) {
      if (owned.has(pid)) continue;
      process.kill(pid, 'SIGKILL');
      killed.push(pid);
    }
    for (const pid of killed) for (let i = 0; i < 200 && processAlive(pid); i++) await sleep(10);
    let dirs: string[] = [];
    try {
      dirs = await readdir(this.o.stateDir);
    } catch {
      /* no state yet */
    }
    for (const d of dirs) {
      // 'created' with a QEMU is only ever the destination half of a migration (prepareIncoming):
      // its agent died before finishIncoming, so the control plane kept the guest at the source
      if (existsSync(path.join(this.o.stateDir, d, 'vm.json'))) {
        const r = await this.records.load(d).catch(() => undefined);
        if (!r || r.lifecycle !== 'created' || !r.qemuPid) continue;
        // its QEMU was killed above: the supervisor's last write (exit-status) may still land
        for (let i = 0; i < 200 && processAlive(r.supervisorPid); i++) await sleep(10);
      }
      // ENOTEMPTY from such a late write must not fail the whole reconcile (the agent would count as down)
      await rm(path.join(this.o.stateDir, d), { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
      removed.push(d);
    }
    // QEMU users reserved by VMs no process runs as any more (a crashed agent's) are free again
    const freed = this.users.sweep();
    if (killed.length || removed.length || freed) log.info('vm reconcile', { killed, removed, qemuUsersFreed: freed });
    return { killed, removed };
  }

  // ---- VM-only operations ----

  /** A connection to the serial console (vm-console.ts). One client at a time. */
  openConsole(id: string): Promise<net.Socket> {
    return this.console.open(id);
  }

  inspect(id: string): Promise<VmInspect> {
    return this.inspector.inspect(id);
  }

  // resize and hot-plug (vm-hotplug.ts)

  resize(id: string, want: { cpus?: number; memoryMiB?: number }): Promise<{ cpus: number; memoryMiB: number; balloonMiB?: number }> {
    return this.hotplug.resize(id, want);
  }

  attachVolume(id: string, b: BlockVolumeConfig): Promise<{ live: boolean }> {
    return this.hotplug.attachVolume(id, b);
  }

  detachVolume(id: string, volumeId: string, timeoutMs?: number): Promise<{ live: boolean }> {
    return this.hotplug.detachVolume(id, volumeId, timeoutMs);
  }

  balloonActualMiB(id: string): Promise<number | undefined> {
    return this.hotplug.balloonActualMiB(id);
  }

  // save/restore and templates (vm-save-restore.ts)

  saveState(id: string): Promise<{ file: string; bytes: number; ms: number }> {
    return this.saved.saveState(id);
  }

  restoreState(id: string): Promise<{ ms: number }> {
    return this.saved.restoreState(id);
  }

  createFromTemplate(templateId: string, id: string, name = id, over: { shares?: QemuConfig['shares'] } = {}): Promise<RuntimeState> {
    return this.saved.createFromTemplate(templateId, id, name, over);
  }

  // live migration (vm-migration.ts: the five steps, each on one side)

  /** Live-migrate to another driver in this process: the five steps in a row. */
  async migrateTo(id: string, target: VmDriver, opts: { host?: string; maxDowntimeMs?: number; maxBandwidthBytes?: number } = {}): Promise<MigrationReport> {
    if (target === this) throw new InvalidArgument('source and destination are the same driver');
    const { report } = await migrateLive(
      id,
      { spec: () => this.migrationSpec(id), send: (uri, o) => this.migrateOut(id, uri, o), end: (outcome) => this.endMigration(id, outcome) },
      { prepare: (spec) => target.prepareIncoming(spec, opts.host ?? '127.0.0.1'), finish: (h) => target.finishIncoming(id, h), abandon: () => target.abandonIncoming(id) },
      { ...(opts.maxDowntimeMs !== undefined ? { maxDowntimeMs: opts.maxDowntimeMs } : {}), ...(opts.maxBandwidthBytes !== undefined ? { maxBandwidthBytes: opts.maxBandwidthBytes } : {}) },
    );
    return report;
  }

  migrationSpec(id: string): Promise<MigrationSpec> {
    return this.migration.migrationSpec(id);
  }

  prepareIncoming(spec: MigrationSpec, host: string): Promise<IncomingMigrationTarget> {
    return this.migration.prepareIncoming(spec, host);
  }

  migrateOut(id: string, uri: string, opts: MigrateOutOptions): Promise<OutgoingMigration> {
    return this.migration.migrateOut(id, uri, opts);
  }

  finishIncoming(id: string, history: string): Promise<{ resumedAt: number }> {
    return this.migration.finishIncoming(id, history);
  }

  abandonIncoming(id: string): Promise<void> {
    return this.migration.abandonIncoming(id);
  }

  endMigration(id: string, outcome: 'moved' | 'resume'): Promise<void> {
    return this.migration.endMigration(id, outcome);
  }
}

/** Pids of QEMU processes whose command line mentions `dir`. */
export async function qemuPidsMentioning(dir: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = (await readFile(`/proc/${p}/cmdline`, 'utf8')).split('\0');
      if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(dir)) && processAlive(Number(p))) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}
