/**
 * Prometheus metrics of one control-plane process (GET /metrics; the list is in docs/metering.md).
 * A registry per process (per Metrics), never prom-client's global one: several daemons in one
 * test process each have their own. Three kinds of source:
 *
 * - counted here as things happen in this process: API requests (the route's template, never
 *   the raw URL: bounded label values), events this process published, scheduler placements,
 *   quota decisions: summed over replicas they are the cluster's;
 * - read when scraped from the store or the hosts: instances by kind and state, per-host
 *   capacity and allocation, warm pools (the store's view is the same on every replica);
 * - the metering service's last counter readings per instance (on the leader only, where it runs).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { logger } from '../../core/log.js';
import type { WarmPoolStats } from '../../agent/warm-pool.js';
import type { Store } from '../../store/store.js';
import type { EventBus, NimbusEvent } from '../events/event-bus.js';
import type { HostCandidate, Scheduler } from '../scheduler/types.js';
import type { MeteringService } from './meter.js';

const log = logger('metrics');

/** How long a scrape waits for one host's warm pool figures. */
const HOST_ANSWER_MS = 1_000;

export interface MetricsSources {
  store: Store;
  events: EventBus;
  /** The hosts as the scheduler sees them (capacity, ratios, state), from memory. */
  hosts?: () => Promise<HostCandidate[]>;
  /** A host's warm pool, if it has one (an in-process call for the embedded agent, a request for others). */
  warmPool?: (host: string) => Promise<WarmPoolStats | undefined>;
  /** The metering service while this process runs it (the leader). */
  meter?: () => MeteringService | undefined;
}

const withTimeout = <T>(p: Promise<T>, ms: number): Promise<T | undefined> =>
  Promise.race([p, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms).unref())]);

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly latency: Histogram<'method' | 'route' | 'status'>;
  private readonly placements: Counter<'outcome'>;
  private readonly placementLatency: Histogram<'outcome'>;
  private readonly quotaEntries: Counter<'kind'>;
  private readonly off: () => void;

  constructor(private readonly sources: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'nimbus_' });
    this.requests = new Counter({ name: 'nimbus_api_requests_total', help: 'API requests answered, by method, route template and status', labelNames: ['method', 'route', 'status'], registers });
    this.latency = new Histogram({
      name: 'nimbus_api_request_duration_seconds', help: 'API request latency (streaming routes left out: their length is the stream\'s)',
      labelNames: ['method', 'route', 'status'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers,
    });
    const events = new Counter({ name: 'nimbus_events_total', help: 'Events this process published, by type and action', labelNames: ['type', 'action'], registers });
    const operations = new Counter({ name: 'nimbus_operations_total', help: 'Operation transitions this process published, by kind and state (create, then succeeded, failed or cancelled)', labelNames: ['kind', 'state'], registers });
    this.placements = new Counter({ name: 'nimbus_scheduler_placements_total', help: 'Scheduler placement decisions: placed, no-valid-host, or error', labelNames: ['outcome'], registers });
    this.placementLatency = new Histogram({ name: 'nimbus_scheduler_placement_duration_seconds', help: 'Time to choose a host and claim on it', labelNames: ['outcome'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5], registers });
    this.quotaEntries = new Counter({ name: 'nimbus_quota_decisions_total', help: 'Quota ledger entries this process committed, by kind (admit, reject, release, loan, reclaim-…)', labelNames: ['kind'], registers });
    this.off = sources.events.onPublished((e: NimbusEvent) => {
      events.inc({ type: e.type, action: e.action });
      if (e.type === 'operation' && e.action !== 'progress') operations.inc({ kind: String(e.attributes?.kind ?? 'unknown'), state: e.action });
    });
    this.scrapedFromStore(registers);
    this.scrapedFromHosts(registers);
    this.scrapedFromMeter(registers);
  }

  /** One answered API request (the route's template; "unmatched" for none). */
  observeRequest(method: string, route: string, status: number, seconds: number, streaming: boolean): void {
    const labels = { method, route, status: String(status) };
    this.requests.inc(labels);
    if (!streaming) this.latency.observe(labels, seconds);
  }

  /** Quota ledger entries committed by this process. */
  observeQuota(kind: string): void {
    this.quotaEntries.inc({ kind });
  }

  /** The scheduler with its place() counted and timed; every other member is the scheduler's own. */
  instrumentScheduler<S extends Scheduler>(scheduler: S): S {
    const observe = (outcome: string, started: number) => {
      this.placements.inc({ outcome });
      this.placementLatency.observe({ outcome }, (performance.now() - started) / 1000);
    };
    return new Proxy(scheduler, {
      get: (target, prop, receiver) => {
        const value: unknown = Reflect.get(target, prop, receiver);
        if (prop !== 'place' || typeof value !== 'function') return value;
        return async (...args: Parameters<Scheduler['place']>) => {
          const started = performance.now();
          try {
            const placed = await (value as Scheduler['place']).apply(target, args);
            observe('placed', started);
            return placed;
          } catch (e) {
            observe((e as { code?: string }).code === 'ResourceExhausted' ? 'no-valid-host' : 'error', started); // no host fits: explain.ts's error
            throw e;
          }
        };
      },
    });
  }

  /** The text format (version 0.0.4), with what is read at scrape time read first. */
  async text(): Promise<{ contentType: string; text: string }> {
    await Promise.all(this.refreshers.map((refresh) => refresh()));
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  close(): void {
    this.off();
    this.registry.clear();
  }

  /** Filled before each scrape (not prom-client collect callbacks: those run side by side, and several metrics share one read). */
  private readonly refreshers: Array<() => Promise<void>> = [];

  private scrapedFromStore(registers: Registry[]): void {
    const store = this.sources.store;
    const instances = new Gauge({ name: 'nimbus_instances', help: 'Instances by kind (container, secure, vm) and state, as stored', labelNames: ['kind', 'state'], registers });
    const allocated = new Gauge({ name: 'nimbus_host_allocated', help: 'What placements hold on each host: cpus, memory_bytes, disk_bytes, instances', labelNames: ['host', 'resource'], registers });
    this.refreshers.push(async () => {
      const [containers, vms, usage] = await Promise.all([store.containers.list(), store.vms.list(), store.placement.usage()]);
      instances.reset();
      for (const c of containers) instances.inc({ kind: c.config.runtime === 'vm' || c.runtime === 'vm' ? 'secure' : 'container', state: c.status });
      for (const v of vms) instances.inc({ kind: 'vm', state: v.status });
      allocated.reset();
      for (const u of usage) {
        allocated.set({ host: u.host, resource: 'cpus' }, u.millicpus / 1000);
        allocated.set({ host: u.host, resource: 'memory_bytes' }, u.memoryBytes);
        allocated.set({ host: u.host, resource: 'disk_bytes' }, u.diskBytes);
        allocated.set({ host: u.host, resource: 'instances' }, u.instances);
      }
    });
  }

  private scrapedFromHosts(registers: Registry[]): void {
    const { hosts, warmPool } = this.sources;
    if (!hosts) return;
    const count = new Gauge({ name: 'nimbus_hosts', help: 'Hosts known to this control plane', registers });
    const capacity = new Gauge({ name: 'nimbus_host_capacity', help: 'Each host\'s capacity as it reported it: cpus, memory_bytes, disk_bytes', labelNames: ['host', 'resource'], registers });
    const allocatable = new Gauge({ name: 'nimbus_host_allocatable', help: 'Capacity times the allocation ratio: what placements may claim', labelNames: ['host', 'resource'], registers });
    const up = new Gauge({ name: 'nimbus_host_up', help: '1 while the host answers; disabled hosts are still up', labelNames: ['host'], registers });
    const ready = new Gauge({ name: 'nimbus_warm_pool_ready', help: 'Warm containers ready on each host', labelNames: ['host'], registers });
    const claims = new Counter({ name: 'nimbus_warm_pool_claims_total', help: 'Warm pool claims on each host since its agent started: hit or miss', labelNames: ['host', 'outcome'], registers });
    this.refreshers.push(async () => {
      const list = await hosts();
      // each host asked once, side by side, before anything is reset: a scrape never shows half
      const pools = await Promise.all(list.map((h) => (!warmPool || h.state === 'down' ? undefined : withTimeout(warmPool(h.name).catch((e: unknown) => {
        log.debug('warm pool figures unavailable', { host: h.name, error: String(e) });
        return undefined;
      }), HOST_ANSWER_MS))));
      for (const m of [capacity, allocatable, up, ready, claims]) m.reset();
      count.set(list.length);
      list.forEach((h, i) => {
        const ratios = h.allocationRatios ?? { cpu: 1, memory: 1, disk: 1 };
        capacity.set({ host: h.name, resource: 'cpus' }, h.cpus);
        capacity.set({ host: h.name, resource: 'memory_bytes' }, h.memoryBytes);
        capacity.set({ host: h.name, resource: 'disk_bytes' }, h.diskBytes);
        allocatable.set({ host: h.name, resource: 'cpus' }, h.cpus * ratios.cpu);
        allocatable.set({ host: h.name, resource: 'memory_bytes' }, h.memoryBytes * ratios.memory);
        allocatable.set({ host: h.name, resource: 'disk_bytes' }, h.diskBytes * ratios.disk);
        up.set({ host: h.name }, h.state === 'up' ? 1 : 0);
        const pool = pools[i];
        if (!pool) return;
        ready.set({ host: h.name }, pool.ready);
        claims.inc({ host: h.name, outcome: 'hit' }, pool.hits);
        claims.inc({ host: h.name, outcome: 'miss' }, pool.misses);
      });
    });
  }

  private scrapedFromMeter(registers: Registry[]): void {
    const meter = this.sources.meter;
    if (!meter) return;
    const labelNames = ['instance', 'name', 'project', 'kind'] as const;
    const cpu = new Counter({ name: 'nimbus_instance_cpu_seconds_total', help: 'CPU time of each running instance\'s current run, at the metering service\'s last reading (leader only)', labelNames, registers });
    const memory = new Gauge({ name: 'nimbus_instance_memory_bytes', help: 'Memory each running instance used at the last reading (leader only)', labelNames, registers });
    // the instance's point of view, summed over its endpoints; each endpoint's counter restarts when it is re-created
    const net = {
      rxBytes: new Counter({ name: 'nimbus_instance_network_receive_bytes_total', help: 'Bytes each running instance received on its endpoints, at the last reading (leader only)', labelNames, registers }),
      txBytes: new Counter({ name: 'nimbus_instance_network_transmit_bytes_total', help: 'Bytes each running instance sent on its endpoints, at the last reading (leader only)', labelNames, registers }),
      rxPackets: new Counter({ name: 'nimbus_instance_network_receive_packets_total', help: 'Packets each running instance received on its endpoints, at the last reading (leader only)', labelNames, registers }),
      txPackets: new Counter({ name: 'nimbus_instance_network_transmit_packets_total', help: 'Packets each running instance sent on its endpoints, at the last reading (leader only)', labelNames, registers }),
    };
    const accountings = new Counter({ name: 'nimbus_metering_accountings_total', help: 'Usage accountings: committed, lost (another pass had done the span: nothing added), failed', labelNames: ['outcome'], registers });
    const passes = new Counter({ name: 'nimbus_metering_passes_total', help: 'Metering passes over every instance', registers });
    const lastPass = new Gauge({ name: 'nimbus_metering_last_pass_seconds', help: 'How long the last metering pass took', registers });
    const active = new Gauge({ name: 'nimbus_metering_active', help: '1 where the metering service runs (the leader)', registers });
    this.refreshers.push(async () => {
      for (const m of [cpu, memory, ...Object.values(net), accountings, passes, lastPass]) m.reset();
      const m = meter();
      active.set(m ? 1 : 0);
      if (!m) return;
      for (const [id, r] of m.readings) {
        const labels = { instance: id, name: r.name, project: r.projectId, kind: r.kind };
        cpu.inc(labels, r.cpuNs / 1e9);
        memory.set(labels, r.memoryBytes);
        if (r.network) for (const k of ['rxBytes', 'txBytes', 'rxPackets', 'txPackets'] as const) net[k].inc(labels, r.network[k]);
      }
      accountings.inc({ outcome: 'committed' }, m.stats.committed);
      accountings.inc({ outcome: 'lost' }, m.stats.lost);
      accountings.inc({ outcome: 'failed' }, m.stats.failed);
      passes.inc(m.stats.passes);
      lastPass.set(m.stats.lastPassMs / 1000);
    });
  }
}
