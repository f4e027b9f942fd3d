/**
 * The scheduler (Nova's filter/weigher model, claims as in Placement; docs/scheduler.md).
 * place(): filter the hosts, weigh the survivors, claim on the best one. The usage it filters
 * on is a cached view of the claims (at most usageMaxAgeMs old, plus this process's own
 * claims); it only steers the choice. What keeps a host from being over-committed is the claim
 * itself, a conditional write in the store that any replica's concurrent claims cannot pass
 * together. A claim the store refuses refreshes that host's usage and the choice is made again.
 */
import { InvalidArgument, NotFound, Unavailable } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { HostLimits, HostUsageRecord, PlacementRepo, ServerGroupRecord } from '../../store/repos/placement.js';
import type { Store } from '../../store/store.js';
import { DEFAULT_FILTERS, beyondCapacity, firstRejection, passesAll, staticKey, type FilterInput, type HostFilter, type HostState, type Need } from './filters.js';
import { DEFAULT_MULTIPLIERS, DEFAULT_WEIGHERS, weigh, weighTotals, type WeigherMultipliers, type WeighInput } from './weighers.js';
import { noHostError } from './explain.js';
import type { Explanation, HostCandidate, HostSource, HostVerdict, ImageLocality, Placement, PlacementRequest, Scheduler } from './types.js';

const log = logger('scheduler');

export interface SchedulerOptions {
  /** Spread (default: most free cpu and memory wins) or pack (least free that fits wins). */
  strategy?: 'spread' | 'pack';
  /** The hosts holding an image's layers (the placement change keeps them in image_hosts). */
  imageLocality?: ImageLocality;
  /** Weigher multipliers by name (Nova's *_weight_multiplier); see DEFAULT_MULTIPLIERS. */
  weights?: Partial<WeigherMultipliers>;
  /** How old the cached usage may get before a placement reads it again (default 1000 ms). */
  usageMaxAgeMs?: number;
  /**
   * Hosts that passed the filters weighed per placement at most (Kubernetes'
   * percentageOfNodesToScore, Nova's host subsets); default max(50, 10% of the hosts). The scan
   * starts where the last one stopped, so placements look at every host in turn. explain()
   * weighs every host.
   */
  hostsToScore?: (hosts: number) => number;
  filters?: readonly HostFilter[];
  now?: () => Date;
}

/** What reconcile() did. */
export interface ClaimsReconciled {
  /** Consumers whose claims were dropped: their instance no longer exists. */
  released: string[];
  /** Hosts whose usage row had drifted from their claims and was recomputed. */
  repairedHosts: string[];
}

/** Capacity × allocation ratio, in claim units. */
export function limitsOf(c: HostCandidate): HostLimits {
  const r = c.allocationRatios ?? { cpu: 1, memory: 1, disk: 1 };
  return {
    millicpus: Math.floor(c.cpus * r.cpu * 1000 + 1e-6),
    memoryBytes: Math.floor(c.memoryBytes * r.memory),
    diskBytes: Math.floor(c.diskBytes * r.disk),
    ...(c.maxInstances !== undefined ? { instances: c.maxInstances } : {}),
  };
}

/** The request's resources in claim units; InvalidArgument when one is not a non-negative number. */
export function needOf(req: PlacementRequest): Need {
  for (const [what, v] of [['vcpus', req.vcpus], ['memoryBytes', req.memoryBytes], ['diskBytes', req.diskBytes]] as const) {
    if (!Number.isFinite(v) || v < 0) throw new InvalidArgument(`placement: ${what} must be a non-negative number, got ${v}`);
  }
  return { millicpus: Math.ceil(req.vcpus * 1000 - 1e-6), memoryBytes: Math.ceil(req.memoryBytes), diskBytes: Math.ceil(req.diskBytes) };
}

/** Kubernetes scores at least 100 nodes and a share that shrinks with the cluster; hosts here are fewer and decisions cheaper per host. */
export const defaultHostsToScore = (hosts: number): number => Math.max(50, Math.ceil(hosts / 10));

const zeroUsage = (host: string): HostUsageRecord => ({ host, millicpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0, generation: 0 });

/** The hosts a request's static fields allow, in the candidate list's order, and their positions by name. */
interface Eligible {
  hosts: HostCandidate[];
  at: Map<string, number>;
}

/** Static keys kept per candidate list at most (a list lives a few hundred ms). */
const MAX_STATIC_KEYS = 256;

/** What one request sees of the claims besides usage: its group and the project's and group's instances per host. */
interface RequestContext {
  group?: ServerGroupRecord;
  groupHosts: Set<string>;
  groupCounts: Map<string, number>;
  projectCounts: Map<string, number>;
  imageHosts?: ReadonlySet<string>;
}

interface Evaluation {
  verdicts: HostVerdict[];
  /** Hosts that passed, best first. */
  ranked: string[];
  /** Hosts the request is larger than in all (beyondCapacity). */
  beyond: Set<string>;
}

/** The usage rows as last read, with this process's claims since applied; read again once older than maxAgeMs. */
class UsageView {
  private rows = new Map<string, HostUsageRecord>();
  private readAt = -Infinity;
  private reading: Promise<void> | undefined;

  constructor(private readonly repo: PlacementRepo, private readonly maxAgeMs: number) {}

  async current(fresh: boolean): Promise<ReadonlyMap<string, HostUsageRecord>> {
    if (fresh || performance.now() - this.readAt > this.maxAgeMs) await this.read();
    return this.rows;
  }

  /** Concurrent callers share one read. */
  private read(): Promise<void> {
    this.reading ??= (async () => {
      const started = performance.now();
      try {
        this.rows = new Map((await this.repo.usage()).map((u) => [u.host, u]));
        this.readAt = started;
      } finally {
        this.reading = undefined;
      }
    })();
    return this.reading;
  }

  /** Adds (sign 1) or takes back (-1) a claim, so that concurrent placements here see each other's choices. */
  apply(host: string, need: Need, sign: 1 | -1): void {
    const u = this.rows.get(host) ?? zeroUsage(host);
    this.rows.set(host, {
      ...u,
      millicpus: Math.max(0, u.millicpus + sign * need.millicpus),
      memoryBytes: Math.max(0, u.memoryBytes + sign * need.memoryBytes),
      diskBytes: Math.max(0, u.diskBytes + sign * need.diskBytes),
      instances: Math.max(0, u.instances + sign),
    });
  }

  /** The store's own answer wins over anything cached. */
  set(u: HostUsageRecord): void {
    this.rows.set(u.host, u);
  }
}

/** Projects (and server groups) whose per-host counts are kept (least recently read dropped first). */
const MAX_CACHED_COUNTS = 10_000;

/** Projects read in one query at most (the rest wait for the next). */
const PROJECTS_PER_READ = 500;

/**
 * Each project's claims per host, as last read (at most maxAgeMs old) plus this process's own
 * since: the project-spread weigher's input, read once per project and period instead of once
 * per placement, and the projects asked for in one turn of the event loop in one query. Only a
 * weight depends on it.
 */
class ProjectCounts {
  private readonly entries = new Map<string, { counts: Map<string, number>; readAt: number }>();
  private wanted = new Map<string, { resolve: (c: Map<string, number>) => void; reject: (e: unknown) => void }[]>();
  constructor(private readonly repo: PlacementRepo, private readonly maxAgeMs: number) {}

  get(projectId: string): Promise<Map<string, number>> {
    const e = this.entries.get(projectId);
    if (e && performance.now() - e.readAt <= this.maxAgeMs) {
      this.entries.delete(projectId); // most recently used last
      this.entries.set(projectId, e);
      return Promise.resolve(e.counts);
    }
    return new Promise((resolve, reject) => {
      if (this.wanted.size === 0) setImmediate(() => this.read());
      const waiting = this.wanted.get(projectId);
      if (waiting) waiting.push({ resolve, reject });
      else this.wanted.set(projectId, [{ resolve, reject }]);
    });
  }

  private read(): void {
    const wanted = this.wanted;
    this.wanted = new Map();
    const ids = [...wanted.keys()];
    for (let i = 0; i < ids.length; i += PROJECTS_PER_READ) {
      const part = ids.slice(i, i + PROJECTS_PER_READ);
      const readAt = performance.now();
      void this.repo.projectCounts(part).then(
        (byProject) => {
          for (const id of part) {
            const counts = byProject.get(id) ?? new Map<string, number>();
            this.entries.delete(id);
            this.entries.set(id, { counts, readAt });
            for (const w of wanted.get(id)!) w.resolve(counts);
          }
          while (this.entries.size > MAX_CACHED_COUNTS) this.entries.delete(this.entries.keys().next().value!);
        },
        (e: unknown) => {
          for (const id of part) for (const w of wanted.get(id)!) w.reject(e);
        },
      );
    }
  }

  apply(projectId: string, host: string, sign: 1 | -1): void {
    const counts = this.entries.get(projectId)?.counts;
    if (counts) counts.set(host, Math.max(0, (counts.get(host) ?? 0) + sign));
  }
}

/**
 * Server groups and their members per host, as last read (at most maxAgeMs old) plus this
 * process's own claims since: one read per group and period instead of two per placement. Only
 * steers the choice: a hard policy is checked again by the claim, under the group's lock, and a
 * refusal brings the members' hosts back here.
 */
class GroupView {
  private readonly entries = new Map<string, { group: ServerGroupRecord | undefined; counts: Map<string, number>; readAt: number }>();
  private readonly reading = new Map<string, Promise<{ group: ServerGroupRecord | undefined; counts: Map<string, number> }>>();
  constructor(private readonly repo: PlacementRepo, private readonly maxAgeMs: number) {}

  async get(id: string): Promise<{ group: ServerGroupRecord | undefined; counts: Map<string, number> }> {
    const e = this.entries.get(id);
    if (e && performance.now() - e.readAt <= this.maxAgeMs) return e;
    let r = this.reading.get(id);
    if (!r) {
      const readAt = performance.now();
      r = (async () => {
        const [group, counts] = await Promise.all([this.repo.group(id), this.repo.countsByHost({ groupId: id })]);
        const entry = { group, counts, readAt };
        if (this.entries.size >= MAX_CACHED_COUNTS) this.entries.delete(this.entries.keys().next().value!);
        if (group) this.entries.set(id, entry); // a group not found is asked again (it may be made now)
        return entry;
      })().finally(() => this.reading.delete(id));
      this.reading.set(id, r);
    }
    return r;
  }

  apply(id: string, host: string, sign: 1 | -1): void {
    const counts = this.entries.get(id)?.counts;
    if (counts) counts.set(host, Math.max(0, (counts.get(host) ?? 0) + sign));
  }

  /** A claim refused by the group's policy: these hosts hold members now. */
  membersOn(id: string, hosts: readonly string[]): void {
    const counts = this.entries.get(id)?.counts;
    if (counts) for (const h of hosts) counts.set(h, Math.max(1, counts.get(h) ?? 0));
  }
}

export class FilterScheduler implements Scheduler {
  private readonly view: UsageView;
  private readonly projectCounts: ProjectCounts;
  private readonly groups: GroupView;
  /** Hosts whose usage row this process made or is making (a claim locks that row). */
  private readonly hostRows = new Map<string, Promise<void>>();
  private readonly multipliers: WeigherMultipliers;
  private readonly filters: readonly HostFilter[];
  /** Where the next placement's scan of the hosts starts (see choose()). */
  private scanFrom = 0;
  /** Each candidate's limits (a directory answers the same objects until a host changes). */
  private readonly limitsCache = new WeakMap<HostCandidate, HostLimits>();
  /** The candidate lists whose hosts' usage rows are made (the directory answers one list for a while). */
  private readonly rowsMadeFor = new WeakSet<readonly HostCandidate[]>();
  /** Per candidate list, per staticKey(): the hosts the static filters let through, and them by name. */
  private readonly eligibleCache = new WeakMap<readonly HostCandidate[], Map<string, Eligible>>();
  private readonly staticFilters: readonly HostFilter[];
  private readonly dynamicFilters: readonly HostFilter[];

  constructor(
    readonly store: Store,
    private readonly hosts: HostSource,
    readonly options: SchedulerOptions = {},
  ) {
    this.view = new UsageView(store.placement, options.usageMaxAgeMs ?? 1000);
    this.projectCounts = new ProjectCounts(store.placement, options.usageMaxAgeMs ?? 1000);
    this.groups = new GroupView(store.placement, options.usageMaxAgeMs ?? 1000);
    this.multipliers = { ...DEFAULT_MULTIPLIERS, ...options.weights };
    this.filters = options.filters ?? DEFAULT_FILTERS;
    this.staticFilters = this.filters.filter((f) => f.static);
    this.dynamicFilters = this.filters.filter((f) => !f.static);
  }

  async place(req: PlacementRequest): Promise<Placement> {
    const need = needOf(req);
    const [candidates, ctx] = await Promise.all([this.hosts.candidates(), this.context(req)]);
    this.checkPinned(req, candidates);
    // each refused claim brings fresher usage of that host (or the group): the choice converges
    const attempts = candidates.length + 8;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const usage = await this.view.current(false);
      if (attempt === 0) await this.makeHostRows(candidates, usage);
      const best = this.choose(req, need, candidates, usage, ctx);
      if (best === undefined) {
        const e = this.evaluate(req, need, candidates, usage, ctx);
        throw noHostError(req, e.verdicts, e.beyond);
      }
      const { host, limits } = best;
      this.view.apply(host, need, 1);
      let outcome;
      try {
        outcome = await this.store.placement.claim(
          {
            consumerId: req.consumerId, host, projectId: req.projectId, ...need, createdAt: this.now().toISOString(),
            ...(ctx.group ? { group: { id: ctx.group.id, policy: ctx.group.policy } } : {}),
          },
          limits,
        );
      } catch (err) {
        this.view.apply(host, need, -1);
        throw err;
      }
      if (outcome.claimed) {
        this.projectCounts.apply(req.projectId, host, 1);
        if (ctx.group) this.groups.apply(ctx.group.id, host, 1);
        return { host };
      }
      if (outcome.reason === 'capacity') {
        this.view.set(outcome.usage);
      } else {
        this.view.apply(host, need, -1);
        ctx.groupHosts = new Set(outcome.memberHosts);
        if (ctx.group) this.groups.membersOn(ctx.group.id, outcome.memberHosts);
      }
    }
    throw new Unavailable(`placement of ${req.consumerId}: claims kept being refused by concurrent placements (${attempts} attempts); try again`);
  }

  async explain(req: PlacementRequest): Promise<Explanation> {
    const need = needOf(req);
    const [candidates, ctx] = await Promise.all([this.hosts.candidates(), this.context(req)]);
    this.checkPinned(req, candidates);
    const e = this.evaluate(req, need, candidates, await this.view.current(true), ctx);
    return { ...(e.ranked[0] !== undefined ? { chosen: e.ranked[0] } : {}), hosts: e.verdicts };
  }

  async release(consumerId: string): Promise<void> {
    const released = await this.store.placement.release(consumerId);
    if (released) {
      this.view.apply(released.host, released, -1);
      this.projectCounts.apply(released.projectId, released.host, -1);
      if (released.groupId) this.groups.apply(released.groupId, released.host, -1);
    }
  }

  async moveClaim(consumerId: string, toHost: string): Promise<void> {
    const candidate = (await this.hosts.candidates()).find((c) => c.name === toHost);
    if (!candidate) throw new NotFound(`no host named ${toHost}`);
    const before = await this.store.placement.allocation(consumerId);
    const moved = await this.store.placement.move(consumerId, toHost, limitsOf(candidate));
    if (before && before.host !== moved.host) {
      this.view.apply(before.host, moved, -1);
      this.view.apply(moved.host, moved, 1);
      this.projectCounts.apply(moved.projectId, before.host, -1);
      this.projectCounts.apply(moved.projectId, moved.host, 1);
      if (moved.groupId) {
        this.groups.apply(moved.groupId, before.host, -1);
        this.groups.apply(moved.groupId, moved.host, 1);
      }
    }
  }

  /**
   * Records the claim of an instance that already lives on `host` (made before claims existed, or
   * copied from another store), whatever room the host has: a fact, not a decision. An instance
   * holding a claim already keeps it. True when a claim was recorded.
   */
  async adopt(req: PlacementRequest & { host: string }): Promise<boolean> {
    if (await this.store.placement.allocation(req.consumerId)) return false;
    const need = needOf(req);
    const group = req.group === undefined ? undefined : await this.group(req);
    const unlimited = { millicpus: Number.MAX_SAFE_INTEGER, memoryBytes: Number.MAX_SAFE_INTEGER, diskBytes: Number.MAX_SAFE_INTEGER };
    try {
      await this.store.placement.claim({
        consumerId: req.consumerId, host: req.host, projectId: req.projectId, ...need, createdAt: this.now().toISOString(),
        // the group is recorded; its policy is not applied to what already exists
        ...(group ? { group: { id: group.id, policy: group.policy === 'affinity' || group.policy === 'anti-affinity' ? (`soft-${group.policy}` as const) : group.policy } } : {}),
      }, unlimited);
    } catch (e) {
      if ((e as { code?: unknown }).code === 'Conflict') return false; // adopted meanwhile by another replica
      throw e;
    }
    this.view.apply(req.host, need, 1);
    this.projectCounts.apply(req.projectId, req.host, 1);
    return true;
  }

  /**
   * Drops the claims of consumers that are not live any more (instances removed while no
   * process could release them) and recomputes every host's usage from its claims.
   */
  /**
   * `claimedBefore`: the consumers as read before the live ids were, the only ones judged (a claim
   * made since is a create in flight on some replica); `charged`: ids the quota ledger holds (a
   * create is charged before it claims, so a charged claim without a record is one whose record is
   * still coming). Without them every claim is judged: only safe when no other process creates.
   */
  async reconcile(liveConsumerIds: ReadonlySet<string>, opts: { claimedBefore?: readonly string[]; charged?: ReadonlySet<string> } = {}): Promise<ClaimsReconciled> {
    const released: string[] = [];
    for (const id of opts.claimedBefore ?? (await this.store.placement.consumers())) {
      if (liveConsumerIds.has(id) || opts.charged?.has(id)) continue;
      if (await this.store.placement.release(id)) released.push(id);
    }
    const repairedHosts: string[] = [];
    for (const u of await this.store.placement.usage()) if (await this.store.placement.recomputeUsage(u.host)) repairedHosts.push(u.host);
    if (released.length || repairedHosts.length) log.info('claims reconciled', { released: released.length, repairedHosts });
    await this.view.current(true);
    return { released, repairedHosts };
  }

  /** One statement for the hosts new to this process (a claim on a host without its row would make it alone, in three). */
  private async makeHostRows(candidates: readonly HostCandidate[], usage: ReadonlyMap<string, HostUsageRecord>): Promise<void> {
    if (this.rowsMadeFor.has(candidates)) return;
    const missing = candidates.filter((c) => !usage.has(c.name) && !this.hostRows.has(c.name)).map((c) => c.name);
    if (missing.length) {
      const made = this.store.placement.ensureHosts(missing);
      for (const h of missing) this.hostRows.set(h, made);
      // a failure is not kept: the next placement asks again, and a claim makes its row anyway
      made.catch(() => missing.forEach((h) => this.hostRows.delete(h)));
    }
    const waits = candidates.filter((c) => !usage.has(c.name)).map((c) => this.hostRows.get(c.name));
    if (waits.length === 0) {
      this.rowsMadeFor.add(candidates);
      return;
    }
    // made (or failed: a claim makes its row anyway); the next placement with this list looks again
    await Promise.all(waits.map((w) => w?.catch(() => undefined)));
  }

  private limitsOf(c: HostCandidate): HostLimits {
    let l = this.limitsCache.get(c);
    if (!l) this.limitsCache.set(c, (l = limitsOf(c)));
    return l;
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  private checkPinned(req: PlacementRequest, candidates: readonly HostCandidate[]): void {
    if (req.host !== undefined && !candidates.some((c) => c.name === req.host)) throw new NotFound(`no host named ${req.host}`);
  }

  private async context(req: PlacementRequest): Promise<RequestContext> {
    const none = new Map<string, number>();
    const [grouped, projectCounts, imageHosts] = await Promise.all([
      req.group === undefined ? undefined : this.groupWithCounts(req),
      this.multipliers['project-spread'] !== 0 ? this.projectCounts.get(req.projectId) : none,
      req.imageChainId !== undefined && this.options.imageLocality ? this.options.imageLocality(req.imageChainId) : undefined,
    ]);
    const group = grouped?.group;
    const groupCounts = grouped?.counts ?? none;
    return {
      ...(group ? { group } : {}), groupHosts: new Set(groupCounts.keys()), groupCounts, projectCounts, ...(imageHosts ? { imageHosts } : {}),
    };
  }

  private async group(req: PlacementRequest): Promise<ServerGroupRecord> {
    return (await this.groupWithCounts(req)).group;
  }

  /** The request's group (checked to be its project's) and its members per host, from the group view. */
  private async groupWithCounts(req: PlacementRequest): Promise<{ group: ServerGroupRecord; counts: Map<string, number> }> {
    const { group: g, counts } = await this.groups.get(req.group!);
    if (!g) throw new NotFound(`server group ${req.group} does not exist`);
    if (g.projectId !== req.projectId) throw new InvalidArgument(`server group ${g.name} belongs to another project`);
    return { group: g, counts };
  }

  /**
   * place()'s decision: the best of at most hostsToScore hosts that pass the filters, scanned
   * from where the last placement stopped, plus hosts a weigher favours by name (holding the
   * group's members; some holding the image) wherever they are. Undefined when no host passes.
   * The static filters' answers come from eligible() (kept per candidate list); only usage,
   * counts and the group are looked at per host here. Builds no verdicts: explain() and the
   * error when nothing fits do (evaluate()).
   */
  private choose(
    req: PlacementRequest, need: Need, candidates: readonly HostCandidate[], usage: ReadonlyMap<string, HostUsageRecord>, ctx: RequestContext,
  ): { host: string; limits: HostLimits } | undefined {
    const input: FilterInput = { req, need, groupHosts: ctx.groupHosts, ...(ctx.group ? { group: ctx.group } : {}) };
    const { hosts, at } = this.eligible(candidates, input);
    const n = hosts.length;
    if (n === 0) return undefined;
    const passed: HostState[] = [];
    // one object filled per host looked at; a copy is kept only of those that pass (reusing pooled
    // copies across placements measured no faster)
    const scratch: HostState = { candidate: hosts[0]!, limits: this.limitsOf(hosts[0]!), usage: zeroUsage(''), projectInstances: 0, groupMembers: 0 };
    const consider = (c: HostCandidate) => {
      scratch.candidate = c;
      scratch.limits = this.limitsOf(c);
      scratch.usage = usage.get(c.name) ?? zeroUsage(c.name);
      scratch.projectInstances = ctx.projectCounts.get(c.name) ?? 0;
      scratch.groupMembers = ctx.groupCounts.get(c.name) ?? 0;
      if (passesAll(this.dynamicFilters, scratch, input)) passed.push({ ...scratch });
    };
    const want = req.host !== undefined ? 1 : Math.max(1, Math.min(n, (this.options.hostsToScore ?? defaultHostsToScore)(candidates.length)));
    const start = this.scanFrom % n;
    let k = 0;
    for (; k < n && passed.length < want; k++) consider(hosts[(start + k) % n]!);
    this.scanFrom = start + k;
    if (k < n) {
      // hosts a weigher favours by name wherever they are in the list: every host of the group's
      // members (few), and up to `want` more of those holding the image (often most hosts)
      const extra = new Set<number>();
      const favour = (names: Iterable<string>, limit: number) => {
        let added = 0;
        for (const name of names) {
          if (added >= limit) return;
          const i = at.get(name);
          if (i === undefined || (i - start + n) % n < k || extra.has(i)) continue;
          extra.add(i);
          consider(hosts[i]!);
          added++;
        }
      };
      favour(ctx.groupHosts, Infinity);
      if (ctx.imageHosts) favour(ctx.imageHosts, want);
    }
    if (passed.length === 0) return undefined;
    const weighIn: WeighInput = {
      need, strategy: this.options.strategy ?? 'spread', ...(ctx.group ? { group: ctx.group } : {}), ...(ctx.imageHosts ? { imageHosts: ctx.imageHosts } : {}),
    };
    const totals = weighTotals(passed, weighIn, DEFAULT_WEIGHERS, this.multipliers);
    let best = 0;
    for (let i = 1; i < passed.length; i++) {
      const d = totals[i]! - totals[best]!;
      if (d > 0 || (d === 0 && passed[i]!.candidate.name < passed[best]!.candidate.name)) best = i;
    }
    return { host: passed[best]!.candidate.name, limits: passed[best]!.limits };
  }

  /** The candidates the static filters let through for this request, kept per list and staticKey(). */
  private eligible(candidates: readonly HostCandidate[], input: FilterInput): Eligible {
    let byKey = this.eligibleCache.get(candidates);
    if (!byKey) this.eligibleCache.set(candidates, (byKey = new Map()));
    const key = staticKey(input.req);
    let e = byKey.get(key);
    if (!e) {
      const probe: HostState = { candidate: candidates[0]!, limits: { millicpus: 0, memoryBytes: 0, diskBytes: 0 }, usage: zeroUsage(''), projectInstances: 0, groupMembers: 0 };
      const hosts = candidates.filter((c) => {
        probe.candidate = c;
        return passesAll(this.staticFilters, probe, input);
      });
      e = { hosts, at: new Map(hosts.map((c, i) => [c.name, i])) };
      if (byKey.size < MAX_STATIC_KEYS) byKey.set(key, e);
    }
    return e;
  }

  private evaluate(req: PlacementRequest, need: Need, candidates: readonly HostCandidate[], usage: ReadonlyMap<string, HostUsageRecord>, ctx: RequestContext): Evaluation {
    const input: FilterInput = { req, need, groupHosts: ctx.groupHosts, ...(ctx.group ? { group: ctx.group } : {}) };
    const states: HostState[] = candidates.map((c) => ({
      candidate: c, limits: limitsOf(c), usage: usage.get(c.name) ?? zeroUsage(c.name),
      projectInstances: ctx.projectCounts.get(c.name) ?? 0, groupMembers: ctx.groupCounts.get(c.name) ?? 0,
    }));
    const rejections = states.map((h) => firstRejection(this.filters, h, input));
    const passed = states.filter((_, i) => rejections[i] === undefined);
    const weighIn: WeighInput = {
      need, strategy: this.options.strategy ?? 'spread', ...(ctx.group ? { group: ctx.group } : {}), ...(ctx.imageHosts ? { imageHosts: ctx.imageHosts } : {}),
    };
    const weights = weigh(passed, weighIn, DEFAULT_WEIGHERS, this.multipliers);
    const byHost = new Map(passed.map((h, i) => [h.candidate.name, weights[i]!]));
    const verdicts = states.map((h, i): HostVerdict => {
      const rejectedBy = rejections[i];
      if (rejectedBy) return { host: h.candidate.name, rejectedBy };
      const w = byHost.get(h.candidate.name)!;
      return { host: h.candidate.name, weight: w.total, weighers: w.parts };
    });
    const ranked = passed
      .map((h) => ({ name: h.candidate.name, weight: byHost.get(h.candidate.name)!.total }))
      .sort((a, b) => b.weight - a.weight || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((h) => h.name);
    const beyond = new Set(states.filter((h) => beyondCapacity(need, h.limits)).map((h) => h.candidate.name));
    return { verdicts, ranked, beyond };
  }
}
