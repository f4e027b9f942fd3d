import type { Writable } from 'node:stream';

/**
 * Resolves when a stream that refused a write can take more, or has gone (its reader gave up);
 * at once when it is already destroyed (its 'close' may have come and gone). One pair of
 * listeners, removed after.
 */
export function drainedOrClosed(dest: Writable): Promise<void> {
  if (dest.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      dest.off('drain', done);
      dest.off('close', done);
      resolve();
    };
    dest.once('drain', done);
    dest.once('close', done);
  });
}

/** What a batching writer holds before it writes regardless of whether the source has more ready. */
export const LINE_BATCH_CHARS = 64 * 1024;

/** An encoder's answer that ends the stream here (Docker's `until`). */
export const STOP_WRITING: unique symbol = Symbol('stop writing');

/**
 * Writes a source's items to a stream, many per write: what the source has ready goes out
 * together (up to ~64 KiB), and what is held is written as soon as the source has to wait (at the
 * event loop's next check phase), so a follower still sees each item at once. One write per line
 * made a 73 MB log 500,000 chunked writes and the daemon's heap grow with them. `encode` gives an
 * item's text or bytes, undefined to skip it, or STOP_WRITING to end. Waits for the stream to
 * drain; stops at its close or the signal's abort, returning the source (so it releases its
 * files). `first` is a result the caller has already read from it.
 */
export async function writeBatched<T>(
  dest: Writable,
  source: AsyncIterator<T>,
  encode: (item: T) => string | Uint8Array | undefined | typeof STOP_WRITING,
  opts: { signal?: AbortSignal; first?: IteratorResult<T> } = {},
): Promise<void> {
  let held: (string | Uint8Array)[] = [];
  let heldSize = 0;
  let bytes = false;
  let flushing: NodeJS.Immediate | undefined;
  const flush = () => {
    flushing = undefined;
    if (!held.length) return;
    const out = bytes ? Buffer.concat(held.map((p) => (typeof p === 'string' ? Buffer.from(p) : p))) : held.join('');
    held = [];
    heldSize = 0;
    bytes = false;
    if (!dest.destroyed && !dest.writableEnded) dest.write(out);
  };
  const stopped = () => opts.signal?.aborted || dest.destroyed;
  let next = opts.first ?? (await source.next());
  try {
    while (!next.done && !stopped()) {
      const piece = encode(next.value);
      if (piece === STOP_WRITING) break;
      if (piece !== undefined && piece.length) {
        held.push(piece);
        heldSize += piece.length;
        if (typeof piece !== 'string') bytes = true;
        if (heldSize >= LINE_BATCH_CHARS) {
          if (flushing) clearImmediate(flushing);
          flush();
        } else flushing ??= setImmediate(flush);
      }
      // the stream's own flag, not write()'s answer: a flush between items may have been refused
      // and drained already while the source was read
      if (dest.writableNeedDrain) {
        await drainedOrClosed(dest);
        if (stopped()) break;
      }
      next = await source.next();
    }
  } finally {
    if (flushing) clearImmediate(flushing);
    flush(); // what was read before an error goes out before its in-band report
    if (!next.done) await source.return?.(undefined);
  }
}

/** writeBatched for text lines (NDJSON, server-sent events). */
export function writeLines<T>(dest: Writable, source: AsyncIterator<T>, format: (item: T) => string, opts: { signal?: AbortSignal; first?: IteratorResult<T> } = {}): Promise<void> {
  return writeBatched(dest, source, format, opts);
}

/**
 * An iterable that is `open()`'s once that resolves, opened at the first `next()`: for a source
 * that needs an await before it exists (a lookup, a check) without an async generator around it,
 * which would add a step to every item after it.
 */
export function deferredIterable<T>(open: () => Promise<AsyncIterable<T>>): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      let inner: AsyncIterator<T> | undefined;
      let opening: Promise<AsyncIterator<T>> | undefined;
      const opened = () => (opening ??= open().then((source) => (inner = source[Symbol.asyncIterator]())));
      return {
        next: () => (inner ? inner.next() : opened().then((it) => it.next())),
        return: async (value?: unknown) => {
          const it = inner ?? (opening ? await opening.catch(() => undefined) : undefined);
          if (it?.return) return it.return(value);
          return { done: true, value: value as T };
        },
      };
    },
  };
}
