/**
 * A container's process exits: the exit recorded (status, code, the die event), then its restart
 * policy applied (a start after a back-off, cancelled by a stop or rm) or, for --rm, its removal.
 */
import { hasCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../../agent/agent.js';
import type { RuntimeState } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord } from '../../store/records.js';

const log = logger('compute');
const RESTART_BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 6400, 10_000];

export interface ExitDeps {
  store: Store;
  agentOf(c: { host: string }): Agent;
  /** The record; NotFound when there is none. */
  current(id: string): Promise<ContainerRecord>;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  bounded<T>(id: string, op: string, p: Promise<T>): Promise<T>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
  /** The restart policy's start (restartCount counted), under the lock the caller holds. */
  startByPolicy(id: string): Promise<unknown>;
  /** rm -f of an exited --rm container. */
  remove(id: string): Promise<void>;
  /** ContainerServiceOptions.handlesExits. */
  handlesExits?: () => boolean;
}

export class ContainerExits {
  private readonly restartTimers = new Map<string, NodeJS.Timeout>();

  constructor(private readonly deps: ExitDeps) {}

  /** handleExit from a callback that cannot wait for it: its failure is logged. */
  handleExitDetached(id: string, host?: string): void {
    if (this.deps.handlesExits && !this.deps.handlesExits()) return;
    void this.handleExit(id, host).catch((e: unknown) => log.warn('recording a container exit failed', { id, error: String(e) }));
  }

  async recordExit(id: string, state: RuntimeState): Promise<ContainerRecord> {
    const { store } = this.deps;
    const cur = await this.deps.current(id);
    if (cur.status === 'exited' && cur.exitCode !== null) return cur;
    const next = await store.containers.update(id, {
      status: 'exited',
      pid: null,
      exitCode: state.exitCode ?? cur.exitCode ?? 255,
      oomKilled: state.oomKilled ?? false,
      finishedAt: state.finishedAt ?? new Date().toISOString(),
    });
    this.deps.publish(next, 'die', { exitCode: next.exitCode, oomKilled: next.oomKilled });
    return next;
  }

  /** The agent of `from` (absent: the container's own) saw the process exit: record it, then apply the restart policy. */
  async handleExit(id: string, from?: string): Promise<void> {
    const { store } = this.deps;
    const cur = await store.containers.get(id);
    if (!cur || cur.status === 'removing') return;
    // another host's report of an id it does not hold for us (its own stale state) is not this container's exit
    if (from !== undefined && from !== cur.host) return;
    const agent = this.deps.agentOf(cur);
    let state: RuntimeState;
    try {
      state = await agent.containerState(id);
    } catch (e) {
      if (hasCode(e, 'NotFound')) return;
      throw e;
    }
    if (state.status !== 'stopped') return;
    const rec = await this.deps.locked(id, async () => {
      const now = await store.containers.get(id);
      // an exit from a host the container has left (a move) is not its exit
      if (!now || now.status === 'removing' || now.host !== cur.host) return undefined;
      // An exit older than the last start may be the previous run's (a restart held the lock
      // meanwhile): ask again. (A fast exit's time, the exit file's mtime on the file system's coarse clock, can also read before startedAt.)
      if (now.status === 'running' && now.startedAt && state.finishedAt && state.finishedAt < now.startedAt) {
        const fresh = await this.deps.bounded(id, 'state', agent.containerState(id));
        return fresh.status === 'stopped' ? this.recordExit(id, fresh) : undefined;
      }
      return this.recordExit(id, state);
    });
    if (!rec) return;
    if (rec.config.autoRemove) {
      await this.deps.remove(id).catch((e: unknown) => log.warn('auto-remove failed', { id, error: String(e) }));
      return;
    }
    await this.maybeRestart(rec);
  }

  /** An exited container: started again after its back-off if its restart policy says so. */
  async maybeRestart(c: ContainerRecord): Promise<void> {
    const p = c.config.restart;
    if (c.stoppedByUser || p.name === 'no') return;
    if (p.name === 'on-failure') {
      if (c.exitCode === 0) return;
      if (p.maxRetries !== undefined && p.maxRetries > 0 && c.restartCount >= p.maxRetries) return;
    }
    const delay = RESTART_BACKOFF_MS[Math.min(c.restartCount, RESTART_BACKOFF_MS.length - 1)]!;
    // The timer is registered before the status is written, so a stop or rm from now on cancels it.
    const timer = setTimeout(() => {
      this.restartTimers.delete(c.id);
      void this.deps.locked(c.id, async () => {
        const now = await this.deps.store.containers.get(c.id);
        if (!now || now.status !== 'restarting') return;
        await this.deps.startByPolicy(c.id);
      }).catch(async (e: unknown) => {
        log.warn('restart failed', { id: c.id, error: String(e) });
        await this.settleRestarting(c.id);
      }).catch((e: unknown) => log.warn('recording a failed restart failed', { id: c.id, error: String(e) }));
    }, delay);
    timer.unref();
    this.restartTimers.set(c.id, timer);
    await this.deps.store.containers.update(c.id, { status: 'restarting' });
    // cancelled while the status was written: the canceller may have read the status before it
    if (this.restartTimers.get(c.id) !== timer) await this.settleRestarting(c.id);
    else this.deps.publish(c, 'restarting', { delayMs: delay });
  }

  /** A restart that will not happen: a container left restarting is exited. */
  private async settleRestarting(id: string): Promise<void> {
    const now = await this.deps.store.containers.get(id);
    if (now?.status === 'restarting') await this.deps.store.containers.update(id, { status: 'exited' });
  }

  async cancelRestart(id: string): Promise<void> {
    const t = this.restartTimers.get(id);
    if (t) {
      // the timer first, at once: nothing may start the container from here on
      clearTimeout(t);
      this.restartTimers.delete(id);
      await this.settleRestarting(id);
    }
  }

  /** Every pending restart dropped (the service shuts down): the records stay as they are. */
  cancelAll(): void {
    for (const t of this.restartTimers.values()) clearTimeout(t);
    this.restartTimers.clear();
  }
}
