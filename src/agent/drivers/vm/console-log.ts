/**
 * A VM's serial console log with a size cap ("copytruncate" rotation). QEMU appends to
 * console.log itself (O_APPEND, so it survives a daemon restart); when the file passes
 * maxBytes it is copied to console.log.1 (older copies shift to .2 … .maxFiles-1, the oldest
 * is dropped) and truncated to 0, where QEMU's next write lands. On disk: at most
 * maxBytes × maxFiles plus what the guest prints during one check interval.
 *
 * Readers name data by an absolute generation (the live file's generation counts the
 * rotations this process made) and an offset in it, so a follower whose file was rotated
 * under it continues in the copy at the same offset, then in the newer generations:
 * nothing still on disk is lost or read twice. Rotation and each read of a chunk hold a
 * per-file lock (all readers and the rotator live in the daemon), so a read never sees a
 * half-done rotation. Bytes printed between the copy's last read and the truncation are lost
 * (microseconds, longer if the thread is preempted there; piping the console through the
 * daemon instead would block the guest's console whenever the daemon is down).
 */
import { ftruncateSync, readSync, writeSync } from 'node:fs';
import { open, readFile, rename, rm, stat, truncate, type FileHandle } from 'node:fs/promises';
import { InvalidArgument } from '../../../core/errors.js';
import { CHUNK, LineSplitter, tailStart } from '../log-files.js';

export interface ConsoleLogLimits {
  /** Rotate when console.log is larger than this. */
  maxBytes: number;
  /** Files kept, the live one included (Docker's max-file): 1 means truncate without a copy. */
  maxFiles: number;
}

export const DEFAULT_CONSOLE_LIMITS: ConsoleLogLimits = { maxBytes: 1 << 20, maxFiles: 3 };
export const CONSOLE_LIMIT_RANGE = { maxBytes: [4096, 1 << 30], maxFiles: [1, 20] } as const;

export function checkConsoleLimits(l: ConsoleLogLimits): ConsoleLogLimits {
  const [b0, b1] = CONSOLE_LIMIT_RANGE.maxBytes;
  const [f0, f1] = CONSOLE_LIMIT_RANGE.maxFiles;
  if (!Number.isInteger(l.maxBytes) || l.maxBytes < b0 || l.maxBytes > b1) throw new InvalidArgument(`console log max size must be an integer from ${b0} to ${b1}, got ${l.maxBytes}`);
  if (!Number.isInteger(l.maxFiles) || l.maxFiles < f0 || l.maxFiles > f1) throw new InvalidArgument(`console log max files must be an integer from ${f0} to ${f1}, got ${l.maxFiles}`);
  return l;
}

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

interface FileState {
  /** The live file's generation: rotations done in this process. */
  gen: number;
  lock: Promise<unknown>;
}
const states = new Map<string, FileState>();

function fileState(live: string): FileState {
  let s = states.get(live);
  if (!s) states.set(live, (s = { gen: 0, lock: Promise.resolve() }));
  return s;
}

async function withLock<T>(live: string, fn: (s: FileState) => Promise<T>): Promise<T> {
  const s = fileState(live);
  const next = s.lock.catch(() => undefined).then(() => fn(s));
  s.lock = next;
  return next;
}

/** The file holding the generation `age` rotations older than the live one. */
export const generationFile = (live: string, age: number): string => (age === 0 ? live : `${live}.${age}`);

/** Every file of the log, oldest first (some may not exist). */
export const generationFiles = (live: string, l: ConsoleLogLimits): string[] =>
  Array.from({ length: l.maxFiles }, (_, i) => generationFile(live, l.maxFiles - 1 - i));

/** Rotate when the live file is over the cap; true when it did. */
export function rotateIfOver(live: string, l: ConsoleLogLimits): Promise<boolean> {
  return withLock(live, async (s) => {
    const size = await stat(live).then((st) => st.size, () => 0);
    if (size <= l.maxBytes) return false;
    const keep = l.maxFiles - 1;
    if (keep > 0) {
      await rm(generationFile(live, keep), { force: true });
      for (let age = keep - 1; age >= 1; age--) {
        await rename(generationFile(live, age), generationFile(live, age + 1)).catch((e: unknown) => {
          if (errno(e) !== 'ENOENT') throw e;
        });
      }
      await copyThenTruncate(live, generationFile(live, 1));
    } else {
      await truncate(live, 0);
    }
    s.gen++;
    return true;
  });
}

/**
 * Copy `live` to a new `to`, then truncate it. The bulk is copied asynchronously; the last
 * catch-up and the truncation run back to back synchronously, so only what the guest prints
 * in the microseconds between the final read and ftruncate is lost (measured: about one line
 * per rotation when they were apart by an event-loop turn).
 */
async function copyThenTruncate(live: string, to: string): Promise<void> {
  const src = await open(live, 'r+');
  const dst = await open(to, 'w');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    // bounded: a writer faster than this loop (none that goes through a UART) cannot hold it forever
    for (let reads = 0; reads < 16_384; reads++) {
      const { bytesRead } = await src.read(buf, 0, CHUNK, pos);
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead, pos);
      pos += bytesRead;
    }
    for (;;) {
      const n = readSync(src.fd, buf, 0, CHUNK, pos);
      if (n === 0) break;
      writeSync(dst.fd, buf, 0, n, pos);
      pos += n;
    }
    ftruncateSync(src.fd, 0);
  } finally {
    await dst.close();
    await src.close();
  }
}

/** Checks the cap every intervalMs until stopped (one timer per running VM). */
export function watchConsoleLog(live: string, l: ConsoleLogLimits, intervalMs: number, onError: (e: unknown) => void): () => void {
  let busy = false;
  const t = setInterval(() => {
    if (busy) return;
    busy = true;
    rotateIfOver(live, l)
      .catch(onError)
      .finally(() => (busy = false));
  }, intervalMs);
  t.unref();
  return () => clearInterval(t);
}

/** Drop the in-memory state of a removed log (a reader still open just finds nothing more). */
export function forgetConsoleLog(live: string): void {
  states.delete(live);
}

/** Where the last `tail` lines start, or the oldest data on disk without a tail; `history` (if given) is read before the generations. */
export async function consoleStart(
  live: string,
  l: ConsoleLogLimits,
  history: string | undefined,
  tail: number | undefined,
): Promise<{ history?: number; gen: number; offset: number }> {
  return withLock(live, async (s) => {
    const gens = generationFiles(live, l);
    const oldest = s.gen - (l.maxFiles - 1);
    if (tail === undefined) return history ? { history: 0, gen: oldest, offset: 0 } : { gen: oldest, offset: 0 };
    const files = history ? [history, ...gens] : gens;
    // an unfinished last line is not one of the last N (it comes only when the console ends)
    const unfinished = tail > 0 && (await lastByteIsNotNewline(files));
    // one stream: a rotation copies at any byte, and a move can stop the guest inside a line
    const p = await tailStart(files, tail + (unfinished ? 1 : 0), { joined: true });
    if (history && p.index === 0) return { history: p.offset, gen: oldest, offset: 0 };
    return { gen: oldest + p.index - (history ? 1 : 0), offset: p.offset };
  });
}

async function lastByteIsNotNewline(files: readonly string[]): Promise<boolean> {
  for (let i = files.length - 1; i >= 0; i--) {
    const fh = await open(files[i]!, 'r').catch(() => undefined);
    if (!fh) continue;
    try {
      const size = (await fh.stat()).size;
      if (size === 0) continue;
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, size - 1);
      return b[0] !== 0x0a;
    } finally {
      await fh.close();
    }
  }
  return false;
}

/** The whole log, oldest first, trimmed at a line start to the last maxBytes × maxFiles (what migration carries). */
export async function consoleBytes(live: string, l: ConsoleLogLimits, history: string | undefined): Promise<Buffer> {
  const none = () => Buffer.alloc(0);
  const parts = await withLock(live, async () => {
    const out: Buffer[] = [];
    for (const f of [...(history ? [history] : []), ...generationFiles(live, l)]) out.push(await readFile(f).catch(none));
    return out;
  });
  const all = Buffer.concat(parts);
  const cap = l.maxBytes * l.maxFiles;
  if (all.length <= cap) return all;
  const nl = all.indexOf(0x0a, all.length - cap - 1);
  return nl < 0 ? all.subarray(all.length - cap) : all.subarray(nl + 1);
}

/**
 * The console read forward across generations: complete lines, the piece after the last
 * newline kept for later (a rotation copies at any byte, so a line may span two files).
 */
export class ConsoleCursor {
  private fh: FileHandle | undefined;
  private fhIsLive = false;
  private readonly chunk = Buffer.allocUnsafe(CHUNK);
  private readonly splitter: LineSplitter;
  /** Bytes skipped because a follower fell more than maxFiles rotations behind. */
  skipped = false;

  constructor(
    private readonly live: string,
    private readonly l: ConsoleLogLimits,
    private gen: number,
    private pos: number,
    maxLine: number,
    /** The start of a line the output of the hosts the VM came from ended with (it goes on here). */
    carried?: Buffer,
  ) {
    this.splitter = new LineSplitter(maxLine);
    this.splitter.carry(carried);
  }

  /** The next chunk of the stream, or undefined at the live file's current end. Under the lock. */
  private async read(s: FileState): Promise<Buffer | undefined> {
    for (;;) {
      if (this.gen > s.gen) this.gen = s.gen; // the state was forgotten (the VM was removed)
      const age = s.gen - this.gen;
      if (age > this.l.maxFiles - 1) {
        this.skipped = true;
        await this.closeFile();
        this.gen = s.gen - (this.l.maxFiles - 1);
        this.pos = 0;
        continue;
      }
      // the live file keeps its inode across rotations: once rotated, this generation is in the copy
      if (this.fh && this.fhIsLive && age > 0) await this.closeFile();
      if (!this.fh) {
        try {
          this.fh = await open(generationFile(this.live, age), 'r');
          this.fhIsLive = age === 0;
        } catch (e) {
          if (errno(e) !== 'ENOENT') throw e;
          if (age === 0) return undefined;
          this.gen++;
          this.pos = 0;
          continue;
        }
      }
      const { bytesRead } = await this.fh.read(this.chunk, 0, CHUNK, this.pos);
      if (bytesRead > 0) {
        this.pos += bytesRead;
        return this.chunk.subarray(0, bytesRead);
      }
      if (age === 0) return undefined;
      await this.closeFile();
      this.gen++;
      this.pos = 0;
    }
  }

  /** Lines (without the newline) up to the current end of the log; returns how many. */
  async *lines(): AsyncGenerator<{ text: string; partial?: true }, number> {
    let count = 0;
    for (;;) {
      // parse outside the lock: a consumer may take its time between lines (the chunk is not read
      // into again before every line of it has been taken, and the splitter copies what it keeps)
      const got = await withLock(this.live, (s) => this.read(s));
      if (!got) return count;
      count += yield* this.splitter.split(got);
    }
  }

  /** The piece after the last newline read so far. */
  pending(): string {
    return this.splitter.pending();
  }

  private async closeFile(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }

  close(): Promise<void> {
    return this.closeFile();
  }
}
