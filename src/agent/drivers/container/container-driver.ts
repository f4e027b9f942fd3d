/**
 * The container InstanceDriver: an OCI bundle per container, run by runc or crun
 * under conmon, which monitors it independently of this process. All state lives
 * in files, so a new driver on the same stateDir (a restarted daemon) picks up
 * where the old one stopped:
 *
 *   <stateDir>/containers/<id>/meta.json          what we decided at create
 *   <stateDir>/containers/<id>/bundle/config.json the OCI spec; bundle/rootfs is the mount point
 *   <stateDir>/containers/<id>/{container,conmon}.pid, ctr.log (k8s-file), conmon.err
 *   <stateDir>/containers/<id>/persist/           conmon's persist dir (exit, oom)
 *   <stateDir>/containers/<id>/exit.json          exit code + OOM verdict, once observed
 *   <stateDir>/containers/<id>/warm/entry         a warm container's start script (warm-start.ts)
 *   <stateDir>/containers/<id>/warm/go            the fifo its stub waits on until the container's start
 *   <stateDir>/containers/<id>/criu.conf          CRIU's configuration for its checkpoint (checkpoint.ts)
 *   <stateDir>/checkpoints/<id>/images/            a live move's checkpoint (out at the source, in at the destination)
 *   <stateDir>/exits/<id>                          conmon's exit file
 *   <stateDir>/runtime/<runc|crun>/                the runtime's --root
 */
import { randomBytes } from 'node:crypto';
import { close, constants as fsConstants, existsSync, open, watch, write, type FSWatcher } from 'node:fs';
import { promisify } from 'node:util';
import { access, copyFile, mkdir, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AlreadyExists, Conflict, Internal, InvalidArgument, NotFound, hasCode } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import type { Implementation } from '../../../core/registry.js';
import {
  cgroupPaths,
  DEFAULT_CGROUP_PARENT,
  detectCgroupLayout,
  readCgroupStats,
  readFrozen,
  readOomKills,
  releaseCgroupMemory,
  removeCgroup,
  type CgroupLayout,
  type CgroupPaths,
} from '../../cgroups/cgroups.js';
import { isMounted, mountAll, mountsUnder, unmountAll } from '../../snapshots/mount.js';
import {
  badTerminalSize,
  checkedResize,
  type AttachRequest,
  type AttachSession,
  type ExecRequest,
  type ExecSession,
  type InstanceDriver,
  type InstanceSpec,
  type InstanceStats,
  type LogRecord,
  type RuntimeState,
} from '../instance-driver.js';
import { Readable, Writable } from 'node:stream';
import type { IPty } from 'node-pty';
import {
  isConmonFor,
  launchConmon,
  readExitFile,
  readPidFile,
} from './conmon.js';
import { DEFAULT_LOG_LIMITS, loadLogLimits, prepareLogFiles, readK8sLog, resolveLogLimits, saveLogLimits } from './container-logs.js';
import { LogRotation } from './log-rotation.js';
import { exportLogs, importLogs } from './log-transfer.js';
import type { TreeImportResult } from '../../agent.js';
import { buildOciSpec, mergeEnv, readHardLimits, readUserDb, resolveUser, type OciMount, type OciSpec, type UserDb } from './oci-spec.js';
import { run } from '../../../core/exec.js';
import { parentPid, processAlive } from '../../../core/proc.js';
import { removeStateFile, replaceStateFile, writeStateFile } from '../../../core/state-files.js';
import { WARM_GO_FIFO, WARM_SCRIPT_DIR, WARM_STUB_ARGS, comparableJson, limitsOf, stubUnsuitable, warmCompatible, warmMounts, warmScript } from './warm-start.js';
import { findStaticBusybox } from './static-busybox.js';
import { execThroughConmon } from './conmon-exec.js';
import { OciRuntime, RUNTIME_NAMES, chooseRuntime, findBinary, probeRuntime, requestFault, type RuntimeName } from './oci-runtime.js';
import { checkExecutable } from './rootfs-lookup.js';
import { attachConmon, resizeConmonTerminal } from './conmon-attach.js';
import { CRIU_CONFIG_ANNOTATION, checkpointArgs, checkpointFailure, criuConfig, criuLogErrors, externalNetnsLine, readRestoreHints, treeBytes, writeRestoreHints } from './checkpoint.js';
import { runtimeMessage } from './oci-runtime.js';
import { FifoStock } from './fifo-stock.js';
import { deferredIterable } from '../../../core/streams.js';

// the callback forms, promisified: lighter than FileHandle for one open, write and close
const fsOpen = promisify(open);
const fsWrite = promisify(write) as (fd: number, data: string) => Promise<unknown>;
const fsClose = promisify(close);

const log = logger('agent.drivers.container');

export interface ContainerDriverOptions {
  /** Root of all of this driver's state (e.g. /var/lib/nimbus). */
  stateDir: string;
  /** Default runtime; per-instance `spec.runtime` wins. Default 'auto' (runc where it works, else crun: RUNTIME_NAMES says why). */
  runtime?: RuntimeName | 'auto';
  /** Parent cgroup (cgroupfs) for all containers. Default '/nimbus'. */
  cgroupParent?: string;
  /** conmon binary. Default: found in PATH. */
  conmonPath?: string;
}

interface ContainerMeta {
  id: string;
  name: string;
  runtime: RuntimeName;
  runtimePath: string;
  cgroupsPath: string;
  createdAt: string;
  startedAt?: string;
  pid?: number;
  warnings: string[];
  /** Created ahead of demand with the start stub and not claimed yet (warm-start.ts). */
  warm?: boolean;
  /** The main process's stdin is open to attach (conmon -i). */
  stdin?: 'open' | 'once';
  /** On a terminal (conmon -t). */
  terminal?: boolean;
  /** Checkpointed for a live move: its process is in the images, not running (state: unknown, no exit to record). */
  checkpointed?: boolean;
}

interface ExitRecord {
  exitCode: number;
  finishedAt: string;
  oomKilled: boolean;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  return replaceStateFile(file, JSON.stringify(value, null, 1));
}

export class ContainerDriver implements InstanceDriver {
  readonly type = 'container' as const;
  readonly stateDir: string;
  private readonly defaultRuntime: RuntimeName | 'auto';
  private readonly cgroupParent: string;
  private readonly conmonPathOpt: string | undefined;
  private layoutP: Promise<CgroupLayout> | undefined;
  private readonly listeners: ((id: string) => void)[] = [];
  private watcher: FSWatcher | undefined;
  private readonly notified = new Set<string>();
  /** What a warm container was built from, kept so a claim need not read it back (a restart forgets: warm ones are destroyed then). */
  private readonly warmFacts = new Map<string, { config: OciSpec | string; userDb: UserDb }>();
  /** meta.json as last written by this process: only it writes them, so reads need not go to disk. */
  private readonly metas = new Map<string, ContainerMeta>();
  /** Log rotation of the containers whose conmon runs (container-logs.ts). */
  private readonly rotation = new LogRotation();
  /** Go fifos for warm containers, made a batch at a time (fifo-stock.ts). */
  private readonly fifos: FifoStock;
  /** conmon's sync fifos (conmon.ts: conmon started from a host shell), only for nimbusd to read. */
  private readonly syncFifos: FifoStock;

  constructor(opts: ContainerDriverOptions) {
    this.stateDir = path.resolve(opts.stateDir);
    this.defaultRuntime = opts.runtime ?? 'auto';
    this.cgroupParent = '/' + (opts.cgroupParent ?? DEFAULT_CGROUP_PARENT).replace(/^\/+|\/+$/g, '');
    this.conmonPathOpt = opts.conmonPath;
    this.fifos = new FifoStock(path.join(this.stateDir, 'fifo-stock'));
    this.syncFifos = new FifoStock(path.join(this.stateDir, 'sync-fifo-stock'), '0600');
  }

  // ------------------------------------------------------------ paths and helpers

  private get containersDir(): string {
    return path.join(this.stateDir, 'containers');
  }
  private get exitsDir(): string {
    return path.join(this.stateDir, 'exits');
  }
  private dir(id: string): string {
    if (!ID_RE.test(id)) throw new InvalidArgument(`invalid container id ${JSON.stringify(id)}`);
    return path.join(this.containersDir, id);
  }
  private bundle(id: string): string {
    return path.join(this.dir(id), 'bundle');
  }
  private rootfs(id: string): string {
    return path.join(this.bundle(id), 'rootfs');
  }
  private exitFile(id: string): string {
    return path.join(this.exitsDir, id);
  }
  /** A live move's checkpoint images (outside the container's directory: a restore in place re-makes that). */
  checkpointImages(id: string): string {
    if (!ID_RE.test(id)) throw new InvalidArgument(`invalid container id ${JSON.stringify(id)}`);
    return path.join(this.stateDir, 'checkpoints', id, 'images');
  }
  private logPath(id: string): string {
    return path.join(this.dir(id), 'ctr.log');
  }
  private runtime(name: RuntimeName, binary: string): OciRuntime {
    return new OciRuntime(name, binary, path.join(this.stateDir, 'runtime', name));
  }
  private layout(): Promise<CgroupLayout> {
    this.layoutP ??= detectCgroupLayout();
    return this.layoutP;
  }
  private async cgroups(meta: ContainerMeta): Promise<CgroupPaths> {
    return cgroupPaths(await this.layout(), meta.cgroupsPath);
  }

  /** The host pids of the container's processes (its cgroup's), for `top`. */
  async processIds(id: string): Promise<number[]> {
    const cg = await this.cgroups(await this.meta(id));
    for (const dir of [cg.v1['pids'], cg.v1['memory'], cg.unified].filter((d): d is string => d !== undefined)) {
      try {
        return (await readFile(path.join(dir, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean).map(Number);
      } catch {
        /* not in this hierarchy: the next */
      }
    }
    return [];
  }

  /**
   * What a copy (`docker cp`, agent/copy/container-copy.ts) goes through: the rootfs while it is
   * mounted, the container paths of its mounts, its process's user; undefined when this driver
   * holds nothing of the container.
   */
  async copyView(id: string): Promise<{ rootfs?: string; mountPoints: string[]; user: { uid: number; gid: number } } | undefined> {
    let config: OciSpec;
    try {
      config = JSON.parse(await readFile(path.join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const rootfs = this.rootfs(id);
    return {
      ...((await isMounted(rootfs)) ? { rootfs } : {}),
      mountPoints: config.mounts.map((m) => path.posix.join('/', m.destination)),
      user: { uid: config.process.user.uid, gid: config.process.user.gid },
    };
  }

  /** A copy of the container's meta: this process's last write, or the file (a daemon started again). */
  private async meta(id: string): Promise<ContainerMeta> {
    const dir = this.dir(id);
    let m = this.metas.get(id);
    if (!m) {
      try {
        m = JSON.parse(await readFile(path.join(dir, 'meta.json'), 'utf8')) as ContainerMeta;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`container ${id} not found`, { id });
        throw e;
      }
      this.metas.set(id, m);
    }
    return { ...m, warnings: [...m.warnings] };
  }
  private async saveMeta(meta: ContainerMeta): Promise<void> {
    await writeJsonAtomic(path.join(this.dir(meta.id), 'meta.json'), meta);
    this.metas.set(meta.id, { ...meta, warnings: [...meta.warnings] });
  }

  /** Warnings recorded at create (e.g. clamped rlimits). */
  async warnings(id: string): Promise<string[]> {
    return (await this.meta(id)).warnings;
  }

  /** Which runtime a container uses. */
  async runtimeOf(id: string): Promise<RuntimeName> {
    return (await this.meta(id)).runtime;
  }

  /** The container's cgroup directories (for tests and diagnostics). */
  async cgroupPathsOf(id: string): Promise<CgroupPaths> {
    return this.cgroups(await this.meta(id));
  }

  private async conmonPath(): Promise<string> {
    const p = this.conmonPathOpt ?? (await findBinary('conmon'));
    if (!p) throw new Internal('conmon is not installed');
    return p;
  }

  // ------------------------------------------------------------ lifecycle

  /** extra.mounts: the request's volumes, binds and tmpfs (agent/volumes/container-mounts.ts), after the defaults. */
  async create(spec: InstanceSpec, extra: { mounts?: OciMount[] } = {}): Promise<RuntimeState> {
    return this.createWith(spec, extra.mounts?.length ? { mounts: extra.mounts } : {});
  }

  /**
   * Create a warm container ahead of demand: everything `create` does, with the start
   * stub as its process (warm-start.ts), and the runtime's start too: the stub runs,
   * blocked on its go fifo. spec.process supplies the user; its command is replaced.
   * claimWarm() gives it a real command later, start() the go-ahead.
   */
  async createWarm(spec: InstanceSpec): Promise<RuntimeState> {
    const busybox = await findStaticBusybox();
    if (!busybox) throw new Internal('warm start needs a static busybox on the host (Debian busybox-static)');
    return this.createWith(
      { ...spec, process: { ...spec.process, args: WARM_STUB_ARGS, env: [], cwd: '/' } },
      { mounts: warmMounts(busybox, this.warmDir(spec.id)), warm: true },
    );
  }

  /** runc hands CRIU the container's own configuration file at a checkpoint (absent: ignored); see checkpoint.ts. */
  private withCriuConfig(id: string, runtimeName: string, config: OciSpec): void {
    if (runtimeName === 'runc') config.annotations = { ...config.annotations, [CRIU_CONFIG_ANNOTATION]: path.join(this.dir(id), 'criu.conf') };
  }

  /**
   * Give a warm container its real configuration: its state when it was taken (the
   * script written, limits applied with `runc update`, config.json now the real one),
   * undefined when the request's config differs from the warm one in more than the command,
   * environment, working directory and limits (the caller then creates it cold).
   */
  async claimWarm(spec: InstanceSpec): Promise<RuntimeState | undefined> {
    const id = spec.id;
    const meta = await this.meta(id);
    const busybox = await findStaticBusybox();
    if (!meta.warm || !busybox) return undefined;
    // warm containers' conmons run without a terminal or stdin: such a request is made cold
    if (spec.process.terminal || spec.process.stdin) return undefined;
    const logLimits = resolveLogLimits(spec.log);
    if (logLimits.maxSizeBytes !== DEFAULT_LOG_LIMITS.maxSizeBytes) return undefined; // on conmon's command line since the warm create
    const configFile = path.join(this.bundle(id), 'config.json');
    // the warm config as comparableJson when this process made it, else as the bundle has it
    const facts = this.warmFacts.get(id) ?? {
      config: JSON.parse(await readFile(configFile, 'utf8')) as OciSpec,
      userDb: await readUserDb(this.rootfs(id)),
    };
    const warmConfig = facts.config;
    const { config, warnings } = buildOciSpec(
      spec,
      { hardLimits: await readHardLimits(), cgroupsPath: meta.cgroupsPath, userDb: facts.userDb },
      { mounts: [...this.etcMounts(id), ...warmMounts(busybox, this.warmDir(id))] },
    );
    // a program the image lacks is the caller's error here too, not an exit 127 after the start
    this.checkProgram(id, config);
    const unsuitable = stubUnsuitable(config.process);
    if (unsuitable || !warmCompatible(warmConfig, config)) {
      log.debug('warm container not usable for this request', { id, reason: unsuitable ?? 'config differs' });
      return undefined;
    }
    this.withCriuConfig(id, meta.runtime, config); // as its runtime has it since the warm create
    // side by side: each can wait on the disk's journal in the thread pool
    await Promise.all([
      this.writeEtc(id, spec, { claim: true }),
      writeStateFile(path.join(this.warmDir(id), 'entry'), warmScript(config.process)),
      writeStateFile(configFile, JSON.stringify(config, null, 1)),
    ]);
    const limits = limitsOf(config);
    if (limits) await this.runtime(meta.runtime, meta.runtimePath).update(id, limits);
    if (logLimits.maxFiles !== DEFAULT_LOG_LIMITS.maxFiles) {
      await saveLogLimits(this.logPath(id), logLimits);
      this.rotation.setMaxFiles(id, logLimits.maxFiles);
    }
    delete meta.warm;
    this.warmFacts.delete(id);
    await this.saveMeta({ ...meta, name: spec.name, warnings });
    return { status: 'created', ...(meta.pid ? { pid: meta.pid } : {}) };
  }

  /** The process's program must be in the rootfs (rootfs-lookup.ts); mounts over it are not looked into. */
  private checkProgram(id: string, config: OciSpec): void {
    const over = config.mounts.map((m) => m.destination.replace(/\/+$/, ''));
    checkExecutable(this.rootfs(id), config.process, (p) => over.some((d) => p === d || p.startsWith(`${d}/`)));
  }

  private warmDir(id: string): string {
    return path.join(this.dir(id), 'warm');
  }
  private goFifo(id: string): string {
    return path.join(this.warmDir(id), WARM_GO_FIFO);
  }
  /** A warm container's stub runs, waiting on its go fifo: created, not started, whatever the runtime says. */
  private primed(id: string): boolean {
    return existsSync(this.goFifo(id));
  }

  /** /etc/hosts, /etc/resolv.conf and /etc/hostname are the container's own files, bind-mounted (as Docker does). */
  private etcMounts(id: string): OciMount[] {
    const dir = path.join(this.dir(id), 'etc');
    const rw = ['rbind', 'rprivate', 'nosuid', 'nodev', 'noexec'];
    return ['hosts', 'resolv.conf', 'hostname'].map((f) => ({ destination: `/etc/${f}`, type: 'bind', source: path.join(dir, f), options: rw }));
  }

  /**
   * Written in place (truncated, not replaced): a bind mount holds the inode. At a claim the
   * directory is there and the hostname is the one written at warm create (a claim keeps the default).
   */
  private async writeEtc(id: string, spec: InstanceSpec, opts: { claim?: boolean } = {}): Promise<void> {
    const dir = path.join(this.dir(id), 'etc');
    if (!opts.claim) await mkdir(dir, { recursive: true });
    const hostname = spec.hostname ?? id.slice(0, 12);
    const etc = spec.etc ?? { hosts: `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n`, resolvConf: '' };
    await Promise.all([
      writeStateFile(path.join(dir, 'hosts'), etc.hosts),
      writeStateFile(path.join(dir, 'resolv.conf'), etc.resolvConf),
      opts.claim && spec.hostname === undefined ? undefined : writeStateFile(path.join(dir, 'hostname'), `${hostname}\n`),
    ]);
  }

  /**
   * A container made from a checkpoint (a live move): as create, but conmon runs the runtime's
   * restore from the images (checkpointImages(id)) with this CRIU, and it is running at once.
   * Where a checkpointed copy of it is still here (a move rolled back), that copy's runtime
   * state goes first.
   */
  async restore(spec: InstanceSpec, opts: { mounts?: OciMount[]; criu: string }): Promise<RuntimeState> {
    if (await exists(this.dir(spec.id))) {
      const meta = await this.meta(spec.id);
      if (!meta.checkpointed) throw new AlreadyExists(`container ${spec.id} already exists`, { id: spec.id });
      await this.delete(spec.id, { keepCheckpoint: true });
    }
    // made from the warm pool: the stub's mounts are in its mount table, so the restore needs them too
    const warm = (await readRestoreHints(this.checkpointImages(spec.id))).warmMounts === true;
    let mounts = opts.mounts ?? [];
    if (warm) {
      const busybox = await findStaticBusybox();
      if (!busybox) throw new Internal('this container came from a warm pool: its restore needs a static busybox on the host (Debian busybox-static)');
      mounts = [...warmMounts(busybox, this.warmDir(spec.id)), ...mounts];
    }
    return this.createWith(spec, { ...(mounts.length ? { mounts } : {}), restore: { criu: opts.criu, warm } });
  }

  private async createWith(spec: InstanceSpec, opts: { mounts?: OciMount[]; warm?: boolean; restore?: { criu: string; warm?: boolean } } = {}): Promise<RuntimeState> {
    const id = spec.id;
    const dir = this.dir(id);
    if (spec.rootfs.length === 0) throw new InvalidArgument('rootfs must hold at least one mount', { id });
    const logLimits = resolveLogLimits(spec.log);
    await mkdir(this.containersDir, { recursive: true, mode: 0o700 });
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExists(`container ${id} already exists`, { id });
      throw e;
    }
    try {
      const runtimeName = await chooseRuntime((spec.runtime as RuntimeName | undefined) ?? this.defaultRuntime);
      const runtimePath = await findBinary(runtimeName);
      if (!runtimePath) throw new Internal(`${runtimeName} disappeared`);
      const rootfs = this.rootfs(id);
      await mkdir(rootfs, { recursive: true });
      await mkdir(path.join(dir, 'persist'));
      await mkdir(path.join(dir, 'sock'));
      // a restored warm-pool container's stub directory: mounted again (its script was read long ago)
      if (opts.restore?.warm) await mkdir(this.warmDir(id), { mode: 0o755 });
      if (opts.warm) {
        await mkdir(this.warmDir(id), { mode: 0o755 });
        // readable by the container's user (the stub may not be root), written only by us
        await this.fifos.place(path.join(this.warmDir(id), WARM_GO_FIFO));
      }
      await mkdir(this.exitsDir, { recursive: true });
      await removeStateFile(this.exitFile(id));
      await mountAll(spec.rootfs, rootfs);
      await this.writeEtc(id, spec);

      const cgroupsPath = `${this.cgroupParent}/${id}`;
      const userDb = await readUserDb(rootfs);
      const { config, warnings } = buildOciSpec(spec, {
        hardLimits: await readHardLimits(),
        cgroupsPath,
        userDb,
      }, { mounts: [...this.etcMounts(id), ...(opts.mounts ?? [])] });
      if (opts.warm) this.warmFacts.set(id, { config: comparableJson(config), userDb });
      else if (!opts.restore) this.checkProgram(id, config);
      this.withCriuConfig(id, runtimeName, config);
      if (!opts.warm) for (const w of warnings) log.warn('bundle adjusted', { id, warning: w });
      await writeFile(path.join(this.bundle(id), 'config.json'), JSON.stringify(config, null, 1));
      const meta: ContainerMeta = {
        id,
        name: spec.name,
        runtime: runtimeName,
        runtimePath,
        cgroupsPath,
        createdAt: new Date().toISOString(),
        warnings,
        ...(opts.warm ? { warm: true } : {}),
        ...(spec.process.stdin ? { stdin: spec.process.stdin } : {}),
        ...(spec.process.terminal ? { terminal: true } : {}),
      };
      await this.saveMeta(meta);
      const rt = this.runtime(runtimeName, runtimePath);
      await mkdir(rt.root, { recursive: true, mode: 0o700 });
      await prepareLogFiles(this.logPath(id));
      await saveLogLimits(this.logPath(id), logLimits);
      await this.rotation.ready();
      this.rotation.start(id, this.logPath(id), logLimits.maxFiles);
      const launched = await launchConmon({
        conmonPath: await this.conmonPath(),
        id,
        name: spec.name || id,
        runtimePath,
        runtimeArgs: [`--root=${rt.root}`, ...(opts.restore ? [`--criu=${opts.restore.criu}`] : [])],
        ...(opts.restore ? { restore: this.checkpointImages(id) } : {}),
        bundle: this.bundle(id),
        containerPidFile: path.join(dir, 'container.pid'),
        conmonPidFile: path.join(dir, 'conmon.pid'),
        logPath: this.logPath(id),
        logSizeMax: logLimits.maxSizeBytes,
        exitDir: this.exitsDir,
        socketDir: path.join(dir, 'sock'),
        persistDir: path.join(dir, 'persist'),
        stderrPath: path.join(dir, 'conmon.err'),
        placeFifo: (dest) => this.syncFifos.place(dest),
        ...(spec.process.terminal ? { terminal: true } : {}),
        ...(spec.process.stdin ? { stdin: spec.process.stdin } : {}),
      });
      meta.pid = launched.pid;
      // the runtime's start now, off the request path: the stub then waits on its go fifo
      if (opts.warm) await rt.start(id, launched.pid);
      if (opts.restore) meta.startedAt = new Date().toISOString();
      await this.saveMeta(meta);
      // restored: running already, its images no longer needed
      if (opts.restore) {
        await rm(path.dirname(this.checkpointImages(id)), { recursive: true, force: true });
        return { status: 'running', pid: launched.pid, startedAt: meta.startedAt! };
      }
      return { status: 'created', pid: launched.pid };
    } catch (e) {
      // a restore's own words are in CRIU's log, which goes with the container: said in the error
      const criu = opts.restore ? await criuLogErrors(path.join(this.bundle(id), 'restore.log')) : [];
      await this.delete(id).catch((err: unknown) => log.error('cleanup after failed create', { id, error: err }));
      if (criu.length) throw new Internal(`restore of container ${id.slice(0, 12)} failed: ${criu.join('; ')}`, { id, criu }, { cause: e });
      // the runtime refusing what the request asked for is the caller's error, with its message
      throw requestFault(e) ?? e;
    }
  }

  async start(id: string): Promise<RuntimeState> {
    const meta = await this.meta(id);
    if (this.primed(id)) {
      const releasedAt = await this.releaseStub(id, meta);
      if (releasedAt === undefined) {
        const rec = await this.exitRecord(id, meta);
        throw new Conflict(`container ${id} cannot start: its process ${rec ? `exited with ${rec.exitCode}` : 'is not waiting to start'}`, { id });
      }
      // Nothing written: the fifo's absence records the start (the control plane keeps the time),
      // and the stub, told to go only now, has no exit to look for yet.
      return { status: 'running', startedAt: releasedAt, ...(meta.pid ? { pid: meta.pid } : {}) };
    }
    await this.runtime(meta.runtime, meta.runtimePath).start(id, meta.pid);
    meta.startedAt = new Date().toISOString();
    await this.saveMeta(meta);
    // `runc start` succeeded, so the process is running (or already exited): no second runtime call.
    const rec = await this.exitRecord(id, meta);
    if (rec) return { status: 'stopped', exitCode: rec.exitCode, oomKilled: rec.oomKilled, finishedAt: rec.finishedAt, startedAt: meta.startedAt };
    return { status: 'running', startedAt: meta.startedAt, ...(meta.pid ? { pid: meta.pid } : {}) };
  }

  /**
   * The go-ahead for a primed container's stub: one line into its go fifo. The open
   * succeeds only while the stub is blocked opening the other end (ENXIO otherwise), so
   * a stub still on its way there is waited for, briefly. Resolves with the time of the go-ahead
   * (taken just before the line is written: the command's start, not our return after it, which a
   * busy event loop can hold, and not after a fast command's exit), or undefined if it never gets there.
   */
  private async releaseStub(id: string, meta: ContainerMeta, timeoutMs = 5000): Promise<string | undefined> {
    const fifo = this.goFifo(id);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      let fd: number;
      try {
        // In the thread pool, as the write below: each wakes the stub, and a woken task may take
        // the CPU from the thread that woke it, which should not be the event loop's in a burst.
        fd = await fsOpen(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENXIO' || performance.now() > deadline) return undefined;
        if (await this.exitRecord(id, meta)) return undefined;
        await sleep(2);
        continue;
      }
      try {
        // The name first: gone, the container counts as started (primed()) and nothing can start
        // it twice; a crash before the line is written leaves a stub that reads end-of-file, finds
        // no fifo and exits 125. (An unlink can wait on the disk's journal, too.)
        await removeStateFile(fifo);
        const at = new Date().toISOString();
        await fsWrite(fd, '\n');
        return at;
      } finally {
        await fsClose(fd);
      }
    }
  }

  async kill(id: string, signal: string): Promise<void> {
    const meta = await this.meta(id);
    if (await this.exitRecord(id, meta)) throw new Conflict(`container ${id} is not running`, { id });
    await this.runtime(meta.runtime, meta.runtimePath).kill(id, signal);
  }

  async stop(id: string, timeoutSec: number, signal = 'SIGTERM'): Promise<RuntimeState> {
    const meta = await this.meta(id);
    const rt = this.runtime(meta.runtime, meta.runtimePath);
    let st = await this.state(id);
    if (st.status === 'stopped' || st.status === 'unknown') return st;
    const tolerate = (e: unknown) => {
      if (!hasCode(e, 'Conflict') && !hasCode(e, 'NotFound')) throw e;
    };
    await rt.kill(id, signal).catch(tolerate);
    if (st.status === 'paused') await rt.resume(id).catch(tolerate);
    if (!(await this.waitExit(id, timeoutSec * 1000))) {
      await rt.kill(id, 'SIGKILL').catch(tolerate);
      if (!(await this.waitExit(id, 15_000))) throw new Internal(`container ${id} did not stop after SIGKILL`, { id });
    }
    st = await this.state(id);
    return st;
  }

  /** Resolves true once the exit is recorded (or the monitor is gone), false on timeout. */
  private async waitExit(id: string, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    let n = 0;
    for (;;) {
      if (await exists(this.exitFile(id))) return true;
      if (++n % 10 === 0 && !(await this.conmonAlive(id))) return true;
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(50, Math.max(1, deadline - Date.now())));
    }
  }

  private async conmonAlive(id: string): Promise<boolean> {
    const pid = await readPidFile(path.join(this.dir(id), 'conmon.pid'));
    return pid !== undefined && processAlive(pid) && (await isConmonFor(pid, id));
  }

  async pause(id: string): Promise<void> {
    const meta = await this.meta(id);
    await this.runtime(meta.runtime, meta.runtimePath).pause(id);
  }

  async unpause(id: string): Promise<void> {
    const meta = await this.meta(id);
    // runc refuses to resume a container that is not paused, crun 1.8.1 succeeds: one answer for both
    const { status } = await this.state(id);
    if (status !== 'paused') throw new Conflict(`container ${id.slice(0, 12)} is not paused (it is ${status})`, { id, status });
    await this.runtime(meta.runtime, meta.runtimePath).resume(id);
  }

  /**
   * The exit, once conmon has recorded one. The OOM verdict is read from the
   * cgroup (still there until delete) the first time and kept in exit.json.
   */
  private async exitRecord(id: string, meta: ContainerMeta): Promise<ExitRecord | undefined> {
    const recFile = path.join(this.dir(id), 'exit.json');
    try {
      return JSON.parse(await readFile(recFile, 'utf8')) as ExitRecord;
    } catch {
      /* not yet recorded */
    }
    const ex = await readExitFile(this.exitFile(id));
    if (!ex) return undefined;
    let oomKilled = false;
    if (ex.code === 137) {
      const kills = await readOomKills(await this.cgroups(meta)).catch(() => undefined);
      oomKilled = (kills ?? 0) > 0 || (await exists(path.join(this.dir(id), 'persist', 'oom')));
    }
    const rec: ExitRecord = { exitCode: ex.code, finishedAt: ex.time, oomKilled };
    await writeJsonAtomic(recFile, rec).catch(() => undefined); // read again next time
    return rec;
  }

  async state(id: string): Promise<RuntimeState> {
    const meta = await this.meta(id);
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
    const rec = await this.exitRecord(id, meta);
    if (rec) return stopped(rec);
    const rt = this.runtime(meta.runtime, meta.runtimePath);
    let s;
    try {
      s = await rt.state(id);
    } catch (e) {
      if (!hasCode(e, 'NotFound')) throw e;
      return base;
    }
    if (s.status === 'stopped') {
      // the process is gone; conmon writes the exit file a moment later
      if (await this.waitExit(id, 2000)) {
        const r2 = await this.exitRecord(id, meta);
        if (r2) return stopped(r2);
      }
      return { ...base, status: 'stopped' };
    }
    // a primed stub runs in the runtime's eyes, but the container has not been started
    const out: RuntimeState = { ...base, status: s.status === 'creating' || (s.status === 'running' && this.primed(id)) ? 'created' : s.status };
    if (s.pid > 0) out.pid = s.pid;
    return out;
  }

  /**
   * Attach to the main process through its conmon (conmon-attach.ts): output from now on, and its
   * stdin when asked (Conflict if the container was made without one). Works on a created container
   * (the socket is there before the start) and on a running one, never on one that has exited.
   */
  async attach(id: string, req: AttachRequest): Promise<AttachSession> {
    const meta = await this.meta(id);
    if (req.stdin && !meta.stdin) throw new Conflict(`container ${id.slice(0, 12)} was created without an open stdin (docker run -i)`, { id });
    if (meta.warm) throw new Conflict(`container ${id.slice(0, 12)} is a warm container`, { id });
    return attachConmon(this.bundle(id), id, req);
  }

  /** The main process's terminal's new size (it gets SIGWINCH); Conflict for a container without a terminal. */
  async resize(id: string, rows: number, cols: number): Promise<void> {
    const bad = badTerminalSize(rows, cols);
    if (bad) throw new InvalidArgument(bad, { id });
    const config = JSON.parse(await readFile(path.join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec;
    if (!config.process.terminal) throw new Conflict(`container ${id.slice(0, 12)} has no terminal (docker run -t)`, { id });
    await resizeConmonTerminal(this.bundle(id), id, rows, cols);
  }

  async exec(id: string, req: ExecRequest): Promise<ExecSession> {
    if (req.args.length === 0) throw new InvalidArgument('exec needs args', { id });
    const badSize = req.tty ? badTerminalSize(req.tty.rows, req.tty.cols) : undefined;
    if (badSize) throw new InvalidArgument(badSize, { id });
    const meta = await this.meta(id);
    const st = await this.state(id);
    if (st.status !== 'running') throw new Conflict(`container ${id} is ${st.status}, not running`, { id });
    const config = JSON.parse(await readFile(path.join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec;
    const env = mergeEnv(config.process.env, req.env ?? []);
    // as Docker does for -t: programs that look at TERM get one that matches the pty
    if (req.tty && !env.some((e) => e.startsWith('TERM='))) env.push('TERM=xterm');
    const proc = {
      ...config.process,
      terminal: req.tty !== undefined,
      // the size the runtime gives the container's pty before the command runs (its own resize from our pty comes later)
      ...(req.tty ? { consoleSize: { height: req.tty.rows, width: req.tty.cols } } : {}),
      args: req.args,
      env,
      cwd: req.cwd ?? config.process.cwd,
      user: req.user ? resolveUser(req.user, await readUserDb(this.rootfs(id))).user : config.process.user,
    };
    const execName = `exec-${randomBytes(6).toString('hex')}`;
    const processFile = path.join(this.dir(id), `${execName}.json`);
    await writeFile(processFile, JSON.stringify(proc));
    const runtime = this.runtime(meta.runtime, meta.runtimePath);
    if (req.tty && runtime.name !== 'runc') {
      // crun's foreground terminal is not sound (conmon-exec.ts says why): conmon takes its console socket
      try {
        return await execThroughConmon({
          conmonPath: await this.conmonPath(), runtimePath: runtime.binary, runtimeArgs: [`--root=${runtime.root}`],
          containerId: id, execId: execName, dir: path.join(this.dir(id), execName), processFile,
        });
      } finally {
        await unlink(processFile).catch(() => undefined);
      }
    }
    if (req.tty) {
      try {
        return terminalSession(await runtime.execTerminal(id, { processFile }, req.tty), () => void unlink(processFile).catch(() => undefined));
      } catch (e) {
        await unlink(processFile).catch(() => undefined);
        throw e;
      }
    }
    const child = runtime.exec(id, { processFile });
    const exit = new Promise<number>((resolve, reject) => {
      child.on('error', (e) => {
        void unlink(processFile).catch(() => undefined);
        reject(new Internal(`exec in ${id}: ${e.message}`, { id }, { cause: e }));
      });
      child.on('close', (code, signal) => {
        void unlink(processFile).catch(() => undefined);
        if (code !== null) resolve(code);
        else resolve(128 + (signal ? (osSignals[signal] ?? 0) : 0));
      });
    });
    return { stdout: child.stdout!, stderr: child.stderr!, stdin: child.stdin!, exit };
  }

  logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return deferredIterable(async () => {
      const dir = this.dir(id);
      if (!(await exists(dir))) throw new NotFound(`container ${id} not found`, { id });
      return readK8sLog(this.logPath(id), {
        ...opts,
        label: `log of container ${id}`,
        isExited: async () => (await exists(this.exitFile(id))) || !(await exists(dir)),
        onExit: (wake) => {
          const listener = (exited: string) => {
            if (exited === id) wake();
          };
          this.listeners.push(listener);
          return () => {
            const i = this.listeners.indexOf(listener);
            if (i !== -1) this.listeners.splice(i, 1);
          };
        },
      });
    });
  }

  /** A stopped container's log generations as a tar, within its log limits (log-transfer.ts: a cold move carries them). */
  async exportLogs(id: string): Promise<Readable> {
    // a stopped container whose runtime state went (a host restarted) has no log left: an empty tar, the move goes on
    return exportLogs(this.logPath(id), await loadLogLimits(this.logPath(id)));
  }

  /** A moved container's earlier log, before its first start here: checked, and placed before the generation conmon opened. */
  async importLogs(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    if (!(await exists(this.dir(id)))) throw new NotFound(`container ${id} not found`, { id });
    return importLogs(this.logPath(id), bytes, await loadLogLimits(this.logPath(id)), `the log of container ${id.slice(0, 12)}`);
  }

  async stats(id: string): Promise<InstanceStats> {
    const meta = await this.meta(id);
    const s = await readCgroupStats(await this.cgroups(meta));
    const out: InstanceStats = { cpuUsageNs: s.cpuUsageNs, memoryBytes: s.memoryBytes, pids: s.pids, time: new Date().toISOString() };
    if (s.memoryLimitBytes !== undefined) out.memoryLimitBytes = s.memoryLimitBytes;
    if (s.pidsLimit !== undefined) out.pidsLimit = s.pidsLimit;
    return out;
  }

  /**
   * A live move's checkpoint: runc (with this CRIU) dumps the container's processes into
   * checkpointImages(id) and kills them; its rootfs stays mounted (its layer is exported next)
   * and its network namespace (netnsPath, named by the host) is left out of the images. On a
   * failure CRIU leaves the processes running and nothing is recorded. Conflict for what this
   * driver cannot checkpoint (crun: Debian builds it without CRIU; a terminal; a paused container).
   */
  async checkpoint(id: string, opts: { criu: string; netnsPath?: string }): Promise<{ bytes: number; ms: number }> {
    const meta = await this.meta(id);
    const short = id.slice(0, 12);
    if (meta.runtime !== 'runc') throw new Conflict(`container ${short} runs on ${meta.runtime}, which cannot checkpoint here (Debian builds crun without CRIU): only runc containers (--runtime runc) move live`, { id, runtime: meta.runtime });
    if (meta.terminal || meta.stdin) throw new Conflict(`container ${short} has a terminal or an open stdin: a checkpoint cannot carry its conmon's end of them; move it cold`, { id });
    if (meta.warm || this.primed(id)) throw new Conflict(`container ${short} is a warm container not started yet: move it cold`, { id });
    if (meta.checkpointed) throw new Conflict(`container ${short} is checkpointed already`, { id });
    const st = await this.state(id);
    if (st.status !== 'running') throw new Conflict(`container ${short} is ${st.status}: only a running container is checkpointed (a paused one: unpause it first)`, { id, status: st.status });
    const config = JSON.parse(await readFile(path.join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec;
    // made before live moves: runc would not hand CRIU our configuration, and CRIU would try to dump the veth
    if (!config.annotations?.[CRIU_CONFIG_ANNOTATION]) throw new Conflict(`container ${short} was created by an agent before live moves (its runtime config names no CRIU configuration): move it cold`, { id });
    const netns = config.linux?.namespaces?.find((n) => n.type === 'network');
    // a namespace runc made (no path in config.json) is declared external through the CRIU config file
    await writeFile(path.join(this.dir(id), 'criu.conf'), criuConfig(netns && !netns.path && opts.netnsPath ? await externalNetnsLine(opts.netnsPath) : ''));
    const images = this.checkpointImages(id);
    const work = path.join(path.dirname(images), 'work');
    await rm(path.dirname(images), { recursive: true, force: true });
    await mkdir(images, { recursive: true, mode: 0o700 });
    await mkdir(work, { recursive: true, mode: 0o700 });
    const rt = this.runtime(meta.runtime, meta.runtimePath);
    // marked first: the exit conmon records once the dump kills the process is not the container's
    await this.saveMeta({ ...meta, checkpointed: true });
    const t0 = performance.now();
    const r = await run(meta.runtimePath, [...rt.globalArgs(), '--criu', opts.criu, ...checkpointArgs(id, images, work)], { timeoutMs: 120_000 });
    if (r.code !== 0) {
      const errors = await criuLogErrors(path.join(work, 'dump.log'));
      // kept beside the container for whoever looks into it (the images go)
      await copyFile(path.join(work, 'dump.log'), path.join(this.dir(id), 'checkpoint-failed.log')).catch(() => undefined);
      // CRIU resumes what it froze on a failed dump: the container runs on as before
      await this.saveMeta(meta);
      await rm(path.dirname(images), { recursive: true, force: true });
      throw checkpointFailure(id, runtimeMessage(r.stderr || r.stdout), errors);
    }
    const ms = Math.round(performance.now() - t0);
    await writeRestoreHints(images, { warmMounts: config.mounts.some((m) => m.destination === WARM_SCRIPT_DIR) });
    this.rotation.stop(id);
    return { bytes: await treeBytes(images), ms };
  }

  /** keepCheckpoint: a restore in place follows (a rolled-back live move), from the images kept. */
  async delete(id: string, opts: { keepCheckpoint?: boolean } = {}): Promise<void> {
    const dir = this.dir(id);
    if (!opts.keepCheckpoint) await rm(path.dirname(this.checkpointImages(id)), { recursive: true, force: true });
    if (!(await exists(dir))) return;
    let meta: ContainerMeta | undefined;
    try {
      meta = await this.meta(id);
    } catch {
      meta = undefined; // a create that failed early: only files and maybe a mount
    }
    const conmonPid = await readPidFile(path.join(dir, 'conmon.pid'));
    if (meta) {
      const rt = this.runtime(meta.runtime, meta.runtimePath);
      // Empty the memory cgroup while it still exists (`runc delete` removes it): a removed
      // one with page cache still charged to it lingers in the kernel (cgroups.ts).
      const cgroups = await this.cgroups(meta);
      if (await this.endInit(id, meta, cgroups, conmonPid)) await releaseCgroupMemory(cgroups);
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
    await unmountAll(this.rootfs(id));
    if (meta) await removeCgroup(await this.cgroups(meta));
    await removeStateFile(this.exitFile(id));
    const left = await mountsUnder(dir);
    if (left.length) throw new Internal(`refusing to remove ${dir}: still mounted: ${left.join(', ')}`, { id });
    await rm(dir, { recursive: true, force: true });
    this.notified.delete(id);
    this.warmFacts.delete(id);
    this.metas.delete(id);
  }

  /**
   * SIGKILL the container's init (its pid namespace goes with it) and wait until it is gone;
   * true once no process of the container runs. Not for a frozen container (the signal would
   * wait for a thaw: `runc delete` deals with that one) and only while the pid is still the
   * one conmon watches (its child), not a pid reused since.
   */
  private async endInit(id: string, meta: ContainerMeta, cgroups: CgroupPaths, conmonPid: number | undefined): Promise<boolean> {
    if (await this.exitRecord(id, meta)) return true;
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

  async list(): Promise<string[]> {
    try {
      return (await readdir(this.containersDir, { withFileTypes: true }))
        .filter((d) => d.isDirectory() && ID_RE.test(d.name))
        .map((d) => d.name)
        .sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  onExit(listener: (id: string) => void): void {
    this.listeners.push(listener);
    this.ensureWatcher();
  }

  private ensureWatcher(): void {
    if (this.watcher) return;
    // mkdir synchronously-ish: fs.watch needs the directory to exist
    void (async () => {
      await mkdir(this.exitsDir, { recursive: true });
      if (this.watcher) return;
      this.watcher = watch(this.exitsDir, { persistent: false }, (_event, filename) => {
        if (typeof filename === 'string' && ID_RE.test(filename)) void this.maybeNotify(filename);
      });
      this.watcher.on('error', (e) => log.warn('exit watcher failed', { error: e }));
      // exits that landed before the watcher was up
      for (const f of await readdir(this.exitsDir)) if (ID_RE.test(f)) void this.maybeNotify(f);
      await this.adoptLogRotation();
    })().catch((e: unknown) => log.error('cannot watch exits', { error: e }));
  }

  private async maybeNotify(id: string): Promise<void> {
    if (this.notified.has(id)) return;
    if (!(await readExitFile(this.exitFile(id)))) return;
    if (!(await exists(this.dir(id)))) return;
    if (this.notified.has(id)) return;
    this.notified.add(id);
    this.rotation.finish(id);
    for (const l of this.listeners) {
      try {
        l(id);
      } catch (e) {
        log.error('exit listener threw', { id, error: e });
      }
    }
  }

  /** Stop watching (containers keep running: they belong to conmon). */
  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.rotation.close();
    this.fifos.clear();
    this.syncFifos.clear();
  }

  // ------------------------------------------------------------ log rotation (container-logs.ts)

  /** A daemon started again: rotation for the containers whose conmon still runs (the exit watcher's start calls it). */
  async adoptLogRotation(): Promise<void> {
    await this.rotation.ready();
    for (const id of await this.list()) {
      if (this.rotation.has(id) || (await exists(this.exitFile(id)))) continue;
      if (!(await exists(path.join(this.dir(id), 'conmon.pid')))) continue;
      const limits = await loadLogLimits(this.logPath(id));
      if (!this.rotation.has(id)) this.rotation.start(id, this.logPath(id), limits.maxFiles);
    }
  }
}

/**
 * The session of a runtime running on our pty (OciRuntime.execTerminal): its output is the
 * terminal's, paused while the reader is behind; a reader that goes away hangs up (SIGHUP to
 * the runtime, which passes it to the command), as closing a terminal window does.
 */
function terminalSession(pty: IPty, cleanup: () => void): ExecSession {
  let exited = false;
  const stdout = new Readable({
    read: () => pty.resume(),
    destroy: (err, cb) => {
      if (!exited) {
        try {
          pty.kill('SIGHUP');
        } catch {
          /* gone meanwhile */
        }
      }
      cb(err);
    },
  });
  // with encoding null node-pty hands out Buffers (its typings say string)
  pty.onData((d: string | Buffer) => {
    if (!stdout.destroyed && !stdout.push(typeof d === 'string' ? Buffer.from(d) : d)) pty.pause();
  });
  const exit = new Promise<number>((resolve) => {
    // node-pty reports the exit after the last output was read
    pty.onExit(({ exitCode, signal }) => {
      exited = true;
      cleanup();
      if (!stdout.destroyed) stdout.push(null);
      resolve(signal ? 128 + signal : exitCode);
    });
  });
  const stdin = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      if (!exited) pty.write(chunk);
      cb();
    },
  });
  const stderr = new Readable({ read() {} });
  stderr.push(null);
  return {
    stdout,
    stderr,
    stdin,
    exit,
    resize: checkedResize((rows, cols) => {
      if (!exited) pty.resize(cols, rows);
    }),
  };
}

const osSignals: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9,
  SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
};

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
