/**
 * The container driver's warm containers (warm-start.ts says what they are): created with
 * the start stub as their process, claimed for a request whose config matches, and started
 * by the go-ahead to their stub.
 */
import { close, constants as fsConstants, existsSync, open, write } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';
import { Conflict, Internal } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { removeStateFile, writeStateFile } from '../../../core/state-files.js';
import type { InstanceSpec, RuntimeState } from '../instance-driver.js';
import { checkProgram, etcMounts, withCriuConfig, writeEtc } from './container-bundle.js';
import type { CreateOptions } from './container-create.js';
import type { ContainerExits } from './container-exits.js';
import { DEFAULT_LOG_LIMITS, resolveLogLimits, saveLogLimits } from './container-logs.js';
import { sleep, type ContainerMeta, type ContainerStore } from './container-store.js';
import type { LogRotation } from './log-rotation.js';
import { buildOciSpec, readHardLimits, readUserDb, type OciSpec, type UserDb } from './oci-spec.js';
import type { SeccompFilter } from './seccomp.js';
import { findStaticBusybox } from './static-busybox.js';
import { WARM_ENTRY, WARM_STUB_ARGS, limitsOf, stubUnsuitable, warmCompatible, warmMounts, warmScript } from './warm-start.js';

// the callback forms, promisified: lighter than FileHandle for one open, write and close
const fsOpen = promisify(open);
const fsWrite = promisify(write) as (fd: number, data: string) => Promise<unknown>;
const fsClose = promisify(close);

// the driver's name: its log lines read as they did before the warm containers had a file of their own
const log = logger('agent.drivers.container');

/** What a warm container was built from: its config (or its comparableJson) and its image's users. */
export interface WarmFacts {
  config: OciSpec | string;
  userDb: UserDb;
}

export interface WarmContainersDeps {
  store: Pick<ContainerStore, 'dir' | 'rootfs' | 'configFile' | 'readConfig' | 'logPath' | 'warmDir' | 'goFifo' | 'meta' | 'saveMeta' | 'runtime'>;
  exits: Pick<ContainerExits, 'record'>;
  rotation: Pick<LogRotation, 'setMaxFiles'>;
  /** The driver's create (container-create.ts). */
  create(spec: InstanceSpec, opts: CreateOptions): Promise<RuntimeState>;
  /** The seccomp filter the create put in the bundle (seccomp.ts): a claim's config is compared with it in. */
  seccomp(): Promise<SeccompFilter | undefined>;
}

export class WarmContainers {
  /** What a warm container was built from, kept so a claim need not read it back (a restart forgets: warm ones are destroyed then). */
  private readonly facts = new Map<string, WarmFacts>();

  constructor(private readonly d: WarmContainersDeps) {}

  /**
   * Create a warm container ahead of demand: everything `create` does, with the start
   * stub as its process (warm-start.ts), and the runtime's start too: the stub runs,
   * blocked on its go fifo. spec.process supplies the user; its command is replaced.
   * claim() gives it a real command later, start() the go-ahead.
   */
  async create(spec: InstanceSpec): Promise<RuntimeState> {
    const busybox = await findStaticBusybox();
    if (!busybox) throw new Internal('warm start needs a static busybox on the host (Debian busybox-static)');
    return this.d.create(
      { ...spec, process: { ...spec.process, args: WARM_STUB_ARGS, env: [], cwd: '/' } },
      { mounts: warmMounts(busybox, this.d.store.warmDir(spec.id)), warm: true },
    );
  }

  /** Kept at its create: what the warm container is built from. */
  remember(id: string, facts: WarmFacts): void {
    this.facts.set(id, facts);
  }

  /** The container is claimed or deleted. */
  forget(id: string): void {
    this.facts.delete(id);
  }

  /**
   * Give a warm container its real configuration: its state when it was taken (the
   * script written, limits applied with `runc update`, config.json now the real one),
   * undefined when the request's config differs from the warm one in more than the command,
   * environment, working directory and limits (the caller then creates it cold).
   */
  async claim(spec: InstanceSpec): Promise<RuntimeState | undefined> {
    const { store } = this.d;
    const id = spec.id;
    const meta = await store.meta(id);
    const busybox = await findStaticBusybox();
    if (!meta.warm || !busybox) return undefined;
    // warm containers' conmons run without a terminal or stdin: such a request is made cold
    if (spec.process.terminal || spec.process.stdin) return undefined;
    const logLimits = resolveLogLimits(spec.log);
    if (logLimits.maxSizeBytes !== DEFAULT_LOG_LIMITS.maxSizeBytes) return undefined; // on conmon's command line since the warm create
    const dir = store.dir(id);
    // the warm config as comparableJson when this process made it, else as the bundle has it
    const facts = this.facts.get(id) ?? {
      config: await store.readConfig(id),
      userDb: await readUserDb(store.rootfs(id)),
    };
    const warmConfig = facts.config;
    const seccomp = await this.d.seccomp();
    const { config, warnings } = buildOciSpec(
      spec,
      { hardLimits: await readHardLimits(), cgroupsPath: meta.cgroupsPath, userDb: facts.userDb, ...(seccomp ? { seccomp } : {}) },
      { mounts: [...etcMounts(dir), ...warmMounts(busybox, store.warmDir(id))] },
    );
    // a program the image lacks is the caller's error here too, not an exit 127 after the start
    checkProgram(store.rootfs(id), config, spec.rootfs);
    const unsuitable = stubUnsuitable(config.process);
    if (unsuitable || !warmCompatible(warmConfig, config)) {
      log.debug('warm container not usable for this request', { id, reason: unsuitable ?? 'config differs' });
      return undefined;
    }
    withCriuConfig(dir, meta.runtime, config); // as its runtime has it since the warm create
    // side by side: each can wait on the disk's journal in the thread pool
    await Promise.all([
      writeEtc(dir, spec, { claim: true }),
      writeStateFile(path.join(store.warmDir(id), WARM_ENTRY), warmScript(config.process)),
      writeStateFile(store.configFile(id), JSON.stringify(config)),
    ]);
    const limits = limitsOf(config);
    if (limits) await store.runtime(meta).update(id, limits);
    if (logLimits.maxFiles !== DEFAULT_LOG_LIMITS.maxFiles) {
      await saveLogLimits(store.logPath(id), logLimits);
      this.d.rotation.setMaxFiles(id, logLimits.maxFiles);
    }
    delete meta.warm;
    this.facts.delete(id);
    await store.saveMeta({ ...meta, name: spec.name, warnings });
    return { status: 'created', ...(meta.pid ? { pid: meta.pid } : {}) };
  }

  /** A warm container's stub runs, waiting on its go fifo: created, not started, whatever the runtime says. */
  primed(id: string): boolean {
    return existsSync(this.d.store.goFifo(id));
  }

  /** The start of a primed container: the go-ahead to its stub. */
  async start(id: string, meta: ContainerMeta): Promise<RuntimeState> {
    const releasedAt = await this.releaseStub(id, meta);
    if (releasedAt === undefined) {
      const rec = await this.d.exits.record(id, meta);
      throw new Conflict(`container ${id} cannot start: its process ${rec ? `exited with ${rec.exitCode}` : 'is not waiting to start'}`, { id });
    }
    // Nothing written: the fifo's absence records the start (the control plane keeps the time),
    // and the stub, told to go only now, has no exit to look for yet.
    return { status: 'running', startedAt: releasedAt, ...(meta.pid ? { pid: meta.pid } : {}) };
  }

  /**
   * The go-ahead for a primed container's stub: one line into its go fifo. The open
   * succeeds only while the stub is blocked opening the other end (ENXIO otherwise), so
   * a stub still on its way there is waited for, briefly. Resolves with the time of the go-ahead
   * (taken just before the line is written: the command's start, not our return after it, which a
   * busy event loop can hold, and not after a fast command's exit), or undefined if it never gets there.
   */
  private async releaseStub(id: string, meta: ContainerMeta, timeoutMs = 5000): Promise<string | undefined> {
    const fifo = this.d.store.goFifo(id);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      let fd: number;
      try {
        // In the thread pool, as the write below: each wakes the stub, and a woken task may take
        // the CPU from the thread that woke it, which should not be the event loop's in a burst.
        fd = await fsOpen(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENXIO' || performance.now() > deadline) return undefined;
        if (await this.d.exits.record(id, meta)) return undefined;
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
}
