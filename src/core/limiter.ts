/** At most `limit` calls of run() in flight; the rest wait their turn, first come first served. */
export class Limiter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.running++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next(); // its slot handed over: `running` stays
      else this.running--;
    }
  }

  /** Calls waiting for a turn. */
  get queued(): number {
    return this.waiting.length;
  }
}
