/**
 * The metering service: accounts every instance's usage into the store (docs/metering.md).
 *
 * It runs on the leader only (one sampler across replicas): a pass every `intervalMs` accounts
 * every instance up to the pass's start, and the lifecycle events the leader sees (start, die,
 * stop, save, resize, destroy, ...) account their instance at once, so a run's edges are caught
 * at the event rather than at the next pass. Each accounting commits its usage with the move of
 * the instance's cursor, compare-and-set (UsageRepo.commit): a span is counted once whatever
 * restarts, failovers or an old leader's last pass do; a loser's usage is dropped, not added.
 *
 * An event's accounting is split in two: at the event, only reads (the instance's record and size
 * as they are then: a snapshot, taken before a later start or a removal can overwrite them); the
 * writes wait up to eventDelayMs, so one instance's quick edges (a `run --rm`'s start, die and
 * destroy) make one commit after the request instead of three during it (issue 17's overhead).
 * The commit folds the snapshots in order, so it adds what one accounting per event would have.
 */
import { InvalidArgument } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { UsageCursor, UsageSlice } from '../../store/repos/usage.js';
import type { ContainerRecord, VmRecord } from '../../store/records.js';
import type { EventBus, NimbusEvent } from '../events/event-bus.js';
import { account, close, meteredContainer, meteredVm, type CounterReading, type InstanceSize, type MeteredInstance } from './accounting.js';

/** An instance as metering sees it, with the one record it was read from. */
type FoundInstance = { inst: MeteredInstance } & ({ container: ContainerRecord; vm?: undefined } | { vm: VmRecord; container?: undefined });

const log = logger('metering');

export const DEFAULT_METERING_INTERVAL_MS = 60_000;
/** The smallest interval accepted (a tighter one would spend the leader on accounting). */
export const MIN_METERING_INTERVAL_MS = 100;

/** The interval from NIMBUS_METERING_INTERVAL_MS (0: metering off), else the default; a bad value is refused. */
export function meteringIntervalFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.NIMBUS_METERING_INTERVAL_MS;
  if (raw === undefined || raw === '') return DEFAULT_METERING_INTERVAL_MS;
  const ms = Number(raw);
  if (!Number.isInteger(ms) || (ms !== 0 && ms < MIN_METERING_INTERVAL_MS)) {
    throw new InvalidArgument(`NIMBUS_METERING_INTERVAL_MS must be 0 (off) or an integer of at least ${MIN_METERING_INTERVAL_MS}, got "${raw}"`);
  }
  return ms;
}
/** Closed cursors are kept this long (a late pass of an old leader must still find them closed). */
const CLOSED_CURSOR_RETENTION_MS = 24 * 3_600_000;
/** How long an event's writes wait for the instance's next edges (default; never longer than the interval). */
export const DEFAULT_EVENT_DELAY_MS = 1000;
/** Instances accounted at once in a pass. */
const PASS_CONCURRENCY = 8;
/** Actions after which an instance's state (or size) changed: account it now. */
const ACCOUNT_ON = new Set(['start', 'restart', 'die', 'kill', 'stop', 'pause', 'unpause', 'save', 'restore', 'resize', 'migrate', 'restarting']);
/**
 * Of those, the ones after which the instance still runs on the counter it had: worth reading.
 * After a start the counter is new (near 0: the next pass reads it, all of it new), after an
 * exit it is gone; reading it there only cost the request path cgroup and sysfs reads.
 */
const READ_COUNTERS_ON = new Set(['pause', 'unpause', 'resize', 'migrate']);
/**
 * After these the run has ended and its last counters are read once: a container's cgroup stays
 * until removal, so the CPU it used since the last pass is still there (lost before: up to an
 * interval's worth, all of it for a run shorter than one). A VM's QEMU is gone: no reading, as before.
 */
const READ_FINAL_COUNTERS_ON = new Set(['die']);

export interface MeteringOptions {
  /** Between passes; default 60 s. */
  intervalMs?: number;
  /** Epoch ms (tests move it). */
  clock?: () => number;
  /** How long an event's writes wait to be folded with the instance's next edges (default 1 s, at most intervalMs). */
  eventDelayMs?: number;
}

/** An instance as an event left it: what its accounting at that moment would have used. */
interface Snapshot {
  at: number;
  inst: MeteredInstance;
  size: InstanceSize;
  reading: CounterReading | undefined;
}

/** An instance's event accountings not committed yet: snapshots in order, and its destroy's time once seen. */
interface PendingEdges {
  snapshots: Snapshot[];
  goneAt?: number;
  timer?: NodeJS.Timeout;
}

/** Where counters come from: an instance's CPU, memory and network (a running run's, or an ended run's last), or undefined (no counter, or no answer). */
export type CounterSource = (inst: MeteredInstance) => Promise<CounterReading | undefined>;

/** What an accounting edge reads: nothing, a running instance's counters, or an ended run's last. */
type ReadCounters = 'no' | 'running' | 'ended';

export interface MeteringStats {
  passes: number;
  /** Accountings committed, and those that lost to another (their usage dropped). */
  committed: number;
  lost: number;
  failed: number;
  /** How long the last pass took (ms), and the instances it saw. */
  lastPassMs: number;
  lastPassInstances: number;
}

export class MeteringService {
  readonly intervalMs: number;
  private readonly clock: () => number;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private passing: Promise<void> = Promise.resolve();
  private offEvents: (() => void) | undefined;
  /** Per-instance chains: one accounting of an instance at a time in this process. */
  private readonly chains = new Map<string, Promise<void>>();
  readonly stats: MeteringStats = { passes: 0, committed: 0, lost: 0, failed: 0, lastPassMs: 0, lastPassInstances: 0 };
  /** The last counter reading of each running instance (for /metrics). */
  readonly readings = new Map<string, CounterReading & Pick<MeteredInstance, 'projectId' | 'name' | 'kind'>>();
  /** Per instance, the event accountings waiting for their commit (see the top of this file). */
  private readonly pending = new Map<string, PendingEdges>();
  private readonly eventDelayMs: number;

  constructor(
    private readonly store: Store,
    private readonly events: EventBus,
    private readonly counters: CounterSource,
    options: MeteringOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? DEFAULT_METERING_INTERVAL_MS;
    this.clock = options.clock ?? Date.now;
    this.eventDelayMs = Math.min(options.eventDelayMs ?? DEFAULT_EVENT_DELAY_MS, this.intervalMs);
  }

  /** Passes from now on, and accounting on lifecycle events (call while leading). */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.offEvents = this.events.on((e) => this.onEvent(e));
    const pass = () => {
      this.passing = this.pass().catch((e: unknown) => log.error('metering pass failed', { error: String(e) })).finally(() => {
        if (this.running) this.timer = setTimeout(pass, this.intervalMs).unref();
      });
    };
    pass();
  }

  /** No more passes; waits for what is in flight (call when leadership ends, before the store closes). */
  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    this.offEvents?.();
    this.offEvents = undefined;
    await this.passing;
    await this.settle(); // what this leader saw is committed before another leads
    this.readings.clear();
  }

  private onEvent(e: NimbusEvent): void {
    if (!this.running || (e.type !== 'container' && e.type !== 'vm')) return;
    if (e.action === 'destroy') {
      const at = Date.parse(e.time);
      const goneAt = Number.isNaN(at) ? this.clock() : Math.min(at, this.clock());
      void this.enqueue(e.id, async () => {
        this.edges(e.id).goneAt = goneAt;
      });
    } else if (ACCOUNT_ON.has(e.action)) {
      const read: ReadCounters = READ_COUNTERS_ON.has(e.action) ? 'running' : READ_FINAL_COUNTERS_ON.has(e.action) ? 'ended' : 'no';
      // after the publisher's turn: an event is published inside a request, which should not
      // wait for the reads it caused (the time is taken when they run: a later edge, never lost)
      setImmediate(() => void this.enqueue(e.id, () => this.snapshot(e.id, this.clock(), read)));
    }
  }

  /** The instance's pending edges, made with their commit's timer when there were none. */
  private edges(id: string): PendingEdges {
    let p = this.pending.get(id);
    if (!p) {
      const made: PendingEdges = { snapshots: [] };
      made.timer = setTimeout(() => void this.enqueue(id, () => this.commitEdges(id)), this.eventDelayMs).unref();
      this.pending.set(id, (p = made));
    }
    return p;
  }

  /** The instance as it is at `now` (its record, size and, when asked, counters), kept for the pending commit. */
  private async snapshot(id: string, now: number, readCounters: ReadCounters): Promise<void> {
    const found = await this.instance(id);
    if (!found) return;
    const inst = found.inst;
    const reading = await this.read(inst, readCounters === 'running' ? inst.active : readCounters === 'ended' && !inst.active);
    this.edges(id).snapshots.push({ at: now, inst, size: await this.sizeOf(found), reading });
  }

  /**
   * The instance's counters when `wanted`: a running one's (kept for /metrics), or an ended run's
   * last, kept only if the record still shows that run ended (a restart meanwhile made a new
   * counter, which the run's next accounting reads as new).
   */
  private async read(inst: MeteredInstance, wanted: boolean): Promise<CounterReading | undefined> {
    let reading = wanted ? await this.counters(inst).catch(() => undefined) : undefined;
    if (reading && !inst.active) {
      const now = (await this.instance(inst.id))?.inst;
      if (!now || now.active || now.runId !== inst.runId) reading = undefined;
    }
    if (reading && inst.active) this.readings.set(inst.id, { ...reading, projectId: inst.projectId, name: inst.name, kind: inst.kind });
    else if (!inst.active || wanted) this.readings.delete(inst.id);
    return reading;
  }

  /**
   * The pending edges of an instance in one commit: each snapshot accounted from where the one
   * before left the cursor (as if each had been committed at its event), then the close when
   * it is gone. Runs on the instance's chain.
   */
  private async commitEdges(id: string): Promise<void> {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    const first = await this.store.usage.cursor(id);
    if (first?.closed) return;
    let cursor = first;
    let moved: UsageCursor | undefined;
    const slices: UsageSlice[] = [];
    for (const s of p.snapshots) {
      const outcome = account(cursor, s.inst, s.size, s.at, s.reading);
      if (!outcome) continue;
      cursor = moved = outcome.next;
      slices.push(...outcome.slices);
    }
    if (p.goneAt !== undefined) {
      this.readings.delete(id);
      const outcome = cursor && close(cursor, p.goneAt);
      if (outcome) {
        moved = outcome.next;
        slices.push(...outcome.slices);
      }
    }
    if (moved) await this.commit(first, moved, slices);
  }

  /** Commits every instance's pending edges now and waits for all accounting in flight. */
  async settle(): Promise<void> {
    for (const id of [...this.pending.keys()]) void this.enqueue(id, () => this.commitEdges(id));
    while (this.chains.size) await Promise.all([...this.chains.values()]);
  }

  /** Runs fn after the instance's previous accounting in this process; failures are counted and logged. */
  private enqueue(id: string, fn: () => Promise<void>): Promise<void> {
    const prev = this.chains.get(id) ?? Promise.resolve();
    const next = prev.then(fn).catch((e: unknown) => {
      this.stats.failed++;
      log.warn('accounting an instance failed', { id, error: String(e) });
    });
    this.chains.set(id, next);
    void next.finally(() => {
      if (this.chains.get(id) === next) this.chains.delete(id);
    });
    return next;
  }

  /** One pass: every instance accounted up to the pass's start; cursors of instances gone closed or dropped. */
  async pass(): Promise<void> {
    const started = this.clock();
    // open cursors only (a day of closed ones is kept, and a pass must not grow with it), read
    // before the instances: a cursor made after this has its instance listed
    const cursors = await this.store.usage.openCursors();
    const [containers, vms] = await Promise.all([this.store.containers.list(), this.store.vms.list()]);
    const ids = [...containers.map((c) => c.id), ...vms.map((v) => v.id)];
    const queue = [...ids];
    await Promise.all(Array.from({ length: Math.min(PASS_CONCURRENCY, queue.length) }, async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        const instanceId = id;
        // edges an event saw go first, in the same turn of the chain: their records were read
        // before the pass's (a snapshot taken while this was queued is folded too)
        await this.enqueue(instanceId, async () => {
          await this.commitEdges(instanceId);
          await this.accountInstance(instanceId, started);
        });
      }
    }));
    const live = new Set(ids);
    await this.store.usage.deleteClosedBefore(started - CLOSED_CURSOR_RETENTION_MS);
    for (const c of cursors) {
      if (live.has(c.instanceId)) continue;
      if (c.accountedUntil < started - 2 * this.intervalMs && !this.pending.has(c.instanceId)) {
        // gone without a destroy this leader saw (relayed events are at most once): when it went is
        // unknown, so nothing more is charged (an under-count of at most about one interval)
        await this.enqueue(c.instanceId, () => this.closeInstance(c.instanceId, c.accountedUntil));
      }
    }
    this.stats.passes++;
    this.stats.lastPassMs = this.clock() - started;
    this.stats.lastPassInstances = ids.length;
  }

  /** The instance and the record it was read from (its size is read from the same record: one lookup, not two). */
  private async instance(id: string): Promise<FoundInstance | undefined> {
    const container = await this.store.containers.get(id);
    if (container) return { inst: meteredContainer(container), container };
    const vm = await this.store.vms.get(id);
    return vm ? { inst: meteredVm(vm), vm } : undefined;
  }

  /** The claim the scheduler holds for it, else what its config asks; a VM's disk from its image when the claim has none. */
  private async sizeOf(found: FoundInstance): Promise<InstanceSize> {
    const claim = await this.store.placement.allocation(found.inst.id);
    let size: InstanceSize | undefined = claim ? { millicpus: claim.millicpus, memoryBytes: claim.memoryBytes, diskBytes: claim.diskBytes > 0 ? claim.diskBytes : null } : undefined;
    if (found.vm) {
      const v = found.vm;
      size ??= { millicpus: v.config.cpus * 1000, memoryBytes: v.config.memoryMiB * 1024 * 1024, diskBytes: null };
      if (size.diskBytes === null && v.config.diskImage) size.diskBytes = (await this.store.disks.get(v.projectId, v.config.diskImage.name))?.virtualSize ?? null;
      return size;
    }
    const c = found.container;
    return size ?? { millicpus: Math.round((c.config.cpus ?? 0) * 1000), memoryBytes: c.config.memoryBytes ?? 0, diskBytes: c.config.storageBytes ?? null };
  }

  /** The instance's usage up to `now` (taken before its record is read: its transitions after now are clipped, not lost). */
  async accountInstance(id: string, now: number, opts: { readCounters?: boolean } = {}): Promise<void> {
    // the cursor before the record: whatever accounting moved the cursor read its record earlier,
    // so this one's is never older (another process's commit after this read fails the compare-and-set)
    const cursor = await this.store.usage.cursor(id);
    if (cursor?.closed || (cursor && cursor.accountedUntil >= now)) return;
    const found = await this.instance(id);
    if (!found) return;
    const inst = found.inst;
    // a run that ended since this instance's accounting last saw it open (or before any): its last
    // counters, once (its die event's edge reads them too; a second read adds nothing)
    const endedUnread = !inst.active && inst.runId !== null && (cursor === undefined || cursor.active);
    const reading = await this.read(inst, (opts.readCounters ?? true) && (inst.active || endedUnread));
    const outcome = account(cursor, inst, await this.sizeOf(found), now, reading);
    if (outcome) await this.commit(cursor, outcome.next, outcome.slices);
  }

  /** The instance is gone (destroyed at goneAt): its last span, then its cursor closes. */
  async closeInstance(id: string, goneAt: number): Promise<void> {
    this.readings.delete(id);
    const cursor = await this.store.usage.cursor(id);
    if (!cursor) return;
    const outcome = close(cursor, goneAt);
    if (outcome) await this.commit(cursor, outcome.next, outcome.slices);
  }

  /** True when this accounting's span was committed (false: another had done it). */
  private async commit(cursor: UsageCursor | undefined, next: UsageCursor, slices: Parameters<Store['usage']['commit']>[2]): Promise<boolean> {
    const ok = await this.store.usage.commit(cursor?.accountedUntil ?? null, next, slices);
    if (ok) this.stats.committed++;
    else this.stats.lost++;
    return ok;
  }
}
