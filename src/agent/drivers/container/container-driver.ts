/**
 * The container InstanceDriver: an OCI bundle per container, run by runc or crun
 * under conmon, which monitors it independently of this process. All state lives
 * in files (container-store.ts lists them), so a new driver on the same stateDir
 * (a restarted daemon) picks up where the old one stopped.
 *
 * This file wires the driver's parts and keeps the lifecycle (start, kill, stop, pause,
 * state, delete); the rest is theirs: the files and meta (container-store.ts), the
 * making of a container (container-create.ts, container-bundle.ts), warm containers
 * (warm-containers.ts), exits (container-exits.ts), cgroup readings (container-cgroups.ts),
 * exec and attach (container-sessions.ts), logs (container-log-files.ts) and live moves
 * (container-live-move.ts).
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import path from 'node:path';
import { Conflict, Internal, hasCode } from '../../../core/errors.js';
import { addHostRoots } from '../../../core/redaction.js';
import type { Implementation } from '../../../core/registry.js';
import { DEFAULT_CGROUP_PARENT, cgroupEmpty, readFrozen, releaseCgroupMemory, removeCgroup, type CgroupPaths } from '../../cgroups/cgroups.js';
import { isMounted, unmountAll } from '../../snapshots/mount.js';
import { removeTreeUnlessMounted } from '../../../core/tree-removal.js';
import type {
  AttachRequest,
  AttachSession,
  ExecRequest,
  ExecSession,
  InstanceDriver,
  InstanceSpec,
  InstanceStats,
  LogRecord,
  RuntimeState,
} from '../instance-driver.js';
import { isConmonFor, readPidFile } from './conmon.js';
import { LogRotation } from './log-rotation.js';
import type { TreeImportResult } from '../../agent.js';
import type { OciMount } from './oci-spec.js';
import { parentPid, processAlive } from '../../../core/proc.js';
import { removeStateFile } from '../../../core/state-files.js';
import { RUNTIME_NAMES, findBinary, probeRuntime, type RuntimeName } from './oci-runtime.js';
import { FifoStock } from './fifo-stock.js';
import { ContainerStore, exists, sleep, type ContainerMeta } from './container-store.js';
import { ContainerCgroups } from './container-cgroups.js';
import { ContainerExits, type ExitRecord } from './container-exits.js';
import { ContainerCreator } from './container-create.js';
import { WarmContainers } from './warm-containers.js';
import { seccompLoader } from './seccomp.js';
import { ContainerSessions } from './container-sessions.js';
import { ContainerLiveMove } from './container-live-move.js';
import { ContainerLogFiles } from './container-log-files.js';

export interface ContainerDriverOptions {
  /** Root of all of this driver's state (e.g. /var/lib/nimbus). */
  stateDir: string;
  /** Default runtime; per-instance `spec.runtime` wins. Default 'auto' (runc where it works, else crun: RUNTIME_NAMES says why). */
  runtime?: RuntimeName | 'auto';
  /** Parent cgroup (cgroupfs) for all containers. Default '/nimbus'. */
  cgroupParent?: string;
  /** conmon binary. Default: found in PATH. */
  conmonPath?: string;
  /** The seccomp profile containers are confined by (seccomp.ts): a file in Docker's format, or `unconfined`. Default DEFAULT_SECCOMP_PROFILE. */
  seccompProfile?: string;
}

/** How long a pause may take to settle (the freezer FREEZING until every task stops) before it is an error. */
const PAUSE_SETTLE_MS = 10_000;

export class ContainerDriver implements InstanceDriver {
  readonly type = 'container' as const;
  readonly stateDir: string;
  private readonly conmonPathOpt: string | undefined;
  private readonly store: ContainerStore;
  private readonly cgroups: ContainerCgroups;
  private readonly exits: ContainerExits;
  private readonly creator: ContainerCreator;
  private readonly warm: WarmContainers;
  private readonly sessions: ContainerSessions;
  private readonly liveMove: ContainerLiveMove;
  private readonly logFiles: ContainerLogFiles;
  /** Log rotation of the containers whose conmon runs (container-logs.ts). */
  private readonly rotation = new LogRotation();
  /** Go fifos for warm containers, made a batch at a time (fifo-stock.ts). */
  private readonly fifos: FifoStock;
  /** conmon's sync fifos (conmon.ts: conmon started from a host shell), only for nimbusd to read. */
  private readonly syncFifos: FifoStock;

  constructor(opts: ContainerDriverOptions) {
    this.stateDir = path.resolve(opts.stateDir);
    // its bundles, rootfs mounts and runtime state are the host's: no member reads their paths (core/redaction.ts)
    addHostRoots([this.stateDir]);
    this.conmonPathOpt = opts.conmonPath;
    this.fifos = new FifoStock(path.join(this.stateDir, 'fifo-stock'));
    this.syncFifos = new FifoStock(path.join(this.stateDir, 'sync-fifo-stock'), '0600');
    const store = (this.store = new ContainerStore(this.stateDir));
    this.cgroups = new ContainerCgroups(store);
    this.exits = new ContainerExits(store, this.cgroups, this.rotation, () => this.adoptLogRotation());
    this.logFiles = new ContainerLogFiles(store, this.exits, this.rotation);
    const conmonPath = () => this.conmonPath();
    // bound late: a warm create goes through the creator, which hands the warm containers what it built from
    const create: ContainerCreator['create'] = (spec, o) => this.creator.create(spec, o);
    // one filter for the create and a warm container's claim, which compares configs
    const seccomp = seccompLoader(opts.seccompProfile);
    this.warm = new WarmContainers({ store, exits: this.exits, rotation: this.rotation, create, seccomp });
    this.creator = new ContainerCreator({
      store,
      warm: this.warm,
      rotation: this.rotation,
      fifos: this.fifos,
      syncFifos: this.syncFifos,
      conmonPath,
      delete: (id) => this.delete(id),
      defaultRuntime: opts.runtime ?? 'auto',
      seccomp,
      cgroupParent: '/' + (opts.cgroupParent ?? DEFAULT_CGROUP_PARENT).replace(/^\/+|\/+$/g, ''),
    });
    const state = (id: string) => this.state(id);
    this.sessions = new ContainerSessions({ store, state, conmonPath });
    this.liveMove = new ContainerLiveMove({ store, warm: this.warm, rotation: this.rotation, state, create, delete: (id, o) => this.delete(id, o) });
  }

  // ------------------------------------------------------------ what the parts hold

  /** A live move's checkpoint images (outside the container's directory: a restore in place re-makes that). */
  checkpointImages(id: string): string {
    return this.store.checkpointImages(id);
  }

  /** The host pids of the container's processes (its cgroup's), for `top`. */
  processIds(id: string): Promise<number[]> {
    return this.cgroups.processIds(id);
  }

  /**
   * What a copy (`docker cp`, agent/copy/container-copy.ts) goes through: the rootfs while it is
   * mounted, the container paths of its mounts, its process's user; undefined when this driver
   * holds nothing of the container.
   */
  async copyView(id: string): Promise<{ rootfs?: string; mountPoints: string[]; user: { uid: number; gid: number } } | undefined> {
    let config;
    try {
      config = await this.store.readConfig(id);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const rootfs = this.store.rootfs(id);
    return {
      ...((await isMounted(rootfs)) ? { rootfs } : {}),
      mountPoints: config.mounts.map((m) => path.posix.join('/', m.destination)),
      user: { uid: config.process.user.uid, gid: config.process.user.gid },
    };
  }

  /** Warnings recorded at create (e.g. clamped rlimits). */
  async warnings(id: string): Promise<string[]> {
    return (await this.store.meta(id)).warnings;
  }

  /** Which runtime a container uses. */
  async runtimeOf(id: string): Promise<RuntimeName> {
    return (await this.store.meta(id)).runtime;
  }

  /** The container's cgroup directories (for tests and diagnostics). */
  async cgroupPathsOf(id: string): Promise<CgroupPaths> {
    return this.cgroups.of(await this.store.meta(id));
  }

  private async conmonPath(): Promise<string> {
    const p = this.conmonPathOpt ?? (await findBinary('conmon'));
    if (!p) throw new Internal('conmon is not installed');
    return p;
  }

  // ------------------------------------------------------------ lifecycle

  /** extra.mounts: the request's volumes, binds and tmpfs (agent/volumes/container-mounts.ts), after the defaults. */
  async create(spec: InstanceSpec, extra: { mounts?: OciMount[] } = {}): Promise<RuntimeState> {
    return this.creator.create(spec, extra.mounts?.length ? { mounts: extra.mounts } : {});
  }

  /** A warm container, made ahead of demand (warm-containers.ts); claimWarm() gives it a real command later, start() the go-ahead. */
  createWarm(spec: InstanceSpec): Promise<RuntimeState> {
    return this.warm.create(spec);
  }

  /** A warm container given the request's configuration, or undefined when it cannot serve it (then created cold; warm-containers.ts). */
  claimWarm(spec: InstanceSpec): Promise<RuntimeState | undefined> {
    return this.warm.claim(spec);
  }

  /** A container made again from a live move's checkpoint, running at once (container-live-move.ts). */
  restore(spec: InstanceSpec, opts: { mounts?: OciMount[]; criu: string }): Promise<RuntimeState> {
    return this.liveMove.restore(spec, opts);
  }

  async start(id: string): Promise<RuntimeState> {
    const meta = await this.store.meta(id);
    if (this.warm.primed(id)) return this.warm.start(id, meta);
    await this.store.runtime(meta).start(id, meta.pid);
    meta.startedAt = new Date().toISOString();
    await this.store.saveMeta(meta);
    // `runc start` succeeded, so the process is running (or already exited): no second runtime call.
    const rec = await this.exits.record(id, meta);
    if (rec) return { status: 'stopped', exitCode: rec.exitCode, oomKilled: rec.oomKilled, finishedAt: rec.finishedAt, startedAt: meta.startedAt };
    return { status: 'running', startedAt: meta.startedAt, ...(meta.pid ? { pid: meta.pid } : {}) };
  }

  async kill(id: string, signal: string): Promise<void> {
    const meta = await this.store.meta(id);
    if (await this.exits.record(id, meta)) throw new Conflict(`container ${id} is not running`, { id });
    await this.store.runtime(meta).kill(id, signal);
  }

  async stop(id: string, timeoutSec: number, signal = 'SIGTERM'): Promise<RuntimeState> {
    const meta = await this.store.meta(id);
    const rt = this.store.runtime(meta);
    let st = await this.state(id);
    if (st.status === 'stopped' || st.status === 'unknown') return st;
    const tolerate = (e: unknown) => {
      if (!hasCode(e, 'Conflict') && !hasCode(e, 'NotFound')) throw e;
    };
    await rt.kill(id, signal).catch(tolerate);
    if (st.status === 'paused') await rt.resume(id).catch(tolerate);
    if (!(await this.exits.wait(id, timeoutSec * 1000))) {
      await rt.kill(id, 'SIGKILL').catch(tolerate);
      if (!(await this.exits.wait(id, 15_000))) throw new Internal(`container ${id} did not stop after SIGKILL`, { id });
    }
    st = await this.state(id);
    return st;
  }

  async pause(id: string): Promise<void> {
    const meta = await this.store.meta(id);
    const rt = this.store.runtime(meta);
    await rt.pause(id);
    // runc returns once the freezer says FROZEN; crun 1.8.1 on a v1 freezer returns after asking,
    // and its state reads running while the cgroup is still FREEZING (a loaded CI host saw it):
    // paused means paused when this returns, as `docker pause` does
    const deadline = Date.now() + PAUSE_SETTLE_MS;
    for (;;) {
      const { status } = await rt.state(id);
      if (status === 'paused') return;
      if (status !== 'running' || Date.now() > deadline) throw new Conflict(`container ${id.slice(0, 12)} did not pause (it is ${status})`, { id, status });
      await sleep(10);
    }
  }

  async unpause(id: string): Promise<void> {
    const meta = await this.store.meta(id);
    // runc refuses to resume a container that is not paused, crun 1.8.1 succeeds: one answer for both
    const { status } = await this.state(id);
    if (status !== 'paused') throw new Conflict(`container ${id.slice(0, 12)} is not paused (it is ${status})`, { id, status });
    await this.store.runtime(meta).resume(id);
  }

  async state(id: string): Promise<RuntimeState> {
    const meta = await this.store.meta(id);
    const base: RuntimeState = { status: 'unknown' };
    if (meta.startedAt) base.startedAt = meta.startedAt;
    const stopped = (rec: ExitRecord): RuntimeState => ({
      ...base,
      status: 'stopped',
      exitCode: rec.exitCode,
      oomKilled: rec.oomKilled,
      finishedAt: rec.finishedAt,
    });
    // dumped for a live move: conmon's exit file is the dump's kill, not an exit of the container
    if (meta.checkpointed) return base;
    const rec = await this.exits.record(id, meta);
    if (rec) return stopped(rec);
    const rt = this.store.runtime(meta);
    let s;
    try {
      s = await rt.state(id);
    } catch (e) {
      if (!hasCode(e, 'NotFound')) throw e;
      return base;
    }
    if (s.status === 'stopped') {
      // the process is gone; conmon writes the exit file a moment later
      if (await this.exits.wait(id, 2000)) {
        const r2 = await this.exits.record(id, meta);
        if (r2) return stopped(r2);
      }
      return { ...base, status: 'stopped' };
    }
    // a primed stub runs in the runtime's eyes, but the container has not been started
    const out: RuntimeState = { ...base, status: s.status === 'creating' || (s.status === 'running' && this.warm.primed(id)) ? 'created' : s.status };
    if (s.pid > 0) out.pid = s.pid;
    return out;
  }

  // ------------------------------------------------------------ sessions, logs, stats, live moves (their own files)

  /** Attach to the main process through its conmon: output from now on, and its stdin when asked. */
  attach(id: string, req: AttachRequest): Promise<AttachSession> {
    return this.sessions.attach(id, req);
  }

  /** The main process's terminal's new size (it gets SIGWINCH); Conflict for a container without a terminal. */
  resize(id: string, rows: number, cols: number): Promise<void> {
    return this.sessions.resize(id, rows, cols);
  }

  exec(id: string, req: ExecRequest): Promise<ExecSession> {
    return this.sessions.exec(id, req);
  }

  logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return this.logFiles.read(id, opts);
  }

  /** A stopped container's log generations as a tar, within its log limits (log-transfer.ts: a cold move carries them). */
  exportLogs(id: string): Promise<Readable> {
    return this.logFiles.export(id);
  }

  /** A moved container's earlier log, before its first start here: checked, and placed before the generation conmon opened. */
  importLogs(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    return this.logFiles.import(id, bytes);
  }

  stats(id: string): Promise<InstanceStats> {
    return this.cgroups.stats(id);
  }

  /** A live move's checkpoint of a running runc container (container-live-move.ts). */
  checkpoint(id: string, opts: { criu: string; netnsPath?: string }): Promise<{ bytes: number; ms: number }> {
    return this.liveMove.checkpoint(id, opts);
  }

  // ------------------------------------------------------------ delete

  /** keepCheckpoint: a restore in place follows (a rolled-back live move), from the images kept. */
  async delete(id: string, opts: { keepCheckpoint?: boolean } = {}): Promise<void> {
    const { store } = this;
    const dir = store.dir(id);
    // a live move's images are rare: looked for in this turn (an lstat), removed through the pool when there
    const checkpoint = path.dirname(store.checkpointImages(id));
    if (!opts.keepCheckpoint && existsSync(checkpoint)) await rm(checkpoint, { recursive: true, force: true });
    if (!(await exists(dir))) return;
    let meta: ContainerMeta | undefined;
    try {
      meta = await store.meta(id);
    } catch {
      meta = undefined; // a create that failed early: only files and maybe a mount
    }
    const conmonPid = await readPidFile(path.join(dir, 'conmon.pid'));
    if (meta) {
      const rt = store.runtime(meta);
      // Empty the memory cgroup while it still exists (`runc delete` removes it): a removed
      // one with page cache still charged to it lingers in the kernel (cgroups.ts).
      const cgroups = await this.cgroups.of(meta);
      const ended = await this.endInit(id, meta, cgroups, conmonPid);
      if (ended) await releaseCgroupMemory(cgroups);
      // nothing of it runs (its cgroups hold no process; its own pid namespace: oci-spec.ts):
      // runc's state directory is all `runc delete` would remove besides the cgroups, which go
      // below. Not on `ended` alone: a container a killed daemon's conmon went on to create has
      // no pid in its meta, and its init waits in the cgroup.
      const forgotten = ended && cgroupEmpty(cgroups) && (await rt.forgetStopped(id));
      if (!forgotten) {
        try {
          await rt.delete(id, true);
        } catch (e) {
          if (!hasCode(e, 'NotFound')) {
            // e.g. a frozen container: thaw and retry once
            await rt.resume(id).catch(() => undefined);
            await rt.delete(id, true).catch((e2: unknown) => {
              if (!hasCode(e2, 'NotFound')) throw e2;
            });
          }
        }
      }
    }
    // conmon sees the container go, writes the exit file and leaves; help it if it lingers
    if (conmonPid !== undefined && (await isConmonFor(conmonPid, id))) {
      for (let i = 0; i < 60 && processAlive(conmonPid); i++) await sleep(50);
      if (processAlive(conmonPid)) {
        try {
          process.kill(conmonPid, 'SIGKILL');
        } catch {
          /* gone */
        }
        for (let i = 0; i < 40 && processAlive(conmonPid); i++) await sleep(25);
      }
    }
    this.rotation.stop(id);
    await unmountAll(store.rootfs(id));
    if (meta) await removeCgroup(await this.cgroups.of(meta));
    await removeStateFile(store.exitFile(id));
    const left = await removeTreeUnlessMounted(dir);
    if (left.length) throw new Internal(`refusing to remove container ${id}: still mounted (${left.length} mount${left.length === 1 ? '' : 's'} in its directory)`, { id }, { adminMessage: `refusing to remove ${dir}: still mounted: ${left.join(', ')}` });
    this.exits.forget(id);
    this.warm.forget(id);
    store.forget(id);
  }

  /**
   * SIGKILL the container's init (its pid namespace goes with it) and wait until it is gone;
   * true once no process of the container runs. Not for a frozen container (the signal would
   * wait for a thaw: `runc delete` deals with that one) and only while the pid is still the
   * one conmon watches (its child), not a pid reused since.
   */
  private async endInit(id: string, meta: ContainerMeta, cgroups: CgroupPaths, conmonPid: number | undefined): Promise<boolean> {
    if (await this.exits.record(id, meta)) return true;
    const pid = meta.pid;
    if (!pid || conmonPid === undefined || parentPid(pid) !== conmonPid) return !pid || !processAlive(pid);
    if (await readFrozen(cgroups)) return false;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
    for (let i = 0; i < 400; i++) {
      if (!processAlive(pid)) return true;
      await sleep(5);
    }
    return false;
  }

  list(): Promise<string[]> {
    return this.store.list();
  }

  onExit(listener: (id: string) => void): void {
    this.exits.onExit(listener);
  }

  /** Stop watching (containers keep running: they belong to conmon). */
  close(): void {
    this.exits.close();
    this.rotation.close();
    this.fifos.clear();
    this.syncFifos.clear();
  }

  /** A daemon started again: rotation for the containers whose conmon still runs (the exit watcher's start calls it). */
  adoptLogRotation(): Promise<void> {
    return this.logFiles.adoptRotation();
  }
}

// ------------------------------------------------------------------ registry entry

export interface ContainerDriverContext {
  stateDir: string;
  runtime?: RuntimeName | 'auto';
  cgroupParent?: string;
}

export const containerDriverImplementation: Implementation<InstanceDriver, ContainerDriverContext> = {
  name: 'container',
  async probe(ctx) {
    if (!(await findBinary('conmon'))) return 'conmon is not installed';
    if (ctx.runtime && ctx.runtime !== 'auto') return probeRuntime(ctx.runtime);
    const reasons: string[] = [];
    for (const n of RUNTIME_NAMES) {
      const r = await probeRuntime(n);
      if (r === undefined) return undefined;
      reasons.push(r);
    }
    return `no usable OCI runtime: ${reasons.join('; ')}`;
  },
  create(ctx) {
    const opts: ContainerDriverOptions = { stateDir: ctx.stateDir };
    if (ctx.runtime) opts.runtime = ctx.runtime;
    if (ctx.cgroupParent) opts.cgroupParent = ctx.cgroupParent;
    return new ContainerDriver(opts);
  },
};
