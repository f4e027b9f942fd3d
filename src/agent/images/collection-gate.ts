/**
 * Image work (pulls, imports, builds, blob writes, adoptions, commits) and garbage collection
 * exclude each other. Work in flight holds blobs and snapshots no image references yet, so a
 * collection does nothing while any is in flight (the next one collects). And work must not
 * start under a collection that has begun: it would write blobs and snapshots the collection
 * then finds unreferenced and removes (a check only at the collection's start left that window
 * open across all of its awaits). Work that arrives during a collection waits for its end;
 * a second collection waits for the first.
 */
export class CollectionGate {
  private active = 0;
  private collecting: Promise<void> | undefined;

  /** Enter as work (after any collection in progress); call the returned function when done. */
  async enter(): Promise<() => void> {
    while (this.collecting) await this.collecting;
    this.active++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.active--;
    };
  }

  /** Run fn as the only collection, or return undefined at once when work is in flight. */
  async collect<T>(fn: () => Promise<T>): Promise<T | undefined> {
    while (this.collecting) await this.collecting;
    if (this.active > 0) return undefined;
    let done!: () => void;
    this.collecting = new Promise<void>((resolve) => (done = resolve));
    try {
      return await fn();
    } finally {
      this.collecting = undefined;
      done();
    }
  }

  /** Work in flight now (for tests and reports). */
  get inFlight(): number {
    return this.active;
  }
}
