/**
 * The making of a container: its directory and rootfs mount, its bundle (oci-spec.ts,
 * container-bundle.ts), its meta, log files and conmon (which runs the runtime's create, or
 * its restore from a live move's checkpoint). A cold create, a warm one (warm-containers.ts)
 * and a restore (container-live-move.ts) all come through here; a failure removes what was made.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { AlreadyExists, Internal, InvalidArgument } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { removeStateFile, writeStateFile } from '../../../core/state-files.js';
import { mountAll } from '../../snapshots/mount.js';
import type { InstanceSpec, RuntimeState } from '../instance-driver.js';
import { criuLogErrors } from './checkpoint.js';
import { launchConmon } from './conmon.js';
import { checkProgram, etcMounts, withCriuConfig, writeEtc } from './container-bundle.js';
import { prepareLogFiles, resolveLogLimits, saveLogLimits } from './container-logs.js';
import type { ContainerMeta, ContainerStore } from './container-store.js';
import type { FifoStock } from './fifo-stock.js';
import type { LogRotation } from './log-rotation.js';
import { buildOciSpec, readHardLimits, readUserDb, type OciMount } from './oci-spec.js';
import { chooseRuntime, findBinary, requestFault, type RuntimeName } from './oci-runtime.js';
import type { SeccompFilter } from './seccomp.js';
import { UNCLAIMED_ENTRY, WARM_ENTRY, comparableJson } from './warm-start.js';
import type { WarmContainers } from './warm-containers.js';

// the driver's name: its log lines read as they did before the create had a file of its own
const log = logger('agent.drivers.container');

export interface CreateOptions {
  /** After the /etc mounts: the request's volumes, binds and tmpfs, a warm container's stub, a restore's. */
  mounts?: OciMount[];
  /** A warm container: its go fifo placed, the runtime's start done (warm-containers.ts). */
  warm?: boolean;
  /** A live move's restore, with this CRIU; warm: the container came from a warm pool (its stub directory is mounted again). */
  restore?: { criu: string; warm?: boolean };
}

export interface ContainerCreatorDeps {
  store: Pick<
    ContainerStore,
    'containersDir' | 'exitsDir' | 'dir' | 'bundle' | 'rootfs' | 'configFile' | 'exitFile' | 'logPath' | 'warmDir' | 'goFifo' | 'checkpointImages' | 'saveMeta' | 'runtime'
  >;
  /** What a warm container is built from, kept for its claim. */
  warm: Pick<WarmContainers, 'remember'>;
  rotation: Pick<LogRotation, 'ready' | 'start'>;
  /** Go fifos for warm containers (fifo-stock.ts). */
  fifos: Pick<FifoStock, 'place'>;
  /** conmon's sync fifos (conmon.ts: conmon started from a host shell), only for nimbusd to read. */
  syncFifos: Pick<FifoStock, 'place'>;
  conmonPath(): Promise<string>;
  /** Removes what a failed create made. */
  delete(id: string): Promise<void>;
  /** The runtime when the spec names none. */
  defaultRuntime: RuntimeName | 'auto';
  /** The seccomp filter containers get (seccomp.ts); undefined: unconfined. */
  seccomp(): Promise<SeccompFilter | undefined>;
  /** Parent cgroup (cgroupfs) for all containers, with one leading slash. */
  cgroupParent: string;
}

export class ContainerCreator {
  constructor(private readonly d: ContainerCreatorDeps) {}

  async create(spec: InstanceSpec, opts: CreateOptions = {}): Promise<RuntimeState> {
    const { store } = this.d;
    const id = spec.id;
    const dir = store.dir(id);
    if (spec.rootfs.length === 0) throw new InvalidArgument('rootfs must hold at least one mount', { id });
    const logLimits = resolveLogLimits(spec.log);
    // directories and config.json made synchronously: ~50-110 µs of CPU each here, where a
    // thread-pool round trip adds ~60 µs more (docs/warm-start.md, "Small file operations in turn")
    mkdirSync(store.containersDir, { recursive: true, mode: 0o700 });
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new AlreadyExists(`container ${id} already exists`, { id });
      throw e;
    }
    try {
      const runtimeName = await chooseRuntime((spec.runtime as RuntimeName | undefined) ?? this.d.defaultRuntime);
      const runtimePath = await findBinary(runtimeName);
      if (!runtimePath) throw new Internal(`${runtimeName} disappeared`);
      const rootfs = store.rootfs(id);
      mkdirSync(rootfs, { recursive: true });
      mkdirSync(path.join(dir, 'persist'));
      mkdirSync(path.join(dir, 'sock'));
      // a restored warm-pool container's stub directory: mounted again (its script was read long ago)
      if (opts.restore?.warm) mkdirSync(store.warmDir(id), { mode: 0o755 });
      if (opts.warm) {
        mkdirSync(store.warmDir(id), { mode: 0o755 });
        // readable by the container's user (the stub may not be root), written only by us
        await this.d.fifos.place(store.goFifo(id));
        // the script the stub runs after its go, made now and written over in place at the claim:
        // creating a file on the claim's path cost ~0.5 ms of CPU on this host's ext4. Until the
        // claim it fails the stub, as a missing script did
        await writeStateFile(path.join(store.warmDir(id), WARM_ENTRY), UNCLAIMED_ENTRY);
      }
      mkdirSync(store.exitsDir, { recursive: true });
      await removeStateFile(store.exitFile(id));
      await mountAll(spec.rootfs, rootfs);
      await writeEtc(dir, spec);

      const cgroupsPath = `${this.d.cgroupParent}/${id}`;
      const userDb = await readUserDb(rootfs);
      const seccomp = await this.d.seccomp();
      const { config, warnings } = buildOciSpec(spec, {
        hardLimits: await readHardLimits(),
        cgroupsPath,
        userDb,
        ...(seccomp ? { seccomp } : {}),
      }, { mounts: [...etcMounts(dir), ...(opts.mounts ?? [])] });
      if (opts.warm) this.d.warm.remember(id, { config: comparableJson(config), userDb });
      else if (!opts.restore) checkProgram(rootfs, config); // its upper layer may be a moved container's: looked up every time
      withCriuConfig(dir, runtimeName, config);
      if (!opts.warm) for (const w of warnings) log.warn('bundle adjusted', { id, warning: w });
      writeFileSync(store.configFile(id), JSON.stringify(config));
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
      await store.saveMeta(meta);
      const rt = store.runtime(meta);
      mkdirSync(rt.root, { recursive: true, mode: 0o700 });
      const logPath = store.logPath(id);
      await prepareLogFiles(logPath);
      await saveLogLimits(logPath, logLimits);
      await this.d.rotation.ready();
      this.d.rotation.start(id, logPath, logLimits.maxFiles);
      const launched = await launchConmon({
        conmonPath: await this.d.conmonPath(),
        id,
        name: spec.name || id,
        runtimePath,
        runtimeArgs: [`--root=${rt.root}`, ...(opts.restore ? [`--criu=${opts.restore.criu}`] : [])],
        ...(opts.restore ? { restore: store.checkpointImages(id) } : {}),
        bundle: store.bundle(id),
        containerPidFile: path.join(dir, 'container.pid'),
        conmonPidFile: path.join(dir, 'conmon.pid'),
        logPath,
        logSizeMax: logLimits.maxSizeBytes,
        exitDir: store.exitsDir,
        socketDir: path.join(dir, 'sock'),
        persistDir: path.join(dir, 'persist'),
        stderrPath: path.join(dir, 'conmon.err'),
        placeFifo: (dest) => this.d.syncFifos.place(dest),
        ...(spec.process.terminal ? { terminal: true } : {}),
        ...(spec.process.stdin ? { stdin: spec.process.stdin } : {}),
      });
      meta.pid = launched.pid;
      // the runtime's start now, off the request path: the stub then waits on its go fifo
      if (opts.warm) await rt.start(id, launched.pid);
      if (opts.restore) meta.startedAt = new Date().toISOString();
      await store.saveMeta(meta);
      // restored: running already, its images no longer needed
      if (opts.restore) {
        await rm(path.dirname(store.checkpointImages(id)), { recursive: true, force: true });
        return { status: 'running', pid: launched.pid, startedAt: meta.startedAt! };
      }
      return { status: 'created', pid: launched.pid };
    } catch (e) {
      // a restore's own words are in CRIU's log, which goes with the container: said in the error
      const criu = opts.restore ? await criuLogErrors(path.join(store.bundle(id), 'restore.log')) : [];
      await this.d.delete(id).catch((err: unknown) => log.error('cleanup after failed create', { id, error: err }));
      if (criu.length) throw new Internal(`restore of container ${id.slice(0, 12)} failed: ${criu.join('; ')}`, { id, criu }, { cause: e });
      // the runtime refusing what the request asked for is the caller's error, with its message
      throw requestFault(e) ?? e;
    }
  }
}
