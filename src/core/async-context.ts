/**
 * Values that follow an async context (a request's actor, a store transaction, the VM operations
 * a call runs inside), all carried by ONE AsyncLocalStorage for the whole process.
 *
 * Why one: on Node 20 every AsyncLocalStorage that has run once stays in the async hooks' list,
 * and every promise, timer and I/O request the process makes then runs an init hook that copies
 * each storage's value onto it. Measured on this 2-core host (an await loop, 10^6 awaits): 165 ms
 * with no storage, 390 ms with one, ~1,000 ms with five; the daemon had five (actor, quota events,
 * each SQL executor, the VM records). A slot is a key in the one storage's frame instead: the hook
 * runs once per promise, whatever the number of slots.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

type Frame = ReadonlyMap<ContextSlot<unknown>, unknown>;

const frames = new AsyncLocalStorage<Frame>();

/** One value carried by the async context; each slot (each instance) is independent of the others. */
export class ContextSlot<T> {
  /** `name` is for debugging only. */
  constructor(readonly name: string) {}

  /** The value set by the nearest enclosing run(), if any. */
  get(): T | undefined {
    return frames.getStore()?.get(this as ContextSlot<unknown>) as T | undefined;
  }

  /** Runs fn (and everything it starts) with this slot set to `value`; the other slots keep theirs. */
  run<R>(value: T, fn: () => R): R {
    const frame = new Map(frames.getStore());
    frame.set(this as ContextSlot<unknown>, value);
    return frames.run(frame, fn);
  }

  /** Runs fn (and everything it starts) with this slot unset; the other slots keep theirs. */
  exit<R>(fn: () => R): R {
    const current = frames.getStore();
    if (!current?.has(this as ContextSlot<unknown>)) return fn();
    const frame = new Map(current);
    frame.delete(this as ContextSlot<unknown>);
    return frames.run(frame, fn);
  }
}
