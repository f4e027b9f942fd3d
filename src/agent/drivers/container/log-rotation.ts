/**
 * The container driver's side of log rotation: one worker thread for all of the driver's
 * containers (log-rotation-worker.ts runs container-logs.ts's rotateOnce there). Created at
 * the first container, never keeps the process alive.
 */
import { Worker } from 'node:worker_threads';
import { logger } from '../../../core/log.js';

const log = logger('agent.drivers.container.logs');

export type RotationMessage =
  | { op: 'start'; id: string; logPath: string; maxFiles: number }
  | { op: 'maxFiles'; id: string; maxFiles: number }
  | { op: 'finish' | 'stop'; id: string }
  | { op: 'close' };

export class LogRotation {
  private worker: Worker | undefined;
  private readyP: Promise<void> | undefined;
  private readonly active = new Set<string>();

  /**
   * Resolves once the worker runs (started if need be). Awaited before a conmon starts: a worker
   * still loading (~100 ms on a busy host) would let a fast writer's first rotations go unnamed.
   */
  ready(): Promise<void> {
    this.spawn();
    return this.readyP!;
  }

  /** Rotate this container's log from now on (again, with these limits, if it was already). */
  start(id: string, logPath: string, maxFiles: number): void {
    this.active.add(id);
    this.post({ op: 'start', id, logPath, maxFiles });
  }

  has(id: string): boolean {
    return this.active.has(id);
  }

  setMaxFiles(id: string, maxFiles: number): void {
    if (this.active.has(id)) this.post({ op: 'maxFiles', id, maxFiles });
  }

  /** Its conmon has exited: one last pass, then no more watching. */
  finish(id: string): void {
    if (this.active.delete(id)) this.post({ op: 'finish', id });
  }

  stop(id: string): void {
    if (this.active.delete(id)) this.post({ op: 'stop', id });
  }

  /** The worker ends its helper and itself; terminated if it has not within 5 s. */
  close(): void {
    this.active.clear();
    const w = this.worker;
    this.worker = undefined;
    if (!w) return;
    w.postMessage({ op: 'close' } satisfies RotationMessage);
    const overdue = setTimeout(() => void w.terminate(), 5_000);
    overdue.unref();
    w.once('exit', () => clearTimeout(overdue));
  }

  private spawn(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./log-rotation-worker.js', import.meta.url));
    this.readyP = new Promise<void>((resolve) => {
      w.on('message', (r: { ready: true; priority: string } | { id: string; error: string } | { degraded: string }) => {
        if ('degraded' in r) log.warn('log rotation watches with fs.watch, which wakes for every write of every container\'s log', { why: r.degraded });
        else if ('ready' in r) {
          // not real-time: under load a pass may fall two generations behind a fast writer and lose one
          if (r.priority === 'SCHED_FIFO 10') log.debug('log rotation worker ready', { priority: r.priority });
          else log.warn('log rotation worker runs without real-time priority: a fast writer\'s rotations may outrun it on a loaded host, losing log generations', { priority: r.priority });
          resolve();
        } else log.warn('log rotation failed', r);
      });
      w.on('error', (e) => {
        log.error('log rotation worker failed', { error: e });
        resolve(); // conmon still enforces max-size alone
        if (this.worker === w) this.worker = undefined; // the next start makes another
      });
    });
    // Not unref'd: it holds the process until close(). (It never was: an unref() before the
    // 'message' listener is undone by it.) Tests awaiting a container's exit rely on a hold, as
    // the exit watcher is not persistent.
    this.worker = w;
    return w;
  }

  private post(m: RotationMessage): void {
    this.spawn().postMessage(m);
  }
}
