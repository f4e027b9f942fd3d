/**
 * Small files of a layer, created off the main thread (issue 18: pulls).
 *
 * A layer of 2,000 small files spent ~40% of its pull in `open(O_CREAT)` on the daemon's main
 * thread (0.12 ms each: the kernel's inode creation), one file after another, while the same
 * thread also had the tar stream to parse, the digest to hash and the download to feed. The
 * extractor now queues each small file (its body is already in memory) and worker threads create
 * them in batches with the same synchronous calls, so creating files overlaps with everything
 * else and with itself.
 *
 * The extractor keeps the order that matters: every check (a path inside the root, no symlinked
 * parent, limits, free space) is made before a file is queued, and anything that could touch a
 * queued path (an entry at the same path, a parent lookup, a removal, a hard link to it, the
 * final metadata pass) waits until the queue has written it (flush). Errors surface at the next
 * entry or at the end, and a failed layer waits for its writes to stop before the caller
 * removes its directory (settle).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { logger } from '../../core/log.js';

const log = logger('agent.layers.file-writer');

/** One file of a batch: its bytes are data[offset, offset + length). */
export interface BatchFile {
  path: string;
  offset: number;
  length: number;
  mode: number;
  /** -1: leave the owner (the creating user). */
  uid: number;
  gid: number;
  mtimeMs: number | null;
}

export interface FileBatch {
  id: number;
  files: BatchFile[];
  data: ArrayBuffer;
}

export interface FileBatchReply {
  id: number;
  error?: { index: number; code: string; message: string };
}

/** A batch is sent once it holds this many files or bytes (or when the event loop turns). */
const BATCH_FILES = 64;
const BATCH_BYTES = 1024 * 1024;
/** Bytes queued or being written per layer before the extractor waits: memory stays bounded. */
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/** A thread with nothing to write for this long (ms) ends (each holds ~10 MiB: its own V8 heap); the next layer starts it again. */
let idleExitMs = 60_000;

/** Tests: how long an idle thread lives, and how many threads live now. */
export function setFileWriterIdleExit(ms: number): void {
  idleExitMs = ms;
  for (const t of threads) t.rearm();
}
export function liveFileWriters(): number {
  return threads.filter((t) => !t.broken).length;
}

class WriterThread {
  private readonly worker: Worker;
  private readonly waiting = new Map<number, { resolve: (r: FileBatchReply) => void; reject: (e: Error) => void }>();
  broken: Error | undefined;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor() {
    this.worker = new Worker(new URL('./file-writer-worker.js', import.meta.url));
    this.worker.on('message', (r: FileBatchReply) => {
      const w = this.waiting.get(r.id);
      this.waiting.delete(r.id);
      if (this.waiting.size === 0) {
        this.worker.unref();
        this.rearm();
      }
      w?.resolve(r);
    });
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`file writer thread exited with code ${code}`)));
    // after the listeners (a 'message' listener refs the port again): referenced only while it has work
    this.worker.unref();
    this.rearm();
  }

  get load(): number {
    return this.waiting.size;
  }

  send(batch: FileBatch): Promise<FileBatchReply> {
    if (this.broken) return Promise.reject(this.broken);
    clearTimeout(this.idleTimer);
    return new Promise((resolve, reject) => {
      this.waiting.set(batch.id, { resolve, reject });
      if (this.waiting.size === 1) this.worker.ref();
      this.worker.postMessage(batch, [batch.data]);
    });
  }

  /** Count the idle time from now (no work left, or the limit changed). */
  rearm(): void {
    if (this.waiting.size > 0 || this.broken) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.retire(), idleExitMs).unref();
  }

  /** Idle for idleExitMs: end (the pool makes a new thread for the next batch). */
  private retire(): void {
    if (this.waiting.size > 0 || this.broken) return;
    this.broken = new Error('file writer thread retired while idle');
    void this.worker.terminate();
  }

  private fail(e: Error): void {
    if (!this.broken) log.warn('file writer thread failed', { error: e.message });
    this.broken ??= e;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}

/** The process's writer threads: one per CPU (at most 4), started at the first layer or by warmFileWriters(). */
const threads: WriterThread[] = [];
let nextBatchId = 1;

/** The least loaded thread. */
function threadFor(): WriterThread {
  const want = Math.max(1, Math.min(4, availableParallelism()));
  for (let i = threads.length - 1; i >= 0; i--) if (threads[i]!.broken) threads.splice(i, 1);
  while (threads.length < want) threads.push(new WriterThread());
  let best = threads[0]!;
  for (const t of threads) if (t.load < best.load) best = t;
  return best;
}

/** Start the writer threads ahead of the first pull (a thread takes tens of ms to load). */
export function warmFileWriters(): void {
  threadFor();
}

/** errno errors keep their code, so the extractor maps them as it maps its own (ENOSPC → ResourceExhausted). */
function errnoError(e: { code: string; message: string }): NodeJS.ErrnoException {
  return Object.assign(new Error(e.message), { code: e.code });
}

/** One layer's queue of small files. */
export class SmallFileWriter {
  private files: BatchFile[] = [];
  private chunks: Buffer[] = [];
  private rels: string[] = [];
  private bytes = 0;
  private scheduled = false;

  /** Relative paths queued or being written. */
  private readonly pending = new Set<string>();
  private readonly inFlight = new Set<Promise<void>>();
  private inFlightBytes = 0;
  private failure: NodeJS.ErrnoException | Error | undefined;

  /** Whether rel is queued or being written (anything touching it must flush first). */
  has(rel: string): boolean {
    return this.pending.has(rel);
  }

  /** Queue a file; waits while too many bytes are in flight; throws an earlier batch's error. */
  async add(rel: string, file: Omit<BatchFile, 'offset' | 'length'>, data: Buffer): Promise<void> {
    this.throwIfFailed();
    this.pending.add(rel);
    this.files.push({ ...file, offset: this.bytes, length: data.length });
    this.chunks.push(data);
    this.rels.push(rel);
    this.bytes += data.length;
    if (this.files.length >= BATCH_FILES || this.bytes >= BATCH_BYTES) this.dispatch();
    else if (!this.scheduled) {
      // a partial batch goes when the entries at hand are parsed: the threads never wait for a full one
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.dispatch();
      });
    }
    while (this.inFlightBytes > MAX_IN_FLIGHT_BYTES && this.inFlight.size) await Promise.race(this.inFlight);
    this.throwIfFailed();
  }

  /** Everything queued is written; throws the first error. */
  async flush(): Promise<void> {
    await this.settle();
    this.throwIfFailed();
  }

  /** Everything queued is written or failed; never throws (a failed layer waits here before its directory goes). */
  async settle(): Promise<void> {
    this.dispatch();
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  private dispatch(): void {
    if (this.files.length === 0) return;
    const files = this.files;
    const rels = this.rels;
    const bytes = this.bytes;
    // a buffer of its own to transfer: small Buffers share Node's pool, which must never be detached
    const data = new ArrayBuffer(bytes);
    const view = new Uint8Array(data);
    let at = 0;
    for (const c of this.chunks) {
      view.set(c, at);
      at += c.length;
    }
    this.files = [];
    this.chunks = [];
    this.rels = [];
    this.bytes = 0;
    this.inFlightBytes += bytes;
    const done = (async () => {
      try {
        const reply = await threadFor().send({ id: nextBatchId++, files, data });
        if (reply.error) this.failure ??= errnoError(reply.error);
      } catch (e) {
        this.failure ??= e instanceof Error ? e : new Error(String(e));
      } finally {
        for (const rel of rels) this.pending.delete(rel);
        this.inFlightBytes -= bytes;
      }
    })();
    this.inFlight.add(done);
    void done.finally(() => this.inFlight.delete(done));
  }
}
