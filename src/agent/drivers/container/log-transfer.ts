/**
 * A container's log carried by a cold move (docs/overlay.md, "Moving containers"): the source's
 * generations as a tar, and at the destination placed before the generation conmon opened at
 * the create, so a reader (`nimbus logs`, `docker logs`) sees the output from before the move
 * and after it, in order.
 *
 * The tar holds regular files named `generation-0`, `generation-1`, … oldest first: the newest
 * max-file − 1 generations that hold output (the destination's own new file is the last one, so
 * the whole stays within max-file files; with max-file 1 nothing travels). Names on the wire are
 * never used as paths.
 *
 * The import is hostile input: only those names in that order, at most max-file − 1 of them, each
 * within max-size (plus one of conmon's records past it), every line a k8s-file record no longer
 * than a reader takes (MAX_RECORD), the last one complete. The files are written under names of
 * ours (O_EXCL, never following a link) and numbered into place only once all are checked; on a
 * failure they are removed and the log is as the create left it.
 *
 * Placing them: the create left `ctr.log` → `ctr.log.<c>` (empty, held open by conmon, which has
 * not been started) and `ctr.log.tmp` → `ctr.log.<c+2>` (not yet made). The current generation
 * is renamed to a number above the imported ones (conmon writes through its descriptor, not the
 * name) and the symlinks follow it. Each step leaves a state the rotation worker's rotateOnce
 * takes as it is (its pass may run between any two): the prepared symlink first points at a
 * number nothing holds, and the current generation keeps a name throughout.
 */
import { constants as FS } from 'node:fs';
import { link, lstat, open, readlink, rename, rm, symlink, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { Conflict, InvalidArgument, NimbusError } from '../../../core/errors.js';
import { digestPass } from '../../../core/stream-digest.js';
import type { LogLimits } from '../instance-driver.js';
import type { TreeImportResult } from '../../agent.js';
import { generations, MAX_RECORD, numberedRe } from './container-logs.js';
import { parseK8sLogLine } from './conmon.js';

/** One of conmon's records may pass max-size: it checks before a record, whose body is one 8 KiB read at most. */
const RECORD_SLACK = 16 * 1024;
/** A tar's own bytes per entry (header, padding) and its end, on top of the files. */
const TAR_OVERHEAD_PER_ENTRY = 1536;
const TAR_END = 10 * 1024;

const entryName = (i: number) => `generation-${i}`;
const STAGED_PREFIX = '.import-';

/** How many generations travel for these limits (the destination's new file is one of max-file). */
export const carriedGenerations = (limits: Required<LogLimits>) => Math.max(0, limits.maxFiles - 1);

/** The log at logPath as the tar described above. The container is stopped: its files no longer grow. */
export async function exportLogs(logPath: string, limits: Required<LogLimits>): Promise<Readable> {
  const files: Array<{ fh: FileHandle; size: number }> = [];
  try {
    for (const g of await generations(logPath)) {
      let fh: FileHandle;
      try {
        fh = await open(g.file, FS.O_RDONLY | FS.O_NOFOLLOW);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // pruned since the listing
        throw e;
      }
      const st = await fh.stat();
      if (!st.isFile() || st.size === 0) {
        await fh.close();
        continue;
      }
      files.push({ fh, size: st.size });
    }
  } catch (e) {
    await Promise.all(files.map((f) => f.fh.close()));
    throw e;
  }
  const keep = carriedGenerations(limits);
  const dropped = files.splice(0, Math.max(0, files.length - keep));
  await Promise.all(dropped.map((f) => f.fh.close()));
  const pack = tar.pack();
  void (async () => {
    try {
      for (const [i, f] of files.entries()) {
        const sink = pack.entry({ name: entryName(i), size: f.size, mode: 0o600, type: 'file', mtime: new Date(0) });
        // the size as it was when opened: what the header says
        await pipeline(f.fh.createReadStream({ start: 0, end: f.size - 1, autoClose: false }), sink);
      }
      pack.finalize();
    } catch (e) {
      pack.destroy(e as Error);
    } finally {
      await Promise.all(files.map((f) => f.fh.close().catch(() => undefined)));
    }
  })();
  return pack as unknown as Readable;
}

/** Lines of one file checked as k8s-file records as they stream by. */
class RecordCheck {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  constructor(private readonly what: string) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      const part = chunk.subarray(start, nl);
      this.line(this.pendingBytes ? Buffer.concat([...this.pending, part]) : part);
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.pending.push(chunk.subarray(start));
      this.pendingBytes += chunk.length - start;
      if (this.pendingBytes > MAX_RECORD) throw new InvalidArgument(`${this.what}: a record longer than ${MAX_RECORD} bytes`);
    }
  }

  end(): void {
    if (this.pendingBytes) throw new InvalidArgument(`${this.what}: its last record is incomplete`);
  }

  private line(b: Buffer): void {
    if (b.length > MAX_RECORD) throw new InvalidArgument(`${this.what}: a record longer than ${MAX_RECORD} bytes`);
    if (!parseK8sLogLine(b.toString('utf8'))) throw new InvalidArgument(`${this.what}: a line that is not a k8s-file log record`);
  }
}

/**
 * The tar into the log at logPath, before the container's first start (see the file comment).
 * InvalidArgument for a tar out of bounds; Conflict when the log holds output already.
 */
export async function importLogs(logPath: string, bytes: AsyncIterable<Uint8Array>, limits: Required<LogLimits>, what: string): Promise<TreeImportResult> {
  const dir = path.dirname(logPath);
  const maxFiles = carriedGenerations(limits);
  const maxFileBytes = limits.maxSizeBytes + RECORD_SLACK;
  const maxTarBytes = maxFiles * (maxFileBytes + TAR_OVERHEAD_PER_ENTRY) + TAR_END;
  const current = await currentGeneration(logPath, what);

  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > maxTarBytes) {
        cb(new InvalidArgument(`${what}: more than ${maxTarBytes} bytes of tar for ${maxFiles} file(s) of at most ${limits.maxSizeBytes} bytes (its log limits)`));
        return;
      }
      cb(null, chunk);
    },
  });
  const hash = digestPass(); // on the digest thread past its first megabyte, as a layer's bytes are
  const input = Readable.from(bytes, { objectMode: false });
  const extract = tar.extract();
  // no await until the entries are iterated: one emitted before the iterator is attached is lost
  const feeding = pipeline([input, counter, hash, extract] as unknown as NodeJS.ReadWriteStream[]);
  let feedError: unknown;
  feeding.catch((e: unknown) => {
    feedError = e;
  });
  const staged: string[] = [];
  let unpacked = 0;
  try {
    try {
      for await (const item of extract) {
        const entry = item as unknown as Readable & { header: tar.Header };
        const h = entry.header;
        const i = staged.length;
        if (i >= maxFiles) throw new InvalidArgument(`${what}: more than ${maxFiles} file(s) (max-file ${limits.maxFiles}, the destination's new one included)`);
        if (h.type !== 'file') throw new InvalidArgument(`${what}: entry ${JSON.stringify(h.name)} is a ${h.type ?? 'non-file'}: only files travel`);
        if (h.name !== entryName(i)) throw new InvalidArgument(`${what}: entry ${JSON.stringify(h.name)} where ${entryName(i)} was expected`);
        if ((h.size ?? 0) > maxFileBytes) throw new InvalidArgument(`${what}: ${h.name} is ${h.size} bytes, past its max-size of ${limits.maxSizeBytes}`);
        const file = path.join(dir, `${STAGED_PREFIX}${i}`);
        const fh = await open(file, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
        staged.push(file);
        const check = new RecordCheck(`${what}, ${h.name}`);
        try {
          for await (const chunk of entry as AsyncIterable<Buffer>) {
            check.push(chunk);
            await fh.write(chunk);
            unpacked += chunk.length;
          }
          check.end();
        } finally {
          await fh.close();
        }
      }
    } catch (e) {
      if (feedError instanceof NimbusError) throw feedError;
      if (e instanceof NimbusError) throw e;
      throw new InvalidArgument(`${what}: not a valid tar stream: ${(e as Error).message}`, undefined, { cause: e });
    }
    try {
      await feeding;
    } catch (e) {
      if (e instanceof NimbusError) throw e;
      throw new InvalidArgument(`${what}: the stream failed: ${(e as Error).message}`, undefined, { cause: e });
    }
    await placeBefore(logPath, current, staged);
  } catch (e) {
    extract.destroy();
    await feeding.catch(() => undefined);
    // a stream that ended before the failure still has the digest thread open for it: closed here
    await hash.digest().catch(() => undefined);
    await Promise.all(staged.map((f) => rm(f, { force: true })));
    throw e;
  } finally {
    if (!input.destroyed) input.destroy();
  }
  return { bytes: size, digest: await hash.digest(), entries: staged.length, unpackedBytes: unpacked };
}

/** The generation conmon opened at the create, and the prepared one; Conflict when the log is not as the create left it (output written, or rotated). */
async function currentGeneration(logPath: string, what: string): Promise<{ current: number; prepared: number }> {
  const re = numberedRe(path.basename(logPath));
  const target = async (p: string) => {
    try {
      const m = re.exec(await readlink(p));
      return m ? Number(m[1]) : undefined;
    } catch {
      return undefined;
    }
  };
  const current = await target(logPath);
  const prepared = await target(`${logPath}.tmp`);
  const gens = await generations(logPath);
  const untouched = current !== undefined && prepared !== undefined && gens.length === 1 && gens[0]!.n === current && (await lstat(gens[0]!.file)).size === 0;
  if (!untouched) throw new Conflict(`${what} holds output already: a log is imported before the container's first start only`);
  return { current: current!, prepared: prepared! };
}

/** The staged files numbered in below the current generation, which moves up (see the file comment). */
async function placeBefore(logPath: string, at: { current: number; prepared: number }, staged: string[]): Promise<void> {
  if (!staged.length) return;
  const dir = path.dirname(logPath);
  const base = path.basename(logPath);
  const file = (n: number) => path.join(dir, `${base}.${n}`);
  const relink = async (name: string, n: number) => {
    const tmp = path.join(dir, `${STAGED_PREFIX}link`);
    await rm(tmp, { force: true });
    await symlink(`${base}.${n}`, tmp);
    await rename(tmp, name);
  };
  const c = at.current;
  const moved = Math.max(c, at.prepared) + 2 * staged.length + 2;
  await relink(`${logPath}.tmp`, moved + 2);
  await link(file(c), file(moved));
  await relink(logPath, moved);
  await unlink(file(c)).catch((e: unknown) => {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  });
  for (const [i, f] of staged.entries()) await rename(f, file(c + 2 * i));
}
