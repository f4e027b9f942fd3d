/**
 * The warm pool: containers created ahead of demand for the images in use, so a
 * create that matches one only has to write a script and a config (RunD's
 * "do the slow parts ahead of time"; the stub is in drivers/container/warm-start.ts).
 *
 * Policy: an image (with the user and runtime its containers ask for) becomes hot
 * when a container is created from it; the pool keeps `perImage` warm containers
 * for each of the `maxImages` most recently used, topped up one at a time in the
 * background. Warm containers are not instances: the store does not know them, they
 * are not charged to any quota, and the daemon destroys them when it stops (and its
 * reconciliation on start removes any a crash left behind).
 */
import { isNimbusError } from '../core/errors.js';
import { logger } from '../core/log.js';
import type { NetworkSpec } from './network/network-driver.js';

const log = logger('agent.warm-pool');

/** What a warm container is made for: it serves requests with the same image, user, runtime and network. */
export interface WarmTemplate {
  imageChainId: string;
  /** The process user as requested ("uid[:gid]" or a name from the image). */
  user: string;
  runtime?: string;
  /** The network its interface is already on, without an address yet (absent: loopback only). */
  network?: NetworkSpec;
}

export interface WarmPoolOptions {
  /** Warm containers kept per hot template; 0 disables the pool. */
  perImage: number;
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
  create(t: WarmTemplate): Promise<string>;
  destroy(id: string): Promise<void>;
}

export interface WarmPoolStats {
  perImage: number;
  maxImages: number;
  ready: number;
  hotImages: number;
  hits: number;
  misses: number;
  created: number;
  failed: number;
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

export const warmKey = (t: WarmTemplate) => JSON.stringify([t.imageChainId, t.user, t.runtime ?? '', t.network?.id ?? '']);

export class WarmPool {
  private readonly ready = new Map<string, string[]>();
  /** Hot templates, least recently used first (Map order; touch = delete + set). */
  private readonly hot = new Map<string, WarmTemplate>();
  private readonly failures = new Map<string, number>();
  /** Templates refused by their own fault, until when (not made hot again meanwhile). */
  private readonly refused = new Map<string, number>();
  /** Templates a request found empty since they were last topped up: requests are going cold. */
  private readonly starved = new Set<string>();
  private filling: Promise<void> | undefined;
  private closed = false;
  private readonly counters = { hits: 0, misses: 0, created: 0, failed: 0 };
  private inFlight = 0;
  private lastActivity = 0;

  constructor(
    private readonly slots: WarmSlots,
    private readonly opts: WarmPoolOptions,
  ) {}

  /**
   * A ready warm container for this template, now reserved for the caller, or
   * undefined. Either way the template becomes hot and the pool is topped up.
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
    const id = this.ready.get(key)?.shift();
    if (id) this.counters.hits++;
    else {
      this.counters.misses++;
      this.starved.add(key);
    }
    this.kick();
    return id;
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
        if (!this.opts.hostBusy?.()) return;
        calmSince ??= now;
        if (now - calmSince >= (this.opts.hostBusyMaxMs ?? 1000)) return;
      } else {
        calmSince = undefined;
      }
      if (now >= until && onlyIf()) return;
      await new Promise((r) => setTimeout(r, calmSince !== undefined ? 20 : Math.max(5, Math.min(quietMs - idleFor, until - now))));
    }
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
        void this.slots.destroy(id).catch((e: unknown) => log.warn('cannot destroy warm container', { id, error: String(e) }));
        this.kick();
      }
    }
  }

  /** Destroy warm containers of images not in keep (before garbage collection). */
  async retainOnly(keepChainIds: ReadonlySet<string>): Promise<void> {
    await this.filling;
    const doomed: string[] = [];
    for (const [key, t] of this.hot) {
      if (keepChainIds.has(t.imageChainId)) continue;
      this.hot.delete(key);
      doomed.push(...(this.ready.get(key) ?? []));
      this.ready.delete(key);
    }
    await this.destroyAll(doomed);
  }

  stats(): WarmPoolStats {
    let ready = 0;
    for (const ids of this.ready.values()) ready += ids.length;
    return { ...this.opts, ready, hotImages: this.hot.size, ...this.counters };
  }

  /** Stop topping up and destroy every warm container. */
  async close(): Promise<void> {
    this.closed = true;
    await this.filling;
    const all = [...this.ready.values()].flat();
    this.ready.clear();
    this.hot.clear();
    await this.destroyAll(all);
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
    this.hot.delete(key);
    this.starved.delete(key);
    this.failures.delete(key);
    const ids = this.ready.get(key) ?? [];
    this.ready.delete(key);
    void this.destroyAll(ids);
  }

  private touch(key: string, t: WarmTemplate): void {
    this.hot.delete(key);
    this.hot.set(key, t);
    while (this.hot.size > this.opts.maxImages) {
      const [oldest] = this.hot.keys();
      if (oldest === undefined) break;
      this.hot.delete(oldest);
      const ids = this.ready.get(oldest) ?? [];
      this.ready.delete(oldest);
      void this.destroyAll(ids);
    }
  }

  private kick(): void {
    if (this.filling || this.closed) return;
    this.filling = this.fill().finally(() => {
      this.filling = undefined;
    });
  }

  /** The hot template furthest below its target, with how many it has ready. */
  private neediest(): { key: string; t: WarmTemplate; ready: number } | undefined {
    let next: { key: string; t: WarmTemplate; ready: number } | undefined;
    let fewest = this.opts.perImage;
    for (const [key, t] of this.hot) {
      const n = this.ready.get(key)?.length ?? 0;
      if (n < fewest && (this.failures.get(key) ?? 0) < MAX_FAILURES) {
        fewest = n;
        next = { key, t, ready: n };
      }
    }
    return next;
  }

  /** One warm container at a time, for whichever hot template is furthest below its target. */
  private async fill(): Promise<void> {
    for (;;) {
      // Top up in idle moments. Under sustained load, only a template whose requests found it
      // empty is topped up anyway (after maxWaitMs): they are going cold. Otherwise a container
      // built under load serves no request sooner and takes CPU from the ones in flight (a
      // 200-container burst that emptied a pool of 200 lost ~0.5 s to it).
      if (!this.neediest()) return;
      await this.quiet(this.opts.maxWaitMs ?? 500, () => {
        const n = this.neediest();
        return n !== undefined && n.ready === 0 && this.starved.has(n.key);
      });
      if (this.closed) return;
      const next = this.neediest();
      if (!next) return;
      const { key, t } = next;
      try {
        const id = await this.slots.create(t);
        this.failures.delete(key);
        this.starved.delete(key);
        this.counters.created++;
        if (this.closed || !this.hot.has(key)) {
          await this.slots.destroy(id);
          continue;
        }
        const ids = this.ready.get(key) ?? [];
        ids.push(id);
        this.ready.set(key, ids);
      } catch (e) {
        this.counters.failed++;
        const error = e instanceof Error ? e.message : String(e);
        if (templateFault(e)) {
          log.warn('warm template refused; not retried', { image: t.imageChainId, user: t.user, error });
          this.refuse(key);
          continue;
        }
        const n = (this.failures.get(key) ?? 0) + 1;
        this.failures.set(key, n);
        log.warn('cannot create a warm container', { image: t.imageChainId, attempt: n, error });
      }
    }
  }

  private async destroyAll(ids: string[]): Promise<void> {
    await Promise.all(ids.map((id) => this.slots.destroy(id).catch((e: unknown) => log.warn('cannot destroy warm container', { id, error: String(e) }))));
  }
}
