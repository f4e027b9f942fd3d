/**
 * Each host's reachability as this process finds it (docs/architecture.md, "Hosts"): up
 * (answered the last ask), down (a refusal, TIMEOUTS_BEFORE_DOWN missed answers in a row, or
 * its events stream lost), unknown (not asked from here yet and no recent facts). A change of
 * state is told once to the listeners (the daemon's `host` events).
 */
import { Unavailable, logMessage, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent, AgentInfo, LinkWatch } from '../../agent/agent.js';

const log = logger('agents');

/** How long each host may take to answer an ask. */
export const HOST_ANSWER_TIMEOUT_MS = 3_000;
/** Answers missed in a row (timeouts, not refusals) before a host that was up is down. */
export const TIMEOUTS_BEFORE_DOWN = 2;
/** A host not heard from since this process started is unknown unless its stored facts are younger than this. */
export const HOST_UNKNOWN_AFTER_MS = 60_000;

export type HostState = 'up' | 'down' | 'unknown';

/**
 * How this process last found a host: its state, why it is down (in words anyone may read, and
 * with its address for administrators when they say more), since when, answers missed in a row.
 */
interface HostReach { state: 'up' | 'down'; reason?: string; adminReason?: string; at: number; misses?: number }

/** A host's state as it is shown; adminReason is for system administrators only (it names the host's address). */
export interface HostStateNow { state: HostState; reason?: string; adminReason?: string }

type StateListener = (host: string, state: 'up' | 'down', reason?: string) => void;

/** What the directory lends: its clock, which connection is current, a fresh ask, and its cache of the hosts' view. */
export interface HostReachDeps {
  now: () => number;
  answerTimeoutMs: number;
  /** Whether `agent` is still the connection to `name` (a replaced connection's link changes are ignored). */
  isCurrent(name: string, agent: Agent): boolean;
  /** Ask the host again (its events stream is back). */
  ask(name: string): Promise<void>;
  /** A host's state changed: what was built from the states (candidates()) is stale. */
  dropCandidates(): void;
}

export class HostReachability {
  /** What each host answered last since this process started. */
  private readonly reach = new Map<string, HostReach>();
  /** Listeners of hosts going down and coming up (this process's view). */
  private readonly listeners = new Set<StateListener>();

  constructor(private readonly deps: HostReachDeps) {}

  /**
   * Called when this process sees a host go down or come up (not on every refresh): the daemon
   * publishes these as `host` events for operators. Returns the unsubscribe.
   */
  onHostStateChange(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Whether this process has found the host either way yet. */
  heardOf(name: string): boolean {
    return this.reach.has(name);
  }

  /** True while the host is found down (missed answers, refused connection, lost events stream). */
  isDown(name: string): boolean {
    return this.reach.get(name)?.state === 'down';
  }

  /** The state now; `factsSeenAt` (the stored facts' time) stands in for a host not asked from here yet. */
  stateOf(name: string, factsSeenAt: number | undefined): HostStateNow {
    const r = this.reach.get(name);
    if (r) return { state: r.state, ...(r.reason !== undefined ? { reason: r.reason } : {}), ...(r.adminReason !== undefined ? { adminReason: r.adminReason } : {}) };
    // not asked yet from here: another replica's recent facts say it answers
    if (factsSeenAt !== undefined && this.deps.now() - factsSeenAt < HOST_UNKNOWN_AFTER_MS) return { state: 'up' };
    return { state: 'unknown', reason: factsSeenAt === undefined ? 'never heard from' : `not heard from since ${new Date(factsSeenAt).toISOString()}` };
  }

  /** The host answered just now outside an ask (a registration's probe). */
  answered(name: string): void {
    this.set(name, { state: 'up', at: this.deps.now() });
  }

  /** What was found of the host is void (its connection replaced or gone): unknown until asked. */
  forget(name: string): void {
    this.reach.delete(name);
  }

  /**
   * The host's info, within the answer timeout, and its state kept: undefined when it did not
   * answer (it is down, or only slow while under TIMEOUTS_BEFORE_DOWN misses).
   */
  async ask(name: string, info: () => Promise<AgentInfo>): Promise<{ info: AgentInfo; at: number } | undefined> {
    const before = this.reach.get(name)?.state;
    let answer: AgentInfo;
    try {
      answer = await withTimeout(info(), this.deps.answerTimeoutMs, `agent ${name} did not answer within ${this.deps.answerTimeoutMs / 1000} s`);
    } catch (e) {
      const err = toNimbusError(e);
      const reason = err.message;
      const prev = this.reach.get(name);
      // A slow answer is not a dead host: this process's own event loop may be what was busy
      // (a burst of placements). Down after TIMEOUTS_BEFORE_DOWN missed answers in a row; a
      // refused or reset connection (the agent process is gone) is down at once.
      const timedOut = e instanceof AnswerTimeout;
      const misses = (prev?.misses ?? 0) + 1;
      if (timedOut && prev?.state === 'up' && misses < TIMEOUTS_BEFORE_DOWN) {
        this.set(name, { ...prev, misses });
        log.info('host slow to answer', { host: name, reason: logMessage(err), misses });
        return undefined;
      }
      this.set(name, { state: 'down', reason, ...(err.adminMessage !== undefined ? { adminReason: err.adminMessage } : {}), at: this.deps.now(), misses });
      this.deps.dropCandidates();
      if (before !== 'down') log.warn('host down', { host: name, reason: logMessage(err) });
      return undefined;
    }
    const at = this.deps.now();
    this.set(name, { state: 'up', at });
    if (before !== 'up') this.deps.dropCandidates();
    if (before === 'down') log.info('host up again', { host: name });
    return { info: answer, at };
  }

  /**
   * A remote host whose events stream is lost (reset, or three pings missed: a host cut off or
   * frozen) is down at once, not at the next refresh; when the stream is back its facts are
   * asked again, which calls it up. Changes of a connection that was replaced are ignored.
   */
  watchLink(name: string, a: Agent): void {
    (a as Partial<LinkWatch>).onLinkChange?.((up, reason, adminReason) => {
      if (!this.deps.isCurrent(name, a)) return;
      if (up) {
        void this.deps.ask(name);
        return;
      }
      const prev = this.reach.get(name);
      if (prev?.state === 'down') return;
      const lost = (why: string | undefined) => `its events stream was lost: ${why ?? 'no reason given'}`;
      this.set(name, { state: 'down', reason: lost(reason), ...(adminReason !== undefined ? { adminReason: lost(adminReason) } : {}), at: this.deps.now(), misses: TIMEOUTS_BEFORE_DOWN });
      this.deps.dropCandidates();
      log.warn('host down', { host: name, reason: adminReason ?? reason });
    });
  }

  /** Every change of a host's reachability goes through here, so a change of state is told once. */
  private set(name: string, next: HostReach): void {
    const before = this.reach.get(name)?.state;
    this.reach.set(name, next);
    if (before === next.state || (before === undefined && next.state === 'up')) return; // first seen up: nothing changed
    for (const l of this.listeners) {
      try {
        l(name, next.state, next.reason);
      } catch (e) {
        log.warn('a host state listener failed', { host: name, error: String(e) });
      }
    }
  }
}

/** No answer within the time allowed (as opposed to a refusal). */
class AnswerTimeout extends Unavailable {}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AnswerTimeout(message)), ms);
      timer.unref();
    }),
  ]);
}
