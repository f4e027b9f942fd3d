/**
 * The SHA-256 of a stream, hashed on a worker thread once the stream passes a megabyte (issue 18:
 * pulls).
 *
 * A pull hashes every byte twice on the daemon's main thread: the blob's digest as it downloads
 * (content store) and the layer's diff id as it decompresses (applyLayer). That main thread also
 * parses the HTTP bodies and the tar and feeds zlib, so it is a pull's bottleneck, and hashing was
 * its largest single cost after the garbage collector (~0.7 ms per MiB here: ~280 ms of a 201 MiB
 * image's pull). Here the main thread copies each megabyte once into a slot of a ring shared with
 * the thread (a SharedArrayBuffer) and posts the slot's number; the thread hashes it and gives the
 * slot back. Nothing is allocated per batch (V8 counts every buffer as external memory, which
 * paces its collections).
 *
 * What is hashed is exactly what update() was given, in order: a port delivers messages in the
 * order they were posted, a slot is reused only once the thread said it is done with it, and the
 * digest is asked after the last batch. A stream that ends inside its first megabyte (manifests,
 * configs, small layers) is hashed on the main thread. A thread that fails makes every digest
 * waiting on it fail (the pull fails and removes what it wrote), and the next stream starts a new
 * thread with a new ring.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { Internal } from './errors.js';
import { logger } from './log.js';

const log = logger('core.stream-digest');

/** One batch: a stream shorter than this stays on the main thread. */
const BATCH_BYTES = 1024 * 1024;
/** Slots in the ring: the bytes handed over and not yet hashed, all streams together. */
const SLOTS = 16;
/** The thread ends after this long with no stream open (it holds ~10 MiB, and its ring). */
let idleExitMs = 60_000;

/** What the thread is sent: a slot's first `length` bytes hashed into stream `id`; a digest; a stream dropped. */
export type DigestRequest =
  | { op: 'update'; id: number; slot: number; length: number }
  | { op: 'update'; id: number; data: ArrayBuffer; length: number }
  | { op: 'digest'; id: number }
  | { op: 'drop'; id: number };
/** What it answers: a slot it is done with; a stream's hex digest. */
export type DigestReply = { op: 'hashed'; slot: number } | { op: 'digest'; id: number; hex: string };
/** The thread's workerData. */
export interface DigestThreadData {
  ring: SharedArrayBuffer;
  batchBytes: number;
}

interface OpenStream {
  done(hex: string): void;
  fail(e: Error): void;
}

class DigestThread {
  private readonly worker: Worker;
  readonly ring = new SharedArrayBuffer(SLOTS * BATCH_BYTES);
  private readonly free: number[] = Array.from({ length: SLOTS }, (_, i) => SLOTS - 1 - i);
  private readonly streams = new Map<number, OpenStream>();
  private slotWaiters: (() => void)[] = [];
  broken: Error | undefined;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor() {
    this.worker = new Worker(new URL('./stream-digest-worker.js', import.meta.url), { workerData: { ring: this.ring, batchBytes: BATCH_BYTES } satisfies DigestThreadData });
    this.worker.on('message', (r: DigestReply) => {
      if (r.op === 'hashed') {
        this.free.push(r.slot);
        this.wakeSlotWaiters();
        return;
      }
      const s = this.streams.get(r.id);
      this.close(r.id);
      s?.done(r.hex);
    });
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`digest thread exited with code ${code}`)));
    this.worker.unref(); // after the listeners: referenced only while a stream is open
    this.rearm();
  }

  /** A free slot's number, or undefined when every slot is with the thread. */
  takeSlot(): number | undefined {
    return this.free.pop();
  }

  /** A slot taken but never posted (its stream ended or was dropped first). */
  returnSlot(slot: number): void {
    this.free.push(slot);
    this.wakeSlotWaiters();
  }

  get full(): boolean {
    return this.free.length === 0;
  }

  /** Resolves once a slot is free (or the thread failed). */
  slotFreed(): Promise<void> {
    if (!this.full || this.broken) return Promise.resolve();
    return new Promise((resolve) => this.slotWaiters.push(resolve));
  }

  open(id: number, s: OpenStream): void {
    if (this.broken) throw this.broken;
    clearTimeout(this.idleTimer);
    if (this.streams.size === 0) this.worker.ref();
    this.streams.set(id, s);
  }

  post(m: DigestRequest, transfer?: ArrayBuffer[]): void {
    if (this.broken) throw this.broken;
    this.worker.postMessage(m, transfer);
  }

  close(id: number): void {
    if (!this.streams.delete(id) || this.streams.size > 0) return;
    this.worker.unref();
    this.rearm();
  }

  rearm(): void {
    if (this.streams.size > 0 || this.broken) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.streams.size > 0 || this.broken) return;
      this.broken = new Error('digest thread retired while idle');
      this.forget();
      void this.worker.terminate();
    }, idleExitMs).unref();
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }

  /** No longer the process's thread: its ring (16 MiB once used) goes with it. */
  private forget(): void {
    if (thread === this) thread = undefined;
  }

  private wakeSlotWaiters(): void {
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of waiters) w();
  }

  private fail(cause: Error): void {
    if (!this.broken) log.warn('digest thread failed', { error: cause.message });
    // never the stream's fault: a pull fails as the host's, not as a bad layer
    const e = new Internal(`the digest thread failed: ${cause.message}`, undefined, { cause });
    this.broken ??= e;
    this.forget();
    for (const s of this.streams.values()) s.fail(e);
    this.streams.clear();
    this.wakeSlotWaiters();
  }
}

let thread: DigestThread | undefined;
let nextId = 1;

function digestThread(): DigestThread {
  thread ??= new DigestThread();
  return thread;
}

/** Tests: how long an idle thread lives; whether one is alive now; the thread dying as a crash would end it. */
export function setDigestThreadIdleExit(ms: number): void {
  idleExitMs = ms;
  thread?.rearm();
}
export function digestThreadAlive(): boolean {
  return thread !== undefined;
}
export async function killDigestThreadForTests(): Promise<void> {
  await thread?.terminate();
}

/**
 * One stream's SHA-256: update() with every chunk in order, then digest(). update() copies what it
 * is given (the caller may reuse or hand on its buffers at once). While `pending`, every slot of
 * the ring is with the thread: the producer should await drained() before its next chunk, so the
 * bytes waiting to be hashed stay bounded when the thread gets less CPU than the streams. (A
 * producer that goes on anyway, or one that lost the last slot to another stream, is not refused:
 * its batch goes in a buffer of its own, carried to the thread.)
 */
export class StreamDigest {
  /** A stream known to be short: hashed here as it comes. */
  private local: Hash | undefined;
  /** A stream known to be long: to the thread from its first byte. */
  private readonly eager: boolean;
  /** The first megabyte of a stream of unknown length: chunks copied, hashed here if it ends there. */
  private head: Buffer[] = [];
  private headBytes = 0;
  private owner: DigestThread | undefined;
  private id: number | undefined;
  /** The slot being filled (a ring slot, or a buffer of its own when the ring was full), and how far. */
  private slot: number | Buffer | undefined;
  private at = 0;
  private failure: Error | undefined;
  private result: { resolve(hex: string): void; reject(e: Error): void } | undefined;
  private finished = false;

  /** `expectedBytes`, when the stream's length is known (a blob's descriptor), chooses at once. */
  constructor(expectedBytes?: number) {
    if (expectedBytes !== undefined && expectedBytes < BATCH_BYTES) this.local = createHash('sha256');
    this.eager = expectedBytes !== undefined && expectedBytes >= BATCH_BYTES;
  }

  update(chunk: Uint8Array): void {
    if (this.finished) throw new Error('StreamDigest: update after digest');
    if (this.failure) throw this.failure;
    if (this.local) {
      this.local.update(chunk); // a stream longer than it was said to be is its owner's to refuse
      return;
    }
    if (this.id === undefined) {
      if (!this.eager && this.headBytes + chunk.length < BATCH_BYTES) {
        this.head.push(Buffer.from(chunk));
        this.headBytes += chunk.length;
        return;
      }
      this.start();
    }
    this.copy(chunk);
  }

  /** Every slot is with the thread. */
  get pending(): boolean {
    return this.owner !== undefined && this.owner.full && !this.failure;
  }

  /** Resolves once a slot is free (at once when one is); rejects if the thread failed. */
  async drained(): Promise<void> {
    if (this.pending) await this.owner!.slotFreed();
    if (this.failure) throw this.failure;
  }

  /** "sha256:<hex>" of everything given to update(). */
  digest(): Promise<string> {
    if (this.finished) return Promise.reject(new Error('StreamDigest: digest asked twice'));
    this.finished = true;
    if (this.failure) return Promise.reject(this.failure);
    if (this.local) return Promise.resolve(`sha256:${this.local.digest('hex')}`);
    if (this.id === undefined) {
      // the whole stream fits one batch: hashed here, the thread never involved
      const h = createHash('sha256');
      for (const c of this.head) h.update(c);
      this.head = [];
      return Promise.resolve(`sha256:${h.digest('hex')}`);
    }
    try {
      this.flushSlot();
    } catch (e) {
      return Promise.reject(e);
    }
    const id = this.id;
    return new Promise<string>((resolve, reject) => {
      this.result = { resolve: (hex) => resolve(`sha256:${hex}`), reject };
      if (this.failure) return reject(this.failure);
      try {
        this.owner!.post({ op: 'digest', id });
      } catch (e) {
        this.onFailure(e as Error);
      }
    });
  }

  /** The stream was abandoned (its pull failed): the thread forgets it. Harmless after digest(). */
  dispose(): void {
    this.head = [];
    if (this.id === undefined || this.finished) return;
    this.finished = true;
    if (typeof this.slot === 'number') this.owner!.returnSlot(this.slot);
    this.slot = undefined;
    if (this.failure) return;
    try {
      this.owner!.post({ op: 'drop', id: this.id });
    } catch {
      // the thread is gone, and the stream with it
    }
    this.owner!.close(this.id);
  }

  /** The stream passed a megabyte: from now on the thread hashes it, its head first. */
  private start(): void {
    try {
      this.owner = digestThread();
      this.id = nextId++;
      this.owner.open(this.id, { done: (hex) => this.result?.resolve(hex), fail: (e) => this.onFailure(e) });
    } catch (e) {
      this.onFailure(e as Error);
      throw e;
    }
    const head = this.head;
    this.head = [];
    this.headBytes = 0;
    for (const c of head) this.copy(c);
  }

  private copy(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.length) {
      // a producer that did not wait for drained(), or streams racing for the last slots: this batch
      // goes in a buffer of its own, carried to the thread (rare: the ring is the bound)
      this.slot ??= this.owner!.takeSlot() ?? Buffer.allocUnsafeSlow(BATCH_BYTES);
      const n = Math.min(chunk.length - off, BATCH_BYTES - this.at);
      const into = typeof this.slot === 'number' ? new Uint8Array(this.owner!.ring, this.slot * BATCH_BYTES + this.at, n) : this.slot.subarray(this.at, this.at + n);
      into.set(n === chunk.length ? chunk : chunk.subarray(off, off + n));
      this.at += n;
      off += n;
      if (this.at === BATCH_BYTES) this.flushSlot();
    }
  }

  /** Hand the slot being filled to the thread. */
  private flushSlot(): void {
    if (this.slot === undefined || this.at === 0) return;
    const slot = this.slot;
    const length = this.at;
    this.slot = undefined;
    this.at = 0;
    try {
      if (typeof slot === 'number') this.owner!.post({ op: 'update', id: this.id!, slot, length });
      else this.owner!.post({ op: 'update', id: this.id!, data: slot.buffer as ArrayBuffer, length }, [slot.buffer as ArrayBuffer]);
    } catch (e) {
      this.onFailure(e as Error);
      throw e;
    }
  }

  private onFailure(e: Error): void {
    this.failure ??= e;
    this.result?.reject(this.failure);
  }
}

/**
 * A file's "sha256:<hex>" and size, read once, hashed on the digest thread past its first megabyte
 * (VM disk images, imported archives' members: gigabytes hashed on the main thread held it for
 * ~0.7 ms a megabyte).
 */
export async function digestFile(file: string, onFirstChunk?: (chunk: Buffer) => void): Promise<{ digest: string; size: number }> {
  const d = new StreamDigest();
  let size = 0;
  try {
    for await (const chunk of createReadStream(file, { highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>) {
      if (size === 0) onFirstChunk?.(chunk);
      size += chunk.length;
      d.update(chunk);
      if (d.pending) await d.drained();
    }
    return { digest: await d.digest(), size };
  } finally {
    d.dispose();
  }
}

/**
 * A pass-through that hashes what goes by (on the digest thread past its first megabyte) and
 * counts it: "sha256:<hex>" once the stream has ended (a layer written by commit, a tarball
 * imported).
 */
export function digestPass(): Transform & { digest(): Promise<string>; bytes(): number } {
  const d = new StreamDigest();
  let n = 0;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        d.update(chunk);
      } catch (e) {
        cb(e as Error);
        return;
      }
      n += chunk.length;
      if (d.pending) d.drained().then(() => cb(null, chunk), cb);
      else cb(null, chunk);
    },
    destroy(err, cb) {
      if (err) d.dispose(); // a failed stream: the thread forgets it
      cb(err);
    },
  });
  return Object.assign(t, { digest: () => d.digest(), bytes: () => n });
}
