/**
 * A container's log files (ctr.log and its generations, container-logs.ts) as the driver serves
 * them: read, and followed until the exit; exported and imported for a cold move
 * (log-transfer.ts); and their rotation taken up again by a daemon started again.
 */
import path from 'node:path';
import type { Readable } from 'node:stream';
import { NotFound } from '../../../core/errors.js';
import { deferredIterable } from '../../../core/streams.js';
import type { TreeImportResult } from '../../agent.js';
import type { LogRecord } from '../instance-driver.js';
import type { ContainerExits } from './container-exits.js';
import { loadLogLimits, readK8sLog } from './container-logs.js';
import { exists, type ContainerStore } from './container-store.js';
import type { LogRotation } from './log-rotation.js';
import { exportLogs, importLogs } from './log-transfer.js';

export class ContainerLogFiles {
  constructor(
    private readonly store: Pick<ContainerStore, 'dir' | 'exitFile' | 'logPath' | 'list'>,
    private readonly exits: Pick<ContainerExits, 'listen'>,
    private readonly rotation: Pick<LogRotation, 'ready' | 'has' | 'start'>,
  ) {}

  read(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    return deferredIterable(async () => {
      const dir = this.store.dir(id);
      if (!(await exists(dir))) throw new NotFound(`container ${id} not found`, { id });
      return readK8sLog(this.store.logPath(id), {
        ...opts,
        label: `log of container ${id}`,
        isExited: async () => (await exists(this.store.exitFile(id))) || !(await exists(dir)),
        onExit: (wake) =>
          this.exits.listen((exited) => {
            if (exited === id) wake();
          }),
      });
    });
  }

  /** A stopped container's log generations as a tar, within its log limits (log-transfer.ts: a cold move carries them). */
  async export(id: string): Promise<Readable> {
    const logPath = this.store.logPath(id);
    // a stopped container whose runtime state went (a host restarted) has no log left: an empty tar, the move goes on
    return exportLogs(logPath, await loadLogLimits(logPath));
  }

  /** A moved container's earlier log, before its first start here: checked, and placed before the generation conmon opened. */
  async import(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    if (!(await exists(this.store.dir(id)))) throw new NotFound(`container ${id} not found`, { id });
    const logPath = this.store.logPath(id);
    return importLogs(logPath, bytes, await loadLogLimits(logPath), `the log of container ${id.slice(0, 12)}`);
  }

  /** A daemon started again: rotation for the containers whose conmon still runs (the exit watcher's start calls it). */
  async adoptRotation(): Promise<void> {
    await this.rotation.ready();
    for (const id of await this.store.list()) {
      if (this.rotation.has(id) || (await exists(this.store.exitFile(id)))) continue;
      if (!(await exists(path.join(this.store.dir(id), 'conmon.pid')))) continue;
      const logPath = this.store.logPath(id);
      const limits = await loadLogLimits(logPath);
      if (!this.rotation.has(id)) this.rotation.start(id, logPath, limits.maxFiles);
    }
  }
}
