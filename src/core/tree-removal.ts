/**
 * Removing a directory tree in one hop to a worker thread (issue 18: back-to-back starts).
 *
 * `fs.promises.rm(dir, { recursive: true })` walks the tree in JavaScript on the main thread and
 * hands each lstat, readdir, unlink and rmdir to libuv's pool: a container's directory and its
 * snapshot took ~100 pool jobs per removal here, each a wake-up of a pool thread and another of
 * the main thread. The thread here removes a whole tree with `rmSync` for one message each way
 * (with the mount table's reads cut beside it, the daemon's CPU per back-to-back request fell
 * from 63.2 to 57.9 ms; bench log, twenty-seventh session).
 *
 * One thread, trees removed in the order asked: a large tree (an image's layer) delays the ones
 * behind it by its own time. The thread ends after a quiet minute (it holds a V8 isolate); while
 * it is not running, a removal goes through `fs.promises.rm` as before and starts it for the
 * next ones, so no caller waits for a thread to start.
 */
import { rm } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { mountsUnder } from './mount-table.js';
import { logger } from './log.js';

const log = logger('core.tree-removal');

/** The thread ends after this long with nothing asked of it. */
const IDLE_EXIT_MS = 60_000;

/** What the thread is asked: remove `dir`; with `unlessMounted`, not when anything is mounted at or below it. */
export interface RemovalRequest {
  id: number;
  dir: string;
  unlessMounted: boolean;
}
/** What it answers: done; refused (the mount points found, nothing removed); failed (the error's code and message). */
export type RemovalReply = { id: number; mounted?: string[]; error?: { code?: string; message: string } };

interface Pending {
  resolve(mounted: string[]): void;
  reject(e: Error): void;
}

class RemovalThread {
  private worker: Worker | undefined;
  private ready = false;
  /** Settles once the thread started last says it runs (or fails first). */
  private started: Promise<void> = Promise.resolve();
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private idleTimer: NodeJS.Timeout | undefined;

  /** undefined: no thread running yet (one is started for the next removal). */
  ask(dir: string, unlessMounted: boolean): Promise<string[]> | undefined {
    if (!this.ready || !this.worker) {
      this.start();
      return undefined;
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    const id = this.nextId++;
    const req: RemovalRequest = { id, dir, unlessMounted };
    return new Promise<string[]>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker!.ref(); // a process waiting on a removal stays until it is done
      this.worker!.postMessage(req);
    });
  }

  /** Resolves once a thread runs (started if need be). */
  running(): Promise<void> {
    this.start();
    return this.started;
  }

  private start(): void {
    if (this.worker) return;
    // Held (ref'd) while it starts and while a removal is pending, let go between them: an idle
    // thread must not keep a process that is otherwise done alive (a short-lived one waited out
    // the idle minute). Let go only after the listeners are on: adding a 'message' listener holds
    // a worker again.
    const w = new Worker(new URL('./tree-removal-worker.js', import.meta.url));
    this.worker = w;
    let started!: { resolve(): void; reject(e: Error): void };
    this.started = new Promise<void>((resolve, reject) => (started = { resolve, reject }));
    this.started.catch(() => undefined); // nobody may be waiting: the failure is logged below
    w.on('message', (m: RemovalReply | 'ready') => {
      if (m === 'ready') {
        this.ready = true;
        started.resolve();
        if (this.pending.size === 0) w.unref();
        this.idleLater();
        return;
      }
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (this.pending.size === 0) w.unref();
      if (!p) return;
      if (m.error) p.reject(Object.assign(new Error(m.error.message), m.error.code ? { code: m.error.code } : {}));
      else p.resolve(m.mounted ?? []);
      this.idleLater();
    });
    const gone = (why: Error) => {
      started.reject(why); // a settled one stays as it was
      if (this.worker !== w) return;
      this.worker = undefined;
      this.ready = false;
      clearTimeout(this.idleTimer);
      for (const p of this.pending.values()) p.reject(why);
      this.pending.clear();
    };
    w.on('error', (e) => {
      log.warn('tree removal thread failed', { error: e });
      gone(e);
    });
    w.on('exit', () => gone(new Error('the tree removal thread exited')));
  }

  private idleLater(): void {
    if (this.pending.size > 0) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.pending.size > 0 || !this.worker) return;
      const w = this.worker;
      this.worker = undefined;
      this.ready = false;
      void w.terminate();
    }, IDLE_EXIT_MS);
    this.idleTimer.unref();
  }
}

const thread = new RemovalThread();

/** Start the removal thread ahead of the first removal (tests; otherwise the first removal starts it); resolves once it runs. */
export function startRemovalThread(): Promise<void> {
  return thread.running();
}

/** Remove a tree (absent is fine), on the removal thread when it runs. */
export async function removeTree(dir: string): Promise<void> {
  const asked = thread.ask(dir, false);
  if (asked) await asked;
  else await rm(dir, { recursive: true, force: true });
}

/**
 * Remove a tree unless something is mounted at or below it: then nothing is removed and the
 * mount points are returned (deepest first). Removing through a mount would delete what it shows.
 */
export async function removeTreeUnlessMounted(dir: string): Promise<string[]> {
  const asked = thread.ask(dir, true);
  if (asked) return asked;
  const left = await mountsUnder(dir);
  if (left.length === 0) await rm(dir, { recursive: true, force: true });
  return left;
}
