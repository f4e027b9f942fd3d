/**
 * The arithmetic of metering, pure: what one instance used between its cursor and `now`, split
 * into the hours it falls in (docs/metering.md). The service reads the records, counters and
 * cursor; this decides; the store commits the result compare-and-set on the cursor.
 *
 * Time active comes from the stored transitions: a run is [startedAt, end of run], where the end
 * is finishedAt (or savedAt for a VM) once the run ended, else open while the instance runs. Only
 * the latest run is stored: a run that began and ended entirely between two accountings is missed
 * unless an event triggered an accounting in between (the service accounts on every start, die
 * and destroy it sees), so the error is an under-count bounded by the sampling interval.
 */
import type { ContainerRecord, VmRecord } from '../../store/records.js';
import type { NetBase, UsageCursor, UsageKind, UsageSlice } from '../../store/repos/usage.js';

export const USAGE_PERIOD_MS = 3_600_000;
const MiB = 1024 * 1024;

/** An instance as metering sees it, from its container or VM record. */
export interface MeteredInstance {
  id: string;
  projectId: string;
  name: string;
  kind: UsageKind;
  /** Epoch ms. */
  createdAt: number;
  /** Running or paused now (or being removed while it ran): the current run is open. */
  active: boolean;
  /** The latest run: its start (epoch ms; null: never started) and, once it ended, its end. */
  runStart: number | null;
  runEnd: number | null;
  /** The latest run's start as stored: a new value is a new run (a new CPU counter). */
  runId: string | null;
  /** The host it is on: its endpoints' counters are that host's. */
  host: string;
}

/** What the instance holds: CPUs in thousandths and memory (0: no limit), disk (null: unknown). */
export interface InstanceSize {
  millicpus: number;
  memoryBytes: number;
  diskBytes: number | null;
}

/** A counter reading taken at (or just after) `now`; cpuNs is cumulative over the run. */
export interface CounterReading {
  cpuNs: number;
  memoryBytes: number;
  /** The instance's endpoints' counters (its point of view), each cumulative over the endpoint's life; absent: not measured. */
  network?: NetworkReading;
}

export interface NetworkReading {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  endpoints: ReadonlyArray<{ hostIf: string; ifindex: number; rxBytes: number; txBytes: number }>;
}

/** Bytes received and sent by the instance in a span. */
export interface NetBytes {
  rxBytes: number;
  txBytes: number;
}

/** An endpoint's key in a baseline: its host, device and ifindex (a re-created endpoint, here or on another host, is a new key). */
const endpointKey = (host: string, e: { hostIf: string; ifindex: number }) => `${host}/${e.hostIf}#${e.ifindex}`;

/**
 * The bytes since the cursor: per endpoint, the counter less the cursor's baseline; an endpoint
 * the baseline lacks, or whose counter went down (re-created), is new: all of its counter is new.
 * Null (not measured) without a reading, or when the cursor has no baseline (no reading at its
 * position): what passed since is unknown, an under-count of at most one interval, never a
 * double count. The baseline is committed with the cursor, so a restarted service or a new leader
 * measures from it like the one before.
 */
export function netDelta(cursor: UsageCursor | undefined, inst: Pick<MeteredInstance, 'host'>, reading: CounterReading | undefined): NetBytes | null {
  const net = reading?.network;
  if (!net) return null;
  if (!cursor) return { rxBytes: net.rxBytes, txBytes: net.txBytes }; // first accounting: the endpoints began at 0 after the instance's creation
  if (!cursor.netBase) return null;
  const out = { rxBytes: 0, txBytes: 0 };
  for (const e of net.endpoints) {
    const b = cursor.netBase[endpointKey(inst.host, e)];
    const fresh = !b || e.rxBytes < b.rxBytes || e.txBytes < b.txBytes;
    out.rxBytes += fresh ? e.rxBytes : e.rxBytes - b.rxBytes;
    out.txBytes += fresh ? e.txBytes : e.txBytes - b.txBytes;
  }
  return out;
}

/**
 * The baseline for the span after the new cursor: this reading's counters. Without one: the
 * cursor's carried (a stopped instance's endpoints keep theirs); on a first accounting, an empty
 * one (nothing was charged yet: every endpoint's counter is all new, e.g. a VM's taps made at its
 * create, before its first run); else none (unknown).
 */
export function nextNetBase(cursor: UsageCursor | undefined, inst: Pick<MeteredInstance, 'host'>, reading: CounterReading | undefined): NetBase | null {
  if (reading?.network) {
    const out: NetBase = {};
    for (const e of reading.network.endpoints) out[endpointKey(inst.host, e)] = { rxBytes: e.rxBytes, txBytes: e.txBytes };
    return out;
  }
  if (!cursor) return {};
  return cursor.netBase;
}

const ms = (iso: string | null): number | null => (iso === null ? null : Date.parse(iso));

/** The later of the run's end marks, if it is not before the run's start (an older run's end is not this run's). */
function runEndOf(start: number | null, ...ends: (string | null)[]): number | null {
  if (start === null) return null;
  const after = ends.map(ms).filter((e): e is number => e !== null && e >= start);
  return after.length ? Math.max(...after) : null;
}

export function meteredContainer(c: ContainerRecord): MeteredInstance {
  const runStart = ms(c.startedAt);
  const runEnd = runEndOf(runStart, c.finishedAt);
  return {
    id: c.id, projectId: c.projectId, name: c.name, kind: c.config.runtime === 'vm' || c.runtime === 'vm' ? 'secure' : 'container',
    createdAt: Date.parse(c.createdAt),
    // a removal kills a running container without recording its end: it held its resources until then
    active: c.status === 'running' || c.status === 'paused' || (c.status === 'removing' && runStart !== null && runEnd === null),
    runStart, runEnd, runId: c.startedAt, host: c.host,
  };
}

export function meteredVm(v: VmRecord): MeteredInstance {
  const runStart = ms(v.startedAt);
  const runEnd = runEndOf(runStart, v.finishedAt, v.savedAt);
  return {
    id: v.id, projectId: v.projectId, name: v.name, kind: 'vm', createdAt: Date.parse(v.createdAt),
    active: v.status === 'running' || v.status === 'paused' || (v.status === 'removing' && runStart !== null && runEnd === null),
    runStart, runEnd, runId: v.startedAt, host: v.agent,
  };
}

/** [start, end) split at period boundaries: [periodStart, ms] pairs. */
export function splitByPeriod(start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let at = start; at < end;) {
    const period = Math.floor(at / USAGE_PERIOD_MS) * USAGE_PERIOD_MS;
    const until = Math.min(end, period + USAGE_PERIOD_MS);
    out.push([period, until - at]);
    at = until;
  }
  return out;
}

/** `amount` spread over `spans` in proportion to their time (whole units, the rest in the last); null stays null. */
function spread(amount: number | null, spans: Array<[number, number]>): Array<number | null> {
  if (amount === null) return spans.map(() => null);
  const total = spans.reduce((a, [, d]) => a + d, 0);
  let left = amount;
  return spans.map(([, d], i) => {
    const part = i === spans.length - 1 ? left : total === 0 ? 0 : Math.round((amount * d) / total);
    left -= part;
    return part;
  });
}

/** The slices of `activeMs` spread over `spans`, with CPU and network amounts spread in proportion. */
function slicesOf(
  base: Pick<UsageSlice, 'instanceId' | 'projectId' | 'kind' | 'name'>,
  size: InstanceSize,
  heldMemoryBytes: number,
  spans: Array<[number, number]>,
  cpuNs: number | null,
  net: NetBytes | null = null,
): UsageSlice[] {
  const cpu = spread(cpuNs, spans);
  const rx = spread(net?.rxBytes ?? null, spans);
  const tx = spread(net?.txBytes ?? null, spans);
  return spans.map(([periodStart, activeMs], i) => ({
    ...base, periodStart, millicpus: size.millicpus, memoryBytes: size.memoryBytes, activeMs, cpuNs: cpu[i]!,
    memoryMibMs: Math.round((heldMemoryBytes / MiB) * activeMs),
    diskMibMs: size.diskBytes === null ? null : Math.round((size.diskBytes / MiB) * activeMs),
    netRxBytes: rx[i]!, netTxBytes: tx[i]!,
  }));
}

export interface Accounted {
  next: UsageCursor;
  slices: UsageSlice[];
}

/**
 * The usage of (cursor, now]: undefined when the cursor is at or past now or closed. A first
 * accounting (no cursor) starts at the instance's creation, so nothing before metering began is
 * lost and nothing is counted twice (a cursor is made once).
 */
export function account(
  cursor: UsageCursor | undefined,
  inst: MeteredInstance,
  size: InstanceSize,
  now: number,
  reading: CounterReading | undefined,
): Accounted | undefined {
  if (cursor?.closed) return undefined;
  const net = netDelta(cursor, inst, reading);
  const from = cursor?.accountedUntil ?? inst.createdAt;
  const givenBack = overCounted(cursor, inst);
  // the view is never older than the one that moved the cursor (the service commits views in the
  // order it read them), but its `now` may be (a pass's is taken at its start): the new position
  // is the later of the two
  const until = Math.max(from, now);
  let activeStart = 0;
  let activeEnd = 0;
  if (inst.runStart !== null) {
    const runEnd = inst.active ? until : inst.runEnd;
    if (runEnd !== null) {
      activeStart = unseenRun(cursor, inst) ? inst.runStart : Math.max(inst.runStart, from);
      activeEnd = Math.min(runEnd, until);
    }
  }
  const spans = activeEnd > activeStart ? splitByPeriod(activeStart, activeEnd) : [];
  const sameRun = cursor !== undefined && cursor.cpuRun !== null && cursor.cpuRun === inst.runId;
  // a new run restarts the counter (a new cgroup): all of it is new
  let cpuNs: number | null = null;
  if (reading) cpuNs = sameRun && cursor.cpuNs !== null && reading.cpuNs >= cursor.cpuNs ? reading.cpuNs - cursor.cpuNs : reading.cpuNs;
  // nothing new: no time past the cursor, nothing to give back, no counter moved (an ended run's
  // last reading may come at the cursor's very instant: its CPU still counts)
  if (spans.length === 0 && from >= now && givenBack.length === 0 && !((cpuNs ?? 0) > 0) && !(net !== null && net.rxBytes + net.txBytes > 0)) return undefined;
  // CPU the counter shows beyond the active time (it ran past `now` before it was read) goes in now's period
  if (((cpuNs ?? 0) > 0 || (net !== null && net.rxBytes + net.txBytes > 0)) && spans.length === 0) spans.push([Math.floor((now - 1) / USAGE_PERIOD_MS) * USAGE_PERIOD_MS, 0]);
  const heldMemoryBytes = size.memoryBytes > 0 ? size.memoryBytes : reading?.memoryBytes ?? cursor?.heldMemoryBytes ?? 0;
  const base = { instanceId: inst.id, projectId: inst.projectId, kind: inst.kind, name: inst.name };
  const correction = cursor && givenBack.length
    ? slicesOf(base, { millicpus: cursor.millicpus, memoryBytes: cursor.memoryBytes, diskBytes: cursor.diskBytes }, cursor.heldMemoryBytes, givenBack, null).map(negated)
    : [];
  return {
    next: {
      ...base, accountedUntil: until, active: inst.active, seenRun: inst.runId ?? '',
      cpuNs: reading ? reading.cpuNs : sameRun ? cursor.cpuNs : null,
      cpuRun: reading ? inst.runId : sameRun ? cursor.cpuRun : null,
      millicpus: size.millicpus, memoryBytes: size.memoryBytes, heldMemoryBytes, diskBytes: size.diskBytes, closed: false,
      netBase: nextNetBase(cursor, inst, reading),
    },
    slices: [...correction, ...slicesOf(base, size, heldMemoryBytes, spans, cpuNs, net)],
  };
}

/**
 * A run the cursor's last accounting did not see, though it began before the cursor: its start
 * was stored after that accounting read the record (the start's time is the host's, taken before
 * the record is written; a pass in between reads "created" or the run before). Nothing of it was
 * charged (the cursor is inactive, and an instance's runs do not overlap), so it is charged from
 * its start. The mirror of overCounted, for a run's beginning. Unknown (a cursor kept from before
 * seenRun was recorded): charged from the cursor, as before.
 */
function unseenRun(cursor: UsageCursor | undefined, inst: MeteredInstance): boolean {
  return cursor !== undefined && !cursor.active && cursor.seenRun !== null && inst.runId !== null && inst.runId !== cursor.seenRun;
}

/**
 * Time an accounting counted as active after the run had in fact ended: the instance exited,
 * a pass read its record before the exit was stored and charged it up to the pass's start, and
 * the record now says the run ended before that. The cursor still says active; the latest run
 * began before the cursor and ended before it, so [end, cursor] was charged and is given back
 * (slices with negative time, at the size it was charged with). Empty otherwise.
 */
function overCounted(cursor: UsageCursor | undefined, inst: MeteredInstance): Array<[number, number]> {
  if (!cursor?.active || inst.active || inst.runStart === null || inst.runEnd === null) return [];
  if (inst.runStart >= cursor.accountedUntil || inst.runEnd >= cursor.accountedUntil) return [];
  return splitByPeriod(inst.runEnd, cursor.accountedUntil);
}

/** A slice given back: the time and what was held over it, negative; no CPU or bytes (counters do not over-count). */
function negated(s: UsageSlice): UsageSlice {
  return { ...s, activeMs: -s.activeMs, memoryMibMs: -s.memoryMibMs, diskMibMs: s.diskMibMs === null ? null : -s.diskMibMs, cpuNs: null, netRxBytes: null, netTxBytes: null };
}

/**
 * The last span of an instance that is gone (its destroy seen at `goneAt`): active until then if
 * it was active when last accounted, with the size it had then; the cursor closes.
 */
export function close(cursor: UsageCursor, goneAt: number): Accounted | undefined {
  if (cursor.closed) return undefined;
  const end = Math.max(cursor.accountedUntil, goneAt);
  const spans = cursor.active && end > cursor.accountedUntil ? splitByPeriod(cursor.accountedUntil, end) : [];
  const base = { instanceId: cursor.instanceId, projectId: cursor.projectId, kind: cursor.kind, name: cursor.name };
  const size = { millicpus: cursor.millicpus, memoryBytes: cursor.memoryBytes, diskBytes: cursor.diskBytes };
  return {
    next: { ...cursor, accountedUntil: end, active: false, closed: true, netBase: null },
    // the CPU and bytes since the last reading went with the cgroup and endpoints: not measured
    slices: slicesOf(base, size, cursor.heldMemoryBytes, spans, null),
  };
}
