/**
 * A worker thread that does the daemon's small file operations synchronously, asked in batches:
 * the operations asked in one turn of the event loop go in one message, and their answers come
 * back in one (issue 18).
 *
 * Through `fs.promises` each open, write, close and rename is a job of libuv's pool: a wake-up of a
 * pool thread, then one of the main thread, and on this 2-core host the waker is often preempted
 * by the thread it woke. A container's claim wrote seven small files that way, ~25 jobs. Measured
 * here (2,000-byte files, 50 writers at once): a write and rename through fs.promises cost the
 * event loop 130-220 µs of CPU, through this thread 8-65 µs.
 *
 * Two threads use it: tree removal (tree-removal.ts: a whole tree per request, which may be an
 * image's layer and take long) and the agent's state files (state-files.ts: a few KB each, on the
 * request path), apart so that a layer's removal never holds up a request's write.
 */
import { Worker } from 'node:worker_threads';
import { logger } from './log.js';

const log = logger('core.file-thread');

/** What the thread is asked to do. */
export type FileOp =
  /** Remove `dir` (absent is fine); with `unlessMounted`, not when anything is mounted at or below it. */
  | { op: 'removeTree'; dir: string; unlessMounted: boolean }
  /** Write `data` over the file in place (created with `mode` if missing), then cut it to its length: the inode stays. */
  | { op: 'write'; file: string; data: string; mode: number }
  /** Replace the file atomically: `data` into a new file beside it, renamed over it. */
  | { op: 'replace'; file: string; data: string; mode: number }
  /** Remove a file if it is there. */
  | { op: 'unlink'; file: string };

/** What it answers: done; refused (the mount points found, nothing removed); failed (the error's code and message). */
export interface FileOpReply {
  mounted?: string[];
  error?: { code?: string; message: string };
}

/** The messages: a batch of requests, a batch of replies (by the requests' ids). */
export type FileThreadRequest = (FileOp & { id: number })[];
export type FileThreadReply = (FileOpReply & { id: number })[] | 'ready';

interface Pending {
  resolve(r: FileOpReply): void;
  reject(e: Error): void;
}

export class FileThread {
  private worker: Worker | undefined;
  private ready = false;
  /** Settles once the thread started last says it runs (or fails first). */
  private started: Promise<void> = Promise.resolve();
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Asked in this turn, sent together at its end. */
  private batch: FileThreadRequest = [];
  private idleTimer: NodeJS.Timeout | undefined;

  /** `idleExitMs`: the thread ends after this long with nothing asked (it holds a V8 isolate); undefined: it stays. */
  constructor(private readonly name: string, private readonly idleExitMs?: number) {}

  /** Whether a thread runs and answers (ask() then sends, rather than returning undefined). */
  get running(): boolean {
    return this.ready && this.worker !== undefined;
  }

  /** Nothing asked and unanswered: an operation done elsewhere now cannot pass one of this thread's. */
  get idle(): boolean {
    return this.pending.size === 0 && this.batch.length === 0;
  }

  /** undefined: no thread running yet (one is started: the caller does the operation itself). */
  ask(op: FileOp): Promise<FileOpReply> | undefined {
    if (!this.running) {
      this.start();
      return undefined;
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    const id = this.nextId++;
    return new Promise<FileOpReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.batch.length === 0) queueMicrotask(() => this.flush());
      this.batch.push({ ...op, id });
    });
  }

  /** Resolves once a thread runs (started if need be); rejects if it could not start. */
  whenRunning(): Promise<void> {
    this.start();
    return this.started;
  }

  private flush(): void {
    const batch = this.batch;
    this.batch = [];
    const w = this.worker;
    if (!batch.length) return;
    if (!w) {
      // the thread went between the ask and the end of the turn: gone() rejected these already
      return;
    }
    if (this.pending.size === batch.length) w.ref(); // a process waiting on the thread stays until it answers
    w.postMessage(batch);
  }

  private start(): void {
    if (this.worker) return;
    // Held (ref'd) while it starts and while an operation is pending, let go between them: an idle
    // thread must not keep a process that is otherwise done alive. Let go only after the listeners
    // are on: adding a 'message' listener holds a worker again.
    const w = new Worker(new URL('./file-thread-worker.js', import.meta.url));
    this.worker = w;
    let started!: { resolve(): void; reject(e: Error): void };
    this.started = new Promise<void>((resolve, reject) => (started = { resolve, reject }));
    this.started.catch(() => undefined); // nobody may be waiting: the failure is logged below
    w.on('message', (m: FileThreadReply) => {
      if (m === 'ready') {
        this.ready = true;
        started.resolve();
        if (this.pending.size === 0) w.unref();
        this.idleLater();
        return;
      }
      for (const r of m) {
        const p = this.pending.get(r.id);
        this.pending.delete(r.id);
        if (!p) continue;
        if (r.error) p.reject(Object.assign(new Error(r.error.message), r.error.code ? { code: r.error.code } : {}));
        else p.resolve(r.mounted ? { mounted: r.mounted } : {});
      }
      if (this.pending.size === 0) w.unref();
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
      this.batch = [];
    };
    w.on('error', (e) => {
      log.warn(`${this.name} thread failed`, { error: e });
      gone(e);
    });
    w.on('exit', () => gone(new Error(`the ${this.name} thread exited`)));
  }

  private idleLater(): void {
    if (this.pending.size > 0 || this.idleExitMs === undefined) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.pending.size > 0 || !this.worker) return;
      const w = this.worker;
      this.worker = undefined;
      this.ready = false;
      void w.terminate();
    }, this.idleExitMs);
    this.idleTimer.unref();
  }
}
