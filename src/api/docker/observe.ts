/**
 * What `docker events`, `docker stats` and `docker system df` read, over the same control
 * services as the rest of the Docker edge, each confined to the request's one project:
 *
 * - GET /events: the Nimbus event stream of the project mapped to Docker's event documents
 *   (container, image, network and volume events; `--since` replays what the server still
 *   buffers, `--until` ends the stream; filters type, event, container, image, network, volume).
 * - GET /containers/{id}/stats: Docker's stats document from the container's cgroup and
 *   endpoint counters; `stream=false` waits for a second sample, as dockerd does, so the CLI
 *   can compute a CPU percentage; `one-shot=true` answers one sample at once.
 * - GET /system/df: the project's images, containers and volumes with their sizes.
 */
import type { ServerResponse } from 'node:http';
import { InvalidArgument } from '../../core/errors.js';
import type { NimbusEvent } from '../../control/events/event-bus.js';
import type { InstanceStats } from '../../agent/drivers/instance-driver.js';
import type { ContainerRecord } from '../../store/records.js';
import type { Services } from '../../control/services.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { inDockerWords, noSuchContainer } from './errors.js';
import { containerSummary, familiarName, layerSizes, parseFilters } from './mapping.js';
import { volumeDoc } from './volumes.js';

const ID = '([^/]+)';
/** Between two samples of a streamed `docker stats` (dockerd's period). */
export const STATS_INTERVAL_MS = 1_000;

// ---------------------------------------------------------------------------------------------
// events

/** The Nimbus event kinds Docker has (host, quota and operation events have no Docker word). */
const DOCKER_TYPES = new Set(['container', 'image', 'network', 'volume']);
/** Nimbus actions Docker calls otherwise. */
const DOCKER_ACTION: Record<string, Record<string, string>> = {
  image: { build: 'tag' },
};

/** A Nimbus event as Docker's events document, or undefined when Docker has no word for it. */
export function dockerEvent(e: NimbusEvent): Record<string, unknown> | undefined {
  if (!DOCKER_TYPES.has(e.type)) return undefined;
  const action = DOCKER_ACTION[e.type]?.[e.action] ?? e.action;
  const attributes: Record<string, string> = {};
  for (const [k, v] of Object.entries(e.attributes ?? {})) {
    if (v === undefined || v === null || typeof v === 'object') continue;
    attributes[k] = String(v);
  }
  if (e.type === 'image' && attributes.name) attributes.name = familiarName(attributes.name);
  const ms = Date.parse(e.time);
  const doc: Record<string, unknown> = {
    Type: e.type, Action: action, Actor: { ID: e.id, Attributes: attributes }, scope: 'local',
    time: Math.floor(ms / 1000), timeNano: ms * 1_000_000,
  };
  // the fields of API versions before 1.22, which the CLI's formatter still reads for containers
  if (e.type === 'container') Object.assign(doc, { status: action, id: e.id, ...(attributes.image ? { from: attributes.image } : {}) });
  return doc;
}

/** `since`/`until` of /events: unix seconds (with a fraction), or RFC 3339 as newer clients send. */
export function eventTime(raw: string | null, what: string): number | undefined {
  if (raw === null || raw === '') return undefined;
  if (/^\d{1,12}(\.\d{1,9})?$/.test(raw)) return Number(raw) * 1000;
  const ms = Date.parse(raw);
  if (Number.isNaN(ms)) throw new InvalidArgument(`invalid ${what}: ${raw} (unix seconds or RFC 3339)`);
  return ms;
}

const EVENT_FILTERS = new Set(['type', 'event', 'container', 'image', 'network', 'volume', 'label']);

/** Docker's event filters: each key's values are alternatives, keys must all hold. */
export function matchesEventFilters(doc: Record<string, unknown>, filters: Map<string, string[]>): boolean {
  const type = doc.Type as string;
  const actor = doc.Actor as { ID: string; Attributes: Record<string, string> };
  const named = (values: string[]) => values.some((v) => actor.ID === v || actor.ID.startsWith(v) || actor.Attributes.name === v);
  for (const [key, values] of filters) {
    switch (key) {
      case 'type': if (!values.includes(type)) return false; break;
      case 'event': if (!values.includes(doc.Action as string)) return false; break;
      case 'container': case 'image': case 'network': case 'volume':
        if (type !== key || !named(values)) return false;
        break;
      case 'label':
        if (!values.every((l) => {
          const [k, v] = l.split('=', 2) as [string, string | undefined];
          return v === undefined ? k in actor.Attributes : actor.Attributes[k] === v;
        })) return false;
        break;
      default: return false;
    }
  }
  return true;
}

async function events(ctx: DockerContext): Promise<typeof HANDLED> {
  const since = eventTime(ctx.query.get('since'), 'since');
  const until = eventTime(ctx.query.get('until'), 'until');
  const filters = parseFilters(ctx.query.get('filters') ?? undefined);
  for (const key of filters.keys()) if (!EVENT_FILTERS.has(key)) throw new InvalidArgument(`invalid filter '${key}'`); // before the 200
  const ac = new AbortController();
  const stop = () => ac.abort();
  ctx.signal.addEventListener('abort', stop);
  const res = ctx.res;
  res.writeHead(200, { 'content-type': 'application/json' });
  res.flushHeaders();
  // --until in the future: the stream ends then; in the past: after the buffered ones
  const now = Date.now();
  const timer = until !== undefined ? setTimeout(stop, Math.max(0, until - now)) : undefined;
  try {
    const source = ctx.services.events.subscribe({ projectIds: new Set([ctx.project]), ...(since !== undefined ? { since: 0 } : {}) }, ac.signal);
    for await (const e of source) {
      const at = Date.parse(e.time);
      if (since !== undefined && at < since) continue;
      if (until !== undefined && at > until) break;
      const doc = dockerEvent(e);
      if (!doc || !matchesEventFilters(doc, filters)) continue;
      if (!res.write(`${JSON.stringify(doc)}\n`)) await new Promise((r) => res.once('drain', r));
    }
  } finally {
    clearTimeout(timer);
    ctx.signal.removeEventListener('abort', stop);
    res.end();
  }
  return HANDLED;
}

// ---------------------------------------------------------------------------------------------
// stats

/** What one stats document needs of a sample: the instance's counters and when they were read. */
interface Sample { stats: InstanceStats; atNs: number }

const zeroCpu = { cpu_usage: { total_usage: 0, usage_in_kernelmode: 0, usage_in_usermode: 0 }, system_cpu_usage: 0, online_cpus: 0, throttling_data: { periods: 0, throttled_periods: 0, throttled_time: 0 } };

/**
 * Docker's stats document. Docker's CLI takes CPU % as the container's CPU delta over the
 * system's, times online_cpus: the system's usage is given as the sample's time × the host's
 * CPUs, so the figure is the share of one CPU the container used between the two samples,
 * whatever host it runs on (dockerd reads /proc/stat of its own host, which a control plane
 * placing on other hosts does not have).
 */
export function statsDoc(c: Pick<ContainerRecord, 'id' | 'name'>, cur: Sample, pre: Sample | undefined, hostCpus: number): Record<string, unknown> {
  const cpu = (s: Sample) => ({
    cpu_usage: { total_usage: s.stats.cpuUsageNs, usage_in_kernelmode: 0, usage_in_usermode: 0 },
    system_cpu_usage: s.atNs * hostCpus, online_cpus: hostCpus,
    throttling_data: { periods: 0, throttled_periods: 0, throttled_time: 0 },
  });
  const networks: Record<string, unknown> = {};
  for (const [i, e] of (cur.stats.network?.endpoints ?? []).entries()) {
    networks[`eth${i}`] = { rx_bytes: e.rxBytes, rx_packets: e.rxPackets, rx_errors: 0, rx_dropped: 0, tx_bytes: e.txBytes, tx_packets: e.txPackets, tx_errors: 0, tx_dropped: 0 };
  }
  return {
    read: new Date(cur.atNs / 1e6).toISOString(),
    preread: pre ? new Date(pre.atNs / 1e6).toISOString() : '0001-01-01T00:00:00Z',
    id: c.id, name: `/${c.name}`,
    pids_stats: { current: cur.stats.pids, ...(cur.stats.pidsLimit !== undefined ? { limit: cur.stats.pidsLimit } : {}) },
    blkio_stats: { io_service_bytes_recursive: null, io_serviced_recursive: null, io_queue_recursive: null, io_service_time_recursive: null, io_wait_time_recursive: null, io_merged_recursive: null, io_time_recursive: null, sectors_recursive: null },
    num_procs: 0, storage_stats: {},
    cpu_stats: cpu(cur),
    precpu_stats: pre ? cpu(pre) : zeroCpu,
    memory_stats: {
      usage: cur.stats.memoryBytes,
      // no limit set: the host's memory is the limit, as dockerd reports it; 0 when unknown
      limit: cur.stats.memoryLimitBytes ?? 0,
      stats: {},
    },
    networks,
  };
}

async function sample(services: Services, id: string): Promise<Sample> {
  const stats = await services.containers.stats(id);
  return { stats, atNs: Date.parse(stats.time) * 1e6 };
}

async function stats(ctx: DockerContext): Promise<typeof HANDLED | { json: unknown }> {
  const ref = ctx.params[0]!.replace(/^\//, '');
  const c = await inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
  const host = await ctx.services.store.agents.get(c.host);
  const hostCpus = host?.facts?.cpus ?? 1;
  const memoryOf = (s: Sample) => (s.stats.memoryLimitBytes === undefined && host?.facts ? { ...s, stats: { ...s.stats, memoryLimitBytes: host.facts.memoryBytes } } : s);
  const running = (x: ContainerRecord) => x.status === 'running' || x.status === 'paused';
  const stream = ctx.query.get('stream') !== '0' && ctx.query.get('stream') !== 'false';
  const oneShot = ctx.query.get('one-shot') === '1' || ctx.query.get('one-shot') === 'true';
  // a stopped container: dockerd answers zeros rather than an error (the CLI shows it with 0 %)
  if (!running(c)) {
    const zero: Sample = { stats: { cpuUsageNs: 0, memoryBytes: 0, pids: 0, time: new Date().toISOString() }, atNs: Date.now() * 1e6 };
    return { json: statsDoc(c, zero, undefined, hostCpus) };
  }
  if (!stream) {
    const first = memoryOf(await sample(ctx.services, c.id));
    if (oneShot) return { json: statsDoc(c, first, undefined, hostCpus) };
    await new Promise((r) => setTimeout(r, STATS_INTERVAL_MS));
    return { json: statsDoc(c, memoryOf(await sample(ctx.services, c.id)), first, hostCpus) };
  }
  const res: ServerResponse = ctx.res;
  res.writeHead(200, { 'content-type': 'application/json' });
  let pre: Sample | undefined;
  try {
    while (!ctx.signal.aborted) {
      const now = await ctx.services.containers.get(c.id).catch(() => undefined);
      if (!now || !running(now)) break; // gone or stopped: the stream ends, as dockerd's does
      const cur = memoryOf(await sample(ctx.services, c.id));
      res.write(`${JSON.stringify(statsDoc(c, cur, pre, hostCpus))}\n`);
      pre = cur;
      await new Promise<void>((r) => {
        const t = setTimeout(r, STATS_INTERVAL_MS);
        ctx.signal.addEventListener('abort', () => { clearTimeout(t); r(); }, { once: true });
      });
    }
  } finally {
    res.end();
  }
  return HANDLED;
}

// ---------------------------------------------------------------------------------------------
// system df

async function systemDf(ctx: DockerContext) {
  const { services, project } = ctx;
  const [images, containers, volumes] = await Promise.all([
    services.images.list(project), services.containers.list({ all: true, projectId: project }), services.volumes.list(project),
  ]);
  const now = Date.now();
  const used = new Map<string, number>();
  for (const c of containers) used.set(c.config.image, (used.get(c.config.image) ?? 0) + 1);
  // each writable layer as its host measures it (one that did not answer: 0, as before)
  const usage = await services.containers.layerUsage(containers);
  const imageSize = new Map(images.map((i) => [i.digest, i.size]));
  return {
    json: {
      LayersSize: images.reduce((a, i) => a + i.size, 0),
      Images: images.map((i) => ({
        Id: i.id, ParentId: '', RepoTags: i.tags.map(familiarName), RepoDigests: [], Created: Math.floor(Date.parse(i.createdAt) / 1000),
        Size: i.size, SharedSize: -1, VirtualSize: i.size, Labels: i.config.config?.Labels ?? {}, Containers: i.containers,
      })),
      Containers: containers.map((c) => ({ ...containerSummary(services.containers.view(c), now), ...layerSizes(c, usage, imageSize) })),
      Volumes: await Promise.all(volumes.map(async (v) => volumeDoc(await services.volumes.inspect(v).catch(() => v)))),
      BuildCache: [],
    },
  };
}

export const observeRoutes: DockerRoute[] = [
  { method: 'GET', pattern: /^\/events$/, name: 'events', access: 'reader', handler: events },
  { method: 'GET', pattern: new RegExp(`^/containers/${ID}/stats$`), name: 'container stats', access: 'reader', handler: stats },
  { method: 'GET', pattern: /^\/system\/df$/, name: 'system df', access: 'reader', handler: systemDf },
];
