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
 */
import { signalNumber } from '../../../core/signals.js';
import { InFlight } from '../../../core/in-flight.js';
import { KeyedLock } from '../../../core/keyed-lock.js';
import { mkdir, readFile, readdir, rename, rm, writeFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { AlreadyExists, Conflict, InvalidArgument, NotFound, NimbusError } from '../../../core/errors.js';
import { runOk } from '../../../core/exec.js';
import { logger } from '../../../core/log.js';
import type { ExecRequest, ExecSession, InstanceDriver, InstanceSpec, InstanceStats, LogRecord, RuntimeState } from '../instance-driver.js';
import { blockVolumeNames, decodeExitStatus, qemuArgv, type Accelerator, type BlockVolumeConfig, type QemuConfig } from './qemu.js';
import { blockChangeMode, plugBlockVolume, unplugBlockVolume, withoutVolume, withVolume } from './block-volumes.js';
import { processAlive, procStat } from '../../../core/proc.js';
import { instancePaths, launchQemu, readExitStatus, readPid, removeRunFiles, sleep, withQmp, type InstancePaths } from './qemu-process.js';
import { QmpClient, type QmpEvent } from './qmp.js';
import type { IncomingMigrationTarget, MigrateOutOptions, OutgoingMigration, VmMigrationSpec } from '../../agent.js';
import { clearMirrors, endDiskExports, exportDisksForMigration, finishMirrors, ROOT_DISK, startMirrors, volumeDisk, type MovingDisk } from './disk-mirror.js';
import { addTlsCreds, clearTls, useTlsForMigration, type MigrationTls } from './migration-tls.js';
import { migrateLive, type MigrationReport } from '../../migration.js';
import { LineCursor } from '../log-files.js';
import { checkConsoleLimits, consoleBytes, consoleStart, ConsoleCursor, DEFAULT_CONSOLE_LIMITS, forgetConsoleLog, watchConsoleLog, type ConsoleLogLimits } from './console-log.js';

/** A console line longer than this is handed out in pieces (a guest may print anything). */
const CONSOLE_MAX_LINE = 64 * 1024;

export type { MigrationReport } from '../../migration.js';

const log = logger('vm-driver');

/** The VM lifecycle. `running`/`paused` become `stopped` when QEMU exits, whoever caused it. */
export type VmLifecycle = 'created' | 'running' | 'paused' | 'stopped' | 'saved';

const TRANSITIONS: Record<VmLifecycle, readonly VmLifecycle[]> = {
  created: ['running'],
  running: ['paused', 'stopped', 'saved'],
  paused: ['running', 'stopped', 'saved'],
  stopped: ['running'],
  saved: ['running'],
};

export function assertTransition(id: string, from: VmLifecycle, to: VmLifecycle): void {
  if (!TRANSITIONS[from].includes(to)) throw new Conflict(`VM ${id} is ${from}; cannot go to ${to}`, { id, from, to });
}

export interface VcpuPinning {
  vcpu: number;
  threadId: number;
  hostCpus: number[];
}

interface VmRecord {
  id: string;
  name: string;
  createdAt: string;
  lifecycle: VmLifecycle;
  config: Omit<QemuConfig, 'startPaused' | 'incoming'>;
  pin?: number[];
  qemuPid?: number;
  supervisorPid?: number;
  startedAt?: string;
  finishedAt?: string;
  exitCode?: number;
  /** Set when the driver itself sent a signal, so the exit code says so. */
  killedBy?: string;
  pinning?: VcpuPinning[];
  savedAt?: string;
  /** A VM made from a saved template: its state comes from the template's file, its disk is backed by the template's. */
  template?: string;
  /** The balloon target set by resize while it runs (the guest holds memoryMiB − balloonMiB less). */
  balloonMiB?: number;
}

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
  argv: string[];
}

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

const CLK_TCK = 100; // Linux USER_HZ on x86-64
let recordWrites = 0;

const SIGKILL = 9;
/** The most a live migration may take, disk mirror included, before it is called off and the guest goes on here. */
const MIGRATION_TIMEOUT_MS = 300_000;

export class VmDriver implements InstanceDriver {
  readonly type = 'vm' as const;
  private readonly qemu: string;
  private readonly exitListeners: Array<(id: string) => void> = [];
  private readonly watchers = new Map<string, NodeJS.Timeout>();
  /** Per running VM: stops its console log's size check. */
  private readonly consoleWatchers = new Map<string, () => void>();
  private readonly consoleLimits: ConsoleLogLimits;
  private readonly locks = new KeyedLock();
  /** Graceful stops in flight: a SIGKILL cuts them short instead of waiting behind them (kill). */
  private readonly stopping = new InFlight<RuntimeState>();
  /** Incoming live migrations in flight here: a QMP session open from before the stream starts. */
  private readonly incoming = new Map<string, IncomingMigration>();

  constructor(private readonly o: VmDriverOptions) {
    this.qemu = o.qemuBinary ?? 'qemu-system-x86_64';
    this.consoleLimits = checkConsoleLimits({ ...DEFAULT_CONSOLE_LIMITS, ...o.consoleLog });
    // A new driver over existing state: notice exits of VMs the old one started.
    void this.list()
      .then(async (ids) => {
        for (const id of ids) {
          const r = await this.load(id).catch(() => undefined);
          if (r && (r.lifecycle === 'running' || r.lifecycle === 'paused')) this.watch(id);
        }
      })
      .catch(() => undefined);
  }

  private paths(id: string): InstancePaths {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw new InvalidArgument(`bad instance id "${id}"`);
    return instancePaths(path.join(this.o.stateDir, id));
  }

  /** Serialise operations on one instance. */
  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  private async load(id: string): Promise<VmRecord> {
    const p = this.paths(id);
    let r: VmRecord;
    try {
      r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
    } catch {
      throw new NotFound(`no VM ${id}`, { id });
    }
    return this.observe(r, p);
  }

  private async save(r: VmRecord): Promise<void> {
    const p = this.paths(r.id);
    // unique name: an exit watcher and an operation (or two driver instances) may write at once
    const tmp = `${p.record}.${process.pid}.${++recordWrites}.tmp`;
    await writeFile(tmp, JSON.stringify(r, null, 1));
    await rename(tmp, p.record);
  }

  /** Fold what happened outside the driver (QEMU exited) into the record. */
  private async observe(r: VmRecord, p: InstancePaths): Promise<VmRecord> {
    if ((r.lifecycle === 'running' || r.lifecycle === 'paused') && !processAlive(r.qemuPid, p.qmpSocket)) {
      // the supervisor writes the status right after QEMU exits; give it a moment
      let status = await readExitStatus(p);
      // (up to 5 s: on a loaded host the supervisor shell can take a while to be scheduled)
      for (let i = 0; status === undefined && i < 500 && processAlive(r.supervisorPid); i++) {
        await sleep(10);
        status = await readExitStatus(p);
      }
      status ??= await readExitStatus(p); // the supervisor may have written it just before exiting
      // someone else (saveState, another watcher) may have recorded the end already: theirs stands
      const now = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
      if (now.lifecycle !== r.lifecycle || now.qemuPid !== r.qemuPid) return now;
      r.lifecycle = 'stopped';
      r.finishedAt = new Date().toISOString();
      if (r.killedBy === 'SIGKILL') r.exitCode = 137;
      else if (status !== undefined) r.exitCode = decodeExitStatus(status, r.config.debugExit);
      else {
        r.exitCode = 255; // supervisor gone too: status unknown
        // what /proc says of the QEMU now: a CI run under load saw migrated VMs recorded stopped at
        // their destination (not reproduced), and this is the path that records an end unseen
        const st = r.qemuPid ? procStat(r.qemuPid) : undefined;
        log.warn('QEMU seen gone without an exit status: recorded stopped (255)', {
          id: r.id, pid: r.qemuPid, procState: st?.state ?? 'gone', aliveNow: processAlive(r.qemuPid, p.qmpSocket), supervisorAlive: processAlive(r.supervisorPid),
        });
      }
      delete r.qemuPid;
      delete r.supervisorPid;
      // the exit status stays until the next launch: a second observer racing this one (an exit
      // watcher and a stop) must read the same status, not record 255 for a file removed under it
      await removeRunFiles(p, { keepExitStatus: true });
      await this.save(r);
    }
    return r;
  }

  private toState(r: VmRecord): RuntimeState {
    const status = r.lifecycle === 'saved' ? 'stopped' : r.lifecycle;
    const s: RuntimeState = { status };
    if (r.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) s.pid = r.qemuPid;
    if (r.startedAt) s.startedAt = r.startedAt;
    if (r.lifecycle === 'stopped') {
      s.exitCode = r.exitCode ?? 0;
      s.oomKilled = false;
      if (r.finishedAt) s.finishedAt = r.finishedAt;
    }
    return s;
  }

  async create(spec: InstanceSpec): Promise<RuntimeState> {
    const vm = spec.vm ?? {};
    const p = this.paths(spec.id);
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
    await mkdir(p.dir, { recursive: true });
    try {
      if (vm.disk) {
        const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', vm.disk])) as { format?: string };
        if (info.format !== 'raw' && info.format !== 'qcow2') throw new InvalidArgument(`disk ${vm.disk} is ${info.format}; raw or qcow2 expected`);
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', info.format, '-b', path.resolve(vm.disk), p.overlay]);
      }
      await writeFile(p.consoleLog, '');
      const r: VmRecord = { id: spec.id, name: spec.name, createdAt: new Date().toISOString(), lifecycle: 'created', config };
      if (vm.pin?.length) r.pin = vm.pin;
      await this.save(r);
      return this.toState(r);
    } catch (e) {
      await rm(p.dir, { recursive: true, force: true });
      throw e;
    }
  }

  start(id: string): Promise<RuntimeState> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      assertTransition(id, r.lifecycle, 'running');
      if (r.lifecycle === 'saved') throw new Conflict(`VM ${id} is saved; restore it instead`, { id });
      delete r.balloonMiB; // a fresh boot has all its memory
      foldHotplug(r); // and boots with every vCPU it had
      await this.launch(r);
      return this.toState(r);
    });
  }

  /** Launch QEMU paused, pin vCPUs, then let them run (after an incoming migration when restoring). */
  private async launch(r: VmRecord, incoming?: string): Promise<void> {
    const p = this.paths(r.id);
    const cfg: QemuConfig = { ...r.config, startPaused: true };
    if (incoming) cfg.incoming = incoming;
    const argv = qemuArgv(cfg);
    const t0 = Date.now();
    const launched = await launchQemu(this.qemu, argv, p);
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
    await this.save(r);
    this.watch(r.id);
    log.debug('vm started', { id: r.id, ms: Date.now() - t0, accel: r.config.accel, incoming: !!incoming });
  }

  private watch(id: string): void {
    if (this.watchers.has(id)) return;
    const t = setInterval(() => {
      void this.load(id)
        .then((r) => {
          if (r.lifecycle === 'running' || r.lifecycle === 'paused') return;
          this.unwatch(id);
          if (r.lifecycle === 'stopped') for (const l of this.exitListeners) l(id);
        })
        .catch(() => this.unwatch(id));
    }, this.o.exitPollMs ?? 100);
    t.unref();
    this.watchers.set(id, t);
    const consoleLog = this.paths(id).consoleLog;
    this.consoleWatchers.set(id, watchConsoleLog(consoleLog, this.consoleLimits, this.o.consoleCheckMs ?? 250, (e) => log.warn('console log rotation failed', { id, error: e })));
  }

  private unwatch(id: string): void {
    const t = this.watchers.get(id);
    if (t) clearInterval(t);
    this.watchers.delete(id);
    this.consoleWatchers.get(id)?.();
    this.consoleWatchers.delete(id);
  }

  private async waitExit(id: string, ms: number): Promise<VmRecord> {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await this.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') return r;
      if (Date.now() > deadline) return r;
      await sleep(25);
    }
  }

  private async hardKill(r: VmRecord): Promise<VmRecord> {
    r.killedBy = 'SIGKILL';
    await this.save(r);
    if (processAlive(r.qemuPid, this.paths(r.id).qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
    return this.waitExit(r.id, 10_000);
  }

  async kill(id: string, signal: string): Promise<void> {
    const sig = signalNumber(signal);
    if (sig === undefined) throw new InvalidArgument(`unknown signal "${signal}"`, { id });
    // SIGKILL cuts a graceful stop short: it does not queue behind the stop's wait (which holds the
    // VM's lock up to its timeout); the stop sees QEMU end and records it
    const stopping = this.stopping.get(id);
    if (sig === SIGKILL && stopping) {
      const r = await this.load(id);
      if (processAlive(r.qemuPid, this.paths(id).qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
      await stopping.catch(() => undefined);
      return;
    }
    return this.locked(id, async () => {
      const r = await this.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is not running`, { id });
      if (sig === SIGKILL) {
        await this.hardKill(r);
        return;
      }
      process.kill(r.qemuPid!, sig);
    });
  }

  stop(id: string, timeoutSec: number): Promise<RuntimeState> {
    const done = this.locked(id, async () => {
      let r = await this.load(id);
      if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') return this.toState(r);
      const p = this.paths(id);
      try {
        await withQmp(p, async (c) => {
          if (r.lifecycle === 'paused') await c.execute('cont'); // a paused guest cannot see the button
          await c.execute('system_powerdown');
        });
        if (r.lifecycle === 'paused') {
          r.lifecycle = 'running';
          await this.save(r);
        }
        r = await this.waitExit(id, timeoutSec * 1000);
      } catch (e) {
        log.warn('graceful stop failed; killing', { id, error: e });
      }
      if (r.lifecycle === 'running' || r.lifecycle === 'paused') r = await this.hardKill(r);
      return this.toState(r);
    });
    return this.stopping.track(id, done);
  }

  pause(id: string): Promise<void> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      assertTransition(id, r.lifecycle, 'paused');
      await withQmp(this.paths(id), (c) => c.execute('stop'));
      r.lifecycle = 'paused';
      await this.save(r);
    });
  }

  unpause(id: string): Promise<void> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      if (r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is ${r.lifecycle}, not paused`, { id });
      await withQmp(this.paths(id), (c) => c.execute('cont'));
      r.lifecycle = 'running';
      await this.save(r);
    });
  }

  async state(id: string): Promise<RuntimeState> {
    return this.toState(await this.load(id));
  }

  async exec(id: string, _req: ExecRequest): Promise<ExecSession> {
    await this.load(id);
    throw new InvalidArgument(`exec is not available for VM ${id}: there is no guest agent yet; use the serial console`, { id });
  }

  async *logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    const p = this.paths(id);
    await this.load(id);
    const rec = (line: { text: string; partial?: true }, isPartial = false): LogRecord => {
      const r: LogRecord = { time: new Date().toISOString(), stream: 'stdout', line: line.text.replace(/\r+$/, '') };
      if (isPartial || line.partial) r.partial = true;
      return r;
    };
    // What the console printed on the hosts this VM migrated from, then here (the rotated
    // generations oldest first, console-log.ts): read in chunks, tail backwards from the end,
    // never a whole file in memory.
    if (!existsSync(p.consoleLog)) throw new NotFound(`VM ${id} has no console log`, { id });
    const start = await consoleStart(p.consoleLog, this.consoleLimits, consoleHistory(p), opts.tail);
    const lineOpts = { maxLine: CONSOLE_MAX_LINE };
    if (start.history !== undefined) {
      const history = await LineCursor.open(consoleHistory(p), start.history, lineOpts);
      if (history) {
        try {
          for await (const l of history.lines()) yield rec(l);
          if (history.pending()) yield rec({ text: history.pending() }); // a line of its own: the guest moved on
        } finally {
          await history.close();
        }
      }
    }
    const cur = new ConsoleCursor(p.consoleLog, this.consoleLimits, start.gen, start.offset, CONSOLE_MAX_LINE);
    try {
      for await (const l of cur.lines()) yield rec(l);
      if (!opts.follow) {
        if (cur.pending() && opts.tail === undefined) yield rec({ text: cur.pending() }, true);
        return;
      }
      for (;;) {
        if (opts.signal?.aborted) return;
        let n = 0;
        for await (const l of cur.lines()) {
          n++;
          yield rec(l);
        }
        if (n) continue;
        const r = await this.load(id).catch(() => undefined);
        // a created VM has not started yet: follow waits for it (as `run` opens the logs before start)
        if (!r || (r.lifecycle !== 'running' && r.lifecycle !== 'paused' && r.lifecycle !== 'created')) {
          for await (const l of cur.lines()) yield rec(l);
          if (cur.pending()) yield rec({ text: cur.pending() }, true);
          return;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, 100);
          opts.signal?.addEventListener('abort', done, { once: true });
          function done() {
            clearTimeout(t);
            opts.signal?.removeEventListener('abort', done);
            resolve();
          }
        });
      }
    } finally {
      await cur.close();
    }
  }

  async stats(id: string): Promise<InstanceStats> {
    const r = await this.load(id);
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

  delete(id: string): Promise<void> {
    return this.locked(id, async () => {
      const p = this.paths(id);
      let r: VmRecord | undefined;
      try {
        r = await this.load(id);
      } catch {
        /* no record: remove whatever is there */
      }
      if (r && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
        r = await this.hardKill(r);
        if (r.lifecycle === 'running' || r.lifecycle === 'paused') throw new Conflict(`VM ${id} did not die`, { id });
      }
      // a template's saved state and disk back the VMs made from it
      const children = [];
      for (const other of await this.list()) {
        if (other === id) continue;
        const o = await readFile(this.paths(other).record, 'utf8').then((t) => JSON.parse(t) as VmRecord).catch(() => undefined);
        if (o?.template === id) children.push(other);
      }
      if (children.length) throw new Conflict(`VM ${id} is the template of ${children.join(', ')}`, { id, children });
      this.unwatch(id);
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
    });
  }

  async list(): Promise<string[]> {
    try {
      const out: string[] = [];
      for (const d of await readdir(this.o.stateDir)) if (existsSync(path.join(this.o.stateDir, d, 'vm.json'))) out.push(d);
      return out;
    } catch {
      return [];
    }
  }

  onExit(listener: (id: string) => void): void {
    this.exitListeners.push(listener);
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
      const r = await this.load(id).catch(() => undefined);
      if (r?.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) {
        owned.add(r.qemuPid);
        this.watch(id);
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
        const r = await this.load(d).catch(() => undefined);
        if (!r || r.lifecycle !== 'created' || !r.qemuPid) continue;
        // its QEMU was killed above: the supervisor's last write (exit-status) may still land
        for (let i = 0; i < 200 && processAlive(r.supervisorPid); i++) await sleep(10);
      }
      // ENOTEMPTY from such a late write must not fail the whole reconcile (the agent would count as down)
      await rm(path.join(this.o.stateDir, d), { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
      removed.push(d);
    }
    if (killed.length || removed.length) log.info('vm reconcile', { killed, removed });
    return { killed, removed };
  }

  // ---- VM-only operations ----

  /** A connection to the serial console (input to the guest; its output also goes to the console log). One client at a time. */
  async openConsole(id: string): Promise<net.Socket> {
    const r = await this.load(id);
    if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is not running`, { id });
    const sock = net.createConnection(this.paths(id).consoleSocket);
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', (e) => reject(new NimbusError('Unavailable', `console of ${id}: ${e.message}`, { id })));
    });
    return sock;
  }

  async inspect(id: string): Promise<VmInspect> {
    const r = await this.load(id);
    const p = this.paths(id);
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
      argv: [this.qemu, ...qemuArgv({ ...r.config, startPaused: true })],
    };
    if (r.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) out.qemuPid = r.qemuPid;
    if (r.config.rootDisk) out.rootDisk = r.config.rootDisk.path;
    if (r.lifecycle === 'saved') out.savedState = p.savedState;
    if (r.balloonMiB !== undefined && (r.lifecycle === 'running' || r.lifecycle === 'paused')) out.balloonMiB = r.balloonMiB;
    if (out.qemuPid !== undefined) {
      // QEMU's own word: "postmigrate" is a source whose guest went elsewhere (reconcile uses it)
      const st = await withQmp(p, (c) => c.execute<{ status: string }>('query-status'), 2000).catch(() => undefined);
      if (st) out.runState = st.status;
    }
    return out;
  }

  /**
   * Change a VM's size where QEMU allows it. Running or paused: memory through the balloon,
   * below the boot size and back up to it (the guest's balloon driver gives the pages back),
   * and vCPUs added by hot-plug up to maxCpus. Created or stopped: vCPUs and memory for the next start.
   */
  resize(id: string, want: { cpus?: number; memoryMiB?: number }): Promise<{ cpus: number; memoryMiB: number; balloonMiB?: number }> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      if (want.cpus !== undefined && (!Number.isInteger(want.cpus) || want.cpus < 1 || want.cpus > 64)) throw new InvalidArgument(`cpus must be 1-64, got ${want.cpus}`, { id });
      if (want.memoryMiB !== undefined && (!Number.isInteger(want.memoryMiB) || want.memoryMiB < 16)) throw new InvalidArgument(`memory must be at least 16 MiB, got ${want.memoryMiB}`, { id });
      if (r.lifecycle === 'saved') throw new Conflict(`VM ${id} is saved: restore it first, or resize it once stopped`, { id });
      if (r.lifecycle === 'created' || r.lifecycle === 'stopped') {
        foldHotplug(r);
        if (want.cpus !== undefined) {
          if (r.config.maxCpus !== undefined && want.cpus > r.config.maxCpus) r.config.maxCpus = want.cpus;
          r.config.cpus = want.cpus;
          if (r.config.maxCpus === r.config.cpus) delete r.config.maxCpus;
        }
        if (want.memoryMiB !== undefined) r.config.memoryMiB = want.memoryMiB;
        delete r.balloonMiB;
        await this.save(r);
        return { cpus: r.config.cpus, memoryMiB: r.config.memoryMiB };
      }
      if (want.cpus !== undefined && want.cpus !== vcpuCount(r)) await this.hotplugVcpus(r, want.cpus);
      if (want.memoryMiB === undefined) return { cpus: vcpuCount(r), memoryMiB: r.config.memoryMiB, ...(r.balloonMiB ? { balloonMiB: r.balloonMiB } : {}) };
      if (!r.config.balloon) throw new Conflict(`VM ${id} has no balloon device: stop it to change its memory`, { id });
      if (want.memoryMiB > r.config.memoryMiB) {
        throw new InvalidArgument(`a running VM's memory can shrink and grow back up to its boot size (${r.config.memoryMiB} MiB), not to ${want.memoryMiB}; stop it to go beyond`, { id });
      }
      await withQmp(this.paths(id), (c) => c.execute('balloon', { value: want.memoryMiB! * 1024 * 1024 }));
      r.balloonMiB = want.memoryMiB;
      await this.save(r);
      return { cpus: vcpuCount(r), memoryMiB: r.config.memoryMiB, balloonMiB: want.memoryMiB };
    });
  }

  /** A block volume onto the VM (block-volumes.ts): hot-plugged while it runs, recorded for the next start while created or stopped. */
  attachVolume(id: string, b: BlockVolumeConfig): Promise<{ live: boolean }> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      const mode = blockChangeMode(id, r.lifecycle, 'attach');
      const next = withVolume(r.config.blockVolumes, b);
      if (mode === 'live') await plugBlockVolume(this.paths(id), b);
      r.config.blockVolumes = next;
      await this.save(r);
      return { live: mode === 'live' };
    });
  }

  /** The volume off the VM: unplugged (the guest must release it) while it runs, off the record otherwise. */
  detachVolume(id: string, volumeId: string, timeoutMs?: number): Promise<{ live: boolean }> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      const mode = blockChangeMode(id, r.lifecycle, 'detach');
      const next = withoutVolume(r.config.blockVolumes, volumeId);
      if (mode === 'live') await unplugBlockVolume(this.paths(id), volumeId, timeoutMs);
      if (next.length) r.config.blockVolumes = next;
      else delete r.config.blockVolumes;
      await this.save(r);
      return { live: mode === 'live' };
    });
  }

  /**
   * vCPU hot-plug on a running VM created with room for it (maxCpus): QMP device_add into the
   * free slots query-hotpluggable-cpus lists (the guest sees an ACPI CPU hot-add). The plugged
   * ones are recorded and replayed as -device on a restore or an incoming migration; the pin
   * list applies to the new threads.
   */
  private async hotplugVcpus(r: VmRecord, want: number): Promise<void> {
    const id = r.id;
    const max = r.config.maxCpus;
    if (max === undefined) throw new Conflict(`VM ${id} was created without room for more vCPUs (--max-cpus): stop it to change them`, { id });
    if (want > max) throw new InvalidArgument(`VM ${id} can grow to ${max} vCPUs while it runs (its --max-cpus), not ${want}; stop it to go beyond`, { id });
    // Removal would be device_del, which the guest must answer with an ACPI eject (the test guest's
    // kernel does not); one it answers later would leave the record naming a CPU QEMU no longer
    // has, and the next restore would not match its state. So vCPUs only come, while it runs.
    if (want < vcpuCount(r)) throw new Conflict(`VM ${id} has ${vcpuCount(r)} vCPUs: while it runs they can be added, not removed (stop it to go down)`, { id });
    const plugged = r.config.hotplugCpus ?? [];
    await withQmp(this.paths(id), async (c) => {
      const slots = await c.execute<Array<{ type: string; 'qom-path'?: string; props: Record<string, number> }>>('query-hotpluggable-cpus');
      const free = slots.filter((x) => x['qom-path'] === undefined).reverse(); // QEMU lists the highest slot first
      while (vcpuCount(r) < want) {
        const slot = free.shift();
        if (!slot) throw new Conflict(`VM ${id} has no free vCPU slot left`, { id });
        const cpu = { driver: slot.type, id: `vcpu${vcpuCount(r)}`, props: { ...slot.props } };
        await c.execute('device_add', { driver: cpu.driver, id: cpu.id, ...cpu.props });
        plugged.push(cpu);
        r.config.hotplugCpus = plugged; // recorded as soon as QEMU has it (saved below, also on failure)
      }
      r.pinning = r.pin?.length ? await pinVcpus(c, r.pin) : [];
    }, 30_000).finally(() => this.save(r));
  }

  /** What the guest has given back so far: QMP query-balloon's actual size, MiB (running VMs with a balloon). */
  async balloonActualMiB(id: string): Promise<number | undefined> {
    const r = await this.load(id);
    if (!r.config.balloon || (r.lifecycle !== 'running' && r.lifecycle !== 'paused')) return undefined;
    const b = await withQmp(this.paths(id), (c) => c.execute<{ actual: number }>('query-balloon'));
    return Math.round(b.actual / (1024 * 1024));
  }

  /**
   * Save the whole VM (devices, RAM, vCPUs) to a file and end QEMU: the guest
   * is paused, its state streamed out by QMP migrate, then QEMU quits.
   */
  saveState(id: string): Promise<{ file: string; bytes: number; ms: number }> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      assertTransition(id, r.lifecycle, 'saved');
      const p = this.paths(id);
      const t0 = Date.now();
      await rm(p.savedState, { force: true });
      await withQmp(p, async (c) => {
        await c.execute('stop');
        try {
          await c.execute('migrate', { uri: `exec:cat > '${p.savedState}'` });
          for (;;) {
            const m = await c.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
            if (m.status === 'completed') break;
            if (m.status === 'failed' || m.status === 'cancelled') throw new NimbusError('Internal', `save of ${id} failed: ${m['error-desc'] ?? m.status}`);
            await sleep(10);
          }
        } catch (e) {
          // the guest goes on as it was; no half-written state file stays
          if (r.lifecycle === 'running') await c.execute('cont').catch(() => undefined);
          await rm(p.savedState, { force: true });
          throw e;
        }
        // record the save before QEMU goes, so an exit watcher does not call it a stop
        this.unwatch(id);
        r.lifecycle = 'saved';
        r.savedAt = new Date().toISOString();
        await this.save(r);
        await c.execute('quit').catch(() => undefined); // the socket may close before the reply
      }, 60_000);
      // QEMU exits; fold it in without calling it a stop
      for (let i = 0; i < 500 && processAlive(r.qemuPid, p.qmpSocket); i++) await sleep(10);
      for (let i = 0; i < 100 && processAlive(r.supervisorPid); i++) await sleep(10);
      await removeRunFiles(p);
      delete r.qemuPid;
      delete r.supervisorPid;
      delete r.pinning;
      await this.save(r);
      return { file: p.savedState, bytes: (await stat(p.savedState)).size, ms: Date.now() - t0 };
    });
  }

  /** Bring a saved VM back: QEMU loads the saved state and the guest continues where it was. */
  restoreState(id: string): Promise<{ ms: number }> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      if (r.lifecycle !== 'saved') throw new Conflict(`VM ${id} is ${r.lifecycle}, not saved`, { id });
      const p = this.paths(id);
      const t0 = Date.now();
      if (r.template && !existsSync(p.savedState)) {
        // first start of a VM made from a template: the template's state, the template stays saved
        // (once it has been saved on its own, its own state is the one to restore)
        await this.launch(r, `exec:cat '${this.paths(r.template).savedState}'`);
      } else {
        await this.launch(r, `exec:cat '${p.savedState}'`);
        await rm(p.savedState, { force: true }); // the disk overlay has moved on; the image is stale now
      }
      return { ms: Date.now() - t0 };
    });
  }

  /**
   * A new VM from a saved one used as a template (RunD's microVM templates):
   * same devices and memory, its own sockets and console, a disk overlay backed
   * by the template's frozen overlay. It is left saved; restoreState() starts it.
   */
  async createFromTemplate(templateId: string, id: string, name = id, over: { shares?: QemuConfig['shares'] } = {}): Promise<RuntimeState> {
    const t = await this.load(templateId);
    if (t.lifecycle !== 'saved' || t.template) throw new Conflict(`VM ${templateId} is not a saved VM that can serve as a template`, { id: templateId });
    if (t.config.blockVolumes?.length) throw new Conflict(`VM ${templateId} has block volumes attached: a clone would share its disks`, { id: templateId });
    const p = this.paths(id);
    if (existsSync(p.record)) throw new AlreadyExists(`VM ${id} exists`, { id });
    await mkdir(p.dir, { recursive: true });
    try {
      const config: VmRecord['config'] = {
        ...t.config,
        // host-side paths of shared directories are not part of the saved state: each VM brings its own
        ...(over.shares ? { shares: over.shares } : {}),
        name,
        paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile },
      };
      if (t.config.rootDisk) {
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', this.paths(templateId).overlay, p.overlay]);
        config.rootDisk = { path: p.overlay, format: 'qcow2' };
      }
      await writeFile(p.consoleLog, '');
      const r: VmRecord = { id, name, createdAt: new Date().toISOString(), lifecycle: 'saved', config, template: templateId };
      if (t.pin) r.pin = t.pin;
      await this.save(r);
      return this.toState(r);
    } catch (e) {
      await rm(p.dir, { recursive: true, force: true });
      throw e;
    }
  }

  // ------------------------------------------------------------ live migration
  //
  // Five steps, each on one side, so that the two sides can be two agent processes (the
  // control plane drives them over the agent protocol) or two drivers in one (migrateTo):
  //   source: migrationSpec → destination: prepareIncoming → source: migrateOut
  //   → destination: finishIncoming → source: endMigration('moved')
  // On failure: destination abandonIncoming, source endMigration('resume').

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

  /**
   * Source, step 1: what the destination needs. A local root disk goes with the VM (mirrored
   * over NBD while RAM moves): the spec says its size and the base image under the overlay, so
   * that the destination can make an overlay on its own copy of that base (a template's clone
   * is backed by this host's template: its whole disk travels). NICs are the agent's (taps).
   */
  async migrationSpec(id: string): Promise<MigrationSpec> {
    const r = await this.load(id);
    if (r.lifecycle !== 'running') throw new Conflict(`VM ${id} is ${r.lifecycle}; only a running VM migrates live`, { id });
    const shared = r.config.blockVolumes?.find((b) => b.shared);
    if (shared) throw new Conflict(`VM ${id} has the shared volume ${shared.volumeId} attached: other VMs may hold it on this host, so it cannot move with this one (detach it first)`, { id });
    const { paths: _hostPaths, ...config } = r.config;
    const spec: MigrationSpec = { id: r.id, name: r.name, createdAt: r.createdAt, config: config as Record<string, unknown>, ...(r.pin ? { pin: r.pin } : {}), ...(this.o.tls ? { tls: this.o.tls.name } : {}) };
    if (r.config.rootDisk) {
      // -U: QEMU holds the image's lock while it runs; its header is all that is read
      const info = JSON.parse(await runOk('qemu-img', ['info', '-U', '--output=json', r.config.rootDisk.path])) as { 'virtual-size': number; 'full-backing-filename'?: string; 'backing-filename-format'?: string };
      const fmt = info['backing-filename-format'];
      spec.storage = {
        virtualSize: info['virtual-size'],
        ...(!r.template && info['full-backing-filename'] && (fmt === 'raw' || fmt === 'qcow2') ? { backing: info['full-backing-filename'], backingFormat: fmt } : {}),
      };
    }
    return spec;
  }

  /**
   * Destination, step 2: a QEMU with the VM's devices, waiting for the stream on host:port,
   * *not* started paused, so QEMU resumes the guest itself the moment the last pass is in
   * (no QMP round trip inside the downtime). Over TLS when both agents have a certificate: QEMU
   * listens only once the credentials are set (-incoming defer), so no plain stream is taken.
   */
  async prepareIncoming(spec: MigrationSpec, host: string): Promise<IncomingMigrationTarget> {
    const p = this.paths(spec.id);
    if (existsSync(p.record)) throw new AlreadyExists(`VM ${spec.id} already exists at the destination`, { id: spec.id });
    const config = spec.config as unknown as VmRecord['config'];
    if (config.accel !== this.o.accel) {
      throw new Conflict(`VM ${spec.id} runs under ${config.accel} and this host's VMs under ${this.o.accel}; a migration needs the same accelerator`, { id: spec.id });
    }
    await mkdir(p.dir, { recursive: true });
    const tls = spec.tls && this.o.tls ? this.o.tls : undefined;
    if (!tls) logInClear(spec.id, host, !this.o.tls ? 'this agent has no certificate' : 'the source agent has no certificate');
    const port = await freeTcpPort(host);
    const uri = `tcp:${host.includes(':') ? `[${host}]` : host}:${port}`;
    const r: VmRecord = {
      id: spec.id, name: spec.name, createdAt: spec.createdAt, lifecycle: 'created',
      config: { ...config, paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile } },
    };
    if (spec.pin) r.pin = spec.pin;
    if (config.rootDisk && !spec.storage) throw new InvalidArgument(`VM ${spec.id} has a root disk but the migration says nothing of its storage`, { id: spec.id });
    try {
      await writeFile(p.consoleLog, '');
      if (spec.storage) {
        // an empty overlay of its own: on the same base (only the source overlay's clusters then
        // travel), or standalone of the disk's size (all of it does)
        const s = spec.storage;
        await runOk('qemu-img', s.backing
          ? ['create', '-q', '-f', 'qcow2', '-F', s.backingFormat ?? 'raw', '-b', path.resolve(s.backing), p.overlay]
          : ['create', '-q', '-f', 'qcow2', p.overlay, String(s.virtualSize)]);
        r.config.rootDisk = { path: p.overlay, format: 'qcow2' };
      }
      const launched = await launchQemu(this.qemu, qemuArgv({ ...r.config, startPaused: false, incoming: 'defer' }), p);
      r.qemuPid = launched.qemuPid;
      r.supervisorPid = launched.supervisorPid;
      await this.save(r);
      const events = await QmpClient.connect(p.qmpSocket, { timeoutMs: 5000 });
      // listen before the stream starts: the guest may resume before anyone asks
      const resumed = events.waitForEvent('RESUME', 300_000);
      resumed.catch(() => undefined);
      this.incoming.set(spec.id, { uri, events, resumed, tls: !!tls });
      if (tls) {
        await addTlsCreds(events, tls, 'server', migrationTlsDir(p));
        await useTlsForMigration(events);
      }
      await events.execute('migrate-incoming', { uri });
      const exports = await exportDisksForMigration(events, host, await freeTcpPort(host), movingDisks(r.config), !!tls);
      const { root: nbd, ...volumes } = exports;
      return { uri, ...(nbd ? { nbd } : {}), ...(Object.keys(volumes).length ? { nbdVolumes: volumes } : {}), ...(tls ? { tls: tls.name } : {}) };
    } catch (e) {
      await this.abandonIncoming(spec.id);
      throw e;
    }
  }

  /**
   * Source, step 3: QMP migrate with the downtime limit and a high bandwidth cap (loopback);
   * QEMU pre-copies RAM while the guest runs and stops it only for the final pass. On
   * failure the guest goes on here.
   */
  migrateOut(id: string, uri: string, opts: MigrateOutOptions): Promise<OutgoingMigration> {
    return this.locked(id, async () => {
      const r = await this.load(id);
      if (r.lifecycle !== 'running') throw new Conflict(`VM ${id} is ${r.lifecycle}; only a running VM migrates live`, { id });
      if (r.config.rootDisk && !opts.nbd) throw new Conflict(`VM ${id} has a local disk and the destination offers nothing to copy it into`, { id });
      const lacking = r.config.blockVolumes?.find((b) => !opts.nbdVolumes?.[b.volumeId]);
      if (lacking) throw new Conflict(`VM ${id} has volume ${lacking.volumeId} attached and the destination offers nothing to copy it into (an agent of protocol 8 or older: volumes stay)`, { id });
      const disks = movingDisks(r.config);
      const targets = disks.map((d) => ({ disk: d, nbd: d.key === 'root' ? opts.nbd! : opts.nbdVolumes![d.key]!, wholeDisk: d.key === 'root' ? !!r.template : true }));
      const tls = opts.tls ? this.o.tls : undefined;
      if (opts.tls && !tls) throw new Conflict(`the destination takes VM ${id} over TLS only and this agent has no certificate`, { id });
      if (!opts.tls) logInClear(id, /^tcp:\[?([^\]]*?)\]?:\d+$/.exec(uri)?.[1] ?? uri, 'the destination asked for no TLS');
      const p = this.paths(id);
      const t0 = performance.now();
      const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
      let stoppedAt: number | undefined;
      let downtimeLimitMs: number | undefined;
      let info: QmpMigrateInfo | undefined;
      let diskBytes = 0;
      let volumeBytes: Record<string, number> = {};
      let switched = false;
      try {
        await withQmp(p, async (c) => {
          const off = c.onEvent((e) => {
            if (e.event === 'STOP') stoppedAt = e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
          });
          try {
            if (tls) {
              await addTlsCreds(c, tls, 'client', migrationTlsDir(p));
              await useTlsForMigration(c, opts.tls);
            }
            await c.execute('migrate-set-parameters', { 'downtime-limit': opts.maxDowntimeMs, 'max-bandwidth': opts.maxBandwidthBytes ?? 4 * 1024 ** 3 });
            // the limit as QEMU holds it, for the report: what was honoured, not what was asked
            downtimeLimitMs = (await c.execute<{ 'downtime-limit'?: number }>('query-migrate-parameters'))['downtime-limit'];
            // the disks first, until both sides are in sync; they stay in sync while RAM moves
            await startMirrors(c, targets, { deadline, ...(opts.tls ? { tlsPeer: opts.tls } : {}) });
            await c.execute('migrate', { uri });
            for (;;) {
              const m = await c.execute<QmpMigrateInfo>('query-migrate');
              if (m.status === 'completed') {
                info = m;
                break;
              }
              // the guest is stopped here (only with disks: pause-before-switchover): their last writes go first
              if (m.status === 'pre-switchover' && !switched) {
                switched = true; // the state lingers a moment after migrate-continue
                const { root, ...volumes } = await finishMirrors(c, disks, deadline);
                diskBytes = root ?? 0;
                volumeBytes = volumes;
              }
              if (m.status === 'failed' || m.status === 'cancelled') throw new NimbusError('Internal', `migration of ${id} failed: ${m['error-desc'] ?? m.status}`);
              if (Date.now() > deadline) throw new NimbusError('Unavailable', `migration of ${id} did not complete within ${MIGRATION_TIMEOUT_MS / 1000} s`);
              await sleep(5);
            }
          } catch (e) {
            if (disks.length) await c.execute('migrate_cancel').catch(() => undefined);
            throw e;
          } finally {
            off();
            await clearMirrors(c, disks);
            // after the mirror's NBD client, which holds the credentials
            if (tls) await clearTls(c);
          }
        }, MIGRATION_TIMEOUT_MS + 5_000);
      } catch (e) {
        await this.resumeHere(id);
        throw e;
      }
      // the console's history travels with the VM (complete now: the guest no longer runs here)
      const history = await consoleBytes(p.consoleLog, this.consoleLimits, consoleHistory(p));
      return {
        ...(stoppedAt !== undefined ? { stoppedAt } : {}),
        qemuDowntimeMs: info?.downtime ?? -1,
        ...(downtimeLimitMs !== undefined ? { downtimeLimitMs } : {}),
        totalMs: Math.round(performance.now() - t0),
        bytes: info?.ram?.transferred ?? 0,
        iterations: info?.ram?.['dirty-sync-count'] ?? 0,
        diskBytes,
        ...(Object.keys(volumeBytes).length ? { volumeBytes } : {}),
        tls: !!tls,
        consoleHistory: history.toString('base64'),
      };
    });
  }

  /** Destination, step 4: the guest resumed here; record it running and pin its vCPUs. */
  async finishIncoming(id: string, history: string): Promise<{ resumedAt: number }> {
    const incoming = this.incoming.get(id);
    if (!incoming) throw new NotFound(`no incoming migration of VM ${id} here`, { id });
    const p = this.paths(id);
    const c = incoming.events;
    try {
      const ev = await incoming.resumed;
      const resumedAt = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      const r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
      await endDiskExports(c, movingDisks(r.config));
      // its next migration makes credentials of its own (as a source) and may go plain
      if (incoming.tls) await clearTls(c);
      // peers and switches learn where the guest is now (QEMU announces once by itself as well;
      // this round follows the host's taps being up, whatever the timing of the stream's end)
      if (r.config.nics.length) await c.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }).catch((e: unknown) => log.warn('announce-self failed', { id, error: String(e) }));
      await writeFile(consoleHistory(p), Buffer.from(history, 'base64'));
      r.pinning = r.pin?.length ? await pinVcpus(c, r.pin) : [];
      r.lifecycle = 'running';
      r.startedAt = new Date().toISOString();
      await this.save(r);
      this.watch(id);
      return { resumedAt };
    } finally {
      this.incoming.delete(id);
      c.close();
    }
  }

  /** Destination, on failure: nothing of the half-arrived VM stays. */
  async abandonIncoming(id: string): Promise<void> {
    this.incoming.get(id)?.events.close();
    this.incoming.delete(id);
    const p = this.paths(id);
    const pid = await readPid(p.pidFile).catch(() => undefined);
    const supervisor = await readPid(p.supervisorPidFile).catch(() => undefined);
    if (processAlive(pid, p.qmpSocket)) process.kill(pid!, 'SIGKILL');
    for (let i = 0; i < 200 && processAlive(pid, p.qmpSocket); i++) await sleep(10);
    // its supervisor records QEMU's end in this directory: a removal racing it fails with ENOTEMPTY
    for (let i = 0; i < 100 && processAlive(supervisor); i++) await sleep(10);
    await rm(p.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
  }

  /**
   * Source, step 5. 'moved': the source QEMU (left in postmigrate) quits and its directory
   * goes, without calling it a stop. 'resume': the destination failed; the guest goes on here.
   */
  endMigration(id: string, outcome: 'moved' | 'resume'): Promise<void> {
    return this.locked(id, async () => {
      if (outcome === 'resume') return this.resumeHere(id);
      const r = await this.load(id);
      const p = this.paths(id);
      this.unwatch(id);
      await withQmp(p, (c) => c.execute('quit')).catch(() => undefined);
      for (let i = 0; i < 500 && processAlive(r.qemuPid, p.qmpSocket); i++) await sleep(10);
      if (processAlive(r.qemuPid, p.qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
      for (let i = 0; i < 100 && processAlive(r.supervisorPid); i++) await sleep(10);
      await rm(p.dir, { recursive: true, force: true });
      log.info('vm migrated away', { id });
    });
  }

  /** After a failed or abandoned migration the source QEMU may be paused or postmigrate: let the guest run. */
  private async resumeHere(id: string): Promise<void> {
    await withQmp(this.paths(id), async (c) => {
      const st = await c.execute<{ status: string }>('query-status');
      if (st.status !== 'running') await c.execute('cont');
    }).catch((e: unknown) => log.warn('resuming a VM after a failed migration failed', { id, error: String(e) }));
  }
}

/** vCPUs a VM has: the ones it booted with and the ones plugged since. */
const vcpuCount = (r: VmRecord): number => r.config.cpus + (r.config.hotplugCpus?.length ?? 0);

/** A cold boot starts with every vCPU the VM had: the plugged ones become boot ones. */
function foldHotplug(r: VmRecord): void {
  if (!r.config.hotplugCpus?.length) return;
  r.config.cpus += r.config.hotplugCpus.length;
  delete r.config.hotplugCpus;
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

/** What the destination needs to rebuild the VM (the source's record less its host paths). */
export type MigrationSpec = VmMigrationSpec;

/** The disks that move with a VM: its local root disk, then its block volumes (disk-mirror.ts). */
function movingDisks(config: VmRecord['config']): MovingDisk[] {
  return [...(config.rootDisk ? [ROOT_DISK] : []), ...(config.blockVolumes ?? []).map((b) => volumeDisk(b.volumeId, blockVolumeNames(b.volumeId).node))];
}

interface IncomingMigration {
  uri: string;
  /** A QMP session on the destination, open from before the stream starts. */
  events: QmpClient;
  resumed: Promise<QmpEvent>;
  /** Its streams are TLS (the credentials object is in the QEMU until the guest runs here). */
  tls: boolean;
}

interface QmpMigrateInfo {
  status?: string;
  'error-desc'?: string;
  downtime?: number;
  'total-time'?: number;
  ram?: { transferred?: number; 'dirty-sync-count'?: number };
}

/** A TCP port free on host right now (the destination QEMU binds it a moment later). */
async function freeTcpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Where QEMU reads the migration's TLS files, only while it makes the credentials object. */
const migrationTlsDir = (p: InstancePaths) => path.join(p.dir, 'migrate-tls');

/** A migration whose streams go plain: expected on one host (loopback), worth a warning across hosts. */
function logInClear(id: string, host: string, reason: string): void {
  const local = host === 'localhost' || host === '::1' || host.startsWith('127.');
  log[local ? 'info' : 'warn']('live migration streams in clear (no TLS)', { id, host, reason });
}

/** The console output of the VM's previous hosts (written when it migrates in). */
const consoleHistory = (p: InstancePaths) => path.join(p.dir, 'console.history');
