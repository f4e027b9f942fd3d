/**
 * Work in progress per key that others may need to find while it runs (a graceful stop that a
 * SIGKILL cuts short): a promise is registered until it settles.
 */
export class InFlight<T> {
  private readonly running = new Map<string, Promise<T>>();

  /** Registers work under key until it settles, and returns it. */
  track(key: string, work: Promise<T>): Promise<T> {
    this.running.set(key, work);
    const forget = () => {
      if (this.running.get(key) === work) this.running.delete(key);
    };
    work.then(forget, forget);
    return work;
  }

  get(key: string): Promise<T> | undefined {
    return this.running.get(key);
  }
}
