/**
 * A container's exit, as its conmon records it (<stateDir>/exits/<id>): the listeners told of
 * each exit once (a watch on the exits directory), the exit record with its OOM verdict, and
 * the wait for an exit.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { logger } from '../../../core/log.js';
import { processAlive } from '../../../core/proc.js';
import { readOomKills } from '../../cgroups/cgroups.js';
import { isConmonFor, readExitFile, readPidFile } from './conmon.js';
import type { ContainerCgroups } from './container-cgroups.js';
import { exists, isContainerId, sleep, writeJsonAtomic, type ContainerMeta, type ContainerStore } from './container-store.js';
import type { LogRotation } from './log-rotation.js';

// the driver's name: its log lines read as they did before the exits had a file of their own
const log = logger('agent.drivers.container');

export interface ExitRecord {
  exitCode: number;
  finishedAt: string;
  oomKilled: boolean;
}

export class ContainerExits {
  private readonly listeners: ((id: string) => void)[] = [];
  private watcher: FSWatcher | undefined;
  private readonly notified = new Set<string>();

  constructor(
    private readonly store: Pick<ContainerStore, 'dir' | 'exitsDir' | 'exitFile'>,
    private readonly cgroups: Pick<ContainerCgroups, 'of'>,
    /** An exit ends its container's log rotation (a last pass). */
    private readonly rotation: Pick<LogRotation, 'finish'>,
    /** Run once the watch is up (the driver's adoptLogRotation: a daemon started again). */
    private readonly onWatching: () => Promise<void>,
  ) {}

  /** Tell listener of every exit from now on (and of those recorded before, not told yet). */
  onExit(listener: (id: string) => void): void {
    this.listeners.push(listener);
    this.ensureWatcher();
  }

  /** A listener of its own until the returned function removes it; starts no watch (a log's follower, woken by the exit). */
  listen(listener: (id: string) => void): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i !== -1) this.listeners.splice(i, 1);
    };
  }

  private ensureWatcher(): void {
    if (this.watcher) return;
    const exitsDir = this.store.exitsDir;
    // mkdir synchronously-ish: fs.watch needs the directory to exist
    void (async () => {
      await mkdir(exitsDir, { recursive: true });
      if (this.watcher) return;
      this.watcher = watch(exitsDir, { persistent: false }, (_event, filename) => {
        if (typeof filename === 'string' && isContainerId(filename)) void this.maybeNotify(filename);
      });
      this.watcher.on('error', (e) => log.warn('exit watcher failed', { error: e }));
      // exits that landed before the watcher was up
      for (const f of await readdir(exitsDir)) if (isContainerId(f)) void this.maybeNotify(f);
      await this.onWatching();
    })().catch((e: unknown) => log.error('cannot watch exits', { error: e }));
  }

  private async maybeNotify(id: string): Promise<void> {
    if (this.notified.has(id)) return;
    if (!(await readExitFile(this.store.exitFile(id)))) return;
    if (!(await exists(this.store.dir(id)))) return;
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

  /**
   * The exit, once conmon has recorded one. The OOM verdict is read from the
   * cgroup (still there until delete) the first time and kept in exit.json.
   */
  async record(id: string, meta: ContainerMeta): Promise<ExitRecord | undefined> {
    const recFile = path.join(this.store.dir(id), 'exit.json');
    try {
      return JSON.parse(readFileSync(recFile, 'utf8')) as ExitRecord; // a few µs: no thread-pool round trip
    } catch {
      /* not yet recorded */
    }
    const ex = await readExitFile(this.store.exitFile(id));
    if (!ex) return undefined;
    let oomKilled = false;
    if (ex.code === 137) {
      const kills = await readOomKills(await this.cgroups.of(meta)).catch(() => undefined);
      oomKilled = (kills ?? 0) > 0 || (await exists(path.join(this.store.dir(id), 'persist', 'oom')));
    }
    const rec: ExitRecord = { exitCode: ex.code, finishedAt: ex.time, oomKilled };
    await writeJsonAtomic(recFile, rec).catch(() => undefined); // read again next time
    return rec;
  }

  /** Resolves true once the exit is recorded (or the monitor is gone), false on timeout. */
  async wait(id: string, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    let n = 0;
    for (;;) {
      if (await exists(this.store.exitFile(id))) return true;
      if (++n % 10 === 0 && !(await this.conmonAlive(id))) return true;
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(50, Math.max(1, deadline - Date.now())));
    }
  }

  private async conmonAlive(id: string): Promise<boolean> {
    const pid = await readPidFile(path.join(this.store.dir(id), 'conmon.pid'));
    return pid !== undefined && processAlive(pid) && (await isConmonFor(pid, id));
  }

  /** The container is deleted: an exit of a container made again with its id is told again. */
  forget(id: string): void {
    this.notified.delete(id);
  }

  /** Stop watching (containers keep running: they belong to conmon). */
  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }
}
