/**
 * Line-oriented log files read with bounded memory: forward in 64 KiB chunks, and `tail`
 * by scanning backwards from the end. Shared by the container logs (k8s-file generations,
 * container/container-logs.ts) and a VM's serial console (vm/vm-driver.ts).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DataLoss } from '../../core/errors.js';

export const CHUNK = 64 * 1024;

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

/** Where reading starts: an index into the files and a byte offset in that file. */
export interface Position {
  index: number;
  offset: number;
}

/**
 * The start of the last `tail` lines of `files` read as one stream (oldest file first), found
 * by reading backwards in chunks from the newest. A file ending without a newline counts its
 * last piece as a line, unless `joined`: then the files are one byte stream whose lines may
 * span files (a console log cut at any byte), and a file's start is a line's start only after a
 * newline (the position may then be a file's end: readers go on to the next). Files that are
 * gone are skipped.
 */
export async function tailStart(files: readonly string[], tail: number, opts: { joined?: boolean } = {}): Promise<Position> {
  if (files.length === 0) return { index: 0, offset: 0 };
  let need = tail;
  const chunk = Buffer.allocUnsafe(CHUNK);
  /** joined: the stream's last byte is behind us (a newline there starts nothing, elsewhere it does) */
  let pastStreamEnd = false;
  for (let i = files.length - 1; i >= 0; i--) {
    let fh: FileHandle;
    try {
      fh = await open(files[i]!, 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') continue;
      throw e;
    }
    try {
      const size = (await fh.stat()).size;
      if (need <= 0) return { index: i, offset: size };
      let pos = size;
      while (pos > 0) {
        const n = Math.min(CHUNK, pos);
        pos -= n;
        await readFully(fh, chunk, n, pos);
        for (let j = n - 1; j >= 0; j--) {
          // the newline ending the file's (joined: the stream's) last line starts nothing
          if (chunk[j] !== 0x0a || (pos + j === size - 1 && !pastStreamEnd)) continue;
          if (--need === 0) return { index: i, offset: pos + j + 1 };
        }
      }
      if (opts.joined) {
        if (size > 0) pastStreamEnd = true;
      } else if (size > 0 && --need === 0) return { index: i, offset: 0 }; // the file's first line
    } finally {
      await fh.close();
    }
  }
  return { index: 0, offset: 0 };
}

async function readFully(fh: FileHandle, buf: Buffer, n: number, pos: number): Promise<void> {
  let got = 0;
  while (got < n) {
    const { bytesRead } = await fh.read(buf, got, n - got, pos + got);
    if (bytesRead === 0) throw new Error('file shrank while read');
    got += bytesRead;
  }
}

/** A line without its newline; partial when it is a piece of one longer than the reader's limit. */
export interface Line {
  text: string;
  partial?: true;
}

/**
 * Chunks to lines: the complete lines of each chunk (after what was left of the last), the piece
 * after the last newline kept (copied: the caller may reuse its chunk). A line longer than maxLine
 * is a DataLoss error when a label names the log (a writer that never writes one: the file is
 * corrupt), else it is handed out in maxLine pieces marked partial (a guest's console may print anything).
 */
export class LineSplitter {
  private pendingBuf: Buffer | undefined;

  constructor(
    private readonly maxLine: number,
    private readonly label?: string,
  ) {}

  /** The lines this chunk completes; returns how many. */
  *split(chunk: Buffer): Generator<Line, number> {
    const lines = this.splitAll(chunk);
    yield* lines;
    return lines.length;
  }

  /** The lines this chunk completes, as one array (a reader of many lines takes them a chunk at a time). */
  splitAll(chunk: Buffer): Line[] {
    const lines: Line[] = [];
    let buf = chunk;
    if (this.pendingBuf) {
      buf = Buffer.concat([this.pendingBuf, chunk]);
      this.pendingBuf = undefined;
    }
    let start = 0;
    for (;;) {
      const nl = buf.indexOf(0x0a, start);
      if (nl < 0) break;
      lines.push({ text: buf.toString('utf8', start, nl) });
      start = nl + 1;
    }
    if (buf.length - start > this.maxLine) {
      if (this.label !== undefined) throw new DataLoss(`${this.label}: a line longer than ${this.maxLine} bytes; the log is corrupt`);
      lines.push({ text: buf.toString('utf8', start), partial: true });
      start = buf.length;
    }
    if (start < buf.length) this.pendingBuf = Buffer.from(buf.subarray(start));
    return lines;
  }

  /** The piece after the last newline seen so far. */
  pending(): string {
    return this.pendingBuf?.toString('utf8') ?? '';
  }

  /** Takes that piece, as bytes: the line goes on in another file (see carry). */
  takePending(): Buffer | undefined {
    const b = this.pendingBuf;
    this.pendingBuf = undefined;
    return b;
  }

  /** Before the first chunk: begin with the start of a line another splitter took (takePending), one stream across files. */
  carry(start: Buffer | undefined): void {
    if (this.pendingBuf) throw new Error('LineSplitter.carry() after a chunk');
    if (start?.length) this.pendingBuf = Buffer.from(start);
  }
}

/** One open file read forward: its complete lines, the piece after the last newline kept for later. */
export class LineCursor {
  private readonly chunk = Buffer.allocUnsafe(CHUNK);
  private readonly splitter: LineSplitter;

  private constructor(
    private readonly fh: FileHandle,
    readonly ino: number,
    private pos: number,
    maxLine: number,
    label: string | undefined,
  ) {
    this.splitter = new LineSplitter(maxLine, label);
  }

  /** Undefined when the file is gone. Over-long lines: see LineSplitter. */
  static async open(file: string, offset: number, opts: { maxLine: number; label?: string }): Promise<LineCursor | undefined> {
    let fh: FileHandle;
    try {
      fh = await open(file, 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const st = await fh.stat();
      return new LineCursor(fh, st.ino, Math.min(offset, st.size), opts.maxLine, opts.label);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Lines (without the newline) from the position to the current end of file; returns how many. */
  async *lines(): AsyncGenerator<Line, number> {
    let count = 0;
    for (let lines; (lines = await this.nextLines()); ) {
      count += lines.length;
      for (const l of lines) yield l;
    }
    return count;
  }

  /**
   * The lines the next chunk completes (none when it completes none), or undefined at the
   * current end of file: a reader of many lines takes them a chunk at a time.
   */
  async nextLines(): Promise<Line[] | undefined> {
    const { bytesRead } = await this.fh.read(this.chunk, 0, CHUNK, this.pos);
    if (bytesRead === 0) return undefined;
    this.pos += bytesRead;
    return this.splitter.splitAll(this.chunk.subarray(0, bytesRead));
  }

  /** The piece after the last newline read so far. */
  pending(): string {
    return this.splitter.pending();
  }

  /** Takes that piece, as bytes, to go on in another file's cursor. */
  takePending(): Buffer | undefined {
    return this.splitter.takePending();
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
