/**
 * Calls serialised per key: a call for a key runs once every earlier call for that key has
 * settled (fulfilled or rejected); calls for other keys run alongside. A key is forgotten once
 * its last call settled, so the map holds only keys with calls in flight.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }

  /** Keys with calls in flight (for tests and diagnostics). */
  get size(): number {
    return this.tails.size;
  }
}
