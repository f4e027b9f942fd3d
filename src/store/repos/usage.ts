/**
 * Usage metering rows (docs/metering.md): what each instance used, per hour and size, and each
 * instance's cursor (how far its usage is accounted). The cursor is the exactly-once guard: a
 * commit moves it compare-and-set from where the sampler read it and adds the usage of that span
 * in the same transaction, so a span is counted once whatever restarts, replicas or overlapping
 * passes do. Additive upserts are safe only behind that guard.
 */
import { numOrNull, str, strOrNull, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';

export type UsageKind = 'container' | 'vm' | 'secure';
export const USAGE_KINDS: readonly UsageKind[] = ['container', 'vm', 'secure'];

/** How far one instance's usage is accounted, and the counter readings the next span is measured from. */
export interface UsageCursor {
  instanceId: string;
  projectId: string;
  kind: UsageKind;
  name: string;
  /** Epoch ms: usage before this is recorded. */
  accountedUntil: number;
  /** Whether the instance was running (or paused) at accountedUntil. */
  active: boolean;
  /** The cumulative CPU counter at the last reading (ns), and the run (its start time) it belongs to: a new run restarts the counter. */
  cpuNs: number | null;
  cpuRun: string | null;
  /**
   * The latest run (its start as stored) an accounting of this cursor saw; '' when none had run
   * yet; null when unknown (a cursor kept from before this was recorded). A run the cursor has not
   * seen that began before accountedUntil was stored after that accounting read the record (the
   * start's time is the host's, taken before the record is written): its start is charged then.
   */
  seenRun: string | null;
  /** Its size when last seen (the key of its usage rows), the memory it held (its limit, else what it used) and its disk (null: unknown): a destroy is charged with these. */
  millicpus: number;
  memoryBytes: number;
  heldMemoryBytes: number;
  diskBytes: number | null;
  /** The instance is gone and its last span accounted: nothing more is added (kept until its record is gone too). */
  closed: boolean;
  /**
   * The network counters at accountedUntil, per endpoint (its host, device and ifindex: a
   * re-created endpoint is a new key, its counter from 0): the next span's bytes are measured
   * from them. Null: unknown (no reading then), and the next span's bytes are not measured.
   */
  netBase: NetBase | null;
}

/** Network counters per endpoint key, as a cursor keeps them. */
export type NetBase = Record<string, { rxBytes: number; txBytes: number }>;

/** Usage to add to one (instance, hour, size) row; null counters: not measured in this span. */
export interface UsageSlice {
  instanceId: string;
  projectId: string;
  kind: UsageKind;
  name: string;
  /** Epoch ms of the period's start (the metering service's hour). */
  periodStart: number;
  /** Size: CPUs in thousandths and memory in bytes (0: no limit). */
  millicpus: number;
  memoryBytes: number;
  activeMs: number;
  cpuNs: number | null;
  /** Memory held × time, in MiB·ms. */
  memoryMibMs: number;
  /** Disk held × time, in MiB·ms; null when the size is unknown. */
  diskMibMs: number | null;
  netRxBytes: number | null;
  netTxBytes: number | null;
}

/** Summed usage of one instance and size (and period, when asked by period). */
export type UsageRow = Omit<UsageSlice, 'periodStart'> & { periodStart: number | null };

export interface UsageFilter {
  /** Only these projects (absent: every project). */
  projectIds?: readonly string[];
  instanceId?: string;
  /** Periods starting at or after since and before until (epoch ms). */
  since?: number;
  until?: number;
  /** Keep periods apart (a series) rather than summing them. */
  byPeriod?: boolean;
}

export interface UsageRepo {
  cursor(instanceId: string): Promise<UsageCursor | undefined>;
  cursors(): Promise<UsageCursor[]>;
  /** The cursors not closed yet: what a sampling pass walks (closed ones wait for deleteClosedBefore). */
  openCursors(): Promise<UsageCursor[]>;
  /** Closed cursors accounted up to before `until` (epoch ms) go; returns how many. */
  deleteClosedBefore(until: number): Promise<number>;
  /**
   * Move the cursor from `expectedUntil` (null: it has none yet) to `next` and add the slices, in
   * one transaction; false, with nothing written, when the cursor is not where expected (another
   * pass accounted that span).
   */
  commit(expectedUntil: number | null, next: UsageCursor, slices: readonly UsageSlice[]): Promise<boolean>;
  deleteCursor(instanceId: string): Promise<void>;
  /** Summed rows by instance and size (and period with byPeriod), ordered by project, instance, period. */
  query(filter?: UsageFilter): Promise<UsageRow[]>;
}

const num = (v: unknown): number => Number(v);

function cursor(r: Row): UsageCursor {
  return {
    instanceId: str(r.instance_id), projectId: str(r.project_id), kind: str(r.kind) as UsageKind, name: str(r.name),
    accountedUntil: num(r.accounted_until), active: num(r.active) === 1, cpuNs: numOrNull(r.cpu_ns), cpuRun: strOrNull(r.cpu_run),
    seenRun: strOrNull(r.seen_run),
    millicpus: num(r.millicpus), memoryBytes: num(r.memory_bytes), heldMemoryBytes: num(r.held_memory_bytes), diskBytes: numOrNull(r.disk_bytes),
    closed: num(r.closed) === 1, netBase: netBaseOf(r.net_base),
  };
}

/** A stored baseline: JSON written by commit; anything else reads as unknown. */
function netBaseOf(v: unknown): NetBase | null {
  if (typeof v !== 'string') return null;
  try {
    const parsed: unknown = JSON.parse(v);
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return null;
    const out: NetBase = {};
    for (const [k, e] of Object.entries(parsed as Record<string, unknown>)) {
      const c = e as { rxBytes?: unknown; txBytes?: unknown } | null;
      if (!c || typeof c.rxBytes !== 'number' || typeof c.txBytes !== 'number') return null;
      out[k] = { rxBytes: c.rxBytes, txBytes: c.txBytes };
    }
    return out;
  } catch {
    return null;
  }
}

function usageRow(r: Row): UsageRow {
  return {
    instanceId: str(r.instance_id), projectId: str(r.project_id), kind: str(r.kind) as UsageKind, name: str(r.name),
    periodStart: numOrNull(r.period_start), millicpus: num(r.millicpus), memoryBytes: num(r.memory_bytes),
    activeMs: num(r.active_ms), cpuNs: numOrNull(r.cpu_ns), memoryMibMs: num(r.memory_mib_ms), diskMibMs: numOrNull(r.disk_mib_ms),
    netRxBytes: numOrNull(r.net_rx_bytes), netTxBytes: numOrNull(r.net_tx_bytes),
  };
}

/** A nullable counter added to a row: null + null stays null (never measured), otherwise the nulls count as 0. */
const addNullable = (col: string) => `${col} = CASE WHEN excluded.${col} IS NULL THEN usage_records.${col} ELSE COALESCE(usage_records.${col}, 0) + excluded.${col} END`;

const UPSERT_SLICE = `INSERT INTO usage_records (instance_id, period_start, millicpus, memory_bytes, project_id, kind, name,
    active_ms, cpu_ns, memory_mib_ms, disk_mib_ms, net_rx_bytes, net_tx_bytes)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (instance_id, period_start, millicpus, memory_bytes) DO UPDATE SET
    name = excluded.name, active_ms = usage_records.active_ms + excluded.active_ms, memory_mib_ms = usage_records.memory_mib_ms + excluded.memory_mib_ms,
    ${['cpu_ns', 'disk_mib_ms', 'net_rx_bytes', 'net_tx_bytes'].map(addNullable).join(', ')}`;

export class SqlUsageRepo implements UsageRepo {
  constructor(private readonly db: SqlExecutor) {}

  async cursor(instanceId: string): Promise<UsageCursor | undefined> {
    const r = await this.db.get('SELECT * FROM usage_cursors WHERE instance_id = ?', [instanceId]);
    return r && cursor(r);
  }

  async cursors(): Promise<UsageCursor[]> {
    return (await this.db.all('SELECT * FROM usage_cursors ORDER BY instance_id')).map(cursor);
  }

  async openCursors(): Promise<UsageCursor[]> {
    return (await this.db.all('SELECT * FROM usage_cursors WHERE closed = 0 ORDER BY instance_id')).map(cursor);
  }

  async deleteClosedBefore(until: number): Promise<number> {
    return (await this.db.run('DELETE FROM usage_cursors WHERE closed = 1 AND accounted_until < ?', [until])).changes;
  }

  commit(expectedUntil: number | null, next: UsageCursor, slices: readonly UsageSlice[]): Promise<boolean> {
    return this.db.transaction(async () => {
      const values = [
        next.projectId, next.kind, next.name, next.accountedUntil, next.active ? 1 : 0, next.cpuNs, next.cpuRun,
        next.millicpus, next.memoryBytes, next.heldMemoryBytes, next.diskBytes, next.closed ? 1 : 0,
        next.netBase === null ? null : JSON.stringify(next.netBase), next.seenRun,
      ];
      // the cursor first: when it lost the race nothing else has been written
      const moved = expectedUntil === null
        ? await this.db.run(
          `INSERT INTO usage_cursors (project_id, kind, name, accounted_until, active, cpu_ns, cpu_run, millicpus, memory_bytes, held_memory_bytes, disk_bytes, closed, net_base, seen_run, instance_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO NOTHING`, [...values, next.instanceId])
        : await this.db.run(
          `UPDATE usage_cursors SET project_id = ?, kind = ?, name = ?, accounted_until = ?, active = ?, cpu_ns = ?, cpu_run = ?,
             millicpus = ?, memory_bytes = ?, held_memory_bytes = ?, disk_bytes = ?, closed = ?, net_base = ?, seen_run = ?
           WHERE instance_id = ? AND accounted_until = ? AND closed = 0`, [...values, next.instanceId, expectedUntil]);
      if (moved.changes !== 1) return false;
      for (const s of slices) {
        if (s.instanceId !== next.instanceId) throw new Error(`usage: a slice of ${s.instanceId} committed with the cursor of ${next.instanceId}`);
        await this.db.run(UPSERT_SLICE, [
          s.instanceId, s.periodStart, s.millicpus, s.memoryBytes, s.projectId, s.kind, s.name,
          s.activeMs, s.cpuNs, s.memoryMibMs, s.diskMibMs, s.netRxBytes, s.netTxBytes,
        ]);
      }
      return true;
    });
  }

  async deleteCursor(instanceId: string): Promise<void> {
    await this.db.run('DELETE FROM usage_cursors WHERE instance_id = ?', [instanceId]);
  }

  async query(filter: UsageFilter = {}): Promise<UsageRow[]> {
    const conditions: string[] = [];
    const params: SqlValue[] = [];
    if (filter.projectIds) {
      if (filter.projectIds.length === 0) return [];
      conditions.push(`project_id IN (${filter.projectIds.map(() => '?').join(', ')})`);
      params.push(...filter.projectIds);
    }
    if (filter.instanceId !== undefined) {
      conditions.push('instance_id = ?');
      params.push(filter.instanceId);
    }
    if (filter.since !== undefined) {
      conditions.push('period_start >= ?');
      params.push(filter.since);
    }
    if (filter.until !== undefined) {
      conditions.push('period_start < ?');
      params.push(filter.until);
    }
    const period = filter.byPeriod ? 'period_start' : 'NULL AS period_start';
    const groupPeriod = filter.byPeriod ? ', period_start' : '';
    // an instance keeps one project and kind; its latest name is MAX's pick only when it was renamed
    const rows = await this.db.all(
      `SELECT instance_id, project_id, kind, MAX(name) AS name, ${period}, millicpus, memory_bytes,
         SUM(active_ms) AS active_ms, SUM(cpu_ns) AS cpu_ns, SUM(memory_mib_ms) AS memory_mib_ms, SUM(disk_mib_ms) AS disk_mib_ms,
         SUM(net_rx_bytes) AS net_rx_bytes, SUM(net_tx_bytes) AS net_tx_bytes
       FROM usage_records ${conditions.length ? `WHERE ${conditions.join(' AND ')}` : ''}
       GROUP BY instance_id, project_id, kind, millicpus, memory_bytes${groupPeriod}
       ORDER BY project_id, instance_id${groupPeriod}, millicpus, memory_bytes`,
      params,
    );
    return rows.map(usageRow);
  }
}
