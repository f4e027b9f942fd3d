/**
 * Container logs on disk: rotation with Docker's max-size / max-file semantics and a reader
 * that streams them (whole, tail, follow) with memory independent of their size.
 *
 * conmon writes the k8s-file log and enforces max-size itself (`--log-size-max`): before a
 * record would take the file past it, conmon fsyncs and closes it, opens `<log>.tmp` with
 * O_TRUNC|O_CREAT and renames that over `<log>`. Alone that truncates (the old file loses
 * its only name). Nimbus keeps every generation by naming them before conmon makes them:
 *
 *   ctr.log      → symlink to ctr.log.<n>, the generation conmon writes
 *   ctr.log.tmp  → symlink to ctr.log.<n+2>, not yet existing: conmon's open creates it,
 *                  its rename moves the symlink over ctr.log
 *   ctr.log.<k>  the generations, oldest = lowest k; rotateOnce keeps the newest max-file
 *
 * so the old file keeps its numbered name and no line is lost, and the cap holds even while
 * nimbusd is not running (conmon alone enforces max-size; then at most two files more than
 * max-file, see rotateOnce). The symlinks live in the container's own 0700 directory.
 */
import { linkSync, lstatSync, readdirSync, readlinkSync, statSync, symlinkSync, unlinkSync, watch, type FSWatcher } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Internal, InvalidArgument, isNimbusError } from '../../../core/errors.js';
import { LineCursor, tailStart } from '../log-files.js';
import type { LogLimits, LogRecord } from '../instance-driver.js';
import { parseK8sLogLine } from './conmon.js';

const MiB = 1024 * 1024;
/** 10 MiB x 3 files: 30 MiB at most per container (Docker's local driver: 20 MiB x 5). */
export const DEFAULT_LOG_LIMITS: Readonly<Required<LogLimits>> = { maxSizeBytes: 10 * MiB, maxFiles: 3 };
/** The documented range of each limit (the API schema uses the same numbers). */
export const LOG_LIMIT_RANGE = {
  maxSizeBytes: { min: 64 * 1024, max: 1024 * MiB },
  maxFiles: { min: 1, max: 64 },
} as const;

/** Defaults filled in, each value checked against LOG_LIMIT_RANGE. */
export function resolveLogLimits(l: LogLimits | undefined): Required<LogLimits> {
  const out = { ...DEFAULT_LOG_LIMITS, ...(l ?? {}) };
  for (const k of ['maxSizeBytes', 'maxFiles'] as const) {
    const v = out[k];
    const r = LOG_LIMIT_RANGE[k];
    if (!Number.isSafeInteger(v) || v < r.min || v > r.max) {
      throw new InvalidArgument(`log.${k} must be an integer from ${r.min} to ${r.max}`, { field: `log.${k}` });
    }
  }
  return out;
}

/** conmon splits output at 8 KiB reads; a longer record means the file is not conmon's. */
export const MAX_RECORD = 1 * MiB;

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

// ------------------------------------------------------------------ generations

export interface Generation {
  file: string;
  /** Its number; Infinity for a plain `ctr.log` conmon made while no symlink was prepared (newest). */
  n: number;
  ino: number;
}

export function numberedRe(base: string): RegExp {
  return new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.(\\d+)$`);
}

/**
 * The log's generations, oldest first (one per inode). Listed in the caller's turn: a readdir of
 * the container's directory and an lstat or two take a few µs each, a thread-pool round trip ~50 µs
 * of CPU here, and a log is read once or more per container.
 */
export async function generations(logPath: string): Promise<Generation[]> {
  const dir = path.dirname(logPath);
  const re = numberedRe(path.basename(logPath));
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if (errno(e) === 'ENOENT') return [];
    throw e;
  }
  const numbered = names
    .map((f) => ({ f, m: re.exec(f) }))
    .filter((x) => x.m)
    .map((x) => ({ file: path.join(dir, x.f), n: Number(x.m![1]) }))
    .sort((a, b) => a.n - b.n);
  const out: Generation[] = [];
  for (const g of numbered) {
    try {
      const st = lstatSync(g.file);
      if (st.isFile()) out.push({ ...g, ino: st.ino }); // (a symlink here is a naming rotateOnce is undoing)
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e; // pruned meanwhile
    }
  }
  try {
    const st = lstatSync(logPath);
    if (st.isFile() && !out.some((g) => g.ino === st.ino)) out.push({ file: logPath, n: Infinity, ino: st.ino });
  } catch (e) {
    if (errno(e) !== 'ENOENT') throw e;
  }
  return out;
}

/** Before conmon starts: its log and its rotation target are symlinks to the first two generations. */
export async function prepareLogFiles(logPath: string): Promise<void> {
  const base = path.basename(logPath);
  symlinkSync(`${base}.1`, logPath);
  symlinkSync(`${base}.3`, `${logPath}.tmp`); // numbers go by two: rotateOnce
}

const LIMITS_FILE = 'log-limits.json';

/**
 * Kept beside the log for a daemon started again, only when not the defaults (nothing written on
 * the create path of the common case; conmon has max-size on its command line anyway).
 */
export async function saveLogLimits(logPath: string, limits: Required<LogLimits>): Promise<void> {
  if (limits.maxFiles === DEFAULT_LOG_LIMITS.maxFiles && limits.maxSizeBytes === DEFAULT_LOG_LIMITS.maxSizeBytes) return;
  await writeFile(path.join(path.dirname(logPath), LIMITS_FILE), JSON.stringify(limits));
}

export async function loadLogLimits(logPath: string): Promise<Required<LogLimits>> {
  try {
    return resolveLogLimits(JSON.parse(await readFile(path.join(path.dirname(logPath), LIMITS_FILE), 'utf8')) as LogLimits);
  } catch {
    return { ...DEFAULT_LOG_LIMITS };
  }
}

/**
 * The agent's half of rotation, one pass: after a conmon rotation, prepare the next generation's
 * symlink and remove generations beyond max-file. Synchronous: it runs on the rotation worker
 * (log-rotation.ts), whose event loop does nothing else, so a busy daemon does not delay it.
 * Between conmon's rename and this pass max-file + 1 files exist. If a pass lags a whole
 * generation behind (or nimbusd is down), conmon finds no symlink and makes a plain file: the
 * pass gives it a number; a plain file conmon replaces before that is lost, one generation per
 * such replacement, and the cap still holds (conmon alone enforces max-size).
 */
export function rotateOnce(logPath: string, maxFiles: number): void {
  const base = path.basename(logPath);
  const dir = path.dirname(logPath);
  const tmp = `${logPath}.tmp`;
  const re = numberedRe(base);
  const file = (n: number) => path.join(dir, `${base}.${n}`);
  const target = (p: string) => {
    let m: RegExpExecArray | null = null;
    try {
      m = re.exec(readlinkSync(p));
    } catch {
      /* not a symlink (any more) */
    }
    return m ? Number(m[1]) : undefined;
  };
  const numbers = () =>
    readdirSync(dir).map((f) => re.exec(f)).filter((m): m is RegExpExecArray => m !== null).map((m) => Number(m[1])).sort((a, b) => a - b);
  const lstatOrUndefined = (p: string) => lstatSync(p, { throwIfNoEntry: false });
  // First the prepared symlink: its state says whether conmon may be rotating right now.
  let prepared: number | undefined;
  const tmpSt = lstatOrUndefined(tmp);
  if (tmpSt) {
    if (!tmpSt.isSymbolicLink()) return; // conmon mid-rotation with a plain file: its rename brings another pass
    prepared = target(tmp);
    if (prepared === undefined || lstatOrUndefined(file(prepared))) return; // mid-rotation through ours
  }
  let ns = numbers();
  const st = lstatOrUndefined(logPath);
  // a generation conmon made without our symlink (we lagged): name it before conmon replaces it,
  // below a prepared one (whose content will be newer): each preparation leaves that number free
  if (st?.isFile()) {
    // ...unless conmon rotated through the prepared one since we looked: then this file may be newer
    if (prepared !== undefined && (target(tmp) !== prepared || lstatOrUndefined(file(prepared)))) return;
    const inos = ns.map((n) => statSync(file(n), { throwIfNoEntry: false })?.ino ?? -1);
    const n = prepared !== undefined ? prepared - 1 : (ns.at(-1) ?? 0) + 1;
    if (!inos.includes(st.ino) && !ns.includes(n)) {
      try {
        linkSync(logPath, file(n));
        // what got the name must be the file looked at (not a symlink conmon renamed in since)
        const named = lstatOrUndefined(file(n));
        if (!named?.isFile() || named.ino !== st.ino) unlinkSync(file(n));
      } catch (e) {
        if (errno(e) !== 'EEXIST' && errno(e) !== 'ENOENT') throw e;
      }
      ns = numbers();
    }
  }
  if (prepared === undefined) {
    // Not rotating (no tmp), and numbered files appear only through our symlink: none newer
    // than these can appear before the next is there. Never a name that exists: conmon truncates it.
    let current = ns.at(-1) ?? 0;
    if (st?.isSymbolicLink()) current = Math.max(current, target(logPath) ?? 0);
    try {
      symlinkSync(`${base}.${current + 2}`, tmp);
    } catch (e) {
      if (errno(e) !== 'EEXIST') throw e;
    }
  }
  // keep the newest max-file generations
  for (const n of ns.slice(0, Math.max(0, ns.length - maxFiles))) {
    try {
      unlinkSync(file(n));
    } catch {
      /* gone already */
    }
  }
}

// ------------------------------------------------------------------ reading

export interface FollowOptions {
  tail?: number;
  follow?: boolean;
  signal?: AbortSignal;
  /** Resolves true once the container has exited (then the log is drained and following stops). */
  isExited?: () => Promise<boolean>;
  /** Subscribe to the container's exit so following stops at once, not at the next poll; returns an unsubscribe. */
  onExit?: (wake: () => void) => () => void;
  pollMs?: number;
  /** Names the log in errors (never a host path). */
  label?: string;
}

/** One open generation being read forward: its records, and its number for ordering. */
class Cursor {
  private constructor(
    private readonly lines: LineCursor,
    /** The generation's number, or for a plain file the newest number that existed when it was opened. */
    public n: number,
  ) {}

  static async open(g: Generation, offset: number, newestNumber: number, label: string): Promise<Cursor | undefined> {
    const lines = await LineCursor.open(g.file, offset, { maxLine: MAX_RECORD, label });
    return lines && new Cursor(lines, Number.isFinite(g.n) ? g.n : newestNumber);
  }

  get ino(): number {
    return this.lines.ino;
  }

  /**
   * Records from the position to the current end of file (a last incomplete one waits for more),
   * a chunk's at a time: one step per chunk, not per record, for a reader of many.
   */
  async *read(): AsyncGenerator<LogRecord[], number> {
    let count = 0;
    for (let lines; (lines = await this.lines.nextLines()); ) {
      const records: LogRecord[] = [];
      for (const l of lines) {
        const rec = parseK8sLogLine(l.text);
        if (rec) records.push(rec);
      }
      count += records.length;
      if (records.length) yield records;
    }
    return count;
  }

  close(): Promise<void> {
    return this.lines.close();
  }
}

/** The generation after the cursor's, in a fresh listing. */
function nextAfter(gens: Generation[], c: Cursor): Generation | undefined {
  const i = gens.findIndex((g) => g.ino === c.ino);
  if (i >= 0) {
    if (Number.isFinite(gens[i]!.n)) c.n = gens[i]!.n; // a plain file named since
    return gens[i + 1];
  }
  // ours is gone (pruned, or a plain file replaced): the oldest newer one
  return gens.find((g) => g.n > c.n);
}

const newest = (gens: Generation[]) => gens.filter((g) => Number.isFinite(g.n)).at(-1)?.n ?? 0;

/**
 * Records of a k8s-file log and its rotated generations, oldest first, read in 64 KiB chunks.
 * With follow it keeps yielding, across rotations, until aborted or exited-and-drained.
 * Errors other than a generation pruned while listed are thrown as typed errors, never
 * swallowed into a short read.
 */
export async function* readK8sLog(logPath: string, opts: FollowOptions = {}): AsyncGenerator<LogRecord> {
  const label = opts.label ?? 'log';
  try {
    for await (const records of readLog(logPath, opts, label)) for (const r of records) yield r;
  } catch (e) {
    if (isNimbusError(e)) throw e;
    throw new Internal(`reading the ${label} failed: ${errno(e) ?? (e as Error).message}`, undefined, { cause: e });
  }
}

/** The records of readK8sLog, a chunk's at a time. */
async function* readLog(logPath: string, opts: FollowOptions, label: string): AsyncGenerator<LogRecord[]> {
  let gens = await generations(logPath);
  const start = opts.tail !== undefined ? await tailStart(gens.map((g) => g.file), opts.tail) : { index: 0, offset: 0 };
  let cur: Cursor | undefined;
  /** The newest generation number read so far (where following resumes if no file is open). */
  let lastN = -1;
  try {
    // every generation but the newest: read to its end
    for (let i = start.index; i < gens.length; i++) {
      cur = await Cursor.open(gens[i]!, i === start.index ? start.offset : 0, newest(gens), label);
      if (!cur) continue;
      lastN = cur.n;
      yield* cur.read();
      if (i < gens.length - 1) {
        await cur.close();
        cur = undefined;
      }
    }
    if (!opts.follow) return;

    const signal = opts.signal;
    let wake: (() => void) | undefined;
    const poke = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    let watcher: FSWatcher | undefined;
    try {
      // the directory, not the file: a rotation renames files in it
      watcher = watch(path.dirname(logPath), { persistent: false }, poke);
      watcher.on('error', () => undefined);
    } catch {
      watcher = undefined; // polling only
    }
    signal?.addEventListener('abort', poke);
    const offExit = opts.onExit?.(poke);
    let exited = false;
    try {
      while (!signal?.aborted) {
        if (cur && (yield* cur.read()) > 0) continue;
        if (signal?.aborted) return;
        gens = await generations(logPath);
        const next = cur ? nextAfter(gens, cur) : gens.find((g) => g.n > lastN);
        if (next) {
          // conmon closed the old generation before making the next: what is left in it is final
          if (cur) {
            yield* cur.read();
            await cur.close();
            cur = undefined;
          }
          cur = await Cursor.open(next, 0, newest(gens), label);
          lastN = cur ? cur.n : Number.isFinite(next.n) ? next.n : newest(gens);
          continue;
        }
        if (exited) return; // drained after the exit
        if (opts.isExited && (await opts.isExited())) {
          exited = true; // conmon has written everything once the exit file exists: one more pass
          continue;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(poke, opts.pollMs ?? 250);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
    } finally {
      offExit?.();
      signal?.removeEventListener('abort', poke);
      watcher?.close();
    }
  } finally {
    await cur?.close();
  }
}
