/**
 * A container's lifecycle operations along the state machine (container-state.ts): start, stop,
 * kill, restart, pause, unpause, rename, rm, each serialised per container by its lock (kill
 * excepted), and docker wait's conditions.
 */
import { Conflict, InvalidArgument, NotFound, hasCode } from '../../core/errors.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import type { Agent } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { NetworkService } from '../networks/network-service.js';
import type { QuotaService } from '../quota/quota-service.js';
import { mountsOf, type VolumeService } from '../volumes/volume-service.js';
import { checkStopTimeout } from './container-input.js';
import type { ContainerExits } from './container-exits.js';
import { assertTransition, StopsInFlight } from './container-state.js';

export interface LifecycleDeps {
  store: Store;
  events: Pick<EventBus, 'on'>;
  quota: Pick<QuotaService, 'shared' | 'holds' | 'admitContainerUnlessHeld' | 'release'>;
  networks: Pick<NetworkService, 'renamed'>;
  /** The daemon's volume service, once it is set (absent: no anonymous volumes to remove). */
  volumes(): VolumeService | undefined;
  exits: Pick<ContainerExits, 'recordExit' | 'handleExitDetached' | 'cancelRestart'>;
  /** By id, name or unique id prefix (NotFound otherwise). */
  get(idOrName: string): Promise<ContainerRecord>;
  /** The record; NotFound when there is none. */
  current(id: string): Promise<ContainerRecord>;
  agentOf(c: { host: string }): Agent;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /** An agent call bounded in time (a stop's timeout more: extraMs). */
  bounded<T>(id: string, op: string, p: Promise<T>, extraMs?: number, signal?: AbortSignal): Promise<T>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
  /** The scheduler's claim given back (a failure logged). */
  releaseClaim(id: string): Promise<void>;
}

export class ContainerLifecycle {
  /** Graceful stops holding a lock: what kill and rm -f preempt (container-state.ts). */
  private readonly stops = new StopsInFlight();

  constructor(private readonly deps: LifecycleDeps) {}

  async start(idOrName: string): Promise<ContainerRecord> {
    const c = await this.deps.get(idOrName);
    return this.deps.locked(c.id, () => this.startLocked(c.id, false));
  }

  /** The start, under the lock the caller holds; `alsoWrite` goes into the same record update. */
  async startLocked(id: string, byRestartPolicy: boolean, alsoWrite: Partial<Omit<ContainerRecord, 'id'>> = {}): Promise<ContainerRecord> {
    const { store, quota } = this.deps;
    let c = await store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    if (c.status === 'running' || c.status === 'paused') return c;
    assertTransition(c.name, c.status, 'running', 'start');
    // A container stopped by a quota reclaim gave its quota back: it runs again only if admitted again.
    if (quota.shared || !quota.holds(id)) await quota.admitContainerUnlessHeld(id, c.projectId, c.config);
    const state = await this.deps.bounded(id, 'start', this.deps.agentOf(c).startContainer(id));
    // Even if it already finished, record it as started: handleExit records the exit.
    c = await store.containers.update(id, {
      ...alsoWrite,
      status: 'running',
      pid: state.pid ?? null,
      // the host's time of the start, from the clock its exit time will come from (metering takes
      // the run as finishedAt - startedAt; ours, after the answer, was late by as much as a busy
      // event loop holds it: CI read a 6 s run as 5.1 s)
      startedAt: state.startedAt ?? new Date().toISOString(),
      finishedAt: null,
      exitCode: null,
      oomKilled: false,
      stoppedByUser: false,
      ...(byRestartPolicy ? { restartCount: c.restartCount + 1 } : {}),
    });
    this.deps.publish(c, 'start', { pid: c.pid });
    // detached: handleExit takes this container's lock, which the caller holds
    if (state.status === 'stopped') this.deps.exits.handleExitDetached(id);
    return c;
  }

  async stop(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = await this.deps.get(idOrName);
    await this.deps.exits.cancelRestart(c.id);
    return this.deps.locked(c.id, () => this.stopLocked(c.id, timeoutSec));
  }

  /** The graceful stop, under the lock the caller holds, registered so kill and rm -f preempt it. */
  stopLocked(id: string, timeoutSec?: number): Promise<ContainerRecord> {
    return this.stops.run(id, (signal) => this.gracefulStop(id, timeoutSec, signal));
  }

  /** The graceful stop, registered in this.stops: kill cuts its wait short, rm -f aborts it (signal). */
  private async gracefulStop(id: string, timeoutSec: number | undefined, signal: AbortSignal): Promise<ContainerRecord> {
    const { store } = this.deps;
    let cur = await store.containers.get(id);
    if (!cur) throw new NotFound(`no such container: ${id}`);
    if (cur.status !== 'running' && cur.status !== 'paused' && cur.status !== 'restarting') return cur;
    cur = await store.containers.update(id, { stoppedByUser: true });
    // a record made before stopTimeout was bounded may hold more: the bound holds for it too
    const t = timeoutSec ?? Math.min(cur.config.stopTimeout ?? 10, MAX_STOP_TIMEOUT_SEC);
    const imageSignal = (await store.images.get(cur.imageDigest))?.config.config?.StopSignal;
    // its timeout, then the agent's SIGKILL and wait, within the usual deadline
    const agent = this.deps.agentOf(cur);
    await this.deps.bounded(id, 'stop', agent.stopContainer(id, t, cur.config.stopSignal ?? imageSignal), t * 1000, signal);
    const state = await this.deps.bounded(id, 'state', agent.containerState(id), 0, signal);
    return this.deps.exits.recordExit(id, state);
  }

  /**
   * Signal the process. Not under the lifecycle lock: a graceful stop holding it must not delay a
   * kill (container-state.ts). During a stop, a process already gone is what the kill wanted, and
   * a SIGKILL answers once the stop has recorded the exit.
   */
  async kill(idOrName: string, signal = 'SIGKILL'): Promise<ContainerRecord> {
    const { store } = this.deps;
    const c = await this.deps.get(idOrName);
    const stopping = this.stops.get(c.id);
    const cur = await store.containers.get(c.id);
    if (!cur) throw new NotFound(`no such container: ${c.id}`);
    if (!stopping && cur.status !== 'running' && cur.status !== 'paused') {
      throw new Conflict(`cannot kill container ${cur.name}: it is ${cur.status}`);
    }
    try {
      await this.deps.bounded(c.id, 'kill', this.deps.agentOf(cur).killContainer(c.id, signal));
    } catch (e) {
      if (!stopping || !(hasCode(e, 'Conflict') || hasCode(e, 'NotFound'))) throw e;
    }
    this.deps.publish(cur, 'kill', { signal });
    if (stopping && /^(SIG)?KILL$|^9$/i.test(signal)) await this.deps.bounded(c.id, 'stop', stopping.stopped);
    return (await store.containers.get(c.id)) ?? cur;
  }

  /** Stop then start, as one lifecycle operation: rm -f cancels it (no start after), kill only cuts its stop short. */
  async restart(idOrName: string, timeoutSec?: number): Promise<ContainerRecord> {
    if (timeoutSec !== undefined) checkStopTimeout(timeoutSec);
    const c = await this.deps.get(idOrName);
    await this.deps.exits.cancelRestart(c.id);
    return this.deps.locked(c.id, () =>
      this.stops.run(c.id, async (signal, stopDone) => {
        await this.gracefulStop(c.id, timeoutSec, signal);
        stopDone();
        if (signal.aborted) throw signal.reason as Error;
        return this.startLocked(c.id, false);
      }),
    );
  }

  async pause(idOrName: string): Promise<ContainerRecord> {
    const c = await this.deps.get(idOrName);
    return this.deps.locked(c.id, async () => {
      const cur = await this.deps.current(c.id);
      assertTransition(cur.name, cur.status, 'paused', 'pause');
      if (cur.status === 'paused') return cur;
      await this.deps.bounded(c.id, 'pause', this.deps.agentOf(cur).pauseContainer(c.id));
      const next = await this.deps.store.containers.update(c.id, { status: 'paused' });
      this.deps.publish(next, 'pause');
      return next;
    });
  }

  async unpause(idOrName: string): Promise<ContainerRecord> {
    const c = await this.deps.get(idOrName);
    return this.deps.locked(c.id, async () => {
      const cur = await this.deps.current(c.id);
      if (cur.status !== 'paused') throw new Conflict(`cannot unpause container ${cur.name}: it is ${cur.status}`);
      await this.deps.bounded(c.id, 'unpause', this.deps.agentOf(cur).unpauseContainer(c.id));
      const next = await this.deps.store.containers.update(c.id, { status: 'running' });
      this.deps.publish(next, 'unpause');
      return next;
    });
  }

  /**
   * A new name in its project (AlreadyExists when an instance there has it). DNS follows on every
   * host: its own host's endpoints answer the new name, the overlay's peers are pushed again.
   * The record changes first; if its host refuses, the old name comes back.
   */
  async rename(idOrName: string, to: string): Promise<ContainerRecord> {
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/.test(to)) throw new InvalidArgument(`invalid container name "${to.slice(0, 64)}": letters, digits, _ . - (not first), at most 128`);
    const c = await this.deps.get(idOrName);
    return this.deps.locked(c.id, async () => {
      const cur = await this.deps.current(c.id);
      if (cur.name === to) return cur;
      const next = await this.deps.store.containers.update(c.id, { name: to });
      try {
        await this.deps.networks.renamed(next, cur.name);
      } catch (e) {
        await this.deps.store.containers.update(c.id, { name: cur.name });
        throw e;
      }
      this.deps.publish(next, 'rename', { oldName: cur.name });
      return next;
    });
  }

  /**
   * rm; with force, it preempts (container-state.ts): a pending restart is cancelled, a stop in
   * flight aborted and the process SIGKILLed at once, then the removal takes the lock.
   */
  async remove(idOrName: string, force: boolean, opts: { volumes?: boolean } = {}): Promise<void> {
    const c = await this.deps.get(idOrName);
    await this.removeLocked(c, force, opts.volumes === true);
  }

  private async removeLocked(c: ContainerRecord, force: boolean, volumes: boolean): Promise<void> {
    const { store } = this.deps;
    await this.deps.exits.cancelRestart(c.id);
    if (force) {
      this.stops.abort(c.id, new Conflict(`container ${c.name} was removed (rm -f) while it stopped`, { container: c.id }));
      const cur = await store.containers.get(c.id);
      if (cur && (cur.status === 'running' || cur.status === 'paused')) {
        await this.deps.bounded(c.id, 'kill', this.deps.agentOf(cur).killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
    }
    return this.deps.locked(c.id, async () => {
      const cur = await store.containers.get(c.id);
      if (!cur) return;
      if ((cur.status === 'running' || cur.status === 'paused' || cur.status === 'restarting') && !force) {
        throw new Conflict(`container ${cur.name} is ${cur.status}: stop it first or use --force`);
      }
      await store.containers.update(c.id, { status: 'removing' });
      const agent = this.deps.agentOf(cur);
      if (cur.status === 'running' || cur.status === 'paused') {
        await this.deps.bounded(c.id, 'kill', agent.killContainer(c.id, 'SIGKILL')).catch(() => undefined);
      }
      await this.deps.bounded(c.id, 'removal', agent.removeContainer(c.id));
      await store.containers.delete(c.id);
      await this.deps.quota.release(c.id, 'container removed');
      await this.deps.releaseClaim(c.id);
      // rm -v, and --rm (as dockerd): its anonymous volumes go too, unless another container uses
      // them; before the destroy event, which is what `run --rm` waits for
      const volumeService = this.deps.volumes();
      if (volumeService && (volumes || cur.config.autoRemove)) {
        await volumeService.removeAnonymous(mountsOf(cur).flatMap((m) => (m.type === 'volume' && m.anonymous ? [m.volumeId] : [])), cur.projectId);
      }
      this.deps.publish(cur, 'destroy');
    });
  }

  /**
   * Docker's wait conditions: "not-running" resolves once the container has
   * exited; "removed" once it is also gone (what `run --rm` waits for).
   */
  async wait(idOrName: string, condition: 'not-running' | 'removed' = 'not-running', signal?: AbortSignal): Promise<{ exitCode: number; oomKilled: boolean }> {
    const c = await this.deps.get(idOrName);
    let last: { exitCode: number; oomKilled: boolean } | undefined;
    const settled = (r: ContainerRecord) => ({ exitCode: r.exitCode ?? -1, oomKilled: r.oomKilled });
    return new Promise((resolve, reject) => {
      const check = async () => {
        const r = await this.deps.store.containers.get(c.id);
        if (r && (r.status === 'exited' || r.status === 'dead') && r.exitCode !== null) last = settled(r);
        const done = condition === 'removed' ? !r : !r || r.status === 'exited' || r.status === 'dead';
        if (done) {
          off();
          resolve(last ?? (r ? settled(r) : { exitCode: -1, oomKilled: false }));
        }
      };
      // one read at a time, in event order: `last` is the exit seen before the removal
      let checks = Promise.resolve();
      const recheck = () => {
        checks = checks.then(check).catch((e: unknown) => {
          off();
          reject(e as Error);
        });
      };
      const off = this.deps.events.on((e) => {
        if (e.type !== 'container' || e.id !== c.id || (e.action !== 'die' && e.action !== 'destroy')) return;
        // the exit as the event carries it: with --rm the record may be gone by the time a read runs
        const a = e.attributes ?? {};
        if (e.action === 'die' && typeof a.exitCode === 'number') last = { exitCode: a.exitCode, oomKilled: a.oomKilled === true };
        recheck();
      });
      signal?.addEventListener('abort', () => {
        off();
        reject(new Error('aborted'));
      });
      recheck();
    });
  }
}
