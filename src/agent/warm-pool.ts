/**
 * The warm pool: containers created ahead of demand for the images in use, so a
 * create that matches one only has to write a script and a config (RunD's
 * "do the slow parts ahead of time"; the stub is in drivers/container/warm-start.ts).
 *
 * Policy: an image (with the user and runtime its containers ask for) becomes hot
 * when a container is created from it; the pool keeps at least `perImage` warm containers
 * for each of the `maxImages` most recently used, and more for a template whose requests
 * came in bursts: as many as were in flight at once (warm-demand.ts), within a memory
 * budget measured per warm container, shrinking back when the demand is gone. It is topped
 * up in the background, a batch at a time when the agent is quiet; what a request takes is
 * replaced at once, and a request that finds none ready takes one still being made (back to
 * back, each create overlaps the request before). Warm containers are not
 * instances: the store does not know them, they are not charged to any quota, and the
 * daemon destroys them when it stops (and its reconciliation on start removes any a crash
 * left behind).
 */
import { eachLimited } from '../core/each-limited.js';
import { newId } from '../core/ids.js';
import { isNimbusError } from '../core/errors.js';
import { logger } from '../core/log.js';
import type { NetworkSpec } from './network/network-driver.js';
import { WarmDemand, type DemandOptions } from './warm-demand.js';

const log = logger('agent.warm-pool');

/** What a warm container is made for: it serves requests with the same image, user, runtime and network. */
export interface WarmTemplate {
  imageChainId: string;
  /** The process user as requested ("uid[:gid]" or a name from the image). */
  user: string;
  runtime?: string;
  /** The network its interface is already on, without an address yet (absent: loopback only). */
  network?: NetworkSpec;
  /** Its memory limit (absent: none, best effort): made with it, as a claim cannot add or remove one. */
  memoryBytes?: number;
  /** Its writable layer's size (absent: unbounded): the layer is made with its own filesystem. */
  storageBytes?: number;
}

export interface WarmPoolOptions {
  /** Warm containers kept per hot template at least; 0 disables the pool. */
  perImage: number;
  /**
   * Memory the pool may grow into above the perImage floors to meet the demand it saw, in bytes
   * as measured per warm container (WarmSlots.measure). 0: never above the floors. Default 0.
   */
  budgetBytes?: number;
  /** Warm containers created at once while the agent is quiet (one at a time under load). Default 1. */
  fillConcurrency?: number;
  /** How the demand peak is held and decays (warm-demand.ts). */
  demand?: DemandOptions;
  /** How often a pool above its floors looks whether its demand decayed (and it should shrink). Default 30 s. */
  trimEveryMs?: number;
  /** How many templates are kept hot (least recently used ones are dropped). */
  maxImages: number;
  /**
   * Top up only after the agent has been idle this long (no container operation in
   * flight): refilling competes for the CPU with the requests it is meant to speed up.
   * Default 30 ms.
   */
  quietMs?: number;
  /** ...but a template that requests found empty is topped up after this long without quiet. Default 500 ms. */
  maxWaitMs?: number;
  /**
   * Whether the host's CPUs are all taken right now (e.g. more runnable tasks than CPUs): an
   * agent gone quiet may still have just started containers that are getting their programs
   * running. Quiet then waits for the host too, at most hostBusyMaxMs (default 1000 ms).
   */
  hostBusy?: () => boolean;
  hostBusyMaxMs?: number;
}

/** How the pool makes and destroys its containers (the agent: snapshot + driver). */
export interface WarmSlots {
  /** Make a warm container under this id (the pool names it first: a request may take it while it is being made). */
  create(t: WarmTemplate, id: string): Promise<void>;
  destroy(id: string): Promise<void>;
  /** The memory a ready warm container holds, in bytes (undefined: cannot tell). */
  measure?(id: string): Promise<number | undefined>;
}

export interface WarmPoolStats {
  perImage: number;
  maxImages: number;
  ready: number;
  hotImages: number;
  hits: number;
  /** Of the hits, those handed a warm container still being made (the request waits for it). */
  handoffs?: number;
  misses: number;
  created: number;
  failed: number;
  /** Sizing from demand (absent from agents that predate it). */
  sizing?: WarmSizing;
}

export interface WarmSizing {
  /** Warm containers the pool aims for now, all templates (floors plus what demand and budget allow). */
  target: number;
  /** The largest demand peak of any template (held, then decaying). */
  peak: number;
  budgetBytes: number;
  /** Measured memory of a warm container, on average; null until one was measured. */
  entryBytes: number | null;
  /** Memory the ready warm containers hold (measured). */
  usedBytes: number;
}

/**
 * Warm containers destroyed at once (shrinking, shutdown): a shrink by 200 runs beside requests
 * and must not start 200 `runc delete`s together. Not faster or slower at shutdown: 200 warm
 * containers took ~8 s all at once, 8.7-10.6 s eight at a time (two CPUs either way).
 */
const DESTROY_CONCURRENCY = 8;

/** The target above the floor is the demand peak plus 1/HEADROOM of it. */
const HEADROOM = 8;

/**
 * How many warm containers a template may grow to by its network: each holds an address, and a
 * pool grown after a burst must not take the addresses a cold create on a small network needs
 * (a quarter of a /24: 63). Unlimited without a network.
 */
export function addressShare(t: WarmTemplate): number {
  const prefix = Number(t.network?.subnet.split('/')[1]);
  if (!t.network || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) return Infinity;
  return Math.floor(Math.max(0, 2 ** (32 - prefix) - 3) / 4); // less the network, gateway and broadcast addresses
}

/** Creates of one template under way at once outside quiet moments (see WarmPool.replace). */
const REPLACING = 2;
/** quiet() looks again at least this often with no event (a template's demand decays with time alone). */
const QUIET_RECHECK_MS = 1000;

/** A warm container being made: a request may take it before it is ready (take, made). */
interface InFlight {
  id: string;
  key: string;
  /** Taken by a request: it becomes that request's container, not a ready one. */
  claimed: boolean;
  /** Whether it was made (false: failed, nothing left). */
  result: Promise<boolean>;
}

/** Give up on a template after this many failed creates in a row (host errors: a template's own fault is not retried). */
const MAX_FAILURES = 3;
/** How long a template whose create was refused (its own fault) is not warmed again. */
const REFUSED_FOR_MS = 10 * 60_000;

/**
 * Whether a failed create is the template's own fault (a user the image lacks, a user id out of
 * range, an image or network gone): the same settings would fail again, so they are not retried.
 * Anything else (Internal, Unavailable, a plain Error) is the host's and may pass.
 */
export function templateFault(e: unknown): boolean {
  return isNimbusError(e) && (e.code === 'InvalidArgument' || e.code === 'NotFound' || e.code === 'PermissionDenied');
}

export const warmKey = (t: WarmTemplate) => JSON.stringify([t.imageChainId, t.user, t.runtime ?? '', t.network?.id ?? '', t.memoryBytes ?? 0, t.storageBytes ?? 0]);

export class WarmPool {
  private readonly ready = new Map<string, string[]>();
  /** Hot templates, least recently used first (Map order; touch = delete + set). */
  private readonly hot = new Map<string, WarmTemplate>();
  private readonly failures = new Map<string, number>();
  /** Templates refused by their own fault, until when (not made hot again meanwhile). */
  private readonly refused = new Map<string, number>();
  /** Templates a request found empty since they were last topped up: requests are going cold. */
  private readonly starved = new Set<string>();
  /** Creates under way, by id: a request may take one before it is done (take, made). */
  private readonly creating = new Map<string, InFlight>();
  /** Creates started outside fill() (replacements of what requests took): waited for by close(). */
  private readonly replacing = new Set<Promise<void>>();
  private readonly demand: WarmDemand;
  /** Measured memory of each ready warm container, and the running sum and count of every measurement. */
  private readonly entryBytes = new Map<string, number>();
  private readonly measured = { sum: 0, count: 0 };
  private filling: Promise<void> | undefined;
  private closed = false;
  private readonly counters = { hits: 0, handoffs: 0, misses: 0, created: 0, failed: 0 };
  private inFlight = 0;
  private lastActivity = 0;
  /** lastActivity when quiet() last waited for a busy host: one wait per quiet spell, not one per batch. */
  private hostWaitedFor: number | undefined;
  private readonly trimTimer: NodeJS.Timeout | undefined;
  /** quiet()'s waits, ended early when something they look at changes (see changed()). */
  private readonly waiting = new Set<() => void>();

  constructor(
    private readonly slots: WarmSlots,
    private readonly opts: WarmPoolOptions,
  ) {
    this.demand = new WarmDemand(opts.demand);
    if (opts.perImage > 0 && (opts.budgetBytes ?? 0) > 0) {
      // demand decays with no event to notice it: look now and then (unref'd: never keeps the process up)
      this.trimTimer = setInterval(() => {
        if (this.demand.anyAbove(this.opts.perImage) || this.aboveTarget()) this.kick();
      }, opts.trimEveryMs ?? 30_000);
      this.trimTimer.unref();
    }
  }

  /**
   * A warm container for this template, now reserved for the caller, or undefined: a ready one,
   * else one still being made (the caller waits for it with made(): it was started before this
   * request, so it is further along than a cold create would be). Either way the template becomes
   * hot, and what was taken is replaced. Call done(t) when the create this take was for has finished.
   */
  take(t: WarmTemplate): string | undefined {
    if (this.opts.perImage <= 0 || this.closed) return undefined;
    const key = warmKey(t);
    this.lastActivity = performance.now(); // the create that follows is the activity; don't top up under it
    if (this.isRefused(key)) {
      this.counters.misses++;
      return undefined;
    }
    this.touch(key, t);
    this.demand.begin(key);
    let id = this.ready.get(key)?.shift();
    if (id) {
      this.counters.hits++;
      this.entryBytes.delete(id);
    } else {
      const building = this.underWay(key).find((c) => !c.claimed);
      if (building) {
        building.claimed = true;
        id = building.id;
        this.counters.hits++;
        this.counters.handoffs++;
      } else {
        this.counters.misses++;
        this.starved.add(key);
      }
    }
    if (id) this.replace(key, t);
    this.kick();
    this.changed();
    return id;
  }

  /**
   * Whether the warm container take() handed out exists: true at once for a ready one; for one
   * still being made, once its create ends (false: it failed and left nothing, make the request
   * cold). Ask right after take().
   */
  made(id: string): Promise<boolean> {
    return this.creating.get(id)?.result ?? Promise.resolve(true);
  }

  /** The create a take(t) was for has finished (or failed): it no longer counts as demand in flight. */
  done(t: WarmTemplate): void {
    this.demand.end(warmKey(t));
  }

  /**
   * Wrap a container operation so the pool tops up only when the agent is quiet.
   * (Operations on warm containers themselves are not wrapped.)
   */
  async busy<T>(op: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await op();
    } finally {
      this.inFlight--;
      this.lastActivity = performance.now();
      if (this.inFlight === 0) this.changed();
    }
  }

  /** Resolves once no wrapped operation is in flight and none ended for quietMs (or after maxMs if onlyIf() then holds, or on close). */
  async quiet(maxMs = Infinity, onlyIf: () => boolean = () => true): Promise<void> {
    const quietMs = this.opts.quietMs ?? 30;
    const until = performance.now() + maxMs;
    let calmSince: number | undefined; // the agent quiet, the host still busy
    for (;;) {
      if (this.closed) return;
      const now = performance.now();
      const idleFor = now - this.lastActivity;
      if (this.inFlight === 0 && idleFor >= quietMs) {
        // the host is waited for once per quiet spell: after that its load is not our last burst's
        if (this.hostWaitedFor === this.lastActivity || !this.opts.hostBusy?.()) return;
        calmSince ??= now;
        if (now - calmSince >= (this.opts.hostBusyMaxMs ?? 1000)) {
          this.hostWaitedFor = this.lastActivity;
          return;
        }
      } else {
        calmSince = undefined;
      }
      if (now >= until && onlyIf()) return;
      // Sleep until something can have changed: the quiet spell's end, maxMs, or an event (the last
      // wrapped operation ending, a take, a create ending, a discard, close). It polled every 5 ms
      // before: ~1 ms of the event loop a back-to-back request, in pick() and targets().
      let waitMs = calmSince !== undefined ? 20 : this.inFlight === 0 ? quietMs - idleFor : Infinity;
      if (now < until) waitMs = Math.min(waitMs, until - now);
      await this.nextChange(Math.max(1, Math.min(waitMs, QUIET_RECHECK_MS)));
    }
  }

  /** Resolves at the next changed() or after ms. */
  private nextChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiting.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiting.add(done);
    });
  }

  /** What quiet() waits on changed: let its waits look again. */
  private changed(): void {
    for (const done of [...this.waiting]) done();
  }

  /** Whether id is a warm container still waiting in the pool. */
  has(id: string): boolean {
    for (const ids of this.ready.values()) if (ids.includes(id)) return true;
    return false;
  }

  /** A warm container died or was removed from outside: forget it and destroy what is left. */
  discard(id: string): void {
    for (const ids of this.ready.values()) {
      const i = ids.indexOf(id);
      if (i >= 0) {
        ids.splice(i, 1);
        this.entryBytes.delete(id);
        this.changed();
        void this.slots.destroy(id).catch((e: unknown) => log.warn('cannot destroy warm container', { id, error: String(e) }));
        this.kick();
      }
    }
  }

  /** Destroy warm containers of images not in keep (before garbage collection). */
  async retainOnly(keepChainIds: ReadonlySet<string>): Promise<void> {
    await this.settled();
    const doomed: string[] = [];
    for (const [key, t] of this.hot) {
      if (keepChainIds.has(t.imageChainId)) continue;
      doomed.push(...this.drop(key));
    }
    await this.destroyAll(doomed);
  }

  stats(): WarmPoolStats {
    let ready = 0;
    let usedBytes = 0;
    const avg = this.averageEntryBytes();
    for (const ids of this.ready.values()) {
      ready += ids.length;
      for (const id of ids) usedBytes += this.entryBytes.get(id) ?? avg ?? 0;
    }
    let target = 0;
    let peak = 0;
    for (const [key, n] of this.targets()) {
      target += n;
      peak = Math.max(peak, this.demand.peak(key));
    }
    const { perImage, maxImages } = this.opts;
    return {
      perImage, maxImages, ready, hotImages: this.hot.size, ...this.counters,
      sizing: { target, peak, budgetBytes: this.opts.budgetBytes ?? 0, entryBytes: avg === undefined ? null : Math.round(avg), usedBytes: Math.round(usedBytes) },
    };
  }

  /** Stop topping up and destroy every warm container. */
  async close(): Promise<void> {
    this.closed = true;
    this.changed();
    if (this.trimTimer) clearInterval(this.trimTimer);
    await this.settled();
    const all = [...this.ready.values()].flat();
    this.ready.clear();
    this.hot.clear();
    this.entryBytes.clear();
    await this.destroyAll(all);
  }

  /** Every create under way ended (fill()'s and replacements). */
  private async settled(): Promise<void> {
    await this.filling;
    await Promise.all([...this.replacing]);
  }

  private isRefused(key: string): boolean {
    const until = this.refused.get(key);
    if (until === undefined) return false;
    if (performance.now() < until) return true;
    this.refused.delete(key);
    return false;
  }

  /** A template that cannot be created: forget it (and whatever it has ready) and keep it cold for a while. */
  private refuse(key: string): void {
    this.refused.set(key, performance.now() + REFUSED_FOR_MS);
    this.starved.delete(key);
    this.failures.delete(key);
    void this.destroyAll(this.drop(key));
  }

  /** A template no longer hot: its ready containers (for the caller to destroy). */
  private drop(key: string): string[] {
    this.hot.delete(key);
    this.demand.forget(key);
    const ids = this.ready.get(key) ?? [];
    this.ready.delete(key);
    for (const id of ids) this.entryBytes.delete(id);
    return ids;
  }

  private touch(key: string, t: WarmTemplate): void {
    this.hot.delete(key);
    this.hot.set(key, t);
    while (this.hot.size > this.opts.maxImages) {
      const [oldest] = this.hot.keys();
      if (oldest === undefined) break;
      void this.destroyAll(this.drop(oldest));
    }
  }

  /** This template's creates under way, taken by requests or not (only the untaken count toward its target). */
  private underWay(key: string): InFlight[] {
    return [...this.creating.values()].filter((c) => c.key === key);
  }

  /**
   * A request took a warm container and left its template with none ready: make the next one now,
   * not at the next quiet moment, so the request after it takes a container already under way
   * (back to back, each create then overlaps the previous request's start, run and removal). At
   * most REPLACING creates of a template at once (taken ones included): a burst past the pool
   * stays cold, as a container made beside it would only take CPU from its requests.
   */
  private replace(key: string, t: WarmTemplate): void {
    const underWay = this.underWay(key);
    if (this.ready.get(key)?.length || underWay.some((c) => !c.claimed)) return;
    if (underWay.length >= REPLACING || (this.failures.get(key) ?? 0) >= MAX_FAILURES) return;
    const p = this.createOne(key, t).finally(() => this.replacing.delete(p));
    this.replacing.add(p);
  }

  private kick(): void {
    if (this.filling || this.closed) return;
    this.filling = this.fill().finally(() => {
      this.filling = undefined;
    });
  }

  private averageEntryBytes(): number | undefined {
    return this.measured.count ? this.measured.sum / this.measured.count : undefined;
  }

  /**
   * How many warm containers each hot template should have: its floor, plus its demand peak
   * above the floor as far as the budget goes, most recently used templates first. No growth
   * before a warm container was measured (the floors' first ones are).
   */
  private targets(): Map<string, number> {
    const floor = this.opts.perImage;
    const out = new Map<string, number>();
    const avg = this.averageEntryBytes();
    const budgetEntries = avg ? Math.floor((this.opts.budgetBytes ?? 0) / avg) : 0;
    let room = budgetEntries - floor * this.hot.size;
    for (const [key, t] of [...this.hot].reverse()) {
      // an eighth more than the peak: the first requests of a burst may be done before its last
      // arrive (a burst of 200 peaked at 198-199), and each one short of it is a cold create
      const peak = this.demand.peak(key);
      const want = Math.min(peak + Math.ceil(peak / HEADROOM), addressShare(t));
      const grow = Math.max(0, Math.min(want - floor, room));
      room -= grow;
      out.set(key, floor + grow);
    }
    return out;
  }

  private aboveTarget(): boolean {
    for (const [key, n] of this.targets()) if ((this.ready.get(key)?.length ?? 0) > n) return true;
    return false;
  }

  /** Up to n creates, each for the hot template furthest below its target (counting creates under way). */
  private pick(n: number): { key: string; t: WarmTemplate }[] {
    const targets = this.targets();
    const planned = new Map<string, number>();
    const out: { key: string; t: WarmTemplate }[] = [];
    while (out.length < n) {
      let best: { key: string; t: WarmTemplate; deficit: number } | undefined;
      for (const [key, t] of this.hot) {
        if ((this.failures.get(key) ?? 0) >= MAX_FAILURES) continue;
        const have = (this.ready.get(key)?.length ?? 0) + this.underWay(key).filter((c) => !c.claimed).length + (planned.get(key) ?? 0);
        const deficit = (targets.get(key) ?? 0) - have;
        // the largest deficit first (equal targets: the fewest ready, as before); ties: least recently used
        if (deficit > 0 && (!best || deficit > best.deficit)) best = { key, t, deficit };
      }
      if (!best) break;
      planned.set(best.key, (planned.get(best.key) ?? 0) + 1);
      out.push({ key: best.key, t: best.t });
    }
    return out;
  }

  /** Ready containers beyond their template's target (demand decayed): the oldest go. */
  private excess(): string[] {
    const out: string[] = [];
    for (const [key, n] of this.targets()) {
      const ids = this.ready.get(key) ?? [];
      while (ids.length > n) {
        const id = ids.shift()!;
        this.entryBytes.delete(id);
        out.push(id);
      }
    }
    return out;
  }

  /**
   * Top up in idle moments, a batch of fillConcurrency at a time. Under sustained load, only a
   * template whose requests found it empty is topped up anyway (after
   * maxWaitMs, one at a time): they are going cold. Otherwise a container built under load
   * takes CPU from the requests in flight (a 200-container burst that emptied a pool of 200 lost
   * ~0.5 s to it). (The replacement of what a request took is not made here: replace().)
   */
  private async fill(): Promise<void> {
    const maxWaitMs = this.opts.maxWaitMs ?? 500;
    for (;;) {
      if (!this.pick(1).length && !this.aboveTarget()) return;
      await this.quiet(maxWaitMs, () => {
        const [n] = this.pick(1);
        return n !== undefined && !this.ready.get(n.key)?.length && this.starved.has(n.key);
      });
      if (this.closed) return;
      const calm = this.inFlight === 0;
      const doomed = calm ? this.excess() : [];
      if (doomed.length) {
        await this.destroyAll(doomed);
        continue;
      }
      const picks = this.pick(calm ? Math.max(1, this.opts.fillConcurrency ?? 1) : 1);
      if (!picks.length) {
        if (calm) return;
        continue;
      }
      await Promise.all(picks.map((p) => this.createOne(p.key, p.t)));
    }
  }

  private async createOne(key: string, t: WarmTemplate): Promise<void> {
    const id = newId();
    let settle!: (ok: boolean) => void;
    const entry: InFlight = { id, key, claimed: false, result: new Promise<boolean>((r) => (settle = r)) };
    this.creating.set(id, entry);
    try {
      await this.slots.create(t, id);
      this.failures.delete(key);
      this.counters.created++;
      this.creating.delete(id);
      settle(true);
      if (entry.claimed) return; // a request took it while it was being made: the template is no fuller
      this.starved.delete(key);
      if (this.closed || !this.hot.has(key)) {
        await this.slots.destroy(id);
        return;
      }
      const ids = this.ready.get(key) ?? [];
      ids.push(id);
      this.ready.set(key, ids);
      this.changed();
      await this.measure(id);
    } catch (e) {
      this.creating.delete(id);
      settle(false);
      this.counters.failed++;
      this.changed();
      const error = e instanceof Error ? e.message : String(e);
      if (templateFault(e)) {
        log.warn('warm template refused; not retried', { image: t.imageChainId, user: t.user, error });
        this.refuse(key);
        return;
      }
      const n = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, n);
      log.warn('cannot create a warm container', { image: t.imageChainId, attempt: n, error });
    }
  }

  /** What a new warm container holds: the budget is spent in measured bytes, not guessed ones. */
  private async measure(id: string): Promise<void> {
    const bytes = await this.slots.measure?.(id).catch(() => undefined);
    if (bytes === undefined || !Number.isFinite(bytes) || bytes <= 0) return;
    this.measured.sum += bytes;
    this.measured.count++;
    if (this.has(id)) this.entryBytes.set(id, bytes);
  }

  private async destroyAll(ids: string[]): Promise<void> {
    await eachLimited([...ids], DESTROY_CONCURRENCY, (id) =>
      this.slots.destroy(id).catch((e: unknown) => log.warn('cannot destroy warm container', { id, error: String(e) })),
    );
  }
}
