/**
 * Placement rows: each instance's claim (allocation) on one host, each host's usage and
 * generation, and server groups. Claims are atomic against every other claim, in this process
 * and in other control-plane processes on the same database, without the store's cluster-wide
 * transaction lock: a claim is one conditional UPDATE of its host's usage row
 * (`… WHERE used + need <= limit`) written together with the allocation row, as one statement
 * (PostgreSQL: a data-modifying CTE) or one transaction (SQLite's single writer; PostgreSQL
 * when a hard server-group policy must be checked under the group row's lock). Usage and
 * allocations therefore never disagree, whatever crashes when. See docs/scheduler.md.
 */
import { AlreadyExists, Conflict, NotFound, ResourceExhausted, Unavailable } from '../../core/errors.js';
import { ConstraintViolation, isUniqueViolation, str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';

/** Nova's four policies: hard ones filter hosts, soft ones weigh them. */
export type ServerGroupPolicy = 'affinity' | 'anti-affinity' | 'soft-affinity' | 'soft-anti-affinity';
export const SERVER_GROUP_POLICIES: readonly ServerGroupPolicy[] = ['affinity', 'anti-affinity', 'soft-affinity', 'soft-anti-affinity'];
export const isHardPolicy = (p: ServerGroupPolicy): p is 'affinity' | 'anti-affinity' => p === 'affinity' || p === 'anti-affinity';

export interface ServerGroupRecord {
  id: string;
  projectId: string;
  /** Unique in its project. */
  name: string;
  policy: ServerGroupPolicy;
  createdAt: string;
}

/** One instance's claim on one host. CPUs in thousandths, so that sums stay exact integers. */
export interface AllocationRecord {
  consumerId: string;
  host: string;
  projectId: string;
  groupId: string | null;
  millicpus: number;
  memoryBytes: number;
  diskBytes: number;
  createdAt: string;
}

/** The sum of a host's allocations; generation goes up with every change. */
export interface HostUsageRecord {
  host: string;
  millicpus: number;
  memoryBytes: number;
  diskBytes: number;
  instances: number;
  generation: number;
}

/** What a host may hold in all (capacity × allocation ratio), as the claiming scheduler knows it. */
export interface HostLimits {
  millicpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** Absent: no limit on the count. */
  instances?: number;
}

export interface ClaimRequest {
  consumerId: string;
  host: string;
  projectId: string;
  /** The group and its policy (a hard one is checked atomically with the claim). */
  group?: { id: string; policy: ServerGroupPolicy };
  millicpus: number;
  memoryBytes: number;
  diskBytes: number;
  createdAt: string;
}

export type ClaimOutcome =
  | { claimed: true; generation: number }
  /** The host's usage plus the claim would pass one of its limits (the usage as it is now is given). */
  | { claimed: false; reason: 'capacity'; usage: HostUsageRecord }
  /** A hard group policy refuses the host; the hosts holding the group's other members. */
  | { claimed: false; reason: 'group'; memberHosts: string[] };

export interface PlacementRepo {
  /** Claim on c.host if it still fits its limits (and the group's hard policy): one atomic step. Conflict if the consumer holds a claim already. */
  claim(c: ClaimRequest, limits: HostLimits): Promise<ClaimOutcome>;
  /** Give back a claim; the one released, or undefined when there was none (idempotent). */
  release(consumerId: string): Promise<AllocationRecord | undefined>;
  /** Move a claim to another host, checked against that host's limits and the group's hard policy in the same transaction (ResourceExhausted, Conflict). */
  move(consumerId: string, toHost: string, limits: HostLimits): Promise<AllocationRecord>;
  allocation(consumerId: string): Promise<AllocationRecord | undefined>;
  allocations(filter?: { host?: string; projectId?: string; groupId?: string }): Promise<AllocationRecord[]>;
  /** Every claiming consumer's id. */
  consumers(): Promise<string[]>;
  /** Usage rows (hosts that never had a claim have none: their usage is zero). */
  usage(host?: string): Promise<HostUsageRecord[]>;
  /** Make usage rows for these hosts (a claim needs its host's row to lock). */
  ensureHosts(hosts: readonly string[]): Promise<void>;
  /** How many claims of a project or a group each host holds (hosts with none left out). */
  countsByHost(filter: { projectId: string } | { groupId: string }): Promise<Map<string, number>>;
  /** countsByHost for several projects in one query: project → host → claims (every project asked for has an entry). */
  projectCounts(projectIds: readonly string[]): Promise<Map<string, Map<string, number>>>;
  /** Recompute a host's usage from its allocations under its row lock; true when it had drifted. */
  recomputeUsage(host: string): Promise<boolean>;

  insertGroup(g: ServerGroupRecord): Promise<void>;
  group(id: string): Promise<ServerGroupRecord | undefined>;
  groupByName(projectId: string, name: string): Promise<ServerGroupRecord | undefined>;
  /** By project, then name. */
  groups(filter?: { projectId?: string; name?: string }): Promise<ServerGroupRecord[]>;
  /** Conflict while a claim names the group; false when it did not exist. */
  deleteGroup(id: string): Promise<boolean>;
}

const num = (v: unknown): number => Number(v);

function allocation(r: Row): AllocationRecord {
  return {
    consumerId: str(r.consumer_id), host: str(r.host), projectId: str(r.project_id), groupId: strOrNull(r.group_id),
    millicpus: num(r.millicpus), memoryBytes: num(r.memory_bytes), diskBytes: num(r.disk_bytes), createdAt: str(r.created_at),
  };
}

function usage(r: Row): HostUsageRecord {
  return {
    host: str(r.host), millicpus: num(r.used_millicpus), memoryBytes: num(r.used_memory_bytes), diskBytes: num(r.used_disk_bytes),
    instances: num(r.instances), generation: num(r.generation),
  };
}

function group(r: Row): ServerGroupRecord {
  return { id: str(r.id), projectId: str(r.project_id), name: str(r.name), policy: str(r.policy) as ServerGroupPolicy, createdAt: str(r.created_at) };
}

const zeroUsage = (host: string): HostUsageRecord => ({ host, millicpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0, generation: 0 });

/** No limit on the instance count: the condition stays one statement. */
const UNLIMITED = Number.MAX_SAFE_INTEGER;

/** The conditional usage UPDATE both dialects share: adds the claim where it fits (params: see claimParams). */
const ADD_USAGE = `UPDATE placement_hosts SET
    used_millicpus = used_millicpus + ?, used_memory_bytes = used_memory_bytes + ?, used_disk_bytes = used_disk_bytes + ?,
    instances = instances + 1, generation = generation + 1
  WHERE host = ? AND used_millicpus + ? <= ? AND used_memory_bytes + ? <= ? AND used_disk_bytes + ? <= ? AND instances + 1 <= ?`;

function addUsageParams(need: { millicpus: number; memoryBytes: number; diskBytes: number }, host: string, limits: HostLimits): (string | number)[] {
  return [
    need.millicpus, need.memoryBytes, need.diskBytes, host,
    need.millicpus, limits.millicpus, need.memoryBytes, limits.memoryBytes, need.diskBytes, limits.diskBytes, limits.instances ?? UNLIMITED,
  ];
}

/** Whether the claim fits the usage (the same condition ADD_USAGE puts in SQL). */
function fits(u: HostUsageRecord, need: { millicpus: number; memoryBytes: number; diskBytes: number }, limits: HostLimits): boolean {
  return u.millicpus + need.millicpus <= limits.millicpus && u.memoryBytes + need.memoryBytes <= limits.memoryBytes
    && u.diskBytes + need.diskBytes <= limits.diskBytes && u.instances + 1 <= (limits.instances ?? UNLIMITED);
}

const INSERT_ALLOCATION_COLUMNS = 'consumer_id, host, project_id, group_id, millicpus, memory_bytes, disk_bytes, created_at';

type HardGroup = { id: string; policy: 'affinity' | 'anti-affinity' };

/** Whether a hard policy refuses `host` given the hosts of the group's other members. */
function groupRefuses(policy: HardGroup['policy'], memberHosts: readonly string[], host: string): boolean {
  return policy === 'anti-affinity' ? memberHosts.includes(host) : memberHosts.some((h) => h !== host);
}

/** Claims per batched statement (12 parameters each). */
const MAX_BATCH = 64;

interface PendingClaim {
  c: ClaimRequest;
  limits: HostLimits;
  /** The claim's hard group policy, checked in the batch under the group's row lock. */
  hard: HardGroup | undefined;
  resolve: (o: ClaimOutcome) => void;
  reject: (e: unknown) => void;
}

export class SqlPlacementRepo implements PlacementRepo {
  constructor(protected readonly db: SqlExecutor) {}

  async claim(c: ClaimRequest, limits: HostLimits): Promise<ClaimOutcome> {
    const policy = c.group?.policy;
    const hard = c.group && policy && isHardPolicy(policy) ? { id: c.group.id, policy } : undefined;
    // PostgreSQL: batched with the claims asked for at the same time
    if (this.db.dialect === 'postgres') return this.batched(c, limits, hard);
    return this.claimInTransaction(c, limits, hard);
  }

  /** One claim in a transaction of its own: the group's lock and policy first when it has a hard one. */
  private async claimInTransaction(c: ClaimRequest, limits: HostLimits, hard: HardGroup | undefined): Promise<ClaimOutcome> {
    try {
      return await this.db.rowLockTransaction(async () => {
        if (hard) {
          const memberHosts = await this.lockGroupAndRefuse(hard.id, hard.policy, c.consumerId, c.host);
          if (memberHosts) return { claimed: false, reason: 'group', memberHosts };
        }
        return this.claimOnHost(c, limits);
      });
    } catch (e) {
      throw await this.claimError(e, c);
    }
  }

  /** One claim alone: one statement on PostgreSQL. */
  private async claimAlone(c: ClaimRequest, limits: HostLimits): Promise<ClaimOutcome> {
    try {
      return await this.claimOnHost(c, limits);
    } catch (e) {
      throw await this.claimError(e, c);
    }
  }

  /**
   * Claims asked for in the same turn of the event loop go to the database together, at most one
   * per host and per consumer in a batch: one transaction that locks the batch's host rows in
   * name order (batches of several processes never deadlock), then one statement makes every
   * claim that fits. Fewer statements per claim is what placements per second on PostgreSQL
   * are bound by. A batch the database refuses as a whole (a duplicate consumer, a missing
   * group) is retried claim by claim, so each gets its own answer.
   */
  private batched(c: ClaimRequest, limits: HostLimits, hard: HardGroup | undefined): Promise<ClaimOutcome> {
    return new Promise((resolve, reject) => {
      this.pending.push({ c, limits, hard, resolve, reject });
      if (this.pending.length === 1) setImmediate(() => this.flush());
    });
  }

  private pending: PendingClaim[] = [];

  private flush(): void {
    while (this.pending.length) {
      const batch: PendingClaim[] = [];
      const rest: PendingClaim[] = [];
      const hosts = new Set<string>();
      const consumers = new Set<string>();
      // one member per hard group: the policy is checked against members committed before the batch
      const groups = new Set<string>();
      for (const p of this.pending) {
        if (batch.length < MAX_BATCH && !hosts.has(p.c.host) && !consumers.has(p.c.consumerId) && !(p.hard && groups.has(p.hard.id))) {
          batch.push(p);
          hosts.add(p.c.host);
          consumers.add(p.c.consumerId);
          if (p.hard) groups.add(p.hard.id);
        } else {
          rest.push(p);
        }
      }
      this.pending = rest;
      void this.runBatch(batch);
    }
  }

  private async runBatch(batch: PendingClaim[]): Promise<void> {
    const alone = (p: PendingClaim) => (p.hard ? this.claimInTransaction(p.c, p.limits, p.hard) : this.claimAlone(p.c, p.limits)).then(p.resolve, p.reject);
    if (batch.length === 1) return alone(batch[0]!);
    let outcomes: Map<string, ClaimOutcome>;
    let unbatched: PendingClaim[] = [];
    try {
      outcomes = await this.db.rowLockTransaction(async () => {
        // group rows before host rows, each in name order: the order every claim locks in (no
        // deadlock). NO KEY UPDATE, as the single claim's UPDATE takes: it does not block the key
        // share lock a plain claim's insert takes on its group row (the foreign key)
        const groupIds = [...new Set(batch.flatMap((p) => (p.hard ? [p.hard.id] : [])))].sort();
        const lockedGroups = new Set(groupIds.length ? (await this.db.all(
          `SELECT id FROM server_groups WHERE id IN (${groupIds.map(() => '?').join(', ')}) ORDER BY id FOR NO KEY UPDATE`, groupIds,
        )).map((r) => str(r.id)) : []);
        const hosts = batch.map((p) => p.c.host);
        const locked = new Set((await this.db.all(
          `SELECT host FROM placement_hosts WHERE host IN (${hosts.map(() => '?').join(', ')}) ORDER BY host FOR UPDATE`, hosts,
        )).map((r) => str(r.host)));
        // a host without its usage row yet (the claim makes it) or a group that is gone (NotFound): that claim goes alone
        unbatched = batch.filter((p) => !locked.has(p.c.host) || (p.hard !== undefined && !lockedGroups.has(p.hard.id)));
        const out = new Map<string, ClaimOutcome>();
        let claims = batch.filter((p) => !unbatched.includes(p));
        if (lockedGroups.size) {
          // read after the locks: every member claim made before ours has committed
          const memberHosts = new Map<string, string[]>();
          for (const r of await this.db.all(
            `SELECT DISTINCT group_id, host FROM placement_allocations WHERE group_id IN (${[...lockedGroups].map(() => '?').join(', ')}) ORDER BY host`, [...lockedGroups],
          )) {
            const g = str(r.group_id);
            memberHosts.set(g, [...(memberHosts.get(g) ?? []), str(r.host)]);
          }
          claims = claims.filter((p) => {
            if (!p.hard) return true;
            const members = memberHosts.get(p.hard.id) ?? [];
            if (!groupRefuses(p.hard.policy, members, p.c.host)) return true;
            out.set(p.c.consumerId, { claimed: false, reason: 'group', memberHosts: members });
            return false;
          });
        }
        if (claims.length === 0) return out;
        const row = '(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT))';
        const made = await this.db.all(
          `WITH req (consumer_id, host, project_id, group_id, millicpus, memory_bytes, disk_bytes, created_at, max_millicpus, max_memory_bytes, max_disk_bytes, max_instances)
             AS (VALUES ${claims.map(() => row).join(', ')}),
           h AS (UPDATE placement_hosts SET
               used_millicpus = placement_hosts.used_millicpus + req.millicpus, used_memory_bytes = placement_hosts.used_memory_bytes + req.memory_bytes,
               used_disk_bytes = placement_hosts.used_disk_bytes + req.disk_bytes, instances = placement_hosts.instances + 1, generation = placement_hosts.generation + 1
             FROM req WHERE placement_hosts.host = req.host AND placement_hosts.used_millicpus + req.millicpus <= req.max_millicpus
               AND placement_hosts.used_memory_bytes + req.memory_bytes <= req.max_memory_bytes AND placement_hosts.used_disk_bytes + req.disk_bytes <= req.max_disk_bytes
               AND placement_hosts.instances + 1 <= req.max_instances
             RETURNING placement_hosts.host, placement_hosts.generation),
           a AS (INSERT INTO placement_allocations (${INSERT_ALLOCATION_COLUMNS})
             SELECT req.consumer_id, req.host, req.project_id, req.group_id, req.millicpus, req.memory_bytes, req.disk_bytes, req.created_at FROM req JOIN h ON h.host = req.host)
           SELECT host, generation FROM h`,
          claims.flatMap(({ c, limits }) => [
            c.consumerId, c.host, c.projectId, c.group?.id ?? null, c.millicpus, c.memoryBytes, c.diskBytes, c.createdAt,
            limits.millicpus, limits.memoryBytes, limits.diskBytes, limits.instances ?? UNLIMITED,
          ]),
        );
        const generations = new Map(made.map((r) => [str(r.host), num(r.generation)]));
        const refused = claims.filter((p) => !generations.has(p.c.host)).map((p) => p.c.host);
        // the rows are still locked: the usage a refusal reports is exact
        const usageNow = refused.length
          ? new Map((await this.db.all(`SELECT * FROM placement_hosts WHERE host IN (${refused.map(() => '?').join(', ')})`, refused)).map((r) => [str(r.host), usage(r)]))
          : new Map<string, HostUsageRecord>();
        for (const { c } of claims) {
          const generation = generations.get(c.host);
          out.set(c.consumerId, generation !== undefined ? { claimed: true, generation } : { claimed: false, reason: 'capacity', usage: usageNow.get(c.host) ?? zeroUsage(c.host) });
        }
        return out;
      });
    } catch {
      await Promise.all(batch.map(alone));
      return;
    }
    for (const p of batch) {
      const o = outcomes.get(p.c.consumerId);
      if (o) p.resolve(o);
    }
    await Promise.all(unbatched.map(alone));
  }

  /** The claim's writes; inside a transaction on SQLite, one statement on PostgreSQL. */
  private async claimOnHost(c: ClaimRequest, limits: HostLimits, attempt = 1): Promise<ClaimOutcome> {
    const values = [c.consumerId, c.projectId, c.group?.id ?? null, c.millicpus, c.memoryBytes, c.diskBytes, c.createdAt];
    let generation: number | undefined;
    if (this.db.dialect === 'postgres') {
      const r = await this.db.get(
        `WITH h AS (${ADD_USAGE} RETURNING host, generation)
         INSERT INTO placement_allocations (${INSERT_ALLOCATION_COLUMNS})
           SELECT CAST(? AS TEXT), h.host, CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT) FROM h
         RETURNING (SELECT generation FROM h) AS generation`,
        [...addUsageParams(c, c.host, limits), ...values],
      );
      generation = r ? num(r.generation) : undefined;
    } else {
      const r = await this.db.get(`${ADD_USAGE} RETURNING generation`, addUsageParams(c, c.host, limits));
      if (r) {
        await this.db.run(`INSERT INTO placement_allocations (${INSERT_ALLOCATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
          [c.consumerId, c.host, ...values.slice(1)]);
        generation = num(r.generation);
      }
    }
    if (generation !== undefined) return { claimed: true, generation };
    const [now] = await this.usage(c.host);
    // refused for want of room: say so. Else the row was missing when the statement began (made
    // since by a concurrent first claim, or by us now) or room was freed since: try again.
    if (now && !fits(now, c, limits)) return { claimed: false, reason: 'capacity', usage: now };
    if (attempt >= 3) throw new Unavailable(`placement: host ${c.host}'s usage kept changing under claim ${c.consumerId}; try again`);
    if (!now) await this.ensureHosts([c.host]);
    return this.claimOnHost(c, limits, attempt + 1);
  }

  /**
   * Takes the group row's lock (concurrent claims and moves of the group's members wait here),
   * then reads the members' hosts, which every member claim made before us has committed.
   * The member hosts when the hard policy refuses `host`, else undefined.
   */
  private async lockGroupAndRefuse(groupId: string, policy: 'affinity' | 'anti-affinity', consumerId: string, host: string): Promise<string[] | undefined> {
    const locked = await this.db.get('UPDATE server_groups SET generation = generation + 1 WHERE id = ? RETURNING id', [groupId]);
    if (!locked) throw new NotFound(`server group ${groupId} does not exist`);
    const memberHosts = (await this.db.all(
      'SELECT DISTINCT host FROM placement_allocations WHERE group_id = ? AND consumer_id <> ? ORDER BY host', [groupId, consumerId],
    )).map((r) => str(r.host));
    return groupRefuses(policy, memberHosts, host) ? memberHosts : undefined;
  }

  private async claimError(e: unknown, c: ClaimRequest): Promise<unknown> {
    if (isUniqueViolation(e)) {
      const held = await this.allocation(c.consumerId);
      return new Conflict(`instance ${c.consumerId} already holds a claim${held ? ` on host ${held.host}` : ''}; release or move it`, { consumer: c.consumerId, host: held?.host });
    }
    if (e instanceof ConstraintViolation && e.kind === 'foreign-key' && c.group) return new NotFound(`server group ${c.group.id} does not exist`);
    return e;
  }

  async release(consumerId: string): Promise<AllocationRecord | undefined> {
    if (this.db.dialect === 'postgres') {
      // the DELETE's row lock makes a second release of the same claim find nothing
      const r = await this.db.get(
        `WITH a AS (DELETE FROM placement_allocations WHERE consumer_id = ? RETURNING *)
         UPDATE placement_hosts SET used_millicpus = placement_hosts.used_millicpus - a.millicpus,
           used_memory_bytes = placement_hosts.used_memory_bytes - a.memory_bytes, used_disk_bytes = placement_hosts.used_disk_bytes - a.disk_bytes,
           instances = placement_hosts.instances - 1, generation = placement_hosts.generation + 1
         FROM a WHERE placement_hosts.host = a.host
         RETURNING a.consumer_id, a.host, a.project_id, a.group_id, a.millicpus, a.memory_bytes, a.disk_bytes, a.created_at`,
        [consumerId],
      );
      return r && allocation(r);
    }
    return this.db.rowLockTransaction(async () => {
      const r = await this.db.get('DELETE FROM placement_allocations WHERE consumer_id = ? RETURNING *', [consumerId]);
      if (!r) return undefined;
      const a = allocation(r);
      await this.db.run(
        `UPDATE placement_hosts SET used_millicpus = used_millicpus - ?, used_memory_bytes = used_memory_bytes - ?, used_disk_bytes = used_disk_bytes - ?,
           instances = instances - 1, generation = generation + 1 WHERE host = ?`,
        [a.millicpus, a.memoryBytes, a.diskBytes, a.host],
      );
      return a;
    });
  }

  async move(consumerId: string, toHost: string, limits: HostLimits): Promise<AllocationRecord> {
    await this.ensureHosts([toHost]);
    return this.db.rowLockTransaction(async () => {
      const lockRow = this.db.dialect === 'postgres' ? ' FOR UPDATE' : '';
      const r = await this.db.get(`SELECT * FROM placement_allocations WHERE consumer_id = ?${lockRow}`, [consumerId]);
      if (!r) throw new NotFound(`instance ${consumerId} holds no claim`);
      const a = allocation(r);
      if (a.host === toHost) return a;
      if (a.groupId) {
        const g = await this.group(a.groupId);
        if (g && isHardPolicy(g.policy)) {
          const memberHosts = await this.lockGroupAndRefuse(g.id, g.policy, consumerId, toHost);
          if (memberHosts) {
            throw new Conflict(`host ${toHost} breaks server group ${g.name}'s ${g.policy} policy (members on ${memberHosts.join(', ')})`, { group: g.id, memberHosts });
          }
        }
      }
      // both hosts' rows in name order: two moves in opposite directions never deadlock
      for (const host of [a.host, toHost].sort()) {
        if (host === toHost) {
          const added = await this.db.run(ADD_USAGE, addUsageParams(a, toHost, limits));
          if (added.changes === 0) {
            const [now] = await this.usage(toHost);
            throw new ResourceExhausted(`host ${toHost} cannot take instance ${consumerId}'s claim`, { host: toHost, usage: now ?? zeroUsage(toHost), limits });
          }
        } else {
          await this.db.run(
            `UPDATE placement_hosts SET used_millicpus = used_millicpus - ?, used_memory_bytes = used_memory_bytes - ?, used_disk_bytes = used_disk_bytes - ?,
               instances = instances - 1, generation = generation + 1 WHERE host = ?`,
            [a.millicpus, a.memoryBytes, a.diskBytes, a.host],
          );
        }
      }
      await this.db.run('UPDATE placement_allocations SET host = ? WHERE consumer_id = ?', [toHost, consumerId]);
      return { ...a, host: toHost };
    });
  }

  async allocation(consumerId: string): Promise<AllocationRecord | undefined> {
    const r = await this.db.get('SELECT * FROM placement_allocations WHERE consumer_id = ?', [consumerId]);
    return r && allocation(r);
  }

  async allocations(filter: { host?: string; projectId?: string; groupId?: string } = {}): Promise<AllocationRecord[]> {
    const where: string[] = [];
    const params: string[] = [];
    if (filter.host !== undefined) (where.push('host = ?'), params.push(filter.host));
    if (filter.projectId !== undefined) (where.push('project_id = ?'), params.push(filter.projectId));
    if (filter.groupId !== undefined) (where.push('group_id = ?'), params.push(filter.groupId));
    const rows = await this.db.all(
      `SELECT * FROM placement_allocations${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, consumer_id`, params,
    );
    return rows.map(allocation);
  }

  async consumers(): Promise<string[]> {
    return (await this.db.all('SELECT consumer_id FROM placement_allocations ORDER BY consumer_id')).map((r) => str(r.consumer_id));
  }

  async usage(host?: string): Promise<HostUsageRecord[]> {
    const rows = host === undefined
      ? await this.db.all('SELECT * FROM placement_hosts ORDER BY host')
      : await this.db.all('SELECT * FROM placement_hosts WHERE host = ?', [host]);
    return rows.map(usage);
  }

  async ensureHosts(hosts: readonly string[]): Promise<void> {
    for (let i = 0; i < hosts.length; i += 500) {
      const part = hosts.slice(i, i + 500);
      await this.db.run(`INSERT INTO placement_hosts (host) VALUES ${part.map(() => '(?)').join(', ')} ON CONFLICT (host) DO NOTHING`, part);
    }
  }

  async countsByHost(filter: { projectId: string } | { groupId: string }): Promise<Map<string, number>> {
    const [column, value] = 'projectId' in filter ? ['project_id', filter.projectId] : ['group_id', filter.groupId];
    const rows = await this.db.all(`SELECT host, COUNT(*) AS n FROM placement_allocations WHERE ${column} = ? GROUP BY host ORDER BY host`, [value]);
    return new Map(rows.map((r) => [str(r.host), num(r.n)]));
  }

  async projectCounts(projectIds: readonly string[]): Promise<Map<string, Map<string, number>>> {
    const out = new Map(projectIds.map((id) => [id, new Map<string, number>()]));
    if (projectIds.length === 0) return out;
    const rows = await this.db.all(
      `SELECT project_id, host, COUNT(*) AS n FROM placement_allocations WHERE project_id IN (${projectIds.map(() => '?').join(', ')})
       GROUP BY project_id, host ORDER BY project_id, host`, projectIds,
    );
    for (const r of rows) out.get(str(r.project_id))?.set(str(r.host), num(r.n));
    return out;
  }

  async recomputeUsage(host: string): Promise<boolean> {
    return this.db.rowLockTransaction(async () => {
      // the row lock first: claims on this host wait, and the sums below see every committed one
      const before = await this.db.get('UPDATE placement_hosts SET generation = generation + 1 WHERE host = ? RETURNING *', [host]);
      if (!before) return false;
      const sums = await this.db.get(
        `SELECT COALESCE(SUM(millicpus), 0) AS used_millicpus, COALESCE(SUM(memory_bytes), 0) AS used_memory_bytes,
           COALESCE(SUM(disk_bytes), 0) AS used_disk_bytes, COUNT(*) AS instances FROM placement_allocations WHERE host = ?`, [host],
      );
      const was = usage(before);
      const is = usage({ ...sums, host, generation: was.generation });
      if (was.millicpus === is.millicpus && was.memoryBytes === is.memoryBytes && was.diskBytes === is.diskBytes && was.instances === is.instances) return false;
      await this.db.run('UPDATE placement_hosts SET used_millicpus = ?, used_memory_bytes = ?, used_disk_bytes = ?, instances = ? WHERE host = ?',
        [is.millicpus, is.memoryBytes, is.diskBytes, is.instances, host]);
      return true;
    });
  }

  async insertGroup(g: ServerGroupRecord): Promise<void> {
    try {
      await this.db.run('INSERT INTO server_groups (id, project_id, name, policy, created_at) VALUES (?, ?, ?, ?, ?)', [g.id, g.projectId, g.name, g.policy, g.createdAt]);
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExists(e.involves('name') ? `server group "${g.name}" already exists in this project` : `server group ${g.id} already exists`);
      throw e;
    }
  }

  async group(id: string): Promise<ServerGroupRecord | undefined> {
    const r = await this.db.get('SELECT * FROM server_groups WHERE id = ?', [id]);
    return r && group(r);
  }

  async groupByName(projectId: string, name: string): Promise<ServerGroupRecord | undefined> {
    const r = await this.db.get('SELECT * FROM server_groups WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && group(r);
  }

  async groups(filter: { projectId?: string; name?: string } = {}): Promise<ServerGroupRecord[]> {
    const where: string[] = [];
    const params: string[] = [];
    if (filter.projectId !== undefined) (where.push('project_id = ?'), params.push(filter.projectId));
    if (filter.name !== undefined) (where.push('name = ?'), params.push(filter.name));
    const rows = await this.db.all(`SELECT * FROM server_groups${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY project_id, name, id`, params);
    return rows.map(group);
  }

  async deleteGroup(id: string): Promise<boolean> {
    try {
      // a member's foreign key refuses the delete, also against a claim committing meanwhile
      return (await this.db.run('DELETE FROM server_groups WHERE id = ?', [id])).changes > 0;
    } catch (e) {
      if (!(e instanceof ConstraintViolation && e.kind === 'foreign-key')) throw e;
      const members = await this.allocations({ groupId: id });
      throw new Conflict(`server group ${id} still has ${members.length} member(s): ${members.slice(0, 10).map((m) => m.consumerId).join(', ')}`, { members: members.map((m) => m.consumerId) });
    }
  }
}
