/**
 * How many warm containers a template's requests have needed at once: the warm pool's target
 * above its floor (warm-pool.ts). RunD sizes its sandbox pools from the workload's
 * concurrency; here the signal is the number of a template's creates in flight together, from
 * the moment a request asks the pool (take) to the end of its create (done). A burst of 200
 * concurrent `run -d` peaks at ~200; 8 clients creating one after another peak at 8, however
 * many they create; back-to-back single requests peak at 1.
 *
 * The peak is held while requests come (and for holdMs after the last one), then halves every
 * halfLifeMs: the pool shrinks back to its floor when the demand is gone.
 */

export interface DemandOptions {
  /** How long the peak is held after the last request. Default 5 min. */
  holdMs?: number;
  /** Then it halves this often. Default 5 min. */
  halfLifeMs?: number;
  /** A take whose create never reports back (placed on another host, refused) stops counting after this long. Default 30 s. */
  staleMs?: number;
  now?: () => number;
}

interface Demand {
  /** When each create still in flight asked, oldest first. */
  open: number[];
  peak: number;
  /** The last request's time: the hold and the decay count from here. */
  lastAt: number;
}

export class WarmDemand {
  private readonly byKey = new Map<string, Demand>();
  private readonly holdMs: number;
  private readonly halfLifeMs: number;
  private readonly staleMs: number;
  private readonly now: () => number;

  constructor(opts: DemandOptions = {}) {
    this.holdMs = opts.holdMs ?? 5 * 60_000;
    this.halfLifeMs = opts.halfLifeMs ?? 5 * 60_000;
    this.staleMs = opts.staleMs ?? 30_000;
    this.now = opts.now ?? (() => performance.now());
  }

  /** A request for key began. */
  begin(key: string): void {
    const now = this.now();
    const d = this.byKey.get(key) ?? { open: [], peak: 0, lastAt: now };
    this.expire(d, now);
    d.peak = Math.max(this.decayed(d, now), d.open.length + 1);
    d.open.push(now);
    d.lastAt = now;
    this.byKey.set(key, d);
  }

  /** A request for key ended (its create finished or failed); one that never began is ignored. */
  end(key: string): void {
    this.byKey.get(key)?.open.shift();
  }

  /** The held or decayed peak, rounded up: how many warm containers key should have. */
  peak(key: string): number {
    const d = this.byKey.get(key);
    return d ? Math.ceil(this.decayed(d, this.now()) - 1e-9) : 0;
  }

  /** Whether some key's peak is still above floor (it will decay: worth checking again later). */
  anyAbove(floor: number): boolean {
    for (const key of this.byKey.keys()) if (this.peak(key) > floor) return true;
    return false;
  }

  forget(key: string): void {
    this.byKey.delete(key);
  }

  private decayed(d: Demand, now: number): number {
    const idle = now - d.lastAt - this.holdMs;
    return idle <= 0 ? d.peak : d.peak * 0.5 ** (idle / this.halfLifeMs);
  }

  private expire(d: Demand, now: number): void {
    while (d.open.length && now - d.open[0]! > this.staleMs) d.open.shift();
  }
}
